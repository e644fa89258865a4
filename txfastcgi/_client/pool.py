"""
A pool of kept-alive FastCGI connections to one backend.

php-fpm binds a worker to each open connection, idle or not, and leaves new
connections in its listen backlog while all workers are bound. A pool that
opened a connection whenever none was idle could therefore starve itself
behind its own idle connections. This one caps open connections, queues the
requests beyond the cap in arrival order, and hands a freed connection to the
oldest waiting request before anything opens another, unless a request may
be waiting in php-fpm's backlog: then it closes the freed connection, so that
its worker accepts the backlogged one, and keeps no more connections open
than php-fpm has shown it serves. When to do which is the business of
L{txfastcgi._client.policy.PoolPolicy}, which tells a slow script from a
backlogged request; this module is the mechanism: it hands out, takes back,
times out and closes.

Each connection of the pool is in one L{ConnectionState}, changed only
through the one table of legal moves, L{TRANSITIONS}; an illegal move (a
connection given back twice, say) raises L{PoolStateError}.

A request waits in the queue at most the queue timeout (then
L{QueueTimeout}, a 503) and never past its read timeout counted from its
arrival (then L{BackendTimeout}, a 504, as if php-fpm had not answered in
time): a frozen php-fpm answers every request within the read timeout.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, cast

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from txfastcgi._client.policy import PoolPolicy, Seen, Suspicion
from txfastcgi._client.protocol import FastCGIClientProtocol
from txfastcgi._limits import Deadlines
from txfastcgi.errors import BackendTimeout, BackendUnavailable, PoolStateError, QueueTimeout

__all__ = [
    "TRANSITIONS",
    "ConnectionPool",
    "ConnectionState",
    "PoolEvent",
    "PoolStatistics",
    "nextState",
]


# A timer set for the time T, as now + (T - now), may fire a rounding error
# before T, when what it waits for is still in the future: it fires this
# much later instead.
_TIMER_SLACK = 1e-6


class ConnectionState(Enum):
    """Where one connection of a pool stands."""

    # Identity is equality for these; this keeps lookups cheap.
    __hash__ = object.__hash__

    CONNECTING = "connecting"
    IDLE = "idle"
    """Open, and free for the next request."""
    BUSY = "busy"
    """Lent to a caller, who gives it back with L{ConnectionPool.release}."""
    CLOSING = "closing"
    """Closed by the pool; the transport has yet to report the close."""
    LOST = "lost"
    """Closed while lent: its caller has yet to give it back."""
    CLOSED = "closed"


class PoolEvent(Enum):
    """What can happen to one connection of a pool."""

    __hash__ = object.__hash__

    CONNECTED = "connected"
    CONNECT_FAILED = "connect failed"
    LENT = "lent"
    RETURNED = "returned"
    CLOSED = "closed by the pool"
    LOST = "connection lost"


_S = ConnectionState
_E = PoolEvent

# Enum member lookups through the class cost a metaclass __getattr__; what
# runs for every request uses these names.
_CONNECTING = _S.CONNECTING
_IDLE = _S.IDLE
_BUSY = _S.BUSY
_CLOSING = _S.CLOSING
_LENT = _E.LENT
_RETURNED = _E.RETURNED
# The states whose connections the pool keeps by state, each in the order
# they entered it: the last idle one is the most recently used.
_KEPT_BY_STATE = (_CONNECTING, _IDLE, _BUSY, _CLOSING)
# The states of a connection that php-fpm may have accepted.
_OPEN = frozenset((_IDLE, _BUSY))

TRANSITIONS: dict[tuple[ConnectionState, PoolEvent], ConnectionState] = {
    (_S.CONNECTING, _E.CONNECTED): _S.IDLE,
    (_S.CONNECTING, _E.CONNECT_FAILED): _S.CLOSED,
    (_S.IDLE, _E.LENT): _S.BUSY,
    (_S.IDLE, _E.CLOSED): _S.CLOSING,
    (_S.IDLE, _E.LOST): _S.CLOSED,
    (_S.BUSY, _E.RETURNED): _S.IDLE,
    (_S.BUSY, _E.CLOSED): _S.CLOSING,
    (_S.BUSY, _E.LOST): _S.LOST,
    (_S.LOST, _E.RETURNED): _S.CLOSED,
    (_S.CLOSING, _E.LOST): _S.CLOSED,
}
"""
Every legal move of a pool's connection: (state, event) -> the next state.
Whatever is missing is illegal.
"""


def nextState(state: ConnectionState, event: PoolEvent) -> ConnectionState:
    """
    The state C{event} moves a connection in C{state} to.

    @raise PoolStateError: if C{event} cannot happen in C{state}.
    """
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise PoolStateError(f"a {state.value} connection cannot be {event.value}") from None


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool, for the status resource and for tests."""

    open: int
    idle: int
    busy: int
    connecting: int
    waiting: int


@dataclass(eq=False)
class _Connection:
    """One connection of the pool, with what the pool knows of it."""

    protocol: FastCGIClientProtocol
    connecting: Deferred[FastCGIClientProtocol]
    state: ConnectionState = ConnectionState.CONNECTING
    # php-fpm answered on it at least once.
    accepted: bool = False
    # When it was lent for its first request.
    firstLentAt: float | None = None

    def seen(self) -> Seen:
        protocol = self.protocol
        if not self.accepted and protocol.requestsStarted and not protocol.maybeInBacklog:
            self.accepted = True
        waiting = not self.accepted and protocol.maybeInBacklog
        return Seen(
            accepted=self.accepted,
            waitingSince=self.firstLentAt if waiting else None,
            request=protocol.requestNumber,
        )


@dataclass(eq=False)
class _Waiter:
    """A request waiting for a connection."""

    deferred: Deferred[FastCGIClientProtocol]
    # It must have a new connection, not a kept one.
    fresh: bool
    # The reactor time it began to wait.
    since: float


class ConnectionPool:
    """
    Connections to one FastCGI backend, at most C{maxConnections} at once.

    @param endpoint: where the backend listens.
    @param maxConnections: the most connections open or being made at once;
        best no more than php-fpm's C{pm.max_children}.
    @param connectTimeout: seconds a connect may take before the request
        fails with L{BackendUnavailable}.
    @param readTimeout: seconds the backend may stay silent during a request,
        and the most a request may wait for a connection after it arrived.
    @param idleTimeout: seconds an idle kept connection stays open.
    @param queueTimeout: seconds a request may wait for a connection before
        it fails with L{QueueTimeout}.
    @param name: the backend's name in logs, such as its endpoint string.

    @ivar waits: requests that found no idle connection and waited, for a
        new one or a busy one, and are done waiting (served or failed).
    @ivar waitSeconds: the time they waited, in all: with L{waits}, the
        average wait that metrics show.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: IStreamClientEndpoint,
        *,
        maxConnections: int = 4,
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
        self.policy = PoolPolicy(maxConnections)
        self._connectTimeout = connectTimeout
        self._readTimeout = readTimeout
        self._idleTimeout = idleTimeout
        self._queueTimeout = queueTimeout
        # Every connection open or being made (not LOST or CLOSED), in the
        # order they were opened: php-fpm accepts them in that order.
        self._connections: list[_Connection] = []
        self._byProtocol: dict[FastCGIClientProtocol, _Connection] = {}
        # The same by state, as ordered sets: whatever a request needs
        # (the idle connection to lend, how many are being made) is found
        # without a look at every connection.
        self._byState: dict[ConnectionState, dict[_Connection, None]] = {
            state: {} for state in _KEPT_BY_STATE
        }
        # Those idle or busy that php-fpm has not been seen to accept yet.
        self._unaccepted: set[_Connection] = set()
        self._waiting: deque[_Waiter] = deque()
        # Every timeout of the pool and of its connections, on one timer:
        # waiting requests', idle connections', read timeouts.
        self._deadlines = Deadlines(reactor)
        self._shutDown = False
        self._updating = False
        self._updateAgain = False
        self._wakeCall: IDelayedCall | None = None
        # The time _wakeCall was set for: its getTime() is that plus a slack
        # and a rounding error, so it cannot tell whether the time changed.
        self._wakeAt: float | None = None
        self.waits = 0
        self.waitSeconds = 0.0

    def statistics(self) -> PoolStatistics:
        """
        How many connections are open (idle, or busy: lent, or closing), and
        being made, and how many requests wait beyond those the connections
        being made will serve.
        """
        byState = self._byState
        idle = len(byState[_IDLE])
        busy = len(byState[_BUSY]) + len(byState[_CLOSING])
        connecting = len(byState[_CONNECTING])
        return PoolStatistics(
            open=idle + busy,
            idle=idle,
            busy=busy,
            connecting=connecting,
            waiting=max(0, len(self._waiting) - connecting),
        )

    def acquire(
        self, fresh: bool = False, since: float | None = None
    ) -> Deferred[FastCGIClientProtocol]:
        """
        A connection for one request, all to the caller until L{release}.

        The most recently used idle connection is lent first, so that the
        others age out; failing that a new one is opened if the policy
        allows; failing that the request waits in line.

        @param fresh: a new connection, never a kept one: for a request sent
            again because its kept connection turned out to be closed, when
            the other kept ones may be closed too (php-fpm restarted, or its
            workers reached pm.max_requests).
        @param since: the reactor time the request arrived (default: now).
            It fails with L{BackendTimeout} rather than wait for a connection
            past C{since} plus the read timeout.
        """
        now = self._reactor.seconds()
        due = (now if since is None else since) + self._readTimeout
        if due <= now:
            return fail(self._lateFailure())
        if not self._waiting:
            idle = self._idleFor(fresh)
            if idle is not None:
                self._move(idle, _LENT)
                return succeed(idle.protocol)
        waiter = _Waiter(Deferred(self._forget), fresh, now)
        self._waiting.append(waiter)
        queueDue = now + self._queueTimeout
        self._deadlines.set(
            waiter, min(due, queueDue), partial(self._waitedTooLong, waiter, due < queueDue)
        )
        self._update()
        return waiter.deferred

    def release(self, protocol: FastCGIClientProtocol) -> None:
        """
        Give back a connection. One that cannot carry another request (an
        error, an aborted response, a backend that did not keep it) is
        closed, and so is every one after L{close}; a good one goes to the
        oldest waiting request, or idles, unless the policy closes it to free
        its php-fpm worker for a request that may wait in php-fpm's backlog.
        """
        connection = self._byProtocol.get(protocol)
        if connection is None:
            raise PoolStateError(f"{protocol!r} is not a connection of this pool")
        if connection.state is _S.LOST:
            self._move(connection, _RETURNED)
        elif not protocol.reusable or self._shutDown:
            self._close(connection)
        else:
            self._move(connection, _RETURNED)
        self._update()

    def close(self) -> None:
        """
        For shutdown: close the idle connections now, and every other one
        when it is given back; none is kept from now on.
        """
        self._shutDown = True
        for connection in list(self._byState[_IDLE]):
            self._close(connection)

    # Waiting requests

    def _forget(self, deferred: Deferred[FastCGIClientProtocol]) -> None:
        """
        The request gave up waiting (its client went away). A connect made
        for no one any more is given up too: a backend that swallows connects
        then holds up no later request.
        """
        for waiter in self._waiting:
            if waiter.deferred is deferred:
                self._dequeue(waiter)
                break
        connecting = self._byState[_CONNECTING]
        if len(connecting) > len(self._waiting):
            # The one opened last.
            next(reversed(connecting)).connecting.cancel()

    def _dequeue(self, waiter: _Waiter) -> None:
        self._waiting.remove(waiter)
        self.waits += 1
        self.waitSeconds += self._reactor.seconds() - waiter.since
        self._deadlines.clear(waiter)

    def _waitedTooLong(self, waiter: _Waiter, late: bool) -> None:
        self._dequeue(waiter)
        if late:
            waiter.deferred.errback(self._lateFailure())
            return
        self.log.warn(
            "FastCGI pool saturated: a request waited {timeout} s for one of "
            "{maxConnections} connections",
            timeout=self._queueTimeout,
            maxConnections=self.maxConnections,
        )
        waiter.deferred.errback(
            QueueTimeout(f"no FastCGI connection free within {self._queueTimeout} s")
        )

    def _lateFailure(self) -> Failure:
        return Failure(
            BackendTimeout(
                f"no FastCGI connection free within the read timeout of {self._readTimeout} s"
            )
        )

    # The one place decisions are made

    def _update(self) -> None:
        """
        After anything happened: free workers for requests that may be in
        php-fpm's backlog, lend idle connections to waiting requests, open
        connections for the others as the policy allows, and set the timer
        for the next decision that time alone can bring.

        Lending runs the caller's code, which may acquire or release in
        turn: those calls only ask for another round.
        """
        if self._updating:
            self._updateAgain = True
            return
        self._updating = True
        try:
            self._updateAgain = True
            while self._updateAgain:
                self._updateAgain = False
                self._decide()
        finally:
            self._updating = False

    def _decide(self) -> None:
        now = self._reactor.seconds()
        if self._unaccepted:
            # Only a connection php-fpm has not been seen to accept can be in
            # its backlog, or show it has another worker: with none, the
            # policy has nothing to say but how many connections to open.
            self._freeWorkers(now)
        self._lendIdle()
        byState = self._byState
        needed = len(self._waiting) - len(byState[_CONNECTING])
        while needed > 0 and len(self._connections) < self.policy.limit(now):
            self._connect()
            needed -= 1
        if needed > len(byState[_CLOSING]):
            # Fresh requests the limit leaves waiting: make room, with the
            # connection idle the longest.
            idle = byState[_IDLE]
            if idle:
                self._close(next(iter(idle)))
        self._startIdleTimers(now)
        self._schedule(now, blocked=needed > 0)

    def _freeWorkers(self, now: float) -> None:
        """
        Learn php-fpm's workers from the connections, and close a free one
        for each request that may wait in php-fpm's backlog.
        """
        policy = self.policy
        seen = self._seen()
        policy.learn(seen)
        while (holder := self._holder()) is not None:
            suspicion = policy.suspicion(now, seen, holder.protocol.requestNumber)
            if suspicion is Suspicion.NONE:
                break
            wasExhausted = policy.exhausted
            policy.freed(now, suspicion)
            if policy.exhausted and not wasExhausted:
                self.log.info(
                    "FastCGI backend {endpoint} ran out of workers with {workers} connections: "
                    "keeping no more open, trying one more each second",
                    endpoint=self.name,
                    workers=policy.workers,
                )
            self._close(holder)
            seen = self._seen()

    def _seen(self) -> list[Seen]:
        """What the policy knows of the open connections, oldest first."""
        seen = [
            connection.seen()
            for connection in self._connections
            if connection.state is _IDLE or connection.state is _BUSY
        ]
        self._unaccepted = {c for c in self._unaccepted if not c.accepted}
        return seen

    def _holder(self) -> _Connection | None:
        """The idle connection php-fpm surely gave a worker, that served the latest request."""
        return max(
            (c for c in self._byState[_IDLE] if c.accepted),
            key=lambda c: c.protocol.requestNumber,
            default=None,
        )

    def _lendIdle(self) -> None:
        """
        Lend idle connections to waiting requests, oldest first: the most
        recently used to those that take kept ones, one never lent to those
        that want a new one.  The oldest request takes one at once unless it
        wants a new one, so that this costs a look at every request only
        while those wait.
        """
        idle = self._byState[_IDLE]
        waiting = self._waiting
        while idle and waiting:
            for waiter in waiting:
                connection = self._idleFor(waiter.fresh)
                if connection is not None:
                    self._lend(connection, waiter)
                    break
                if not idle:
                    return
            else:
                return

    def _idleFor(self, fresh: bool) -> _Connection | None:
        """
        The idle connection to lend next: the most recently used, or if
        C{fresh} the most recently made of those never lent.  One that
        broke while idle (the backend sent stray bytes) is closed.
        """
        idle = self._byState[_IDLE]
        while idle:
            if fresh:
                connection = next((c for c in reversed(idle) if c.firstLentAt is None), None)
                if connection is None:
                    return None
            else:
                connection = next(reversed(idle))
            if connection.protocol.reusable:
                return connection
            self._close(connection)
        return None

    def _lend(self, connection: _Connection, waiter: _Waiter) -> None:
        self._dequeue(waiter)
        self._move(connection, _LENT)
        waiter.deferred.callback(connection.protocol)

    def _schedule(self, now: float, blocked: bool) -> None:
        if self._unaccepted:
            wakeAt = self.policy.wakeAt(
                now, self._seen(), blocked=blocked, holding=self._holder() is not None
            )
        elif blocked and self.policy.exhausted:
            # No request waits for a first answer: no grace can end, but a
            # probe may be due.
            wakeAt = self.policy.wakeAt(now, (), blocked=blocked, holding=False)
        else:
            wakeAt = None
        call = self._wakeCall
        if call is not None and call.active():
            if wakeAt == self._wakeAt:
                return
            call.cancel()
        self._wakeAt = wakeAt
        self._wakeCall = (
            None
            if wakeAt is None
            else self._reactor.callLater(wakeAt - now + _TIMER_SLACK, self._update)
        )

    # Connections

    def _move(self, connection: _Connection, event: PoolEvent) -> None:
        """Make one legal move, and what entering and leaving a state entails."""
        left = connection.state
        state = nextState(left, event)
        byState = self._byState
        members = byState.get(left)
        if members is not None:
            del members[connection]
        if left is _IDLE:
            # Its idle timer, if it started.
            self._deadlines.clear(connection)
        connection.state = state
        members = byState.get(state)
        if members is not None:
            # An idle one's timer starts once the pool has decided not to
            # lend it at once (see _startIdleTimers), not for every hand-over.
            members[connection] = None
        if state not in _OPEN:
            self._unaccepted.discard(connection)
        if state is _BUSY:
            if connection.firstLentAt is None:
                connection.firstLentAt = self._reactor.seconds()
        elif state is _S.LOST or state is _S.CLOSED:
            if connection in self._connections:
                self._connections.remove(connection)
            if state is _S.CLOSED:
                del self._byProtocol[connection.protocol]

    def _startIdleTimers(self, now: float) -> None:
        deadlines = self._deadlines
        for connection in self._byState[_IDLE]:
            if connection not in deadlines:
                deadlines.set(
                    connection,
                    now + self._idleTimeout,
                    partial(self._idleTimedOut, connection),
                )

    def _idleTimedOut(self, connection: _Connection) -> None:
        self._close(connection)
        self._update()

    def _close(self, connection: _Connection) -> None:
        """
        Close a connection. It is CLOSING before the transport is told, so
        that nothing lends it meanwhile, even if the close is reported at once.
        """
        self._move(connection, _E.CLOSED)
        connection.protocol.abort()

    def _connect(self) -> None:
        protocol = FastCGIClientProtocol(
            self._reactor, self._readTimeout, self.name, self._deadlines
        )
        # The endpoint's Deferred fires with what the factory built: protocol.
        connecting = cast(
            "Deferred[FastCGIClientProtocol]", self._endpoint.connect(_OneConnection(protocol))
        )
        connection = _Connection(protocol, connecting)
        self._connections.append(connection)
        self._byState[_CONNECTING][connection] = None
        self._byProtocol[protocol] = connection
        # A timed-out connect is cancelled, and Twisted's endpoints fail a
        # cancelled connect with ConnectingCancelledError, not CancelledError.
        connecting.addTimeout(self._connectTimeout, self._reactor, _connectTimedOut)
        connecting.addCallbacks(
            lambda _: self._connected(connection),
            lambda reason: self._connectFailed(connection, reason),
        )

    def _connected(self, connection: _Connection) -> None:
        self._move(connection, _E.CONNECTED)
        self._unaccepted.add(connection)
        connection.protocol.whenClosed.addCallback(lambda _: self._lost(connection))
        if self._shutDown and not self._waiting:
            self._close(connection)
        self._update()

    def _lost(self, connection: _Connection) -> None:
        self._move(connection, _E.LOST)
        self._update()

    def _connectFailed(self, connection: _Connection, reason: Failure) -> None:
        self._move(connection, _E.CONNECT_FAILED)
        if reason.check(CancelledError, ConnectingCancelledError):
            # Given up by _forget: no one waits for it.
            self._update()
            return
        message = (
            f"connect timed out after {self._connectTimeout} s"
            if reason.check(TimeoutError)
            else reason.getErrorMessage()
        )
        # Debug only: the request's 502 line says this, with its URI.
        self.log.debug(
            "cannot connect to FastCGI backend {endpoint}: {error}",
            endpoint=self.name,
            error=message,
        )
        # The oldest waiting request, whom this connect would have served.
        if self._waiting:
            waiter = self._waiting[0]
            self._dequeue(waiter)
            waiter.deferred.errback(BackendUnavailable(message))
        self._update()


if TYPE_CHECKING:
    _ClientFactory = Factory[FastCGIClientProtocol]
else:  # Twisted 25.5, the last with TLS on Python 3.9 (PyPy), cannot subscript its factories.
    _ClientFactory = Factory


class _OneConnection(_ClientFactory):
    """
    What L{twisted.internet.endpoints.connectProtocol} does, quietly: a
    pool opens connections all the time, and Twisted's C{Starting factory}
    and C{Stopping factory} lines for each would drown the log.
    """

    noisy = False

    def __init__(self, protocol: FastCGIClientProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> FastCGIClientProtocol:
        return self._protocol


def _connectTimedOut(result: object, timeout: float) -> Failure:
    """What a connect cancelled by its timeout fails with, whatever the endpoint says."""
    return Failure(TimeoutError(f"connect timed out after {timeout} s"))
