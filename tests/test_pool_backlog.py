"""
Specifications of L{ConnectionPool} and L{Balancer} in front of
L{FakePHPFPM}, a model of php-fpm's workers and listen backlog, on a
L{MemoryReactorClock}: clients that ask for a script again as soon as they
are answered, a slow script among them, and what the clients get.

The two dangers, each of which the pool must avoid without falling into the
other: a pool that keeps more connections than php-fpm has workers leaves
requests in php-fpm's backlog behind its own idle connections, for ever;
a pool that takes a slow script for a backlogged request closes its
connections and shrinks, and the whole site stalls behind one slow page.
"""

from __future__ import annotations

import math

import pytest
from twisted.internet.testing import MemoryReactorClock

from tests.poolclients import ConnectionSource, PoolClient, answered
from txfastcgi._client.balancer import Balancer
from txfastcgi._client.pool import ConnectionPool
from txfastcgi.errors import BackendTimeout
from txfastcgi.testing import FakeBackendEndpoint, FakePHPFPM

FAST = b"/fast.php"
SLOW = b"/slow.php"
FAST_SECONDS = 0.01
SLOW_SECONDS = 4.0
IDLE_TIMEOUT = 5.0
SCRIPT_TIMES = {FAST: FAST_SECONDS, SLOW: SLOW_SECONDS}


def run(clock: MemoryReactorClock, endpoints: list[FakePHPFPM], until: float) -> None:
    """Move data and time on, event by event, until C{until}."""
    while True:
        settle(clock, endpoints)
        nextTime = min((call.getTime() for call in clock.getDelayedCalls()), default=math.inf)
        # Straight to the time, which adding the difference may fall short of.
        clock.rightNow = min(nextTime, until)
        if nextTime > until:
            settle(clock, endpoints)
            return


def settle(clock: MemoryReactorClock, endpoints: list[FakePHPFPM]) -> None:
    """Run what is due and move data until all is quiet."""
    while True:
        clock.advance(0)
        moved = [link.pump() for e in endpoints for link in e.links if not link.closed]
        if not any(moved) and not any(
            call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()
        ):
            return


def Client(
    clock: MemoryReactorClock, source: ConnectionSource, script: bytes, until: float
) -> PoolClient:
    """A client of C{script} on a L{FakePHPFPM}."""
    return PoolClient(clock, source, [(b"SCRIPT_NAME", script)], until)


def makePool(
    phpFPM: FakeBackendEndpoint,
    clock: MemoryReactorClock,
    maxConnections: int,
    readTimeout: float = 60.0,
) -> ConnectionPool:
    return ConnectionPool(
        clock,
        phpFPM,
        maxConnections=maxConnections,
        idleTimeout=IDLE_TIMEOUT,
        readTimeout=readTimeout,
    )


def fastAnswers(
    maxConnections: int,
    slow: bool,
    *,
    workers: int = 4,
    maxChildren: int | None = None,
    warmUp: bool = False,
    clients: int = 8,
    seconds: float = 3.0,
) -> int:
    """
    How many answers C{clients} clients of a fast script get in C{seconds}
    from a pool in front of a php-fpm of C{workers} workers, with (if
    C{slow}) a slow request sent just before them.

    @param warmUp: run some load first, then let the kept connections time out.
    """
    clock = MemoryReactorClock()
    phpFPM = FakePHPFPM(clock, workers, scriptTimes=SCRIPT_TIMES, maxChildren=maxChildren)
    pool = makePool(phpFPM, clock, maxConnections)
    start = 0.0
    if warmUp:
        warm = [Client(clock, pool, FAST, until=1.0) for _ in range(clients)]
        run(clock, [phpFPM], until=1.0 + IDLE_TIMEOUT + 1)
        assert answered(warm) > 0
        assert pool.statistics().open == 0
        start = clock.seconds()
    if slow:
        Client(clock, pool, SLOW, until=start + 0.001)
        run(clock, [phpFPM], until=start + 0.001)
    fast = [Client(clock, pool, FAST, until=start + seconds) for _ in range(clients)]
    run(clock, [phpFPM], until=start + seconds)
    return answered(fast)


@pytest.mark.parametrize("maxConnections", [4, 8])
def test_a_slow_script_on_a_cold_pool_leaves_fast_requests_their_throughput(
    maxConnections: int,
) -> None:
    baseline = fastAnswers(maxConnections, slow=False)
    withSlow = fastAnswers(maxConnections, slow=True)

    assert baseline > 1000
    assert withSlow >= baseline / 2, (withSlow, baseline)


@pytest.mark.parametrize("maxConnections", [4, 8])
def test_a_slow_script_after_the_idle_timeout_leaves_fast_requests_their_throughput(
    maxConnections: int,
) -> None:
    baseline = fastAnswers(maxConnections, slow=False, warmUp=True)
    withSlow = fastAnswers(maxConnections, slow=True, warmUp=True)

    assert withSlow >= baseline / 2, (withSlow, baseline)


@pytest.mark.parametrize("maxConnections", [4, 8])
def test_a_slow_script_with_dynamic_pm_leaves_fast_requests_their_throughput(
    maxConnections: int,
) -> None:
    """php-fpm starts with 2 children and forks more, up to 4, as they are all bound."""
    baseline = fastAnswers(maxConnections, slow=False, workers=2, maxChildren=4)
    withSlow = fastAnswers(maxConnections, slow=True, workers=2, maxChildren=4)

    assert withSlow >= baseline / 2, (withSlow, baseline)


def balancedFastAnswers(slow: bool, seconds: float = 3.0) -> int:
    clock = MemoryReactorClock()
    phpFPMs = [FakePHPFPM(clock, 4, scriptTimes=SCRIPT_TIMES) for _ in range(2)]
    balancer = Balancer(clock, {f"tcp:{n}": makePool(p, clock, 8) for n, p in enumerate(phpFPMs)})
    if slow:
        Client(clock, balancer, SLOW, until=0.001)
        run(clock, phpFPMs, until=0.001)
    fast = [Client(clock, balancer, FAST, until=seconds) for _ in range(16)]
    run(clock, phpFPMs, until=seconds)
    return answered(fast)


def test_a_slow_script_behind_a_balancer_leaves_fast_requests_their_throughput() -> None:
    baseline = balancedFastAnswers(slow=False)
    withSlow = balancedFastAnswers(slow=True)

    assert withSlow >= baseline / 2, (withSlow, baseline)


@pytest.mark.parametrize("maxChildren", [None, 4])
def test_more_connections_than_workers_never_leave_a_request_in_the_backlog(
    maxChildren: int | None,
) -> None:
    """
    As nginx with C{keepalive 16} in front of 4 workers (or 2 that grow to
    4): the pool may open 16 connections, 32 clients keep it busy, and a slow
    script runs now and then. Every request is answered, none waits much longer than its share
    of the 4 workers, and connections are kept rather than made anew.
    """
    clock = MemoryReactorClock()
    workers = 4 if maxChildren is None else 2
    phpFPM = FakePHPFPM(clock, workers, scriptTimes=SCRIPT_TIMES, maxChildren=maxChildren)
    pool = makePool(phpFPM, clock, maxConnections=16)
    fast = [Client(clock, pool, FAST, until=10.0) for _ in range(32)]
    slow = [Client(clock, pool, SLOW, until=start) for start in (0.001, 5.0)]
    run(clock, [phpFPM], until=10.0)
    run(clock, [phpFPM], until=20.0)

    assert not any(client.waiting for client in fast + slow)
    assert not any(client.failures for client in fast + slow)
    latencies = [latency for client in fast for latency in client.latencies]
    assert len(latencies) > 10 * 32
    # A fair share of 4 workers is 8 x 10 ms, and dynamic pm forks a child a
    # second; a request left in the backlog would wait for a slow script to
    # end, or for ever.
    assert max(latencies) < SLOW_SECONDS / 2
    assert phpFPM.connectAttempts < len(latencies) / 10


def test_while_php_fpm_is_frozen_no_request_waits_for_a_connection_past_its_read_timeout() -> None:
    """
    php-fpm stopped (SIGSTOP) under load, with a read timeout of 4 s: the
    requests waiting in the queue fail with BackendTimeout within 4 s of
    their arrival, instead of starting their own 4 s once they get one of
    the frozen connections; once php-fpm goes on (SIGCONT), so does service.
    """
    clock = MemoryReactorClock()
    phpFPM = FakePHPFPM(clock, 4, scriptTimes=SCRIPT_TIMES)
    pool = makePool(phpFPM, clock, maxConnections=4, readTimeout=4.0)
    clients = [Client(clock, pool, FAST, until=20.0) for _ in range(8)]
    run(clock, [phpFPM], until=1.0)
    phpFPM.freeze()
    run(clock, [phpFPM], until=10.0)
    answeredBeforeThaw = answered(clients)
    phpFPM.thaw()
    run(clock, [phpFPM], until=10.5)

    queued = [
        (waited, failure)
        for client in clients
        for waited, failure in client.failures
        if failure.check(BackendTimeout) and "connection" in failure.getErrorMessage()
    ]
    assert queued
    assert max(waited for waited, _ in queued) <= 4.0
    assert answered(clients) - answeredBeforeThaw > 100
