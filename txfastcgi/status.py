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

import json
from dataclasses import asdict

from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import Request

from txfastcgi.balancer import BackendStatistics, Balancer

__all__ = ["StatusResource", "WithStatusPage"]

_COUNTS = ("open", "idle", "busy", "connecting", "waiting", "requests", "errors")


class StatusResource(Resource):
    """The status of a L{Balancer}'s backends, as JSON, never cached."""

    isLeaf = True

    def __init__(self, balancer: Balancer) -> None:
        super().__init__()
        self._balancer = balancer

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(statusDocument(self._balancer.statistics()), indent=2).encode() + b"\n"


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
