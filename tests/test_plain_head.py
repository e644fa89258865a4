"""
The HTTP/1.1 front reads plain request heads itself (L{parsePlainHead})
and leaves every other head to llhttp: what it reads must be what llhttp
reads, and anything llhttp would refuse or read otherwise must be declined.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import httptools
import pytest

from txfastcgi._http.plainhead import PlainHead, parsePlainHead

_LIMIT = 16 * 1024

_CHROMIUM = (
    b"GET /wp-content/themes/twentytwentyfour/style.css?ver=1.2 HTTP/1.1\r\n"
    b"Host: example.org\r\n"
    b"Connection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="120", "Not?A_Brand";v="8"\r\n'
    b"sec-ch-ua-mobile: ?0\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    b" Chrome/120.0.0.0 Safari/537.36\r\n"
    b"Accept: text/css,*/*;q=0.1\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Referer: https://example.org/\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\n"
    b"Cookie: wordpress_test_cookie=WP%20Cookie%20check; theme=dark\r\n"
    b"\r\n"
)

_PLAIN_HEADS = [
    b"GET /hello.php HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    _CHROMIUM,
    b'HEAD /index.php?p=1&q=%20x HTTP/1.1\r\nHost: a\r\nIf-None-Match: "abc"\r\n\r\n',
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"DELETE /item/7 HTTP/1.1\r\nHost: a\r\nX-Empty-Inside: a  b\tc\r\n\r\n",
    b"OPTIONS /x HTTP/1.1\r\nHost:a\r\n\r\n",
    b"GET /[v6]/@user/!$&'()*+,;=:~ HTTP/1.1\r\nHost: a\r\n\r\n",
]

# What llhttp takes differently or that changes the framing: llhttp's.
_LLHTTP_HEADS = [
    b"POST /form.php HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /up.php HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n",
    b"GET /wiki/\xc3\xa9t\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a \r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Empty:\r\nHost: a\r\n\r\n",
    b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n",
]


@dataclass
class _Reading:
    """What llhttp's callbacks and accessors report of one head."""

    url: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    parser: httptools.HttpRequestParser | None = None
    # llhttp forgets the connection's fate once the message is complete.
    keepAlive: bool | None = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        assert self.parser is not None
        self.keepAlive = self.parser.should_keep_alive()


def _llhttpReads(head: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bool] | None:
    """llhttp's reading of one whole head without a body, or None if it refuses it."""
    reading = _Reading()
    parser = reading.parser = httptools.HttpRequestParser(reading)
    try:
        parser.feed_data(head)
    except httptools.HttpParserError:
        return None
    if reading.keepAlive is None:
        return None
    version = b"HTTP/" + parser.get_http_version().encode("ascii")
    return parser.get_method(), reading.url, version, reading.headers, reading.keepAlive


def _asLLHTTPReads(head: PlainHead) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bool]:
    return head.method, head.target, head.version, head.headers, head.keepAlive


@pytest.mark.parametrize("head", _PLAIN_HEADS)
def test_a_plain_head_is_read_as_llhttp_reads_it(head: bytes) -> None:
    parsed = parsePlainHead(head + b"GET /next HTTP/1.1\r\n", _LIMIT)
    assert parsed is not None
    assert parsed.end == len(head)
    assert _asLLHTTPReads(parsed) == _llhttpReads(head)
    assert parsed.hosts == sum(name.lower() == b"host" for name, _ in parsed.headers)


@pytest.mark.parametrize("head", _LLHTTP_HEADS)
def test_anything_else_is_left_to_llhttp(head: bytes) -> None:
    assert parsePlainHead(head, _LIMIT) is None


def test_a_head_over_the_limit_is_left_to_llhttp_which_refuses_it() -> None:
    head = b"GET /hello.php HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
    # Line ends do not count: 43 bytes of lines.
    assert parsePlainHead(head, 43) is not None
    assert parsePlainHead(head, 42) is None


# Bytes that matter to HTTP's grammar, to put anywhere.
_INTERESTING = b'\r\n\t :,;/?#%"\\\x00\x01\x7f\x80\xff=-_.aZ09'


def _variations(count: int) -> list[bytes]:
    """Heads with a byte inserted, replaced or removed somewhere, the same every run."""
    chooser = random.Random(12)
    heads = []
    for _ in range(count):
        head = bytearray(chooser.choice(_PLAIN_HEADS))
        for _ in range(chooser.randint(1, 2)):
            where = chooser.randrange(len(head))
            byte = chooser.choice(_INTERESTING)
            change = chooser.randrange(3)
            if change == 0:
                head.insert(where, byte)
            elif change == 1:
                head[where] = byte
            else:
                del head[where]
        heads.append(bytes(head))
    return heads


def test_every_variation_it_accepts_is_read_as_llhttp_reads_it() -> None:
    accepted = declined = 0
    for head in _variations(6000):
        parsed = parsePlainHead(head, _LIMIT)
        if parsed is None:
            declined += 1
            continue
        accepted += 1
        assert _asLLHTTPReads(parsed) == _llhttpReads(head[: parsed.end]), head
    # Both sides of the line are exercised.
    assert accepted > 1000 and declined > 1000
