"""
A pool of kept-alive FastCGI connections to one backend.

php-fpm binds a worker to each open connection, idle or not, and leaves new
connections in its listen backlog while all workers are bound. A pool that
opened a connection whenever none was idle could therefore starve itself
behind its own idle connections. This one caps open connections, queues the
requests beyond the cap in arrival order, and hands a freed connection to the
oldest waiting request before anything opens another, unless a request may
be waiting in php-fpm's listen backlog: then it closes the freed connection,
so that its worker accepts the backlogged one, and learns to keep no more
connections than php-fpm has shown it serves.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from txfastcgi.client import FastCGIClientProtocol

__all__ = ["BackendUnavailable", "ConnectionPool", "PoolStatistics", "QueueTimeout"]


PROBE_INTERVAL = 1.0
"""
Seconds between tries of one more connection, once the pool has learnt that
the backend served fewer than C{maxConnections} at once.
"""

BACKLOG_GRACE = 0.1
"""
Seconds a freed connection idles while a request on a new connection has had
no answer at all, before it is closed to let php-fpm accept that request.
"""


class BackendUnavailable(Exception):
    """No connection to the backend could be made (refused, or timed out)."""


class QueueTimeout(Exception):
    """A request waited longer than the queue timeout for a free connection."""


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool, for the status resource and for tests."""

    open: int
    idle: int
    busy: int
    connecting: int
    waiting: int


class ConnectionPool:
    """
    Connections to one FastCGI backend, at most C{maxConnections} at once.

    @param endpoint: where the backend listens.
    @param connectTimeout: seconds a connect may take before the request
        fails with L{BackendUnavailable}.
    @param readTimeout: seconds the backend may stay silent during a request.
    @param idleTimeout: seconds an idle kept connection stays open.
    @param queueTimeout: seconds a request may wait for a connection before
        it fails with L{QueueTimeout}.
    @param name: the backend's name in logs, such as its endpoint string.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: IStreamClientEndpoint,
        *,
        maxConnections: int = 8,
        connectTimeout: float = 5.0,
        readTimeout: float = 60.0,
        idleTimeout: float = 5.0,
        queueTimeout: float = 30.0,
        name: str | None = None,
    ) -> None:
        self._reactor = reactor
        self._endpoint = endpoint
        self.name = repr(endpoint) if name is None else name
        self.maxConnections = maxConnections
        # As many connections as the backend has shown it can serve at once.
        self._limit = maxConnections
        self._lastShrink = -math.inf
        self._connectTimeout = connectTimeout
        self._readTimeout = readTimeout
        self._idleTimeout = idleTimeout
        self._queueTimeout = queueTimeout
        self._connections: set[FastCGIClientProtocol] = set()
        self._idle: list[FastCGIClientProtocol] = []
        self._idleTimers: dict[FastCGIClientProtocol, IDelayedCall] = {}
        self._connecting = 0
        self._waiting: deque[Deferred[FastCGIClientProtocol]] = deque()
        # Waiting requests that must have a new connection, not a kept one.
        self._wantNew: set[Deferred[FastCGIClientProtocol]] = set()

    def statistics(self) -> PoolStatistics:
        """How many connections are open, idle, busy and being made, and how many requests wait."""
        return PoolStatistics(
            open=len(self._connections),
            idle=len(self._idle),
            busy=len(self._connections) - len(self._idle),
            connecting=self._connecting,
            waiting=len(self._waiting),
        )

    def acquire(self, fresh: bool = False) -> Deferred[FastCGIClientProtocol]:
        """
        A connection for one request, all to the caller until L{release}.

        The most recently used idle connection is reused first, so that the
        others age out; failing that a new one is opened under the cap;
        failing that the request waits in line.

        @param fresh: a new connection, never a kept one: for a request sent
            again because its kept connection turned out to be closed, when
            the other kept ones may be closed too (php-fpm restarted, or its
            workers reached pm.max_requests).
        """
        while self._idle and not fresh:
            protocol = self._takeIdle()
            if protocol.reusable:
                return succeed(protocol)
            # It broke while idle (the backend sent stray bytes) and its
            # close has not completed yet.
            protocol.abort()
        if self._mayConnect():
            return self._connect()
        waiter: Deferred[FastCGIClientProtocol] = Deferred(self._forget)
        if fresh:
            self._wantNew.add(waiter)
            if self._idle:
                # Make room: the new connection is opened once this one closes.
                self._closeIdle(self._idle[0])
        self._waiting.append(waiter)
        waiter.addTimeout(self._queueTimeout, self._reactor)
        waiter.addErrback(self._queueTimedOut)
        return waiter

    def _forget(self, waiter: Deferred[FastCGIClientProtocol]) -> None:
        # A waiter already handed a connection is no longer in line.
        self._wantNew.discard(waiter)
        if waiter in self._waiting:
            self._waiting.remove(waiter)

    def _queueTimedOut(self, reason: Failure) -> Failure:
        if reason.check(TimeoutError):
            self.log.warn(
                "FastCGI pool saturated: a request waited {timeout} s for one of "
                "{maxConnections} connections",
                timeout=self._queueTimeout,
                maxConnections=self.maxConnections,
            )
            return Failure(
                QueueTimeout(f"no FastCGI connection free within {self._queueTimeout} s")
            )
        return reason

    def release(self, protocol: FastCGIClientProtocol) -> None:
        """
        Give back a connection. One that cannot carry another request (an
        error, an aborted response, a backend that did not keep it) is
        closed; a good one goes to the oldest waiting request, or idles.

        php-fpm may hold a request in its listen backlog while all its workers
        are bound to other connections, and a worker stays bound to its
        connection as long as that is open, busy or idle. So a freed
        connection is closed instead of handed on when a request sent before
        the one that just ended may be backlogged: its worker then accepts
        that request, and requests are served in order. A newer request on a
        new connection is most likely still running, and closing for it would
        cost every connection its keep-alive under load. An idle connection
        helps nobody: while anything may be backlogged it is closed after
        L{BACKLOG_GRACE} seconds instead of the idle timeout.
        """
        if not protocol.reusable:
            protocol.abort()
        elif self._waiting:
            if self._backlogged(protocol.requestNumber):
                self._closeForBacklog(protocol)
            elif self._waiting[0] in self._wantNew:
                # The waiting request gets a new connection once this closes.
                protocol.abort()
            else:
                self._waiting.popleft().callback(protocol)
        else:
            self._idle.append(protocol)
            closeAt = self._reactor.seconds() + self._idleTimeout
            if self._backlogged():
                self._idleTimers[protocol] = self._reactor.callLater(
                    BACKLOG_GRACE, self._closeIdleIfBacklogged, protocol, closeAt
                )
            else:
                self._idleTimers[protocol] = self._reactor.callLater(
                    self._idleTimeout, self._closeIdle, protocol
                )

    def _closeIdleIfBacklogged(self, protocol: FastCGIClientProtocol, closeAt: float) -> None:
        if self._backlogged():
            self._removeIdle(protocol)
            self._closeForBacklog(protocol)
        else:
            # No new connection opens while one idles: no backlog can form.
            self._idleTimers[protocol] = self._reactor.callLater(
                max(0.0, closeAt - self._reactor.seconds()), self._closeIdle, protocol
            )

    def _closeForBacklog(self, protocol: FastCGIClientProtocol) -> None:
        """
        Close a connection so that its worker accepts a backlogged one, and
        learn from it: the backend has a worker for each connection it has
        accepted and none more, so no more connections than that are kept
        open until a probe finds that it has more (L{PROBE_INTERVAL}).
        """
        accepted = sum(not other.maybeInBacklog for other in self._connections)
        self._limit = max(1, min(self._limit, accepted))
        self._lastShrink = self._reactor.seconds()
        protocol.abort()

    def _backlogged(self, sentBefore: float = math.inf) -> bool:
        """
        Whether a request (sent before request number C{sentBefore}) may be
        waiting in the backend's listen backlog.
        """
        return any(
            protocol.maybeInBacklog and protocol.requestNumber < sentBefore
            for protocol in self._connections
        )

    def close(self) -> None:
        """Close the idle connections, for shutdown; busy ones close when released."""
        for protocol in list(self._idle):
            self._closeIdle(protocol)

    def _mayConnect(self) -> bool:
        """
        Whether another connection may be opened: under the limit learnt from
        the backend, or, once per L{PROBE_INTERVAL} while below
        C{maxConnections}, one more to see whether the backend has grown.
        """
        if len(self._connections) + self._connecting < self._limit:
            return True
        now = self._reactor.seconds()
        if self._limit < self.maxConnections and now - self._lastShrink >= PROBE_INTERVAL:
            self._limit += 1
            self._lastShrink = now
            return True
        return False

    def _takeIdle(self) -> FastCGIClientProtocol:
        protocol = self._idle[-1]
        self._removeIdle(protocol)
        return protocol

    def _removeIdle(self, protocol: FastCGIClientProtocol) -> None:
        """Take C{protocol} off the idle list, with its timer, which may have fired."""
        self._idle.remove(protocol)
        timer = self._idleTimers.pop(protocol)
        if timer.active():
            timer.cancel()

    def _closeIdle(self, protocol: FastCGIClientProtocol) -> None:
        """
        Close an idle connection.  It leaves the idle list now rather than
        when the close completes, so that no request is handed it meanwhile.
        """
        self._removeIdle(protocol)
        protocol.abort()

    def _connect(self) -> Deferred[FastCGIClientProtocol]:
        self._connecting += 1
        protocol = FastCGIClientProtocol(self._reactor, self._readTimeout)
        connecting: Deferred[FastCGIClientProtocol] = connectProtocol(self._endpoint, protocol)
        connecting.addTimeout(self._connectTimeout, self._reactor)

        def connected(protocol: FastCGIClientProtocol) -> FastCGIClientProtocol:
            self._connecting -= 1
            self._connections.add(protocol)
            protocol.whenClosed.addCallback(lambda _: self._closed(protocol))
            return protocol

        def failed(reason: Failure) -> Failure:
            self._connecting -= 1
            # Whatever the reason, there is room again for a waiting request.
            self._serveWaiting()
            if reason.check(CancelledError):
                return reason
            message = (
                f"connect timed out after {self._connectTimeout} s"
                if reason.check(TimeoutError)
                else reason.getErrorMessage()
            )
            self.log.error(
                "cannot connect to FastCGI backend {endpoint}: {error}",
                endpoint=self.name,
                error=message,
            )
            return Failure(BackendUnavailable(message))

        return connecting.addCallbacks(connected, failed)

    def _closed(self, protocol: FastCGIClientProtocol) -> None:
        self._connections.discard(protocol)
        if protocol in self._idleTimers:
            self._removeIdle(protocol)
        self._serveWaiting()

    def _serveWaiting(self) -> None:
        """Open connections for waiting requests while there is room."""
        while self._waiting and self._mayConnect():
            waiter = self._waiting.popleft()
            self._wantNew.discard(waiter)
            self._connect().addCallbacks(
                lambda protocol, waiter=waiter: self._deliver(waiter, protocol),
                lambda reason, waiter=waiter: None if waiter.called else waiter.errback(reason),
            )

    def _deliver(
        self, waiter: Deferred[FastCGIClientProtocol], protocol: FastCGIClientProtocol
    ) -> None:
        if waiter.called:
            # The request gave up (its client left, or its queue time ran out)
            # while the connection was being made: keep it for the next one.
            self.release(protocol)
        else:
            waiter.callback(protocol)
