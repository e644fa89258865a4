"""
Find, configure and supervise a private php-fpm.

C{twist fastcgi-proxy --php-fpm spawn} runs its own php-fpm instead of relying
on a system-wide one: L{PHPFPMService} writes a pool configuration into a
private directory, starts php-fpm on a unix socket there, restarts it when it
dies and stops it with the application.  The test suite starts php-fpm with the
same L{PoolConfiguration}, so the configuration the tests exercise is the one
users run.

Facts about php-fpm (8.2) that shaped this module:

  - Started as root it refuses a pool without C{user} ("user has not been
    defined"), and refuses C{user = root} unless given C{-R}.  Started by
    anyone else it ignores C{user} with a notice.
  - The master binds the listening socket and the workers inherit it, so only
    the proxy ever needs to reach the socket file: the private directory can
    stay C{0700}.  The workers do need to read the document root, hence
    L{workerUser}.
  - The master calls C{setsid()} even when not daemonizing, so it never sees
    the terminal's Ctrl-C: stopping it is the supervisor's job alone.
  - Its workers do not exit when the master does.  php-fpm takes them down on
    SIGTERM or SIGQUIT, but a master killed with SIGKILL leaves them running,
    holding its output pipes open so that the monitor never sees it end.
  - Nothing ends it when its parent dies: a proxy killed with SIGKILL would
    leave it running under PID 1.

So php-fpm runs under L{txfastcgi._server.guardian}, a small process between the
supervisor and the master that kills the master's whole session when the
master dies, when it is told to stop, and when the proxy is gone.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.interfaces import IProcessTransport, IReactorProcess, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from zope.interface import provider

from txfastcgi._server.child import moduleCommand
from txfastcgi.errors import PHPFPMNotFound

if TYPE_CHECKING:
    from twisted.runner.procmon import ProcessMonitor

__all__ = [
    "PHPFPMService",
    "PoolConfiguration",
    "acceptsConnections",
    "findPHPFPM",
    "processArguments",
    "workerUser",
]

# Where distributions put php-fpm, which is usually not on a user's PATH.
_SYSTEM_DIRECTORIES = ("/usr/sbin", "/usr/local/sbin")
_VERSIONED = re.compile(r"php-fpm(\d+)\.(\d+)")

# Name of the supervised process, which prefixes its lines in the log.
_PROCESS_NAME = "php-fpm"

_POLL_INTERVAL = 0.05


def findPHPFPM(searchPath: str | None = None) -> str:
    """
    Find the php-fpm binary to run.

    Distributions install php-fpm as C{php-fpmX.Y} in C{/usr/sbin}, which is
    not on most users' PATH, so those directories are searched after PATH.
    In each directory an unversioned C{php-fpm} (the administrator's chosen
    default, or the official Docker image's binary) is preferred; otherwise
    the highest C{php-fpmX.Y} wins.  The first directory with a match wins,
    as on PATH.

    @param searchPath: A C{os.pathsep}-separated list of directories to search
        instead of PATH and the system directories.

    @return: The absolute path of the binary.

    @raise PHPFPMNotFound: If no directory has one.
    """
    if searchPath is None:
        directories = os.environ.get("PATH", "").split(os.pathsep)
        directories.extend(_SYSTEM_DIRECTORIES)
        where = "on PATH or in " + " or ".join(_SYSTEM_DIRECTORIES)
    else:
        directories = searchPath.split(os.pathsep)
        where = f"in {searchPath!r}"
    for directory in filter(None, directories):
        found = _bestInDirectory(directory)
        if found is not None:
            return os.path.abspath(found)
    raise PHPFPMNotFound(f"php-fpm not found {where} (install Debian's php-fpm package)")


def _bestInDirectory(directory: str) -> str | None:
    """
    The preferred php-fpm executable in C{directory}, if there is one.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    versions: list[tuple[int, int, str]] = []
    for name in names:
        path = os.path.join(directory, name)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        if name == "php-fpm":
            return path
        match = _VERSIONED.fullmatch(name)
        if match is not None:
            versions.append((int(match.group(1)), int(match.group(2)), path))
    return max(versions)[2] if versions else None


def _quoted(value: str) -> str:
    """
    Quote C{value} for php-fpm's ini syntax, where an unquoted C{;} would start
    a comment.

    @raise ValueError: If the value holds what a quoted ini string cannot.
    """
    if any(character in value for character in '"\n\r$'):
        raise ValueError(f"cannot write {value!r} into a php-fpm configuration")
    return f'"{value}"'


@dataclass(frozen=True)
class PoolConfiguration:
    """
    A php-fpm configuration with a single pool, C{txfastcgi}.

    @ivar socketPath: The unix socket the pool listens on.
    @ivar children: How many workers the pool keeps (C{pm = static}): the
        number of requests served at once.
    @ivar runAsUser: The pool's C{user} (its group is that user's primary
        group).  php-fpm requires one when started as root and ignores it
        otherwise; see L{workerUser}.
    @ivar maxRequests: Requests a worker serves before php-fpm replaces it
        (C{pm.max_requests}); 0 never replaces them.
    @ivar errorsToWebServer: Whether PHP also sends its errors to the web
        server as FastCGI STDERR (C{fastcgi.logging}).  A worker always writes
        them to its standard error too, which C{catch_workers_output} copies
        to php-fpm's log: a supervisor that logs php-fpm's log turns this off,
        or each error would be logged twice.
    """

    socketPath: str
    children: int = 4
    runAsUser: str | None = None
    maxRequests: int = 0
    errorsToWebServer: bool = True

    @property
    def endpointDescription(self) -> str:
        """
        The Twisted client endpoint description that connects to the pool.
        """
        return "unix:" + str(quoteStringArgument(self.socketPath))

    def render(self, runDirectory: str) -> str:
        """
        The text of a php-fpm configuration file for this pool.

        The master's pid file goes in C{runDirectory}; its log goes to its
        standard error, where the supervisor logs it.  Worker output is
        passed through undecorated, so that a PHP script's C{php://stderr}
        lines reach the same log as they were written.  PHP's own
        C{error_log} is left unset, so that PHP reports errors to the worker's
        standard error, hence php-fpm's log, and, unless
        L{errorsToWebServer} is off, to the web server as FastCGI STDERR, as
        behind nginx.  Uploads up to 16 MB are
        allowed (PHP's defaults stop at 2 MB) so the demo site's upload page
        takes files of a few megabytes.  C{clear_env} keeps php-fpm's default:
        scripts see only what the web server sends.

        @param runDirectory: A directory only php-fpm's master writes to.
        """
        lines = [
            "; Generated by txfastcgi._server.phpfpm: edits are lost.",
            "[global]",
            f"pid = {_quoted(os.path.join(runDirectory, 'php-fpm.pid'))}",
            # php-fpm opens its log by name; /dev/stderr reopens the pipe or
            # file it was given (a socket, as under systemd, would fail).
            "error_log = /dev/stderr",
            "daemonize = no",
            "",
            "[txfastcgi]",
        ]
        if self.runAsUser is not None:
            lines.append(f"user = {_quoted(self.runAsUser)}")
        lines += [
            f"listen = {_quoted(self.socketPath)}",
            # php-fpm would otherwise give the socket to the pool's user,
            # which the proxy (running as someone else) could not connect to.
            "listen.mode = 0666",
            "pm = static",
            f"pm.max_children = {self.children}",
            f"pm.max_requests = {self.maxRequests}",
            "catch_workers_output = yes",
            "decorate_workers_output = no",
            "php_admin_value[upload_max_filesize] = 16M",
            "php_admin_value[post_max_size] = 16M",
        ]
        if not self.errorsToWebServer:
            lines.append("php_admin_flag[fastcgi.logging] = off")
        lines.append("")
        return "\n".join(lines)


def processArguments(binary: str, configPath: str, allowRoot: bool) -> list[str]:
    """
    The command line that runs php-fpm in the foreground with C{configPath}.

    php.ini is still read, so that the distribution's extensions (session,
    json, ...) and settings apply as in a system php-fpm.

    @param allowRoot: Pass C{-R}, without which php-fpm refuses to run a pool
        whose C{user} is root.
    """
    arguments = [binary, "--nodaemonize", "--fpm-config", configPath]
    if allowRoot:
        arguments.append("--allow-to-run-as-root")
    return arguments


def workerUser(documentRoot: str) -> str | None:
    """
    The user php-fpm's workers should run as to serve C{documentRoot}.

    Only root can choose: php-fpm started by anyone else runs its workers as
    that user.  Root must choose someone, as php-fpm will not run PHP as root
    without being told to: the owner of the document root, who can surely read
    it, unless that is root; then Debian's C{www-data}, else C{nobody}, who
    can read it if it is world-readable; if it is not, root itself (with
    C{-R}), since nobody else could serve it.

    @return: A user name, or L{None} when not running as root.
    """
    if os.geteuid() != 0:
        return None
    owner = os.stat(documentRoot).st_uid
    if owner != 0:
        try:
            return pwd.getpwuid(owner).pw_name
        except KeyError:
            pass  # No name php-fpm could look up: fall back to the usual users.
    if not _othersCanRead(documentRoot):
        # A root-owned site only root can read (a clone under /root, say):
        # any other user would get "Primary script unknown" for every page.
        return "root"
    try:
        return pwd.getpwnam("www-data").pw_name
    except KeyError:
        return "nobody"


def _othersCanRead(directory: str) -> bool:
    """
    Whether a user who is neither owner nor in the group can list
    C{directory} and reach it through its ancestors.
    """
    path = os.path.realpath(directory)
    if os.stat(path).st_mode & 0o005 != 0o005:
        return False
    while path != os.path.dirname(path):
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & 0o001:
            return False
    return True


def acceptsConnections(socketPath: str) -> bool:
    """
    Whether something accepts connections on the unix socket C{socketPath}.

    The socket file alone proves nothing: php-fpm killed with SIGKILL leaves
    it behind.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        # Non-blocking, so a full backlog fails instead of stalling the reactor.
        probe.setblocking(False)
        try:
            probe.connect(socketPath)
        except OSError:
            return False
    return True


class _CountingStarts(proxyForInterface(IReactorTime)):  # type: ignore[misc]
    """
    The reactor, as L{ProcessMonitor} sees it, counting the processes it
    starts: its only sign of a restart (of the guardian, hence of php-fpm)
    that no subclass of it is needed for.
    """

    def __init__(self, reactor: IReactorProcess) -> None:
        super().__init__(reactor)
        self._spawning = reactor
        self.starts = 0

    def spawnProcess(self, *args: Any, **kwargs: Any) -> IProcessTransport:
        self.starts += 1
        return self._spawning.spawnProcess(*args, **kwargs)


@provider(ILogObserver)
def _withoutBlankLines(event: LogEvent) -> None:
    """
    Pass the supervisor's events on to the global log, except php-fpm's
    empty lines, which say nothing: ProcessMonitor relays one each time
    php-fpm exits, and php-fpm writes some of its own.
    """
    line = event.get("line")
    if isinstance(line, str) and not line.strip():
        return
    globalLogPublisher(event)


class PHPFPMService(Service):
    """
    A private php-fpm serving C{documentRoot}, supervised for the lifetime of
    the application.

    The configuration, pid file and socket live in a private temporary
    directory (C{0700}: see the module docstring for why that is enough), made
    when the service is created so that L{endpointDescription} is known before
    it starts, and removed when it stops.  A service is started once.

    php-fpm runs under L{twisted.runner.procmon.ProcessMonitor}, which logs its
    output and restarts it, with backoff if it keeps dying at once, through
    L{txfastcgi._server.guardian}, which ends it with the proxy, however the proxy
    ends, and kills the workers of a master that died.

    @ivar documentRoot: The absolute path of the PHP application.
    @ivar binary: The php-fpm to run.
    @ivar directory: The private directory.
    @ivar configuration: The pool php-fpm runs.
    """

    _log = Logger()

    def __init__(
        self,
        documentRoot: str,
        children: int = 4,
        binary: str | None = None,
        reactor: IReactorProcess | None = None,
    ) -> None:
        """
        @param children: The number of requests php-fpm serves at once.
        @param binary: The php-fpm to run; by default, L{findPHPFPM}'s.
        @param reactor: The reactor to run php-fpm with; by default the global
            one, imported only when needed so that creating the service does
            not install a reactor.

        @raise PHPFPMNotFound: If C{binary} is not given and there is no
            php-fpm, so that the command line fails before anything starts.
        """
        self.documentRoot = os.path.abspath(documentRoot)
        self.binary = findPHPFPM() if binary is None else binary
        self._givenReactor = reactor
        self.directory = tempfile.mkdtemp(prefix="txfastcgi-php-fpm-")
        self.configuration = PoolConfiguration(
            socketPath=os.path.join(self.directory, "php-fpm.sock"),
            children=children,
            runAsUser=workerUser(self.documentRoot),
            # php-fpm's log is relayed to ours, PHP's errors with it.
            errorsToWebServer=False,
        )
        self._monitor: ProcessMonitor | None = None
        self._spawner: _CountingStarts | None = None

    @property
    def restarts(self) -> int:
        """How many times php-fpm was started again after it died."""
        return 0 if self._spawner is None else max(0, self._spawner.starts - 1)

    @property
    def endpointDescription(self) -> str:
        """
        The Twisted client endpoint description that connects to php-fpm.
        """
        return self.configuration.endpointDescription

    def _reactor(self) -> IReactorProcess:
        """
        The reactor given to the constructor, else the global one.
        """
        if self._givenReactor is not None:
            return self._givenReactor
        from twisted.internet import reactor

        return reactor

    def _clock(self) -> IReactorTime:
        """
        The reactor, as a source of time for polling.
        """
        return IReactorTime(self._reactor())

    def startService(self) -> None:
        """
        Write the configuration and start php-fpm.
        """
        # Imported here because importing procmon installs the global reactor.
        from twisted.runner.procmon import ProcessMonitor

        super().startService()
        configPath = os.path.join(self.directory, "php-fpm.conf")
        with open(configPath, "w") as configFile:
            configFile.write(self.configuration.render(self.directory))
        self._log.info(
            "Starting {binary} for {documentRoot} on {socketPath}",
            binary=self.binary,
            documentRoot=self.documentRoot,
            socketPath=self.configuration.socketPath,
        )
        phpFPM = processArguments(
            self.binary, configPath, allowRoot=self.configuration.runAsUser == "root"
        )
        # php-fpm's master honours PHPRC and PHP_INI_SCAN_DIR, as it would if
        # run by hand; clear_env keeps them from the scripts.
        command, environment = moduleCommand(
            "txfastcgi._server.guardian", [self.directory, "--", *phpFPM]
        )
        self._spawner = _CountingStarts(self._reactor())
        self._monitor = ProcessMonitor(self._spawner)
        self._monitor.log = Logger(
            namespace=self._monitor.log.namespace,
            source=self._monitor,
            observer=_withoutBlankLines,
        )
        self._monitor.addProcess(_PROCESS_NAME, command, env=environment)
        self._monitor.startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop php-fpm and remove the private directory.

        @return: A L{Deferred} that fires once php-fpm has exited (the monitor
            kills it if it takes more than a few seconds) so that the
            application waits for it before exiting.
        """
        super().stopService()
        monitor = self._monitor
        if monitor is None:
            # Never started: a MultiService stops every child, including
            # those it did not get to start because a sibling failed.
            stopped: Deferred[None] = succeed(None)
        else:
            monitor.stopService()
            stopped = self._pollUntil(
                lambda: _PROCESS_NAME not in monitor.protocols,
                monitor.killTime + 5.0,
                "php-fpm did not exit",
            )

        def removeDirectory(result: Failure | None) -> Failure | None:
            shutil.rmtree(self.directory, ignore_errors=True)
            return result

        return stopped.addBoth(removeDirectory)

    def whenListening(self, timeout: float = 10.0) -> Deferred[None]:
        """
        Wait until php-fpm accepts connections.

        The proxy can serve without this, but a request that arrives before
        php-fpm is up gets a 502, so startup and tests wait.

        @param timeout: How long to wait, in seconds.

        @return: A L{Deferred} that fires with L{None}, or fails with
            L{TimeoutError} after C{timeout} seconds.
        """
        return self._pollUntil(
            lambda: acceptsConnections(self.configuration.socketPath),
            timeout,
            f"php-fpm is not accepting connections on {self.configuration.socketPath}",
        )

    def _pollUntil(
        self, condition: Callable[[], bool], timeout: float, complaint: str
    ) -> Deferred[None]:
        """
        Check C{condition} every 50 ms until it holds.

        Polling, because neither the socket's appearance nor the monitor's
        loss of the process has a notification of its own.

        @return: A L{Deferred} that fires with L{None} when it holds, or fails
            with L{TimeoutError} carrying C{complaint} after C{timeout} seconds.
        """
        clock = self._clock()
        deadline = clock.seconds() + timeout

        def check() -> None:
            if condition():
                poll.stop()
            elif clock.seconds() >= deadline:
                raise TimeoutError(f"{complaint} after {timeout:g} s")

        poll = LoopingCall(check)
        poll.clock = clock
        return poll.start(_POLL_INTERVAL).addCallback(lambda loop: None)
