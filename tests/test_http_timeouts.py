"""
How long L{txfastcgi.web.FastCGISite} waits for a request: a whole request
head must arrive within C{headerTimeout} seconds however slowly its bytes
trickle in, and a body may pause for at most C{bodyTimeout} seconds
(nginx's C{client_header_timeout} and C{client_body_timeout}); either is a
408.  An idle kept connection keeps the site's own C{timeout}.

Specified in memory on a L{MemoryReactorClock}; one test checks the real
thing over sockets, with php-fpm serving a normal client meanwhile.
"""

from __future__ import annotations

import functools
import json
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.web import http
from twisted.web._http2 import H2Connection
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tests.processes import TWISTD, freePort, startServer, stopProxy
from tests.recordingbackend import parseAnswer
from tests.test_http_parsing import InMemoryClient, Recorder, get
from txfastcgi.web import FastCGISite

if TYPE_CHECKING:
    from tests.conftest import PHPFPMPool

# A head long enough never to be whole while it trickles in for a minute.
SLOW_HEAD = b"GET /slow HTTP/1.1\r\nHost: example.org\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"
GET = b"GET /fast HTTP/1.1\r\nHost: example.org\r\n\r\n"


def makeSite(
    resource: Resource | None = None, timeout: float = 60 * 60 * 12
) -> tuple[FastCGISite, MemoryReactorClock]:
    """A site with nginx's timeouts, on a clock of its own."""
    clock = MemoryReactorClock()
    site = FastCGISite(
        resource or Recorder(),
        timeout=timeout,
        headerTimeout=60.0,
        bodyTimeout=60.0,
        reactor=clock,
    )
    return site, clock


def trickle(
    clients: Sequence[InMemoryClient],
    clock: MemoryReactorClock,
    data: bytes,
    seconds: int,
    interval: float = 1.0,
) -> None:
    """
    Send C{data} on each connection, a byte every C{interval} seconds, for
    C{seconds} seconds at most.
    """
    for index in range(int(seconds / interval)):
        for client in clients if index < len(data) else ():
            client.send(data[index : index + 1])
        clock.advance(interval)


def test_heads_trickling_in_are_a_408_once_the_header_timeout_is_up() -> None:
    """
    500 connections each send a byte a second, which resets any idle timer;
    the deadline of a head does not move.  A normal client is served
    meanwhile.
    """
    site, clock = makeSite()
    slow = [InMemoryClient(site) for _ in range(500)]
    trickle(slow, clock, SLOW_HEAD, 30)
    fast = InMemoryClient(site)
    fast.send(GET)
    assert fast.statuses() == [200]
    trickle(slow, clock, SLOW_HEAD[30:], 29)
    assert {(client.received(), client.closed()) for client in slow} == {(b"", False)}
    trickle(slow, clock, SLOW_HEAD[59:], 2)
    for client in slow:
        (answer,) = client.answers()
        assert (answer.status, answer.header("Connection")) == (408, ["close"])
    clock.advance(5)  # The refused clients' remaining bytes are read and dropped meanwhile.
    assert all(client.closed() for client in slow)
    assert not fast.closed()
    for client in [*slow, fast]:
        client.close()


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    """Nothing was asked, so nothing is answered."""
    site, clock = makeSite()
    client = InMemoryClient(site)
    clock.advance(59)
    assert not client.closed()
    clock.advance(2)
    assert client.closed()
    assert client.received() == b""
    client.close()


def test_an_idle_kept_connection_keeps_the_sites_idle_timeout() -> None:
    site, clock = makeSite(timeout=300.0)
    client = InMemoryClient(site)
    client.send(GET)
    clock.advance(299)
    assert (client.statuses(), client.closed()) == ([200], False)
    clock.advance(2)
    assert client.closed()
    client.close()


def test_on_a_kept_connection_the_head_clock_starts_at_its_first_byte() -> None:
    site, clock = makeSite()
    client = InMemoryClient(site)
    client.send(GET)
    clock.advance(1000)
    trickle([client], clock, SLOW_HEAD, 59)
    assert (client.statuses(), client.closed()) == ([200], False)
    trickle([client], clock, SLOW_HEAD[59:], 2)
    assert client.statuses() == [200, 408]
    client.close()


def test_a_head_that_arrives_in_time_is_served_however_slowly() -> None:
    site, clock = makeSite()
    client = InMemoryClient(site)
    trickle([client], clock, GET, 60, interval=59 / len(GET))
    assert client.statuses() == [200]
    client.close()


POST_HEAD = b"POST /upload HTTP/1.1\r\nHost: example.org\r\nContent-Length: 10\r\n\r\n"
CHUNKED_HEAD = b"POST /upload HTTP/1.1\r\nHost: example.org\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_body_that_stops_for_the_body_timeout_is_a_408() -> None:
    for head, start in [(POST_HEAD, b"12345"), (CHUNKED_HEAD, b"a\r\n12345")]:
        site, clock = makeSite()
        client = InMemoryClient(site)
        client.send(head + start)
        clock.advance(59)
        assert (client.received(), client.closed()) == (b"", False), head
        clock.advance(2)
        assert client.statuses() == [408], head
        client.close()


def test_a_slow_body_that_keeps_coming_is_served() -> None:
    """Well beyond both timeouts in all, but never a minute without a byte."""
    site, clock = makeSite()
    client = InMemoryClient(site)
    client.send(POST_HEAD)
    trickle([client], clock, b"0123456789", 300, interval=30)
    assert client.statuses() == [200]
    client.close()


class Later(Resource):
    """A resource that answers only when told to, as a slow PHP script does."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Request] = []

    def render(self, request: Request) -> int:
        self.waiting.append(request)
        return NOT_DONE_YET

    def answer(self) -> None:
        request = self.waiting.pop(0)
        request.write(b"done")
        request.finish()


def test_no_timeout_while_the_request_is_being_answered() -> None:
    """
    A script may take longer than either timeout; a head pipelined behind
    it is timed from when it is read, once the first request is answered.
    """
    resource = Later()
    site, clock = makeSite(resource)
    client = InMemoryClient(site)
    client.send(GET + SLOW_HEAD[:20])
    clock.advance(500)
    assert (client.received(), client.closed()) == (b"", False)
    resource.answer()
    clock.advance(59)
    assert (client.statuses(), client.closed()) == ([200], False)
    clock.advance(2)
    assert client.statuses() == [200, 408]
    client.close()


def test_no_timer_is_left_once_the_connections_are_closed() -> None:
    site, clock = makeSite()
    clients = [InMemoryClient(site) for _ in range(3)]
    clients[0].send(GET)
    clients[1].send(SLOW_HEAD[:10])
    for client in clients:
        client.close()
    assert clock.getDelayedCalls() == []


def test_an_http2_connection_is_left_to_http2(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    HTTP/2 replaces the HTTP/1.1 channel on the connection's first bytes,
    negotiated by ALPN; the head timeout of that channel must not close the
    connection later.
    """
    site, clock = makeSite()
    # twisted.web builds the HTTP/2 connection on the global reactor.
    monkeypatch.setattr(http, "H2Connection", functools.partial(H2Connection, clock))
    client = InMemoryClient(site)
    client.transport.negotiatedProtocol = b"h2"  # type: ignore[attr-defined]
    h2Client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h2Client.initiate_connection()
    client.send(h2Client.data_to_send())
    clock.advance(600)
    assert not client.closed()
    client.close()


# Over real sockets, in front of php-fpm


_SLOW_HEADS_TAC = """
from twisted.application import internet, service
from twisted.internet import endpoints, reactor
from txfastcgi import FastCGIResource
from txfastcgi.web import FastCGISite

phpFPM = endpoints.clientFromString(reactor, {endpoint!r})
site = FastCGISite(FastCGIResource(phpFPM, {root!r}), headerTimeout=1.0)
listen = endpoints.serverFromString(reactor, "tcp:{port}:interface=127.0.0.1")
application = service.Application("slow heads")
internet.StreamServerEndpointService(listen, site).setServiceParent(application)
"""


def trickleUntilAnswered(connection: socket.socket, data: bytes, interval: float) -> bytes:
    """Send C{data} a byte every C{interval} seconds until the server answers; its answer."""
    connection.settimeout(interval)
    for index in range(len(data)):
        connection.sendall(data[index : index + 1])
        try:
            received = connection.recv(65536)
        except socket.timeout:  # TimeoutError itself from Python 3.10 on
            continue
        connection.settimeout(10)
        while more := connection.recv(65536):
            received += more
        return received
    return b""


def test_a_slow_head_gets_a_408_while_php_serves_a_normal_client(
    tmp_path: Path, php_fpm: PHPFPMPool
) -> None:
    port = freePort()
    tacPath = tmp_path / "slow.tac"
    tacPath.write_text(
        _SLOW_HEADS_TAC.format(
            endpoint=php_fpm.endpointDescription, root=php_fpm.documentRoot, port=port
        )
    )
    server = startServer([*TWISTD, "-ny", str(tacPath)], port, tmp_path / "twistd.log")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            started = time.monotonic()
            slow.sendall(SLOW_HEAD[:10])
            answer = get(server, b"/info.php")
            assert answer.status == 200
            assert json.loads(answer.body)["REQUEST_URI"] == "/info.php"
            slowAnswer = parseAnswer(trickleUntilAnswered(slow, SLOW_HEAD[10:], 0.2))
            elapsed = time.monotonic() - started
        assert (slowAnswer.status, slowAnswer.header("Connection")) == (408, ["close"])
        # One second, checked once a second.
        assert 1.0 <= elapsed < 4.0
    finally:
        stopProxy(server)
