"""
The shipped PHP application, used through each front in a process of its
own (L{tests.fronts.RunningFronts}: the one the command serves through the
real ``twist fastcgi-proxy``) in front of a real php-fpm, by a client that
behaves like a browser: it keeps cookies and follows redirects.  Then what
only the command does: its options, examples, signals and workers.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fronts import COMMAND_FRONT, RunningFronts
from tests.processes import (
    REPOSITORY,
    TWISTD,
    Browser,
    Proxy,
    childrenRunning,
    cpuTicks,
    freePort,
    rawRequest,
    startProxy,
    startServer,
    stopProxy,
)
from txfastcgi._server.workers import WORKER_MODULE


@pytest.fixture(scope="module")
def fronts(php_fpm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFronts]:
    directory = tmp_path_factory.mktemp("fronts")
    running = RunningFronts(php_fpm.endpointDescription, str(php_fpm.documentRoot), directory)
    yield running
    running.stop()


@pytest.fixture
def proxy(fronts: RunningFronts, front: str) -> Proxy:
    """Each front in turn, in front of php-fpm serving the demo site."""
    return fronts[front]


@pytest.fixture
def browser(proxy: Proxy) -> Browser:
    return Browser(proxy.url)


@pytest.fixture
def commandProxy(fronts: RunningFronts) -> Proxy:
    """The real command, C{twist fastcgi-proxy}, for what only it does."""
    return fronts[COMMAND_FRONT]


def test_the_home_page_links_every_page(browser: Browser) -> None:
    home = browser.request("/")
    assert home.status == 200
    assert home.headers["Content-Type"] == "text/html; charset=utf-8"
    for link in ["/hello/world", "/form", "/session", "/redirect", "/upload", "/api/info"]:
        assert f'href="{link}"'.encode() in home.body


def test_a_pretty_url_reaches_the_front_controller(browser: Browser) -> None:
    page = browser.request("/hello/Ada%20%3Cb%3E")
    assert page.status == 200
    assert b"Hello, Ada &lt;b&gt;!" in page.body


def test_a_posted_form_comes_back(browser: Browser) -> None:
    assert b'method="post"' in browser.request("/form").body
    page = browser.request("/form", data=b"name=Ada&message=caf%C3%A9+%26+cr%C3%A8me")
    assert page.status == 200
    assert "<dd>café &amp; crème</dd>".encode() in page.body
    assert b"<dd>Ada</dd>" in page.body


def test_a_session_cookie_keeps_a_counter(browser: Browser) -> None:
    counts = [browser.request("/session").body for _ in range(3)]
    assert [b'id="count">%d<' % n in body for n, body in enumerate(counts, 1)] == [True] * 3
    assert any(cookie.name == "PHPSESSID" for cookie in browser.cookies)


def test_a_redirect_is_followed_to_its_target(browser: Browser, proxy: Proxy) -> None:
    answer = rawRequest(proxy, "GET", "/redirect")
    assert answer.status == 302
    assert answer.getheader("Location") == "/hello/redirected"
    assert b"Hello, redirected!" in browser.request("/redirect").body


def test_a_file_upload_of_several_megabytes_arrives_intact(browser: Browser) -> None:
    content = os.urandom(5 * 1024 * 1024)
    boundary = "txfastcgi-test-boundary"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="random.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    page = browser.request(
        "/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert page.status == 200, page.body
    assert b'id="size">5242880<' in page.body
    assert f'id="sha256">{hashlib.sha256(content).hexdigest()}<'.encode() in page.body


def test_the_json_endpoint_sees_the_cgi_variables(browser: Browser, proxy: Proxy) -> None:
    info = browser.request("/api/info?x=1&y=%20", headers={"X-Custom": "yes"}).json()
    assert info["REQUEST_URI"] == "/api/info?x=1&y=%20"
    assert info["QUERY_STRING"] == "x=1&y=%20"
    assert info["SCRIPT_NAME"] == "/index.php"
    assert info["PHP_SELF"] == "/index.php"
    assert info["SERVER_PORT"] == str(proxy.port)
    assert info["HTTP_X_CUSTOM"] == "yes"
    assert info["HTTPS"] is None
    assert info["get"] == {"x": "1", "y": " "}


def test_a_script_gets_its_path_info(browser: Browser, php_fpm: Any) -> None:
    info = browser.request("/info.php/extra/path?x=1").json()
    assert info["SCRIPT_NAME"] == "/info.php"
    assert info["PATH_INFO"] == "/extra/path"
    documentRoot = os.path.realpath(php_fpm.documentRoot)
    assert info["SCRIPT_FILENAME"] == os.path.join(documentRoot, "info.php")


def test_a_directory_index_and_a_redirect_to_it(browser: Browser, proxy: Proxy) -> None:
    assert b"sub index" in browser.request("/sub/").body
    moved = rawRequest(proxy, "GET", "/sub?a=1")
    assert (moved.status, moved.getheader("Location")) == (301, "/sub/?a=1")


def test_static_files_have_their_types(fronts: RunningFronts, front: str) -> None:
    browser = Browser(fronts[front].url)
    css = browser.request("/style.css")
    assert css.status == 200
    assert css.headers["Content-Type"] == "text/css"
    assert browser.request("/logo.svg").headers["Content-Type"] == "image/svg+xml"


def test_php_source_is_never_served(browser: Browser) -> None:
    for path in ["/lib/server_info.php", "/info.php"]:
        assert b"<?php" not in browser.request(path).body


def test_an_unknown_page_is_the_applications_404(browser: Browser) -> None:
    page = browser.request("/nowhere")
    assert page.status == 404
    assert b"Nothing here" in page.body


def test_the_access_log_has_each_request(commandProxy: Proxy) -> None:
    Browser(commandProxy.url).request("/hello/logged")
    deadline = time.monotonic() + 5
    logged = '"GET /hello/logged HTTP/1.1" 200'
    while logged not in commandProxy.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logged in commandProxy.log()


def test_the_demo_runs_with_a_spawned_php_fpm(tmp_path: Path, php_fpm: Any) -> None:
    """
    README's first command: ``--php-fpm spawn`` with the shipped site. It
    listens only once its php-fpm is ready, and takes php-fpm down with it.
    """
    spawned = startProxy(
        ["--php-fpm", "spawn", "--path", str(php_fpm.documentRoot)], tmp_path / "twist.log"
    )
    try:
        browser = Browser(spawned.url)
        assert b"Hello, spawned!" in browser.request("/hello/spawned").body
        browser.request("/session")
        assert b'id="count">2<' in browser.request("/session").body
        phpFPMs = childrenRunning(spawned.process.pid, "php-fpm")
        assert phpFPMs, "no php-fpm child found"
    finally:
        stopProxy(spawned)
    assert spawned.process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in spawned.log()
    assert not [pid for pid in phpFPMs if os.path.exists(f"/proc/{pid}")]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--php-fpm", "bogus:thing"], "--php-fpm 'bogus:thing' is not a valid endpoint"),
        (["--listen", "tcp:notaport"], "--listen 'tcp:notaport' is not a valid endpoint"),
        (["--path", "/does/not/exist"], "--path '/does/not/exist' is not a directory"),
        (["--max-connections", "many"], "'many' is not a number"),
        (["--read-timeout", "0"], "'0' is below"),
        (["--param", "NOEQUALS"], "--param wants NAME=VALUE"),
        (["--php-fpm", "tcp:127.0.0.1:9000"] * 2, "--php-fpm 'tcp:127.0.0.1:9000' is given twice"),
        (["--status-path", "status"], "--status-path 'status' must start with /"),
        (
            ["--trusted-proxy", "somewhere"],
            "--trusted-proxy: 'somewhere' is not an address or network",
        ),
        (["--listen", "ssl:8443:privateKey=/nonexistent.pem"], "is not a valid endpoint"),
    ],
)
def test_a_bad_option_exits_2_with_one_clear_line(arguments: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "fastcgi-proxy", *arguments],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert b"Traceback" not in result.stdout + result.stderr


def test_the_embedding_tac_example_serves_php_under_blog(tmp_path: Path, php_fpm: Any) -> None:
    """docs/examples/blog.tac: the site mounted under /blog/ of a larger application."""
    port = freePort()
    server = startServer(
        [*TWISTD, "-ny", str(REPOSITORY / "docs/examples/blog.tac")],
        port,
        tmp_path / "twistd.log",
        {
            "PHP_FPM": php_fpm.endpointDescription,
            "BLOG_ROOT": php_fpm.documentRoot,
            "LISTEN": f"tcp:{port}:interface=127.0.0.1",
        },
    )
    try:
        browser = Browser(server.url)
        assert b'href="/blog/"' in browser.request("/").body
        page = browser.request("/blog/hello/tac")
        assert b"Hello, tac!" in page.body
        assert b'href="/blog/style.css"' in page.body
        assert browser.request("/blog/api/info").json()["SCRIPT_NAME"] == "/blog/index.php"
    finally:
        stopProxy(server)


def test_the_options_tac_example_builds_the_command_lines_service(
    tmp_path: Path, php_fpm: Any
) -> None:
    port = freePort()
    server = startServer(
        [*TWISTD, "-ny", str(REPOSITORY / "docs/examples/proxy.tac")],
        port,
        tmp_path / "twistd.log",
        {
            "PHP_FPM": php_fpm.endpointDescription,
            "SITE_ROOT": php_fpm.documentRoot,
            "LISTEN": f"tcp:{port}:interface=127.0.0.1",
        },
    )
    try:
        assert b"Hello, options!" in Browser(server.url).request("/hello/options").body
    finally:
        stopProxy(server)


def test_sigterm_stops_accepting_and_finishes_requests_in_progress(
    tmp_path: Path, php_fpm: Any
) -> None:
    """
    Graceful shutdown, with a spawned php-fpm that must outlive the request:
    the slow download started before SIGTERM completes, new connections are
    refused at once.
    """
    proxy = startProxy(
        ["--php-fpm", "spawn", "--path", str(php_fpm.documentRoot)], tmp_path / "twist.log"
    )
    results: list[tuple[int, bytes]] = []

    def download() -> None:
        answer = rawRequest(proxy, "GET", "/stream.php?bytes=20000&chunk=1000&delay=50")
        results.append((answer.status, answer.read()))

    downloading = threading.Thread(target=download)
    downloading.start()
    time.sleep(0.3)
    proxy.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
    downloading.join(10)
    proxy.process.wait(10)
    assert [(status, len(body)) for status, body in results] == [(200, 20000)], proxy.log()


def test_workers_share_the_listening_socket(tmp_path: Path, php_fpm: Any) -> None:
    """
    ``--workers 2``: a second process serves the same port, and both get
    requests; SIGTERM stops them both.
    """
    proxy = startProxy(
        [
            "--php-fpm",
            php_fpm.endpointDescription,
            "--path",
            php_fpm.documentRoot,
            "--workers",
            "2",
        ],
        tmp_path / "twist.log",
    )
    try:
        deadline = time.monotonic() + 10
        while not (workers := childrenRunning(proxy.process.pid, WORKER_MODULE)):
            assert time.monotonic() < deadline, proxy.log()
            time.sleep(0.05)
        (worker,) = workers
        before = {pid: cpuTicks(pid) for pid in (proxy.process.pid, worker)}

        def load() -> None:
            for _ in range(60):
                assert rawRequest(proxy, "GET", "/style.css").status == 200

        loaders = [threading.Thread(target=load) for _ in range(6)]
        for thread in loaders:
            thread.start()
        for thread in loaders:
            thread.join()
        busy = {pid: cpuTicks(pid) - ticks for pid, ticks in before.items()}
        assert all(ticks > 0 for ticks in busy.values()), busy
    finally:
        stopProxy(proxy)
    assert not os.path.exists(f"/proc/{worker}/stat")


def test_several_backends_and_the_status_page(
    tmp_path: Path, php_fpm: Any, php_fpm_factory: Any
) -> None:
    """
    ``--php-fpm`` twice spreads requests over both pools; ``--status-path``
    shows each backend's counts as JSON, and hides nothing else.
    """
    other = php_fpm_factory(children=2)
    proxy = startProxy(
        ["--php-fpm", php_fpm.endpointDescription, "--php-fpm", other.endpointDescription]
        + ["--path", php_fpm.documentRoot, "--status-path", "/_status"],
        tmp_path / "twist.log",
    )
    try:
        browser = Browser(proxy.url)
        for _ in range(10):
            assert browser.request("/hello/balanced").status == 200
        status = browser.request("/_status")
        assert status.headers["Content-Type"] == "application/json"
        document = status.json()
        assert [backend["endpoint"] for backend in document["backends"]] == [
            php_fpm.endpointDescription,
            other.endpointDescription,
        ]
        assert all(backend["up"] for backend in document["backends"])
        assert all(backend["requests"] > 0 for backend in document["backends"])
        assert document["totals"]["requests"] == 10
        assert browser.request("/api/info").json()["SCRIPT_NAME"] == "/index.php"
    finally:
        stopProxy(proxy)
