"""
Tests for L{txfastcgi._fastcgi.records}: the FastCGI 1.0 wire format and the client side
of a connection.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txfastcgi._fastcgi.records import (
    FCGI_HEADER_LEN,
    FCGI_KEEP_CONN,
    MAX_CONTENT_LENGTH,
    AbortRequest,
    BeginRequest,
    ClientConnection,
    ConnectionEvent,
    ConnectionState,
    Data,
    EndRequest,
    GetValues,
    GetValuesResult,
    Params,
    ProtocolStatus,
    Record,
    RecordDecoder,
    RecordType,
    Role,
    Stderr,
    Stdin,
    Stdout,
    UnknownType,
    decodeNameValuePairs,
    encodeNameValuePairs,
    encodeParams,
)
from txfastcgi.errors import (
    MalformedRecord,
    ProtocolError,
    StateError,
    UnexpectedRecord,
    UnsupportedVersion,
)

modest = settings(max_examples=60, deadline=None)

STREAM_TYPES: dict[type[Params | Stdin | Stdout | Stderr | Data], RecordType] = {
    Params: RecordType.PARAMS,
    Stdin: RecordType.STDIN,
    Stdout: RecordType.STDOUT,
    Stderr: RecordType.STDERR,
    Data: RecordType.DATA,
}


def header(
    recordType: int, requestId: int, contentLength: int, paddingLength: int = 0, version: int = 1
) -> bytes:
    """A record header built independently of the code under test."""
    return struct.pack("!BBHHBB", version, recordType, requestId, contentLength, paddingLength, 0)


def splitRecords(wire: bytes) -> list[tuple[int, int, bytes, bytes]]:
    """
    Parse C{wire} naively into (type, requestId, content, padding) tuples,
    checking that it is made of whole records.
    """
    records = []
    offset = 0
    while offset < len(wire):
        version, recordType, requestId, contentLength, paddingLength, _ = struct.unpack_from(
            "!BBHHBB", wire, offset
        )
        assert version == 1
        contentStart = offset + FCGI_HEADER_LEN
        paddingStart = contentStart + contentLength
        offset = paddingStart + paddingLength
        assert offset <= len(wire)
        records.append(
            (recordType, requestId, wire[contentStart:paddingStart], wire[paddingStart:offset])
        )
    return records


def patterned(length: int, seed: int = 0) -> bytes:
    """Cheap non-repeating-looking test data of the given length."""
    block = bytes((seed + i * 7) % 256 for i in range(251))
    return (block * (length // 251 + 1))[:length]


requestIds = st.integers(0, 0xFFFF)
smallBytes = st.binary(max_size=300)
pairs = st.lists(st.tuples(st.binary(max_size=200), st.binary(max_size=200)), max_size=5)

streamRecords = st.one_of(
    *(st.builds(recordClass, requestIds, smallBytes) for recordClass in STREAM_TYPES)
)
records: st.SearchStrategy[Record] = st.one_of(
    st.builds(BeginRequest, requestIds, st.integers(0, 0xFFFF), st.integers(0, 0xFF)),
    st.builds(AbortRequest, requestIds),
    st.builds(EndRequest, requestIds, st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFF)),
    streamRecords,
    st.builds(GetValues, st.lists(st.binary(max_size=200), max_size=5).map(tuple)),
    st.builds(GetValuesResult, pairs.map(tuple)),
    st.builds(UnknownType, st.integers(0, 0xFF)),
)


# Encoding


def test_begin_request_has_the_layout_of_the_specification() -> None:
    wire = BeginRequest(0x0102, Role.RESPONDER, FCGI_KEEP_CONN).encode()
    assert wire == header(RecordType.BEGIN_REQUEST, 0x0102, 8) + bytes([0, 1, 1, 0, 0, 0, 0, 0])


def test_begin_request_defaults_to_a_responder_that_closes_the_connection() -> None:
    request = BeginRequest(1)
    assert request.role == Role.RESPONDER
    assert not request.keepConnection
    assert BeginRequest(1, flags=FCGI_KEEP_CONN).keepConnection


def test_end_request_has_the_layout_of_the_specification() -> None:
    wire = EndRequest(3, 0x01020304, ProtocolStatus.OVERLOADED).encode()
    assert wire == header(RecordType.END_REQUEST, 3, 8) + bytes([1, 2, 3, 4, 2, 0, 0, 0])


def test_abort_request_is_a_bare_header() -> None:
    assert AbortRequest(9).encode() == header(RecordType.ABORT_REQUEST, 9, 0)


def test_unknown_type_has_the_layout_of_the_specification() -> None:
    wire = UnknownType(42).encode()
    assert wire == header(RecordType.UNKNOWN_TYPE, 0, 8) + bytes([42, 0, 0, 0, 0, 0, 0, 0])


def test_a_stream_record_is_padded_with_zeros_to_a_multiple_of_eight() -> None:
    assert Stdout(1, b"abc").encode() == header(RecordType.STDOUT, 1, 3, 5) + b"abc" + bytes(5)


def test_a_stream_record_without_data_is_the_end_of_stream_record() -> None:
    assert Stdin(1, b"").encode() == header(RecordType.STDIN, 1, 0)


def test_get_values_asks_for_names_with_empty_values() -> None:
    wire = GetValues((b"FCGI_MPXS_CONNS",)).encode()
    assert splitRecords(wire) == [
        (RecordType.GET_VALUES, 0, b"\x0f\x00FCGI_MPXS_CONNS", bytes(7)),
    ]


def test_a_management_record_too_long_for_one_record_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        GetValuesResult(((b"name", b"v" * MAX_CONTENT_LENGTH),)).encode()


# Name-value pairs

PAIR_LENGTHS = [0, 127, 128, 65535, 65536]


@pytest.mark.parametrize("nameLength", PAIR_LENGTHS)
@pytest.mark.parametrize("valueLength", PAIR_LENGTHS)
def test_name_value_pairs_of_any_length_round_trip(nameLength: int, valueLength: int) -> None:
    pair = (patterned(nameLength, 1), patterned(valueLength, 2))
    encoded = encodeNameValuePairs([pair])
    prefixLength = (1 if nameLength < 128 else 4) + (1 if valueLength < 128 else 4)
    assert len(encoded) == prefixLength + nameLength + valueLength
    assert decodeNameValuePairs(encoded) == [pair]


def test_lengths_below_128_take_one_byte() -> None:
    assert encodeNameValuePairs([(b"N" * 127, b"")]) == b"\x7f\x00" + b"N" * 127


def test_lengths_of_128_and_more_take_four_bytes_with_the_high_bit_set() -> None:
    encoded = encodeNameValuePairs([(b"", b"V" * 65536)])
    assert encoded[:5] == b"\x00\x80\x01\x00\x00"


def test_a_length_of_2_to_the_31_cannot_be_encoded() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return 2**31

    with pytest.raises(ValueError):
        encodeNameValuePairs([(Huge(), b"")])


@modest
@given(pairs)
def test_name_value_pairs_round_trip(somePairs: list[tuple[bytes, bytes]]) -> None:
    assert decodeNameValuePairs(encodeNameValuePairs(somePairs)) == somePairs


@pytest.mark.parametrize(
    "body",
    [
        b"\x05\x00abc",  # name shorter than its length
        b"\x01\x05ab",  # value shorter than its length
        b"\x80\x00",  # four-byte name length cut short
        b"\x01",  # value length missing
        b"\x00\x00\x80\x00\x00\x01",  # four-byte value length overruns by one byte
    ],
)
def test_a_name_value_pair_overrunning_its_body_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedRecord):
        decodeNameValuePairs(body)


def test_a_params_value_of_65536_bytes_spans_two_records() -> None:
    value = patterned(65536)
    wire = encodeParams(1, [(b"BIG", value)])
    parsed = splitRecords(wire)
    assert [len(content) > 0 for _, _, content, _ in parsed] == [True, True, False]
    assert {(recordType, requestId) for recordType, requestId, _, _ in parsed} == {
        (RecordType.PARAMS, 1)
    }
    stream = b"".join(content for _, _, content, _ in parsed)
    assert decodeNameValuePairs(stream) == [(b"BIG", value)]


def test_params_without_pairs_is_only_the_terminator() -> None:
    assert encodeParams(5, []) == header(RecordType.PARAMS, 5, 0)


# Stream cutting

CUT_LENGTHS = [1, 7, 8, 65527, 65528, 65529, 65535, 65536, 131056, 131057, 200000]


def assertWellCut(wire: bytes, recordType: int, requestId: int, data: bytes) -> None:
    """
    C{wire} is C{data} as records of C{recordType} of at most 65535 content
    bytes each, zero-padded to multiples of 8, with no end-of-stream record.
    """
    parsed = splitRecords(wire)
    for parsedType, parsedId, content, padding in parsed:
        assert (parsedType, parsedId) == (recordType, requestId)
        assert 0 < len(content) <= MAX_CONTENT_LENGTH
        assert (FCGI_HEADER_LEN + len(content) + len(padding)) % 8 == 0
        assert padding == bytes(len(padding))
    assert b"".join(content for _, _, content, _ in parsed) == data


@pytest.mark.parametrize("length", CUT_LENGTHS)
@pytest.mark.parametrize("recordClass", STREAM_TYPES)
def test_long_stream_data_is_cut_into_padded_records(recordClass: type[Stdin], length: int) -> None:
    data = patterned(length)
    assertWellCut(recordClass(7, data).encode(), STREAM_TYPES[recordClass], 7, data)


@modest
@given(
    st.sampled_from(list(STREAM_TYPES)), requestIds, st.integers(1, 3 * 65536), st.integers(0, 255)
)
def test_any_stream_data_is_cut_into_padded_records(
    recordClass: type[Stdin], requestId: int, length: int, seed: int
) -> None:
    data = patterned(length, seed)
    wire = recordClass(requestId, data).encode()
    assertWellCut(wire, STREAM_TYPES[recordClass], requestId, data)


def test_long_stream_data_decodes_to_several_events_with_the_same_data() -> None:
    data = patterned(150000)
    events = RecordDecoder().receiveData(Stdout(1, data).encode())
    assert len(events) == 3
    assert all(isinstance(event, Stdout) for event in events)
    assert b"".join(event.data for event in events if isinstance(event, Stdout)) == data


# Decoding


@modest
@given(records)
def test_every_record_round_trips(record: Record) -> None:
    assert RecordDecoder().receiveData(record.encode()) == [record]


@modest
@given(st.lists(records, max_size=8), st.data())
def test_data_split_anywhere_gives_the_same_events(
    someRecords: list[Record], data: st.DataObject
) -> None:
    wire = b"".join(record.encode() for record in someRecords)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    decoder = RecordDecoder()
    events: list[Record] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        events += decoder.receiveData(wire[start:end])
    assert events == someRecords
    assert decoder.pendingBytes == 0


def test_data_fed_one_byte_at_a_time_gives_the_same_events() -> None:
    someRecords: list[Record] = [
        BeginRequest(1, flags=1),
        Params(1, b"\x01\x01ab"),
        Params(1, b""),
        Stdin(1, b""),
    ]
    wire = b"".join(record.encode() for record in someRecords)
    decoder = RecordDecoder()
    events = [event for i in range(len(wire)) for event in decoder.receiveData(wire[i : i + 1])]
    assert events == someRecords


def test_a_partial_record_is_kept_until_it_completes() -> None:
    wire = Stdout(1, b"hello").encode()
    decoder = RecordDecoder()
    assert decoder.receiveData(wire[:-1]) == []
    assert decoder.pendingBytes == len(wire) - 1
    assert decoder.receiveData(wire[-1:]) == [Stdout(1, b"hello")]


def test_reserved_bytes_are_ignored() -> None:
    """php-fpm puts garbage in the reserved bytes of END_REQUEST."""
    wire = struct.pack("!BBHHBB", 1, RecordType.END_REQUEST, 1, 8, 0, 0xAA)
    wire += struct.pack("!LB", 255, 0) + b"\xde\xad\xbe"
    assert RecordDecoder().receiveData(wire) == [EndRequest(1, 255, 0)]


def test_decoded_values_compare_equal_to_the_enumerations() -> None:
    wire = (
        BeginRequest(1, Role.FILTER).encode() + EndRequest(1, 0, ProtocolStatus.OVERLOADED).encode()
    )
    begin, end = RecordDecoder().receiveData(wire)
    assert isinstance(begin, BeginRequest)
    assert begin.role == Role.FILTER
    assert isinstance(end, EndRequest)
    assert end.protocolStatus == ProtocolStatus.OVERLOADED


# Malformed input

MALFORMED = [
    pytest.param(header(RecordType.STDOUT, 1, 0, version=2), UnsupportedVersion, id="version 2"),
    pytest.param(header(RecordType.STDOUT, 1, 0, version=0), UnsupportedVersion, id="version 0"),
    pytest.param(
        header(RecordType.END_REQUEST, 1, 7, 1) + bytes(8), MalformedRecord, id="END_REQUEST of 7"
    ),
    pytest.param(
        header(RecordType.BEGIN_REQUEST, 1, 9, 7) + bytes(16),
        MalformedRecord,
        id="BEGIN_REQUEST of 9",
    ),
    pytest.param(
        header(RecordType.UNKNOWN_TYPE, 0, 16) + bytes(16), MalformedRecord, id="UNKNOWN_TYPE of 16"
    ),
    pytest.param(
        header(RecordType.ABORT_REQUEST, 1, 8) + bytes(8), MalformedRecord, id="ABORT_REQUEST of 8"
    ),
    pytest.param(
        header(RecordType.GET_VALUES_RESULT, 0, 8) + b"\x04\x09nameval",
        MalformedRecord,
        id="pair overrunning the body",
    ),
    pytest.param(header(12, 1, 0), UnexpectedRecord, id="type 12"),
    pytest.param(header(0, 1, 0), UnexpectedRecord, id="type 0"),
    pytest.param(
        header(RecordType.GET_VALUES, 1, 0), UnexpectedRecord, id="management record for request 1"
    ),
]


@pytest.mark.parametrize(("wire", "exceptionType"), MALFORMED)
def test_malformed_input_raises_its_specific_error(
    wire: bytes, exceptionType: type[ProtocolError]
) -> None:
    decoder = RecordDecoder()
    assert decoder.receiveData(Stdout(1, b"fine").encode()) == [Stdout(1, b"fine")]
    with pytest.raises(exceptionType):
        decoder.receiveData(wire)


@pytest.mark.parametrize(("wire", "exceptionType"), MALFORMED)
def test_the_decoder_stays_dead_after_an_error(
    wire: bytes, exceptionType: type[ProtocolError]
) -> None:
    decoder = RecordDecoder()
    with pytest.raises(exceptionType) as first:
        decoder.receiveData(wire)
    for later in [Stdout(1, b"fine").encode(), b""]:
        with pytest.raises(exceptionType) as again:
            decoder.receiveData(later)
        assert again.value is first.value


def test_every_decoding_error_is_a_protocol_error() -> None:
    for exceptionType in [UnsupportedVersion, MalformedRecord, UnexpectedRecord]:
        assert issubclass(exceptionType, ProtocolError)


def test_a_bad_header_fails_before_its_content_arrives() -> None:
    with pytest.raises(UnsupportedVersion):
        RecordDecoder().receiveData(header(RecordType.STDOUT, 1, 65535, version=2))


# ClientConnection: sending


def decodeAll(wire: bytes) -> list[Record]:
    decoder = RecordDecoder()
    events = decoder.receiveData(wire)
    assert decoder.pendingBytes == 0
    return events


def test_the_default_request_id_is_1() -> None:
    events = decodeAll(ClientConnection().startRequest([], keepConnection=False, body=b""))
    assert {event.requestId for event in events if isinstance(event, (BeginRequest, Params))} == {1}


@pytest.mark.parametrize("requestId", [0, 65536])
def test_a_connection_needs_a_request_id_between_1_and_65535(requestId: int) -> None:
    with pytest.raises(ValueError):
        ClientConnection(requestId)


@pytest.mark.parametrize("keepConnection", [True, False])
def test_a_request_with_a_body_is_one_bytes_object_with_both_streams_ended(
    keepConnection: bool,
) -> None:
    params = [(b"SCRIPT_FILENAME", b"/srv/index.php"), (b"REQUEST_METHOD", b"POST")]
    body = patterned(70000)
    connection = ClientConnection(3)
    events = decodeAll(connection.startRequest(params, keepConnection, body))
    flags = FCGI_KEEP_CONN if keepConnection else 0
    assert events[0] == BeginRequest(3, Role.RESPONDER, flags)
    kinds = [type(event) for event in events[1:]]
    assert kinds == [Params, Params, Stdin, Stdin, Stdin]
    assert events[2] == Params(3, b"")
    assert events[-1] == Stdin(3, b"")
    assert isinstance(events[1], Params)
    assert decodeNameValuePairs(events[1].data) == params
    assert b"".join(event.data for event in events if isinstance(event, Stdin)) == body


def test_a_request_with_an_empty_body_ends_stdin_at_once() -> None:
    events = decodeAll(ClientConnection().startRequest([], keepConnection=True, body=b""))
    assert events == [
        BeginRequest(1, Role.RESPONDER, FCGI_KEEP_CONN),
        Params(1, b""),
        Stdin(1, b""),
    ]


def test_a_streamed_body_is_sent_by_sendBody_and_ended_by_endBody() -> None:
    connection = ClientConnection()
    events = decodeAll(connection.startRequest([(b"A", b"B")], keepConnection=True))
    assert [type(event) for event in events] == [BeginRequest, Params, Params]
    assert decodeAll(connection.sendBody(b"part one")) == [Stdin(1, b"part one")]
    assert connection.sendBody(b"") == b""
    assert decodeAll(connection.endBody()) == [Stdin(1, b"")]


def test_a_99KB_body_that_looks_like_records_is_only_stdin_data() -> None:
    """
    Records smuggled into a body must come back as body bytes, wherever the
    body is cut into records.
    """
    fake = BeginRequest(1, flags=FCGI_KEEP_CONN).encode() + encodeParams(
        1, [(b"SCRIPT_FILENAME", b"/tmp/evil.php")]
    )
    body = patterned(65528) + fake + patterned(7, 3) + fake
    body += patterned(99 * 1024 - len(body), 5)

    wholeRequest = decodeAll(ClientConnection().startRequest([], keepConnection=True, body=body))
    streamed = ClientConnection()
    wire = streamed.startRequest([], keepConnection=True)
    wire += streamed.sendBody(body[:70000]) + streamed.sendBody(body[70000:]) + streamed.endBody()

    for events in [wholeRequest, decodeAll(wire)]:
        assert [type(event) for event in events[:3]] == [BeginRequest, Params, Stdin]
        assert all(isinstance(event, Stdin) for event in events[2:])
        assert b"".join(event.data for event in events if isinstance(event, Stdin)) == body


def test_sendBody_endBody_and_reset_before_startRequest_are_runtime_errors() -> None:
    connection = ClientConnection()
    with pytest.raises(RuntimeError):
        connection.sendBody(b"x")
    with pytest.raises(RuntimeError):
        connection.endBody()
    with pytest.raises(RuntimeError):
        connection.reset()


def test_startRequest_twice_is_a_runtime_error() -> None:
    connection = ClientConnection()
    connection.startRequest([], keepConnection=True, body=b"")
    with pytest.raises(RuntimeError):
        connection.startRequest([], keepConnection=True, body=b"")


def test_sendBody_after_endBody_is_a_runtime_error() -> None:
    connection = ClientConnection()
    connection.startRequest([], keepConnection=True)
    connection.endBody()
    with pytest.raises(RuntimeError):
        connection.sendBody(b"late")
    with pytest.raises(RuntimeError):
        connection.endBody()


def test_sendBody_after_a_request_with_a_body_is_a_runtime_error() -> None:
    connection = ClientConnection()
    connection.startRequest([], keepConnection=True, body=b"all of it")
    with pytest.raises(RuntimeError):
        connection.sendBody(b"more")


def test_reset_before_END_REQUEST_is_a_runtime_error() -> None:
    connection = ClientConnection()
    connection.startRequest([], keepConnection=True, body=b"")
    connection.receiveData(Stdout(1, b"partial").encode())
    with pytest.raises(RuntimeError):
        connection.reset()


# ClientConnection: receiving

END = EndRequest(1, 0, ProtocolStatus.REQUEST_COMPLETE)


def startedConnection(requestId: int = 1) -> ClientConnection:
    connection = ClientConnection(requestId)
    connection.startRequest([(b"A", b"B")], keepConnection=True, body=b"")
    return connection


def test_a_response_gives_stdout_stderr_and_end_request_without_terminators() -> None:
    connection = startedConnection()
    response: list[Record] = [
        Stdout(1, b"Status: 200\r\n\r\n"),
        Stderr(1, b"PHP Notice"),
        Stdout(1, b"body"),
        Stderr(1, b""),
        Stdout(1, b""),
        END,
    ]
    wire = b"".join(record.encode() for record in response)
    assert not connection.requestComplete
    events = connection.receiveData(wire)
    assert events == [
        Stdout(1, b"Status: 200\r\n\r\n"),
        Stderr(1, b"PHP Notice"),
        Stdout(1, b"body"),
        END,
    ]
    assert connection.requestComplete


def test_a_large_response_in_64KiB_pieces_arrives_whole() -> None:
    data = patterned(10 * 1024 * 1024)
    wire = Stdout(1, data).encode() + Stdout(1, b"").encode() + END.encode()
    connection = startedConnection()
    events: list[Stdout | Stderr | EndRequest] = []
    for start in range(0, len(wire), 65536):
        events += connection.receiveData(wire[start : start + 65536])
    assert events[-1] == END
    assert b"".join(event.data for event in events if isinstance(event, Stdout)) == data


def test_a_connection_is_reusable_after_reset() -> None:
    connection = startedConnection()
    connection.receiveData(Stdout(1, b"first").encode() + END.encode())
    connection.reset()
    assert not connection.requestComplete
    events = decodeAll(connection.startRequest([], keepConnection=True, body=b""))
    assert events[0] == BeginRequest(1, Role.RESPONDER, FCGI_KEEP_CONN)
    assert connection.receiveData(Stdout(1, b"second").encode() + END.encode()) == [
        Stdout(1, b"second"),
        END,
    ]


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(Stdout(2, b"x").encode(), id="STDOUT for another request"),
        pytest.param(EndRequest(0, 0, 0).encode(), id="END_REQUEST for request 0"),
        pytest.param(Stdin(1, b"x").encode(), id="STDIN"),
        pytest.param(BeginRequest(1).encode(), id="BEGIN_REQUEST"),
        pytest.param(
            GetValuesResult(((b"FCGI_MPXS_CONNS", b"0"),)).encode(), id="unasked GET_VALUES_RESULT"
        ),
        pytest.param(UnknownType(99).encode(), id="UNKNOWN_TYPE"),
        pytest.param(Stdout(1, b"").encode() + Stdout(1, b"x").encode(), id="STDOUT after its end"),
        pytest.param(Stderr(1, b"").encode() + Stderr(1, b"x").encode(), id="STDERR after its end"),
        pytest.param(END.encode() + Stdout(1, b"x").encode(), id="record after END_REQUEST"),
        pytest.param(END.encode() + END.encode(), id="END_REQUEST twice"),
        pytest.param(END.encode() + b"\x01", id="partial record after END_REQUEST"),
    ],
)
def test_a_record_the_client_must_not_receive_is_unexpected(wire: bytes) -> None:
    connection = startedConnection()
    with pytest.raises(UnexpectedRecord):
        connection.receiveData(wire)


def test_a_record_after_END_REQUEST_in_a_later_call_is_unexpected() -> None:
    connection = startedConnection()
    connection.receiveData(END.encode())
    with pytest.raises(UnexpectedRecord):
        connection.receiveData(Stdout(1, b"late").encode())


def test_data_before_startRequest_is_unexpected() -> None:
    with pytest.raises(UnexpectedRecord):
        ClientConnection().receiveData(Stdout(1, b"early").encode())


def test_the_connection_stays_dead_after_an_error() -> None:
    connection = startedConnection()
    with pytest.raises(UnexpectedRecord) as first:
        connection.receiveData(Stdout(2, b"wrong id").encode())
    with pytest.raises(UnexpectedRecord) as again:
        connection.receiveData(Stdout(1, b"right id").encode() + END.encode())
    assert again.value is first.value


def test_decoding_errors_reach_the_connection() -> None:
    connection = startedConnection()
    with pytest.raises(UnsupportedVersion):
        connection.receiveData(header(RecordType.STDOUT, 1, 0, version=2))


# ClientConnection: every state against every event


@dataclass(frozen=True)
class Meaning:
    """
    What a state means, written apart from the implementation's table: the
    phase of the request, whether the body is still being sent, which
    response streams have ended.
    """

    phase: str  # idle, awaiting (no response byte yet), receiving, ended, error
    bodyOpen: bool = False
    endedStreams: frozenset[str] = frozenset()


S = ConnectionState
E = ConnectionEvent
BOTH = frozenset(("STDOUT", "STDERR"))
MEANINGS: dict[ConnectionState, Meaning] = {
    S.IDLE: Meaning("idle"),
    S.SENDING_BODY: Meaning("awaiting", bodyOpen=True),
    S.SENDING_BODY_RECEIVING: Meaning("receiving", bodyOpen=True),
    S.SENDING_BODY_STDOUT_ENDED: Meaning("receiving", True, frozenset(("STDOUT",))),
    S.SENDING_BODY_STDERR_ENDED: Meaning("receiving", True, frozenset(("STDERR",))),
    S.SENDING_BODY_STREAMS_ENDED: Meaning("receiving", True, BOTH),
    S.AWAITING_RESPONSE: Meaning("awaiting"),
    S.RECEIVING: Meaning("receiving"),
    S.STDOUT_ENDED: Meaning("receiving", endedStreams=frozenset(("STDOUT",))),
    S.STDERR_ENDED: Meaning("receiving", endedStreams=frozenset(("STDERR",))),
    S.STREAMS_ENDED: Meaning("receiving", endedStreams=BOTH),
    S.ENDED: Meaning("ended"),
    S.ENDED_EARLY: Meaning("ended", bodyOpen=True),
    S.ERROR: Meaning("error"),
}
STATES_MEANING = {meaning: state for state, meaning in MEANINGS.items()}
STREAM_OF = {
    E.STDOUT: "STDOUT",
    E.STDOUT_END: "STDOUT",
    E.STDERR: "STDERR",
    E.STDERR_END: "STDERR",
}


def expectedMove(meaning: Meaning, event: ConnectionEvent) -> Meaning | type[Exception]:
    """
    The FastCGI client's rules: one request at a time; the body, if not
    given whole, is sent until endBody(); the peer may answer before that,
    with STDOUT, STDERR (no data on a stream after its end) and END_REQUEST;
    a connection carries the next request only if the whole body was sent.
    """
    if event in (E.START, E.START_WITH_BODY):
        if meaning.phase != "idle":
            return StateError
        return Meaning("awaiting", bodyOpen=event is E.START)
    if event in (E.SEND_BODY, E.END_BODY):
        if not meaning.bodyOpen or meaning.phase not in ("awaiting", "receiving"):
            return StateError
        return replace(meaning, bodyOpen=event is E.SEND_BODY)
    if event is E.RESET:
        if meaning.phase != "ended" or meaning.bodyOpen:
            return StateError
        return Meaning("idle")
    # The peer's events: any byte means the response has started.
    if meaning.phase not in ("awaiting", "receiving"):
        return UnexpectedRecord
    meaning = replace(meaning, phase="receiving")
    if event is E.END_REQUEST:
        return Meaning("ended", bodyOpen=meaning.bodyOpen)
    if event in (E.STDOUT_END, E.STDERR_END):
        return replace(meaning, endedStreams=meaning.endedStreams | {STREAM_OF[event]})
    if event in (E.STDOUT, E.STDERR) and STREAM_OF[event] in meaning.endedStreams:
        return UnexpectedRecord
    return meaning


# Each event through the public API.
DO: dict[ConnectionEvent, Callable[[ClientConnection], object]] = {
    E.START: lambda connection: connection.startRequest([(b"A", b"B")], keepConnection=True),
    E.START_WITH_BODY: lambda connection: connection.startRequest([], True, body=b"all"),
    E.SEND_BODY: lambda connection: connection.sendBody(b"more"),
    E.END_BODY: lambda connection: connection.endBody(),
    E.RESET: lambda connection: connection.reset(),
    E.BYTES: lambda connection: connection.receiveData(Stdout(1, b"partial").encode()[:5]),
    E.STDOUT: lambda connection: connection.receiveData(Stdout(1, b"out").encode()),
    E.STDERR: lambda connection: connection.receiveData(Stderr(1, b"err").encode()),
    E.STDOUT_END: lambda connection: connection.receiveData(Stdout(1, b"").encode()),
    E.STDERR_END: lambda connection: connection.receiveData(Stderr(1, b"").encode()),
    E.END_REQUEST: lambda connection: connection.receiveData(END.encode()),
}
# A way into each state from a new connection.
PATHS: dict[ConnectionState, list[ConnectionEvent]] = {
    S.IDLE: [],
    S.SENDING_BODY: [E.START],
    S.SENDING_BODY_RECEIVING: [E.START, E.STDERR],
    S.SENDING_BODY_STDOUT_ENDED: [E.START, E.STDOUT, E.STDOUT_END],
    S.SENDING_BODY_STDERR_ENDED: [E.START, E.STDERR_END],
    S.SENDING_BODY_STREAMS_ENDED: [E.START, E.STDERR_END, E.STDOUT_END],
    S.AWAITING_RESPONSE: [E.START, E.SEND_BODY, E.END_BODY],
    S.RECEIVING: [E.START_WITH_BODY, E.STDOUT],
    S.STDOUT_ENDED: [E.START_WITH_BODY, E.STDOUT_END],
    S.STDERR_ENDED: [E.START, E.STDERR, E.STDERR_END, E.END_BODY],
    S.STREAMS_ENDED: [E.START_WITH_BODY, E.STDOUT_END, E.STDERR_END],
    S.ENDED: [E.START_WITH_BODY, E.STDOUT, E.END_REQUEST],
    S.ENDED_EARLY: [E.START, E.STDOUT, E.END_REQUEST],
    S.ERROR: [E.BYTES],
}


def connectionIn(state: ConnectionState) -> ClientConnection:
    connection = ClientConnection()
    for event in PATHS[state]:
        try:
            DO[event](connection)
        except UnexpectedRecord:
            assert state is S.ERROR
    assert connection.state is state
    return connection


def test_the_meanings_name_every_state_once() -> None:
    assert set(MEANINGS) == set(ConnectionState)
    assert len(STATES_MEANING) == len(MEANINGS)


@pytest.mark.parametrize("event", list(ConnectionEvent), ids=lambda event: event.name)
@pytest.mark.parametrize("state", list(ConnectionState), ids=lambda state: state.name)
def test_every_event_in_every_state(state: ConnectionState, event: ConnectionEvent) -> None:
    connection = connectionIn(state)
    expected = expectedMove(MEANINGS[state], event)

    if isinstance(expected, Meaning):
        DO[event](connection)
        assert connection.state is STATES_MEANING[expected]
    else:
        with pytest.raises(expected):
            DO[event](connection)
        # The caller's mistakes change nothing; the peer's are the end.
        assert connection.state is (S.ERROR if expected is UnexpectedRecord else state)
    meaning = MEANINGS[connection.state]
    assert connection.requestComplete is (meaning.phase == "ended")
    if meaning.phase != "error":
        assert connection.responseStarted is (meaning.phase in ("receiving", "ended"))


def test_misuse_by_the_caller_is_a_runtime_error_and_not_a_protocol_error() -> None:
    assert issubclass(StateError, RuntimeError)
    assert not issubclass(StateError, ProtocolError)
