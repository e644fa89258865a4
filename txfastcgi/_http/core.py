"""
The core of the proxy, shared by every HTTP front: what PHP sees and what the
client gets, for one site (a document root and its backends).

A front (L{txfastcgi._http.resource.FastCGIResource} over twisted.web, or the
dedicated HTTP/1.1 front) describes each request as L{RequestFacts} and hands
it to L{Proxy.handle} with a L{ResponseWriter}; the core routes it (static
file, script, redirect, error), builds the CGI params, gets a FastCGI
connection, retries once on a kept connection closed under it, parses the
script's header block, frames the body, and answers every failure with an
error page or, once a response has started, a cut connection.

It knows neither twisted.web nor any front, only Twisted's reactor and
Deferreds, which the connection pool speaks.  It runs on callbacks and one
explicit state per exchange (L{Phase}, moves in L{TRANSITIONS}), not on a
coroutine: this runs for every request, and each coroutine step and
Deferred in the chain costs more than the work it would carry.
"""

from __future__ import annotations

import dataclasses
import html
import io
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from typing import IO, runtime_checkable
from typing import Protocol as TypingProtocol
from urllib.parse import unquote_to_bytes

import twisted
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txfastcgi._client.protocol import FastCGIClientProtocol
from txfastcgi._compat import SLOTS
from txfastcgi._emptied import Emptied
from txfastcgi._fastcgi.records import ProtocolStatus
from txfastcgi._http.cache import Key, Recording, ResponseCache, Stored
from txfastcgi._http.cgi import CGIParams, CGIRequest, ResponseHeadParser
from txfastcgi._http.compression import (
    MINIMUM_SIZE,
    CompressingWriter,
    chooseEncoding,
    isCompressible,
    precompressed,
    varyOnEncoding,
)
from txfastcgi._http.forwarded import Networks, TrustedProxies
from txfastcgi._http.framing import BodyFraming, Delimiter, responseBodyFraming
from txfastcgi._http.handoff import Handoff, HandoffResult, Handoffs
from txfastcgi._http.hints import EarlyHints
from txfastcgi._http.routing import Redirect, Router, Script, StaticFile
from txfastcgi._http.served import Upstream, noteUpstream
from txfastcgi._http.staticfiles import contentTypeFor
from txfastcgi._version import __version__
from txfastcgi.errors import (
    BackendClosed,
    BackendError,
    BackendOverloaded,
    BackendRefused,
    MalformedResponse,
    StateError,
)

__all__ = [
    "ANSWERED",
    "HTML_CONTENT_TYPE",
    "SERVER_SOFTWARE",
    "TRANSITIONS",
    "Answered",
    "ConnectionSource",
    "Exchange",
    "ExchangeEvent",
    "ExchangeStateError",
    "Handler",
    "Phase",
    "Proxy",
    "RequestFacts",
    "ResponseWriter",
    "answerPage",
    "errorPage",
    "reasonPhrase",
]

SERVER_SOFTWARE = f"txfastcgi/{__version__} Twisted/{twisted.__version__}".encode()

# Requests that may be sent twice without harm (RFC 9110 idempotent methods
# that carry no body worth worrying about).
_IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})

# CONNECT asks for a tunnel, which a PHP script's 200 would seem to grant,
# and TRACE echoes the request, credentials included, back to any script
# that can make the browser send one: neither is ever handed to PHP.
_REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE"})
_ALLOWED_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

HTML_CONTENT_TYPE = (b"content-type", b"text/html; charset=utf-8")
_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>%d - %s</title></head>"
    b"<body><h1>%s</h1><p>%s</p></body></html>"
)

# The standard reason phrases, RFC 9110's words; 418 keeps RFC 2324's own,
# which twisted.web and clients have always shown.
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_REASONS[418] = b"I'm a teapot"


def reasonPhrase(code: int) -> bytes:
    """The reason phrase for a status line with C{code} and no reason of its own."""
    return _REASONS.get(code, b"Unknown Status")


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


@dataclass(frozen=True, **SLOTS)
class RequestFacts:
    """
    What the core needs to know of one HTTP request, from any front.

    @ivar target: the request target as sent: path and query, still
        percent-encoded (REQUEST_URI).
    @ivar headers: every header as sent, in order; names in any case.
    @ivar client: the peer's address and port; C{("", None)} for a unix
        socket peer.
    @ivar server: the local address and port, the same way.
    @ivar body: the whole request body, spooled, seekable.
    @ivar record: the front's own object for this request, on which the core
        notes its part with L{txfastcgi._http.served.noteUpstream}.
    @ivar prefix: the decoded URL path the site is mounted under (C{/blog}),
        C{""} at the root; SCRIPT_NAME starts with it.
    @ivar path: the decoded URL path below C{prefix}, if the front has it
        already (twisted.web does); L{None} to decode it from C{target}.
        C{b""} names the mount point itself, which redirects to add a slash.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: Sequence[tuple[bytes, bytes]]
    client: tuple[str, int | None]
    server: tuple[str, int | None]
    secure: bool
    body: IO[bytes]
    bodyLength: int
    record: object = None
    prefix: str = ""
    path: bytes | None = None


class ResponseWriter(TypingProtocol):
    """
    What a front gives the core for one response. The core calls, in order:
    L{writeInformational} any number of times, then
    L{writeHead} once, then L{writeBody} any number of times, then exactly
    one of L{finish} or L{abort}; or L{abort} at any time (before
    L{writeHead} too: then the front closes the connection without a
    response); or L{serveFile} alone (before L{writeHead}).
    """

    def writeInformational(self, code: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """
        Send a 1xx response (103 Early Hints) now, ahead of the response;
        the core sends one only to an HTTP/1.1 or HTTP/2 client.
        """

    def writeHead(
        self,
        code: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        framing: BodyFraming,
    ) -> None:
        """
        Start the response. C{headers} never contain Transfer-Encoding or
        Connection, and Content-Length only for a response without a body
        (C{framing.delimiter} is L{Delimiter.NONE}) whose script declared
        one; for a response with a body the front frames it from
        C{framing}, and adds Date and Server if the headers have none.
        """

    def writeBody(self, data: bytes) -> None:
        """
        Some of the body; never more than C{framing} allows. The front may
        hold it back, with the head, until L{flush} or L{finish}: a response
        whose end comes with its start then leaves in one write, with its
        length.
        """

    def flush(self) -> None:
        """
        Send what is held back: the core calls this once it has written
        what one read from php-fpm brought, so that output a script flushed
        reaches the client now.
        """

    def finish(self) -> None:
        """The response is complete; a kept-alive connection goes on."""

    def abort(self) -> None:
        """Cut the connection: a partial response must not look complete."""

    def registerProducer(self, producer: IPushProducer) -> None:
        """Streaming: pause C{producer} while the client's transport is full."""

    def unregisterProducer(self) -> None:
        """The producer registered last produces no more."""

    def serveFile(self, filename: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """
        Serve this static file, found by the router or handed off by a
        script, the front's own way; the exchange is then over.

        @param headers: header fields to send with it: a Content-Type among
            them replaces the file's own, the others are added.
        """


class Phase(Enum):
    """Where an L{Exchange} with a script is; each value says so in words."""

    __hash__ = object.__hash__

    ROUTING = "finding what serves the request"
    ACQUIRING = "waiting for a FastCGI connection"
    SENT = "sent, waiting for the script's header block"
    STREAMING = "streaming the script's body"
    HANDED_OFF = "the script handed the response to a file; reading its output to the end"
    DONE = "done"


class ExchangeEvent(Enum):
    """What moves an L{Exchange}."""

    __hash__ = object.__hash__

    SCRIPT = "a script serves the request"
    CONNECTED = "a connection was acquired and the request sent on it"
    RETRY = "the kept connection closed before a response; asking for a new one"
    HEAD = "the script's header block arrived"
    HANDOFF = "the script's header block arrived, and hands the response to a file"
    END = "the exchange is answered, cut, or its client is gone"


class ExchangeStateError(StateError):
    """An event that is not allowed in the exchange's present phase: a bug."""


_P = Phase
_V = ExchangeEvent

# Every legal move: phase -> event -> next phase.  A response that has
# started (STREAMING) is never sent again; DONE is final.  What no script
# serves goes from ROUTING to DONE.
TRANSITIONS: dict[Phase, dict[ExchangeEvent, Phase]] = {
    _P.ROUTING: {_V.SCRIPT: _P.ACQUIRING, _V.END: _P.DONE},
    _P.ACQUIRING: {_V.CONNECTED: _P.SENT, _V.END: _P.DONE},
    _P.SENT: {
        _V.RETRY: _P.ACQUIRING,
        _V.HEAD: _P.STREAMING,
        _V.HANDOFF: _P.HANDED_OFF,
        _V.END: _P.DONE,
    },
    _P.STREAMING: {_V.END: _P.DONE},
    _P.HANDED_OFF: {_V.END: _P.DONE},
    _P.DONE: {},
}

# Enum member lookups through the class cost a metaclass __getattr__; what
# runs for every request uses these names.
_ROUTING = _P.ROUTING
_SENT = _P.SENT
_STREAMING = _P.STREAMING
_HANDED_OFF = _P.HANDED_OFF
_DONE = _P.DONE
_SCRIPT = _V.SCRIPT
_CONNECTED = _V.CONNECTED
_RETRY = _V.RETRY
_HEAD = _V.HEAD
_HANDOFF = _V.HANDOFF
_END = _V.END
_REQUEST_COMPLETE = ProtocolStatus.REQUEST_COMPLETE
_VARY_ON_ENCODING = (b"Vary", b"Accept-Encoding")
_CONTENT_LENGTH = Delimiter.CONTENT_LENGTH


class Proxy:
    """
    The core for one site: its document root, its backends, its params.

    @param connections: where FastCGI connections come from (a pool or a
        balancer).
    @param documentRoot: the directory with the scripts and static files.
    @param index: the script that serves a directory.
    @param frontController: the URL path (below the mount point) that
        serves paths naming no file, or L{None} to answer those with 404.
    @param params: extra FastCGI params; they override every computed
        param and every request header.
    @param https: send HTTPS=on even for plain HTTP requests, for a server
        behind a TLS terminator.
    @param trustedProxies: addresses or networks of proxies whose
        C{Forwarded} or C{X-Forwarded-For} and C{X-Forwarded-Proto} headers
        give REMOTE_ADDR and HTTPS; nobody else's are believed.
    @param sendfileRoots: directories under which a script may hand its
        response to a file with X-Sendfile or X-Accel-Redirect; none (the
        default) leaves those headers to the client.
    @param accelPrefixes: URI prefixes of X-Accel-Redirect and the
        directories they name; other URIs are under C{documentRoot}.
    @param compress: compress responses and send precompressed static
        files, as the client accepts (L{txfastcgi._http.compression}).
    @param earlyHints: the hints learned and configured for each path, sent
        as a 103 before a request reaches PHP; L{None} for none.
    @param cache: the store of PHP's cacheable responses (L{None}: off).
    @param cacheStatus: add C{X-Cache: HIT|MISS|STALE|BYPASS} to responses
        the cache had a say in.
    @param cachePurgers: addresses or networks besides loopback that may
        drop a URL from the cache with a C{PURGE} request.
    """

    log = Logger()

    def __init__(
        self,
        connections: ConnectionSource,
        documentRoot: str,
        index: str = "index.php",
        frontController: str | None = "/index.php",
        params: Mapping[bytes | str, bytes | str] = {},
        *,
        https: bool = False,
        trustedProxies: Iterable[str] = (),
        sendfileRoots: Sequence[str] = (),
        accelPrefixes: Mapping[str, str] = {},
        compress: bool = True,
        earlyHints: EarlyHints | None = None,
        cache: ResponseCache | None = None,
        cacheStatus: bool = False,
        cachePurgers: Iterable[str] = (),
        reactor: IReactorTime,
    ) -> None:
        self.connections = connections
        self.clock = reactor
        self.router = Router(documentRoot, index, frontController)
        self.documentRoot = self.router.documentRoot
        # Everything that is the same for every request, encoded once.
        self.cgiParams = CGIParams(
            SERVER_SOFTWARE,
            {_toBytes(name): _toBytes(value) for name, value in params.items()},
        )
        self.https = https
        self.trustedProxies = TrustedProxies(trustedProxies)
        self.handoffs = (
            Handoffs(sendfileRoots, self.documentRoot, accelPrefixes) if sendfileRoots else None
        )
        self.compress = compress
        self.earlyHints = earlyHints
        self.cache = cache
        self.cacheStatus = cacheStatus
        self.cachePurgers = Networks(cachePurgers)
        self._inFlight = 0
        self._idle = Emptied()

    def handle(
        self, request: RequestFacts, writer: ResponseWriter, refreshing: bool = False
    ) -> Exchange:
        """
        Start answering C{request} through C{writer}; returns at once. With
        C{refreshing}, for the cache alone: the script runs whatever is stored.
        """
        exchange = Exchange(self, request, writer, refreshing)
        try:
            exchange.start()
        except Exception:
            exchange.unexpected(Failure())
        return exchange

    def whenIdle(self) -> Deferred[None]:
        """
        Fires once no script request is in progress, for a graceful shutdown:
        stop listening, wait for this, then stop php-fpm.
        """
        return self._idle.wait(not self._inFlight)

    def began(self) -> None:
        """An exchange with a script began."""
        self._inFlight += 1

    def ended(self) -> None:
        """An exchange with a script ended, one way or another."""
        self._inFlight -= 1
        if not self._inFlight:
            self._idle.fire()

    def cgiRequest(self, request: RequestFacts, script: Script) -> CGIRequest:
        """What the CGI params of C{request}, run by C{script}, are made of."""
        scriptName = request.prefix + script.scriptName
        remoteAddr, remotePort = request.client
        https = self.https or request.secure
        host = contentType = None
        hasContentLength = False
        forwarded: dict[bytes, list[bytes]] | None = {} if self.trustedProxies else None
        for name, value in request.headers:
            lowerName = name.lower()
            if lowerName == b"host":
                host = value
            elif lowerName == b"content-type":
                contentType = value
            elif lowerName == b"content-length":
                hasContentLength = True
            elif forwarded is not None:
                forwarded.setdefault(lowerName, []).append(value)
        if forwarded is not None:
            client = self.trustedProxies.client(
                remoteAddr,
                forwarded.get(b"forwarded", []),
                forwarded.get(b"x-forwarded-for", []),
                forwarded.get(b"x-forwarded-proto", []),
            )
            if client.address != remoteAddr:
                remoteAddr, remotePort = client.address, None
            if client.https is not None:
                https = self.https or client.https
        serverAddr, serverPort = request.server
        target = request.target
        return CGIRequest(
            method=request.method,
            requestURI=target,
            queryString=target.partition(b"?")[2],
            scriptFilename=script.filename,
            scriptName=scriptName,
            pathInfo=script.pathInfo,
            documentURI=scriptName + script.pathInfo,
            documentRoot=self.documentRoot,
            serverProtocol=request.version,
            https=https,
            # nginx's words for a unix socket peer.
            remoteAddr=remoteAddr or "unix:",
            remotePort=remotePort,
            serverAddr=serverAddr or "unix:",
            serverPort=serverPort,
            serverName=_serverName(host, serverAddr),
            contentType=contentType,
            contentLength=(
                request.bodyLength if request.bodyLength > 0 or hasContentLength else None
            ),
            headers=[(name, (value,)) for name, value in request.headers],
        )


class Exchange:
    """
    One request answered: by a static file, a page of the core's own, or a
    script in php-fpm whose response is streamed back.

    For a script it is the L{ResponseReceiver} of the FastCGI request: it
    parses the CGI header block, then writes the body with the FastCGI
    connection registered as the writer's producer, so that a slow client
    slows php-fpm down instead of filling memory.
    """

    log = Logger()
    # Set once the script's header block has arrived; the body comes after it.
    _framing: BodyFraming

    def __init__(
        self,
        proxy: Proxy,
        request: RequestFacts,
        writer: ResponseWriter,
        refreshing: bool = False,
    ) -> None:
        self._proxy = proxy
        self._request = request
        self._writer = writer
        self._phase = _ROUTING
        self._protocol: FastCGIClientProtocol | None = None
        self._acquiring: Deferred[FastCGIClientProtocol] | None = None
        self._headParser: ResponseHeadParser | None = None
        self._handoff: HandoffResult | None = None
        # Body bytes still due by the framing; None while only the end tells.
        self._bodyRemaining: int | None = None
        # Encoded: a retry sends the same bytes again.
        self._params = b""
        self._arrived = 0.0
        # For its access log line and metrics: who ran it, how often again.
        self._backend: str | None = None
        self._retries = 0
        # The cache's part: the key this exchange fills, what it records,
        # what X-Cache says, whether it waited for another's fill already.
        self._refreshing = refreshing
        self._filling: Key | None = None
        self._recording: Recording | None = None
        self._cacheStatus: bytes | None = None
        self._waited = False
        self._gone = False

    @property
    def phase(self) -> Phase:
        """Where the exchange is."""
        return self._phase

    def _move(self, event: ExchangeEvent) -> None:
        nextPhase = TRANSITIONS[self._phase].get(event)
        if nextPhase is None:
            raise ExchangeStateError(f"{event.value}: not allowed while {self._phase.value}")
        self._phase = nextPhase

    def start(self) -> None:
        """Route the request and answer it, or start proxying it."""
        request = self._request
        if request.method == b"PURGE" and self._proxy.cache is not None:
            self._purge(self._proxy.cache)
            self._move(_END)
            return
        if request.method in _REFUSED_METHODS:
            self._answer(405, "This server is not a proxy.", ((b"allow", _ALLOWED_METHODS),))
            self._move(_END)
            return
        path = request.path
        if path is None:
            path = unquote_to_bytes(request.target.partition(b"?")[0])
        if not path:
            # The mount point itself, without its trailing slash.
            self._redirectToDirectory()
            self._move(_END)
            return
        route = self._proxy.router.route(path)
        if isinstance(route, Script):
            self._startScript(route)
            return
        if isinstance(route, StaticFile):
            self._serveStatic(route.filename)
        elif isinstance(route, Redirect):
            self._redirectToDirectory()
        else:
            self._answer(route.code, route.reason)
        self._move(_END)

    def clientGone(self) -> None:
        """The client's connection is lost: stop the script by closing its connection."""
        self._gone = True
        if self._phase is _DONE or self._phase is _ROUTING:
            # Nothing runs for it; what was written is the front's to drop.
            return
        self._end()
        if self._acquiring is not None:
            self._acquiring.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.abort()
            self._proxy.connections.release(protocol)

    def unexpected(self, reason: Failure) -> None:
        """A bug: log it, and still give the client an answer."""
        self.log.failure("unexpected error proxying {uri}", reason, uri=self._uri())
        self._dropConnection()
        self._fail(500, "Internal error.", "unexpected error")

    def _serveStatic(self, filename: str) -> None:
        """Serve a static file, or its precompressed copy if the client takes that."""
        if self._proxy.compress:
            accepted = self._acceptEncoding()
            found = precompressed(filename, accepted) if accepted else None
            if found is not None:
                variant, coding = found
                headers = (
                    (b"Content-Type", contentTypeFor(filename)),
                    (b"Content-Encoding", coding),
                    (b"Vary", b"Accept-Encoding"),
                )
                self._writer.serveFile(variant, headers)
                return
        self._writer.serveFile(filename)

    def _acceptEncoding(self) -> list[bytes]:
        return [
            value for name, value in self._request.headers if name.lower() == b"accept-encoding"
        ]

    # Proxying to the script

    def _startScript(self, script: Script) -> None:
        proxy = self._proxy
        self._params = proxy.cgiParams.encode(proxy.cgiRequest(self._request, script))
        self._headParser = ResponseHeadParser()
        # Its read timeout counts from here, time in the pool's queue included.
        self._arrived = proxy.clock.seconds()
        cache = proxy.cache
        if cache is not None and self._answeredByCache(cache, script):
            return
        hints = proxy.earlyHints
        if hints is not None:
            self._sendHints(hints)
        self._move(_SCRIPT)
        proxy.began()
        self._acquire(fresh=False)

    def _acquire(self, fresh: bool) -> None:
        acquiring = self._proxy.connections.acquire(fresh, self._arrived)
        self._acquiring = acquiring
        acquiring.addCallbacks(self._connected, self._notConnected)

    def _connected(self, protocol: FastCGIClientProtocol) -> None:
        self._acquiring = None
        if self._phase is _DONE:
            # Its client went away as the connection came.
            self._proxy.connections.release(protocol)
            return
        try:
            self._move(_CONNECTED)
            self._protocol = protocol
            self._backend = protocol.backend
            request = self._request
            body = request.body
            body.seek(0)
            protocol.sendRequest(
                self._params,
                body,
                request.bodyLength,
                self,
                keepConnection=True,
                since=self._arrived,
            )
        except Exception:
            self.unexpected(Failure())

    def _notConnected(self, reason: Failure) -> None:
        self._acquiring = None
        if self._phase is _DONE:
            # Cancelled: the client went away.
            return
        error = reason.value
        if isinstance(error, BackendError):
            self._failWith(error)
        else:
            self.unexpected(reason)

    # The response cache

    def _cacheKey(self) -> Key:
        request = self._request
        host = next((v for n, v in request.headers if n.lower() == b"host"), b"")
        scheme = b"https" if self._proxy.https or request.secure else b"http"
        return (scheme, host.lower(), request.target)

    def _answeredByCache(self, cache: ResponseCache, script: Script) -> bool:
        """
        Answer from the cache, or wait for another request's fill of this
        key, if the cache says so; C{False} when the script is to run (and
        then whether this exchange fills the key is noted).
        """
        request = self._request
        counts = cache.counts
        if self._refreshing:
            key = self._cacheKey()
            if not cache.fill(key, _nothing):
                self._move(_END)  # Another request refreshes it already.
                return True
            self._filling = key
            return False
        if cache.bypasses(request.method, request.headers):
            counts.bypasses += 1
            self._cacheStatus = b"BYPASS"
            return False
        key = self._cacheKey()
        now = self._arrived
        if not cache.wantsFresh(request.headers):
            stored = cache.lookup(key, request.headers)
            if stored is not None and now < stored.freshUntil + stored.staleWhileRevalidate:
                if now < stored.freshUntil:
                    counts.hits += 1
                    self._writeStored(stored, b"HIT")
                else:
                    counts.stale += 1
                    self._writeStored(stored, b"STALE")
                    self._refresh()
                self._move(_END)
                return True
        if request.method == b"GET" and not self._waited:
            if not cache.fill(key, lambda: self._waitedForFill(script)):
                return True
            self._filling = key
        counts.misses += 1
        self._cacheStatus = b"MISS"
        return False

    def _refresh(self) -> None:
        """
        Run the script again for the cache alone, as a GET of its own: the
        client's request may be a HEAD, and its body is closed once answered.
        """
        request = dataclasses.replace(
            self._request, method=b"GET", body=io.BytesIO(), bodyLength=0, record=None
        )
        self._proxy.handle(request, _NoClient(), refreshing=True)

    def _waitedForFill(self, script: Script) -> None:
        """Another request filled this key, or gave up: ask the cache again."""
        self._waited = True
        if not self._gone:
            try:
                self._startScript(script)
            except Exception:
                self.unexpected(Failure())

    def _writeStored(self, stored: Stored, status: bytes) -> None:
        """Answer with a stored response, as the script's own would be written."""
        headers = [*stored.headers, (b"Age", b"%d" % stored.age(self._proxy.clock.seconds()))]
        if self._proxy.cacheStatus:
            headers.append((b"X-Cache", status))
        self._startResponse(stored.code, stored.reason, headers, len(stored.body))
        self._writeBody(stored.body)
        self._writer.finish()

    def _staleOnError(self, error: BackendError) -> bool:
        """Answer a 502, 503 or 504 with a stale copy, within its stale-if-error."""
        cache = self._proxy.cache
        if cache is None or self._phase is _STREAMING or error.status not in (502, 503, 504):
            return False
        request = self._request
        if request.method not in (b"GET", b"HEAD") or self._cacheStatus == b"BYPASS":
            return False
        stored = cache.lookup(self._cacheKey(), request.headers)
        now = self._proxy.clock.seconds()
        if stored is None or now >= stored.freshUntil + stored.staleIfError:
            return False
        self.log.warn("serving a stale copy of {uri}: {error}", uri=self._uri(), error=str(error))
        cache.counts.stale += 1
        self._noteUpstream()
        self._end()
        self._writeStored(stored, b"STALE")
        return True

    def _purge(self, cache: ResponseCache) -> None:
        """A PURGE request: drop the URL from the cache, if the client may."""
        client = self._request.client[0]
        local = not client or ipaddress.ip_address(client).is_loopback
        if not local and client not in self._proxy.cachePurgers:
            self._answer(403, "Only allowed addresses may purge the cache.")
            return
        if cache.purge(self._cacheKey()):
            self._answer(200, "Purged.")
        else:
            self._answer(404, "Not in the cache.")

    # 103 Early Hints

    def _hintPath(self) -> bytes:
        return self._request.target.partition(b"?")[0]

    def _sendHints(self, hints: EarlyHints) -> None:
        """Send what the earlier responses for this path hinted, while PHP works."""
        request = self._request
        if request.version == b"HTTP/1.0":
            return  # It would take a 1xx for the response.
        links = hints.hintsFor(self._hintPath(), self._arrived)
        if links:
            self._writer.writeInformational(103, [(b"Link", link) for link in links])

    def _learnHints(
        self, hints: EarlyHints, code: int, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """Remember the hints of a successful GET's response, or that it has none."""
        request = self._request
        if request.method != b"GET" or not 200 <= code < 300:
            return
        links = [value for name, value in headers if name.lower() == b"link"]
        host = None
        if links:
            host = next((v for n, v in request.headers if n.lower() == b"host"), None)
        hints.learn(self._hintPath(), links, host, self._arrived)

    # ResponseReceiver

    def stdoutReceived(self, data: bytes) -> None:
        try:
            parser = self._headParser
            if parser is not None:
                parsed = parser.feed(data)
                if parsed is None:
                    return
                self._headParser = None
                head, data = parsed
                hints = self._proxy.earlyHints
                if hints is not None:
                    self._learnHints(hints, head.code, head.headers)
                handoffs = self._proxy.handoffs
                if handoffs is not None:
                    self._handoff = handoffs.find(head.headers)
                    if self._handoff is not None:
                        # The rest of the output is read and dropped, to
                        # the end of the request: its connection is kept.
                        self._move(_HANDOFF)
                        return
                self._move(_HEAD)
                reason = head.reason or reasonPhrase(head.code)
                headers: Sequence[tuple[bytes, bytes]] = head.headers
                if self._filling is not None:
                    cache = self._proxy.cache
                    assert cache is not None
                    request = self._request
                    self._recording = cache.record(
                        self._filling, request.headers, head.code, reason, headers, self._arrived
                    )
                if self._cacheStatus is not None and self._proxy.cacheStatus:
                    headers = [*headers, (b"X-Cache", self._cacheStatus)]
                self._startResponse(head.code, reason, headers, head.contentLength)
                assert self._protocol is not None
                self._writer.registerProducer(self._protocol)
            elif self._phase is _HANDED_OFF:
                return
            self._writeBody(data)
        except MalformedResponse:
            self.requestFailed(Failure())
        except Exception:
            self.unexpected(Failure())

    def readDone(self) -> None:
        if self._phase is _STREAMING:
            self._writer.flush()

    def stderrReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "backslashreplace").splitlines():
            self.log.warn(
                "PHP stderr for {uri}: {line}",
                uri=self._uri(),
                line=_CONTROL_CHARACTERS.sub(_escapeCharacter, line),
            )

    def requestEnded(self, appStatus: int, protocolStatus: int) -> None:
        try:
            protocol, self._protocol = self._protocol, None
            assert protocol is not None
            if protocolStatus != _REQUEST_COMPLETE:
                # The backend refused the request: trust its connection with no other.
                protocol.abort()
            self._proxy.connections.release(protocol)
            self._finish(protocolStatus)
        except Exception:
            self.unexpected(Failure())

    def requestFailed(self, reason: Failure) -> None:
        try:
            self._requestFailed(reason)
        except Exception:
            self.unexpected(Failure())

    def _requestFailed(self, reason: Failure) -> None:
        self._dropConnection()
        error = reason.value
        if isinstance(error, BackendClosed):
            if (
                error.beforeResponse
                and self._phase is _SENT
                and not self._retries
                and self._request.method in _IDEMPOTENT_METHODS
            ):
                self.log.info(
                    "FastCGI connection closed by the backend before a response; "
                    "retrying {method} {uri} on a new connection",
                    method=self._request.method.decode("ascii", "replace"),
                    uri=self._uri(),
                )
                self._move(_RETRY)
                self._retries += 1
                self._acquire(fresh=True)
                return
        if isinstance(error, BackendError):
            self._failWith(error)
        else:
            self.unexpected(reason)

    # Writing the response

    def _startResponse(
        self,
        code: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        contentLength: int | None,
    ) -> None:
        """
        Write the head of a script's response, which declared
        C{contentLength}; its body, through L{_writeBody}, is then held to
        what the framing allows.
        """
        request = self._request
        framing = self._framing = responseBodyFraming(
            request.method, code, contentLength, request.version
        )
        self._bodyRemaining = framing.length
        if contentLength is not None and (framing.hasBody or code < 200 or code == 204):
            # The front writes it from the framing; a 1xx or 204 must have
            # none (RFC 9110 section 8.6).
            headers = [h for h in headers if h[0].lower() != b"content-length"]
        if self._proxy.compress:
            headers = self._compressing(code, headers, contentLength, framing)
        self._writer.writeHead(code, reason, headers, framing)

    def _compressing(
        self,
        code: int,
        headers: Sequence[tuple[bytes, bytes]],
        contentLength: int | None,
        framing: BodyFraming,
    ) -> Sequence[tuple[bytes, bytes]]:
        """
        The headers of a response that may be compressed, with Vary; the
        writer compresses it if this one should be and the client takes a
        coding (see L{txfastcgi._http.compression}).
        """
        contentType = None
        varies = False
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-type":
                contentType = value
            elif lower == b"vary":
                varies = True
            elif lower == b"content-encoding" or (
                lower == b"cache-control" and b"no-transform" in value.lower()
            ):
                return headers
        if not isCompressible(contentType):
            return headers
        if varies:
            varied = list(headers)
            varyOnEncoding(varied)
        else:
            varied = [*headers, _VARY_ON_ENCODING]
        if not framing.hasBody or code == 206:
            return varied
        if contentLength is not None and contentLength < MINIMUM_SIZE:
            return varied
        coding = chooseEncoding(self._acceptEncoding())
        if coding is not None:
            request = self._request
            self._writer = CompressingWriter(
                self._writer,
                coding,
                responseBodyFraming(request.method, code, None, request.version),
            )
        return varied

    def _writeBody(self, data: bytes) -> None:
        remaining = self._bodyRemaining
        if remaining is not None:
            if len(data) > remaining:
                if self._framing.hasBody:
                    self.log.error(
                        "PHP sent more body than its Content-Length for {uri}; surplus dropped",
                        uri=self._uri(),
                    )
                # A response without a body (HEAD, 204, 304) drops whatever
                # the script printed: the client expects no bytes.
                data = data[:remaining]
            self._bodyRemaining = remaining - len(data)
        if data:
            self._writer.writeBody(data)
            recording = self._recording
            if recording is not None:
                cache = self._proxy.cache
                assert cache is not None
                if not cache.add(recording, data):
                    self._recording = None  # Too large to keep: it streams on.

    def _noteUpstream(self) -> None:
        """Note what the script did on the request, before it is finished and logged."""
        record = self._request.record
        if record is not None:
            elapsed = self._proxy.clock.seconds() - self._arrived
            noteUpstream(record, Upstream(self._backend, elapsed, self._retries))

    def _finish(self, protocolStatus: int) -> None:
        if self._phase is _DONE:
            return
        if protocolStatus != _REQUEST_COMPLETE:
            reason = _protocolStatusName(protocolStatus)
            if protocolStatus == ProtocolStatus.OVERLOADED:
                self._failWith(BackendOverloaded(reason))
            else:
                self._failWith(BackendRefused(reason))
            return
        if self._headParser is not None:
            self._failWith(
                MalformedResponse("the script's output ended before its header block did")
            )
            return
        self._noteUpstream()
        handoff = self._handoff
        if handoff is not None:
            # Still handed off, so that a failure to serve it is answered.
            self._handOff(handoff)
            self._end()
            return
        recording = self._recording
        if recording is not None and not self._bodyRemaining:
            cache = self._proxy.cache
            assert cache is not None
            # Before the end, which wakes the requests waiting for it.
            cache.store(recording)
        self._end()
        writer = self._writer
        writer.unregisterProducer()
        if self._bodyRemaining:
            self.log.error(
                "PHP sent {missing} bytes less than its Content-Length for {uri}; "
                "closing the client connection",
                missing=self._bodyRemaining,
                uri=self._uri(),
            )
            writer.abort()
            return
        writer.finish()

    def _handOff(self, handoff: HandoffResult) -> None:
        """Serve the file the script handed the response to, or say why not."""
        if isinstance(handoff, Handoff):
            self._writer.serveFile(handoff.filename, handoff.headers)
            return
        self.log.error(
            "{code} for {method} {uri}: {detail}",
            code=handoff.code,
            method=self._request.method.decode("ascii", "replace"),
            uri=self._uri(),
            detail=handoff.detail,
        )
        if handoff.code == 404:
            self._answer(404, "No such file.")
        else:
            self._answer(500, "Internal error.")

    def _failWith(self, error: BackendError) -> None:
        """Answer with the status and page that C{error} says; log its message."""
        if self._staleOnError(error):
            return
        self._fail(error.status, error.explanation, str(error), error.headers)

    def _fail(
        self, code: int, shown: str, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """
        Answer with an error page that says C{shown} if no response has
        started yet, or cut the client connection so that it cannot take a
        partial body as complete; log C{detail}.
        """
        phase = self._phase
        if phase is _DONE:
            return
        if phase is not _ROUTING:
            self._noteUpstream()
        self.log.error(
            "{code} for {method} {uri}: {detail}",
            code=code,
            method=self._request.method.decode("ascii", "replace"),
            uri=self._uri(),
            detail=detail,
        )
        if phase is _ROUTING:
            self._answer(code, shown, headers)
            self._move(_END)
            return
        self._end()
        if phase is _STREAMING:
            # The script's status and headers are sent already.
            self._writer.unregisterProducer()
            self._writer.abort()
            return
        self._answer(code, shown, headers)

    def _dropConnection(self) -> None:
        """Give back the connection, if any; one in mid-request is closed by the pool."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            self._proxy.connections.release(protocol)

    def _end(self) -> None:
        """The end of an exchange with a script."""
        self._move(_END)
        self._proxy.ended()
        filling, self._filling = self._filling, None
        if filling is not None:
            cache = self._proxy.cache
            assert cache is not None
            cache.filled(filling)

    # The core's own pages

    def _answer(self, code: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self._page(code, reasonPhrase(code), [*headers, HTML_CONTENT_TYPE], errorPage(code, detail))

    def _redirectToDirectory(self) -> None:
        path, question, query = self._request.target.partition(b"?")
        self._page(
            301,
            reasonPhrase(301),
            [(b"location", path + b"/" + question + query), HTML_CONTENT_TYPE],
            b'<a href="%s/">Moved here</a>\n' % path.replace(b'"', b"%22"),
        )

    def _page(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]], page: bytes
    ) -> None:
        answerPage(self._request, self._writer, code, reason, headers, page)

    def _uri(self) -> str:
        return self._request.target.decode("ascii", "replace")


def _nothing() -> None:
    """Nobody waits for a refresh."""


class _NoClient:
    """
    The writer of an exchange that refreshes a stale cache entry in the
    background: the cache records the response; nobody reads it.
    """

    def writeInformational(self, code: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        pass

    def writeHead(
        self,
        code: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        framing: BodyFraming,
    ) -> None:
        pass

    def writeBody(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def registerProducer(self, producer: IPushProducer) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def serveFile(self, filename: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        pass


def errorPage(code: int, detail: str) -> bytes:
    """A small HTML error page, as twisted.web's C{errorPage} renders it."""
    escapedBrief = html.escape(reasonPhrase(code).decode(), quote=False).encode()
    return _ERROR_PAGE % (
        code,
        escapedBrief,
        escapedBrief,
        html.escape(detail, quote=False).encode(),
    )


def answerPage(
    request: RequestFacts,
    writer: ResponseWriter,
    code: int,
    reason: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    page: bytes,
) -> None:
    """
    Answer C{request} at once with C{page}, a response the core or a front
    made itself: with its length, and without it for HEAD, as the GET's.
    """
    framing = responseBodyFraming(request.method, code, len(page), request.version)
    if framing.hasBody:
        writer.writeHead(code, reason, headers, framing)
        writer.writeBody(page)
    else:
        writer.writeHead(code, reason, [*headers, (b"content-length", b"%d" % len(page))], framing)
    writer.finish()


class Handler(TypingProtocol):
    """
    What answers a front's requests: a site's core (L{Proxy}), with pages
    before it or several sites (L{txfastcgi._http.sites.Sites}) over it.
    """

    def handle(self, request: RequestFacts, writer: ResponseWriter) -> Exchange | Answered:
        """Start answering C{request} through C{writer}; returns at once."""


class Answered:
    """The exchange of a request answered at once, by a page: nothing is left to stop."""

    phase = Phase.DONE

    def clientGone(self) -> None:
        """Nothing runs for it."""


ANSWERED = Answered()
"""The one L{Answered}: it holds nothing of its request."""


def _serverName(host: bytes | None, serverAddr: str) -> bytes:
    """SERVER_NAME: the Host header without its port, else the local address."""
    if host is not None:
        name, colon, port = host.rpartition(b":")
        if colon and port.isdigit() and not name.endswith(b":"):
            return name
        return host
    return serverAddr.encode("utf-8", "surrogateescape")


def _protocolStatusName(protocolStatus: int) -> str:
    try:
        return f"END_REQUEST protocol status {ProtocolStatus(protocolStatus).name}"
    except ValueError:
        return f"END_REQUEST with unknown protocol status {protocolStatus}"


def _escapeCharacter(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def _toBytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")
