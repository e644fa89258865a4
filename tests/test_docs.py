"""
The documentation in docs/: it builds with Sphinx without a warning, and
what it shows works. Commands are parsed by the real option parser, examples
run against a real php-fpm, PHP and ini samples go through PHP, Python
samples run, and the reference names exactly the options and parameters the
code has.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from tests.certificates import selfSignedCertificate
from txfastcgi._http.cgi import CGIRequest
from txfastcgi._server.sitefile import parseSiteFile
from txfastcgi.tap import Options

if TYPE_CHECKING:
    from tests.conftest import PHPFPMPool

REPOSITORY = Path(__file__).resolve().parent.parent
DOCS = REPOSITORY / "docs"
EXAMPLES = DOCS / "examples"
PAGES = sorted(p for p in DOCS.rglob("*.rst") if "_build" not in p.parts)
PROGRAM = "twist-fastcgi-proxy"
# twistd, run by this interpreter (its module has no ``__main__``).
TWISTD = ["-c", "from twisted.scripts.twistd import run; run()"]

# Run by this module, or by tests/test_end_to_end.py.
TESTED_EXAMPLES = {
    "plain.py",
    "klein.tac",
    "subdirectory.tac",
    "laravel.tac",
    "wordpress/txfastcgi-rewrite.php",
    "wordpress/uploads.ini",
}
TESTED_BY_END_TO_END = {"blog.tac", "proxy.tac", "sites.tac"}
# Run under systemd-socket-activate by tests/test_operations_systemd.py.
TESTED_BY_OPERATIONS = {"txfastcgi.service", "txfastcgi.socket"}

# Programs of other projects that shell samples call: installing packages,
# managing services and files. They are not run here; every command of
# txfastcgi's own is.
OTHER_PROGRAMS = {
    "apt-get",
    "cd",
    "chown",
    "composer",
    "curl",
    "find",
    "journalctl",
    "ln",
    "mariadb",
    "mkdir",
    "/opt/txfastcgi/bin/pip",
    "/opt/txfastcgi/bin/python",
    "pypy3",
    "python3",
    "systemctl",
    "tar",
    "wget",
}

# Code block languages of other servers' configurations, shown for
# comparison (coming-from.rst), and of SQL for MariaDB, which is not run.
UNTESTED_LANGUAGES = {"nginx", "xml", "sql"}


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Sources


@dataclass(frozen=True)
class CodeBlock:
    page: Path
    language: str
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPOSITORY)}: {self.language} block {self.text[:60]!r}"


def codeBlocks() -> list[CodeBlock]:
    """Every ``.. code-block::`` of the documentation, dedented."""
    blocks = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines):
            match = re.match(r"(\s*)\.\. code-block:: (\S+)", line)
            if not match:
                continue
            indent = len(match.group(1))
            body: list[str] = []
            for following in lines[number + 1 :]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                body.append(following)
            while body and (not body[0].strip() or body[0].strip().startswith(":")):
                body.pop(0)
            text = "\n".join(body)
            margin = min(len(x) - len(x.lstrip()) for x in body if x.strip())
            text = "\n".join(x[margin:] for x in body).strip("\n") + "\n"
            blocks.append(CodeBlock(page, match.group(2), text))
    return blocks


def shellCommands() -> list[tuple[CodeBlock, list[str]]]:
    """Each ``$`` line of the console blocks, split as the shell would."""
    commands = []
    for block in codeBlocks():
        if block.language != "console":
            continue
        for line in block.text.replace("\\\n", " ").splitlines():
            assert line.startswith("$ "), f"{block}: a console line without a prompt: {line!r}"
            words = shlex.split(line[2:])
            if words[0] == "sudo":
                words = words[1:]
                while words[0].startswith("-"):
                    words = words[2:] if words[0] == "-u" else words[1:]
            while re.match(r"[A-Z_]+=", words[0]):
                words = words[1:]
            commands.append((block, words))
    return commands


def fastcgiProxyArguments(words: list[str]) -> list[str] | None:
    """The options of a ``twist fastcgi-proxy`` or ``twistd -n fastcgi-proxy`` command."""
    if os.path.basename(words[0]) == "twist" and words[1] == "fastcgi-proxy":
        return words[2:]
    return None


# Where the documentation's TLS examples find their key and certificates.
LETS_ENCRYPT = "/etc/letsencrypt/live/example.com/"


def parseLikeTheCommandLine(
    arguments: list[str], monkeypatch: pytest.MonkeyPatch, scratch: Path
) -> Options:
    """
    Parse C{arguments} as C{twist fastcgi-proxy} would, on a machine that has
    the documented directories and certificates.

    @raise ValueError: if the command would refuse them.
    """
    if any(LETS_ENCRYPT in argument for argument in arguments):
        certificates = tempfile.mkdtemp(dir=scratch)
        writeCertificates(Path(certificates))
        arguments = [a.replace(LETS_ENCRYPT, certificates + "/") for a in arguments]
    monkeypatch.setattr(os.path, "isdir", lambda path: True)
    try:
        options = Options()
        options.parseOptions(arguments)
    except SystemExit:
        raise ValueError(f"twist fastcgi-proxy refuses {shlex.join(arguments)}") from None
    finally:
        monkeypatch.undo()
    return options


def writeCertificates(directory: Path) -> None:
    """A key and a self-signed certificate, named as Let's Encrypt names them."""
    keyPEM, certificatePEM = selfSignedCertificate("example.com")
    (directory / "privkey.pem").write_bytes(keyPEM)
    for fileName in ("cert.pem", "chain.pem"):
        (directory / fileName).write_bytes(certificatePEM)


@functools.cache
def helpOptions(command: tuple[str, ...] = ("-m", "twisted", "fastcgi-proxy")) -> set[str]:
    """The options ``twist fastcgi-proxy --help`` (or another command's) lists."""
    result = subprocess.run(
        [sys.executable, *command, "--help"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
        timeout=60,
        check=True,
    )
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9_-]+)", result.stdout, re.MULTILINE))


# The build


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML documentation, built as CI builds it: warnings are errors."""
    try:
        import sphinx  # noqa: F401
    except ImportError:
        pytest.fail("Sphinx is not installed: pip install '.[test]'", pytrace=False)
    output = tmp_path_factory.mktemp("docs")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"),
            *("-d", str(output / "doctrees"), str(DOCS), str(output / "html")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}{result.stderr}"
    return output / "html"


def builtInventory(html: Path) -> list[tuple[str, str]]:
    """The (name, type) pairs of the built objects.inv."""
    data = (html / "objects.inv").read_bytes()
    compressed = data.split(b"\n", 4)[4]
    return [
        (line.split(" ")[0], line.split(" ")[1])
        for line in zlib.decompress(compressed).decode().splitlines()
    ]


def test_sphinx_builds_the_documentation_without_a_warning(built: Path) -> None:
    for page in PAGES:
        if page.name == "security.rst" and not (REPOSITORY / "SECURITY.rst").exists():
            continue
        html = built / page.relative_to(DOCS).with_suffix(".html")
        assert html.exists(), f"{page} was not built"


def test_the_reference_documents_every_option_and_no_other(built: Path) -> None:
    documented = {
        name.partition(".")[2]
        for name, kind in builtInventory(built)
        if kind == "std:cmdoption" and name.startswith(PROGRAM + ".")
    }
    assert documented == helpOptions()


def test_the_changelog_shows_the_news_fragments(built: Path) -> None:
    html = (built / "changelog.html").read_text()
    changelog = " ".join(re.sub(r"<[^>]+>", "", html).split())
    for fragment in (REPOSITORY / "newsfragments").glob("*.rst"):
        firstWords = " ".join(re.sub(r"[`*]", "", fragment.read_text()).split()[:4])
        assert firstWords in changelog, fragment


def test_the_version_is_the_packages(built: Path) -> None:
    from txfastcgi import __version__

    assert f"txfastcgi {__version__}" in (built / "index.html").read_text()


# What the pages say


def test_every_option_the_prose_mentions_exists() -> None:
    """``--name`` in a page (outside code blocks) is an option of ours."""
    known = helpOptions() | helpOptions((*TWISTD,))
    others = {"--enable-force-cgi-redirect", "--no-install-recommends"}
    for page in PAGES:
        text = page.read_text()
        for name in re.findall(r"``(--[a-z][a-z0-9-]*)", text):
            assert name in known | others, f"{page.name} mentions {name}"


def test_every_documented_command_parses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each ``twist fastcgi-proxy`` command shown is accepted, values included."""
    parsed = 0
    for block, words in shellCommands():
        arguments = fastcgiProxyArguments(words)
        if arguments is not None:
            refused = None
            with pytest.MonkeyPatch.context() as patch:
                try:
                    parseLikeTheCommandLine(arguments, patch, tmp_path)
                except ValueError as e:
                    refused = f"{block}: {e}"
            if refused:
                pytest.fail(refused, pytrace=False)
            parsed += 1
        elif os.path.basename(words[0]) == "twistd":
            assert words[1] == "-ny" and (EXAMPLES / words[2]).exists(), str(block)
        else:
            assert words[0] in OTHER_PROGRAMS, f"{block}: what runs {words[0]}?"
    assert parsed >= 5


def test_every_code_block_has_a_known_language() -> None:
    tested = {"console", "python", "php", "ini", "text", "toml"}
    for block in codeBlocks():
        assert block.language in tested | UNTESTED_LANGUAGES, str(block)


def test_the_python_samples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """They build objects without starting the reactor or connecting to anything."""
    monkeypatch.chdir(tmp_path)
    samples = [block for block in codeBlocks() if block.language == "python"]
    assert samples
    for block in samples:
        exec(compile(block.text, str(block), "exec"), {"__name__": "sample"})


def test_the_site_file_samples_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Each TOML sample is a site file that C{--check} accepts, on a machine
    that has the directories and files it names.
    """
    samples = [block for block in codeBlocks() if block.language == "toml"]
    assert samples
    monkeypatch.setattr(os.path, "isdir", lambda path: True)
    monkeypatch.setattr(os.path, "isfile", lambda path: True)
    for block in samples:
        parseSiteFile(block.text, str(block))


def test_the_php_samples_are_valid_php(tmp_path: Path) -> None:
    samples = [block for block in codeBlocks() if block.language == "php"]
    assert samples
    for number, block in enumerate(samples):
        script = tmp_path / f"sample{number}.php"
        script.write_text("<?php\n$settings = [];\n" + block.text)
        result = subprocess.run(["php", "-l", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{block}: {result.stdout}{result.stderr}"


def test_every_example_is_shown_and_tested() -> None:
    examples = {str(path.relative_to(EXAMPLES)) for path in EXAMPLES.rglob("*") if path.is_file()}
    assert examples == TESTED_EXAMPLES | TESTED_BY_END_TO_END | TESTED_BY_OPERATIONS
    shown = "\n".join(page.read_text() for page in PAGES)
    for name in examples:
        assert f"examples/{name}" in shown, f"docs/examples/{name} is on no page"


def test_the_api_reference_documents_the_public_api_and_nothing_private(built: Path) -> None:
    """
    Public is what C{txfastcgi} names and the top-level modules without a
    leading underscore; the reference documents exactly those modules, and
    every name C{txfastcgi} exports.
    """
    import txfastcgi

    api = (DOCS / "reference" / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. automodule:: (\S+)$", api, re.MULTILINE))
    public = {"txfastcgi"} | {
        f"txfastcgi.{path.stem}"
        for path in (REPOSITORY / "txfastcgi").glob("*.py")
        if not path.name.startswith("_")
    }
    assert documented == public
    objects = {name for name, kind in builtInventory(built)}
    missing = (
        {f"txfastcgi.{name}" for name in txfastcgi.__all__} - objects - {"txfastcgi.__version__"}
    )
    assert not missing, f"txfastcgi exports {sorted(missing)}, which the reference does not show"


def test_the_params_reference_lists_every_param_sent() -> None:
    page = (DOCS / "reference" / "params.rst").read_text()
    documented = set(re.findall(r"^   \* - ``([A-Z_*]+)``", page, re.MULTILINE))
    request = CGIRequest(
        method=b"GET",
        requestURI=b"/a.php/b?c",
        queryString=b"c",
        scriptFilename="/srv/a.php",
        scriptName="/a.php",
        pathInfo="/b",
        documentURI="/a.php/b",
        documentRoot="/srv",
        serverProtocol=b"HTTP/1.1",
        https=True,
        remoteAddr="127.0.0.1",
        remotePort=1,
        serverAddr="127.0.0.1",
        serverPort=2,
        serverName=b"localhost",
        contentType=None,
        contentLength=None,
        headers=[(b"Host", [b"localhost"])],
    )
    sent = {name.decode() for name, value in request.params(b"txfastcgi")}
    assert {"HTTP_HOST"} <= sent
    assert documented == {n for n in sent if not n.startswith("HTTP_")} | {"HTTP_*"}


# The examples, run


def test_the_wordpress_must_use_plugin_turns_on_pretty_permalinks() -> None:
    plugin = EXAMPLES / "wordpress" / "txfastcgi-rewrite.php"
    stub = (
        'function add_filter($hook, $callback) { echo "$hook=$callback"; } '
        f"include {str(plugin)!r};"
    )
    result = subprocess.run(["php", "-r", stub], capture_output=True, text=True, check=True)
    assert result.stdout == "got_url_rewrite=__return_true"


def test_the_uploads_ini_raises_phps_limits() -> None:
    ini = EXAMPLES / "wordpress" / "uploads.ini"
    code = 'echo ini_get("upload_max_filesize"), " ", ini_get("post_max_size");'
    result = subprocess.run(
        ["php", "-n", "-c", str(ini), "-r", code], capture_output=True, text=True, check=True
    )
    assert result.stdout == "64M 72M"
    assert result.stderr == ""


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                status: int = r.status
                return status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, self.log.read_text()
        return json.loads(body)


class Serve(Protocol):
    def __call__(self, arguments: list[str], port: int, environment: dict[str, str]) -> Server:
        """Run Python with C{arguments} until it listens on C{port}."""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start a server from C{arguments}; stopped after the test."""
    servers: list[Server] = []

    def start(arguments: list[str], port: int, environment: dict[str, str]) -> Server:
        log = tmp_path / f"server{len(servers)}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, *arguments],
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=REPOSITORY,
                env=dict(os.environ, PYTHONPATH=str(REPOSITORY), **environment),
            )
        server = Server(process, port, log)
        servers.append(server)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{arguments} exited:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return server
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"{arguments} did not listen:\n{log.read_text()}")

    yield start
    for server in servers:
        server.process.terminate()
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def test_the_getting_started_demo_serves_the_demo_site(serve: Serve) -> None:
    (demo,) = [
        words
        for block, words in shellCommands()
        if block.page.name == "getting-started.rst" and "spawn" in words
    ]
    arguments = fastcgiProxyArguments(demo)
    assert arguments is not None
    port = freePort()
    arguments[arguments.index("--listen") + 1] = f"tcp:{port}:interface=127.0.0.1"
    server = serve(["-m", "twisted", "fastcgi-proxy", *arguments], port, {})
    status, body = server.get("/")
    assert status == 200, server.log.read_text()
    assert b"txfastcgi demo" in body
    assert b"Hello, docs!" in server.get("/hello/docs")[1]


def test_the_plain_twisted_example(serve: Serve, php_fpm: PHPFPMPool) -> None:
    port = freePort()
    server = serve(
        [str(EXAMPLES / "plain.py")],
        port,
        {
            "PHP_FPM": php_fpm.endpointDescription,
            "BLOG_ROOT": php_fpm.documentRoot,
            "LISTEN": f"tcp:{port}:interface=127.0.0.1",
        },
    )
    assert b'href="/blog/"' in server.get("/")[1]
    assert b"seconds since the epoch" in server.get("/time")[1]
    assert b"Hello, plain!" in server.get("/blog/hello/plain")[1]


def test_the_klein_example(serve: Serve, php_fpm: PHPFPMPool) -> None:
    port = freePort()
    server = serve(
        [*TWISTD, "-ny", str(EXAMPLES / "klein.tac")],
        port,
        {
            "PHP_FPM": php_fpm.endpointDescription,
            "BLOG_ROOT": php_fpm.documentRoot,
            "LISTEN": f"tcp:{port}:interface=127.0.0.1",
        },
    )
    assert b'href="/blog/"' in server.get("/")[1]
    assert b"Hello, klein!" in server.get("/blog/hello/klein")[1]
    assert server.json("/blog/api/info")["SCRIPT_NAME"] == "/blog/index.php"
    assert b"marker" in server.get("/blog/sub/")[1]


def test_the_subdirectory_example(serve: Serve, php_fpm: PHPFPMPool) -> None:
    """The same site at / and, as "phpMyAdmin", under /phpmyadmin/."""
    port = freePort()
    server = serve(
        [*TWISTD, "-ny", str(EXAMPLES / "subdirectory.tac")],
        port,
        {
            "PHP_FPM": php_fpm.endpointDescription,
            "SITE_ROOT": php_fpm.documentRoot,
            "PHPMYADMIN_ROOT": php_fpm.documentRoot,
            "LISTEN": f"tcp:{port}:interface=127.0.0.1",
        },
    )
    assert b"txfastcgi demo" in server.get("/")[1]
    assert b"Hello, root!" in server.get("/hello/root")[1]
    assert server.json("/info.php/x")["SCRIPT_NAME"] == "/info.php"
    mounted = server.json("/phpmyadmin/info.php/x?y=1")
    assert mounted["SCRIPT_NAME"] == "/phpmyadmin/info.php"
    assert mounted["REQUEST_URI"] == "/phpmyadmin/info.php/x?y=1"
    assert mounted["PATH_INFO"] == "/x"
    assert server.get("/phpmyadmin")[0] == 200  # redirected to /phpmyadmin/
    # No front controller for phpMyAdmin.
    assert server.get("/phpmyadmin/hello/there")[0] == 404
    assert server.get("/hello/there")[0] == 200


def test_the_laravel_example_serves_the_public_disk(
    serve: Serve, php_fpm: PHPFPMPool, tmp_path: Path
) -> None:
    app = Path(tempfile.mkdtemp(dir=tmp_path))
    (app / "public").symlink_to(php_fpm.documentRoot)
    storage = app / "storage" / "app" / "public"
    (storage / "avatars").mkdir(parents=True)
    (storage / "avatars" / "a.txt").write_text("an uploaded file\n")
    port = freePort()
    server = serve(
        [*TWISTD, "-ny", str(EXAMPLES / "laravel.tac")],
        port,
        {
            "PHP_FPM": php_fpm.endpointDescription,
            "LARAVEL_ROOT": str(app),
            "LISTEN": f"tcp:{port}:interface=127.0.0.1",
        },
    )
    assert server.get("/storage/avatars/a.txt") == (200, b"an uploaded file\n")
    assert server.get("/storage/avatars/")[0] == 404
    assert b"Hello, laravel!" in server.get("/hello/laravel")[1]
