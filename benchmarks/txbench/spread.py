"""
How ``--workers N`` spreads client connections over its processes.

Issue 12 saw one of two processes take all 32 connections for a whole run:
the shares are counted from the kernel's socket tables mid-run, which needs
nothing from txfastcgi and cannot be fooled by its own bookkeeping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .procfs import (
    TCP_ESTABLISHED,
    TCP_LISTEN,
    TCPSocket,
    fdLinks,
    processTree,
    socketInodes,
    tcpSockets,
)

LOW_SHARE = 1 / 3
HIGH_SHARE = 2 / 3


def connectionCounts(
    root: int, inodes: Mapping[int, set[int]], sockets: Sequence[TCPSocket], port: int
) -> dict[int, int]:
    """
    ESTABLISHED server-side sockets on C{port} held by each serving process.

    C{inodes} maps each process of the tree to its socket inodes. A serving
    process is one holding the listening socket or a connection on C{port};
    the root is left out when it holds no connection and a child does hold
    the listening socket (a supervisor that passes its socket on and accepts
    nothing is no worker).
    """
    listening = {s.inode for s in sockets if s.localPort == port and s.state == TCP_LISTEN}
    established = {s.inode for s in sockets if s.localPort == port and s.state == TCP_ESTABLISHED}
    counts = {
        pid: len(mine & established)
        for pid, mine in inodes.items()
        if mine & (listening | established)
    }
    childrenListen = any(pid != root and mine & listening for pid, mine in inodes.items())
    if counts.get(root) == 0 and childrenListen:
        del counts[root]
    return counts


def shares(counts: Mapping[int, int], workers: int) -> list[float]:
    """
    Each worker's share of the connections, largest first; a worker that
    served none (or whose process is missing) counts as a share of 0.
    """
    total = sum(counts.values())
    values = sorted((n / total if total else 0.0 for n in counts.values()), reverse=True)
    return (values + [0.0] * workers)[: max(workers, len(values))]


def evenlySpread(roundShares: Sequence[float]) -> bool:
    """Whether every process had between a third and two thirds of the connections."""
    return bool(roundShares) and all(LOW_SHARE <= s <= HIGH_SHARE for s in roundShares)


def sampleConnectionCounts(root: int, port: int) -> dict[int, int]:
    """L{connectionCounts} of the live process tree of C{root}, from /proc."""
    inodes = {pid: socketInodes(fdLinks(pid)) for pid in processTree(root)}
    return connectionCounts(root, inodes, tcpSockets(), port)
