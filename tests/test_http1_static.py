"""
Static files, operator pages and graceful shutdown on the dedicated HTTP/1.1
front, specified in memory: real files under C{tmp_path}, a client on a
L{StringTransport}, and cores that answer as the real one does (the file
the router found goes to C{serveFile}).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from tests.fronts import Client, FakeCore
from tests.recordingbackend import Answer
from tests.test_http1 import staticFileServer
from txfastcgi._http.core import Proxy
from txfastcgi._http.http1 import FRESH_CONNECTION_GRACE, HTTP1Factory, Response, StaticFiles
from txfastcgi._http.routing import Router
from txfastcgi._http.served import Served
from txfastcgi._http.staticfiles import SmallFileCache
from txfastcgi._http.status import PagesBeforeProxy

SMALL = b"body { color: red }\n"
LARGE = bytes(range(256)) * 1024  # 256 KiB: over the cache's limit here, sent by a FileSender.


def makeFactory(
    core: Any = None, **options: Any
) -> tuple[HTTP1Factory, FakeCore, MemoryReactorClock]:
    """The front on a clock of its own, before C{core} (a L{FakeCore} by default)."""
    clock = MemoryReactorClock()
    core = FakeCore() if core is None else core
    options.setdefault("serveStaticFile", staticFileServer([]))
    options.setdefault("headerTimeout", 60.0)
    options.setdefault("bodyTimeout", 60.0)
    return HTTP1Factory(core, reactor=clock, **options), core, clock


class FilesOnly:
    """A core whose router finds every target as a file under C{root}."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def handle(self, request: Any, writer: Response) -> Any:
        writer.serveFile(str(self.root / request.target.decode().lstrip("/")))
        return self

    def clientGone(self) -> None:
        """Nothing runs for a static file."""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "style.css").write_bytes(SMALL)
    (tmp_path / "large.bin").write_bytes(LARGE)
    os.utime(tmp_path / "large.bin", (time.time() - 60, time.time() - 60))
    return tmp_path


def connect(root: Path, served: list[Served] | None = None) -> tuple[Client, StaticFiles]:
    # A clock 10 s ahead: files just written are not kept otherwise (see _RACY_NS).
    files = StaticFiles(SmallFileCache(maxFileSize=64 * 1024, clock=lambda: time.time() + 10))
    factory, _, _ = makeFactory(
        FilesOnly(root),
        serveStaticFile=files,
        observers=[] if served is None else [served.append],
    )
    return Client(factory), files


def drain(client: Client) -> None:
    """Let a file sender write all it has, as a transport pulls it when its buffer drains."""
    transport = client.transport
    while transport.producer is not None and transport.producer is not client.protocol:
        transport.producer.resumeProducing()


def get(target: bytes, *headers: bytes, method: bytes = b"GET") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: a\r\n%s\r\n" % (
        method,
        target,
        b"".join(header + b"\r\n" for header in headers),
    )


def only(client: Client, methods: tuple[bytes, ...] = ()) -> Answer:
    (answer,) = client.answers(methods)
    return answer


# Static files


def test_a_small_file_comes_from_memory_with_its_type_validators_and_length(root: Path) -> None:
    client, files = connect(root)
    client.send(get(b"/style.css"))
    answer = only(client)
    assert (answer.status, answer.body) == (200, SMALL)
    assert answer.header("Content-Type") == ["text/css"]
    assert answer.header("Content-Length") == [str(len(SMALL))]
    assert answer.header("Accept-Ranges") == ["bytes"]
    assert answer.header("ETag") and answer.header("Last-Modified")
    assert answer.header("Server") == ["txfastcgi"] and answer.header("Date")
    assert len(files.cache) == 1
    assert not client.closed()


def test_a_changed_file_is_served_changed_from_the_next_request(root: Path) -> None:
    client, _ = connect(root)
    client.send(get(b"/style.css"))
    (root / "style.css").write_bytes(b"p {}\n")
    client.send(get(b"/style.css"))
    assert [answer.body for answer in client.answers()] == [SMALL, b"p {}\n"]


def test_the_router_and_the_cache_share_one_stat_and_a_changed_file_is_served_fresh(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = Proxy(cast(Any, None), str(root), reactor=MemoryReactorClock())
    # Clocks 10 s ahead, so that files just written are remembered and kept.
    proxy.router = Router(str(root), "index.php", "/index.php", clock=lambda: time.time() + 10)
    files = StaticFiles(SmallFileCache(clock=lambda: time.time() + 10))
    client = Client(makeFactory(proxy, serveStaticFile=files)[0])
    style = str(root / "style.css")
    looks: list[str] = []

    def counted(look: Callable[..., os.stat_result]) -> Callable[..., os.stat_result]:
        def counting(path: str, *args: Any, **options: Any) -> os.stat_result:
            looks.append(path)
            return look(path, *args, **options)

        return counting

    monkeypatch.setattr(os, "stat", counted(os.stat))
    monkeypatch.setattr(os, "lstat", counted(os.lstat))
    perRequest = []
    for change in [None, None, "rewrite", "rename"]:
        if change == "rewrite":
            (root / "style.css").write_bytes(b"p {}\n")
        elif change == "rename":
            (root / "style.css").rename(root / "moved.css")
        before = looks.count(style)
        client.send(get(b"/style.css"))
        perRequest.append(looks.count(style) - before)
    answers = client.answers()
    assert [answer.body for answer in answers[:3]] == [SMALL, SMALL, b"p {}\n"]
    assert answers[3].status == 404  # Gone, and there is no front controller here.
    # One look a request; after a change, the remembered one, then the walk.
    assert perRequest == [1, 1, 2, 2]


def test_a_conditional_get_with_the_files_validators_gets_304_without_a_body(root: Path) -> None:
    client, _ = connect(root)
    client.send(get(b"/style.css"))
    first = only(client)
    client.transport.clear()
    etag, lastModified = first.header("ETag")[0], first.header("Last-Modified")[0]
    client.send(get(b"/style.css", b"If-None-Match: " + etag.encode()))
    client.send(get(b"/large.bin", b"If-Modified-Since: " + lastModified.encode()))
    answers = client.answers()
    assert [(a.status, a.body) for a in answers] == [(304, b""), (304, b"")]
    assert answers[0].header("ETag") == [etag]


def test_a_range_gets_206_and_a_range_past_the_end_416(root: Path) -> None:
    client, _ = connect(root)
    client.send(get(b"/style.css", b"Range: bytes=0-3"))
    client.send(get(b"/style.css", b"Range: bytes=5000-"))
    partial, unsatisfiable = client.answers()
    assert (partial.status, partial.body) == (206, SMALL[:4])
    assert partial.header("Content-Range") == [f"bytes 0-3/{len(SMALL)}"]
    assert unsatisfiable.status == 416
    assert unsatisfiable.header("Content-Range") == [f"bytes */{len(SMALL)}"]


def test_head_has_the_get_headers_and_no_body_and_the_connection_goes_on(root: Path) -> None:
    client, _ = connect(root)
    client.send(get(b"/large.bin", method=b"HEAD"))
    client.send(get(b"/style.css"))
    head, following = client.answers([b"HEAD"])
    assert (head.status, head.body, head.header("Content-Length")) == (200, b"", [str(len(LARGE))])
    assert following.body == SMALL


def test_a_post_to_a_static_file_gets_405(root: Path) -> None:
    client, _ = connect(root)
    client.send(b"POST /style.css HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    answer = only(client)
    assert (answer.status, answer.header("Allow")) == (405, ["GET, HEAD"])


def test_a_file_gone_since_it_was_found_gets_404(root: Path) -> None:
    client, _ = connect(root)
    client.send(get(b"/gone.css"))
    assert client.statuses() == [404]


def test_a_large_file_is_sent_by_a_file_sender_then_the_next_request_is_answered(
    root: Path,
) -> None:
    served: list[Served] = []
    client, files = connect(root, served)
    client.send(get(b"/large.bin", b"Range: bytes=1-") + get(b"/style.css"))
    assert client.transport.producer is not client.protocol  # The file sender's turn.
    drain(client)
    large, small = client.answers()
    assert (large.status, large.complete, large.body == LARGE[1:]) == (206, True, True)
    assert small.body == SMALL
    assert len(files.cache) == 1  # Only the small one.
    assert client.transport.producer is client.protocol
    assert [(s.target, s.status, s.sent) for s in served] == [
        (b"/large.bin", 206, len(LARGE) - 1),
        (b"/style.css", 200, len(SMALL)),
    ]


def test_a_client_gone_during_a_large_file_stops_it_quietly(root: Path) -> None:
    served: list[Served] = []
    client, _ = connect(root, served)
    client.send(get(b"/large.bin"))
    sender: Any = client.transport.producer
    sender.resumeProducing()
    sender.stopProducing()  # What a transport does as it loses the connection.
    client.close()
    assert sender._file.closed
    assert served == []


# Operator pages


class Page:
    """An operator page that says who asked."""

    def __init__(self) -> None:
        self.readers: list[str | None] = []

    def respond(self, host: str | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        self.readers.append(host)
        return 200, [(b"content-type", b"application/json")], b"{}\n"


def pagesClient() -> tuple[Client, Page, FakeCore]:
    page, proxy = Page(), FakeCore()
    pages = PagesBeforeProxy(proxy, {b"/status": page})  # type: ignore[arg-type]
    factory, _, _ = makeFactory(pages)
    return Client(factory), page, proxy


def test_an_operator_page_answers_its_exact_path_for_the_clients_own_address() -> None:
    client, page, proxy = pagesClient()
    client.send(get(b"/status?pretty") + get(b"/status", method=b"HEAD") + get(b"/status/x"))
    status, head, other = client.answers([b"GET", b"HEAD"])
    assert (status.status, status.body, status.header("Content-Type")) == (
        200,
        b"{}\n",
        ["application/json"],
    )
    assert (head.status, head.body, head.header("Content-Length")) == (200, b"", ["3"])
    assert other.body == b"ran"
    assert page.readers == ["127.0.0.1", "127.0.0.1"]
    assert proxy.seen() == [(b"/status/x", b"")]


def test_an_operator_page_takes_get_and_head_only() -> None:
    client, page, proxy = pagesClient()
    client.send(b"POST /status HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    answer = only(client)
    assert (answer.status, answer.header("Allow")) == (405, ["GET, HEAD"])
    assert page.readers == [] and proxy.seen() == []


# Graceful shutdown


def closing(factory: HTTP1Factory) -> tuple[Deferred[None], list[None]]:
    done = factory.closeConnections()
    fired: list[None] = []
    done.addCallback(fired.append)
    return done, fired


def test_keeping_no_connections_closes_kept_idle_ones_and_leaves_new_ones_their_request() -> None:
    factory, proxy, _ = makeFactory()
    fresh, kept = Client(factory), Client(factory)
    kept.send(get(b"/a"))
    factory.keepNoConnections()
    assert kept.closed() and not fresh.closed()
    fresh.send(get(b"/b"))
    assert [answer.header("Connection") for answer in fresh.answers()] == [["close"]]
    assert fresh.closed() and proxy.seen() == [(b"/a", b""), (b"/b", b"")]


def test_closing_connections_closes_idle_ones_at_once_and_new_ones_after_a_grace() -> None:
    factory, _, clock = makeFactory()
    fresh, kept = Client(factory), Client(factory)
    kept.send(get(b"/a"))
    factory.keepNoConnections()
    _, fired = closing(factory)
    assert kept.closed() and not fresh.closed()
    kept.close()
    clock.advance(FRESH_CONNECTION_GRACE / 2)
    assert not fresh.closed()
    clock.advance(FRESH_CONNECTION_GRACE + 1)  # And the deadlines' next look.
    assert fresh.closed()
    fresh.close()
    assert fired == [None]


def test_closing_connections_answers_a_request_that_comes_within_the_grace() -> None:
    factory, proxy, _ = makeFactory()
    fresh = Client(factory)
    _, fired = closing(factory)
    fresh.send(get(b"/late"))
    assert [answer.header("Connection") for answer in fresh.answers()] == [["close"]]
    assert fresh.closed() and proxy.seen() == [(b"/late", b"")]
    fresh.close()
    assert fired == [None]


def test_closing_connections_lets_a_request_being_answered_finish_first() -> None:
    factory, proxy, _ = makeFactory(FakeCore(answerAtOnce=False))
    client = Client(factory)
    client.send(get(b"/slow"))
    _, fired = closing(factory)
    assert not client.closed()
    proxy.exchanges[0].answer(b"done")
    answer = only(client)
    assert (answer.body, answer.header("Connection")) == (b"done", ["close"])
    assert client.closed()
    client.close()
    assert fired == [None]


def test_closing_connections_lets_a_request_half_received_be_answered_first() -> None:
    factory, proxy, _ = makeFactory()
    client = Client(factory)
    client.send(b"GET /late HTTP/1.1\r\nHost: a\r\n")
    closing(factory)
    assert not client.closed()
    client.send(b"\r\n" + get(b"/never"))
    assert [answer.header("Connection") for answer in client.answers()] == [["close"]]
    assert client.closed() and proxy.seen() == [(b"/late", b"")]
    client.close()
