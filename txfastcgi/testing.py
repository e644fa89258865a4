"""
An in-memory php-fpm, to test code that embeds txfastcgi without a php-fpm
to run: what C{treq.testing}'s C{StubTreq} is to treq.  The server side of
FastCGI is played by the sans-IO codec in L{txfastcgi._fastcgi.records}, with
no socket and no process; nothing moves until the test says so, so a test
on a L{twisted.internet.testing.MemoryReactorClock} is deterministic.

The pieces, smallest first:

  - L{FakeBackend}: the server side of one connection.  It decodes what the
    client sends into L{ReceivedRequest}s (params as a dict, the body, the
    BEGIN_REQUEST flags, every record, every write the client made) and,
    once a request's body has arrived, calls its C{respond} script.
  - Scripts: L{Reply} is the usual answer (STDOUT, STDERR, END_REQUEST, cut
    into records and writes of any size, then a close unless the client asked
    to keep the connection); L{stall} answers nothing.  Any other function
    C{(backend, request) -> None} can script the rest with the backend's
    C{send*}, L{FakeBackend.endRequest} and L{FakeBackend.close} methods:
    output in any order, malformed bytes, a close in mid-response.
  - L{Link}: joins a client protocol to a backend through
    L{twisted.test.iosim.FakeTransport}s.  Nothing moves until the test calls
    L{Link.pump} or L{Link.flush}.  It pumps on its own rather than with
    iosim's C{IOPump}, which joins all of a side's writes into one delivery
    and cannot hold data back from a reader that paused.  The client's transport behaves as a TCP
    one where it matters: it stops reading while paused, and it pauses a
    streaming producer while more than 64 KiB wait to be sent.
  - L{FakeBackendEndpoint}: an C{IStreamClientEndpoint} that makes a new
    L{Link} and L{FakeBackend} for every connect, for a
    L{txfastcgi.ConnectionPool} or a L{txfastcgi.FastCGIResource}; connects can be refused or held.
  - L{FakePHPFPM}: an endpoint that behaves as a php-fpm pool does under
    load: a number of workers, a listen backlog, scripts that take time.
  - L{ResponseRecorder}: what a client protocol delivers, kept for asserts.

docs/embedding.rst ("Testing your embedding without php-fpm") shows a whole
test of a resource mounted in a site of the user's own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeAddress, FakeTransport
from zope.interface import implementer

from txfastcgi._fastcgi.records import (
    FCGI_KEEP_CONN,
    MAX_CONTENT_LENGTH,
    AbortRequest,
    BeginRequest,
    EndRequest,
    Params,
    ProtocolStatus,
    Record,
    RecordDecoder,
    Stderr,
    Stdin,
    Stdout,
    decodeNameValuePairs,
)
from txfastcgi.errors import ProtocolError, UnexpectedRecord

__all__ = [
    "ClientTransport",
    "FakeBackend",
    "FakeBackendEndpoint",
    "FakePHPFPM",
    "Link",
    "ReceivedRequest",
    "Reply",
    "Responder",
    "ResponseRecorder",
    "stall",
]

# A bound on the steps of one flush, so that a livelock fails the test
# instead of hanging it.  Output written one byte per write takes one step a
# byte.
_MAX_FLUSH_STEPS = 1_000_000

_CONNECTION_DONE = Failure(ConnectionDone())


@dataclass
class ReceivedRequest:
    """
    One request as the backend received it, complete or not.

    @ivar paramPairs: the PARAMS in order, duplicates kept.
    @ivar stdin: the body bytes received so far.
    @ivar stdinRecordLengths: the content length of every STDIN record, the
        empty one that ends the body included.
    @ivar answered: whether the C{respond} script has been called.
    @ivar ended: whether END_REQUEST has been sent for it.
    """

    requestId: int
    role: int
    flags: int
    paramPairs: list[tuple[bytes, bytes]] = field(default_factory=list)
    paramsEnded: bool = False
    stdin: bytes = b""
    stdinRecordLengths: list[int] = field(default_factory=list)
    stdinEnded: bool = False
    aborted: bool = False
    answered: bool = False
    ended: bool = False

    @property
    def params(self) -> dict[bytes, bytes]:
        """The params as a dict; of a repeated name, the last value."""
        return dict(self.paramPairs)

    @property
    def keepConnection(self) -> bool:
        """Whether BEGIN_REQUEST asked for the connection to be kept (FCGI_KEEP_CONN)."""
        return bool(self.flags & FCGI_KEEP_CONN)


Responder = Callable[["FakeBackend", ReceivedRequest], None]
"""
A script for the backend's answer, called once per request when its body has
arrived (or earlier, see L{FakeBackend}'s C{answerAfterBodyBytes}).  It
answers through the backend's methods, now or later (for example from a
C{clock.callLater}).
"""


def stall(backend: FakeBackend, request: ReceivedRequest) -> None:
    """A L{Responder} that answers nothing: the request stays open, the connection silent."""


def _encodeStream(
    recordType: type[Stdout | Stderr], requestId: int, data: bytes, recordSize: int
) -> bytes:
    """C{data} as records of C{recordType} of at most C{recordSize} bytes, no terminator."""
    if not 1 <= recordSize <= MAX_CONTENT_LENGTH:
        raise ValueError(f"record size {recordSize} is not in 1..{MAX_CONTENT_LENGTH}")
    return b"".join(
        recordType(requestId, data[start : start + recordSize]).encode()
        for start in range(0, len(data), recordSize)
    )


@dataclass(frozen=True)
class Reply:
    """
    The usual answer, as a L{Responder}: all of C{stdout}, then all of
    C{stderr}, then (with C{end}) the empty records that end both streams and
    END_REQUEST; then a close if C{close} says so.

    @ivar recordSize: the most content bytes in one STDOUT or STDERR record.
    @ivar writeSize: cut the bytes into writes of this size, each delivered
        to the client in its own C{dataReceived}; L{None} for one write.
    @ivar end: whether to end the request.  Without it, the answer stops
        after the output: combine with C{close=True} to close mid-response.
    @ivar close: whether to close the connection afterwards; L{None} does
        what php-fpm does: close after ending a request that did not ask for
        FCGI_KEEP_CONN.
    """

    stdout: bytes = b"Content-Type: text/plain\r\n\r\nHello"
    stderr: bytes = b""
    appStatus: int = 0
    protocolStatus: int = ProtocolStatus.REQUEST_COMPLETE
    recordSize: int = MAX_CONTENT_LENGTH
    writeSize: int | None = None
    end: bool = True
    close: bool | None = None

    def __call__(self, backend: FakeBackend, request: ReceivedRequest) -> None:
        requestId = request.requestId
        parts = [
            _encodeStream(Stdout, requestId, self.stdout, self.recordSize),
            _encodeStream(Stderr, requestId, self.stderr, self.recordSize),
        ]
        if self.end:
            parts.append(Stdout(requestId, b"").encode())
            if self.stderr:
                parts.append(Stderr(requestId, b"").encode())
            parts.append(EndRequest(requestId, self.appStatus, self.protocolStatus).encode())
        backend.sendRaw(b"".join(parts), self.writeSize)
        if self.end:
            request.ended = True
        close = self.close
        if close is None:
            close = self.end and not request.keepConnection
        if close:
            backend.close()


class FakeBackend(Protocol):
    """
    The server side of one FastCGI connection, for tests.

    It receives with L{RecordDecoder} and answers with the records'
    C{encode()}.  Whatever the client sends is kept: C{records} (every
    record, in order), C{requests} (one L{ReceivedRequest} per
    BEGIN_REQUEST) and, when connected through a L{Link}, C{clientWrites}
    (each C{transport.write} the client made, as it made it).

    A client that breaks the protocol (bad record, a second request while
    one is in progress, a record for another request id) is recorded in
    C{protocolError} and the connection is closed, as php-fpm would.  Once
    the backend has closed the connection it ignores whatever still arrives.

    @param respond: the script for every request's answer; an attribute, so
        that a test can change it between requests.  L{Reply} by default.
    @param answerAfterBodyBytes: answer as soon as this many body bytes have
        arrived (0: right after the PARAMS) instead of at the end of STDIN,
        like a script that answers without reading the whole body.  The rest
        of the body is still received and recorded.
    """

    def __init__(
        self, respond: Responder | None = None, *, answerAfterBodyBytes: int | None = None
    ) -> None:
        self.respond: Responder = respond if respond is not None else Reply()
        self.answerAfterBodyBytes = answerAfterBodyBytes
        self.requests: list[ReceivedRequest] = []
        self.records: list[Record] = []
        self.clientWrites: list[bytes] = []
        self.protocolError: ProtocolError | None = None
        self.closed = False
        self._decoder = RecordDecoder()
        self._paramBytes = bytearray()

    @property
    def request(self) -> ReceivedRequest:
        """The latest request received."""
        assert self.requests, "the backend has received no request"
        return self.requests[-1]

    # Receiving

    def dataReceived(self, data: bytes) -> None:
        if self.protocolError is not None or self._closing:
            return
        try:
            for record in self._decoder.receiveData(data):
                self.records.append(record)
                self._receive(record)
        except ProtocolError as error:
            self.protocolError = error
            self.close()

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.closed = True

    def _receive(self, record: Record) -> None:
        if isinstance(record, BeginRequest):
            if self.requests and not self.request.ended:
                raise UnexpectedRecord(
                    f"BEGIN_REQUEST while request {self.request.requestId} is in progress"
                )
            self.requests.append(ReceivedRequest(record.requestId, record.role, record.flags))
            self._paramBytes.clear()
            return
        if not isinstance(record, (Params, Stdin, AbortRequest)):
            return  # Management records and the like: kept in records, not answered.
        if not self.requests or record.requestId != self.request.requestId:
            raise UnexpectedRecord(
                f"{type(record).__name__} for unknown request {record.requestId}"
            )
        request = self.request
        if isinstance(record, AbortRequest):
            request.aborted = True
        elif isinstance(record, Params):
            if record.data:
                self._paramBytes += record.data
            else:
                request.paramPairs = decodeNameValuePairs(bytes(self._paramBytes))
                request.paramsEnded = True
                self._answerIfReady(request)
        else:
            request.stdinRecordLengths.append(len(record.data))
            request.stdin += record.data
            request.stdinEnded = request.stdinEnded or not record.data
            self._answerIfReady(request)

    def _answerIfReady(self, request: ReceivedRequest) -> None:
        if request.answered or not request.paramsEnded:
            return
        enough = self.answerAfterBodyBytes
        if request.stdinEnded or (enough is not None and len(request.stdin) >= enough):
            request.answered = True
            self.respond(self, request)

    # Answering, for scripts

    def sendStdout(self, data: bytes, recordSize: int = MAX_CONTENT_LENGTH) -> None:
        """Send C{data} in STDOUT records of at most C{recordSize} bytes; empty ends the stream."""
        self._sendStream(Stdout, data, recordSize)

    def sendStderr(self, data: bytes, recordSize: int = MAX_CONTENT_LENGTH) -> None:
        """Send C{data} in STDERR records of at most C{recordSize} bytes; empty ends the stream."""
        self._sendStream(Stderr, data, recordSize)

    def _sendStream(self, recordType: type[Stdout | Stderr], data: bytes, recordSize: int) -> None:
        requestId = self.request.requestId
        if data:
            self.sendRaw(_encodeStream(recordType, requestId, data, recordSize))
        else:
            self.sendRaw(recordType(requestId, b"").encode())

    def endRequest(
        self, appStatus: int = 0, protocolStatus: int = ProtocolStatus.REQUEST_COMPLETE
    ) -> None:
        """
        Send END_REQUEST for the current request.  It neither ends the
        streams nor closes the connection: send those yourself if you want them.
        """
        request = self.request
        self.sendRaw(EndRequest(request.requestId, appStatus, protocolStatus).encode())
        request.ended = True

    def sendRaw(self, data: bytes, writeSize: int | None = None) -> None:
        """
        Write C{data} as it is, malformed or not: in one write, or in writes
        of C{writeSize} bytes, each of which reaches the client on its own.
        """
        assert self.transport is not None, "the backend is not connected"
        if writeSize is None:
            self.transport.write(data)
            return
        for start in range(0, len(data), writeSize):
            self.transport.write(data[start : start + writeSize])

    def close(self) -> None:
        """Close the connection once what was written so far has been delivered."""
        assert self.transport is not None, "the backend is not connected"
        self.transport.loseConnection()

    @property
    def _closing(self) -> bool:
        return bool(self.transport is not None and self.transport.disconnecting)  # type: ignore[attr-defined]


class ResponseRecorder:
    """
    A L{txfastcgi._client.protocol.ResponseReceiver} that keeps everything it is given,
    in order, for tests that drive a L{FastCGIClientProtocol} directly.

    @ivar events: C{("stdout", data)}, C{("stderr", data)},
        C{("ended", appStatus, protocolStatus)} and C{("failed", failure)}
        tuples, as they arrived.  Nothing may follow C{ended} or C{failed}.
    """

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def stdoutReceived(self, data: bytes) -> None:
        self.events.append(("stdout", data))

    def stderrReceived(self, data: bytes) -> None:
        self.events.append(("stderr", data))

    def readDone(self) -> None:
        """Nothing to record: where reads end is the transport's business."""

    def requestEnded(self, appStatus: int, protocolStatus: int) -> None:
        self.events.append(("ended", appStatus, protocolStatus))

    def requestFailed(self, reason: Failure) -> None:
        self.events.append(("failed", reason))

    @property
    def stdout(self) -> bytes:
        """All STDOUT data received, joined."""
        return b"".join(
            data for kind, data, *_ in self.events if kind == "stdout" and isinstance(data, bytes)
        )

    @property
    def stderr(self) -> bytes:
        """All STDERR data received, joined."""
        return b"".join(
            data for kind, data, *_ in self.events if kind == "stderr" and isinstance(data, bytes)
        )

    @property
    def failure(self) -> Failure:
        """The failure the request ended with; the request must have failed, last."""
        assert self.events and self.events[-1][0] == "failed", f"no failure in {self.events!r}"
        failure = self.events[-1][1]
        assert isinstance(failure, Failure)
        return failure

    @property
    def finished(self) -> bool:
        """Whether the request ended or failed."""
        return any(event[0] in ("ended", "failed") for event in self.events)


@implementer(IPushProducer)
class ClientTransport(FakeTransport):
    """
    The client's end of a L{Link}, with the bits of TCP a FastCGI client
    relies on:

      - while paused by C{pauseProducing} it reads nothing: the backend's
        output waits in the link, and so does the news of its close;
      - a streaming producer registered on it is paused while more than
        C{bufferSize} bytes wait to be sent and resumed once the link has
        moved them, as Twisted's own transports do.

    Each write is also recorded in the backend's C{clientWrites}.

    @ivar paused: whether the client has paused reading.
    @ivar aborted: whether the client called C{abortConnection}.
    """

    bufferSize = 65536  # twisted.internet.abstract.FileDescriptor's
    paused = False
    aborted = False

    def __init__(self, protocol: IProtocol, backend: FakeBackend) -> None:
        super().__init__(protocol, isServer=False)
        self._backend = backend
        self._unsent = 0
        self._producerPaused = False

    def write(self, data: bytes) -> None:
        if self.disconnecting:
            return
        self._backend.clientWrites.append(bytes(data))
        super().write(data)
        self._unsent += len(data)
        producer = self.producer
        if (
            self._unsent > self.bufferSize
            and producer is not None
            and self.streamingProducer
            and not self._producerPaused
        ):
            self._producerPaused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        self._producerPaused = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def takeUnsent(self) -> bytes | None:
        """What the client wrote since the last call; the producer may go on."""
        data: bytes | None = self.getOutBuffer()
        self._unsent = 0
        if self._producerPaused and self.producer is not None:
            self._producerPaused = False
            self.producer.resumeProducing()
        return data


def _hasCallsDue(clock: Clock | None) -> bool:
    return clock is not None and any(
        call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()
    )


class Link:
    """
    A client protocol and a L{FakeBackend} connected in memory.

    The client's writes reach the backend all together at each step; the
    backend's writes reach the client one write per step, so that a
    backend's C{writeSize} decides how the client's input is cut.  A close
    reaches the other side after everything written before it.

    @param clock: advanced by 0 at every step, so that what the protocols
        schedule with C{callLater(0, ...)} (a body producer's next read)
        runs as the link moves data.

    @ivar client: the client protocol.
    @ivar backend: the L{FakeBackend}.
    @ivar clientTransport: the client's L{ClientTransport}.
    @ivar closed: whether both sides have been told the connection is lost.
    """

    def __init__(self, client: IProtocol, backend: FakeBackend, clock: Clock | None = None) -> None:
        self.client = client
        self.backend = backend
        self.clock = clock
        self.closed = False
        self.clientTransport = ClientTransport(client, backend)
        self._serverTransport = FakeTransport(backend, isServer=True)
        backend.makeConnection(self._serverTransport)
        client.makeConnection(self.clientTransport)

    def pump(self) -> bool:
        """Make one step; return whether anything moved."""
        if self.clock is not None:
            self.clock.advance(0)
        if self.closed:
            return False
        client, server = self.clientTransport, self._serverTransport
        sent = client.takeUnsent()
        if sent and not server.disconnecting:
            server.bufferReceived(sent)
        if client.disconnecting:
            # Whatever the backend had sent is lost with the connection.
            reason = ConnectionAborted() if client.aborted else ConnectionDone()
            self._close(reason)
            return True
        if server.stream and not client.paused:
            client.bufferReceived(server.stream.pop(0))
            return True
        if sent:
            return True
        if server.disconnecting and not client.paused:
            self._close(ConnectionDone("the fake backend closed the connection"))
            return True
        return False

    def flush(self) -> None:
        """Step until nothing moves and nothing is due on the clock."""
        for _ in range(_MAX_FLUSH_STEPS):
            if not self.pump() and not _hasCallsDue(self.clock):
                return
        raise AssertionError(f"{self!r} still busy after {_MAX_FLUSH_STEPS} steps")

    def _close(self, clientReason: Exception) -> None:
        self.closed = True
        client, server = self.clientTransport, self._serverTransport
        for transport in (client, server):
            transport.disconnecting = transport.disconnected = True
        server.stream.clear()
        client.stream.clear()
        self.client.connectionLost(Failure(clientReason))
        self.backend.connectionLost(Failure(ConnectionDone()))


@dataclass
class _Attempt:
    deferred: Deferred[IProtocol]
    factory: IProtocolFactory
    refuse: bool
    call: IDelayedCall | None = None


@implementer(IStreamClientEndpoint)
class FakeBackendEndpoint:
    """
    An endpoint to a php-fpm of L{FakeBackend}s: each connect that succeeds
    gets a new backend, joined to the client's protocol by a L{Link}.

    A connect completes one reactor turn later (at the next C{flush()} or
    C{clock.advance(0)}), like a real one; it can be cancelled until then.

    @param respond: the script given to every new backend.
    @param answerAfterBodyBytes: given to every new backend.

    @ivar refuse: make new connects fail with C{ConnectionRefusedError}.
    @ivar hold: make new connects wait, neither succeeding nor failing, until
        L{completeHeld} (or their canceller) is called.
    @ivar connectAttempts: how many connects were asked for.
    @ivar links: a L{Link} per connection made, in order.
    """

    def __init__(
        self,
        clock: Clock,
        respond: Responder | None = None,
        *,
        answerAfterBodyBytes: int | None = None,
    ) -> None:
        self.clock = clock
        self.respond = respond
        self.answerAfterBodyBytes = answerAfterBodyBytes
        self.refuse = False
        self.hold = False
        self.connectAttempts = 0
        self.links: list[Link] = []
        self._attempts: list[_Attempt] = []

    @property
    def backends(self) -> list[FakeBackend]:
        """A backend per connection made, in order."""
        return [link.backend for link in self.links]

    @property
    def heldAttempts(self) -> int:
        """How many connects are held and not cancelled."""
        return sum(1 for attempt in self._attempts if attempt.call is None)

    @property
    def openConnections(self) -> int:
        """How many connections are not closed yet."""
        return sum(1 for link in self.links if not link.closed)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self.connectAttempts += 1
        attempt = _Attempt(Deferred(lambda _: self._cancel(attempt)), protocolFactory, self.refuse)
        self._attempts.append(attempt)
        if not self.hold:
            attempt.call = self.clock.callLater(0, self._complete, attempt)
        return attempt.deferred

    def completeHeld(self) -> None:
        """Let the held connects complete (or fail, if they were made while C{refuse} was set)."""
        for attempt in self._attempts:
            if attempt.call is None:
                attempt.call = self.clock.callLater(0, self._complete, attempt)

    def flush(self) -> None:
        """Complete due connects and move data on every connection until all is quiet."""
        for _ in range(_MAX_FLUSH_STEPS):
            self.clock.advance(0)
            moved = [link.pump() for link in self.links]
            if not any(moved) and not _hasCallsDue(self.clock):
                return
        raise AssertionError(f"{self!r} still busy after {_MAX_FLUSH_STEPS} steps")

    def _cancel(self, attempt: _Attempt) -> None:
        self._attempts.remove(attempt)
        if attempt.call is not None and attempt.call.active():
            attempt.call.cancel()
        # What Twisted's own endpoints fail a cancelled connect with: not a
        # CancelledError.
        attempt.deferred.errback(ConnectingCancelledError(FakeAddress()))

    def _complete(self, attempt: _Attempt) -> None:
        self._attempts.remove(attempt)
        if attempt.refuse:
            attempt.deferred.errback(ConnectionRefusedError("the fake backend refused"))
            return
        protocol = attempt.factory.buildProtocol(FakeAddress())
        if protocol is None:
            attempt.deferred.errback(ConnectionRefusedError("the factory built no protocol"))
            return
        backend = self._makeBackend()
        self.links.append(Link(protocol, backend, self.clock))
        self._linked(backend)
        attempt.deferred.callback(protocol)

    def _makeBackend(self) -> FakeBackend:
        """The server side of a new connection."""
        return FakeBackend(self.respond, answerAfterBodyBytes=self.answerAfterBodyBytes)

    def _linked(self, backend: FakeBackend) -> None:
        """C{backend}'s connection is made (for subclasses)."""


class _PHPFPMConnection(FakeBackend):
    """
    One connection to a L{FakePHPFPM}: it reads nothing until a worker has
    accepted it, as a connection in the listen backlog.
    """

    def __init__(self, phpFPM: FakePHPFPM) -> None:
        super().__init__(phpFPM._run)
        self._phpFPM = phpFPM
        self.accepted = False
        self._unread: list[bytes] = []

    def accept(self) -> None:
        self.accepted = True
        for data in self._unread:
            super().dataReceived(data)
        self._unread.clear()

    def dataReceived(self, data: bytes) -> None:
        if self.accepted and not self._phpFPM.frozen:
            super().dataReceived(data)
        else:
            self._unread.append(data)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        super().connectionLost(reason)
        self._phpFPM._lost(self)


class FakePHPFPM(FakeBackendEndpoint):
    """
    An endpoint to an in-memory php-fpm with workers and a listen backlog
    that behave as php-fpm 8.2's do, on the endpoint's clock:

      - a worker accepts one connection and stays bound to it until it
        closes, while a request runs on it and while it idles between
        requests (FCGI_KEEP_CONN);
      - a connection made while every worker is bound waits in the backlog,
        sent requests and all, unanswered; the oldest is accepted as soon as
        a worker is free: when its connection closes, or when its script
        ends if the client closed the connection while it ran (php-fpm
        finds out only then);
      - with C{maxChildren} (C{pm = dynamic}) the master looks once a second
        and, if no worker is free, forks more (1, then 2, 4, ... a second,
        as php-fpm's spawn rate), up to C{maxChildren};
      - a script answers C{scriptTimes[SCRIPT_NAME]} seconds after its
        worker read the request (at once if the script is not listed), with
        a L{Reply}, closing the connection unless it was asked to keep it.

    L{freeze} and L{thaw} stop and continue every process, as SIGSTOP and
    SIGCONT do.

    @ivar workers: how many worker processes there are now.
    """

    def __init__(
        self,
        clock: Clock,
        workers: int,
        *,
        scriptTimes: Mapping[bytes, float] | None = None,
        maxChildren: int | None = None,
    ) -> None:
        super().__init__(clock)
        self.workers = workers
        self.scriptTimes = dict(scriptTimes or {})
        self.maxChildren = maxChildren
        self.frozen = False
        self._bound: list[_PHPFPMConnection] = []
        self._backlog: deque[_PHPFPMConnection] = deque()
        # Scripts still running, each keeping its worker until it ends.
        self._running: dict[_PHPFPMConnection, IDelayedCall | _Frozen] = {}
        self._orphans = 0
        self._spawnRate = 1
        if maxChildren is not None:
            clock.callLater(1.0, self._maintain)

    @property
    def freeWorkers(self) -> int:
        return self.workers - len(self._bound) - self._orphans

    @property
    def backlog(self) -> int:
        """How many open connections wait in the backlog."""
        return sum(not connection.closed for connection in self._backlog)

    def freeze(self) -> None:
        """Stop every process: nothing is accepted, read or answered."""
        self.frozen = True
        for connection, call in self._running.items():
            assert not isinstance(call, _Frozen)
            call.cancel()
            self._running[connection] = _Frozen(call.getTime() - self.clock.seconds())

    def thaw(self) -> None:
        """Let every process go on where it stopped."""
        self.frozen = False
        for connection, paused in list(self._running.items()):
            assert isinstance(paused, _Frozen)
            self._running[connection] = self.clock.callLater(
                paused.remaining, self._scriptEnded, connection
            )
        for connection in self._bound:
            connection.accept()
        self._acceptWaiting()

    def _makeBackend(self) -> FakeBackend:
        return _PHPFPMConnection(self)

    def _linked(self, backend: FakeBackend) -> None:
        assert isinstance(backend, _PHPFPMConnection)
        self._backlog.append(backend)
        self._acceptWaiting()

    def _acceptWaiting(self) -> None:
        while not self.frozen and self.freeWorkers > 0 and self._backlog:
            connection = self._backlog.popleft()
            if not connection.closed:
                # A connection closed in the backlog is accepted and dropped at once.
                self._bound.append(connection)
                connection.accept()

    def _run(self, backend: FakeBackend, request: ReceivedRequest) -> None:
        assert isinstance(backend, _PHPFPMConnection)
        seconds = self.scriptTimes.get(request.params.get(b"SCRIPT_NAME", b""), 0.0)
        if seconds > 0:
            self._running[backend] = self.clock.callLater(seconds, self._scriptEnded, backend)
        else:
            Reply()(backend, request)

    def _scriptEnded(self, connection: _PHPFPMConnection) -> None:
        del self._running[connection]
        if connection.closed:
            self._orphans -= 1
            self._acceptWaiting()
        else:
            Reply()(connection, connection.request)

    def _lost(self, connection: _PHPFPMConnection) -> None:
        if connection in self._bound:
            self._bound.remove(connection)
            if connection in self._running:
                self._orphans += 1
        self._acceptWaiting()

    def _maintain(self) -> None:
        assert self.maxChildren is not None
        if not self.frozen and self.freeWorkers <= 0 and self.workers < self.maxChildren:
            self.workers += min(self._spawnRate, self.maxChildren - self.workers)
            self._spawnRate = min(2 * self._spawnRate, 32)
            self._acceptWaiting()
        else:
            self._spawnRate = 1
        self.clock.callLater(1.0, self._maintain)


@dataclass(frozen=True)
class _Frozen:
    """A script stopped by L{FakePHPFPM.freeze}, with the time it had left."""

    remaining: float
