"""
Clients of a connection pool or balancer, for the pool's own tests: one
acquire and its outcome, and HTTP clients as a pool sees them, asking again
as soon as they are answered.
"""

from __future__ import annotations

from io import BytesIO
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from txfastcgi._client.protocol import FastCGIClientProtocol


class Acquisition:
    """
    One C{acquire()} of a pool or balancer, and what it has given so far:
    a connection, a failure, or nothing yet.
    """

    def __init__(self, deferred: Deferred[FastCGIClientProtocol]) -> None:
        self.deferred = deferred
        self._results: list[FastCGIClientProtocol | Failure] = []
        deferred.addBoth(self._results.append)

    @property
    def waiting(self) -> bool:
        return not self._results

    @property
    def protocol(self) -> FastCGIClientProtocol:
        [result] = self._results
        assert isinstance(result, FastCGIClientProtocol), result
        return result

    @property
    def failure(self) -> Failure:
        [result] = self._results
        assert isinstance(result, Failure), result
        return result


class ConnectionSource(TypingProtocol):
    """A L{txfastcgi._client.pool.ConnectionPool} or L{txfastcgi._client.balancer.Balancer}."""

    def acquire(
        self, fresh: bool = False, since: float | None = None
    ) -> Deferred[FastCGIClientProtocol]: ...

    def release(self, protocol: FastCGIClientProtocol) -> None: ...


class PoolClient:
    """
    One HTTP client, as a pool sees it: a request with C{params} through
    C{source}, and again as soon as it is answered, until C{until} on
    C{reactor}'s clock (a L{Clock} or the real reactor).

    @ivar latencies: for each answer, the seconds from asking to the end of
        the response.
    @ivar failures: for each failure, the seconds from asking, and why.
    @ivar done: fires once it has stopped asking and has its last answer.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        source: ConnectionSource,
        params: list[tuple[bytes, bytes]],
        until: float,
    ) -> None:
        self._reactor = reactor
        self._source = source
        self._params = params
        self._until = until
        self._askedAt = 0.0
        self._protocol: FastCGIClientProtocol | None = None
        self.latencies: list[float] = []
        self.failures: list[tuple[float, Failure]] = []
        self.waiting = False
        self.done: Deferred[None] = Deferred()
        reactor.callLater(0, self._ask)

    def _ask(self) -> None:
        if self._reactor.seconds() >= self._until:
            self.done.callback(None)
            return
        self._askedAt = self._reactor.seconds()
        self.waiting = True
        self._source.acquire(since=self._askedAt).addCallbacks(self._send, self.requestFailed)

    def _send(self, protocol: FastCGIClientProtocol) -> None:
        self._protocol = protocol
        protocol.sendRequest(self._params, BytesIO(), 0, self, keepConnection=True)

    def _done(self) -> None:
        self.waiting = False
        if self._protocol is not None:
            protocol, self._protocol = self._protocol, None
            self._source.release(protocol)
        # On the next turn, as a web server's next request would come.
        self._reactor.callLater(0, self._ask)

    def stdoutReceived(self, data: bytes) -> None:
        pass

    def stderrReceived(self, data: bytes) -> None:
        pass

    def readDone(self) -> None:
        pass

    def requestEnded(self, appStatus: int, protocolStatus: int) -> None:
        self.latencies.append(self._reactor.seconds() - self._askedAt)
        self._done()

    def requestFailed(self, reason: Failure) -> None:
        self.failures.append((self._reactor.seconds() - self._askedAt, reason))
        self._done()


def answered(clients: list[PoolClient]) -> int:
    """How many answers these clients got."""
    return sum(len(client.latencies) for client in clients)
