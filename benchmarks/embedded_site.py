"""
The embedded target of the benchmark: C{FastCGIResource} in a plain
twisted.web C{Site}, the way an application that embeds txfastcgi serves PHP
(no FastCGISite, no tap, no options)::

    python benchmarks/embedded_site.py PHP_FPM_SOCKET DOCUMENT_ROOT PORT
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import UNIXClientEndpoint, serverFromString
from twisted.web.server import Site

from txfastcgi import FastCGIResource


def main(argv: list[str]) -> None:
    """Listen on loopback C{PORT} and serve C{DOCUMENT_ROOT} through the php-fpm socket."""
    backend, documentRoot, port = argv
    resource = FastCGIResource(UNIXClientEndpoint(reactor, backend), documentRoot)
    serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(Site(resource))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
