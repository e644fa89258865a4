"""
Memory of txfastcgi: RSS over a long run, and what idle keep-alive client
connections cost, both targets of issue 12.
"""

from __future__ import annotations

import asyncio
import resource
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .context import Target
from .parsers import parseWrk
from .procfs import processTree, statusKB
from .sampling import Sampler
from .spread import sampleConnectionCounts

# RSS is flat when the last third's peak is within this of the first third's.
FLAT_TOLERANCE = 0.10


def rssFlatness(series: Sequence[tuple[float, int]]) -> dict[str, float]:
    """
    The peak RSS (kB) of the first and of the last third of a run, and
    their ratio. Peaks rather than means: a leak raises the peak, while a
    garbage collector's saw-tooth moves the mean either way.
    """
    if not series:
        raise ValueError("no RSS samples")
    end = series[-1][0]
    first = [rss for t, rss in series if t <= end / 3] or [series[0][1]]
    last = [rss for t, rss in series if t >= end * 2 / 3] or [series[-1][1]]
    return {"firstKB": max(first), "lastKB": max(last), "ratio": max(last) / max(first)}


def runSoak(
    tools: dict[str, str], work: Path, target: Target, path: str, seconds: float
) -> dict[str, Any]:
    """
    One long run of C{path} at 32 connections against one txfastcgi
    process, RSS sampled every second: a leak per request shows as RSS that
    keeps climbing.
    """
    print(f"\nsoak: {seconds:g} s of {path} at 32 connections against {target.name}")
    argv = [tools["wrk"], "-t1", "-c32", f"-d{seconds:g}s", "--latency", target.url(path)]
    with Sampler(target.pid, interval=1.0) as sampler:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    result = parseWrk(done.stdout + done.stderr)
    flatness = rssFlatness(sampler.rssSeries)
    soak = {
        "target": target.name,
        "seconds": seconds,
        "requests": result["requests"],
        "rps": result["rps"],
        "non2xx": result["non2xx"],
        **flatness,
        "series": [(round(t, 1), round(rss / 1024, 2)) for t, rss in sampler.rssSeries],
    }
    print(
        f"soak: peak {flatness['firstKB'] / 1024:.1f} MB in the first third,"
        f" {flatness['lastKB'] / 1024:.1f} MB in the last"
    )
    return soak


def raiseFileLimit(needed: int) -> int:
    """
    Raise this process's open-file limit to at least C{needed} (its
    children, the front-ends, inherit it), as far as the hard limit allows,
    and raise the hard limit too when running as root; returns the limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            needed = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


def responseComplete(data: bytes) -> bool:
    """
    Whether C{data} holds one whole HTTP/1.1 response: its head and a body
    of Content-Length bytes, or a chunked body up to its last chunk.
    """
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if b"content-length" in fields:
        return len(body) >= int(fields[b"content-length"])
    if fields.get(b"transfer-encoding") == b"chunked":
        return body.endswith(b"0\r\n\r\n")
    return False


async def _oneRequest(
    port: int, request: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, send C{request}, read its whole response, and keep the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    received = b""
    while not responseComplete(received):
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("the server closed a keep-alive connection")
        received += chunk
    return reader, writer


def treeRSSKB(pid: int) -> int:
    """The RSS of C{pid}'s process tree, in kB."""
    return sum(statusKB(child, "VmRSS") for child in processTree(pid))


async def _idleCost(target: Target, path: str, count: int, batch: int) -> dict[str, Any]:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    # A settled baseline: a few kept connections' worth of buffers is not idle cost.
    await asyncio.sleep(1.0)
    before = treeRSSKB(target.pid)
    started = time.monotonic()
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for first in range(0, count, batch):
            size = min(batch, count - first)
            connections += await asyncio.gather(
                *(_oneRequest(target.port, request) for _ in range(size))
            )
        opened = time.monotonic() - started
        await asyncio.sleep(2.0)
        after = treeRSSKB(target.pid)
        held = sum(sampleConnectionCounts(target.pid, target.port).values())
    finally:
        for _, writer in connections:
            writer.close()
    return {
        "target": target.name,
        "connections": count,
        "heldByServer": held,
        "openSeconds": round(opened, 1),
        "beforeKB": before,
        "afterKB": after,
        "perConnectionKiB": (after - before) / count,
    }


def idleConnectionCost(target: Target, path: str, count: int, batch: int = 200) -> dict[str, Any]:
    """
    Open C{count} client connections to C{target}, one request each, keep
    them open and idle, and take the RSS growth of its process tree per
    connection. The server side is counted from the kernel's socket table
    too, so a front-end that closed idle connections is not credited with
    their memory.
    """
    print(f"\nidle connections: {count} kept-alive clients of {target.name}")
    result = asyncio.run(_idleCost(target, path, count, batch))
    print(
        f"idle connections: {result['heldByServer']} held, RSS"
        f" {result['beforeKB'] / 1024:.1f} -> {result['afterKB'] / 1024:.1f} MB,"
        f" {result['perConnectionKiB']:.2f} KiB each"
    )
    return result
