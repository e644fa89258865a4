"""
A bare twisted.web resource that answers the benchmark's tiny response
without FastCGI: the ceiling for one CPython process, as issue 5 describes::

    python benchmarks/bare_site.py PORT
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class Hello(Resource):
    """The same 14 bytes as hello.php."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"Hello, world!\n"


if __name__ == "__main__":
    serverFromString(reactor, f"tcp:{sys.argv[1]}:interface=127.0.0.1").listen(Site(Hello()))
    reactor.run()
