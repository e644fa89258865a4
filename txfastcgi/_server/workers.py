"""
C{--workers N}: worker processes that serve the main process's listening
sockets, so that one proxy uses every core (the way Twisted's own
multi-process examples share a port with C{adoptStreamPort}), supervised as
the spawned php-fpm is.

A TCP port is not shared as one socket: each process gets a socket of its
own, bound to the same address with C{SO_REUSEPORT}, and the kernel spreads
new connections over them. Processes that shared one socket raced for each
connection, and the first to wake could take a burst of them all (Twisted
accepts up to a hundred at a time): with two processes, one was seen
serving all 32 connections of a benchmark while the other idled. A unix
socket has no such spreading in Linux, and stays shared.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IListeningPort,
    IProcessProtocol,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.logger import globalLogPublisher
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.runner.procmon import ProcessMonitor

from txfastcgi._emptied import Emptied
from txfastcgi._server.child import moduleCommand
from txfastcgi._server.eventlog import eventFromJSONLine

__all__ = [
    "WORKER_EVENTS_DESCRIPTOR",
    "WORKER_MODULE",
    "WORKER_OPTIONS_VARIABLE",
    "WorkerProcesses",
    "parseSocketArguments",
]

# How the main process hands its configuration to worker processes.
WORKER_OPTIONS_VARIABLE = "TXFASTCGI_WORKER_OPTIONS"

# The file descriptor on which a worker writes its log events for the main process.
WORKER_EVENTS_DESCRIPTOR = 3

WORKER_MODULE = "txfastcgi._server.worker"

# Seconds a worker gets after its own shutdown deadline before it is killed.
_KILL_MARGIN = 5


def _socketArguments(sockets: Sequence[tuple[int, int]]) -> list[str]:
    """A worker's command-line arguments: C{FD:FAMILY} for each listening socket."""
    return [f"{descriptor}:{family}" for descriptor, family in sockets]


def parseSocketArguments(arguments: Sequence[str]) -> list[tuple[int, int]]:
    """The file descriptor and address family of each socket a worker is given."""
    sockets = []
    for argument in arguments:
        descriptor, family = argument.split(":")
        sockets.append((int(descriptor), int(family)))
    return sockets


class _Inheriting(proxyForInterface(IReactorTime)):  # type: ignore[misc]
    """
    A reactor whose spawned processes inherit the listening sockets their
    command line names and share our output, for L{ProcessMonitor}, which
    has no say in that.  Standard input stays a pipe from us: a worker
    stops when it reads its end, so it never outlives us. Its log events
    come to us on a pipe of their own (L{WORKER_EVENTS_DESCRIPTOR}).
    """

    def spawnProcess(
        self, processProtocol: IProcessProtocol, executable: str, args: Sequence[str], **kwargs: Any
    ) -> IProcessTransport:
        childFDs: dict[int, int | str] = {0: "w", 1: 1, 2: 2, WORKER_EVENTS_DESCRIPTOR: "r"}
        moduleArguments = list(args)[list(args).index(WORKER_MODULE) + 1 :]
        for descriptor, _ in parseSocketArguments(moduleArguments):
            childFDs[descriptor] = descriptor
        return IReactorProcess(self.original).spawnProcess(
            _WorkerEvents(processProtocol), executable, args, childFDs=childFDs, **kwargs
        )


class _WorkerEvents(proxyForInterface(IProcessProtocol)):  # type: ignore[misc]
    """
    A worker's process protocol, which also publishes the worker's log events
    (JSON, one a line) in this process's event log, with the worker's process
    id as C{worker}: so the workers' messages and access lines go wherever this
    process's go (a C{twist --log-file}, C{twistd}'s log, the journal), in
    this process's format.
    """

    def __init__(self, original: IProcessProtocol) -> None:
        super().__init__(original)
        self._pending = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != WORKER_EVENTS_DESCRIPTOR:
            self.original.childDataReceived(childFD, data)
            return
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            self._publish(line)

    def _publish(self, line: bytes) -> None:
        try:
            event = eventFromJSONLine(line.decode("utf-8").lstrip("\x1e"))
        except ValueError:
            return
        event["worker"] = getattr(self.original.transport, "pid", None)
        globalLogPublisher(event)


class WorkerProcesses:
    """
    C{count} worker processes, restarted with back-off when they die
    (L{ProcessMonitor}'s), except while shutting down.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        configuration: str,
        count: int,
        timeout: float,
        exited: Callable[[int], object] | None = None,
    ) -> None:
        """
        @param configuration: the configuration the workers serve, encoded
            (L{txfastcgi._server.configuration.Configuration.encode}).
        @param timeout: the workers' own C{--shutdown-timeout}.
        @param exited: called with the process id of each worker that
            exits, for whoever keeps something of it (its metrics).
        """
        self._reactor = reactor
        self._configuration = configuration
        self._count = count
        self._killTime = math.ceil(timeout) + _KILL_MARGIN
        self._exited = exited
        self._monitor: _Monitor | None = None
        # The workers' own TCP sockets, kept open here for a worker restarted.
        self._ownSockets: list[socket.socket] = []

    def start(self, ports: Sequence[IListeningPort]) -> None:
        """Start the workers on C{ports}."""
        self._monitor = _Monitor(_Inheriting(self._reactor), self._exited)
        self._monitor.killTime = self._killTime
        for number in range(1, self._count + 1):
            sockets = [self._socketFor(port) for port in ports]
            command, environment = moduleCommand(WORKER_MODULE, _socketArguments(sockets))
            # The configuration in the environment, not on the command line
            # that any user can read: params may hold secrets.
            environment[WORKER_OPTIONS_VARIABLE] = self._configuration
            self._monitor.addProcess(f"worker {number}", command, env=environment)
        self._monitor.startService()

    def _socketFor(self, port: IListeningPort) -> tuple[int, int]:
        """
        The socket a worker serves C{port} on: for TCP, one of its own in
        the port's C{SO_REUSEPORT} group (see the module docstring); for a
        unix socket, the port's own.
        """
        descriptor: int = port.fileno()  # type: ignore[attr-defined]
        address = port.getHost()
        if not isinstance(address, (IPv4Address, IPv6Address)):
            return descriptor, socket.AF_UNIX
        family = socket.AF_INET if isinstance(address, IPv4Address) else socket.AF_INET6
        # The port's own socket object: a new one around its descriptor
        # would, under PyPy, make it blocking, and the reactor would then
        # block in accept().
        shared: socket.socket = port.socket  # type: ignore[attr-defined]
        # Linux lets a listening socket join a group after the fact.
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        own = socket.socket(family, socket.SOCK_STREAM)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            own.setsockopt(
                socket.IPPROTO_IPV6,
                socket.IPV6_V6ONLY,
                shared.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
            )
        own.bind(shared.getsockname())
        own.listen(getattr(port, "backlog", socket.SOMAXCONN))
        # As Twisted's own: a worker's reactor must never block in accept().
        own.setblocking(False)
        self._ownSockets.append(own)
        return own.fileno(), family

    def stop(self) -> None:
        """Tell every worker to shut down (each finishes its requests) and restart none."""
        if self._monitor is not None:
            self._monitor.stopService()
        # The workers hold their own copies until they stop listening.
        for own in self._ownSockets:
            own.close()
        self._ownSockets.clear()

    def whenStopped(self) -> Deferred[None]:
        """Fires once every worker has exited."""
        if self._monitor is None:
            return succeed(None)
        return self._monitor.whenEmpty()

    def signal(self, name: str) -> None:
        """Send signal C{name} (C{"HUP"}) to every running worker."""
        if self._monitor is None:
            return
        for protocol in list(self._monitor.protocols.values()):
            if protocol.transport is not None:
                try:
                    protocol.transport.signalProcess(name)
                except ProcessExitedAlready:
                    pass


class _Monitor(ProcessMonitor):
    """
    A L{ProcessMonitor} that says when none of its processes runs, and
    which process exited.
    """

    def __init__(
        self, reactor: IReactorTime, exited: Callable[[int], object] | None = None
    ) -> None:
        super().__init__(reactor)  # type: ignore[arg-type]
        self._empty = Emptied()
        self._exited = exited
        # The process id of each running process, by name: gone from its
        # transport once it has exited.
        self._pids: dict[str, int] = {}

    def whenEmpty(self) -> Deferred[None]:
        return self._empty.wait(not self.protocols)

    def startProcess(self, name: str) -> None:
        super().startProcess(name)
        protocol = self.protocols.get(name)
        pid = None if protocol is None else getattr(protocol.transport, "pid", None)
        if pid is not None:
            self._pids[name] = pid

    def _monitoredProcessExited(self, name: str, reason: Failure | None = None) -> None:
        # What LoggingProtocol calls when a process ends: procmon's one
        # notification (its public connectionLost is no longer called).
        pid = self._pids.pop(name, None)
        super()._monitoredProcessExited(name, reason)
        if pid is not None and self._exited is not None:
            self._exited(pid)
        if not self.protocols:
            self._empty.fire()
