"""
Running the real ``twist fastcgi-proxy`` (or ``twistd``) from this checkout
in a child process, and talking to it like a browser would.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
# twistd, run by this interpreter (its module has no ``__main__``).
TWISTD = ["-c", "from twisted.scripts.twistd import run; run()"]


@dataclass
class Proxy:
    """A running ``twist fastcgi-proxy``."""

    process: subprocess.Popen[bytes]
    port: int
    logPath: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.logPath.read_text(errors="replace")


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def startProxy(arguments: list[str], logPath: Path) -> Proxy:
    """Start ``twist fastcgi-proxy`` (from this checkout) on a free port."""
    port = freePort()
    command = ["-m", "twisted", "fastcgi-proxy", "--listen", f"tcp:{port}", *arguments]
    return startServer(command, port, logPath)


def startServer(
    arguments: list[str], port: int, logPath: Path, environment: dict[str, str] | None = None
) -> Proxy:
    """
    Run Python with C{arguments} and this checkout on its path, and wait
    until it accepts connections on C{port}.
    """
    log = logPath.open("wb")
    process = subprocess.Popen(
        [sys.executable, *arguments],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(REPOSITORY), **(environment or {})),
        cwd=logPath.parent,
    )
    proxy = Proxy(process, port, logPath)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{arguments} exited with {process.returncode}:\n{proxy.log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proxy
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail(f"{arguments} did not listen within 20 s:\n{proxy.log()}")


def stopProxy(proxy: Proxy) -> None:
    proxy.process.terminate()
    try:
        proxy.process.wait(10)
    except subprocess.TimeoutExpired:
        proxy.process.kill()
        proxy.process.wait()


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Browser:
    """urllib with a cookie jar: cookies kept, redirects followed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def request(
        self,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        method: str | None = None,
    ) -> Response:
        request = urllib.request.Request(
            self.base + path, data=data, headers=headers or {}, method=method
        )
        try:
            with self.opener.open(request, timeout=30) as answer:
                return Response(answer.status, answer.headers, answer.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, error.headers, error.read())


def rawRequest(proxy: Proxy, method: str, path: str, **headers: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    connection.request(method, path, headers=headers)
    return connection.getresponse()


def cpuTicks(pid: int) -> int:
    """User and system CPU time of a process so far, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def childrenRunning(parent: int, marker: str) -> list[int]:
    """Processes whose parent is C{parent} and whose command line contains C{marker}."""
    found = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            parentOfThis = int(status.read_text().rpartition(")")[2].split()[1])
            commandLine = (status.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if parentOfThis == parent and marker.encode() in commandLine:
            found.append(int(status.parent.name))
    return found
