"""
The dedicated HTTP/1.1 front as the real ``twist fastcgi-proxy`` serves it:
HTTP/2 and HTTP/1.1 chosen by ALPN on one TLS listener, static files
(conditional, partial, HEAD, a large one by sendfile), and SIGTERM with a
request in flight and an idle kept connection.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PHPFPMPool
from tests.processes import Proxy, freePort, startProxy, startServer, stopProxy
from tests.test_https import curl, makeCertificate, url


@pytest.fixture(scope="module")
def proxy(php_fpm: PHPFPMPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    logPath = tmp_path_factory.mktemp("front") / "twist.log"
    running = startProxy(
        ["--php-fpm", php_fpm.endpointDescription, "--path", php_fpm.documentRoot], logPath
    )
    yield running
    stopProxy(running)


@pytest.fixture
def largeFile(php_fpm: PHPFPMPool) -> Iterator[tuple[str, bytes]]:
    """An 8 MiB file in the document root: far over the small-file cache's limit."""
    content = os.urandom(8 * 1024 * 1024)
    path = Path(php_fpm.documentRoot) / "large-for-sendfile.bin"
    path.write_bytes(content)
    path.chmod(0o644)
    try:
        yield "/" + path.name, content
    finally:
        path.unlink()


def fetch(proxy: Proxy, method: str, target: str, **headers: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    connection.request(method, target, headers=headers)
    return connection.getresponse()


def test_static_files_answer_conditional_partial_and_head_requests(proxy: Proxy) -> None:
    whole = fetch(proxy, "GET", "/style.css")
    body = whole.read()
    assert (whole.status, whole.getheader("Content-Type")) == (200, "text/css")
    assert whole.getheader("Server") == "txfastcgi"  # The dedicated front answered.
    etag, lastModified = whole.getheader("ETag", ""), whole.getheader("Last-Modified", "")
    assert fetch(proxy, "GET", "/style.css", **{"If-None-Match": etag}).status == 304
    assert fetch(proxy, "GET", "/style.css", **{"If-Modified-Since": lastModified}).status == 304
    partial = fetch(proxy, "GET", "/style.css", Range="bytes=2-5")
    assert (partial.status, partial.read()) == (206, body[2:6])
    head = fetch(proxy, "HEAD", "/style.css")
    assert (head.status, head.read(), head.getheader("Content-Length")) == (
        200,
        b"",
        str(len(body)),
    )


def test_a_large_file_arrives_whole_to_a_slow_reader_and_in_part(
    proxy: Proxy, largeFile: tuple[str, bytes]
) -> None:
    target, content = largeFile
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.sendall(
            f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n"
            f"GET {target} HTTP/1.1\r\nHost: a\r\nRange: bytes=1000-1999\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        time.sleep(0.3)  # The server meets a full socket: it must wait, not buffer.
        received = bytearray()
        while data := client.recv(256 * 1024):
            received += data
    first, _, rest = bytes(received).partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 8388608" in first
    assert rest[: len(content)] == content
    second, _, partBody = rest[len(content) :].partition(b"\r\n\r\n")
    assert second.startswith(b"HTTP/1.1 206 Partial Content")
    assert partBody == content[1000:2000]


def test_one_tls_listener_serves_http_2_and_http_1_1_by_alpn(
    php_fpm: PHPFPMPool, tmp_path: Path
) -> None:
    key, certificate = makeCertificate(tmp_path)
    port = freePort()
    arguments = ["-m", "twisted", "fastcgi-proxy", "--php-fpm", php_fpm.endpointDescription]
    arguments += ["--path", php_fpm.documentRoot]
    arguments += ["--listen", f"ssl:{port}:privateKey={key}:certKey={certificate}"]
    tlsProxy = startServer(arguments, port, tmp_path / "twist.log")
    try:
        answers = {}
        for version in ("--http2", "--http1.1"):
            result = curl(
                version,
                "--include",
                "--write-out",
                "\n%{http_version}",
                url(tlsProxy, "/style.css"),
            )
            answer, _, httpVersion = result.stdout.rpartition(b"\n")
            answers[httpVersion] = answer
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
            with context.wrap_socket(plain) as noALPN:
                noALPN.sendall(b"GET /hello/tls HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                withoutALPN = b"".join(iter(lambda: noALPN.recv(65536), b""))
    finally:
        stopProxy(tlsProxy)
    assert set(answers) == {b"2", b"1.1"}, answers
    assert answers[b"2"].startswith(b"HTTP/2 200")
    assert b"server: txfastcgi\r\n" in answers[b"1.1"].lower()
    assert b"server: txfastcgi\r\n" not in answers[b"2"].lower()  # twisted.web's H2 stack.
    assert withoutALPN.startswith(b"HTTP/1.1 200 OK") and b"Hello, tls!" in withoutALPN
    assert b"Server: txfastcgi\r\n" in withoutALPN
    assert "Traceback" not in tlsProxy.log()


def test_sigterm_finishes_a_request_in_flight_and_closes_an_idle_kept_connection(
    php_fpm: PHPFPMPool, tmp_path: Path
) -> None:
    proxy = startProxy(
        ["--php-fpm", php_fpm.endpointDescription, "--path", php_fpm.documentRoot],
        tmp_path / "twist.log",
    )
    idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    busy = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    try:
        idle.sendall(b"GET /style.css HTTP/1.1\r\nHost: a\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200 OK")
        busy.sendall(b"GET /slow.php?ms=1000 HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.4)
        began = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        assert idle.recv(65536) == b""  # Closed at once, not kept for the next request.
        answer = b"".join(iter(lambda: busy.recv(65536), b""))
        proxy.process.wait(10)
    finally:
        idle.close()
        busy.close()
        if proxy.process.poll() is None:
            stopProxy(proxy)
    assert answer.startswith(b"HTTP/1.1 200 OK"), proxy.log()
    assert answer.endswith(b"\r\nContent-Length: 6\r\nConnection: close\r\n\r\nslept\n")
    assert b"Connection: close\r\n" in answer  # Kept no more once SIGTERM came.
    assert time.monotonic() - began < 5
    assert proxy.process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in proxy.log()
