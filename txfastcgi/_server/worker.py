"""
A worker process of C{twist fastcgi-proxy --workers N}.

The main process passes its configuration, encoded, in the environment and
its client connections over a channel (L{txfastcgi._server.dispatch}); the
worker serves the same sites on them until SIGTERM, then
shuts down like the main process, and writes its log events back to the
main process, as JSON, on a pipe of their own.  Its standard input is a pipe from the
main process: when that reaches its end, the main process is gone (killed
with SIGKILL, say) and the worker shuts down too, rather than serving on
alone.
"""

from __future__ import annotations

import os

from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorCore, IReactorFDSet, IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import globalLogBeginner
from twisted.python.failure import Failure
from zope.interface import implementer

from txfastcgi._server.configuration import Configuration
from txfastcgi._server.eventlog import EventLogFiles
from txfastcgi._server.service import makeWorkerService
from txfastcgi._server.workers import (
    WORKER_EVENTS_DESCRIPTOR,
    WORKER_OPTIONS_VARIABLE,
)


@implementer(IReadDescriptor)
class _Parent:
    """Standard input, which reaches its end when the main process is gone."""

    def __init__(self, reactor: IReactorCore) -> None:
        self._reactor = reactor

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "main process"

    def doRead(self) -> Failure | None:
        if os.read(0, 512):
            return None
        return Failure(CONNECTION_DONE)

    def connectionLost(self, reason: Failure) -> None:
        """
        The main process is gone: shut down as on SIGTERM.

        The reactor calls this both after L{doRead} read the end and, where
        epoll reports the closed pipe as a hang-up alone, without reading.
        """
        try:
            self._reactor.stop()
        except ReactorNotRunning:  # Shutting down already.
            pass


def main() -> None:
    from twisted.internet import reactor

    events = open(WORKER_EVENTS_DESCRIPTOR, "w", buffering=1, encoding="utf-8")
    globalLogBeginner.beginLoggingTo([EventLogFiles("json", reactor)(events)])
    configuration = Configuration.decode(os.environ.pop(WORKER_OPTIONS_VARIABLE))
    service = makeWorkerService(configuration)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    IReactorFDSet(reactor).addReader(_Parent(reactor))
    reactor.run()


if __name__ == "__main__":
    main()
