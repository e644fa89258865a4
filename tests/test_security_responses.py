"""
What a broken or hostile FastCGI backend can, and cannot, make a client see.

The proxy (L{txfastcgi._http.web.FastCGISite} and L{txfastcgi.FastCGIResource}, in
this process) talks to a L{tests.recordingbackend.RecordingServer} on a real
unix socket, whose answers each test scripts byte for byte.  A client reads
the proxy's answers off a real TCP connection, as Python's HTTP client would.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable, Iterator
from functools import partial

import pytest
from twisted.internet import reactor

from tests.fronts import ProxyTestCase, onEveryFront
from tests.recordingbackend import (
    Answer,
    buildAttackSite,
    parseAnswer,
    parseAnswers,
    request,
    waitUntil,
)
from txfastcgi._fastcgi.records import EndRequest, ProtocolStatus, RecordType, Stderr, Stdout
from txfastcgi.testing import FakeBackend, ReceivedRequest, Reply, Responder

OK_HEAD = b"Content-Type: text/plain\r\n\r\n"


@pytest.fixture(scope="module")
def documentRoot() -> Iterator[str]:
    root, _ = buildAttackSite()
    yield root
    shutil.rmtree(os.path.dirname(root), ignore_errors=True)


@pytest.fixture(autouse=True)
def _documentRoot(request: pytest.FixtureRequest, documentRoot: str) -> None:
    request.instance.documentRoot = documentRoot


def record(
    recordType: int, content: bytes, requestId: int = 1, version: int = 1, padding: int = 0
) -> bytes:
    """One record exactly as given, valid or not."""
    header = struct.pack("!BBHHBx", version, recordType, requestId, len(content), padding)
    return header + content + bytes(padding)


def answering(*writes: bytes, close: bool = False, pause: float = 0.0) -> Responder:
    """
    A backend that writes C{writes} as they are, C{pause} seconds apart (so
    that each arrives on its own), then closes if asked.
    """

    def respond(backend: FakeBackend, received: ReceivedRequest) -> None:
        steps: list[Callable[[], None]] = [partial(backend.sendRaw, data) for data in writes]
        if close:
            steps.append(backend.close)
        for index, step in enumerate(steps):
            if pause and index:
                reactor.callLater(pause * index, step)
            else:
                step()

    return respond


def stdout(data: bytes) -> bytes:
    return Stdout(1, data).encode()


def end(protocolStatus: int = ProtocolStatus.REQUEST_COMPLETE) -> bytes:
    return Stdout(1, b"").encode() + EndRequest(1, 0, protocolStatus).encode()


class ResponseTestCase(ProxyTestCase):
    async def get(self, target: bytes = b"/echo.php", **options: object) -> Answer:
        return await self.fetch(target, **options)

    async def assertConnectionNeverReused(self) -> None:
        """
        The connection the last request failed on is closed, and the next
        request goes to a new one and is answered normally.
        """
        failed = self.backend.backends[-1]
        served = len(failed.requests)
        await waitUntil(lambda: failed.closed)
        self.backend.respond = Reply(stdout=OK_HEAD + b"fresh")
        answer = await self.get()
        self.assertEqual((answer.status, answer.body), (200, b"fresh"))
        self.assertIsNot(self.backend.backends[-1], failed)
        self.assertEqual(len(failed.requests), served)


@onEveryFront
class StatusTests(ResponseTestCase):
    async def test_status_header_variants_set_the_status_and_are_not_forwarded(self) -> None:
        for head, code, reason in [
            (b"Status: 404\r\n", 404, "Not Found"),
            (b"Status: 404 Not Found\r\n", 404, "Not Found"),
            (b"Status:404\r\n", 404, "Not Found"),
            (b"Status: 404: x\r\n", 404, "x"),
            (b"status: 201 Made It\r\n", 201, "Made It"),
            (b"Status: 418\r\n", 418, "I'm a teapot"),
        ]:
            self.backend.respond = Reply(stdout=head + OK_HEAD + b"body")
            answer = await self.get()
            self.assertEqual((answer.status, answer.reason, answer.body), (code, reason, b"body"))
            self.assertEqual(answer.header("Status"), [], head)

    async def test_status_and_location_in_either_order(self) -> None:
        for head, code in [
            (b"Status: 301\r\nLocation: /moved\r\n", 301),
            (b"Location: /moved\r\nStatus: 301 Moved Permanently\r\n", 301),
            (b"Location: /moved\r\n", 302),
        ]:
            self.backend.respond = Reply(stdout=head + b"\r\n")
            answer = await self.get()
            self.assertEqual((answer.status, answer.header("Location")), (code, ["/moved"]))

    async def test_an_invalid_status_is_a_502(self) -> None:
        """
        A status that is not a number from 200 to 599 (a 1xx cannot end a
        response: the body would be read as another response), or a reason
        phrase with control characters that could split the status line.
        """
        for value in [
            b"abc",
            b"",
            b"99",
            b"600",
            b"1000",
            b"4040",
            b"-200",
            b"2OO",
            b"100",
            b"101 Switching Protocols",
            b"200 OK\rSet-Cookie: evil=1",
            b"200 OK\x00",
            b"200 OK\x1b[2J",
            b"200 \x0bOK",
        ]:
            smuggled = b"HTTP/1.1 200 OK\r\nSet-Cookie: evil=1\r\nContent-Length: 0\r\n\r\n"
            head = b"Status: %s\r\nContent-Length: %d\r\n\r\n" % (value, len(smuggled))
            self.backend.respond = Reply(stdout=head + smuggled)
            raw = await self.send(request(b"/echo.php"))
            answer = parseAnswer(raw)
            self.assertEqual(answer.status, 502, value)
            self.assertNotIn(b"evil=1", raw, value)
        self.assertIn("invalid Status header", self.logged())


@onEveryFront
class ContentLengthTests(ResponseTestCase):
    """A Content-Length from PHP that disagrees with its body never desynchronises the client."""

    async def test_surplus_body_never_becomes_a_second_response(self) -> None:
        def respond(backend: FakeBackend, received: ReceivedRequest) -> None:
            if received.params[b"REQUEST_URI"] == b"/first":
                smuggled = b"HTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 3\r\n\r\nbad"
                Reply(stdout=b"Content-Length: 5\r\n\r\nhello" + smuggled)(backend, received)
            else:
                Reply(stdout=OK_HEAD + b"second")(backend, received)

        self.backend.respond = respond
        raw = await self.send(request(b"/first", close=False) + request(b"/second"))
        first, second = parseAnswers(raw)
        self.assertEqual((first.status, first.body, first.complete), (200, b"hello", True))
        self.assertEqual((second.status, second.body), (200, b"second"))
        self.assertNotIn(b"X-Smuggled", raw)
        self.assertIn("more body than its Content-Length", self.logged())

    async def test_a_short_body_is_never_presented_as_complete(self) -> None:
        responders: list[Responder] = [
            Reply(stdout=b"Content-Length: 100\r\n\r\n0123456789"),
            answering(stdout(b"Content-Length: 100\r\n\r\n0123456789"), close=True),
        ]
        for respond in responders:
            self.backend.respond = respond
            answer = parseAnswer(await self.send(request(b"/echo.php", close=False)))
            self.assertEqual((answer.status, answer.body), (200, b"0123456789"))
            self.assertFalse(answer.complete)

    async def test_two_content_lengths_from_php_are_a_502(self) -> None:
        for lengths in [(5, 10), (5, 5)]:
            head = b"".join(b"Content-Length: %d\r\n" % length for length in lengths)
            self.backend.respond = Reply(stdout=head + b"\r\nhello")
            answer = await self.get()
            self.assertEqual(answer.status, 502, lengths)
            self.assertNotIn("5", answer.header("Content-Length"))

    async def test_an_invalid_content_length_from_php_is_a_502(self) -> None:
        for value in [b"abc", b"-1", b"+5", b"5, 5", b"0x5"]:
            self.backend.respond = Reply(stdout=b"Content-Length: %s\r\n\r\nhello" % value)
            self.assertEqual((await self.get()).status, 502, value)

    async def test_a_body_where_http_allows_none_never_desynchronises_the_client(self) -> None:
        """
        A body PHP sends with a 204 or a 304, or for a HEAD request, is
        dropped; the next response on the connection is intact.
        """
        for status, method in [(b"204", b"GET"), (b"304", b"GET"), (b"200", b"HEAD")]:
            smuggled = b"HTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 0\r\n\r\n"

            def respond(
                backend: FakeBackend,
                received: ReceivedRequest,
                status: bytes = status,
                smuggled: bytes = smuggled,
            ) -> None:
                if received.params[b"REQUEST_URI"] == b"/first":
                    Reply(stdout=b"Status: %s\r\n\r\n%s" % (status, smuggled))(backend, received)
                else:
                    Reply(stdout=OK_HEAD + b"second")(backend, received)

            self.backend.respond = respond
            raw = await self.send(
                request(b"/first", method=method, close=False) + request(b"/second")
            )
            self.assertNotIn(b"X-Smuggled", raw, status)
            first, second = parseAnswers(raw, methods=[method, b"GET"])
            self.assertEqual((first.body, second.body), (b"", b"second"), status)

    async def test_hop_by_hop_headers_from_php_are_dropped(self) -> None:
        self.backend.respond = Reply(
            stdout=b"Transfer-Encoding: chunked\r\nConnection: keep-alive, X-Secret\r\n"
            b"Keep-Alive: timeout=99\r\nUpgrade: h2c\r\nTrailer: X-Checksum\r\nTE: trailers\r\n"
            b"Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\nplain body, not chunked"
        )
        answer = await self.get()
        self.assertEqual((answer.status, answer.body), (200, b"plain body, not chunked"))
        self.assertTrue(answer.complete)
        for name in ["Keep-Alive", "Upgrade", "Trailer", "TE", "Proxy-Connection"]:
            self.assertEqual(answer.header(name), [], name)
        self.assertEqual(answer.header("Connection"), ["close"])
        self.assertEqual(answer.header("X-Kept"), ["yes"])

    async def test_control_characters_in_header_values_never_split_the_response(self) -> None:
        for line in [b"X-A: a\rSet-Cookie: evil=1", b"X-A: a\x00b"]:
            self.backend.respond = Reply(stdout=line + b"\r\n" + OK_HEAD + b"body")
            raw = await self.send(request(b"/echo.php"))
            answer = parseAnswer(raw)
            self.assertEqual(answer.status, 502, line)
            self.assertNotIn(b"evil=1", raw)


@onEveryFront
class BrokenBackendTests(ResponseTestCase):
    """
    A backend that breaks FastCGI gets its client a 502, or a cut connection
    once the response has started; it is logged, and its connection is
    never used again.
    """

    async def test_protocol_errors_before_the_response_are_a_502(self) -> None:
        cases = {
            "an unknown record type": record(12, b"\x00" * 8),
            "record type 0": record(0, b""),
            "version 2": record(RecordType.STDOUT, OK_HEAD + b"body", version=2),
            "another request id": record(RecordType.STDOUT, OK_HEAD + b"body", requestId=2),
            "a BEGIN_REQUEST": record(RecordType.BEGIN_REQUEST, b"\x00\x01" + bytes(6)),
            "a PARAMS record": record(RecordType.PARAMS, b"\x01\x01ab"),
            "GET_VALUES_RESULT for a request": record(RecordType.GET_VALUES_RESULT, b""),
            "an END_REQUEST of 7 bytes": record(RecordType.END_REQUEST, bytes(7)),
        }
        for name, data in cases.items():
            self.backend.respond = answering(data)
            answer = await self.get()
            self.assertEqual(answer.status, 502, name)
            self.assertIn(b"Bad Gateway", answer.body)
            await self.assertConnectionNeverReused()
        self.assertEqual(self.logged().count("502 for GET /echo.php: "), len(cases))
        self.assertIn("record type 12 is not defined by FastCGI 1.0", self.logged())

    async def test_a_protocol_error_after_the_body_started_cuts_the_client_connection(
        self,
    ) -> None:
        for data in [record(12, b"\x00" * 8), stdout(b"") + stdout(b"more")]:
            self.backend.respond = answering(stdout(OK_HEAD + b"partial"), data, pause=0.05)
            answer = parseAnswer(await self.send(request(b"/echo.php", close=False)))
            self.assertEqual((answer.status, answer.body), (200, b"partial"))
            self.assertFalse(answer.complete)
            await self.assertConnectionNeverReused()

    async def test_output_after_end_request_never_reaches_the_next_request(self) -> None:
        stray = stdout(b"Content-Type: text/plain\r\n\r\nstolen")
        self.backend.respond = answering(stdout(OK_HEAD + b"first"), end(), stray)
        first = await self.get()
        self.assertNotIn(b"stolen", first.body)
        await self.assertConnectionNeverReused()

    async def test_end_request_protocol_status(self) -> None:
        for protocolStatus, code in [
            (ProtocolStatus.CANT_MPX_CONN, 502),
            (ProtocolStatus.OVERLOADED, 503),
            (ProtocolStatus.UNKNOWN_ROLE, 502),
            (99, 502),
        ]:
            self.backend.respond = answering(EndRequest(1, 0, protocolStatus).encode())
            answer = await self.get()
            self.assertEqual(answer.status, code, protocolStatus)
            await self.assertConnectionNeverReused()
        self.assertIn("OVERLOADED", self.logged())

    async def test_a_backend_closing_mid_header_is_a_502(self) -> None:
        for data in [stdout(b"Content-Type: text/pl"), stdout(OK_HEAD)[:5]]:
            self.backend.respond = answering(data, close=True)
            before = len(self.backend.requests)
            answer = await self.get(method=b"POST", body=b"not retried")
            self.assertEqual(answer.status, 502, data)
            self.assertEqual(len(self.backend.requests), before + 1, "retried")
            await self.assertConnectionNeverReused()

    async def test_a_backend_closing_mid_body_cuts_the_client_connection(self) -> None:
        for head in [OK_HEAD, b"Content-Length: 1000\r\n\r\n"]:
            self.backend.respond = answering(stdout(head + b"partial"), close=True, pause=0.05)
            answer = parseAnswer(await self.send(request(b"/echo.php", close=False)))
            self.assertEqual((answer.status, answer.body), (200, b"partial"))
            self.assertFalse(answer.complete, head)
            await self.assertConnectionNeverReused()


@onEveryFront
class HeaderBlockTests(ResponseTestCase):
    """However FastCGI cuts it, the CGI header block is read the same way."""

    head = b"Status: 201 Created\r\nContent-Type: text/plain\r\nX-A: b\r\n\r\n"

    async def assertCreated(self, answer: Answer) -> None:
        self.assertEqual((answer.status, answer.body), (201, b"body"))
        self.assertEqual(answer.header("X-A"), ["b"])
        self.assertEqual(answer.header("Content-Type"), ["text/plain"])

    async def test_a_header_block_in_records_of_one_byte(self) -> None:
        self.backend.respond = Reply(stdout=self.head + b"body", recordSize=1)
        await self.assertCreated(await self.get())

    async def test_a_header_block_cut_inside_its_blank_line(self) -> None:
        for cut in range(1, 4):
            at = len(self.head) - cut
            self.backend.respond = answering(
                stdout(self.head[:at]), stdout(self.head[at:] + b"body"), end()
            )
            await self.assertCreated(await self.get())

    async def test_a_header_block_with_bare_line_feeds(self) -> None:
        self.backend.respond = Reply(stdout=self.head.replace(b"\r\n", b"\n") + b"body")
        await self.assertCreated(await self.get())

    async def test_stderr_between_header_records_is_logged_not_sent(self) -> None:
        self.backend.respond = answering(
            stdout(self.head[:10]),
            Stderr(1, b"PHP Warning: between").encode(),
            stdout(self.head[10:] + b"bo"),
            Stderr(1, b"PHP Notice: in the body").encode(),
            stdout(b"dy"),
            end(),
        )
        await self.assertCreated(await self.get())
        self.assertIn("PHP Warning: between", self.logged())
        self.assertIn("PHP Notice: in the body", self.logged())

    async def test_a_header_block_over_64_kib_is_a_502_that_the_log_explains(self) -> None:
        for output in [
            b"X-Big: " + b"a" * 65536 + b"\r\n\r\nbody",
            b"no blank line, ever " * 100000,
        ]:
            self.backend.respond = Reply(stdout=output)
            answer = await self.get()
            self.assertEqual(answer.status, 502)
            self.assertNotIn(b"aaaa", answer.body)
        self.assertIn("too big header", self.logged())

    async def test_a_header_block_of_64_kib_is_accepted(self) -> None:
        line = b"X-Big: " + b"a" * (65536 - 9) + b"\r\n"
        self.backend.respond = Reply(stdout=line[:-2] + b"\r\n\r\nbody")
        answer = await self.get()
        self.assertEqual((answer.status, answer.body), (200, b"body"))

    async def test_output_without_a_header_block_is_a_502(self) -> None:
        for output in [b"", b"just a body, no headers", b"Bad Header: x\r\n\r\n", b": x\r\n\r\n"]:
            self.backend.respond = Reply(stdout=output)
            self.assertEqual((await self.get()).status, 502, output)


@onEveryFront
class StderrLogTests(ResponseTestCase):
    async def test_stderr_is_logged_with_control_characters_escaped(self) -> None:
        """
        Whatever PHP writes to STDERR cannot forge a log line or drive a
        terminal: every line is prefixed, control characters are escaped.
        """
        self.backend.respond = Reply(
            stdout=OK_HEAD + b"body",
            stderr=b"evil\x1b[31mred\x00\x07\r\n2026-01-01T00:00:00 [critical] forged\rline\n",
        )
        answer = await self.get()
        self.assertEqual(answer.body, b"body")
        logged = self.logged()
        self.assertIn("evil\\x1b[31mred\\x00\\x07", logged)
        for character in "\x1b\x00\x07":
            self.assertNotIn(character, logged)
        forged = [line for line in logged.splitlines() if "forged" in line]
        self.assertEqual(len(forged), 1)
        self.assertIn("PHP stderr for /echo.php", forged[0])
