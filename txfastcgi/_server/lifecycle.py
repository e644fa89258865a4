"""
The life of a proxy process as two explicit, ordered lists of steps.

Every process of C{twist fastcgi-proxy} (the main one and each C{--workers}
process, with a spawned php-fpm or an external one) lives the same way; only
the steps that have nothing to act on are left out:

Start-up, in order:
  1. start php-fpm          (C{--php-fpm spawn} only)
  2. wait for php-fpm       so that the first requests do not get 502; after
                            10 s it goes on, and the log says why
  3. listen                 a listener that cannot (a port in use) is fatal:
                            the process shuts down and exits with status 1
  4. announce               (main process only) one line of what is served,
                            one warning for each thing that will not work
  5. write metrics for the other processes
                            (C{--workers N} with C{--metrics-path} or
                            C{--status-path}, every process): once a second,
                            into the directory whose files every page reads
  6. start workers          (C{--workers N}, main process only)
  7. reopen logs on SIGHUP or SIGUSR1, what logrotate's postrotate sends;
                            with C{--config}, read the site file again too

Shutdown (SIGTERM, SIGINT, a fatal start-up step), in order:
  1. stop listening         new connections are refused; kept client
                            connections idle between requests close, the
                            others once they have answered (C{Connection:
                            close}); workers are told to shut down the same way
  2. finish requests        requests in progress (and the workers) finish
  3. close connections      client connections close once their responses
                            are written, and those that have asked nothing
                            yet after a second more to do so; idle FastCGI
                            connections close, which frees php-fpm's workers
  4. stop php-fpm           last, once nothing can need it
  5. stop writing metrics   (as start-up step 5), and, in the main process,
                            remove the metrics directory

Steps 2 and 3 share one deadline, C{--shutdown-timeout} seconds from the
start of the shutdown: past it they are abandoned and the next step runs.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Lifecycle", "Step", "exitAtInterpreterExit", "onLogRotation"]


@dataclass(frozen=True)
class Step:
    """
    One step of a lifecycle.

    @ivar name: what the log calls it.
    @ivar run: does it, and returns a L{Deferred} if it ends later.
    @ivar fatal: at start-up, a failure shuts the process down with exit
        status 1; otherwise it is logged and the next step runs.
    @ivar bounded: at shutdown, abandoned when the shutdown's deadline passes.
    """

    name: str
    run: Callable[[], object]
    fatal: bool = False
    bounded: bool = False


def exitAtInterpreterExit(status: int) -> None:
    """
    Exit with C{status} once C{twist} (or C{twistd}) has shut down cleanly.

    Neither offers a way to choose the exit status, and an exception raised
    in the reactor is only logged; so the status is set as the very last
    thing the interpreter does, after twistd has removed its pid file.
    """

    def exitNow() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    atexit.register(exitNow)


def onLogRotation(reactor: IReactorTime, action: Callable[[], None]) -> None:
    """
    Call C{action} in the reactor's thread on every SIGHUP or SIGUSR1, the
    signals logrotate's C{postrotate} is told to send (nginx reopens its logs
    on USR1, Apache on HUP), and which would otherwise end the process.

    @param reactor: an L{IReactorFromThreads}.
    """

    def rotated(signum: int, frame: FrameType | None) -> None:
        IReactorFromThreads(reactor).callFromThread(action)

    for signum in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, rotated)


class Lifecycle(Service):
    """
    Runs the start-up steps in order when started and the shutdown steps in
    order when stopped; see the module docstring for the proxy's steps.

    A shutdown during start-up abandons the start-up step in progress (its
    L{Deferred} is cancelled) and runs every shutdown step, each of which
    copes with a start-up that never reached it.

    @ivar startup: the start-up steps, in order.
    @ivar shutdown: the shutdown steps, in order.
    @ivar step: the name of the step in progress, C{"running"} between the
        two lists, C{"stopped"} before and after.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        startup: Sequence[Step],
        shutdown: Sequence[Step],
        timeout: float,
        exit: Callable[[int], None] = exitAtInterpreterExit,
    ) -> None:
        """
        @param reactor: the clock, and the reactor to stop (an L{IReactorCore}).
        @param timeout: seconds from the start of the shutdown until its
            bounded steps are abandoned.
        @param exit: called with the exit status after a fatal start-up
            failure, before the reactor is stopped.
        """
        self._reactor = reactor
        self.startup = startup
        self.shutdown = shutdown
        self._timeout = timeout
        self._exit = exit
        self._starting: Deferred[None] | None = None
        self.step = "stopped"

    def startService(self) -> None:
        super().startService()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(lambda reason: reason.trap(CancelledError))

    async def _start(self) -> None:
        for step in self.startup:
            self.step = step.name
            try:
                await maybeDeferred(step.run)
            except CancelledError:
                raise
            except Exception as e:
                if step.fatal:
                    self.log.critical("cannot {step}: {message}", step=step.name, message=e)
                    self._exit(1)
                    core = IReactorCore(self._reactor)
                    core.callWhenRunning(core.stop)
                    return
                self.log.failure("{step} failed; starting anyway", Failure(), step=step.name)
        self.step = "running"

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        deadline = self._reactor.seconds() + self._timeout
        for step in self.shutdown:
            self.step = step.name
            self.log.info("shutting down: {step}", step=step.name)
            running = maybeDeferred(step.run)
            if step.bounded:
                running.addTimeout(max(0.0, deadline - self._reactor.seconds()), self._reactor)
            try:
                await running
            except TimeoutError:
                self.log.warn(
                    "shutting down: gave up on {step} after {timeout} s",
                    step=step.name,
                    timeout=self._timeout,
                )
            except Exception:
                self.log.failure("shutting down: {step} failed", step=step.name)
        self.step = "stopped"
