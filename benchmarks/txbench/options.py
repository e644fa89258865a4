"""The options of benchmarks/run.py."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .scenarios import SCENARIOS
from .targets import STARTERS

REPO = Path(__file__).resolve().parent.parent.parent


def parseArguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options of run.py, with the defaults of the mode (--quick or full) filled in."""
    parser = argparse.ArgumentParser(
        description="Benchmark txfastcgi against nginx, Caddy, Apache, Jetty, HAProxy, h2o"
        " and lighttpd in front of php-fpm, and check the targets of issue 12.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round of 3 s, 4 scenarios, no soak and no idle connections (a few minutes)",
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds over all targets (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--duration", type=float, help="seconds of load per run (default 4; 3 with --quick)"
    )
    parser.add_argument(
        "--soak",
        type=float,
        help="seconds of the RSS soak of txfastcgi (default 60; 0 with --quick)",
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        metavar="N",
        help="idle keep-alive client connections held open against txfastcgi to measure"
        " their memory (default 10000; 0 with --quick)",
    )
    parser.add_argument(
        "--targets", help=f"comma-separated, from {','.join(STARTERS)} (default: all installed)"
    )
    parser.add_argument(
        "--jetty-warm-up",
        type=float,
        default=15.0,
        metavar="S",
        help="seconds of tiny-c32 load on Jetty and on txfastcgi-pypy before the rounds, for"
        " their JITs (default 15; the others get 2)",
    )
    parser.add_argument(
        "--scenarios", help=f"comma-separated, from {','.join(s.name for s in SCENARIOS)}"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results",
        help="where the table, JSON and chart go (default benchmarks/results)",
    )
    parser.add_argument(
        "--repo",
        type=Path,
        default=REPO,
        help="the txfastcgi checkout to measure (default: this one)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (an earlier commit, say) measured as target txfastcgi-baseline"
        " in the same rounds, for a before/after comparison",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter that runs txfastcgi (default: this one)",
    )
    parser.add_argument(
        "--proxy-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for fastcgi-proxy, repeatable (--proxy-arg=--max-connections=4)",
    )
    parser.add_argument(
        "--txfastcgi-args",
        default="",
        metavar="ARGS",
        help="extra arguments for every fastcgi-proxy target, split as a shell does"
        ' (--txfastcgi-args "--max-connections 4 --max-body-size 8M")',
    )
    parser.add_argument(
        "--pypy",
        default=None,
        metavar="PATH",
        help="the PyPy interpreter of target txfastcgi-pypy (default: pypy3 if installed)",
    )
    parser.add_argument(
        "--svg", action="store_true", help="draw the chart as SVG even if matplotlib is installed"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile txfastcgi under one scenario instead (--profile-scenario)",
    )
    parser.add_argument(
        "--profile-scenario",
        default="tiny-c32",
        choices=[s.name for s in SCENARIOS if not s.http2],
        help="the load while profiling (default tiny-c32)",
    )
    parser.add_argument(
        "--profiler",
        choices=("py-spy", "cprofile"),
        default="py-spy",
        help="py-spy if installed (default; else cProfile); cProfile counts calls exactly",
    )
    parser.add_argument(
        "--profile-seconds", type=float, default=15, help="seconds of profiling (default 15)"
    )
    parser.add_argument("--profile-top", type=int, default=25, help="functions listed (default 25)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (configs and logs)"
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 4.0)
    args.soak = args.soak if args.soak is not None else (0.0 if args.quick else 60.0)
    if args.idle_connections is None:
        args.idle_connections = 0 if args.quick else 10_000
    args.proxyArgs = [*args.proxy_arg, *shlex.split(args.txfastcgi_args)]
    args.repo = args.repo.resolve()
    args.baseline = args.baseline and args.baseline.resolve()
    return args
