"""
txfastcgi: serve PHP applications from Twisted through php-fpm.

L{FastCGIResource} is the twisted.web resource, L{FastCGISite} a Site with
the request limits a PHP server needs; C{twist fastcgi-proxy} runs them as a
server.
"""

from txfastcgi._version import __version__
from txfastcgi.resource import FastCGIResource
from txfastcgi.web import FastCGISite

__all__ = ["FastCGIResource", "FastCGISite", "__version__"]
