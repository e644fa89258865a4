"""
The command line as an operator meets it: errors that name their option and
say what is wrong in words, sizes and times with units, C{--version}, and
C{python -m txfastcgi}, through the real process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PHPFPMPool
from tests.processes import REPOSITORY, Browser, freePort, startServer, stopProxy
from tests.test_operations_startup import siteOptions
from txfastcgi.tap import Options

ENVIRONMENT = dict(os.environ, PYTHONPATH=str(REPOSITORY))


def run(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run Python with C{arguments}, this checkout on its path, to its end."""
    return subprocess.run(
        [sys.executable, *arguments], capture_output=True, text=True, env=ENVIRONMENT, timeout=60
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--max-body-size", "abc"], "--max-body-size: 'abc' is not a size"),
        (["--max-body-size", "64MB"], "--max-body-size: '64MB' is not a size"),
        (["--read-timeout", "soon"], "--read-timeout: 'soon' is not a duration"),
        (["--shutdown-timeout", "0"], "--shutdown-timeout: '0' is below"),
        (["--workers", "many"], "--workers: 'many' is not a number"),
        (
            ["--listen", "tcp:abc"],
            "--listen 'tcp:abc' is not a valid endpoint: 'abc' is not a number",
        ),
        (
            ["--listen", "unix:"],
            "--listen 'unix:' is not a valid endpoint: a unix endpoint needs a socket path",
        ),
        (["--listen", "ssl:443"], "give privateKey=KEY.pem and certKey=CERT.pem"),
        (
            ["--php-fpm", "tcp:127.0.0.1"],
            "--php-fpm 'tcp:127.0.0.1' is not a valid endpoint: port is missing",
        ),
        (["--cache-size", "lots"], "--cache-size: 'lots' is not a size"),
        (["--cache-status"], "--cache-status and --cache-bypass-cookie need a --cache-size"),
        (
            ["--early-hint", "/=style.css"],
            "--early-hint '/=style.css': 'style.css' is not a Link field (<URL>; rel=...)",
        ),
        (
            ["--early-hint", "/=</a.css>; rel=preload", "--no-early-hints"],
            "--early-hint and --no-early-hints contradict each other",
        ),
        (["--sendfile-root", "/no/such/dir"], "--sendfile-root '/no/such/dir' is not a directory"),
        (["--accel-prefix", "protected=/tmp"], "--accel-prefix wants /URI=DIR"),
        (
            ["--accel-prefix", "/protected=/tmp"],
            "--accel-prefix /protected=/tmp: the directory is under no --sendfile-root",
        ),
        (
            ["--sendfile-root", "/usr", "--accel-prefix", "/protected=/tmp"],
            "--accel-prefix /protected=/tmp: the directory is under no --sendfile-root",
        ),
        (
            ["--listen", "systemd:domain=INET:index=0"],
            "is not a valid endpoint: this process was given no such socket"
            " by systemd socket activation",
        ),
    ],
)
def test_a_bad_value_is_explained_with_its_option(arguments: list[str], message: str) -> None:
    result = run("-m", "twisted", "fastcgi-proxy", *arguments)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("twist fastcgi-proxy: error: ")
    assert message in line
    assert "invalid literal" not in line and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "option, written, value",
    [
        ("max-body-size", "64M", 64 * 1024**2),
        ("max-body-size", "1000", 1000),
        ("connect-timeout", "500ms", 0.5),
        ("read-timeout", "2m", 120.0),
        ("idle-timeout", "30s", 30.0),
        ("queue-timeout", "45", 45.0),
        ("header-timeout", "10s", 10.0),
        ("body-timeout", "1m", 60.0),
        ("shutdown-timeout", "1.5s", 1.5),
    ],
)
def test_sizes_and_times_accept_units(option: str, written: str, value: float) -> None:
    options = Options()
    options.parseOptions([f"--{option}", written, "--path", str(REPOSITORY / "tests" / "site")])
    assert options[option] == pytest.approx(value)


VERSION = re.compile(
    r"txfastcgi \d+\.\d+\.\d+\S* \(Twisted \d+\.\d+\.\d+\S*, Python \d+\.\d+\.\d+\S*\)\n"
)


@pytest.mark.parametrize(
    "command", [["-m", "twisted", "fastcgi-proxy"], ["-m", "txfastcgi"]], ids=["twist", "python -m"]
)
def test_version_prints_txfastcgis_twisteds_and_pythons(command: list[str]) -> None:
    from txfastcgi import __version__

    result = run(*command, "--version")
    assert result.returncode == 0, result.stderr
    assert VERSION.fullmatch(result.stdout), result.stdout
    assert result.stdout.startswith(f"txfastcgi {__version__} (")


def test_python_m_txfastcgi_serves_like_twist(tmp_path: Path, php_fpm: PHPFPMPool) -> None:
    port = freePort()
    proxy = startServer(
        ["-m", "txfastcgi", "--listen", f"tcp:{port}:interface=127.0.0.1", *siteOptions(php_fpm)],
        port,
        tmp_path / "proxy.log",
    )
    try:
        answer = Browser(proxy.url).request("/info.php/extra")
    finally:
        stopProxy(proxy)
    assert answer.status == 200, proxy.log()
    assert answer.json()["PATH_INFO"] == "/extra"
