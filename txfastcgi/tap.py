"""
C{twist fastcgi-proxy}: options and the service they describe.

The same L{makeService} builds the service for a C{.tac} file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, cast

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.server import Site

from txfastcgi.phpfpm import PHPFPMNotFound, PHPFPMService, findPHPFPM
from txfastcgi.pool import ConnectionPool
from txfastcgi.resource import FastCGIResource

__all__ = ["Options", "makeService"]

SPAWN = "spawn"


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
        ["access-log", None, "-", "Access log file in combined format; - for stdout."],
        ["spawn-children", None, 4, "Workers of the php-fpm started by --php-fpm spawn.", _count],
        ["max-connections", None, 8, "Most FastCGI connections open to one backend.", _count],
        ["connect-timeout", None, 5.0, "Seconds to connect to the backend (then 502).", _seconds],
        ["read-timeout", None, 60.0, "Seconds to wait for backend output (then 504).", _seconds],
        ["idle-timeout", None, 5.0, "Seconds a kept FastCGI connection may stay idle.", _seconds],
        ["queue-timeout", None, 30.0, "Seconds to wait for a connection (then 503).", _seconds],
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
        self["php-fpm"] = []
        self["listen"] = []
        self["param"] = {}

    def opt_php_fpm(self, description: str) -> None:
        """
        FastCGI server endpoint (unix:/run/php/php8.2-fpm.sock, tcp:127.0.0.1:9000),
        or "spawn" to start a private php-fpm. [default: unix:/run/php/php-fpm.sock]
        """
        if description != SPAWN:
            _checkEndpoint(endpoints.clientFromString, description, "--php-fpm")
        self["php-fpm"].append(description)

    def opt_listen(self, description: str) -> None:
        """Server endpoint to listen on, repeatable (tcp:8080, ssl:8443:...). [default: tcp:8080]"""
        _checkEndpoint(endpoints.serverFromString, description, "--listen")
        self["listen"].append(description)

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
        if len(self["php-fpm"]) > 1:
            raise usage.UsageError("only one --php-fpm backend is supported so far")
        if self["php-fpm"] == [SPAWN]:
            try:
                self["php-fpm-binary"] = findPHPFPM()
            except PHPFPMNotFound as e:
                raise usage.UsageError(str(e)) from None
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]
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
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(f"{option} {description!r} is not a valid endpoint: {e}") from None


def makeService(options: Options) -> IService:
    """The proxy: a php-fpm to spawn if asked, the resource, and its listeners."""
    from twisted.internet import reactor as globalReactor

    reactor = cast(IReactorTime, globalReactor)
    # Stopped last to first: stop listening, let requests in progress finish,
    # and only then stop a spawned php-fpm.
    service = _StopInReverseOrder()
    (backend,) = options["php-fpm"]
    phpFPM = None
    if backend == SPAWN:
        phpFPM = PHPFPMService(
            options["path"],
            children=options["spawn-children"],
            binary=options["php-fpm-binary"],
        )
        phpFPM.setServiceParent(service)
        backend = phpFPM.endpointDescription
    pool = ConnectionPool(
        reactor,
        endpoints.clientFromString(reactor, backend),
        maxConnections=options["max-connections"],
        connectTimeout=options["connect-timeout"],
        readTimeout=options["read-timeout"],
        idleTimeout=options["idle-timeout"],
        queueTimeout=options["queue-timeout"],
    )
    resource = FastCGIResource(
        pool,
        options["path"],
        index=options["index"],
        frontController=options["front-controller"],
        params=options["param"],
        https=options["https"],
    )
    accessLog = options["access-log"]
    site = Site(resource, logPath="/dev/stdout" if accessLog == "-" else accessLog)
    _Drain(resource, reactor, options["shutdown-timeout"]).setServiceParent(service)
    listeners = MultiService() if phpFPM is None else _StartAfter(phpFPM.whenListening)
    listeners.setServiceParent(service)
    for description in options["listen"]:
        strports.service(description, site).setServiceParent(listeners)
    return service


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
    longer than C{timeout} seconds.
    """

    log = Logger()

    def __init__(self, resource: FastCGIResource, clock: IReactorTime, timeout: float) -> None:
        self._resource = resource
        self._clock = clock
        self._timeout = timeout

    def stopService(self) -> Deferred[None]:
        super().stopService()
        idle = self._resource.whenIdle()
        idle.addTimeout(self._timeout, self._clock)
        idle.addErrback(self._timedOut)
        return idle

    def _timedOut(self, reason: Failure) -> None:
        reason.trap(TimeoutError)
        self.log.warn(
            "shutting down with requests still in progress after {timeout} s",
            timeout=self._timeout,
        )


class _StartAfter(MultiService):
    """
    Services that start once something is ready: the listeners wait for a
    spawned php-fpm, so that the first requests are not answered with 502.
    If it never gets ready they start anyway, and requests get a 502 that the
    log explains.
    """

    log = Logger()

    def __init__(self, ready: Callable[[], Deferred[None]]) -> None:
        super().__init__()
        self._ready = ready
        self._waiting: Deferred[None] | None = None

    def startService(self) -> None:
        self._waiting = self._ready()
        self._waiting.addCallbacks(self._startChildren, self._notReady)

    def _startChildren(self, ignored: object = None) -> None:
        super().startService()

    def _notReady(self, reason: Failure) -> None:
        if not reason.check(CancelledError):
            self.log.failure("starting to listen although php-fpm is not ready", reason)
            self._startChildren()

    def stopService(self) -> Deferred[None]:
        if self._waiting is not None and not self._waiting.called:
            self._waiting.cancel()
        if not self.running:
            return succeed(None)
        stopped: Deferred[None] = super().stopService()
        return stopped
