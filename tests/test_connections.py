"""
Kept-alive FastCGI connections in front of real php-fpm pools: the pool never
starves php-fpm, stale connections cost no GET, timeouts give the right
status, and a slow client holds php-fpm back instead of filling memory.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.server import Site
from zope.interface import implementer

from tests.processes import startProxy, stopProxy
from txfastcgi import FastCGIResource
from txfastcgi._client.pool import ConnectionPool


@pytest.fixture(autouse=True)
def _pools(request: pytest.FixtureRequest, php_fpm_factory: Any) -> None:
    """Hand the php-fpm factory to the trial test cases."""
    if request.instance is not None:
        request.instance.startPHPFPM = php_fpm_factory


class PoolInFrontOfPHPFPMTests(TestCase):
    """An in-process web server with a pool in front of a php-fpm of the test's own."""

    startPHPFPM: Any

    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.agent = Agent(reactor)

    def serve(self, endpoint: IStreamClientEndpoint, documentRoot: str, **poolOptions: Any) -> str:
        """Serve the site through a pool with C{poolOptions}; the base URL."""
        pool = ConnectionPool(reactor, endpoint, **poolOptions)
        self.addCleanup(pool.close)
        site = Site(FastCGIResource(pool, documentRoot))
        port: IListeningPort = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]

    def servePool(self, children: int, maxRequests: int = 0, **poolOptions: Any) -> str:
        phpFPM = self.startPHPFPM(children=children, maxRequests=maxRequests)
        endpoint = UNIXClientEndpoint(reactor, phpFPM.socketPath)
        return self.serve(endpoint, phpFPM.documentRoot, **poolOptions)

    @inlineCallbacks
    def get(self, url: str) -> Any:
        response = yield self.agent.request(b"GET", url.encode())
        body = yield readBody(response)
        return response, body

    def scriptRoot(self) -> str:
        """A document root whose index.php exists (for backends that never run it)."""
        root = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, root)
        (root / "index.php").write_text("<?php")
        return str(root)

    def logged(self) -> str:
        return "\n".join(formatEvent(event) for event in self.events)

    @inlineCallbacks
    def test_more_connections_than_workers_never_wait_for_an_idle_timeout(self) -> Any:
        """
        2 php-fpm workers, up to 8 connections, 50 requests of 50 ms at once:
        all succeed in about 50 x 50 ms / 2, although php-fpm leaves 6 of the
        first 8 connections in its backlog while its workers stay bound to
        kept connections. A pool that kept those connections would leave the
        backlogged requests waiting for the (here 60 s) idle timeout.
        """
        phpFPM = self.startPHPFPM(children=2)
        endpoint = _CountingEndpoint(UNIXClientEndpoint(reactor, phpFPM.socketPath))
        base = self.serve(endpoint, phpFPM.documentRoot, maxConnections=8, idleTimeout=60)
        started = time.monotonic()
        results = yield gatherResults([self.get(f"{base}/slow.php?ms=50") for _ in range(50)])
        elapsed = time.monotonic() - started
        self.assertEqual([response.code for response, _ in results], [200] * 50)
        self.assertEqual({body for _, body in results}, {b"slept\n"})
        self.assertLess(elapsed, 10, "requests waited for an idle timeout")
        # Having seen that php-fpm serves 2 connections at once, the pool
        # keeps that many alive instead of opening one for every request.
        self.assertLess(endpoint.connects, 20)

    @inlineCallbacks
    def test_a_get_on_a_connection_php_fpm_closed_is_retried(self) -> Any:
        """
        With pm.max_requests = 1 php-fpm closes every kept connection right
        after its response; under load the pool hands it to the next request
        before the close arrives. That GET fails before any response and is
        retried on a new connection, so no client sees an error.
        """
        base = self.servePool(children=2, maxRequests=1, maxConnections=2)
        results = yield gatherResults([self.get(f"{base}/info.php") for _ in range(40)])
        self.assertEqual([response.code for response, _ in results], [200] * 40)
        self.assertIn("retrying GET", self.logged())

    @inlineCallbacks
    def test_a_request_that_waits_too_long_for_a_connection_gets_503(self) -> Any:
        base = self.servePool(children=1, maxConnections=1, queueTimeout=0.3)
        slow = self.get(f"{base}/slow.php?ms=1500")
        response, body = yield self.get(f"{base}/info.php")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"5"])
        self.assertIn(b"overloaded", body)
        response, _ = yield slow
        self.assertEqual(response.code, 200)
        self.assertIn("FastCGI pool saturated", self.logged())

    @inlineCallbacks
    def test_a_backend_silent_past_the_read_timeout_gives_504(self) -> Any:
        base = self.servePool(children=2, readTimeout=0.3)
        response, body = yield self.get(f"{base}/slow.php?ms=2000")
        self.assertEqual(response.code, 504)
        self.assertIn(b"did not answer in time", body)
        self.assertIn("no output from the backend for 0.3 seconds", self.logged())
        # That connection was closed, never reused: the next request gets a
        # new one, served by the other worker.
        response, _ = yield self.get(f"{base}/info.php")
        self.assertEqual(response.code, 200)

    @inlineCallbacks
    def test_a_backend_that_does_not_accept_in_time_gives_502(self) -> Any:
        base = self.serve(_NeverConnects(), self.scriptRoot(), connectTimeout=0.2)
        started = time.monotonic()
        response, _ = yield self.get(f"{base}/index.php/x")
        self.assertEqual(response.code, 502)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("connect timed out after 0.2 s", self.logged())

    @inlineCallbacks
    def test_a_refusing_backend_gives_502_at_once(self) -> Any:
        listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(listener.close)
        path = os.path.join(self.scriptRoot(), "refusing.sock")
        listener.bind(path)  # bound but not listening: connections are refused
        base = self.serve(UNIXClientEndpoint(reactor, path), self.scriptRoot())
        response, _ = yield self.get(f"{base}/index.php")
        self.assertEqual(response.code, 502)


@implementer(IStreamClientEndpoint)
class _CountingEndpoint:
    """An endpoint that counts the connections made through it."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint
        self.connects = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.connects += 1
        return self._endpoint.connect(factory)


@implementer(IStreamClientEndpoint)
class _NeverConnects:
    """An endpoint whose connection attempts never complete (a black-holed address)."""

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred()


def residentKilobytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def proxyWithPool(php_fpm_factory: Any, tmp_path: Path) -> Iterator[Any]:
    phpFPM = php_fpm_factory(children=4)
    arguments = ["--php-fpm", phpFPM.endpointDescription, "--path", phpFPM.documentRoot]
    proxy = startProxy([*arguments, "--access-log", os.devnull], tmp_path / "twist.log")
    yield proxy
    stopProxy(proxy)


def clientsThatDoNotRead(port: int, count: int) -> list[socket.socket]:
    """Open C{count} connections that each ask for 50 MB and read none of it."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.sendall(b"GET /stream.php?bytes=52428800&chunk=65536 HTTP/1.1\r\nHost: x\r\n\r\n")
        clients.append(client)
    return clients


def peakResidentKilobytes(pid: int, seconds: float) -> int:
    peak = 0
    for _ in range(int(seconds / 0.3)):
        time.sleep(0.3)
        peak = max(peak, residentKilobytes(pid))
    return peak


def test_clients_that_do_not_read_keep_the_proxys_memory_flat(proxyWithPool: Any) -> None:
    """
    200 clients ask for 50 MB each and read nothing: backpressure stops
    php-fpm instead of the proxy buffering 10 GB. docs/scaling.rst documents
    the bound checked here (40 MiB; about 4 MiB is what it takes).

    The baseline is taken after ten such clients have come and gone, so that
    what the process spends once on serving at all (PyPy's JIT compiles the
    streaming path then, about 40 MiB whatever the number of clients) is not
    counted as growth.
    """
    proxy = proxyWithPool
    warmingUp = clientsThatDoNotRead(proxy.port, 10)
    time.sleep(1)
    for client in warmingUp:
        client.close()
    before = peakResidentKilobytes(proxy.process.pid, 0.9)
    clients = clientsThatDoNotRead(proxy.port, 200)
    peak = peakResidentKilobytes(proxy.process.pid, 3)
    for client in clients:
        client.close()
    assert peak - before < 40 * 1024, f"the proxy grew by {peak - before} KiB"
    # The proxy still answers, and did not read the 10 GB.
    reader = socket.create_connection(("127.0.0.1", proxy.port))
    reader.sendall(b"GET /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reader.recv(12) == b"HTTP/1.1 200"
    reader.close()
