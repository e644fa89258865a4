"""
C{twist fastcgi-proxy} and C{.tac} files: L{Options}, the command line's
options, and L{makeService}, the service they describe.

The plugin in C{twisted/plugins/} names this module; the work is done in
L{txfastcgi._server}.
"""

from txfastcgi._server.options import Options
from txfastcgi._server.service import makeService

__all__ = ["Options", "makeService"]
