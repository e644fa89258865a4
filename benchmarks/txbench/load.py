"""One load run of one scenario against one target, and the check before it."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .context import Target
from .parsers import parseH2load, parseH2loadLog, parseWrk
from .sampling import Sampler
from .scenarios import POST_SIZE, Scenario


def fetch(url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP request with the standard library: status and body."""
    request = urllib.request.Request(url, data=body)
    if body is not None:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


@dataclass
class Run:
    """One load run of one scenario against one target, and what it cost."""

    scenario: str
    target: str
    round: int
    requests: int
    seconds: float
    rps: float
    p50ms: float | None
    p99ms: float | None
    non2xx: int
    socketErrors: int
    cpuSeconds: float
    peakRSSMB: float
    errorKinds: str = ""
    output: str = ""
    meanMs: float | None = None
    connections: int = 0
    # --workers N: the client connections each worker held mid-run (see spread).
    connectionsPerProcess: list[int] | None = None

    @property
    def cpuMicroseconds(self) -> float | None:
        """CPU µs per request of the front-end's process tree (utime + stime)."""
        return self.cpuSeconds / self.requests * 1e6 if self.requests else None

    @property
    def servedConnections(self) -> float | None:
        """
        How many connections were being answered on average: req/s times the
        mean latency (Little's law). About the connections opened when every
        one is served; far fewer when a front-end leaves some waiting, which
        wrk does not report (a request still unanswered at the end of the run
        is neither counted nor timed).
        """
        return self.rps * self.meanMs / 1000 if self.meanMs is not None else None

    @property
    def starved(self) -> bool:
        """Whether fewer than half the connections were being answered."""
        served = self.servedConnections
        return self.connections > 1 and served is not None and served < self.connections / 2


def loadCommand(
    tools: dict[str, str],
    work: Path,
    scenario: Scenario,
    target: Target,
    duration: float,
) -> list[str]:
    """
    The load generator's command line: wrk for HTTP/1.1 (its POST body from
    a Lua script), h2load for HTTP/2 with 16 streams per connection as the
    issue's target says, its per-request log in C{work} for p99.
    """
    if scenario.http2:
        argv = [tools["h2load"], "-t1", f"-c{scenario.connections}", "-m16"]
        argv += [f"-D{duration:g}", f"--log-file={work / 'h2load.log'}"]
        return [*argv, target.url(scenario.path, tls=True)]
    argv = [tools["wrk"], "-t1", f"-c{scenario.connections}", f"-d{duration:g}s", "--latency"]
    if scenario.post:
        argv += ["-s", str(work / "post.lua")]
    if scenario.acceptEncoding is not None:
        argv += ["-H", f"Accept-Encoding: {scenario.acceptEncoding}"]
    return [*argv, target.url(scenario.path)]


def runLoad(
    tools: dict[str, str],
    work: Path,
    scenario: Scenario,
    target: Target,
    duration: float,
    round: int,
) -> Run:
    """
    Load one target with one scenario while sampling the target's process
    tree, and, for several workers, how the connections are spread mid-run.
    """
    argv = loadCommand(tools, work, scenario, target, duration)
    log = work / "h2load.log"
    log.unlink(missing_ok=True)
    spreadPort = target.port if target.workers > 1 and not scenario.http2 else None
    with Sampler(target.pid, spreadPort=spreadPort, spreadAt=duration / 2) as sampler:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    output = done.stdout + done.stderr
    if scenario.http2:
        figures = parseH2load(output)
        if log.exists():
            figures.update(parseH2loadLog(log.read_text()))
    else:
        figures = parseWrk(output)
    counts = sampler.connections
    return Run(
        scenario=scenario.name,
        target=target.name,
        round=round,
        connections=scenario.connections,
        cpuSeconds=sampler.cpuSeconds,
        peakRSSMB=sampler.peakRSSKB / 1024,
        output=output,
        connectionsPerProcess=None if counts is None else sorted(counts.values(), reverse=True),
        **figures,
    )


def _checkHTTP2(scenario: Scenario, target: Target) -> str | None:
    """The HTTP/2 check, with curl when it is there (the standard library speaks no HTTP/2)."""
    curl = shutil.which("curl")
    if curl is None:
        return None
    report = "%{http_version} %{http_code} %{size_download}"
    argv = [curl, "-sk", "--http2", "-o", "/dev/null", "-w", report]
    done = subprocess.run(
        [*argv, target.url(scenario.path, tls=True)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    version, status, size = [*done.stdout.split(), "?", "?", "?"][:3]
    if (version, status, size) != ("2", "200", str(scenario.expectBytes)):
        return (
            f"HTTP/{version} {status}, {size} bytes (expected HTTP/2 200, {scenario.expectBytes})"
        )
    return None


def check(scenario: Scenario, target: Target) -> str | None:
    """
    One request by hand before any load: the same status and size from every
    front-end, or the comparison would be of different work. None when fine.
    """
    body = b"x" * POST_SIZE if scenario.post else None
    if scenario.http2:
        return _checkHTTP2(scenario, target)
    status, content = fetch(target.url(scenario.path), body)
    if status != 200 or len(content) != scenario.expectBytes:
        return f"status {status}, {len(content)} bytes (expected 200, {scenario.expectBytes})"
    if scenario.post and content.strip() != str(POST_SIZE).encode():
        return f"PHP read {content.strip()!r} bytes of the {POST_SIZE} posted"
    return None
