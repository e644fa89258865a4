"""
When a pool of FastCGI connections to php-fpm may open one more, and when it
must close one so that php-fpm can accept a request waiting in its listen
backlog: the policy of L{txfastcgi._client.pool.ConnectionPool}, apart from its
mechanism, as a pure object fed plain facts, so that it can be specified on
its own.

What it reasons from (php-fpm 8.2, C{pm = static} or C{dynamic}):

  - A worker accepts one connection and stays bound to it until it closes,
    busy or idle (kept with FCGI_KEEP_CONN).
  - While every worker is bound, new connections wait in the listen backlog,
    first in, first out. A worker accepts the oldest one when its own
    connection closes; with C{pm = dynamic} a child forked because no worker
    was free accepts one too, within about a second.
  - php-fpm says nothing when it accepts: a connection shows that it was
    accepted only when a byte of its first response arrives.

So, of the pool's open connections in the order they were opened: if the one
at position I{p} has been accepted, so have all the older ones, and php-fpm
has at least I{p} workers (L{PoolPolicy.workers}). A request on a connection
within that count was accepted at once, however long its script takes to
say anything: a slow script is not a backlogged request. A connection beyond
the count may be in the backlog behind workers bound to the pool's other
connections. It is given the benefit of the doubt for L{BACKLOG_GRACE}, or
until a connection that is free served a request sent after it; then that
connection is closed rather than kept, so that its worker accepts the
waiting one, and from then on the pool opens no more connections than the
workers it knows of, and one more for every L{PROBE_INTERVAL} since php-fpm
was last seen to run out. A probe that gets its answer raises the count.

The count cannot see workers taken by other clients of the same php-fpm, or
still running a script whose connection the pool gave up on (a read timeout,
a client that left). A request that has had no answer for
L{UNANSWERED_GRACE} while no worker was freed may wait behind those: a
connection is freed for it, and its wait starts again. A slow script thus
costs at most one new connection per L{UNANSWERED_GRACE}, and never lowers
the count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "BACKLOG_GRACE",
    "PROBE_INTERVAL",
    "UNANSWERED_GRACE",
    "PoolPolicy",
    "Seen",
    "Suspicion",
]

PROBE_INTERVAL = 1.0
"""
Seconds between tries of one more connection, once php-fpm has been seen to
have fewer workers than the pool may open connections.
"""

BACKLOG_GRACE = 0.1
"""
Seconds a request on a connection beyond the workers php-fpm is known to
have may go unanswered before a connection is freed for it.
"""

UNANSWERED_GRACE = 1.0
"""
Seconds any request may go unanswered, with no worker freed meanwhile,
before a connection is freed for it.
"""


@dataclass(frozen=True)
class Seen:
    """
    What the pool knows of one of its open connections.

    @ivar accepted: php-fpm has shown that it accepted the connection: a
        byte of a response came back on it.
    @ivar waitingSince: when the request it carries was sent, if that is its
        first request and php-fpm has not answered it yet; L{None} otherwise.
    @ivar request: the number of the request it carries or carried last, in
        the order requests were sent (0 for none).
    """

    accepted: bool
    waitingSince: float | None = None
    request: int = 0


class Suspicion(Enum):
    """Why a request may be waiting in php-fpm's backlog."""

    NONE = "none"
    BEYOND_WORKERS = "beyond the workers php-fpm is known to have"
    UNANSWERED = "unanswered for long"


class PoolPolicy:
    """
    How many connections a pool opens to one php-fpm, and when it frees one
    of php-fpm's workers for a request that may be in the backlog.

    @ivar workers: how many workers php-fpm has been seen to serve the pool
        with at once, at least 1.
    @ivar exhausted: whether php-fpm has been seen to run out of workers:
        from then on the pool opens no more connections than L{workers}, and
        one more now and then to see whether php-fpm has grown.
    """

    def __init__(self, maxConnections: int) -> None:
        self.maxConnections = maxConnections
        self.workers = 1
        self.exhausted = False
        self._exhaustedAt = -math.inf
        self._freedAt = -math.inf

    def learn(self, connections: Sequence[Seen]) -> None:
        """
        Learn from the pool's open connections, oldest first: an accepted one
        shows that php-fpm has a worker for it and each older one.
        """
        for position, seen in enumerate(connections, start=1):
            if seen.accepted and position > self.workers:
                self.workers = position

    def suspicion(self, now: float, connections: Sequence[Seen], holder: int) -> Suspicion:
        """
        Whether a request on one of C{connections} (the pool's open ones,
        oldest first) may be waiting in the backlog for a worker that one of
        the pool's free connections holds.

        @param holder: the number of the last request that free connection
            carried.
        """
        found = Suspicion.NONE
        for position, seen in enumerate(connections, start=1):
            since = seen.waitingSince
            if since is None:
                continue
            if position > self.workers and (seen.request < holder or now >= since + BACKLOG_GRACE):
                return Suspicion.BEYOND_WORKERS
            if now >= max(since, self._freedAt) + UNANSWERED_GRACE:
                found = Suspicion.UNANSWERED
        return found

    def freed(self, now: float, suspicion: Suspicion) -> None:
        """
        The pool closed a connection to free its worker for a request that
        may be waiting in the backlog, for this reason.
        """
        self._freedAt = now
        if suspicion is Suspicion.BEYOND_WORKERS:
            self.exhausted = True
            self._exhaustedAt = now

    def limit(self, now: float) -> int:
        """
        How many connections may be open or being made now: once php-fpm ran
        out of workers, those it is known to have, and one more for every
        L{PROBE_INTERVAL} since it was last seen to run out. A probe that
        carries a slow script, neither answered nor found in the backlog,
        thus holds up no other.
        """
        if not self.exhausted:
            return self.maxConnections
        probes = max(0, math.floor((now - self._exhaustedAt) / PROBE_INTERVAL))
        return min(self.maxConnections, self.workers + probes)

    def wakeAt(
        self, now: float, connections: Sequence[Seen], *, blocked: bool, holding: bool
    ) -> float | None:
        """
        When, if nothing else happens first, the pool must ask again: when a
        probe is due (if requests wait for a connection the limit does not
        allow, C{blocked}), or when a request's grace ends (if the pool has a
        free connection that holds a worker, C{holding}).
        """
        times = []
        if blocked and self.exhausted and self.limit(now) < self.maxConnections:
            elapsed = math.floor((now - self._exhaustedAt) / PROBE_INTERVAL)
            times.append(self._exhaustedAt + (elapsed + 1) * PROBE_INTERVAL)
        if holding:
            for position, seen in enumerate(connections, start=1):
                if seen.waitingSince is not None:
                    times.append(max(seen.waitingSince, self._freedAt) + UNANSWERED_GRACE)
                    if position > self.workers:
                        times.append(seen.waitingSince + BACKLOG_GRACE)
        return min((time for time in times if time > now), default=None)
