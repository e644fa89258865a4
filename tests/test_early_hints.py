"""
103 Early Hints, learned: the Link preload headers of a page's response are
sent as a 103 before the next request for that page reaches PHP. Through
each front in a process of its own (the command's, C{twist fastcgi-proxy})
in front of a real php-fpm running C{tests/site/hinted.php}; over HTTP/2
with curl and Chromium; then the table on its own.

Each test asks for a path of its own (C{/hinted.php/NAME}, the same script),
since what is learned is kept by path.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.chromium import dumpDOM
from tests.fronts import RunningFronts, SiteOptions, siteFronts
from tests.processes import Proxy, stopProxy
from tests.test_https import startTLSProxy
from txfastcgi._http.hints import HINT_LIFETIME, MAX_PATHS, EarlyHints, hintLinks

PRELOAD = "</style.css>; rel=preload; as=style"
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\n"


@pytest.fixture(scope="module")
def fronts(php_fpm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFronts]:
    with siteFronts(php_fpm, tmp_path_factory.mktemp("hints")) as running:
        yield running


@pytest.fixture
def proxy(fronts: RunningFronts, front: str) -> Proxy:
    return fronts[front]


def target(name: str, *links: str, pause: int = 0) -> str:
    query = "&".join(f"link[]={quote(link)}" for link in links)
    return f"/hinted.php/{name}?{query}" + (f"&pause={pause}" if pause else "")


def exchange(proxy: Proxy, path: str, version: bytes = b"HTTP/1.1") -> bytes:
    """Everything the proxy sent back for one request, up to its close."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as connection:
        connection.sendall(
            b"GET %s %s\r\nHost: localhost\r\nConnection: close\r\n\r\n" % (path.encode(), version)
        )
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def test_a_pages_preload_links_come_as_a_103_the_next_time(proxy: Proxy) -> None:
    first = exchange(proxy, target("next", PRELOAD))
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    second = exchange(proxy, target("next", PRELOAD))
    hints, _, final = second.partition(b"\r\n\r\n")
    assert hints == EARLY_HINTS + b"Link: " + PRELOAD.encode()
    assert final.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"hinted page" in final


def test_an_http_1_0_client_gets_no_103(proxy: Proxy) -> None:
    exchange(proxy, target("old", PRELOAD))
    answer = exchange(proxy, target("old", PRELOAD), b"HTTP/1.0")
    assert answer.split(b"\r\n")[0] in (b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK")
    assert b"103" not in answer.partition(b"\r\n\r\n")[0]


def test_links_to_other_origins_and_other_relations_are_not_learned(proxy: Proxy) -> None:
    links = [
        "<https://tracker.example/t.js>; rel=preload; as=script",
        "<//tracker.example/t.js>; rel=preload; as=script",
        "</next-page>; rel=next",
        "</font.woff2>; rel=preload; as=font; crossorigin",
        "<http://localhost/same.js>; rel=modulepreload",
    ]
    exchange(proxy, target("origins", *links))
    hints = exchange(proxy, target("origins", *links)).partition(b"\r\n\r\n")[0]
    assert hints.splitlines()[1:] == [
        b"Link: </font.woff2>; rel=preload; as=font; crossorigin",
        b"Link: <http://localhost/same.js>; rel=modulepreload",
    ]


def test_a_response_without_the_links_forgets_them(proxy: Proxy) -> None:
    exchange(proxy, target("forget", PRELOAD))
    exchange(proxy, target("forget"))  # This one is hinted, and hints nothing more.
    assert exchange(proxy, target("forget")).startswith(b"HTTP/1.1 200 OK")


def test_hints_reach_an_http_2_client(php_fpm: Any, tmp_path: Path) -> None:
    """curl over HTTP/2 shows the 103 before the 200."""
    proxy = startTLSProxy(php_fpm, tmp_path)
    try:
        url = f"https://localhost:{proxy.port}{target('h2', PRELOAD)}"
        curl = ["curl", "--silent", "--insecure", "--http2", "--dump-header", "-", "-o", os.devnull]
        subprocess.run([*curl, url], check=True, capture_output=True, timeout=30)
        headers = subprocess.run([*curl, url], check=True, capture_output=True, timeout=30).stdout
    finally:
        stopProxy(proxy)
    informational, _, final = headers.partition(b"\r\n\r\n")
    assert [line.strip() for line in informational.splitlines()] == [
        b"HTTP/2 103",
        b"link: " + PRELOAD.encode(),
    ]
    assert final.startswith(b"HTTP/2 200")


def test_chromium_fetches_the_hinted_style_sheet_while_php_works(
    php_fpm: Any, tmp_path: Path
) -> None:
    """
    After one visit taught the hint, Chromium asks for /style.css, over
    HTTP/2, while the page's script is still in its 1.5 s of work: the
    access log has the style sheet's request end before the page's.
    """
    log = tmp_path / "access.json"
    proxy = startTLSProxy(
        php_fpm, tmp_path, "--access-log", str(log), "--access-log-format", "json"
    )
    page = target("chromium", PRELOAD, pause=1500)
    try:
        url = f"https://localhost:{proxy.port}{page}"
        # One Chromium, two visits: the first teaches, the second is hinted.
        dom = dumpDOM(url, "--ignore-certificate-errors")
        assert "hinted page" in dom
        time.sleep(0.5)  # Its access lines are written within a tenth of a second.
        log.write_bytes(b"")
        dumpDOM(url, "--ignore-certificate-errors")
        time.sleep(0.5)
    finally:
        stopProxy(proxy)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    [pageLine] = [line for line in lines if line["uri"].startswith("/hinted.php/chromium")]
    assert pageLine["protocol"] == "HTTP/2"
    pageEnd = arrival(pageLine) + pageLine["request_time"]
    # The first: the page's own <link> asks for it again once it has the page.
    styleLine = min((line for line in lines if line["uri"] == "/style.css"), key=arrival)
    assert arrival(styleLine) + styleLine["request_time"] < pageEnd - 0.5


def arrival(line: dict[str, Any]) -> float:
    """When the request of an access line arrived, in seconds since the epoch."""
    return datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()


def test_no_early_hints_sends_none_and_configured_hints_come_from_the_first_request(
    php_fpm: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    configuredLink = "</app.js>; rel=modulepreload"
    off = SiteOptions(arguments=["--no-early-hints"], resource={"earlyHints": False})
    configured = SiteOptions(
        arguments=["--early-hint", f"/hinted.php/configured={configuredLink}"],
        resource={"earlyHintLinks": {"/hinted.php/configured": [configuredLink]}},
    )
    with siteFronts(php_fpm, tmp_path_factory.mktemp("no-hints"), off) as withoutHints:
        for front in ("http1", "twisted.web"):
            exchange(withoutHints[front], target("off", PRELOAD))
            assert exchange(withoutHints[front], target("off", PRELOAD)).startswith(b"HTTP/1.1 200")
    with siteFronts(php_fpm, tmp_path_factory.mktemp("configured-hints"), configured) as hinted:
        for front in ("http1", "twisted.web"):
            first = exchange(hinted[front], target("configured"))
            assert first.startswith(EARLY_HINTS + b"Link: " + configuredLink.encode() + b"\r\n\r\n")


# The table alone


def test_a_hint_expires_unless_a_response_confirms_it() -> None:
    hints = EarlyHints()
    hints.learn(b"/a", [PRELOAD.encode()], b"localhost", 100.0)
    assert hints.hintsFor(b"/a", 100.0 + HINT_LIFETIME - 1) == (PRELOAD.encode(),)
    assert hints.hintsFor(b"/a", 100.0 + HINT_LIFETIME) == ()
    assert len(hints) == 0


def test_the_table_keeps_the_most_recently_learned_paths() -> None:
    hints = EarlyHints()
    for n in range(MAX_PATHS + 1):
        hints.learn(b"/p%d" % n, [PRELOAD.encode()], None, 0.0)
    assert len(hints) == MAX_PATHS
    assert hints.hintsFor(b"/p0", 1.0) == ()
    assert hints.hintsFor(b"/p%d" % MAX_PATHS, 1.0) == (PRELOAD.encode(),)


def test_several_links_in_one_field_and_quoted_commas() -> None:
    field = b'</a.css>; rel=preload; as=style, </b.js>; rel="preload"; title="x, y"; as=script'
    assert hintLinks([field], None) == (
        b"</a.css>; rel=preload; as=style",
        b'</b.js>; rel="preload"; title="x, y"; as=script',
    )


def test_a_field_with_a_control_character_is_dropped() -> None:
    assert hintLinks([b"</a.css>; rel=preload\x00; as=style"], None) == ()


def test_configured_origins_may_be_hinted() -> None:
    link = b"<https://cdn.example.org/a.css>; rel=preload; as=style"
    assert hintLinks([link], b"localhost") == ()
    assert hintLinks([link], b"localhost", frozenset({b"https://cdn.example.org"})) == (link,)
