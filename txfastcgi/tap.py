"""
C{twist fastcgi-proxy} and C{.tac} files: L{Options}, the command line's
options, and L{makeService}, the service they describe; L{loadSiteFile},
the sites of a site file (C{--config}) as frozen dataclasses (L{SiteFile},
L{ServerSettings}, L{Site}, L{TLSFiles}, L{ACMESettings}), which
L{makeSitesService} serves, and L{fromOptions}, the same structure from
the command line's options.

The plugin in C{twisted/plugins/} names this module; the work is done in
L{txfastcgi._server}.
"""

from txfastcgi._server.options import Options
from txfastcgi._server.service import makeService, makeSitesService
from txfastcgi._server.sitefile import (
    ACMESettings,
    Problem,
    ServerSettings,
    Site,
    SiteFile,
    SiteFileError,
    TLSFiles,
    fromOptions,
    loadSiteFile,
)

__all__ = [
    "ACMESettings",
    "Options",
    "Problem",
    "ServerSettings",
    "Site",
    "SiteFile",
    "SiteFileError",
    "TLSFiles",
    "fromOptions",
    "loadSiteFile",
    "makeService",
    "makeSitesService",
]
