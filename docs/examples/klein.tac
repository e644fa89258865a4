"""
A Klein application with a PHP blog mounted under /blog/.

It needs Klein, which txfastcgi does not: ``pip install klein`` in the
virtual environment txfastcgi is installed in. Run it with
``twistd -ny klein.tac``. The environment variables PHP_FPM,
BLOG_ROOT and LISTEN say where php-fpm listens, where the PHP files are
and where to listen.
"""

import os

from klein import Klein
from twisted.application import service, strports
from twisted.internet import endpoints, reactor
from twisted.web.server import Site

from txfastcgi import FastCGIResource

phpFPM = os.environ.get("PHP_FPM", "unix:/run/php/php-fpm.sock")
documentRoot = os.environ.get("BLOG_ROOT", "/srv/blog")
listen = os.environ.get("LISTEN", "tcp:8080")

app = Klein()
blog = FastCGIResource(endpoints.clientFromString(reactor, phpFPM), documentRoot)


@app.route("/")
def home(request):
    return '<a href="/blog/">Read the blog</a>\n'


# branch=True: every path below /blog/ comes here; Klein moves "blog" from
# the path still to route to the path already routed, so PHP sees /blog as
# the mount point in SCRIPT_NAME.
@app.route("/blog/", branch=True)
def phpBlog(request):
    return blog


application = service.Application("klein-blog")
strports.service(listen, Site(app.resource())).setServiceParent(application)
