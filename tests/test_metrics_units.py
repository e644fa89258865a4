"""
L{txfastcgi._server.metrics} on a deterministic clock: what each answered request
counts, what is read from the balancer and its pools, how a process shares
its values with the others, and that the guide lists every metric.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from txfastcgi._client.balancer import Balancer
from txfastcgi._client.pool import ConnectionPool
from txfastcgi._http.cache import ResponseCache
from txfastcgi._http.served import Served, Upstream
from txfastcgi._http.status import statusDocument
from txfastcgi._server.metrics import Metrics, shareAcrossProcesses
from txfastcgi._server.phpfpm import PHPFPMService

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guides" / "metrics.rst"
BACKEND = "tcp:10.0.0.2:9000"


class _Refusing:
    """An endpoint whose connects wait until the test refuses them."""

    def __init__(self) -> None:
        self.connecting: list[Deferred[object]] = []

    def connect(self, factory: Factory[Protocol]) -> Deferred[object]:
        self.connecting.append(Deferred())
        return self.connecting[-1]

    def refuse(self) -> None:
        self.connecting.pop(0).errback(ConnectionRefusedError("Connection refused"))


def served(status: int, seconds: float, upstream: Upstream | None) -> Served:
    return Served(
        time=0.0,
        client="127.0.0.1",
        method=b"GET",
        target=b"/",
        protocol=b"HTTP/1.1",
        status=status,
        sent=0,
        referrer=None,
        userAgent=None,
        host=None,
        seconds=seconds,
        upstream=upstream,
    )


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def build() -> tuple[Metrics, Balancer, _Refusing, MemoryReactorClock]:
    clock = MemoryReactorClock()
    endpoint = _Refusing()
    balancer = Balancer(clock, {BACKEND: ConnectionPool(clock, endpoint, maxConnections=3)})  # type: ignore[arg-type]
    return Metrics(balancer, clock), balancer, endpoint, clock


def test_each_request_counts_under_its_class_and_backend() -> None:
    metrics, _, _, _ = build()
    metrics(served(200, 0.003, Upstream(BACKEND, 0.002)))
    metrics(served(201, 0.2, Upstream(BACKEND, 0.19, retries=1)))
    metrics(served(404, 0.001, None))
    metrics(served(502, 0.004, Upstream(None, 0.004)))
    found = samples(metrics)

    def value(name: str, **labels: str) -> float:
        return found[name, frozenset(labels.items())]

    assert value("txfastcgi_requests_total", code="2xx", backend=BACKEND) == 2
    assert value("txfastcgi_requests_total", code="4xx", backend="none") == 1
    assert value("txfastcgi_requests_total", code="5xx", backend="none") == 1
    duration = "txfastcgi_request_duration_seconds_bucket"
    assert value(duration, backend=BACKEND, le="0.005") == 1
    assert value(duration, backend=BACKEND, le="0.25") == 2
    assert value("txfastcgi_upstream_duration_seconds_count", backend=BACKEND) == 2
    assert value("txfastcgi_upstream_duration_seconds_count", backend="none") == 1
    assert value("txfastcgi_upstream_retries_total", backend=BACKEND) == 1


def test_the_pools_are_read_when_scraped() -> None:
    """
    A request that waits for a connect that is refused: the backend's
    error, its wait, and the backend down, as the balancer says them.
    """
    metrics, balancer, endpoint, clock = build()
    failed = balancer.acquire()
    failed.addErrback(lambda reason: None)
    before = samples(metrics)
    clock.advance(0.25)
    endpoint.refuse()
    after = samples(metrics)

    def value(
        found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
    ) -> float:
        return found[name, frozenset({"backend": BACKEND, **labels}.items())]

    assert value(before, "txfastcgi_pool_connections", state="connecting") == 1
    assert value(before, "txfastcgi_backend_up") == 1
    assert value(after, "txfastcgi_pool_connections", state="connecting") == 0
    assert value(after, "txfastcgi_backend_up") == 0
    assert value(after, "txfastcgi_backend_errors_total") == 1
    assert value(after, "txfastcgi_pool_queue_waits_total") == 1
    assert value(after, "txfastcgi_pool_queue_wait_seconds_total") == 0.25
    assert value(after, "txfastcgi_pool_max_connections") == 3
    # Scraped again, nothing new is counted twice.
    assert value(samples(metrics), "txfastcgi_backend_errors_total") == 1


def test_the_status_read_back_from_the_metrics_is_the_balancers() -> None:
    metrics, balancer, endpoint, _ = build()
    balancer.acquire().addErrback(lambda reason: None)
    balancer.acquire().addErrback(lambda reason: None)
    endpoint.refuse()
    assert statusDocument(metrics.statistics()) == statusDocument(balancer.statistics())


class _ProcessReactor(MemoryReactorClock):
    """A clock that starts processes only in name, for a supervisor to restart."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[ProcessProtocol] = []

    def spawnProcess(self, protocol: ProcessProtocol, *args: object, **kwargs: object) -> object:
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.started.append(protocol)
        return transport


def spawned(tmp_path: Path) -> tuple[PHPFPMService, _ProcessReactor]:
    reactor = _ProcessReactor()
    phpFPM = PHPFPMService(str(tmp_path), binary="/bin/false", reactor=reactor)  # type: ignore[arg-type]
    phpFPM.startService()
    return phpFPM, reactor


def test_the_restarts_of_a_spawned_php_fpm_are_counted(tmp_path: Path) -> None:
    phpFPM, reactor = spawned(tmp_path)
    balancer = Balancer(reactor, {BACKEND: ConnectionPool(reactor, _Refusing())})  # type: ignore[arg-type]
    metrics = Metrics(balancer, reactor, [phpFPM])
    restarts = ("txfastcgi_phpfpm_restarts_total", frozenset[tuple[str, str]]())
    assert samples(metrics)[restarts] == 0
    reactor.advance(60)
    reactor.started[-1].processEnded(Failure(ProcessTerminated(signal=9)))
    assert samples(metrics)[restarts] == 0  # Not started again yet.
    reactor.advance(0)
    assert len(reactor.started) == 2
    assert samples(metrics)[restarts] == 1


def test_with_a_directory_the_pools_counts_are_written_every_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What another process's scrape reads of this one."""
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    shareAcrossProcesses(str(tmp_path))
    clock = MemoryReactorClock()
    endpoint = _Refusing()
    balancer = Balancer(clock, {BACKEND: ConnectionPool(clock, endpoint)})  # type: ignore[arg-type]
    metrics = Metrics(balancer, clock, directory=str(tmp_path))
    metrics.start()
    reader = CollectorRegistry()
    MultiProcessCollector(reader, path=str(tmp_path))

    def errors() -> float | None:
        return reader.get_sample_value("txfastcgi_backend_errors_total", {"backend": BACKEND})

    balancer.acquire().addErrback(lambda reason: None)
    endpoint.refuse()
    clock.advance(0.5)
    assert not errors()
    clock.advance(0.5)
    assert errors() == 1
    metrics.stop()
    assert not clock.getDelayedCalls()
    values.close_all_multiprocess_files()


def test_the_guide_lists_every_metric(tmp_path: Path) -> None:
    phpFPM, reactor = spawned(tmp_path)
    balancer = Balancer(reactor, {BACKEND: ConnectionPool(reactor, _Refusing())})  # type: ignore[arg-type]
    cache = ResponseCache(1024)
    acme = SimpleNamespace(failures=1)
    page = Metrics(balancer, reactor, [phpFPM], caches=[cache], acme=acme).render().decode()
    names = {
        family.name
        for family in text_string_to_metric_families(page)
        # When each counter was made: prometheus_client's, for rate() after a restart.
        if not family.name.endswith("_created")
    }
    assert len(names) == 17
    guide = GUIDE.read_text()
    for name in names:
        assert re.search(rf"``{name}(_total)?``", guide), name
