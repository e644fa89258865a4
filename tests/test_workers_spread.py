"""
C{--workers N} spreads client connections over the processes: through the
real command, each process serves half of a burst of connections, even one
that was busy (stopped) when they arrived, which with one shared listening
socket would have lost them all to the process that was awake, and with
C{SO_REUSEPORT} would have got a share that a hash decides.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PHPFPMPool
from tests.processes import Proxy, childrenRunning, startProxy, stopProxy
from txfastcgi._server.workers import WORKER_MODULE

CONNECTIONS = 64


@pytest.fixture
def twoProcesses(tmp_path: Path, php_fpm: PHPFPMPool) -> Iterator[tuple[Proxy, int]]:
    """The proxy with C{--workers 2} on a TCP port, and its worker's process id."""
    proxy = startProxy(
        ["--php-fpm", php_fpm.endpointDescription, "--path", php_fpm.documentRoot]
        + ["--workers", "2"],
        tmp_path / "twist.log",
    )
    try:
        deadline = time.monotonic() + 10
        while not (workers := childrenRunning(proxy.process.pid, WORKER_MODULE)):
            assert time.monotonic() < deadline, proxy.log()
            time.sleep(0.05)
        (worker,) = workers
        yield proxy, worker
    finally:
        stopProxy(proxy)


def connectionsHeld(pid: int, port: int) -> int:
    """How many established connections to C{port} process C{pid} holds open."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            localPort = int(fields[1].rpartition(":")[2], 16)
            if localPort == port and fields[3] == "01":
                established.add(f"socket:[{fields[9]}]")
    held = 0
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        try:
            held += os.readlink(descriptor) in established
        except OSError:
            continue
    return held


def test_a_burst_of_connections_is_spread_over_both_processes(
    twoProcesses: tuple[Proxy, int],
) -> None:
    proxy, worker = twoProcesses
    # The worker is busy while the burst arrives: with one shared socket,
    # the main process would accept every connection.
    os.kill(worker, signal.SIGSTOP)
    try:
        clients = [
            socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            for _ in range(CONNECTIONS)
        ]
        time.sleep(0.5)
    finally:
        os.kill(worker, signal.SIGCONT)
    try:
        deadline = time.monotonic() + 10
        while True:
            held = {pid: connectionsHeld(pid, proxy.port) for pid in (proxy.process.pid, worker)}
            if sum(held.values()) == CONNECTIONS or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sum(held.values()) == CONNECTIONS, held
        # The main process hands each connection to the process that holds
        # the fewest: an even split, whoever was awake.
        assert max(held.values()) - min(held.values()) <= 1, held
        for client in clients:
            client.sendall(b"GET /style.css HTTP/1.1\r\nHost: example.org\r\n\r\n")
        answers = []
        for client in clients:
            try:
                answers.append(client.recv(65536)[:15])
            except OSError as e:
                answers.append(repr(e).encode())
        assert answers == [b"HTTP/1.1 200 OK"] * CONNECTIONS, (held, answers, proxy.log())
    finally:
        for client in clients:
            client.close()
