"""
A plain Twisted web server: pages of its own, and a PHP blog under /blog/.

Run it with the Python of the virtual environment txfastcgi is installed
in, ``/opt/txfastcgi/bin/python plain.py`` (the system's ``python3`` has
neither txfastcgi nor Twisted). The environment variables PHP_FPM,
BLOG_ROOT and LISTEN say where php-fpm listens, where the PHP files are and
where to listen. It logs to standard output, as ``twist`` does: that it
listens, each request, and what goes wrong.
"""

import os
import sys

from twisted.internet import endpoints, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from txfastcgi import FastCGIResource


class Clock(Resource):
    """A page of the Twisted application itself."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"%d seconds since the epoch\n" % reactor.seconds()


def main():
    # Unlike twist and twistd, a script of its own must start logging itself.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    phpFPM = os.environ.get("PHP_FPM", "unix:/run/php/php-fpm.sock")
    blogRoot = os.environ.get("BLOG_ROOT", "/srv/blog")
    listen = os.environ.get("LISTEN", "tcp:8080")

    root = Resource()
    root.putChild(b"", Data(b'<a href="/blog/">Blog</a> <a href="/time">Time</a>\n', "text/html"))
    root.putChild(b"time", Clock())
    root.putChild(b"blog", FastCGIResource(endpoints.clientFromString(reactor, phpFPM), blogRoot))

    endpoints.serverFromString(reactor, listen).listen(Site(root))
    reactor.run()


if __name__ == "__main__":
    main()
