"""
How each HTTP/1.1 front (L{tests.fronts}) writes what the core answers, and
keeps a connection: the framing of bodies, HEAD, 204 and 304, keep-alive
and pipelining, backpressure, a client that goes away, and the record of
each request for the access log.

Specified in memory, in front of a fake core (L{tests.fronts.FakeCore})
that answers when the test says so; L{test_security_responses} shows the
same through the real core.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from tests.fronts import Client, FakeCore, InMemoryFront
from tests.test_http_parsing import chunk
from tests.test_http_timeouts import GET, POST_HEAD
from txfastcgi._http.framing import BodyFraming, Delimiter, responseBodyFraming
from txfastcgi._http.served import Served, Upstream, noteUpstream


@implementer(IPushProducer)
class FakeProducer:
    """A FastCGI connection, as far as backpressure goes."""

    def __init__(self) -> None:
        self.state = "producing"

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


def waiting(front: str, **limits: Any) -> tuple[Client, FakeCore]:
    """A client of C{front} whose requests are answered when the test says so."""
    served = InMemoryFront(front, FakeCore(answerAtOnce=False), **limits)
    return served.connect(), served.core


# Keep-alive and pipelining


def test_pipelined_requests_are_answered_one_at_a_time_in_order(front: str) -> None:
    """
    Three requests in one packet: the next is handed over only once the one
    before is answered.  The transport stops reading once the client has
    sent much more meanwhile (http1 at once, twisted.web past 30 KiB).
    """
    client, core = waiting(front)
    client.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: example.org\r\n\r\n" % n for n in range(3)))
    assert [exchange.request.target for exchange in core.exchanges] == [b"/0"]
    client.send(b"X" * 64 * 1024)
    assert not client.reading()
    core.exchanges[0].answer(b"zero")
    assert len(core.exchanges) == 2
    core.exchanges[1].answer(b"one")
    core.exchanges[2].answer(b"two")
    # What followed is no request: its "request line" is over the limit.
    assert [answer.status for answer in client.answers()] == [200, 200, 200, 414]
    assert [answer.body for answer in client.answers()[:3]] == [b"zero", b"one", b"two"]
    assert len(core.exchanges) == 3
    client.close()


def test_a_kept_connection_serves_requests_with_and_without_bodies(front: str) -> None:
    served = InMemoryFront(front)
    client = served.connect()
    client.send(b"GET /a.php?x=1 HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n")
    client.send(b"POST /b HTTP/1.1\r\nHost: example.org\r\nContent-Length: 5\r\n\r\nhello")
    client.send(GET)
    assert [(answer.status, answer.body) for answer in client.answers()] == [(200, b"ran")] * 3
    assert served.core.seen() == [(b"/a.php?x=1", b""), (b"/b", b"hello"), (b"/fast", b"")]
    assert [exchange.request.bodyLength for exchange in served.core.exchanges] == [0, 5, 0]
    assert not client.closed()
    client.close()


@pytest.mark.parametrize(
    ("request_", "kept"),
    [
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
    ],
    ids=["1.0 keep-alive", "1.0", "1.1 close", "1.1"],
)
def test_the_client_decides_whether_the_connection_may_be_kept(
    front: str, request_: bytes, kept: bool
) -> None:
    """
    An HTTP/1.1 connection is kept unless the client asks otherwise; an
    HTTP/1.0 one only if the client asked for it (http1 keeps it, twisted.web
    closes it), and then the answer says so.
    """
    client = InMemoryFront(front).connect()
    client.send(request_)
    (answer,) = client.answers()
    assert (answer.status, answer.header("Content-Length")) == (200, ["3"])
    connection = [value.lower() for value in answer.header("Connection")]
    if b"HTTP/1.0" in request_ and connection == ["keep-alive"]:
        assert kept and not client.closed()
    elif kept and b"HTTP/1.0" not in request_:
        assert (connection, client.closed()) == ([], False)
    else:
        assert connection in ([], ["close"])
        assert client.closed()
    client.close()


# Framing


def test_an_http_1_0_body_without_a_length_ends_with_the_connection(front: str) -> None:
    client, core = waiting(front)
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    writer = core.exchanges[0].writer
    writer.writeHead(200, b"OK", [], responseBodyFraming(b"GET", 200, None, b"HTTP/1.0"))
    writer.writeBody(b"until ")
    writer.flush()
    writer.writeBody(b"the end")
    writer.finish()
    assert client.received().endswith(b"\r\n\r\nuntil the end")
    (answer,) = client.answers()
    assert answer.header("Content-Length") == []
    assert client.closed()
    client.close()


def test_http_1_0_clients_never_get_chunks(front: str) -> None:
    """A core that asked for chunked coding gets a close-delimited body instead."""
    client, core = waiting(front)
    client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    writer = core.exchanges[0].writer
    writer.writeHead(200, b"OK", [], BodyFraming(Delimiter.CHUNKED, None))
    writer.writeBody(b"pl")
    writer.flush()
    writer.writeBody(b"ain")
    writer.finish()
    assert client.received().endswith(b"\r\n\r\nplain")
    assert b"chunked" not in client.received().lower()
    assert client.closed()
    client.close()


def test_a_chunked_response_is_framed_by_the_front(front: str) -> None:
    client, core = waiting(front)
    client.send(GET + GET)
    writer = core.exchanges[0].writer
    writer.writeHead(
        200, b"OK", [(b"Content-Type", b"text/plain")], BodyFraming(Delimiter.CHUNKED, None)
    )
    writer.writeBody(b"first ")
    writer.flush()
    writer.writeBody(b"")
    writer.writeBody(b"second")
    writer.finish()
    assert client.received().endswith(b"6\r\nfirst \r\n6\r\nsecond\r\n0\r\n\r\n")
    (answer,) = client.answers()
    assert (answer.body, answer.header("Transfer-Encoding")) == (b"first second", ["chunked"])
    core.exchanges[1].answer()
    assert client.statuses() == [200, 200]
    client.close()


# A response whose end comes with its start


@pytest.mark.parametrize(
    ("request_", "connection"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", []),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", ["keep-alive"]),
    ],
    ids=["1.1", "1.0 keep-alive"],
)
def test_a_body_whole_before_the_core_lets_go_is_sent_with_its_length(
    front: str, request_: bytes, connection: list[str]
) -> None:
    """
    A script's output that ends in the same read from php-fpm as it began,
    as a small page's does, goes out with a Content-Length rather than
    chunked or until the close, as Caddy sends it: no client waits for a
    last chunk, and an HTTP/1.0 client that asks keeps its connection
    (on http1; twisted.web keeps none).
    """
    client, core = waiting(front)
    client.send(request_)
    exchange = core.exchanges[0]
    writer = exchange.writer
    framing = responseBodyFraming(b"GET", 200, None, exchange.request.version)
    writer.writeHead(200, b"OK", [], framing)
    writer.writeBody(b"hello, ")
    writer.writeBody(b"world\n")
    writer.finish()
    (answer,) = client.answers()
    assert (answer.body, answer.header("Content-Length")) == (b"hello, world\n", ["13"])
    assert answer.header("Transfer-Encoding") == []
    if front == "http1" or not connection:
        assert [value.lower() for value in answer.header("Connection")] == connection
        assert not client.closed()
    client.close()


def test_what_the_core_flushes_reaches_the_client_before_the_end(front: str) -> None:
    """
    At the end of each read from php-fpm the core flushes: what a script
    flushed (progress output, server-sent events) is sent then, not held
    until the script ends.
    """
    client, core = waiting(front)
    client.send(GET)
    writer = core.exchanges[0].writer
    writer.writeHead(200, b"OK", [], BodyFraming(Delimiter.CHUNKED, None))
    writer.writeBody(b"data: 1\n\n")
    writer.flush()
    head, _, body = client.received().partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"9\r\ndata: 1\n\n\r\n"
    writer.finish()
    assert client.received().endswith(b"\r\n0\r\n\r\n")
    client.close()


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\nHost: a\r\nIf-None-Match: *\r\n\r\n", 304),
    ],
    ids=["HEAD", "304"],
)
def test_answers_without_a_body_keep_the_length_they_declare(
    front: str, request_: bytes, code: int
) -> None:
    """The length of the representation, once; and no body bytes before the next answer."""
    client, core = waiting(front)
    client.send(request_ + GET)
    exchange = core.exchanges[0]
    framing = responseBodyFraming(exchange.request.method, code, 1234)
    exchange.writer.writeHead(code, b"Whatever", [(b"Content-Length", b"1234")], framing)
    exchange.writer.writeBody(b"never sent")
    exchange.writer.finish()
    core.exchanges[1].answer(b"next")
    head, _, rest = client.received().partition(b"\r\n\r\n")
    assert head.lower().count(b"content-length") == 1
    assert b"content-length: 1234" in head.lower()
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.endswith(b"\r\n\r\nnext")
    assert not client.closed()
    client.close()


def test_a_204_has_no_body_and_the_next_answer_follows(front: str) -> None:
    client, core = waiting(front)
    client.send(GET + GET)
    exchange = core.exchanges[0]
    framing = responseBodyFraming(exchange.request.method, 204, None)
    exchange.writer.writeHead(204, b"No Content", [], framing)
    exchange.writer.writeBody(b"never sent")
    exchange.writer.finish()
    core.exchanges[1].answer(b"next")
    first, second = client.answers()
    assert (first.status, first.body, second.body) == (204, b"", b"next")
    assert b"never sent" not in client.received()
    client.close()


def test_date_and_server_are_added_unless_the_answer_has_them(front: str) -> None:
    client, core = waiting(front)
    client.send(GET + GET)
    core.exchanges[0].answer()
    core.exchanges[1].answer(headers=[(b"date", b"yesterday"), (b"SERVER", b"php")])
    first, second = client.answers()
    assert (len(first.header("Date")), len(first.header("Server"))) == (1, 1)
    assert (second.header("Date"), second.header("Server")) == (["yesterday"], ["php"])
    client.close()


# Request bodies


def test_expect_100_continue_is_answered_before_the_body_is_read(front: str) -> None:
    served = InMemoryFront(front)
    client = served.connect()
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert client.received() == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.send(b"body")
    assert served.core.seen() == [(b"/", b"body")]
    assert client.received().count(b"HTTP/1.1 200 OK") == 1
    client.close()


def test_large_bodies_are_spooled_to_a_file_and_chunked_ones_get_a_length(front: str) -> None:
    """
    Over 1 MiB, a body is in a file with either front (the HTTP/1.1 front
    holds smaller ones in memory within a budget). Trailers are dropped:
    nothing in them reaches PHP.
    """
    served = InMemoryFront(front)
    client = served.connect()
    large = bytes(range(256)) * 4200
    client.send(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(large))
    for start in range(0, len(large), 7000):
        client.send(large[start : start + 7000])
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.send(chunk(b"ab") + b"3;ext=1\r\nc" + b"de\r\n0\r\nTrailer: x\r\n\r\n")
    assert served.core.seen() == [(b"/", large), (b"/", b"abcde")]
    first, second = (exchange.request for exchange in served.core.exchanges)
    assert not isinstance(first.body, io.BytesIO)
    assert (first.bodyLength, second.bodyLength) == (len(large), 5)
    assert b"trailer" not in [name.lower() for name, _ in second.headers]
    assert client.statuses() == [200, 200]
    client.close()


# Backpressure and going away


def test_the_transports_pauses_reach_the_producer_of_the_response(front: str) -> None:
    """
    Also the producer of a response registered while the transport is paused
    (twisted.web alone leaves it producing until the transport pauses
    again).
    """
    client, core = waiting(front)
    transportProducer = client.transport.producer
    assert transportProducer is not None
    client.send(GET + GET)
    producer = FakeProducer()
    core.exchanges[0].writer.registerProducer(producer)
    transportProducer.pauseProducing()  # Twisted's buffer is full.
    assert producer.state == "paused"
    transportProducer.resumeProducing()
    assert producer.state == "producing"
    transportProducer.pauseProducing()
    core.exchanges[0].writer.unregisterProducer()
    core.exchanges[0].answer()
    later = FakeProducer()
    core.exchanges[1].writer.registerProducer(later)
    assert later.state == "paused"
    transportProducer.resumeProducing()
    assert (producer.state, later.state) == ("paused", "producing")
    client.close()


def test_a_waiting_request_keeps_the_connection_read(front: str) -> None:
    """
    While a script runs, a client that hangs up (as WP-Cron does) is noticed:
    the transport goes on reading until the client sends more.
    """
    client, core = waiting(front)
    client.send(GET)
    assert client.reading()
    client.close()
    assert core.exchanges[0].gone


def test_a_client_gone_mid_response_is_told_to_the_core(front: str) -> None:
    records: list[Served] = []
    client, core = waiting(front, observers=[records.append])
    client.send(GET)
    writer = core.exchanges[0].writer
    writer.writeHead(200, b"OK", [], BodyFraming(Delimiter.CHUNKED, None))
    writer.writeBody(b"part")
    client.close(ConnectionLost)
    assert core.exchanges[0].gone
    assert records == []


def test_a_client_gone_mid_body_never_reaches_the_core(front: str) -> None:
    served = InMemoryFront(front)
    client = served.connect()
    client.send(POST_HEAD + b"123")
    client.close(ConnectionLost)
    assert served.core.exchanges == []
    assert served.clock.getDelayedCalls() == []


def test_an_aborted_response_cuts_the_connection(front: str) -> None:
    """The client sees the body cut short, and nothing of the next request is answered."""
    client, core = waiting(front)
    client.send(GET + GET)
    writer = core.exchanges[0].writer
    writer.writeHead(200, b"OK", [], BodyFraming(Delimiter.CONTENT_LENGTH, 100))
    writer.writeBody(b"partial")
    writer.abort()
    assert client.closed()
    (answer,) = client.answers()
    assert (answer.body, answer.complete) == (b"partial", False)
    assert len(core.exchanges) == 1
    client.close(ConnectionLost)


# Records


def test_each_answered_request_gives_one_record(front: str) -> None:
    records: list[Served] = []
    served = InMemoryFront(front, FakeCore(answerAtOnce=False), observers=[records.append])
    served.clock.advance(100)
    client = served.connect()
    client.send(b"GET /a?b HTTP/1.1\r\nHost: example.org\r\nUser-Agent: ua\r\nReferer: /r\r\n\r\n")
    served.clock.advance(2.5)
    exchange = served.core.exchanges[0]
    noteUpstream(exchange.request.record, Upstream("unix:/php.sock", 2.0))
    exchange.answer(b"12345")
    assert records == [
        Served(
            time=100.0,
            client="127.0.0.1",
            method=b"GET",
            target=b"/a?b",
            protocol=b"HTTP/1.1",
            status=200,
            sent=5,
            referrer=b"/r",
            userAgent=b"ua",
            host=b"example.org",
            seconds=2.5,
            upstream=Upstream("unix:/php.sock", 2.0),
        )
    ]
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert [(record.status, record.upstream) for record in records] == [
        (200, Upstream("unix:/php.sock", 2.0)),
        (400, None),
    ]
    client.close()
