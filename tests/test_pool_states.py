"""
The state machine of a pool's connections: every state against every event.
"""

from __future__ import annotations

import itertools

import pytest

from txfastcgi._client.pool import TRANSITIONS, ConnectionState, PoolEvent, nextState
from txfastcgi.errors import PoolStateError

S, E = ConnectionState, PoolEvent

# Written out again, on purpose: the table in txfastcgi._client.pool must say this.
EXPECTED = {
    (S.CONNECTING, E.CONNECTED): S.IDLE,
    (S.CONNECTING, E.CONNECT_FAILED): S.CLOSED,
    (S.IDLE, E.LENT): S.BUSY,
    (S.IDLE, E.CLOSED): S.CLOSING,
    (S.IDLE, E.LOST): S.CLOSED,
    (S.BUSY, E.RETURNED): S.IDLE,
    (S.BUSY, E.CLOSED): S.CLOSING,
    (S.BUSY, E.LOST): S.LOST,
    (S.LOST, E.RETURNED): S.CLOSED,
    (S.CLOSING, E.LOST): S.CLOSED,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(ConnectionState, PoolEvent)))
def test_every_event_in_every_state_moves_as_the_table_says_or_raises(
    state: ConnectionState, event: PoolEvent
) -> None:
    if (state, event) in EXPECTED:
        assert nextState(state, event) is EXPECTED[state, event]
    else:
        with pytest.raises(PoolStateError, match=f"a {state.value} connection cannot be"):
            nextState(state, event)


def test_the_table_has_no_other_moves() -> None:
    assert TRANSITIONS == EXPECTED


def test_every_state_is_reached_from_connecting_and_closed_is_the_only_end() -> None:
    reached = {S.CONNECTING}
    while True:
        more = {after for (before, _), after in TRANSITIONS.items() if before in reached}
        if more <= reached:
            break
        reached |= more
    assert reached == set(ConnectionState)
    ends = {state for state in ConnectionState if not any(b is state for b, _ in TRANSITIONS)}
    assert ends == {S.CLOSED}


def test_a_connection_lent_is_never_closed_by_the_pool_only_given_back_or_lost() -> None:
    """A caller's connection is never aborted under it: only a busy one being given back is."""
    assert {event for (state, event) in TRANSITIONS if state is S.BUSY} == {
        E.RETURNED,
        E.CLOSED,
        E.LOST,
    }
