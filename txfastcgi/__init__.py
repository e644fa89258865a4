"""
txfastcgi: serve PHP applications from Twisted through php-fpm.

L{FastCGIResource} is the twisted.web resource; C{twist fastcgi-proxy} runs
it as a server.
"""

from txfastcgi._version import __version__
from txfastcgi.resource import FastCGIResource

__all__ = ["FastCGIResource", "__version__"]
