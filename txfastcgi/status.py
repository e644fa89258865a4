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
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import asdict, replace

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web import http
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import Request

from txfastcgi.balancer import BackendStatistics, Balancer

__all__ = ["StatusResource", "WithStatusPage"]

_COUNTS = ("open", "idle", "busy", "connecting", "waiting", "requests", "errors")


class StatusResource(Resource):
    """
    The status of a L{Balancer}'s backends, as JSON, never cached.

    Only loopback clients may read it, and those in C{allowed} (addresses or
    networks, such as C{10.0.0.0/8}); others get 403. The connection's own
    address decides, never a forwarding header. Readers other than loopback
    see no unix socket path: it tells an attacker where to look.
    """

    isLeaf = True

    def __init__(self, balancer: Balancer, allowed: Iterable[str] = ()) -> None:
        super().__init__()
        self._balancer = balancer
        self._allowed = tuple(ipaddress.ip_network(network, strict=False) for network in allowed)

    def render_GET(self, request: Request) -> bytes:
        address = request.getClientAddress()
        ip = (
            ipaddress.ip_address(address.host)
            if isinstance(address, IPv4Address | IPv6Address)
            else None
        )
        local = ip is None or ip.is_loopback  # a unix socket peer is on this machine
        if not local and not any(ip in network for network in self._allowed):
            request.setResponseCode(http.FORBIDDEN)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"The status page is for this machine and --status-allow networks only.\n"
        backends = self._balancer.statistics()
        document = statusDocument(backends if local else _withoutSocketPaths(backends))
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(document, indent=2).encode() + b"\n"


def _withoutSocketPaths(backends: list[BackendStatistics]) -> list[BackendStatistics]:
    """The backends with each unix socket path replaced by the backend's number."""
    return [
        replace(backend, endpoint=f"unix socket #{number}")
        if backend.endpoint.startswith("unix:")
        else backend
        for number, backend in enumerate(backends, 1)
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


class WithStatusPage(Resource):
    """
    A site's root resource: C{status} at exactly C{path}, and every other
    request to C{application}, as if it were the root itself.

    This is how C{twist fastcgi-proxy --status-path} mounts the status page
    beside a L{txfastcgi.FastCGIResource} at the root; under its own
    prefix, a status page can simply be a child of the application's tree.

    @param path: the URL path of the status page, such as C{b"/status"}; it
        hides whatever the application has at that path.
    """

    isLeaf = True

    def __init__(self, application: IResource, path: bytes, status: IResource) -> None:
        super().__init__()
        self._application = application
        self._path = path
        self._status = status

    def render(self, request: Request) -> bytes | int:
        if request.path == self._path:
            resource = self._status
        else:
            resource = getChildForRequest(self._application, request)
        result: bytes | int = resource.render(request)
        return result
