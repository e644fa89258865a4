"""
What the security tests need to attack a proxy and see what got through.

  - L{RecordingServer}: a FastCGI responder listening on a real unix socket
    in the test process, one L{txfastcgi.testing.FakeBackend} per
    connection, so that a test sees exactly what would have reached php-fpm
    (the params, the body, every record with its padding, every connection)
    and scripts any answer, malformed or not.
  - L{exchange} and L{parseAnswers}: a raw HTTP client.  It writes the
    bytes a test gives it, byte for byte, reads until the server closes, and
    parses what came back as a client would, noticing a body cut short.
  - L{buildAttackSite}: a document root with the files attackers aim at (an
    upload that holds PHP code, backups of scripts, symbolic links out of
    the root), readable by php-fpm's workers.

L{tests.fronts.ProxyTestCase} puts a front in front of a L{RecordingServer}.
"""

from __future__ import annotations

import http.client
import io
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from txfastcgi._fastcgi.records import decodeNameValuePairs
from txfastcgi.testing import FakeBackend, ReceivedRequest, Reply, Responder

__all__ = [
    "Answer",
    "RecordHeader",
    "RecordingBackend",
    "RecordingServer",
    "buildAttackSite",
    "exchange",
    "parseAnswers",
    "recordHeaders",
]

_HEADER = struct.Struct("!BBHHBx")

# What an executed attack script prints; its source holds the two halves
# apart, so that served source and executed code can be told apart.
EXECUTED = b"EVIL-EXECUTED"
_EVIL_SCRIPT = b"<?php echo 'EVIL' . '-EXECUTED';\n"
SECRET = b"SECRET-SOURCE"
_SECRET_SCRIPT = b"<?php /* SECRET-SOURCE */ echo 'hidden';\n"


class RecordingBackend(FakeBackend):
    """
    A L{FakeBackend} on a real connection that also keeps every byte the
    client wrote, for checks on the framing itself.
    """

    def __init__(self, respond: Responder) -> None:
        super().__init__(respond)
        self.received = bytearray()
        self.whenClosed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        super().dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost()
        self.whenClosed.callback(None)


class RecordingServer(Factory):
    """
    A FastCGI responder on a unix socket, standing in for php-fpm.

    @ivar respond: how every request is answered; change it at any time, it
        applies to kept connections too.  A L{Reply} by default.
    @ivar backends: one per connection accepted, in order.
    """

    def __init__(self, respond: Responder | None = None) -> None:
        self.respond: Responder = respond if respond is not None else Reply()
        self.backends: list[RecordingBackend] = []
        self._port: IListeningPort | None = None
        self._directory = tempfile.mkdtemp(prefix="txfastcgi-recording-")
        self.socketPath = os.path.join(self._directory, "fastcgi.sock")

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received, complete or not, on every connection, in order."""
        return [request for backend in self.backends for request in backend.requests]

    @property
    def received(self) -> bytes:
        """Every byte received, on every connection."""
        return b"".join(bytes(backend.received) for backend in self.backends)

    def buildProtocol(self, addr: IAddress | None) -> RecordingBackend:
        backend = RecordingBackend(lambda backend, request: self.respond(backend, request))
        self.backends.append(backend)
        return backend

    def listen(self) -> None:
        self._port = reactor.listenUNIX(self.socketPath, self)  # type: ignore[attr-defined]

    def endpoint(self) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(reactor, self.socketPath)

    async def stop(self) -> None:
        """Stop listening and wait until every connection is closed."""
        if self._port is not None:
            stopped = self._port.stopListening()
            if stopped is not None:
                await stopped
        for backend in self.backends:
            if not backend.closed and backend.transport is not None:
                backend.transport.loseConnection()
        for backend in self.backends:
            await backend.whenClosed
        os.rmdir(self._directory)


@dataclass(frozen=True)
class RecordHeader:
    """The header of one record as it was on the wire."""

    recordType: int
    requestId: int
    contentLength: int
    paddingLength: int


def recordHeaders(data: bytes) -> list[tuple[RecordHeader, bytes]]:
    """Every complete record in C{data}: its header and its content."""
    records = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        _version, recordType, requestId, contentLength, paddingLength = _HEADER.unpack_from(
            data, offset
        )
        start = offset + _HEADER.size
        end = start + contentLength + paddingLength
        if end > len(data):
            break
        header = RecordHeader(recordType, requestId, contentLength, paddingLength)
        records.append((header, data[start : start + contentLength]))
        offset = end
    return records


def paramsRecordsHoldWholePairs(data: bytes) -> bool:
    """
    Whether every PARAMS record in C{data} decodes on its own, as php-fpm
    decodes them: it drops a request whose name-value pair spans two records.
    """
    for header, content in recordHeaders(data):
        if header.recordType == 4 and content:
            try:
                decodeNameValuePairs(content)
            except Exception:
                return False
    return True


# The raw HTTP client


class _Collector(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(bytes(self.data))


def exchange(
    port: int, *writes: bytes, pause: float = 0.0, timeout: float = 10.0
) -> Deferred[bytes]:
    """
    Connect to C{port} on the loopback, write C{writes} (with C{pause}
    seconds between them) and return everything the server sent until it
    closed the connection.

    @raise AssertionError: the server kept the connection open for
        C{timeout} seconds.
    """

    async def run() -> bytes:
        collector = _Collector()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), collector)
        assert collector.transport is not None
        for index, data in enumerate(writes):
            if index and pause:
                await deferLater(reactor, pause, lambda: None)
            if not collector.done.called:
                collector.transport.write(data)
        timer = reactor.callLater(timeout, collector.transport.abortConnection)  # type: ignore[attr-defined]
        received = await collector.done
        if not timer.active():
            raise AssertionError(
                f"the server kept the connection open for {timeout} s after sending"
                f" {received[:200]!r}"
            )
        timer.cancel()
        return received

    return ensureDeferred(run())


async def waitUntil(condition: Callable[[], bool]) -> None:
    """Let the reactor run until C{condition} holds, for at most two seconds."""
    for _ in range(200):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the condition did not come true within two seconds")


@dataclass(frozen=True)
class Answer:
    """
    One HTTP response as a client reads it.

    @ivar complete: whether the whole body arrived; L{False} when the
        connection closed before the Content-Length or the last chunk did.
    """

    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes
    complete: bool

    def header(self, name: str) -> list[str]:
        return self.headers.get_all(name) or []


class _Unclosable(io.BytesIO):
    def close(self) -> None:
        pass


class _Socket:
    def __init__(self, stream: io.BytesIO) -> None:
        self._stream = stream

    def makefile(self, mode: str) -> io.BytesIO:
        return self._stream


def parseAnswers(raw: bytes, methods: Sequence[bytes] = ()) -> list[Answer]:
    """
    The responses in C{raw}, in order, parsed by Python's own HTTP client.

    @param methods: the methods of the requests, where not GET (a response
        to HEAD has no body).
    """
    stream = _Unclosable(raw)
    answers: list[Answer] = []
    while stream.tell() < len(raw):
        method = methods[len(answers)] if len(answers) < len(methods) else b"GET"
        response = http.client.HTTPResponse(
            _Socket(stream),  # type: ignore[arg-type]
            method=method.decode(),
        )
        response.begin()
        try:
            body, complete = response.read(), True
        except http.client.IncompleteRead as incomplete:
            body, complete = incomplete.partial, False
        answers.append(Answer(response.status, response.reason, response.msg, body, complete))
    return answers


def parseAnswer(raw: bytes) -> Answer:
    """The one response in C{raw}."""
    answers = parseAnswers(raw)
    assert len(answers) == 1, f"expected one response, got {len(answers)}: {raw[:500]!r}"
    return answers[0]


def request(
    target: bytes,
    method: bytes = b"GET",
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
    close: bool = True,
) -> bytes:
    """
    The bytes of one HTTP/1.1 request, with a Host header, a Content-Length
    for C{body} and, with C{close}, C{Connection: close}.
    """
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: attacked.example"]
    lines += [b"%s: %s" % header for header in headers]
    if body is not None:
        lines.append(b"Content-Length: %d" % len(body))
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


# The attacked site

# The request as PHP saw it: the params a test asks about, the body's length
# and digest, and which script ran.
_ECHO_SCRIPT = b"""<?php
header('Content-Type: application/json');
$body = file_get_contents('php://input');
$server = [];
foreach ($_SERVER as $name => $value) {
    if (is_string($value)) {
        $server[$name] = $value;
    }
}
echo json_encode([
    'script' => __FILE__,
    'server' => $server,
    'cookie' => $_COOKIE,
    'body_length' => strlen($body),
    'body_sha256' => hash('sha256', $body),
    'auto_prepend_file' => ini_get('auto_prepend_file'),
], JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE);
"""


def buildAttackSite() -> tuple[str, str]:
    """
    Create a document root and a directory beside it, both readable by
    anyone (php-fpm's workers run as another user), and return their paths.

    In the root: the front controller C{index.php} and C{echo.php}, which
    print the request as PHP sees it in JSON; an upload C{uploads/evil.jpg}
    that holds PHP code; script source under other names (C{x.php.bak},
    C{X.PHP}, C{shell.phtml}, C{index.php~}, ...); a file named with a
    full-width letter p (C{shell.\\uff50hp}); symbolic links out of the root; hidden
    files.  Outside the root: C{secret.php} and C{inner/inner.php}.
    """
    top = tempfile.mkdtemp(prefix="txfastcgi-attack-site-")
    os.chmod(top, 0o755)
    root = os.path.join(top, "root")
    outside = os.path.join(top, "outside")
    files = {
        "index.php": _ECHO_SCRIPT,
        "echo.php": _ECHO_SCRIPT,
        "uploads/evil.jpg": _EVIL_SCRIPT,
        "uploads/photo.jpg": b"\xff\xd8\xff\xe0 not really a JPEG",
        "x.php.bak": _SECRET_SCRIPT,
        "X.PHP": _SECRET_SCRIPT,
        "shell.phtml": _EVIL_SCRIPT,
        "shell.php5": _EVIL_SCRIPT,
        "shell.phar": _EVIL_SCRIPT,
        "index.php~": _SECRET_SCRIPT,
        "config.inc": _SECRET_SCRIPT,
        "shell.\uff50hp": _EVIL_SCRIPT,
        ".env": b"DB_PASSWORD=" + SECRET,
        ".git/config": SECRET,
        "sub/index.php": _ECHO_SCRIPT,
    }
    for name, content in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as file:
            file.write(content)
    for name, content in {"secret.php": _EVIL_SCRIPT, "inner/inner.php": _EVIL_SCRIPT}.items():
        path = os.path.join(outside, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as file:
            file.write(content)
    os.symlink(os.path.join(outside, "secret.php"), os.path.join(root, "link-out.php"))
    os.symlink(os.path.join(outside, "inner"), os.path.join(root, "linkdir"))
    os.symlink("/etc/passwd", os.path.join(root, "passwd.txt"))
    for directory, _, names in os.walk(top):
        os.chmod(directory, 0o755)
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)
    return root, outside
