#!/usr/bin/env python3
"""
Benchmark txfastcgi against nginx, Caddy, Apache and Jetty in front of identical php-fpm pools.

One command, from a clone of the repository::

    python3 benchmarks/run.py --quick      # about a minute
    python3 benchmarks/run.py              # the full run, about 10 minutes
    python3 benchmarks/run.py --profile    # py-spy (or cProfile) of txfastcgi, tiny responses

Everything runs on loopback. The script writes a PHP document root into a
temporary directory, starts one php-fpm master with one identical pool per
front-end (``pm = static``, 4 workers, each pool on its own unix socket: a
front-end's idle kept FastCGI connections pin workers, so sharing a pool would
let one front-end starve another; Jetty 9.4's pool listens on loopback TCP, as
its FastCGI client has no unix sockets), starts each front-end, and runs ``wrk``
against them round-robin, several rounds, taking the median. It samples each
front-end's CPU time and RSS from ``/proc`` while the load runs, and writes
the table as text, JSON and reStructuredText, plus a chart. Every front-end
gets 2 s of load before the rounds, and Jetty 15 s (``--jetty-warm-up``):
issue 5 compares against Jetty once its JIT is warm.

It installs nothing: missing tools are reported with the ``apt-get`` line
that brings them, and optional peers that are missing are left out. Every
process it starts is stopped by PID on exit, Ctrl-C or error.

txfastcgi runs from the checkout (``python -m twisted fastcgi-proxy`` with
``PYTHONPATH`` set to the repository), so it needs no install either.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import html
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
PHP_WORKERS = 4
# Seconds of tiny-c32 load on each front-end before the rounds (Jetty: --jetty-warm-up).
WARM_UP = 2.0
HELLO = b"Hello, world!\n"
STATIC_SIZE = 16 * 1024
POST_SIZE = MIB
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
JETTY_HOME = "/usr/share/jetty9"
JETTY_FCGI = f"{JETTY_HOME}/lib/fcgi"


# --------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------


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
        packages = " ".join(sorted({tool.package for tool in missing}))
        print(f"install with: apt-get update && apt-get install -y {packages}")
    if any(tool.required for tool in missing):
        raise SystemExit(2)
    return found


# --------------------------------------------------------------------------
# Processes: start, watch, stop
# --------------------------------------------------------------------------


def _dieWithParent() -> None:
    """
    Run in the child before exec: ask Linux to send SIGTERM to it if this
    script dies without cleaning up (SIGKILL), so no server outlives it.
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        prSetPdeathsig = 1
        libc.prctl(prSetPdeathsig, signal.SIGTERM)


class Processes:
    """
    Every process this script starts, to be stopped by PID, children of
    each too, in reverse order of start, on any exit.
    """

    def __init__(self) -> None:
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._descendants: dict[int, set[int]] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start C{argv} in its own session, its output in C{log}."""
        with open(log, "ab") as output:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_dieWithParent,
            )
        self._started.append((name, process))
        return process

    def remember(self, pid: int) -> None:
        """Note the current descendants of C{pid}, so that orphans can be stopped too."""
        self._descendants.setdefault(pid, set()).update(processTree(pid)[1:])

    def stopAll(self) -> None:
        """SIGTERM each process, then SIGKILL what is still there after a grace time."""
        while self._started:
            name, process = self._started.pop()
            if process.poll() is None:
                self.remember(process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    print(f"{name} ({process.pid}) ignored SIGTERM; killing it")
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    process.wait()
            for pid in self._descendants.pop(process.pid, set()):
                if _alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether C{pid} is a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def processTree(root: int) -> list[int]:
    """C{root} and all its live descendants, from C{/proc}."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree = [root]
    for pid in tree:
        tree.extend(children.get(pid, ()))
    return tree


def cpuTicks(pid: int) -> int:
    """
    User plus system clock ticks of C{pid}, with those of its reaped children
    (so an Apache child that exits during a run still counts).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    # After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(int(value) for value in fields[11:15])


def statusKB(pid: int, key: str) -> int:
    """A C{kB} line of C{/proc/PID/status}: VmRSS, VmHWM."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """
    CPU time and RSS of a process tree over one load run.

    CPU is read once at the start and once at the end (ticks are exact, a
    sample in between adds nothing); RSS is sampled every C{interval} seconds
    in a thread, since only the peak during this run is wanted and VmHWM is a
    peak over the process's whole life.
    """

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self._root = root
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._startTicks: dict[int, int] = {}
        self.peakRSSKB = 0
        self.rssSeries: list[tuple[float, int]] = []
        self.cpuSeconds = 0.0

    def __enter__(self) -> Sampler:
        self._startTicks = {pid: cpuTicks(pid) for pid in processTree(self._root)}
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        endTicks = {pid: cpuTicks(pid) for pid in processTree(self._root)}
        ticks = sum(end - self._startTicks.get(pid, 0) for pid, end in endTicks.items())
        self.cpuSeconds = max(0, ticks) / CLOCK_TICKS

    def _sample(self) -> None:
        tree = processTree(self._root)
        lastScan = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - lastScan > 1.0:
                # Apache starts children as load grows.
                tree = processTree(self._root)
                lastScan = now
            rss = sum(statusKB(pid, "VmRSS") for pid in tree)
            self.peakRSSKB = max(self.peakRSSKB, rss)
            self.rssSeries.append((now - self._started, rss))
            self._stop.wait(self._interval)


def freePort() -> int:
    """A loopback TCP port free right now (another process could take it; unlikely)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def waitFor(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll C{check} until it holds, or fail saying C{what} never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def fetch(url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP request with the standard library: status and body."""
    request = urllib.request.Request(url, data=body)
    if body is not None:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def commandOutput(argv: Sequence[str]) -> str:
    """The first line a version command prints, on stdout or stderr."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "?"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


# --------------------------------------------------------------------------
# The document root and php-fpm
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One load: a path, a concurrency, and how the response is checked first."""

    name: str
    path: str
    connections: int
    description: str
    expectBytes: int
    post: bool = False
    http2: bool = False
    quick: bool = False

    @property
    def tiny(self) -> bool:
        return self.path == "/hello.php"


SCENARIOS = (
    Scenario("tiny-c1", "/hello.php", 1, "14 B PHP response, 1 connection", len(HELLO)),
    Scenario(
        "tiny-c32", "/hello.php", 32, "14 B PHP response, 32 connections", len(HELLO), quick=True
    ),
    Scenario("tiny-c256", "/hello.php", 256, "14 B PHP response, 256 connections", len(HELLO)),
    Scenario("100k-c32", "/100k.php", 32, "100 KiB PHP response, 32 connections", 100 * 1024),
    Scenario("1m-c32", "/1m.php", 32, "1 MiB PHP response, 32 connections", MIB, quick=True),
    Scenario(
        "post1m-c32",
        "/post.php",
        32,
        "1 MiB POST body read by PHP, 32 connections",
        len(str(POST_SIZE)) + 1,
        post=True,
        quick=True,
    ),
    Scenario("static-c32", "/static.css", 32, "16 KiB static file, 32 connections", STATIC_SIZE),
    Scenario(
        "h2-tiny-c32",
        "/hello.php",
        32,
        "14 B PHP response over HTTP/2 + TLS (h2load), 32 connections",
        len(HELLO),
        http2=True,
    ),
)

PHP_FILES = {
    "hello.php": '<?php echo "Hello, world!\\n";\n',
    "100k.php": "<?php header('Content-Type: application/octet-stream'); "
    "echo str_repeat('x', 102400);\n",
    "1m.php": "<?php header('Content-Type: application/octet-stream'); "
    "echo str_repeat('x', 1048576);\n",
    "post.php": "<?php header('Content-Type: text/plain'); $in = fopen('php://input', 'rb'); "
    '$n = 0; while (!feof($in)) { $n += strlen(fread($in, 65536)); } echo $n, "\\n";\n',
    "index.php": '<?php echo "index ", $_SERVER["REQUEST_URI"], "\\n";\n',
}

POST_LUA = f"""-- 1 MiB POST body for wrk, built once: wrk then reuses the request bytes.
wrk.method = "POST"
wrk.body = string.rep("x", {POST_SIZE})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def writeDocumentRoot(root: Path) -> None:
    """
    The PHP and static files every front-end serves. World-readable, since
    php-fpm workers run as www-data and the temporary directory is root's.
    """
    root.mkdir(mode=0o755)
    for name, source in PHP_FILES.items():
        (root / name).write_text(source)
    (root / "static.css").write_bytes(b"/* static */\n".ljust(STATIC_SIZE - 1, b"x") + b"\n")
    for path in root.iterdir():
        path.chmod(0o644)


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


# --------------------------------------------------------------------------
# Front-ends
# --------------------------------------------------------------------------


@dataclass
class Target:
    """A front-end under test: its process, its ports, what it is."""

    name: str
    description: str
    pid: int
    port: int
    tlsPort: int | None = None
    reference: bool = False
    onlyTiny: bool = False

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
    proxyArgs: Sequence[str] = ()
    # The pools on loopback TCP rather than a unix socket: Jetty's.
    ports: dict[str, int] = field(default_factory=dict)
    jettyWarmUp: float = WARM_UP

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"


def twistHelp(context: Context) -> str:
    """C{twist fastcgi-proxy --help} of the checkout, to see which options exist."""
    done = subprocess.run(
        [context.python, "-m", "twisted", "fastcgi-proxy", "--help"],
        capture_output=True,
        text=True,
        env=txfastcgiEnvironment(context.repo),
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


def txfastcgiEnvironment(repo: Path) -> dict[str, str]:
    """The environment that makes C{python -m twisted} find the checkout's plugin."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH", "")]))
    return env


def txfastcgiArguments(context: Context, pool: str, port: int) -> list[str]:
    """
    The options of C{fastcgi-proxy}: default FastCGI settings, and no access
    log (C{/dev/null}, which formats no line), as the peers write none
    (nginx has C{access_log off}).
    """
    return [
        "--php-fpm",
        f"unix:{context.sockets[pool]}",
        "--path",
        str(context.docroot),
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--access-log",
        "/dev/null",
        *context.proxyArgs,
    ]


def startTxfastcgi(context: Context, name: str, workers: int, repo: Path | None = None) -> Target:
    """
    C{python -m twisted fastcgi-proxy} from the checkout (or from C{repo}),
    with C{--workers} if more than 1.
    """
    port = freePort()
    argv = [context.python, "-m", "twisted", "fastcgi-proxy"]
    argv += txfastcgiArguments(context, name, port)
    tlsPort = None
    if context.cert is not None and workers == 1:
        # --workers shares only plain listening sockets.
        tlsPort = freePort()
        key, cert = context.cert
        argv += ["--listen", f"ssl:{tlsPort}:interface=127.0.0.1:privateKey={key}:certKey={cert}"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    process = context.processes.start(
        name, argv, context.log(name), env=txfastcgiEnvironment(repo or context.repo)
    )
    label = f"twist fastcgi-proxy, {workers} process{'es' if workers > 1 else ''}"
    if repo is not None:
        label += f", from {repo}"
    return Target(name, label, process.pid, port, tlsPort)


def startNginx(context: Context, name: str) -> Target:
    """
    nginx with one worker, the usual try_files + fastcgi_pass, and no
    upstream keepalive (nginx's default: one FastCGI connection per request).
    """
    port = freePort()
    prefix = context.work / "nginx"
    prefix.mkdir(mode=0o755)
    tls = ""
    tlsPort = None
    if context.cert is not None:
        tlsPort = freePort()
        key, cert = context.cert
        tls = (
            f"listen 127.0.0.1:{tlsPort} ssl http2;\n"
            f"    ssl_certificate {cert};\n    ssl_certificate_key {key};"
        )
    (prefix / "nginx.conf").write_text(
        f"""
daemon off;
worker_processes 1;
user www-data;
pid {prefix / "nginx.pid"};
error_log {context.log(name)};
events {{ worker_connections 4096; }}
http {{
  include /etc/nginx/mime.types;
  access_log off;
  client_max_body_size 100m;
  client_body_temp_path {prefix / "client_body"};
  fastcgi_temp_path {prefix / "fastcgi"};
  proxy_temp_path {prefix / "proxy"};
  uwsgi_temp_path {prefix / "uwsgi"};
  scgi_temp_path {prefix / "scgi"};
  upstream php {{ server unix:{context.sockets[name]}; }}
  server {{
    listen 127.0.0.1:{port};
    {tls}
    root {context.docroot};
    index index.php;
    location / {{ try_files $uri $uri/ /index.php?$args; }}
    location ~ [^/]\\.php(/|$) {{
      fastcgi_split_path_info ^(.+?\\.php)(/.*)$;
      try_files $fastcgi_script_name =404;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
      fastcgi_param PATH_INFO $fastcgi_path_info;
      fastcgi_pass php;
    }}
  }}
}}
"""
    )
    argv = [context.tools["nginx"], "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    process = context.processes.start(name, argv, context.log(name))
    target = Target(name, "nginx, 1 worker, no upstream keepalive", process.pid, port, tlsPort)
    target.reference = True
    return target


def startCaddy(context: Context, name: str) -> Target:
    """Caddy with C{php_fastcgi} and C{file_server}, no admin API, no automatic HTTPS."""
    port = freePort()
    home = context.work / "caddy"
    home.mkdir()
    tls = ""
    tlsPort = None
    if context.cert is not None:
        tlsPort = freePort()
        key, cert = context.cert
        tls = f"https://127.0.0.1:{tlsPort} {{\n  import site\n  tls {cert} {key}\n}}\n"
    (home / "Caddyfile").write_text(
        f"""{{
  admin off
  auto_https off
  storage file_system {home}
}}
(site) {{
  root * {context.docroot}
  php_fastcgi unix/{context.sockets[name]}
  file_server
}}
http://127.0.0.1:{port} {{
  import site
}}
{tls}"""
    )
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home), XDG_CONFIG_HOME=str(home))
    argv = [context.tools["caddy"], "run", "--config", str(home / "Caddyfile")]
    argv += ["--adapter", "caddyfile"]
    process = context.processes.start(name, argv, context.log(name), env=env, cwd=home)
    return Target(name, "Caddy php_fastcgi (defaults)", process.pid, port, tlsPort)


def startApache(context: Context, name: str) -> Target:
    """
    Apache 2.4 with mpm_event (compiled-in defaults) and mod_proxy_fcgi over
    the pool's unix socket, no connection reuse (its default).
    """
    port = freePort()
    home = context.work / "apache"
    home.mkdir(mode=0o755)
    modules = "/usr/lib/apache2/modules"
    wanted = ["mpm_event", "authz_core", "proxy", "proxy_fcgi", "dir", "mime"]
    tls = ""
    tlsPort = None
    if context.cert is not None and os.path.exists(f"{modules}/mod_http2.so"):
        tlsPort = freePort()
        key, cert = context.cert
        wanted += ["socache_shmcb", "ssl", "http2"]
        tls = f"""Listen 127.0.0.1:{tlsPort}
<VirtualHost 127.0.0.1:{tlsPort}>
  Protocols h2 http/1.1
  SSLEngine on
  SSLCertificateFile {cert}
  SSLCertificateKeyFile {key}
</VirtualHost>
"""
    loads = "\n".join(f"LoadModule {m}_module {modules}/mod_{m}.so" for m in wanted)
    (home / "apache.conf").write_text(
        f"""ServerRoot /etc/apache2
DefaultRuntimeDir {home}
PidFile {home / "apache.pid"}
Mutex file:{home} default
ErrorLog {context.log(name)}
Listen 127.0.0.1:{port}
{loads}
TypesConfig /etc/mime.types
User www-data
Group www-data
ServerName 127.0.0.1
DocumentRoot {context.docroot}
DirectoryIndex index.php
<Directory {context.docroot}>
  Require all granted
</Directory>
<FilesMatch "\\.php$">
  SetHandler "proxy:unix:{context.sockets[name]}|fcgi://localhost/"
</FilesMatch>
{tls}"""
    )
    argv = [context.tools["apache2"], "-f", str(home / "apache.conf"), "-D", "FOREGROUND"]
    process = context.processes.start(name, argv, context.log(name))
    return Target(name, "Apache mpm_event + mod_proxy_fcgi", process.pid, port, tlsPort)


# Jetty 9.4's FastCGIProxyServlet reaches php-fpm over TCP only (a unix
# socket came with Jetty 10), so its pool listens on a loopback port.
TCP_POOLS = frozenset({"jetty"})

JETTY_CONTEXT = """<?xml version="1.0"?>
<!DOCTYPE Configure PUBLIC "-//Jetty//Configure//EN" "http://www.eclipse.org/jetty/configure_9_3.dtd">
<!-- The PHP setup of Jetty's FastCGI documentation: try_files, then the proxy. -->
<Configure class="org.eclipse.jetty.servlet.ServletContextHandler">
  <New id="root" class="java.lang.String"><Arg>{root}</Arg></New>
  <Set name="contextPath">/</Set>
  <Set name="resourceBase"><Ref refid="root"/></Set>
  <Set name="welcomeFiles"><Array type="string"><Item>index.php</Item></Array></Set>
  <Call name="addFilter">
    <Arg>org.eclipse.jetty.fcgi.server.proxy.TryFilesFilter</Arg>
    <Arg>/*</Arg>
    <Arg><Call name="of" class="java.util.EnumSet">
      <Arg><Get name="REQUEST" class="javax.servlet.DispatcherType"/></Arg>
    </Call></Arg>
    <Call name="setInitParameter"><Arg>files</Arg><Arg>$path /index.php?p=$path</Arg></Call>
  </Call>
  <Call name="addServlet">
    <Arg><New class="org.eclipse.jetty.servlet.ServletHolder">
      <Arg>default</Arg>
      <Arg><Call name="forName" class="java.lang.Class">
        <Arg>org.eclipse.jetty.servlet.DefaultServlet</Arg>
      </Call></Arg>
      <Call name="setInitParameter"><Arg>dirAllowed</Arg><Arg>false</Arg></Call>
    </New></Arg>
    <Arg>/</Arg>
  </Call>
  <Call name="addServlet">
    <Arg>org.eclipse.jetty.fcgi.server.proxy.FastCGIProxyServlet</Arg>
    <Arg>*.php</Arg>
    <Call name="setInitParameter"><Arg>proxyTo</Arg><Arg>http://127.0.0.1:{port}</Arg></Call>
    <Call name="setInitParameter"><Arg>prefix</Arg><Arg>/</Arg></Call>
    <Call name="setInitParameter"><Arg>scriptRoot</Arg><Arg><Ref refid="root"/></Arg></Call>
    <Call name="setInitParameter"><Arg>scriptPattern</Arg><Arg>(.+?\\.php)</Arg></Call>
  </Call>
</Configure>
"""


def startJetty(context: Context, name: str) -> Target:
    """
    Jetty 9.4 from Debian's packages: a base with the http, deploy and fcgi
    modules, and one context of TryFilesFilter + DefaultServlet +
    FastCGIProxyServlet with its default settings (HttpClient's connection
    pool, the default thread pool, the JVM's default heap).
    """
    java = context.tools["java"]
    port = freePort()
    base = context.work / "jetty"
    (base / "webapps").mkdir(parents=True)
    setup = subprocess.run(
        [
            *(java, "-jar", f"{JETTY_HOME}/start.jar"),
            *(f"jetty.home={JETTY_HOME}", f"jetty.base={base}"),
            *("--create-startd", "--add-to-start=http,deploy,fcgi"),
        ],
        capture_output=True,
        text=True,
        cwd=base,
        timeout=120,
        check=False,
    )
    context.log(f"{name}-setup").write_text(setup.stdout + setup.stderr)
    if setup.returncode != 0:
        raise RuntimeError(f"{name}: the Jetty base was not created:\n{setup.stderr[-2000:]}")
    (base / "webapps" / "php.xml").write_text(
        JETTY_CONTEXT.replace("{root}", str(context.docroot)).replace(
            "{port}", str(context.ports[name])
        )
    )
    argv = [java, "-jar", f"{JETTY_HOME}/start.jar", f"jetty.home={JETTY_HOME}"]
    argv += [f"jetty.base={base}", "jetty.http.host=127.0.0.1", f"jetty.http.port={port}"]
    process = context.processes.start(name, argv, context.log(name), cwd=base)
    warm = max(WARM_UP, context.jettyWarmUp)
    label = f"Jetty 9.4 FastCGIProxyServlet (defaults, php-fpm on loopback TCP), {warm:g} s warm-up"
    return Target(name, label, process.pid, port)


BARE_SERVER = """
# A bare twisted.web resource that answers the same bytes without FastCGI:
# the ceiling for one CPython process, as issue 5 describes.
import sys
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

class Hello(Resource):
    isLeaf = True
    def render_GET(self, request):
        return b"Hello, world!\\n"

reactor.listenTCP(int(sys.argv[1]), Site(Hello()), interface="127.0.0.1")
reactor.run()
"""


def startBare(context: Context, name: str) -> Target:
    """A bare twisted.web process that answers the tiny response, as a ceiling."""
    port = freePort()
    script = context.work / "bare.py"
    script.write_text(BARE_SERVER)
    argv = [context.python, str(script), str(port)]
    process = context.processes.start(name, argv, context.log(name))
    target = Target(name, "bare twisted.web resource, no FastCGI (ceiling)", process.pid, port)
    target.onlyTiny = True
    return target


def makeCertificate(work: Path, openssl: str) -> tuple[Path, Path] | None:
    """A throw-away self-signed certificate for the HTTP/2 listeners."""
    key, cert = work / "key.pem", work / "cert.pem"
    done = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return None
    key.chmod(0o644)
    return key, cert


# --------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------


@dataclass
class Run:
    """One load run of one scenario against one target, and what it cost."""

    scenario: str
    target: str
    round: int
    requests: int
    seconds: float
    rps: float
    p50ms: float | None
    p99ms: float | None
    non2xx: int
    socketErrors: int
    cpuSeconds: float
    peakRSSMB: float
    errorKinds: str = ""
    output: str = ""
    meanMs: float | None = None
    connections: int = 0

    @property
    def cpuPer1000(self) -> float | None:
        return self.cpuSeconds / self.requests * 1000 if self.requests else None

    @property
    def servedConnections(self) -> float | None:
        """
        How many connections were being answered on average: req/s times the
        mean latency (Little's law). About the connections opened when every
        one is served; far fewer when a front-end leaves some waiting, which
        wrk does not report (a request still unanswered at the end of the run
        is neither counted nor timed).
        """
        return self.rps * self.meanMs / 1000 if self.meanMs is not None else None

    @property
    def starved(self) -> bool:
        """Whether fewer than half the connections were being answered."""
        served = self.servedConnections
        return self.connections > 1 and served is not None and served < self.connections / 2


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parseWrk(output: str) -> dict[str, Any]:
    """Requests, req/s, p50 and p99, non-2xx and socket errors from C{wrk --latency}."""
    requests = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if requests is None or rps is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", output, re.M))
    mean = re.search(r"^\s+Latency\s+([\d.]+(?:us|ms|s|m))\s", output, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "requests": int(requests[1]),
        "seconds": _milliseconds(requests[2] + requests[3]) / 1000,
        "rps": float(rps[1]),
        "p50ms": _milliseconds(percentiles["50"]) if "50" in percentiles else None,
        "p99ms": _milliseconds(percentiles["99"]) if "99" in percentiles else None,
        "meanMs": _milliseconds(mean[1]) if mean else None,
        "non2xx": int(non2xx[1]) if non2xx else 0,
        "socketErrors": sum(int(n) for n in errors.groups()) if errors else 0,
        "errorKinds": errors[0] if errors else "",
    }


def parseH2load(output: str) -> dict[str, Any]:
    """
    The same from C{h2load}, which reports a mean and no percentiles: p50 and
    p99 stay empty rather than be made up.
    """
    finished = re.search(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s", output)
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    requests = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored",
        output,
    )
    if finished is None or statuses is None or requests is None:
        raise RuntimeError(f"h2load printed no result:\n{output}")
    seconds = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    return {
        "requests": int(statuses[1]) + int(statuses[2]) + int(statuses[3]) + int(statuses[4]),
        "seconds": seconds,
        "rps": float(finished[3]),
        "p50ms": None,
        "p99ms": None,
        "non2xx": int(statuses[2]) + int(statuses[3]) + int(statuses[4]),
        "socketErrors": int(requests[2]) + int(requests[3]),
        "errorKinds": f"failed {requests[2]}, errored {requests[3]}",
    }


def runLoad(
    tools: dict[str, str],
    work: Path,
    scenario: Scenario,
    target: Target,
    duration: float,
    round: int,
) -> Run:
    """Load one target with one scenario while sampling the target's process tree."""
    if scenario.http2:
        argv = [tools["h2load"], "-t1", f"-c{scenario.connections}", "-m1"]
        argv += [f"-D{duration:g}", target.url(scenario.path, tls=True)]
        parse = parseH2load
    else:
        argv = [tools["wrk"], "-t1", f"-c{scenario.connections}", f"-d{duration:g}s", "--latency"]
        if scenario.post:
            argv += ["-s", str(work / "post.lua")]
        argv.append(target.url(scenario.path))
        parse = parseWrk
    with Sampler(target.pid) as sampler:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    output = done.stdout + done.stderr
    return Run(
        scenario=scenario.name,
        target=target.name,
        round=round,
        connections=scenario.connections,
        cpuSeconds=sampler.cpuSeconds,
        peakRSSMB=sampler.peakRSSKB / 1024,
        output=output,
        **parse(output),
    )


def _checkHTTP2(scenario: Scenario, target: Target) -> str | None:
    """The HTTP/2 check, with curl when it is there (the standard library speaks no HTTP/2)."""
    curl = shutil.which("curl")
    if curl is None:
        return None
    report = "%{http_version} %{http_code} %{size_download}"
    argv = [curl, "-sk", "--http2", "-o", "/dev/null", "-w", report]
    done = subprocess.run(
        [*argv, target.url(scenario.path, tls=True)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    version, status, size = [*done.stdout.split(), "?", "?", "?"][:3]
    if (version, status, size) != ("2", "200", str(scenario.expectBytes)):
        return (
            f"HTTP/{version} {status}, {size} bytes (expected HTTP/2 200, {scenario.expectBytes})"
        )
    return None


def check(scenario: Scenario, target: Target) -> str | None:
    """
    One request by hand before any load: the same status and size from every
    front-end, or the comparison would be of different work. None when fine.
    """
    body = b"x" * POST_SIZE if scenario.post else None
    if scenario.http2:
        return _checkHTTP2(scenario, target)
    status, content = fetch(target.url(scenario.path), body)
    if status != 200 or len(content) != scenario.expectBytes:
        return f"status {status}, {len(content)} bytes (expected 200, {scenario.expectBytes})"
    if scenario.post and content.strip() != str(POST_SIZE).encode():
        return f"PHP read {content.strip()!r} bytes of the {POST_SIZE} posted"
    return None


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------


@dataclass
class Row:
    """Medians over the rounds of one scenario and one target."""

    scenario: str
    target: str
    rounds: int
    rps: float
    p50ms: float | None
    p99ms: float | None
    cpuPer1000: float | None
    peakRSSMB: float
    non2xx: int
    socketErrors: int
    vsNginx: float | None
    vsCaddy: float | None
    servedConnections: float | None = None
    starved: bool = False


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def sameRoundRatio(
    runs: Sequence[Run], scenario: str, target: str, other: str, metric: str = "rps"
) -> float | None:
    """
    The median over rounds of C{target}'s metric over C{other}'s in the same
    round: the machine is shared and noisy, and a ratio taken within one
    round cancels most of what the neighbours did to both.
    """
    mine = {r.round: r for r in runs if r.scenario == scenario and r.target == target}
    theirs = {r.round: r for r in runs if r.scenario == scenario and r.target == other}
    ratios = []
    for round, run in mine.items():
        peer = theirs.get(round)
        if peer is None:
            continue
        a, b = getattr(run, metric), getattr(peer, metric)
        if a is not None and b:
            ratios.append(a / b)
    return statistics.median(ratios) if ratios else None


def summarise(
    runs: Sequence[Run], scenarios: Sequence[Scenario], targets: Sequence[str]
) -> list[Row]:
    """One row per scenario and target, in the order of the scenarios and targets."""
    rows = []
    for scenario in scenarios:
        for target in targets:
            mine = [r for r in runs if r.scenario == scenario.name and r.target == target]
            if not mine:
                continue
            rows.append(
                Row(
                    scenario=scenario.name,
                    target=target,
                    rounds=len(mine),
                    rps=statistics.median(r.rps for r in mine),
                    p50ms=_median([r.p50ms for r in mine]),
                    p99ms=_median([r.p99ms for r in mine]),
                    cpuPer1000=_median([r.cpuPer1000 for r in mine]),
                    peakRSSMB=max(r.peakRSSMB for r in mine),
                    non2xx=sum(r.non2xx for r in mine),
                    socketErrors=sum(r.socketErrors for r in mine),
                    vsNginx=sameRoundRatio(runs, scenario.name, target, "nginx"),
                    vsCaddy=sameRoundRatio(runs, scenario.name, target, "caddy"),
                    servedConnections=_median([r.servedConnections for r in mine]),
                    starved=sum(r.starved for r in mine) * 2 > len(mine),
                )
            )
    return rows


@dataclass
class Verdict:
    """One target of issue 5: met, missed, or not measured, and the numbers that say so."""

    goal: str
    status: str
    detail: str


def _verdict(
    goal: str, value: float | None, limit: float, higherIsBetter: bool, detail: str
) -> Verdict:
    if value is None:
        return Verdict(goal, "NOT MEASURED", "a peer or a scenario is missing from this run")
    met = value >= limit if higherIsBetter else value <= limit
    return Verdict(goal, "MET" if met else "MISSED", f"{value:.2f}x {detail}".strip())


def _jettyVerdict(runs: Sequence[Run]) -> Verdict:
    """
    txfastcgi against warm Jetty on the tiny response at 32 connections, and
    whether Jetty answered all 32 (with its default FastCGI client it may not:
    see L{Run.servedConnections}).
    """
    verdict = _verdict(
        "tiny response, c32: txfastcgi >= 1.0x Jetty (warm)",
        sameRoundRatio(runs, "tiny-c32", "txfastcgi", "jetty"),
        1.0,
        True,
        "of Jetty",
    )
    mine = [r for r in runs if r.scenario == "tiny-c32" and r.target == "jetty"]
    served = _median([r.servedConnections for r in mine])
    if served is not None and any(r.starved for r in mine):
        verdict.detail += (
            f"; but Jetty answered only about {served:.0f} of the 32 connections"
            " (the others waited), so its req/s is not for 32 clients"
        )
    return verdict


def verdicts(runs: Sequence[Run], soak: dict[str, Any] | None) -> list[Verdict]:
    """The targets of issue 5, read from this run's same-round ratios."""
    tx = "txfastcgi"
    result = [
        _verdict(
            "tiny response, c32: txfastcgi >= 1.0x Caddy",
            sameRoundRatio(runs, "tiny-c32", tx, "caddy"),
            1.0,
            True,
            "of Caddy",
        ),
        _jettyVerdict(runs),
        _verdict(
            "tiny response, c32: txfastcgi >= 0.5x nginx",
            sameRoundRatio(runs, "tiny-c32", tx, "nginx"),
            0.5,
            True,
            "of nginx",
        ),
        _verdict(
            "tiny response, c32: --workers 2 >= 1.0x Apache",
            sameRoundRatio(runs, "tiny-c32", "txfastcgi-w2", "apache"),
            1.0,
            True,
            "of Apache",
        ),
        _verdict(
            "1 MiB response, c32: txfastcgi >= 0.5x nginx",
            sameRoundRatio(runs, "1m-c32", tx, "nginx"),
            0.5,
            True,
            "of nginx",
        ),
        _verdict(
            "1 MiB POST, c32: txfastcgi >= 0.5x nginx",
            sameRoundRatio(runs, "post1m-c32", tx, "nginx"),
            0.5,
            True,
            "of nginx",
        ),
    ]
    p99 = {
        s.name: sameRoundRatio(runs, s.name, tx, "nginx", "p99ms")
        for s in SCENARIOS
        if s.connections == 32 and not s.http2
    }
    measured = {name: value for name, value in p99.items() if value is not None}
    worst = max(measured.values()) if measured else None
    each = ", ".join(f"{name} {value:.2f}x" for name, value in measured.items())
    result.append(
        _verdict(
            "p99 latency at c32 <= 2x nginx (every c32 scenario)",
            worst,
            2.0,
            False,
            f"worst; {each}",
        )
    )
    if soak is None:
        result.append(Verdict("RSS flat over a 60 s run", "NOT MEASURED", "no soak in this mode"))
    else:
        growth = soak["endMB"] - soak["startMB"]
        flat = growth <= max(2.0, 0.1 * soak["startMB"])
        result.append(
            Verdict(
                f"RSS flat over a {soak['seconds']:g} s run",
                "MET" if flat else "MISSED",
                f"{soak['startMB']:.1f} MB after warm-up, {soak['endMB']:.1f} MB at the end "
                f"({growth:+.1f} MB), {soak['requests']} requests",
            )
        )
    return result


# --------------------------------------------------------------------------
# Output: text, reStructuredText, JSON, chart
# --------------------------------------------------------------------------


COLUMNS = (
    "scenario",
    "target",
    "req/s",
    "vs nginx",
    "vs Caddy",
    "p50 ms",
    "p99 ms",
    "CPU s/1k req",
    "peak RSS MB",
    "non-2xx",
    "sock err",
)


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rowCells(row: Row) -> list[str]:
    """A row as the strings every table format shows."""
    return [
        row.scenario,
        row.target,
        f"{row.rps:.0f}{'*' if row.starved else ''}",
        "-" if row.vsNginx is None else f"{row.vsNginx:.2f}x",
        "-" if row.vsCaddy is None else f"{row.vsCaddy:.2f}x",
        _number(row.p50ms, 2),
        _number(row.p99ms, 2),
        _number(row.cpuPer1000, 3),
        _number(row.peakRSSMB, 1),
        str(row.non2xx),
        str(row.socketErrors),
    ]


def textTable(rows: Sequence[Row]) -> str:
    """A fixed-width table for the terminal."""
    cells = [list(COLUMNS)] + [rowCells(row) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    previous = None
    for index, line in enumerate(cells):
        if index > 1 and line[0] != previous:
            lines.append("")
        previous = line[0]
        lines.append(
            "  ".join(
                cell.rjust(width) if i > 1 else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def rstTable(rows: Sequence[Row]) -> str:
    """The same table as a reStructuredText simple table, for docs/benchmarks.rst."""
    cells = [list(COLUMNS)] + [rowCells(row) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    rule = "  ".join("=" * width for width in widths)
    out = [
        rule,
        "  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)).rstrip(),
        rule,
    ]
    for line in cells[1:]:
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    out.append(rule)
    return "\n".join(out)


def machineLines(machine: dict[str, str]) -> list[str]:
    return [f"{key}: {value}" for key, value in machine.items()]


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
    if "nginx" in tools:
        machine["nginx"] = commandOutput([tools["nginx"], "-v"])
    if "caddy" in tools:
        machine["caddy"] = commandOutput([tools["caddy"], "version"])
    if "apache2" in tools:
        machine["apache"] = commandOutput([tools["apache2"], "-v"])
    if "jetty" in tools and "java" in tools:
        jars = glob.glob(f"{JETTY_HOME}/lib/jetty-server-*.jar")
        version = jars[0].rpartition("jetty-server-")[2].removesuffix(".jar") if jars else "?"
        machine["jetty"] = f"Jetty {version}; {commandOutput([tools['java'], '-version'])}"
    if "h2load" in tools:
        machine["h2load"] = commandOutput([tools["h2load"], "--version"])
    return machine


CHART_SERIES_STYLE = {
    "txfastcgi": "#d62728",
    "txfastcgi-w2": "#ff7f0e",
    "txfastcgi-baseline": "#8c564b",
    "nginx": "#2ca02c",
    "caddy": "#1f77b4",
    "apache": "#9467bd",
    "jetty": "#8c564b",
    "bare": "#7f7f7f",
}
CONCURRENCY_PANEL = ("tiny-c1", "tiny-c32", "tiny-c256")
CONCURRENCY_LABELS = ("1", "32", "256")
SIZE_PANEL = ("tiny-c32", "100k-c32", "1m-c32")
SIZE_LABELS = ("14 B", "100 KiB", "1 MiB")


def chartSeries(rows: Sequence[Row], panel: Sequence[str]) -> dict[str, list[float | None]]:
    """Req/s of each target at each point of a panel, None where not measured."""
    byKey = {(row.scenario, row.target): row.rps for row in rows}
    targets = [t for t in CHART_SERIES_STYLE if any((s, t) in byKey for s in panel)]
    return {t: [byKey.get((s, t)) for s in panel] for t in targets}


def writeChart(rows: Sequence[Row], out: Path, title: str, forceSVG: bool) -> Path:
    """
    Req/s against concurrency and against response size: a PNG through
    matplotlib if it is installed, else an SVG drawn here, so the chart never
    needs a dependency.
    """
    panels = [
        (
            "req/s against concurrency (14 B response)",
            "connections",
            CONCURRENCY_LABELS,
            chartSeries(rows, CONCURRENCY_PANEL),
        ),
        (
            "req/s against response size (32 connections)",
            "response size",
            SIZE_LABELS,
            chartSeries(rows, SIZE_PANEL),
        ),
    ]
    if not forceSVG:
        try:
            import matplotlib
        except ImportError:
            pass
        else:
            matplotlib.use("Agg")
            return _matplotlibChart(panels, out / "chart.png", title)
    return _svgChart(panels, out / "chart.svg", title)


Panel = tuple[str, str, Sequence[str], dict[str, list[float | None]]]


def _matplotlibChart(panels: Sequence[Panel], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, (heading, xlabel, labels, series) in zip(axes, panels, strict=True):
        for target, values in series.items():
            points = [(i, v) for i, v in enumerate(values) if v is not None]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            axis.plot(
                xs,
                ys,
                marker="o",
                label=target,
                color=CHART_SERIES_STYLE[target],
                linestyle="--" if target == "bare" else "-",
            )
        axis.set_yscale("log")
        axis.set_xticks(range(len(labels)), labels)
        axis.set_title(heading, fontsize=10)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("requests per second (log)")
        axis.grid(True, which="both", alpha=0.3)
        if series:
            axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _element(name: str, text: str = "", /, **attributes: object) -> str:
    """One SVG element; C{font_size} becomes C{font-size}, values are escaped."""
    pairs = " ".join(
        f'{key.replace("_", "-")}="{html.escape(str(value))}"' for key, value in attributes.items()
    )
    if text:
        return f"<{name} {pairs}>{html.escape(text)}</{name}>"
    return f"<{name} {pairs}/>"


def _svgChart(panels: Sequence[Panel], path: Path, title: str) -> Path:
    """Two log-scale line charts side by side, written as plain SVG."""
    width, height, panelWidth = 1100, 470, 520
    top, bottom, left = 50, 70, 70
    plotWidth, plotHeight = panelWidth - left, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="11">',
        _element("rect", width=width, height=height, fill="white"),
        _element("text", title, x=width / 2, y=18, text_anchor="middle", font_size=12),
    ]
    for index, (heading, xlabel, labels, series) in enumerate(panels):
        x0 = index * (panelWidth + 40) + left
        values = [v for vs in series.values() for v in vs if v]
        if not values:
            continue
        low = math.floor(math.log10(min(values)))
        high = math.ceil(math.log10(max(values)))

        def y(value: float, low: int = low, high: int = high) -> float:
            return round(top + plotHeight * (1 - (math.log10(value) - low) / (high - low)), 1)

        def x(i: int, x0: int = x0, n: int = len(labels)) -> float:
            return round(x0 + plotWidth * (i + 0.5) / n, 1)

        middle = x0 + plotWidth / 2
        parts += [
            _element("text", heading, x=middle, y=top - 10, text_anchor="middle"),
            _element(
                "rect", x=x0, y=top, width=plotWidth, height=plotHeight, fill="none", stroke="#333"
            ),
            _element("text", xlabel, x=middle, y=top + plotHeight + 40, text_anchor="middle"),
            _element(
                "text",
                "requests per second (log)",
                transform=f"translate({x0 - 50},{top + plotHeight / 2}) rotate(-90)",
                text_anchor="middle",
            ),
        ]
        for tick in (step * 10**power for power in range(low, high + 1) for step in (1, 2, 5)):
            if tick <= 10**high:
                parts.append(
                    _element(
                        "line", x1=x0, x2=x0 + plotWidth, y1=y(tick), y2=y(tick), stroke="#ddd"
                    )
                )
                parts.append(
                    _element("text", f"{tick:g}", x=x0 - 5, y=y(tick) + 4, text_anchor="end")
                )
        for i, label in enumerate(labels):
            parts.append(
                _element("text", label, x=x(i), y=top + plotHeight + 18, text_anchor="middle")
            )
        for rank, (target, vs) in enumerate(series.items()):
            style: dict[str, object] = {"stroke": CHART_SERIES_STYLE[target], "stroke_width": 2}
            if target == "bare":
                style["stroke_dasharray"] = "6,4"
            points = [(x(i), y(v)) for i, v in enumerate(vs) if v]
            line = " ".join(f"{px},{py}" for px, py in points)
            parts.append(_element("polyline", fill="none", points=line, **style))
            for px, py in points:
                parts.append(_element("circle", cx=px, cy=py, r=3.5, fill=style["stroke"]))
            legendY = top + 14 + rank * 16
            legendX = x0 + plotWidth - 110
            parts.append(
                _element(
                    "line", x1=legendX, x2=legendX + 20, y1=legendY - 4, y2=legendY - 4, **style
                )
            )
            parts.append(_element("text", target, x=legendX + 25, y=legendY))
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")
    return path


# --------------------------------------------------------------------------
# Profiling txfastcgi
# --------------------------------------------------------------------------


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
    target = startTxfastcgi(context, "txfastcgi", 1)
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
        result.setdefault("cpuPer1000", run.cpuPer1000)
    result.update(
        summariseCollapsed(
            (context.work / f"{stem}.txt").read_text(), context.repo, args.profile_top
        )
    )
    return result


CPROFILE_LAUNCHER = """
# twist under cProfile, switched on by SIGUSR1 and written out on SIGUSR2, so
# that the profile covers the load and nothing else (twist ends itself by
# re-raising SIGTERM, which would skip cProfile's own output at exit).
import cProfile, runpy, signal, sys
profile = cProfile.Profile()
output = sys.argv.pop(1)
def start(signum, frame):
    profile.enable()
def stop(signum, frame):
    profile.disable()
    profile.dump_stats(output)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
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
    argv = [context.python, str(launcher), str(stats), "fastcgi-proxy"]
    argv += txfastcgiArguments(context, "txfastcgi", port)
    name = "txfastcgi-cprofile"
    env = txfastcgiEnvironment(context.repo)
    process = context.processes.start(name, argv, context.log(name), env=env)
    target = Target("txfastcgi", "cProfile", process.pid, port)
    waitFor(lambda: check(scenario, target) is None, "txfastcgi to answer")
    runLoad(context.tools, context.work, scenario, target, 2, 0)
    process.send_signal(signal.SIGUSR1)
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
        "cpuPer1000": run.cpuPer1000,
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


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


STARTERS: dict[str, tuple[str | None, Callable[[Context, str], Target]]] = {
    "txfastcgi": (None, lambda context, name: startTxfastcgi(context, name, 1)),
    "txfastcgi-w2": (None, lambda context, name: startTxfastcgi(context, name, 2)),
    "txfastcgi-baseline": (
        None,
        lambda context, name: startTxfastcgi(context, name, 1, context.baseline),
    ),
    "nginx": ("nginx", startNginx),
    "caddy": ("caddy", startCaddy),
    "apache": ("apache2", startApache),
    "jetty": ("jetty", startJetty),
    "bare": (None, startBare),
}


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
            notes.append(f"{name}: left out, {tool} is not installed")
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


def parseArguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark txfastcgi against nginx, Caddy, Apache and Jetty"
        " in front of php-fpm.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 3 s, 3 scenarios, no soak (about a minute)"
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
        "--targets", help=f"comma-separated, from {','.join(STARTERS)} (default: all installed)"
    )
    parser.add_argument(
        "--jetty-warm-up",
        type=float,
        default=15.0,
        metavar="S",
        help="seconds of tiny-c32 load on Jetty before the rounds, for its JIT (default 15;"
        " the others get 2)",
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
    args.repo = args.repo.resolve()
    args.baseline = args.baseline and args.baseline.resolve()
    return args


def _raiseSystemExit(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C does, so the finally block stops everything."""
    print(f"\n{signal.Signals(signum).name}: stopping everything started")
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
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
    context.proxyArgs = args.proxy_arg
    context.baseline = args.baseline
    context.jettyWarmUp = args.jetty_warm_up
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
    if args.proxy_arg:
        machine["fastcgi-proxy extra arguments"] = " ".join(args.proxy_arg)
    print("\n".join(machineLines(machine)))
    for note in notes:
        print("note:", note)

    if args.profile:
        profile = profileTxfastcgi(args, context, args.out)
        print(profileText(profile))
        document = {"machine": machine, **profile}
        stem = f"profile-{profile['scenario']}-{profile['profiler']}"
        (args.out / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.out / stem}.json and, from py-spy, {stem}.svg (a flame graph)")
        return 0

    running: dict[str, Target] = {}
    for name in targets:
        try:
            running[name] = startTarget(context, name)
        except RuntimeError as e:
            print(f"left out: {e}")
            notes.append(f"{name}: left out, it did not start ({str(e).splitlines()[-1]})")
    skip = checkTargets(running, scenarios, notes)
    print(f"\nwarming up {', '.join(running)}")
    warm = next(s for s in SCENARIOS if s.name == "tiny-c32")
    for name, target in running.items():
        seconds = WARM_UP
        if name == "jetty" and args.jetty_warm_up > WARM_UP:
            # Issue 5 compares against Jetty once warm: its JIT compiles the
            # hot paths only after some thousands of requests.
            seconds = args.jetty_warm_up
            print(f"warming up jetty: {seconds:g} s of {warm.name} before the rounds (JIT)")
        run = runLoad(tools, work, warm, target, seconds, 0)
        if name == "jetty":
            machine["jetty warm-up"] = (
                f"{seconds:g} s of wrk -t1 -c32 on hello.php before the rounds"
                f" ({run.rps:.0f} req/s; the others: {WARM_UP:g} s)"
            )
    runs = runRounds(args, context, running, scenarios, skip)
    for run in runs:
        if run.non2xx or run.socketErrors:
            notes.append(
                f"{run.scenario}: {run.target} in round {run.round}: {run.non2xx} non-2xx"
                f" responses of {run.requests}; {run.errorKinds or 'no socket errors'}"
            )
    soak = None
    if args.soak > 0 and "txfastcgi" in running:
        soak = runSoak(tools, work, running["txfastcgi"], args.soak)
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
    report(args, machine, notes, running, rows, runs, verdicts(runs, soak), soak)
    # A non-2xx answer means a broken setup, whoever gave it; socket errors
    # count against txfastcgi only (Apache drops kept connections at c256).
    failed = any(r.non2xx or (r.socketErrors and r.target.startswith("txfastcgi")) for r in runs)
    return 1 if failed else 0


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


def startTarget(context: Context, name: str) -> Target:
    """Start one front-end and wait until it serves hello.php."""
    _, starter = STARTERS[name]
    target = starter(context, name)
    probe = next(s for s in SCENARIOS if s.tiny)

    def serving() -> bool:
        return check(probe, target) is None

    try:
        waitFor(serving, f"{name} to serve hello.php")
    except RuntimeError:
        log = context.log(name)
        raise RuntimeError(f"{name} did not start; {log}:\n{log.read_text()[-2000:]}") from None
    context.processes.remember(target.pid)
    return target


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


def runSoak(tools: dict[str, str], work: Path, target: Target, seconds: float) -> dict[str, Any]:
    """
    One long tiny-response run against one txfastcgi process, RSS sampled
    every second: a leak per request shows as RSS that keeps climbing.
    """
    print(f"\nsoak: {seconds:g} s of tiny responses at 32 connections against {target.name}")
    tiny = next(s for s in SCENARIOS if s.name == "tiny-c32")
    argv = [tools["wrk"], "-t1", "-c32", f"-d{seconds:g}s", "--latency", target.url(tiny.path)]
    with Sampler(target.pid, interval=1.0) as sampler:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    result = parseWrk(done.stdout + done.stderr)
    series = sampler.rssSeries
    warm = [rss for t, rss in series if 5 <= t <= 10] or [series[0][1]]
    end = [rss for t, rss in series if t >= seconds - 5] or [series[-1][1]]
    soak = {
        "seconds": seconds,
        "requests": result["requests"],
        "rps": result["rps"],
        "non2xx": result["non2xx"],
        "startMB": statistics.median(warm) / 1024,
        "endMB": statistics.median(end) / 1024,
        "series": [(round(t, 1), round(rss / 1024, 2)) for t, rss in series],
    }
    print(f"soak: {soak['startMB']:.1f} MB after warm-up, {soak['endMB']:.1f} MB at the end")
    return soak


STARVED = (
    "* fewer than half the connections were being answered at a time (req/s times"
    " wrk's mean latency): the req/s is that of fewer clients."
)


def report(
    args: argparse.Namespace,
    machine: dict[str, str],
    notes: Sequence[str],
    running: dict[str, Target],
    rows: Sequence[Row],
    runs: Sequence[Run],
    checks: Sequence[Verdict],
    soak: dict[str, Any] | None,
) -> None:
    """Print the table and the verdicts, and write JSON, reStructuredText and the chart."""
    legend = [f"{name}: {target.description}" for name, target in running.items()]
    verdictLines = [f"{v.status:12} {v.goal}: {v.detail}" for v in checks]
    print("\n" + "\n".join(machineLines(machine)))
    print("\n" + "\n".join(legend))
    print("\n" + textTable(rows))
    if any(row.starved for row in rows):
        print(STARVED)
    print("\nissue 5 targets:\n" + "\n".join("  " + line for line in verdictLines))
    if notes:
        print("\nnotes:\n" + "\n".join("  " + note for note in notes))
    title = f"{machine['cpu']}; {machine['python (txfastcgi)']}; {machine['run']}"
    chart = writeChart(rows, args.out, title, args.svg)
    document = {
        "machine": machine,
        "targets": {name: asdict(target) for name, target in running.items()},
        "rows": [asdict(row) for row in rows],
        "runs": [{k: v for k, v in asdict(run).items() if k != "output"} for run in runs],
        "verdicts": [asdict(v) for v in checks],
        "soak": soak,
        "notes": list(notes),
        "chart": chart.name,
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    rst = [
        ".. Generated by benchmarks/run.py; do not edit by hand.",
        "",
        "Machine",
        "~~~~~~~",
        "",
        *(f"- {line}" for line in machineLines(machine)),
        "",
        "Targets",
        "~~~~~~~",
        "",
        *(f"- {line}" for line in legend),
        "",
        "Results",
        "~~~~~~~",
        "",
        "Medians over the rounds; *vs nginx* and *vs Caddy* are medians of the",
        "ratios taken within each round. CPU is the front-end's own (all its",
        "processes), not php-fpm's.",
        "",
        rstTable(rows),
        "",
        *([STARVED, ""] if any(row.starved for row in rows) else []),
        "Issue 5 targets",
        "~~~~~~~~~~~~~~~",
        "",
        *(f"- **{v.status}** {v.goal}: {v.detail}" for v in checks),
        "",
    ]
    if notes:
        rst += ["Notes", "~~~~~", "", *(f"- {note}" for note in notes), ""]
    (args.out / "results.rst").write_text("\n".join(rst))
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.rst'}, {chart}")


if __name__ == "__main__":
    sys.exit(main())
