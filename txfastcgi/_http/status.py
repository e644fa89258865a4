"""
A status page: the state of each FastCGI backend, as JSON, for operators and
monitoring scripts.

It shows the backends' addresses: mount it where only operators can reach
it (a path the front proxy does not forward, or a listener of its own).

The document, with every number a count::

    {
      "backends": [
        {"endpoint": "tcp:10.0.0.2:9000", "up": true,
         "open": 4, "idle": 1, "busy": 3, "connecting": 0, "waiting": 0,
         "requests": 1234, "errors": 0},
        ...
      ],
      "totals": {"backends": 2, "up": 2, "open": 8, "idle": 2, "busy": 6,
                 "connecting": 0, "waiting": 0, "requests": 2468, "errors": 0}
    }

C{open} connections are C{idle} or C{busy}; C{connecting} are being made;
C{waiting} requests wait for a connection because the backend has
C{--max-connections} busy. C{requests} were given a connection;
C{errors} could not get one (connect refused or timed out, waited past the
queue timeout, or waited past the read timeout), and are answered with 502,
503 or 504.

With C{--workers N} the page is the sum over every process, whichever one
answers: see L{txfastcgi._server.metrics.Metrics.statistics}.

The Prometheus page, L{txfastcgi._server.metrics.MetricsResource}, is an
L{OperatorPage} too: both answer the same readers.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Protocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web import http
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import Request

from txfastcgi._client.balancer import BackendStatistics
from txfastcgi._http.core import (
    ANSWERED,
    Answered,
    Exchange,
    Handler,
    RequestFacts,
    ResponseWriter,
    answerPage,
    reasonPhrase,
)
from txfastcgi._http.forwarded import Networks

__all__ = [
    "OperatorPage",
    "PagesBeforeProxy",
    "StatisticsSource",
    "StatusResource",
    "WithPages",
    "hiddenEndpoints",
    "statusDocument",
]

_COUNTS = ("open", "idle", "busy", "connecting", "waiting", "requests", "errors")


class OperatorPage(Resource):
    """
    A page for operators, not for the site's visitors: only loopback
    clients may read it (and unix socket peers, which are on this machine),
    and those in C{allowed} (addresses or networks, such as C{10.0.0.0/8});
    others get 403. The connection's own address decides, never a
    forwarding header.

    A subclass writes L{answer}.
    """

    isLeaf = True

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        super().__init__()
        self._allowed = Networks(allowed)

    def render_GET(self, request: Request) -> bytes:
        address = request.getClientAddress()
        host = address.host if isinstance(address, (IPv4Address, IPv6Address)) else None
        code, headers, body = self.respond(host)
        request.setResponseCode(code)
        for name, value in headers:
            request.setHeader(name, value)
        return body

    def respond(self, host: str | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """
        Status, headers and body of the page for a reader at address
        C{host} (L{None} for a unix socket peer), whichever front asks.
        """
        local = host is None or ipaddress.ip_address(host).is_loopback
        if host is not None and not local and host not in self._allowed:
            return (
                http.FORBIDDEN,
                [(b"content-type", b"text/plain; charset=utf-8")],
                b"This page is for this machine and --status-allow networks only.\n",
            )
        contentType, body = self.answer(local)
        return http.OK, [(b"content-type", contentType), (b"cache-control", b"no-store")], body

    def answer(self, local: bool) -> tuple[bytes, bytes]:
        """
        The page's content type and body, for a reader allowed to see it.

        @param local: whether the reader is on this machine, and may see
            what only this machine should (unix socket paths).
        """
        raise NotImplementedError()


class StatisticsSource(Protocol):
    """What the status page shows: a L{txfastcgi._client.balancer.Balancer}, say."""

    def statistics(self) -> list[BackendStatistics]:
        """A snapshot of each backend."""


class StatusResource(OperatorPage):
    """
    The status of a L{Balancer}'s backends (or of another
    L{StatisticsSource}), as JSON, never cached, for the readers that
    L{OperatorPage} lets in. Readers other than loopback see no unix socket
    path: it tells an attacker where to look.
    """

    def __init__(self, source: StatisticsSource, allowed: Iterable[str] = ()) -> None:
        super().__init__(allowed)
        self._source = source

    def answer(self, local: bool) -> tuple[bytes, bytes]:
        backends = self._source.statistics()
        document = statusDocument(backends if local else _withoutSocketPaths(backends))
        return b"application/json", json.dumps(document, indent=2).encode() + b"\n"


def hiddenEndpoints(endpoints: Sequence[str]) -> dict[str, str]:
    """
    What readers other than loopback see of the backends C{endpoints}: each
    unix socket path replaced by the backend's number.
    """
    return {
        endpoint: f"unix socket #{number}"
        for number, endpoint in enumerate(endpoints, 1)
        if endpoint.startswith("unix:")
    }


def _withoutSocketPaths(backends: list[BackendStatistics]) -> list[BackendStatistics]:
    hidden = hiddenEndpoints([backend.endpoint for backend in backends])
    return [
        replace(backend, endpoint=hidden.get(backend.endpoint, backend.endpoint))
        for backend in backends
    ]


def statusDocument(backends: list[BackendStatistics]) -> dict[str, object]:
    """The status page's document for these backends."""
    described = [
        {
            "endpoint": backend.endpoint,
            "up": backend.up,
            **asdict(backend.connections),
            "requests": backend.requests,
            "errors": backend.errors,
        }
        for backend in backends
    ]
    totals: dict[str, int] = {
        "backends": len(backends),
        "up": sum(backend.up for backend in backends),
    }
    for count in _COUNTS:
        totals[count] = sum(int(backend[count]) for backend in described)
    return {"backends": described, "totals": totals}


class WithPages(Resource):
    """
    A site's root resource: each of C{pages} at exactly its path, and every
    other request to C{application}, as if it were the root itself.

    This is how C{twist fastcgi-proxy --status-path} and C{--metrics-path}
    mount their pages beside a L{txfastcgi.FastCGIResource} at the root;
    under its own prefix, such a page can simply be a child of the
    application's tree.

    @param pages: the pages by URL path, such as C{b"/status"}; each hides
        whatever the application has at that path.
    """

    isLeaf = True

    def __init__(self, application: IResource, pages: Mapping[bytes, IResource]) -> None:
        super().__init__()
        self._application = application
        self._pages = dict(pages)

    def render(self, request: Request) -> bytes | int:
        resource = self._pages.get(request.path)
        if resource is None:
            resource = getChildForRequest(self._application, request)
        result: bytes | int = resource.render(request)
        return result


_GET_OR_HEAD = (b"GET", b"HEAD")


class _Page(Protocol):
    """What L{PagesBeforeProxy} asks of a page: an L{OperatorPage}'s L{OperatorPage.respond}."""

    def respond(self, host: str | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]: ...


class PagesBeforeProxy:
    """
    The core, L{Proxy}, as a front other than twisted.web hands it requests
    (the dedicated HTTP/1.1 front), with each of C{pages} at exactly its
    path, as L{WithPages} does for twisted.web: a request whose path (the
    target without its query) is one of them is answered by the page's
    L{OperatorPage.respond}, for the client's own address, and never
    reaches PHP; GET and HEAD only, anything else 405, as twisted.web
    answers.

    @ivar proxy: the core (or several sites' cores), which answers everything else.
    """

    def __init__(self, proxy: Handler, pages: Mapping[bytes, _Page]) -> None:
        self.proxy = proxy
        self._pages = dict(pages)

    def handle(self, request: RequestFacts, writer: ResponseWriter) -> Exchange | Answered:
        page = self._pages.get(request.target.partition(b"?")[0])
        if page is None:
            return self.proxy.handle(request, writer)
        if request.method in _GET_OR_HEAD:
            code, headers, body = page.respond(request.client[0] or None)
        else:
            code, body = http.NOT_ALLOWED, b"This page is read with GET or HEAD.\n"
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"allow", b"GET, HEAD")]
        answerPage(request, writer, code, reasonPhrase(code), headers, body)
        return ANSWERED
