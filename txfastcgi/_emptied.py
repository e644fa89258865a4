"""
Waiting for something counted to be down to none: requests in flight, open
connections, running processes. Each graceful shutdown step waits for one.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed

__all__ = ["Emptied"]


class Emptied:
    """The callers waiting for one count to reach zero."""

    def __init__(self) -> None:
        self._waiters: list[Deferred[None]] = []

    def wait(self, empty: bool) -> Deferred[None]:
        """Fires at once if the count is C{empty} already, else at L{fire}."""
        if empty:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def fire(self) -> None:
        """The count has reached zero: wake every waiter."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
