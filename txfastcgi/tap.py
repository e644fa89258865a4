"""
C{twist fastcgi-proxy}: options and the service they describe.

The same L{makeService} builds the service for a C{.tac} file.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, NoReturn, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import (
    IListeningPort,
    IProcessTransport,
    IReactorProcess,
    IReactorSocket,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Site

from txfastcgi.balancer import Balancer
from txfastcgi.forwarded import TrustedProxies
from txfastcgi.phpfpm import PHPFPMNotFound, PHPFPMService, findPHPFPM
from txfastcgi.pool import ConnectionPool
from txfastcgi.resource import FastCGIResource
from txfastcgi.status import StatusResource, WithStatusPage
from txfastcgi.web import DEFAULT_MAX_BODY_SIZE, FastCGISite

__all__ = ["Options", "makeService"]

SPAWN = "spawn"

# How the main process hands its parsed options to worker processes.
WORKER_OPTIONS_VARIABLE = "TXFASTCGI_WORKER_OPTIONS"

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
        ["max-connections", None, 8, "Most FastCGI connections open to one backend.", _count],
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
            "shutdown-timeout",
            None,
            30.0,
            "On SIGTERM, seconds to let requests in progress finish.",
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
    The proxy: a php-fpm to spawn if asked, the resource, its listeners and,
    with C{--workers}, the worker processes that share them.
    """
    from twisted.internet import reactor as globalReactor

    reactor = cast(IReactorTime, globalReactor)
    # Stopped last to first: stop the workers and listening, let requests in
    # progress finish, and only then stop a spawned php-fpm.
    service = _StopInReverseOrder()
    backends = list(options["php-fpm"])
    ready = None
    if SPAWN in backends:
        phpFPM = PHPFPMService(
            options["path"],
            children=options["spawn-children"],
            binary=options["php-fpm-binary"],
        )
        phpFPM.setServiceParent(service)
        backends[backends.index(SPAWN)] = phpFPM.endpointDescription
        ready = phpFPM.whenListening
    site = _site(service, options, reactor, backends)
    listeners = _Listeners(
        [endpoints.serverFromString(reactor, d).listen for d in options["listen"]], site, ready
    )
    listeners.setServiceParent(service)
    if options["workers"] > 1:
        workerOptions = {**options, "php-fpm": backends}
        _WorkerProcesses(
            reactor, listeners.whenListening, workerOptions, options["workers"] - 1
        ).setServiceParent(service)
    return service


def makeWorkerService(options: Mapping[str, Any], inherited: Sequence[tuple[int, int]]) -> IService:
    """
    The service of a worker process started by C{--workers}: the same site
    on listening sockets inherited from the main process.

    @param inherited: file descriptor and address family of each socket.
    """
    from twisted.internet import reactor as globalReactor

    reactor = cast(IReactorTime, globalReactor)
    service = _StopInReverseOrder()
    site = _site(service, options, reactor, options["php-fpm"])
    adopters = [partial(_adopt, reactor, descriptor, family) for descriptor, family in inherited]
    _Listeners(adopters, site).setServiceParent(service)
    return service


def _site(
    service: MultiService,
    options: Mapping[str, Any],
    reactor: IReactorTime,
    backends: Sequence[str],
) -> Site:
    """
    The web site every process serves: the resource over a balancer of the
    backends (with one backend too, which then notices a restart of php-fpm
    at once), the status page if asked for, and the access log; and, added
    to C{service}, what lets its requests finish on shutdown.
    """
    pools = {
        backend: ConnectionPool(
            reactor,
            endpoints.clientFromString(reactor, backend),
            # The limit is for the backend, so the processes share it.
            maxConnections=max(1, options["max-connections"] // options["workers"]),
            connectTimeout=options["connect-timeout"],
            readTimeout=options["read-timeout"],
            idleTimeout=options["idle-timeout"],
            queueTimeout=options["queue-timeout"],
            name=backend,
        )
        for backend in backends
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
    _Drain(resource, balancer, reactor, options["shutdown-timeout"]).setServiceParent(service)
    return _Site(root, options["access-log"], options["max-body-size"])


class _Site(FastCGISite):
    """
    A Site whose access log C{-} is standard output, shared with the
    process's own log rather than opened again: a second open file would
    write at its own offset, over the lines written through the first. An
    access log to C{/dev/null} is no access log: no line is even formatted.
    """

    def __init__(self, resource: IResource, accessLog: str, maxBodySize: int) -> None:
        self._toStandardOutput = accessLog == "-"
        self._logging = accessLog != os.devnull
        super().__init__(
            resource,
            maxBodySize=maxBodySize,
            logPath=accessLog if self._logging and not self._toStandardOutput else None,
        )

    def startFactory(self) -> None:
        super().startFactory()
        if self._toStandardOutput:
            self.logFile = _StandardOutput()

    def log(self, request: http.Request) -> None:
        if self._logging:
            super().log(request)


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
    reactor: IReactorTime, descriptor: int, family: int, site: Site
) -> Deferred[IListeningPort]:
    port = IReactorSocket(reactor).adoptStreamPort(
        descriptor,
        socket.AddressFamily(family),
        site,  # type: ignore[arg-type]
    )
    return succeed(port)


class _Listeners(Service):
    """
    Listen on each endpoint, once something is ready: a spawned php-fpm, so
    that the first requests are not answered with 502. If it never gets
    ready they listen anyway, and requests get a 502 that the log explains.
    A listener that cannot listen (a port in use) stops the program.
    """

    log = Logger()

    def __init__(
        self,
        listeners: Sequence[Callable[[Site], Deferred[IListeningPort]]],
        site: Site,
        ready: Callable[[], Deferred[None]] | None = None,
    ) -> None:
        self._listeners = listeners
        self._site = site
        self._ready = ready
        self._starting: Deferred[None] | None = None
        self._ports: list[IListeningPort] = []
        self._waiters: list[Deferred[list[IListeningPort]]] = []

    def startService(self) -> None:
        super().startService()
        self._starting = Deferred.fromCoroutine(self._listen())
        self._starting.addErrback(self._cannotListen)

    async def _listen(self) -> None:
        if self._ready is not None:
            try:
                await self._ready()
            except TimeoutError:
                self.log.failure("listening although php-fpm is not ready")
        for listen in self._listeners:
            self._ports.append(await listen(self._site))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self._ports)

    def _cannotListen(self, reason: Failure) -> None:
        if not reason.check(CancelledError):
            from twisted.internet import reactor

            self.log.critical("cannot listen: {message}", message=reason.getErrorMessage())
            reactor.stop()

    def whenListening(self) -> Deferred[list[IListeningPort]]:
        """The listening ports, once they all listen."""
        if self._starting is not None and self._starting.called:
            return succeed(self._ports)
        waiter: Deferred[list[IListeningPort]] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        return DeferredList(
            [maybeDeferred(port.stopListening) for port in self._ports]
        ).addCallback(lambda _: None)


class _WorkerProcesses(Service):
    """
    Worker processes that serve the main process's listening sockets, so
    that one proxy uses every core (the way Twisted's own multi-process
    examples share a port with C{adoptStreamPort}).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        listening: Callable[[], Deferred[list[IListeningPort]]],
        options: Mapping[str, Any],
        count: int,
    ) -> None:
        self._reactor = reactor
        self._listening = listening
        self._options = options
        self._count = count
        self._exited: list[Deferred[None]] = []
        self._processes: list[IProcessTransport] = []

    def startService(self) -> None:
        super().startService()
        self._listening().addCallback(self._spawn)

    def _spawn(self, ports: list[IListeningPort]) -> None:
        inherited = [(port.fileno(), _family(port)) for port in ports]  # type: ignore[attr-defined]
        arguments = [
            sys.executable,
            "-m",
            "txfastcgi.worker",
            *(f"{descriptor}:{family}" for descriptor, family in inherited),
        ]
        # In the environment, not the command line that any user can read:
        # --param values may hold secrets.
        environment = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(sys.path),
            **{WORKER_OPTIONS_VARIABLE: json.dumps(self._options)},
        )
        childFDs: dict[int, int | str] = {0: 0, 1: 1, 2: 2}
        childFDs.update({descriptor: descriptor for descriptor, _ in inherited})
        for number in range(1, self._count + 1):
            exited: Deferred[None] = Deferred()
            process = IReactorProcess(self._reactor).spawnProcess(
                _WorkerProtocol(exited, number),
                sys.executable,
                arguments,
                env=environment,
                childFDs=childFDs,
            )
            self._processes.append(process)
            self._exited.append(exited)

    def stopService(self) -> Deferred[None]:
        """Stop the workers gracefully (each drains its requests) and wait for them."""
        super().stopService()
        for process in self._processes:
            try:
                process.signalProcess("TERM")
            except ProcessExitedAlready:
                pass
        return DeferredList(self._exited).addCallback(lambda _: None)


class _WorkerProtocol(ProcessProtocol):
    """Watches one worker process; its output goes straight to ours."""

    log = Logger()

    def __init__(self, exited: Deferred[None], number: int) -> None:
        self._exited = exited
        self._number = number

    def processEnded(self, reason: Failure) -> None:
        if not reason.check(ProcessDone):
            self.log.error(
                "worker process {number} ended: {reason}",
                number=self._number,
                reason=reason.getErrorMessage(),
            )
        self._exited.callback(None)


def _family(port: IListeningPort) -> int:
    address = port.getHost()
    if isinstance(address, IPv4Address):
        return socket.AF_INET
    if isinstance(address, IPv6Address):
        return socket.AF_INET6
    return socket.AF_UNIX


class _StopInReverseOrder(MultiService):
    """A MultiService that stops each child only once the next one has stopped."""

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stopChildren())

    async def _stopChildren(self) -> None:
        for child in reversed(list(self)):
            await maybeDeferred(child.stopService)


class _Drain(Service):
    """
    On shutdown, wait until the requests in progress are answered, but no
    longer than C{timeout} seconds, then close the idle FastCGI connections,
    which free their php-fpm workers before php-fpm itself is stopped.
    """

    log = Logger()

    def __init__(
        self, resource: FastCGIResource, balancer: Balancer, clock: IReactorTime, timeout: float
    ) -> None:
        self._resource = resource
        self._balancer = balancer
        self._clock = clock
        self._timeout = timeout

    def stopService(self) -> Deferred[None]:
        super().stopService()
        idle = self._resource.whenIdle()
        idle.addTimeout(self._timeout, self._clock)
        idle.addErrback(self._timedOut)
        idle.addCallback(lambda _: self._balancer.close())
        return idle

    def _timedOut(self, reason: Failure) -> None:
        reason.trap(TimeoutError)
        self.log.warn(
            "shutting down with requests still in progress after {timeout} s",
            timeout=self._timeout,
        )
