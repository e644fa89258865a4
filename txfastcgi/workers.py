"""
C{--workers N}: worker processes that serve the main process's listening
sockets, so that one proxy uses every core (the way Twisted's own
multi-process examples share a port with C{adoptStreamPort}), supervised as
the spawned php-fpm is.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Callable, Mapping, Sequence
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
from twisted.logger import eventFromJSON, globalLogPublisher
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.runner.procmon import ProcessMonitor

from txfastcgi._child import moduleCommand
from txfastcgi._emptied import Emptied

__all__ = ["WORKER_EVENTS_DESCRIPTOR", "WORKER_OPTIONS_VARIABLE", "WorkerProcesses"]

# How the main process hands its parsed options to worker processes.
WORKER_OPTIONS_VARIABLE = "TXFASTCGI_WORKER_OPTIONS"

# The file descriptor on which a worker writes its log events for the main process.
WORKER_EVENTS_DESCRIPTOR = 3

# Seconds a worker gets after its own shutdown deadline before it is killed.
_KILL_MARGIN = 5


class _Inheriting(proxyForInterface(IReactorTime)):  # type: ignore[misc]
    """
    A reactor whose spawned processes inherit some file descriptors (the
    listening sockets) and share our output, for L{ProcessMonitor}, which
    has no say in that.  Standard input stays a pipe from us: a worker
    stops when it reads its end, so it never outlives us. Its log events
    come to us on a pipe of their own (L{WORKER_EVENTS_DESCRIPTOR}).
    """

    def __init__(self, reactor: IReactorTime, descriptors: Sequence[int]) -> None:
        super().__init__(reactor)
        self._childFDs: dict[int, int | str] = {0: "w", 1: 1, 2: 2, WORKER_EVENTS_DESCRIPTOR: "r"}
        self._childFDs.update({descriptor: descriptor for descriptor in descriptors})

    def spawnProcess(
        self, processProtocol: IProcessProtocol, executable: str, args: Sequence[str], **kwargs: Any
    ) -> IProcessTransport:
        return IReactorProcess(self.original).spawnProcess(
            _WorkerEvents(processProtocol), executable, args, childFDs=self._childFDs, **kwargs
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
            event = eventFromJSON(line.decode("utf-8").lstrip("\x1e"))
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
        options: Mapping[str, Any],
        count: int,
        timeout: float,
        exited: Callable[[int], object] | None = None,
    ) -> None:
        """
        @param options: the parsed options, which the workers serve.
        @param timeout: the workers' own C{--shutdown-timeout}.
        @param exited: called with the process id of each worker that
            exits, for whoever keeps something of it (its metrics).
        """
        self._reactor = reactor
        self._options = options
        self._count = count
        self._killTime = math.ceil(timeout) + _KILL_MARGIN
        self._exited = exited
        self._monitor: _Monitor | None = None

    def start(self, ports: Sequence[IListeningPort]) -> None:
        """Start the workers on C{ports}."""
        inherited = [(port.fileno(), _family(port)) for port in ports]  # type: ignore[attr-defined]
        # The options in the environment, not on the command line that any
        # user can read: --param values may hold secrets.
        command, environment = moduleCommand(
            "txfastcgi.worker", [f"{descriptor}:{family}" for descriptor, family in inherited]
        )
        environment[WORKER_OPTIONS_VARIABLE] = json.dumps(self._options)
        self._monitor = _Monitor(
            _Inheriting(self._reactor, [d for d, _ in inherited]), self._exited
        )
        self._monitor.killTime = self._killTime
        for number in range(1, self._count + 1):
            self._monitor.addProcess(f"worker {number}", command, env=environment)
        self._monitor.startService()

    def stop(self) -> None:
        """Tell every worker to shut down (each finishes its requests) and restart none."""
        if self._monitor is not None:
            self._monitor.stopService()

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


def _family(port: IListeningPort) -> int:
    address = port.getHost()
    if isinstance(address, IPv4Address):
        return socket.AF_INET
    if isinstance(address, IPv6Address):
        return socket.AF_INET6
    return socket.AF_UNIX
