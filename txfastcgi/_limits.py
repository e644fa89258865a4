"""
What both HTTP fronts (L{txfastcgi._http.web} over twisted.web, and
L{txfastcgi._http.http1}) hold a client to, and the timers that enforce deadlines
without a C{callLater} per request (about 11 µs each, set and cancelled):
L{DeadlineSweep}, a look once a second, for the fronts' generous limits, and
L{Deadlines}, exact to the microsecond, for the FastCGI side's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADER_SIZE",
    "LINGER_TIME",
    "DeadlineSweep",
    "Deadlines",
]

DEFAULT_MAX_BODY_SIZE = 100 * 1024 * 1024
"""Largest request body accepted by default: 100 MiB."""

DEFAULT_MAX_HEADER_SIZE = 16 * 1024
"""
Largest request head (request line and header lines, without their line
ends) accepted by default: Twisted's own limit, twice nginx's per-line one.
"""

DEFAULT_HEADER_TIMEOUT = 60.0
"""Seconds a whole request head may take to arrive by default: nginx's."""

DEFAULT_BODY_TIMEOUT = 60.0
"""Seconds a request body may go without a byte by default: nginx's."""

LINGER_TIME = 5.0
"""Seconds to keep reading and dropping a refused request's remaining bytes."""

# Seconds between two looks at the deadlines of all connections.
_SWEEP_INTERVAL = 1.0


class WithDeadline(Protocol):
    """A connection that knows when it has waited too long."""

    def checkDeadline(self, now: float) -> None:
        """Act on any deadline passed by C{now}."""


class DeadlineSweep:
    """
    Looks at the deadlines of every tracked connection once a second: one
    timer for all of a factory's connections, running only while there are
    some, rather than a C{callLater} per request (about 11 µs each).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._connections: set[WithDeadline] = set()
        self._sweep = LoopingCall(self._check)
        self._sweep.clock = clock

    def track(self, connection: WithDeadline) -> None:
        self._connections.add(connection)
        if not self._sweep.running:
            self._sweep.start(_SWEEP_INTERVAL, now=False)

    def untrack(self, connection: WithDeadline) -> None:
        self._connections.discard(connection)
        if not self._connections and self._sweep.running:
            self._sweep.stop()

    def __len__(self) -> int:
        """How many connections are tracked: open ones, for a factory."""
        return len(self._connections)

    def _check(self) -> None:
        now = self._clock.seconds()
        for connection in list(self._connections):
            connection.checkDeadline(now)


# A timer set for the time T, as now + (T - now), may fire a rounding error
# before T: a deadline this close to the present has passed.
_ROUNDING_SLACK = 1e-6


class Deadlines:
    """
    Deadlines of many things, each met exactly, with one timer for all.

    Setting, moving or clearing a deadline is a dictionary operation: the
    timer is left where it is unless a deadline comes before it. When it
    fires, it calls back whatever is due and is set again for the earliest
    deadline left, so that deadlines that keep moving on (a read timeout
    restarted by every arrival, a request served long before its queue
    timeout) cost one firing per timeout's length, not a timer each. It runs
    only while some deadline is set.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._due: dict[Hashable, tuple[float, Callable[[], object]]] = {}
        self._call: IDelayedCall | None = None

    def set(self, key: Hashable, due: float, expired: Callable[[], object]) -> None:
        """
        Call C{expired} at the reactor time C{due}, unless C{key}'s deadline
        is set again or cleared before; this replaces C{key}'s earlier one.
        """
        self._due[key] = (due, expired)
        self._arm(due)

    def clear(self, key: Hashable) -> None:
        """Forget C{key}'s deadline, if it has one."""
        due = self._due
        if due.pop(key, None) is not None and not due:
            call, self._call = self._call, None
            if call is not None:
                call.cancel()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._due

    def __len__(self) -> int:
        """How many deadlines are set."""
        return len(self._due)

    def _fire(self) -> None:
        self._call = None
        now = self._clock.seconds() + _ROUNDING_SLACK
        due = self._due
        for key in [key for key, (time, _) in due.items() if time <= now]:
            # An earlier callback may have cleared it, or set it again.
            entry = due.get(key)
            if entry is not None and entry[0] <= now:
                del due[key]
                entry[1]()
        if due:
            self._arm(min(time for time, _ in due.values()))

    def _arm(self, due: float) -> None:
        """Make the timer fire at C{due} or before."""
        call = self._call
        if call is None:
            self._call = self._clock.callLater(max(0.0, due - self._clock.seconds()), self._fire)
        elif due < call.getTime():
            call.reset(max(0.0, due - self._clock.seconds()))
