"""
systemd socket activation through the real command: the proxy serves on a
socket that Debian's C{systemd-socket-activate} (systemd's own tool for
trying socket units) opened and keeps, and a restart of the proxy on that
socket, under a client load, fails no request.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PHPFPMPool
from tests.processes import REPOSITORY, childrenRunning, freePort
from tests.test_operations_startup import PROXY_WITH_TEXT_LOG, siteOptions

EXAMPLES = REPOSITORY / "docs" / "examples"

ACTIVATE = "/usr/bin/systemd-socket-activate"

# What systemd does for a service whose .socket unit keeps the socket: start
# it again on the same socket each time it stops, with LISTEN_PID set to the
# pid of the new process. systemd-socket-activate itself starts its command
# only once (it execs it), so this shell plays systemd's part for two starts.
SERVICE_MANAGER = """
for start in 1 2; do
    sh -c 'export LISTEN_PID=$$; exec "$@"' service "$@"
done
"""


def get(port: int, path: str) -> int:
    """The status of C{path}, over a connection of its own, as a new visitor."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


class Load:
    """Clients that request C{path} one after another until stopped."""

    def __init__(self, port: int, path: str, clients: int) -> None:
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(port, path)) for _ in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, port: int, path: str) -> None:
        while not self._stopping.is_set():
            try:
                self.statuses.append(get(port, path))
            except OSError as e:
                self.failures.append(repr(e))

    def waitFor(self, count: int) -> None:
        """Until C{count} more requests have been answered."""
        target = len(self.statuses) + count
        deadline = time.monotonic() + 30
        while len(self.statuses) < target:
            assert time.monotonic() < deadline, f"stalled: {self.failures}"
            time.sleep(0.01)

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join()


def proxyCommand(php_fpm: PHPFPMPool) -> list[str]:
    return [
        sys.executable,
        *PROXY_WITH_TEXT_LOG,
        "--listen",
        "systemd:domain=INET:index=0",
        *siteOptions(php_fpm),
    ]


def activate(
    logPath: Path, port: int, command: list[str], address: str = "127.0.0.1:"
) -> subprocess.Popen[bytes]:
    """
    Run C{command} under systemd-socket-activate on C{port} of C{address}
    (a bare port, as a .socket unit's C{ListenStream} has it, is every IPv6
    and IPv4 address), once it listens there and has been asked, by a first
    connection, to start it.
    """
    with logPath.open("wb") as log:
        process = subprocess.Popen(
            [
                ACTIVATE,
                f"--listen={address}{port}",
                "--fdname=http",
                f"--setenv=PYTHONPATH={REPOSITORY}",
                *command,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=logPath.parent,
            start_new_session=True,
        )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return process
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "systemd-socket-activate does not listen"
            time.sleep(0.01)


def stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def activated(tmp_path: Path, php_fpm: PHPFPMPool) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The proxy, started twice in turn on one socket by a stand-in for systemd."""
    port = freePort()
    manager = activate(
        tmp_path / "proxy.log",
        port,
        ["/bin/sh", "-c", SERVICE_MANAGER, "manager", *proxyCommand(php_fpm)],
    )
    try:
        yield manager, port
    finally:
        stop(manager)


def proxies(manager: subprocess.Popen[bytes]) -> list[int]:
    return childrenRunning(manager.pid, "fastcgi-proxy")


def test_a_restart_on_the_kept_socket_fails_no_request(
    activated: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    manager, port = activated
    assert get(port, "/info.php") == 200, (tmp_path / "proxy.log").read_text()
    (first,) = proxies(manager)
    load = Load(port, "/info.php", clients=3)
    try:
        load.waitFor(20)
        os.kill(first, signal.SIGTERM)
        # Until the second start listens, connections wait in the socket's
        # backlog, which the kernel keeps while systemd holds the socket.
        deadline = time.monotonic() + 30
        while proxies(manager) in ([], [first]):
            assert time.monotonic() < deadline, (tmp_path / "proxy.log").read_text()
            time.sleep(0.01)
        load.waitFor(20)
    finally:
        load.stop()
    log = (tmp_path / "proxy.log").read_text()
    assert load.failures == [], log
    assert set(load.statuses) == {200}
    assert log.count("serving ") == 2, log
    assert f"on http://127.0.0.1:{port}/ with PHP" in log
    assert "Traceback" not in log


def test_a_connection_passed_instead_of_a_listening_socket_is_refused_in_words(
    tmp_path: Path, php_fpm: PHPFPMPool
) -> None:
    """With Accept=yes (--accept), systemd passes each connection to a new process."""
    logPath = tmp_path / "proxy.log"
    activator = activate(logPath, freePort(), ["--accept", *proxyCommand(php_fpm)])
    try:
        deadline = time.monotonic() + 20
        while "died with code" not in logPath.read_text():
            assert time.monotonic() < deadline, logPath.read_text()
            time.sleep(0.05)
    finally:
        stop(activator)
    log = logPath.read_text()
    assert "died with code 2" in log
    assert (
        "twist fastcgi-proxy: error: --listen 'systemd:domain=INET:index=0' is not a valid"
        " endpoint: systemd passed a connection, not a listening socket:"
        " the .socket unit needs Accept=no"
    ) in log
    assert "Traceback" not in log


def test_an_unknown_address_family_is_refused_in_words(tmp_path: Path, php_fpm: PHPFPMPool) -> None:
    command = proxyCommand(php_fpm)
    command[command.index("systemd:domain=INET:index=0")] = "systemd:domain=FOO:index=0"
    logPath = tmp_path / "proxy.log"
    activator = activate(logPath, freePort(), command)
    try:
        assert activator.wait(20) == 2
    finally:
        stop(activator)
    assert (
        "twist fastcgi-proxy: error: --listen 'systemd:domain=FOO:index=0' is not a valid"
        " endpoint: its domain must be INET, INET6 or UNIX\n"
    ) in logPath.read_text()


def unitSetting(unit: str, name: str) -> str:
    value: str
    (value,) = re.findall(rf"^{name}=(.*)$", unit.replace("\\\n", " "), re.MULTILINE)
    return value


def test_the_shipped_units_serve_on_the_socket_systemd_opens(
    tmp_path: Path, php_fpm: PHPFPMPool
) -> None:
    """docs/examples/txfastcgi.socket and .service, with this test's site and php-fpm."""
    socketUnit = (EXAMPLES / "txfastcgi.socket").read_text()
    assert unitSetting(socketUnit, "ListenStream") == "80"
    assert unitSetting(socketUnit, "Accept") == "no"
    serviceUnit = (EXAMPLES / "txfastcgi.service").read_text()
    # php-fpm's socket accepts www-data.
    assert unitSetting(serviceUnit, "User") == "www-data"
    words = shlex.split(unitSetting(serviceUnit, "ExecStart"))
    # Where docs/getting-started.rst installs it.
    assert words[0] == "/opt/txfastcgi/bin/twist"
    command = [sys.executable, "-m", "twisted", *words[1:]]
    command[command.index("--path") + 1] = php_fpm.documentRoot
    phpFPM = command.index("--php-fpm") + 1
    assert command[phpFPM] == "unix:/run/php/php8.2-fpm.sock"
    command[phpFPM] = php_fpm.endpointDescription
    port = freePort()
    logPath = tmp_path / "proxy.log"
    activator = activate(logPath, port, command, address="")
    try:
        assert get(port, "/info.php") == 200, logPath.read_text()
    finally:
        stop(activator)
    assert f"on http://[::]:{port}/ with PHP" in logPath.read_text()
