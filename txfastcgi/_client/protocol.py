"""
A Twisted protocol that runs FastCGI requests over one connection.

It wraps the sans-IO L{ClientConnection}: bytes from the transport go in,
STDOUT/STDERR/END_REQUEST events come out to a L{ResponseReceiver}. One
request at a time, because php-fpm never multiplexes; with FCGI_KEEP_CONN the
connection can carry the next request once the previous one ended cleanly.
"""

from __future__ import annotations

import itertools
from enum import Enum
from types import MethodType
from typing import IO
from typing import Protocol as TypingProtocol

from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer
from zope.interface import implementer

from txfastcgi._fastcgi.records import (
    MAX_CONTENT_LENGTH,
    ClientConnection,
    ConnectionState,
    EndRequest,
    Stderr,
    Stdout,
)
from txfastcgi._limits import Deadlines
from txfastcgi.errors import BackendClosed, BackendTimeout, ProtocolError, StateError

__all__ = [
    "FastCGIClientProtocol",
    "ProtocolEvent",
    "ProtocolState",
    "ResponseReceiver",
]

# A body up to this size is read into memory and sent in the same write as
# the request's params: one write, one syscall, one packet for most requests.
_COALESCED_BODY_LIMIT = 65536

# How much is read from php-fpm at once.
_READ_SIZE = 4 * 65536

# Reads from the request body file that fit one STDIN record exactly, so that
# the records need no padding and never get split in two.
_BODY_READ_SIZE = MAX_CONTENT_LENGTH - MAX_CONTENT_LENGTH % 8


_CONNECTION_DONE = Failure(ConnectionDone())

# Requests are numbered in the order they are sent, over all connections.
_requestNumbers = itertools.count(1)


class ResponseReceiver(TypingProtocol):
    """What a L{FastCGIClientProtocol} delivers one request's response to."""

    def stdoutReceived(self, data: bytes) -> None:
        """Some of the script's output (CGI headers, then the body)."""

    def stderrReceived(self, data: bytes) -> None:
        """Some of what the script wrote to its error stream."""

    def readDone(self) -> None:
        """
        What one read from the backend held is delivered, and the request
        goes on: a time to send on what was held back to be sent together.
        Not called after the read that ends the request.
        """

    def requestEnded(self, appStatus: int, protocolStatus: int) -> None:
        """The backend ended the request; nothing more will be delivered."""

    def requestFailed(self, reason: Failure) -> None:
        """
        The request cannot complete: the connection broke, the backend
        broke the protocol (L{ProtocolError}), or timed out (L{BackendTimeout}).
        Nothing more will be delivered.
        """


class ProtocolState(Enum):
    """
    Where a L{FastCGIClientProtocol} is in its life; each value says so in
    words, for error messages.  Whether the body is still being sent and
    whether any response byte has arrived belong to the request, and are
    the L{ClientConnection}'s states.
    """

    # Identity is equality for these; this keeps lookups cheap.
    __hash__ = object.__hash__

    CONNECTING = "not connected yet"
    IDLE = "idle"
    IN_FLIGHT = "carrying a request"
    PAUSED = "carrying a request whose response is held back for a slow client"
    SPENT = "done: its last request ended and the backend will not take another on it"
    ABORTED = "given up and closing"
    CLOSED = "closed"


class ProtocolEvent(Enum):
    """What moves a L{FastCGIClientProtocol}."""

    __hash__ = object.__hash__

    CONNECT = "connectionMade()"
    SEND = "sendRequest()"
    END_KEPT = "the end of a request on a connection the backend keeps"
    END_LAST = "the end of the last request the connection can carry"
    PAUSE = "pauseProducing()"
    RESUME = "resumeProducing()"
    FAIL = "a failure of the connection"
    ABORT = "abort()"
    LOSE = "connectionLost()"


_S = ProtocolState
_E = ProtocolEvent

# A request in flight moves the same way whether its response is held back
# or not.
_CARRYING_MOVES = {
    _E.END_KEPT: _S.IDLE,
    _E.END_LAST: _S.SPENT,
    _E.PAUSE: _S.PAUSED,
    _E.RESUME: _S.IN_FLIGHT,
    _E.FAIL: _S.ABORTED,
    _E.ABORT: _S.ABORTED,
    _E.LOSE: _S.CLOSED,
}
# Every legal move: state -> event -> next state; anything else is a
# L{StateError}.  Pausing means holding a response back, so outside a
# request it changes nothing: a pause left over from an earlier request
# must not stall the next one.  The read timeout runs exactly in IN_FLIGHT.
_TRANSITIONS: dict[ProtocolState, dict[ProtocolEvent, ProtocolState]] = {
    _S.CONNECTING: {_E.CONNECT: _S.IDLE},
    _S.IDLE: {
        _E.SEND: _S.IN_FLIGHT,
        _E.PAUSE: _S.IDLE,
        _E.RESUME: _S.IDLE,
        _E.FAIL: _S.ABORTED,
        _E.ABORT: _S.ABORTED,
        _E.LOSE: _S.CLOSED,
    },
    _S.IN_FLIGHT: _CARRYING_MOVES,
    _S.PAUSED: _CARRYING_MOVES,
    _S.SPENT: {
        _E.PAUSE: _S.SPENT,
        _E.RESUME: _S.SPENT,
        _E.FAIL: _S.ABORTED,
        _E.ABORT: _S.ABORTED,
        _E.LOSE: _S.CLOSED,
    },
    _S.ABORTED: {
        _E.PAUSE: _S.ABORTED,
        _E.RESUME: _S.ABORTED,
        _E.ABORT: _S.ABORTED,
        _E.LOSE: _S.CLOSED,
    },
    _S.CLOSED: {_E.PAUSE: _S.CLOSED, _E.RESUME: _S.CLOSED, _E.ABORT: _S.CLOSED},
}

# The states with a request whose response goes to a receiver.
_CARRYING = frozenset((_S.IN_FLIGHT, _S.PAUSED))
# The states whose transport is open and not being aborted yet.
_OPEN = frozenset((_S.IDLE, _S.IN_FLIGHT, _S.PAUSED, _S.SPENT))
_UNCONNECTED = frozenset((_S.CONNECTING, _S.CLOSED))

# Looking a member up on its Enum class costs some 70 ns on Python 3.11
# (the metaclass has a __getattr__); what runs for every request uses
# these names instead.
_IDLE = _S.IDLE
_IN_FLIGHT = _S.IN_FLIGHT
_PAUSED = _S.PAUSED
_SEND = _E.SEND
_END_KEPT = _E.END_KEPT
_END_LAST = _E.END_LAST
_REQUEST_ENDED = ConnectionState.ENDED


@implementer(IPushProducer)
class FastCGIClientProtocol(Protocol):
    """
    One FastCGI connection, a state machine (L{ProtocolState}, moves in
    L{_TRANSITIONS}) around the sans-IO L{ClientConnection}.

    As an L{IPushProducer} it produces the response: the HTTP side registers
    it, so that a slow HTTP client pauses reading from the backend and
    backpressure reaches php-fpm.

    @ivar backend: the name of the backend it connects to, for logs and metrics.
    @ivar whenClosed: fires once the connection is closed, for the pool.
    @ivar requestsStarted: how many requests this connection has carried.
    @ivar requestNumber: the place of its latest request among all requests
        sent, over all connections.

    @param deadlines: where its read timeout is kept: a pool passes the one
        all its connections share, so that one timer serves them all; by
        default the connection has its own.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        readTimeout: float | None = None,
        backend: str = "",
        deadlines: Deadlines | None = None,
    ) -> None:
        self._reactor = reactor
        self._readTimeout = readTimeout
        self._deadlines = Deadlines(reactor) if deadlines is None else deadlines
        # Whether the read timeout runs: the backend owes us a byte.
        self._awaiting = False
        self.backend = backend
        self._state = ProtocolState.CONNECTING
        self._connection = ClientConnection()
        # The request in flight: where its response goes, and whether the
        # backend was asked to keep the connection after it.
        self._receiver: ResponseReceiver | None = None
        self._keepConnection = False
        self._bodyProducer: FileBodyProducer | None = None
        # A socket transport (TCP or unix), written to directly while it
        # has nothing buffered; None for any other transport.
        self._direct: tcp.Connection | None = None
        self.requestsStarted = 0
        self.requestNumber = 0
        self.whenClosed: Deferred[None] = Deferred()

    @property
    def state(self) -> ProtocolState:
        """Where the connection is in its life."""
        return self._state

    @property
    def connected(self) -> bool:  # type: ignore[override]
        """
        Whether the transport is open: from connectionMade to connectionLost.
        Read-only, unlike L{Protocol}'s flag: the state says it.
        """
        return self._state not in _UNCONNECTED

    def makeConnection(self, transport: ITransport) -> None:
        # Protocol's own sets the connected flag, which is the state here.
        self.transport = transport
        if isinstance(transport, tcp.Connection):
            self._direct = transport
            if isinstance(transport, unix.Client):
                # Twisted reads a unix socket with recvmsg, through a wrapper
                # that looks for passed file descriptors: php-fpm passes
                # none, and a plain recv costs a few microseconds less a read.
                transport.doRead = MethodType(tcp.Connection.doRead, transport)  # type: ignore[method-assign]
        self.connectionMade()

    @property
    def reusable(self) -> bool:
        """
        Whether this connection can carry another request: it is open and
        either new or the backend agreed to keep it and the last request ended
        cleanly, its body all sent.
        """
        return self._state is _IDLE

    @property
    def maybeInBacklog(self) -> bool:
        """
        Whether the backend may not have accepted this connection yet: it is
        new, carries its first request, and not a byte has come back. php-fpm
        leaves a connection in its listen backlog while every worker is bound
        to another connection, busy or idle.
        """
        return (
            self.requestsStarted == 1
            and self._state in _CARRYING
            and not self._connection.responseStarted
        )

    def _next(self, event: ProtocolEvent) -> ProtocolState:
        """The state C{event} leads to, if it is legal now."""
        nextState = _TRANSITIONS[self._state].get(event)
        if nextState is None:
            raise StateError(
                f"{event.value} is not allowed while the connection is {self._state.value}"
            )
        return nextState

    def _move(self, event: ProtocolEvent) -> ProtocolState:
        """Make the move for C{event}, if it is legal; the state it left."""
        left, self._state = self._state, self._next(event)
        return left

    # Sending

    def sendRequest(
        self,
        params: list[tuple[bytes, bytes]] | bytes,
        body: IO[bytes],
        bodyLength: int,
        receiver: ResponseReceiver,
        keepConnection: bool,
        since: float | None = None,
    ) -> None:
        """
        Send one request; the response goes to C{receiver}.

        @param params: name-value pairs, or their encoding by
            L{txfastcgi._fastcgi.records.encodeNameValuePairs}.

        @param body: the request body, positioned at its start; streamed in
            STDIN records unless it is small, never read whole into memory.
        @param keepConnection: ask php-fpm to keep the connection open after
            the request so that it can be reused (FCGI_KEEP_CONN).
        @param since: the reactor time the request arrived, if it waited
            (for a connection): its first response byte is due within the
            read timeout of then, not of now.  A request already overdue is
            not sent at all but fails at once, leaving the connection idle.
        @raise StateError: unless the connection is L{reusable}.
        """
        inFlight = self._next(_SEND)
        assert self.transport is not None
        firstByteDue = self._readTimeout
        if firstByteDue is not None and since is not None:
            firstByteDue += since - self._reactor.seconds()
            if firstByteDue <= 0:
                receiver.requestFailed(self._timeoutFailure())
                return
        self._state = inFlight
        self.requestsStarted += 1
        self.requestNumber = next(_requestNumbers)
        self._receiver = receiver
        self._keepConnection = keepConnection
        if firstByteDue is not None:
            self._await(firstByteDue)
        if bodyLength <= _COALESCED_BODY_LIMIT:
            self._write(
                self._connection.startRequest(params, keepConnection, body.read(bodyLength))
            )
            return
        self._write(self._connection.startRequest(params, keepConnection))
        # Read on our own reactor, not the global one that
        # FileBodyProducer uses by default.
        cooperator = Cooperator(scheduler=lambda step: self._reactor.callLater(0, step))
        self._bodyProducer = FileBodyProducer(
            _Unclosable(body), cooperator=cooperator, readSize=_BODY_READ_SIZE
        )
        IConsumer(self.transport).registerProducer(self._bodyProducer, True)
        # Should reading the spooled body fail, nothing sensible can follow.
        self._bodyProducer.startProducing(_StdinWriter(self)).addCallbacks(
            self._bodyDone, self._fail
        )

    def _writeBody(self, data: bytes) -> None:
        self._write(self._connection.sendBody(data))

    def _bodyDone(self, ignored: object) -> None:
        self._bodyProducer = None
        IConsumer(self.transport).unregisterProducer()
        self._write(self._connection.endBody())

    def _write(self, data: bytes) -> None:
        """
        Write C{data}: straight to the socket while the transport has nothing
        buffered, so that php-fpm has the request now rather than after a
        reactor turn and a pair of C{epoll_ctl} calls; what the socket does
        not take, and everything while something is buffered, goes through
        the transport, in order.  Twisted keeps its buffer in C{dataBuffer}
        and C{_tempDataLen}.
        """
        direct = self._direct
        if direct is not None and not direct._tempDataLen and not direct.dataBuffer:
            try:
                sent = direct.socket.send(data)
            except OSError:  # Full, or broken: the transport will find out which.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        assert self.transport is not None
        self.transport.write(data)

    def _stopBody(self) -> None:
        if self._bodyProducer is not None:
            producer, self._bodyProducer = self._bodyProducer, None
            producer.stopProducing()
            if self.transport is not None:
                IConsumer(self.transport).unregisterProducer()

    # Receiving

    def connectionMade(self) -> None:
        self._move(_E.CONNECT)
        # Read several of php-fpm's 64 KiB records at a time: a large
        # response then costs a quarter of the reads and reactor turns.
        self.transport.bufferSize = _READ_SIZE  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._state not in _OPEN:
            # Given up on: nothing more is delivered.
            return
        try:
            events = self._connection.receiveData(data)
        except ProtocolError:
            # Also output nobody asked for, on an idle or spent connection.
            self._fail(Failure())
            return
        receiver = self._receiver
        assert receiver is not None, "the connection accepted data with no request in flight"
        for event in events:
            if isinstance(event, Stdout):
                receiver.stdoutReceived(event.data)
            elif isinstance(event, Stderr):
                receiver.stderrReceived(event.data)
            else:
                # END_REQUEST, always the last event.
                self._ended(receiver, event)
                return
            if self._receiver is not receiver:
                # The receiver gave up in a callback (its client went away).
                return
        receiver.readDone()
        if self._receiver is not receiver:
            return
        if self._awaiting and self._readTimeout is not None:
            # A byte came: the backend has the read timeout again for the
            # next.  Restarted once the events are delivered, so that a
            # response that ended here costs no restart.
            self._await(self._readTimeout)

    def _ended(self, receiver: ResponseReceiver, event: EndRequest) -> None:
        # A body still being sent was cut short: the rest of STDIN must not
        # be taken as the next request's, so the connection carries no other.
        self._stopBody()
        kept = self._keepConnection and self._connection.state is _REQUEST_ENDED
        left = self._move(_END_KEPT if kept else _END_LAST)
        self._cancelTimeout()
        self._receiver = None
        if kept:
            self._connection.reset()
        if left is _PAUSED:
            # Held back for a slow client while the last records arrived; the
            # next request on this connection must be read.
            self.transport.resumeProducing()  # type: ignore[union-attr]
        receiver.requestEnded(event.appStatus, event.protocolStatus)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._move(_E.LOSE)
        self._direct = None
        self._cancelTimeout()
        self._stopBody()
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.requestFailed(
                Failure(BackendClosed(reason, beforeResponse=not self._connection.responseStarted))
            )
        self.whenClosed.callback(None)

    def _fail(self, reason: Failure) -> None:
        """Give up on the current request, if any, and the connection with it."""
        self._giveUp(_E.FAIL, reason)

    def abort(self) -> None:
        """
        Stop the request in progress, if any, by closing the connection:
        php-fpm ignores FCGI_ABORT_REQUEST, so this is the only way to stop a
        script.  The receiver hears nothing more.
        """
        self._giveUp(_E.ABORT, None)

    def _giveUp(self, event: ProtocolEvent, reason: Failure | None) -> None:
        left = self._move(event)
        self._cancelTimeout()
        self._stopBody()
        receiver, self._receiver = self._receiver, None
        if left in _OPEN:
            self.transport.abortConnection()  # type: ignore[union-attr]
        if receiver is not None and reason is not None:
            receiver.requestFailed(reason)

    # Read timeout: it runs only while we wait for the backend, never while
    # we hold it back for a slow HTTP client.

    def _await(self, seconds: float) -> None:
        """Start or restart the read timeout: a byte is due within C{seconds}."""
        self._awaiting = True
        self._deadlines.set(self, self._reactor.seconds() + seconds, self._timedOut)

    def _cancelTimeout(self) -> None:
        if self._awaiting:
            self._awaiting = False
            self._deadlines.clear(self)

    def _timedOut(self) -> None:
        self._awaiting = False
        self._fail(self._timeoutFailure())

    def _timeoutFailure(self) -> Failure:
        return Failure(
            BackendTimeout(f"no output from the backend for {self._readTimeout} seconds")
        )

    # IPushProducer, for the response direction

    def pauseProducing(self) -> None:
        if self._move(_E.PAUSE) is _IN_FLIGHT:
            self._cancelTimeout()
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        if self._move(_E.RESUME) is _PAUSED:
            if self._readTimeout is not None:
                self._await(self._readTimeout)
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.abort()


class _Unclosable:
    """
    The request body as L{FileBodyProducer} sees it. That producer closes
    the file it reads when done or stopped, but the body is the caller's,
    who may seek back and send it again on a new connection.
    """

    def __init__(self, body: IO[bytes]) -> None:
        self._body = body

    def read(self, size: int) -> bytes:
        return self._body.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._body.seek(offset, whence)

    def tell(self) -> int:
        return self._body.tell()

    def close(self) -> None:
        pass


class _StdinWriter:
    """An IConsumer for L{FileBodyProducer} that wraps what it reads in STDIN records."""

    def __init__(self, protocol: FastCGIClientProtocol) -> None:
        self._protocol = protocol

    def write(self, data: bytes) -> None:
        self._protocol._writeBody(data)
