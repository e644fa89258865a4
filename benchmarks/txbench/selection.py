"""Which targets and scenarios a run has: those asked for whose tools are installed."""

from __future__ import annotations

import argparse

from .context import Context
from .scenarios import SCENARIOS, Scenario
from .targets import STARTERS
from .targets.txfastcgi import twistHelp
from .tools import JETTY_FCGI, installLine


def chooseTargets(args: argparse.Namespace, context: Context, notes: list[str]) -> list[str]:
    """The targets to run: those asked for whose tools exist, with a note for each left out."""
    names = args.targets.split(",") if args.targets else list(STARTERS)
    if args.baseline is None:
        names = [name for name in names if name != "txfastcgi-baseline"]
    elif "txfastcgi-baseline" not in names:
        names.insert(1, "txfastcgi-baseline")
    if args.quick and not args.targets:
        names.remove("bare")
    unknown = set(names) - set(STARTERS)
    if unknown:
        raise SystemExit(f"unknown targets: {', '.join(sorted(unknown))}")
    chosen = []
    for name in names:
        tool, _ = STARTERS[name]
        if tool == "jetty" and tool not in context.tools:
            notes.append(
                f"{name}: left out, {JETTY_FCGI} is missing"
                " (apt-get install -y jetty9 libjetty9-extra-java)"
            )
            continue
        if tool is not None and tool not in context.tools:
            notes.append(f"{name}: left out, {tool} is not installed ({installLine([tool])})")
            continue
        if name == "txfastcgi-pypy" and context.pypy is None:
            notes.append(f"{name}: left out, no PyPy ({installLine(['pypy3'])}, or --pypy PATH)")
            continue
        if name == "jetty" and "java" not in context.tools:
            notes.append(f"{name}: left out, java is not installed")
            continue
        if name == "txfastcgi-w2" and "--workers" not in twistHelp(context):
            notes.append("txfastcgi-w2: left out, this checkout's fastcgi-proxy has no --workers")
            continue
        chosen.append(name)
    return chosen


def chooseScenarios(
    args: argparse.Namespace, tools: dict[str, str], notes: list[str]
) -> list[Scenario]:
    """The scenarios of this mode; HTTP/2 only when h2load and openssl exist."""
    if args.scenarios:
        names = args.scenarios.split(",")
        unknown = set(names) - {s.name for s in SCENARIOS}
        if unknown:
            raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
        chosen = [s for s in SCENARIOS if s.name in names]
    else:
        chosen = [s for s in SCENARIOS if s.quick or not args.quick]
    if any(s.http2 for s in chosen) and not {"h2load", "openssl"} <= tools.keys():
        notes.append("h2-tiny-c32: left out, it needs h2load (nghttp2-client) and openssl")
        chosen = [s for s in chosen if not s.http2]
    return chosen
