"""
One slow script does not stall the site: through the real
``twist fastcgi-proxy``, with its default options, in front of a real
php-fpm of 4 workers. Fast requests keep at least half the throughput they
have without it, whether the FastCGI pool is cold (just started), has
closed its kept connections for ``--idle-timeout``, or php-fpm forks its
workers on demand (``pm = dynamic``).
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import PHPFPMFactory, PHPFPMPool
from tests.processes import Proxy, startProxy, stopProxy

CLIENTS = 8
LOAD_SECONDS = 1.0
SLOW_SCRIPT = "/slow.php?ms=2500"


def fastResponses(proxy: Proxy, seconds: float) -> int:
    """How many 200s CLIENTS keep-alive clients get from a fast script in C{seconds}."""
    stopAt = time.monotonic() + seconds

    def client() -> int:
        answered = 0
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        while time.monotonic() < stopAt:
            connection.request("GET", "/status.php?code=200")
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
            answered += 1
        connection.close()
        return answered

    # Futures, so that a client's failed assertion fails the test.
    with ThreadPoolExecutor(CLIENTS) as clients:
        return sum(future.result() for future in [clients.submit(client) for _ in range(CLIENTS)])


def slowRequest(proxy: Proxy, background: ThreadPoolExecutor) -> Future[bytes]:
    """Start a request to a script that takes 2.5 s before its first byte."""

    def request() -> bytes:
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        connection.request("GET", SLOW_SCRIPT)
        return connection.getresponse().read()

    answer = background.submit(request)
    time.sleep(0.1)  # It has reached php-fpm before the fast load starts.
    return answer


def proxyFor(pool: PHPFPMPool, tmp_path: Path, *options: str) -> Iterator[Proxy]:
    proxy = startProxy(
        ["--php-fpm", pool.endpointDescription, "--path", pool.documentRoot, *options],
        tmp_path / "proxy.log",
    )
    try:
        yield proxy
    finally:
        stopProxy(proxy)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_a_slow_script_on_a_cold_pool_leaves_fast_requests_their_throughput(
    tmp_path: Path, php_fpm_factory: PHPFPMFactory, dynamic: bool
) -> None:
    pool = php_fpm_factory(children=4, dynamicFrom=2 if dynamic else None)
    for proxy in proxyFor(pool, tmp_path):
        with ThreadPoolExecutor(1) as background:
            slow = slowRequest(proxy, background)
            during = fastResponses(proxy, LOAD_SECONDS)
            assert slow.result() == b"slept\n"
        baseline = fastResponses(proxy, LOAD_SECONDS)
        assert during >= baseline / 2, (during, baseline, proxy.log()[-2000:])


def test_a_slow_script_after_the_idle_timeout_leaves_fast_requests_their_throughput(
    tmp_path: Path, php_fpm_factory: PHPFPMFactory
) -> None:
    pool = php_fpm_factory(children=4)
    for proxy in proxyFor(pool, tmp_path, "--idle-timeout", "0.2"):
        baseline = fastResponses(proxy, LOAD_SECONDS)
        time.sleep(0.5)  # Every kept FastCGI connection is closed.
        with ThreadPoolExecutor(1) as background:
            slow = slowRequest(proxy, background)
            during = fastResponses(proxy, LOAD_SECONDS)
            assert slow.result() == b"slept\n"
        assert during >= baseline / 2, (during, baseline, proxy.log()[-2000:])
