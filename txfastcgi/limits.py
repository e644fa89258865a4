"""
What both HTTP fronts (L{txfastcgi.web} over twisted.web, and
L{txfastcgi.http1}) hold a client to, and the one timer that enforces
their deadlines.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADER_SIZE",
    "LINGER_TIME",
    "DeadlineSweep",
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
