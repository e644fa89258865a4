"""
The dedicated HTTP/1.1 front of the proxy: a Twisted protocol built for
exactly one job, handing each request to a L{txfastcgi._http.core.Proxy} and
writing what it answers, without twisted.web's per-request machinery.

Requests are parsed by C{httptools} (llhttp, Node's parser), but for heads
in the plainest form, which L{txfastcgi._http.plainhead} reads as llhttp
would, at a fraction of the cost. llhttp refuses
what could smuggle a request past a front end: Content-Length with
Transfer-Encoding, two Content-Lengths, signs or lists in one, obs-fold,
header names with spaces or control characters, malformed chunk sizes. On
top of it, L{HTTP1Factory} enforces the same limits as
L{txfastcgi._http.web.FastCGISite}, with the same answers:

  - 413 to a request body over C{maxBodySize}: at once from its
    Content-Length, before a byte of it is read (and without a
    C{100 Continue}), or from the size line of the chunk that would pass it;
  - 414 to a request line, and 431 to a request head, over
    C{maxHeaderSize} bytes (line ends not counted), before more of it is
    buffered;
  - 400 to an HTTP/1.1 request with no Host header or with several, to a
    Transfer-Encoding other than C{chunked}, or one in an HTTP/1.0 request,
    and to anything llhttp refuses; 505 to an HTTP version other than 1.0
    and 1.1;
  - bytes over 0x7F in the request target taken and passed on untouched (as
    nginx, Apache and Caddy do), control characters there a 400;
  - 408 to a request head not whole within C{headerTimeout} seconds, however
    slowly it trickles in, or a body that stops for C{bodyTimeout} seconds; a
    connection that sends nothing is closed after C{headerTimeout} seconds,
    a kept one idle for C{idleTimeout} seconds.

After such an answer the connection is closed gently: a FIN, then what the
client is still sending is read and dropped for a few seconds, as nginx's
C{lingering_close} does, so that the kernel sends no reset that could
destroy the answer before the client reads it.

Requests on a kept connection are answered one at a time, in order:
parsing stops at the end of each request until it is answered, and the
transport stops reading once the client has sent more. A request body is
spooled (in memory up to 100 000 bytes, as twisted.web does, or up to
1 MiB within L{MEMORY_BODIES}; else to a temporary file) and handed over
whole, with its length: php-fpm reads a body by its CONTENT_LENGTH, chunked
or not.

Three choices buy the speed (see issue 12): one timer per factory
sweeps all deadlines, instead of a timer per request; the response head is
held back until the first body bytes, so that a small response is one
write; and a write goes straight to the socket when Twisted's buffer is
empty, instead of waiting for the next reactor turn (plain TCP and unix
sockets only: through TLS or any wrapping transport, Twisted writes).

Static files the core finds are answered by L{StaticFiles}, on the pieces
of L{txfastcgi._http.staticfiles}: small ones from memory, large ones by
C{os.sendfile}, with the connection stepping aside as the transport's
producer while the file goes. For a graceful shutdown,
L{HTTP1Factory.keepNoConnections} and L{HTTP1Factory.closeConnections} close
idle connections at once and the others once they have answered.

Usage::

    factory = HTTP1Factory(proxy, serveStaticFile=StaticFiles(), observers=[accessLog])
    endpoints.serverFromString(reactor, "tcp:8080").listen(factory)
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Sequence
from email.utils import formatdate
from enum import Enum
from socket import socket
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol, cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txfastcgi._emptied import Emptied
from txfastcgi._http.core import RequestFacts
from txfastcgi._http.framing import BodyFraming, Delimiter, responseBodyFraming
from txfastcgi._http.plainhead import parsePlainHead
from txfastcgi._http.routing import FoundFile
from txfastcgi._http.served import Served, upstreamOf
from txfastcgi._http.staticfiles import (
    ByteRange,
    FileSender,
    SmallFileCache,
    StaticResponse,
    decideResponse,
    openFile,
    withHeaders,
)
from txfastcgi._limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    LINGER_TIME,
    DeadlineSweep,
)

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "FRESH_CONNECTION_GRACE",
    "MEMORY_BODIES",
    "HTTP1Connection",
    "HTTP1Factory",
    "Response",
    "StaticFiles",
]

MEMORY_BODIES = 64 * 1024 * 1024
"""
The most memory, in bytes, that a factory's connections hold request bodies
of up to 1 MiB in at once; beyond it, bodies over 100 000 bytes are spooled to
temporary files, as nginx spools any body over its C{client_body_buffer_size}.
"""

DEFAULT_IDLE_TIMEOUT = 75.0
"""Seconds a kept connection may stay idle between requests by default: nginx's."""

FRESH_CONNECTION_GRACE = 1.0
"""
Seconds a connection that has sent nothing yet still gets, at the end of a
graceful shutdown, to send its request (see L{HTTP1Factory.closeConnections}).
"""

# Bodies up to this size are spooled in memory, larger ones to a file...
_MEMORY_BODY_SIZE = 100_000
# ...but for a body of a known length up to this size, held in memory while
# the bodies a factory holds that way come to no more than MEMORY_BODIES: a
# temporary file cost a 1 MiB upload 29% of its CPU time here (ext4).
_LARGE_MEMORY_BODY_SIZE = 1024 * 1024

# An ASCII byte llhttp accepts in a target for each byte over 0x7F: see
# HTTP1Connection._headPiece.
_ASCII_STAND_INS = bytes.maketrans(bytes(range(0x80, 0x100)), b"x" * 0x80)

_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}

_REASONS = {
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    505: b"HTTP Version Not Supported",
}

_INFORMATIONAL = {103: b"Early Hints"}

_SERVER_LINE = b"Server: txfastcgi\r\n"
_HTML = (b"Content-Type", b"text/html; charset=utf-8")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"

# The most body bytes held back with the head (see Response): one FastCGI
# record's worth; a larger body goes out as it comes.
_HOLD_LIMIT = 65536


def _errorPage(code: int, detail: str) -> bytes:
    """The body of an error answer of the front's own."""
    reason = _REASONS[code]
    return b"<html><head><title>%d %s</title></head><body><h1>%s</h1><p>%s</p></body></html>\n" % (
        code,
        reason,
        reason,
        detail.encode("ascii"),
    )


class _Exchange(Protocol):
    """What the front needs of the core's L{txfastcgi._http.core.Exchange}."""

    def clientGone(self) -> None: ...


class _Proxy(Protocol):
    """What the front needs of the core, L{txfastcgi._http.core.Proxy}."""

    def handle(self, request: RequestFacts, writer: Response) -> _Exchange: ...


ServeStaticFile = Callable[[RequestFacts, str, "Response", Sequence[tuple[bytes, bytes]]], None]
"""
How a static file the core found is answered: given the request, the file's
name and the response to answer it through (as L{Response.serveFile} was
asked), it writes the head and the body and finishes the response.
"""


class _Phase(Enum):
    """Where a connection is; the factory's C{timeouts} say how long each may last."""

    HEAD = "head"
    """Receiving a request head, timed from its first byte (or the connection's start)."""
    BODY = "body"
    """Receiving a request body, timed from its latest byte."""
    ANSWERING = "answering"
    """A request is being answered: no deadline, a script may take its time."""
    IDLE = "idle"
    """Kept open between requests, timed from the end of the last answer."""
    LINGERING = "lingering"
    """Refused: reading and dropping for a few seconds before closing."""
    CLOSING = "closing"
    """Closing once what was written is sent."""
    HANDED_OVER = "handed over"
    """Served by another protocol: see L{HTTP1Connection.handOver}."""


class _Framing(Enum):
    """
    What the bytes llhttp is fed next belong to.

    httptools does not tell where in the bytes a request ends, nor the size
    of a chunk, so the connection feeds it in pieces that never go past the
    end of a head, a Content-Length body, a chunk size line or a chunk;
    llhttp still judges every byte.
    """

    HEAD = "head"
    LENGTH = "length"
    CHUNK_SIZE = "chunk size"
    CHUNK_DATA = "chunk data"
    TRAILERS = "trailers"


class _Refused(Exception):
    """A request to be answered with C{code} and the connection closed."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


if TYPE_CHECKING:
    _HTTP1ServerFactory = ServerFactory["HTTP1Connection"]
else:  # Twisted 25.5, the last with TLS on Python 3.9 (PyPy), cannot subscript its factories.
    _HTTP1ServerFactory = ServerFactory


class HTTP1Factory(_HTTP1ServerFactory):
    """
    Serves HTTP/1.1 and HTTP/1.0 through C{proxy}; see the module docstring.

    @param proxy: the core, which answers each request (L{txfastcgi._http.core.Proxy}).
    @param serveStaticFile: answers a static file the core found.
    @param maxBodySize: the largest request body, in bytes, declared or chunked.
    @param maxHeaderSize: the largest request line and request head, in
        bytes, line ends not counted.
    @param headerTimeout: seconds a request head may take, from the
        connection's start or, on a kept connection, from its first byte.
    @param bodyTimeout: seconds a request body may go without a byte.
    @param idleTimeout: seconds a kept connection may wait for its next request.
    @param observers: what is called with a L{Served} record of each request
        answered, once its last byte is written: an access log, metrics.
        Opening and closing them is their owner's business.
    @param reactor: for the deadlines, the Date header and the records.
    """

    # The listening ports log where they listen, under logPrefix's name:
    # no line for the factory itself.
    noisy = False

    def __init__(
        self,
        proxy: _Proxy,
        *,
        serveStaticFile: ServeStaticFile,
        maxBodySize: int = DEFAULT_MAX_BODY_SIZE,
        maxHeaderSize: int = DEFAULT_MAX_HEADER_SIZE,
        headerTimeout: float = DEFAULT_HEADER_TIMEOUT,
        bodyTimeout: float = DEFAULT_BODY_TIMEOUT,
        idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
        observers: Sequence[Callable[[Served], object]] = (),
        reactor: IReactorTime | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = cast(IReactorTime, globalReactor)
        self.proxy = proxy
        self.serveStaticFile = serveStaticFile
        self.maxBodySize = maxBodySize
        self.maxHeaderSize = maxHeaderSize
        self.observers = list(observers)
        self.reactor = reactor
        self.timeouts = {
            _Phase.HEAD: headerTimeout,
            _Phase.BODY: bodyTimeout,
            _Phase.IDLE: idleTimeout,
            _Phase.LINGERING: LINGER_TIME,
        }
        self.deadlines = DeadlineSweep(reactor)
        self.connections: set[HTTP1Connection] = set()
        # Called as each connection closes: a worker tells the main process.
        self.closedObservers: list[Callable[[], object]] = []
        self.closing = False
        # When connections that have sent nothing are closed: see closeConnections.
        self.closeFreshBy: float | None = None
        self._allClosed = Emptied()
        # Bytes of the large bodies held in memory: see MEMORY_BODIES.
        self.bodyMemory = 0
        self._dateSecond = -1
        self._dateLine = b""

    def logPrefix(self) -> str:
        """What the listening ports' own log lines call this server."""
        return "txfastcgi"

    def keepNoConnections(self) -> None:
        """
        Shutting down: close kept connections idle between requests now
        (their clients have had every answer), and every other connection
        once it has answered its request, with C{Connection: close}.
        """
        self.closing = True
        for connection in list(self.connections):
            connection.closeWhenIdle()

    def closeConnections(self) -> Deferred[None]:
        """
        Close every connection once what was written to it is sent: as
        L{keepNoConnections} does, and those that have not sent a byte yet
        too, once they have had L{FRESH_CONNECTION_GRACE} seconds more to
        send one. For a graceful shutdown, once the listeners are closed and
        the requests in progress finished.

        A connection accepted a moment ago is most likely about to send its
        request, which may already be in the socket, unread: closing it at
        once would fail that request, which no client may retry.

        @return: fires once every connection is closed.
        """
        self.closing = True
        self.closeFreshBy = self.reactor.seconds() + FRESH_CONNECTION_GRACE
        for connection in list(self.connections):
            connection.closeWhenIdle()
        return self._allClosed.wait(not self.connections)

    def opened(self, connection: HTTP1Connection) -> None:
        """C{connection} is open: its deadlines apply, and it is closed at shutdown."""
        self.connections.add(connection)
        self.deadlines.track(connection)

    def closed(self, connection: HTTP1Connection) -> None:
        """C{connection} is closed, or given to another protocol."""
        self.deadlines.untrack(connection)
        self.connections.discard(connection)
        for observer in self.closedObservers:
            observer()
        if not self.connections:
            self._allClosed.fire()

    def buildProtocol(self, addr: IAddress | None) -> HTTP1Connection:
        return HTTP1Connection(self)

    def dateLine(self, now: float) -> bytes:
        """The C{Date} header line for C{now}, formatted once a second."""
        second = int(now)
        if second != self._dateSecond:
            self._dateSecond = second
            self._dateLine = b"Date: %s\r\n" % formatdate(second, usegmt=True).encode("ascii")
        return self._dateLine


# The request headers a static file answer depends on, by the name of the
# argument of decideResponse that takes them.
_CONDITIONS = {
    b"if-match": "ifMatch",
    b"if-none-match": "ifNoneMatch",
    b"if-modified-since": "ifModifiedSince",
    b"if-unmodified-since": "ifUnmodifiedSince",
    b"if-range": "ifRange",
    b"range": "rangeHeader",
}


class StaticFiles:
    """
    Answers the static files the core finds, as L{HTTP1Factory}'s
    C{serveStaticFile}: preconditions, a single Range and HEAD as
    L{decideResponse} rules; files up to the cache's C{maxFileSize} from
    memory (a L{SmallFileCache}, which checks each with one C{os.stat}),
    larger ones by a L{FileSender}, which uses C{os.sendfile} on a plain
    socket and reads no faster than the client takes the file.

    A file gone or unreadable since the core found it gets 404 or 403.
    """

    def __init__(self, cache: SmallFileCache | None = None) -> None:
        self.cache = SmallFileCache() if cache is None else cache

    def __call__(
        self,
        request: RequestFacts,
        filename: str,
        response: Response,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        conditions: dict[str, bytes] = {}
        for name, value in request.headers:
            keyword = _CONDITIONS.get(name.lower())
            if keyword is not None:
                earlier = conditions.get(keyword)
                conditions[keyword] = value if earlier is None else earlier + b", " + value
        info = filename.info if isinstance(filename, FoundFile) else None
        try:
            cached = self.cache.get(filename, info)
            if cached is None:
                file, facts = openFile(filename)
        except (FileNotFoundError, NotADirectoryError):
            self._fail(request, response, 404, "The file is gone.")
            return
        except OSError:
            self._fail(request, response, 403, "The file cannot be read.")
            return
        if cached is not None:
            answer = decideResponse(request.method, cached.facts, **conditions)
            if headers:
                answer = withHeaders(answer, headers)
            response.writeStaticHead(answer)
            if answer.byteRange is not None:
                response.writeBody(bytes(cached.content(answer.byteRange)))
            response.finish()
            return
        answer = decideResponse(request.method, facts, **conditions)
        if headers:
            answer = withHeaders(answer, headers)
        response.writeStaticHead(answer)
        if answer.byteRange is None or not answer.byteRange.length:
            file.close()
            response.finish()
        else:
            response.sendFile(file, answer.byteRange)

    def _fail(self, request: RequestFacts, response: Response, code: int, detail: str) -> None:
        page = _errorPage(code, detail)
        framing = responseBodyFraming(request.method, code, len(page), request.version)
        response.writeHead(code, _REASONS[code], [_HTML], framing)
        if framing.hasBody:
            response.writeBody(page)
        response.finish()


def _address(address: IAddress) -> tuple[str, int | None]:
    """An address as L{RequestFacts} holds it: a unix socket's is C{("", None)}."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host, address.port
    return "", None


def _lastValue(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The last value of header C{name} (lower case), as twisted.web's getHeader gives."""
    found = None
    for header, value in headers:
        if header.lower() == name:
            found = value
    return found


@implementer(IPushProducer)
class HTTP1Connection(TwistedProtocol):
    """
    One client connection: parses its requests, hands each to the proxy in
    turn, and writes the answers.

    It is its transport's streaming producer for the whole connection, and
    passes the transport's pauses on to the producer of the response being
    written (the FastCGI connection).
    """

    factory: HTTP1Factory
    _log = Logger()

    def __init__(self, factory: HTTP1Factory) -> None:
        self.factory = factory
        self._parser = HttpRequestParser(self)
        self._phase = _Phase.HEAD
        self._since = 0.0
        self._now = 0.0
        # The transport to write to directly, and its socket: see send.
        self._direct: tcp.Connection | None = None
        self._socket: socket | None = None
        self._addressed = False
        self._client: tuple[str, int | None] = ("", None)
        self._server: tuple[str, int | None] = ("", None)
        self._secure = False
        # Bytes read but not parsed yet, while a request is being answered.
        self._unparsed = b""
        self._parsing = False
        self._readPaused = False
        # The response being written, its producer, and whether the
        # transport asked for a pause.
        self._response: Response | None = None
        self._producer: IPushProducer | None = None
        self._writePaused = False
        # A request parsed whole, to be answered once the parser returns.
        self._complete: Response | None = None
        # Bytes of the factory's bodyMemory that the request's body holds.
        self._bodyMemory = 0
        self._startRequest()

    def _startRequest(self) -> None:
        """Forget the request before, and expect a head."""
        self._framing = _Framing.HEAD
        self._headSize = 0
        self._headBegun = False
        self._tail = b""
        self._requestLine = b""
        self._inRequestLine = True
        self._translated = False
        self._method: bytes | None = None
        self._version = b"HTTP/1.1"
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._hosts = 0
        self._contentLength: int | None = None
        self._transferEncoding: bytes | None = None
        self._expectContinue = False
        self._arrived = 0.0
        self._body: IO[bytes] | None = None
        self._bodySize = 0
        self._remaining = 0
        self._chunkLine = b""

    # Connection

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        if ITCPTransport.providedBy(transport):
            # A response goes out in several writes (its last chunk alone,
            # say): under Nagle's algorithm each write after the first would
            # wait for the client's delayed ACK, 40 ms on Linux, as nginx's
            # tcp_nodelay avoids.
            transport.setTcpNoDelay(True)
        self._secure = ISSLTransport.providedBy(transport)
        if isinstance(transport, tcp.Connection) and not self._secure:
            self._direct = transport
            self._socket = transport.getHandle()
        cast(IConsumer, transport).registerProducer(self, True)
        self._since = self.factory.reactor.seconds()
        self.factory.opened(self)

    def handOver(self) -> None:
        """
        Give the connection up before its first request, for another
        protocol to serve it (HTTP/2, negotiated by ALPN): no deadline of
        this front's applies to it any more, and it writes nothing.
        """
        self._phase = _Phase.HANDED_OVER
        self.factory.closed(self)
        transport = self.transport
        assert transport is not None
        cast(IConsumer, transport).unregisterProducer()

    def closeWhenIdle(self) -> None:
        """
        Close now if kept idle between requests; else once the request is
        answered (see L{responseDone}), or, if none has come yet, at the
        factory's C{closeFreshBy} (see L{checkDeadline}).
        """
        if self._phase is _Phase.IDLE:
            self.close()

    def _nothingAsked(self) -> bool:
        """Whether the connection is waiting for its first request and has no byte of it."""
        return self._phase is _Phase.HEAD and not self._headBegun

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._phase is not _Phase.HANDED_OVER:
            self.factory.closed(self)
        self._direct = self._socket = None
        self._phase = _Phase.CLOSING
        self._discardBody()
        response, self._response = self._response, None
        self._producer = None
        if response is not None:
            response.clientGone()

    def checkDeadline(self, now: float) -> None:
        """
        Act on a deadline passed by C{now}: answer 408 to a request head or
        body too slow, close a connection idle too long or done lingering.
        """
        phase = self._phase
        closeFreshBy = self.factory.closeFreshBy
        if closeFreshBy is not None and now >= closeFreshBy and self._nothingAsked():
            self.close()
            return
        limit = self.factory.timeouts.get(phase)
        if limit is None or now - self._since < limit:
            return
        transport = self.transport
        assert transport is not None
        if phase is _Phase.LINGERING:
            transport.abortConnection()  # type: ignore[attr-defined]
        elif phase is _Phase.BODY:
            self._refuse(_Refused(408, "The request body stopped coming."))
        elif phase is _Phase.HEAD and self._headBegun:
            self._refuse(_Refused(408, "The request head took too long to arrive."))
        else:  # Nothing asked, nothing to answer.
            self.close()

    # Reading

    def dataReceived(self, data: bytes) -> None:
        phase = self._phase
        if phase is _Phase.LINGERING or phase is _Phase.CLOSING:
            return  # Read and dropped; see the module docstring.
        if not self._addressed:
            # Behind the PROXY protocol, the addresses it names are known
            # only once its header is read, before the first byte for us.
            self._addressed = True
            transport = self.transport
            assert transport is not None
            self._client = _address(transport.getPeer())
            self._server = _address(transport.getHost())
        self._now = self.factory.reactor.seconds()
        if phase is _Phase.BODY:
            self._since = self._now
        if self._response is not None or self._unparsed:
            # Pipelined behind the request being answered: read on (a client
            # that goes away is then noticed) until it sends more than that.
            self._unparsed += data
            self._pauseReading()
            return
        self._parse(data)

    def _pauseReading(self) -> None:
        if not self._readPaused:
            self._readPaused = True
            transport = self.transport
            assert transport is not None
            transport.pauseProducing()  # type: ignore[attr-defined]

    def _resumeReading(self) -> None:
        if self._readPaused:
            self._readPaused = False
            transport = self.transport
            assert transport is not None
            transport.resumeProducing()  # type: ignore[attr-defined]

    def _parse(self, data: bytes) -> None:
        """
        Parse C{data} request by request, answering each as it is whole,
        until it is all parsed or a request waits for its answer.
        """
        self._parsing = True
        try:
            while data and self._response is None:
                phase = self._phase
                if phase is _Phase.IDLE:
                    self._phase, self._since = _Phase.HEAD, self._now
                elif phase is _Phase.LINGERING or phase is _Phase.CLOSING:
                    return
                try:
                    data = self._feedPiece(data)
                except _Refused as refused:
                    self._refuse(refused)
                    return
                complete, self._complete = self._complete, None
                if complete is not None:
                    self._answer(complete)
        finally:
            self._parsing = False
        self._unparsed = data
        if data:
            self._pauseReading()

    def _feedPiece(self, data: bytes) -> bytes:
        """
        Feed llhttp the next piece of C{data} (see L{_Framing}), or read a
        plain head whole without it; the rest.
        """
        framing = self._framing
        if framing is _Framing.HEAD and not self._headBegun:
            plain = parsePlainHead(data, self.factory.maxHeaderSize)
            if plain is not None:
                self._headBegun = True
                self.on_message_begin()
                self._target, self._headers, self._hosts = plain.target, plain.headers, plain.hosts
                self._headComplete(plain.method, plain.version)
                self._messageComplete(plain.keepAlive)
                return data[plain.end :]
        if framing is _Framing.HEAD or framing is _Framing.TRAILERS:
            size, piece = self._headPiece(data)
        elif framing is _Framing.CHUNK_SIZE:
            newline = data.find(b"\n")
            size = len(data) if newline == -1 else newline + 1
            piece = data[:size]
            self._chunkLine += piece
            if len(self._chunkLine) > self.factory.maxHeaderSize:
                raise _Refused(400, "The chunk size line is too long.")
        else:  # A Content-Length body or a chunk's data, with its line end.
            size = min(self._remaining, len(data))
            self._remaining -= size
            piece = data[:size]
            if framing is _Framing.CHUNK_DATA and not self._remaining:
                self._framing, self._chunkLine = _Framing.CHUNK_SIZE, b""
        try:
            self._parser.feed_data(piece)
        except HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _Refused):
                raise cause from None
            raise
        except HttpParserUpgrade:
            # Nothing behind the proxy takes over a connection.
            assert self._complete is not None
            self._complete.keepAlive = False
        except HttpParserError as error:
            raise _Refused(400, f"The request is malformed: {error}.") from None
        return data[size:]

    def _headPiece(self, data: bytes) -> tuple[int, bytes]:
        """
        How much of C{data} belongs to the head (or the trailers) being
        received, up to its blank line, and that piece as llhttp is to get
        it; refuse a head over the limit before llhttp buffers it.

        llhttp refuses bytes over 0x7F in a request target; nginx, Apache
        and Caddy take them, and links to MediaWiki titles hold them
        unencoded. llhttp gets the request line with each such byte replaced
        by an ASCII one, to check the rest, and the target is put back as
        sent.
        """
        self._headBegun = True
        boundary = (self._tail + data[:3]).find(b"\r\n\r\n")
        if boundary != -1:
            size = boundary + 4 - len(self._tail)
        else:
            end = data.find(b"\r\n\r\n")
            size = len(data) if end == -1 else end + 4
        piece = data[:size]
        self._tail = (self._tail + piece)[-3:]
        # Line ends do not count (llhttp refuses a CR or LF anywhere else).
        self._headSize += size - piece.count(b"\r") - piece.count(b"\n")
        if self._inRequestLine and self._framing is _Framing.HEAD:
            piece = self._requestLinePiece(piece)
        if self._headSize > self.factory.maxHeaderSize:
            if self._inRequestLine:
                raise _Refused(414, "The request line is too long.")
            raise _Refused(431, "The request header fields are too large.")
        return size, piece

    def _requestLinePiece(self, piece: bytes) -> bytes:
        """Note the part of C{piece} in the request line; C{piece} for llhttp."""
        start = 0 if self._requestLine else len(piece) - len(piece.lstrip(b"\r\n"))
        newline = piece.find(b"\n", start)
        end = len(piece) if newline == -1 else newline + 1
        line = piece[start:end]
        self._requestLine += line
        if len(self._requestLine.rstrip(b"\r\n")) > self.factory.maxHeaderSize:
            raise _Refused(414, "The request line is too long.")
        if newline != -1:
            self._inRequestLine = False
        if line.isascii():
            return piece
        self._translated = True
        return piece[:start] + line.translate(_ASCII_STAND_INS) + piece[end:]

    # llhttp's callbacks

    def on_message_begin(self) -> None:
        self._arrived = self._now

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._framing is not _Framing.HEAD:
            return  # Trailers: dropped, as twisted.web does.
        self._headers.append((name, value))
        lower = name.lower()
        if lower == b"host":
            self._hosts += 1
        elif lower == b"content-length":
            self._contentLength = int(value)  # llhttp checked it is digits.
        elif lower == b"transfer-encoding":
            self._transferEncoding = value
        elif lower == b"expect":
            self._expectContinue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        parser = self._parser
        if self._translated:
            self._target = self._requestLine.split(b" ")[1]
        self._headComplete(parser.get_method(), _VERSIONS.get(parser.get_http_version()))

    def _headComplete(self, method: bytes, version: bytes | None) -> None:
        """Check the head, and expect the body it announces, if any."""
        self._method = method
        if version is None:
            raise _Refused(505, "Only HTTP/1.1 and HTTP/1.0 are served here.")
        self._version = version
        if self._hosts > 1 or (not self._hosts and version == b"HTTP/1.1"):
            raise _Refused(400, "An HTTP/1.1 request needs exactly one Host header.")
        maxBodySize = self.factory.maxBodySize
        if self._transferEncoding is not None:
            if self._transferEncoding.lower() != b"chunked" or version == b"HTTP/1.0":
                raise _Refused(400, "Only chunked transfer coding is taken, in HTTP/1.1.")
            self._framing = _Framing.CHUNK_SIZE
            self._body = tempfile.SpooledTemporaryFile(_MEMORY_BODY_SIZE)
        elif self._contentLength:
            if self._contentLength > maxBodySize:
                raise _Refused(413, f"The request body is larger than {maxBodySize} bytes.")
            self._framing, self._remaining = _Framing.LENGTH, self._contentLength
            self._body = self._bodyFile(self._contentLength)
        else:
            return  # No body: the request is whole.
        self._phase, self._since = _Phase.BODY, self._now
        if self._expectContinue and version == b"HTTP/1.1":
            self.send(_CONTINUE)

    def _bodyFile(self, length: int) -> IO[bytes]:
        """Where a body of C{length} bytes is spooled: see L{MEMORY_BODIES}."""
        if length <= _MEMORY_BODY_SIZE:
            return io.BytesIO()
        factory = self.factory
        if length <= _LARGE_MEMORY_BODY_SIZE and factory.bodyMemory + length <= MEMORY_BODIES:
            factory.bodyMemory += length
            self._bodyMemory = length
            return io.BytesIO()
        return tempfile.SpooledTemporaryFile(_MEMORY_BODY_SIZE)

    def _releaseBodyMemory(self) -> None:
        """The request whose body is held in memory is done with it."""
        self.factory.bodyMemory -= self._bodyMemory
        self._bodyMemory = 0

    def on_chunk_header(self) -> None:
        """
        Refuse a chunk that would take the body over the limit from its
        size line, rather than wait for bytes that may never come.
        """
        # llhttp checked the line: hexadecimal digits, 64 bits at most.
        size = int(self._chunkLine.partition(b";")[0].rstrip(b"\r\n"), 16)
        if self._bodySize + size > self.factory.maxBodySize:
            raise _Refused(
                413, f"The request body is larger than {self.factory.maxBodySize} bytes."
            )
        self._bodySize += size
        if size:
            self._framing, self._remaining = _Framing.CHUNK_DATA, size + 2
        else:
            self._framing, self._tail, self._headSize = _Framing.TRAILERS, b"\r\n", 0

    def on_body(self, body: bytes) -> None:
        assert self._body is not None
        self._body.write(body)

    def on_message_complete(self) -> None:
        self._messageComplete(self._parser.should_keep_alive())

    def _messageComplete(self, keepAlive: bool) -> None:
        """The request is whole: to be answered once the parsing returns."""
        body = self._body
        if body is None:
            body, length = io.BytesIO(), 0
        else:
            length = body.tell()
            body.seek(0)
            self._body = None
        method = self._method
        assert method is not None
        response = Response(self, keepAlive=keepAlive, arrived=self._arrived)
        response.request = RequestFacts(
            method=method,
            target=self._target,
            version=self._version,
            headers=self._headers,
            client=self._client,
            server=self._server,
            secure=self._secure,
            body=body,
            bodyLength=length,
            record=response,
        )
        self._complete = response
        self._startRequest()

    def _discardBody(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        self._releaseBodyMemory()

    # Answering

    def _answer(self, response: Response) -> None:
        """Hand a whole request to the proxy."""
        self._phase = _Phase.ANSWERING
        self._response = response
        exchange = self.factory.proxy.handle(response.request, response)
        response.exchange = exchange

    def responseDone(self, response: Response, keepAlive: bool) -> None:
        """
        C{response} is finished (or aborted): go on with the next request,
        or close the connection.
        """
        if response is not self._response:
            return
        self._response = self._producer = None
        # Freed now, not when the garbage collector finds the exchange and
        # this response, which refer to each other: a collection of the
        # oldest generation can be far off, and a megabyte body waits for it.
        response.request.body.close()
        self._releaseBodyMemory()
        if not keepAlive or self.factory.closing:
            self.close()
            return
        self._phase, self._since = _Phase.IDLE, self.factory.reactor.seconds()
        self._resumeReading()
        if not self._parsing and self._unparsed:
            self._now = self._since
            unparsed, self._unparsed = self._unparsed, b""
            self._parse(unparsed)

    def close(self) -> None:
        """
        Close the connection once what was written is sent. Its producer
        goes first: TLS would otherwise wait for it to be unregistered.
        """
        self._phase = _Phase.CLOSING
        transport = self.transport
        assert transport is not None
        cast(IConsumer, transport).unregisterProducer()
        transport.loseConnection()

    def abortResponse(self, response: Response) -> None:
        """Cut the connection under C{response}: it must not look complete."""
        if response is self._response:
            self._response = self._producer = None
            self._phase = _Phase.CLOSING
            transport = self.transport
            assert transport is not None
            transport.abortConnection()  # type: ignore[attr-defined]

    def fileSender(self, file: BinaryIO, byteRange: ByteRange) -> FileSender:
        """
        A sender of C{byteRange} of C{file} to the transport, whose producer
        it becomes until L{fileSent}: the connection steps aside.
        """
        transport = self.transport
        assert transport is not None
        cast(IConsumer, transport).unregisterProducer()
        return FileSender(transport, file, *byteRange)

    def fileSent(self) -> None:
        """The file sender is done: be the transport's producer again."""
        self._writePaused = False
        transport = self.transport
        assert transport is not None
        cast(IConsumer, transport).registerProducer(self, True)

    def setProducer(self, producer: IPushProducer | None) -> None:
        """The producer of the response being written, paused while the transport is."""
        self._producer = producer
        if producer is not None and self._writePaused:
            producer.pauseProducing()

    def pauseProducing(self) -> None:
        self._writePaused = True
        if self._producer is not None:
            self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._writePaused = False
        if self._producer is not None:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        """The transport is going away; L{connectionLost} tells the proxy."""

    def drained(self) -> bool:
        """
        Whether this is a plain socket's transport with nothing buffered, so
        that what is written now goes straight to the socket, in order.

        Twisted keeps its buffer in C{dataBuffer} and C{_tempDataLen}: this
        is the one place that reads them.
        """
        direct = self._direct
        return direct is not None and not direct._tempDataLen and not direct.dataBuffer

    def send(self, data: bytes) -> None:
        """
        Write C{data}: straight to the socket while Twisted has nothing
        buffered for it, which saves a reactor turn and a pair of
        C{epoll_ctl} calls per write; what the socket does not take, and
        everything while something is buffered, goes through the transport.

        """
        if self.drained():
            assert self._socket is not None
            try:
                sent = self._socket.send(data)
            except OSError:  # Full, or broken: Twisted will find out which.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport = self.transport
        assert transport is not None
        transport.write(data)

    def _refuse(self, refused: _Refused) -> None:
        """
        Answer the request being received with an error, close the
        connection gently, and read and drop what comes meanwhile.
        """
        self._phase, self._since = _Phase.LINGERING, self.factory.reactor.seconds()
        self._discardBody()
        self._unparsed = b""
        code, detail = refused.code, refused.detail
        reason = _REASONS[code]
        body = _errorPage(code, detail)
        self.send(
            b"HTTP/1.1 %d %s\r\nConnection: close\r\n%s%sContent-Type: text/html; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (code, reason, self.factory.dateLine(self._since), _SERVER_LINE, len(body), body)
        )
        transport = self.transport
        assert transport is not None
        self._log.info(
            "Refused a request from {peer} with {code}: {detail}",
            peer=transport.getPeer(),
            code=code,
            detail=detail,
        )
        if self._method is not None:
            self.record(
                self._method, self._target, self._version, self._headers, code, len(body), None
            )
        if ITCPTransport.providedBy(transport) and not self._secure:
            transport.loseWriteConnection()
        self._resumeReading()

    def record(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        status: int,
        sent: int,
        request: object,
        arrived: float | None = None,
    ) -> None:
        """Hand a L{Served} record of one answered request to each observer."""
        observers = self.factory.observers
        if not observers:
            return
        now = self.factory.reactor.seconds()
        arrived = self._arrived if arrived is None else arrived
        served = Served(
            time=arrived,
            client=self._client[0] or "-",
            method=method,
            target=target,
            protocol=version,
            status=status,
            sent=sent,
            referrer=_lastValue(headers, b"referer"),
            userAgent=_lastValue(headers, b"user-agent"),
            host=_lastValue(headers, b"host"),
            seconds=now - arrived,
            upstream=upstreamOf(request),
        )
        for observer in observers:
            observer(served)


class Response:
    """
    The answer to one request, as the core writes it: the
    L{txfastcgi._http.core.ResponseWriter} of the HTTP/1.1 front.

    The head and the first body bytes are held back until L{flush} (the
    end of a read from php-fpm), L{finish}, or L{_HOLD_LIMIT} bytes of body:
    a response whose end comes with its start then leaves in one write,
    with its Content-Length, where it would have been chunked (or, to an
    HTTP/1.0 client, delimited by the close). The core notes its part on
    this object with L{txfastcgi._http.served.noteUpstream}.

    @ivar request: what the core was given.
    @ivar keepAlive: whether the connection may go on after this response,
        as far as the request is concerned.
    """

    request: RequestFacts
    exchange: _Exchange | None = None

    def __init__(self, connection: HTTP1Connection, *, keepAlive: bool, arrived: float) -> None:
        self.keepAlive = keepAlive
        self._connection = connection
        self._arrived = arrived
        self._done = False
        # The head held back: whole, or (from writeHead) without its
        # framing and connection lines, which wait for the length.
        self._head = b""
        self._headWhole = False
        self._holding = False
        self._held: list[bytes] = []
        self._heldSize = 0
        self._code = 0
        self._delimiter = Delimiter.NONE
        self._length: int | None = 0
        self._sent = 0

    def writeInformational(self, code: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """Send a 1xx now, if the response has not started (it is the core's rule too)."""
        if self._done or self._holding or self._head:
            return
        lines = [b"HTTP/1.1 %d %s\r\n" % (code, _INFORMATIONAL.get(code, b"Informational"))]
        lines += [b"%s: %s\r\n" % header for header in headers]
        lines.append(b"\r\n")
        self._connection.send(b"".join(lines))

    def writeHead(
        self,
        code: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        framing: BodyFraming,
    ) -> None:
        if self._done:
            return
        delimiter = framing.delimiter
        if delimiter is Delimiter.CHUNKED and self.request.version == b"HTTP/1.0":
            delimiter = Delimiter.CLOSE  # HTTP/1.0 knows no chunks.
        self._code, self._delimiter, self._length = code, delimiter, framing.length
        parts = [b"HTTP/1.1 %d %s\r\n" % (code, reason)]
        date = server = False
        for name, value in headers:
            lower = name.lower()
            date = date or lower == b"date"
            server = server or lower == b"server"
            parts += (name, b": ", value, b"\r\n")
        connection = self._connection
        if not date:
            parts.append(connection.factory.dateLine(connection.factory.reactor.seconds()))
        if not server:
            parts.append(_SERVER_LINE)
        self._head = b"".join(parts)
        self._headWhole = False
        self._holding = True

    def _headToSend(self) -> bytes:
        """The head held back, with its framing and connection lines."""
        if self._headWhole:
            return self._head
        delimiter = self._delimiter
        if delimiter is Delimiter.CONTENT_LENGTH:
            assert self._length is not None
            framingLine = b"Content-Length: %d\r\n" % self._length
        elif delimiter is Delimiter.CHUNKED:
            framingLine = b"Transfer-Encoding: chunked\r\n"
        else:
            framingLine = b""
            if delimiter is Delimiter.CLOSE:
                self.keepAlive = False
        return self._head + framingLine + self._connectionLine()

    def _connectionLine(self) -> bytes:
        """
        The end of the head: what it says of the connection, and the blank
        line. A server shutting down keeps no connection.
        """
        if self._connection.factory.closing:
            self.keepAlive = False
        if not self.keepAlive:
            return b"Connection: close\r\n\r\n"
        if self.request.version == b"HTTP/1.0":
            return b"Connection: keep-alive\r\n\r\n"
        return b"\r\n"

    def writeStaticHead(self, answer: StaticResponse) -> None:
        """
        Start the answer to a static file request, with its prebuilt header
        block (which holds its Content-Length); the body, if it has one, is
        then written with L{writeBody} or L{sendFile}.
        """
        if self._done:
            return
        byteRange = answer.byteRange
        if byteRange is None:
            self._delimiter, self._length = Delimiter.NONE, 0
        else:
            self._delimiter, self._length = Delimiter.CONTENT_LENGTH, byteRange.length
        self._code = answer.status
        factory = self._connection.factory
        self._head = b"".join(
            (
                answer.head,
                factory.dateLine(factory.reactor.seconds()),
                _SERVER_LINE,
                self._connectionLine(),
            )
        )
        self._headWhole = True
        self._holding = True

    def sendFile(self, file: BinaryIO, byteRange: ByteRange) -> None:
        """
        Send C{byteRange} of C{file} as the body, after the head, with a
        L{FileSender} (C{os.sendfile} on a plain socket, which reads the
        file only as fast as the client takes it), then finish; C{file} is
        closed in every case.
        """
        if self._done:
            file.close()
            return
        self.flush()
        connection = self._connection
        sender = connection.fileSender(file, byteRange)

        def sent(_: None) -> None:
            self._sent = sender.sent
            connection.fileSent()
            self.finish()

        def failed(reason: Failure) -> None:
            if reason.check(ConnectionLost):
                self._done = True  # The connection tells the rest.
                return
            self._connection._log.failure(
                "Cannot send {name}", reason, name=getattr(file, "name", "a file")
            )
            self.abort()

        sender.start(drained=connection.drained()).addCallbacks(sent, failed)

    def writeBody(self, data: bytes) -> None:
        if self._done or not data:
            return
        delimiter = self._delimiter
        if delimiter is Delimiter.NONE:
            return
        length = self._length
        if length is not None and self._sent + len(data) > length:
            data = data[: length - self._sent]  # Never into the next response.
            if not data:
                return
        self._sent += len(data)
        if self._holding:
            self._held.append(data)
            self._heldSize += len(data)
            if self._heldSize >= _HOLD_LIMIT:
                self.flush()
        elif delimiter is Delimiter.CHUNKED:
            self._connection.send(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._connection.send(data)

    def flush(self) -> None:
        if self._done or not self._holding:
            return
        self._holding = False
        held, self._held = self._held, []
        body = held[0] if len(held) == 1 else b"".join(held)
        head = self._headToSend()
        if body and self._delimiter is Delimiter.CHUNKED:
            self._connection.send(b"%s%x\r\n%s\r\n" % (head, len(body), body))
        else:
            self._connection.send(head + body)

    def finish(self) -> None:
        if self._done:
            return
        if self._holding:
            if self._delimiter is Delimiter.CHUNKED or self._delimiter is Delimiter.CLOSE:
                # The whole body is here: its length is known after all.
                self._delimiter = Delimiter.CONTENT_LENGTH
                self._length = self._sent
            self.flush()
        elif self._delimiter is Delimiter.CHUNKED:
            self._connection.send(_LAST_CHUNK)
        self._done = True
        if self._delimiter is Delimiter.CONTENT_LENGTH and self._sent != self._length:
            self.keepAlive = False  # The client waits for what never came.
        request = self.request
        self._connection.record(
            request.method,
            request.target,
            request.version,
            request.headers,
            self._code,
            self._sent,
            self,
            self._arrived,
        )
        self._connection.responseDone(self, self.keepAlive)

    def abort(self) -> None:
        if not self._done:
            # What was held goes first, as it would have without the hold.
            self.flush()
            self._done = True
            self._connection.abortResponse(self)

    def registerProducer(self, producer: IPushProducer) -> None:
        if not self._done:
            self._connection.setProducer(producer)

    def unregisterProducer(self) -> None:
        if not self._done:
            self._connection.setProducer(None)

    def serveFile(self, filename: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self._connection.factory.serveStaticFile(self.request, filename, self, headers)

    def clientGone(self) -> None:
        """The connection is lost before the end: write nothing more, tell the core."""
        if not self._done:
            self._done = True
            if self.exchange is not None:
                self.exchange.clientGone()
