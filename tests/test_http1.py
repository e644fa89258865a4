"""
The dedicated HTTP/1.1 front, L{txfastcgi._http.http1}, where it has no
twisted.web counterpart: what it hands the core, and how its writer copes
with a core that writes what the contract does not allow.

Specified in memory, in front of the fake core of L{tests.fronts}.  What
both fronts must do alike (parsing, limits, deadlines, framing, keep-alive,
backpressure) is specified once for both, in C{test_http_parsing.py},
C{test_http_timeouts.py}, C{test_http_responses.py} and the security tests.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from twisted.internet.error import ConnectionLost

from tests.fronts import Client, FakeCore, InMemoryFront
from tests.test_http_timeouts import GET
from txfastcgi._http import http1
from txfastcgi._http.framing import BodyFraming, Delimiter
from txfastcgi._http.http1 import HTTP1Factory, Response, ServeStaticFile
from txfastcgi._http.served import Served


def staticFileServer(served: list[tuple[Any, str]]) -> ServeStaticFile:
    """A static sender that answers every file with its name."""

    def serve(
        request: Any, filename: str, writer: Response, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        served.append((request, filename))
        body = filename.encode()
        writer.writeHead(200, b"OK", [], BodyFraming(Delimiter.CONTENT_LENGTH, len(body)))
        writer.writeBody(body)
        writer.finish()

    return serve


def connect(**options: Any) -> tuple[Client, FakeCore]:
    """A client of the http1 front, whose requests wait for the test to answer them."""
    served = InMemoryFront("http1", FakeCore(answerAtOnce=False), **options)
    assert isinstance(served.factory, HTTP1Factory)
    return served.connect(), served.core


def test_the_core_gets_the_request_as_it_was_sent() -> None:
    client, core = connect()
    client.send(b"GET /a.php?x=1 HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n")
    core.exchanges[0].answer()
    client.send(b"POST /b HTTP/1.1\r\nHost: example.org\r\nContent-Length: 5\r\n\r\nhello")
    request = core.exchanges[0].request
    assert (request.method, request.target, request.version) == (b"GET", b"/a.php?x=1", b"HTTP/1.1")
    assert list(request.headers) == [(b"Host", b"example.org"), (b"Accept", b"*/*")]
    assert (request.client, request.server, request.secure) == (
        ("127.0.0.1", 40000),
        ("127.0.0.2", 8080),
        False,
    )
    assert request.record is core.exchanges[0].writer
    assert core.seen()[1] == (b"/b", b"hello")
    client.close()


def answering(length: int, start: bytes) -> tuple[Client, FakeCore, Response]:
    """Two requests, the first being answered with C{start} of a C{length}-byte body."""
    client, core = connect()
    client.send(GET + GET)
    writer = core.exchanges[0].writer
    assert isinstance(writer, Response)
    writer.writeHead(200, b"OK", [], BodyFraming(Delimiter.CONTENT_LENGTH, length))
    writer.writeBody(start)
    return client, core, writer


def test_a_body_shorter_than_its_length_closes_the_connection() -> None:
    """
    The client would wait for ever for the rest; a longer one is cut at its
    length.  (The core aborts such a response itself: this is the writer's
    own guard.)
    """
    client, core, writer = answering(10, b"short")
    writer.finish()
    assert client.closed()
    assert len(core.exchanges) == 1
    client.close()
    client, core, writer = answering(4, b"lo")
    writer.writeBody(b"ngest")
    writer.finish()
    assert client.received().endswith(b"\r\n\r\nlong")
    assert len(core.exchanges) == 2
    client.close()


def test_nothing_is_written_once_the_client_is_gone() -> None:
    records: list[Served] = []
    client, core = connect(observers=[records.append])
    client.send(GET)
    writer = core.exchanges[0].writer
    writer.writeHead(200, b"OK", [], BodyFraming(Delimiter.CHUNKED, None))
    writer.writeBody(b"part")
    sent = client.received()
    client.close(ConnectionLost)
    writer.writeBody(b"more")
    writer.finish()
    assert client.received() == sent
    assert records == []


def test_an_aborted_response_is_not_told_back_to_the_core() -> None:
    """Abort cuts the connection at once; the core, which aborted, is not told it is gone."""
    client, core, writer = answering(100, b"partial")
    writer.abort()
    assert client.transport.disconnected
    client.close(ConnectionLost)
    assert not core.exchanges[0].gone


def test_a_static_file_is_answered_by_the_static_sender() -> None:
    served: list[tuple[Any, str]] = []
    client, core = connect(serveStaticFile=staticFileServer(served))
    client.send(GET)
    core.exchanges[0].writer.serveFile("/srv/www/fast")
    assert served == [(core.exchanges[0].request, "/srv/www/fast")]
    (answer,) = client.answers()
    assert answer.body == b"/srv/www/fast"
    client.close()


def test_a_response_whose_end_comes_with_its_start_leaves_in_one_write() -> None:
    """
    A small page is one write, one packet, and no last chunk of its own:
    each write more costs a system call and a packet on either side.
    """
    client, core = connect()
    writes: list[bytes] = []
    write = client.transport.write

    def counted(data: bytes) -> None:
        writes.append(data)
        write(data)

    client.transport.write = counted  # type: ignore[method-assign]
    client.send(GET)
    writer = core.exchanges[0].writer
    writer.writeHead(200, b"OK", [], BodyFraming(Delimiter.CHUNKED, None))
    writer.writeBody(b"hello\n")
    writer.finish()
    assert len(writes) == 1
    assert writes[0].endswith(b"Content-Length: 6\r\n\r\nhello\n")
    client.close()


def test_bodies_up_to_a_mebibyte_are_held_in_memory_within_the_budget(monkeypatch: Any) -> None:
    """
    A Content-Length body over 100 000 bytes and up to 1 MiB is held in
    memory while the factory's bodies held that way come to at most
    MEMORY_BODIES, and spooled to a temporary file beyond; the memory is
    given back as each request is answered, or its client goes.
    """
    monkeypatch.setattr(http1, "MEMORY_BODIES", 3 * 400_000)
    served = InMemoryFront("http1", FakeCore(answerAtOnce=False))
    assert isinstance(served.factory, HTTP1Factory)
    body = b"x" * 400_000
    clients = [served.connect() for _ in range(4)]
    for client in clients:
        client.send(
            b"POST /up.php HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
    exchanges = served.core.exchanges
    assert [isinstance(e.request.body, io.BytesIO) for e in exchanges] == [True, True, True, False]
    assert [e.body for e in exchanges] == [body] * 4
    assert served.factory.bodyMemory == 3 * 400_000
    exchanges[0].answer()
    clients[1].close()
    assert served.factory.bodyMemory == 400_000
    exchanges[2].answer()
    exchanges[3].answer()
    assert served.factory.bodyMemory == 0


def test_a_request_body_is_freed_once_its_response_is_done() -> None:
    """
    Not when the garbage collector gets to the request: a collection of the
    oldest generation can be far off, and uploads pile up meanwhile.
    """
    client, core = connect()
    client.send(b"POST /up.php HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    body = core.exchanges[0].request.body
    assert not body.closed
    core.exchanges[0].answer()
    assert body.closed
    assert client.statuses() == [200]
