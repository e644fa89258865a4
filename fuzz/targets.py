"""
Fuzz targets: each takes arbitrary bytes, drives one of txfastcgi's parsers
with them, and checks what must hold whatever the bytes are.

A target returns normally when the parser accepted the input or rejected it
with its documented error (L{ProtocolError} for FastCGI, L{MalformedResponse}
for CGI); any other exception, or a broken invariant (an C{AssertionError}),
is a bug.  The same targets run under hypothesis in the test suite
(C{tests/test_security_fuzz.py}) and under atheris for longer runs
(C{fuzz_records.py}, C{fuzz_cgi.py}).

The first byte of the input chooses where to cut the rest into pieces, so
that the incremental parsers are also fed the same bytes split differently
and must agree with themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from txfastcgi._fastcgi.records import (
    MAX_CONTENT_LENGTH,
    AbortRequest,
    BeginRequest,
    ClientConnection,
    EndRequest,
    GetValues,
    GetValuesResult,
    Record,
    RecordDecoder,
    Stderr,
    Stdin,
    Stdout,
    UnknownType,
    encodeParams,
)
from txfastcgi._http.cgi import (
    MAX_HEADER_BLOCK,
    CGIResponseHead,
    ResponseHeadParser,
    parseResponseHead,
)
from txfastcgi.errors import MalformedResponse, ProtocolError

__all__ = [
    "SEEDS",
    "TARGETS",
    "fuzzClientConnection",
    "fuzzParseResponseHead",
    "fuzzRecordDecoder",
    "fuzzResponseHeadParser",
]

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# Written out again on purpose, from RFC 9110 section 7.6.1 and the usual
# extras: an oracle of its own catches a name dropped from txfastcgi._http.cgi's list.
_HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}
# The most an incomplete record can leave buffered: its header, the largest
# content and the largest padding.
_MAX_PENDING = 8 + MAX_CONTENT_LENGTH + 255


def pieces(data: bytes) -> Iterator[bytes]:
    """
    C{data[1:]} cut into pieces whose sizes cycle through a pattern chosen by
    C{data[0]}: one byte at a time, a few bytes, or large pieces.
    """
    if not data:
        return
    seed, rest = data[0], data[1:]
    sizes = [1 + (seed * (index + 7)) % (1 + seed % 97) for index in range(8)]
    offset = index = 0
    while offset < len(rest):
        size = sizes[index % len(sizes)]
        yield rest[offset : offset + size]
        offset += size
        index += 1


def _decodeWhole(data: bytes) -> tuple[list[Record], type[ProtocolError] | None]:
    decoder = RecordDecoder()
    try:
        return decoder.receiveData(data), None
    except ProtocolError as error:
        return [], type(error)


def fuzzRecordDecoder(data: bytes) -> None:
    """
    The record decoder raises nothing but L{ProtocolError}; fed in pieces it
    decodes what it decodes fed at once, or fails the same way; a record it decodes encodes back to
    bytes that decode to that record; and it never buffers more than one
    incomplete record.
    """
    whole, wholeError = _decodeWhole(data[1:])
    decoder = RecordDecoder()
    records: list[Record] = []
    for piece in pieces(data):
        try:
            records += decoder.receiveData(piece)
        except ProtocolError as error:
            # Broken for good: every later call fails the same way.
            try:
                decoder.receiveData(b"")
            except ProtocolError as again:
                assert type(again) is type(error)
            else:
                raise AssertionError("the decoder recovered from a protocol error") from None
            assert wholeError is type(error), (wholeError, error)
            return
        assert decoder.pendingBytes <= _MAX_PENDING, decoder.pendingBytes
    assert wholeError is None, wholeError
    assert records == whole
    for record in records:
        assert _decodeWhole(record.encode()) == ([record], None), record


def fuzzClientConnection(data: bytes) -> None:
    """
    A client connection in the middle of a request, fed anything: it raises
    nothing but L{ProtocolError}, delivers only STDOUT, STDERR and
    END_REQUEST events for its own request, nothing after END_REQUEST, and
    stays broken once broken.
    """
    connection = ClientConnection(requestId=1)
    connection.startRequest([(b"SCRIPT_FILENAME", b"/srv/index.php")], True, b"")
    ended = False
    for piece in pieces(data):
        try:
            events = connection.receiveData(piece)
        except ProtocolError:
            try:
                connection.receiveData(b"")
            except ProtocolError:
                return
            raise AssertionError("the connection recovered from a protocol error") from None
        for event in events:
            assert not ended, f"{event!r} after END_REQUEST"
            assert isinstance(event, (Stdout, Stderr, EndRequest)), event
            assert event.requestId == 1
            if isinstance(event, (Stdout, Stderr)):
                assert event.data, "an empty stream record was delivered"
            else:
                ended = True
    assert connection.requestComplete == ended


def _checkHead(head: CGIResponseHead) -> None:
    assert 200 <= head.code <= 599, head.code
    if head.reason is not None:
        assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", head.reason), head.reason
    lengths = []
    for name, value in head.headers:
        assert _TOKEN.match(name), name
        assert name.lower() != b"status"
        assert name.lower() not in _HOP_BY_HOP, name
        assert b"\r" not in value and b"\n" not in value and b"\x00" not in value, value
        if name.lower() == b"content-length":
            lengths.append(value)
    assert len(lengths) <= 1
    if head.contentLength is not None:
        assert len(lengths) == 1 and int(lengths[0]) == head.contentLength


def fuzzParseResponseHead(data: bytes) -> None:
    """A header block parses into a sane head or raises L{MalformedResponse}."""
    try:
        head = parseResponseHead(data)
    except MalformedResponse:
        return
    _checkHead(head)


def fuzzResponseHeadParser(data: bytes) -> None:
    """
    Script output fed in pieces: nothing but L{MalformedResponse}; never
    more than L{MAX_HEADER_BLOCK} bytes of header block held (plus the up to
    3 bytes that may begin the blank line that ends it); once the
    block is complete, the head and body that parsing the output at once
    gives.
    """
    parser = ResponseHeadParser()
    received = b""
    for piece in pieces(data):
        received += piece
        try:
            parsed = parser.feed(piece)
        except MalformedResponse:
            return
        if parsed is None:
            assert len(received) <= MAX_HEADER_BLOCK + 3, len(received)
            continue
        head, body = parsed
        _checkHead(head)
        assert received.endswith(body)
        whole = ResponseHeadParser().feed(data[1:])
        assert whole is not None and whole[0] == head, (whole, head)
        assert whole[1].startswith(body)
        return


def _seeds() -> dict[str, list[bytes]]:
    """Valid inputs for each target, for a fuzzer to start from."""
    head = b"Status: 201 Created\r\nContent-Type: text/html\r\nSet-Cookie: a=1\r\n"
    head += b"Location: /x\r\nContent-Length: 4\r\nX-Powered-By: PHP/8.2\r\n\r\nbody"
    response = b"".join(
        [
            Stdout(1, head[:30]).encode(),
            Stderr(1, b"PHP Warning: x").encode(),
            Stdout(1, head[30:]).encode(),
            Stdout(1, b"").encode(),
            Stderr(1, b"").encode(),
            EndRequest(1, 0, 0).encode(),
        ]
    )
    management = GetValuesResult(((b"FCGI_MPXS_CONNS", b"0"),)).encode()
    management += GetValues((b"FCGI_MAX_CONNS",)).encode() + UnknownType(20).encode()
    request = BeginRequest(1, flags=1).encode() + encodeParams(1, [(b"A" * 200, b"b" * 300)])
    request += Stdin(1, b"body").encode() + Stdin(1, b"").encode() + AbortRequest(1).encode()
    return {
        "records": [
            bytes([seed]) + data for seed in (0, 1, 200) for data in (response, management, request)
        ],
        "client": [bytes([seed]) + response for seed in (0, 3, 255)],
        "cgi-head": [
            head.split(b"\r\n\r\n")[0],
            head.split(b"\r\n\r\n")[0].replace(b"\r\n", b"\n"),
        ],
        "cgi-parser": [bytes([seed]) + head for seed in (0, 2, 77)],
    }


SEEDS = _seeds()

TARGETS = {
    "records": fuzzRecordDecoder,
    "client": fuzzClientConnection,
    "cgi-head": fuzzParseResponseHead,
    "cgi-parser": fuzzResponseHeadParser,
}
