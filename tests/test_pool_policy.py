"""
L{PoolPolicy} on its own: plain facts about a pool's connections in, its
decisions out.
"""

from __future__ import annotations

import pytest

from txfastcgi._client.policy import (
    BACKLOG_GRACE,
    PROBE_INTERVAL,
    UNANSWERED_GRACE,
    PoolPolicy,
    Seen,
    Suspicion,
)

ACCEPTED = Seen(accepted=True, request=1)


def waiting(since: float, request: int) -> Seen:
    return Seen(accepted=False, waitingSince=since, request=request)


def test_php_fpm_has_at_least_one_worker_and_as_many_as_the_newest_accepted_position() -> None:
    policy = PoolPolicy(8)
    assert policy.workers == 1

    policy.learn([waiting(0, 1), waiting(0, 2), ACCEPTED, waiting(0, 4)])

    assert policy.workers == 3
    policy.learn([ACCEPTED])
    assert policy.workers == 3


@pytest.mark.parametrize("seconds", [0.5, 10.0, UNANSWERED_GRACE - 0.001])
def test_a_slow_script_within_the_known_workers_is_not_taken_for_a_backlogged_request(
    seconds: float,
) -> None:
    """The first connection, say: php-fpm accepted it at once, however long its script runs."""
    policy = PoolPolicy(8)
    connections = [waiting(0, 1), ACCEPTED]
    policy.learn(connections)
    policy.freed(seconds - 0.001, Suspicion.UNANSWERED)

    assert policy.suspicion(seconds, connections, holder=5) is Suspicion.NONE


def test_a_request_beyond_the_known_workers_sent_before_the_freed_ones_may_be_backlogged() -> None:
    policy = PoolPolicy(8)
    connections = [ACCEPTED, waiting(0, 2)]
    policy.learn(connections)

    assert policy.suspicion(0.001, connections, holder=3) is Suspicion.BEYOND_WORKERS


def test_a_request_beyond_the_known_workers_sent_after_the_freed_ones_gets_a_grace() -> None:
    """Sent at about the same time as the one that just ended, it may well be running."""
    policy = PoolPolicy(8)
    connections = [ACCEPTED, waiting(0, 2)]
    policy.learn(connections)

    assert policy.suspicion(BACKLOG_GRACE - 0.001, connections, holder=1) is Suspicion.NONE
    assert policy.suspicion(BACKLOG_GRACE, connections, holder=1) is Suspicion.BEYOND_WORKERS


def test_any_request_unanswered_for_long_with_no_worker_freed_may_be_backlogged() -> None:
    """Behind workers the count cannot see: other clients', or still running abandoned scripts."""
    policy = PoolPolicy(8)
    connections = [waiting(0, 1)]

    assert policy.suspicion(UNANSWERED_GRACE - 0.001, connections, holder=2) is Suspicion.NONE
    assert policy.suspicion(UNANSWERED_GRACE, connections, holder=2) is Suspicion.UNANSWERED
    policy.freed(UNANSWERED_GRACE, Suspicion.UNANSWERED)
    later = 2 * UNANSWERED_GRACE
    assert policy.suspicion(later - 0.001, connections, holder=2) is Suspicion.NONE
    assert policy.suspicion(later, connections, holder=2) is Suspicion.UNANSWERED


def test_until_php_fpm_runs_out_of_workers_the_limit_is_maxConnections() -> None:
    policy = PoolPolicy(8)
    policy.freed(0, Suspicion.UNANSWERED)

    assert not policy.exhausted
    assert policy.limit(0) == 8


def test_once_php_fpm_ran_out_the_limit_is_its_workers_and_one_more_a_probe_interval() -> None:
    policy = PoolPolicy(6)
    policy.learn([ACCEPTED, ACCEPTED, ACCEPTED])
    policy.freed(10, Suspicion.BEYOND_WORKERS)

    assert policy.exhausted
    assert [policy.limit(10 + n * PROBE_INTERVAL) for n in range(5)] == [3, 4, 5, 6, 6]
    policy.freed(12.5, Suspicion.BEYOND_WORKERS)
    assert policy.limit(12.5) == 3


def test_a_probe_that_is_answered_raises_the_limit_at_once() -> None:
    policy = PoolPolicy(6)
    policy.learn([ACCEPTED, ACCEPTED])
    policy.freed(0, Suspicion.BEYOND_WORKERS)

    policy.learn([ACCEPTED, ACCEPTED, ACCEPTED])

    assert policy.limit(0) == 3


def test_the_policy_asks_to_be_woken_for_a_probe_only_while_requests_wait_for_one() -> None:
    policy = PoolPolicy(6)
    policy.learn([ACCEPTED, ACCEPTED])
    policy.freed(10, Suspicion.BEYOND_WORKERS)
    connections = [ACCEPTED, ACCEPTED]

    assert policy.wakeAt(10.5, connections, blocked=True, holding=False) == 10 + PROBE_INTERVAL
    assert policy.wakeAt(10.5, connections, blocked=False, holding=False) is None


def test_the_policy_asks_to_be_woken_when_a_grace_ends_only_while_a_free_worker_is_held() -> None:
    policy = PoolPolicy(6)
    connections = [waiting(0, 1), waiting(0.05, 2)]

    assert policy.wakeAt(0.06, connections, blocked=False, holding=True) == 0.05 + BACKLOG_GRACE
    assert policy.wakeAt(0.06, connections, blocked=False, holding=False) is None
