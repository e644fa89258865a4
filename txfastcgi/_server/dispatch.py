"""
C{--workers N}: the main process accepts every client connection and hands
it to the process that holds the fewest, itself included, so that each
process serves its share however the connections arrive.

Processes that shared one listening socket raced for each connection, and
the first to wake took a burst of them all; sockets of their own in one
C{SO_REUSEPORT} group spread connections by a hash of their addresses,
which left a process with 31% or 69% of a benchmark's 32 connections in
two runs of eighteen. Here the split is as even as the counts allow.

Each worker has a unix socket pair with the main process, its channel
(L{Dispatcher.channel}). The main process sends each connection's
descriptor over it (C{SCM_RIGHTS}) with one byte naming its address
family; the worker adopts it (L{ConnectionsFromMain}) and sends one byte
back when it is closed, so the main process knows what each worker holds.
A channel that cannot take a descriptor at once (a stopped worker's is
full), or a worker that has exited, leaves the connection to the main
process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorFDSet,
    IReactorSocket,
    IReadDescriptor,
)
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txfastcgi._http.http1 import HTTP1Factory

__all__ = ["CHANNEL_DESCRIPTOR", "ConnectionsFromMain", "Dispatcher", "listenToMain"]

CHANNEL_DESCRIPTOR = 4
"""The descriptor of a worker's end of its channel, in the worker."""

# The byte sent with each connection, by the connection's address family.
_FAMILIES = {b"4": socket.AF_INET, b"6": socket.AF_INET6, b"u": socket.AF_UNIX}
_FAMILY_BYTES: dict[int, bytes] = {family: byte for byte, family in _FAMILIES.items()}
# What a worker sends back for each connection it has closed.
_CLOSED = b"c"
_log = Logger(namespace="txfastcgi")

# Connections accepted at a time: as Twisted's own ports, a burst is taken
# in turns with the other work.
_ACCEPT_BATCH = 16


@implementer(IReadDescriptor)
class _Channel:
    """The main process's end of a worker's channel, and what it holds."""

    def __init__(self, own: socket.socket, dispatcher: Dispatcher) -> None:
        self.socket = own
        self._dispatcher = dispatcher
        self.held = 0

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "worker channel"

    def send(self, connection: socket.socket, family: int) -> bool:
        """Hand C{connection} to the worker, if its channel takes it now."""
        try:
            socket.send_fds(self.socket, [_FAMILY_BYTES[family]], [connection.fileno()])
        except OSError:  # Full (the worker is stopped, or swamped), or gone.
            return False
        self.held += 1
        return True

    def doRead(self) -> Failure | None:
        try:
            data = self.socket.recv(4096)
        except BlockingIOError:
            return None
        except OSError:
            return Failure(CONNECTION_DONE)
        if not data:
            return Failure(CONNECTION_DONE)
        self.held -= data.count(_CLOSED)
        return None

    def connectionLost(self, reason: Failure) -> None:
        """The worker has exited: it gets no more connections."""
        self._dispatcher.forget(self)
        self.socket.close()


@implementer(IReadDescriptor)
class _Accepting:
    """Accepts on a listening port in its place, and dispatches what it accepts."""

    def __init__(self, port: IListeningPort, dispatcher: Dispatcher) -> None:
        self._socket: socket.socket = port.socket  # type: ignore[attr-defined]
        self._factory: IProtocolFactory = port.factory  # type: ignore[attr-defined]
        self._family = self._socket.family
        self._dispatcher = dispatcher

    def fileno(self) -> int:
        return self._socket.fileno()

    def logPrefix(self) -> str:
        return "dispatching"

    def doRead(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                connection, _ = self._socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # Out of descriptors, or the client gave up: as Twisted's ports.
                return
            self._dispatcher.dispatch(connection, self._family, self._factory)

    def connectionLost(self, reason: Failure) -> None:
        """The port's business: it closes its socket itself."""


class Dispatcher:
    """
    The main process's side: the workers' channels, and the listening ports
    it accepts on in their place once the workers are started.
    """

    def __init__(self, reactor: IReactorSocket) -> None:
        self._reactor = reactor
        self._channels: list[_Channel] = []
        self._accepting: list[_Accepting] = []
        # Which process a tie goes to: see dispatch.
        self._turn = 0

    def channel(self) -> socket.socket:
        """
        A new worker's channel: the main process keeps one end; the other,
        returned, is for the worker to inherit (and for the caller to close
        once it is spawned).
        """
        own, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        own.setblocking(False)
        channel = _Channel(own, self)
        self._channels.append(channel)
        IReactorFDSet(self._reactor).addReader(channel)
        return theirs

    def forget(self, channel: _Channel) -> None:
        IReactorFDSet(self._reactor).removeReader(channel)
        if channel in self._channels:
            self._channels.remove(channel)

    def start(self, ports: Sequence[IListeningPort]) -> None:
        """Accept on C{ports} in their place, and dispatch."""
        for port in ports:
            port.stopReading()  # type: ignore[attr-defined]
            accepting = _Accepting(port, self)
            self._accepting.append(accepting)
            IReactorFDSet(self._reactor).addReader(accepting)

    def stop(self) -> None:
        """Accept no more: the ports are about to stop listening."""
        for accepting in self._accepting:
            IReactorFDSet(self._reactor).removeReader(accepting)
        self._accepting.clear()

    def dispatch(self, connection: socket.socket, family: int, factory: IProtocolFactory) -> None:
        """
        Hand C{connection} to the process that holds the fewest connections,
        this one or a worker; among those that hold as few, to each in turn,
        so that one client after another is spread too.
        """
        own = len(getattr(factory, "connections", ()))
        targets: list[_Channel | None] = [None, *self._channels]
        self._turn = (self._turn + 1) % len(targets)
        turns = targets[self._turn :] + targets[: self._turn]
        chosen = min(turns, key=lambda target: own if target is None else target.held)
        if chosen is None or not chosen.send(connection, family):
            self._reactor.adoptStreamConnection(connection.fileno(), family, factory)  # type: ignore[arg-type]
        connection.close()


@implementer(IReadDescriptor, IListeningPort)
class ConnectionsFromMain:
    """
    A worker's listener: the connections the main process sends over the
    channel, each served by C{factory} here, and a byte sent back for each
    one closed (L{reportClosed}, which L{listenToMain} has the factory call).
    """

    def __init__(self, reactor: IReactorSocket, descriptor: int, factory: IProtocolFactory) -> None:
        self._reactor = reactor
        self._socket = socket.socket(fileno=descriptor)
        self._socket.setblocking(False)
        self._factory = factory

    def fileno(self) -> int:
        return self._socket.fileno()

    def logPrefix(self) -> str:
        return "main process channel"

    def startListening(self) -> None:
        IReactorFDSet(self._reactor).addReader(self)
        _log.info("serving the connections the main process accepts")

    def stopListening(self) -> None:
        """Take no more connections: the main process sees the channel close."""
        IReactorFDSet(self._reactor).removeReader(self)
        self._socket.close()

    def getHost(self) -> UNIXAddress:
        return UNIXAddress(None)

    def reportClosed(self) -> None:
        """One of the connections is closed: tell the main process."""
        try:
            self._socket.send(_CLOSED)
        except OSError:  # The channel is closed: the main process no longer counts.
            pass

    def doRead(self) -> Failure | None:
        try:
            data, descriptors, _, _ = socket.recv_fds(self._socket, 256, 256)
        except BlockingIOError:
            return None
        except OSError:
            return Failure(CONNECTION_DONE)
        if not data:
            for descriptor in descriptors:
                os.close(descriptor)
            return Failure(CONNECTION_DONE)
        for byte, descriptor in zip(data, descriptors):
            try:
                family = _FAMILIES[bytes([byte])]
                self._reactor.adoptStreamConnection(descriptor, family, self._factory)  # type: ignore[arg-type]
            finally:
                os.close(descriptor)
        return None

    def connectionLost(self, reason: Failure) -> None:
        """The main process is gone; its own end of the worker's life (standard input) says so."""


def listenToMain(
    reactor: IReactorSocket, descriptor: int
) -> Callable[[IProtocolFactory], Deferred[IListeningPort]]:
    """How a worker listens: on its channel, at C{descriptor}."""

    def listen(factory: IProtocolFactory) -> Deferred[IListeningPort]:
        listener = ConnectionsFromMain(reactor, descriptor, factory)
        if isinstance(factory, HTTP1Factory):
            factory.closedObservers.append(listener.reportClosed)
        listener.startListening()
        return succeed(listener)

    return listen
