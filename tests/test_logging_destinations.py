"""
Where the real ``twist fastcgi-proxy`` (and ``twistd``) writes its messages
and its access lines, and in what format, in front of a real php-fpm: one
coherent default, text events with the access lines among them wherever
the event log goes, and exactly the chosen format where the operator
points ``--access-log``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PHPFPMPool
from tests.processes import (
    REPOSITORY,
    TWISTD,
    freePort,
    rawRequest,
    startProxy,
    startServer,
    stopProxy,
)
from tests.test_access_log import COMBINED

# A text event line: timestamp, [namespace#level], message.
TEXT_EVENT = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] "


def _waitFor(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(what)
        time.sleep(0.05)


def _get(port: int, path: str) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        response.read()


def _accessLines(text: str) -> list[str]:
    """The combined lines carried by C{txfastcgi.access} events in C{text}."""
    marker = "[txfastcgi.access#info] "
    return [line.partition(marker)[2] for line in text.splitlines() if marker in line]


def test_events_are_text_lines_when_standard_output_is_a_file(
    tmp_path: Path, php_fpm: PHPFPMPool
) -> None:
    """
    twist writes JSON events to anything but a terminal; the proxy's log,
    to the journal or a file, is text lines with the access lines among
    them, each the exact combined format after the event's prefix.
    """
    proxy = startProxy(
        ["--php-fpm", php_fpm.endpointDescription, "--path", php_fpm.documentRoot],
        tmp_path / "twist.log",
    )
    try:
        rawRequest(proxy, "GET", "/info.php?x=1").read()
        _waitFor(lambda: bool(_accessLines(proxy.log())), "no access event")
    finally:
        stopProxy(proxy)
    lines = [line for line in proxy.log().splitlines() if line]
    assert not [line for line in lines if line.lstrip("\x1e").startswith("{")], lines
    started = [line for line in lines if "serving" in line]
    assert started and re.match(TEXT_EVENT + r"txfastcgi \S+ \(Twisted", started[0]), lines
    (access,) = _accessLines(proxy.log())
    match = COMBINED.match(access)
    assert match is not None, access
    assert match["request"] == "GET /info.php?x=1 HTTP/1.1"
    assert match["status"] == "200"


def test_log_format_json_asked_of_twist_is_still_json(tmp_path: Path, php_fpm: PHPFPMPool) -> None:
    port = freePort()
    proxy = startServer(
        [
            "-m",
            "twisted",
            "--log-format",
            "json",
            "fastcgi-proxy",
            "--listen",
            f"tcp:{port}",
            "--php-fpm",
            php_fpm.endpointDescription,
            "--path",
            php_fpm.documentRoot,
        ],
        port,
        tmp_path / "twist.log",
    )
    try:
        rawRequest(proxy, "GET", "/info.php").read()
        _waitFor(lambda: "txfastcgi.access" in proxy.log(), "no access event")
    finally:
        stopProxy(proxy)
    events = [json.loads(line.lstrip("\x1e")) for line in proxy.log().splitlines() if line]
    (access,) = [e for e in events if e.get("log_namespace") == "txfastcgi.access"]
    assert COMBINED.match(access["line"]), access
    assert access["status"] == 200


def test_twist_log_file_gets_the_events_and_the_access_lines(
    tmp_path: Path, php_fpm: PHPFPMPool
) -> None:
    """C{twist --log-file F}: the access lines are in F, with the events."""
    port = freePort()
    logFile = tmp_path / "proxy.log"
    proxy = startServer(
        [
            "-m",
            "twisted",
            "--log-file",
            str(logFile),
            "fastcgi-proxy",
            "--listen",
            f"tcp:{port}",
            "--php-fpm",
            php_fpm.endpointDescription,
            "--path",
            php_fpm.documentRoot,
        ],
        port,
        tmp_path / "stdout.log",
    )
    try:
        rawRequest(proxy, "GET", "/info.php?in=file").read()
        _waitFor(lambda: bool(_accessLines(logFile.read_text())), "no access line in the log file")
    finally:
        stopProxy(proxy)
    text = logFile.read_text()
    assert "serving" in text
    assert '"GET /info.php?in=file HTTP/1.1" 200' in _accessLines(text)[0]
    assert "hello.php" not in proxy.log()


def test_twistd_in_daemon_mode_logs_the_access_lines_to_its_log_file(
    tmp_path: Path, php_fpm: PHPFPMPool
) -> None:
    """
    Daemon mode closes standard output: the access lines go to
    C{twistd.log} (or C{--logfile}) with the rest, not nowhere.
    """
    port = freePort()
    logFile, pidFile = tmp_path / "daemon.log", tmp_path / "daemon.pid"
    subprocess.run(
        [
            sys.executable,
            *TWISTD,
            "--logfile",
            str(logFile),
            "--pidfile",
            str(pidFile),
            "fastcgi-proxy",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--php-fpm",
            php_fpm.endpointDescription,
            "--path",
            php_fpm.documentRoot,
        ],
        env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
        cwd=tmp_path,
        check=True,
        timeout=30,
    )
    _waitFor(pidFile.exists, "twistd wrote no pid file")
    pid = int(pidFile.read_text())
    try:
        _waitFor(lambda: "serving" in logFile.read_text(), "the daemon did not start")
        _get(port, "/info.php?daemon=1")
        _waitFor(lambda: "/info.php?daemon=1" in logFile.read_text(), "no access line")
    finally:
        os.kill(pid, signal.SIGTERM)
        _waitFor(lambda: not pidFile.exists(), "the daemon did not stop")
    (line,) = [line for line in logFile.read_text().splitlines() if "daemon=1" in line]
    assert "127.0.0.1 - - [" in line and '"GET /info.php?daemon=1 HTTP/1.1" 200' in line


def test_json_access_lines_have_the_request_and_upstream_times_and_the_backend(
    tmp_path: Path, php_fpm: PHPFPMPool
) -> None:
    accessLog = tmp_path / "access.json"
    proxy = startProxy(
        [
            "--php-fpm",
            php_fpm.endpointDescription,
            "--path",
            php_fpm.documentRoot,
            "--access-log",
            str(accessLog),
            "--access-log-format",
            "json",
        ],
        tmp_path / "twist.log",
    )
    try:
        rawRequest(proxy, "GET", "/info.php?q=%C3%BC", Referer="x").read()
        rawRequest(proxy, "GET", "/style.css").read()
        _waitFor(lambda: len(accessLog.read_text().splitlines()) == 2, "not two access lines")
    finally:
        stopProxy(proxy)
    script, static = (json.loads(line) for line in accessLog.read_text().splitlines())
    assert script["method"] == "GET" and script["status"] == 200
    assert script["uri"] == "/info.php?q=%C3%BC"
    assert script["remote_addr"] == "127.0.0.1" and script["referer"] == "x"
    assert script["host"] == f"127.0.0.1:{proxy.port}"
    assert script["backend"] == php_fpm.endpointDescription
    assert script["retries"] == 0
    assert 0 < script["upstream_time"] <= script["request_time"] < 5
    assert script["bytes_sent"] > 0
    assert script["time"].endswith("Z")
    assert static["status"] == 200 and static["uri"] == "/style.css"
    assert static["backend"] is None and static["upstream_time"] is None


def test_an_unknown_access_log_format_is_a_one_line_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "txfastcgi", "--access-log-format", "xml"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "twist fastcgi-proxy: error: --access-log-format 'xml' is not one of combined, json\n"
    )


def test_the_workers_access_lines_reach_the_main_process_log(
    tmp_path: Path, php_fpm: PHPFPMPool
) -> None:
    """
    With --workers, each process serves some of the connections; a
    worker's access lines end up in the one log, as the main process's own
    do, each request's once. (The JSON events say which process wrote
    them.)
    """
    port = freePort()
    proxy = startServer(
        [
            "-m",
            "twisted",
            "--log-format",
            "json",
            "fastcgi-proxy",
            "--listen",
            f"tcp:{port}",
            "--php-fpm",
            php_fpm.endpointDescription,
            "--path",
            php_fpm.documentRoot,
            "--workers",
            "2",
        ],
        port,
        tmp_path / "twist.log",
    )

    def accessEvents() -> list[dict[str, object]]:
        events = (json.loads(line.lstrip("\x1e")) for line in proxy.log().splitlines() if line)
        return [e for e in events if e.get("log_namespace") == "txfastcgi.access"]

    sent = 0
    try:
        deadline = time.monotonic() + 20
        while not any("worker" in event for event in accessEvents()):
            assert time.monotonic() < deadline, "no access line from a worker"
            _get(port, f"/info.php?n={sent}")
            sent += 1
            time.sleep(0.01)
        _waitFor(lambda: len(accessEvents()) == sent, f"not {sent} access lines")
    finally:
        stopProxy(proxy)
    lines = sorted(str(event["line"]) for event in accessEvents())
    targets = sorted(COMBINED.match(line)["request"] for line in lines)  # type: ignore[index]
    assert targets == sorted(f"GET /info.php?n={n} HTTP/1.1" for n in range(sent))
    assert any("worker" not in event for event in accessEvents()) or sent == 1


def test_sighup_reopens_the_twist_log_file_too(tmp_path: Path, php_fpm: PHPFPMPool) -> None:
    """
    logrotate renames C{twist --log-file F} and sends SIGHUP (or SIGUSR1):
    the events and access lines that follow go to a new F.
    """
    port = freePort()
    logFile = tmp_path / "proxy.log"
    proxy = startServer(
        [
            "-m",
            "twisted",
            "--log-file",
            str(logFile),
            "fastcgi-proxy",
            "--listen",
            f"tcp:{port}",
            "--php-fpm",
            php_fpm.endpointDescription,
            "--path",
            php_fpm.documentRoot,
        ],
        port,
        tmp_path / "stdout.log",
    )
    rotated = tmp_path / "proxy.log.1"
    try:
        _get(port, "/info.php?before")
        _waitFor(lambda: "info.php?before" in logFile.read_text(), "no line before")
        logFile.rename(rotated)
        proxy.process.send_signal(signal.SIGHUP)
        _waitFor(logFile.exists, "the log file was not reopened")
        _get(port, "/info.php?after")
        _waitFor(lambda: "info.php?after" in logFile.read_text(), "no line in the new file")
    finally:
        stopProxy(proxy)
    assert "info.php?after" not in rotated.read_text()
    assert "info.php?before" not in logFile.read_text()
    assert "Main loop terminated" in logFile.read_text()
