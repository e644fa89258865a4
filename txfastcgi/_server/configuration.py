"""
What one process of C{twist fastcgi-proxy} serves, as a typed value: the
options once parsed, checked and completed, with the backends it connects
to and how many connections each may have.

The service is assembled from a L{Configuration}, never from the options'
strings, so that a misspelt option name is an error where it is written;
the main process hands it to its workers as JSON (L{Configuration.toJSON},
L{Configuration.fromJSON}).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from txfastcgi._http.cache import DEFAULT_BYPASS_COOKIES

__all__ = ["EXTERNAL_CONNECTIONS", "SPAWN", "Configuration"]

SPAWN = "spawn"
"""The C{--php-fpm} value that starts a private php-fpm."""

EXTERNAL_CONNECTIONS = 4
"""
The default C{--max-connections} to a php-fpm of the system's: under the
C{pm.max_children = 5} that Debian's pool ships with, so that a burst never
waits in php-fpm's listen backlog behind connections it cannot serve.
"""


@dataclass(frozen=True)
class Configuration:
    """
    @ivar backends: endpoint descriptions of the php-fpms, with L{SPAWN}
        for the private one until it is started (L{withSpawned}).
    @ivar maxConnections: C{--max-connections}, if given.
    @ivar spawned: the endpoint description of the private php-fpm, once
        started.
    @ivar metricsDirectory: where every process writes its metrics for the
        others (with C{--workers} and a status or metrics page).
    """

    documentRoot: str
    documentRootDefaulted: bool
    index: str
    frontController: str | None
    params: Mapping[str, str]
    https: bool
    trustedProxies: Sequence[str]
    sendfileRoots: Sequence[str]
    accelPrefixes: Mapping[str, str]
    compress: bool
    earlyHints: bool
    earlyHintLinks: Mapping[str, Sequence[str]]
    cacheSize: int
    cacheStatus: bool
    cacheBypassCookies: Sequence[str]
    backends: Sequence[str]
    maxConnections: int | None
    spawnChildren: int
    phpFPMBinary: str | None
    connectTimeout: float
    readTimeout: float
    idleTimeout: float
    queueTimeout: float
    listen: Sequence[str]
    workers: int
    maxBodySize: int
    headerTimeout: float
    bodyTimeout: float
    shutdownTimeout: float
    accessLog: str | None
    accessLogFormat: str
    statusPath: str | None
    metricsPath: str | None
    statusAllow: Sequence[str]
    spawned: str | None = None
    metricsDirectory: str | None = None

    @classmethod
    def fromOptions(cls, options: Mapping[str, Any]) -> Configuration:
        """The configuration that parsed options (L{txfastcgi.tap.Options}) describe."""
        return cls(
            documentRoot=options["path"],
            documentRootDefaulted=options["path-defaulted"],
            index=options["index"],
            frontController=options["front-controller"],
            params=dict(options["param"]),
            https=bool(options["https"]),
            trustedProxies=list(options["trusted-proxy"]),
            sendfileRoots=list(options["sendfile-root"]),
            accelPrefixes=dict(options["accel-prefix"]),
            compress=not options["no-compress"],
            earlyHints=not options["no-early-hints"],
            earlyHintLinks={path: list(links) for path, links in options["early-hint"].items()},
            cacheSize=options["cache-size"],
            cacheStatus=bool(options["cache-status"]),
            cacheBypassCookies=list(options["cache-bypass-cookie"] or DEFAULT_BYPASS_COOKIES),
            backends=list(options["php-fpm"]),
            maxConnections=options["max-connections"],
            spawnChildren=options["spawn-children"],
            phpFPMBinary=options.get("php-fpm-binary"),
            connectTimeout=options["connect-timeout"],
            readTimeout=options["read-timeout"],
            idleTimeout=options["idle-timeout"],
            queueTimeout=options["queue-timeout"],
            listen=list(options["listen"]),
            workers=options["workers"],
            maxBodySize=options["max-body-size"],
            headerTimeout=options["header-timeout"],
            bodyTimeout=options["body-timeout"],
            shutdownTimeout=options["shutdown-timeout"],
            accessLog=options["access-log"],
            accessLogFormat=options["access-log-format"],
            statusPath=options["status-path"],
            metricsPath=options["metrics-path"],
            statusAllow=list(options["status-allow"]),
        )

    def withSpawned(self, endpointDescription: str) -> Configuration:
        """This configuration with the private php-fpm started, at C{endpointDescription}."""
        backends = [endpointDescription if b == SPAWN else b for b in self.backends]
        return dataclasses.replace(self, backends=backends, spawned=endpointDescription)

    @property
    def connectionLimits(self) -> dict[str, int]:
        """
        Most connections to each backend, over all the processes: never more
        to the private php-fpm than it has workers unless C{--max-connections}
        says otherwise (see DESIGN's backlog trap).
        """
        spawnedDefault = {self.spawned: self.spawnChildren}
        return {
            backend: self.maxConnections or spawnedDefault.get(backend, EXTERNAL_CONNECTIONS)
            for backend in self.backends
        }

    def toJSON(self) -> dict[str, Any]:
        """This configuration as JSON-ready data, for a worker process."""
        return dataclasses.asdict(self)

    @classmethod
    def fromJSON(cls, data: Mapping[str, Any]) -> Configuration:
        """The configuration that L{toJSON} gave."""
        return cls(**data)
