"""
A Twisted protocol that runs FastCGI requests over one connection.

It wraps the sans-IO L{ClientConnection}: bytes from the transport go in,
STDOUT/STDERR/END_REQUEST events come out to a L{ResponseReceiver}. One
request at a time, because php-fpm never multiplexes; with FCGI_KEEP_CONN the
connection can carry the next request once the previous one ended cleanly.
"""

from __future__ import annotations

import itertools
from typing import IO
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer
from zope.interface import implementer

from txfastcgi.records import (
    MAX_CONTENT_LENGTH,
    ClientConnection,
    EndRequest,
    ProtocolError,
    Stderr,
    Stdout,
)

__all__ = [
    "BackendClosed",
    "BackendTimeout",
    "FastCGIClientProtocol",
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


class BackendTimeout(Exception):
    """The backend sent nothing for longer than the read timeout."""


class BackendClosed(Exception):
    """
    The backend closed the connection before it ended the request.

    C{beforeResponse} tells whether no response byte had arrived: then the
    request was sent to a kept connection php-fpm had already decided to
    close, or php-fpm went away before the script said anything, and an
    idempotent request can be sent again (as nginx's default
    C{fastcgi_next_upstream error} does).
    """

    def __init__(self, reason: Failure, beforeResponse: bool) -> None:
        super().__init__(reason.getErrorMessage())
        self.reason = reason
        self.beforeResponse = beforeResponse


class ResponseReceiver(TypingProtocol):
    """What a L{FastCGIClientProtocol} delivers one request's response to."""

    def stdoutReceived(self, data: bytes) -> None:
        """Some of the script's output (CGI headers, then the body)."""

    def stderrReceived(self, data: bytes) -> None:
        """Some of what the script wrote to its error stream."""

    def requestEnded(self, appStatus: int, protocolStatus: int) -> None:
        """The backend ended the request; nothing more will be delivered."""

    def requestFailed(self, reason: Failure) -> None:
        """
        The request cannot complete: the connection broke, the backend
        broke the protocol (L{ProtocolError}), or timed out (L{BackendTimeout}).
        Nothing more will be delivered.
        """


@implementer(IPushProducer)
class FastCGIClientProtocol(Protocol):
    """
    One FastCGI connection.

    As an L{IPushProducer} it produces the response: the HTTP side registers
    it, so that a slow HTTP client pauses reading from the backend and
    backpressure reaches php-fpm.

    @ivar whenClosed: fires once the connection is closed, for the pool.
    """

    def __init__(self, reactor: IReactorTime, readTimeout: float | None = None) -> None:
        self._reactor = reactor
        self._readTimeout = readTimeout
        self._connection = ClientConnection()
        self._receiver: ResponseReceiver | None = None
        self._keepConnection = False
        self._bodyProducer: FileBodyProducer | None = None
        self._bodySent = False
        self._responseStarted = False
        self._failed = False
        self._paused = False
        self._timeoutCall: IDelayedCall | None = None
        self.requestsStarted = 0
        self.requestNumber = 0
        self.connected = False
        self.whenClosed: Deferred[None] = Deferred()

    # Sending

    def sendRequest(
        self,
        params: list[tuple[bytes, bytes]],
        body: IO[bytes],
        bodyLength: int,
        receiver: ResponseReceiver,
        keepConnection: bool,
    ) -> None:
        """
        Send one request; the response goes to C{receiver}.

        @param body: the request body, positioned at its start; streamed in
            STDIN records unless it is small, never read whole into memory.
        @param keepConnection: ask php-fpm to keep the connection open after
            the request so that it can be reused (FCGI_KEEP_CONN).
        """
        assert self.transport is not None
        if self.requestsStarted:
            self._connection.reset()
        self.requestsStarted += 1
        self.requestNumber = next(_requestNumbers)
        self._receiver = receiver
        self._keepConnection = keepConnection
        self._responseStarted = False
        self._bodySent = False
        self._restartTimeout()
        if bodyLength <= _COALESCED_BODY_LIMIT:
            self.transport.write(
                self._connection.startRequest(params, keepConnection, body.read(bodyLength))
            )
            self._bodySent = True
            return
        self.transport.write(self._connection.startRequest(params, keepConnection))
        # Read on our own reactor, not the global one that
        # FileBodyProducer uses by default.
        cooperator = Cooperator(scheduler=lambda step: self._reactor.callLater(0, step))
        self._bodyProducer = FileBodyProducer(
            _Unclosable(body), cooperator=cooperator, readSize=_BODY_READ_SIZE
        )
        IConsumer(self.transport).registerProducer(self._bodyProducer, True)
        self._bodyProducer.startProducing(_StdinWriter(self)).addCallbacks(
            self._bodyDone, self._bodyFailed
        )

    def _writeBody(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(self._connection.sendBody(data))

    def _bodyDone(self, ignored: object) -> None:
        assert self.transport is not None
        self._bodyProducer = None
        IConsumer(self.transport).unregisterProducer()
        self.transport.write(self._connection.endBody())
        self._bodySent = True

    def _bodyFailed(self, reason: Failure) -> None:
        self._bodyProducer = None
        if not self._failed:
            # Reading the spooled body failed: nothing sensible can follow.
            self._fail(reason)

    def _stopBody(self) -> None:
        if self._bodyProducer is not None:
            producer, self._bodyProducer = self._bodyProducer, None
            producer.stopProducing()
            if self.transport is not None:
                IConsumer(self.transport).unregisterProducer()

    # Receiving

    def connectionMade(self) -> None:
        self.connected = True
        # Read several of php-fpm's 64 KiB records at a time: a large
        # response then costs a quarter of the reads and reactor turns.
        self.transport.bufferSize = _READ_SIZE  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            events = self._connection.receiveData(data)
        except ProtocolError:
            self._fail(Failure())
            return
        receiver = self._receiver
        if receiver is None:
            # Output nobody asked for, on an idle connection.
            self._fail(Failure(ProtocolError("data received with no request outstanding")))
            return
        # Any byte, even of stderr or of an unfinished record, shows that the
        # backend took the request: sending it again would run it twice.
        self._responseStarted = True
        self._restartTimeout()
        for event in events:
            if isinstance(event, Stdout):
                receiver.stdoutReceived(event.data)
            elif isinstance(event, Stderr):
                receiver.stderrReceived(event.data)
            elif isinstance(event, EndRequest):
                self._ended(receiver, event)
            if self._failed or self._receiver is not receiver:
                # The receiver gave up in a callback (its client went away).
                return

    def _ended(self, receiver: ResponseReceiver, event: EndRequest) -> None:
        self._cancelTimeout()
        self._receiver = None
        if self._paused:
            # Held back for a slow client while the last records arrived; the
            # next request on this connection must be read.
            self.resumeProducing()
        if not self._bodySent:
            # The script answered without reading all of the body: the rest
            # of STDIN must not be taken as the next request's.
            self._stopBody()
            self._keepConnection = False
        receiver.requestEnded(event.appStatus, event.protocolStatus)

    @property
    def reusable(self) -> bool:
        """
        Whether this connection can carry another request: it is open and
        either new or the backend agreed to keep it and the last request ended
        cleanly.
        """
        return (
            bool(self.connected)
            and not self._failed
            and self._receiver is None
            and (
                self.requestsStarted == 0
                or (self._keepConnection and self._connection.requestComplete)
            )
        )

    @property
    def maybeInBacklog(self) -> bool:
        """
        Whether the backend may not have accepted this connection yet: it is
        new, carries its first request, and not a byte has come back. php-fpm
        leaves a connection in its listen backlog while every worker is bound
        to another connection, busy or idle.
        """
        return (
            self.requestsStarted == 1 and self._receiver is not None and not self._responseStarted
        )

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.connected = False
        self._cancelTimeout()
        self._stopBody()
        if self._receiver is not None and not self._failed:
            self._fail(
                Failure(
                    BackendClosed(
                        reason,
                        beforeResponse=not self._responseStarted,
                    )
                )
            )
        self.whenClosed.callback(None)

    def _fail(self, reason: Failure) -> None:
        """Give up on the current request and the connection with it."""
        self._failed = True
        self._cancelTimeout()
        self._stopBody()
        receiver, self._receiver = self._receiver, None
        if self.transport is not None and self.connected:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        if receiver is not None:
            receiver.requestFailed(reason)

    def abort(self) -> None:
        """
        Stop the request in progress by closing the connection: php-fpm
        ignores FCGI_ABORT_REQUEST, so this is the only way to stop a script.
        """
        self._receiver = None
        self._failed = True
        self._cancelTimeout()
        self._stopBody()
        if self.transport is not None and self.connected:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # Read timeout: it runs only while we wait for the backend, never while
    # we hold it back for a slow HTTP client.

    def _restartTimeout(self) -> None:
        if self._readTimeout is None or self._paused:
            return
        if self._timeoutCall is not None and self._timeoutCall.active():
            self._timeoutCall.reset(self._readTimeout)
        else:
            self._timeoutCall = self._reactor.callLater(self._readTimeout, self._timedOut)

    def _cancelTimeout(self) -> None:
        if self._timeoutCall is not None and self._timeoutCall.active():
            self._timeoutCall.cancel()
        self._timeoutCall = None

    def _timedOut(self) -> None:
        self._timeoutCall = None
        self._fail(
            Failure(BackendTimeout(f"no output from the backend for {self._readTimeout} seconds"))
        )

    # IPushProducer, for the response direction

    def pauseProducing(self) -> None:
        self._paused = True
        self._cancelTimeout()
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        self._paused = False
        if self._receiver is not None:
            self._restartTimeout()
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

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
