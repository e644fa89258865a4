"""
X-Sendfile and X-Accel-Redirect: a script hands its response to a file,
which is served as a static file is. Through each front in a process of
its own (the command's, C{twist fastcgi-proxy --sendfile-root DIR}) in front
of a real php-fpm running C{tests/site/handoff.php}; and the rules that
refuse a path, on their own.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.fronts import RunningFronts, SiteOptions, siteFronts
from tests.processes import Proxy, rawRequest
from txfastcgi._http.handoff import Handoff, HandoffRefused, Handoffs

REPORT = b"%PDF-1.4 a private report\n"


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files outside the document root, as a private download area holds them."""
    directory = tmp_path_factory.mktemp("private")
    (directory / "report.pdf").write_bytes(REPORT)
    (directory / "big.bin").write_bytes(os.urandom(1024 * 1024 + 7))
    (directory / "notes.txt").write_bytes(b"notes\n")
    (directory / "secret.php").write_bytes(b"<?php $password = 'hunter2';\n")
    (directory / "folder").mkdir()
    (directory / "escape").symlink_to("/etc/passwd")
    return directory


@pytest.fixture(scope="module")
def configured(
    php_fpm: Any, private: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningFronts]:
    documentRoot = str(php_fpm.documentRoot)
    site = SiteOptions(
        arguments=[
            "--sendfile-root",
            str(private),
            "--sendfile-root",
            documentRoot,
            "--accel-prefix",
            f"/protected={private}",
        ],
        resource={
            "sendfileRoots": [str(private), documentRoot],
            "accelPrefixes": {"/protected": str(private)},
        },
    )
    with siteFronts(php_fpm, tmp_path_factory.mktemp("handoff"), site) as running:
        yield running


@pytest.fixture(scope="module")
def unconfigured(php_fpm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFronts]:
    with siteFronts(php_fpm, tmp_path_factory.mktemp("no-handoff")) as running:
        yield running


@pytest.fixture
def proxy(configured: RunningFronts, front: str) -> Proxy:
    return configured[front]


def handOff(proxy: Proxy, method: str = "GET", **query: str) -> tuple[int, dict[str, str], bytes]:
    """Ask handoff.php for a file; its status, headers (lower-cased names) and body."""
    target = "/handoff.php?" + "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items())
    return fetch(proxy, method, target)


def fetch(
    proxy: Proxy, method: str, target: str, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    answer = rawRequest(proxy, method, target, **headers)
    body = answer.read()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, body


# What the client gets


def test_x_sendfile_serves_the_file_with_the_scripts_headers(proxy: Proxy, private: Path) -> None:
    status, headers, body = handOff(
        proxy, sendfile=str(private / "report.pdf"), type="application/pdf"
    )
    assert (status, body) == (200, REPORT)
    assert headers["content-type"] == "application/pdf"
    assert headers["content-length"] == str(len(REPORT))
    assert headers["content-disposition"] == 'attachment; filename="report.pdf"'
    assert headers["cache-control"] == "private, max-age=60"
    assert headers["x-content-type-options"] == "nosniff"
    assert "etag" in headers and "last-modified" in headers
    assert not {"x-sendfile", "x-accel-buffering"} & set(headers)


def test_an_empty_content_type_gives_the_files_own(proxy: Proxy, private: Path) -> None:
    status, headers, body = handOff(proxy, sendfile=str(private / "notes.txt"), type="")
    assert (status, body) == (200, b"notes\n")
    assert headers["content-type"].startswith("text/plain")


def test_a_large_file_is_sent_whole(proxy: Proxy, private: Path) -> None:
    big = private / "big.bin"
    status, headers, body = handOff(proxy, sendfile=str(big), type="application/octet-stream")
    assert status == 200
    assert int(headers["content-length"]) == big.stat().st_size
    assert hashlib.sha256(body).digest() == hashlib.sha256(big.read_bytes()).digest()


def test_a_range_of_a_handed_off_file_is_a_206(proxy: Proxy, private: Path) -> None:
    target = f"/handoff.php?sendfile={private / 'big.bin'}"
    status, headers, body = fetch(proxy, "GET", target, Range="bytes=1000-1999")
    assert status == 206
    assert body == (private / "big.bin").read_bytes()[1000:2000]
    assert headers["content-range"] == f"bytes 1000-1999/{(private / 'big.bin').stat().st_size}"


def test_a_handed_off_file_the_client_has_is_a_304(proxy: Proxy, private: Path) -> None:
    target = f"/handoff.php?sendfile={private / 'report.pdf'}"
    _, first, _ = fetch(proxy, "GET", target)
    status, _, body = fetch(proxy, "GET", target, **{"If-None-Match": first["etag"]})
    assert (status, body) == (304, b"")


def test_head_gets_the_files_headers_and_no_body(proxy: Proxy, private: Path) -> None:
    status, headers, body = handOff(proxy, "HEAD", sendfile=str(private / "report.pdf"))
    assert (status, body) == (200, b"")
    assert headers["content-length"] == str(len(REPORT))


def test_x_accel_redirect_under_a_prefix_names_a_file_in_its_directory(proxy: Proxy) -> None:
    status, _, body = handOff(proxy, accel="/protected/report.pdf")
    assert (status, body) == (200, REPORT)


def test_x_accel_redirect_elsewhere_is_under_the_document_root(proxy: Proxy, php_fpm: Any) -> None:
    status, _, body = handOff(proxy, accel="/style.css?v=3")
    assert status == 200
    assert body == (Path(php_fpm.documentRoot) / "style.css").read_bytes()


def test_the_connection_goes_on_after_a_handoff(proxy: Proxy, private: Path) -> None:
    for _ in range(3):
        assert handOff(proxy, sendfile=str(private / "notes.txt"))[2] == b"notes\n"
        assert fetch(proxy, "GET", "/download.php")[2] == b"file\n"


# What is refused


@pytest.mark.parametrize(
    ("header", "path", "status"),
    [
        ("sendfile", "/etc/passwd", 500),
        ("sendfile", "{private}/../{private_name}/report.pdf", 500),
        ("sendfile", "{private}/escape", 500),
        ("sendfile", "{private}/secret.php", 500),
        ("sendfile", "{root}/index.php", 500),
        ("sendfile", "report.pdf", 500),
        ("sendfile", "{private}/missing.pdf", 404),
        ("sendfile", "{private}/folder", 404),
        ("accel", "/protected/../../etc/passwd", 500),
        ("accel", "/protected/escape", 500),
        ("accel", "/protected/missing.pdf", 404),
    ],
)
def test_a_path_out_of_bounds_is_refused_and_never_shown(
    proxy: Proxy, private: Path, php_fpm: Any, header: str, path: str, status: int
) -> None:
    path = path.format(private=private, private_name=private.name, root=php_fpm.documentRoot)
    answer, _, body = handOff(proxy, **{header: path})
    assert answer == status
    assert b"root:" not in body and b"hunter2" not in body and b"the script's own" not in body
    assert path.encode() not in body and str(private).encode() not in body
    assert repr(path) in proxy.log()


def test_without_a_sendfile_root_the_headers_are_the_scripts_own(
    unconfigured: RunningFronts, front: str, private: Path
) -> None:
    status, headers, body = handOff(unconfigured[front], sendfile=str(private / "report.pdf"))
    assert status == 200
    assert body == b"the script's own body, which the file replaces\n"
    assert headers["x-sendfile"] == str(private / "report.pdf")


# The rules alone


def test_a_script_that_names_two_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    handoffs = Handoffs([str(tmp_path)], str(tmp_path))
    found = handoffs.find(
        [(b"X-Sendfile", str(tmp_path / "a").encode()), (b"X-Accel-Redirect", b"/a")]
    )
    assert isinstance(found, HandoffRefused) and found.code == 500


def test_headers_that_name_no_file_are_no_handoff(tmp_path: Path) -> None:
    handoffs = Handoffs([str(tmp_path)], str(tmp_path))
    assert handoffs.find([(b"Content-Type", b"text/html")]) is None


def test_the_longest_accel_prefix_wins(tmp_path: Path) -> None:
    (tmp_path / "outer").mkdir()
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "f").write_bytes(b"inner")
    handoffs = Handoffs(
        [str(tmp_path)],
        str(tmp_path),
        {"/files": str(tmp_path / "outer"), "/files/inner": str(tmp_path / "inner")},
    )
    found = handoffs.find([(b"X-Accel-Redirect", b"/files/inner/f")])
    assert isinstance(found, Handoff)
    assert found.filename == str(tmp_path / "inner" / "f")


def test_a_percent_encoded_accel_uri_is_decoded(tmp_path: Path) -> None:
    (tmp_path / "a b.txt").write_bytes(b"x")
    found = Handoffs([str(tmp_path)], str(tmp_path)).find([(b"X-Accel-Redirect", b"/a%20b.txt")])
    assert isinstance(found, Handoff) and found.filename == str(tmp_path / "a b.txt")
