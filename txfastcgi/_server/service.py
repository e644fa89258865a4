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
from twisted.logger import Logger, jsonFileLogObserver, textFileLogObserver
from twisted.python import usage

from txfastcgi._server.announce import announceServing
from txfastcgi._server.configuration import Configuration
from txfastcgi._server.dispatch import CHANNEL_DESCRIPTOR, listenToMain
from txfastcgi._server.endpointstrings import TLSFileNames, isTLS, splitTLS
from txfastcgi._server.eventlog import EventLogFiles
from txfastcgi._server.front import Front
from txfastcgi._server.lifecycle import Lifecycle, Step, onLogRotation
from txfastcgi._server.listeners import Listen, Listeners
from txfastcgi._server.options import Options
from txfastcgi._server.phpfpm import PHPFPMService, findPHPFPM
from txfastcgi._server.sitefile import SPAWN, SiteFile, SiteFileError, loadSiteFile

if TYPE_CHECKING:
    from txfastcgi._server.acme import HTTP01Answers, TLSALPN01Answers
    from txfastcgi._server.workers import WorkerProcesses


__all__ = [
    "makeService",
    "makeSitesService",
    "makeWorkerService",
    "processLifecycle",
    "reloadSiteFile",
]

_log = Logger(namespace="txfastcgi")


def makeService(options: Options) -> IService:
    """
    The proxy: a php-fpm to spawn if asked, the fronts (see L{Front}), its
    listeners and, with C{--workers}, the worker processes that share them.
    """
    from twisted.internet import reactor

    eventLog = _eventLogFiles(options, cast(IReactorCore, reactor))
    configuration = Configuration.fromOptions(options)
    return _mainProcess(configuration, _twistLogFileReopener(options, eventLog))


def makeSitesService(siteFile: SiteFile) -> IService:
    """
    The proxy serving C{siteFile}, built in Python (a C{.tac} file), as
    C{--config} serves a site file; there being no file, SIGHUP only
    reopens the logs.
    """
    spawns = any(SPAWN in site.php_fpm for site in siteFile.sites)
    return _mainProcess(Configuration(siteFile, phpFPMBinary=findPHPFPM() if spawns else None))


def _mainProcess(
    configuration: Configuration, reopenEventLog: Callable[[], None] | None = None
) -> IService:
    """
    The main process serving C{configuration}: a php-fpm to spawn for each
    site that asks, the fronts (see L{Front}), its listeners and, with
    C{--workers}, the worker processes that it hands connections to.
    """
    from twisted.internet import reactor

    # Imported here: it imports procmon, which installs the global reactor.
    from txfastcgi._server.workers import WorkerProcesses

    phpFPMs = []
    for site in configuration.spawning:
        phpFPM = PHPFPMService(
            site.root, children=site.spawn_children, binary=configuration.phpFPMBinary
        )
        phpFPMs.append(phpFPM)
        configuration = configuration.withSpawned(site.root, phpFPM.endpointDescription)
    listeners = Listeners(
        [
            _listener(cast(IReactorCore, reactor), configuration, d)
            for d in configuration.server.listen
        ]
    )
    workers = None
    if configuration.server.workers > 1:
        exited = None
        if configuration.usesMetrics:
            from txfastcgi._server.metrics import forgetProcess

            # Where every process writes its metrics, for the pages of each
            # to show them all: private (0700), removed at shutdown.
            directory = tempfile.mkdtemp(prefix="txfastcgi-metrics-")
            configuration = dataclasses.replace(configuration, metricsDirectory=directory)
            exited = partial(forgetProcess, directory)
        workers = WorkerProcesses(
            reactor,
            configuration.encode(),
            configuration.server.workers - 1,
            configuration.server.shutdown_timeout,
            exited,
        )
    return processLifecycle(
        cast(IReactorTime, reactor),
        configuration,
        listeners,
        phpFPMs,
        workers,
        announce=True,
        reopenEventLog=reopenEventLog,
        obtainCertificates=any(site.acme for site in configuration.sites),
    )


def _listener(
    reactor: IReactorCore, configuration: Configuration, description: str
) -> tuple[Listen, bool | TLSFileNames]:
    """
    How to listen on C{description}, and what it serves: with sites that
    have certificates of their own, a TLS listener is a plain one that
    the front makes a TLS one, choosing certificates by SNI.
    """
    if isTLS(description) and any(
        site.tls is not None or site.acme for site in configuration.sites
    ):
        plain, files = splitTLS(description)
        return endpoints.serverFromString(reactor, plain).listen, files
    return endpoints.serverFromString(reactor, description).listen, isTLS(description)


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


def makeWorkerService(configuration: Configuration) -> IService:
    """
    The service of a worker process started by C{--workers}: the same
    fronts, for the connections the main process hands it
    (L{txfastcgi._server.dispatch}).

    @param configuration: the main process's, as L{makeService} serves it.
    """
    from twisted.internet import reactor

    if configuration.path is not None:
        # A worker started after a reload (or started again) serves the
        # file as it is now, as the processes that reloaded do.
        configuration = readSiteFileAgain(configuration) or configuration
    # Plain listeners only (see the options' check): the connections the
    # main process accepts on them.
    fromMain = listenToMain(cast(IReactorSocket, reactor), CHANNEL_DESCRIPTOR)
    return processLifecycle(
        cast(IReactorTime, reactor), configuration, Listeners([(fromMain, False)])
    )


def processLifecycle(
    reactor: IReactorTime,
    configuration: Configuration,
    listeners: Listeners,
    phpFPMs: Sequence[PHPFPMService] = (),
    workers: WorkerProcesses | None = None,
    announce: bool = False,
    reopenEventLog: Callable[[], None] | None = None,
    obtainCertificates: bool = False,
) -> Lifecycle:
    """
    The steps of one process's life, in the order that
    L{txfastcgi._server.lifecycle} documents, without those it has nothing for.

    @param announce: log what is served once it listens (the main process).
    @param reopenEventLog: opens the event log's file again, on SIGHUP or
        SIGUSR1, if it is a file.
    @param obtainCertificates: get the certificates of the sites with
        C{acme} (the main process, which alone answers their challenges):
        by HTTP-01 if a listener is a plain one, else by TLS-ALPN-01.
    """
    certificates = None
    httpChallenges: HTTP01Answers | None = None
    tlsChallenges: TLSALPN01Answers | None = None
    if obtainCertificates:
        # Imported here: the acme library and requests cost a process that
        # gets no certificates about 5 MB.
        from txfastcgi._server.acme import ACMECertificates, HTTP01Answers, challengeAnswers

        settings = configuration.siteFile.acme
        assert settings is not None, "the site file's check asks for [acme]"
        plain = any(not isTLS(description) for description in configuration.server.listen)
        challenges = challengeAnswers(plainListener=plain)
        if isinstance(challenges, HTTP01Answers):
            httpChallenges = challenges
        else:
            tlsChallenges = challenges
        certificates = ACMECertificates(
            settings,
            [site.hosts for site in configuration.sites if site.acme],
            challenges,
            lambda hosts, certificate: front.certificateIssued(hosts, certificate),
            reactor,
        )
    front = Front(configuration, reactor, phpFPMs, httpChallenges, tlsChallenges, certificates)
    metrics = front.metrics
    obtaining = [] if certificates is None else [certificates]

    def reopenLogs() -> None:
        if reopenEventLog is not None:
            reopenEventLog()
        front.accessLog.reopen()
        if workers is not None:
            workers.signal("HUP")
        if configuration.path is not None:
            reloadSiteFile(front)

    supervising = [] if workers is None else [workers]
    # Metrics that other processes read: written every second.
    sharing = [] if metrics is None or configuration.metricsDirectory is None else [metrics]
    startup = [
        *(Step("start php-fpm", p.startService) for p in phpFPMs),
        *(Step("wait for php-fpm", p.whenListening) for p in phpFPMs),
        Step("listen", partial(listeners.listen, front), fatal=True),
        *(Step("obtain certificates by ACME", c.startService) for c in obtaining),
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
        for w in supervising:
            w.stopAccepting()
        return listeners.stopListening()

    shutdown = [
        Step("stop listening", stopListening),
        *(Step("stop obtaining certificates", c.stopService) for c in obtaining),
        *(Step("stop workers", w.stop) for w in supervising),
        Step("finish requests", front.whenIdle, bounded=True),
        *(Step("wait for workers", w.whenStopped, bounded=True) for w in supervising),
        Step("close connections", front.closeConnections, bounded=True),
        *(Step("stop php-fpm", p.stopService) for p in phpFPMs),
        *(Step("stop writing metrics", m.stop) for m in sharing),
        *(
            Step("remove the metrics directory", partial(shutil.rmtree, directory, True))
            for directory in [configuration.metricsDirectory]
            if directory is not None and workers is not None
        ),
    ]
    return Lifecycle(reactor, startup, shutdown, configuration.server.shutdown_timeout)


def reloadSiteFile(front: Front) -> None:
    """
    Read the site file that C{front} serves again and serve its sites; or,
    if it cannot be served (see L{readSiteFileAgain}), keep serving the
    sites there are.
    """
    configuration = front.configuration
    reloaded = readSiteFileAgain(configuration)
    if reloaded is not None:
        front.reload(reloaded)
        _log.info(
            "reloaded {path}: {count} site(s)", path=configuration.path, count=len(reloaded.sites)
        )


def readSiteFileAgain(configuration: Configuration) -> Configuration | None:
    """
    C{configuration} with its site file read again; or L{None}, having
    logged why, one line a problem, if the file is invalid or needs a
    php-fpm this process did not start.
    """
    assert configuration.path is not None
    try:
        siteFile = loadSiteFile(configuration.path, configuration.server)
    except SiteFileError as e:
        for problem in e.problems:
            _log.error("reload: {problem}; the sites stay as they were", problem=str(problem))
        return None
    reloaded = configuration.reloaded(siteFile)
    for site in reloaded.spawning:
        if site.root not in configuration.spawned:
            _log.error(
                "reload: php_fpm = 'spawn' for {root}, whose php-fpm was not started: that takes"
                " a restart; the sites stay as they were",
                root=site.root,
            )
            return None
    return reloaded
