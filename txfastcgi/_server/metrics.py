"""
Prometheus metrics of the proxy, with C{prometheus_client}, the library
operators already scrape: C{twist fastcgi-proxy --metrics-path /metrics}.

What they count comes from three places, each at the cost it can bear:

  - each answered request's L{Served} record, to which L{Metrics} listens
    as one of the site's observers: a counter and a histogram or two, a few
    microseconds a request;
  - the balancer's and the pools' own counts (connections, queue, backend
    up or down, requests given a connection, errors, waits), read only
    when a scrape asks, and with C{--workers} once a second too;
  - the spawned php-fpm's restarts, read the same way.

With C{--workers N} every process writes its values to files in one private
directory (C{prometheus_client}'s multiprocess mode) and a scrape, in
whichever process it lands, reads them all; the JSON status page is read
back from the same values (L{Metrics.statistics}), so that it too is the
sum over every process.

C{docs/guides/metrics.rst} lists the metrics, their labels and what they
mean, with queries for Grafana.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client import values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics import Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from txfastcgi._client.balancer import BackendGroup, BackendStatistics, Balancer
from txfastcgi._client.pool import PoolStatistics
from txfastcgi._http.cache import ResponseCache
from txfastcgi._http.served import Served
from txfastcgi._http.status import OperatorPage, hiddenEndpoints

if TYPE_CHECKING:
    from txfastcgi._server.phpfpm import PHPFPMService

__all__ = [
    "BUCKETS",
    "NO_BACKEND",
    "Metrics",
    "MetricsResource",
    "forgetProcess",
    "shareAcrossProcesses",
]

# Request times of PHP pages: from a cached page in 5 ms to an import that
# runs into the usual 30 s limits.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The backend label of requests that no backend answered: static files,
# these pages, errors found before PHP, and 502s when no backend could be
# connected to. Endpoint descriptions always hold a colon, so no backend
# is called this.
NO_BACKEND = "none"

# How often each process of --workers N writes what it reads from its pools.
_INTERVAL = 1.0

_STATES = ("idle", "busy", "connecting")


def shareAcrossProcesses(directory: str) -> None:
    """
    Keep this process's metric values in C{directory}, which every process
    of the proxy shares, from now on: call it before making L{Metrics}.

    C{prometheus_client} chooses where values live when it is first imported,
    from the environment; the environment is set for what it reads later,
    and the choice is made again, so that an earlier import does not keep
    this process out of the others' sight.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()


def forgetProcess(directory: str, pid: int) -> None:
    """
    Drop the live values (connections, up) of the process C{pid}, which
    exited; its counts stay in the sums.
    """
    mark_process_dead(pid, directory)


# The cache's counts, by the result label each is shown under.
_CACHE_RESULTS = {"hits": "hit", "misses": "miss", "stale": "stale", "bypasses": "bypass"}


class ACMEFailures(Protocol):
    """What L{Metrics} reads of L{txfastcgi._server.acme.ACMECertificates}."""

    failures: int


def _codeClass(status: int) -> str:
    return f"{status // 100}xx"


class Metrics:
    """
    The metrics of one proxy process, and, with C{directory}, what a scrape
    in it shows of every process.

    Called with each L{Served} record (a site observer), it counts the
    request.

    @param balancer: whose backends are shown: a site's balancer, or the
        group of every site's.
    @param phpFPMs: the spawned php-fpms, whose restarts are counted.
    @param caches: the sites' response caches, whose answers and sizes are
        shown summed; the list is read at each refresh, so that its owner
        can replace what is in it when the sites are reloaded.
    @param acme: what obtains the certificates by ACME, whose failed orders
        are counted.
    @param directory: the directory that L{shareAcrossProcesses} was given,
        for C{--workers}; without one, this process alone is shown.
    @param clock: runs the writes of a process sharing its values.
    """

    def __init__(
        self,
        balancer: Balancer | BackendGroup,
        clock: IReactorTime,
        phpFPMs: Sequence[PHPFPMService] = (),
        directory: str | None = None,
        caches: Sequence[ResponseCache] = (),
        acme: ACMEFailures | None = None,
    ) -> None:
        self._balancer = balancer
        self._acme = acme
        self._caches = caches
        self._phpFPMs = phpFPMs
        self._directory = directory
        # Where this process's metrics are registered; with a directory, the
        # scrape reads the files instead, so they are registered nowhere.
        own = CollectorRegistry() if directory is None else None
        self._scraped = own if own is not None else CollectorRegistry()
        if directory is not None:
            MultiProcessCollector(self._scraped, path=directory)
        backend = ["backend"]
        self._requests = Counter(
            "txfastcgi_requests",
            "Requests answered, by status class and the backend that answered.",
            ["code", *backend],
            registry=own,
        )
        self._requestSeconds = Histogram(
            "txfastcgi_request_duration_seconds",
            "From a request's first byte to its last byte answered.",
            backend,
            buckets=BUCKETS,
            registry=own,
        )
        self._upstreamSeconds = Histogram(
            "txfastcgi_upstream_duration_seconds",
            "From asking for a FastCGI connection to the script's last byte.",
            backend,
            buckets=BUCKETS,
            registry=own,
        )
        self._retries = Counter(
            "txfastcgi_upstream_retries",
            "Requests sent again on a new connection because a kept one was closed.",
            backend,
            registry=own,
        )
        self._up = Gauge(
            "txfastcgi_backend_up",
            "1 while the backend takes requests; 0 once any process marked it down.",
            backend,
            registry=own,
            multiprocess_mode="livemin",
        )
        self._connected = Counter(
            "txfastcgi_backend_requests",
            "Requests given a connection to the backend.",
            backend,
            registry=own,
        )
        self._errors = Counter(
            "txfastcgi_backend_errors",
            "Requests that could get no connection (502, 503 or 504).",
            backend,
            registry=own,
        )
        self._connections = Gauge(
            "txfastcgi_pool_connections",
            "FastCGI connections: idle, busy (open is both), and connecting.",
            [*backend, "state"],
            registry=own,
            multiprocess_mode="livesum",
        )
        self._limit = Gauge(
            "txfastcgi_pool_max_connections",
            "The most connections the pools open to the backend.",
            backend,
            registry=own,
            multiprocess_mode="livesum",
        )
        self._queue = Gauge(
            "txfastcgi_pool_queue_length",
            "Requests waiting for a connection beyond those being made.",
            backend,
            registry=own,
            multiprocess_mode="livesum",
        )
        self._waits = Counter(
            "txfastcgi_pool_queue_waits",
            "Requests that found no idle connection and waited.",
            backend,
            registry=own,
        )
        self._waitSeconds = Counter(
            "txfastcgi_pool_queue_wait_seconds",
            "Time those requests waited, in all.",
            backend,
            registry=own,
        )
        self._processes = Gauge(
            "txfastcgi_processes",
            "Processes serving (--workers).",
            registry=own,
            multiprocess_mode="livesum",
        )
        self._processes.set(1)
        self._restarts = (
            None
            if not phpFPMs
            else Counter(
                "txfastcgi_phpfpm_restarts",
                "Times a spawned php-fpm was started again after it died.",
                registry=own,
            )
        )
        self._acmeFailures = (
            None
            if acme is None
            else Counter(
                "txfastcgi_acme_failures",
                "ACME orders that failed: the last good certificate was served on.",
                registry=own,
            )
        )
        # Shown only with a cache, as the restarts only with a spawned php-fpm.
        self._cacheRequests = (
            None
            if not caches
            else Counter(
                "txfastcgi_cache_requests",
                "Requests the response cache answered (hit, stale), sent to PHP (miss),"
                " or let past (bypass).",
                ["result"],
                registry=own,
            )
        )
        self._cacheBytes = (
            None
            if not caches
            else Gauge(
                "txfastcgi_cache_bytes",
                "Bytes the response cache holds.",
                registry=own,
                multiprocess_mode="livesum",
            )
        )
        # What the counters that follow another count have counted so far.
        self._caughtUp: dict[object, float] = {}
        self._perRequest: dict[tuple[int, str], tuple[Counter, Histogram]] = {}
        self._perUpstream: dict[str, Histogram] = {}
        self._writing = LoopingCall(self.refresh)
        self._writing.clock = clock

    def __call__(self, served: Served) -> None:
        """Count one answered request: a few dictionary look-ups, two or three updates."""
        upstream = served.upstream
        backend = NO_BACKEND if upstream is None or upstream.backend is None else upstream.backend
        children = self._perRequest.get((served.status, backend))
        if children is None:
            children = self._perRequest[served.status, backend] = (
                self._requests.labels(_codeClass(served.status), backend),
                self._requestSeconds.labels(backend),
            )
        children[0].inc()
        children[1].observe(served.seconds)
        if upstream is not None:
            histogram = self._perUpstream.get(backend)
            if histogram is None:
                histogram = self._perUpstream[backend] = self._upstreamSeconds.labels(backend)
            histogram.observe(upstream.seconds)
            if upstream.retries:
                self._retries.labels(backend).inc(upstream.retries)

    def start(self) -> None:
        """With a directory, write what the pools say every second, for other processes' scrapes."""
        if self._directory is not None:
            self._writing.start(_INTERVAL)

    def stop(self) -> None:
        if self._writing.running:
            self._writing.stop()

    def refresh(self) -> None:
        """Set what the balancer, its pools and php-fpm say now."""
        pools = self._balancer.pools
        for backend in self._balancer.statistics():
            name = backend.endpoint
            pool = pools[name]
            self._up.labels(name).set(1 if backend.up else 0)
            for state in _STATES:
                self._connections.labels(name, state).set(getattr(backend.connections, state))
            self._limit.labels(name).set(pool.maxConnections)
            self._queue.labels(name).set(backend.connections.waiting)
            self._catchUp(self._connected, name, backend.requests)
            self._catchUp(self._errors, name, backend.errors)
            self._catchUp(self._waits, name, pool.waits)
            self._catchUp(self._waitSeconds, name, pool.waitSeconds)
        if self._restarts is not None:
            self._catchUp(self._restarts, None, sum(p.restarts for p in self._phpFPMs))
        if self._acmeFailures is not None and self._acme is not None:
            self._catchUp(self._acmeFailures, None, self._acme.failures)
        caches = self._caches
        if self._cacheRequests is not None and self._cacheBytes is not None:
            for count, result in _CACHE_RESULTS.items():
                total = sum(getattr(cache.counts, count) for cache in caches)
                self._catchUp(self._cacheRequests, result, total)
            self._cacheBytes.set(sum(cache.size for cache in caches))

    def _catchUp(self, counter: Counter, backend: str | None, total: float) -> None:
        """Count what another counter, now at C{total}, counted since the last time."""
        key = (counter, backend)
        counted = self._caughtUp.get(key, 0.0)
        if total > counted:
            (counter if backend is None else counter.labels(backend)).inc(total - counted)
            self._caughtUp[key] = total

    def render(self, hide: Mapping[str, str] | None = None) -> bytes:
        """
        The Prometheus text exposition of every process's metrics, this
        one's as of now.

        @param hide: backend names to show instead of some endpoints.
        """
        self.refresh()
        if not hide:
            return generate_latest(self._scraped)
        return generate_latest(_Relabelled(self._scraped, hide))

    def statistics(self) -> list[BackendStatistics]:
        """
        Each backend, as L{Balancer.statistics} would show it if one
        process served every request: what the status page shows with
        C{--workers}. The connections are the sums over the processes, a
        second old at most; a backend is up while no process has it down.
        """
        self.refresh()
        read: dict[tuple[str, str, str], float] = {}
        for family in self._scraped.collect():
            for sample in family.samples:
                labels = sample.labels
                read[sample.name, labels.get("backend", ""), labels.get("state", "")] = sample.value

        def count(name: str, endpoint: str, state: str = "") -> int:
            return int(read.get((name, endpoint, state), 0))

        snapshots = []
        for name in self._balancer.pools:
            connections = {
                state: count("txfastcgi_pool_connections", name, state) for state in _STATES
            }
            snapshots.append(
                BackendStatistics(
                    endpoint=name,
                    up=bool(count("txfastcgi_backend_up", name)),
                    requests=count("txfastcgi_backend_requests_total", name),
                    errors=count("txfastcgi_backend_errors_total", name),
                    connections=PoolStatistics(
                        open=connections["idle"] + connections["busy"],
                        waiting=count("txfastcgi_pool_queue_length", name),
                        **connections,
                    ),
                )
            )
        return snapshots

    def endpoints(self) -> list[str]:
        """The backends' endpoint descriptions, in order."""
        return list(self._balancer.pools)


class _Relabelled(Collector):
    """Another collector's metrics, some backends under other names."""

    def __init__(self, source: Collector, names: Mapping[str, str]) -> None:
        self._source = source
        self._names = names

    def collect(self) -> Iterable[Metric]:
        for family in self._source.collect():
            relabelled = Metric(family.name, family.documentation, family.type, family.unit)
            relabelled.samples = [
                sample._replace(
                    labels={
                        **sample.labels,
                        "backend": self._names.get(
                            sample.labels["backend"], sample.labels["backend"]
                        ),
                    }
                )
                if "backend" in sample.labels
                else sample
                for sample in family.samples
            ]
            yield relabelled


class MetricsResource(OperatorPage):
    """
    The Prometheus page: L{Metrics} as text, never cached, for the same
    readers as the status page. Readers other than loopback see each unix
    socket backend as C{unix socket #N}, as on the status page.
    """

    def __init__(self, metrics: Metrics, allowed: Iterable[str] = ()) -> None:
        super().__init__(allowed)
        self._metrics = metrics

    def answer(self, local: bool) -> tuple[bytes, bytes]:
        hide = None if local else hiddenEndpoints(self._metrics.endpoints())
        return CONTENT_TYPE_LATEST.encode(), self._metrics.render(hide)
