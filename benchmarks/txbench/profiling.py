"""Profiling one txfastcgi process under load: py-spy or cProfile."""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .context import Context, Target
from .load import check, runLoad
from .processes import freePort, waitFor
from .scenarios import SCENARIOS, Scenario
from .targets.txfastcgi import proxyCommand, startProxy, txfastcgiEnvironment


def _frameKey(frame: str, repo: Path) -> tuple[str, str, str]:
    """C{function (file:line)} from py-spy as (function, short file, line)."""
    match = re.fullmatch(r"(.*) \((.*?)(?::(\d+))?\)", frame)
    if match is None:
        return frame, "?", ""
    function, filename, line = match[1], match[2], match[3] or ""
    for prefix in (str(repo) + "/", sys.prefix + "/lib/"):
        if filename.startswith(prefix):
            filename = filename[len(prefix) :]
    filename = re.sub(r"^.*?/site-packages/", "", filename)
    return function, filename, line


def summariseCollapsed(collapsed: str, repo: Path, top: int) -> dict[str, Any]:
    """
    Self and inclusive shares per function from py-spy's collapsed stacks.
    Self time says where the interpreter is; inclusive time says which of our
    calls is worth making cheaper. The line shown is the hottest line of the
    function.
    """
    selfSamples: dict[tuple[str, str], int] = {}
    inclusive: dict[tuple[str, str], int] = {}
    lines: dict[tuple[str, str], dict[str, int]] = {}
    total = 0
    for entry in collapsed.splitlines():
        stack, _, count = entry.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_frameKey(f, repo) for f in stack.split(";") if f]
        seen = set()
        for function, filename, line in frames:
            key = (function, filename)
            lines.setdefault(key, {})
            lines[key][line] = lines[key].get(line, 0) + samples
            if key not in seen:
                seen.add(key)
                inclusive[key] = inclusive.get(key, 0) + samples
        if frames:
            function, filename, _ = frames[-1]
            selfSamples[(function, filename)] = selfSamples.get((function, filename), 0) + samples

    def hottestLine(function: str, filename: str) -> str:
        counts = lines[(function, filename)]
        return max(counts, key=lambda line: counts[line])

    def table(counts: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [
            {
                "function": function,
                "where": f"{filename}:{hottestLine(function, filename)}",
                "share": samples / total if total else 0.0,
            }
            for (function, filename), samples in ranked
        ]

    ours = {key: n for key, n in inclusive.items() if key[1].startswith("txfastcgi/")}
    return {
        "samples": total,
        "self": table(selfSamples),
        "inclusive": table(inclusive),
        "txfastcgi": table(ours),
    }


def profileTxfastcgi(args: argparse.Namespace, context: Context, out: Path) -> dict[str, Any]:
    """
    Profile one txfastcgi process under one scenario's load (the tiny
    response at 32 connections by default): py-spy when installed (it
    samples from outside, so the process runs at full speed), else cProfile.
    """
    scenario = next(s for s in SCENARIOS if s.name == args.profile_scenario)
    pyspy = shutil.which("py-spy")
    seconds = args.profile_seconds
    if pyspy is None or args.profiler == "cprofile":
        return _cProfile(args, context, out, scenario, seconds)
    target = startProxy(context, "txfastcgi")
    waitFor(lambda: check(scenario, target) is None, "txfastcgi to answer")
    runLoad(context.tools, context.work, scenario, target, 2, 0)
    result: dict[str, Any] = {
        "profiler": "py-spy",
        "tool": "py-spy (sampling from outside the process)",
        "seconds": seconds,
        "scenario": scenario.name,
    }
    stem = f"profile-{scenario.name}-py-spy"
    # The collapsed stacks are large (a megabyte): they stay in the temporary
    # directory (--keep keeps it); the flame graph and the summary are kept.
    for fmt, path in (("raw", context.work / f"{stem}.txt"), ("flamegraph", out / f"{stem}.svg")):
        recorder = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(target.pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--format",
                fmt,
                "--output",
                str(path),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            run = runLoad(context.tools, context.work, scenario, target, seconds + 1, 0)
            _, errors = recorder.communicate(timeout=seconds + 60)
        finally:
            if recorder.poll() is None:
                recorder.kill()
                recorder.wait()
        if recorder.returncode != 0:
            raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')}")
        result.setdefault("rps", run.rps)
        result.setdefault("cpuMicroseconds", run.cpuMicroseconds)
    result.update(
        summariseCollapsed(
            (context.work / f"{stem}.txt").read_text(), context.repo, args.profile_top
        )
    )
    return result


CPROFILE_LAUNCHER = """
# twist under cProfile, switched on by the first SIGUSR2 and written out on the
# second, so that the profile covers the load and nothing else. (SIGUSR1 is
# taken: fastcgi-proxy reopens its log files on it. twist ends itself by
# re-raising SIGTERM, which would skip cProfile's own output at exit.)
import cProfile, runpy, signal, sys
profile = cProfile.Profile()
output = sys.argv.pop(1)
running = False
def toggle(signum, frame):
    global running
    if running:
        profile.disable()
        profile.dump_stats(output)
    else:
        profile.enable()
    running = not running
signal.signal(signal.SIGUSR2, toggle)
sys.argv[0] = "twist"
runpy.run_module("twisted", run_name="__main__", alter_sys=True)
"""


def _cProfile(
    args: argparse.Namespace, context: Context, out: Path, scenario: Scenario, seconds: float
) -> dict[str, Any]:
    """
    The fallback, and the way to count calls: cProfile inside the process.
    It slows the process several times over, so its shares are of profiled
    time; its call counts per request are exact.
    """
    import pstats

    launcher = context.work / "cprofile_twist.py"
    launcher.write_text(CPROFILE_LAUNCHER)
    stats = context.work / f"profile-{scenario.name}-cprofile.prof"
    stats.unlink(missing_ok=True)
    port = freePort()
    proxy = proxyCommand(
        context.python, context.sockets["txfastcgi"], context.docroot, port, context.proxyArgs
    )
    # The launcher takes the place of "-m twisted".
    argv = [context.python, str(launcher), str(stats), *proxy[3:]]
    name = "txfastcgi-cprofile"
    env = txfastcgiEnvironment(context.repo)
    process = context.processes.start(name, argv, context.log(name), env=env)
    target = Target("txfastcgi", "cProfile", process.pid, port)
    waitFor(lambda: check(scenario, target) is None, "txfastcgi to answer")
    runLoad(context.tools, context.work, scenario, target, 2, 0)
    process.send_signal(signal.SIGUSR2)
    run = runLoad(context.tools, context.work, scenario, target, seconds, 0)
    process.send_signal(signal.SIGUSR2)
    waitFor(stats.exists, "the cProfile output")
    time.sleep(0.5)
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    entries = pstats.Stats(str(stats)).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in entries.values())

    def table(column: int) -> list[dict[str, Any]]:
        ranked = sorted(entries.items(), key=lambda item: -item[1][column])
        return [
            {
                "function": function,
                "where": f"{_frameKey(f'f ({filename}:{line})', context.repo)[1]}:{line}",
                "share": entry[column] / total,
                "callsPerRequest": entry[1] / run.requests if run.requests else None,
            }
            for (filename, line, function), entry in ranked[: args.profile_top]
        ]

    return {
        "profiler": "cprofile",
        "tool": "cProfile (it slows the process: shares are of profiled time)",
        "scenario": scenario.name,
        "seconds": seconds,
        "rps": run.rps,
        "requests": run.requests,
        "cpuMicroseconds": run.cpuMicroseconds,
        "self": table(2),
        "inclusive": table(3),
    }


def profileText(profile: dict[str, Any]) -> str:
    """The hot spots as text, self time first."""
    lines = [
        f"profile of txfastcgi, scenario {profile['scenario']}, {profile['tool']}, "
        f"{profile['seconds']:g} s at {profile['rps']:.0f} req/s"
    ]
    headings = {
        "self": "top functions by self time",
        "inclusive": "top functions by inclusive time",
        "txfastcgi": "txfastcgi's own functions by inclusive time",
    }
    for kind, heading in headings.items():
        if kind not in profile:
            continue
        lines.append(f"\n{heading} (share of CPU samples):")
        for entry in profile[kind]:
            calls = entry.get("callsPerRequest")
            perRequest = "" if calls is None else f"  ({calls:.2f} calls/request)"
            share = entry["share"] * 100
            lines.append(f"  {share:5.1f}%  {entry['function']}  {entry['where']}{perRequest}")
    return "\n".join(lines)
