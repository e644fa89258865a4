"""
C{twist fastcgi-proxy}: options and the service they describe.

The same L{makeService} builds the service for a C{.tac} file.  The service
is a L{txfastcgi.lifecycle.Lifecycle}: the order in which its parts start
and stop is written down there.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, cast

import twisted
from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, TimeoutError, gatherResults, maybeDeferred, succeed
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorSocket,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger, textFileLogObserver
from twisted.python import usage
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from txfastcgi._emptied import Emptied
from txfastcgi._units import parseDuration, parseSize
from txfastcgi._version import __version__
from txfastcgi.accesslog import ACCESS_LOG_FORMATS, AccessLog
from txfastcgi.alpn import ByALPN
from txfastcgi.balancer import Balancer
from txfastcgi.errors import PHPFPMNotFound
from txfastcgi.forwarded import Networks
from txfastcgi.http1 import HTTP1Factory, StaticFiles
from txfastcgi.lifecycle import Lifecycle, Step, onLogRotation
from txfastcgi.limits import DEFAULT_MAX_BODY_SIZE
from txfastcgi.phpfpm import PHPFPMService, findPHPFPM
from txfastcgi.pool import ConnectionPool
from txfastcgi.resource import FastCGIResource
from txfastcgi.served import Served
from txfastcgi.status import (
    OperatorPage,
    PagesBeforeProxy,
    StatisticsSource,
    StatusResource,
    WithPages,
)
from txfastcgi.web import FastCGISite

if TYPE_CHECKING:
    from txfastcgi.metrics import Metrics
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


def _parameter(
    name: str, default: object, doc: str, parse: Callable[[str], float], minimum: float
) -> list[object]:
    """
    An C{optParameters} row whose value C{parse} reads, no smaller than
    C{minimum}; a value it refuses is named with its option in the error.
    """

    def coerce(value: str) -> float:
        try:
            number = parse(value)
        except ValueError as e:
            raise usage.UsageError(f"--{name}: {e}") from None
        if number < minimum:
            raise usage.UsageError(f"--{name}: {value!r} is below {minimum:g}")
        return number

    return [name, None, default, doc, coerce]


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def _count(name: str, default: object, doc: str) -> list[object]:
    return _parameter(name, default, doc, _integer, 1)


def _seconds(name: str, default: float, doc: str) -> list[object]:
    return _parameter(name, default, f"{doc} Seconds, or 500ms, 30s, 2m.", parseDuration, 0.001)


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
        ["path", None, None, "Document root: static files and scripts. [default: .]"],
        ["index", None, "index.php", "Directory index script."],
        ["front-controller", None, "/index.php", "Where paths that name no file go."],
        [
            "access-log",
            None,
            None,
            "Access log file; - for standard output, /dev/null for none."
            " [default: the event log, as txfastcgi.access events]",
        ],
        [
            "access-log-format",
            None,
            "combined",
            "Access line format: combined, or json (with request and upstream time, backend).",
        ],
        ["status-path", None, None, "URL path of a JSON status page of the backends (off)."],
        ["metrics-path", None, None, "URL path of a Prometheus metrics page (off)."],
        _count("spawn-children", 4, "Workers of the php-fpm started by --php-fpm spawn."),
        _count(
            "max-connections",
            None,
            "Most FastCGI connections open to one backend"
            f" [default: {EXTERNAL_CONNECTIONS}; with spawn, --spawn-children].",
        ),
        _seconds("connect-timeout", 5.0, "Time to connect to the backend (then 502)."),
        _seconds("read-timeout", 60.0, "Time to wait for backend output (then 504)."),
        _seconds("idle-timeout", 5.0, "Time a kept FastCGI connection may stay idle."),
        _seconds("queue-timeout", 30.0, "Time to wait for a connection (then 503)."),
        _count("workers", 1, "Processes sharing the listening sockets."),
        _parameter(
            "max-body-size",
            DEFAULT_MAX_BODY_SIZE,
            "Largest request body, in bytes or with K, M, G (powers of 1024);"
            " larger ones get 413 without reaching PHP.",
            parseSize,
            1,
        ),
        _seconds(
            "header-timeout",
            60.0,
            "Time a client may take to send a whole request head (then 408).",
        ),
        _seconds(
            "body-timeout", 60.0, "Time a client may pause while sending a request body (then 408)."
        ),
        _seconds(
            "shutdown-timeout",
            30.0,
            "On SIGTERM, time to let requests in progress finish and their connections close.",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        # The opt_* docstrings are wrapped source lines; --help wraps them itself.
        self.docs = {name: " ".join(doc.split()) for name, doc in self.docs.items() if doc}
        self["php-fpm"] = []
        self["listen"] = []
        self["param"] = {}
        self["trusted-proxy"] = []
        self["status-allow"] = []

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
        self["trusted-proxy"].append(_network("--trusted-proxy", network))

    def opt_status_allow(self, network: str) -> None:
        """
        Address or network (10.0.0.0/8) of clients that may read the status and
        metrics pages besides this machine's loopback, repeatable; they see no
        socket paths.
        """
        self["status-allow"].append(_network("--status-allow", network))

    def opt_param(self, assignment: str) -> None:
        """Extra FastCGI param NAME=VALUE, repeatable; wins over anything a client sends."""
        name, equals, value = assignment.partition("=")
        if not equals or not name:
            raise usage.UsageError(f"--param wants NAME=VALUE, not {assignment!r}")
        self["param"][name] = value

    def opt_version(self) -> NoReturn:
        """Print txfastcgi's version (and Twisted's and Python's) and exit."""
        print(versionLine())
        raise SystemExit(0)

    def postOptions(self) -> None:
        self["path-defaulted"] = self["path"] is None
        if self["path-defaulted"]:
            self["path"] = os.curdir
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
        for page in ("status-path", "metrics-path"):
            if self[page] is not None and not self[page].startswith("/"):
                raise usage.UsageError(f"--{page} {self[page]!r} must start with /")
        if self["metrics-path"] is not None and self["metrics-path"] == self["status-path"]:
            raise usage.UsageError("--metrics-path and --status-path must be different paths")
        if self["no-front-controller"]:
            self["front-controller"] = None
        if self["access-log-format"] not in ACCESS_LOG_FORMATS:
            raise usage.UsageError(
                f"--access-log-format {self['access-log-format']!r} is not one of"
                f" {', '.join(ACCESS_LOG_FORMATS)}"
            )

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, or exit with status 2 and one line that says what is wrong."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            _exitWithUsageError(str(e))


def versionLine() -> str:
    """C{txfastcgi X.Y.Z (Twisted A.B.C, Python D.E.F)}: what a bug report needs."""
    return (
        f"txfastcgi {__version__} (Twisted {twisted.__version__},"
        f" Python {platform.python_version()})"
    )


def _network(option: str, network: str) -> str:
    """C{network}, if it is an address or a network, for C{option}."""
    try:
        Networks([network])
    except ValueError:
        raise usage.UsageError(f"{option}: {network!r} is not an address or network") from None
    return network


def _exitWithUsageError(message: str) -> NoReturn:
    sys.stderr.write(f"twist fastcgi-proxy: error: {message}\n")
    raise SystemExit(2)


def _checkEndpoint(parse: Callable[[object, str], object], description: str, option: str) -> None:
    """
    Fail now, not at start-up, on an endpoint string that does not parse.
    The reactor is not chosen yet while options are parsed, so the check
    builds the endpoint for a stand-in that is never used.
    """
    kind = description.removeprefix("haproxy:").partition(":")
    if kind[0] == "unix" and not kind[2]:
        problem = "a unix endpoint needs a socket path, like unix:/run/txfastcgi.sock"
    else:
        try:
            endpoint = parse(MemoryReactor(), description)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError) as e:
            problem = _explain(kind[0], e)
        else:
            if not isinstance(endpoint, endpoints.AdoptedStreamServerEndpoint) or _listening(
                endpoint
            ):
                return
            problem = (
                "systemd passed a connection, not a listening socket:"
                " the .socket unit needs Accept=no (systemd-socket-activate: no --accept)"
            )
    raise usage.UsageError(f"{option} {description!r} is not a valid endpoint: {problem}")


def _listening(endpoint: endpoints.AdoptedStreamServerEndpoint) -> bool:
    """
    Whether the socket systemd passed listens: with C{Accept=yes} it passes
    one accepted connection instead, on which the reactor's accept would
    fail in a loop.
    """
    with socket.fromfd(endpoint.fileno, endpoint.addressFamily, socket.SOCK_STREAM) as adopted:
        return bool(adopted.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def _explain(kind: str, error: Exception) -> str:
    """
    What Twisted's endpoint parsers mean by C{error}, in the words of
    someone who wrote the endpoint string rather than of its parser's code.
    """
    if kind == "systemd" and isinstance(error, (IndexError, KeyError)):
        return (
            "this process was given no such socket by systemd socket activation"
            " (LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID; under systemd-socket-activate,"
            " give --fdname)"
        )
    if kind == "systemd" and isinstance(error, AttributeError):
        return "its domain must be INET, INET6 or UNIX"
    if isinstance(error, OSError) and error.filename is not None:
        hint = " (give privateKey=KEY.pem and certKey=CERT.pem)" if kind == "ssl" else ""
        return f"{error.strerror}: {error.filename}{hint}"
    message = str(error)
    number = re.fullmatch(r"invalid literal for int\(\) with base 10: (.*)", message)
    if number:
        return f"{number.group(1)} is not a number"
    missing = re.search(r"missing \d+ required positional arguments?: (.*)", message)
    if missing:
        return f"{missing.group(1)} is missing".replace("'", "")
    return message


def makeService(options: Options) -> IService:
    """
    The proxy: a php-fpm to spawn if asked, the fronts (see L{_Front}), its
    listeners and, with C{--workers}, the worker processes that share them.
    """
    from twisted.internet import reactor

    # Imported here: it imports procmon, which installs the global reactor.
    from txfastcgi.workers import WorkerProcesses

    _preferTextEvents(options)

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
        [(endpoints.serverFromString(reactor, d).listen, _isTLS(d)) for d in options["listen"]]
    )
    workers = None
    if options["workers"] > 1:
        exited = None
        if options["status-path"] is not None or options["metrics-path"] is not None:
            from txfastcgi.metrics import forgetProcess

            # Where every process writes its metrics, for the pages of each
            # to show them all: private (0700), removed at shutdown.
            served["metrics-directory"] = tempfile.mkdtemp(prefix="txfastcgi-metrics-")
            exited = partial(forgetProcess, served["metrics-directory"])
        workers = WorkerProcesses(
            reactor, served, options["workers"] - 1, options["shutdown-timeout"], exited
        )
    return _lifecycle(
        cast(IReactorTime, reactor),
        served,
        listeners,
        phpFPM,
        workers,
        announce=True,
        reopenEventLog=_twistLogFileReopener(options),
    )


def _preferTextEvents(options: Options, argv: Sequence[str] = sys.argv) -> None:
    """
    Under C{twist}, log events as text lines, not JSON, when standard output
    is no terminal (the journal, a file), unless C{--log-format} says
    otherwise: twist's own default would put JSON events and text access
    lines in one stream. twist reads its choice after this runs, and keeps
    no note of whether it was asked for, so the command line tells.
    """
    from twisted.application.twist._options import TwistOptions

    parent = getattr(options, "parent", None)
    if isinstance(parent, TwistOptions) and not any(
        argument.startswith("--log-format") for argument in argv
    ):
        parent["fileLogObserverFactory"] = textFileLogObserver


def _twistLogFileReopener(options: Options) -> Callable[[], None] | None:
    """
    Under C{twist --log-file F}: how to open F again under its name, once
    logrotate has renamed it. twist's log observer keeps the file object it
    was given, so the new file takes the old one's descriptor, and the
    observer writes to it from then on.
    """
    parent = getattr(options, "parent", None)
    logFile = parent.get("logFile") if isinstance(parent, usage.Options) else None
    if logFile is None or logFile in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        return None
    name = getattr(logFile, "name", None)
    if not isinstance(name, str):
        return None

    def reopen() -> None:
        logFile.flush()
        fresh = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        os.dup2(fresh, logFile.fileno())
        os.close(fresh)

    return reopen


def makeWorkerService(options: Mapping[str, Any], inherited: Sequence[tuple[int, int]]) -> IService:
    """
    The service of a worker process started by C{--workers}: the same
    fronts on listening sockets inherited from the main process.

    @param options: the main process's, as L{makeService} serves them.
    @param inherited: file descriptor and address family of each socket.
    """
    from twisted.internet import reactor

    # Plain sockets only: see _SHAREABLE.
    adopters = [
        (partial(_adopt, cast(IReactorSocket, reactor), descriptor, family), False)
        for descriptor, family in inherited
    ]
    return _lifecycle(cast(IReactorTime, reactor), options, _Listeners(adopters))


def _lifecycle(
    reactor: IReactorTime,
    options: Mapping[str, Any],
    listeners: _Listeners,
    phpFPM: PHPFPMService | None = None,
    workers: WorkerProcesses | None = None,
    announce: bool = False,
    reopenEventLog: Callable[[], None] | None = None,
) -> Lifecycle:
    """
    The steps of one process's life, in the order that
    L{txfastcgi.lifecycle} documents, without those it has nothing for.

    @param announce: log what is served once it listens (the main process).
    @param reopenEventLog: opens the event log's file again, on SIGHUP or
        SIGUSR1, if it is a file.
    """
    front = _Front(options, reactor, phpFPM)
    metrics = front.metrics

    def reopenLogs() -> None:
        if reopenEventLog is not None:
            reopenEventLog()
        front.accessLog.reopen()
        if workers is not None:
            workers.signal("HUP")

    spawning = [] if phpFPM is None else [phpFPM]
    supervising = [] if workers is None else [workers]
    # Metrics that other processes read: written every second.
    sharing = [] if metrics is None or options.get("metrics-directory") is None else [metrics]
    startup = [
        *(Step("start php-fpm", p.startService) for p in spawning),
        *(Step("wait for php-fpm", p.whenListening) for p in spawning),
        Step("listen", partial(listeners.listen, front), fatal=True),
        *(
            [Step("announce", partial(_announce, reactor, options, listeners.ports))]
            if announce
            else []
        ),
        *(Step("write metrics for the other processes", m.start) for m in sharing),
        *(Step("start workers", partial(w.start, listeners.ports)) for w in supervising),
        Step("reopen logs on SIGHUP or SIGUSR1", partial(onLogRotation, reactor, reopenLogs)),
    ]

    def stopListening() -> Deferred[None]:
        front.keepNoConnections()
        return listeners.stopListening()

    shutdown = [
        Step("stop listening", stopListening),
        *(Step("stop workers", w.stop) for w in supervising),
        Step("finish requests", front.proxy.whenIdle, bounded=True),
        *(Step("wait for workers", w.whenStopped, bounded=True) for w in supervising),
        Step("close connections", front.closeConnections, bounded=True),
        *(Step("stop php-fpm", p.stopService) for p in spawning),
        *(Step("stop writing metrics", m.stop) for m in sharing),
        *(
            Step("remove the metrics directory", partial(shutil.rmtree, directory, True))
            for directory in [options.get("metrics-directory")]
            if directory is not None and workers is not None
        ),
    ]
    return Lifecycle(reactor, startup, shutdown, options["shutdown-timeout"])


_log = Logger(namespace="txfastcgi")


def _announce(
    reactor: IReactorTime, options: Mapping[str, Any], ports: Sequence[IListeningPort]
) -> None:
    """
    Log one line that says what this proxy serves, and one warning for each
    thing in it that will not work as the operator probably thinks; those
    about tcp backends follow once a connect to each has been tried, without
    holding up the start-up.
    """
    urls = [_url(d, p.getHost()) for d, p in zip(options["listen"], ports)]
    _log.info(
        "{version} serving {root} on {urls} with PHP from {backends}",
        version=versionLine(),
        root=options["path"],
        urls=", ".join(urls),
        backends=", ".join(options["php-fpm"]),
    )
    if options.get("path-defaulted"):
        _log.warn("serving the current directory {root}: no --path was given", root=options["path"])
    frontController = options["front-controller"]
    if frontController is not None:
        script = frontController.partition("?")[0].lstrip("/")
        if not os.path.isfile(os.path.join(options["path"], script)):
            _log.warn(
                "--front-controller {url}: there is no {script} in {root}",
                url=frontController,
                script=script,
                root=options["path"],
            )
    for backend in options["php-fpm"]:
        if backend.partition(":")[0] == "tcp":
            _tcpBackendProblem(reactor, backend).addCallback(partial(_warnOfBackend, backend))
        else:
            _warnOfBackend(backend, _unixBackendProblem(backend))


def _warnOfBackend(backend: str, problem: str | None) -> None:
    if problem is not None:
        _log.warn("PHP backend {backend}: {problem}", backend=backend, problem=problem)


# Seconds a start-up connect to a tcp backend may take: a php-fpm on the
# network answers in milliseconds; this only bounds one that drops packets.
_PROBE_TIMEOUT = 2.0


if TYPE_CHECKING:
    _ProbeFactory = Factory[Protocol]
else:  # Twisted 25.5, the last with TLS on Python 3.9 (PyPy), cannot subscript its factories.
    _ProbeFactory = Factory


class _Probe(_ProbeFactory):
    """A connection that says nothing: whether a tcp backend accepts one."""

    noisy = False
    protocol = Protocol


def _tcpBackendProblem(reactor: IReactorTime, description: str) -> Deferred[str | None]:
    """
    Why tcp backend C{description} cannot be connected to, as the
    unix backends' problems say it, if it cannot; L{None} if it can.
    """
    endpoint = endpoints.clientFromString(reactor, description)
    connecting = endpoint.connect(_Probe())
    connecting.addTimeout(_PROBE_TIMEOUT, reactor)

    def connected(protocol: Protocol) -> None:
        assert protocol.transport is not None
        protocol.transport.loseConnection()

    def failed(reason: Failure) -> str:
        error = reason.value
        if isinstance(error, TimeoutError):
            problem = f"no answer within {_PROBE_TIMEOUT:g} s"
        elif isinstance(error, ConnectError) and isinstance(error.osError, int):
            problem = os.strerror(error.osError)
        else:
            problem = reason.getErrorMessage()
        return f"cannot connect: {problem} (is php-fpm running?)"

    probed: Deferred[str | None] = connecting.addCallbacks(connected, failed)
    return probed


def _unixBackendProblem(description: str) -> str | None:
    """
    Why the unix socket of backend C{description} cannot be connected to
    now, if it cannot; C{None} for a socket that accepts and for other kinds.
    """
    kind, _, rest = description.partition(":")
    if kind != "unix":
        return None
    path = rest.split(":")[0].removeprefix("path=")
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError as e:
            return f"cannot connect to {path}: {e.strerror} (is php-fpm running?)"
    return None


def _url(description: str, address: IAddress) -> str:
    """Where clients reach a listener of C{description} at C{address}."""
    if isinstance(address, UNIXAddress):
        return f"unix:{os.fsdecode(address.name or b'')}"
    assert isinstance(address, (IPv4Address, IPv6Address))
    wrapped = description.removeprefix("haproxy:")
    scheme = "https" if wrapped.partition(":")[0] in ("ssl", "tls") else "http"
    host = f"[{address.host}]" if isinstance(address, IPv6Address) else address.host
    proxied = " (PROXY protocol)" if wrapped != description else ""
    return f"{scheme}://{host}:{address.port}/{proxied}"


class _Front:
    """
    What every listener of one process serves, over one core (one
    L{txfastcgi.proxy.Proxy}, over a balancer of the backends, with one
    backend too, which then notices a restart of php-fpm at once): the
    dedicated HTTP/1.1 front (L{txfastcgi.http1}) on every listener, and on
    TLS listeners twisted.web's site for the clients that negotiate HTTP/2
    (L{txfastcgi.alpn}); the status and metrics pages if asked for, and the
    access log.

    With C{--workers} and either page, the metrics are kept where every
    process reads them (C{metrics-directory}, which L{makeService} adds to
    the options), and the status page shows them; otherwise the status page
    reads this process's balancer, and metrics, only with C{--metrics-path},
    cost nothing.

    @param phpFPM: the php-fpm this process spawned, if any, whose restarts
        are counted.
    """

    def __init__(
        self,
        options: Mapping[str, Any],
        reactor: IReactorTime,
        phpFPM: PHPFPMService | None = None,
    ) -> None:
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
        self.balancer = Balancer(reactor, pools)
        resource = FastCGIResource(
            self.balancer,
            options["path"],
            index=options["index"],
            frontController=options["front-controller"],
            params=options["param"],
            https=options["https"],
            trustedProxies=options["trusted-proxy"],
            reactor=reactor,
        )
        self.proxy = resource.proxy
        pages: dict[bytes, OperatorPage] = {}
        allowed = options["status-allow"]
        status: StatisticsSource = self.balancer
        self.metrics: Metrics | None = None
        self.accessLog = AccessLog(options["access-log"], options["access-log-format"])
        observers: list[Callable[[Served], object]] = [self.accessLog]
        directory = options.get("metrics-directory")
        if options["metrics-path"] is not None or directory is not None:
            from txfastcgi.metrics import Metrics, MetricsResource, shareAcrossProcesses

            if directory is not None:
                shareAcrossProcesses(directory)
            self.metrics = Metrics(self.balancer, reactor, phpFPM, directory)
            if directory is not None:
                status = self.metrics
            if options["metrics-path"] is not None:
                pages[options["metrics-path"].encode()] = MetricsResource(self.metrics, allowed)
                observers.append(self.metrics)
        if options["status-path"] is not None:
            pages[options["status-path"].encode()] = StatusResource(status, allowed)
        self.http1 = HTTP1Factory(
            PagesBeforeProxy(self.proxy, pages) if pages else self.proxy,
            serveStaticFile=StaticFiles(),
            maxBodySize=options["max-body-size"],
            headerTimeout=options["header-timeout"],
            bodyTimeout=options["body-timeout"],
            observers=observers,
            reactor=reactor,
        )
        self.site = _Site(
            WithPages(resource, pages) if pages else resource, options, observers, reactor
        )
        self._tls = ByALPN(self.http1, self.site)

    def factory(self, tls: bool) -> IProtocolFactory:
        """What serves a listener, a TLS one if C{tls}."""
        return self._tls if tls else self.http1

    def keepNoConnections(self) -> None:
        """
        Shutting down: close kept HTTP/1.1 connections idle now, and the
        others once their request is answered (with C{Connection: close}),
        as nginx does, while requests finish.
        """
        self.http1.keepNoConnections()

    def closeConnections(self) -> Deferred[None]:
        """
        Close every client connection once what was written to it is sent,
        and the idle FastCGI connections; then the access log.

        Before this, the reactor's own shutdown would drop them at once,
        with the end of the last responses still in their buffers.
        """
        self.balancer.close()
        closing = gatherResults([self.http1.closeConnections(), self.site.closeConnections()])
        return closing.addCallback(lambda _: self.accessLog.close())


class _Site(FastCGISite):
    """
    The twisted.web site of a process's HTTP/2 connections, over the same
    core as its HTTP/1.1 front, and the connections, as the lifecycle
    closes them.

    It is never started as a listener's factory (L{txfastcgi.alpn.ByALPN}
    only builds its protocols): the access log among its observers is the
    lifecycle's to open and close.
    """

    noisy = False

    def logPrefix(self) -> str:
        return "txfastcgi"

    def __init__(
        self,
        resource: IResource,
        options: Mapping[str, Any],
        observers: Sequence[Callable[[Served], object]],
        reactor: IReactorTime,
    ) -> None:
        self._connections: set[_Tracked] = set()
        self._allClosed = Emptied()
        super().__init__(
            resource,
            maxBodySize=options["max-body-size"],
            headerTimeout=options["header-timeout"],
            bodyTimeout=options["body-timeout"],
            observers=observers,
            reactor=reactor,
        )

    def buildProtocol(self, addr: IAddress | None) -> _Tracked:
        return _Tracked(super().buildProtocol(addr), self)

    def closeConnections(self) -> Deferred[None]:
        """
        Close every client connection once what was written to it is sent.

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


def _adopt(
    reactor: IReactorSocket, descriptor: int, family: int, factory: IProtocolFactory
) -> Deferred[IListeningPort]:
    port = reactor.adoptStreamPort(
        descriptor,
        socket.AddressFamily(family),
        factory,  # type: ignore[arg-type]
    )
    return succeed(port)


_Listen = Callable[[IProtocolFactory], Deferred[IListeningPort]]


class _Listeners:
    """
    The listening ports of a process: open them all, close them all.

    @param listeners: how to listen on each, and whether it is a TLS one.
    """

    def __init__(self, listeners: Sequence[tuple[_Listen, bool]]) -> None:
        self._listeners = listeners
        self.ports: list[IListeningPort] = []

    async def listen(self, front: _Front) -> None:
        """Open the access log, and listen with the factory C{front} has for each."""
        front.accessLog.open()
        for listen, tls in self._listeners:
            self.ports.append(await listen(front.factory(tls)))

    def stopListening(self) -> Deferred[None]:
        return gatherResults(
            [maybeDeferred(port.stopListening) for port in self.ports]
        ).addCallback(lambda _: None)


def _isTLS(description: str) -> bool:
    """Whether a --listen endpoint string is a TLS one (ssl: or tls:, behind haproxy: too)."""
    return description.removeprefix("haproxy:").partition(":")[0] in ("ssl", "tls")
