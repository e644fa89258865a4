"""
L{FastCGIResource}: a twisted.web resource that serves a PHP document root.

Static files are served by L{twisted.web.static.File}; scripts run in
php-fpm over FastCGI, and their output is streamed back as it arrives.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast
from weakref import WeakKeyDictionary

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import File

from txfastcgi._client.pool import ConnectionPool
from txfastcgi._http.cache import DEFAULT_BYPASS_COOKIES, ResponseCache
from txfastcgi._http.core import ConnectionSource, Handler, Phase, Proxy, RequestFacts
from txfastcgi._http.framing import BodyFraming, Delimiter
from txfastcgi._http.hints import EarlyHints

__all__ = ["ConnectionSource", "CoreResource", "FastCGIResource"]


class CoreResource(Resource):
    """
    twisted.web's requests answered by the core: the adapter that makes
    each a L{RequestFacts} and a L{ResponseWriter} over it, for one site's
    core or for several sites (L{txfastcgi._http.sites.Sites}).

    @ivar core: what answers the requests.
    """

    isLeaf = True

    def __init__(self, core: Handler) -> None:
        super().__init__()
        self.core = core

    def render(self, request: Request) -> bytes | int:
        body = request.content
        assert body is not None, "twisted.web spools every request body before render"
        body.seek(0, os.SEEK_END)
        postpath = request.postpath
        prepath = request.prepath
        writer = _RequestWriter(request)
        facts = RequestFacts(
            method=request.method,
            target=request.uri,
            version=request.clientproto,
            headers=[
                (name, value)
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ],
            client=_hostAndPort(request.getClientAddress()),
            server=_localAddress(request),
            secure=request.isSecure(),
            body=body,
            bodyLength=body.tell(),
            record=request,
            prefix=b"/".join([b"", *prepath]).decode("utf-8", "surrogateescape") if prepath else "",
            # Empty for the mount point itself, without its trailing slash.
            path=b"/" + b"/".join(postpath) if postpath else b"",
        )
        exchange = self.core.handle(facts, writer)
        writer.rendering = False
        if writer.rendered is not None:
            # twisted.web's File, whose result twisted.web finishes itself.
            return writer.rendered
        if exchange.phase is not Phase.DONE:
            request.notifyFinish().addErrback(lambda reason: exchange.clientGone())
        return NOT_DONE_YET


class FastCGIResource(CoreResource):
    """
    Serve the PHP application in C{documentRoot}, mounted anywhere in a
    resource tree.

    @param endpoint: where php-fpm listens: any L{IStreamClientEndpoint}
        (a pool of kept-alive connections is made for it), or a
        L{ConnectionSource} built by the caller.
    @param documentRoot: the directory with the scripts and static files;
        it and the other parameters mean what they mean to the core,
        L{txfastcgi._http.core.Proxy}.

    @ivar proxy: the core this resource adapts to twisted.web, which another
        front (the dedicated HTTP/1.1 one) can share, so that one
        L{whenIdle} covers both.
    """

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
        sendfileRoots: Sequence[str] = (),
        accelPrefixes: Mapping[str, str] = {},
        compress: bool = True,
        earlyHints: bool = True,
        earlyHintLinks: Mapping[str, Sequence[str]] = {},
        cacheSize: int = 0,
        cacheStatus: bool = False,
        cacheBypassCookies: Sequence[str] = DEFAULT_BYPASS_COOKIES,
        cachePurgers: Iterable[str] = (),
        reactor: IReactorTime | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = cast(IReactorTime, globalReactor)
        connections = (
            endpoint
            if isinstance(endpoint, ConnectionSource)
            else ConnectionPool(reactor, endpoint)
        )
        self.proxy = Proxy(
            connections,
            documentRoot,
            index,
            frontController,
            params,
            https=https,
            trustedProxies=trustedProxies,
            sendfileRoots=sendfileRoots,
            accelPrefixes=accelPrefixes,
            compress=compress,
            earlyHints=(
                EarlyHints(
                    {
                        path.encode(): [link.encode() for link in links]
                        for path, links in earlyHintLinks.items()
                    }
                )
                if earlyHints
                else None
            ),
            cache=ResponseCache(cacheSize, bypassCookies=cacheBypassCookies) if cacheSize else None,
            cacheStatus=cacheStatus,
            cachePurgers=cachePurgers,
            reactor=reactor,
        )
        self.documentRoot = self.proxy.documentRoot
        super().__init__(self.proxy)

    def whenIdle(self) -> Deferred[None]:
        """
        Fires once no script request is in progress, for a graceful shutdown:
        stop listening, wait for this, then stop php-fpm.
        """
        return self.proxy.whenIdle()


class _RequestWriter:
    """
    The core's L{ResponseWriter} over a twisted.web request, which frames
    the body itself: with the Content-Length it is given, chunked for
    HTTP/1.1 without one, to the close for HTTP/1.0, and for HEAD, 204 and
    304 with no body at all. As the HTTP/1.1 front does, it holds the first
    body bytes back until L{flush} or L{finish}, so that a body whole by then
    is sent with its Content-Length.

    @ivar rendered: what twisted.web's File rendered, for a static file
        served while the resource renders.
    @ivar rendering: whether the resource is still rendering, so that what
        File renders is returned from C{render}; a file a script handed off
        comes later, and its rendering is written here.
    """

    __slots__ = ("_held", "_holding", "_request", "rendered", "rendering")

    def __init__(self, request: Request) -> None:
        self._request = request
        self.rendered: bytes | int | None = None
        self.rendering = True
        self._holding = False
        self._held: list[bytes] = []

    def writeInformational(self, code: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """
        twisted.web has no 1xx of its own but 100 Continue: over HTTP/1.1
        the lines go to the transport ahead of the response, over HTTP/2 a
        HEADERS frame goes on the stream ahead of the response's.
        """
        request = self._request
        if request.startedWriting or request.finished:
            return
        channel: Any = request.channel
        if channel is None:
            return
        connection = getattr(channel, "_conn", None)
        if connection is not None:  # An H2Stream.
            frame = [(b":status", b"%d" % code), *((n.lower(), v) for n, v in headers)]
            connection.conn.send_headers(channel.streamID, frame)
            connection.transport.write(connection.conn.data_to_send())
            return
        reason = b"Early Hints" if code == 103 else b"Informational"
        lines = [b"HTTP/1.1 %d %s\r\n" % (code, reason)]
        lines += [b"%s: %s\r\n" % header for header in headers]
        channel.transport.write(b"".join([*lines, b"\r\n"]))

    def writeHead(
        self,
        code: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        framing: BodyFraming,
    ) -> None:
        request = self._request
        request.setResponseCode(code, reason)
        _copyHeaders(headers, request)
        length = framing.length
        if length is not None and framing.delimiter is Delimiter.CONTENT_LENGTH:
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % length])
        # Only a body whose length is unknown gains by being held.
        self._holding = length is None

    def writeBody(self, data: bytes) -> None:
        if self._holding:
            self._held.append(data)
        else:
            self._request.write(data)

    def flush(self) -> None:
        if self._holding:
            self._holding = False
            held, self._held = self._held, []
            self._request.write(b"".join(held))

    def finish(self) -> None:
        if self._holding:
            body = b"".join(self._held)
            self._request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
            self.flush()
        self._request.finish()

    def abort(self) -> None:
        self._request.loseConnection()

    def registerProducer(self, producer: IPushProducer) -> None:
        self._request.registerProducer(producer, True)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()

    def serveFile(self, filename: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        request = self._request
        rendered = _serveFile(request, filename, headers)
        if self.rendering:
            self.rendered = rendered
        elif rendered is not NOT_DONE_YET:
            assert isinstance(rendered, bytes)
            request.write(rendered)
            request.finish()


def _copyHeaders(headers: Sequence[tuple[bytes, bytes]], request: Request) -> None:
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


def _serveFile(
    request: Request, filename: str, headers: Sequence[tuple[bytes, bytes]]
) -> bytes | int:
    """
    Serve a static file with twisted.web's File: content type, Range,
    HEAD and Last-Modified, plus a strong ETag for If-None-Match; with
    C{headers}, whose Content-Type replaces the file's own.
    """
    file = File(filename)
    extra = []
    for name, value in headers:
        if name.lower() == b"content-type" and value.isascii():
            # What File would otherwise guess from the name, encoding too.
            file.type, file.encoding = value.decode("ascii"), None
        else:
            extra.append((name, value))
    if extra:
        _copyHeaders(extra, request)
    info = os.stat(filename)
    if request.setETag(b'"%x-%x"' % (info.st_mtime_ns, info.st_size)) is http.CACHED:
        return b""
    result: bytes | int = file.render(request)
    return result


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
    """An address as L{RequestFacts} holds it: a unix socket's is C{("", None)}."""
    # A tuple: isinstance with a union costs several times as much.
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host, address.port
    return "", None
