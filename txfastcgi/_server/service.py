"""
The service of C{twist fastcgi-proxy}, assembled from its configuration: a
php-fpm to spawn if asked, the fronts (L{txfastcgi._server.front.Front}),
their listeners and, with C{--workers}, the worker processes that share
them, as one L{txfastcgi._server.lifecycle.Lifecycle}, whose steps say in
which order its parts start and stop.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, cast

from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorSocket,
    IReactorTime,
)
from twisted.logger import jsonFileLogObserver, textFileLogObserver
from twisted.python import usage

from txfastcgi._server.announce import announceServing
from txfastcgi._server.configuration import SPAWN, Configuration
from txfastcgi._server.eventlog import EventLogFiles
from txfastcgi._server.front import Front
from txfastcgi._server.lifecycle import Lifecycle, Step, onLogRotation
from txfastcgi._server.listeners import Listeners, adopt, isTLS
from txfastcgi._server.options import Options
from txfastcgi._server.phpfpm import PHPFPMService

if TYPE_CHECKING:
    from txfastcgi._server.workers import WorkerProcesses


__all__ = ["makeService", "makeWorkerService", "processLifecycle"]


def makeService(options: Options) -> IService:
    """
    The proxy: a php-fpm to spawn if asked, the fronts (see L{Front}), its
    listeners and, with C{--workers}, the worker processes that share them.
    """
    from twisted.internet import reactor

    # Imported here: it imports procmon, which installs the global reactor.
    from txfastcgi._server.workers import WorkerProcesses

    eventLog = _eventLogFiles(options, cast(IReactorCore, reactor))

    configuration = Configuration.fromOptions(options)
    phpFPM = None
    if SPAWN in configuration.backends:
        phpFPM = PHPFPMService(
            configuration.documentRoot,
            children=configuration.spawnChildren,
            binary=configuration.phpFPMBinary,
        )
        configuration = configuration.withSpawned(phpFPM.endpointDescription)
    listeners = Listeners(
        [(endpoints.serverFromString(reactor, d).listen, isTLS(d)) for d in configuration.listen]
    )
    workers = None
    if configuration.workers > 1:
        exited = None
        if configuration.statusPath is not None or configuration.metricsPath is not None:
            from txfastcgi._server.metrics import forgetProcess

            # Where every process writes its metrics, for the pages of each
            # to show them all: private (0700), removed at shutdown.
            directory = tempfile.mkdtemp(prefix="txfastcgi-metrics-")
            configuration = dataclasses.replace(configuration, metricsDirectory=directory)
            exited = partial(forgetProcess, directory)
        workers = WorkerProcesses(
            reactor,
            configuration.toJSON(),
            configuration.workers - 1,
            configuration.shutdownTimeout,
            exited,
        )
    return processLifecycle(
        cast(IReactorTime, reactor),
        configuration,
        listeners,
        phpFPM,
        workers,
        announce=True,
        reopenEventLog=_twistLogFileReopener(options, eventLog),
    )


def _eventLogFiles(
    options: Options, reactor: IReactorCore, argv: Sequence[str] = sys.argv
) -> EventLogFiles | None:
    """
    Under C{twist}, the observer of its log file: in text lines, not JSON,
    when standard output is no terminal (the journal, a file), unless
    C{--log-format} says otherwise (twist's own default would put JSON
    events and text access lines in one stream); in either format, one
    that writes access events cheaply (L{EventLogFiles}). twist reads its
    choice after this runs, and keeps no note of whether it was asked for,
    so the command line tells.
    """
    from twisted.application.twist._options import TwistOptions

    parent = getattr(options, "parent", None)
    if not isinstance(parent, TwistOptions):
        return None
    chosen = parent.get("fileLogObserverFactory")
    if not any(argument.startswith("--log-format") for argument in argv):
        chosen = textFileLogObserver
    formats: dict[object, str] = {textFileLogObserver: "text", jsonFileLogObserver: "json"}
    format = formats.get(chosen)
    if format is None:
        return None
    parent["fileLogObserverFactory"] = files = EventLogFiles(format, reactor)
    return files


def _twistLogFileReopener(
    options: Options, eventLog: EventLogFiles | None = None
) -> Callable[[], None] | None:
    """
    Under C{twist --log-file F}: how to open F again under its name, once
    logrotate has renamed it. twist's log observer keeps the file object it
    was given, so the new file takes the old one's descriptor, and the
    observer writes to it from then on, once it has written what it
    gathered (C{eventLog}) to the old one.
    """
    parent = getattr(options, "parent", None)
    logFile = parent.get("logFile") if isinstance(parent, usage.Options) else None
    if logFile is None or logFile in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        return None
    name = getattr(logFile, "name", None)
    if not isinstance(name, str):
        return None

    def reopen() -> None:
        if eventLog is not None:
            eventLog.flush()
        logFile.flush()
        fresh = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        os.dup2(fresh, logFile.fileno())
        os.close(fresh)

    return reopen


def makeWorkerService(
    configuration: Configuration, inherited: Sequence[tuple[int, int]]
) -> IService:
    """
    The service of a worker process started by C{--workers}: the same
    fronts on listening sockets inherited from the main process.

    @param configuration: the main process's, as L{makeService} serves it.
    @param inherited: file descriptor and address family of each socket.
    """
    from twisted.internet import reactor

    # Plain sockets only: see the options' _SHAREABLE.
    adopters = [
        (partial(adopt, cast(IReactorSocket, reactor), descriptor, family), False)
        for descriptor, family in inherited
    ]
    return processLifecycle(cast(IReactorTime, reactor), configuration, Listeners(adopters))


def processLifecycle(
    reactor: IReactorTime,
    configuration: Configuration,
    listeners: Listeners,
    phpFPM: PHPFPMService | None = None,
    workers: WorkerProcesses | None = None,
    announce: bool = False,
    reopenEventLog: Callable[[], None] | None = None,
) -> Lifecycle:
    """
    The steps of one process's life, in the order that
    L{txfastcgi._server.lifecycle} documents, without those it has nothing for.

    @param announce: log what is served once it listens (the main process).
    @param reopenEventLog: opens the event log's file again, on SIGHUP or
        SIGUSR1, if it is a file.
    """
    front = Front(configuration, reactor, phpFPM)
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
    sharing = [] if metrics is None or configuration.metricsDirectory is None else [metrics]
    startup = [
        *(Step("start php-fpm", p.startService) for p in spawning),
        *(Step("wait for php-fpm", p.whenListening) for p in spawning),
        Step("listen", partial(listeners.listen, front), fatal=True),
        *(
            [Step("announce", partial(announceServing, reactor, configuration, listeners.ports))]
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
            for directory in [configuration.metricsDirectory]
            if directory is not None and workers is not None
        ),
    ]
    return Lifecycle(reactor, startup, shutdown, configuration.shutdownTimeout)
