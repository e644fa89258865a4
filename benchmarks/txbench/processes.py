"""Start, watch and stop the processes of a run, by PID only."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .procfs import alive, processTree


def _dieWithParent() -> None:
    """
    Run in the child before exec: ask Linux to send SIGTERM to it if this
    script dies without cleaning up (SIGKILL), so no server outlives it.
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        prSetPdeathsig = 1
        libc.prctl(prSetPdeathsig, signal.SIGTERM)


class Processes:
    """
    Every process this script starts, to be stopped by PID, children of
    each too, in reverse order of start, on any exit.
    """

    def __init__(self) -> None:
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._descendants: dict[int, set[int]] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start C{argv} in its own session, its output in C{log}."""
        with open(log, "ab") as output:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_dieWithParent,
            )
        self._started.append((name, process))
        return process

    def remember(self, pid: int) -> None:
        """Note the current descendants of C{pid}, so that orphans can be stopped too."""
        self._descendants.setdefault(pid, set()).update(processTree(pid)[1:])

    def stopAll(self) -> None:
        """SIGTERM each process, then SIGKILL what is still there after a grace time."""
        while self._started:
            name, process = self._started.pop()
            if process.poll() is None:
                self.remember(process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    print(f"{name} ({process.pid}) ignored SIGTERM; killing it")
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    process.wait()
            for pid in self._descendants.pop(process.pid, set()):
                if alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def freePort() -> int:
    """A loopback TCP port free right now (another process could take it; unlikely)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def waitFor(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll C{check} until it holds, or fail saying C{what} never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")
