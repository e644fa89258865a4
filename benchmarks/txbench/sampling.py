"""CPU time and RSS of a process tree over one load run."""

from __future__ import annotations

import threading
import time

from .procfs import CLOCK_TICKS, cpuTicks, processTree, statusKB
from .spread import sampleConnectionCounts


class Sampler:
    """
    CPU time and RSS of a process tree over one load run.

    CPU is read once at the start and once at the end (ticks are exact, a
    sample in between adds nothing); RSS is sampled every C{interval} seconds
    in a thread, since only the peak during this run is wanted and VmHWM is a
    peak over the process's whole life.

    With C{spreadPort}, the connections each process holds on that port are
    counted once, C{spreadAt} seconds in (mid-run, when every client is
    connected and none is closing yet), for L{spread}.
    """

    def __init__(
        self,
        root: int,
        interval: float = 0.25,
        spreadPort: int | None = None,
        spreadAt: float = 0.0,
    ) -> None:
        self._root = root
        self._interval = interval
        self._spreadPort = spreadPort
        self._spreadAt = spreadAt
        self.connections: dict[int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._startTicks: dict[int, int] = {}
        self.peakRSSKB = 0
        self.rssSeries: list[tuple[float, int]] = []
        self.cpuSeconds = 0.0

    def __enter__(self) -> Sampler:
        self._startTicks = {pid: cpuTicks(pid) for pid in processTree(self._root)}
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        endTicks = {pid: cpuTicks(pid) for pid in processTree(self._root)}
        ticks = sum(end - self._startTicks.get(pid, 0) for pid, end in endTicks.items())
        self.cpuSeconds = max(0, ticks) / CLOCK_TICKS

    def _sample(self) -> None:
        tree = processTree(self._root)
        lastScan = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - lastScan > 1.0:
                # Apache starts children as load grows.
                tree = processTree(self._root)
                lastScan = now
            if (
                self._spreadPort is not None
                and self.connections is None
                and now - self._started >= self._spreadAt
            ):
                self.connections = sampleConnectionCounts(self._root, self._spreadPort)
            rss = sum(statusKB(pid, "VmRSS") for pid in tree)
            self.peakRSSKB = max(self.peakRSSKB, rss)
            self.rssSeries.append((now - self._started, rss))
            self._stop.wait(self._interval)
