"""
The txfastcgi targets: the proxy (one process, several workers, another
checkout, PyPy), the embedded resource in a plain Site, and the ceiling.

Each target's command line is built by a pure function, tested without
starting anything; the starters only add a port and a process.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..context import Context, Target
from ..processes import freePort

BENCHMARKS = Path(__file__).resolve().parent.parent.parent
EMBEDDED_SCRIPT = BENCHMARKS / "embedded_site.py"
BARE_SCRIPT = BENCHMARKS / "bare_site.py"


# txfastcgi._server.child.PYPY_NURSERY, which this package does not import.
PYPY_NURSERY = "32M"


def txfastcgiEnvironment(repo: Path) -> dict[str, str]:
    """The environment that makes C{python -m twisted} find the checkout's plugin."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH", "")]))
    return env


@functools.cache
def implementation(python: str) -> str:
    """CPython or PyPy: which interpreter C{python} is, as the targets require one or the other."""
    done = subprocess.run(
        [python, "-c", "import platform; print(platform.python_implementation())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() or "?"


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


def proxyCommand(
    python: str,
    backend: Path,
    docroot: Path,
    port: int,
    extra: Sequence[str] = (),
    workers: int = 1,
    tls: tuple[int, tuple[Path, Path]] | None = None,
) -> list[str]:
    """
    C{python -m twisted fastcgi-proxy} with default FastCGI settings and no
    access log (C{/dev/null}, which formats no line), as the peers write none
    (nginx has C{access_log off}); C{extra} last, so that a future option (a
    C{--front} say) is benchmarked without editing this package.
    """
    argv = [python, "-m", "twisted", "fastcgi-proxy"]
    argv += ["--php-fpm", f"unix:{backend}", "--path", str(docroot)]
    argv += ["--listen", f"tcp:{port}:interface=127.0.0.1", "--access-log", "/dev/null"]
    if tls is not None:
        tlsPort, (key, cert) = tls
        argv += ["--listen", f"ssl:{tlsPort}:interface=127.0.0.1:privateKey={key}:certKey={cert}"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    return [*argv, *extra]


def embeddedCommand(python: str, backend: Path, docroot: Path, port: int) -> list[str]:
    """The embedded target: benchmarks/embedded_site.py, FastCGIResource in a plain Site."""
    return [python, str(EMBEDDED_SCRIPT), str(backend), str(docroot), str(port)]


def startProxy(
    context: Context,
    name: str,
    workers: int = 1,
    repo: Path | None = None,
    python: str | None = None,
) -> Target:
    """
    The proxy from the checkout (or from C{repo}, or under C{python}), with
    a TLS listener for HTTP/2 when one process serves (C{--workers} shares
    only plain listening sockets).
    """
    port = freePort()
    interpreter = python or context.python
    tls = None
    if context.cert is not None and workers == 1:
        tls = (freePort(), context.cert)
    argv = proxyCommand(
        interpreter, context.sockets[name], context.docroot, port, context.proxyArgs, workers, tls
    )
    checkout = repo or context.repo
    # "python -m" puts the working directory first on sys.path: run in the
    # checkout measured, or another checkout's txfastcgi would be imported.
    env = txfastcgiEnvironment(checkout)
    kind = implementation(interpreter)
    label = f"twist fastcgi-proxy, {workers} process{'es' if workers > 1 else ''}, {kind}"
    if kind == "PyPy":
        # As the docs' getting-started page tells PyPy users to run it.
        env.setdefault("PYPY_GC_NURSERY", PYPY_NURSERY)
        label += f" with PYPY_GC_NURSERY={env['PYPY_GC_NURSERY']}"
    process = context.processes.start(name, argv, context.log(name), env=env, cwd=checkout)
    if repo is not None:
        label += f", from {repo}"
    if context.proxyArgs:
        label += f", with {' '.join(context.proxyArgs)}"
    target = Target(name, label, process.pid, port, tls and tls[0], workers=workers)
    target.interpreter = kind
    return target


def startEmbedded(context: Context, name: str) -> Target:
    """C{FastCGIResource} in a plain twisted.web C{Site}, as an embedder writes it."""
    port = freePort()
    argv = embeddedCommand(context.python, context.sockets[name], context.docroot, port)
    env = txfastcgiEnvironment(context.repo)
    process = context.processes.start(name, argv, context.log(name), env=env)
    kind = implementation(context.python)
    label = f"FastCGIResource in a plain twisted.web Site (benchmarks/embedded_site.py), {kind}"
    return Target(name, label, process.pid, port, interpreter=kind)


def startBare(context: Context, name: str) -> Target:
    """A bare twisted.web process that answers the tiny response, as a ceiling."""
    port = freePort()
    argv = [context.python, str(BARE_SCRIPT), str(port)]
    process = context.processes.start(name, argv, context.log(name))
    label = "bare twisted.web resource, no FastCGI (ceiling)"
    return Target(name, label, process.pid, port, onlyTiny=True)
