"""
Several sites from one site file, through the real command against a real
php-fpm: each request answered by the site its Host names, over HTTP/1.1
and HTTP/2; the default site and the refusal of unknown hosts; each site's
own backends and body limit; the www and HTTPS redirects and HSTS; and
SIGHUP, which reads the file again without dropping a request.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import PHPFPMPool
from tests.processes import REPOSITORY, TWISTD, Proxy, freePort, startServer, stopProxy
from tests.test_https import curl, makeCertificate

WHOAMI = "<?php echo getenv('SITE'), ' ', $_SERVER['SERVER_NAME'], ' ', getenv('VERSION') ?: '';\n"


@pytest.fixture
def roots() -> Iterator[Callable[[str], Path]]:
    """Document roots with a whoami.php, which php-fpm's workers can read."""
    made: list[Path] = []

    def make(name: str) -> Path:
        directory = Path(tempfile.mkdtemp(prefix=f"txfastcgi-test-{name}-"))
        made.append(directory)
        directory.chmod(0o755)
        (directory / "whoami.php").write_text(WHOAMI)
        (directory / "whoami.php").chmod(0o644)
        (directory / ".well-known" / "acme-challenge").mkdir(parents=True)
        (directory / ".well-known").chmod(0o755)
        (directory / ".well-known" / "acme-challenge").chmod(0o755)
        (directory / ".well-known" / "acme-challenge" / "token").write_text("challenge\n")
        (directory / ".well-known" / "acme-challenge" / "token").chmod(0o644)
        return directory

    yield make
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def serveSites(
    directory: Path, sites: str, *server: str, listen: str = '"tcp:{port}:interface=127.0.0.1"'
) -> Iterator[Proxy]:
    """
    C{twist fastcgi-proxy --config} with a site file of C{sites} and
    C{server}'s lines in its C{[server]}, listening on C{listen} with a
    free port for C{{port}}.
    """
    port = freePort()
    siteFile = directory / "sites.toml"
    serverTable = "\n".join([f"listen = {listen.replace('{port}', str(port))}", *server])
    siteFile.write_text(f"[server]\n{serverTable}\n{sites}")
    arguments = ["-m", "twisted", "fastcgi-proxy", "--config", str(siteFile)]
    proxy = startServer(arguments, port, directory / "twist.log")
    try:
        yield proxy
    finally:
        stopProxy(proxy)


def ask(
    proxy: Proxy, host: str, path: str = "/whoami.php", method: str = "GET", body: bytes = b""
) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        connection.request(method, path, body=body or None, headers={"Host": host})
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read().decode()
    finally:
        connection.close()


def site(name: str, root: Path, backend: str, *lines: str, version: int | None = None) -> str:
    """A [[site]] whose whoami.php says C{name} (and C{version}), with C{lines} added."""
    extra = "\n".join(lines)
    versionParam = "" if version is None else f', VERSION = "{version}"'
    return f"""
[[site]]
root = "{root}"
php_fpm = "{backend}"
params = {{ SITE = "{name}"{versionParam} }}
{extra}
"""


@pytest.fixture
def twoSites(tmp_path: Path, roots: Callable[[str], Path], php_fpm: PHPFPMPool) -> Iterator[Proxy]:
    backend = php_fpm.endpointDescription
    with serveSites(
        tmp_path,
        site("alpha", roots("alpha"), backend, 'hosts = ["alpha.test", "*.alpha.test"]')
        + site("beta", roots("beta"), backend, 'hosts = ["beta.test"]', 'max_body_size = "1K"')
        + site("fallback", roots("fallback"), backend),
    ) as proxy:
        yield proxy


def test_each_request_is_answered_by_the_site_its_host_names(twoSites: Proxy) -> None:
    assert ask(twoSites, "alpha.test")[2] == "alpha alpha.test "
    assert ask(twoSites, "BETA.test:8080")[2] == "beta BETA.test "
    assert ask(twoSites, "www.alpha.test")[2] == "alpha www.alpha.test "
    assert ask(twoSites, "a.b.alpha.test")[2] == "alpha a.b.alpha.test "


def test_a_host_no_site_names_goes_to_the_site_without_hosts(twoSites: Proxy) -> None:
    assert ask(twoSites, "gamma.test")[2] == "fallback gamma.test "
    assert ask(twoSites, "alpha.test.evil")[2] == "fallback alpha.test.evil "
    # A wildcard is for the names under it, not the name itself's look-alikes.
    assert ask(twoSites, "xalpha.test")[2] == "fallback xalpha.test "


def test_a_sites_own_body_limit_holds_for_it_alone(twoSites: Proxy) -> None:
    body = b"x" * 2048
    assert ask(twoSites, "beta.test", method="POST", body=body)[0] == 413
    assert ask(twoSites, "alpha.test", method="POST", body=body)[0] == 200


def test_unknown_hosts_are_refused_when_the_file_says_so(
    tmp_path: Path, roots: Callable[[str], Path], php_fpm: PHPFPMPool
) -> None:
    backend = php_fpm.endpointDescription
    with serveSites(
        tmp_path,
        site("alpha", roots("alpha"), backend, 'hosts = "alpha.test"'),
        'unknown_host = "refuse"',
    ) as proxy:
        assert ask(proxy, "alpha.test")[2] == "alpha alpha.test "
        status, headers, page = ask(proxy, "other.test")
        assert status == 421
        assert "Misdirected Request" in page and headers["content-type"].startswith("text/html")


def test_without_a_site_without_hosts_the_first_site_is_the_default(
    tmp_path: Path, roots: Callable[[str], Path], php_fpm: PHPFPMPool
) -> None:
    backend = php_fpm.endpointDescription
    with serveSites(
        tmp_path,
        site("alpha", roots("alpha"), backend, 'hosts = "alpha.test"')
        + site("beta", roots("beta"), backend, 'hosts = "beta.test"'),
    ) as proxy:
        assert ask(proxy, "127.0.0.1")[2] == "alpha 127.0.0.1 "


def test_two_sites_do_not_share_backends_they_do_not_both_name(
    tmp_path: Path, roots: Callable[[str], Path], php_fpm: PHPFPMPool
) -> None:
    refusing = tmp_path / "nobody-listens.sock"
    with serveSites(
        tmp_path,
        site("alpha", roots("alpha"), php_fpm.endpointDescription, 'hosts = "alpha.test"')
        + site("beta", roots("beta"), f"unix:{refusing}", 'hosts = "beta.test"'),
    ) as proxy:
        for _ in range(3):
            assert ask(proxy, "alpha.test")[:3:2] == (200, "alpha alpha.test ")
            assert ask(proxy, "beta.test")[0] == 502


def test_a_site_sends_the_other_form_of_its_name_to_the_one_it_prefers(
    tmp_path: Path, roots: Callable[[str], Path], php_fpm: PHPFPMPool
) -> None:
    backend = php_fpm.endpointDescription
    with serveSites(
        tmp_path,
        site(
            "alpha",
            roots("alpha"),
            backend,
            'hosts = ["alpha.test", "www.alpha.test"]',
            'redirect = "www"',
        )
        + site(
            "beta",
            roots("beta"),
            backend,
            'hosts = ["beta.test", "www.beta.test"]',
            'redirect = "non-www"',
        ),
    ) as proxy:
        status, headers, _ = ask(proxy, "alpha.test:8080", "/whoami.php?a=b")
        assert (status, headers["location"]) == (301, "http://www.alpha.test:8080/whoami.php?a=b")
        assert ask(proxy, "www.alpha.test")[2] == "alpha www.alpha.test "
        status, headers, _ = ask(proxy, "www.beta.test", "/x", method="POST", body=b"kept")
        # 308, not 301: the client sends the POST and its body again.
        assert (status, headers["location"]) == (308, "http://beta.test/x")
        assert ask(proxy, "beta.test")[2] == "beta beta.test "


@pytest.fixture
def httpsSite(
    tmp_path: Path, roots: Callable[[str], Path], php_fpm: PHPFPMPool
) -> Iterator[tuple[Proxy, int]]:
    """A site with https_redirect and hsts, on a plain and a TLS listener."""
    key, certificate = makeCertificate(tmp_path)
    tlsPort = freePort()
    with serveSites(
        tmp_path,
        site(
            "alpha",
            roots("alpha"),
            php_fpm.endpointDescription,
            'hosts = "localhost"',
            "https_redirect = true",
            "hsts = 3600",
        ),
        listen='["tcp:{port}:interface=127.0.0.1",'
        f' "ssl:{tlsPort}:interface=127.0.0.1:privateKey={key}:certKey={certificate}"]',
    ) as proxy:
        yield proxy, tlsPort


def test_plain_http_is_sent_to_https_but_for_acme_challenges(
    httpsSite: tuple[Proxy, int],
) -> None:
    proxy, _ = httpsSite
    status, headers, _ = ask(proxy, "localhost:8080", "/whoami.php?a=b")
    assert (status, headers["location"]) == (301, "https://localhost/whoami.php?a=b")
    assert "strict-transport-security" not in headers
    status, _, body = ask(proxy, "localhost", "/.well-known/acme-challenge/token")
    assert (status, body) == (200, "challenge\n")


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_https_responses_carry_hsts(httpsSite: tuple[Proxy, int], version: str) -> None:
    _, tlsPort = httpsSite
    result = curl(version, "--include", f"https://localhost:{tlsPort}/whoami.php")
    head, _, body = result.stdout.decode().partition("\r\n\r\n")
    assert body == "alpha localhost "
    assert "strict-transport-security: max-age=3600" in head.lower()


def test_over_http_2_the_authority_names_the_site(
    tmp_path: Path, roots: Callable[[str], Path], php_fpm: PHPFPMPool
) -> None:
    key, certificate = makeCertificate(tmp_path)
    backend = php_fpm.endpointDescription
    with serveSites(
        tmp_path,
        site("alpha", roots("alpha"), backend, 'hosts = "alpha.test"')
        + site("beta", roots("beta"), backend, 'hosts = "beta.test"'),
        listen=f'"ssl:{{port}}:interface=127.0.0.1:privateKey={key}:certKey={certificate}"',
    ) as proxy:
        for name in ("alpha", "beta"):
            result = curl(
                "--http2",
                "--resolve",
                f"{name}.test:{proxy.port}:127.0.0.1",
                "--write-out",
                " %{http_version}",
                f"https://{name}.test:{proxy.port}/whoami.php",
            )
            assert result.stdout.decode() == f"{name} {name}.test  2"


# Reload


def test_sighup_serves_the_file_read_again_and_keeps_it_if_invalid(
    tmp_path: Path, roots: Callable[[str], Path], php_fpm: PHPFPMPool
) -> None:
    backend = php_fpm.endpointDescription
    alpha, beta = roots("alpha"), roots("beta")
    siteFile = tmp_path / "sites.toml"
    with serveSites(tmp_path, site("alpha", alpha, backend, 'hosts = "alpha.test"')) as proxy:
        assert ask(proxy, "beta.test")[2] == "alpha beta.test "
        siteFile.write_text(
            siteFile.read_text() + site("beta", beta, backend, 'hosts = "beta.test"')
        )
        reload(proxy, tmp_path, "reloaded")
        assert ask(proxy, "beta.test")[2] == "beta beta.test "
        good = siteFile.read_text()
        siteFile.write_text(good + '\n[[site]]\nroot = "nowhere"\nhosts = "gamma.test"\n')
        reload(proxy, tmp_path, "the sites stay as they were")
        log = (tmp_path / "twist.log").read_text()
        rootLine = len(siteFile.read_text().splitlines()) - 1
        assert (
            f"reload: {siteFile}:{rootLine}: root '{tmp_path}/nowhere' is not a directory;"
            " the sites stay as they were" in log
        )
        assert ask(proxy, "beta.test")[2] == "beta beta.test "
        assert ask(proxy, "alpha.test")[2] == "alpha alpha.test "


def reload(proxy: Proxy, directory: Path, logged: str) -> None:
    """Send SIGHUP and wait until the log says C{logged} once more than before."""
    before = (directory / "twist.log").read_text().count(logged)
    proxy.process.send_signal(signal.SIGHUP)
    waitForLog(directory, logged, before + 1)


def waitForLog(directory: Path, logged: str, times: int) -> None:
    """Wait until the log in C{directory} says C{logged} C{times} times."""
    log = directory / "twist.log"
    deadline = time.monotonic() + 10
    while log.read_text().count(logged) < times:
        assert time.monotonic() < deadline, f"{logged!r} is not {times} times in the log"
        time.sleep(0.05)


def test_a_load_across_ten_reloads_loses_no_request_and_mixes_up_no_site(
    tmp_path: Path, roots: Callable[[str], Path], php_fpm_factory: Callable[..., PHPFPMPool]
) -> None:
    backend = php_fpm_factory(children=4).endpointDescription
    alpha, beta = roots("alpha"), roots("beta")

    def sites(version: int) -> str:
        return site("alpha", alpha, backend, 'hosts = "alpha.test"', version=version) + site(
            "beta", beta, backend, 'hosts = "beta.test"', version=version
        )

    answers: list[tuple[str, int, str]] = []
    failures: list[str] = []
    running = True

    def load(port: int, host: str) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while running:
            try:
                connection.request("GET", "/whoami.php", headers={"Host": host})
                response = connection.getresponse()
                answers.append((host, response.status, response.read().decode()))
            except Exception as e:  # Any failure at all is what this test looks for.
                failures.append(f"{host}: {e!r}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.close()

    with serveSites(tmp_path, sites(0)) as proxy:
        siteFile = tmp_path / "sites.toml"
        server = siteFile.read_text().partition("[[site]]")[0]
        hosts = ["alpha.test", "beta.test"] * 3
        clients = [threading.Thread(target=load, args=(proxy.port, host)) for host in hosts]
        for client in clients:
            client.start()
        try:
            for version in range(1, 11):
                siteFile.write_text(server + sites(version))
                reload(proxy, tmp_path, "reloaded")
                time.sleep(0.2)
        finally:
            running = False
            for client in clients:
                client.join()
    assert failures == []
    assert len(answers) > 100
    for host, status, body in answers:
        name = host.partition(".")[0]
        assert status == 200 and body.startswith(f"{name} {host} "), (host, status, body)
    # The last reload's sites answered the last requests.
    assert {body for _, _, body in answers[-6:]} <= {"alpha alpha.test 10", "beta beta.test 10"}


def test_with_workers_every_process_serves_the_file_read_again(
    tmp_path: Path, roots: Callable[[str], Path], php_fpm: PHPFPMPool
) -> None:
    backend = php_fpm.endpointDescription
    alpha = roots("alpha")
    with serveSites(tmp_path, site("alpha", alpha, backend, version=1), "workers = 2") as proxy:
        siteFile = tmp_path / "sites.toml"
        waitForLog(tmp_path, "serving the connections the main process accepts", 1)
        siteFile.write_text(siteFile.read_text().replace('VERSION = "1"', 'VERSION = "2"'))
        reload(proxy, tmp_path, "reloaded")
        waitForLog(tmp_path, "reloaded", 2)  # The worker's line comes through too.
        # New connections, which either process may take: each gets the new site.
        assert {ask(proxy, "alpha.test")[2] for _ in range(20)} == {"alpha alpha.test 2"}


def test_a_reload_keeps_the_connections_of_the_backends_that_stay(
    tmp_path: Path, roots: Callable[[str], Path], php_fpm: PHPFPMPool
) -> None:
    backend = php_fpm.endpointDescription
    alpha = site("alpha", roots("alpha"), backend, 'hosts = "alpha.test"')
    with serveSites(tmp_path, alpha, 'status_path = "/status"') as proxy:

        def kept() -> dict[str, int]:
            status = json.loads(ask(proxy, "alpha.test", "/status")[2])
            return {b["endpoint"]: b["open"] for b in status["backends"]}

        assert ask(proxy, "alpha.test")[2] == "alpha alpha.test "
        assert kept() == {backend: 1}
        siteFile = tmp_path / "sites.toml"
        refusing = f"unix:{tmp_path / 'nobody.sock'}"
        beta = site("beta", roots("beta"), refusing, 'hosts = "beta.test"')
        siteFile.write_text(siteFile.read_text() + beta)
        reload(proxy, tmp_path, "reloaded")
        # The connection made before the reload is still open, and still used.
        assert kept() == {backend: 1, refusing: 0}
        assert ask(proxy, "alpha.test")[2] == "alpha alpha.test "
        assert kept()[backend] == 1


def test_a_tac_file_serves_sites_built_in_python(
    tmp_path: Path, roots: Callable[[str], Path], php_fpm: PHPFPMPool
) -> None:
    """docs/examples/sites.tac: the site file's dataclasses, built by hand."""
    port = freePort()
    blog, shop = roots("blog"), roots("shop")
    environment = {
        "PHP_FPM": php_fpm.endpointDescription,
        "LISTEN": f"tcp:{port}:interface=127.0.0.1",
        "BLOG_ROOT": str(blog),
        "SITE_ROOT": str(shop),
    }
    tac = REPOSITORY / "docs/examples/sites.tac"
    server = startServer([*TWISTD, "-ny", str(tac)], port, tmp_path / "twistd.log", environment)
    try:
        (shop / "env.php").write_text("<?php echo getenv('APP_ENV') ?: 'none', ' ', __DIR__;\n")
        (shop / "env.php").chmod(0o644)
        (blog / "env.php").write_text((shop / "env.php").read_text())
        (blog / "env.php").chmod(0o644)
        assert ask(server, "eu.shop.example.org", "/env.php")[2] == f"production {shop}"
        assert ask(server, "blog.example.org", "/env.php")[2] == f"none {blog}"
        assert ask(server, "example.org", "/env.php")[0] == 421
    finally:
        stopProxy(server)
