"""
Tests for L{txfastcgi._server.phpfpm} against the real php-fpm, and for the php-fpm
fixtures and the site they serve, spoken to in hand-packed FastCGI so that
these tests do not depend on the client under test elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.processes import childrenRunning
from txfastcgi._server.phpfpm import (
    PHPFPMService,
    PoolConfiguration,
    acceptsConnections,
    findPHPFPM,
    processArguments,
    workerUser,
)
from txfastcgi.errors import PHPFPMNotFound

if TYPE_CHECKING:
    from tests.conftest import PHPFPMFactory, PHPFPMPool

SITE = Path(__file__).parent / "site"

asRoot = pytest.mark.skipif(
    os.geteuid() != 0, reason="php-fpm only checks pool users when started as root"
)


# findPHPFPM


def test_findPHPFPMFindsDebianBinary() -> None:
    """
    Debian's C{php-fpmX.Y} in C{/usr/sbin}, off most users' PATH, is found.
    """
    found = findPHPFPM()
    assert os.path.isabs(found)
    assert os.access(found, os.X_OK)
    assert findPHPFPM("/usr/sbin").startswith("/usr/sbin/php-fpm")


def test_findPHPFPMEmptySearchPath() -> None:
    """
    With nowhere to look, L{PHPFPMNotFound} says so in one line that tells the
    user what to install.
    """
    with pytest.raises(PHPFPMNotFound) as raised:
        findPHPFPM("")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("php-fpm not found")
    assert "php-fpm package" in message


def _executable(path: Path) -> None:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)


def test_findPHPFPMHighestVersion(tmp_path: Path) -> None:
    """
    Of versioned binaries the highest version wins, compared as numbers; files
    that are not executable or only look like php-fpm are ignored.
    """
    for name in ["php-fpm7.4", "php-fpm8.2", "php-fpm8.10", "php-fpm-wrapper"]:
        _executable(tmp_path / name)
    (tmp_path / "php-fpm9.0").write_text("not executable")
    assert findPHPFPM(str(tmp_path)) == str(tmp_path / "php-fpm8.10")


def test_findPHPFPMPrefersUnversionedAndPathOrder(tmp_path: Path) -> None:
    """
    An unversioned C{php-fpm} beats versioned ones in its directory, and the
    first directory of the search path with any php-fpm wins.
    """
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    _executable(first / "php-fpm8.1")
    _executable(second / "php-fpm8.3")
    _executable(second / "php-fpm")
    assert findPHPFPM(os.pathsep.join([str(tmp_path / "missing"), str(first), str(second)])) == str(
        first / "php-fpm8.1"
    )
    assert findPHPFPM(str(second)) == str(second / "php-fpm")


# PoolConfiguration and processArguments


def _configTest(tmp_path: Path, configuration: PoolConfiguration, allowRoot: bool) -> str:
    """
    Run C{php-fpm -t} on C{configuration}; return its output if it fails.
    """
    configPath = tmp_path / "php-fpm.conf"
    configPath.write_text(configuration.render(str(tmp_path)))
    result = subprocess.run(
        [*processArguments(findPHPFPM(), str(configPath), allowRoot), "--test"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return "" if result.returncode == 0 else result.stderr


def test_renderAcceptedByPHPFPM(tmp_path: Path) -> None:
    """
    php-fpm accepts the configuration written for the user L{workerUser} picks.
    """
    configuration = PoolConfiguration(
        socketPath=str(tmp_path / "php-fpm.sock"),
        children=3,
        runAsUser=workerUser(str(SITE)),
        maxRequests=100,
    )
    assert _configTest(tmp_path, configuration, allowRoot=False) == ""


def test_render() -> None:
    """
    The configuration keeps php-fpm in the foreground, logs to standard error
    and sizes the pool as asked.
    """
    text = PoolConfiguration(
        socketPath="/run/x/php.sock", children=3, runAsUser="www-data", maxRequests=7
    ).render("/run/x")
    lines = set(text.splitlines())
    for expected in [
        "daemonize = no",
        "error_log = /dev/stderr",
        'pid = "/run/x/php-fpm.pid"',
        'listen = "/run/x/php.sock"',
        "listen.mode = 0666",
        'user = "www-data"',
        "pm = static",
        "pm.max_children = 3",
        "pm.max_requests = 7",
        "php_admin_value[upload_max_filesize] = 16M",
        "php_admin_value[post_max_size] = 16M",
    ]:
        assert expected in lines
    assert "clear_env" not in text
    assert "user" not in PoolConfiguration(socketPath="/s").render("/run/x")


def test_renderRefusesUnquotable() -> None:
    """
    A value that a quoted ini string cannot hold is refused rather than
    written into a configuration php-fpm would misread.
    """
    with pytest.raises(ValueError):
        PoolConfiguration(socketPath='/tmp/a"b').render("/run/x")


def test_endpointDescription() -> None:
    """
    The socket path is quoted for Twisted's endpoint parser.
    """
    assert PoolConfiguration(socketPath="/a/b.sock").endpointDescription == "unix:/a/b.sock"
    assert PoolConfiguration(socketPath="/a:b").endpointDescription == "unix:/a\\:b"


def test_processArguments() -> None:
    """
    php-fpm stays in the foreground, with C{-R} only when asked.
    """
    assert processArguments("/bin/fpm", "/c", allowRoot=False) == [
        "/bin/fpm",
        "--nodaemonize",
        "--fpm-config",
        "/c",
    ]
    assert processArguments("/bin/fpm", "/c", allowRoot=True)[-1] == "--allow-to-run-as-root"


@asRoot
def test_rootNeedsAUser(tmp_path: Path) -> None:
    """
    php-fpm started as root refuses a pool without a user, which is why
    L{workerUser} always names one for root.
    """
    configuration = PoolConfiguration(socketPath=str(tmp_path / "s"))
    assert "user has not been defined" in _configTest(tmp_path, configuration, False)


@asRoot
def test_rootWorkersNeedAllowRoot(tmp_path: Path) -> None:
    """
    php-fpm runs PHP as root only with C{-R}.  Its configuration test does
    not check this: only starting it does.
    """
    configuration = PoolConfiguration(socketPath=str(tmp_path / "s"), runAsUser="root")
    assert _configTest(tmp_path, configuration, allowRoot=False) == ""
    configPath = str(tmp_path / "php-fpm.conf")
    refused = subprocess.run(
        processArguments(findPHPFPM(), configPath, allowRoot=False),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "please specify user and group other than root" in refused.stderr
    allowed = subprocess.Popen(
        processArguments(findPHPFPM(), configPath, allowRoot=True),
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not acceptsConnections(configuration.socketPath):
            assert allowed.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        allowed.terminate()
        allowed.wait()


# workerUser


def test_workerUserNotRoot(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    php-fpm not started by root runs PHP as its own user: there is no choice.
    """
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert workerUser("/") is None


def test_workerUserRootOwned(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    For a document root owned by root, root picks C{www-data}, or C{nobody}
    where there is no C{www-data}.
    """
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert workerUser("/") == "www-data"
    realGetpwnam = pwd.getpwnam

    def withoutWWWData(name: str) -> pwd.struct_passwd:
        if name == "www-data":
            raise KeyError(name)
        return realGetpwnam(name)

    monkeypatch.setattr(pwd, "getpwnam", withoutWWWData)
    assert workerUser("/") == "nobody"


@pytest.fixture
def worldReadableDirectory() -> Iterator[Path]:
    """A directory anyone can reach and list (unlike pytest's C{tmp_path})."""
    directory = tempfile.mkdtemp(prefix="txfastcgi-test-")
    os.chmod(directory, 0o755)
    yield Path(directory)
    shutil.rmtree(directory)


@asRoot
def test_workerUserOwner(worldReadableDirectory: Path) -> None:
    """
    Root picks the owner of the document root, who can read it; an owner
    without a name falls back to C{www-data}.
    """
    os.chown(worldReadableDirectory, pwd.getpwnam("daemon").pw_uid, -1)
    assert workerUser(str(worldReadableDirectory)) == "daemon"
    os.chown(worldReadableDirectory, 54321, -1)
    assert workerUser(str(worldReadableDirectory)) == "www-data"


@asRoot
def test_workerUserRootOnlySite(tmp_path: Path) -> None:
    """
    A root-owned site that only root can reach (pytest's C{tmp_path} is under
    a C{0700} directory, like a clone under C{/root}) is served by root: any
    other user would find no script at all.
    """
    assert workerUser(str(tmp_path)) == "root"


# PHPFPMService


def _alive(pid: int) -> bool:
    """Whether process C{pid} exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _pidOf(service: PHPFPMService) -> int | None:
    """
    The pid of the service's php-fpm master, from its pid file.
    """
    try:
        return int(Path(service.directory, "php-fpm.pid").read_text())
    except (OSError, ValueError):
        return None


async def _firstPIDOf(service: PHPFPMService) -> int:
    """
    The pid of a listening php-fpm master, once its pid file is written: it
    may be written after the socket accepts connections.
    """
    deadline = time.monotonic() + 10
    while (pid := _pidOf(service)) is None:
        assert time.monotonic() < deadline, "php-fpm wrote no pid file"
        await deferLater(reactor, 0.05)
    return pid


class PHPFPMServiceTests(TestCase):
    """
    L{PHPFPMService} runs a real php-fpm under the reactor.
    """

    timeout = 30

    def startedService(self, binary: str | None = None) -> PHPFPMService:
        """
        A started service for the site, with one worker to start quickly.
        """
        service = PHPFPMService(str(SITE), children=1, binary=binary)
        service.startService()
        return service

    async def test_startAndStop(self) -> None:
        """
        The service starts php-fpm on the socket it advertises, logs its output
        through L{twisted.logger}, and on stopping stops it and removes its
        directory.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

        service = self.startedService()
        self.assertEqual(service.endpointDescription, f"unix:{service.configuration.socketPath}")
        self.assertEqual(stat.S_IMODE(os.stat(service.directory).st_mode), 0o700)
        await service.whenListening()
        self.assertTrue(acceptsConnections(service.configuration.socketPath))
        pid = _pidOf(service)
        assert pid is not None

        await service.stopService()
        self.assertFalse(os.path.exists(service.directory))
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        lines = [str(event.get("line", "")) for event in events]
        self.assertTrue(any("ready to handle connections" in line for line in lines), lines)

    def test_stopWithoutStart(self) -> None:
        """
        A service that never started, as when a sibling service failed to,
        stops at once and removes its directory.
        """
        service = PHPFPMService(str(SITE))
        self.assertIsNone(self.successResultOf(service.stopService()))
        self.assertFalse(os.path.exists(service.directory))

    async def test_restartsWhenItDies(self) -> None:
        """
        When php-fpm exits, the service starts it again on the same socket.
        """
        service = self.startedService()
        self.addCleanup(service.stopService)
        await service.whenListening()
        firstPID = await _firstPIDOf(service)

        os.kill(firstPID, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _pidOf(service) in (None, firstPID):
            self.assertLess(time.monotonic(), deadline, "php-fpm was not restarted")
            await deferLater(reactor, 0.05)
        await service.whenListening()
        self.assertTrue(acceptsConnections(service.configuration.socketPath))

    async def test_workersOfAKilledMasterAreKilledToo(self) -> None:
        """
        php-fpm's master killed outright leaves its workers running; once the
        service has started a new master, it kills them.
        """
        service = self.startedService()
        self.addCleanup(service.stopService)
        await service.whenListening()
        firstPID = await _firstPIDOf(service)
        workers = childrenRunning(firstPID, "php-fpm")
        self.assertTrue(workers, "php-fpm started no workers")

        os.kill(firstPID, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while _pidOf(service) in (None, firstPID) or any(_alive(pid) for pid in workers):
            self.assertLess(time.monotonic(), deadline, "old workers are still running")
            await deferLater(reactor, 0.1)
        await service.whenListening()
        self.assertTrue(acceptsConnections(service.configuration.socketPath))

    async def test_whenListeningTimesOut(self) -> None:
        """
        When php-fpm never listens, L{PHPFPMService.whenListening} gives up with
        an error that names the socket.
        """
        service = self.startedService(binary="/bin/false")
        self.addCleanup(service.stopService)
        with self.assertRaises(TimeoutError) as raised:
            await service.whenListening(timeout=0.2)
        self.assertIn(service.configuration.socketPath, str(raised.exception))


# The php_fpm fixtures, with a minimal FastCGI client.

_BEGIN_REQUEST, _END_REQUEST, _PARAMS, _STDIN, _STDOUT, _STDERR = 1, 3, 4, 5, 6, 7
_RESPONDER = 1
_HEADER = struct.Struct("!BBHHBx")  # version, type, request id, length, padding


def _record(recordType: int, content: bytes = b"") -> bytes:
    return _HEADER.pack(1, recordType, 1, len(content), 0) + content


def _nameValue(name: str, value: str) -> bytes:
    def length(data: bytes) -> bytes:
        return bytes([len(data)]) if len(data) < 128 else struct.pack("!I", len(data) | 1 << 31)

    encodedName, encodedValue = name.encode(), value.encode()
    return length(encodedName) + length(encodedValue) + encodedName + encodedValue


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stderr: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def json(self) -> Any:
        assert self.header("Content-type") == "application/json", self.headers
        return json.loads(self.body)


def fastCGI(socketPath: str, params: dict[str, str], body: bytes = b"") -> _Response:
    """
    Send one FastCGI request and read its whole response.
    """
    request = _record(_BEGIN_REQUEST, struct.pack("!HB5x", _RESPONDER, 0))
    request += _record(_PARAMS, b"".join(_nameValue(k, v) for k, v in params.items()))
    request += _record(_PARAMS)
    for start in range(0, len(body), 65535):
        request += _record(_STDIN, body[start : start + 65535])
    request += _record(_STDIN)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        connection.connect(socketPath)
        connection.sendall(request)
        received = b"".join(iter(lambda: connection.recv(65536), b""))
    stdout, stderr, ended = b"", b"", False
    while received:
        _, recordType, _, length, padding = _HEADER.unpack_from(received)
        content = received[_HEADER.size : _HEADER.size + length]
        received = received[_HEADER.size + length + padding :]
        if recordType == _STDOUT:
            stdout += content
        elif recordType == _STDERR:
            stderr += content
        elif recordType == _END_REQUEST:
            ended = True
    assert ended, "no END_REQUEST"
    head, _, responseBody = stdout.partition(b"\r\n\r\n")
    headers = [
        (name, value.strip())
        for name, _, value in (line.partition(":") for line in head.decode().split("\r\n"))
    ]
    status = next((value for name, value in headers if name == "Status"), "200")
    return _Response(int(status.split()[0]), headers, responseBody, stderr)


def php(
    pool: PHPFPMPool,
    uri: str,
    script: str = "/index.php",
    method: str = "GET",
    body: bytes = b"",
    contentType: str = "",
    scriptPrefix: str = "",
    **headers: str,
) -> _Response:
    """
    Request C{uri} from C{script}, with the CGI variables a web server sends.
    """
    path, _, query = uri.partition("?")
    params = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": method,
        "REQUEST_URI": uri,
        "QUERY_STRING": query,
        "DOCUMENT_ROOT": pool.documentRoot,
        "SCRIPT_FILENAME": pool.documentRoot + script,
        "SCRIPT_NAME": scriptPrefix + script,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": contentType,
    }
    params.update({"HTTP_" + name.upper(): value for name, value in headers.items()})
    if path.startswith(params["SCRIPT_NAME"] + "/"):
        params["PATH_INFO"] = path[len(params["SCRIPT_NAME"]) :]
    return fastCGI(pool.socketPath, params, body)


def test_fixtureServesInfo(php_fpm: PHPFPMPool) -> None:
    """
    The fixture's php-fpm runs a script of the site for the most minimal
    FastCGI request: three variables and no body.
    """
    script = os.path.join(php_fpm.documentRoot, "info.php")
    response = fastCGI(
        php_fpm.socketPath,
        {"SCRIPT_FILENAME": script, "REQUEST_METHOD": "GET", "QUERY_STRING": "a=1"},
    )
    assert response.status == 200
    info = response.json()
    assert info["SCRIPT_FILENAME"] == script
    assert info["REQUEST_METHOD"] == "GET"
    assert info["get"] == {"a": "1"}
    assert info["PATH_INFO"] is None
    assert php_fpm.endpointDescription == f"unix:{php_fpm.socketPath}"
    assert os.path.isabs(php_fpm.documentRoot)


def test_infoPathInfoAndBody(php_fpm: PHPFPMPool) -> None:
    """
    info.php reports PATH_INFO, headers, the raw body length and the parsed
    form and cookies.
    """
    response = php(
        php_fpm,
        "/info.php/extra/path?x=1",
        script="/info.php",
        method="POST",
        body=b"field=value",
        contentType="application/x-www-form-urlencoded",
        cookie="c=d",
        x_custom="yes",
    )
    info = response.json()
    assert info["PATH_INFO"] == "/extra/path"
    assert info["body_length"] == len(b"field=value")
    assert info["post"] == {"field": "value"}
    assert info["cookie"] == {"c": "d"}
    assert info["get"] == {"x": "1"}
    assert info["HTTP_X_CUSTOM"] == "yes"


def test_frontController(php_fpm: PHPFPMPool) -> None:
    """
    index.php routes pretty URLs, escapes what it echoes, redirects and
    answers 404 for anything else.
    """
    home = php(php_fpm, "/")
    assert home.status == 200
    for link in [b'href="/hello/world"', b'href="/style.css"', b'href="/upload"']:
        assert link in home.body
    hello = php(php_fpm, "/hello/%3Cb%3EJ%C3%B6rg")
    assert "&lt;b&gt;Jörg" in hello.body.decode()
    redirect = php(php_fpm, "/redirect")
    assert (redirect.status, redirect.header("Location")) == (302, "/hello/redirected")
    assert php(php_fpm, "/nowhere").status == 404
    assert php(php_fpm, "/api/info?q=1").json()["get"] == {"q": "1"}


def test_frontControllerUnderPrefix(php_fpm: PHPFPMPool) -> None:
    """
    Mounted under a prefix, the site routes and links relative to it.
    """
    response = php(php_fpm, "/demo/hello/you", scriptPrefix="/demo")
    assert "Hello, you!" in response.body.decode()
    assert b'href="/demo/style.css"' in response.body
    redirect = php(php_fpm, "/demo/redirect", scriptPrefix="/demo")
    assert redirect.header("Location") == "/demo/hello/redirected"


def test_formAndSession(php_fpm: PHPFPMPool) -> None:
    """
    A posted form is echoed escaped; the session counter counts per cookie.
    """
    posted = php(
        php_fpm,
        "/form",
        method="POST",
        body=b"name=%3Ci%3E&message=hi",
        contentType="application/x-www-form-urlencoded",
    )
    assert "<dd>&lt;i&gt;</dd>" in posted.body.decode()
    first = php(php_fpm, "/session")
    cookie = first.header("Set-Cookie")
    assert cookie is not None
    second = php(php_fpm, "/session", cookie=cookie.split(";")[0])
    assert b'id="count">1<' in first.body
    assert b'id="count">2<' in second.body


def test_uploadOverPHPDefaultLimit(php_fpm: PHPFPMPool) -> None:
    """
    The pool raises PHP's 2 MB upload limit, so a 3 MB file arrives whole.
    """
    data = os.urandom(3 * 1024 * 1024)
    boundary = "txfastcgi-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = php(
        php_fpm,
        "/upload",
        method="POST",
        body=body,
        contentType=f"multipart/form-data; boundary={boundary}",
    )
    text = response.body.decode()
    assert response.status == 200, text
    assert f'id="size">{len(data)}<' in text
    assert f'id="sha256">{hashlib.sha256(data).hexdigest()}<' in text
    assert 'id="name">big.bin<' in text


def test_testScripts(php_fpm: PHPFPMPool) -> None:
    """
    The scripts for the proxy's tests do what they say.
    """
    teapot = php(php_fpm, "/status.php?code=418", script="/status.php")
    assert teapot.header("Status") == "418"
    assert (
        php(php_fpm, "/status.php?code=503&reason=Busy", script="/status.php").header("Status")
        == "503 Busy"
    )
    streamed = php(php_fpm, "/stream.php?bytes=100000&chunk=1000", script="/stream.php")
    assert streamed.body == (b"abcdefghijklmnopqrstuvwxyz" * 4000)[:100000]
    headers = php(php_fpm, "/headers.php", script="/headers.php")
    assert [c.split(";")[0] for c in headers.all("Set-Cookie")] == ["first=one", "second=two"]
    assert headers.header("X-Txfastcgi-Demo") == "custom header"
    sub = php(php_fpm, "/sub/", script="/sub/index.php")
    assert sub.json() == {"marker": "sub index", "SCRIPT_NAME": "/sub/index.php"}


def test_stderr(php_fpm: PHPFPMPool) -> None:
    """
    stderr.php's error_log() line reaches the web server as FastCGI STDERR;
    its php://stderr line reaches php-fpm's log instead.
    """
    marker = f"marker-{time.monotonic_ns()}"
    response = php(php_fpm, f"/stderr.php?message={marker}", script="/stderr.php")
    assert response.stderr == f"PHP message: {marker}".encode()
    assert marker in response.body.decode()
    deadline = time.monotonic() + 5
    while f"\n{marker}\n" not in php_fpm.log():
        assert time.monotonic() < deadline, php_fpm.log()
        time.sleep(0.02)


def test_factory(php_fpm_factory: PHPFPMFactory, php_fpm: PHPFPMPool) -> None:
    """
    The factory starts pools of their own, sized as asked, serving the same
    site.
    """
    pool = php_fpm_factory(children=1, maxRequests=1)
    assert pool.socketPath != php_fpm.socketPath
    assert pool.documentRoot == php_fpm.documentRoot
    assert (pool.configuration.children, pool.configuration.maxRequests) == (1, 1)
    for _ in range(3):  # Each served by a fresh worker.
        assert php(pool, "/info.php", script="/info.php").status == 200
