"""
The order of a proxy process's life (L{txfastcgi._server.lifecycle}) on a
deterministic clock, and the steps that C{twist fastcgi-proxy} builds.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txfastcgi._server.configuration import Configuration
from txfastcgi._server.lifecycle import Lifecycle, Step
from txfastcgi._server.listeners import Listeners
from txfastcgi._server.phpfpm import PHPFPMService
from txfastcgi._server.service import processLifecycle
from txfastcgi._server.workers import WorkerProcesses
from txfastcgi.tap import Options


class _Recorder:
    """Steps that record when they run, some of which end only when told."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.pending: dict[str, Deferred[None]] = {}

    def step(self, name: str, waits: bool = False, **flags: bool) -> Step:
        def run() -> Deferred[None]:
            self.ran.append(name)
            if not waits:
                return succeed(None)
            self.pending[name] = Deferred(lambda d: self.ran.append(f"cancel {name}"))
            return self.pending[name]

        return Step(name, run, **flags)


class _RunningReactor(MemoryReactorClock):
    """
    A fake reactor already running, as the real one is when services start:
    what is asked to run when it runs runs at once, and it has not stopped.
    Twisted 26's fake does this by itself; 25.5's (the last for Python 3.9,
    PyPy's) only queues such calls and starts out "stopped".
    """

    def __init__(self) -> None:
        super().__init__()
        self.running = True
        self.hasStopped = False

    def callWhenRunning(self, callable: Callable[..., object], *args: Any, **kw: Any) -> None:
        callable(*args, **kw)


class LifecycleTests(SynchronousTestCase):
    def lifecycle(
        self, startup: list[Step], shutdown: list[Step], exit: Callable[[int], None] = print
    ) -> tuple[Lifecycle, MemoryReactorClock]:
        reactor = _RunningReactor()
        return Lifecycle(reactor, startup, shutdown, timeout=10, exit=exit), reactor

    def test_stepsRunInOrderEachAfterTheLastEnds(self) -> None:
        steps = _Recorder()
        lifecycle, _ = self.lifecycle(
            [steps.step("a"), steps.step("b", waits=True), steps.step("c")],
            [steps.step("x", waits=True), steps.step("y")],
        )
        lifecycle.startService()
        self.assertEqual((steps.ran, lifecycle.step), (["a", "b"], "b"))
        steps.pending["b"].callback(None)
        self.assertEqual((steps.ran, lifecycle.step), (["a", "b", "c"], "running"))
        stopped = lifecycle.stopService()
        self.assertEqual(steps.ran[3:], ["x"])
        steps.pending["x"].callback(None)
        self.assertEqual(steps.ran[3:], ["x", "y"])
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(lifecycle.step, "stopped")

    def test_boundedStepsShareTheShutdownDeadline(self) -> None:
        """
        A bounded step that does not end is abandoned when the timeout,
        counted from the start of the shutdown (not of the step), has
        passed; the steps after it still run.
        """
        steps = _Recorder()
        lifecycle, clock = self.lifecycle(
            [],
            [
                steps.step("finish", waits=True, bounded=True),
                steps.step("close", waits=True, bounded=True),
                steps.step("last"),
            ],
        )
        lifecycle.startService()
        stopped = lifecycle.stopService()
        clock.advance(6)
        steps.pending["finish"].callback(None)
        self.assertEqual(steps.ran, ["finish", "close"])
        clock.advance(3.9)
        self.assertEqual(steps.ran, ["finish", "close"])
        clock.advance(0.1)
        self.assertEqual(steps.ran, ["finish", "close", "cancel close", "last"])
        self.assertIsNone(self.successResultOf(stopped))

    def test_aFatalStartupStepStopsTheReactorWithStatus1(self) -> None:
        steps = _Recorder()
        statuses: list[int] = []

        def cannot() -> None:
            raise OSError("address in use")

        lifecycle, reactor = self.lifecycle(
            [Step("listen", cannot, fatal=True), steps.step("after")], [], exit=statuses.append
        )
        lifecycle.startService()
        self.assertEqual((statuses, steps.ran, reactor.hasStopped), ([1], [], True))
        self.flushLoggedErrors()

    def test_aFailedStepThatIsNotFatalIsLoggedAndSkipped(self) -> None:
        steps = _Recorder()

        def fails() -> None:
            raise TimeoutError("php-fpm is not accepting connections")

        lifecycle, reactor = self.lifecycle([Step("wait", fails), steps.step("listen")], [])
        lifecycle.startService()
        self.assertEqual((steps.ran, reactor.hasStopped), (["listen"], False))
        self.assertEqual(len(self.flushLoggedErrors(TimeoutError)), 1)

    def test_aShutdownDuringStartupCancelsItAndRunsEveryShutdownStep(self) -> None:
        steps = _Recorder()
        lifecycle, _ = self.lifecycle(
            [steps.step("wait for php-fpm", waits=True), steps.step("listen")],
            [steps.step("stop listening"), steps.step("stop php-fpm")],
        )
        lifecycle.startService()
        self.successResultOf(lifecycle.stopService())
        self.assertEqual(
            steps.ran,
            ["wait for php-fpm", "cancel wait for php-fpm", "stop listening", "stop php-fpm"],
        )


class ProxyStepsTests(SynchronousTestCase):
    """The steps of the processes of C{twist fastcgi-proxy}, as documented."""

    def options(self, *arguments: str) -> Options:
        options = Options()
        options.parseOptions(["--path", os.curdir, *arguments])
        return options

    def served(self, options: Options) -> Configuration:
        configuration = Configuration.fromOptions(options)
        (site,) = configuration.sites
        return configuration.withSpawned(site.root, "unix:/nonexistent.sock")

    def test_mainProcessWithSpawnedPHPFPMAndWorkers(self) -> None:
        options = self.options("--php-fpm", "spawn", "--workers", "3")
        served = self.served(options)
        reactor = MemoryReactorClock()
        phpFPM = PHPFPMService(options["path"], binary="/bin/false", reactor=cast(Any, reactor))
        self.addCleanup(shutil.rmtree, phpFPM.directory)
        workers = WorkerProcesses(reactor, served.encode(), 2, 30)
        lifecycle = processLifecycle(reactor, served, Listeners([]), [phpFPM], workers)
        self.assertEqual(
            [step.name for step in lifecycle.startup],
            [
                "start php-fpm",
                "wait for php-fpm",
                "listen",
                "start workers",
                "reopen logs on SIGHUP or SIGUSR1",
            ],
        )
        self.assertEqual(
            [step.name for step in lifecycle.shutdown],
            [
                "stop listening",
                "stop workers",
                "finish requests",
                "wait for workers",
                "close connections",
                "stop php-fpm",
            ],
        )
        self.assertEqual([s.fatal for s in lifecycle.startup], [False, False, True, False, False])
        self.assertEqual(
            [s.bounded for s in lifecycle.shutdown], [False, False, True, True, True, False]
        )

    def test_workerProcessOrExternalPHPFPM(self) -> None:
        """A worker, or a main process with an external php-fpm, has the same steps, fewer."""
        served = self.served(self.options())
        lifecycle = processLifecycle(MemoryReactorClock(), served, Listeners([]))
        self.assertEqual(
            [step.name for step in lifecycle.startup],
            ["listen", "reopen logs on SIGHUP or SIGUSR1"],
        )
        self.assertEqual(
            [step.name for step in lifecycle.shutdown],
            ["stop listening", "finish requests", "close connections"],
        )
