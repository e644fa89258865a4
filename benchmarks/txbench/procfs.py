"""
What /proc says about processes: CPU ticks, memory, parents, sockets.

Each reader is split into a pure parser of the file's text (tested with
recorded text) and a thin function that reads the file, so that a kernel
whose format differs fails a test rather than a run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The state column of /proc/net/tcp: ESTABLISHED and LISTEN.
TCP_ESTABLISHED = 0x01
TCP_LISTEN = 0x0A


def statFields(text: str) -> list[str]:
    """
    The fields of C{/proc/PID/stat} after the command name, which is in
    parentheses and may itself hold spaces and parentheses: state is [0],
    ppid [1], utime [11], stime [12], cutime [13], cstime [14].
    """
    return text.rpartition(")")[2].split()


def ticksFromStat(text: str) -> int:
    """
    User plus system clock ticks, with those of reaped children (so an
    Apache child that exits during a run still counts).
    """
    return sum(int(value) for value in statFields(text)[11:15])


def kBFromStatus(text: str, key: str) -> int:
    """A C{kB} line of C{/proc/PID/status} (VmRSS, VmHWM); 0 when absent."""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def cpuTicks(pid: int) -> int:
    """User plus system ticks of C{pid} and its reaped children; 0 once it is gone."""
    text = _read(f"/proc/{pid}/stat")
    return 0 if text is None else ticksFromStat(text)


def statusKB(pid: int, key: str) -> int:
    """A C{kB} figure of C{pid}'s status; 0 once it is gone."""
    text = _read(f"/proc/{pid}/status")
    return 0 if text is None else kBFromStatus(text, key)


def alive(pid: int) -> bool:
    """Whether C{pid} is a running (not zombie) process."""
    text = _read(f"/proc/{pid}/stat")
    return text is not None and statFields(text)[0] != "Z"


def processTree(root: int) -> list[int]:
    """C{root} and all its live descendants, from C{/proc}."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        text = _read(os.path.join(entry.path, "stat"))
        if text is not None:
            children.setdefault(int(statFields(text)[1]), []).append(int(entry.name))
    tree = [root]
    for pid in tree:
        tree.extend(children.get(pid, ()))
    return tree


@dataclass(frozen=True)
class TCPSocket:
    """One line of C{/proc/net/tcp} or C{tcp6}: the local port, the state, the inode."""

    localPort: int
    state: int
    inode: int


def parseNetTCP(text: str) -> list[TCPSocket]:
    """
    The sockets of C{/proc/net/tcp} or C{/proc/net/tcp6}. The columns are
    C{sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt
    uid timeout inode ...}; addresses are hexadecimal C{ADDRESS:PORT}.
    """
    sockets = []
    for line in text.splitlines()[1:]:
        columns = line.split()
        if len(columns) < 10:
            continue
        port = int(columns[1].rpartition(":")[2], 16)
        sockets.append(TCPSocket(port, int(columns[3], 16), int(columns[9])))
    return sockets


def socketInodes(links: Iterable[str]) -> set[int]:
    """The inodes of the sockets among C{/proc/PID/fd} link targets (C{socket:[12345]})."""
    return {
        int(link[len("socket:[") : -1])
        for link in links
        if link.startswith("socket:[") and link.endswith("]")
    }


def fdLinks(pid: int) -> list[str]:
    """Where each of C{pid}'s file descriptors points; empty once it is gone."""
    directory = f"/proc/{pid}/fd"
    links = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        try:
            links.append(os.readlink(os.path.join(directory, name)))
        except OSError:
            continue
    return links


def tcpSockets() -> list[TCPSocket]:
    """Every TCP socket of the machine, IPv4 and IPv6."""
    return [
        socket
        for path in ("/proc/net/tcp", "/proc/net/tcp6")
        for socket in parseNetTCP(_read(path) or "")
    ]
