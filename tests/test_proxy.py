"""
The core, L{txfastcgi._http.core.Proxy}, specified directly: a request described
as L{RequestFacts}, a L{ResponseWriter} that records what the front is told,
and the in-memory fake php-fpm on a L{MemoryReactorClock}.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IPushProducer, IReactorUNIX
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.trial.unittest import TestCase
from twisted.web.server import Site as WebSite

from txfastcgi import FastCGIResource
from txfastcgi._client.pool import ConnectionPool
from txfastcgi._client.protocol import FastCGIClientProtocol
from txfastcgi._fastcgi.records import ProtocolStatus
from txfastcgi._http.core import Phase, Proxy, RequestFacts
from txfastcgi._http.framing import BodyFraming, Delimiter
from txfastcgi._http.served import Upstream, upstreamOf
from txfastcgi.errors import BackendError
from txfastcgi.testing import FakeBackend, FakeBackendEndpoint, ReceivedRequest, Reply, stall


class RecordingWriter:
    """A L{ResponseWriter} that records every call, as a front would see them."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.code = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.framing: BodyFraming | None = None
        self.body = b""
        self.producer: IPushProducer | None = None
        self.served: str | None = None

    def writeInformational(self, code: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self.calls.append("writeInformational")

    def writeHead(
        self,
        code: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        framing: BodyFraming,
    ) -> None:
        self.calls.append("writeHead")
        self.code, self.reason, self.headers, self.framing = code, reason, list(headers), framing

    def writeBody(self, data: bytes) -> None:
        self.calls.append("writeBody")
        self.body += data

    def flush(self) -> None:
        self.calls.append("flush")

    def finish(self) -> None:
        self.calls.append("finish")

    def abort(self) -> None:
        self.calls.append("abort")

    def registerProducer(self, producer: IPushProducer) -> None:
        self.calls.append("registerProducer")
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.calls.append("unregisterProducer")
        self.producer = None

    def serveFile(self, filename: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self.calls.append("serveFile")
        self.served = filename

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key.lower() == name]
        return values[-1] if values else None

    @property
    def finished(self) -> bool:
        return self.calls[-1:] == ["finish"]


class Record:
    """What a front would keep for its access log."""


@pytest.fixture
def root(tmp_path: Path) -> str:
    for name in ("index.php", "hello.php", "style.css", "sub/index.php", ".env"):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    (tmp_path / "empty").mkdir()
    return str(tmp_path)


class Site:
    """A proxy over a pool of fake php-fpm connections, and requests to it."""

    def __init__(self, root: str, respond: Any = None, **poolOptions: Any) -> None:
        self.clock = MemoryReactorClock()
        self.endpoint = FakeBackendEndpoint(self.clock, respond or Reply())
        self.pool = ConnectionPool(self.clock, self.endpoint, name="fake", **poolOptions)
        self.proxy = Proxy(
            self.pool, root, frontController=None, params={"APP_ENV": "test"}, reactor=self.clock
        )

    def request(
        self,
        target: bytes = b"/hello.php",
        method: bytes = b"GET",
        version: bytes = b"HTTP/1.1",
        body: bytes = b"",
        **facts: Any,
    ) -> tuple[RecordingWriter, Any, RequestFacts]:
        request = RequestFacts(
            method=method,
            target=target,
            version=version,
            headers=facts.pop("headers", [(b"Host", b"example.org:8080")]),
            client=("192.0.2.1", 50000),
            server=("127.0.0.1", 8080),
            secure=False,
            body=BytesIO(body),
            bodyLength=len(body),
            record=Record(),
            **facts,
        )
        writer = RecordingWriter()
        exchange = self.proxy.handle(request, writer)
        self.endpoint.flush()
        return writer, exchange, request

    @property
    def received(self) -> ReceivedRequest:
        return self.endpoint.backends[-1].request


def logged(events: Sequence[LogEvent]) -> str:
    return "\n".join(formatEvent(event) for event in events)


# A script's answer


def test_a_scripts_answer_goes_to_the_writer_with_its_framing(root: str) -> None:
    site = Site(
        root, Reply(stdout=b"Status: 201\r\nX-A: 1\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\nHello")
    )
    writer, exchange, _ = site.request()
    assert writer.calls == [
        "writeHead",
        "registerProducer",
        "writeBody",
        "unregisterProducer",
        "finish",
    ]
    assert (writer.code, writer.reason, writer.body) == (201, b"Created", b"Hello")
    assert writer.headers == [(b"X-A", b"1"), (b"Set-Cookie", b"a"), (b"Set-Cookie", b"b")]
    assert writer.framing == BodyFraming(Delimiter.CHUNKED, None)
    assert exchange.phase is Phase.DONE


def test_the_params_php_sees(root: str) -> None:
    site = Site(root)
    site.request(
        b"/sub/?q=1",
        prefix="/blog",
        path=b"/sub/",
        headers=[(b"Host", b"example.org:8080"), (b"X-Name", b"v")],
    )
    params = site.received.params
    assert params[b"SCRIPT_NAME"] == b"/blog/sub/index.php"
    assert params[b"SCRIPT_FILENAME"] == os.path.join(root, "sub", "index.php").encode()
    assert params[b"REQUEST_URI"] == b"/sub/?q=1"
    assert params[b"QUERY_STRING"] == b"q=1"
    assert params[b"SERVER_NAME"] == b"example.org"
    assert (params[b"REMOTE_ADDR"], params[b"REMOTE_PORT"]) == (b"192.0.2.1", b"50000")
    assert params[b"HTTP_X_NAME"] == b"v"
    assert params[b"APP_ENV"] == b"test"
    assert params[b"SERVER_SOFTWARE"].startswith(b"txfastcgi/")


def test_the_path_is_decoded_from_the_target_when_the_front_has_not(root: str) -> None:
    site = Site(root)
    site.request(b"/hel%6Co.php/a%20b")
    assert site.received.params[b"PATH_INFO"] == b"/a b"


def test_a_declared_length_frames_the_body_and_leaves_the_headers(root: str) -> None:
    site = Site(root, Reply(stdout=b"Content-Length: 5\r\n\r\nHello"))
    writer, _, _ = site.request()
    assert writer.framing == BodyFraming(Delimiter.CONTENT_LENGTH, 5)
    assert writer.header(b"content-length") is None
    assert writer.finished


def test_head_keeps_the_declared_length_and_sends_no_body(root: str) -> None:
    site = Site(root, Reply(stdout=b"Content-Length: 5\r\n\r\nHello"))
    writer, _, _ = site.request(method=b"HEAD")
    assert writer.framing == BodyFraming(Delimiter.NONE, 0)
    assert writer.header(b"content-length") == b"5"
    assert writer.body == b""
    assert writer.finished


def test_a_204_never_carries_the_length_a_script_declares(root: str) -> None:
    """RFC 9110 section 8.6: no Content-Length in a 1xx or 204 response, whatever PHP says."""
    site = Site(root, Reply(stdout=b"Status: 204\r\nContent-Length: 0\r\n\r\n"))
    writer, _, _ = site.request()
    assert writer.framing == BodyFraming(Delimiter.NONE, 0)
    assert writer.header(b"content-length") is None
    assert writer.finished


def test_an_http10_client_gets_a_body_delimited_by_the_close(root: str) -> None:
    writer, _, _ = Site(root).request(version=b"HTTP/1.0")
    assert writer.framing == BodyFraming(Delimiter.CLOSE, None)


def test_surplus_body_bytes_are_dropped(root: str) -> None:
    site = Site(root, Reply(stdout=b"Content-Length: 3\r\n\r\nHello"))
    with capturedLogs() as events:
        writer, _, _ = site.request()
    assert writer.body == b"Hel"
    assert writer.finished
    assert "more body than its Content-Length" in logged(events)


def test_a_short_body_cuts_the_connection(root: str) -> None:
    site = Site(root, Reply(stdout=b"Content-Length: 9\r\n\r\nHello"))
    with capturedLogs() as events:
        writer, _, _ = site.request()
    assert writer.calls[-2:] == ["unregisterProducer", "abort"]
    assert "4 bytes less than its Content-Length" in logged(events)


def test_the_upstream_part_is_noted_on_the_fronts_record(root: str) -> None:
    site = Site(root)
    noted: list[Upstream | None] = []

    class Noting(RecordingWriter):
        def finish(self) -> None:
            noted.append(upstreamOf(request.record))
            super().finish()

    request = RequestFacts(
        b"GET",
        b"/hello.php",
        b"HTTP/1.1",
        [],
        ("", None),
        ("", None),
        False,
        BytesIO(),
        0,
        Record(),
    )
    site.proxy.handle(request, Noting())
    site.clock.advance(2)
    site.endpoint.flush()
    assert noted == [Upstream("fake", 2.0, 0)]


def test_stderr_is_logged_with_control_characters_escaped(root: str) -> None:
    site = Site(root, Reply(stderr=b"bad\x1b[31m thing\nsecond"))
    with capturedLogs() as events:
        site.request()
    text = logged(events)
    assert "PHP stderr for /hello.php: bad\\x1b[31m thing" in text
    assert "PHP stderr for /hello.php: second" in text


# Routing


def test_a_static_file_goes_to_the_front(root: str) -> None:
    writer, exchange, _ = Site(root).request(b"/style.css")
    assert (writer.calls, writer.served) == (["serveFile"], os.path.join(root, "style.css"))
    assert exchange.phase is Phase.DONE


@pytest.mark.parametrize(
    ("target", "facts", "location"),
    [(b"/sub?x=1", {}, b"/sub/?x=1"), (b"/blog", {"prefix": "/blog", "path": b""}, b"/blog/")],
)
def test_a_directory_without_its_slash_redirects(
    root: str, target: bytes, facts: dict[str, Any], location: bytes
) -> None:
    writer, _, _ = Site(root).request(target, **facts)
    assert (writer.code, writer.header(b"location")) == (301, location)
    assert writer.body.startswith(b'<a href="')
    assert writer.finished


@pytest.mark.parametrize(
    ("target", "code"),
    [(b"/missing", 404), (b"/.env", 403), (b"/empty/", 403), (b"/../etc/passwd", 400)],
)
def test_what_names_no_script_gets_an_error_page(root: str, target: bytes, code: int) -> None:
    writer, _, _ = Site(root).request(target)
    assert writer.code == code
    assert writer.header(b"content-type") == b"text/html; charset=utf-8"
    assert writer.framing == BodyFraming(Delimiter.CONTENT_LENGTH, len(writer.body))
    assert writer.body.startswith(b"<!DOCTYPE html>")
    assert writer.finished


@pytest.mark.parametrize("method", [b"CONNECT", b"TRACE"])
def test_connect_and_trace_are_refused_with_allow(root: str, method: bytes) -> None:
    site = Site(root)
    writer, _, _ = site.request(method=method)
    assert (writer.code, writer.header(b"allow")) == (
        405,
        b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
    )
    assert site.endpoint.connectAttempts == 0


def test_a_head_request_for_an_error_page_gets_its_length_and_no_body(root: str) -> None:
    writer, _, _ = Site(root).request(b"/missing", method=b"HEAD")
    assert writer.calls == ["writeHead", "finish"]
    assert writer.framing == BodyFraming(Delimiter.NONE, 0)
    assert int(writer.header(b"content-length") or b"0") > 0


# Errors


def test_a_backend_that_refuses_connects_gives_502(root: str) -> None:
    site = Site(root)
    site.endpoint.refuse = True
    with capturedLogs() as events:
        writer, _, request = site.request()
    assert writer.code == 502 and writer.finished
    assert b"The PHP backend is unavailable." in writer.body
    assert "502 for GET /hello.php" in logged(events)
    upstream = upstreamOf(request.record)
    assert upstream is not None and upstream.backend is None


def test_a_full_queue_gives_503_with_retry_after(root: str) -> None:
    site = Site(root, stall, maxConnections=1, queueTimeout=1.0)
    site.request()
    writer, _, _ = site.request()
    site.clock.advance(1.5)
    assert (writer.code, writer.header(b"retry-after")) == (503, b"5")


def test_a_silent_backend_gives_504(root: str) -> None:
    site = Site(root, stall, readTimeout=3.0)
    writer, _, _ = site.request()
    site.clock.advance(3.5)
    assert writer.code == 504 and b"did not answer in time" in writer.body


@pytest.mark.parametrize(
    ("status", "code"), [(ProtocolStatus.OVERLOADED, 503), (ProtocolStatus.UNKNOWN_ROLE, 502)]
)
def test_a_refused_request_gives_an_error_and_its_connection_is_closed(
    root: str, status: int, code: int
) -> None:
    site = Site(root, Reply(stdout=b"", protocolStatus=status))
    writer, _, _ = site.request()
    assert writer.code == code
    assert site.endpoint.openConnections == 0


@pytest.mark.parametrize(
    ("stdout", "detail"),
    [
        (b"not a header\r\n\r\nbody", "invalid header line"),
        (b"Content-Type: text/plain\r\n", "ended before its header block"),
    ],
)
def test_an_invalid_head_gives_502(root: str, stdout: bytes, detail: str) -> None:
    site = Site(root, Reply(stdout=stdout))
    with capturedLogs() as events:
        writer, _, _ = site.request()
    assert writer.code == 502 and b"invalid response" in writer.body
    assert detail in logged(events)


def test_a_backend_closing_in_mid_body_cuts_the_client_connection(root: str) -> None:
    site = Site(root, Reply(stdout=b"X: 1\r\n\r\npartial", end=False, close=True))
    writer, _, _ = site.request()
    assert writer.calls == [
        "writeHead",
        "registerProducer",
        "writeBody",
        # The end of the read that brought it: the partial body goes out.
        "flush",
        "unregisterProducer",
        "abort",
    ]


class FailingSource:
    """A connection source whose every acquire fails with C{error}."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def acquire(
        self, fresh: bool = False, since: float | None = None
    ) -> Deferred[FastCGIClientProtocol]:
        return fail(self.error)

    def release(self, protocol: FastCGIClientProtocol) -> None:
        pass


def handleWith(source: FailingSource, root: str) -> tuple[RecordingWriter, Proxy]:
    proxy = Proxy(source, root, reactor=MemoryReactorClock())
    writer = RecordingWriter()
    proxy.handle(
        RequestFacts(
            b"GET", b"/hello.php", b"HTTP/1.1", [], ("", None), ("", None), False, BytesIO(), 0
        ),
        writer,
    )
    return writer, proxy


def test_a_backend_error_gives_the_status_page_and_headers_it_names(root: str) -> None:
    """The core asks the error what it becomes: a source's own error class works as ours do."""

    class Maintenance(BackendError):
        status = 503
        explanation = "Down for maintenance."
        headers = ((b"retry-after", b"60"),)

    writer, _ = handleWith(FailingSource(Maintenance("the backends are being upgraded")), root)
    assert (writer.code, writer.header(b"retry-after")) == (503, b"60")
    assert b"Down for maintenance." in writer.body
    assert b"upgraded" not in writer.body


def test_an_unexpected_error_gives_500_and_a_logged_traceback(root: str) -> None:
    with capturedLogs() as events:
        writer, proxy = handleWith(FailingSource(RuntimeError("a bug")), root)
    assert writer.code == 500 and writer.finished
    assert any(event.get("log_failure") for event in events)
    assert proxy.whenIdle().called


# Retries


def closeFirstThenReply(backend: FakeBackend, request: ReceivedRequest) -> None:
    """Answer the first request on a connection and close at the second, as a recycled worker."""
    if len(backend.requests) > 1:
        backend.close()
    else:
        Reply()(backend, request)


def test_a_kept_connection_closed_before_a_response_is_retried_on_a_new_one(root: str) -> None:
    site = Site(root, closeFirstThenReply)
    site.request()
    with capturedLogs() as events:
        writer, _, request = site.request()
    assert (writer.code, writer.body) == (200, b"Hello")
    assert len(site.endpoint.links) == 2
    assert upstreamOf(request.record) == Upstream("fake", 0.0, 1)
    assert "retrying GET /hello.php on a new connection" in logged(events)


def test_a_post_is_not_sent_twice(root: str) -> None:
    site = Site(root, closeFirstThenReply)
    site.request()
    writer, _, _ = site.request(method=b"POST", body=b"a=1")
    assert writer.code == 502 and b"closed the connection" in writer.body
    assert len(site.endpoint.links) == 1


# Backpressure and clients that go away


def test_the_fastcgi_connection_is_the_producer_and_a_pause_reaches_it(root: str) -> None:
    site = Site(root, Reply(stdout=b"X: 1\r\n\r\n" + b"x" * 10, end=False))
    writer, _, _ = site.request()
    producer = writer.producer
    assert isinstance(producer, FastCGIClientProtocol)
    transport = site.endpoint.links[0].clientTransport
    producer.pauseProducing()
    assert transport.paused
    producer.resumeProducing()
    assert not transport.paused


def test_a_client_gone_in_mid_response_closes_the_fastcgi_connection(root: str) -> None:
    site = Site(root, Reply(stdout=b"X: 1\r\n\r\nsome", end=False))
    writer, exchange, _ = site.request()
    idle = site.proxy.whenIdle()
    assert not idle.called
    exchange.clientGone()
    site.endpoint.flush()
    assert site.endpoint.links[0].clientTransport.aborted
    assert site.endpoint.openConnections == 0
    assert "finish" not in writer.calls and "abort" not in writer.calls
    assert idle.called


def test_a_client_gone_while_waiting_for_a_connection_gives_it_up(root: str) -> None:
    site = Site(root)
    site.endpoint.hold = True
    writer, exchange, _ = site.request()
    exchange.clientGone()
    site.endpoint.flush()
    assert site.endpoint.heldAttempts == 0
    assert writer.calls == []
    assert site.proxy.whenIdle().called


# Through twisted.web, in front of a real php-fpm


@pytest.fixture
def _phpFPM(request: pytest.FixtureRequest, php_fpm: Any) -> None:
    """Hand the session's php-fpm to the trial test case."""
    request.instance.phpFPM = php_fpm


@pytest.mark.usefixtures("_phpFPM")
class UnixListenerTests(TestCase):
    """FastCGIResource in a plain twisted.web Site on a unix socket."""

    phpFPM: Any

    def test_a_request_without_a_host_header_still_reaches_php(self) -> Deferred[None]:
        """
        twisted.web's own getRequestHostname() fails on a unix socket
        listener when no Host header came (HTTP/1.0); SERVER_NAME is then
        the local address, and PHP runs.
        """
        pool = ConnectionPool(reactor, UNIXClientEndpoint(reactor, self.phpFPM.socketPath))
        self.addCleanup(pool.close)
        path = self.mktemp()
        site = WebSite(FastCGIResource(pool, self.phpFPM.documentRoot))
        port = cast(IReactorUNIX, reactor).listenUNIX(path, site)  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)

        def ask() -> bytes:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(10)
                client.connect(path)
                client.sendall(b"GET /info.php HTTP/1.0\r\n\r\n")
                answer = b""
                while data := client.recv(65536):
                    answer += data
                return answer

        def check(answer: bytes) -> None:
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.0 200"), head)
            info = json.loads(body)
            self.assertEqual((info["REMOTE_ADDR"], info["SERVER_ADDR"]), ("unix:", "unix:"))

        return deferToThread(ask).addCallback(check)
