"""Medians over rounds and ratios taken within a round."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .load import Run
from .scenarios import Scenario


@dataclass
class Row:
    """Medians over the rounds of one scenario and one target."""

    scenario: str
    target: str
    rounds: int
    rps: float
    p50ms: float | None
    p99ms: float | None
    cpuMicroseconds: float | None
    peakRSSMB: float
    non2xx: int
    socketErrors: int
    vsNginx: float | None
    vsCaddy: float | None
    servedConnections: float | None = None
    starved: bool = False


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# A run that served under this share of its target's median over the rounds
# stalled (a front-end that stopped answering for the run): it is no figure
# of that front-end's speed, and a ratio against it would be any number.
_STALL_SHARE = 0.1


def _sound(runs: dict[int, Run]) -> dict[int, Run]:
    """The rounds of one target's runs that did not stall."""
    median = statistics.median(r.rps for r in runs.values()) if runs else 0.0
    return {n: r for n, r in runs.items() if r.rps >= _STALL_SHARE * median}


def sameRoundRatio(
    runs: Sequence[Run], scenario: str, target: str, other: str, metric: str = "rps"
) -> float | None:
    """
    The median over rounds of C{target}'s metric over C{other}'s in the same
    round: the machine is shared and noisy, and a ratio taken within one
    round cancels most of what the neighbours did to both. A round in which
    either stalled is left out.
    """
    mine = _sound({r.round: r for r in runs if r.scenario == scenario and r.target == target})
    theirs = _sound({r.round: r for r in runs if r.scenario == scenario and r.target == other})
    ratios = []
    for round, run in mine.items():
        peer = theirs.get(round)
        if peer is None:
            continue
        a, b = getattr(run, metric), getattr(peer, metric)
        if a is not None and b:
            ratios.append(a / b)
    return statistics.median(ratios) if ratios else None


def summarise(
    runs: Sequence[Run], scenarios: Sequence[Scenario], targets: Sequence[str]
) -> list[Row]:
    """One row per scenario and target, in the order of the scenarios and targets."""
    rows = []
    for scenario in scenarios:
        for target in targets:
            mine = [r for r in runs if r.scenario == scenario.name and r.target == target]
            if not mine:
                continue
            rows.append(
                Row(
                    scenario=scenario.name,
                    target=target,
                    rounds=len(mine),
                    rps=statistics.median(r.rps for r in mine),
                    p50ms=_median([r.p50ms for r in mine]),
                    p99ms=_median([r.p99ms for r in mine]),
                    cpuMicroseconds=_median([r.cpuMicroseconds for r in mine]),
                    peakRSSMB=max(r.peakRSSMB for r in mine),
                    non2xx=sum(r.non2xx for r in mine),
                    socketErrors=sum(r.socketErrors for r in mine),
                    vsNginx=sameRoundRatio(runs, scenario.name, target, "nginx"),
                    vsCaddy=sameRoundRatio(runs, scenario.name, target, "caddy"),
                    servedConnections=_median([r.servedConnections for r in mine]),
                    starved=sum(r.starved for r in mine) * 2 > len(mine),
                )
            )
    return rows
