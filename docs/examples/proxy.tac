"""
The same service as ``twist fastcgi-proxy``, configured in Python.

Run it with ``twistd -ny docs/examples/proxy.tac``; the options are the
command line's, so anything ``twist fastcgi-proxy --help`` lists works here.
"""

import os

from twisted.application import service

from txfastcgi.tap import Options, makeService

options = Options()
options.parseOptions(
    [
        "--php-fpm", os.environ.get("PHP_FPM", "unix:/run/php/php-fpm.sock"),
        "--path", os.environ.get("SITE_ROOT", "/var/www/html"),
        "--listen", os.environ.get("LISTEN", "tcp:8080"),
    ]
)

application = service.Application("fastcgi-proxy")
makeService(options).setServiceParent(application)
