"""
The core's own cost per request, with no socket: the proxy
(L{txfastcgi._http.core.Proxy}), the pool, the FastCGI client and the codec,
driven in a closed loop the way C{wrk -c32} drives a server, on the real
reactor (its C{callLater}, C{seconds} and timer bookkeeping, which
C{runUntilCurrent} does after each batch of answers as a reactor turn
would; no polling), against php-fpm's canned answer to C{hello.php}. With
C{--front web}, through twisted.web as well: C{FastCGIResource} in a plain
C{Site} (as C{embedded_site.py} serves it), fed the bytes wrk sends over
in-memory transports; with C{--front http1}, through the dedicated HTTP/1.1
front the same way::

    python benchmarks/core_loop.py [--front core|web|http1] [--requests N] [--rounds R]
                                   [--concurrency C] [--connections M] [--profile]

It prints the CPU microseconds per request of each round and their median.
Deterministic: the same requests in the same order every time, so that two
commits compare on the same work (the noise left is the machine's). With
C{--profile} it runs one round under cProfile and prints where the time
went, inflated for call-heavy code as cProfile always is.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.base import ReactorBase
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.web.server import Request, Site

from txfastcgi._client.pool import ConnectionPool
from txfastcgi._client.protocol import FastCGIClientProtocol
from txfastcgi._fastcgi.records import EndRequest, Stdout
from txfastcgi._http.core import Proxy, RequestFacts
from txfastcgi._http.framing import BodyFraming
from txfastcgi._http.hints import EarlyHints
from txfastcgi._http.http1 import HTTP1Connection, HTTP1Factory, Response, StaticFiles
from txfastcgi._http.resource import FastCGIResource

# What php-fpm 8.2 sends for hello.php: the header block and body in one
# STDOUT record, the empty STDOUT record, END_REQUEST, in one read.
_ANSWER = b"".join(
    (
        Stdout(
            1,
            b"X-Powered-By: PHP/8.2.36\r\nContent-type: text/html; charset=UTF-8\r\n\r\n"
            b"Hello, world!\n",
        ).encode(),
        Stdout(1, b"").encode(),
        EndRequest(1, 0, 0).encode(),
    )
)

# The headers wrk sends.
_HEADERS = [(b"Host", b"127.0.0.1:8080")]
_REQUEST = b"GET /hello.php HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"


class _Transport:
    """A transport that takes every write as a request sent to php-fpm."""

    bufferSize = 65536

    def __init__(self, loop: _Loop, protocol: FastCGIClientProtocol) -> None:
        self._loop = loop
        self._protocol = protocol

    def write(self, data: bytes) -> None:
        self._loop.sent.append(self._protocol)

    def abortConnection(self) -> None:
        raise AssertionError("the loop's requests never abort a connection")

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class _Writer:
    """A front that throws the response away and starts the next request when it ends."""

    def __init__(self, loop: _Loop) -> None:
        self._loop = loop

    def writeInformational(self, code: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        raise AssertionError("the loop learns no hints")

    def writeHead(
        self, code: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]], framing: BodyFraming
    ) -> None:
        pass

    def writeBody(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        self._loop.finished()

    def abort(self) -> None:
        raise AssertionError("the loop's requests never fail")

    def registerProducer(self, producer: IPushProducer) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def serveFile(self, filename: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        raise AssertionError("the loop only runs a script")


class _Endpoint:
    """Connects at once, to a connection that is all in memory."""

    def __init__(self, loop: _Loop) -> None:
        self._loop = loop

    def connect(self, factory: IProtocolFactory) -> Deferred[Protocol]:
        protocol = cast(FastCGIClientProtocol, factory.buildProtocol(UNIXAddress(None)))
        protocol.makeConnection(_Transport(self._loop, protocol))  # type: ignore[arg-type]
        return succeed(protocol)


class _Loop:
    """C{concurrency} clients, each sending its next request when its last one ends."""

    def __init__(self, reactor: ReactorBase, connections: int) -> None:
        self._reactor = reactor
        self.pool = ConnectionPool(reactor, _Endpoint(self), maxConnections=connections)  # type: ignore[arg-type]
        self.sent: deque[FastCGIClientProtocol] = deque()
        self._toStart = 0
        self._left = 0

    def request(self) -> None:
        """Send one request."""
        raise NotImplementedError()

    def finished(self) -> None:
        self._left -= 1
        self._toStart += 1

    def run(self, requests: int, concurrency: int) -> None:
        """Answer C{requests} requests, C{concurrency} at a time, a reactor turn per batch."""
        self._left = requests
        self._toStart = concurrency
        sent = self.sent
        answered = 0
        while self._left > 0:
            while self._toStart and self._left - len(sent) > 0:
                self._toStart -= 1
                self.request()
            if not sent:
                raise AssertionError("requests wait, but none was sent to php-fpm")
            # php-fpm answers the oldest request first.
            sent.popleft().dataReceived(_ANSWER)
            answered += 1
            if answered % concurrency == 0:
                self._reactor.runUntilCurrent()


class _CoreLoop(_Loop):
    """Requests described as a front describes them, to the core."""

    def __init__(self, reactor: ReactorBase, documentRoot: str, connections: int) -> None:
        super().__init__(reactor, connections)
        # With what the command turns on by default (compression is Proxy's own default).
        self._proxy = Proxy(self.pool, documentRoot, earlyHints=EarlyHints(), reactor=reactor)

    def request(self) -> None:
        facts = RequestFacts(
            method=b"GET",
            target=b"/hello.php",
            version=b"HTTP/1.1",
            headers=_HEADERS,
            client=("127.0.0.1", 40000),
            server=("127.0.0.1", 8080),
            secure=False,
            body=BytesIO(),
            bodyLength=0,
            path=b"/hello.php",
        )
        self._proxy.handle(facts, _Writer(self))


class _DiscardingTransport(StringTransport):
    """A client's TCP connection that forgets what the server writes."""

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, seq: Sequence[bytes]) -> None:
        pass


class _WebLoop(_Loop):
    """Requests as bytes on kept-alive HTTP/1.1 connections to a twisted.web Site."""

    def __init__(self, reactor: ReactorBase, documentRoot: str, connections: int) -> None:
        super().__init__(reactor, connections)
        loop = self

        class FinishedRequest(Request):
            def finish(self) -> None:
                # Forgotten by the request once it is finished.
                channel = self.channel
                super().finish()
                loop._idle.append(channel)
                loop.finished()

        resource = FastCGIResource(self.pool, documentRoot, reactor=reactor)
        self._site = Site(resource, requestFactory=FinishedRequest, reactor=reactor)
        self._idle: deque[Any] = deque()

    def request(self) -> None:
        if not self._idle:
            peer = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.sent))
            channel = self._site.buildProtocol(peer)
            assert channel is not None
            channel.makeConnection(
                _DiscardingTransport(IPv4Address("TCP", "127.0.0.1", 8080), peer)
            )
            self._idle.append(channel)
        self._idle.popleft().dataReceived(_REQUEST)


class _HTTP1Loop(_Loop):
    """Requests as bytes on kept-alive HTTP/1.1 connections to the dedicated front."""

    def __init__(self, reactor: ReactorBase, documentRoot: str, connections: int) -> None:
        super().__init__(reactor, connections)
        loop = self

        class AnsweredConnection(HTTP1Connection):
            def responseDone(self, response: Response, keepAlive: bool) -> None:
                super().responseDone(response, keepAlive)
                loop._idle.append(self)
                loop.finished()

        class Factory(HTTP1Factory):
            def buildProtocol(self, addr: object) -> HTTP1Connection:
                return AnsweredConnection(self)

        proxy = Proxy(self.pool, documentRoot, earlyHints=EarlyHints(), reactor=reactor)
        self._factory = Factory(proxy, serveStaticFile=StaticFiles(), reactor=reactor)
        self._idle: deque[HTTP1Connection] = deque()

    def request(self) -> None:
        if not self._idle:
            peer = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.sent))
            connection = self._factory.buildProtocol(peer)
            connection.makeConnection(
                _DiscardingTransport(IPv4Address("TCP", "127.0.0.1", 8080), peer)
            )
            self._idle.append(connection)
        self._idle.popleft().dataReceived(_REQUEST)


_FRONTS = {"core": _CoreLoop, "web": _WebLoop, "http1": _HTTP1Loop}


def _round(reactor: ReactorBase, documentRoot: str, arguments: argparse.Namespace) -> float:
    front = _FRONTS[arguments.front]
    loop = front(reactor, documentRoot, arguments.connections)
    loop.run(arguments.concurrency, arguments.concurrency)  # warm up
    start = time.process_time()
    loop.run(arguments.requests, arguments.concurrency)
    requests: int = arguments.requests
    return (time.process_time() - start) / requests * 1e6


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--front", choices=sorted(_FRONTS), default="core")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=8, help="the pool's maxConnections")
    parser.add_argument("--profile", action="store_true")
    arguments = parser.parse_args(argv)

    from twisted.internet import reactor as globalReactor

    # Its runUntilCurrent is the bookkeeping of a reactor turn.
    reactor = cast(ReactorBase, globalReactor)

    with tempfile.TemporaryDirectory() as documentRoot:
        (Path(documentRoot) / "hello.php").write_text("<?php echo 'Hello, world!';\n")
        if arguments.profile:
            profiler = cProfile.Profile()
            profiler.runcall(_round, reactor, documentRoot, arguments)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            return
        results = []
        for _ in range(arguments.rounds):
            results.append(_round(reactor, documentRoot, arguments))
            print(f"{results[-1]:7.2f} µs/request", flush=True)
    print(f"median {statistics.median(results):.2f} µs/request")


if __name__ == "__main__":
    main(sys.argv[1:])
