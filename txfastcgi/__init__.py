"""
txfastcgi: serve PHP applications from Twisted through php-fpm.

What this module names is the public interface; the subpackages with a
leading underscore are the implementation, free to change.

  - L{FastCGIResource} mounts a PHP application in a twisted.web resource
    tree; L{FastCGISite} is a Site with the request limits a PHP server
    needs.
  - L{ConnectionPool} keeps FastCGI connections to one php-fpm, with its
    limits and timeouts; L{Balancer} spreads requests over several pools.
    Either can stand in for the endpoint of a L{FastCGIResource}, and
    L{StatusResource} shows their state as JSON.
  - L{Proxy} is the core that both fronts share, and L{HTTP1Factory} the
    dedicated HTTP/1.1 front over it (with L{StaticFiles}), which
    C{twist fastcgi-proxy} listens with.
  - L{txfastcgi.errors} holds every error these raise, L{txfastcgi.testing}
    an in-memory php-fpm to test with, and L{txfastcgi.tap} the service of
    C{twist fastcgi-proxy} for a C{.tac} file.
"""

from txfastcgi._client.balancer import Balancer
from txfastcgi._client.pool import ConnectionPool
from txfastcgi._http.core import Proxy
from txfastcgi._http.http1 import HTTP1Factory, StaticFiles
from txfastcgi._http.resource import FastCGIResource
from txfastcgi._http.status import StatusResource
from txfastcgi._http.web import FastCGISite
from txfastcgi._version import __version__
from txfastcgi.errors import (
    BackendClosed,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ProtocolError,
    QueueTimeout,
    TxFastCGIError,
)

__all__ = [
    "BackendClosed",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "Balancer",
    "ConnectionPool",
    "FastCGIResource",
    "FastCGISite",
    "HTTP1Factory",
    "ProtocolError",
    "Proxy",
    "QueueTimeout",
    "StaticFiles",
    "StatusResource",
    "TxFastCGIError",
    "__version__",
]
