"""
A worker process of C{twist fastcgi-proxy --workers N}.

The main process passes its parsed options as JSON in the environment and
the listening sockets as inherited file descriptors (C{FD:FAMILY}
arguments); the worker
serves the same site on them until SIGTERM, then drains like the main process.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.logger import globalLogBeginner, textFileLogObserver

from txfastcgi.tap import WORKER_OPTIONS_VARIABLE, makeWorkerService


def main(sockets: list[str]) -> None:
    from twisted.internet import reactor

    inherited = []
    for spec in sockets:
        descriptor, family = spec.split(":")
        inherited.append((int(descriptor), int(family)))
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    options = json.loads(os.environ.pop(WORKER_OPTIONS_VARIABLE))
    service = makeWorkerService(options, inherited)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
