"""
How each HTTP/1.1 front (L{tests.fronts}) parses what a client sends before
the core sees it: the bytes a request target may hold, malformed and
ambiguous requests, chunk sizes and the size of a request head.

Most tests drive the front in memory (L{InMemoryFront}); what must reach PHP
untouched is checked in front of a real php-fpm.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.fronts import FRONTS, Client, InMemoryFront, startFront
from tests.processes import Proxy, stopProxy
from tests.recordingbackend import Answer, parseAnswer
from tests.test_security import AMBIGUOUS_REQUESTS

if TYPE_CHECKING:
    from tests.conftest import PHPFPMPool


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


def refused(client: Client, status: int) -> None:
    """
    The client got C{status}, once, and the connection is closing: gently
    (see L{test_a_refused_connection_lingers_then_closes}) or not.
    """
    (answer,) = client.answers()
    assert answer.status == status, client.received()[:200]
    assert client.transport.writeClosed or client.closed()


def refusedBeforeTheCore(front: str, request: bytes, status: int) -> None:
    """C{request} is refused with C{status} on C{front}, and never reaches the core."""
    served = InMemoryFront(front)
    client = served.connect()
    client.send(request)
    refused(client, status)
    assert served.core.exchanges == []
    client.close()


def test_bytes_over_0x7f_in_the_request_target_reach_the_core_untouched(front: str) -> None:
    """
    twisted.web alone answers a bare 400 to ``GET /wiki/Ünïcødé`` sent as
    UTF-8 bytes, and llhttp alone refuses it; nginx, Apache and Caddy take
    it, and MediaWiki links depend on it.  In a header value too.
    """
    served = InMemoryFront(front)
    for target in RAW_TARGETS:
        client = served.connect()
        client.send(
            b"\r\nGET %s HTTP/1.1\r\nHost: example.org\r\nX-T: %s\r\n\r\n" % (target, target)
        )
        assert client.statuses() == [200], (target, client.received()[:80])
        request = served.core.exchanges[-1].request
        assert request.target == target
        assert (b"X-T", target) in [(name.title(), value) for name, value in request.headers]
        client.close()


def test_a_target_over_0x7f_split_across_reads_and_pipelined_is_untouched(front: str) -> None:
    served = InMemoryFront(front)
    client = served.connect()
    raw = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n\xff\xfe"
    raw += b"GET /" + UNICODE_TITLE + b"?q=" + UNICODE_TITLE + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    for index in range(len(raw)):
        client.send(raw[index : index + 1])
    client.send(raw)
    expected = [(b"/a", b"\xff\xfe"), (b"/" + UNICODE_TITLE + b"?q=" + UNICODE_TITLE, b"")]
    assert served.core.seen() == expected * 2
    client.close()


@pytest.mark.parametrize(
    "request_",
    [
        *(requestLine(target) for target in CONTROL_TARGETS),
        requestLine(b"/", method=b"G\xc3\x9cT"),
        requestLine(b"/", version=b"HTTP/1.\xb1"),
        requestLine(b"/ " + UNICODE_TITLE),
        b"GET / HTTP/1.1\r\nHost: a\r\nBad\x01Name: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        *AMBIGUOUS_REQUESTS.values(),
    ],
)
def test_malformed_or_ambiguous_requests_are_a_400_and_never_reach_the_core(
    front: str, request_: bytes
) -> None:
    """
    Control characters in the target (bare CR and LF among them), bytes over
    0x7F outside it, a control character in a header name, no Host or two,
    and every request whose length could be read two ways (see
    L{AMBIGUOUS_REQUESTS}).
    """
    refusedBeforeTheCore(front, request_, 400)


@pytest.mark.parametrize(
    "request_",
    [
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    ],
)
def test_a_request_with_bare_line_feeds_is_a_400(front: str, request_: bytes) -> None:
    """
    Line ends without a CR: answered at once, not left waiting for a CRLF
    that never comes (twisted.web alone waits for the 408 of the header
    timeout).
    """
    refusedBeforeTheCore(front, request_, 400)


def test_transfer_encoding_in_an_http_1_0_request_is_a_400(front: str) -> None:
    """
    RFC 9112 section 6.1: its framing is faulty, since an HTTP/1.0 server in
    front could read it by its Content-Length, or as having no body
    (twisted.web alone reads it as chunked).
    """
    refusedBeforeTheCore(
        front, b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400
    )


def test_a_folded_header_line_is_refused_or_unfolded(front: str) -> None:
    """
    RFC 9112 section 5.2 lets a server refuse obs-fold with a 400 (llhttp
    does) or join the line to the one before (twisted.web does); never is it
    a header of its own.
    """
    served = InMemoryFront(front)
    client = served.connect()
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n Folded: b\r\n\r\n")
    (answer,) = client.answers()
    if answer.status == 200:
        (exchange,) = served.core.exchanges
        names = [name.strip().lower() for name, _ in exchange.request.headers]
        assert b"folded" not in names
        assert [value for name, value in exchange.request.headers if name.lower() == b"x"] != [b"a"]
    else:
        refused(client, 400)
        assert served.core.exchanges == []
    client.close()


def test_a_request_without_host_is_fine_in_http_1_0(front: str) -> None:
    client = InMemoryFront(front).connect()
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    assert client.statuses() == [200]
    client.close()


def test_versions_other_than_1_0_and_1_1_are_refused(front: str) -> None:
    """With a 505 (http1) or a 400 (twisted.web): never served as some other version."""
    served = InMemoryFront(front)
    client = served.connect()
    client.send(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")
    (answer,) = client.answers()
    assert answer.status in (400, 505)
    refused(client, answer.status)
    assert served.core.exchanges == []
    client.close()


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
def test_a_chunk_size_too_large_is_answered_from_its_size_line(
    front: str, sent: bytes, status: int
) -> None:
    """
    A chunk size that does not fit in 64 bits is a 400, and one that would
    take the body over its limit (1000 bytes here) a 413, as soon as the
    size line is in: the client sends no chunk data, and the connection
    would otherwise wait for ever.  Small chunks that pass the limit
    together are a 413 too.
    """
    served = InMemoryFront(front, maxBodySize=1000)
    client = served.connect()
    client.send(CHUNKED_HEAD + sent)
    refused(client, status)
    assert served.core.exchanges == []
    client.close()


def test_a_chunked_body_of_exactly_the_limit_is_accepted(front: str) -> None:
    """Leading zeros do not make a size large: its value does."""
    served = InMemoryFront(front, maxBodySize=1000)
    client = served.connect()
    body = chunk(b"c" * 600) + b"00000000000000000000190\r\n" + b"c" * 400 + b"\r\n0\r\n\r\n"
    client.send(CHUNKED_HEAD + body)
    assert client.statuses() == [200]
    assert served.core.seen() == [(b"/upload", b"c" * 1000)]
    client.close()


LIMIT = 1024


@pytest.mark.parametrize(
    ("request_", "statuses"),
    [
        (b"GET /" + b"q" * LIMIT + b" HTTP/1.1\r\n", {414}),
        (b"GET /" + b"q" * LIMIT, {414}),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * LIMIT, {431}),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Many: aaaaaaaa\r\n" * (LIMIT // 16), {431}),
        # twisted.web counts fields too: over 500 of them are a 400.
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X:\r\n" * LIMIT, {431, 400}),
    ],
    ids=["request line", "request line unfinished", "header", "many headers", "many short"],
)
def test_a_head_over_the_limit_is_a_431_and_a_request_line_a_414(
    front: str, request_: bytes, statuses: set[int]
) -> None:
    """Before the rest of it is buffered: the line or head never ends here."""
    served = InMemoryFront(front, maxHeaderSize=LIMIT)
    client = served.connect()
    client.send(request_)
    (answer,) = client.answers()
    assert answer.status in statuses
    refused(client, answer.status)
    assert served.core.exchanges == []
    client.close()


def test_a_head_just_within_the_limit_arrives_whole(front: str) -> None:
    """Line ends do not count, byte by byte or in one piece."""
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * (LIMIT - 14 - 7 - 7) + b"\r\n\r\n"
    for pieces in [[head], [head[index : index + 1] for index in range(len(head))]]:
        client = InMemoryFront(front, maxHeaderSize=LIMIT).connect()
        for piece in pieces:
            client.send(piece)
        assert client.statuses() == [200]
        client.close()
        client = InMemoryFront(front, maxHeaderSize=LIMIT - 1).connect()
        for piece in pieces:
            client.send(piece)
        refused(client, 431)
        client.close()


def test_a_refused_connection_lingers_then_closes(front: str) -> None:
    """
    What the client is still sending is read and dropped for five seconds,
    so that no reset destroys the answer before the client reads it.
    """
    served = InMemoryFront(front)
    client = served.connect()
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    refused(client, 400)
    client.send(b"more of what the client was sending")
    served.clock.advance(4)
    assert not client.closed()
    served.clock.advance(2)
    assert client.transport.disconnected
    assert client.statuses() == [400]
    client.close()


# In a process of its own, in front of php-fpm


@pytest.fixture(scope="module", params=FRONTS)
def proxy(
    request: pytest.FixtureRequest,
    php_fpm: PHPFPMPool,
    php_document_root: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    """Each front in turn, in a process of its own, in front of php-fpm."""
    logPath = tmp_path_factory.mktemp("proxy") / "twist.log"
    running = startFront(request.param, php_fpm.endpointDescription, php_document_root, logPath)
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
