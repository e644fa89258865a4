"""
How L{txfastcgi.web.FastCGISite} parses what an HTTP/1.1 client sends before
any resource runs: the bytes a request target may hold, and chunk sizes.

Most tests drive the site in memory (L{InMemoryClient}); what must reach PHP
untouched is checked through the real C{twist fastcgi-proxy} and php-fpm.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.processes import Proxy, startProxy, stopProxy
from tests.recordingbackend import Answer, parseAnswer, parseAnswers
from txfastcgi.limits import DEFAULT_MAX_BODY_SIZE
from txfastcgi.web import FastCGISite

if TYPE_CHECKING:
    from tests.conftest import PHPFPMPool


class Recorder(Resource):
    """A resource that keeps the URI and body of each request it was given."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes]] = []

    def render(self, request: Request) -> bytes:
        assert request.uri is not None and request.content is not None
        self.seen.append((request.uri, request.content.read()))
        return b"ran"


class InMemoryClient:
    """One HTTP/1.1 connection to a site, over a L{StringTransport}."""

    def __init__(self, site: FastCGISite) -> None:
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = site.buildProtocol(address)
        assert protocol is not None
        self.protocol = protocol
        self.transport = StringTransport(peerAddress=address)
        protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        received: bytes = self.transport.value()
        return received

    def answers(self) -> list[Answer]:
        """The responses received so far."""
        return parseAnswers(self.received())

    def statuses(self) -> list[int]:
        return [answer.status for answer in self.answers()]

    def closed(self) -> bool:
        """Whether the server has closed (or begun to close) the connection."""
        return self.transport.disconnecting or self.transport.disconnected

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def makeSite(maxBodySize: int = DEFAULT_MAX_BODY_SIZE) -> tuple[FastCGISite, Recorder]:
    resource = Recorder()
    return FastCGISite(resource, maxBodySize=maxBodySize, reactor=MemoryReactorClock()), resource


def requestLine(target: bytes, method: bytes = b"GET", version: bytes = b"HTTP/1.1") -> bytes:
    return b"%s %s %s\r\nHost: example.org\r\n\r\n" % (method, target, version)


UNICODE_TITLE = "Ünïcødé".encode()

# Request targets with bytes over 0x7F, as browsers send them in links that
# hold them unencoded (UTF-8 and not): accepted, and passed on byte for byte.
RAW_TARGETS = [
    b"/wiki/" + UNICODE_TITLE,
    b"/index.php?title=" + UNICODE_TITLE + b"&action=edit",
    b"/caf\xe9/\xff",
    b"/all/" + bytes(range(0x80, 0x100)),
]

# Control characters, bare CR and LF among them: refused wherever they are in
# the target, next to bytes over 0x7F or not.
CONTROL_TARGETS = [
    *(b"/a%cb" % code for code in [*range(0x20), 0x7F]),
    b"/echo.php?q=\x7f",
    b"/" + UNICODE_TITLE + b"\x00",
    b"/" + UNICODE_TITLE + b"?\x7f",
]


def test_bytes_over_0x7f_in_the_request_target_reach_the_resource_untouched() -> None:
    """
    twisted.web answers a bare 400 to ``GET /wiki/Ünïcødé`` sent as UTF-8
    bytes; nginx, Apache and Caddy take it, and MediaWiki links depend on it.
    """
    site, resource = makeSite()
    for target in RAW_TARGETS:
        client = InMemoryClient(site)
        client.send(requestLine(target))
        assert client.statuses() == [200], (target, client.received()[:80])
        assert resource.seen[-1] == (target, b"")
        client.close()


def test_control_characters_in_the_request_target_are_a_400() -> None:
    site, resource = makeSite()
    for target in CONTROL_TARGETS:
        client = InMemoryClient(site)
        client.send(requestLine(target))
        (answer,) = client.answers()
        assert (answer.status, answer.header("Connection")) == (400, ["close"]), target
        client.close()
    assert resource.seen == []


def test_bytes_over_0x7f_outside_the_target_are_still_a_400() -> None:
    site, resource = makeSite()
    for line in [
        requestLine(b"/", method=b"G\xc3\x9cT"),
        requestLine(b"/", version=b"HTTP/1.\xb1"),
        requestLine(b"/ " + UNICODE_TITLE),
    ]:
        client = InMemoryClient(site)
        client.send(line)
        assert client.statuses() == [400], line
        client.close()
    assert resource.seen == []


CHUNKED_HEAD = b"POST /upload HTTP/1.1\r\nHost: example.org\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (b"ffffffffffffffffffff\r\n", 400),
        (b"10000000000000000\r\n", 400),
        (b"ffffffffffffffff\r\n", 413),
        (b"3e9\r\n", 413),
        (b"3e9;name=value\r\n", 413),
        (chunk(b"a" * 600) + b"191\r\n", 413),
        (chunk(b"b" * 100) * 10 + chunk(b"b"), 413),
    ],
    ids=[
        "over 64 bits",
        "2**64",
        "2**64 - 1",
        "over the limit",
        "over the limit, with an extension",
        "over what is left",
        "small chunks over the limit together",
    ],
)
def test_a_chunk_size_too_large_is_answered_from_its_size_line(sent: bytes, status: int) -> None:
    """
    A chunk size that does not fit in 64 bits is a 400, and one that would
    take the body over its limit (1000 bytes here) a 413, as soon as the
    size line is in: the client sends no chunk data, and the connection
    would otherwise wait for ever.  Small chunks that pass the limit
    together are a 413 too.
    """
    site, resource = makeSite(maxBodySize=1000)
    client = InMemoryClient(site)
    client.send(CHUNKED_HEAD + sent)
    assert client.statuses() == [status]
    assert resource.seen == []
    client.close()


def test_a_chunked_body_of_exactly_the_limit_is_accepted() -> None:
    """Leading zeros do not make a size large: its value does."""
    site, resource = makeSite(maxBodySize=1000)
    client = InMemoryClient(site)
    body = chunk(b"c" * 600) + b"00000000000000000000190\r\n" + b"c" * 400 + b"\r\n0\r\n\r\n"
    client.send(CHUNKED_HEAD + body)
    assert client.statuses() == [200]
    assert resource.seen == [(b"/upload", b"c" * 1000)]
    client.close()


# Through the real process and php-fpm


@pytest.fixture(scope="module")
def proxy(
    php_fpm: PHPFPMPool, php_document_root: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    logPath = tmp_path_factory.mktemp("proxy") / "twist.log"
    running = startProxy(
        ["--php-fpm", php_fpm.endpointDescription, "--path", php_document_root], logPath
    )
    yield running
    stopProxy(running)


def get(proxy: Proxy, target: bytes) -> Answer:
    """Send a GET for C{target}, as raw bytes; the answer."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as connection:
        connection.sendall(
            b"GET %s HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n" % target
        )
        received = bytearray()
        while data := connection.recv(65536):
            received += data
    return parseAnswer(bytes(received))


def test_bytes_over_0x7f_reach_php_in_REQUEST_URI_byte_for_byte(proxy: Proxy) -> None:
    """A script, and the front controller (for a path that names no file)."""
    for target in [
        b"/info.php/" + UNICODE_TITLE + b"?title=" + UNICODE_TITLE,
        b"/api/info?title=" + UNICODE_TITLE,
    ]:
        answer = get(proxy, target)
        assert answer.status == 200, (target, answer.body[:200])
        server = json.loads(answer.body)
        assert server["REQUEST_URI"] == target.decode("utf-8")
        assert server["QUERY_STRING"] == "title=Ünïcødé"
    answer = get(proxy, b"/wiki/" + UNICODE_TITLE)
    # The front controller's own "not found" page, showing the path it routed on.
    assert answer.status == 404
    assert b"<code>/wiki/" + UNICODE_TITLE + b"</code>" in answer.body


def test_control_characters_in_the_target_are_a_400_from_the_real_process(proxy: Proxy) -> None:
    for target in [
        b"/info.php/a\x7fb",
        b"/info.php?q=\x7f",
        b"/info.php/" + UNICODE_TITLE + b"\x01",
    ]:
        assert get(proxy, target).status == 400, target
