"""
How long each HTTP/1.1 front (L{tests.fronts}) waits for a request: a whole
request head must arrive within C{headerTimeout} seconds however slowly its
bytes trickle in, and a body may pause for at most C{bodyTimeout} seconds
(nginx's C{client_header_timeout} and C{client_body_timeout}); either is a
408.  An idle kept connection has a timeout of its own.

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

from tests.fronts import Client, FakeCore, InMemoryFront, startFront
from tests.processes import stopProxy
from tests.recordingbackend import parseAnswer
from tests.test_http_parsing import get, refused

if TYPE_CHECKING:
    from tests.conftest import PHPFPMPool

# A head long enough never to be whole while it trickles in for a minute.
SLOW_HEAD = b"GET /slow HTTP/1.1\r\nHost: example.org\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"
GET = b"GET /fast HTTP/1.1\r\nHost: example.org\r\n\r\n"


def trickle(
    clients: Sequence[Client],
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


def test_heads_trickling_in_are_a_408_once_the_header_timeout_is_up(front: str) -> None:
    """
    500 connections each send a byte a second, which resets any idle timer;
    the deadline of a head does not move.  A normal client is served
    meanwhile.
    """
    served = InMemoryFront(front)
    clock = served.clock
    slow = [served.connect() for _ in range(500)]
    trickle(slow, clock, SLOW_HEAD, 30)
    fast = served.connect()
    fast.send(GET)
    assert fast.statuses() == [200]
    trickle(slow, clock, SLOW_HEAD[30:], 29)
    assert {(client.received(), client.closed()) for client in slow} == {(b"", False)}
    trickle(slow, clock, SLOW_HEAD[59:], 2)
    for client in slow:
        refused(client, 408)
    clock.advance(5)  # The refused clients' remaining bytes are read and dropped meanwhile.
    assert all(client.closed() for client in slow)
    assert not fast.closed()
    for client in [*slow, fast]:
        client.close()


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(front: str) -> None:
    """Nothing was asked, so nothing is answered."""
    served = InMemoryFront(front)
    client = served.connect()
    served.clock.advance(59)
    assert not client.closed()
    served.clock.advance(2)
    assert client.closed()
    assert client.received() == b""
    client.close()


def test_an_idle_kept_connection_is_closed_after_the_idle_timeout(front: str) -> None:
    served = InMemoryFront(front, idleTimeout=300.0)
    client = served.connect()
    client.send(GET)
    served.clock.advance(299)
    assert (client.statuses(), client.closed()) == ([200], False)
    served.clock.advance(2)
    assert client.closed()
    client.close()


def test_on_a_kept_connection_the_head_clock_starts_at_its_first_byte(front: str) -> None:
    served = InMemoryFront(front, idleTimeout=3600.0)
    client = served.connect()
    client.send(GET)
    served.clock.advance(1000)
    trickle([client], served.clock, SLOW_HEAD, 59)
    assert (client.statuses(), client.closed()) == ([200], False)
    trickle([client], served.clock, SLOW_HEAD[59:], 2)
    assert client.statuses() == [200, 408]
    client.close()


def test_a_head_that_arrives_in_time_is_served_however_slowly(front: str) -> None:
    served = InMemoryFront(front)
    client = served.connect()
    trickle([client], served.clock, GET, 60, interval=59 / len(GET))
    assert client.statuses() == [200]
    client.close()


POST_HEAD = b"POST /upload HTTP/1.1\r\nHost: example.org\r\nContent-Length: 10\r\n\r\n"
CHUNKED_HEAD = b"POST /upload HTTP/1.1\r\nHost: example.org\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "start", [POST_HEAD + b"12345", CHUNKED_HEAD + b"a\r\n12345"], ids=["length", "chunked"]
)
def test_a_body_that_stops_for_the_body_timeout_is_a_408(front: str, start: bytes) -> None:
    served = InMemoryFront(front)
    client = served.connect()
    client.send(start)
    served.clock.advance(59)
    assert (client.received(), client.closed()) == (b"", False)
    served.clock.advance(2)
    refused(client, 408)
    assert served.core.exchanges == []
    client.close()


def test_a_slow_body_that_keeps_coming_is_served(front: str) -> None:
    """Well beyond both timeouts in all, but never a minute without a byte."""
    served = InMemoryFront(front)
    client = served.connect()
    client.send(POST_HEAD)
    trickle([client], served.clock, b"0123456789", 300, interval=30)
    assert client.statuses() == [200]
    assert served.core.seen() == [(b"/upload", b"0123456789")]
    client.close()


def test_no_timeout_while_the_request_is_being_answered(front: str) -> None:
    """
    A script may take longer than either timeout; a head pipelined behind
    it is timed from when it is read, once the first request is answered.
    """
    served = InMemoryFront(front, FakeCore(answerAtOnce=False), idleTimeout=3600.0)
    client = served.connect()
    client.send(GET + SLOW_HEAD[:20])
    served.clock.advance(500)
    assert (client.received(), client.closed()) == (b"", False)
    served.core.exchanges[0].answer()
    served.clock.advance(59)
    assert (client.statuses(), client.closed()) == ([200], False)
    served.clock.advance(2)
    assert client.statuses() == [200, 408]
    client.close()


def test_no_timer_is_left_once_the_connections_are_closed(front: str) -> None:
    served = InMemoryFront(front)
    clients = [served.connect() for _ in range(3)]
    clients[0].send(GET)
    clients[1].send(SLOW_HEAD[:10])
    for client in clients:
        client.close()
    assert served.clock.getDelayedCalls() == []


def test_an_http2_connection_is_left_to_http2(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    HTTP/2 replaces the HTTP/1.1 channel on the connection's first bytes,
    negotiated by ALPN; the head timeout of that channel must not close the
    connection later.
    """
    served = InMemoryFront("twisted.web", idleTimeout=3600.0)
    clock = served.clock
    # twisted.web builds the HTTP/2 connection on the global reactor.
    monkeypatch.setattr(http, "H2Connection", functools.partial(H2Connection, clock))
    client = served.connect()
    client.transport.negotiatedProtocol = b"h2"  # type: ignore[attr-defined]
    h2Client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h2Client.initiate_connection()
    client.send(h2Client.data_to_send())
    clock.advance(600)
    assert not client.closed()
    client.close()


# Over real sockets, in front of php-fpm


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
    front: str, tmp_path: Path, php_fpm: PHPFPMPool
) -> None:
    server = startFront(
        front,
        php_fpm.endpointDescription,
        php_fpm.documentRoot,
        tmp_path / "twistd.log",
        headerTimeout=1.0,
    )
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
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
