"""The outside programs the benchmark uses: found, versioned, or reported missing."""

from __future__ import annotations

import glob
import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
JETTY_HOME = "/usr/share/jetty9"
JETTY_FCGI = f"{JETTY_HOME}/lib/fcgi"


@dataclass(frozen=True)
class Tool:
    """An outside program the benchmark uses, and the Debian package that has it."""

    name: str
    patterns: tuple[str, ...]
    package: str
    required: bool
    purpose: str


TOOLS = (
    Tool("wrk", ("wrk",), "wrk", True, "HTTP/1.1 load generator"),
    Tool("php-fpm", ("php-fpm", "php-fpm[0-9]*"), "php-fpm", True, "the PHP backend"),
    Tool("nginx", ("nginx",), "nginx-light", False, "the reference front-end (ratios)"),
    Tool("caddy", ("caddy",), "caddy", False, "peer front-end"),
    Tool("apache2", ("apache2",), "apache2", False, "peer front-end"),
    # Jetty 9.4's FastCGI jars: a directory, looked up by its absolute path.
    Tool(
        "jetty",
        (JETTY_FCGI,),
        "jetty9 libjetty9-extra-java",
        False,
        "peer front-end (Jetty 9.4 FastCGIProxyServlet)",
    ),
    Tool("java", ("java",), "default-jre-headless", False, "runs Jetty"),
    Tool("haproxy", ("haproxy",), "haproxy", False, "peer front-end (HAProxy 2.6 fcgi-app)"),
    Tool("h2o", ("h2o",), "h2o", False, "peer front-end (h2o 2.2)"),
    Tool("lighttpd", ("lighttpd",), "lighttpd", False, "peer front-end (lighttpd 1.4)"),
    Tool("pypy3", ("pypy3",), "pypy3", False, "runs txfastcgi under PyPy (target txfastcgi-pypy)"),
    Tool("h2load", ("h2load",), "nghttp2-client", False, "HTTP/2 load generator"),
    Tool("openssl", ("openssl",), "openssl", False, "a throw-away certificate for HTTP/2"),
)


def findTool(tool: Tool) -> str | None:
    """
    The path of C{tool}, looked up on PATH and then in the sbin directories,
    which a non-root PATH often lacks although php-fpm and nginx live there.
    An absolute pattern (Jetty's jar directory) is looked up as it is.
    """
    directories = [*os.environ.get("PATH", "").split(os.pathsep), *SBIN]
    for pattern in tool.patterns:
        if os.path.isabs(pattern):
            if os.path.exists(pattern):
                return pattern
            continue
        for directory in directories:
            if not directory:
                continue
            for candidate in sorted(glob.glob(os.path.join(directory, pattern)), reverse=True):
                if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                    return candidate
    return None


def checkTools(wanted: Sequence[str]) -> dict[str, str]:
    """
    Find every tool, print what is missing with the line that installs it,
    and exit if a required one is missing. Nothing is installed here: a
    benchmark that changes the machine it measures is not one to trust.
    """
    found: dict[str, str] = {}
    missing: list[Tool] = []
    for tool in TOOLS:
        if tool.name not in wanted and not tool.required:
            continue
        path = findTool(tool)
        if path is None:
            missing.append(tool)
        else:
            found[tool.name] = path
    if missing:
        for tool in missing:
            kind = "required" if tool.required else "optional, left out"
            print(f"missing: {tool.name} ({tool.purpose}; {kind})")
        print(f"install with: apt-get update && {installLine(t.name for t in missing)}")
    if any(tool.required for tool in missing):
        raise SystemExit(2)
    return found


def commandOutput(argv: Sequence[str]) -> str:
    """The first line a version command prints, on stdout or stderr."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "?"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def installLine(names: Iterable[str]) -> str:
    """The apt-get line that installs the tools C{names}."""
    wanted = set(names)
    packages = sorted({tool.package for tool in TOOLS if tool.name in wanted})
    return f"apt-get install -y {' '.join(packages)}"
