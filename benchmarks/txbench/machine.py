"""What a run was measured on."""

from __future__ import annotations

import contextlib
import glob
import os
import platform
import subprocess
from pathlib import Path

from .context import Context
from .scenarios import MIB
from .tools import JETTY_HOME, commandOutput

# What the report calls each tool, the tool, and the flag that prints its version.
VERSION_FLAGS = (
    ("nginx", "nginx", "-v"),
    ("caddy", "caddy", "version"),
    ("apache", "apache2", "-v"),
    ("haproxy", "haproxy", "-v"),
    ("h2o", "h2o", "--version"),
    ("lighttpd", "lighttpd", "-v"),
    ("h2load", "h2load", "--version"),
)


def describeMachine(context: Context, tools: dict[str, str]) -> dict[str, str]:
    """What was measured on: the CPU, the versions, and how busy the machine was."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = f"{kb / MIB:.0f} GiB"
    pythonVersion = commandOutput(
        [
            context.python,
            "-c",
            "import platform as p, twisted as t;"
            "print(p.python_implementation(), p.python_version(), '/ Twisted', t.__version__)",
        ]
    )
    describe = ["git", "-C", str(context.repo), "describe", "--always", "--dirty"]
    done = subprocess.run(describe, capture_output=True, text=True, check=False)
    git = done.stdout.strip() if done.returncode == 0 else "(not a git checkout)"
    machine = {
        "cpu": f"{model}, {os.cpu_count()} cores, {memory} RAM",
        "kernel": platform.release(),
        "python (txfastcgi)": pythonVersion,
        "txfastcgi": f"{context.repo} at {git}",
        "php-fpm": commandOutput([tools["php-fpm"], "-v"]),
        "wrk": commandOutput([tools["wrk"], "-v"]).split(" Copyright")[0],
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    for key, tool, flag in VERSION_FLAGS:
        if tool in tools:
            machine[key] = commandOutput([tools[tool], flag])
    if "jetty" in tools and "java" in tools:
        jars = glob.glob(f"{JETTY_HOME}/lib/jetty-server-*.jar")
        version = jars[0].rpartition("jetty-server-")[2].removesuffix(".jar") if jars else "?"
        machine["jetty"] = f"Jetty {version}; {commandOutput([tools['java'], '-version'])}"
    if context.pypy:
        machine["pypy (txfastcgi-pypy)"] = commandOutput([context.pypy, "--version"])
    return machine
