"""
What one process of C{twist fastcgi-proxy} serves, as a typed value: the
sites and server settings (a L{SiteFile}, from the command line's options
or from C{--config}), with what starting up added to them: the private
php-fpms' endpoints, and the directory the processes share metrics in.

The service is assembled from a L{Configuration}, never from the options'
strings, so that a misspelt option name is an error where it is written;
the main process hands it to its workers whole (L{Configuration.encode},
L{Configuration.decode}).
"""

from __future__ import annotations

import base64
import dataclasses
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from txfastcgi._server import sitefile
from txfastcgi._server.sitefile import SPAWN, ServerSettings, Site, SiteFile

__all__ = ["EXTERNAL_CONNECTIONS", "SPAWN", "Configuration"]

EXTERNAL_CONNECTIONS = 4
"""
The default C{--max-connections} to a php-fpm of the system's: under the
C{pm.max_children = 5} that Debian's pool ships with, so that a burst never
waits in php-fpm's listen backlog behind connections it cannot serve.
"""


@dataclass(frozen=True)
class Configuration:
    """
    @ivar siteFile: the sites and the server settings.
    @ivar path: the site file's path, read again on SIGHUP; L{None} when
        the command line's options describe the one site.
    @ivar phpFPMBinary: the php-fpm to start for the sites that spawn one.
    @ivar documentRootDefaulted: the command line gave no C{--path}.
    @ivar spawned: the endpoint description of each private php-fpm once
        started, by the document root it serves.
    @ivar metricsDirectory: where every process writes its metrics for the
        others (with C{--workers} and a status or metrics page).
    """

    siteFile: SiteFile
    path: str | None = None
    phpFPMBinary: str | None = None
    documentRootDefaulted: bool = False
    spawned: Mapping[str, str] = field(default_factory=dict)
    metricsDirectory: str | None = None

    @classmethod
    def fromOptions(cls, options: Mapping[str, Any]) -> Configuration:
        """The configuration that parsed options (L{txfastcgi.tap.Options}) describe."""
        siteFile = options.get("site-file") or sitefile.fromOptions(options)
        return cls(
            siteFile=siteFile,
            path=options.get("config"),
            phpFPMBinary=options.get("php-fpm-binary"),
            documentRootDefaulted=bool(options.get("path-defaulted")),
        )

    @property
    def server(self) -> ServerSettings:
        return self.siteFile.server

    @property
    def sites(self) -> Sequence[Site]:
        return self.siteFile.sites

    @property
    def spawning(self) -> list[Site]:
        """The sites, one for each document root, whose own php-fpm is to be started."""
        roots: dict[str, Site] = {}
        for site in self.sites:
            if SPAWN in site.php_fpm:
                roots.setdefault(site.root, site)
        return list(roots.values())

    def backendsOf(self, site: Site) -> tuple[str, ...]:
        """C{site}'s backends, with its private php-fpm's endpoint once started."""
        spawned = self.spawned.get(site.root, SPAWN)
        return tuple(spawned if backend == SPAWN else backend for backend in site.php_fpm)

    def withSpawned(self, root: str, endpointDescription: str) -> Configuration:
        """This configuration with the private php-fpm of C{root} started."""
        return dataclasses.replace(self, spawned={**self.spawned, root: endpointDescription})

    def reloaded(self, siteFile: SiteFile) -> Configuration:
        """This configuration serving C{siteFile}, read again, with the same php-fpms."""
        return dataclasses.replace(self, siteFile=siteFile)

    @property
    def connectionLimits(self) -> dict[str, int]:
        """
        Most connections to each backend, over all the processes: never more
        to a private php-fpm than it has workers unless C{max_connections}
        says otherwise (see DESIGN's backlog trap). Sites that name the same
        backend share its connections, under the first one's limit (the
        site file's check refuses two limits for one backend).
        """
        limits: dict[str, int] = {}
        for site in self.sites:
            for named, backend in zip(site.php_fpm, self.backendsOf(site)):
                default = site.spawn_children if named == SPAWN else EXTERNAL_CONNECTIONS
                limits.setdefault(backend, site.max_connections or default)
        return limits

    @property
    def usesMetrics(self) -> bool:
        """Whether a status or a metrics page is served."""
        return self.server.status_path is not None or self.server.metrics_path is not None

    def encode(self) -> str:
        """
        This configuration as one line of text, for a worker process's
        environment: the frozen values themselves, pickled, since the worker
        runs this same code.
        """
        return base64.b64encode(pickle.dumps(self)).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Configuration:
        """The configuration that L{encode} gave, in the main process."""
        configuration = pickle.loads(base64.b64decode(text))
        if not isinstance(configuration, cls):
            raise TypeError(f"not a Configuration: {type(configuration).__name__}")
        return configuration
