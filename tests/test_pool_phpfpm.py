"""
The pool in front of a real php-fpm: a slow script leaves the fast ones
most of their throughput, on a cold pool, with C{pm = static} and
C{dynamic}, and a pool that may open more connections than php-fpm has
workers still leaves no request in php-fpm's backlog.

Each case measures its own baseline, the same fast load without the slow
script, on the same php-fpm: the machine's speed does not matter, only the
ratio.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.poolclients import PoolClient, answered
from txfastcgi._client.pool import ConnectionPool

if TYPE_CHECKING:
    from tests.conftest import PHPFPMFactory, PHPFPMPool

CLOCK: IReactorTime = reactor
SLOW_MS = 2000
FAST_SECONDS = 1.5
# How long a closed connection takes to free its php-fpm worker, at most.
SETTLE = 0.1


@pytest.fixture(autouse=True)
def _phpFPMFactory(request: pytest.FixtureRequest, php_fpm_factory: PHPFPMFactory) -> None:
    """Hand the php-fpm factory to the trial test cases."""
    if request.instance is not None:
        request.instance.startPHPFPM = php_fpm_factory


def params(phpFPM: PHPFPMPool, ms: int) -> list[tuple[bytes, bytes]]:
    """A GET of slow.php, which answers after C{ms} milliseconds."""
    return [
        (b"REQUEST_METHOD", b"GET"),
        (b"SCRIPT_NAME", b"/slow.php"),
        (b"SCRIPT_FILENAME", os.path.join(phpFPM.documentRoot, "slow.php").encode()),
        (b"QUERY_STRING", f"ms={ms}".encode()),
    ]


class SlowScriptTests(TestCase):
    startPHPFPM: PHPFPMFactory

    @inlineCallbacks
    def load(
        self,
        phpFPM: PHPFPMPool,
        maxConnections: int,
        slow: bool,
        clients: int = 8,
    ) -> Any:
        """
        The clients of a fast script, through a new (cold) pool, for
        L{FAST_SECONDS}; after a slow request if C{slow}. The pool is closed
        afterwards and its connections have freed their workers.
        """
        pool = ConnectionPool(
            CLOCK, UNIXClientEndpoint(reactor, phpFPM.socketPath), maxConnections=maxConnections
        )
        until = CLOCK.seconds() + FAST_SECONDS
        # It asks first, and once: it is answered after the fast ones stop.
        others = [PoolClient(CLOCK, pool, params(phpFPM, SLOW_MS), until)] if slow else []
        fast = [PoolClient(CLOCK, pool, params(phpFPM, 0), until) for _ in range(clients)]
        yield gatherResults([client.done for client in fast + others])
        pool.close()
        yield deferLater(CLOCK, SETTLE)
        for client in fast + others:
            self.assertEqual(client.failures, [])
        return fast

    @inlineCallbacks
    def assertHalfTheThroughput(self, phpFPM: PHPFPMPool, maxConnections: int) -> Any:
        baseline = answered((yield self.load(phpFPM, maxConnections, slow=False)))
        withSlow = answered((yield self.load(phpFPM, maxConnections, slow=True)))
        self.assertGreater(baseline, 100)
        self.assertGreaterEqual(withSlow, baseline / 2, (withSlow, baseline))

    def test_a_slow_script_on_a_cold_pool_leaves_fast_requests_half_their_throughput(
        self,
    ) -> Any:
        return self.assertHalfTheThroughput(self.startPHPFPM(children=4), maxConnections=4)

    def test_with_more_connections_than_workers_too(self) -> Any:
        return self.assertHalfTheThroughput(self.startPHPFPM(children=4), maxConnections=8)

    def test_with_dynamic_pm_too(self) -> Any:
        phpFPM = self.startPHPFPM(children=4, dynamicFrom=2)
        return self.assertHalfTheThroughput(phpFPM, maxConnections=4)

    @inlineCallbacks
    def test_more_connections_than_workers_never_leave_a_request_in_the_backlog(self) -> Any:
        """
        As nginx with C{keepalive 16} in front of 4 workers, which left new
        connections in php-fpm's backlog behind idle kept ones for ever: 32
        clients, a slow script among them, through a pool that may open 16
        connections. Each fast request waits its turn, never for the slow one.
        """
        phpFPM = self.startPHPFPM(children=4)
        fast = yield self.load(phpFPM, maxConnections=16, slow=True, clients=32)
        latencies = [latency for client in fast for latency in client.latencies]
        self.assertGreater(len(latencies), 100)
        self.assertLess(max(latencies), SLOW_MS / 1000 / 2)
