"""
Tests for L{txfastcgi._client.pool.ConnectionPool}: connections to an in-memory
backend, opened, queued for, reused and closed on a L{MemoryReactorClock}.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from tests.poolclients import Acquisition
from txfastcgi._client.pool import ConnectionPool, PoolStatistics
from txfastcgi._client.protocol import FastCGIClientProtocol
from txfastcgi._fastcgi.records import Stdout
from txfastcgi.errors import BackendTimeout, BackendUnavailable, PoolStateError, QueueTimeout
from txfastcgi.testing import FakeBackend, FakeBackendEndpoint, Reply, ResponseRecorder, stall

CONNECT_TIMEOUT = 5.0
IDLE_TIMEOUT = 5.0
QUEUE_TIMEOUT = 30.0


def makePool(maxConnections: int) -> tuple[FakeBackendEndpoint, ConnectionPool]:
    """A pool and the endpoint of its fake php-fpm, whose C{clock} is the pool's."""
    clock = MemoryReactorClock()
    endpoint = FakeBackendEndpoint(clock)
    pool = ConnectionPool(
        clock,
        endpoint,
        maxConnections=maxConnections,
        connectTimeout=CONNECT_TIMEOUT,
        readTimeout=60,
        idleTimeout=IDLE_TIMEOUT,
        queueTimeout=QUEUE_TIMEOUT,
    )
    return endpoint, pool


def statistics(
    open: int = 0, idle: int = 0, busy: int = 0, connecting: int = 0, waiting: int = 0
) -> PoolStatistics:
    return PoolStatistics(open=open, idle=idle, busy=busy, connecting=connecting, waiting=waiting)


class Acquired(Acquisition):
    """One C{pool.acquire()} and what it has given so far."""

    def __init__(self, pool: ConnectionPool) -> None:
        super().__init__(pool.acquire())


def backendOf(endpoint: FakeBackendEndpoint, protocol: FastCGIClientProtocol) -> FakeBackend:
    [backend] = [link.backend for link in endpoint.links if link.client is protocol]
    return backend


def runRequest(
    endpoint: FakeBackendEndpoint, protocol: FastCGIClientProtocol, keepConnection: bool = True
) -> ResponseRecorder:
    """Run one request on C{protocol} as far as the backend lets it go."""
    recorder = ResponseRecorder()
    protocol.sendRequest([(b"REQUEST_METHOD", b"GET")], BytesIO(), 0, recorder, keepConnection)
    endpoint.flush()
    return recorder


def test_no_more_than_maxConnections_connections_are_opened() -> None:
    endpoint, pool = makePool(maxConnections=2)

    requests = [Acquired(pool) for _ in range(5)]
    assert pool.statistics() == statistics(connecting=2, waiting=3)
    endpoint.flush()

    assert endpoint.connectAttempts == 2
    assert [request.waiting for request in requests] == [False, False, True, True, True]
    assert requests[0].protocol is not requests[1].protocol
    assert pool.statistics() == statistics(open=2, busy=2, waiting=3)


def test_waiting_requests_get_a_connection_in_arrival_order() -> None:
    endpoint, pool = makePool(maxConnections=1)
    first, *waiting = [Acquired(pool) for _ in range(4)]
    endpoint.flush()
    protocol = first.protocol

    for served in range(1, len(waiting) + 1):
        assert runRequest(endpoint, protocol).events[-1] == ("ended", 0, 0)
        pool.release(protocol)
        assert [request.waiting for request in waiting] == [False] * served + [True] * (
            len(waiting) - served
        )
        assert waiting[served - 1].protocol is protocol

    assert endpoint.connectAttempts == 1


def test_a_freed_connection_goes_to_the_oldest_waiting_request_before_a_new_one_is_opened() -> None:
    endpoint, pool = makePool(maxConnections=2)
    _busy, second, oldest, newest = [Acquired(pool) for _ in range(4)]
    endpoint.flush()

    runRequest(endpoint, second.protocol)
    pool.release(second.protocol)
    endpoint.flush()

    assert oldest.protocol is second.protocol
    assert newest.waiting
    assert endpoint.connectAttempts == 2
    assert pool.statistics() == statistics(open=2, busy=2, waiting=1)


def requestInProgress(endpoint: FakeBackendEndpoint, protocol: FastCGIClientProtocol) -> None:
    """A response still coming when its HTTP client went away."""
    backendOf(endpoint, protocol).respond = stall
    runRequest(endpoint, protocol)


def requestNotKept(endpoint: FakeBackendEndpoint, protocol: FastCGIClientProtocol) -> None:
    """A request that did not ask to keep the connection, which the backend has not closed yet."""
    backendOf(endpoint, protocol).respond = Reply(close=False)
    runRequest(endpoint, protocol, keepConnection=False)


def requestFailed(endpoint: FakeBackendEndpoint, protocol: FastCGIClientProtocol) -> None:
    """A request that failed on a protocol error, before the close completed."""
    backend = backendOf(endpoint, protocol)
    backend.respond = lambda backend, request: backend.sendRaw(Stdout(2, b"x").encode())
    recorder = ResponseRecorder()
    protocol.sendRequest([], BytesIO(), 0, recorder, True)
    [link] = [link for link in endpoint.links if link.backend is backend]
    while not recorder.finished:
        link.pump()


@pytest.mark.parametrize("spoil", [requestInProgress, requestNotKept, requestFailed])
def test_a_released_connection_that_cannot_be_reused_is_closed_and_replaced_for_the_oldest_waiter(
    spoil: Callable[[FakeBackendEndpoint, FastCGIClientProtocol], None],
) -> None:
    endpoint, pool = makePool(maxConnections=1)
    first, oldest, newest = [Acquired(pool) for _ in range(3)]
    endpoint.flush()
    spoiled = first.protocol
    spoil(endpoint, spoiled)
    assert not backendOf(endpoint, spoiled).closed

    pool.release(spoiled)
    endpoint.flush()

    assert backendOf(endpoint, spoiled).closed
    assert endpoint.connectAttempts == 2
    assert oldest.protocol is endpoint.links[1].client
    assert newest.waiting
    assert pool.statistics() == statistics(open=1, busy=1, waiting=1)


def test_an_idle_connection_closes_after_the_idle_timeout() -> None:
    endpoint, pool = makePool(maxConnections=2)
    clock = endpoint.clock
    request = Acquired(pool)
    endpoint.flush()
    runRequest(endpoint, request.protocol)
    pool.release(request.protocol)
    assert pool.statistics() == statistics(open=1, idle=1)

    clock.advance(IDLE_TIMEOUT - 0.001)
    endpoint.flush()
    assert endpoint.openConnections == 1
    clock.advance(0.001)
    endpoint.flush()

    assert endpoint.openConnections == 0
    assert pool.statistics() == statistics()


def test_the_most_recently_used_idle_connection_is_reused_first_so_the_others_age_out() -> None:
    endpoint, pool = makePool(maxConnections=2)
    clock = endpoint.clock
    first, second = Acquired(pool), Acquired(pool)
    endpoint.flush()
    for request in (first, second):
        runRequest(endpoint, request.protocol)
        pool.release(request.protocol)

    clock.advance(IDLE_TIMEOUT - 1)
    again = Acquired(pool)
    clock.advance(1)
    endpoint.flush()

    assert again.protocol is second.protocol
    assert backendOf(endpoint, first.protocol).closed
    assert pool.statistics() == statistics(open=1, busy=1)


def test_an_idle_connection_taken_again_is_not_closed_by_its_old_idle_timer() -> None:
    endpoint, pool = makePool(maxConnections=2)
    clock = endpoint.clock
    first = Acquired(pool)
    endpoint.flush()
    runRequest(endpoint, first.protocol)
    pool.release(first.protocol)

    clock.advance(IDLE_TIMEOUT - 1)
    second = Acquired(pool)
    clock.advance(IDLE_TIMEOUT * 10)
    endpoint.flush()

    assert second.protocol is first.protocol
    assert endpoint.openConnections == 1
    assert runRequest(endpoint, second.protocol).events[-1] == ("ended", 0, 0)
    assert pool.statistics() == statistics(open=1, busy=1)


def test_an_idle_connection_whose_timeout_expired_is_not_handed_out_while_it_closes() -> None:
    endpoint, pool = makePool(maxConnections=1)
    clock = endpoint.clock
    first = Acquired(pool)
    endpoint.flush()
    runRequest(endpoint, first.protocol)
    pool.release(first.protocol)

    clock.advance(IDLE_TIMEOUT)
    second = Acquired(pool)
    endpoint.flush()

    assert second.protocol is not first.protocol
    assert second.protocol.reusable
    assert backendOf(endpoint, first.protocol).closed
    assert pool.statistics() == statistics(open=1, busy=1)


def usedOnce(endpoint: FakeBackendEndpoint, pool: ConnectionPool) -> Acquired:
    """A connection that carried a request and was given back: now idle."""
    request = Acquired(pool)
    endpoint.flush()
    runRequest(endpoint, request.protocol)
    pool.release(request.protocol)
    return request


def test_an_idle_connection_closed_by_the_backend_is_dropped_and_never_handed_out() -> None:
    endpoint, pool = makePool(maxConnections=1)
    first = usedOnce(endpoint, pool)

    backendOf(endpoint, first.protocol).close()
    endpoint.flush()
    assert pool.statistics() == statistics()
    second = Acquired(pool)
    endpoint.flush()

    assert second.protocol is not first.protocol
    assert endpoint.connectAttempts == 2
    assert pool.statistics() == statistics(open=1, busy=1)


def test_an_idle_connection_that_received_stray_output_is_not_handed_out_while_it_closes() -> None:
    endpoint, pool = makePool(maxConnections=1)
    first = Acquired(pool)
    endpoint.flush()
    runRequest(endpoint, first.protocol)
    pool.release(first.protocol)

    # The stray bytes reach the client, which gives up on the connection;
    # the close itself completes a reactor turn later.
    backendOf(endpoint, first.protocol).sendStdout(b"stray")
    endpoint.links[0].pump()
    second = Acquired(pool)
    endpoint.flush()

    assert second.protocol is not first.protocol
    assert second.protocol.reusable
    assert backendOf(endpoint, first.protocol).closed
    assert pool.statistics() == statistics(open=1, busy=1)


def test_a_request_that_waits_longer_than_the_queue_timeout_fails_with_QueueTimeout() -> None:
    endpoint, pool = makePool(maxConnections=1)
    clock = endpoint.clock
    first, second = Acquired(pool), Acquired(pool)
    endpoint.flush()

    clock.advance(QUEUE_TIMEOUT - 0.001)
    assert second.waiting
    clock.advance(0.001)

    assert second.failure.check(QueueTimeout)
    assert pool.statistics() == statistics(open=1, busy=1)
    runRequest(endpoint, first.protocol)
    pool.release(first.protocol)
    assert pool.statistics() == statistics(open=1, idle=1)


def test_a_cancelled_waiting_request_leaves_the_queue_and_does_not_swallow_a_connection() -> None:
    endpoint, pool = makePool(maxConnections=1)
    first, gone, next = [Acquired(pool) for _ in range(3)]
    endpoint.flush()

    gone.deferred.cancel()
    assert gone.failure.check(CancelledError)
    assert pool.statistics() == statistics(open=1, busy=1, waiting=1)
    runRequest(endpoint, first.protocol)
    pool.release(first.protocol)

    assert next.protocol is first.protocol
    assert pool.statistics() == statistics(open=1, busy=1)


def test_a_request_cancelled_while_its_connection_is_made_leaves_that_connection_to_the_next() -> (
    None
):
    endpoint, pool = makePool(maxConnections=1)
    first, gone, next = [Acquired(pool) for _ in range(3)]
    endpoint.flush()
    requestInProgress(endpoint, first.protocol)

    endpoint.hold = True
    pool.release(first.protocol)
    endpoint.flush()
    assert endpoint.heldAttempts == 1
    gone.deferred.cancel()
    endpoint.completeHeld()
    endpoint.flush()

    assert gone.failure.check(CancelledError)
    assert next.protocol is endpoint.links[1].client
    assert endpoint.connectAttempts == 2
    assert pool.statistics() == statistics(open=1, busy=1)


def test_a_request_cancelled_while_connecting_leaves_that_connection_to_a_waiting_one() -> None:
    endpoint, pool = makePool(maxConnections=1)
    endpoint.hold = True
    gone, next = Acquired(pool), Acquired(pool)

    gone.deferred.cancel()
    assert gone.failure.check(CancelledError)
    endpoint.completeHeld()
    endpoint.flush()

    assert endpoint.connectAttempts == 1
    assert next.protocol is endpoint.links[0].client
    assert pool.statistics() == statistics(open=1, busy=1)


def test_a_connect_no_request_waits_for_any_more_is_given_up() -> None:
    """A backend that swallows connects then holds up no later request."""
    endpoint, pool = makePool(maxConnections=1)
    endpoint.hold = True
    gone = Acquired(pool)

    gone.deferred.cancel()
    endpoint.hold = False
    later = Acquired(pool)
    endpoint.flush()

    assert endpoint.heldAttempts == 0
    assert later.protocol is endpoint.links[0].client
    assert endpoint.connectAttempts == 2


def test_a_connect_given_up_for_a_request_that_left_fails_no_one_else() -> None:
    """
    Twisted's endpoints fail a cancelled connect with ConnectingCancelledError:
    that is no backend failure, and the request still waiting must not get it.
    """
    endpoint, pool = makePool(maxConnections=2)
    endpoint.hold = True
    gone, staying = Acquired(pool), Acquired(pool)

    gone.deferred.cancel()
    endpoint.completeHeld()
    endpoint.flush()

    assert gone.failure.check(CancelledError)
    assert staying.protocol is endpoint.links[0].client
    assert endpoint.connectAttempts == 2
    assert pool.statistics() == statistics(open=1, busy=1)


def test_a_refused_connect_fails_the_request_and_those_waiting_with_BackendUnavailable() -> None:
    endpoint, pool = makePool(maxConnections=1)
    endpoint.refuse = True

    requests = [Acquired(pool) for _ in range(3)]
    endpoint.flush()

    for request in requests:
        assert request.failure.check(BackendUnavailable)
    assert pool.statistics() == statistics()
    endpoint.refuse = False
    later = Acquired(pool)
    endpoint.flush()
    assert later.protocol.reusable


def test_a_connect_that_never_completes_fails_with_BackendUnavailable_after_the_timeout() -> None:
    endpoint, pool = makePool(maxConnections=1)
    clock = endpoint.clock
    endpoint.hold = True

    request = Acquired(pool)
    clock.advance(CONNECT_TIMEOUT - 0.001)
    assert request.waiting
    assert pool.statistics() == statistics(connecting=1)
    clock.advance(0.001)

    assert request.failure.check(BackendUnavailable)
    assert "timed out" in request.failure.getErrorMessage()
    assert endpoint.heldAttempts == 0
    assert pool.statistics() == statistics()


def test_statistics_count_open_idle_busy_connecting_and_waiting() -> None:
    endpoint, pool = makePool(maxConnections=3)
    _busy, second = Acquired(pool), Acquired(pool)
    endpoint.flush()
    runRequest(endpoint, second.protocol)
    pool.release(second.protocol)
    assert pool.statistics() == statistics(open=2, idle=1, busy=1)

    endpoint.hold = True
    Acquired(pool), Acquired(pool)
    assert pool.statistics() == statistics(open=2, busy=2, connecting=1)
    Acquired(pool), Acquired(pool)
    assert pool.statistics() == statistics(open=2, busy=2, connecting=1, waiting=2)


def test_a_connection_given_back_goes_to_a_request_waiting_for_a_connect_in_progress() -> None:
    endpoint, pool = makePool(maxConnections=2)
    first = Acquired(pool)
    endpoint.flush()
    endpoint.hold = True
    second = Acquired(pool)
    runRequest(endpoint, first.protocol)

    pool.release(first.protocol)
    endpoint.completeHeld()
    endpoint.flush()

    assert second.protocol is first.protocol
    assert pool.statistics() == statistics(open=2, idle=1, busy=1)


def test_close_closes_the_idle_connections_and_leaves_the_busy_ones() -> None:
    endpoint, pool = makePool(maxConnections=2)
    busy, idle = Acquired(pool), Acquired(pool)
    endpoint.flush()
    runRequest(endpoint, idle.protocol)
    pool.release(idle.protocol)

    pool.close()
    later = Acquired(pool)
    endpoint.flush()

    assert backendOf(endpoint, idle.protocol).closed
    assert not backendOf(endpoint, busy.protocol).closed
    assert later.protocol is not idle.protocol


def test_after_close_a_released_connection_is_closed_not_kept() -> None:
    endpoint, pool = makePool(maxConnections=2)
    busy = Acquired(pool)
    endpoint.flush()
    runRequest(endpoint, busy.protocol)

    pool.close()
    pool.release(busy.protocol)
    endpoint.flush()

    assert backendOf(endpoint, busy.protocol).closed
    assert pool.statistics() == statistics()


def fullPool() -> tuple[Clock, ConnectionPool]:
    """A pool whose one connection is busy, at time 100."""
    endpoint, pool = makePool(maxConnections=1)
    endpoint.clock.advance(100)
    Acquired(pool)
    endpoint.flush()
    return endpoint.clock, pool


def test_a_waiting_request_fails_with_BackendTimeout_at_its_read_timeout_from_its_arrival() -> None:
    """
    A request that arrived 50 s before it asked waits at most 10 s more, with
    a read timeout of 60 s, though the queue timeout is 30 s: it is then a
    504, as if php-fpm had not answered in time, which it has not.
    """
    clock, pool = fullPool()

    late = Acquisition(pool.acquire(since=clock.seconds() - 50))
    clock.advance(10 - 0.001)
    assert late.waiting
    clock.advance(0.001)

    assert late.failure.check(BackendTimeout)
    assert pool.statistics() == statistics(open=1, busy=1)


def test_the_queue_timeout_applies_when_it_comes_before_the_read_timeout() -> None:
    clock, pool = fullPool()

    waiting = Acquisition(pool.acquire(since=clock.seconds() - 20))
    clock.advance(QUEUE_TIMEOUT)

    assert waiting.failure.check(QueueTimeout)


def test_a_request_past_its_read_timeout_gets_no_connection() -> None:
    endpoint, pool = makePool(maxConnections=1)
    clock = endpoint.clock
    clock.advance(100)

    late = Acquisition(pool.acquire(since=clock.seconds() - 60))

    assert late.failure.check(BackendTimeout)
    assert endpoint.connectAttempts == 0


def test_a_connection_given_back_twice_is_an_error() -> None:
    endpoint, pool = makePool(maxConnections=1)
    request = usedOnce(endpoint, pool)

    with pytest.raises(PoolStateError):
        pool.release(request.protocol)
