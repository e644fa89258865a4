"""
Two sites on one server, described in Python rather than in a site file:
the same frozen dataclasses that ``--config`` reads (see the site file's
reference), served by ``makeSitesService``.

Run it with ``twistd -ny docs/examples/sites.tac``.
"""

import os

from twisted.application import service

from txfastcgi.tap import ServerSettings, Site, SiteFile, makeSitesService

backend = os.environ.get("PHP_FPM", "unix:/run/php/php-fpm.sock")
sites = SiteFile(
    ServerSettings(listen=(os.environ.get("LISTEN", "tcp:8080"),), unknown_host="refuse"),
    (
        Site(
            root=os.environ.get("BLOG_ROOT", "/srv/blog"),
            hosts=("blog.example.org",),
            php_fpm=(backend,),
        ),
        Site(
            root=os.environ.get("SITE_ROOT", "/srv/shop"),
            hosts=("shop.example.org", "*.shop.example.org"),
            php_fpm=(backend,),
            params={"APP_ENV": "production"},
        ),
    ),
)

application = service.Application("fastcgi-proxy")
makeSitesService(sites).setServiceParent(application)
