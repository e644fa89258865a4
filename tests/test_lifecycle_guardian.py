"""
L{txfastcgi._server.guardian}, which ends a spawned php-fpm with the proxy, with a
shell standing in for php-fpm's master and two C{sleep}s for its workers.

Whether every one of them has ended is seen without C{/proc}, as on macOS
or the BSDs: they all hold the write end of one pipe, which reaches its end
only when the last of them is gone.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import REPOSITORY
from txfastcgi._server.guardian import stop

# A master that starts two workers, says who it is, and waits.
MASTER = ["sh", "-c", "sleep 30 & sleep 30 & echo $$; exec sleep 30"]


@dataclass
class Guarded:
    guardian: subprocess.Popen[bytes]
    master: int
    runDirectory: Path

    def allEnd(self, timeout: float = 10) -> bool:
        """Whether the master, its workers and the guardian all end in time."""
        output = self.guardian.stdout
        assert output is not None
        while select.select([output], [], [], timeout)[0]:
            if not os.read(output.fileno(), 512):
                return True
        return False


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Guarded]:
    runDirectory = tmp_path / "run"
    runDirectory.mkdir()
    guardian = subprocess.Popen(
        [sys.executable, "-m", "txfastcgi._server.guardian", str(runDirectory), "--", *MASTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
    )
    assert guardian.stdout is not None
    master = int(guardian.stdout.readline())
    yield Guarded(guardian, master, runDirectory)
    if guardian.poll() is None:
        guardian.kill()
        os.killpg(master, signal.SIGKILL)
    guardian.wait()


def test_the_proxy_gone_ends_php_fpm_and_removes_its_directory(guarded: Guarded) -> None:
    """End of file from the proxy (it died, even by SIGKILL) ends them all."""
    assert guarded.guardian.stdin is not None
    guarded.guardian.stdin.close()
    assert guarded.allEnd()
    assert not guarded.runDirectory.exists()


def test_sigterm_ends_php_fpm_and_keeps_its_directory(guarded: Guarded) -> None:
    """The supervisor's stop: the proxy removes the directory itself."""
    guarded.guardian.terminate()
    assert guarded.allEnd()
    assert guarded.guardian.wait() == 128 + signal.SIGTERM
    assert guarded.runDirectory.exists()


def test_a_killed_master_takes_its_workers_with_it(guarded: Guarded) -> None:
    """
    php-fpm's workers outlive a master killed with SIGKILL; the guardian
    kills them and exits, for its supervisor to start php-fpm again.
    """
    os.kill(guarded.master, signal.SIGKILL)
    assert guarded.allEnd()
    assert guarded.guardian.wait() == 128 + signal.SIGKILL
    assert guarded.runDirectory.exists()


def test_terminal_signals_are_left_to_the_proxy(guarded: Guarded) -> None:
    """Ctrl-C and a hang-up reach the whole process group: the proxy decides."""
    guarded.guardian.send_signal(signal.SIGINT)
    guarded.guardian.send_signal(signal.SIGHUP)
    assert not guarded.allEnd(timeout=0.3)
    assert guarded.guardian.poll() is None


def test_a_master_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    master = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; sleep 30 & echo trapped; exec sleep 30"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert master.stdout is not None
    assert master.stdout.readline() == b"trapped\n"
    assert stop(master, grace=0.2) == -signal.SIGKILL
    master.stdout.close()
