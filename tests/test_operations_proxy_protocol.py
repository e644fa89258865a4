"""
Behind a load balancer that speaks the PROXY protocol (HAProxy's
C{send-proxy}, AWS NLB, ...): C{--listen haproxy:tcp:PORT} through the real
process and a real php-fpm, which sees the client's address as REMOTE_ADDR.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PHPFPMPool
from tests.processes import Proxy, stopProxy
from tests.test_operations_startup import siteOptions, startWithTextLog, waitForLog

REQUEST = b"GET /info.php HTTP/1.0\r\nHost: example.org\r\n\r\n"


@pytest.fixture
def proxied(tmp_path: Path, php_fpm: PHPFPMPool) -> Iterator[Proxy]:
    proxy = startWithTextLog(
        siteOptions(php_fpm),
        tmp_path / "proxy.log",
        listen="haproxy:tcp:{port}:interface=127.0.0.1",
    )
    try:
        yield proxy
    finally:
        stopProxy(proxy)


def exchange(proxy: Proxy, data: bytes) -> bytes:
    """Send C{data} on a new connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "header, address, port",
    [
        (b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 80\r\n", "203.0.113.7", "56324"),
        (b"PROXY TCP6 2001:db8::7 ::1 40000 443\r\n", "2001:db8::7", "40000"),
    ],
)
def test_remote_addr_is_the_client_the_balancer_names(
    proxied: Proxy, header: bytes, address: str, port: str
) -> None:
    head, _, body = exchange(proxied, header + REQUEST).partition(b"\r\n\r\n")
    # HTTP/1.1 answers an HTTP/1.0 request too, as nginx does (RFC 9110 section 2.5).
    assert head.startswith(b"HTTP/1.1 200 "), head + proxied.log().encode()
    info = json.loads(body)
    assert (info["REMOTE_ADDR"], info["REMOTE_PORT"]) == (address, port)


def test_a_connection_without_the_proxy_header_is_not_served(proxied: Proxy) -> None:
    assert exchange(proxied, REQUEST) == b""


def test_the_startup_line_says_the_listener_expects_the_proxy_protocol(proxied: Proxy) -> None:
    # The line is written once the port listens, so it may follow the first connection.
    waitForLog(proxied, f"on http://127.0.0.1:{proxied.port}/ (PROXY protocol) with PHP")
