"""
A client gets its answer within the read timeout of its request's arrival,
however long it waited for a FastCGI connection, and service resumes as soon
as php-fpm does: against a real php-fpm, frozen with SIGSTOP.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.server import Site

from tests.processes import childrenRunning
from txfastcgi import FastCGIResource
from txfastcgi._client.pool import ConnectionPool

READ_TIMEOUT = 1.0


@pytest.fixture(autouse=True)
def _phpFPMFactory(request: pytest.FixtureRequest, php_fpm_factory: Any) -> None:
    request.instance.startPHPFPM = php_fpm_factory


class FrozenBackendTests(TestCase):
    startPHPFPM: Any

    def setUp(self) -> None:
        self.phpFPM = self.startPHPFPM(children=2)
        self.pool = ConnectionPool(
            reactor,
            UNIXClientEndpoint(reactor, self.phpFPM.socketPath),
            maxConnections=2,
            readTimeout=READ_TIMEOUT,
        )
        self.addCleanup(self.pool.close)
        site = Site(FastCGIResource(self.pool, self.phpFPM.documentRoot))
        self.port: IListeningPort = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(self.port.stopListening)
        self.agent = Agent(reactor)

    def signalPHPFPM(self, signum: int) -> None:
        """
        Signal php-fpm's master and both its workers, once both are forked: on
        a loaded machine the socket can answer before they are.
        """
        master = self.phpFPM.process.pid
        deadline = time.monotonic() + 10
        while len(workers := childrenRunning(master, "php-fpm")) < 2:
            if time.monotonic() > deadline:
                self.fail(f"php-fpm has {len(workers)} workers, not 2")
            time.sleep(0.05)
        for pid in [master, *workers]:
            os.kill(pid, signum)

    @inlineCallbacks
    def timedGet(self, path: str) -> Any:
        """The status of a GET and the seconds it took to get it."""
        started = time.monotonic()
        response = yield self.agent.request(
            b"GET",
            f"http://127.0.0.1:{self.port.getHost().port}{path}".encode(),  # type: ignore[attr-defined]
        )
        yield readBody(response)
        return response.code, time.monotonic() - started

    @inlineCallbacks
    def test_queued_requests_get_their_504_within_the_read_timeout_of_arrival(self) -> Any:
        self.signalPHPFPM(signal.SIGSTOP)
        self.addCleanup(self.signalPHPFPM, signal.SIGCONT)
        # Two requests hold both connections; four wait in line behind them.
        results = yield gatherResults([self.timedGet("/info.php") for _ in range(6)])
        self.assertEqual([code for code, _ in results], [504] * 6)
        slowest = max(elapsed for _, elapsed in results)
        # Not a read timeout spent waiting in line and another on the connection.
        self.assertLess(slowest, READ_TIMEOUT * 1.6, results)

    @inlineCallbacks
    def test_service_resumes_at_once_when_php_fpm_does(self) -> Any:
        self.signalPHPFPM(signal.SIGSTOP)
        frozen = yield gatherResults([self.timedGet("/info.php") for _ in range(4)])
        self.assertEqual([code for code, _ in frozen], [504] * 4)
        self.signalPHPFPM(signal.SIGCONT)
        code, elapsed = yield self.timedGet("/info.php")
        self.assertEqual(code, 200)
        self.assertLess(elapsed, READ_TIMEOUT / 2)
