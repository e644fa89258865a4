"""
HTTPS and HTTP/2 in front of PHP, through the real ``twist fastcgi-proxy``
with a throwaway certificate, driven by curl (HTTP/2 by ALPN); and trusted
forwarding headers from a TLS terminator in front of a plain listener.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certificates import selfSignedCertificate
from tests.processes import REPOSITORY, Proxy, freePort, startServer, stopProxy


def makeCertificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, and its key."""
    keyPEM, certificatePEM = selfSignedCertificate("localhost")
    keyPath, certificatePath = directory / "key.pem", directory / "cert.pem"
    keyPath.write_bytes(keyPEM)
    certificatePath.write_bytes(certificatePEM)
    return keyPath, certificatePath


def startTLSProxy(php_fpm: Any, directory: Path, *options: str) -> Proxy:
    """
    C{twist fastcgi-proxy} on a TLS listener with a throwaway certificate for
    localhost, serving the test site, with C{options} (default: no access log).
    """
    key, certificate = makeCertificate(directory)
    port = freePort()
    arguments = ["-m", "twisted", "fastcgi-proxy", "--php-fpm", php_fpm.endpointDescription]
    arguments += ["--path", php_fpm.documentRoot, *(options or ["--access-log", os.devnull])]
    arguments += ["--listen", f"ssl:{port}:privateKey={key}:certKey={certificate}"]
    return startServer(arguments, port, directory / "twist.log")


@pytest.fixture(scope="module")
def tlsProxy(php_fpm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    proxy = startTLSProxy(php_fpm, tmp_path_factory.mktemp("tls"))
    yield proxy
    stopProxy(proxy)


def curl(*arguments: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--insecure", *arguments],
        input=data,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result


def url(proxy: Proxy, path: str) -> str:
    return f"https://localhost:{proxy.port}{path}"


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_php_sees_the_same_params_over_http_1_1_and_http_2(tlsProxy: Proxy, version: str) -> None:
    result = curl(
        version,
        "--header",
        "Cookie: a=1",
        "--header",
        "Cookie: b=2",
        "--write-out",
        "\n%{http_version}",
        url(tlsProxy, "/api/info?q=1"),
    )
    body, _, httpVersion = result.stdout.rpartition(b"\n")
    assert httpVersion == (b"2" if version == "--http2" else b"1.1")
    info = json.loads(body)
    assert info["HTTPS"] == "on"
    assert info["REQUEST_SCHEME"] == "https"
    assert info["HTTP_HOST"] == f"localhost:{tlsProxy.port}"
    assert info["SERVER_NAME"] == "localhost"
    assert info["SERVER_PORT"] == str(tlsProxy.port)
    assert info["HTTP_COOKIE"] == "a=1; b=2"
    assert info["cookie"] == {"a": "1", "b": "2"}
    assert info["REQUEST_URI"] == "/api/info?q=1"
    assert info["SERVER_PROTOCOL"] == ("HTTP/2" if version == "--http2" else "HTTP/1.1")


def test_concurrent_streams_share_one_http_2_connection(tlsProxy: Proxy) -> None:
    urls = [url(tlsProxy, f"/hello/stream{n}") for n in range(10)]
    result = curl(
        "--http2",
        "--parallel",
        "--write-out",
        "%{http_version} %{response_code} %{num_connects}\n",
        "--output",
        "/dev/null",
        *[argument for address in urls for argument in (address, "--output", "/dev/null")],
    )
    lines = result.stdout.decode().split()
    transfers = [lines[i : i + 3] for i in range(0, len(lines), 3)]
    assert len(transfers) == 10
    assert {(version, code) for version, code, _ in transfers} == {("2", "200")}
    assert sum(int(connects) for _, _, connects in transfers) == 1


def test_a_large_upload_and_download_over_http_2(tlsProxy: Proxy, tmp_path: Path) -> None:
    content = os.urandom(6 * 1024 * 1024)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(content)
    page = curl("--http2", "--form", f"file=@{upload}", url(tlsProxy, "/upload")).stdout
    assert f'id="sha256">{hashlib.sha256(content).hexdigest()}<'.encode() in page
    size = 30 * 1024 * 1024
    download = curl("--http2", url(tlsProxy, f"/stream.php?bytes={size}&chunk=262144")).stdout
    assert len(download) == size
    assert download == (b"abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1))[:size]


def test_preload_link_headers_pass_through_unchanged(tlsProxy: Proxy) -> None:
    headers = curl(
        "--http2", "--dump-header", "-", "--output", "/dev/null", url(tlsProxy, "/headers.php")
    )
    assert b"link: </style.css>; rel=preload; as=style\r\n" in headers.stdout.lower()


@pytest.fixture(scope="module")
def plainProxyBehindTerminator(
    php_fpm: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    port = freePort()
    arguments = ["-m", "twisted", "fastcgi-proxy", "--php-fpm", php_fpm.endpointDescription]
    arguments += ["--path", php_fpm.documentRoot, "--listen", f"tcp:{port}:interface=127.0.0.1"]
    arguments += ["--trusted-proxy", "127.0.0.1", "--access-log", os.devnull]
    proxy = startServer(arguments, port, tmp_path_factory.mktemp("forwarded") / "twist.log")
    yield proxy
    stopProxy(proxy)


def test_a_trusted_terminator_sets_remote_addr_and_https(
    plainProxyBehindTerminator: Proxy,
) -> None:
    info = json.loads(
        curl(
            "--header",
            "X-Forwarded-For: 6.6.6.6, 198.51.100.7",
            "--header",
            "X-Forwarded-Proto: https",
            f"http://127.0.0.1:{plainProxyBehindTerminator.port}/info.php",
        ).stdout
    )
    # 6.6.6.6 was written by the client; the trusted proxy saw 198.51.100.7.
    assert info["REMOTE_ADDR"] == "198.51.100.7"
    assert info["HTTPS"] == "on"
    assert info["REQUEST_SCHEME"] == "https"


def test_without_trust_forwarding_headers_change_nothing(proxyWithoutTrust: Proxy) -> None:
    info = json.loads(
        curl(
            "--header",
            "X-Forwarded-For: 198.51.100.7",
            "--header",
            "X-Forwarded-Proto: https",
            f"http://127.0.0.1:{proxyWithoutTrust.port}/info.php",
        ).stdout
    )
    assert info["REMOTE_ADDR"] == "127.0.0.1"
    assert info["HTTPS"] is None
    assert info["HTTP_X_FORWARDED_FOR"] == "198.51.100.7"


def test_https_forced_for_a_plain_listener(proxyForcedHTTPS: Proxy) -> None:
    info = json.loads(curl(f"http://127.0.0.1:{proxyForcedHTTPS.port}/info.php").stdout)
    assert info["HTTPS"] == "on"
    assert info["REQUEST_SCHEME"] == "https"


def plainProxy(php_fpm: Any, logDirectory: Path, *extra: str) -> Proxy:
    port = freePort()
    arguments = ["-m", "twisted", "fastcgi-proxy", "--php-fpm", php_fpm.endpointDescription]
    arguments += ["--path", php_fpm.documentRoot, "--listen", f"tcp:{port}:interface=127.0.0.1"]
    return startServer([*arguments, *extra], port, logDirectory / "twist.log")


@pytest.fixture
def proxyWithoutTrust(php_fpm: Any, tmp_path: Path) -> Iterator[Proxy]:
    proxy = plainProxy(php_fpm, tmp_path)
    yield proxy
    stopProxy(proxy)


@pytest.fixture
def proxyForcedHTTPS(php_fpm: Any, tmp_path: Path) -> Iterator[Proxy]:
    proxy = plainProxy(php_fpm, tmp_path, "--https")
    yield proxy
    stopProxy(proxy)


def test_workers_refuse_a_tls_listener(tmp_path: Path) -> None:
    """Worker processes share plain sockets; a TLS listener is refused clearly."""
    key, certificate = makeCertificate(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "fastcgi-proxy", "--workers", "2"]
        + ["--listen", f"ssl:0:privateKey={key}:certKey={certificate}"],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "twist fastcgi-proxy: error: --workers shares only tcp, tcp6 and unix listeners, "
        f"not 'ssl:0:privateKey={key}:certKey={certificate}'"
    ]
