"""
The timers behind a pool's timeouts: L{txfastcgi._limits.Deadlines}, exact
deadlines for many things on one timer, and a pool that keeps all of its
own (waiting requests', idle connections') and its connections' read
timeouts there, instead of a C{callLater} per request.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from tests.poolclients import answered
from tests.test_pool import Acquired
from tests.test_pool_backlog import FAST, FAST_SECONDS, Client, run
from tests.test_pool_backlog import makePool as backlogPool
from txfastcgi._client.pool import ConnectionPool
from txfastcgi._limits import Deadlines
from txfastcgi.errors import BackendTimeout, QueueTimeout
from txfastcgi.testing import FakeBackendEndpoint, FakePHPFPM, ResponseRecorder, stall

# Deadlines


def test_a_deadline_is_met_exactly() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    expired: list[str] = []
    deadlines.set("a", 10.0, lambda: expired.append("a"))
    clock.advance(9.999)
    assert expired == []
    clock.advance(0.001)
    assert expired == ["a"]
    assert "a" not in deadlines
    assert clock.getDelayedCalls() == []


def test_a_deadline_set_again_replaces_the_earlier_one_and_keeps_one_timer() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    expired: list[float] = []
    for moment in range(1, 10):
        clock.advance(1)
        deadlines.set("a", moment + 10.0, lambda: expired.append(clock.seconds()))
        assert len(clock.getDelayedCalls()) == 1
    clock.advance(18.999 - clock.seconds())
    assert expired == []
    clock.advance(0.001)
    assert expired == [19.0]


def test_an_earlier_deadline_brings_the_timer_forward() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    expired: list[str] = []
    deadlines.set("late", 60.0, lambda: expired.append("late"))
    deadlines.set("early", 5.0, lambda: expired.append("early"))
    assert [call.getTime() for call in clock.getDelayedCalls()] == [5.0]
    clock.advance(5)
    assert expired == ["early"]
    assert [call.getTime() for call in clock.getDelayedCalls()] == [60.0]
    clock.advance(55)
    assert expired == ["early", "late"]


def test_the_timer_stops_once_no_deadline_is_left() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    deadlines.set("a", 5.0, lambda: None)
    deadlines.set("b", 6.0, lambda: None)
    deadlines.clear("a")
    assert len(clock.getDelayedCalls()) == 1
    deadlines.clear("b")
    deadlines.clear("never set")
    assert clock.getDelayedCalls() == []
    assert len(deadlines) == 0


def test_a_deadline_cleared_by_another_ones_expiry_is_not_called() -> None:
    """Two requests due at once: failing the first may serve the second."""
    clock = Clock()
    deadlines = Deadlines(clock)
    expired: list[str] = []

    def first() -> None:
        expired.append("first")
        deadlines.clear("second")
        deadlines.set("third", 1.0, lambda: expired.append("third"))

    deadlines.set("first", 1.0, first)
    deadlines.set("second", 1.0, lambda: expired.append("second"))
    clock.advance(1)
    assert expired == ["first", "third"]
    assert clock.getDelayedCalls() == []


# The pool


def makePool() -> tuple[MemoryReactorClock, FakeBackendEndpoint, ConnectionPool]:
    clock = MemoryReactorClock()
    endpoint = FakeBackendEndpoint(clock, stall)
    pool = ConnectionPool(
        clock, endpoint, maxConnections=8, readTimeout=60, idleTimeout=5, queueTimeout=30
    )
    return clock, endpoint, pool


def test_a_busy_pool_with_a_long_queue_runs_one_timer() -> None:
    """
    32 requests on 8 connections: 8 read timeouts and 24 queue timeouts, on
    one timer, not 32 set and cancelled for every request.
    """
    clock, endpoint, pool = makePool()
    acquired = [Acquired(pool) for _ in range(32)]
    endpoint.flush()
    recorders = []
    for acquisition in acquired[:8]:
        recorder = ResponseRecorder()
        acquisition.protocol.sendRequest([], BytesIO(), 0, recorder, True)
        recorders.append(recorder)
    endpoint.flush()
    assert pool.statistics().waiting == 24
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(30)
    assert {type(a.failure.value) for a in acquired[8:]} == {QueueTimeout}
    assert [r.finished for r in recorders] == [False] * 8
    clock.advance(30)
    assert {type(r.failure.value) for r in recorders} == {BackendTimeout}


def test_an_idle_connections_timer_is_the_pools_one() -> None:
    clock, endpoint, pool = makePool()
    first, second = Acquired(pool), Acquired(pool)
    endpoint.flush()
    pool.release(first.protocol)
    pool.release(second.protocol)
    assert pool.statistics().idle == 2
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(5)
    endpoint.flush()
    assert pool.statistics().open == 0
    assert clock.getDelayedCalls() == []


def test_a_steady_load_sets_no_timer_per_request() -> None:
    """
    Eight clients on a pool of up to sixteen connections to four workers,
    each asking again as soon as it is answered: a thousand requests, and
    the pool's wake-up timer (for graces and probes) is set a handful of
    times, not twice for every request as it was while its time was compared
    with one that has a slack added.
    """
    clock = MemoryReactorClock()
    phpFPM = FakePHPFPM(clock, workers=4, scriptTimes={FAST: FAST_SECONDS})
    pool = backlogPool(phpFPM, clock, maxConnections=16)
    wakeUps = []
    callLater = clock.callLater

    def countingCallLater(delay: float, f: Callable[..., object], *a: object) -> IDelayedCall:
        if f == pool._update:
            wakeUps.append(clock.seconds())
        return callLater(delay, f, *a)

    clock.callLater = countingCallLater  # type: ignore[method-assign,assignment]
    clients = [Client(clock, pool, FAST, until=3.0) for _ in range(8)]
    run(clock, [phpFPM], until=4.0)
    assert answered(clients) > 1000
    assert len(wakeUps) < 20
