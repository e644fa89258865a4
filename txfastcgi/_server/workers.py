"""
C{--workers N}: worker processes that serve connections the main process
accepts on its listeners and hands them (L{txfastcgi._server.dispatch}),
so that one proxy uses every core, supervised as the spawned php-fpm is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IListeningPort,
    IProcessProtocol,
    IProcessTransport,
    IReactorProcess,
    IReactorSocket,
    IReactorTime,
)
from twisted.logger import globalLogPublisher
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.runner.procmon import ProcessMonitor

from txfastcgi._emptied import Emptied
from txfastcgi._server.child import moduleCommand, withPyPyNursery
from txfastcgi._server.dispatch import CHANNEL_DESCRIPTOR, Dispatcher
from txfastcgi._server.eventlog import eventFromJSONLine

__all__ = [
    "WORKER_EVENTS_DESCRIPTOR",
    "WORKER_MODULE",
    "WORKER_OPTIONS_VARIABLE",
    "WorkerProcesses",
]

# How the main process hands its configuration to worker processes.
WORKER_OPTIONS_VARIABLE = "TXFASTCGI_WORKER_OPTIONS"

# The file descriptor on which a worker writes its log events for the main process.
WORKER_EVENTS_DESCRIPTOR = 3

WORKER_MODULE = "txfastcgi._server.worker"

# Seconds a worker gets after its own shutdown deadline before it is killed.
_KILL_MARGIN = 5


class _Inheriting(proxyForInterface(IReactorTime)):  # type: ignore[misc]
    """
    A reactor whose spawned processes get a new channel from the dispatcher
    (L{CHANNEL_DESCRIPTOR}), each time one is started or started again, and
    share our output, for L{ProcessMonitor}, which has no say in that.
    Standard input stays a pipe from us: a worker stops when it reads its
    end, so it never outlives us. Its log events come to us on a pipe of
    their own (L{WORKER_EVENTS_DESCRIPTOR}).
    """

    def __init__(self, reactor: IReactorTime, dispatcher: Dispatcher) -> None:
        super().__init__(reactor)
        self._dispatcher = dispatcher

    def spawnProcess(
        self, processProtocol: IProcessProtocol, executable: str, args: Sequence[str], **kwargs: Any
    ) -> IProcessTransport:
        channel = self._dispatcher.channel()
        childFDs: dict[int, int | str] = {
            0: "w",
            1: 1,
            2: 2,
            WORKER_EVENTS_DESCRIPTOR: "r",
            CHANNEL_DESCRIPTOR: channel.fileno(),
        }
        try:
            return IReactorProcess(self.original).spawnProcess(
                _WorkerEvents(processProtocol), executable, args, childFDs=childFDs, **kwargs
            )
        finally:
            channel.close()


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
        self._dispatcher = Dispatcher(cast(IReactorSocket, reactor))

    def start(self, ports: Sequence[IListeningPort]) -> None:
        """Start the workers, and hand them their share of what C{ports} accept."""
        self._monitor = _Monitor(_Inheriting(self._reactor, self._dispatcher), self._exited)
        self._monitor.killTime = self._killTime
        for number in range(1, self._count + 1):
            command, environment = moduleCommand(WORKER_MODULE, [])
            withPyPyNursery(environment)
            # The configuration in the environment, not on the command line
            # that any user can read: params may hold secrets.
            environment[WORKER_OPTIONS_VARIABLE] = self._configuration
            self._monitor.addProcess(f"worker {number}", command, env=environment)
        self._monitor.startService()
        self._dispatcher.start(ports)

    def stopAccepting(self) -> None:
        """Accept no more connections for the workers: the ports are about to close."""
        self._dispatcher.stop()

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
