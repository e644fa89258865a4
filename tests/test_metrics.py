"""
The Prometheus page of the real ``twist fastcgi-proxy --metrics-path``, read
as Prometheus reads it: by ``prometheus_client``'s own parser, after
requests to a real php-fpm, with one process and with ``--workers 2``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PHPFPMFactory, PHPFPMPool, stopPHPFPM
from tests.processes import (
    REPOSITORY,
    Proxy,
    childrenRunning,
    freePort,
    rawRequest,
    startServer,
    stopProxy,
)

# Twisted's own log as JSON events, which say which process logged them.
PROXY_WITH_JSON_LOG = ["-m", "twisted", "--log-format", "json", "fastcgi-proxy"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def start(arguments: list[str], logPath: Path, log: str = "text") -> Proxy:
    """The proxy with C{arguments} and its metrics page at C{/metrics}, on a free port."""
    port = freePort()
    command = ["-m", "twisted", "--log-format", log, "fastcgi-proxy", "--listen", f"tcp:{port}"]
    return startServer([*command, "--metrics-path", "/metrics", *arguments], port, logPath)


def scrape(proxy: Proxy) -> Samples:
    """Every sample of the metrics page, by name and labels, as Prometheus parses them."""
    answer = rawRequest(proxy, "GET", "/metrics")
    assert answer.status == 200
    assert answer.getheader("content-type", "").startswith("text/plain; version=")
    assert answer.getheader("cache-control") == "no-store"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.read().decode())
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def waitFor(
    condition: Callable[[], bool], complaint: Callable[[], str], timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(complaint())
        time.sleep(0.05)


def test_a_scrape_counts_the_requests_by_class_and_backend(
    tmp_path: Path, php_fpm_factory: PHPFPMFactory
) -> None:
    """
    200s and a 404 from PHP, a static file, and a 502 once php-fpm is gone:
    each counted under its status class and the backend that answered it
    (C{none} for what no backend did), timed, and the backend then down.
    """
    pool = php_fpm_factory(children=2)
    backend = pool.endpointDescription
    proxy = start(["--php-fpm", backend, "--path", pool.documentRoot], tmp_path / "log")
    try:
        answers = [rawRequest(proxy, "GET", "/status.php").status for _ in range(3)]
        answers.append(rawRequest(proxy, "GET", "/status.php?code=404").status)
        answers.append(rawRequest(proxy, "GET", "/style.css").status)
        before = scrape(proxy)
        stopPHPFPM(pool)
        answers.append(rawRequest(proxy, "GET", "/status.php").status)
        after = scrape(proxy)
    finally:
        stopProxy(proxy)
    assert answers == [200, 200, 200, 404, 200, 502]
    requests = "txfastcgi_requests_total"
    assert sample(after, requests, code="2xx", backend=backend) == 3
    assert sample(after, requests, code="4xx", backend=backend) == 1
    assert sample(after, requests, code="2xx", backend="none") == 2  # style.css, a scrape
    assert sample(after, requests, code="5xx", backend="none") == 1
    assert sample(after, requests, code="5xx", backend=backend) == 0
    for histogram in ("txfastcgi_request_duration_seconds", "txfastcgi_upstream_duration_seconds"):
        assert sample(after, f"{histogram}_count", backend=backend) == 4
        assert sample(after, f"{histogram}_bucket", backend=backend, le="+Inf") == 4
        assert sample(after, f"{histogram}_bucket", backend=backend, le="30.0") == 4
    assert sample(after, "txfastcgi_upstream_duration_seconds_count", backend="none") == 1
    assert sample(before, "txfastcgi_backend_up", backend=backend) == 1
    assert sample(after, "txfastcgi_backend_up", backend=backend) == 0
    assert sample(after, "txfastcgi_backend_requests_total", backend=backend) == 4
    assert sample(after, "txfastcgi_backend_errors_total", backend=backend) == 1
    assert sample(before, "txfastcgi_pool_connections", backend=backend, state="idle") >= 1
    assert sample(after, "txfastcgi_pool_max_connections", backend=backend) == 4
    assert sample(after, "txfastcgi_processes") == 1


def test_the_response_cache_is_counted(tmp_path: Path, php_fpm: Any) -> None:
    """A miss, two hits and a bypass of the cache, and the bytes it holds."""
    arguments = ["--php-fpm", php_fpm.endpointDescription, "--path", php_fpm.documentRoot]
    proxy = start([*arguments, "--cache-size", "1M"], tmp_path / "log")
    try:
        for _ in range(3):
            assert rawRequest(proxy, "GET", "/cached.php?metrics").status == 200
        rawRequest(proxy, "GET", "/cached.php?metrics", Authorization="Basic YTpi").read()
        samples = scrape(proxy)
    finally:
        stopProxy(proxy)
    requests = "txfastcgi_cache_requests_total"
    assert sample(samples, requests, result="miss") == 1
    assert sample(samples, requests, result="hit") == 2
    assert sample(samples, requests, result="bypass") == 1
    assert sample(samples, "txfastcgi_cache_bytes") > 0


def test_a_bad_metrics_path_is_one_line_and_exit_status_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "fastcgi-proxy", "--metrics-path", "metrics"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (
        2,
        "twist fastcgi-proxy: error: --metrics-path 'metrics' must start with /\n",
    )


def events(proxy: Proxy) -> list[dict[str, object]]:
    """The proxy's log events, each with the process that logged it (a worker's pid, or C{main})."""
    found = []
    for line in proxy.log().splitlines():
        try:
            event = json.loads(line.lstrip("\x1e"))
        except ValueError:
            continue  # The line being written.
        event["process"] = event.get("worker") or "main"
        found.append(event)
    return found


def servedBy(proxy: Proxy) -> dict[object, int]:
    """How many requests for status.php each process (C{main}, C{worker PID}) logged."""
    counts: dict[object, int] = {}
    for event in events(proxy):
        if event.get("log_namespace") == "txfastcgi.access" and "/status.php" in str(event):
            counts[event["process"]] = counts.get(event["process"], 0) + 1
    return counts


def test_with_workers_each_scrape_and_the_status_page_sum_every_process(
    tmp_path: Path, php_fpm: PHPFPMPool
) -> None:
    """
    C{--workers 2}: whichever process answers, a scrape counts the requests
    both served, and so does the JSON status page.
    """
    backend = php_fpm.endpointDescription
    arguments = ["--php-fpm", backend, "--path", php_fpm.documentRoot, "--workers", "2"]
    proxy = start([*arguments, "--status-path", "/status"], tmp_path / "log", log="json")
    try:
        # The worker logs that it listens, through the main process.
        waitFor(lambda: any(e["process"] != "main" for e in events(proxy)), proxy.log)

        def load() -> None:
            for _ in range(10):
                assert rawRequest(proxy, "GET", "/status.php").status == 200

        # Until each process has served some: which one accepts is the kernel's choice.
        # Access lines are written a moment after their requests: a process
        # that served none yet may only not have written them yet.
        served = 0
        while len(servedBy(proxy)) < 2:
            loaders = [threading.Thread(target=load) for _ in range(4)]
            for thread in loaders:
                thread.start()
            for thread in loaders:
                thread.join()
            served += 10 * len(loaders)
            assert served < 2000, servedBy(proxy)
        waitFor(lambda: sum(servedBy(proxy).values()) == served, lambda: str(servedBy(proxy)))
        scrapes = [scrape(proxy) for _ in range(8)]

        def statusTotals() -> dict[str, int]:
            totals: dict[str, int] = json.loads(rawRequest(proxy, "GET", "/status").read())[
                "totals"
            ]
            return totals

        # The other process writes its pools' counts once a second.
        waitFor(lambda: statusTotals()["requests"] == served, lambda: str(statusTotals()))
        totals = statusTotals()
    finally:
        stopProxy(proxy)
    for samples in scrapes:
        assert sample(samples, "txfastcgi_requests_total", code="2xx", backend=backend) == served
        assert sample(samples, "txfastcgi_processes") == 2
    assert totals["backends"] == 1
    assert totals["up"] == 1
    assert totals["open"] >= 2  # each process keeps a connection


def test_a_restart_of_the_spawned_php_fpm_is_counted(
    tmp_path: Path, php_document_root: str
) -> None:
    proxy = start(["--php-fpm", "spawn", "--path", php_document_root], tmp_path / "log")
    try:
        restarts = "txfastcgi_phpfpm_restarts_total"
        assert sample(scrape(proxy), restarts) == 0
        (guardian,) = childrenRunning(proxy.process.pid, "txfastcgi._server.guardian")
        (master,) = childrenRunning(guardian, "php-fpm")
        os.kill(master, signal.SIGKILL)
        waitFor(lambda: sample(scrape(proxy), restarts) == 1, proxy.log)
        waitFor(lambda: rawRequest(proxy, "GET", "/status.php").status == 200, proxy.log)
    finally:
        stopProxy(proxy)
