"""
What the real process logs as it starts: one line that says what is served,
and one warning line for each thing that will not work as the operator
probably thinks.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.conftest import PHPFPMPool
from tests.processes import Proxy, freePort, startServer, stopProxy
from txfastcgi import __version__

# Twisted's own log as lines of text, as the shipped systemd unit has it.
PROXY_WITH_TEXT_LOG = ["-m", "twisted", "--log-format", "text", "fastcgi-proxy"]


def siteOptions(php_fpm: PHPFPMPool) -> list[str]:
    """The options that serve the test site through C{php_fpm}."""
    return ["--path", php_fpm.documentRoot, "--php-fpm", php_fpm.endpointDescription]


def startWithTextLog(
    arguments: list[str], logPath: Path, listen: str = "tcp:{port}:interface=127.0.0.1"
) -> Proxy:
    """Start the proxy with C{arguments}, on C{listen} with a free port."""
    port = freePort()
    return startServer(
        [*PROXY_WITH_TEXT_LOG, "--listen", listen.format(port=port), *arguments], port, logPath
    )


def waitForLog(proxy: Proxy, text: str) -> str:
    """The proxy's log, once it has C{text}."""
    deadline = time.monotonic() + 10
    while text not in proxy.log():
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} in the log:\n{proxy.log()}")
        time.sleep(0.05)
    return proxy.log()


def startupLog(proxy: Proxy) -> list[str]:
    """The log lines until the reactor runs (after the start-up line)."""
    return waitForLog(proxy, "Starting reactor").partition("Starting reactor")[0].splitlines()


def test_the_startup_line_says_what_is_served(tmp_path: Path, php_fpm: PHPFPMPool) -> None:
    unixSocket = tmp_path / "tx.sock"
    proxy = startWithTextLog(
        ["--listen", f"unix:{unixSocket}", *siteOptions(php_fpm)], tmp_path / "proxy.log"
    )
    try:
        lines = startupLog(proxy)
    finally:
        stopProxy(proxy)
    (line,) = [line for line in lines if f"txfastcgi {__version__} (Twisted " in line]
    assert (
        f" serving {php_fpm.documentRoot} on http://127.0.0.1:{proxy.port}/, unix:{unixSocket}"
        f" with PHP from {php_fpm.endpointDescription}"
    ) in line
    assert not [line for line in lines if "warn" in line], lines
    assert "_Site" not in proxy.log()


def test_what_will_not_work_is_warned_of_one_line_each(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sock"
    stale = tmp_path / "stale.sock"
    # A socket file that nothing listens on, as a crashed php-fpm leaves it.
    with socket.socket(socket.AF_UNIX) as unlistened:
        unlistened.bind(str(stale))
        proxy = startWithTextLog(
            ["--php-fpm", f"unix:{missing}", "--php-fpm", f"unix:{stale}"],
            tmp_path / "proxy.log",
        )
        try:
            lines = startupLog(proxy)
        finally:
            stopProxy(proxy)
    warnings = [line.partition("[txfastcgi#warn] ")[2] for line in lines if "#warn]" in line]
    assert warnings == [
        f"serving the current directory {tmp_path}: no --path was given",
        f"--front-controller /index.php: there is no index.php in {tmp_path}",
        f"PHP backend unix:{missing}: cannot connect to {missing}:"
        " No such file or directory (is php-fpm running?)",
        f"PHP backend unix:{stale}: cannot connect to {stale}:"
        " Connection refused (is php-fpm running?)",
    ]


def test_a_tcp_backend_that_cannot_be_connected_to_is_warned_of(tmp_path: Path) -> None:
    """
    A connect to each tcp backend is tried at start-up, without holding it
    up: a closed port is warned of, one that accepts is not.
    """
    with socket.socket() as accepting:
        accepting.bind(("127.0.0.1", 0))
        accepting.listen()
        open_ = f"tcp:127.0.0.1:{accepting.getsockname()[1]}"
        closed = freePort()  # Not the accepting one's: that one is taken now.
        proxy = startWithTextLog(
            ["--php-fpm", f"tcp:127.0.0.1:{closed}", "--php-fpm", open_], tmp_path / "proxy.log"
        )
        try:
            accepting.settimeout(10)
            accepting.accept()[0].close()  # The probe of the open one, which then closes.
            waitForLog(proxy, "#warn] PHP backend")
        finally:
            stopProxy(proxy)
    warnings = [
        line.partition("[txfastcgi#warn] ")[2]
        for line in proxy.log().splitlines()
        if "#warn] PHP backend" in line
    ]
    assert warnings == [
        f"PHP backend tcp:127.0.0.1:{closed}: cannot connect: Connection refused"
        " (is php-fpm running?)"
    ]
