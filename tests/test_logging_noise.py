"""
What the real C{twist fastcgi-proxy} logs, counted line by line: one event,
one line, with no line that says nothing an operator needs.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.processes import Proxy, freePort, startServer, stopProxy
from tests.test_operations_startup import waitForLog

if TYPE_CHECKING:
    from tests.conftest import PHPFPMPool


def _startProxy(arguments: list[str], logPath: Path) -> Proxy:
    """
    Run the proxy with text log lines, one event to a line, whatever the
    default format for a log that is not a terminal.
    """
    port = freePort()
    command = ["-m", "twisted", "--log-format", "text", "fastcgi-proxy"]
    proxy = startServer([*command, "--listen", f"tcp:{port}", *arguments], port, logPath)
    # The start-up lines follow the port's first connection: let them be written.
    waitForLog(proxy, "Starting reactor")
    return proxy


def _get(proxy: Proxy, path: str) -> int:
    """
    The status of a GET of C{path}, on a connection of its own.
    """
    try:
        with urllib.request.urlopen(proxy.url + path, timeout=30) as response:
            response.read()
            status: int = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status


def _stoppedLog(proxy: Proxy) -> list[str]:
    """
    Every line the proxy logged, once it has exited: what it logs while
    stopping counts too.
    """
    stopProxy(proxy)
    return proxy.log().splitlines()


def _containing(lines: list[str], text: str) -> list[str]:
    return [line for line in lines if text in line]


def test_fastCGIConnectionsAreNotLogged(
    php_fpm: PHPFPMPool, php_document_root: str, tmp_path: Path
) -> None:
    """
    Opening and closing a FastCGI connection is routine, not an event:
    Twisted's C{Starting factory} and C{Stopping factory} lines stay out of
    the log.
    """
    proxy = _startProxy(
        ["--php-fpm", php_fpm.endpointDescription, "--path", php_document_root],
        tmp_path / "proxy.log",
    )
    assert [_get(proxy, "/info.php") for _ in range(3)] == [200] * 3
    lines = _stoppedLog(proxy)
    assert _containing(lines, "GET /info.php") != []
    assert _containing(lines, "factory") == []


@pytest.fixture(scope="module")
def spawnedLog(
    php_document_root: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """
    The log of a proxy that ran its own php-fpm and served
    C{warnings.php?marker=spawned-marker} and C{stderr.php}, then stopped.
    """
    proxy = _startProxy(
        ["--php-fpm", "spawn", "--spawn-children", "1", "--path", php_document_root],
        tmp_path_factory.mktemp("spawned") / "proxy.log",
    )
    try:
        assert _get(proxy, "/warnings.php?marker=spawned-marker") == 200
        assert _get(proxy, "/stderr.php?message=written-to-stderr") == 200
    finally:
        lines = _stoppedLog(proxy)
    yield lines


def test_spawnedPHPErrorsAreLoggedOnce(spawnedLog: list[str]) -> None:
    """
    A PHP warning and an C{error_log()} line of a script run by the spawned
    php-fpm each make one line in the log, not one from php-fpm's own log
    and another from the FastCGI STDERR stream; a script's own
    C{php://stderr} line is still logged, once too.
    """
    assert len(_containing(spawnedLog, "warning spawned-marker")) == 1, spawnedLog
    assert len(_containing(spawnedLog, "logged spawned-marker")) == 1, spawnedLog
    # stderr.php's error_log() line is "PHP message: written-to-stderr"; its
    # php://stderr line is the message alone.
    written = _containing(spawnedLog, "written-to-stderr")
    assert len(_containing(written, "PHP message: written-to-stderr")) == 1, spawnedLog
    assert len(written) == 3, spawnedLog  # Both lines, and the access line.


def test_spawnedPHPFPMHasNoBlankLines(spawnedLog: list[str]) -> None:
    """
    php-fpm's relayed output has no empty C{[php-fpm]} lines, at start,
    while serving or at exit.
    """
    relayed = _containing(spawnedLog, "[php-fpm]")
    assert relayed != []
    assert [line for line in relayed if re.search(r"\[php-fpm\]\s*$", line)] == []


def test_a502IsOneLine(tmp_path: Path, php_document_root: str) -> None:
    """
    A request that gets a 502 because php-fpm is not there makes one line
    with the status, the method, the URI, the backend and the reason; the
    backend going down is said once, not once per request.
    """
    missing = tmp_path / "gone.sock"
    proxy = _startProxy(
        ["--php-fpm", f"unix:{missing}", "--path", php_document_root],
        tmp_path / "proxy.log",
    )
    started = len(proxy.log().splitlines())
    assert [_get(proxy, "/info.php") for _ in range(3)] == [502] * 3
    lines = _stoppedLog(proxy)[started:]
    errors = _containing(lines, "502 for GET /info.php")
    assert len(errors) == 3, lines
    for line in errors:
        assert f"unix:{missing}" in line and "No such file or directory" in line, line
    assert len(_containing(lines, "marked down")) == 1, lines
    mentions = _containing(lines, str(missing))
    assert len(mentions) == len(errors) + 1, lines
