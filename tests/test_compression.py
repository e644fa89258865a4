"""
Response compression: zstd, br or gzip as the client's Accept-Encoding asks,
for the responses worth it; precompressed static files; and Chromium
decoding what it gets. Through each front in a process of its own (the
command's, C{twist fastcgi-proxy}) in front of a real php-fpm running
C{tests/site/article.php}; then the rules on their own.
"""

from __future__ import annotations

import gzip
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

try:
    import brotli
except ImportError:  # PyPy: the same API from brotlicffi, as txfastcgi uses.
    import brotlicffi as brotli

from tests.chromium import dumpDOM
from tests.fronts import RunningFronts, SiteOptions, siteFronts
from tests.processes import Proxy, rawRequest
from txfastcgi._http.compression import acceptedCodings, chooseEncoding, isCompressible

DECODE = {
    "gzip": gzip.decompress,
    "br": brotli.decompress,
    "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
}


@pytest.fixture(scope="module")
def fronts(php_fpm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFronts]:
    with siteFronts(php_fpm, tmp_path_factory.mktemp("compression")) as running:
        yield running


@pytest.fixture
def proxy(fronts: RunningFronts, front: str) -> Proxy:
    return fronts[front]


def fetch(
    proxy: Proxy, target: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased names) and the body as it came, still encoded."""
    answer = rawRequest(proxy, method, target, **headers)
    body = answer.read()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, body


def identity(proxy: Proxy, target: str) -> bytes:
    status, headers, body = fetch(proxy, target)
    assert status == 200 and "content-encoding" not in headers
    return body


def accepting(codings: str) -> dict[str, str]:
    return {"Accept-Encoding": codings}


# What the client gets


@pytest.mark.parametrize("coding", ["zstd", "br", "gzip"])
def test_a_page_is_compressed_in_the_coding_the_client_takes(proxy: Proxy, coding: str) -> None:
    plain = identity(proxy, "/article.php")
    status, headers, body = fetch(proxy, "/article.php", **accepting(coding))
    assert status == 200
    assert headers["content-encoding"] == coding
    assert headers["vary"] == "Accept-Encoding"
    assert DECODE[coding](body) == plain
    assert len(body) < len(plain) / 3


@pytest.mark.parametrize(
    ("acceptEncoding", "coding"),
    [
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip;q=1.0, br;q=0.5", "gzip"),
        ("br;q=0.9, gzip;q=0.9, zstd;q=0.1", "br"),
        ("*", "zstd"),
        ("zstd;q=0, *;q=0.5", "br"),
        ("identity", None),
        ("deflate, compress", None),
        ("*;q=0", None),
        ("gzip;q=0", None),
    ],
)
def test_q_values_choose_the_coding(proxy: Proxy, acceptEncoding: str, coding: str | None) -> None:
    _, headers, _ = fetch(proxy, "/article.php", **accepting(acceptEncoding))
    assert headers.get("content-encoding") == coding
    assert headers["vary"] == "Accept-Encoding"


def test_without_accept_encoding_the_page_says_it_varies(proxy: Proxy) -> None:
    status, headers, body = fetch(proxy, "/article.php")
    assert (status, "content-encoding" in headers) == (200, False)
    assert headers["vary"] == "Accept-Encoding"
    assert body.count(b"<p id=") == 100


def test_a_short_page_goes_as_it_is_with_its_length(proxy: Proxy) -> None:
    status, headers, body = fetch(proxy, "/article.php?paragraphs=2", **accepting("gzip"))
    assert status == 200 and "content-encoding" not in headers
    assert int(headers["content-length"]) == len(body) < 1024
    assert headers["vary"] == "Accept-Encoding"


@pytest.mark.parametrize(
    "query",
    [
        "type=image/png",
        "type=application/zip",
        "cache=public,%20no-transform",
        "encoding=x-custom",
        "status=206",
    ],
)
def test_what_must_not_be_compressed_is_not(proxy: Proxy, query: str) -> None:
    plain = fetch(proxy, f"/article.php?{query}")[2]
    _, headers, body = fetch(proxy, f"/article.php?{query}", **accepting("gzip, br, zstd"))
    assert headers.get("content-encoding") == ("x-custom" if "encoding" in query else None)
    assert body == plain


def test_head_is_never_compressed(proxy: Proxy) -> None:
    status, headers, body = fetch(proxy, "/article.php", "HEAD", **accepting("gzip"))
    assert (status, body, "content-encoding" in headers) == (200, b"", False)


def test_a_strong_etag_becomes_weak_when_the_body_is_compressed(proxy: Proxy) -> None:
    _, plain, _ = fetch(proxy, '/article.php?etag="v1"')
    _, compressed, _ = fetch(proxy, '/article.php?etag="v1"', **accepting("gzip"))
    assert (plain["etag"], compressed["etag"]) == ('"v1"', 'W/"v1"')


def test_a_scripts_flush_reaches_the_client_while_it_still_runs(proxy: Proxy) -> None:
    """The first paragraph, flushed, decodes before the script's 2 s pause ends."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as connection:
        connection.sendall(
            b"GET /article.php?pause=2000 HTTP/1.1\r\nHost: t\r\n"
            b"Accept-Encoding: gzip\r\nConnection: close\r\n\r\n"
        )
        started = time.monotonic()
        received = b""
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while b"Paragraph 1 " not in decode(received, decoder):
            received += connection.recv(65536)
        assert time.monotonic() - started < 1.5
        assert b"content-encoding: gzip" in received.lower()


def decode(received: bytes, decoder: Any) -> bytes:
    """What the chunked gzip body received so far decodes to."""
    _, _, body = received.partition(b"\r\n\r\n")
    data = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        if not size or len(rest) < int(size, 16):
            break
        data += rest[: int(size, 16)]
        body = rest[int(size, 16) + 2 :]
    decoded: bytes = decoder.copy().decompress(data)
    return decoded


def test_chromium_decodes_what_it_is_sent(fronts: RunningFronts) -> None:
    """Chromium asks for gzip, deflate, br and zstd, and shows the whole article."""
    dom = dumpDOM(fronts["http1"].url + "/article.php")
    assert dom.count("<p id=") == 100
    assert 'id="p100">Paragraph 100 of the article' in dom


# Precompressed static files


@pytest.fixture(scope="module")
def precompressedFiles(php_fpm: Any) -> Iterator[tuple[Path, bytes]]:
    """A style sheet with its .gz and .br copies beside it, in the document root."""
    original = Path(php_fpm.documentRoot) / "precompressed.css"
    content = b"body { color: black; }\n" * 200
    made = [original, Path(f"{original}.gz"), Path(f"{original}.br")]
    made[0].write_bytes(content)
    made[1].write_bytes(gzip.compress(content))
    made[2].write_bytes(brotli.compress(content))
    for path in made:
        path.chmod(0o644)
    yield original, content
    for path in made:
        path.unlink()


@pytest.mark.parametrize(("acceptEncoding", "coding"), [("gzip", "gzip"), ("br, gzip", "br")])
def test_a_precompressed_copy_is_sent_as_it_is(
    proxy: Proxy, precompressedFiles: tuple[Path, bytes], acceptEncoding: str, coding: str
) -> None:
    original, content = precompressedFiles
    suffix = {"gzip": ".gz", "br": ".br"}[coding]
    status, headers, body = fetch(proxy, "/precompressed.css", **accepting(acceptEncoding))
    assert status == 200
    assert body == Path(f"{original}{suffix}").read_bytes()
    assert DECODE[coding](body) == content
    assert headers["content-encoding"] == coding
    assert headers["content-type"].startswith("text/css")
    assert headers["vary"] == "Accept-Encoding"


def test_without_a_copy_the_client_takes_the_file_goes_as_it_is(
    proxy: Proxy, precompressedFiles: tuple[Path, bytes]
) -> None:
    _, content = precompressedFiles
    status, headers, body = fetch(proxy, "/precompressed.css", **accepting("zstd"))
    assert (status, body, "content-encoding" in headers) == (200, content, False)


def test_a_precompressed_copy_that_is_a_link_is_never_sent(
    proxy: Proxy, php_fpm: Any, tmp_path: Path
) -> None:
    original = Path(php_fpm.documentRoot) / "linked.txt"
    original.write_bytes(b"the file itself\n")
    original.chmod(0o644)
    (tmp_path / "secret").write_bytes(b"outside the document root")
    link = Path(f"{original}.gz")
    link.symlink_to(tmp_path / "secret")
    try:
        status, headers, body = fetch(proxy, "/linked.txt", **accepting("gzip"))
        assert (status, body, "content-encoding" in headers) == (200, b"the file itself\n", False)
    finally:
        link.unlink()
        original.unlink()


# Off


def test_no_compress_sends_everything_as_it_is(
    php_fpm: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with siteFronts(
        php_fpm,
        tmp_path_factory.mktemp("no-compress"),
        SiteOptions(arguments=["--no-compress"], resource={"compress": False}),
    ) as running:
        for front in ("http1", "twisted.web"):
            _, headers, _ = fetch(running[front], "/article.php", **accepting("gzip, br, zstd"))
            assert "content-encoding" not in headers and "vary" not in headers


# The rules alone


def test_codings_the_client_weighs_the_same_go_in_the_servers_order() -> None:
    assert acceptedCodings([b"gzip, br, zstd"]) == [b"zstd", b"br", b"gzip"]
    assert acceptedCodings([b"gzip;q=0.8", b"br;q=0.9"]) == [b"br", b"gzip"]
    assert acceptedCodings([]) == []


def test_an_unreadable_weight_accepts_nothing() -> None:
    assert chooseEncoding([b"gzip;q=high"]) is None


@pytest.mark.parametrize(
    ("contentType", "compressible"),
    [
        (b"text/html; charset=utf-8", True),
        (b"application/json", True),
        (b"application/ld+json", True),
        (b"image/svg+xml", True),
        (b"Text/CSS", True),
        (b"image/jpeg", False),
        (b"application/octet-stream", False),
        (b"font/woff2", False),
        (None, False),
    ],
)
def test_compressible_types(contentType: bytes | None, compressible: bool) -> None:
    assert isCompressible(contentType) is compressible
