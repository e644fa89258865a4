"""What a front-end starter needs, and what it returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .processes import Processes
from .scenarios import WARM_UP


@dataclass
class Target:
    """A front-end under test: its process, its ports, what it is."""

    name: str
    description: str
    pid: int
    port: int
    tlsPort: int | None = None
    onlyTiny: bool = False
    # HAProxy's fcgi-app sends every request to php-fpm: it serves no files.
    servesFiles: bool = True
    # Processes that share the listening socket (--workers N).
    workers: int = 1
    # The Python implementation of a txfastcgi target (CPython, PyPy).
    interpreter: str | None = None

    def url(self, path: str, tls: bool = False) -> str:
        if tls:
            return f"https://127.0.0.1:{self.tlsPort}{path}"
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class Context:
    """What the front-end starters need: where things are, which tools, the pools."""

    work: Path
    docroot: Path
    tools: dict[str, str]
    processes: Processes
    sockets: dict[str, Path]
    python: str
    repo: Path
    cert: tuple[Path, Path] | None
    # Another checkout measured beside this one in the same rounds (--baseline).
    baseline: Path | None = None
    # Extra arguments for every fastcgi-proxy target (--proxy-arg, --txfastcgi-args).
    proxyArgs: Sequence[str] = ()
    # The interpreter of the txfastcgi-pypy target (--pypy), if any.
    pypy: str | None = None
    # The pools on loopback TCP rather than a unix socket: Jetty's.
    ports: dict[str, int] = field(default_factory=dict)
    jettyWarmUp: float = WARM_UP

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"
