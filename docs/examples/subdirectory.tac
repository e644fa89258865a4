"""
A PHP site at / with phpMyAdmin under /phpmyadmin/, each its own
FastCGIResource, through the same php-fpm.

Run it with ``twistd -ny subdirectory.tac``. The environment variables
PHP_FPM, SITE_ROOT, PHPMYADMIN_ROOT and LISTEN say where php-fpm listens,
where the two applications are and where to listen.
"""

import os

from twisted.application import service, strports
from twisted.internet import endpoints, reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from txfastcgi import FastCGIResource

phpFPM = os.environ.get("PHP_FPM", "unix:/run/php/php-fpm.sock")
siteRoot = os.environ.get("SITE_ROOT", "/var/www/html")
phpMyAdminRoot = os.environ.get("PHPMYADMIN_ROOT", "/usr/share/phpmyadmin")
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


php = endpoints.clientFromString(reactor, phpFPM)
root = Mounts(FastCGIResource(php, siteRoot))
root.putChild(b"phpmyadmin", FastCGIResource(php, phpMyAdminRoot, frontController=None))

application = service.Application("php-sites")
strports.service(listen, Site(root)).setServiceParent(application)
