"""
L{FileSender} over real connections with the real reactor: plain TCP and
UNIX sockets (by C{os.sendfile}) and TLS (by reading and writing), whole
files and ranges, a reader that stops reading, a reader that goes away, and
a file that turns out shorter than promised.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Generator
from typing import Any, BinaryIO

from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.certificates import selfSignedCertificate
from txfastcgi._http.staticfiles import FileSender

MiB = 1024 * 1024
# The global reactor, whose interfaces mypy cannot see.
_reactor: Any = reactor
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: ...\r\n\r\n"


class _Server(Protocol):
    def __init__(self, connected: Deferred[ITransport]) -> None:
        self._connected = connected

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._connected.callback(self.transport)


class _Receiver(Protocol):
    """A client that keeps what it receives; it can stop reading for a while."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[bytes] = Deferred()
        self.ready: Deferred[_Receiver] = Deferred()

    def connectionMade(self) -> None:
        self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(bytes(self.received))


def _rawSocket(transport: Any) -> socket.socket:
    """The socket under a transport, under its TLS if it has some."""
    handle = transport.getHandle()
    return handle if isinstance(handle, socket.socket) else _rawSocket(transport.transport)


class _SenderTests:
    """The tests, for each kind of connection: see the subclasses."""

    timeout = 10
    usesSendfile: bool

    # TestCase's, for mypy.
    addCleanup: Callable[..., None]
    patch: Callable[..., None]
    assertEqual: Callable[..., None]
    assertLess: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    assertFailure: Callable[..., Deferred[Any]]

    def listen(self, factory: Factory[Any]) -> Any:
        raise NotImplementedError()

    def connect(self, port: Any, factory: Factory[Any]) -> None:
        raise NotImplementedError()

    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "file.bin")
        # Not a repeating pattern: a byte out of place would show.
        self.content = os.urandom(8 * MiB)
        with open(self.path, "wb") as file:
            file.write(self.content)
        self.sendfileCalls = 0
        sendfile = os.sendfile

        def countingSendfile(*arguments: int) -> int:
            self.sendfileCalls += 1
            return sendfile(*arguments)

        self.patch(os, "sendfile", countingSendfile)

    def open(self) -> BinaryIO:
        file = open(self.path, "rb", buffering=0)
        self.addCleanup(file.close)
        return file

    @inlineCallbacks
    def connection(self) -> Generator[Deferred[Any], Any, tuple[ITransport, _Receiver]]:
        """The server's transport and the client of a new connection."""
        serverTransport: Deferred[ITransport] = Deferred()
        port = self.listen(Factory.forProtocol(lambda: _Server(serverTransport)))
        self.addCleanup(port.stopListening)
        client = _Receiver()
        self.connect(port, ClientFactory.forProtocol(lambda: client))
        transport = yield serverTransport
        yield client.ready
        self.addCleanup(_closeIfOpen, transport, client)
        return transport, client

    @inlineCallbacks
    def send(self, offset: int, length: int) -> Generator[Deferred[Any], Any, None]:
        """
        Send a response head, then a range of the file, then the next
        response, as a kept-alive HTTP connection would.
        """
        transport, client = yield self.connection()
        file = self.open()
        transport.write(HEAD)
        sender = FileSender(transport, file, offset, length)
        yield sender.start()
        transport.write(b"NEXT")
        transport.loseConnection()
        received = yield client.closed
        self.assertEqual(received, HEAD + self.content[offset : offset + length] + b"NEXT")
        self.assertEqual(sender.sent, length)
        self.assertTrue(file.closed)
        self.assertEqual(self.sendfileCalls > 0, self.usesSendfile)

    def test_a_whole_mebibyte(self) -> Deferred[None]:
        self.content = self.content[:MiB]
        return self.send(0, MiB)

    def test_a_range(self) -> Deferred[None]:
        return self.send(1000, 5000)

    def test_the_last_byte(self) -> Deferred[None]:
        return self.send(8 * MiB - 1, 1)

    @inlineCallbacks
    def test_a_drained_transport_gets_the_file_at_once(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """
        Told that the transport holds nothing yet to write, the sender makes
        its first sendfile call at once, not a reactor turn later.
        """
        transport, client = yield self.connection()
        file = self.open()
        done = FileSender(transport, file, 0, 1000).start(drained=True)
        self.assertEqual(self.sendfileCalls > 0, self.usesSendfile)
        yield done
        transport.loseConnection()
        self.assertEqual((yield client.closed), self.content[:1000])

    @inlineCallbacks
    def test_nothing_to_send(self) -> Generator[Deferred[Any], Any, None]:
        transport, client = yield self.connection()
        file = self.open()
        yield FileSender(transport, file, 0, 0).start()
        self.assertTrue(file.closed)
        transport.write(b"NEXT")
        transport.loseConnection()
        self.assertEqual((yield client.closed), b"NEXT")

    @inlineCallbacks
    def test_a_reader_that_stops_holds_the_sending_back(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """
        While the client reads nothing, what went out stays bounded by the
        socket buffers (and, without sendfile, the transport's own), nowhere
        near the 8 MiB file; once it reads again, everything arrives.
        """
        transport, client = yield self.connection()
        _rawSocket(transport).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        _rawSocket(client.transport).setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.transport.pauseProducing()
        sender = FileSender(transport, self.open(), 0, 8 * MiB)
        done = sender.start()
        yield _settled(lambda: sender.sent)
        self.assertFalse(done.called)
        self.assertLess(sender.sent, 2 * MiB)
        client.transport.resumeProducing()
        yield done
        transport.loseConnection()
        self.assertEqual((yield client.closed), self.content)

    @inlineCallbacks
    def test_a_reader_that_goes_away(self) -> Generator[Deferred[Any], Any, None]:
        """The sending stops, the file is closed, the caller is told."""
        transport, client = yield self.connection()
        client.transport.pauseProducing()
        file = self.open()
        sender = FileSender(transport, file, 0, 8 * MiB)
        done = sender.start()
        yield _settled(lambda: sender.sent)
        client.transport.abortConnection()
        yield self.assertFailure(done, ConnectionLost)
        self.assertTrue(file.closed)

    @inlineCallbacks
    def test_a_file_shorter_than_promised(self) -> Generator[Deferred[Any], Any, None]:
        """
        A file truncated since its size was taken: the client sees the
        connection close short of the length it was promised.
        """
        transport, client = yield self.connection()
        file = self.open()
        transport.write(HEAD)
        yield self.assertFailure(FileSender(transport, file, 8 * MiB - 10, 20).start(), EOFError)
        self.assertTrue(file.closed)
        self.assertEqual((yield client.closed), HEAD + self.content[-10:])


def _closeIfOpen(transport: ITransport, client: _Receiver) -> Deferred[bytes]:
    transport.loseConnection()
    return client.closed


@inlineCallbacks
def _settled(progress: Callable[[], int]) -> Generator[Deferred[Any], Any, None]:
    """Wait until C{progress} has not moved for a while (a stopped reader's sender)."""
    last, still = -1, 0
    while still < 5:
        yield deferLater(_reactor, 0.02, lambda: None)
        current = progress()
        still = still + 1 if current == last else 0
        last = current


def _port(port: Any) -> int:
    return int(port.getHost().port)


class TCPTests(_SenderTests, TestCase):
    usesSendfile = True

    def listen(self, factory: Factory[Any]) -> Any:
        return _reactor.listenTCP(0, factory, interface="127.0.0.1")

    def connect(self, port: Any, factory: Factory[Any]) -> None:
        _reactor.connectTCP("127.0.0.1", _port(port), factory)


class UNIXTests(_SenderTests, TestCase):
    usesSendfile = True

    def listen(self, factory: Factory[Any]) -> Any:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        return _reactor.listenUNIX(os.path.join(directory, "s"), factory)

    def connect(self, port: Any, factory: Factory[Any]) -> None:
        _reactor.connectUNIX(port.getHost().name, factory)


class TLSTests(_SenderTests, TestCase):
    """No sendfile through TLS: the bytes must be encrypted on their way."""

    usesSendfile = False

    def setUp(self) -> None:
        super().setUp()
        keyPEM, certificatePEM = selfSignedCertificate("localhost")
        self.serverOptions = ssl.PrivateCertificate.loadPEM(keyPEM + certificatePEM).options()
        self.clientOptions = ssl.optionsForClientTLS(
            "localhost", trustRoot=ssl.Certificate.loadPEM(certificatePEM)
        )

    def listen(self, factory: Factory[Any]) -> Any:
        return _reactor.listenSSL(0, factory, self.serverOptions, interface="127.0.0.1")

    def connect(self, port: Any, factory: Factory[Any]) -> None:
        _reactor.connectSSL("127.0.0.1", _port(port), factory, self.clientOptions)
