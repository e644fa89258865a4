"""
A Laravel application, with the files of its public disk served from
storage/app/public under /storage/.

Laravel's ``php artisan storage:link`` makes public/storage a symbolic link
to storage/app/public, outside the document root, and txfastcgi never
follows a link out of the document root: this serves that directory itself.

Run it with ``twistd -ny laravel.tac``. The environment variables PHP_FPM,
LARAVEL_ROOT and LISTEN say where php-fpm listens, where the application is
and where to listen.
"""

import os

from twisted.application import service, strports
from twisted.internet import endpoints, reactor
from twisted.web import pages
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import File

from txfastcgi import FastCGIResource

phpFPM = os.environ.get("PHP_FPM", "unix:/run/php/php-fpm.sock")
app = os.environ.get("LARAVEL_ROOT", "/var/www/laravel")
listen = os.environ.get("LISTEN", "tcp:8080")


class Mounts(Resource):
    """
    The resources given to putChild under their names; every other path
    goes, whole, to the main site.
    """

    def __init__(self, site):
        super().__init__()
        self.site = site

    def getChild(self, name, request):
        # Give the main site back the path segment this resource consumed.
        request.postpath.insert(0, request.prepath.pop())
        return self.site


class Files(File):
    """Static files, without listing the directories' contents."""

    def directoryListing(self):
        return pages.notFound()


root = Mounts(FastCGIResource(endpoints.clientFromString(reactor, phpFPM), f"{app}/public"))
root.putChild(b"storage", Files(f"{app}/storage/app/public"))

application = service.Application("laravel")
strports.service(listen, Site(root)).setServiceParent(application)
