"""The rounds: each scenario on each target, interleaved, after a check and a warm-up."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from .context import Context, Target
from .load import Run, check, runLoad
from .scenarios import SCENARIOS, WARM_UP, Scenario
from .tables import _number


def checkTargets(
    running: dict[str, Target], scenarios: Sequence[Scenario], notes: list[str]
) -> set[tuple[str, str]]:
    """Check every scenario on every target once; the pairs that fail are left out, with a note."""
    skip: set[tuple[str, str]] = set()
    for scenario in scenarios:
        for name, target in running.items():
            if target.onlyTiny and not scenario.tiny:
                skip.add((scenario.name, name))
                continue
            if scenario.static and not target.servesFiles:
                skip.add((scenario.name, name))
                notes.append(f"{scenario.name}: {name} left out: it serves no files")
                continue
            if scenario.http2 and target.tlsPort is None:
                problem: str | None = "it has no TLS listener"
            else:
                problem = check(scenario, target)
            if problem is not None:
                skip.add((scenario.name, name))
                notes.append(f"{scenario.name}: {name} left out: {problem}")
                print(f"left out: {scenario.name} on {name}: {problem}")
    return skip


def runRounds(
    args: argparse.Namespace,
    context: Context,
    running: dict[str, Target],
    scenarios: Sequence[Scenario],
    skip: set[tuple[str, str]],
) -> list[Run]:
    """
    Rounds over scenarios over targets: each target's runs are spread over
    the whole benchmark, so a noisy neighbour's burst hits every target a
    little rather than one target a lot.
    """
    runs: list[Run] = []
    order = list(running)
    total = sum((s.name, t) not in skip for s in scenarios for t in order) * args.rounds
    for round in range(1, args.rounds + 1):
        for scenario in scenarios:
            # Rotate so that no front-end always runs first, right after another's load.
            shift = (round - 1) % len(order)
            for name in order[shift:] + order[:shift]:
                if (scenario.name, name) in skip:
                    continue
                run = runLoad(
                    context.tools, context.work, scenario, running[name], args.duration, round
                )
                runs.append(run)
                context.processes.remember(running[name].pid)
                flag = f"  NON-2XX {run.non2xx}" if run.non2xx else ""
                flag += f"  {run.errorKinds}" if run.socketErrors else ""
                print(
                    f"[{len(runs)}/{total}] round {round} {scenario.name:12} {name:13}"
                    f" {run.rps:9.0f} req/s  p99 {_number(run.p99ms, 2):>7} ms"
                    f"  CPU {run.cpuSeconds:5.2f} s{flag}"
                )
                time.sleep(0.3)
    return runs


# The targets that compile their hot paths as they run: warmed up for --jetty-warm-up.
JIT_TARGETS = frozenset({"jetty", "txfastcgi-pypy"})


def warmUp(
    context: Context, running: dict[str, Target], jettyWarmUp: float, machine: dict[str, str]
) -> None:
    """
    2 s of tiny-c32 on every front-end before the rounds, and longer on
    those with a JIT, Jetty and PyPy: the issue compares against Jetty once
    its JIT has compiled the hot paths, after some thousands of requests,
    and PyPy's first seconds are as slow (5 100 req/s cold, 11 500 warm).
    """
    print(f"\nwarming up {', '.join(running)}")
    warm = next(s for s in SCENARIOS if s.name == "tiny-c32")
    for name, target in running.items():
        seconds = max(WARM_UP, jettyWarmUp) if name in JIT_TARGETS else WARM_UP
        run = runLoad(context.tools, context.work, warm, target, seconds, 0)
        if name in JIT_TARGETS:
            machine[f"{name} warm-up"] = (
                f"{seconds:g} s of wrk -t1 -c32 on hello.php before the rounds"
                f" ({run.rps:.0f} req/s; the others: {WARM_UP:g} s)"
            )
