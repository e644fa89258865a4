"""
The HTTP side of a PHP server: what must happen to a request before any
resource sees it.

L{FastCGISite} is the L{twisted.web.server.Site} to serve a
L{txfastcgi.FastCGIResource} with. Twisted's own Site stores a request body
of any size before the resource runs, answers a too-big request head with a
bare 400 (or a closed connection, for one too-long line), and parses form
bodies into C{request.args} although a proxy only forwards them. This one:

  - answers 413 to a request body over C{maxBodySize}: at once from its
    Content-Length, before a byte of it is read (and without a
    C{100 Continue}), or as soon as a chunked body passes the limit; the body
    is never stored whole, and nothing reaches PHP;
  - answers 414 to a request line, and 431 to a request head, over
    C{maxHeaderSize} bytes;
  - answers 400 to an HTTP/1.1 request with no Host header or with several,
    which an application could otherwise resolve differently from the proxy;
  - takes bytes over 0x7F in the request target, as nginx, Apache and Caddy
    do (twisted.web answers a bare 400), and passes them on untouched, but
    answers 400 to a control character there;
  - answers a chunk size that does not fit in 64 bits with 400, and one that
    would take the body over C{maxBodySize} with 413, from its size line,
    instead of waiting for bytes that will never come;
  - answers 408 to a request head not whole within C{headerTimeout} seconds,
    however slowly it trickles in, and to a body that stops for
    C{bodyTimeout} seconds (nginx's C{client_header_timeout} and
    C{client_body_timeout}); a connection that sends nothing at all is
    closed after C{headerTimeout} seconds, while an idle kept connection keeps
    the site's C{timeout};
  - leaves form bodies unparsed (C{parsePOSTFormSubmission=False}).

After such an answer the connection is closed, gently: the answer is
followed by a FIN and what the client is still sending is read and dropped
for a few seconds, because closing a socket with unread data makes the
kernel send a reset that can destroy the answer before the client reads it
(nginx's C{lingering_close} does the same).

Usage::

    site = FastCGISite(FastCGIResource(endpoint, "/srv/www"), maxBodySize=64 * 1024 * 1024)
    endpoints.serverFromString(reactor, "tcp:8080").listen(site)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ISSLTransport, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import _GenericHTTPChannelProtocol
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from txfastcgi._http.accesslog import AccessLog
from txfastcgi._http.served import Served, upstreamOf
from txfastcgi._limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    LINGER_TIME,
    DeadlineSweep,
)

_ChannelProtocol: type[_GenericHTTPChannelProtocol]
try:
    from txfastcgi._http.h2 import SwitchingToLeanH2 as _ChannelProtocol
except ImportError:
    # Without the http2 extra (h2, priority): HTTP/1.1 only, as twisted.web.
    _ChannelProtocol = _GenericHTTPChannelProtocol

__all__ = ["FastCGISite"]

# Never in a request target: the control characters.
_CONTROL_CHARACTERS = bytes([*range(0x20), 0x7F])

# An ASCII byte twisted.web's request line parser accepts for each byte over
# 0x7F; see _LimitedChannel._requestLineReceived.
_ASCII_STAND_INS = bytes.maketrans(bytes(range(0x80, 0x100)), b"x" * 0x80)

# The largest chunk size that is not an attack: 64 bits, as nginx and
# Apache read it.
_MAX_CHUNK_SIZE = 2**64 - 1

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


class FastCGISite(Site):
    """
    A L{Site} with the request limits a PHP server needs; see the module
    docstring.

    @param resource: the root resource, usually a L{txfastcgi.FastCGIResource}.
    @param maxBodySize: the largest request body, in bytes, declared or chunked.
    @param maxHeaderSize: the largest request line and request head, in bytes.
    @param observers: what is called with a L{Served} record of each request
        answered, once its last byte is written: an L{AccessLog}, metrics.
        By default, an access log in combined format to the event log.
    @param timeout: seconds an idle client connection stays open between
        requests.
    @param headerTimeout: seconds a request head may take, from the
        connection's start or, on a kept connection, from its first byte.
    @param bodyTimeout: seconds a request body may go without a byte.
    @param reactor: for timers and log timestamps; the global one by default.
    """

    def __init__(
        self,
        resource: IResource,
        *,
        maxBodySize: int = DEFAULT_MAX_BODY_SIZE,
        maxHeaderSize: int = DEFAULT_MAX_HEADER_SIZE,
        observers: Sequence[Callable[[Served], object]] | None = None,
        timeout: float = 60 * 60 * 12,
        headerTimeout: float = DEFAULT_HEADER_TIMEOUT,
        bodyTimeout: float = DEFAULT_BODY_TIMEOUT,
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__(
            resource,
            _LimitedRequest,
            parsePOSTFormSubmission=False,
            timeout=timeout,
            reactor=reactor,
        )
        self.maxBodySize = maxBodySize
        self.maxHeaderSize = maxHeaderSize
        self.headerTimeout = headerTimeout
        self.bodyTimeout = bodyTimeout
        self.observers = list(observers) if observers is not None else [AccessLog()]
        self.deadlines = DeadlineSweep(self.reactor)

    def startFactory(self) -> None:
        super().startFactory()
        for observer in self.observers:
            if isinstance(observer, AccessLog):
                observer.open()

    def stopFactory(self) -> None:
        super().stopFactory()
        for observer in self.observers:
            if isinstance(observer, AccessLog):
                observer.close()

    def log(self, request: http.Request) -> None:
        """Hand a record of C{request}, just answered, to each observer."""
        if not self.observers:
            return
        address = request.getClientAddress()
        arrived = getattr(request, "arrived", None)
        now = self.reactor.seconds()
        served = Served(
            time=now if arrived is None else arrived,
            client=address.host if isinstance(address, (IPv4Address, IPv6Address)) else "-",
            method=request.method,
            target=request.uri,
            protocol=request.clientproto,
            status=request.code,
            sent=request.sentLength,
            referrer=request.getHeader(b"referer"),
            userAgent=request.getHeader(b"user-agent"),
            host=request.getHeader(b"host"),
            seconds=0.0 if arrived is None else now - arrived,
            upstream=upstreamOf(request),
        )
        for observer in self.observers:
            observer(served)

    def protocol(self) -> _GenericHTTPChannelProtocol:
        # As Twisted's own factory does, so that HTTP/2 negotiated over TLS
        # replaces the HTTP/1.1 channel, here with the lean HTTP/2 one.
        return _ChannelProtocol(_LimitedChannel())


class _LimitedChannel(http.HTTPChannel):
    """
    An HTTP/1.1 connection that refuses a request head or body over the
    site's limits, too slow, or malformed in a way twisted.web lets through,
    and ambiguous Host headers, before any resource runs.

    @ivar _since: when the clock of the request being received started: the
        head's at its first byte (or the connection's start), the body's at
        its latest byte; L{None} while idle between requests or answering
        one, when Twisted's own timeouts apply.
    """

    site: FastCGISite
    _log = Logger()
    _refused = False
    _lingering: IDelayedCall | None = None
    _since: float | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # One line over the limit must not be buffered whole either.
        self.MAX_LENGTH = self.totalHeadersSize = self.site.maxHeaderSize
        self._since = self.site.reactor.seconds()
        self.site.deadlines.track(self)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # Read and dropped while lingering; see the module docstring.
        # Pipelined requests come here too, once the one before is answered.
        if not self._handlingRequest and (self._since is None or not self.line_mode):
            self._since = self.site.reactor.seconds()
        super().dataReceived(data)
        transport = self.transport
        if self._busyReceiving or not self.line_mode or self._refused or transport is None:
            return  # The head is parsed on, or is no longer being received.
        # What the parser left waits for a CRLF to end its first line: a
        # line feed without a CR before it means that one never comes.
        buffer = self._buffer
        newline = buffer.find(b"\n")
        bareLineFeed = newline != -1 and buffer[newline - 1 : newline] != b"\r"
        if bareLineFeed and not transport.disconnecting:  # type: ignore[attr-defined]
            # As llhttp (the http1 front) does. RFC 9112 section 2.2 lets a
            # server take a bare LF, but a proxy that reads lines otherwise
            # than what is behind or in front of it invites smuggling.
            self.refuse(400, "A line of the request head ends without a CR.")

    def checkDeadline(self, now: float) -> None:
        """
        Answer 408 to a request whose head or body has taken too long by
        C{now}; close a connection that has sent nothing in that time.
        """
        since = self._since
        if since is None or self._refused:
            return
        receivingHead = self.line_mode
        if now - since < (self.site.headerTimeout if receivingHead else self.site.bodyTimeout):
            return
        self._since = None
        if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
            # HTTP/2 replaced this channel on the connection without telling it.
            self.site.deadlines.untrack(self)
        elif not receivingHead:
            self.refuse(408, "The request body stopped coming.")
        elif self._receivedHeaderSize or self._buffer:
            self.refuse(408, "The request head took too long to arrive.")
        else:
            self.timeoutConnection()  # Nothing asked, nothing to answer.

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize + len(line) > self.site.maxHeaderSize:
            self._refuseHead()
            return
        if b"\n" in line:
            # A bare line feed inside a CRLF-ended line (Twisted before 26
            # takes it into a header value): see dataReceived.
            self.refuse(400, "A line of the request head ends without a CR.")
            return
        if self._receivedHeaderSize == 0 and line:
            self._requestLineReceived(line)
            return
        super().lineReceived(line)

    def _requestLineReceived(self, line: bytes) -> None:
        """
        Refuse a control character in the request target, and take any byte
        over 0x7F there.

        twisted.web refuses a target with bytes over 0xB0 (it compares with
        176 where it means 0x7E); nginx, Apache and Caddy take them, and
        links to MediaWiki titles hold them unencoded. twisted.web gets the
        line with each such byte replaced by an ASCII one of the same length,
        to check the rest of the line, and the target is put back as sent.
        """
        parts = line.split(b" ")
        if len(parts) != 3:
            super().lineReceived(line)  # Twisted's 400.
            return
        method, target, version = parts
        if len(target.translate(None, _CONTROL_CHARACTERS)) != len(target):
            self.refuse(400, "The request target holds a control character.")
            return
        if target.isascii():
            super().lineReceived(line)
            return
        super().lineReceived(b" ".join([method, target.translate(_ASCII_STAND_INS), version]))
        if getattr(self, "_path", None) is not None:
            self._path = target

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        if header == b"Transfer-Encoding" and self._version != b"HTTP/1.1":
            # RFC 9112 section 6.1: the framing is faulty, since an HTTP/1.0
            # server in front may have read the body by its Content-Length,
            # or as no body at all.
            self.refuse(400, "An HTTP/1.0 request has no Transfer-Encoding.")
            return False
        chosen: bool = super()._maybeChooseTransferDecoder(header, data)
        decoder = self._transferDecoder
        if type(decoder) is http._ChunkedTransferDecoder:
            self._transferDecoder = _SizeCheckingChunkedDecoder(
                decoder.dataCallback, decoder.finishCallback, self._chunkSizeReceived
            )
        return chosen

    def _chunkSizeReceived(self, size: int) -> bool:
        """
        Refuse a chunk too large to be real, or to fit in the body limit,
        from its size line; whether to read on.
        """
        if size > _MAX_CHUNK_SIZE:
            self.refuse(400, "The chunk size does not fit in 64 bits.")
            return False
        request: _LimitedRequest = self.requests[-1]
        return request.admitChunk(size)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuseHead()

    def allHeadersReceived(self) -> None:
        hosts = self.requests[-1].requestHeaders.getRawHeaders(b"host", [])
        if len(hosts) > 1 or (not hosts and self._version == b"HTTP/1.1"):
            self.refuse(400, "An HTTP/1.1 request needs exactly one Host header.")
            return
        super().allHeadersReceived()
        self._since = self.site.reactor.seconds()  # The body's clock, if there is a body.

    def allContentReceived(self) -> None:
        if not self._refused:
            self._since = None
            super().allContentReceived()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        super().registerProducer(producer, streaming)
        # twisted.web tells a producer of the transport's pauses only as
        # they happen: one registered during a pause would go on producing
        # into a full buffer until the next.
        if streaming and self._waitingForTransport:
            producer.pauseProducing()

    def _send100Continue(self) -> None:
        # Never invite a body that has just been refused.
        if not self._refused:
            super()._send100Continue()

    def _refuseHead(self) -> None:
        if self._receivedHeaderSize == 0:
            self.refuse(414, "The request line is too long.")
        else:
            self.refuse(431, "The request header fields are too large.")

    def refuse(self, code: int, detail: str) -> None:
        """
        Answer the request being received with C{code} and close the
        connection; no resource sees the request.
        """
        if self._refused:
            return
        self._refused = True
        self.clearLineBuffer()
        self._dataBuffer = []
        self.setTimeout(None)
        transport = self.transport
        assert transport is not None
        head, body = _errorResponse(code, detail)
        transport.write(head + body)
        self._logRefusal(code, len(body), detail)
        if ITCPTransport.providedBy(transport) and not ISSLTransport.providedBy(transport):
            transport.loseWriteConnection()
        # Keep reading, so that what the client is still sending meets no
        # reset, until it closes or the time is up.
        self._networkProducer.resumeProducing()
        self._lingering = self.callLater(LINGER_TIME, self._stopLingering)

    def _stopLingering(self) -> None:
        self._lingering = None
        transport = self.transport
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]

    def _logRefusal(self, code: int, sentLength: int, detail: str) -> None:
        """An access log line for the refused request, as far as it was read."""
        peer = self.transport.getPeer() if self.transport is not None else None
        self._log.info(
            "Refused a request from {peer} with {code}: {detail}",
            peer=peer,
            code=code,
            detail=detail,
        )
        command = getattr(self, "_command", None)
        if not self.requests or command is None:
            return
        request = self.requests[-1]
        request.method, request.uri, request.clientproto = command, self._path, self._version
        request.code, request.sentLength = code, sentLength
        self.site.log(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        self._lingering = None
        self.site.deadlines.untrack(self)
        super().connectionLost(reason)


class _SizeCheckingChunkedDecoder(http._ChunkedTransferDecoder):
    """
    twisted.web's chunked decoder, which also asks C{sizeReceived} about each
    chunk size as soon as its line is read, and stops if told to. Alone, it
    takes any size and waits for that many bytes.
    """

    def __init__(
        self,
        dataCallback: Callable[[bytes], None],
        finishCallback: Callable[[bytes], None],
        sizeReceived: Callable[[int], bool],
    ) -> None:
        super().__init__(dataCallback, finishCallback)
        self._sizeReceived = sizeReceived

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        return super()._dataReceived_CHUNK_LENGTH() and self._sizeReceived(self.length)


class _LimitedRequest(Request):
    """
    A request that refuses a body over the site's limit as it arrives,
    instead of storing it.

    Over HTTP/1.1 its channel answers at once. Over HTTP/2 the stream is
    answered once the client has ended it; the body is dropped meanwhile.
    """

    _bodyReceived = 0
    _bodyRefused = False

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        # The channel is an HTTP/1.1 channel or an HTTP/2 stream: both know the site.
        self._site: FastCGISite = channel.site
        # When its first byte came, for the access log's request time.
        self.arrived = self._site.reactor.seconds()

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._site.maxBodySize:
            self._refuseBody()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._bodyRefused:
            return
        self._bodyReceived += len(data)
        if self._bodyReceived > self._site.maxBodySize:
            self._refuseBody()
            return
        super().handleContentChunk(data)

    def admitChunk(self, size: int) -> bool:
        """
        Refuse the body now if a chunk of C{size} bytes announced next would
        take it over the limit; whether it may come.
        """
        if self._bodyReceived + size > self._site.maxBodySize:
            self._refuseBody()
            return False
        return True

    def _refuseBody(self) -> None:
        self._bodyRefused = True
        if self.content is not None:
            self.content.close()
            self.content = None
        if isinstance(self.channel, _LimitedChannel):
            self.channel.refuse(
                413, f"The request body is larger than {self._site.maxBodySize} bytes."
            )

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._bodyRefused:
            super().requestReceived(command, path, version)
            return
        # HTTP/2: the stream has ended; answer it without running anything.
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.partition(b"?")[0]
        self.site = self._site
        self.setResponseCode(413, _REASONS[413])
        self.setHeader(b"content-type", b"text/plain; charset=utf-8")
        self.write(b"The request body is larger than %d bytes.\n" % self._site.maxBodySize)
        self.finish()


def _errorResponse(code: int, detail: str) -> tuple[bytes, bytes]:
    """The head and body of an HTTP/1.1 error response that closes the connection."""
    reason = _REASONS[code]
    body = b"<html><head><title>%d %s</title></head><body><h1>%s</h1><p>%s</p></body></html>\n" % (
        code,
        reason,
        reason,
        detail.encode("ascii"),
    )
    head = (
        b"HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n" % (code, reason, len(body))
    )
    return head, body
