"""
Requests that must never reach PHP, or must reach it only as harmless data.

Each test sends an attack, byte for byte, to a L{txfastcgi._http.web.FastCGISite}
serving a L{txfastcgi.FastCGIResource} in front of a recording FastCGI
backend (L{tests.recordingbackend.RecordingServer}), and checks what the
client got and what the backend, standing in for php-fpm, received.  The same
attacks go through the real C{twist fastcgi-proxy} and php-fpm in
C{test_security_php.py}; the answers of a hostile backend are in
C{test_security_responses.py}.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest
from twisted.internet import reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection

from tests.fronts import InMemoryFront, ProxyTestCase, onEveryFront
from tests.recordingbackend import (
    EXECUTED,
    SECRET,
    Answer,
    buildAttackSite,
    paramsRecordsHoldWholePairs,
    parseAnswer,
    recordHeaders,
    request,
)
from txfastcgi import FastCGIResource
from txfastcgi._fastcgi.records import (
    MAX_CONTENT_LENGTH,
    BeginRequest,
    Params,
    RecordType,
    Stdin,
    encodeNameValuePairs,
    encodeParams,
)
from txfastcgi._http.web import FastCGISite
from txfastcgi.testing import ReceivedRequest

# What php-fpm's own reader accepts in one PARAMS record: content and
# padding together (main/fastcgi.c, fcgi_read_request).
PHP_FPM_MAX_RECORD = 65535


@pytest.fixture(scope="module")
def attackSite() -> Iterator[tuple[str, str]]:
    root, outside = buildAttackSite()
    yield root, outside
    shutil.rmtree(os.path.dirname(root), ignore_errors=True)


@pytest.fixture(autouse=True)
def _documentRoot(request: pytest.FixtureRequest, attackSite: tuple[str, str]) -> None:
    """Hand the attack site to the trial test cases."""
    if request.instance is not None:
        request.instance.documentRoot, request.instance.outside = attackSite


# Paths that name an upload followed by a script name, or a symbolic link
# out of the root: they name nothing that may run, so the front controller
# gets them.
FRONT_CONTROLLED_PATHS = [
    b"/uploads/evil.jpg/x.php",
    b"/uploads/evil.jpg/x.php/more",
    b"/uploads/evil.jpg/.php",
    b"/uploads/evil.jpg%2fx.php",
    b"/uploads/evil.jpg/%78.php",
    b"/link-out.php",
    b"/linkdir/inner.php",
    b"/linkdir/",
    b"/passwd.txt",
]

# Paths that climb out of the document root: 400.
ESCAPING_PATHS = [
    b"/../outside/secret.php",
    b"/%2e%2e/outside/secret.php",
    b"/%2E%2E/outside/secret.php",
    b"/sub/%2e%2e/%2e%2e/outside/secret.php",
    b"/%2e%2e%2foutside%2fsecret.php",
    b"/sub/..%2f..%2foutside/secret.php",
    b"/uploads/..%2f..%2f..%2f..%2fetc/passwd",
]

# Paths with a control character, encoded or not: 400 (CVE-2019-11043 and
# its kind).
CONTROL_CHARACTER_PATHS = [
    b"/index.php/PHP%0Ais_the_shittiest_lang.php?a=b",
    *[b"/index.php/PHP%%%02Xis.php" % code for code in [*range(0x20), 0x7F]],
    b"/echo.php%00.jpg",
    b"/sub%0a/index.php",
    b"/echo.php/%0d%0aX-Injected:%20yes",
    b"/echo.php/a\x01b",
    b"/echo.php/a\x7fb",
    b"/echo.php/a\x0bb",
]

# PHP source under other names: 403, neither served nor run.
SOURCE_PATHS = [
    b"/X.PHP",
    b"/x.php.bak",
    b"/index.php~",
    b"/shell.phtml",
    b"/shell.php5",
    b"/shell.phar",
    b"/config.inc",
]

HIDDEN_PATHS = [b"/.env", b"/.git/config", b"/sub/../.env"]


class AttackTestCase(ProxyTestCase):
    outside: str

    async def attack(
        self, target: bytes, **options: object
    ) -> tuple[Answer, list[ReceivedRequest]]:
        """Send one request; return the answer and the requests the backend received for it."""
        before = len(self.backend.requests)
        answer = await self.fetch(target, **options)
        return answer, self.backend.requests[before:]

    def assertOnlySafeScripts(self, requests: list[ReceivedRequest]) -> None:
        """
        Every script the backend was asked to run is an existing regular
        C{*.php} file whose real path is inside the document root.
        """
        root = os.path.realpath(self.documentRoot)
        for received in requests:
            filename = received.params[b"SCRIPT_FILENAME"].decode("utf-8", "surrogateescape")
            self.assertTrue(filename.endswith(".php"), filename)
            self.assertTrue(os.path.isfile(filename), filename)
            self.assertTrue(os.path.realpath(filename).startswith(root + os.sep), filename)

    def scriptOf(self, received: ReceivedRequest) -> str:
        """SCRIPT_FILENAME, relative to the document root."""
        filename = received.params[b"SCRIPT_FILENAME"].decode("utf-8", "surrogateescape")
        return os.path.relpath(filename, self.documentRoot)


@onEveryFront
class PathTricksTests(AttackTestCase):
    """Only an existing ``*.php`` file inside the document root ever runs."""

    async def test_an_upload_followed_by_a_script_name_is_never_run(self) -> None:
        """
        The cgi.fix_pathinfo class of attack: ``evil.jpg`` exists and holds
        PHP, ``x.php`` does not.  nginx's usual ``location ~ \\.php$`` would
        hand ``/uploads/evil.jpg/x.php`` to php-fpm, which could run the
        upload.  Here the path names no script, so the front controller gets
        it, with the URL untouched.
        """
        for target in FRONT_CONTROLLED_PATHS[:5]:
            answer, requests = await self.attack(target)
            self.assertEqual(answer.status, 200, target)
            self.assertEqual([self.scriptOf(r) for r in requests], ["index.php"], target)
            self.assertEqual(requests[0].params[b"REQUEST_URI"], target)
            self.assertEqual(requests[0].params[b"PATH_INFO"], b"", target)
            self.assertOnlySafeScripts(requests)

    async def test_without_a_front_controller_it_is_a_404_and_nothing_runs(self) -> None:
        self.resource = FastCGIResource(self.pool, self.documentRoot, frontController=None)
        self.port = self.listen(self.resource)
        answer, requests = await self.attack(b"/uploads/evil.jpg/x.php")
        self.assertEqual((answer.status, requests), (404, []))

    async def test_dot_dot_plain_or_percent_encoded_never_leaves_the_root(self) -> None:
        for target in ESCAPING_PATHS:
            answer, requests = await self.attack(target)
            self.assertEqual((answer.status, requests), (400, []), target)
            self.assertNotIn(EXECUTED, answer.body)

    async def test_dot_dot_inside_the_root_is_resolved(self) -> None:
        answer, requests = await self.attack(b"/uploads/%2e%2e/echo.php")
        self.assertEqual(answer.status, 200)
        self.assertEqual([self.scriptOf(r) for r in requests], ["echo.php"])

    async def test_symbolic_links_out_of_the_root_are_never_followed(self) -> None:
        """
        ``link-out.php`` and ``linkdir/`` point outside the root; such paths
        name nothing servable, so the front controller gets them.
        """
        for target in FRONT_CONTROLLED_PATHS[5:]:
            answer, requests = await self.attack(target)
            self.assertEqual(answer.status, 200, target)
            self.assertEqual([self.scriptOf(r) for r in requests], ["index.php"], target)
            self.assertNotIn(b"root:", answer.body)
            self.assertOnlySafeScripts(requests)

    async def test_control_characters_in_the_path_are_a_400_before_any_fastcgi(self) -> None:
        """
        CVE-2019-11043 broke php-fpm's PATH_INFO handling with a ``%0a``
        in the path; no control character, encoded or not, gets that far.
        """
        for target in CONTROL_CHARACTER_PATHS:
            answer, requests = await self.attack(target)
            self.assertEqual((answer.status, requests), (400, []), target)
        self.assertEqual(self.backend.backends, [])

    async def test_control_characters_in_the_query_string_are_data(self) -> None:
        answer, requests = await self.attack(b"/echo.php?q=%0a%00")
        self.assertEqual(answer.status, 200)
        self.assertEqual(requests[0].params[b"QUERY_STRING"], b"q=%0a%00")

    async def test_only_an_ascii_php_extension_makes_a_script(self) -> None:
        """
        ``/shell.%EF%BD%90hp`` (a full-width p) exists; it is not a script, so it is
        served as the file it is and never sent to PHP.
        """
        answer, requests = await self.attack(b"/shell.%EF%BD%90hp")
        self.assertEqual((answer.status, requests), (200, []))
        self.assertNotIn(EXECUTED, answer.body)

    async def test_script_source_under_other_names_is_never_served(self) -> None:
        """
        Backups, other PHP extensions and ``X.PHP`` (which a case-insensitive
        filesystem maps to a script) are refused, neither served nor run.
        """
        for target in SOURCE_PATHS:
            answer, requests = await self.attack(target)
            self.assertEqual((answer.status, requests), (403, []), target)
            self.assertNotIn(b"<?php", answer.body)
            self.assertNotIn(SECRET, answer.body)

    async def test_hidden_files_are_refused(self) -> None:
        for target in HIDDEN_PATHS:
            answer, requests = await self.attack(target)
            self.assertEqual((answer.status, requests), (403, []), target)
            self.assertNotIn(SECRET, answer.body)

    async def test_a_script_gets_its_path_info_and_a_directory_its_index(self) -> None:
        answer, requests = await self.attack(b"/echo.php/extra/path")
        self.assertEqual(answer.status, 200)
        self.assertEqual(self.scriptOf(requests[0]), "echo.php")
        self.assertEqual(requests[0].params[b"PATH_INFO"], b"/extra/path")
        answer, requests = await self.attack(b"/sub/")
        self.assertEqual([self.scriptOf(r) for r in requests], ["sub/index.php"])

    async def test_source_is_never_served_when_php_fpm_is_down(self) -> None:
        down = FastCGIResource(
            UNIXClientEndpoint(reactor, self.backend.socketPath + ".missing"), self.documentRoot
        )
        port = self.listen(down)
        for target, status in [
            (b"/echo.php", 502),
            (b"/uploads/evil.jpg/x.php", 502),
            (b"/x.php.bak", 403),
            (b"/X.PHP", 403),
            (b"/shell.phtml", 403),
        ]:
            answer = parseAnswer(await self.send(request(target), port=port))
            self.assertEqual(answer.status, status, target)
            self.assertNotIn(b"<?php", answer.body)
            self.assertNotIn(SECRET, answer.body)


@onEveryFront
class HeaderHygieneTests(AttackTestCase):
    """Headers reach PHP as HTTP_* params that cannot pose as anything else."""

    params = {"HTTP_X_REAL_IP": "10.0.0.1", "SERVER_NAME": "www.example.com", "APP_ENV": "prod"}

    async def test_a_proxy_header_never_becomes_HTTP_PROXY(self) -> None:
        """httpoxy: many HTTP libraries take HTTP_PROXY for their proxy setting."""
        answer, (received,) = await self.attack(
            b"/echo.php", headers=[(b"Proxy", b"http://evil.example:3128")]
        )
        self.assertEqual(answer.status, 200)
        self.assertNotIn(b"HTTP_PROXY", received.params)

    async def test_header_names_with_underscores_or_dots_are_dropped(self) -> None:
        """``X_Forwarded_For`` would otherwise alias ``X-Forwarded-For``."""
        _, (received,) = await self.attack(
            b"/echo.php",
            headers=[
                (b"X_Forwarded_For", b"6.6.6.6"),
                (b"X-Forwarded-For", b"1.2.3.4"),
                (b"X.Forwarded.For", b"6.6.6.6"),
                (b"X-Forwarded_For", b"6.6.6.6"),
                (b"Script_Filename", b"/tmp/evil.php"),
            ],
        )
        self.assertEqual(received.params[b"HTTP_X_FORWARDED_FOR"], b"1.2.3.4")
        self.assertNotIn(b"6.6.6.6", b"".join(value for _, value in received.paramPairs))
        self.assertNotIn(b"/tmp/evil.php", b"".join(value for _, value in received.paramPairs))

    async def test_a_client_cannot_set_php_value_or_any_computed_param(self) -> None:
        """
        php-fpm reads PHP_VALUE and PHP_ADMIN_VALUE as ini settings
        (``auto_prepend_file``...); headers only ever make ``HTTP_*`` params,
        and never replace a computed one.
        """
        _, (received,) = await self.attack(
            b"/echo.php",
            headers=[
                (b"PHP_VALUE", b"auto_prepend_file=/tmp/evil.jpg"),
                (b"PHP_ADMIN_VALUE", b"allow_url_include=On"),
                (b"PHP-Value", b"auto_prepend_file=/tmp/evil.jpg"),
                (b"Script-Filename", b"/tmp/evil.php"),
                (b"Https", b"on"),
                (b"Document-Root", b"/"),
            ],
        )
        names = [name for name, _ in received.paramPairs]
        self.assertNotIn(b"PHP_VALUE", names)
        self.assertNotIn(b"PHP_ADMIN_VALUE", names)
        self.assertNotIn(b"HTTPS", names)
        self.assertEqual(received.params[b"HTTP_PHP_VALUE"], b"auto_prepend_file=/tmp/evil.jpg")
        self.assertEqual(self.scriptOf(received), "echo.php")
        self.assertEqual(received.params[b"HTTP_SCRIPT_FILENAME"], b"/tmp/evil.php")
        self.assertEqual(received.params[b"DOCUMENT_ROOT"], self.documentRoot.encode())

    async def test_configured_params_win_over_anything_a_client_sends(self) -> None:
        _, (received,) = await self.attack(
            b"/echo.php",
            headers=[(b"X-Real-IP", b"6.6.6.6"), (b"App-Env", b"dev")],
        )
        self.assertEqual(received.params[b"HTTP_X_REAL_IP"], b"10.0.0.1")
        self.assertEqual(received.params[b"SERVER_NAME"], b"www.example.com")
        self.assertEqual(received.params[b"APP_ENV"], b"prod")
        names = [name for name, _ in received.paramPairs]
        self.assertEqual(len(names), len(set(names)), "a param name sent twice")

    async def test_repeated_headers_are_joined_never_dropped(self) -> None:
        _, (received,) = await self.attack(
            b"/echo.php",
            headers=[
                (b"Cookie", b"a=1"),
                (b"X-Forwarded-For", b"1.1.1.1"),
                (b"Cookie", b"b=2"),
                (b"X-Forwarded-For", b"2.2.2.2"),
                (b"accept", b"text/html"),
                (b"Accept", b"*/*"),
            ],
        )
        self.assertEqual(received.params[b"HTTP_COOKIE"], b"a=1; b=2")
        self.assertEqual(received.params[b"HTTP_X_FORWARDED_FOR"], b"1.1.1.1, 2.2.2.2")
        self.assertEqual(received.params[b"HTTP_ACCEPT"], b"text/html, */*")

    async def test_one_host_header_or_a_400(self) -> None:
        """
        Two Host headers (or none, in HTTP/1.1) could be read one way by the
        proxy and another by the application: the request is refused.
        """
        for raw in [
            b"GET /echo.php HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\n\r\n",
            b"GET /echo.php HTTP/1.1\r\nConnection: close\r\n\r\n",
        ]:
            answer = parseAnswer(await self.send(raw))
            self.assertEqual(answer.status, 400, raw)
        self.assertEqual(self.backend.backends, [])
        answer = parseAnswer(await self.send(b"GET /echo.php HTTP/1.0\r\n\r\n"))
        self.assertEqual(answer.status, 200)


def sendWholeBodyThenRead(port: int, data: bytes) -> bytes:
    """A blocking client: send all of C{data}, then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        received = bytearray()
        while chunk := connection.recv(65536):
            received += chunk
    return bytes(received)


def smuggledRecords(filename: bytes) -> bytes:
    """A whole FastCGI request for another script, as an attacker would hide it in a body."""
    return b"".join(
        [
            BeginRequest(1).encode(),
            Params(1, encodeNameValuePairs([(b"SCRIPT_FILENAME", filename)])).encode(),
            Params(1, b"").encode(),
            Stdin(1, b"").encode(),
        ]
    )


@onEveryFront
class RecordSmugglingTests(AttackTestCase):
    """A request body is STDIN content, whatever bytes it holds."""

    def assertFramedCorrectly(self) -> None:
        """Every record has at most 65535 content bytes and pads to a multiple of 8."""
        for header, _ in recordHeaders(self.backend.received):
            self.assertLessEqual(header.contentLength, MAX_CONTENT_LENGTH)
            self.assertEqual(header.paddingLength, -header.contentLength % 8, header)

    async def test_fake_records_in_a_large_body_reach_php_as_body_bytes(self) -> None:
        """
        A 99 KiB body with a whole fake request past byte 65535, where a
        client that cut the body into records badly would let it loose.
        """
        smuggled = smuggledRecords(b"/tmp/evil.php")
        body = b"A" * 65536 + smuggled * 20
        body += b"B" * (99 * 1024 - len(body))
        for transfer in ["length", "chunked"]:
            before = len(self.backend.requests)
            if transfer == "length":
                raw = request(b"/echo.php", method=b"POST", body=body)
            else:
                chunks = b"".join(
                    b"%x\r\n%s\r\n" % (len(body[i : i + 4000]), body[i : i + 4000])
                    for i in range(0, len(body), 4000)
                )
                raw = request(
                    b"/echo.php", method=b"POST", headers=[(b"Transfer-Encoding", b"chunked")]
                )
                raw = raw + chunks + b"0\r\n\r\n"
            answer = parseAnswer(await self.send(raw))
            self.assertEqual(answer.status, 200, transfer)
            (received,) = self.backend.requests[before:]
            self.assertEqual(received.stdin, body, transfer)
            self.assertEqual(received.params[b"CONTENT_LENGTH"], str(len(body)).encode())
        beginRequests = [
            header
            for header, _ in recordHeaders(self.backend.received)
            if header.recordType == RecordType.BEGIN_REQUEST
        ]
        self.assertEqual(len(beginRequests), 2)
        self.assertFramedCorrectly()
        self.assertIsNone(self.backend.backends[0].protocolError)

    async def test_every_body_size_around_the_record_size_is_framed_correctly(self) -> None:
        for size in [65527, 65528, 65535, 65536, 65537, 2 * 65528 + 1]:
            body = hashlib.sha256(b"%d" % size).digest() * (size // 32 + 1)
            body = body[:size]
            _, (received,) = await self.attack(b"/echo.php", method=b"PUT", body=body)
            self.assertEqual(received.stdin, body, size)
        self.assertFramedCorrectly()


@onEveryFront
class BigParamsTests(AttackTestCase):
    """Long names and values reach the backend whole; a head over the limit is a 431."""

    maxHeaderSize = 256 * 1024

    async def test_names_and_values_around_the_length_encoding_limits_arrive_whole(
        self,
    ) -> None:
        """
        Lengths below 128 take one byte and the others four; values over
        65535 bytes take several records.
        """
        headers = [
            (b"X-" + b"n" * 120, b"127-byte name"),
            (b"X-" + b"m" * 121, b"128-byte name"),
            (b"X-Value-127", b"v" * 127),
            (b"X-Value-128", b"w" * 128),
            (b"X-Value-65535", b"x" * 65535),
            (b"X-Value-70000", bytes(range(33, 127)) * 744 + b"end"),
        ]
        _, (received,) = await self.attack(b"/echo.php", headers=headers)
        keys = [b"HTTP_" + name.upper().replace(b"-", b"_") for name, _ in headers]
        self.assertEqual([len(key) for key in keys[:2]], [127, 128])
        for key, (_, value) in zip(keys, headers):
            self.assertEqual(received.params[key], value, key[:20])

    async def test_a_head_over_the_limit_is_a_431_and_a_request_line_a_414(self) -> None:
        limit = self.maxHeaderSize
        for raw, status in [
            (request(b"/echo.php", headers=[(b"X-Big", b"a" * limit)]), 431),
            (request(b"/echo.php", headers=[(b"X-Many", b"a" * 1000)] * (limit // 1000)), 431),
            (request(b"/echo.php?" + b"q" * limit), 414),
        ]:
            answer = parseAnswer(await self.send(raw))
            self.assertEqual(answer.status, status)
        self.assertEqual(self.backend.backends, [])


@onEveryFront
class DefaultHeaderLimitTests(AttackTestCase):
    """With the default limit, the largest header that fits reaches PHP whole."""

    async def test_a_header_just_within_the_default_limit_arrives_whole(self) -> None:
        value = bytes(range(33, 127)) * 160
        answer, (received,) = await self.attack(b"/echo.php", headers=[(b"X-Big", value)])
        self.assertEqual(answer.status, 200)
        self.assertEqual(received.params[b"HTTP_X_BIG"], value)
        answer, requests = await self.attack(b"/echo.php", headers=[(b"X-Big", value * 2)])
        self.assertEqual((answer.status, requests), (431, []))


# One pair of 13 + size bytes (an 8-byte name): 65530 and 65535 bytes, in one
# padded record; then streams over 64 KiB.
@pytest.mark.parametrize("sizes", [[65517], [65522], [40000, 40000], [30000] * 5])
def test_params_records_are_ones_php_fpm_can_read(sizes: list[int]) -> None:
    """
    php-fpm decodes every PARAMS record on its own and refuses one whose
    content and padding exceed 65535 bytes; a params stream over 64 KiB must
    be cut between name-value pairs.
    """
    pairs = [(b"HTTP_X_%d" % index, b"v" * size) for index, size in enumerate(sizes)]
    encoded = encodeParams(1, pairs)
    for header, _ in recordHeaders(encoded):
        assert header.contentLength + header.paddingLength <= PHP_FPM_MAX_RECORD
    assert paramsRecordsHoldWholePairs(encoded)


_START = b"POST /echo.php HTTP/1.1\r\nHost: attacked.example\r\n"
_SMUGGLED = b"GET /x.php.bak HTTP/1.1\r\nHost: attacked.example\r\n\r\n"
_CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"

AMBIGUOUS_REQUESTS = {
    "CL and TE": _START
    + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    + _SMUGGLED,
    "TE and CL": _START
    + b"Transfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n0\r\n\r\n"
    + _SMUGGLED,
    "CL with a plus": _START + b"Content-Length: +10\r\n\r\n0123456789" + _SMUGGLED,
    "negative CL": _START + b"Content-Length: -1\r\n\r\n" + _SMUGGLED,
    "hexadecimal CL": _START + b"Content-Length: 0x10\r\n\r\n" + _SMUGGLED,
    "two different CL": _START + b"Content-Length: 10\r\nContent-Length: 11\r\n\r\n0123456789x",
    "two equal CL": _START + b"Content-Length: 10\r\nContent-Length: 10\r\n\r\n0123456789",
    "a CL list": _START + b"Content-Length: 10, 10\r\n\r\n0123456789",
    "space before the colon": _START + b"Content-Length : 10\r\n\r\n0123456789",
    "TE with a space before the colon": _START
    + b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "TE twice": _START + b"Transfer-Encoding: chunked\r\n" + _CHUNKED + b"0\r\n\r\n",
    "TE not chunked": _START + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "TE a list": _START + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "a NUL in a header": _START + b"X-Nul: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "chunk size not hexadecimal": _START + _CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n",
    "negative chunk size": _START + _CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk size with a plus": _START + _CHUNKED + b"+5\r\nhello\r\n0\r\n\r\n",
    "chunk size with 0x": _START + _CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n",
    "chunk size after a space": _START + _CHUNKED + b" 5\r\nhello\r\n0\r\n\r\n",
    "chunk longer than its size": _START + _CHUNKED + b"5\r\nhelloXX\r\n0\r\n\r\n",
    # Answered from the size line, with none of the chunk sent.
    "chunk size over 64 bits": _START + _CHUNKED + b"ffffffffffffffffffff\r\n",
}
"""
Requests whose end a front end and txfastcgi could place differently (each
smuggling a second request where they can): every one is a 400.
"""


@onEveryFront
class FrontEndSmugglingTests(AttackTestCase):
    """
    A request whose length could be read two ways is a 400, and nothing of
    it reaches PHP: a front end and txfastcgi can never disagree on where it
    ends.
    """

    async def test_ambiguous_lengths_are_a_400_and_nothing_reaches_php(self) -> None:
        for name, raw in AMBIGUOUS_REQUESTS.items():
            answer = await self.send(raw)
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), (name, answer[:100]))
            self.assertNotIn(b"HTTP/1.1 200", answer, name)
        self.assertEqual(self.backend.backends, [], "a request reached the backend")


@onEveryFront
class BodySizeTests(AttackTestCase):
    """
    A body over the limit is a 413 as soon as that is known, without
    waiting for the rest of it, and nothing reaches PHP.
    """

    maxBodySize = 64 * 1024

    async def test_a_declared_length_over_the_limit_is_refused_before_the_body(self) -> None:
        """The client sends only the head; the 413 comes anyway, and the connection closes."""
        head = request(b"/echo.php", method=b"POST", body=b"")
        head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % (self.maxBodySize + 1))
        raw = await self.send(head)
        answer = parseAnswer(raw)
        self.assertEqual(answer.status, 413)
        self.assertEqual(answer.header("Connection"), ["close"])
        self.assertEqual(self.backend.backends, [])

    async def test_a_refused_body_is_never_invited_with_100_continue(self) -> None:
        raw = await self.send(
            b"POST /echo.php HTTP/1.1\r\nHost: attacked.example\r\nExpect: 100-continue\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        self.assertTrue(raw.startswith(b"HTTP/1.1 413 "), raw[:100])
        self.assertNotIn(b"100 Continue", raw)
        self.assertEqual(self.backend.backends, [])

    async def test_a_chunked_body_is_refused_as_it_passes_the_limit(self) -> None:
        """
        The client sends one byte more than the limit and stops, without the
        last chunk: the 413 must come without the rest.
        """
        head = (
            b"POST /echo.php HTTP/1.1\r\nHost: attacked.example\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (4096, b"c" * 4096)
        chunks = chunk * (self.maxBodySize // 4096) + b"1\r\nc\r\n"
        answer = parseAnswer(await self.send(head, chunks))
        self.assertEqual(answer.status, 413)
        self.assertEqual(self.backend.backends, [])

    async def test_a_client_that_sends_its_whole_body_first_still_reads_its_413(self) -> None:
        """
        Like Python's own HTTP client, this one sends the whole body before
        it reads anything.  The proxy reads and drops the rest rather than
        closing on unread data, which would reset the connection and fail
        the client's send before it ever saw the answer.
        """
        body = b"x" * (8 * 1024 * 1024)
        raw = await deferToThread(
            sendWholeBodyThenRead, self.port, request(b"/echo.php", method=b"POST", body=body)
        )
        self.assertEqual(parseAnswer(raw).status, 413)
        self.assertEqual(self.backend.backends, [])

    async def test_a_body_of_exactly_the_limit_reaches_php(self) -> None:
        body = os.urandom(self.maxBodySize)
        answer, (received,) = await self.attack(b"/echo.php", method=b"POST", body=body)
        self.assertEqual(answer.status, 200)
        self.assertEqual(received.stdin, body)

    async def test_form_bodies_are_forwarded_unparsed(self) -> None:
        """
        twisted.web would parse a form body itself, and answer 400 to a
        multipart body it cannot parse; PHP is the one to judge it.
        """
        body = b"this is not a multipart body"
        answer, (received,) = await self.attack(
            b"/echo.php",
            method=b"POST",
            headers=[(b"Content-Type", b"multipart/form-data; boundary=xyz")],
            body=body,
        )
        self.assertEqual(answer.status, 200)
        self.assertEqual(received.stdin, body)


def test_over_http2_a_body_over_the_limit_is_a_413_and_never_reaches_the_core() -> None:
    """
    HTTP/2 (negotiated over TLS when twisted[http2] is installed) goes
    through the same request limits: a declared length over the limit, or
    a body without one that grows past it, gets a 413; a body within it
    reaches the resource.
    """
    served = InMemoryFront("twisted.web", maxBodySize=1000)
    site, clock = served.factory, served.clock
    assert isinstance(site, FastCGISite)
    server = H2Connection(clock)
    server.requestFactory = site.requestFactory  # type: ignore[attr-defined]
    server.site = site  # type: ignore[assignment]
    transport = StringTransport()
    server.makeConnection(transport)
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()

    def post(streamId: int, chunks: list[bytes], length: int | None = None) -> None:
        headers = [(":method", "POST"), (":path", "/"), (":authority", "x"), (":scheme", "https")]
        if length is not None:
            headers.append(("content-length", str(length)))
        client.send_headers(streamId, headers)
        for index, chunk in enumerate(chunks):
            client.send_data(streamId, chunk, end_stream=index == len(chunks) - 1)

    post(1, [b"d" * 1001], length=1001)
    post(3, [b"c" * 600] * 3)
    post(5, [b"fine"], length=4)
    server.dataReceived(client.data_to_send())
    for _ in range(10):
        clock.advance(0)
    statuses = {}
    for event in client.receive_data(transport.value()):
        if isinstance(event, h2.events.ResponseReceived):
            statuses[event.stream_id] = dict(event.headers)[b":status"]
    assert statuses == {1: b"413", 3: b"413", 5: b"200"}
    assert served.core.seen() == [(b"/", b"fine")]
    server.connectionLost(Failure(ConnectionDone()))
