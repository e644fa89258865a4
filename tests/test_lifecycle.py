"""
The life of the real ``twist fastcgi-proxy`` process, seen from outside as an
operator sees it: start-up that fails, SIGTERM (systemd's stop), SIGHUP
(logrotate's postrotate), ``kill -9``, worker processes that die, and the
connection limit it defaults to.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.processes import (
    REPOSITORY,
    Browser,
    Proxy,
    childrenRunning,
    rawRequest,
    startProxy,
    stopProxy,
)
from txfastcgi._server.workers import WORKER_MODULE

if TYPE_CHECKING:
    from tests.conftest import PHPFPMFactory, PHPFPMPool


def _waitFor(condition: Callable[[], object], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _gone(pid: int) -> bool:
    """Whether process C{pid} has exited (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


def _runDirectory(log: str) -> Path:
    """The private directory of the php-fpm that C{--php-fpm spawn} started."""
    found = re.search(r"(/\S*txfastcgi-php-fpm-[^/\s]+)/php-fpm\.sock", log)
    assert found is not None, log
    return Path(found.group(1))


def _phpFPMProcesses(runDirectory: Path) -> list[int]:
    """The php-fpm master and workers running with the configuration in C{runDirectory}."""
    master = int((runDirectory / "php-fpm.pid").read_text())
    return [master, *childrenRunning(master, "php-fpm")]


def _slowRequest(proxy: Proxy, milliseconds: int) -> tuple[threading.Thread, list[object]]:
    """Start a request to a script that sleeps; its answer lands in the list."""
    answers: list[object] = []

    def request() -> None:
        try:
            answer = rawRequest(proxy, "GET", f"/slow.php?ms={milliseconds}")
            answers.append((answer.status, answer.read()))
        except OSError as e:
            answers.append(e)

    thread = threading.Thread(target=request)
    thread.start()
    return thread, answers


def test_sigterm_finishes_a_request_in_progress_with_an_external_php_fpm(
    tmp_path: Path, php_fpm: PHPFPMPool
) -> None:
    """
    systemd's stop with the documented production set-up: a request that a
    script is still working on when SIGTERM arrives gets its whole answer,
    and new connections are refused at once.
    """
    proxy = startProxy(
        ["--php-fpm", php_fpm.endpointDescription, "--path", php_fpm.documentRoot],
        tmp_path / "twist.log",
    )
    thread, answers = _slowRequest(proxy, 1000)
    time.sleep(0.4)  # php-fpm is running the script: it ends 0.6 s after SIGTERM.
    proxy.process.send_signal(signal.SIGTERM)
    # The port closes a reactor turn after its step is logged: wait for Twisted's own line.
    _waitFor(lambda: f"Port {proxy.port} Closed" in proxy.log(), "the port was not closed")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
    thread.join(10)
    proxy.process.wait(10)
    assert answers == [(200, b"slept\n")], proxy.log()


def test_a_port_in_use_exits_non_zero_and_stops_the_spawned_php_fpm(
    tmp_path: Path, php_document_root: str
) -> None:
    """
    A listener that cannot bind is a failed start (systemd's
    C{Restart=on-failure} restarts it), and takes its php-fpm down with it.
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        logPath = tmp_path / "twist.log"
        with logPath.open("wb") as log:
            result = subprocess.run(
                [sys.executable, "-m", "twisted", "--log-format", "text", "fastcgi-proxy"]
                + ["--listen", f"tcp:{port}"]
                + ["--php-fpm", "spawn", "--path", php_document_root],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
                timeout=30,
            )
    output = logPath.read_text()
    assert result.returncode == 1, output
    assert "cannot listen" in output
    assert "Traceback" not in output
    assert not _runDirectory(output).exists()


@pytest.mark.parametrize("rotated", [signal.SIGHUP, signal.SIGUSR1])
def test_sighup_or_sigusr1_reopens_the_access_log_and_keeps_serving(
    tmp_path: Path, php_document_root: str, rotated: signal.Signals
) -> None:
    """
    logrotate renames the access log, then sends SIGHUP or SIGUSR1: the
    server goes on serving, with its spawned php-fpm, and writes to a new
    file of that name.
    """
    accessLog = tmp_path / "access.log"
    proxy = startProxy(
        ["--php-fpm", "spawn", "--path", php_document_root, "--access-log", str(accessLog)],
        tmp_path / "twist.log",
    )
    try:
        browser = Browser(proxy.url)
        assert browser.request("/hello/before").status == 200
        _waitFor(lambda: "/hello/before" in accessLog.read_text(), "no access line")
        accessLog.rename(tmp_path / "access.log.1")
        proxy.process.send_signal(rotated)
        _waitFor(accessLog.exists, "the access log was not reopened")
        assert browser.request("/hello/after").status == 200
        _waitFor(lambda: "/hello/after" in accessLog.read_text(), "no line in the new log")
        assert proxy.process.poll() is None
    finally:
        stopProxy(proxy)
    assert "/hello/after" not in (tmp_path / "access.log.1").read_text()


@pytest.mark.parametrize("death", [signal.SIGKILL, signal.SIGHUP])
def test_a_spawned_php_fpm_never_outlives_the_proxy(
    tmp_path: Path, php_document_root: str, death: signal.Signals
) -> None:
    """
    Whatever ends the proxy, even C{kill -9}, its php-fpm master and workers
    end too and its private directory is removed, rather than running on
    under PID 1.
    """
    proxy = startProxy(
        ["--php-fpm", "spawn", "--path", php_document_root, "--spawn-children", "2"],
        tmp_path / "twist.log",
    )
    runDirectory = _runDirectory(proxy.log())
    _waitFor(lambda: len(_phpFPMProcesses(runDirectory)) == 3, "php-fpm has no workers")
    phpFPM = _phpFPMProcesses(runDirectory)
    proxy.process.send_signal(death)
    if death == signal.SIGHUP:
        # Not a way to die any more: SIGKILL follows, as from an impatient admin.
        time.sleep(0.3)
        assert proxy.process.poll() is None, proxy.log()
        proxy.process.kill()
    proxy.process.wait(10)
    _waitFor(lambda: all(_gone(pid) for pid in phpFPM), "php-fpm outlived the proxy")
    _waitFor(lambda: not runDirectory.exists(), "php-fpm's directory was left behind")


def test_a_worker_that_dies_is_replaced(tmp_path: Path, php_fpm: PHPFPMPool) -> None:
    """
    ``--workers 2``: a worker killed outright is started again, and the site
    goes on serving.
    """
    proxy = startProxy(
        ["--php-fpm", php_fpm.endpointDescription, "--path", php_fpm.documentRoot]
        + ["--workers", "2"],
        tmp_path / "twist.log",
    )
    try:
        _waitFor(lambda: childrenRunning(proxy.process.pid, WORKER_MODULE), "no worker")
        (worker,) = childrenRunning(proxy.process.pid, WORKER_MODULE)
        os.kill(worker, signal.SIGKILL)
        _waitFor(
            lambda: [p for p in childrenRunning(proxy.process.pid, WORKER_MODULE) if p != worker],
            f"the worker was not replaced:\n{proxy.log()}",
        )
        for _ in range(10):
            assert Browser(proxy.url).request("/hello/again").status == 200
    finally:
        stopProxy(proxy)
    assert proxy.process.returncode in (0, -signal.SIGTERM)


def _openConnections(proxy: Proxy) -> dict[str, int]:
    """The totals of the status page at C{/_status}."""
    totals: dict[str, int] = Browser(proxy.url).request("/_status").json()["totals"]
    return totals


@pytest.mark.parametrize(
    "backend, limit",
    [
        (["--php-fpm", "EXTERNAL"], 4),
        (["--php-fpm", "spawn", "--spawn-children", "2"], 2),
        (["--php-fpm", "EXTERNAL", "--max-connections", "6"], 6),
    ],
)
def test_the_default_connection_limit_fits_the_pool(
    tmp_path: Path, php_fpm_factory: PHPFPMFactory, backend: list[str], limit: int
) -> None:
    """
    A burst of slow requests opens no more FastCGI connections than the pool
    behind has workers by default: 4 for an external php-fpm (Debian's has
    5), the spawned pool's own size, or what C{--max-connections} says.
    """
    pool = php_fpm_factory(children=8)
    arguments = [pool.endpointDescription if a == "EXTERNAL" else a for a in backend]
    proxy = startProxy(
        [*arguments, "--path", pool.documentRoot, "--status-path", "/_status"],
        tmp_path / "twist.log",
    )
    try:
        burst = [_slowRequest(proxy, 600) for _ in range(8)]
        _waitFor(
            lambda: (t := _openConnections(proxy))["busy"] + t["waiting"] == 8,
            "the burst did not arrive",
        )
        assert _openConnections(proxy)["open"] == limit
        for thread, answers in burst:
            thread.join(10)
            assert answers == [(200, b"slept\n")]
    finally:
        stopProxy(proxy)
