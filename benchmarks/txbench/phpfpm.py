"""One php-fpm master with an identical pool per front-end."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

from .context import Context
from .processes import freePort, waitFor
from .targets.jetty import TCP_POOLS

PHP_WORKERS = 4


def writePHPFPMConfig(work: Path, pools: Sequence[str], ports: dict[str, int]) -> dict[str, Path]:
    """
    One php-fpm master, one identical pool per front-end, each on its own
    unix socket, or on the loopback TCP port C{ports} gives for it; returns
    the socket of each pool on a unix socket.
    """
    run = work / "run"
    lines = [
        "[global]",
        f"pid = {run / 'php-fpm.pid'}",
        f"error_log = {work / 'logs' / 'php-fpm.log'}",
        "daemonize = no",
    ]
    sockets: dict[str, Path] = {}
    for pool in pools:
        if pool in ports:
            listen = [f"listen = 127.0.0.1:{ports[pool]}"]
        else:
            sockets[pool] = run / f"php-{pool}.sock"
            listen = [f"listen = {sockets[pool]}", "listen.mode = 0666"]
        lines += [
            f"[{pool}]",
            *listen,
            # Running as root, php-fpm refuses a pool without a user.
            "user = www-data",
            "group = www-data",
            "pm = static",
            f"pm.max_children = {PHP_WORKERS}",
        ]
    (work / "php-fpm.conf").write_text("\n".join(lines) + "\n")
    return sockets


def startPHPFPM(context: Context, pools: Sequence[str]) -> None:
    """The php-fpm master with one pool per front-end; returns once every socket exists."""
    context.ports = {pool: freePort() for pool in pools if pool in TCP_POOLS}
    context.sockets = writePHPFPMConfig(context.work, pools, context.ports)
    config = context.work / "php-fpm.conf"
    argv = [context.tools["php-fpm"], "--nodaemonize", "--fpm-config", str(config)]
    process = context.processes.start("php-fpm", argv, context.log("php-fpm-stdout"))

    def listening(port: int) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    def ready() -> bool:
        return process.poll() is not None or (
            all(s.exists() for s in context.sockets.values())
            and all(listening(port) for port in context.ports.values())
        )

    waitFor(ready, "php-fpm sockets")
    if process.poll() is not None:
        errors = (context.work / "logs" / "php-fpm.log").read_text()
        raise RuntimeError(f"php-fpm exited: {errors}")
