"""The run: start php-fpm and the front-ends, run the rounds and the memory tests, report."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .checks import Measurements, verdicts
from .context import Context, Target
from .machine import describeMachine
from .memory import idleConnectionCost, raiseFileLimit, runSoak
from .options import parseArguments
from .phpfpm import startPHPFPM
from .processes import Processes
from .procfs import processTree, statusKB
from .profiling import profileText, profileTxfastcgi
from .report import report
from .rounds import checkTargets, runRounds, warmUp
from .scenarios import POST_LUA, Scenario, writeDocumentRoot
from .selection import chooseScenarios, chooseTargets
from .summary import summarise
from .tables import machineLines
from .targets import startTarget
from .tls import makeCertificate
from .tools import TOOLS, checkTools


def _raiseSystemExit(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C does, so the finally block stops everything."""
    print(f"\n{signal.Signals(signum).name}: stopping everything started")
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or the profile) and stop everything it started, whatever happens."""
    args = parseArguments(argv)
    # Ctrl-C must interrupt even when started from a shell that ignores
    # SIGINT for background jobs, or nothing would stop the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raiseSystemExit)
    signal.signal(signal.SIGHUP, _raiseSystemExit)
    wanted = [t.name for t in TOOLS]
    tools = checkTools(wanted)
    if os.geteuid() == 0 and not _userExists("www-data"):
        raise SystemExit("php-fpm started as root needs the www-data user for its pools")
    # 10 000 idle clients: this process holds their sockets, txfastcgi (which
    # inherits the limit) the other ends.
    raiseFileLimit(args.idle_connections + 1024)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="txfastcgi-bench-"))
    work.chmod(0o755)
    (work / "logs").mkdir()
    (work / "run").mkdir(mode=0o755)
    processes = Processes()
    started = time.monotonic()
    try:
        return _main(args, tools, work, processes, started)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything started")
        return 130
    finally:
        processes.stopAll()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _userExists(name: str) -> bool:
    """Whether the system has user C{name}."""
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _main(
    args: argparse.Namespace,
    tools: dict[str, str],
    work: Path,
    processes: Processes,
    started: float,
) -> int:
    docroot = work / "www"
    writeDocumentRoot(docroot)
    (work / "post.lua").write_text(POST_LUA)
    notes: list[str] = []
    context = Context(work, docroot, tools, processes, {}, args.python, args.repo, None)
    context.proxyArgs = args.proxyArgs
    context.baseline = args.baseline
    context.jettyWarmUp = args.jetty_warm_up
    context.pypy = args.pypy or tools.get("pypy3")
    if args.profile:
        targets = ["txfastcgi"]
        scenarios: list[Scenario] = []
    else:
        targets = chooseTargets(args, context, notes)
        scenarios = chooseScenarios(args, tools, notes)
        if any(s.http2 for s in scenarios):
            context.cert = makeCertificate(work, tools["openssl"])
    startPHPFPM(context, targets)
    machine = describeMachine(context, tools)
    if context.proxyArgs:
        machine["fastcgi-proxy extra arguments"] = " ".join(context.proxyArgs)
    print("\n".join(machineLines(machine)))
    for note in notes:
        print("note:", note)
    if args.profile:
        return _profile(args, context, machine)

    running: dict[str, Target] = {}
    for name in targets:
        try:
            running[name] = startTarget(context, name)
        except RuntimeError as e:
            print(f"left out: {e}")
            notes.append(f"{name}: left out, it did not start ({str(e).splitlines()[-1]})")
    skip = checkTargets(running, scenarios, notes)
    warmUp(context, running, args.jetty_warm_up, machine)
    runs = runRounds(args, context, running, scenarios, skip)
    for run in runs:
        if run.non2xx or run.socketErrors:
            notes.append(
                f"{run.scenario}: {run.target} in round {run.round}: {run.non2xx} non-2xx"
                f" responses of {run.requests}; {run.errorKinds or 'no socket errors'}"
            )
    memory = _measureMemory(args, context, running, notes)
    for name, target in running.items():
        highWater = sum(statusKB(pid, "VmHWM") for pid in processTree(target.pid))
        notes.append(
            f"{name}: VmHWM summed over its processes at the end {highWater / 1024:.1f} MB"
        )
    machine["load average at end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    machine["run"] = (
        f"{args.rounds} round(s) of {args.duration:g} s per run, wrk -t1, median over rounds,"
        f" {time.monotonic() - started:.0f} s in all"
    )
    rows = summarise(runs, scenarios, list(running))
    for row in rows:
        if row.starved and row.servedConnections is not None:
            connections = next(s.connections for s in scenarios if s.name == row.scenario)
            notes.append(
                f"{row.scenario}: {row.target} answered only about {row.servedConnections:.0f}"
                f" of the {connections} connections at a time (req/s x mean latency); the"
                " others waited, and wrk neither counts nor times a request still unanswered"
                " when the run ends (marked * in the table)"
            )
    interpreters = {n: t.interpreter for n, t in running.items() if t.interpreter is not None}
    measured = Measurements(runs, interpreters, memory["soak"], memory["idle"])
    report(args.out, args.svg, machine, notes, running, rows, runs, verdicts(measured), memory)
    # A non-2xx answer means a broken setup, whoever gave it; socket errors
    # count against txfastcgi only (Apache drops kept connections at c256).
    failed = any(r.non2xx or (r.socketErrors and r.target.startswith("txfastcgi")) for r in runs)
    return 1 if failed else 0


def _measureMemory(
    args: argparse.Namespace, context: Context, running: dict[str, Target], notes: list[str]
) -> dict[str, Any]:
    """The RSS soak and the idle connections, both on the one-process proxy."""
    target = running.get("txfastcgi")
    memory: dict[str, Any] = {"soak": None, "idle": None}
    if target is None:
        return memory
    if args.soak > 0:
        memory["soak"] = runSoak(context.tools, context.work, target, "/hello.php", args.soak)
    if args.idle_connections > 0:
        try:
            memory["idle"] = idleConnectionCost(target, "/hello.php", args.idle_connections)
        except OSError as e:
            notes.append(f"idle connections: not measured ({e})")
    return memory


def _profile(args: argparse.Namespace, context: Context, machine: dict[str, str]) -> int:
    """--profile: one txfastcgi process under one scenario, its hot spots written out."""
    profile = profileTxfastcgi(args, context, args.out)
    print(profileText(profile))
    document = {"machine": machine, **profile}
    stem = f"profile-{profile['scenario']}-{profile['profiler']}"
    (args.out / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out / stem}.json and, from py-spy, {stem}.svg (a flame graph)")
    return 0
