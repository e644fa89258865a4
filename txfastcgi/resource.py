"""
L{FastCGIResource}: a twisted.web resource that serves a PHP document root.

Static files are served by L{twisted.web.static.File}; scripts run in
php-fpm over FastCGI, and their output is streamed back as it arrives.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Protocol as TypingProtocol
from typing import cast, runtime_checkable
from weakref import WeakKeyDictionary

import twisted
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IAddress, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, pages
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import File

from txfastcgi._emptied import Emptied
from txfastcgi._version import __version__
from txfastcgi.cgi import CGIRequest, MalformedResponse, ResponseHeadParser
from txfastcgi.client import BackendClosed, BackendTimeout, FastCGIClientProtocol
from txfastcgi.forwarded import TrustedProxies
from txfastcgi.framing import BodyFraming, responseBodyFraming
from txfastcgi.pool import BackendUnavailable, ConnectionPool, QueueTimeout
from txfastcgi.records import ProtocolError, ProtocolStatus
from txfastcgi.routing import Redirect, Router, Script, StaticFile
from txfastcgi.served import Upstream, noteUpstream

__all__ = ["ConnectionSource", "FastCGIResource"]

SERVER_SOFTWARE = f"txfastcgi/{__version__} Twisted/{twisted.__version__}".encode()

# Requests that may be sent twice without harm (RFC 9110 idempotent methods
# that carry no body worth worrying about).
_IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})

# CONNECT asks for a tunnel, which a PHP script's 200 would seem to grant,
# and TRACE echoes the request, credentials included, back to any script
# that can make the browser send one: neither is ever handed to PHP.
_REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE"})
_ALLOWED_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

_NO_ANSWER_IN_TIME = "The PHP backend did not answer in time."

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


@runtime_checkable
class ConnectionSource(TypingProtocol):
    """Where FastCGI connections come from: a L{ConnectionPool} or a balancer of several."""

    def acquire(
        self, fresh: bool = False, since: float | None = None
    ) -> Deferred[FastCGIClientProtocol]:
        """
        A connection for one request; a new one, not a kept one, if
        C{fresh}. It fails with L{BackendTimeout} if the request, which
        arrived at reactor time C{since}, is still waiting when its read
        timeout is up.
        """

    def release(self, protocol: FastCGIClientProtocol) -> None:
        """Give back a connection acquired before."""


class FastCGIResource(Resource):
    """
    Serve the PHP application in C{documentRoot}, mounted anywhere in a
    resource tree.

    @param endpoint: where php-fpm listens: any L{IStreamClientEndpoint}
        (a pool of kept-alive connections is made for it), or a
        L{ConnectionSource} built by the caller.
    @param documentRoot: the directory with the scripts and static files.
    @param index: the script that serves a directory.
    @param frontController: the URL path (below the mount point) that
        serves paths naming no file, or L{None} to answer those with 404.
    @param params: extra FastCGI params; they override every computed
        param and every request header.
    @param https: send HTTPS=on even for plain HTTP requests, for a server
        behind a TLS terminator.
    @param trustedProxies: addresses or networks of proxies in front of
        this server whose C{Forwarded} or C{X-Forwarded-For} and
        C{X-Forwarded-Proto} headers give REMOTE_ADDR and HTTPS; nobody
        else's are believed.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint | ConnectionSource,
        documentRoot: str,
        index: str = "index.php",
        frontController: str | None = "/index.php",
        params: Mapping[bytes | str, bytes | str] = {},
        *,
        https: bool = False,
        trustedProxies: Iterable[str] = (),
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = cast(IReactorTime, globalReactor)
        self._clock = reactor
        if isinstance(endpoint, ConnectionSource):
            self._connections: ConnectionSource = endpoint
        else:
            self._connections = ConnectionPool(reactor, endpoint)
        self._router = Router(documentRoot, index, frontController)
        self.documentRoot = self._router.documentRoot
        self._params = {_toBytes(name): _toBytes(value) for name, value in params.items()}
        self._https = https
        self._trustedProxies = TrustedProxies(trustedProxies)
        self._inFlight = 0
        self._idle = Emptied()

    def render(self, request: Request) -> bytes | int:
        if request.method in _REFUSED_METHODS:
            request.setHeader(b"allow", _ALLOWED_METHODS)
            return _renderError(request, http.NOT_ALLOWED, "This server is not a proxy.")
        if not request.postpath:
            # The mount point itself, without its trailing slash.
            return _redirectToDirectory(request)
        route = self._router.route(b"/" + b"/".join(request.postpath))
        if isinstance(route, Script):
            self._inFlight += 1
            ensureDeferred(_Exchange(self, request, route).run()).addCallback(self._requestDone)
            return NOT_DONE_YET
        if isinstance(route, StaticFile):
            return _serveFile(request, route.filename)
        if isinstance(route, Redirect):
            return _redirectToDirectory(request)
        return _renderError(request, route.code, route.reason)

    def whenIdle(self) -> Deferred[None]:
        """
        Fires once no script request is in progress, for a graceful shutdown:
        stop listening, wait for this, then stop php-fpm.
        """
        return self._idle.wait(not self._inFlight)

    def _requestDone(self, ignored: None) -> None:
        self._inFlight -= 1
        if not self._inFlight:
            self._idle.fire()

    def _cgiRequest(self, request: Request, script: Script, bodyLength: int) -> CGIRequest:
        prefix = b"/".join([b"", *(request.prepath or ())]).decode("utf-8", "surrogateescape")
        scriptName = prefix + script.scriptName
        remoteAddr, remotePort = _hostAndPort(request.getClientAddress())
        https = self._https or request.isSecure()
        if self._trustedProxies:
            headers = request.requestHeaders
            client = self._trustedProxies.client(
                remoteAddr,
                headers.getRawHeaders(b"forwarded", []),
                headers.getRawHeaders(b"x-forwarded-for", []),
                headers.getRawHeaders(b"x-forwarded-proto", []),
            )
            if client.address != remoteAddr:
                remoteAddr, remotePort = client.address, None
            if client.https is not None:
                https = self._https or client.https
        serverAddr, serverPort = _localAddress(request)
        hasBody = bodyLength > 0 or request.requestHeaders.hasHeader(b"content-length")
        return CGIRequest(
            method=request.method,
            requestURI=request.uri,
            queryString=request.uri.partition(b"?")[2],
            scriptFilename=script.filename,
            scriptName=scriptName,
            pathInfo=script.pathInfo,
            documentURI=scriptName + script.pathInfo,
            documentRoot=self.documentRoot,
            serverProtocol=request.clientproto,
            https=https,
            remoteAddr=remoteAddr,
            remotePort=remotePort,
            serverAddr=serverAddr,
            serverPort=serverPort,
            serverName=request.getRequestHostname(),
            contentType=request.getHeader(b"content-type"),
            contentLength=bodyLength if hasBody else None,
            headers=list(request.requestHeaders.getAllRawHeaders()),
        )


class _Exchange:
    """
    One HTTP request proxied to php-fpm, and the response streamed back.

    It is the L{ResponseReceiver} of the FastCGI request: it parses the CGI
    header block, then writes the body to the HTTP request with the FastCGI
    connection registered as its producer, so that a slow client slows
    php-fpm down instead of filling memory.
    """

    log = Logger()
    # Set once the script's header block has arrived; the body comes after it.
    _framing: BodyFraming

    def __init__(self, resource: FastCGIResource, request: Request, script: Script) -> None:
        self._resource = resource
        self._request = request
        self._script = script
        # Its read timeout counts from here, time in the pool's queue included.
        self._arrived = resource._clock.seconds()
        self._protocol: FastCGIClientProtocol | None = None
        self._acquiring: Deferred[FastCGIClientProtocol] | None = None
        self._outcome: Deferred[int] = Deferred()
        self._headParser: ResponseHeadParser | None = ResponseHeadParser()
        # Body bytes still due by the framing; None while only the end tells.
        self._bodyRemaining: int | None = None
        self._clientGone = False
        # For its access log line and metrics: who ran it, how often again.
        self._backend: str | None = None
        self._retries = 0

    async def run(self) -> None:
        """Proxy the request; whatever goes wrong, the client gets an answer."""
        try:
            await self._proxy()
        except Exception:
            self.log.failure("unexpected error proxying {uri}", uri=self._request.uri)
            self._fail(http.INTERNAL_SERVER_ERROR, "Internal error.", "unexpected error")

    async def _proxy(self) -> None:
        request = self._request
        request.notifyFinish().addErrback(self._lostClient)
        body = request.content
        assert body is not None, "twisted.web spools every request body before render"
        body.seek(0, os.SEEK_END)
        bodyLength = body.tell()
        params = self._resource._cgiRequest(request, self._script, bodyLength).params(
            SERVER_SOFTWARE, self._resource._params
        )
        mayRetry = request.method in _IDEMPOTENT_METHODS
        retrying = False
        while not self._clientGone:
            connections = self._resource._connections
            try:
                self._acquiring = connections.acquire(fresh=retrying, since=self._arrived)
                protocol = self._protocol = await self._acquiring
            except CancelledError:
                return
            except BackendUnavailable as e:
                self._fail(http.BAD_GATEWAY, "The PHP backend is unavailable.", str(e))
                return
            except QueueTimeout as e:
                request.setHeader(b"retry-after", b"5")
                self._fail(http.SERVICE_UNAVAILABLE, "The PHP backend is overloaded.", str(e))
                return
            except BackendTimeout as e:
                self._fail(http.GATEWAY_TIMEOUT, _NO_ANSWER_IN_TIME, str(e))
                return
            finally:
                self._acquiring = None
            self._backend = protocol.backend
            self._outcome = Deferred()
            body.seek(0)
            protocol.sendRequest(
                params, body, bodyLength, self, keepConnection=True, since=self._arrived
            )
            try:
                protocolStatus = await self._outcome
            except CancelledError:
                return
            except BackendClosed as e:
                if mayRetry and not retrying and e.beforeResponse:
                    self.log.info(
                        "FastCGI connection closed by the backend before a response; "
                        "retrying {method} {uri} on a new connection",
                        method=request.method.decode("ascii", "replace"),
                        uri=request.uri.decode("ascii", "replace"),
                    )
                    retrying = True
                    self._retries += 1
                    continue
                self._fail(http.BAD_GATEWAY, "The PHP backend closed the connection.", str(e))
                return
            except BackendTimeout as e:
                self._fail(http.GATEWAY_TIMEOUT, _NO_ANSWER_IN_TIME, str(e))
                return
            except (ProtocolError, MalformedResponse) as e:
                self._fail(http.BAD_GATEWAY, "The PHP backend sent an invalid response.", str(e))
                return
            finally:
                self._protocol = None
                connections.release(protocol)
            self._finish(protocolStatus)
            return

    # ResponseReceiver

    def stdoutReceived(self, data: bytes) -> None:
        if self._headParser is not None:
            try:
                parsed = self._headParser.feed(data)
            except MalformedResponse:
                self._outcome.errback()
                return
            if parsed is None:
                return
            self._headParser = None
            head, data = parsed
            request = self._request
            request.setResponseCode(head.code, head.reason)
            _copyHeaders(head.headers, request)
            self._framing = responseBodyFraming(
                request.method, head.code, head.contentLength, request.clientproto
            )
            self._bodyRemaining = self._framing.length
            assert self._protocol is not None
            request.registerProducer(self._protocol, True)
        self._writeBody(data)

    def stderrReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "backslashreplace").splitlines():
            self.log.warn(
                "PHP stderr for {uri}: {line}",
                uri=self._request.uri.decode("ascii", "replace"),
                line=_CONTROL_CHARACTERS.sub(_escapeCharacter, line),
            )

    def requestEnded(self, appStatus: int, protocolStatus: int) -> None:
        if protocolStatus != ProtocolStatus.REQUEST_COMPLETE and self._protocol is not None:
            # The backend refused the request: trust its connection with no other.
            self._protocol.abort()
        self._outcome.callback(protocolStatus)

    def requestFailed(self, reason: Failure) -> None:
        self._outcome.errback(reason)

    # Writing the response

    def _writeBody(self, data: bytes) -> None:
        remaining = self._bodyRemaining
        if remaining is not None:
            if len(data) > remaining:
                if self._framing.hasBody:
                    self.log.error(
                        "PHP sent more body than its Content-Length for {uri}; surplus dropped",
                        uri=self._request.uri.decode("ascii", "replace"),
                    )
                # A response without a body (HEAD, 204, 304) drops whatever
                # the script printed: the client expects no bytes.
                data = data[:remaining]
            self._bodyRemaining = remaining - len(data)
        if data:
            self._request.write(data)

    def _noteUpstream(self) -> None:
        """Note what the script did on the request, before it is finished and logged."""
        elapsed = self._resource._clock.seconds() - self._arrived
        noteUpstream(self._request, Upstream(self._backend, elapsed, self._retries))

    def _finish(self, protocolStatus: int) -> None:
        self._noteUpstream()
        request = self._request
        if self._clientGone:
            return
        if protocolStatus != ProtocolStatus.REQUEST_COMPLETE:
            reason = _protocolStatusName(protocolStatus)
            if protocolStatus == ProtocolStatus.OVERLOADED:
                self._fail(http.SERVICE_UNAVAILABLE, "The PHP backend is overloaded.", reason)
            else:
                self._fail(http.BAD_GATEWAY, "The PHP backend refused the request.", reason)
            return
        if self._headParser is not None:
            self._fail(
                http.BAD_GATEWAY,
                "The PHP backend sent an invalid response.",
                "the script's output ended before its header block did",
            )
            return
        request.unregisterProducer()
        if self._bodyRemaining:
            self.log.error(
                "PHP sent {missing} bytes less than its Content-Length for {uri}; "
                "closing the client connection",
                missing=self._bodyRemaining,
                uri=request.uri.decode("ascii", "replace"),
            )
            request.loseConnection()
            return
        request.finish()

    def _fail(self, code: int, brief: str, detail: str) -> None:
        """
        Answer with an error page if no response has started yet, or cut the
        client connection so that it cannot take a partial body as complete.
        """
        self._noteUpstream()
        request = self._request
        self.log.error(
            "{code} for {method} {uri}: {detail}",
            code=code,
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace"),
            detail=detail,
        )
        if self._clientGone or request.finished:
            return
        if self._headParser is None:
            # The script's status and headers are set already.
            request.unregisterProducer()
            request.loseConnection()
            return
        _renderError(request, code, brief)

    def _lostClient(self, reason: Failure) -> None:
        """The HTTP client went away: stop the script by closing its connection."""
        self._clientGone = True
        if self._acquiring is not None:
            self._acquiring.cancel()
        if self._protocol is not None and not self._outcome.called:
            self._protocol.abort()
            self._outcome.errback(Failure(CancelledError()))


def _copyHeaders(headers: tuple[tuple[bytes, bytes], ...], request: Request) -> None:
    """
    Put the script's headers on the response. A name the script sends
    replaces twisted.web's own default (Date, Server); repeated names, such
    as several Set-Cookie, are all kept.
    """
    responseHeaders = request.responseHeaders
    seen: set[bytes] = set()
    for name, value in headers:
        lowerName = name.lower()
        if lowerName in seen:
            responseHeaders.addRawHeader(name, value)
        else:
            seen.add(lowerName)
            responseHeaders.setRawHeaders(name, [value])
    if b"content-type" not in seen:
        # Leave the response without a type, as the script did.
        request.defaultContentType = None


def _serveFile(request: Request, filename: str) -> bytes | int:
    """
    Serve a static file with twisted.web's File: content type, Range,
    HEAD and Last-Modified, plus a strong ETag for If-None-Match.
    """
    info = os.stat(filename)
    if request.setETag(b'"%x-%x"' % (info.st_mtime_ns, info.st_size)) is http.CACHED:
        return b""
    result: bytes | int = File(filename).render(request)
    return result


def _redirectToDirectory(request: Request) -> bytes:
    path, question, query = request.uri.partition(b"?")
    request.setResponseCode(http.MOVED_PERMANENTLY)
    request.setHeader(b"location", path + b"/" + question + query)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    return b'<a href="%s/">Moved here</a>\n' % path.replace(b'"', b"%22")


def _renderError(request: Request, code: int, detail: str) -> int:
    """Answer with a small HTML error page; it finishes the request itself."""
    pages.errorPage(code, http.RESPONSES[code].decode(), detail).render(request)
    return NOT_DONE_YET


# The local address of each HTTP connection (or HTTP/2 stream), asked of the
# kernel once rather than for every request on it.
_localAddresses: WeakKeyDictionary[object, tuple[str, int | None]] = WeakKeyDictionary()


def _localAddress(request: Request) -> tuple[str, int | None]:
    channel = request.channel
    address = _localAddresses.get(channel)
    if address is None:
        address = _localAddresses[channel] = _hostAndPort(request.getHost())
    return address


def _hostAndPort(address: IAddress) -> tuple[str, int | None]:
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host, address.port
    return "unix:", None


def _protocolStatusName(protocolStatus: int) -> str:
    try:
        return f"END_REQUEST protocol status {ProtocolStatus(protocolStatus).name}"
    except ValueError:
        return f"END_REQUEST with unknown protocol status {protocolStatus}"


def _escapeCharacter(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def _toBytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")
