"""
The attacks of C{test_security.py} against the real thing: each front in a
process of its own (L{tests.fronts.RunningFronts}) in front of a real
php-fpm serving the attack site (L{tests.recordingbackend.buildAttackSite}).
PHP reports what it saw (C{echo.php} and the front controller print it in
JSON), so each test checks what reached PHP as well as what the client got.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase

from tests.conftest import PHPFPMPool, startPHPFPM, stopPHPFPM
from tests.fronts import RunningFronts, onEveryFront, serve, startFront
from tests.processes import Proxy, startProxy, stopProxy
from tests.recordingbackend import (
    EXECUTED,
    SECRET,
    Answer,
    buildAttackSite,
    exchange,
    parseAnswer,
    request,
    waitUntil,
)
from tests.test_security import (
    AMBIGUOUS_REQUESTS,
    CONTROL_CHARACTER_PATHS,
    ESCAPING_PATHS,
    FRONT_CONTROLLED_PATHS,
    HIDDEN_PATHS,
    SOURCE_PATHS,
    smuggledRecords,
)
from txfastcgi import FastCGIResource
from txfastcgi._client.pool import ConnectionPool
from txfastcgi.tap import Options


@pytest.fixture(scope="module")
def attackSite() -> Iterator[str]:
    root, _ = buildAttackSite()
    yield root
    shutil.rmtree(os.path.dirname(root), ignore_errors=True)


@pytest.fixture(scope="module")
def phpFPM(attackSite: str) -> Iterator[PHPFPMPool]:
    pool = startPHPFPM(attackSite, children=2)
    yield pool
    stopPHPFPM(pool)


@pytest.fixture(scope="module")
def fronts(
    phpFPM: PHPFPMPool, attackSite: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningFronts]:
    running = RunningFronts(
        phpFPM.endpointDescription, attackSite, tmp_path_factory.mktemp("fronts")
    )
    yield running
    running.stop()


@pytest.fixture
def proxy(fronts: RunningFronts, front: str) -> Proxy:
    """Each front in turn, in front of php-fpm serving the attack site."""
    return fronts[front]


def send(proxy: Proxy, *writes: bytes) -> bytes:
    """Write raw bytes to the proxy; everything it sent back until it closed."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as connection:
        for data in writes:
            connection.sendall(data)
        received = bytearray()
        while chunk := connection.recv(65536):
            received += chunk
    return bytes(received)


def fetch(proxy: Proxy, target: bytes, **options: Any) -> Answer:
    return parseAnswer(send(proxy, request(target, **options)))


def phpView(answer: Answer) -> dict[str, Any]:
    """What PHP saw, as C{echo.php} (or the front controller) reported it."""
    assert answer.status == 200, (answer.status, answer.body[:300])
    assert EXECUTED not in answer.body
    view: dict[str, Any] = json.loads(answer.body)
    return view


def test_an_upload_or_a_link_out_of_the_root_never_runs(proxy: Proxy, attackSite: str) -> None:
    for target in FRONT_CONTROLLED_PATHS:
        view = phpView(fetch(proxy, target))
        assert view["script"] == os.path.join(os.path.realpath(attackSite), "index.php"), target
        assert view["server"]["SCRIPT_FILENAME"] == os.path.join(attackSite, "index.php")
        assert view["server"]["REQUEST_URI"] == target.decode()


def test_paths_out_of_the_root_or_with_control_characters_are_a_400(proxy: Proxy) -> None:
    for target in [*ESCAPING_PATHS, *CONTROL_CHARACTER_PATHS]:
        answer = fetch(proxy, target)
        assert answer.status == 400, target
        assert EXECUTED not in answer.body


def test_script_source_and_hidden_files_are_never_served(proxy: Proxy) -> None:
    for target in [*SOURCE_PATHS, *HIDDEN_PATHS]:
        answer = fetch(proxy, target)
        assert answer.status == 403, target
        assert SECRET not in answer.body
        assert b"<?php" not in answer.body
        assert EXECUTED not in answer.body


def test_a_full_width_php_extension_is_not_run(proxy: Proxy) -> None:
    answer = fetch(proxy, b"/shell.%EF%BD%90hp")
    assert answer.status == 200
    assert EXECUTED not in answer.body


def test_headers_reach_php_without_posing_as_anything_else(proxy: Proxy) -> None:
    view = phpView(
        fetch(
            proxy,
            b"/echo.php",
            headers=[
                (b"Proxy", b"http://evil.example:3128"),
                (b"X_Forwarded_For", b"6.6.6.6"),
                (b"X-Forwarded-For", b"1.2.3.4"),
                (b"X.Forwarded.For", b"6.6.6.6"),
                (b"PHP_VALUE", b"auto_prepend_file=/etc/passwd"),
                (b"PHP-Value", b"auto_prepend_file=/etc/passwd"),
                (b"Cookie", b"a=1"),
                (b"Cookie", b"b=2"),
            ],
        )
    )
    server = view["server"]
    assert "HTTP_PROXY" not in server
    assert server["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"
    assert "6.6.6.6" not in json.dumps(server)
    assert "PHP_VALUE" not in server
    assert view["auto_prepend_file"] in ("", False)
    assert view["cookie"] == {"a": "1", "b": "2"}


def test_fake_records_in_a_large_body_reach_php_as_that_body(proxy: Proxy) -> None:
    body = b"A" * 65536 + smuggledRecords(b"/tmp/evil.php") * 20
    body += b"B" * (99 * 1024 - len(body))
    view = phpView(fetch(proxy, b"/echo.php", method=b"POST", body=body))
    assert view["body_length"] == len(body)
    assert view["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_header_of_the_largest_size_the_default_limit_allows_reaches_php(proxy: Proxy) -> None:
    value = bytes(range(33, 127)) * 160
    view = phpView(fetch(proxy, b"/echo.php", headers=[(b"X-Big", value)]))
    assert view["server"]["HTTP_X_BIG"] == value.decode()


def test_ambiguous_request_lengths_are_a_400(proxy: Proxy) -> None:
    for name, raw in AMBIGUOUS_REQUESTS.items():
        answer = send(proxy, raw)
        assert answer.startswith(b"HTTP/1.1 400 "), (name, answer[:200])
        assert b"HTTP/1.1 200" not in answer, name


def test_source_is_never_served_when_php_fpm_is_down(
    front: str, attackSite: str, tmp_path: Path
) -> None:
    down = startFront(front, f"unix:{tmp_path}/missing.sock", attackSite, tmp_path / "twist.log")
    try:
        for target, status in [
            (b"/echo.php", 502),
            (b"/uploads/evil.jpg/x.php", 502),
            (b"/x.php.bak", 403),
            (b"/X.PHP", 403),
            (b"/shell.phtml", 403),
        ]:
            answer = fetch(down, target)
            assert answer.status == status, target
            assert b"<?php" not in answer.body
            assert SECRET not in answer.body
    finally:
        stopProxy(down)


@pytest.mark.skipif(
    "max-body-size" not in Options().opts,
    reason="no --max-body-size yet: tap.py must serve txfastcgi._http.web.FastCGISite",
)
def test_the_command_line_refuses_large_bodies_and_heads(
    phpFPM: PHPFPMPool, attackSite: str, tmp_path: Path
) -> None:
    limited = startProxy(
        [
            "--php-fpm",
            phpFPM.endpointDescription,
            "--path",
            attackSite,
            "--max-body-size",
            "65536",
        ],
        tmp_path / "twist.log",
    )
    try:
        head = b"POST /echo.php HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n"
        assert parseAnswer(send(limited, head)).status == 413
        chunked = b"POST /echo.php HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunks = b"%x\r\n%s\r\n" % (4096, b"c" * 4096) * 16 + b"1\r\nc\r\n"
        assert parseAnswer(send(limited, chunked, chunks)).status == 413
        big = request(b"/echo.php", headers=[(b"X-Big", b"b" * 20000)])
        assert parseAnswer(send(limited, big)).status == 431
        body = os.urandom(65536)
        view = phpView(fetch(limited, b"/echo.php", method=b"PUT", body=body))
        assert view["body_sha256"] == hashlib.sha256(body).hexdigest()
    finally:
        stopProxy(limited)


@pytest.fixture(autouse=True)
def _phpFPM(request: pytest.FixtureRequest) -> None:
    """Hand php-fpm and the site to the trial test cases."""
    if request.instance is not None:
        request.instance.phpFPM = request.getfixturevalue("phpFPM")
        request.instance.documentRoot = request.getfixturevalue("attackSite")


@onEveryFront
class LargeHeadTests(TestCase):
    """
    A front in this process with a head limit raised to 256 KiB, in front of
    the real php-fpm.
    """

    front: str

    phpFPM: PHPFPMPool
    documentRoot: str

    def setUp(self) -> None:
        pool = ConnectionPool(reactor, UNIXClientEndpoint(reactor, self.phpFPM.socketPath))
        self.addCleanup(pool.close)
        factory = serve(
            self.front, FastCGIResource(pool, self.documentRoot), maxHeaderSize=256 * 1024
        )
        port: IListeningPort = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: ensureDeferred(waitUntil(lambda: not len(factory.deadlines))))
        self.port = port.getHost().port  # type: ignore[attr-defined]

    async def test_headers_of_over_64_kib_in_all_reach_php_whole(self) -> None:
        first, second = b"1" * 40000, b"2" * 40000
        raw = await exchange(
            self.port, request(b"/echo.php", headers=[(b"X-First", first), (b"X-Second", second)])
        )
        view = phpView(parseAnswer(raw))
        self.assertEqual(view["server"]["HTTP_X_FIRST"], first.decode())
        self.assertEqual(view["server"]["HTTP_X_SECOND"], second.decode())
