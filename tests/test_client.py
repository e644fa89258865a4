"""
Tests for L{txfastcgi._client.protocol.FastCGIClientProtocol}: one FastCGI connection
talking to an in-memory backend, with time on a L{MemoryReactorClock}.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IReactorSocket
from twisted.internet.protocol import ServerFactory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from txfastcgi._client.protocol import FastCGIClientProtocol
from txfastcgi._fastcgi.records import (
    FCGI_KEEP_CONN,
    MAX_CONTENT_LENGTH,
    BeginRequest,
    EndRequest,
    Params,
    ProtocolStatus,
    Record,
    RecordDecoder,
    Role,
    Stderr,
    Stdin,
    Stdout,
)
from txfastcgi.errors import (
    BackendClosed,
    BackendTimeout,
    ProtocolError,
    UnexpectedRecord,
    UnsupportedVersion,
)
from txfastcgi.testing import (
    FakeBackend,
    Link,
    ReceivedRequest,
    Reply,
    Responder,
    ResponseRecorder,
    stall,
)

PARAMS = [
    (b"GATEWAY_INTERFACE", b"CGI/1.1"),
    (b"REQUEST_METHOD", b"POST"),
    (b"SCRIPT_FILENAME", b"/srv/www/index.php"),
    (b"REQUEST_URI", b"/upload?x=1"),
    (b"HTTP_X_LONG", b"v" * 300),
]
HEAD = b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n"
RECORD_OVERHEAD = 8 + 7  # a header and the most padding


def pattern(length: int) -> bytes:
    """Bytes whose period (251) is prime to every record size, so a lost or moved chunk shows."""
    return bytes(i % 251 for i in range(length))


@dataclass
class Connection:
    clock: MemoryReactorClock
    client: FastCGIClientProtocol
    backend: FakeBackend
    link: Link

    def send(
        self,
        body: bytes | BytesIO = b"",
        keepConnection: bool = True,
        receiver: ResponseRecorder | None = None,
        since: float | None = None,
    ) -> ResponseRecorder:
        bodyFile = body if isinstance(body, BytesIO) else BytesIO(body)
        recorder = receiver if receiver is not None else ResponseRecorder()
        self.client.sendRequest(
            list(PARAMS), bodyFile, len(bodyFile.getbuffer()), recorder, keepConnection, since
        )
        return recorder


def connect(
    respond: Responder | None = None,
    *,
    readTimeout: float | None = None,
    answerAfterBodyBytes: int | None = None,
) -> Connection:
    clock = MemoryReactorClock()
    client = FastCGIClientProtocol(clock, readTimeout)
    backend = FakeBackend(respond, answerAfterBodyBytes=answerAfterBodyBytes)
    return Connection(clock, client, backend, Link(client, backend, clock))


def outline(records: Sequence[Record]) -> list[str]:
    """Record types in order, runs of data records of one stream counted once."""
    names: list[str] = []
    for record in records:
        name = type(record).__name__
        if isinstance(record, (Params, Stdin)) and not record.data:
            name += " end"
        if not names or names[-1] != name:
            names.append(name)
    return names


# Sending


@pytest.mark.parametrize("keepConnection", [True, False])
@pytest.mark.parametrize("bodyLength", [0, 1, 65536])
def test_a_small_request_goes_out_in_one_write_with_begin_params_and_the_whole_body(
    keepConnection: bool, bodyLength: int
) -> None:
    connection = connect()
    body = pattern(bodyLength)

    recorder = connection.send(body, keepConnection)

    [write] = connection.backend.clientWrites
    records = RecordDecoder().receiveData(write)
    assert records[0] == BeginRequest(1, Role.RESPONDER, FCGI_KEEP_CONN if keepConnection else 0)
    expected = ["BeginRequest", "Params", "Params end", "Stdin", "Stdin end"]
    if not body:
        expected.remove("Stdin")
    assert outline(records) == expected

    connection.link.flush()
    request = connection.backend.request
    assert request.params == dict(PARAMS)
    assert request.stdin == body
    assert request.keepConnection is keepConnection
    assert max(request.stdinRecordLengths) <= MAX_CONTENT_LENGTH
    assert recorder.events[-1] == ("ended", 0, 0)


def test_a_large_body_is_streamed_in_stdin_records_of_at_most_65535_bytes_and_arrives_intact() -> (
    None
):
    connection = connect()
    body = pattern(300_000)

    recorder = connection.send(body)
    connection.link.flush()

    request = connection.backend.request
    assert request.stdin == body
    *dataLengths, terminator = request.stdinRecordLengths
    assert all(0 < length <= MAX_CONTENT_LENGTH for length in dataLengths)
    assert terminator == 0
    assert connection.backend.records[-1] == Stdin(1, b"")
    # Streamed: params first on their own, then the body a record per write.
    writes = connection.backend.clientWrites
    assert outline(RecordDecoder().receiveData(writes[0])) == [
        "BeginRequest",
        "Params",
        "Params end",
    ]
    assert len(writes) > len(body) // MAX_CONTENT_LENGTH
    assert max(len(write) for write in writes) <= MAX_CONTENT_LENGTH + RECORD_OVERHEAD
    assert recorder.events[-1] == ("ended", 0, 0)


@pytest.mark.parametrize("answerAfterBodyBytes", [None, 0])
def test_the_request_body_file_is_left_open_for_the_caller(
    answerAfterBodyBytes: int | None,
) -> None:
    """The caller owns the body: it may seek back and send it again on a new connection."""
    connection = connect(answerAfterBodyBytes=answerAfterBodyBytes)
    body = BytesIO(pattern(300_000))

    recorder = connection.send(body)
    connection.link.flush()

    assert recorder.events[-1] == ("ended", 0, 0)
    assert not body.closed
    body.seek(0)
    assert body.read() == pattern(300_000)


# Receiving


def test_stdout_stderr_and_end_request_reach_the_receiver_in_the_order_sent() -> None:
    def respond(backend: FakeBackend, request: ReceivedRequest) -> None:
        backend.sendStdout(HEAD)
        backend.sendStderr(b"PHP Notice: x")
        backend.sendStdout(b"body")
        backend.sendStdout(b"")
        backend.sendStderr(b"")
        backend.endRequest(appStatus=7)

    connection = connect(respond)

    recorder = connection.send()
    connection.link.flush()

    assert recorder.events == [
        ("stdout", HEAD),
        ("stderr", b"PHP Notice: x"),
        ("stdout", b"body"),
        ("ended", 7, 0),
    ]


def test_a_non_zero_protocol_status_reaches_the_receiver() -> None:
    connection = connect(Reply(stdout=b"", protocolStatus=ProtocolStatus.OVERLOADED))

    recorder = connection.send()
    connection.link.flush()

    assert recorder.events == [("ended", 0, ProtocolStatus.OVERLOADED)]


RESPONSE = b"".join(
    (
        Stdout(1, b"Status: 201 Created\r\n").encode(),
        Stderr(1, b"PHP Warning: y").encode(),
        Stdout(1, b"\r\ncreated").encode(),
        Stdout(1, b"").encode(),
        Stderr(1, b"").encode(),
        EndRequest(1, 0, ProtocolStatus.REQUEST_COMPLETE).encode(),
    )
)


@pytest.mark.parametrize("cut", range(1, len(RESPONSE)))
def test_output_split_at_any_byte_boundary_arrives_whole(cut: int) -> None:
    def respond(backend: FakeBackend, request: ReceivedRequest) -> None:
        backend.sendRaw(RESPONSE[:cut])
        backend.sendRaw(RESPONSE[cut:])

    connection = connect(respond)

    recorder = connection.send()
    connection.link.flush()

    assert recorder.stdout == b"Status: 201 Created\r\n\r\ncreated"
    assert recorder.stderr == b"PHP Warning: y"
    assert recorder.events[-1] == ("ended", 0, 0)
    assert connection.client.reusable


@pytest.mark.parametrize("recordSize", [1, 7, 8, MAX_CONTENT_LENGTH])
@pytest.mark.parametrize("writeSize", [1, 5, None])
def test_output_in_records_and_writes_of_any_size_arrives_whole(
    recordSize: int, writeSize: int | None
) -> None:
    stdout = HEAD + pattern(300)
    connection = connect(
        Reply(stdout=stdout, stderr=b"a warning", recordSize=recordSize, writeSize=writeSize)
    )

    recorder = connection.send()
    connection.link.flush()

    assert recorder.stdout == stdout
    assert recorder.stderr == b"a warning"
    assert recorder.events[-1] == ("ended", 0, 0)


def test_a_large_response_arrives_whole() -> None:
    stdout = HEAD + pattern(1_000_000)
    connection = connect(Reply(stdout=stdout, recordSize=65528))

    recorder = connection.send()
    connection.link.flush()

    assert recorder.stdout == stdout
    assert recorder.events[-1] == ("ended", 0, 0)


@pytest.mark.parametrize(
    ("garbage", "error"),
    [
        pytest.param(
            bytes([2]) + Stdout(1, b"hello").encode()[1:], UnsupportedVersion, id="version"
        ),
        pytest.param(Stdout(2, b"hello").encode(), UnexpectedRecord, id="request id"),
        pytest.param(Stdin(1, b"hello").encode(), UnexpectedRecord, id="record type"),
    ],
)
def test_malformed_output_fails_the_request_with_a_protocol_error_and_closes_the_connection(
    garbage: bytes, error: type[ProtocolError]
) -> None:
    def respond(backend: FakeBackend, request: ReceivedRequest) -> None:
        backend.sendStdout(HEAD)
        backend.sendRaw(garbage)
        backend.sendStdout(b"never seen")
        backend.endRequest()

    connection = connect(respond)

    recorder = connection.send()
    connection.link.flush()

    assert recorder.events[:-1] == [("stdout", HEAD)]
    assert recorder.failure.check(error)
    assert connection.link.closed
    assert connection.link.clientTransport.aborted
    assert not connection.client.reusable


def test_the_connection_closing_mid_response_fails_the_request_with_BackendClosed() -> None:
    connection = connect(Reply(stdout=HEAD + b"partial", end=False, close=True))

    recorder = connection.send()
    connection.link.flush()

    assert recorder.events[:-1] == [("stdout", HEAD + b"partial")]
    failure = recorder.failure
    assert failure.check(BackendClosed)
    closed = failure.value
    assert isinstance(closed, BackendClosed)
    assert closed.beforeResponse is False
    assert closed.reason.check(ConnectionDone)
    assert not connection.client.reusable


def test_a_close_before_any_output_is_marked_safe_to_retry() -> None:
    connection = connect()
    first = connection.send()
    connection.link.flush()
    assert first.events[-1] == ("ended", 0, 0)

    # php-fpm gives up the kept connection just as the next request is sent.
    connection.backend.close()
    second = connection.send()
    connection.link.flush()

    closed = second.failure.value
    assert isinstance(closed, BackendClosed)
    assert closed.beforeResponse is True


@pytest.mark.parametrize(
    "output",
    [
        pytest.param(Stderr(1, b"PHP Fatal error: z").encode(), id="stderr only"),
        pytest.param(Stdout(1, HEAD).encode()[:12], id="part of a record"),
    ],
)
def test_a_close_after_any_response_byte_is_not_marked_before_response(output: bytes) -> None:
    """The backend had taken the request: sending it again would run the script twice."""

    def respond(backend: FakeBackend, request: ReceivedRequest) -> None:
        backend.sendRaw(output)
        backend.close()

    connection = connect()
    connection.send()
    connection.link.flush()
    connection.backend.respond = respond

    recorder = connection.send()
    connection.link.flush()

    closed = recorder.failure.value
    assert isinstance(closed, BackendClosed)
    assert closed.beforeResponse is False


# Read timeout and backpressure


@pytest.mark.parametrize(
    ("since", "due"),
    [
        pytest.param(None, 10, id="sent on arrival"),
        pytest.param(-3, 7, id="sent after 3 s in a queue"),
    ],
)
def test_the_first_byte_is_due_within_the_read_timeout_of_the_requests_arrival(
    since: float | None, due: float
) -> None:
    """A request that waited for a connection still gets its 504 in time."""
    connection = connect(stall, readTimeout=10)
    recorder = connection.send(since=since)
    connection.link.flush()

    connection.clock.advance(due - 0.001)
    assert recorder.events == []
    connection.clock.advance(0.001)

    assert recorder.failure.check(BackendTimeout)
    connection.link.flush()
    assert connection.link.closed
    assert connection.backend.closed
    assert not connection.client.reusable


@pytest.mark.parametrize("since", [None, -3])
def test_every_arrival_restarts_the_read_timeout(since: float | None) -> None:
    """After the first byte the backend has the whole read timeout for each next one."""
    clock = MemoryReactorClock()

    def respond(backend: FakeBackend, request: ReceivedRequest) -> None:
        clock.callLater(6, backend.sendRaw, Stdout(1, HEAD).encode()[:3])

    client = FastCGIClientProtocol(clock, readTimeout=10)
    backend = FakeBackend(respond)
    link = Link(client, backend, clock)
    connection = Connection(clock, client, backend, link)
    recorder = connection.send(since=since)
    link.flush()

    clock.advance(6)
    link.flush()
    clock.advance(9.999)
    assert recorder.events == []
    clock.advance(0.001)

    assert recorder.failure.check(BackendTimeout)


def test_a_request_already_past_its_read_timeout_fails_at_once_without_being_sent() -> None:
    """It waited longer than the read timeout: running the script now helps nobody."""
    connection = connect(readTimeout=10)
    connection.clock.advance(100)

    late = connection.send(since=89.5)

    assert late.failure.check(BackendTimeout)
    assert connection.backend.clientWrites == []
    assert connection.client.reusable
    onTime = connection.send(since=99)
    connection.link.flush()
    assert onTime.events[-1] == ("ended", 0, 0)


def test_the_read_timeout_does_not_run_while_the_response_is_paused() -> None:
    connection = connect(stall, readTimeout=10)
    recorder = connection.send()
    connection.link.flush()

    connection.client.pauseProducing()
    assert connection.link.clientTransport.paused
    connection.clock.advance(1000)
    assert recorder.events == []

    connection.client.resumeProducing()
    assert not connection.link.clientTransport.paused
    connection.clock.advance(9.999)
    assert recorder.events == []
    connection.clock.advance(0.001)
    assert recorder.failure.check(BackendTimeout)


def test_the_read_timeout_does_not_run_between_requests() -> None:
    connection = connect(readTimeout=10)
    first = connection.send()
    connection.link.flush()
    assert first.events[-1] == ("ended", 0, 0)

    connection.clock.advance(1000)
    connection.link.flush()

    assert not connection.link.closed
    assert connection.client.reusable
    second = connection.send()
    connection.link.flush()
    assert second.events[-1] == ("ended", 0, 0)


def test_output_held_back_while_paused_arrives_once_resumed() -> None:
    connection = connect(Reply(stdout=HEAD + b"held"))
    recorder = connection.send()
    connection.client.pauseProducing()

    connection.link.flush()
    assert connection.backend.request.answered
    assert recorder.events == []

    connection.client.resumeProducing()
    connection.link.flush()
    assert recorder.stdout == HEAD + b"held"
    assert recorder.events[-1] == ("ended", 0, 0)


class PausingRecorder(ResponseRecorder):
    """Pauses its connection at the first output, as a slow HTTP client does."""

    def __init__(self, client: FastCGIClientProtocol) -> None:
        super().__init__()
        self.client = client

    def stdoutReceived(self, data: bytes) -> None:
        super().stdoutReceived(data)
        self.client.pauseProducing()


def test_a_connection_paused_when_its_request_ends_reads_again_for_the_next_request() -> None:
    connection = connect()
    first = connection.send(receiver=PausingRecorder(connection.client))
    connection.link.flush()
    assert first.events[-1] == ("ended", 0, 0)
    assert not connection.link.clientTransport.paused

    second = connection.send()
    connection.link.flush()
    assert second.events[-1] == ("ended", 0, 0)


def test_a_pause_with_no_request_in_flight_does_not_hold_back_the_next_request() -> None:
    """
    Pausing holds a response back for a slow client; a pause that comes when
    no response is being delivered has nothing to hold, and must neither stop
    reading nor turn off the next request's read timeout.
    """
    connection = connect(readTimeout=10)
    first = connection.send()
    connection.link.flush()
    assert first.events[-1] == ("ended", 0, 0)

    connection.client.pauseProducing()
    second = connection.send()
    connection.link.flush()

    assert second.events[-1] == ("ended", 0, 0)
    assert connection.client.reusable


class UnreadableBody(BytesIO):
    """A spooled body whose file fails after its first read, as on a disk error."""

    reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise OSError("read error")
        return super().read(size)


def test_a_body_that_cannot_be_read_fails_the_request_and_closes_the_connection() -> None:
    connection = connect(stall)

    recorder = connection.send(UnreadableBody(pattern(300_000)))
    connection.link.flush()

    assert recorder.failure.check(OSError)
    assert connection.link.clientTransport.aborted
    assert connection.link.closed
    assert not connection.client.reusable
    assert not connection.backend.request.stdinEnded


# Reuse and abort


def test_a_connection_is_reusable_when_new_and_after_a_clean_end_on_a_kept_connection() -> None:
    connection = connect(stall)
    assert connection.client.reusable

    connection.send()
    connection.link.flush()
    assert not connection.client.reusable

    Reply()(connection.backend, connection.backend.request)
    connection.link.flush()
    assert connection.client.reusable


def test_a_connection_the_backend_was_not_asked_to_keep_is_not_reusable() -> None:
    connection = connect(Reply(close=False))

    recorder = connection.send(keepConnection=False)
    connection.link.flush()

    assert recorder.events[-1] == ("ended", 0, 0)
    assert not connection.link.closed
    assert not connection.client.reusable


@pytest.mark.parametrize(
    ("answerAfterBodyBytes", "reusable"), [(None, True), (0, False), (100_000, False)]
)
def test_an_end_request_before_the_whole_body_was_sent_makes_the_connection_unusable(
    answerAfterBodyBytes: int | None, reusable: bool
) -> None:
    connection = connect(answerAfterBodyBytes=answerAfterBodyBytes)
    body = pattern(300_000)

    recorder = connection.send(body)
    connection.link.flush()

    assert recorder.events[-1] == ("ended", 0, 0)
    assert connection.client.reusable is reusable
    # An unusable connection got no more of the body, and above all no end
    # of it that the next request's STDIN could be mistaken for.
    request = connection.backend.request
    assert request.stdinEnded is reusable
    assert (request.stdin == body) is reusable


class AbortingRecorder(ResponseRecorder):
    """Aborts its connection at the first output, as when the HTTP client goes away."""

    def __init__(self, client: FastCGIClientProtocol) -> None:
        super().__init__()
        self.client = client

    def stdoutReceived(self, data: bytes) -> None:
        super().stdoutReceived(data)
        self.client.abort()


def test_abort_closes_the_connection_and_nothing_more_is_delivered() -> None:
    connection = connect(Reply(stdout=HEAD + pattern(100), stderr=b"late", recordSize=16))

    recorder = connection.send(receiver=AbortingRecorder(connection.client))
    connection.link.flush()

    assert recorder.events == [("stdout", HEAD[:16])]
    assert connection.link.clientTransport.aborted
    assert connection.link.closed
    assert connection.backend.closed
    assert not connection.client.reusable


def test_after_abort_output_already_read_and_the_close_are_not_delivered() -> None:
    clock = MemoryReactorClock()
    client = FastCGIClientProtocol(clock, readTimeout=10)
    transport = StringTransport()
    client.makeConnection(transport)
    recorder = ResponseRecorder()
    client.sendRequest(list(PARAMS), BytesIO(b""), 0, recorder, True)

    client.abort()
    assert transport.disconnected
    client.dataReceived(Stdout(1, HEAD).encode() + EndRequest(1, 0, 0).encode())
    client.connectionLost(Failure(ConnectionAborted()))
    clock.advance(1000)

    assert recorder.events == []
    assert not client.reusable
    assert client.whenClosed.called


# Writing to a real socket


class DirectWriteTests(TestCase):
    """On a socket, the request goes out at once: php-fpm need not wait for a reactor turn."""

    def test_a_request_is_on_the_socket_before_the_reactor_turns(self) -> Deferred[None]:
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        theirs.setblocking(False)
        protocol = FastCGIClientProtocol(reactor, readTimeout=10)
        factory = ServerFactory.forProtocol(lambda: protocol)
        factory.noisy = False
        cast(IReactorSocket, reactor).adoptStreamConnection(
            ours.fileno(), socket.AF_UNIX, cast("ServerFactory[Any]", factory)
        )
        ours.close()
        protocol.sendRequest(
            [(b"SCRIPT_NAME", b"/a.php")], BytesIO(b"body"), 4, ResponseRecorder(), True
        )
        records = RecordDecoder().receiveData(theirs.recv(65536))
        assert [type(record) for record in records] == [BeginRequest, Params, Params, Stdin, Stdin]
        protocol.abort()
        return protocol.whenClosed
