"""
Requests balanced over several FastCGI backends, each with its own pool.

A request goes to the backend with the fewest outstanding requests: those
holding one of its connections, plus those waiting for one. Ties go round
the backends in turn, so that light traffic is spread too.

Health checks are passive: a backend whose pool cannot connect (refused, or
timed out) is marked down for a while and the request is tried on another;
each request tries each backend at most once. Once its down time is over a
backend gets one request, a probe, and is up again if that request gets a
connection. When every backend is down, a request still tries them, in the
order their down times end, so that a backend back from a restart (a lone
one, say) is found at once. Each backend takes one probe at a time: one
that swallows connects (a host that is gone) holds up only its probe, and
the other requests fail at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txfastcgi._client.pool import ConnectionPool, PoolStatistics
from txfastcgi._client.protocol import FastCGIClientProtocol
from txfastcgi.errors import BackendTimeout, BackendUnavailable, QueueTimeout

__all__ = ["BackendGroup", "BackendStatistics", "Balancer"]


@dataclass(frozen=True)
class BackendStatistics:
    """
    A snapshot of one backend, for the status page and the metrics.

    @ivar endpoint: the backend's endpoint description, as configured.
    @ivar up: whether it takes requests; L{False} from a failed connect until
        a probe gets a connection again.
    @ivar requests: requests it was given a connection for.
    @ivar errors: requests that could not get a connection to it: connect
        refused or timed out, or waited longer than the queue timeout or
        past their read timeout.
    @ivar connections: its pool's connections and queue.
    """

    endpoint: str
    up: bool
    requests: int
    errors: int
    connections: PoolStatistics


class _Backend:
    """One backend's pool and what the balancer knows of it."""

    def __init__(self, index: int, endpoint: str, pool: ConnectionPool) -> None:
        self.index = index
        self.endpoint = endpoint
        self.pool = pool
        self.outstanding = 0
        self.requests = 0
        self.errors = 0
        self.down = False
        # While down: when its down time ends and it may be probed.
        self.downUntil = 0.0
        self.probing = False


class Balancer:
    """
    A L{txfastcgi._http.core.ConnectionSource} over several backends.

    @param pools: a pool for each backend, by the backend's endpoint
        description (shown in logs and statistics).
    @param downTime: seconds a backend that could not be connected to is
        left alone while other backends are up.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        pools: Mapping[str, ConnectionPool],
        *,
        downTime: float = 10.0,
    ) -> None:
        if not pools:
            raise ValueError("a balancer needs at least one backend")
        self._reactor = reactor
        self._downTime = downTime
        self._backends = [
            _Backend(index, endpoint, pool) for index, (endpoint, pool) in enumerate(pools.items())
        ]
        self._turn = 0
        self._owners: dict[FastCGIClientProtocol, _Backend] = {}

    def acquire(
        self, fresh: bool = False, since: float | None = None
    ) -> Deferred[FastCGIClientProtocol]:
        """
        A connection to one of the backends, for one request; a new one, not
        a kept one, if C{fresh}; not later than the read timeout after
        C{since}, the reactor time the request arrived (see
        L{ConnectionPool.acquire}).

        Fails with L{BackendUnavailable} when no backend could be connected
        to, or with L{QueueTimeout} or L{BackendTimeout} when the chosen
        backend stayed busy too long (trying another then would double the
        wait).
        """
        if since is None:
            since = self._reactor.seconds()
        return self._acquireFrom(fresh, since, [])

    def _acquireFrom(
        self, fresh: bool, since: float, tried: list[tuple[_Backend, BackendUnavailable]]
    ) -> Deferred[FastCGIClientProtocol]:
        """
        Try the best backend not tried yet, and the next one if it cannot be
        connected to. Callbacks rather than a coroutine: this runs for every
        request, and cancelling the result still cancels the pool's wait.
        """
        backend = self._choose({backend for backend, _ in tried})
        if backend is None:
            return fail(
                BackendUnavailable(
                    "; ".join(f"{failed.endpoint}: {error}" for failed, error in tried)
                    or "every FastCGI backend is down"
                )
            )
        probe = backend.down
        backend.probing = probe
        backend.outstanding += 1

        def acquired(protocol: FastCGIClientProtocol) -> FastCGIClientProtocol:
            if probe:
                backend.probing = False
                self._markUp(backend)
            backend.requests += 1
            self._owners[protocol] = backend
            return protocol

        def failed(reason: Failure) -> Failure | Deferred[FastCGIClientProtocol]:
            backend.outstanding -= 1
            backend.probing = False
            error = reason.value
            if isinstance(error, BackendUnavailable):
                backend.errors += 1
                self._markDown(backend, error)
                tried.append((backend, error))
                return self._acquireFrom(fresh, since, tried)
            if isinstance(error, (QueueTimeout, BackendTimeout)):
                backend.errors += 1
            # Otherwise cancelled, because the client went away.
            return reason

        return backend.pool.acquire(fresh, since).addCallbacks(acquired, failed)

    def release(self, protocol: FastCGIClientProtocol) -> None:
        """Give a connection back to the pool it came from."""
        backend = self._owners.pop(protocol)
        backend.outstanding -= 1
        backend.pool.release(protocol)

    def statistics(self) -> list[BackendStatistics]:
        """A snapshot of each backend, in the order they were given."""
        return [
            BackendStatistics(
                endpoint=backend.endpoint,
                up=not backend.down,
                requests=backend.requests,
                errors=backend.errors,
                connections=backend.pool.statistics(),
            )
            for backend in self._backends
        ]

    @property
    def pools(self) -> dict[str, ConnectionPool]:
        """Each backend's pool, by endpoint description, in the order they were given."""
        return {backend.endpoint: backend.pool for backend in self._backends}

    def close(self) -> None:
        """Close every pool's idle connections, for shutdown."""
        for backend in self._backends:
            backend.pool.close()

    def _choose(self, tried: set[_Backend]) -> _Backend | None:
        """
        The backend to try next: of those up or due for a probe, the one
        with the fewest outstanding requests; failing that, the down one
        whose down time ends first. None that this request has tried, nor
        any that another request is probing.
        """
        if len(self._backends) == 1:
            # One backend: the common case, on every request.
            (only,) = self._backends
            return None if only in tried or only.probing else only
        now = self._reactor.seconds()
        candidates = [
            backend for backend in self._backends if backend not in tried and not backend.probing
        ]
        live = [backend for backend in candidates if not backend.down or backend.downUntil <= now]
        if live:
            count = len(self._backends)
            turn, self._turn = self._turn, (self._turn + 1) % count
            return min(live, key=lambda b: (b.outstanding, (b.index - turn) % count))
        return min(candidates, key=lambda b: b.downUntil, default=None)

    def _markDown(self, backend: _Backend, error: BackendUnavailable) -> None:
        if not backend.down:
            backend.down = True
            self.log.warn(
                "FastCGI backend {endpoint} marked down: {error}",
                endpoint=backend.endpoint,
                downTime=self._downTime,
                error=str(error),
            )
        backend.downUntil = self._reactor.seconds() + self._downTime

    def _markUp(self, backend: _Backend) -> None:
        backend.down = False
        self.log.info("FastCGI backend {endpoint} is up again", endpoint=backend.endpoint)


class BackendGroup:
    """
    The backends of several balancers, as one for the status page and the
    metrics: those of every site a process serves. A backend that two
    balancers share (two sites name it) shows once, with the requests and
    errors of both, and is up while neither has it down.

    @ivar balancers: the balancers, replaced whole when the sites are.
    """

    def __init__(self, balancers: Sequence[Balancer]) -> None:
        self.balancers = list(balancers)

    @property
    def pools(self) -> dict[str, ConnectionPool]:
        """Each backend's pool, by endpoint description, in the order the balancers give them."""
        pools: dict[str, ConnectionPool] = {}
        for balancer in self.balancers:
            for endpoint, pool in balancer.pools.items():
                pools.setdefault(endpoint, pool)
        return pools

    def statistics(self) -> list[BackendStatistics]:
        """A snapshot of each backend, once, in the order of L{pools}."""
        merged: dict[str, BackendStatistics] = {}
        for balancer in self.balancers:
            for backend in balancer.statistics():
                seen = merged.get(backend.endpoint)
                merged[backend.endpoint] = (
                    backend
                    if seen is None
                    else dataclasses.replace(
                        seen,
                        up=seen.up and backend.up,
                        requests=seen.requests + backend.requests,
                        errors=seen.errors + backend.errors,
                    )
                )
        return list(merged.values())

    def close(self) -> None:
        """Close every pool's idle connections, for shutdown."""
        for pool in self.pools.values():
            pool.close()
