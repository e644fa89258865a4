"""
The targets of issue 12, each checked against this run: measured, required,
PASS, MISS or not measured.

Most targets are a ratio of one txfastcgi target to one anchor in one
scenario, taken within each round (L{sameRoundRatio}); they are rows of
L{RATIO_GOALS}. The others (c1 and c256 relative to c32, p99 in every
scenario, RSS, idle connections, the spread of --workers) have a function
each. A target whose figures are missing from the run (an anchor not
installed, a scenario not run, a soak too short, the wrong interpreter) is
"not measured", never a PASS.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .load import Run
from .scenarios import SCENARIOS
from .spread import HIGH_SHARE, LOW_SHARE, evenlySpread, shares
from .summary import sameRoundRatio

PASS = "PASS"
MISS = "MISS"
NOT_MEASURED = "not measured"
SOAK_SECONDS = 60.0
IDLE_CONNECTIONS = 10_000
IDLE_KIB = 10.0
RSS_TOLERANCE = 0.10


@dataclass(frozen=True)
class Verdict:
    """One row of the target table."""

    target: str
    measured: str
    required: str
    status: str
    detail: str = ""


def judge(
    text: str, value: float | None, atLeast: bool, limit: float, unit: str, detail: str = ""
) -> Verdict:
    """PASS or MISS for a measured C{value} against C{limit}; not measured for None."""
    required = f"{'>=' if atLeast else '<='} {limit:.2f}{unit}"
    if value is None:
        return Verdict(text, "-", required, NOT_MEASURED, detail)
    met = value >= limit if atLeast else value <= limit
    return Verdict(text, f"{value:.2f}{unit}", required, PASS if met else MISS, detail)


@dataclass(frozen=True)
class Measurements:
    """Everything a run measured that the targets are read from."""

    runs: Sequence[Run]
    # The Python implementation each txfastcgi target ran on.
    interpreters: Mapping[str, str] = field(default_factory=dict)
    soak: Mapping[str, Any] | None = None
    idle: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RatioGoal:
    """A target that is one ratio: C{mine} over C{peer} in C{scenario}."""

    text: str
    scenario: str
    mine: str
    peer: str
    limit: float
    atLeast: bool = True
    metric: str = "rps"
    interpreter: str = "CPython"


RATIO_GOALS = (
    RatioGoal(
        "One CPython process, tiny response, c32: >= 0.9x nginx (1 worker)",
        "tiny-c32",
        "txfastcgi",
        "nginx",
        0.9,
    ),
    RatioGoal("so >= 2x Caddy", "tiny-c32", "txfastcgi", "caddy", 2.0),
    RatioGoal("and >= 1.5x warm Jetty", "tiny-c32", "txfastcgi", "jetty", 1.5),
    RatioGoal(
        "Embedded FastCGIResource in a plain twisted.web Site: >= 1.3x Caddy",
        "tiny-c32",
        "txfastcgi-embedded",
        "caddy",
        1.3,
    ),
    RatioGoal("1 MiB PHP response: >= 1.0x nginx", "1m-c32", "txfastcgi", "nginx", 1.0),
    RatioGoal("1 MiB POST: >= 0.8x nginx", "post1m-c32", "txfastcgi", "nginx", 0.8),
    RatioGoal(
        "Static files: 95 KB style.min.css at c32 >= 0.5x nginx",
        "css95k-c32",
        "txfastcgi",
        "nginx",
        0.5,
    ),
    RatioGoal("a 12-byte file >= 0.5x nginx", "static12-c32", "txfastcgi", "nginx", 0.5),
    RatioGoal(
        "1 MiB static file: >= 0.8x nginx with sendfile",
        "static1m-c32",
        "txfastcgi",
        "nginx",
        0.8,
    ),
    RatioGoal(
        "with CPU per request within 2x of nginx's",
        "static1m-c32",
        "txfastcgi",
        "nginx",
        2.0,
        atLeast=False,
        metric="cpuMicroseconds",
    ),
    RatioGoal(
        "HTTP/2 tiny over TLS (h2load -c32 -m16): >= 1.0x Caddy",
        "h2-tiny-c32",
        "txfastcgi",
        "caddy",
        1.0,
    ),
    RatioGoal(
        "PyPy, tiny c32: >= 1.0x HAProxy",
        "tiny-c32",
        "txfastcgi-pypy",
        "haproxy",
        1.0,
        interpreter="PyPy",
    ),
)


def _wrongInterpreter(data: Measurements, target: str, wanted: str) -> str | None:
    """Why C{target}'s figures cannot stand for C{wanted} (None when they can)."""
    ran = data.interpreters.get(target)
    if ran is None:
        return f"{target} is not in this run"
    if ran != wanted:
        return f"{target} ran on {ran}, the target is for {wanted}"
    return None


def _starvedNote(runs: Sequence[Run], scenario: str, target: str) -> str:
    """
    A note when C{target} answered fewer than half its connections at a
    time in most rounds (Jetty's default client does): its req/s is then
    not that of all the clients.
    """
    mine = [r for r in runs if r.scenario == scenario and r.target == target]
    if mine and sum(r.starved for r in mine) * 2 > len(mine):
        served = statistics.median(r.servedConnections or 0.0 for r in mine)
        return f"; {target} answered only about {served:.0f} connections at a time"
    return ""


def ratioVerdict(goal: RatioGoal, data: Measurements) -> Verdict:
    """One L{RatioGoal} read from the run."""
    unit = "x"
    problem = _wrongInterpreter(data, goal.mine, goal.interpreter)
    if problem is not None:
        return judge(goal.text, None, goal.atLeast, goal.limit, unit, problem)
    value = sameRoundRatio(data.runs, goal.scenario, goal.mine, goal.peer, goal.metric)
    if value is None:
        detail = f"{goal.peer} or {goal.scenario} is not in this run"
    else:
        detail = f"{goal.mine} / {goal.peer}, {goal.scenario}, {goal.metric}"
        detail += _starvedNote(data.runs, goal.scenario, goal.peer)
    return judge(goal.text, value, goal.atLeast, goal.limit, unit, detail)


def relativeVerdict(text: str, scenario: str, data: Measurements) -> Verdict:
    """
    C{scenario}'s ratio to nginx over tiny-c32's: at least 1.0 means no worse
    relative to nginx than at 32 connections.
    """
    problem = _wrongInterpreter(data, "txfastcgi", "CPython")
    if problem is not None:
        return judge(text, None, True, 1.0, "x", problem)
    here = sameRoundRatio(data.runs, scenario, "txfastcgi", "nginx")
    base = sameRoundRatio(data.runs, "tiny-c32", "txfastcgi", "nginx")
    if here is None or not base:
        return judge(text, None, True, 1.0, "x", f"nginx, {scenario} or tiny-c32 not in this run")
    return judge(
        text, here / base, True, 1.0, "x", f"{scenario} {here:.2f}x nginx, tiny-c32 {base:.2f}x"
    )


def p99Verdict(data: Measurements) -> Verdict:
    """The worst p99 ratio to nginx over every c32 scenario; any one missing: not measured."""
    text = "p99 at c32 <= 2x nginx in every scenario"
    ratios = {
        s.name: sameRoundRatio(data.runs, s.name, "txfastcgi", "nginx", "p99ms")
        for s in SCENARIOS
        if s.connections == 32
    }
    measured = {name: value for name, value in ratios.items() if value is not None}
    each = ", ".join(f"{name} {value:.2f}x" for name, value in measured.items())
    missing = sorted(set(ratios) - set(measured))
    if missing:
        return judge(text, None, False, 2.0, "x", f"not measured: {', '.join(missing)}; {each}")
    return judge(text, max(measured.values()), False, 2.0, "x", f"worst of: {each}")


def rssVerdict(data: Measurements) -> Verdict:
    """
    RSS flat: the last third's peak within 10 % of the first third's over a
    run of at least 60 s.
    """
    text = "RSS flat over a 60 s run"
    soak = data.soak
    limit = 1 + RSS_TOLERANCE
    if soak is None:
        return judge(text, None, False, limit, "x", "no soak in this run (--soak)")
    detail = (
        f"peak RSS {soak['firstKB'] / 1024:.1f} MB in the first third,"
        f" {soak['lastKB'] / 1024:.1f} MB in the last, {soak['seconds']:g} s of {soak['target']}"
    )
    if soak["seconds"] < SOAK_SECONDS:
        return judge(text, None, False, limit, "x", f"too short a soak: {detail}")
    return judge(text, soak["ratio"], False, limit, "x", detail)


def idleVerdict(data: Measurements) -> Verdict:
    """10 000 idle keep-alive connections, all still held by the server, <= 10 KiB each."""
    text = "10 000 idle keep-alive client connections cost <= 10 KiB each"
    idle = data.idle
    if idle is None:
        return judge(text, None, False, IDLE_KIB, " KiB", "not run (--idle-connections)")
    detail = (
        f"{idle['connections']} opened, {idle['heldByServer']} held by {idle['target']},"
        f" RSS {idle['beforeKB'] / 1024:.1f} -> {idle['afterKB'] / 1024:.1f} MB"
    )
    if idle["connections"] < IDLE_CONNECTIONS or idle["heldByServer"] < idle["connections"]:
        return judge(text, None, False, IDLE_KIB, " KiB", f"not all {IDLE_CONNECTIONS}: {detail}")
    return judge(text, idle["perConnectionKiB"], False, IDLE_KIB, " KiB", detail)


def spreadVerdict(data: Measurements, target: str = "txfastcgi-w2", workers: int = 2) -> Verdict:
    """
    Each worker's share of the 32 connections, counted mid-run in every
    round of every c32 scenario, between a third and two thirds.
    """
    text = f"--workers {workers}: each process serves between a third and two thirds, every round"
    required = f"{LOW_SHARE:.2f}..{HIGH_SHARE:.2f}"
    sampled = [
        r
        for r in data.runs
        if r.target == target and r.connections == 32 and r.connectionsPerProcess is not None
    ]
    if not sampled:
        return Verdict(text, "-", required, NOT_MEASURED, f"{target} is not in this run")
    perRun = [shares(dict(enumerate(r.connectionsPerProcess or [])), workers) for r in sampled]
    low = min(min(s) for s in perRun)
    high = max(max(s) for s in perRun)
    uneven = [
        f"{r.scenario} round {r.round}" for r, s in zip(sampled, perRun) if not evenlySpread(s)
    ]
    status = MISS if uneven else PASS
    detail = (
        f"{len(sampled)} runs; uneven: {', '.join(uneven)}" if uneven else f"{len(sampled)} runs"
    )
    return Verdict(text, f"{low:.2f}..{high:.2f}", required, status, detail)


def verdicts(data: Measurements) -> list[Verdict]:
    """Every target of issue 12, in the issue's order."""
    ratios = [ratioVerdict(goal, data) for goal in RATIO_GOALS]
    return [
        *ratios[:3],
        relativeVerdict("c1 ... no worse relative to nginx than c32", "tiny-c1", data),
        relativeVerdict("c256 no worse relative to nginx than c32", "tiny-c256", data),
        *ratios[3:-1],
        p99Verdict(data),
        rssVerdict(data),
        idleVerdict(data),
        ratios[-1],
        spreadVerdict(data),
    ]
