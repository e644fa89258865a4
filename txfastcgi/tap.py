"""
C{twist fastcgi-proxy}: options and the service they describe.

The same L{makeService} builds the service for a C{.tac} file.  The service
is a L{txfastcgi.lifecycle.Lifecycle}: the order in which its parts start
and stop is written down there.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, cast

from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IReactorSocket,
    IReactorTime,
    ITransport,
)
from twisted.internet.testing import MemoryReactor
from twisted.python import usage
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Site

from txfastcgi._emptied import Emptied
from txfastcgi.balancer import Balancer
from txfastcgi.forwarded import TrustedProxies
from txfastcgi.lifecycle import Lifecycle, Step, onHangup
from txfastcgi.phpfpm import PHPFPMNotFound, PHPFPMService, findPHPFPM
from txfastcgi.pool import ConnectionPool
from txfastcgi.resource import FastCGIResource
from txfastcgi.status import StatusResource, WithStatusPage
from txfastcgi.web import DEFAULT_MAX_BODY_SIZE, FastCGISite

if TYPE_CHECKING:
    from txfastcgi.workers import WorkerProcesses

__all__ = ["Options", "makeService"]

SPAWN = "spawn"

# The default --max-connections to a php-fpm of the system's: under the
# pm.max_children = 5 that Debian's pool ships with, so that a burst never
# waits in php-fpm's listen backlog behind connections it cannot serve.
EXTERNAL_CONNECTIONS = 4

# Listeners whose sockets worker processes can adopt as they are; a TLS
# listener would need its TLS context rebuilt in each worker.
_SHAREABLE = frozenset({"tcp", "tcp6", "unix"})


def _number(kind: type[int] | type[float], minimum: float) -> Callable[[str], float]:
    """A coercer that accepts numbers of C{kind} no smaller than C{minimum}."""

    def coerce(value: str) -> float:
        try:
            number = kind(value)
        except ValueError:
            raise usage.UsageError(f"{value!r} is not a number") from None
        if number < minimum:
            raise usage.UsageError(f"{value!r} is below {minimum}")
        return number

    return coerce


_count = _number(int, 1)
_seconds = _number(float, 0.001)


class Options(usage.Options):
    """The options of C{twist fastcgi-proxy}; see C{docs/reference.rst}."""

    synopsis = "[options]"
    longdesc = (
        "Serve a PHP application through php-fpm: static files from the document root, "
        "scripts over FastCGI, unknown paths to a front controller."
    )

    optFlags = [
        ["https", None, "Send HTTPS=on even on plain listeners (behind a TLS terminator)."],
        ["no-front-controller", None, "Answer paths that name no file with 404."],
    ]

    optParameters = [
        ["path", None, os.curdir, "Document root: static files and scripts."],
        ["index", None, "index.php", "Directory index script."],
        ["front-controller", None, "/index.php", "Where paths that name no file go."],
        [
            "access-log",
            None,
            "-",
            "Access log file in combined format; - for stdout, /dev/null for none.",
        ],
        ["status-path", None, None, "URL path of a JSON status page of the backends (off)."],
        ["spawn-children", None, 4, "Workers of the php-fpm started by --php-fpm spawn.", _count],
        [
            "max-connections",
            None,
            None,
            "Most FastCGI connections open to one backend"
            f" [default: {EXTERNAL_CONNECTIONS}; with spawn, --spawn-children].",
            _count,
        ],
        ["connect-timeout", None, 5.0, "Seconds to connect to the backend (then 502).", _seconds],
        ["read-timeout", None, 60.0, "Seconds to wait for backend output (then 504).", _seconds],
        ["idle-timeout", None, 5.0, "Seconds a kept FastCGI connection may stay idle.", _seconds],
        ["queue-timeout", None, 30.0, "Seconds to wait for a connection (then 503).", _seconds],
        ["workers", None, 1, "Processes sharing the listening sockets.", _count],
        [
            "max-body-size",
            None,
            DEFAULT_MAX_BODY_SIZE,
            "Largest request body in bytes; larger ones get 413 without reaching PHP.",
            _count,
        ],
        [
            "header-timeout",
            None,
            60.0,
            "Seconds a client may take to send a whole request head (then 408).",
            _seconds,
        ],
        [
            "body-timeout",
            None,
            60.0,
            "Seconds a client may pause while sending a request body (then 408).",
            _seconds,
        ],
        [
            "shutdown-timeout",
            None,
            30.0,
            "On SIGTERM, seconds to let requests in progress finish and their connections close.",
            _seconds,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        # The opt_* docstrings are wrapped source lines; --help wraps them itself.
        self.docs = {name: " ".join(doc.split()) for name, doc in self.docs.items() if doc}
        self["php-fpm"] = []
        self["listen"] = []
        self["param"] = {}
        self["trusted-proxy"] = []

    def opt_php_fpm(self, description: str) -> None:
        """
        FastCGI server endpoint (unix:/run/php/php8.2-fpm.sock, tcp:127.0.0.1:9000),
        or "spawn" to start a private php-fpm; repeat it to balance requests over
        several backends. [default: unix:/run/php/php-fpm.sock]
        """
        if description != SPAWN:
            _checkEndpoint(endpoints.clientFromString, description, "--php-fpm")
        self["php-fpm"].append(description)

    def opt_listen(self, description: str) -> None:
        """Server endpoint to listen on, repeatable (tcp:8080, ssl:8443:...). [default: tcp:8080]"""
        _checkEndpoint(endpoints.serverFromString, description, "--listen")
        self["listen"].append(description)

    def opt_trusted_proxy(self, network: str) -> None:
        """
        Address or network of a proxy in front of this server whose Forwarded or
        X-Forwarded-For/-Proto headers set REMOTE_ADDR and HTTPS, repeatable.
        """
        try:
            TrustedProxies([network])
        except ValueError:
            raise usage.UsageError(f"--trusted-proxy {network!r} is not an address") from None
        self["trusted-proxy"].append(network)

    def opt_param(self, assignment: str) -> None:
        """Extra FastCGI param NAME=VALUE, repeatable; wins over anything a client sends."""
        name, equals, value = assignment.partition("=")
        if not equals or not name:
            raise usage.UsageError(f"--param wants NAME=VALUE, not {assignment!r}")
        self["param"][name] = value

    def postOptions(self) -> None:
        if not os.path.isdir(self["path"]):
            raise usage.UsageError(f"--path {self['path']!r} is not a directory")
        self["path"] = os.path.abspath(self["path"])
        if not self["php-fpm"]:
            self["php-fpm"] = ["unix:/run/php/php-fpm.sock"]
        duplicates = {d for d in self["php-fpm"] if self["php-fpm"].count(d) > 1}
        if duplicates:
            raise usage.UsageError(f"--php-fpm {sorted(duplicates)[0]!r} is given twice")
        if SPAWN in self["php-fpm"]:
            try:
                self["php-fpm-binary"] = findPHPFPM()
            except PHPFPMNotFound as e:
                raise usage.UsageError(str(e)) from None
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]
        if self["workers"] > 1:
            for description in self["listen"]:
                if description.partition(":")[0] not in _SHAREABLE:
                    raise usage.UsageError(
                        f"--workers shares only tcp, tcp6 and unix listeners, not {description!r}"
                    )
        if self["status-path"] is not None and not self["status-path"].startswith("/"):
            raise usage.UsageError(f"--status-path {self['status-path']!r} must start with /")
        if self["no-front-controller"]:
            self["front-controller"] = None

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, or exit with status 2 and one line that says what is wrong."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            _exitWithUsageError(str(e))


def _exitWithUsageError(message: str) -> NoReturn:
    sys.stderr.write(f"twist fastcgi-proxy: error: {message}\n")
    raise SystemExit(2)


def _checkEndpoint(parse: Callable[[object, str], object], description: str, option: str) -> None:
    """
    Fail now, not at start-up, on an endpoint string that does not parse.
    The reactor is not chosen yet while options are parsed, so the check
    builds the endpoint for a stand-in that is never used.
    """
    try:
        parse(MemoryReactor(), description)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise usage.UsageError(f"{option} {description!r} is not a valid endpoint: {e}") from None


def makeService(options: Options) -> IService:
    """
    The proxy: a php-fpm to spawn if asked, the site, its listeners and,
    with C{--workers}, the worker processes that share them.
    """
    from twisted.internet import reactor

    # Imported here: it imports procmon, which installs the global reactor.
    from txfastcgi.workers import WorkerProcesses

    backends = list(options["php-fpm"])
    phpFPM = None
    limits = {backend: options["max-connections"] or EXTERNAL_CONNECTIONS for backend in backends}
    if SPAWN in backends:
        phpFPM = PHPFPMService(
            options["path"], children=options["spawn-children"], binary=options["php-fpm-binary"]
        )
        spawned = backends[backends.index(SPAWN)] = phpFPM.endpointDescription
        # Never more connections than it has workers: see DESIGN's backlog trap.
        limits[spawned] = options["max-connections"] or options["spawn-children"]
        del limits[SPAWN]
    served = {**options, "php-fpm": backends, "connection-limits": limits}
    listeners = _Listeners(
        [endpoints.serverFromString(reactor, d).listen for d in options["listen"]]
    )
    workers = None
    if options["workers"] > 1:
        workers = WorkerProcesses(
            reactor, served, options["workers"] - 1, options["shutdown-timeout"]
        )
    return _lifecycle(cast(IReactorTime, reactor), served, listeners, phpFPM, workers)


def makeWorkerService(options: Mapping[str, Any], inherited: Sequence[tuple[int, int]]) -> IService:
    """
    The service of a worker process started by C{--workers}: the same site
    on listening sockets inherited from the main process.

    @param options: the main process's, as L{makeService} serves them.
    @param inherited: file descriptor and address family of each socket.
    """
    from twisted.internet import reactor

    adopters = [
        partial(_adopt, cast(IReactorSocket, reactor), descriptor, family)
        for descriptor, family in inherited
    ]
    return _lifecycle(cast(IReactorTime, reactor), options, _Listeners(adopters))


def _lifecycle(
    reactor: IReactorTime,
    options: Mapping[str, Any],
    listeners: _Listeners,
    phpFPM: PHPFPMService | None = None,
    workers: WorkerProcesses | None = None,
) -> Lifecycle:
    """
    The steps of one process's life, in the order that
    L{txfastcgi.lifecycle} documents, without those it has nothing for.
    """
    site, resource, balancer = _site(options, reactor)

    def reopenLogs() -> None:
        site.reopenLog()
        if workers is not None:
            workers.signal("HUP")

    def closeConnections() -> Deferred[None]:
        balancer.close()
        return site.closeConnections()

    spawning = [] if phpFPM is None else [phpFPM]
    supervising = [] if workers is None else [workers]
    startup = [
        *(Step("start php-fpm", p.startService) for p in spawning),
        *(Step("wait for php-fpm", p.whenListening) for p in spawning),
        Step("listen", partial(listeners.listen, site), fatal=True),
        *(Step("start workers", partial(w.start, listeners.ports)) for w in supervising),
        Step("reopen logs on SIGHUP", partial(onHangup, reactor, reopenLogs)),
    ]
    shutdown = [
        Step("stop listening", listeners.stopListening),
        *(Step("stop workers", w.stop) for w in supervising),
        Step("finish requests", resource.whenIdle, bounded=True),
        *(Step("wait for workers", w.whenStopped, bounded=True) for w in supervising),
        Step("close connections", closeConnections, bounded=True),
        *(Step("stop php-fpm", p.stopService) for p in spawning),
    ]
    return Lifecycle(reactor, startup, shutdown, options["shutdown-timeout"])


def _site(
    options: Mapping[str, Any], reactor: IReactorTime
) -> tuple[_Site, FastCGIResource, Balancer]:
    """
    The web site every process serves: the resource over a balancer of the
    backends (with one backend too, which then notices a restart of php-fpm
    at once), the status page if asked for, and the access log.
    """
    pools = {
        backend: ConnectionPool(
            reactor,
            endpoints.clientFromString(reactor, backend),
            # The limit is for the backend, so the processes share it.
            maxConnections=max(1, limit // options["workers"]),
            connectTimeout=options["connect-timeout"],
            readTimeout=options["read-timeout"],
            idleTimeout=options["idle-timeout"],
            queueTimeout=options["queue-timeout"],
            name=backend,
        )
        for backend, limit in options["connection-limits"].items()
    }
    balancer = Balancer(reactor, pools)
    resource = FastCGIResource(
        balancer,
        options["path"],
        index=options["index"],
        frontController=options["front-controller"],
        params=options["param"],
        https=options["https"],
        trustedProxies=options["trusted-proxy"],
    )
    root: IResource = resource
    if options["status-path"] is not None:
        root = WithStatusPage(resource, options["status-path"].encode(), StatusResource(balancer))
    return _Site(root, options), resource, balancer


class _Site(FastCGISite):
    """
    The proxy's site: the access log and the client connections, as the
    lifecycle handles them.

    An access log C{-} is standard output, shared with the process's own log
    rather than opened again: a second open file would write at its own
    offset, over the lines written through the first. An access log to
    C{/dev/null} is no access log: no line is even formatted.
    """

    def __init__(self, resource: IResource, options: Mapping[str, Any]) -> None:
        accessLog = options["access-log"]
        self._toStandardOutput = accessLog == "-"
        self._logging = accessLog != os.devnull
        self._connections: set[_Tracked] = set()
        self._allClosed = Emptied()
        super().__init__(
            resource,
            maxBodySize=options["max-body-size"],
            headerTimeout=options["header-timeout"],
            bodyTimeout=options["body-timeout"],
            logPath=accessLog if self._logging and not self._toStandardOutput else None,
        )

    def startFactory(self) -> None:
        super().startFactory()
        if self._toStandardOutput:
            self.logFile = _StandardOutput()

    def log(self, request: http.Request) -> None:
        if self._logging:
            super().log(request)

    def reopenLog(self) -> None:
        """
        Open the access log file again, under its name: logrotate has
        renamed it and sends SIGHUP.
        """
        if self.logPath is not None and self.numPorts:
            previous, self.logFile = self.logFile, self._openLogFile(self.logPath)
            previous.close()

    def buildProtocol(self, addr: IAddress | None) -> _Tracked:
        return _Tracked(super().buildProtocol(addr), self)

    def closeConnections(self) -> Deferred[None]:
        """
        Close every client connection once what was written to it is sent.

        Before this, the reactor's own shutdown would drop them at once,
        with the end of the last responses still in their buffers.

        @return: fires once they are all closed.
        """
        for connection in list(self._connections):
            connection.transport.loseConnection()
        return self._allClosed.wait(not self._connections)

    def _opened(self, connection: _Tracked) -> None:
        self._connections.add(connection)

    def _lost(self, connection: _Tracked) -> None:
        self._connections.discard(connection)
        if not self._connections:
            self._allClosed.fire()


class _Tracked(proxyForInterface(IProtocol, "_protocol")):  # type: ignore[misc]
    """A client connection that its site knows of while it is open."""

    transport: ITransport

    def __init__(self, protocol: IProtocol, site: _Site) -> None:
        super().__init__(protocol)
        self._site = site

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        self._site._opened(self)
        self._protocol.makeConnection(transport)

    def connectionLost(self, reason: Failure) -> None:
        try:
            self._protocol.connectionLost(reason)
        finally:
            self._site._lost(self)


class _StandardOutput:
    """
    File descriptor 1, written a whole line at a time. Not C{sys.stdout}:
    twist redirects that into its log, which would wrap each line in an event.
    """

    def write(self, line: str) -> None:
        os.write(1, line.encode("utf-8"))

    def close(self) -> None:
        """Standard output is not ours to close."""


def _adopt(
    reactor: IReactorSocket, descriptor: int, family: int, site: Site
) -> Deferred[IListeningPort]:
    port = reactor.adoptStreamPort(
        descriptor,
        socket.AddressFamily(family),
        site,  # type: ignore[arg-type]
    )
    return succeed(port)


class _Listeners:
    """The listening ports of a process: open them all, close them all."""

    def __init__(self, listeners: Sequence[Callable[[Site], Deferred[IListeningPort]]]) -> None:
        self._listeners = listeners
        self.ports: list[IListeningPort] = []

    async def listen(self, site: Site) -> None:
        for listen in self._listeners:
            self.ports.append(await listen(site))

    def stopListening(self) -> Deferred[None]:
        return gatherResults(
            [maybeDeferred(port.stopListening) for port in self.ports]
        ).addCallback(lambda _: None)
