"""
The dedicated HTTP/1.1 front, L{txfastcgi.http1}, specified in memory: a
client on a L{StringTransport}, the deadlines on a L{MemoryReactorClock},
and a fake core that follows the core/front contract (L{FakeProxy}).

The limits and smuggling rules are those of the twisted.web front
(C{test_http_parsing.py}, C{test_http_timeouts.py}, C{test_security.py}),
with the same requests and the same answers.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from tests.recordingbackend import Answer, parseAnswers
from tests.test_http_parsing import CONTROL_TARGETS, RAW_TARGETS, UNICODE_TITLE, chunk
from tests.test_http_timeouts import GET, POST_HEAD, SLOW_HEAD
from tests.test_security import AMBIGUOUS_REQUESTS
from txfastcgi.framing import BodyFraming, Delimiter, responseBodyFraming
from txfastcgi.http1 import HTTP1Factory, Response
from txfastcgi.served import Served, Upstream, noteUpstream

ANY_HOST = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"


@implementer(IPushProducer)
class FakeProducer:
    """A FastCGI connection, as far as backpressure goes."""

    def __init__(self) -> None:
        self.state = "producing"

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


@dataclass
class FakeExchange:
    """One request the fake core was given, answered when the test says so."""

    request: Any
    writer: Response
    body: bytes
    gone: bool = False

    def clientGone(self) -> None:
        self.gone = True

    def answer(
        self,
        body: bytes = b"ran",
        code: int = 200,
        headers: Sequence[tuple[bytes, bytes]] = (),
        contentLength: bool = True,
    ) -> None:
        """Answer as the core does, with the framing it would choose."""
        framing = responseBodyFraming(
            self.request.method, code, len(body) if contentLength else None, self.request.version
        )
        self.writer.writeHead(code, b"OK", headers, framing)
        if framing.hasBody:
            self.writer.writeBody(body)
        self.writer.finish()


@dataclass
class FakeProxy:
    """
    A core that follows the contract: it reads the whole body, and answers
    at once unless told to wait.
    """

    answerAtOnce: bool = True
    exchanges: list[FakeExchange] = field(default_factory=list)

    def handle(self, request: Any, writer: Response) -> FakeExchange:
        exchange = FakeExchange(request, writer, request.body.read())
        self.exchanges.append(exchange)
        if self.answerAtOnce:
            exchange.answer()
        return exchange

    def seen(self) -> list[tuple[bytes, bytes]]:
        """The target and body of each request handed over."""
        return [(exchange.request.target, exchange.body) for exchange in self.exchanges]


class TCPTransport(StringTransport):
    """A L{StringTransport} that, as TCP does, can half-close."""

    writeClosed = False
    noDelay = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


class Client:
    """One client connection to an L{HTTP1Factory}."""

    def __init__(self, factory: HTTP1Factory) -> None:
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        self.protocol = factory.buildProtocol(address)
        self.transport = TCPTransport(
            peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.2", 8080)
        )
        alsoProvides(self.transport, ITCPTransport)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        received: bytes = self.transport.value()
        return received

    def answers(self, methods: Sequence[bytes] = ()) -> list[Answer]:
        return parseAnswers(self.received(), methods)

    def statuses(self) -> list[int]:
        return [answer.status for answer in self.answers()]

    def closed(self) -> bool:
        """Whether the server has closed (or begun to close) the connection."""
        return bool(self.transport.disconnecting or self.transport.disconnected)

    def reading(self) -> bool:
        return bool(self.transport.producerState == "producing")

    def close(self, reason: type[Exception] = ConnectionDone) -> None:
        self.protocol.connectionLost(Failure(reason()))


def staticFileServer(served: list[tuple[Any, str]]) -> Callable[[Any, str, Response], None]:
    """A static sender that answers every file with its name."""

    def serve(request: Any, filename: str, writer: Response) -> None:
        served.append((request, filename))
        body = filename.encode()
        writer.writeHead(200, b"OK", [], BodyFraming(Delimiter.CONTENT_LENGTH, len(body)))
        writer.writeBody(body)
        writer.finish()

    return serve


def makeFactory(
    proxy: FakeProxy | None = None, **options: Any
) -> tuple[HTTP1Factory, FakeProxy, MemoryReactorClock]:
    clock = MemoryReactorClock()
    proxy = proxy if proxy is not None else FakeProxy()
    options.setdefault("serveStaticFile", staticFileServer([]))
    options.setdefault("headerTimeout", 60.0)
    options.setdefault("bodyTimeout", 60.0)
    factory = HTTP1Factory(proxy, reactor=clock, **options)
    return factory, proxy, clock


@pytest.fixture
def client() -> Iterator[Client]:
    factory, _, _ = makeFactory()
    connected = Client(factory)
    yield connected
    connected.close()


def connect(**options: Any) -> tuple[Client, FakeProxy, MemoryReactorClock]:
    factory, proxy, clock = makeFactory(**options)
    return Client(factory), proxy, clock


# Requests and answers


def test_a_kept_connection_serves_one_request_after_another() -> None:
    client, proxy, _ = connect()
    client.send(b"GET /a.php?x=1 HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n")
    client.send(b"POST /b HTTP/1.1\r\nHost: example.org\r\nContent-Length: 5\r\n\r\nhello")
    (first, second) = client.answers()
    assert (first.status, first.body, first.header("Content-Length")) == (200, b"ran", ["3"])
    assert first.header("Connection") == []
    assert second.status == 200
    assert not client.closed()
    request = proxy.exchanges[0].request
    assert (request.method, request.target, request.version) == (b"GET", b"/a.php?x=1", b"HTTP/1.1")
    assert list(request.headers) == [(b"Host", b"example.org"), (b"Accept", b"*/*")]
    assert (request.client, request.server, request.secure) == (
        ("127.0.0.1", 40000),
        ("127.0.0.2", 8080),
        False,
    )
    assert request.bodyLength == 0
    assert proxy.seen()[1] == (b"/b", b"hello")
    assert proxy.exchanges[1].request.bodyLength == 5
    assert proxy.exchanges[0].request.record is proxy.exchanges[0].writer
    client.close()


def test_pipelined_requests_are_answered_one_at_a_time_in_order() -> None:
    """
    Three requests in one packet: the next is handed over only once the one
    before is answered, and the transport stops reading meanwhile.
    """
    client, proxy, _ = connect(proxy=FakeProxy(answerAtOnce=False))
    client.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: example.org\r\n\r\n" % n for n in range(3)))
    assert [exchange.request.target for exchange in proxy.exchanges] == [b"/0"]
    assert not client.reading()
    proxy.exchanges[0].answer(b"zero")
    assert len(proxy.exchanges) == 2
    proxy.exchanges[1].answer(b"one")
    proxy.exchanges[2].answer(b"two")
    assert [answer.body for answer in client.answers()] == [b"zero", b"one", b"two"]
    assert client.reading()
    assert not client.closed()
    client.close()


def test_a_waiting_request_keeps_the_connection_read() -> None:
    """
    While a script runs, a client that hangs up (as WP-Cron does) is noticed:
    the transport goes on reading until the client sends more.
    """
    client, proxy, _ = connect(proxy=FakeProxy(answerAtOnce=False))
    client.send(GET)
    assert client.reading()
    client.close()
    assert proxy.exchanges[0].gone


def test_http_1_0_bodies_without_a_length_end_with_the_connection() -> None:
    client, proxy, _ = connect(proxy=FakeProxy(answerAtOnce=False))
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    proxy.exchanges[0].answer(b"until the end", contentLength=False)
    assert client.received().endswith(b"\r\n\r\nuntil the end")
    (answer,) = client.answers()
    assert (answer.header("Content-Length"), answer.header("Connection")) == ([], ["close"])
    assert client.closed()
    client.close()


@pytest.mark.parametrize(
    ("request_", "kept", "connectionHeader"),
    [
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True, ["keep-alive"]),
        (b"GET / HTTP/1.0\r\n\r\n", False, ["close"]),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False, ["close"]),
    ],
    ids=["1.0 keep-alive", "1.0", "1.1 close"],
)
def test_the_client_decides_whether_the_connection_is_kept(
    request_: bytes, kept: bool, connectionHeader: list[str]
) -> None:
    client, _, _ = connect()
    client.send(request_)
    (answer,) = client.answers()
    assert (answer.status, answer.header("Content-Length")) == (200, ["3"])
    assert answer.header("Connection") == connectionHeader
    assert client.closed() is not kept
    client.close()


def test_http_1_0_clients_never_get_chunks() -> None:
    """A core that asked for chunked coding gets a close-delimited body instead."""
    client, proxy, _ = connect(proxy=FakeProxy(answerAtOnce=False))
    client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    writer = proxy.exchanges[0].writer
    writer.writeHead(200, b"OK", [], BodyFraming(Delimiter.CHUNKED, None))
    writer.writeBody(b"plain")
    writer.finish()
    assert client.received().endswith(b"Connection: close\r\n\r\nplain")
    assert client.closed()
    client.close()


def test_a_chunked_response_is_framed_by_the_front() -> None:
    client, proxy, _ = connect(proxy=FakeProxy(answerAtOnce=False))
    client.send(GET + GET)
    writer = proxy.exchanges[0].writer
    writer.writeHead(
        200, b"OK", [(b"Content-Type", b"text/plain")], BodyFraming(Delimiter.CHUNKED, None)
    )
    writer.writeBody(b"first ")
    writer.writeBody(b"")
    writer.writeBody(b"second")
    writer.finish()
    assert client.received().endswith(b"6\r\nfirst \r\n6\r\nsecond\r\n0\r\n\r\n")
    (answer,) = client.answers()
    assert (answer.body, answer.header("Transfer-Encoding")) == (b"first second", ["chunked"])
    proxy.exchanges[1].answer()
    assert client.statuses() == [200, 200]
    client.close()


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\nHost: a\r\nIf-None-Match: *\r\n\r\n", 304),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 204),
    ],
    ids=["HEAD", "304", "204"],
)
def test_answers_without_a_body_keep_the_length_they_declare(request_: bytes, code: int) -> None:
    client, proxy, _ = connect(proxy=FakeProxy(answerAtOnce=False))
    client.send(request_ + GET)
    exchange = proxy.exchanges[0]
    framing = responseBodyFraming(exchange.request.method, code, 1234)
    exchange.writer.writeHead(code, b"Whatever", [(b"Content-Length", b"1234")], framing)
    exchange.writer.writeBody(b"never sent")
    exchange.writer.finish()
    proxy.exchanges[1].answer(b"next")
    head, _, rest = client.received().partition(b"\r\n\r\n")
    assert head.count(b"Content-Length") == 1 and b"Content-Length: 1234" in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.endswith(b"\r\n\r\nnext")
    assert not client.closed()
    client.close()


def test_date_and_server_are_added_unless_the_answer_has_them(client: Client) -> None:
    client.send(GET)
    (answer,) = client.answers()
    assert answer.header("Date") == ["Thu, 01 Jan 1970 00:00:00 GMT"]
    assert answer.header("Server") == ["txfastcgi"]


def test_date_and_server_of_the_answer_are_kept() -> None:
    client, proxy, _ = connect(proxy=FakeProxy(answerAtOnce=False))
    client.send(GET)
    proxy.exchanges[0].answer(headers=[(b"date", b"yesterday"), (b"SERVER", b"php")])
    (answer,) = client.answers()
    assert (answer.header("Date"), answer.header("Server")) == (["yesterday"], ["php"])
    client.close()


def answering(length: int, start: bytes) -> tuple[Client, FakeProxy, Response]:
    """Two requests, the first being answered with C{start} of a C{length}-byte body."""
    client, proxy, _ = connect(proxy=FakeProxy(answerAtOnce=False))
    client.send(GET + GET)
    writer = proxy.exchanges[0].writer
    writer.writeHead(200, b"OK", [], BodyFraming(Delimiter.CONTENT_LENGTH, length))
    writer.writeBody(start)
    return client, proxy, writer


def test_a_body_shorter_than_its_length_closes_the_connection() -> None:
    """The client would wait for ever for the rest; a longer one is cut at its length."""
    client, proxy, writer = answering(10, b"short")
    writer.finish()
    assert client.closed()
    assert len(proxy.exchanges) == 1
    client.close()
    client, proxy, writer = answering(4, b"lo")
    writer.writeBody(b"ngest")
    writer.finish()
    assert client.received().endswith(b"\r\n\r\nlong")
    assert len(proxy.exchanges) == 2
    client.close()


def test_expect_100_continue_is_answered_before_the_body_is_read() -> None:
    client, proxy, _ = connect()
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert client.received() == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.send(b"body")
    assert proxy.seen() == [(b"/", b"body")]
    assert client.received().count(b"HTTP/1.1 200 OK") == 1
    client.close()


def test_large_bodies_are_spooled_to_a_file_and_chunked_ones_get_a_length() -> None:
    client, proxy, _ = connect()
    large = bytes(range(256)) * 1000
    client.send(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(large))
    for start in range(0, len(large), 7000):
        client.send(large[start : start + 7000])
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.send(chunk(b"ab") + b"3;ext=1\r\nc" + b"de\r\n0\r\nTrailer: x\r\n\r\n")
    assert proxy.seen() == [(b"/", large), (b"/", b"abcde")]
    first, second = (exchange.request for exchange in proxy.exchanges)
    assert not isinstance(first.body, io.BytesIO)
    assert (first.bodyLength, second.bodyLength) == (len(large), 5)
    assert (b"Trailer", b"x") not in second.headers
    assert client.statuses() == [200, 200]
    client.close()


def test_a_static_file_is_answered_by_the_static_sender() -> None:
    served: list[tuple[Any, str]] = []
    client, proxy, _ = connect(
        proxy=FakeProxy(answerAtOnce=False), serveStaticFile=staticFileServer(served)
    )
    client.send(GET)
    proxy.exchanges[0].writer.serveFile("/srv/www/fast")
    assert served == [(proxy.exchanges[0].request, "/srv/www/fast")]
    (answer,) = client.answers()
    assert answer.body == b"/srv/www/fast"
    client.close()


# Limits and smuggling


def refused(client: Client, status: int) -> None:
    """The client got C{status}, once, and the connection is closing gently."""
    (answer,) = client.answers()
    assert (answer.status, answer.header("Connection")) == (status, ["close"])
    assert client.transport.writeClosed
    assert not client.closed()


def test_bytes_over_0x7f_in_the_request_target_reach_the_core_untouched() -> None:
    for target in RAW_TARGETS:
        client, proxy, _ = connect()
        client.send(
            b"\r\nGET %s HTTP/1.1\r\nHost: example.org\r\nX-T: %s\r\n\r\n" % (target, target)
        )
        assert client.statuses() == [200], target
        assert proxy.exchanges[0].request.target == target
        assert proxy.exchanges[0].request.headers[1] == (b"X-T", target)
        client.close()


def test_a_target_over_0x7f_split_across_reads_and_pipelined_is_untouched() -> None:
    client, proxy, _ = connect()
    raw = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n\xff\xfe"
    raw += b"GET /" + UNICODE_TITLE + b"?q=" + UNICODE_TITLE + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    for index in range(len(raw)):
        client.send(raw[index : index + 1])
    client.send(raw)
    expected = [(b"/a", b"\xff\xfe"), (b"/" + UNICODE_TITLE + b"?q=" + UNICODE_TITLE, b"")]
    assert proxy.seen() == expected * 2
    client.close()


@pytest.mark.parametrize(
    "request_",
    [
        *(b"GET %s HTTP/1.1\r\nHost: example.org\r\n\r\n" % target for target in CONTROL_TARGETS),
        b"G\xc3\x9cT / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.\xb1\r\nHost: a\r\n\r\n",
        b"GET / " + UNICODE_TITLE + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad\x01Name: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        *AMBIGUOUS_REQUESTS.values(),
    ],
)
def test_malformed_or_ambiguous_requests_are_a_400_and_never_reach_the_core(
    request_: bytes,
) -> None:
    client, proxy, _ = connect()
    client.send(request_)
    refused(client, 400)
    assert proxy.exchanges == []
    client.close()


def test_a_request_without_host_is_fine_in_http_1_0(client: Client) -> None:
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    assert client.statuses() == [200]


def test_versions_other_than_1_0_and_1_1_are_a_505(client: Client) -> None:
    client.send(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")
    refused(client, 505)


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (b"ffffffffffffffffffff\r\n", 400),
        (b"10000000000000000\r\n", 400),
        (b"ffffffffffffffff\r\n", 413),
        (b"3e9\r\n", 413),
        (b"3e9;name=value\r\n", 413),
        (chunk(b"a" * 600) + b"191\r\n", 413),
        (chunk(b"b" * 100) * 10 + chunk(b"b"), 413),
    ],
)
def test_a_chunk_size_too_large_is_answered_from_its_size_line(sent: bytes, status: int) -> None:
    client, proxy, _ = connect(maxBodySize=1000)
    client.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + sent)
    refused(client, status)
    assert proxy.exchanges == []
    client.close()


def test_a_chunked_body_of_exactly_the_limit_is_accepted() -> None:
    client, proxy, _ = connect(maxBodySize=1000)
    body = chunk(b"c" * 600) + b"00000000000000000000190\r\n" + b"c" * 400 + b"\r\n0\r\n\r\n"
    client.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert client.statuses() == [200]
    assert proxy.seen() == [(b"/up", b"c" * 1000)]
    client.close()


def test_a_declared_length_over_the_limit_is_a_413_without_100_continue() -> None:
    client, proxy, _ = connect(maxBodySize=1000)
    client.send(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1001\r\n\r\n"
    )
    refused(client, 413)
    assert b"100 Continue" not in client.received()
    client.send(b"x" * 1001)  # Read and dropped.
    assert proxy.exchanges == []
    client.close()


def test_a_body_of_exactly_the_limit_reaches_the_core() -> None:
    client, proxy, _ = connect(maxBodySize=1000)
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"y" * 1000)
    assert proxy.seen() == [(b"/", b"y" * 1000)]
    client.close()


LIMIT = 1024


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GET /" + b"q" * LIMIT + b" HTTP/1.1\r\n", 414),
        (b"GET /" + b"q" * LIMIT, 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * LIMIT, 431),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Many: aaaaaaaa\r\n" * (LIMIT // 16), 431),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X:\r\n" * LIMIT, 431),
    ],
    ids=["request line", "request line unfinished", "header", "many headers", "many short"],
)
def test_a_head_over_the_limit_is_a_431_and_a_request_line_a_414(
    request_: bytes, status: int
) -> None:
    client, proxy, _ = connect(maxHeaderSize=LIMIT)
    client.send(request_)
    refused(client, status)
    assert proxy.exchanges == []
    client.close()


def test_a_head_just_within_the_limit_arrives_whole() -> None:
    """Line ends do not count, as in twisted.web, byte by byte or in one piece."""
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * (LIMIT - 14 - 7 - 7) + b"\r\n\r\n"
    for pieces in [[head], [head[index : index + 1] for index in range(len(head))]]:
        client, _, _ = connect(maxHeaderSize=LIMIT)
        for piece in pieces:
            client.send(piece)
        assert client.statuses() == [200]
        client.close()
        client, _, _ = connect(maxHeaderSize=LIMIT - 1)
        for piece in pieces:
            client.send(piece)
        refused(client, 431)
        client.close()


def test_a_refused_connection_lingers_then_closes() -> None:
    client, _, clock = connect()
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    refused(client, 400)
    client.send(b"more of what the client was sending")
    clock.advance(4)
    assert not client.closed()
    clock.advance(2)
    assert client.transport.disconnected
    assert client.statuses() == [400]
    client.close()


# Deadlines


def trickle(
    clients: Sequence[Client], clock: MemoryReactorClock, data: bytes, seconds: int
) -> None:
    """Send C{data} on each connection, a byte a second, for C{seconds} seconds at most."""
    for index in range(seconds):
        for client in clients if index < len(data) else ():
            client.send(data[index : index + 1])
        clock.advance(1)


def test_heads_trickling_in_are_a_408_once_the_header_timeout_is_up() -> None:
    factory, _, clock = makeFactory()
    slow = [Client(factory) for _ in range(50)]
    trickle(slow, clock, SLOW_HEAD, 30)
    fast = Client(factory)
    fast.send(GET)
    assert fast.statuses() == [200]
    trickle(slow, clock, SLOW_HEAD[30:], 29)
    assert {(client.received(), client.closed()) for client in slow} == {(b"", False)}
    trickle(slow, clock, SLOW_HEAD[59:], 2)
    for client in slow:
        refused(client, 408)
    clock.advance(5)
    assert all(client.closed() for client in slow)
    assert not fast.closed()
    for client in [*slow, fast]:
        client.close()
    assert clock.getDelayedCalls() == []


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    client, _, clock = connect()
    clock.advance(59)
    assert not client.closed()
    clock.advance(2)
    assert (client.closed(), client.received()) == (True, b"")
    client.close()


def test_an_idle_kept_connection_is_closed_after_the_idle_timeout() -> None:
    client, _, clock = connect(idleTimeout=300.0)
    client.send(GET)
    clock.advance(299)
    assert (client.statuses(), client.closed()) == ([200], False)
    clock.advance(2)
    assert client.closed()
    client.close()


def test_on_a_kept_connection_the_head_clock_starts_at_its_first_byte() -> None:
    client, _, clock = connect(idleTimeout=3600.0)
    client.send(GET)
    clock.advance(1000)
    trickle([client], clock, SLOW_HEAD, 59)
    assert (client.statuses(), client.closed()) == ([200], False)
    trickle([client], clock, SLOW_HEAD[59:], 2)
    assert client.statuses() == [200, 408]
    client.close()


@pytest.mark.parametrize(
    "start",
    [
        POST_HEAD + b"12345",
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\na\r\n12345",
    ],
    ids=["length", "chunked"],
)
def test_a_body_that_stops_for_the_body_timeout_is_a_408(start: bytes) -> None:
    client, proxy, clock = connect()
    client.send(start)
    clock.advance(59)
    assert (client.received(), client.closed()) == (b"", False)
    clock.advance(2)
    refused(client, 408)
    assert proxy.exchanges == []
    client.close()


def test_a_slow_body_that_keeps_coming_is_served() -> None:
    client, proxy, clock = connect()
    client.send(POST_HEAD)
    for byte in b"0123456789":
        clock.advance(30)
        client.send(bytes([byte]))
    assert proxy.seen() == [(b"/upload", b"0123456789")]
    client.close()


def test_no_timeout_while_the_request_is_being_answered() -> None:
    """A head pipelined behind it is timed from when it is read."""
    client, proxy, clock = connect(proxy=FakeProxy(answerAtOnce=False))
    client.send(GET + SLOW_HEAD[:20])
    clock.advance(500)
    assert (client.received(), client.closed()) == (b"", False)
    proxy.exchanges[0].answer()
    clock.advance(59)
    assert (client.statuses(), client.closed()) == ([200], False)
    clock.advance(2)
    assert client.statuses() == [200, 408]
    client.close()


# Backpressure and going away


def test_the_transports_pauses_reach_the_producer_of_the_response() -> None:
    client, proxy, _ = connect(proxy=FakeProxy(answerAtOnce=False))
    assert client.transport.producer is client.protocol
    client.send(GET + GET)
    producer = FakeProducer()
    proxy.exchanges[0].writer.registerProducer(producer)
    client.protocol.pauseProducing()  # Twisted's buffer is full.
    assert producer.state == "paused"
    client.protocol.resumeProducing()
    assert producer.state == "producing"
    client.protocol.pauseProducing()
    proxy.exchanges[0].writer.unregisterProducer()
    proxy.exchanges[0].answer()
    later = FakeProducer()
    proxy.exchanges[1].writer.registerProducer(later)
    assert later.state == "paused"
    client.protocol.resumeProducing()
    assert (producer.state, later.state) == ("paused", "producing")
    client.close()


def test_a_client_gone_mid_response_is_told_to_the_core_and_nothing_more_is_written() -> None:
    records: list[Served] = []
    client, proxy, _ = connect(proxy=FakeProxy(answerAtOnce=False), observers=[records.append])
    client.send(GET)
    writer = proxy.exchanges[0].writer
    writer.writeHead(200, b"OK", [], BodyFraming(Delimiter.CHUNKED, None))
    writer.writeBody(b"part")
    sent = client.received()
    client.close(ConnectionLost)
    assert proxy.exchanges[0].gone
    writer.writeBody(b"more")
    writer.finish()
    assert client.received() == sent
    assert records == []


def test_a_client_gone_mid_body_never_reaches_the_core() -> None:
    client, proxy, clock = connect()
    client.send(POST_HEAD + b"123")
    client.close(ConnectionLost)
    assert proxy.exchanges == []
    assert clock.getDelayedCalls() == []


def test_an_aborted_response_cuts_the_connection() -> None:
    client, proxy, writer = answering(100, b"partial")
    writer.abort()
    assert client.transport.disconnected
    assert len(proxy.exchanges) == 1
    client.close(ConnectionLost)
    assert not proxy.exchanges[0].gone


# Records


def test_each_answered_request_gives_one_record() -> None:
    records: list[Served] = []
    factory, proxy, clock = makeFactory(FakeProxy(answerAtOnce=False), observers=[records.append])
    clock.advance(100)
    client = Client(factory)
    client.send(b"GET /a?b HTTP/1.1\r\nHost: example.org\r\nUser-Agent: ua\r\nReferer: /r\r\n\r\n")
    clock.advance(2.5)
    exchange = proxy.exchanges[0]
    noteUpstream(exchange.request.record, Upstream("unix:/php.sock", 2.0))
    exchange.answer(b"12345")
    assert records == [
        Served(
            time=100.0,
            client="127.0.0.1",
            method=b"GET",
            target=b"/a?b",
            protocol=b"HTTP/1.1",
            status=200,
            sent=5,
            referrer=b"/r",
            userAgent=b"ua",
            host=b"example.org",
            seconds=2.5,
            upstream=Upstream("unix:/php.sock", 2.0),
        )
    ]
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert [(record.status, record.upstream) for record in records] == [
        (200, Upstream("unix:/php.sock", 2.0)),
        (400, None),
    ]
    client.close()
