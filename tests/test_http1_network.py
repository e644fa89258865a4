"""
The HTTP/1.1 front over real loopback sockets, plain and TLS: what the
in-memory specification cannot show, the writes that go straight to the
socket, and what the socket does not take going through Twisted.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.certificates import selfSignedCertificate
from tests.fronts import FakeCore, FakeExchange
from tests.recordingbackend import parseAnswers, waitUntil
from tests.test_http1 import staticFileServer
from txfastcgi._http.core import RequestFacts, ResponseWriter
from txfastcgi._http.http1 import HTTP1Factory

BIG = bytes(range(256)) * (16 * 1024)  # 4 MiB: more than any socket buffer takes at once.

REQUESTS = (
    b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n"
    b"GET /small HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
)


class BigOrSmall(FakeCore):
    """Answers C{/big} with L{BIG} in one write, anything else with a few bytes."""

    def handle(self, request: RequestFacts, writer: ResponseWriter) -> FakeExchange:
        exchange = super().handle(request, writer)
        exchange.answer(BIG if request.target == b"/big" else b"small")
        return exchange


def exchange(port: int, wrap: ssl.SSLContext | None = None) -> bytes:
    """A blocking client: send L{REQUESTS}, read until the server closes."""
    plain = socket.create_connection(("127.0.0.1", port), timeout=10)
    # The TLS socket takes over the plain one's descriptor: closing the plain
    # one would leave it open until collected, which on PyPy is not at once.
    with wrap.wrap_socket(plain) if wrap is not None else plain as connection:
        connection.sendall(REQUESTS)
        received = bytearray()
        while data := connection.recv(65536):
            received += data
    return bytes(received)


class NoDelayNoted(BigOrSmall):
    """Notes whether Nagle's algorithm is off on the socket of each request's connection."""

    def __init__(self) -> None:
        super().__init__(answerAtOnce=False)
        self.noDelay: list[int] = []

    def handle(self, request: RequestFacts, writer: ResponseWriter) -> FakeExchange:
        handle = writer._connection.transport.getHandle()  # type: ignore[attr-defined]
        self.noDelay.append(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return super().handle(request, writer)


class LoopbackTests(TestCase):
    def listen(self, proxy: BigOrSmall | None = None, **tls: Any) -> int:
        if proxy is None:
            proxy = BigOrSmall(answerAtOnce=False)
        factory = HTTP1Factory(proxy, serveStaticFile=staticFileServer([]))
        if tls:
            port = reactor.listenSSL(  # type: ignore[attr-defined]
                0, factory, tls["options"], interface="127.0.0.1"
            )
        else:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        # Trial wants every connection closed at the end of the test.
        self.addCleanup(lambda: ensureDeferred(waitUntil(lambda: not len(factory.deadlines))))
        number: int = port.getHost().port
        return number

    def assertAnswered(self, received: bytes) -> None:
        big, small = parseAnswers(received)
        self.assertEqual((big.status, len(big.body), big.body == BIG), (200, len(BIG), True))
        self.assertEqual((small.status, small.body), (200, b"small"))

    async def test_a_large_answer_and_the_next_arrive_whole_over_tcp(self) -> None:
        port = self.listen()
        self.assertAnswered(await deferToThread(exchange, port))

    async def test_and_over_tls(self) -> None:
        key, certificate = selfSignedCertificate("localhost")
        options = PrivateCertificate.loadPEM(key + certificate).options()
        port = self.listen(options=options)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.assertAnswered(await deferToThread(exchange, port, context))

    async def test_nagles_algorithm_is_off_so_that_a_last_small_write_waits_for_no_ack(
        self,
    ) -> None:
        """
        A chunked response ends with a write of its own: with Nagle's
        algorithm on it would wait for the client's delayed ACK (40 ms).
        """
        proxy = NoDelayNoted()
        port = self.listen(proxy)
        self.assertAnswered(await deferToThread(exchange, port))
        self.assertEqual([bool(noDelay) for noDelay in proxy.noDelay], [True, True])
