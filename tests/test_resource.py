"""
FastCGIResource inside a Twisted web server, in front of a real php-fpm:
what an HTTP client gets, and what PHP sees.
"""

from __future__ import annotations

import json
import os
from io import BytesIO
from typing import Any, cast

import pytest
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, Response, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from txfastcgi import FastCGIResource
from txfastcgi._client.pool import ConnectionPool


@pytest.fixture(autouse=True)
def _phpFPM(request: pytest.FixtureRequest, php_fpm: Any) -> None:
    """Hand the session's php-fpm to the trial test case."""
    request.instance.phpFPM = php_fpm


class ServedSiteTests(TestCase):
    """
    A resource tree with the PHP site at the root and again under /blog/,
    beside a resource of the application's own.
    """

    phpFPM: Any

    def setUp(self) -> None:
        self.pool = ConnectionPool(reactor, self.endpoint(), maxConnections=4)
        self.resource = FastCGIResource(self.pool, self.phpFPM.documentRoot)
        root = Resource()
        root.putChild(b"blog", FastCGIResource(self.pool, self.phpFPM.documentRoot))
        root.putChild(b"about", Data(b"an application page", "text/plain"))
        self.port = self.listen(Site(self.resource))
        self.mounted = self.listen(Site(root))
        self.agent = Agent(reactor)
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.addCleanup(self.pool.close)

    def endpoint(self) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(reactor, self.phpFPM.socketPath)

    def listen(self, site: Site) -> IListeningPort:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        return port

    def url(self, path: str, port: IListeningPort | None = None) -> bytes:
        return f"http://127.0.0.1:{portNumber(port or self.port)}{path}".encode()

    @inlineCallbacks
    def fetch(
        self,
        path: str,
        method: bytes = b"GET",
        headers: dict[bytes, list[bytes]] | None = None,
        body: bytes | None = None,
        port: IListeningPort | None = None,
    ) -> Any:
        producer = None if body is None else FileBodyProducer(BytesIO(body))
        response: Response = yield self.agent.request(
            method, self.url(path, port), Headers(headers or {}), producer
        )
        content: bytes = yield readBody(response)
        return response, content

    @inlineCallbacks
    def info(self, path: str, port: IListeningPort | None = None, **kwargs: Any) -> Any:
        response, content = yield self.fetch(path, port=port, **kwargs)
        self.assertEqual(response.code, 200, content)
        return json.loads(content)

    def logged(self) -> str:
        return "\n".join(formatEvent(event) for event in self.events)

    @inlineCallbacks
    def test_mounted_under_a_prefix_script_name_and_request_uri_carry_it(self) -> Any:
        info = yield self.info("/blog/info.php/more?q=1", port=self.mounted)
        self.assertEqual(info["SCRIPT_NAME"], "/blog/info.php")
        self.assertEqual(info["PHP_SELF"], "/blog/info.php/more")
        self.assertEqual(info["PATH_INFO"], "/more")
        self.assertEqual(info["REQUEST_URI"], "/blog/info.php/more?q=1")
        self.assertEqual(info["DOCUMENT_URI"], "/blog/info.php/more")
        self.assertEqual(info["DOCUMENT_ROOT"], os.path.realpath(self.phpFPM.documentRoot))

    @inlineCallbacks
    def test_mounted_front_controller_routes_pretty_urls(self) -> Any:
        response, content = yield self.fetch("/blog/hello/mounted", port=self.mounted)
        self.assertEqual(response.code, 200)
        self.assertIn(b"Hello, mounted!", content)
        self.assertIn(b'href="/blog/style.css"', content)
        info = yield self.info("/blog/api/info", port=self.mounted)
        self.assertEqual(info["SCRIPT_NAME"], "/blog/index.php")
        self.assertEqual(info["REQUEST_URI"], "/blog/api/info")

    @inlineCallbacks
    def test_the_applications_own_resources_are_untouched(self) -> Any:
        response, content = yield self.fetch("/about", port=self.mounted)
        self.assertEqual((response.code, content), (200, b"an application page"))
        response, _ = yield self.fetch("/blog", port=self.mounted)
        self.assertEqual(response.code, 301)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/blog/"])

    @inlineCallbacks
    def test_cgi_variables_for_a_post(self) -> Any:
        info = yield self.info(
            "/api/info?a=1",
            method=b"POST",
            headers={
                b"Content-Type": [b"application/x-www-form-urlencoded"],
                b"Cookie": [b"a=1", b"b=2"],
                b"Authorization": [b"Basic dXNlcjpwYXNz"],
                b"Proxy": [b"http://evil.example:3128"],
            },
            body=b"field=value",
        )
        self.assertEqual(info["REQUEST_METHOD"], "POST")
        self.assertEqual(info["CONTENT_TYPE"], "application/x-www-form-urlencoded")
        self.assertEqual(info["CONTENT_LENGTH"], "11")
        self.assertEqual(info["post"], {"field": "value"})
        self.assertEqual(info["cookie"], {"a": "1", "b": "2"})
        self.assertEqual(info["HTTP_AUTHORIZATION"], "Basic dXNlcjpwYXNz")
        self.assertNotIn("HTTP_PROXY", info)
        self.assertEqual(info["GATEWAY_INTERFACE"], "CGI/1.1")
        self.assertEqual(info["SERVER_PROTOCOL"], "HTTP/1.1")
        self.assertEqual(info["REQUEST_SCHEME"], "http")
        self.assertIsNone(info["HTTPS"])
        self.assertEqual(info["REDIRECT_STATUS"], "200")
        self.assertEqual(info["REMOTE_ADDR"], "127.0.0.1")
        self.assertEqual(info["SERVER_ADDR"], "127.0.0.1")
        self.assertEqual(info["SERVER_PORT"], str(portNumber(self.port)))
        self.assertEqual(info["SERVER_NAME"], "127.0.0.1")
        self.assertTrue(info["SERVER_SOFTWARE"].startswith("txfastcgi/"))

    @inlineCallbacks
    def test_configured_params_and_https_reach_php(self) -> Any:
        resource = FastCGIResource(
            self.pool,
            self.phpFPM.documentRoot,
            params={"SERVER_NAME": "www.example.com", "APP_ENV": "test"},
            https=True,
        )
        port = self.listen(Site(resource))
        info = yield self.info("/info.php", port=port, headers={b"Host": [b"spoofed"]})
        self.assertEqual(info["SERVER_NAME"], "www.example.com")
        self.assertEqual(info["HTTPS"], "on")
        self.assertEqual(info["REQUEST_SCHEME"], "https")

    @inlineCallbacks
    def test_a_large_body_is_streamed_to_php_intact(self) -> Any:
        body = os.urandom(3 * 1024 * 1024 + 17)
        info = yield self.info(
            "/info.php",
            method=b"PUT",
            headers={b"Content-Type": [b"application/octet-stream"]},
            body=body,
        )
        self.assertEqual(info["body_length"], len(body))
        self.assertEqual(info["CONTENT_LENGTH"], str(len(body)))

    @inlineCallbacks
    def test_a_large_response_is_streamed_back_intact(self) -> Any:
        size = 5 * 1024 * 1024 + 3
        response, content = yield self.fetch(f"/stream.php?bytes={size}&chunk=100000")
        self.assertEqual(response.code, 200)
        self.assertEqual(len(content), size)
        expected = (b"abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1))[:size]
        self.assertEqual(content, expected)

    @inlineCallbacks
    def test_status_header_variants(self) -> Any:
        for query, code, phrase in [
            ("code=404", 404, b"Not Found"),
            ("code=418", 418, b"I'm a teapot"),
            ("code=201&reason=Made+It", 201, b"Made It"),
        ]:
            response, content = yield self.fetch(f"/status.php?{query}")
            self.assertEqual((response.code, response.phrase), (code, phrase))
            self.assertFalse(response.headers.hasHeader(b"status"))
            self.assertEqual(content, b"status %d\n" % code)

    @inlineCallbacks
    def test_every_set_cookie_and_custom_header_arrive(self) -> Any:
        response, _ = yield self.fetch("/headers.php")
        cookies = response.headers.getRawHeaders(b"set-cookie")
        self.assertEqual(len(cookies), 2)
        self.assertTrue(cookies[0].startswith(b"first=one"))
        self.assertTrue(cookies[1].startswith(b"second=two"))
        self.assertEqual(response.headers.getRawHeaders(b"x-txfastcgi-demo"), [b"custom header"])

    @inlineCallbacks
    def test_stderr_is_logged_escaped_and_never_in_the_body(self) -> Any:
        _, content = yield self.fetch("/stderr.php?message=evil%1b[31mred")
        self.assertEqual(content, b"wrote to stderr: evil\x1b[31mred\n")
        self.assertIn("evil\\x1b[31mred", self.logged())
        self.assertNotIn("evil\x1b", self.logged())

    @inlineCallbacks
    def test_head_gets_headers_and_no_body(self) -> Any:
        response, content = yield self.fetch("/info.php", method=b"HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual(content, b"")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])

    @inlineCallbacks
    def test_head_of_a_script_that_sends_content_length_gets_its_headers(self) -> Any:
        # php-fpm sends no body for HEAD whatever Content-Length says (RFC 9112 6.3).
        response, content = yield self.fetch("/download.php", method=b"HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual(content, b"")
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"5"])
        self.assertEqual(response.headers.getRawHeaders(b"etag"), [b'"v1"'])

    @inlineCallbacks
    def test_script_304_with_content_length_is_answered(self) -> Any:
        response, content = yield self.fetch("/download.php", headers={b"If-None-Match": [b'"v1"']})
        self.assertEqual(response.code, 304)
        self.assertEqual(content, b"")
        self.assertEqual(response.headers.getRawHeaders(b"etag"), [b'"v1"'])

    @inlineCallbacks
    def test_script_204_sends_no_body_whatever_the_script_writes(self) -> Any:
        response, content = yield self.fetch("/download.php?status=204")
        self.assertEqual(response.code, 204)
        self.assertEqual(content, b"")

    @inlineCallbacks
    def test_head_and_304_keep_the_connection_usable_for_the_next_request(self) -> Any:
        requests = (
            b"HEAD /download.php HTTP/1.1\r\nHost: x\r\n\r\n"
            b'GET /download.php HTTP/1.1\r\nHost: x\r\nIf-None-Match: "v1"\r\n\r\n'
            b"GET /download.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        received = yield exchangeRaw(portNumber(self.port), requests)
        statusLines = [line for line in received.split(b"\r\n") if line.startswith(b"HTTP/1.1")]
        self.assertEqual(
            statusLines, [b"HTTP/1.1 200 OK", b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 200 OK"]
        )
        self.assertTrue(received.endswith(b"\r\n\r\nfile\n"), received)

    @inlineCallbacks
    def test_connect_is_refused_and_never_reaches_php(self) -> Any:
        # The front controller would answer 200, which a client reads as a tunnel.
        received = yield exchangeRaw(
            portNumber(self.port),
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
            b"Connection: close\r\n\r\n",
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"), received)
        self.assertIn(b"\r\nAllow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n", received)
        self.assertNotIn(b"txfastcgi demo", received)

    @inlineCallbacks
    def test_trace_is_refused(self) -> Any:
        response, _ = yield self.fetch("/info.php", method=b"TRACE")
        self.assertEqual(response.code, 405)

    @inlineCallbacks
    def test_options_asterisk_is_answered_by_the_server_not_php(self) -> Any:
        # twisted.web answers a request for * before any resource runs.
        received = yield exchangeRaw(
            portNumber(self.port), b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK\r\n"), received)
        self.assertTrue(received.endswith(b"\r\nContent-Length: 0\r\n\r\n"), received)

    @inlineCallbacks
    def test_options_of_a_script_is_the_scripts_to_answer(self) -> Any:
        info = yield self.info("/info.php", method=b"OPTIONS")
        self.assertEqual(info["REQUEST_METHOD"], "OPTIONS")

    @inlineCallbacks
    def test_static_files_support_conditional_get_and_ranges(self) -> Any:
        response, content = yield self.fetch("/style.css")
        self.assertEqual(response.code, 200)
        etag = response.headers.getRawHeaders(b"etag")[0]
        lastModified = response.headers.getRawHeaders(b"last-modified")[0]
        response, _ = yield self.fetch("/style.css", headers={b"If-None-Match": [etag]})
        self.assertEqual(response.code, 304)
        response, _ = yield self.fetch("/style.css", headers={b"If-Modified-Since": [lastModified]})
        self.assertEqual(response.code, 304)
        response, part = yield self.fetch("/style.css", headers={b"Range": [b"bytes=0-3"]})
        self.assertEqual(response.code, 206)
        self.assertEqual(part, content[:4])

    @inlineCallbacks
    def test_php_unreachable_is_a_502_page_and_source_is_still_never_served(self) -> Any:
        down = FastCGIResource(
            UNIXClientEndpoint(reactor, self.phpFPM.socketPath + ".missing"),
            self.phpFPM.documentRoot,
        )
        port = self.listen(Site(down))
        for path in ["/info.php", "/hello/x", "/lib/server_info.php"]:
            response, content = yield self.fetch(path, port=port)
            self.assertEqual(response.code, 502, path)
            self.assertIn(b"Bad Gateway", content)
            self.assertNotIn(b"<?php", content)
        self.assertIn("cannot connect to FastCGI backend", self.logged())

    @inlineCallbacks
    def test_a_client_that_leaves_mid_response_closes_the_fastcgi_connection(self) -> Any:
        """
        The script is stopped (its connection closed) rather than the
        connection going back to the pool with a response still on it.
        """
        gone: Deferred[None] = Deferred()

        class HangUpAfterFirstBytes(Protocol):
            def dataReceived(self, data: bytes) -> None:
                cast(ITCPTransport, self.transport).abortConnection()

            def connectionLost(self, reason: Failure | None = None) -> None:
                gone.callback(None)

        client = HangUpAfterFirstBytes()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", portNumber(self.port)), client
        )
        cast(ITCPTransport, client.transport).write(
            b"GET /stream.php?bytes=50000000&chunk=65536&delay=5 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        yield gone
        for _ in range(100):
            if self.pool.statistics().open == 0:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(self.pool.statistics().open, 0)
        # The pool still serves the next request.
        response, _ = yield self.fetch("/info.php")
        self.assertEqual(response.code, 200)


def portNumber(port: IListeningPort) -> int:
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return address.port


class _CollectUntilClosed(Protocol):
    """Send bytes as they are, and keep what comes back until the server closes."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._received: list[bytes] = []
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._data)

    def dataReceived(self, data: bytes) -> None:
        self._received.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(b"".join(self._received))


@inlineCallbacks
def exchangeRaw(port: int, data: bytes) -> Any:
    """What a server on C{port} answers to C{data} sent over one connection."""
    protocol = _CollectUntilClosed(data)
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    received: bytes = yield protocol.closed
    return received
