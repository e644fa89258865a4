"""
Tests for L{txfastcgi._client.balancer.Balancer}.

First step by step, on a L{MemoryReactorClock}, with a real
L{ConnectionPool} per backend in front of in-memory backends that can refuse
or hold connects; then in front of real php-fpm pools on loopback TCP, each
of which says who it is.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.server import Site

from tests.poolclients import Acquisition
from txfastcgi import FastCGIResource
from txfastcgi._client.balancer import BackendStatistics, Balancer
from txfastcgi._client.pool import ConnectionPool, PoolStatistics
from txfastcgi._client.protocol import FastCGIClientProtocol
from txfastcgi._server.phpfpm import findPHPFPM, processArguments, workerUser
from txfastcgi.errors import BackendTimeout, BackendUnavailable, QueueTimeout
from txfastcgi.testing import FakeBackendEndpoint

CONNECT_TIMEOUT = 5.0
QUEUE_TIMEOUT = 30.0
DOWN_TIME = 10.0


# In memory


class Acquired(Acquisition):
    """One C{balancer.acquire()} and what it has given so far."""

    def __init__(self, backends: FakeBackends, fresh: bool = False) -> None:
        self._backends = backends
        super().__init__(backends.balancer.acquire(fresh))
        backends.clock.advance(0)

    @property
    def backend(self) -> str:
        """The name of the backend the connection goes to."""
        return self._backends.nameOf(self.protocol)

    def release(self) -> None:
        self._backends.balancer.release(self.protocol)


class FakeBackends:
    """
    Named in-memory backends, each behind a pool of its own, and a
    L{Balancer} over the pools. A backend called C{a} is known to the
    balancer as C{tcp:a}.
    """

    def __init__(self, *names: str, maxConnections: dict[str, int] | None = None) -> None:
        self.clock = MemoryReactorClock()
        self.endpoints = {name: FakeBackendEndpoint(self.clock) for name in names}
        self.pools = {
            name: ConnectionPool(
                self.clock,
                endpoint,
                maxConnections=(maxConnections or {}).get(name, 8),
                connectTimeout=CONNECT_TIMEOUT,
                idleTimeout=60.0,
                queueTimeout=QUEUE_TIMEOUT,
            )
            for name, endpoint in self.endpoints.items()
        }
        self.balancer = Balancer(
            self.clock,
            {f"tcp:{name}": pool for name, pool in self.pools.items()},
            downTime=DOWN_TIME,
        )

    def acquire(self, count: int = 1) -> list[Acquired]:
        return [Acquired(self) for _ in range(count)]

    def nameOf(self, protocol: FastCGIClientProtocol) -> str:
        [name] = [
            name
            for name, endpoint in self.endpoints.items()
            if any(link.client is protocol for link in endpoint.links)
        ]
        return name

    def statistics(self, name: str) -> BackendStatistics:
        [statistics] = [s for s in self.balancer.statistics() if s.endpoint == f"tcp:{name}"]
        return statistics

    def up(self) -> list[str]:
        return [s.endpoint for s in self.balancer.statistics() if s.up]


def test_a_balancer_needs_a_backend() -> None:
    with pytest.raises(ValueError):
        Balancer(MemoryReactorClock(), {})


def test_a_request_goes_to_the_backend_with_the_fewest_outstanding_requests() -> None:
    backends = FakeBackends("a", "b", "c")
    first, second, third = backends.acquire(3)
    assert [first.backend, second.backend, third.backend] == ["a", "b", "c"]

    second.release()
    [fourth] = backends.acquire()

    assert fourth.backend == "b"


def test_requests_waiting_in_a_pools_queue_count_as_outstanding() -> None:
    backends = FakeBackends("a", "b", maxConnections={"a": 1, "b": 5})

    requests = backends.acquire(6)

    # A pool that is full gets no more than its share: had the balancer
    # counted only busy connections, "a" would have queued four of six.
    assert sorted(request.backend for request in requests if not request.waiting) == [
        "a",
        "b",
        "b",
        "b",
    ]
    assert backends.pools["a"].statistics() == PoolStatistics(
        open=1, idle=0, busy=1, connecting=0, waiting=2
    )


def test_ties_go_round_the_backends_in_turn() -> None:
    backends = FakeBackends("a", "b", "c")
    served = []
    for _ in range(4):
        [request] = backends.acquire()
        served.append(request.backend)
        request.release()

    assert served == ["a", "b", "c", "a"]


def test_a_connection_goes_back_to_the_pool_it_came_from() -> None:
    backends = FakeBackends("a", "b")
    fromA, fromB = backends.acquire(2)
    assert (fromA.backend, fromB.backend) == ("a", "b")

    fromB.release()

    assert backends.statistics("a").connections.busy == 1
    assert backends.statistics("b").connections == PoolStatistics(
        open=1, idle=1, busy=0, connecting=0, waiting=0
    )
    [again] = backends.acquire()
    assert again.protocol is fromB.protocol


def test_a_fresh_connection_is_a_new_one_even_when_a_kept_one_is_idle() -> None:
    backends = FakeBackends("a")
    [kept] = backends.acquire()
    kept.release()

    fresh = Acquired(backends, fresh=True)

    assert fresh.protocol is not kept.protocol
    assert backends.endpoints["a"].connectAttempts == 2


def test_a_backend_that_refuses_is_marked_down_and_the_request_goes_to_another() -> None:
    backends = FakeBackends("a", "b")
    backends.endpoints["a"].refuse = True

    with capturedLogs() as events:
        [request] = backends.acquire()

    assert request.backend == "b"
    assert backends.up() == ["tcp:b"]
    assert backends.statistics("a") == BackendStatistics(
        endpoint="tcp:a",
        up=False,
        requests=0,
        errors=1,
        connections=PoolStatistics(open=0, idle=0, busy=0, connecting=0, waiting=0),
    )
    assert backends.statistics("b").requests == 1
    [down] = [event for event in events if event.get("endpoint") == "tcp:a"]
    assert down["log_level"].name == "warn"
    assert "marked down" in down["log_format"]


def test_a_backend_whose_connect_times_out_is_marked_down_and_the_request_goes_to_another() -> None:
    backends = FakeBackends("a", "b")
    backends.endpoints["a"].hold = True
    [request] = backends.acquire()
    assert request.waiting

    backends.clock.advance(CONNECT_TIMEOUT)

    assert request.backend == "b"
    assert backends.up() == ["tcp:b"]


def test_a_backend_marked_down_gets_no_request_until_its_down_time_is_over() -> None:
    backends = FakeBackends("a", "b")
    endpointA = backends.endpoints["a"]
    endpointA.refuse = True
    backends.acquire()
    endpointA.refuse = False

    backends.clock.advance(DOWN_TIME - 0.1)
    served = [request.backend for request in backends.acquire(5)]

    assert served == ["b"] * 5
    assert endpointA.connectAttempts == 1


def test_after_its_down_time_one_request_probes_a_backend_and_brings_it_back() -> None:
    backends = FakeBackends("a", "b")
    endpointA = backends.endpoints["a"]
    endpointA.refuse = True
    backends.acquire()
    backends.clock.advance(DOWN_TIME)
    endpointA.refuse = False
    endpointA.hold = True

    probe, *others = backends.acquire(3)

    # The backend back from its down time, with nothing outstanding, gets
    # the next request; while that probe waits for its connect, the others
    # go elsewhere, although "b" has more outstanding requests.
    assert probe.waiting
    assert [request.backend for request in others] == ["b", "b"]
    assert backends.up() == ["tcp:b"]

    with capturedLogs() as events:
        endpointA.completeHeld()
        backends.clock.advance(0)

    assert probe.backend == "a"
    assert backends.up() == ["tcp:a", "tcp:b"]
    [up] = [event for event in events if event.get("endpoint") == "tcp:a"]
    assert "up again" in up["log_format"]


def test_a_probe_that_fails_keeps_the_backend_down_for_another_down_time() -> None:
    backends = FakeBackends("a", "b")
    endpointA = backends.endpoints["a"]
    endpointA.refuse = True
    backends.acquire()
    backends.clock.advance(DOWN_TIME)

    [probe] = backends.acquire()
    backends.clock.advance(DOWN_TIME - 0.1)
    served = [request.backend for request in backends.acquire(3)]

    assert probe.backend == "b"
    assert served == ["b"] * 3
    assert endpointA.connectAttempts == 2
    assert backends.statistics("a").errors == 2


def test_when_every_backend_refuses_the_request_fails_at_once_having_tried_each_once() -> None:
    backends = FakeBackends("a", "b", "c")
    for endpoint in backends.endpoints.values():
        endpoint.refuse = True

    [request] = backends.acquire()

    error = request.failure.value
    assert isinstance(error, BackendUnavailable)
    assert [endpoint.connectAttempts for endpoint in backends.endpoints.values()] == [1, 1, 1]
    for name in ["tcp:a", "tcp:b", "tcp:c"]:
        assert name in str(error)
    assert backends.clock.seconds() == 0
    assert backends.up() == []


def test_when_every_backend_is_down_a_request_still_tries_them_so_a_restart_is_found_at_once() -> (
    None
):
    backends = FakeBackends("a", "b")
    for endpoint in backends.endpoints.values():
        endpoint.refuse = True
    backends.acquire()
    assert backends.up() == []
    backends.endpoints["b"].refuse = False

    [request] = backends.acquire()

    assert request.backend == "b"
    assert backends.up() == ["tcp:b"]
    assert backends.clock.seconds() == 0


def test_when_every_backend_is_down_the_one_whose_down_time_ends_first_is_tried_first() -> None:
    backends = FakeBackends("a", "b")
    endpointA, endpointB = backends.endpoints.values()
    endpointB.refuse = True
    backends.acquire(2)  # "b" is down until DOWN_TIME.
    backends.clock.advance(1)
    endpointA.refuse = True
    endpointB.refuse = False
    endpointB.hold = True
    [request] = backends.acquire()  # "a" is down until DOWN_TIME + 1; "b" gets a probe...
    request.deferred.cancel()  # ... that gives up, so that neither is being probed.
    endpointA.refuse = endpointB.hold = False
    triedA = endpointA.connectAttempts

    [request] = backends.acquire()

    assert request.backend == "b"
    assert endpointA.connectAttempts == triedA


def test_while_every_down_backend_is_being_probed_other_requests_fail_at_once() -> None:
    backends = FakeBackends("a", "b")
    for endpoint in backends.endpoints.values():
        endpoint.refuse = True
    backends.acquire()
    for endpoint in backends.endpoints.values():
        endpoint.refuse = False
        endpoint.hold = True  # A host that is gone: connects neither fail nor succeed.

    probeA, probeB, third = backends.acquire(3)

    assert probeA.waiting and probeB.waiting
    assert isinstance(third.failure.value, BackendUnavailable)
    assert str(third.failure.value) == "every FastCGI backend is down"
    assert backends.clock.seconds() == 0


def test_a_lone_backend_is_tried_by_every_request_so_a_restart_is_noticed_at_once() -> None:
    backends = FakeBackends("a")
    endpoint = backends.endpoints["a"]
    endpoint.refuse = True
    [refused] = backends.acquire()
    assert isinstance(refused.failure.value, BackendUnavailable)

    endpoint.refuse = False
    [served] = backends.acquire()

    assert served.backend == "a"
    assert backends.up() == ["tcp:a"]


def test_a_request_that_waited_too_long_in_a_queue_fails_without_marking_the_backend_down() -> None:
    backends = FakeBackends("a", "b", maxConnections={"a": 1, "b": 1})
    _busyA, _busyB, queued = backends.acquire(3)
    assert queued.waiting

    backends.clock.advance(QUEUE_TIMEOUT)

    # Another backend would make it wait again; it gets 503 instead.
    assert isinstance(queued.failure.value, QueueTimeout)
    assert backends.up() == ["tcp:a", "tcp:b"]
    assert [(s.requests, s.errors) for s in backends.balancer.statistics()] == [(1, 1), (1, 0)]


def test_a_request_that_waited_past_its_read_timeout_fails_without_marking_the_backend_down() -> (
    None
):
    """The time it arrived is passed to the pool, which fails it with BackendTimeout (a 504)."""
    backends = FakeBackends("a", maxConnections={"a": 1})
    backends.clock.advance(100)
    backends.acquire()

    late = Acquisition(backends.balancer.acquire(since=backends.clock.seconds() - 55))
    backends.clock.advance(5)

    assert late.failure.check(BackendTimeout)
    assert backends.up() == ["tcp:a"]
    assert backends.statistics("a").errors == 1


def test_a_request_given_up_is_no_longer_outstanding() -> None:
    backends = FakeBackends("a", "b")
    backends.endpoints["b"].hold = True
    busyA, givenUp = backends.acquire(2)
    assert busyA.backend == "a" and givenUp.waiting

    givenUp.deferred.cancel()
    [following] = backends.acquire()

    assert givenUp.failure.check(CancelledError)
    # Had the request given up still counted, "b" would tie with "a", whose
    # turn it is.
    assert following.waiting
    assert backends.endpoints["b"].heldAttempts == 1
    assert backends.statistics("b").errors == 0


def test_giving_up_a_probe_lets_another_request_probe() -> None:
    backends = FakeBackends("a")
    endpoint = backends.endpoints["a"]
    endpoint.refuse = True
    backends.acquire()
    endpoint.refuse = False
    endpoint.hold = True
    [probe] = backends.acquire()

    probe.deferred.cancel()
    [following] = backends.acquire()

    assert following.waiting
    assert endpoint.heldAttempts == 1


# In front of real php-fpm pools on loopback TCP

WHOAMI = """<?php
// Answers, after ?ms= milliseconds, with the name of the php-fpm pool that
// ran it. A response this small reaches the socket in one write, with the
// END_REQUEST record, when the script ends.
usleep(max((int) ($_GET['ms'] ?? 0), 0) * 1000);
header('Content-Type: text/plain');
echo getenv('TXFASTCGI_BACKEND');
"""

_START_TIMEOUT = 10.0


@dataclass
class TCPBackend:
    """A php-fpm pool listening on loopback TCP, whose scripts know its name."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    runDirectory: str

    @property
    def endpointDescription(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def kill(self) -> None:
        """
        Kill the master and its workers at once, as a crash would, without
        waiting for them to go: the proxy must cope with whatever order
        their sockets close in.
        """
        assert os.getpgid(self.process.pid) == self.process.pid, "php-fpm calls setsid()"
        os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self.process.wait()
        shutil.rmtree(self.runDirectory, ignore_errors=True)


class TCPBackendFactory(Protocol):
    def __call__(self, name: str, children: int, port: int | None = None) -> TCPBackend: ...


def freePort() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def startTCPBackend(documentRoot: str, name: str, children: int, port: int) -> TCPBackend:
    runDirectory = tempfile.mkdtemp(prefix=f"txfastcgi-test-backend-{name}-")
    user = workerUser(documentRoot)
    configuration = "\n".join(
        [
            "[global]",
            f"pid = {runDirectory}/php-fpm.pid",
            "error_log = /dev/stderr",
            "daemonize = no",
            f"[{name}]",
            *([f"user = {user}"] if user is not None else []),
            f"listen = 127.0.0.1:{port}",
            "pm = static",
            f"pm.max_children = {children}",
            f"env[TXFASTCGI_BACKEND] = {name}",
            "",
        ]
    )
    configPath = Path(runDirectory, "php-fpm.conf")
    configPath.write_text(configuration)
    logPath = Path(runDirectory, "php-fpm.log")
    with logPath.open("wb") as log:
        process = subprocess.Popen(
            processArguments(findPHPFPM(), str(configPath), allowRoot=False),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    backend = TCPBackend(name, port, process, runDirectory)
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return backend
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                failure = f"php-fpm {name} did not start:\n{logPath.read_text(errors='replace')}"
                backend.stop()
                pytest.fail(failure, pytrace=False)
            time.sleep(0.01)


@pytest.fixture(scope="module")
def whoamiRoot() -> Iterator[str]:
    """A document root, readable by php-fpm's workers, with C{whoami.php}."""
    directory = tempfile.mkdtemp(prefix="txfastcgi-test-balancer-")
    try:
        os.chmod(directory, 0o755)
        Path(directory, "whoami.php").write_text(WHOAMI)
        os.chmod(Path(directory, "whoami.php"), 0o644)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def tcpBackends(whoamiRoot: str) -> Iterator[TCPBackendFactory]:
    """Start php-fpm pools on loopback TCP; they are stopped after the test."""
    started: list[TCPBackend] = []

    def start(name: str, children: int, port: int | None = None) -> TCPBackend:
        backend = startTCPBackend(whoamiRoot, name, children, port or freePort())
        started.append(backend)
        return backend

    try:
        yield start
    finally:
        for backend in started:
            backend.stop()


@pytest.fixture(autouse=True)
def _fixturesForTrial(request: pytest.FixtureRequest) -> None:
    """Hand the fixtures to the trial test cases."""
    if request.instance is not None:
        request.instance.startBackend = request.getfixturevalue("tcpBackends")
        request.instance.documentRoot = request.getfixturevalue("whoamiRoot")


class BalancedSiteTests(TestCase):
    """
    An HTTP server whose L{FastCGIResource} balances over php-fpm pools on
    loopback TCP, and its clients.
    """

    startBackend: TCPBackendFactory
    documentRoot: str

    def serve(self, *backends: TCPBackend, maxConnections: int) -> Balancer:
        """Serve the document root through these backends; return the balancer."""
        pools = {
            backend.endpointDescription: ConnectionPool(
                reactor,
                TCP4ClientEndpoint(reactor, "127.0.0.1", backend.port),
                maxConnections=maxConnections,
                connectTimeout=CONNECT_TIMEOUT,
                idleTimeout=60.0,
            )
            for backend in backends
        }
        balancer = Balancer(reactor, pools, downTime=DOWN_TIME)
        self.addCleanup(balancer.close)
        site = Site(FastCGIResource(balancer, self.documentRoot))
        port: IListeningPort = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
        self.agent = Agent(reactor)
        return balancer

    async def get(self, path: str) -> tuple[int, bytes]:
        response = await self.agent.request(b"GET", (self.url + path).encode())
        return response.code, await readBody(response)

    def whoami(self, count: int, ms: int = 0) -> Deferred[list[tuple[int, bytes]]]:
        """Ask C{count} times at once which backend answers."""
        return gatherResults(
            [Deferred.fromCoroutine(self.get(f"/whoami.php?ms={ms}")) for _ in range(count)]
        )

    @inlineCallbacks
    def test_concurrent_requests_are_spread_over_the_backends(self) -> Any:
        self.serve(self.startBackend("a", 2), self.startBackend("b", 2), maxConnections=2)

        answers = yield self.whoami(4, ms=300)

        self.assertEqual(sorted(answers), [(200, b"a"), (200, b"a"), (200, b"b"), (200, b"b")])

    @inlineCallbacks
    def test_a_backend_busy_with_a_slow_request_gets_no_more_until_the_other_has_as_many(
        self,
    ) -> Any:
        balancer = self.serve(
            self.startBackend("a", 2), self.startBackend("b", 2), maxConnections=2
        )
        slow = Deferred.fromCoroutine(self.get("/whoami.php?ms=1000"))
        yield waitUntil(lambda: any(s.connections.busy for s in balancer.statistics()))

        quick = []
        for _ in range(4):
            quick.append((yield Deferred.fromCoroutine(self.get("/whoami.php"))))
        slowAnswer = yield slow

        # Round robin would have sent two of the four to the slow one's backend.
        other = b"b" if slowAnswer == (200, b"a") else b"a"
        self.assertEqual(quick, [(200, other)] * 4)

    def load(
        self, count: int, concurrency: int, afterEach: Callable[[int], None] = lambda answered: None
    ) -> Deferred[collections.Counter[tuple[int, bytes]]]:
        """
        GET C{count} times a script that takes 20 ms, C{concurrency} at a
        time; call C{afterEach} with the number answered so far after each.
        """
        answers: collections.Counter[tuple[int, bytes]] = collections.Counter()
        remaining = list(range(count))

        async def client() -> None:
            while remaining:
                remaining.pop()
                answers[await self.get("/whoami.php?ms=20")] += 1
                afterEach(sum(answers.values()))

        return gatherResults(
            [Deferred.fromCoroutine(client()) for _ in range(concurrency)]
        ).addCallback(lambda _: answers)

    @inlineCallbacks
    def test_a_backend_killed_between_requests_of_a_load_run_loses_no_get(self) -> Any:
        a, b = self.startBackend("a", 4), self.startBackend("b", 4)
        balancer = self.serve(a, b, maxConnections=4)
        before = yield self.load(100, concurrency=20)
        self.assertEqual(set(before), {(200, b"a"), (200, b"b")})

        b.stop()
        with capturedLogs() as events:
            after = yield self.load(100, concurrency=20)

        # b's kept connections are closed: a GET sent on one is sent again.
        self.assertEqual(after, {(200, b"a"): 100})
        self.assertEqual([s.up for s in balancer.statistics()], [True, False])
        self.assertIn(b.endpointDescription, [event.get("endpoint") for event in events])

    @inlineCallbacks
    def test_a_backend_killed_during_a_load_run_loses_no_get(self) -> Any:
        """
        The requests that b was running when it died had no byte of answer
        yet (the script answers in one write when it ends): they are GETs,
        sent again, and the balancer sends them to a.
        """
        a, b = self.startBackend("a", 4), self.startBackend("b", 4)
        balancer = self.serve(a, b, maxConnections=4)

        def killHalfWay(answered: int) -> None:
            if answered == 50:
                b.kill()

        answers = yield self.load(200, concurrency=20, afterEach=killHalfWay)

        self.assertEqual(set(answers), {(200, b"a"), (200, b"b")}, answers)
        self.assertEqual([s.up for s in balancer.statistics()], [True, False])

    @inlineCallbacks
    def test_when_every_backend_is_down_requests_get_502_at_once_until_one_is_back(
        self,
    ) -> Any:
        a, b = self.startBackend("a", 1), self.startBackend("b", 1)
        self.serve(a, b, maxConnections=1)
        for backend in (a, b):
            backend.stop()

        for _ in range(3):
            started = time.monotonic()
            code, _ = yield Deferred.fromCoroutine(self.get("/whoami.php"))
            self.assertEqual(code, 502)
            self.assertLess(time.monotonic() - started, CONNECT_TIMEOUT / 10)

        self.startBackend("b again", 1, port=b.port)
        answer = yield Deferred.fromCoroutine(self.get("/whoami.php"))

        # Found at once, not after the down time.
        self.assertEqual(answer, (200, b"b again"))


def waitUntil(condition: Callable[[], bool], timeout: float = 5.0) -> Deferred[None]:
    """Poll C{condition} on the reactor until it holds."""

    async def poll() -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await deferLater(reactor, 0.01)

    return Deferred.fromCoroutine(poll())
