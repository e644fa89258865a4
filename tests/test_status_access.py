"""
Who may read the status and metrics pages: through the real ``twist fastcgi-proxy``,
from loopback and from this machine's own non-loopback address (which the
proxy sees as a client that is not local).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PHPFPMPool
from tests.processes import freePort, startServer, stopProxy


def outsideAddress() -> str:
    """An address of this machine that is not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # No packet is sent: this only picks a route.
        address: str = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.fail("this machine has no address outside loopback for the test")
    return address


def fetch(host: str, port: int, path: str = "/status") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def backendLabels(metricsPage: bytes) -> set[str]:
    """The C{backend} label values of the Prometheus page."""
    return {
        sample.labels["backend"]
        for family in text_string_to_metric_families(metricsPage.decode())
        for sample in family.samples
        if "backend" in sample.labels
    }


@pytest.mark.parametrize("allowOutside", [False, True], ids=["default", "status-allow"])
def test_only_loopback_and_allowed_networks_read_the_status_and_metrics_pages(
    tmp_path: Path, php_fpm: PHPFPMPool, allowOutside: bool
) -> None:
    outside = outsideAddress()
    port = freePort()
    arguments = ["--php-fpm", php_fpm.endpointDescription, "--path", php_fpm.documentRoot]
    arguments += ["--listen", f"tcp:{port}", "--status-path", "/status"]
    arguments += ["--metrics-path", "/metrics"]
    if allowOutside:
        arguments += ["--status-allow", f"{outside}/32"]
    proxy = startServer(["-m", "twisted", "fastcgi-proxy", *arguments], port, tmp_path / "log")
    try:
        assert fetch("127.0.0.1", port, "/status.php")[0] == 200
        localStatus, localBody = fetch("127.0.0.1", port)
        outsideStatus, outsideBody = fetch(outside, port)
        localMetrics, localMetricsBody = fetch("127.0.0.1", port, "/metrics")
        outsideMetrics, outsideMetricsBody = fetch(outside, port, "/metrics")
    finally:
        stopProxy(proxy)
    assert (localStatus, localMetrics) == (200, 200)
    assert php_fpm.socketPath in localBody.decode()
    assert php_fpm.endpointDescription in backendLabels(localMetricsBody)
    if allowOutside:
        assert outsideStatus == 200
        document = json.loads(outsideBody)
        assert document["totals"]["backends"] == 1
        assert php_fpm.socketPath not in outsideBody.decode()
        assert document["backends"][0]["endpoint"] == "unix socket #1"
        assert outsideMetrics == 200
        assert php_fpm.socketPath not in outsideMetricsBody.decode()
        assert backendLabels(outsideMetricsBody) == {"unix socket #1", "none"}
    else:
        assert (outsideStatus, outsideMetrics) == (403, 403)
        assert php_fpm.socketPath.encode() not in outsideBody + outsideMetricsBody
