"""
The site file of C{twist fastcgi-proxy --config sites.toml}: what it reads
into, every problem it reports (C{FILE:LINE: problem}, all at once),
C{--check} through the real command, a one-site file served through
php-fpm, and the command line's one site as the same structure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from tests.conftest import PHPFPMPool
from tests.processes import REPOSITORY, freePort, startServer, stopProxy
from tests.test_https import makeCertificate
from txfastcgi._limits import DEFAULT_MAX_BODY_SIZE
from txfastcgi.tap import (
    ACMESettings,
    Options,
    ServerSettings,
    Site,
    SiteFile,
    SiteFileError,
    TLSFiles,
    fromOptions,
    loadSiteFile,
)

ENVIRONMENT = dict(os.environ, PYTHONPATH=str(REPOSITORY))
SITE_FILE_PAGE = REPOSITORY / "docs" / "reference" / "site-file.rst"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory to write sites.toml in, the current one: problems name C{sites.toml}."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "www").mkdir()
    return tmp_path


def write(directory: Path, text: str) -> str:
    (directory / "sites.toml").write_text(textwrap.dedent(text).lstrip("\n"))
    return "sites.toml"


def problems(directory: Path, text: str) -> list[str]:
    """The problem lines of the site file C{text}."""
    with pytest.raises(SiteFileError) as raised:
        loadSiteFile(write(directory, text))
    lines = str(raised.value).splitlines()
    assert lines == [str(p) for p in raised.value.problems]
    return lines


def runCommand(directory: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twisted", "fastcgi-proxy", *arguments],
        capture_output=True,
        text=True,
        env=ENVIRONMENT,
        cwd=directory,
        timeout=60,
    )


# What a file reads into


def test_the_interface_example_reads_into_typed_values(here: Path) -> None:
    key, certificate = makeCertificate(here)
    write(
        here,
        f"""
        [server]                       # optional; the command line's --listen etc. are the defaults
        listen = ["tcp:80", "ssl:443:privateKey={key}:certKey={certificate}"]
        access_log = "/var/log/txfastcgi/access.log"

        [[site]]
        hosts = ["example.org", "www.example.org"]   # "*.example.org" allowed
        root = "www"
        php_fpm = ["unix:/run/php/php8.2-fpm.sock"]  # or "spawn"
        index = "index.php"
        front_controller = "/index.php"               # false: no front controller
        params = {{ APP_ENV = "production" }}
        max_body_size = "64M"
        acme = true                                   # certificates by ACME for these hosts

        [acme]
        email = "admin@example.org"
        directory = "https://acme-v02.api.letsencrypt.org/directory"
        state = "/var/lib/txfastcgi/acme"
        """,
    )
    assert loadSiteFile("sites.toml") == SiteFile(
        server=ServerSettings(
            listen=("tcp:80", f"ssl:443:privateKey={key}:certKey={certificate}"),
            access_log="/var/log/txfastcgi/access.log",
        ),
        sites=(
            Site(
                root=str(here / "www"),
                hosts=("example.org", "www.example.org"),
                php_fpm=("unix:/run/php/php8.2-fpm.sock",),
                params={"APP_ENV": "production"},
                max_body_size=64 * 1024 * 1024,
                acme=True,
            ),
        ),
        acme=ACMESettings(
            email="admin@example.org",
            directory="https://acme-v02.api.letsencrypt.org/directory",
            state="/var/lib/txfastcgi/acme",
        ),
    )


def test_every_key_of_a_site_reads_into_its_field(here: Path) -> None:
    (here / "downloads" / "private").mkdir(parents=True)
    key, certificate = makeCertificate(here)
    siteFile = loadSiteFile(
        write(
            here,
            f"""
            [server]
            listen = "tcp:8081"
            access_log = "-"
            access_log_format = "json"
            workers = 2
            status_path = "/status"
            metrics_path = "/metrics"
            status_allow = ["10.0.0.0/8"]
            shutdown_timeout = "1m"
            trusted_proxies = "127.0.0.1"
            header_timeout = 10
            body_timeout = "500ms"
            unknown_host = "refuse"

            [[site]]
            hosts = ["Example.org", "*.example.org"]
            root = "www"
            php_fpm = "spawn"
            index = "main.php"
            front_controller = false
            https = true
            max_connections = 2
            spawn_children = 3
            connect_timeout = "2s"
            read_timeout = 90
            idle_timeout = 1.5
            queue_timeout = "1m"
            max_body_size = 1024
            sendfile_roots = ["downloads"]
            accel_prefixes = {{ "/private/" = "downloads/private" }}
            compress = false
            early_hints = true
            early_hint_links = {{ "/" = "</style.css>; rel=preload; as=style" }}
            cache_size = "1M"
            cache_status = true
            cache_bypass_cookies = ["session_*"]
            tls = {{ certificate = "{certificate.name}", key = "{key.name}" }}
            redirect = "non-www"
            https_redirect = true
            hsts = true
            """,
        )
    )
    assert siteFile.server == ServerSettings(
        listen=("tcp:8081",),
        access_log="-",
        access_log_format="json",
        workers=2,
        status_path="/status",
        metrics_path="/metrics",
        status_allow=("10.0.0.0/8",),
        shutdown_timeout=60.0,
        trusted_proxies=("127.0.0.1",),
        header_timeout=10.0,
        body_timeout=0.5,
        unknown_host="refuse",
    )
    (site,) = siteFile.sites
    assert site == Site(
        root=str(here / "www"),
        hosts=("example.org", "*.example.org"),
        php_fpm=("spawn",),
        index="main.php",
        front_controller=None,
        https=True,
        max_connections=2,
        spawn_children=3,
        connect_timeout=2.0,
        read_timeout=90.0,
        idle_timeout=1.5,
        queue_timeout=60.0,
        max_body_size=1024,
        sendfile_roots=(str(here / "downloads"),),
        accel_prefixes={"/private/": str(here / "downloads" / "private")},
        compress=False,
        early_hint_links={"/": ("</style.css>; rel=preload; as=style",)},
        cache_size=1024 * 1024,
        cache_status=True,
        cache_bypass_cookies=("session_*",),
        tls=TLSFiles(certificate=str(certificate), key=str(key)),
        redirect="non-www",
        https_redirect=True,
        hsts=365 * 24 * 3600.0,
    )
    assert siteFile.acme is None


def test_a_key_left_out_has_the_command_lines_default(here: Path) -> None:
    """A file with only a root means what C{--path} alone means."""
    siteFile = loadSiteFile(write(here, '[[site]]\nroot = "www"\n'))
    options = Options()
    options.parseOptions(["--path", str(here / "www")])
    assert siteFile == fromOptions(options)
    assert siteFile.sites[0].max_body_size == DEFAULT_MAX_BODY_SIZE


def test_the_command_line_server_options_are_the_defaults_of_server(here: Path) -> None:
    commandLine = Options()
    commandLine.parseOptions(["--listen", "tcp:9000", "--workers", "3"])
    write(here, '[server]\nworkers = 2\n\n[[site]]\nroot = "www"\n')
    server = loadSiteFile("sites.toml", fromOptions(commandLine).server).server
    assert (server.listen, server.workers) == (("tcp:9000",), 2)


def test_the_command_line_is_one_default_site_and_maps_back_onto_itself(here: Path) -> None:
    (here / "private").mkdir()
    options = Options()
    options.parseOptions(
        [
            *("--path", "www", "--php-fpm", "tcp:127.0.0.1:9000", "--index", "main.php"),
            *("--no-front-controller", "--param", "A=b", "--https", "--max-connections", "2"),
            *("--read-timeout", "2m", "--max-body-size", "1M", "--sendfile-root", "private"),
            *("--accel-prefix", "/p/=private", "--no-compress", "--cache-size", "1M"),
            *("--cache-status", "--early-hint", "/=</a.css>; rel=preload", "--listen", "tcp:1"),
            *("--trusted-proxy", "10.0.0.1", "--status-path", "/status", "--workers", "2"),
        ]
    )
    siteFile = fromOptions(options)
    (site,) = siteFile.sites
    assert site.hosts == () and site.root == str(here / "www")
    assert (site.php_fpm, site.front_controller, site.params) == (
        ("tcp:127.0.0.1:9000",),
        None,
        {"A": "b"},
    )
    assert (site.read_timeout, site.max_body_size, site.compress) == (120.0, 1024**2, False)
    assert site.early_hint_links == {"/": ("</a.css>; rel=preload",)}
    assert siteFile.server.trusted_proxies == ("10.0.0.1",)


def test_the_reference_page_documents_every_key_and_no_other() -> None:
    text = SITE_FILE_PAGE.read_text()
    sections = re.split(r"^``(\[\[?\w+\]\]?)``\n-+\n", text, flags=re.MULTILINE)
    documented = {
        title: set(re.findall(r"^``(\w+)``$", body, re.MULTILINE))
        for title, body in zip(sections[1::2], sections[2::2])
    }
    assert documented == {
        "[server]": {f.name for f in fields(ServerSettings)},
        "[[site]]": {f.name for f in fields(Site)},
        "[acme]": {f.name for f in fields(ACMESettings)},
    }


# Every problem, with its line


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            '[[site]]\nroot = "www"\nindx = "main.php"\n',
            ["sites.toml:3: unknown key 'indx' in [[site]] (did you mean 'index'?)"],
        ),
        (
            '[server]\nlisten = "tcp:1"\nworker = 2\n\n[[site]]\nroot = "www"\n',
            ["sites.toml:3: unknown key 'worker' in [server] (did you mean 'workers'?)"],
        ),
        (
            '[[sites]]\nroot = "www"\n',
            [
                "sites.toml: no [[site]]: a site file serves at least one site",
                "sites.toml:1: unknown key 'sites' in the file (did you mean 'site'?)",
            ],
        ),
        (
            '[site]\nroot = "www"\n',
            ["sites.toml:1: site must be an array of tables: write [[site]]"],
        ),
        (
            '[[site]]\nroot = "www"\nindex = 3\n',
            ["sites.toml:3: index must be a string, not an integer"],
        ),
        (
            '[[site]]\nroot = "www"\nhosts = [\n  "a.org",\n  3,\n]\n',
            ["sites.toml:5: hosts must be a string, not an integer"],
        ),
        (
            '[[site]]\nroot = "www"\nparams = { A = "b", C = 1 }\n',
            ["sites.toml:3: params 'C' must be a string, not an integer"],
        ),
        (
            '[[site]]\nroot = "www"\ncompress = "no"\n',
            ["sites.toml:3: compress must be true or false, not a string"],
        ),
        (
            '[[site]]\nroot = "www"\nfront_controller = true\n',
            ["sites.toml:3: front_controller must be a URL path or false, not a boolean"],
        ),
        (
            '[[site]]\nroot = "nowhere"\n',
            ["sites.toml:2: root '{here}/nowhere' is not a directory"],
        ),
        (
            "[[site]]\nindex = 'main.php'\n",
            ["sites.toml:1: a site needs a root: its document root directory"],
        ),
        (
            '[[site]]\nroot = "www"\nmax_body_size = "64MB"\n',
            ["sites.toml:3: max_body_size '64MB' is not a size (like 1048576, 512K, 64M or 1G)"],
        ),
        (
            '[[site]]\nroot = "www"\nread_timeout = "soon"\n',
            ["sites.toml:3: read_timeout 'soon' is not a duration (like 30, 30s, 500ms or 2m)"],
        ),
        (
            '[[site]]\nroot = "www"\nconnect_timeout = 0\n',
            ["sites.toml:3: connect_timeout 0 is below 0.001"],
        ),
        (
            '[[site]]\nhosts = ["example.org"]\nroot = "www"\n\n'
            '[[site]]\nhosts = ["www.example.org",\n  "Example.org"]\nroot = "www"\n',
            ["sites.toml:7: hosts 'example.org' is claimed by two sites (also at line 2)"],
        ),
        (
            '[[site]]\nroot = "www"\n\n[[site]]\nroot = "www"\n',
            [
                "sites.toml:4: a second default site (no hosts):"
                " the site at line 1 already is the default"
            ],
        ),
        (
            '[server]\nunknown_host = "refuse"\n\n[[site]]\nroot = "www"\n',
            [
                "sites.toml:4: a site with no hosts serves unknown hosts, which"
                " unknown_host = 'refuse' refuses: give it hosts"
            ],
        ),
        (
            '[server]\nunknown_host = "nobody"\n\n[[site]]\nroot = "www"\n',
            ["sites.toml:2: unknown_host 'nobody' is not one of default, refuse"],
        ),
        (
            '[[site]]\nroot = "www"\nhosts = ["a.*.org", "*.b.org", "c.org:80", "*.127.0.0.1"]\n',
            [
                "sites.toml:3: hosts 'a.*.org': a * may only be the whole first label,"
                " as in *.example.org",
                "sites.toml:3: hosts 'c.org:80': not a host name (letters, digits, - and dots;"
                " no port)",
                "sites.toml:3: hosts '*.127.0.0.1': a wildcard covers names, not addresses",
            ],
        ),
        (
            '[[site]]\nroot = "www"\nhosts = ["example.org"]\nacme = true\n',
            ["sites.toml:4: acme = true needs an [acme] table with an email"],
        ),
        (
            '[[site]]\nroot = "www"\nhosts = ["*.example.org"]\nacme = true\n\n'
            '[acme]\nstate = "acme"\n',
            [
                "sites.toml:3: hosts '*.example.org': acme = true cannot get a certificate for"
                " a wildcard (HTTP-01 challenges validate single names)",
                "sites.toml:6: [acme] needs an email: the account's contact address",
            ],
        ),
        (
            '[[site]]\nroot = "www"\ntls = { certificate = "cert.pem" }\n',
            ["sites.toml:3: tls needs a key file"],
        ),
        (
            '[[site]]\nroot = "www"\n\n[site.tls]\ncertificate = "cert.pem"\nkey = "key.pem"\n',
            [
                "sites.toml:5: tls certificate '{here}/cert.pem' is not a file",
                "sites.toml:6: tls key '{here}/key.pem' is not a file",
            ],
        ),
        (
            '[[site]]\nroot = "www"\nphp_fpm = ["tcp:127.0.0.1:9000", "tcp:127.0.0.1"]\n',
            ["sites.toml:3: php_fpm 'tcp:127.0.0.1' is not a valid endpoint: port is missing"],
        ),
        (
            '[[site]]\nroot = "www"\nphp_fpm = ["spawn", "spawn"]\n',
            ["sites.toml:3: php_fpm 'spawn' is given twice"],
        ),
        (
            '[[site]]\nroot = "www"\nsendfile_roots = "www"\naccel_prefixes = { "/p/" = "." }\n',
            [
                "sites.toml:4: accel_prefixes '/p/' = '{here}':"
                " the directory is under no sendfile_roots"
            ],
        ),
        (
            '[[site]]\nroot = "www"\ncache_status = true\n',
            ["sites.toml:3: cache_status needs a cache_size"],
        ),
        (
            '[[site]]\nroot = "www"\nearly_hint_links = { "/" = "style.css" }\n',
            ["sites.toml:3: early_hint_links 'style.css' is not a Link field (<URL>; rel=...)"],
        ),
        (
            '[[site]]\nhosts = "a.org"\nroot = "www"\nphp_fpm = "tcp:127.0.0.1:9000"\n'
            'max_connections = 2\n\n[[site]]\nhosts = "b.org"\nroot = "www"\n'
            'php_fpm = "tcp:127.0.0.1:9000"\nmax_connections = 3\n',
            [
                "sites.toml:11: max_connections 3 for 'tcp:127.0.0.1:9000', which the site at"
                " line 1 limits to 2: sites that name the same backend share its connections"
            ],
        ),
        (
            '[server]\nlisten = ["tcp:abc"]\n\n[[site]]\nroot = "www"\n',
            ["sites.toml:2: listen 'tcp:abc' is not a valid endpoint: 'abc' is not a number"],
        ),
        (
            '[server]\nlisten = ["unix:/tmp/x.sock", "ssl:443:privateKey=k.pem"]\n'
            "workers = 2\n\n[[site]]\nroot = 'www'\n",
            [
                "sites.toml:2: listen 'ssl:443:privateKey=k.pem' is not a valid endpoint:"
                " No such file or directory: {here}/k.pem"
                " (give privateKey=KEY.pem and certKey=CERT.pem)",
                "sites.toml:3: workers shares only tcp, tcp6 and unix listeners,"
                " not 'ssl:443:privateKey=k.pem'",
            ],
        ),
        (
            '[server]\nstatus_allow = "everyone"\nmetrics_path = "metrics"\n\n'
            '[[site]]\nroot = "www"\n',
            [
                "sites.toml:2: status_allow 'everyone' is not an address or network",
                "sites.toml:3: metrics_path 'metrics' must start with /",
            ],
        ),
        (
            '[[site]]\nroot = "www"\nhosts = ["a.org", "b.org"\n',
            ["sites.toml:3: not TOML: unclosed array (at the end of the file)"],
        ),
        ('[[site]]\nroot = "www"\nindex =\n', ["sites.toml:3: not TOML: invalid value (column 8)"]),
    ],
)
def test_a_problem_is_reported_at_its_line(here: Path, text: str, expected: list[str]) -> None:
    assert problems(here, text) == [line.format(here=here) for line in expected]


def test_every_problem_is_reported_at_once_in_the_order_of_the_lines(here: Path) -> None:
    found = problems(
        here,
        """
        [[site]]
        root = "nowhere"   # 2
        "index" = 3        # 3

        [[site]]
        hosts = ["b.org"]
        root = "www"
        tls = { certificate = "c.pem", kee = "k.pem" }   # 8
        max_body_size = "lots"                           # 9

        [server]
        workers = 0        # 12
        """,
    )
    assert [line.split(":")[1] for line in found] == ["2", "3", "8", "9", "12"]
    assert found[2] == "sites.toml:8: tls has no key 'kee' (did you mean 'key'?)"


def test_a_file_that_cannot_be_read_is_one_problem(here: Path) -> None:
    with pytest.raises(
        SiteFileError, match=r"^missing.toml: cannot be read: No such file or directory$"
    ):
        loadSiteFile("missing.toml")


# The command


def test_check_says_a_valid_file_is_ok_and_exits_0(here: Path) -> None:
    write(here, '[[site]]\nhosts = "a.org"\nroot = "www"\n\n[[site]]\nroot = "www"\n')
    result = runCommand(here, "--config", "sites.toml", "--check")
    assert (result.returncode, result.stdout, result.stderr) == (0, "sites.toml: ok, 2 sites\n", "")


def test_check_prints_a_line_per_problem_and_exits_2(here: Path) -> None:
    write(here, '[[site]]\nroot = "nowhere"\nindx = 1\n')
    result = runCommand(here, "--config", "sites.toml", "--check")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"sites.toml:2: root '{here}/nowhere' is not a directory",
        "sites.toml:3: unknown key 'indx' in [[site]] (did you mean 'index'?)",
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    "arguments, line",
    [
        (
            ["--config", "missing.toml", "--check"],
            "missing.toml: cannot be read: No such file or directory",
        ),
        (
            ["--config", "sites.toml", "--path", ".", "--param", "A=b"],
            "twist fastcgi-proxy: error: --config replaces the per-site options:"
            " move --param, --path into the site file's [[site]]",
        ),
        (["--check"], "twist fastcgi-proxy: error: --check checks a site file: give --config FILE"),
    ],
)
def test_the_command_refuses_in_one_line(here: Path, arguments: list[str], line: str) -> None:
    write(here, '[[site]]\nhosts = "a.org"\nroot = "www"\n\n[[site]]\nroot = "www"\n')
    result = runCommand(here, *arguments)
    assert (result.returncode, result.stderr.splitlines()) == (2, [line])


ACME_SITE = '[[site]]\nhosts = "a.org"\nroot = "www"\nacme = true\n\n[acme]\nemail = "a@a.org"\n'


def test_with_acme_a_tls_listener_needs_no_certificate_of_its_own(here: Path) -> None:
    write(here, '[server]\nlisten = ["tcp:8080", "ssl:8443"]\n\n' + ACME_SITE)
    result = runCommand(here, "--config", "sites.toml", "--check")
    assert (result.returncode, result.stdout, result.stderr) == (0, "sites.toml: ok, 1 site\n", "")


def test_acme_takes_one_process_and_tls_files_that_are_there(here: Path) -> None:
    write(here, '[server]\nworkers = 2\nlisten = "ssl:8443:privateKey=gone.pem"\n\n' + ACME_SITE)
    result = runCommand(here, "--config", "sites.toml", "--check")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "sites.toml:2: acme = true needs workers = 1: the process that orders a certificate"
        " answers its challenges",
        "sites.toml:2: workers shares only tcp, tcp6 and unix listeners, not"
        " 'ssl:8443:privateKey=gone.pem'",
        "sites.toml:3: listen 'ssl:8443:privateKey=gone.pem': privateKey 'gone.pem' is not a file",
    ]


@pytest.fixture
def helloRoot() -> Iterator[Path]:
    """A document root with hello.php that php-fpm's workers can read (see tests/conftest.py)."""
    directory = Path(tempfile.mkdtemp(prefix="txfastcgi-test-hello-"))
    try:
        directory.chmod(0o755)
        hello = directory / "hello.php"
        hello.write_text("<?php echo 'hello, ', $_SERVER['GREETING'], ' from ', __FILE__;\n")
        hello.chmod(0o644)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_one_site_file_is_served_through_php_fpm(
    here: Path, helloRoot: Path, php_fpm: PHPFPMPool
) -> None:
    port = freePort()
    write(
        here,
        f"""
        [server]
        listen = "tcp:{port}:interface=127.0.0.1"

        [[site]]
        hosts = ["example.org"]
        root = "{helloRoot}"
        php_fpm = "{php_fpm.endpointDescription}"
        params = {{ GREETING = "site file" }}
        front_controller = false
        max_body_size = "1K"
        """,
    )
    arguments = ["-m", "twisted", "fastcgi-proxy", "--config", str(here / "sites.toml")]
    proxy = startServer(arguments, port, here / "twist.log")
    try:
        with urllib.request.urlopen(f"{proxy.url}/hello.php", timeout=30) as response:
            body = response.read().decode()
        assert body == f"hello, site file from {helloRoot / 'hello.php'}"
        request = urllib.request.Request(f"{proxy.url}/hello.php", data=b"x" * 2048)
        with pytest.raises(urllib.error.HTTPError) as tooLarge:
            urllib.request.urlopen(request, timeout=30)
        assert tooLarge.value.code == 413
        with pytest.raises(urllib.error.HTTPError) as noFrontController:
            urllib.request.urlopen(f"{proxy.url}/pretty/url", timeout=30)
        assert noFrontController.value.code == 404
    finally:
        stopProxy(proxy)
