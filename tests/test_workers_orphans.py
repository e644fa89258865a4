"""
A C{--workers} process never outlives the main process: killed with
SIGKILL, the main process can tell no one, and each worker, which reads
the end of its standard input (a pipe from the main process), shuts down.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.conftest import PHPFPMPool
from tests.processes import childrenRunning, startProxy
from txfastcgi._server.workers import WORKER_MODULE


def running(pid: int) -> bool:
    """Whether process C{pid} runs: neither gone nor a zombie that PID 1 has yet to reap."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_worker_shuts_down_when_the_main_process_is_killed(
    tmp_path: Path, php_fpm: PHPFPMPool
) -> None:
    proxy = startProxy(
        ["--php-fpm", php_fpm.endpointDescription, "--path", php_fpm.documentRoot]
        + ["--workers", "2"],
        tmp_path / "twist.log",
    )
    deadline = time.monotonic() + 10
    while not (workers := childrenRunning(proxy.process.pid, WORKER_MODULE)):
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
    proxy.process.send_signal(signal.SIGKILL)
    proxy.process.wait(10)
    deadline = time.monotonic() + 10
    while any(running(worker) for worker in workers):
        assert time.monotonic() < deadline, f"worker {workers} outlived the main process"
        time.sleep(0.05)
