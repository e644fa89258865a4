"""
A Twisted web application with a PHP blog mounted under /blog/.

Run it with ``twistd -ny docs/examples/blog.tac``. The environment variables
say where php-fpm listens, where the PHP files are and where to listen.
"""

import os

from twisted.application import service, strports
from twisted.internet import endpoints, reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from txfastcgi import FastCGIResource

phpFPM = os.environ.get("PHP_FPM", "unix:/run/php/php-fpm.sock")
documentRoot = os.environ.get("BLOG_ROOT", "/srv/blog")
listen = os.environ.get("LISTEN", "tcp:8080")

root = Resource()
root.putChild(b"", Data(b'<a href="/blog/">Read the blog</a>\n', "text/html"))
root.putChild(
    b"blog",
    FastCGIResource(endpoints.clientFromString(reactor, phpFPM), documentRoot),
)

application = service.Application("blog")
strports.service(listen, Site(root)).setServiceParent(application)
