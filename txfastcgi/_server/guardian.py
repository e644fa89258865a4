"""
A guardian that keeps a spawned php-fpm from outliving the proxy.

C{python -m txfastcgi._server.guardian RUN_DIRECTORY -- COMMAND...} runs COMMAND (the
php-fpm master) in a session of its own and then waits for one of three
things:

  - End of file on its standard input, a pipe whose other end only the proxy
    holds: the proxy is gone, however it died (C{kill -9} included).  The
    guardian stops php-fpm and removes RUN_DIRECTORY, its configuration,
    pid file and socket, which nobody else would.
  - SIGTERM from the proxy's supervisor: it stops php-fpm and exits with its
    status; the proxy removes the directory itself.
  - The master's exit (a crash, the OOM killer): it kills whatever is left
    of the master's session (php-fpm's workers outlive a master killed with
    SIGKILL) and exits with the master's status, so that the supervisor
    restarts it.

It knows the master as its own child, so it learns of its end from
C{waitpid}, which every POSIX system has, and finds the workers as the
master's process group, which it created: no C{/proc}.  It ignores SIGINT
and SIGHUP, which a terminal sends to the proxy's whole process group, and
SIGUSR1, which C{systemctl kill -s USR1} sends to every process of the
service: the proxy decides when php-fpm stops, after the requests it serves.

Only the standard library is used, and nothing is imported from txfastcgi,
so that it starts fast and cannot fail where the proxy would not.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
from types import FrameType

# Seconds php-fpm gets to exit after SIGTERM before its whole session is
# killed; less than ProcessMonitor's killTime (5 s), after which it would kill
# this guardian instead and so leave php-fpm behind.
GRACE = 3.0

_stopRequested = False


def _requestStop(signum: int, frame: FrameType | None) -> None:
    global _stopRequested
    _stopRequested = True


def _wake(signum: int, frame: FrameType | None) -> None:
    """Nothing to do: the signal only wakes C{select} through the wakeup pipe."""


def _killGroup(group: int, signum: int = signal.SIGKILL) -> None:
    """Signal every process left in process group C{group}, if any is."""
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop(master: subprocess.Popen[bytes], grace: float = GRACE) -> int:
    """
    Stop the master with SIGTERM, give it C{grace} seconds, then kill what
    is left of its process group.

    @return: the master's exit status.
    """
    if master.poll() is None:
        master.terminate()
        try:
            master.wait(grace)
        except subprocess.TimeoutExpired:
            _killGroup(master.pid)
    status = master.wait()
    _killGroup(master.pid)
    return status


def exitStatus(returncode: int) -> int:
    """A process's exit status for C{returncode}, a signal as the shell shows it."""
    return returncode if returncode >= 0 else 128 - returncode


def guard(runDirectory: str, command: list[str], parent: int = 0) -> int:
    """
    Run C{command} and guard it as the module docstring says.

    @param parent: the file descriptor that reaches end of file when the
        proxy is gone.
    @return: the exit status for this process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _requestStop)
    signal.signal(signal.SIGCHLD, _wake)
    wakeRead, wakeWrite = os.pipe()
    os.set_blocking(wakeWrite, False)
    signal.set_wakeup_fd(wakeWrite)
    master = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    while True:
        if _stopRequested:
            return exitStatus(stop(master))
        if master.poll() is not None:
            _killGroup(master.pid)
            return exitStatus(master.returncode)
        readable, _, _ = select.select([parent, wakeRead], [], [])
        if wakeRead in readable:
            os.read(wakeRead, 512)
        if parent in readable and not os.read(parent, 512):
            status = stop(master)
            shutil.rmtree(runDirectory, ignore_errors=True)
            return exitStatus(status)


def main(arguments: list[str]) -> int:
    """C{RUN_DIRECTORY -- COMMAND...}"""
    runDirectory, separator, *command = arguments
    if separator != "--" or not command:
        sys.stderr.write(
            "usage: python -m txfastcgi._server.guardian RUN_DIRECTORY -- COMMAND...\n"
        )
        return 2
    return guard(runDirectory, command)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
