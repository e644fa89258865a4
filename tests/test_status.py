"""
Tests for L{txfastcgi._http.status}: the JSON status page of the backends, as an
operator's script reads it, beside a PHP site served by a real php-fpm and a
backend that is not there.
"""

from __future__ import annotations

import json
import tempfile
from typing import TYPE_CHECKING, Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from txfastcgi import FastCGIResource
from txfastcgi._client.balancer import BackendStatistics, Balancer
from txfastcgi._client.pool import ConnectionPool, PoolStatistics
from txfastcgi._http.status import StatusResource, WithPages, statusDocument

if TYPE_CHECKING:
    from tests.conftest import PHPFPMFactory


def test_the_document_has_each_backend_and_the_totals() -> None:
    document = statusDocument(
        [
            BackendStatistics(
                endpoint="tcp:10.0.0.2:9000",
                up=True,
                requests=120,
                errors=1,
                connections=PoolStatistics(open=4, idle=1, busy=3, connecting=0, waiting=2),
            ),
            BackendStatistics(
                endpoint="tcp:10.0.0.3:9000",
                up=False,
                requests=7,
                errors=5,
                connections=PoolStatistics(open=0, idle=0, busy=0, connecting=1, waiting=0),
            ),
        ]
    )

    assert document == {
        "backends": [
            {
                "endpoint": "tcp:10.0.0.2:9000",
                "up": True,
                "open": 4,
                "idle": 1,
                "busy": 3,
                "connecting": 0,
                "waiting": 2,
                "requests": 120,
                "errors": 1,
            },
            {
                "endpoint": "tcp:10.0.0.3:9000",
                "up": False,
                "open": 0,
                "idle": 0,
                "busy": 0,
                "connecting": 1,
                "waiting": 0,
                "requests": 7,
                "errors": 5,
            },
        ],
        "totals": {
            "backends": 2,
            "up": 1,
            "open": 4,
            "idle": 1,
            "busy": 3,
            "connecting": 1,
            "waiting": 2,
            "requests": 127,
            "errors": 6,
        },
    }


@pytest.fixture(autouse=True)
def _phpFPMFactory(request: pytest.FixtureRequest, php_fpm_factory: PHPFPMFactory) -> None:
    """Hand the php-fpm factory to the trial test cases."""
    if request.instance is not None:
        request.instance.startPHPFPM = php_fpm_factory


class StatusPageTests(TestCase):
    """
    A site whose root serves the test site through a balancer over two
    backends, a php-fpm with one worker and one that is not there, with the
    status page at C{/status}.
    """

    startPHPFPM: PHPFPMFactory

    def setUp(self) -> None:
        phpFPM = self.startPHPFPM(children=1)
        self.missing = f"unix:{tempfile.mkdtemp()}/no-php-fpm-here.sock"
        self.live = phpFPM.endpointDescription
        pools = {
            self.missing: ConnectionPool(
                reactor, UNIXClientEndpoint(reactor, self.missing[len("unix:") :])
            ),
            self.live: ConnectionPool(
                reactor, UNIXClientEndpoint(reactor, phpFPM.socketPath), maxConnections=1
            ),
        }
        balancer = Balancer(reactor, pools)
        self.addCleanup(balancer.close)
        root = WithPages(
            FastCGIResource(balancer, phpFPM.documentRoot), {b"/status": StatusResource(balancer)}
        )
        self.url = self.listen(root)
        self.agent = Agent(reactor)

    def listen(self, root: Resource) -> str:
        port: IListeningPort = reactor.listenTCP(0, Site(root), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]

    async def fetch(self, path: str, method: bytes = b"GET") -> tuple[IResponse, bytes]:
        response = await self.agent.request(method, (self.url + path).encode())
        return response, await readBody(response)

    async def status(self) -> Any:
        response, body = await self.fetch("/status")
        assert response.code == 200, body
        return json.loads(body)

    def backend(self, status: Any, endpoint: str) -> Any:
        [backend] = [backend for backend in status["backends"] if backend["endpoint"] == endpoint]
        return backend

    @inlineCallbacks
    def test_the_status_page_is_json_that_no_cache_keeps(self) -> Any:
        response, body = yield Deferred.fromCoroutine(self.fetch("/status"))

        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        idle = {
            "up": True,
            "open": 0,
            "idle": 0,
            "busy": 0,
            "connecting": 0,
            "waiting": 0,
            "requests": 0,
            "errors": 0,
        }
        self.assertEqual(
            json.loads(body)["backends"],
            [{"endpoint": self.missing, **idle}, {"endpoint": self.live, **idle}],
        )

    @inlineCallbacks
    def test_the_numbers_follow_what_the_requests_did(self) -> Any:
        # Two quick requests: the first tries the missing backend, which is
        # then marked down, and both are served by the live one.
        for _ in range(2):
            response, _ = yield Deferred.fromCoroutine(self.fetch("/status.php"))
            self.assertEqual(response.code, 200)
        status = yield Deferred.fromCoroutine(self.status())
        self.assertEqual(
            self.backend(status, self.missing),
            {
                "endpoint": self.missing,
                "up": False,
                "open": 0,
                "idle": 0,
                "busy": 0,
                "connecting": 0,
                "waiting": 0,
                "requests": 0,
                "errors": 1,
            },
        )
        self.assertEqual(
            self.backend(status, self.live),
            {
                "endpoint": self.live,
                "up": True,
                "open": 1,
                "idle": 1,
                "busy": 0,
                "connecting": 0,
                "waiting": 0,
                "requests": 2,
                "errors": 0,
            },
        )

        # Two slow ones at once: one runs on the only connection, the other
        # waits for it.
        slow = "/stream.php?bytes=2&chunk=1&delay=400"
        running = Deferred.fromCoroutine(self.fetch(slow))
        waiting = Deferred.fromCoroutine(self.fetch(slow))
        for _ in range(200):
            status = yield Deferred.fromCoroutine(self.status())
            if status["totals"]["waiting"]:
                break
            yield deferLater(reactor, 0.01)
        live = self.backend(status, self.live)
        self.assertEqual((live["open"], live["idle"], live["busy"], live["waiting"]), (1, 0, 1, 1))
        self.assertEqual(
            status["totals"],
            {
                "backends": 2,
                "up": 1,
                "open": 1,
                "idle": 0,
                "busy": 1,
                "connecting": 0,
                "waiting": 1,
                "requests": 3,
                "errors": 1,
            },
        )

        for slowRequest in (running, waiting):
            response, body = yield slowRequest
            self.assertEqual((response.code, body), (200, b"ab"))
        status = yield Deferred.fromCoroutine(self.status())
        live = self.backend(status, self.live)
        self.assertEqual(
            (live["open"], live["idle"], live["busy"], live["waiting"], live["requests"]),
            (1, 1, 0, 0, 4),
        )

    @inlineCallbacks
    def test_only_the_status_path_itself_is_the_status_page(self) -> Any:
        for path in ["/status.php", "/status/", "/status/x", "/sub/status"]:
            _, body = yield Deferred.fromCoroutine(self.fetch(path))
            self.assertNotIn(b'"totals"', body, path)
        _, body = yield Deferred.fromCoroutine(self.fetch("/status?format=json"))
        self.assertIn(b'"totals"', body)

    @inlineCallbacks
    def test_the_status_page_answers_only_get_and_head(self) -> Any:
        response, body = yield Deferred.fromCoroutine(self.fetch("/status", b"HEAD"))
        self.assertEqual((response.code, body), (200, b""))
        response, _ = yield Deferred.fromCoroutine(self.fetch("/status", b"POST"))
        self.assertEqual(response.code, 405)

    @inlineCallbacks
    def test_beside_a_resource_tree_the_other_paths_reach_the_tree(self) -> Any:
        application = Resource()
        application.putChild(b"about", Data(b"an application page", "text/plain"))
        status = StatusResource(
            Balancer(
                reactor,
                {
                    "tcp:10.0.0.2:9000": ConnectionPool(
                        reactor, UNIXClientEndpoint(reactor, "/nonexistent")
                    )
                },
            )
        )
        self.url = self.listen(WithPages(application, {b"/status": status}))

        response, body = yield Deferred.fromCoroutine(self.fetch("/about"))
        self.assertEqual((response.code, body), (200, b"an application page"))
        document = yield Deferred.fromCoroutine(self.status())
        self.assertEqual(document["totals"]["backends"], 1)
