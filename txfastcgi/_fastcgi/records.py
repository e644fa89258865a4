"""
A sans-IO codec for FastCGI 1.0 records, and the client side of a connection.

Nothing here does I/O or imports Twisted: encoders return the bytes to write and
decoders take whatever bytes arrived and return events, in the style of h11.
That keeps the wire format testable on its own and the Twisted layer thin.

The format is described in the FastCGI Specification, Open Market, 1996.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar, Union

from txfastcgi._compat import SLOTS
from txfastcgi.errors import (
    MalformedRecord,
    ProtocolError,
    StateError,
    UnexpectedRecord,
    UnsupportedVersion,
)

if TYPE_CHECKING:
    # Python 3.9's typing has no TypeAlias; annotations are never evaluated.
    from typing_extensions import TypeAlias

FCGI_VERSION_1 = 1
FCGI_HEADER_LEN = 8
MAX_CONTENT_LENGTH = 65535
NULL_REQUEST_ID = 0
FCGI_KEEP_CONN = 1

# The largest multiple of 8 that fits in a record: a long stream cut into chunks
# of this size needs no padding except in its last record.  php-fpm cuts its
# STDOUT the same way.
_STREAM_CHUNK_LENGTH = 65528

_MAX_NAME_VALUE_LENGTH = 0x7FFFFFFF
_LONG_LENGTH_FLAG = 0x80000000

_HEADER_FORMAT = "!BBHHBx"  # version, type, requestId, contentLength, paddingLength
_HEADER = struct.Struct(_HEADER_FORMAT)
_BEGIN_REQUEST_BODY = struct.Struct("!HB5x")  # role, flags
_END_REQUEST_BODY = struct.Struct("!LB3x")  # appStatus, protocolStatus
_UNKNOWN_TYPE_BODY = struct.Struct("!B7x")  # type
# Fixed-size records packed header and body in one call: they are sent for
# every request, and their 8-byte bodies need no padding.
_BEGIN_REQUEST_RECORD = struct.Struct(_HEADER_FORMAT + _BEGIN_REQUEST_BODY.format[1:])
_END_REQUEST_RECORD = struct.Struct(_HEADER_FORMAT + _END_REQUEST_BODY.format[1:])
_UNKNOWN_TYPE_RECORD = struct.Struct(_HEADER_FORMAT + _UNKNOWN_TYPE_BODY.format[1:])
_LONG_LENGTH = struct.Struct("!L")
_PADDING = bytes(7)


class RecordType(IntEnum):
    BEGIN_REQUEST = 1
    ABORT_REQUEST = 2
    END_REQUEST = 3
    PARAMS = 4
    STDIN = 5
    STDOUT = 6
    STDERR = 7
    DATA = 8
    GET_VALUES = 9
    GET_VALUES_RESULT = 10
    UNKNOWN_TYPE = 11


class Role(IntEnum):
    RESPONDER = 1
    AUTHORIZER = 2
    FILTER = 3


class ProtocolStatus(IntEnum):
    REQUEST_COMPLETE = 0
    CANT_MPX_CONN = 1
    OVERLOADED = 2
    UNKNOWN_ROLE = 3


def _encodeRecord(recordType: int, requestId: int, content: bytes) -> bytes:
    """
    Frame C{content} as one record, padded to a multiple of 8 bytes as the
    specification recommends, except past 65528 bytes: php-fpm refuses a
    record whose content and padding together pass 65535 bytes.  The caller
    keeps C{content} within L{MAX_CONTENT_LENGTH}.
    """
    paddingLength = -len(content) % 8 if len(content) <= _STREAM_CHUNK_LENGTH else 0
    header = _HEADER.pack(FCGI_VERSION_1, recordType, requestId, len(content), paddingLength)
    return b"".join((header, content, _PADDING[:paddingLength]))


@lru_cache(maxsize=64)
def _endOfStream(recordType: int, requestId: int) -> bytes:
    """The empty record that ends a stream: the same bytes for every request."""
    return _encodeRecord(recordType, requestId, b"")


def _encodeStream(recordType: int, requestId: int, data: bytes) -> bytes:
    """
    Cut C{data} into as many records as it needs, without a terminator: the
    stream may continue in a later call.  Empty C{data} gives no bytes at all,
    because an empty record would end the stream.  Data that fits in one
    record takes one record; longer data is cut at L{_STREAM_CHUNK_LENGTH},
    so that every record stays padded within the 65535 bytes php-fpm reads.
    """
    if len(data) <= _STREAM_CHUNK_LENGTH:
        return _encodeRecord(recordType, requestId, data) if data else b""
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for start in range(0, len(data), _STREAM_CHUNK_LENGTH):
        chunk = view[start : start + _STREAM_CHUNK_LENGTH]
        paddingLength = -len(chunk) % 8
        header = _HEADER.pack(FCGI_VERSION_1, recordType, requestId, len(chunk), paddingLength)
        parts += (header, chunk, _PADDING[:paddingLength])
    return b"".join(parts)


def _encodeLength(length: int) -> bytes:
    if length < 0x80:
        return _SHORT_LENGTHS[length]
    if length > _MAX_NAME_VALUE_LENGTH:
        raise ValueError(f"name-value pair length {length} does not fit in 31 bits")
    return _LONG_LENGTH.pack(length | _LONG_LENGTH_FLAG)


# Every one-byte length, made once: most names and values are short, and
# encoding the params is done for every request.
_SHORT_LENGTHS = [bytes((length,)) for length in range(0x80)]


def encodeNameValuePairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """
    Encode pairs as the body of PARAMS or GET_VALUES(_RESULT): each length is
    one byte below 128, else four bytes with the high bit set.
    """
    parts: list[bytes] = []
    for name, value in pairs:
        nameLength = len(name)
        valueLength = len(value)
        if nameLength < 0x80 and valueLength < 0x80:
            # Nearly every pair: no call for its lengths.
            parts += (_SHORT_LENGTHS[nameLength], _SHORT_LENGTHS[valueLength], name, value)
        else:
            parts += (_encodeLength(nameLength), _encodeLength(valueLength), name, value)
    return b"".join(parts)


def _decodeLength(data: bytes, offset: int) -> tuple[int, int]:
    """Return the length that starts at C{offset} and the offset after it."""
    if offset >= len(data):
        raise MalformedRecord("name-value pair truncated in its lengths")
    length = data[offset]
    if length < 0x80:
        return length, offset + 1
    if offset + 4 > len(data):
        raise MalformedRecord("name-value pair truncated in a four-byte length")
    (length,) = _LONG_LENGTH.unpack_from(data, offset)
    return length & _MAX_NAME_VALUE_LENGTH, offset + 4


def decodeNameValuePairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """
    Decode a whole name-value pair body, in order and keeping duplicates, since
    their meaning is up to the application.
    """
    pairs: list[tuple[bytes, bytes]] = []
    offset = 0
    while offset < len(data):
        nameLength, offset = _decodeLength(data, offset)
        valueLength, offset = _decodeLength(data, offset)
        valueStart = offset + nameLength
        valueEnd = valueStart + valueLength
        if valueEnd > len(data):
            raise MalformedRecord(
                f"name-value pair of {nameLength}+{valueLength} bytes overruns its"
                f" {len(data)}-byte body"
            )
        pairs.append((data[offset:valueStart], data[valueStart:valueEnd]))
        offset = valueEnd
    return pairs


def encodeParams(requestId: int, pairs: Iterable[tuple[bytes, bytes]] | bytes) -> bytes:
    """
    Encode a whole PARAMS stream, terminator included, from name-value
    pairs or from their encoding by L{encodeNameValuePairs}.

    Each record holds whole pairs: php-fpm decodes every PARAMS record on its
    own and drops a request whose pair is cut across two. Only a pair too
    large for any record is cut, as the specification allows, since it
    could not be sent otherwise.
    """
    if isinstance(pairs, bytes):
        encoded = pairs
    else:
        pairs = list(pairs)
        encoded = encodeNameValuePairs(pairs)
    terminator = _endOfStream(RecordType.PARAMS, requestId)
    if len(encoded) <= _STREAM_CHUNK_LENGTH:
        # The usual request: all of its params in one record.
        return _encodeStream(RecordType.PARAMS, requestId, encoded) + terminator
    if isinstance(pairs, bytes):
        # Too long for one record: cut between pairs.
        pairs = decodeNameValuePairs(pairs)
    records: list[bytes] = []
    pending: list[bytes] = []
    pendingLength = 0
    for name, value in pairs:
        pair = encodeNameValuePairs(((name, value),))
        if pendingLength + len(pair) > MAX_CONTENT_LENGTH and pending:
            records.append(_encodeRecord(RecordType.PARAMS, requestId, b"".join(pending)))
            pending, pendingLength = [], 0
        if len(pair) > MAX_CONTENT_LENGTH:
            records.append(_encodeStream(RecordType.PARAMS, requestId, pair))
        else:
            pending.append(pair)
            pendingLength += len(pair)
    if pending:
        records.append(_encodeRecord(RecordType.PARAMS, requestId, b"".join(pending)))
    records.append(terminator)
    return b"".join(records)


@dataclass(frozen=True, **SLOTS)
class BeginRequest:
    requestId: int
    role: int = Role.RESPONDER
    flags: int = 0

    @property
    def keepConnection(self) -> bool:
        """Whether the application must keep the connection open afterwards."""
        return bool(self.flags & FCGI_KEEP_CONN)

    def encode(self) -> bytes:
        return _encodeBeginRequest(self.requestId, self.role, self.flags)


def _encodeBeginRequest(requestId: int, role: int, flags: int) -> bytes:
    """Header and body at once: every request starts with one."""
    return _BEGIN_REQUEST_RECORD.pack(
        FCGI_VERSION_1, RecordType.BEGIN_REQUEST, requestId, 8, 0, role, flags
    )


@dataclass(frozen=True, **SLOTS)
class AbortRequest:
    requestId: int

    def encode(self) -> bytes:
        return _HEADER.pack(FCGI_VERSION_1, RecordType.ABORT_REQUEST, self.requestId, 0, 0)


@dataclass(frozen=True, **SLOTS)
class EndRequest:
    requestId: int
    appStatus: int
    protocolStatus: int

    def encode(self) -> bytes:
        return _END_REQUEST_RECORD.pack(
            FCGI_VERSION_1,
            RecordType.END_REQUEST,
            self.requestId,
            8,
            0,
            self.appStatus,
            self.protocolStatus,
        )


@dataclass(frozen=True, **SLOTS)
class _StreamRecord:
    """
    One record of a byte stream; empty C{data} is the record that ends the
    stream.  L{encode} cuts data longer than 65528 bytes into several
    records, so one event can carry a whole body.
    """

    _recordType: ClassVar[RecordType]

    requestId: int
    data: bytes

    def encode(self) -> bytes:
        if not self.data:
            return _encodeRecord(self._recordType, self.requestId, b"")
        return _encodeStream(self._recordType, self.requestId, self.data)


@dataclass(frozen=True, **SLOTS)
class Params(_StreamRecord):
    _recordType = RecordType.PARAMS


@dataclass(frozen=True, **SLOTS)
class Stdin(_StreamRecord):
    _recordType = RecordType.STDIN


@dataclass(frozen=True, **SLOTS)
class Stdout(_StreamRecord):
    _recordType = RecordType.STDOUT


@dataclass(frozen=True, **SLOTS)
class Stderr(_StreamRecord):
    _recordType = RecordType.STDERR


@dataclass(frozen=True, **SLOTS)
class Data(_StreamRecord):
    _recordType = RecordType.DATA


def _encodeManagementRecord(recordType: int, content: bytes) -> bytes:
    """Management records are single records: they cannot be cut up."""
    if len(content) > MAX_CONTENT_LENGTH:
        raise ValueError(f"{len(content)}-byte body does not fit in one record")
    return _encodeRecord(recordType, NULL_REQUEST_ID, content)


@dataclass(frozen=True, **SLOTS)
class GetValues:
    names: tuple[bytes, ...]

    def encode(self) -> bytes:
        body = encodeNameValuePairs((name, b"") for name in self.names)
        return _encodeManagementRecord(RecordType.GET_VALUES, body)


@dataclass(frozen=True, **SLOTS)
class GetValuesResult:
    values: tuple[tuple[bytes, bytes], ...]

    def encode(self) -> bytes:
        body = encodeNameValuePairs(self.values)
        return _encodeManagementRecord(RecordType.GET_VALUES_RESULT, body)


@dataclass(frozen=True, **SLOTS)
class UnknownType:
    recordType: int

    def encode(self) -> bytes:
        return _UNKNOWN_TYPE_RECORD.pack(
            FCGI_VERSION_1, RecordType.UNKNOWN_TYPE, NULL_REQUEST_ID, 8, 0, self.recordType
        )


Record: TypeAlias = Union[
    BeginRequest,
    AbortRequest,
    EndRequest,
    Params,
    Stdin,
    Stdout,
    Stderr,
    Data,
    GetValues,
    GetValuesResult,
    UnknownType,
]


def _decodeBeginRequest(requestId: int, content: bytes) -> BeginRequest:
    role, flags = _BEGIN_REQUEST_BODY.unpack(content)
    return BeginRequest(requestId, role, flags)


def _decodeEndRequest(requestId: int, content: bytes) -> EndRequest:
    appStatus, protocolStatus = _END_REQUEST_BODY.unpack(content)
    return EndRequest(requestId, appStatus, protocolStatus)


def _decodeGetValues(requestId: int, content: bytes) -> GetValues:
    # The specification says the values are empty; they carry nothing to keep.
    return GetValues(tuple(name for name, _ in decodeNameValuePairs(content)))


# Content decoders by type, called with the request id and the content bytes.
_DECODERS: dict[int, Callable[[int, bytes], Record]] = {
    RecordType.BEGIN_REQUEST: _decodeBeginRequest,
    RecordType.ABORT_REQUEST: lambda requestId, content: AbortRequest(requestId),
    RecordType.END_REQUEST: _decodeEndRequest,
    RecordType.PARAMS: Params,
    RecordType.STDIN: Stdin,
    RecordType.STDOUT: Stdout,
    RecordType.STDERR: Stderr,
    RecordType.DATA: Data,
    RecordType.GET_VALUES: _decodeGetValues,
    RecordType.GET_VALUES_RESULT: lambda requestId, content: GetValuesResult(
        tuple(decodeNameValuePairs(content))
    ),
    RecordType.UNKNOWN_TYPE: lambda requestId, content: UnknownType(
        _UNKNOWN_TYPE_BODY.unpack(content)[0]
    ),
}
_FIXED_CONTENT_LENGTHS: dict[int, int] = {
    RecordType.BEGIN_REQUEST: _BEGIN_REQUEST_BODY.size,
    RecordType.ABORT_REQUEST: 0,
    RecordType.END_REQUEST: _END_REQUEST_BODY.size,
    RecordType.UNKNOWN_TYPE: _UNKNOWN_TYPE_BODY.size,
}
_MANAGEMENT_TYPES = frozenset(
    (RecordType.GET_VALUES, RecordType.GET_VALUES_RESULT, RecordType.UNKNOWN_TYPE)
)
# Records of a request's byte streams: any length, any request id.
_STREAM_TYPES = frozenset(
    (RecordType.PARAMS, RecordType.STDIN, RecordType.STDOUT, RecordType.STDERR, RecordType.DATA)
)


def _checkHeader(version: int, recordType: int, requestId: int, contentLength: int) -> None:
    """
    Reject a record from its header alone, so that garbage fails at once
    instead of after up to 64 KiB of buffering.
    """
    if version != FCGI_VERSION_1:
        raise UnsupportedVersion(f"FastCGI version {version}; only version 1 is supported")
    if recordType not in _DECODERS:
        raise UnexpectedRecord(f"record type {recordType} is not defined by FastCGI 1.0")
    if recordType in _MANAGEMENT_TYPES and requestId != NULL_REQUEST_ID:
        raise UnexpectedRecord(
            f"management record {RecordType(recordType).name} for request {requestId}"
        )
    expectedLength = _FIXED_CONTENT_LENGTHS.get(recordType)
    if expectedLength is not None and contentLength != expectedLength:
        raise MalformedRecord(
            f"{RecordType(recordType).name} with {contentLength} content bytes,"
            f" expected {expectedLength}"
        )


class RecordDecoder:
    """
    Incremental decoder: bytes split anywhere in, L{Record} events out.

    Records are read straight from the bytes received; only an incomplete
    record at the end is kept in a buffer for the next call, so each byte is
    copied a bounded number of times however large the stream is.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: ProtocolError | None = None

    @property
    def pendingBytes(self) -> int:
        """How many bytes of an incomplete record are buffered."""
        return len(self._buffer)

    def receiveData(self, data: bytes) -> list[Record]:
        """
        Return every record completed by C{data}, in order.

        @raise ProtocolError: on malformed input.  The stream cannot be
            resynchronised after that, so every later call raises the same
            error again.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        source: bytes | bytearray = data
        if self._buffer:
            self._buffer += data
            source = self._buffer
        records: list[Record] = []
        offset = 0
        # Sliced from the bytes received, a record's content is copied once.
        fromBytes = source is data and type(data) is bytes
        try:
            with memoryview(source) as view:
                while len(view) - offset >= FCGI_HEADER_LEN:
                    version, recordType, requestId, contentLength, paddingLength = (
                        _HEADER.unpack_from(view, offset)
                    )
                    if version != FCGI_VERSION_1 or recordType not in _STREAM_TYPES:
                        # A stream record passes every check but the version.
                        _checkHeader(version, recordType, requestId, contentLength)
                    contentStart = offset + FCGI_HEADER_LEN
                    contentEnd = contentStart + contentLength
                    if contentEnd + paddingLength > len(view):
                        break
                    content = (
                        data[contentStart:contentEnd]
                        if fromBytes
                        else bytes(view[contentStart:contentEnd])
                    )
                    records.append(_DECODERS[recordType](requestId, content))
                    offset = contentEnd + paddingLength
        except ProtocolError as error:
            self._error = error
            self._buffer = bytearray()
            raise
        if source is self._buffer:
            del self._buffer[:offset]
        elif offset < len(data):
            self._buffer += memoryview(data)[offset:]
        return records


class ConnectionState(Enum):
    """
    Where a L{ClientConnection} is in its request cycle; each value says so
    in words, for error messages.

    Two things go on at once during a request: the body is still being sent
    or not, and the response has not started, is being received (with
    neither, one or both of its streams ended), or has ended.  Each
    combination the protocol allows is one state, so that one table
    (L{_TRANSITIONS}) holds every legal move.  The C{SENDING_BODY_*} states
    mirror the usual ones for a script that answers before it has read the
    whole body.
    """

    # Plain enum members hash through a Python-level method; identity is
    # what equality means here anyway, and it keeps lookups cheap.
    __hash__ = object.__hash__

    IDLE = "no request is in progress"
    SENDING_BODY = "the request body is being sent"
    SENDING_BODY_RECEIVING = "the response arrives while the body is being sent"
    SENDING_BODY_STDOUT_ENDED = "STDOUT has ended while the body is being sent"
    SENDING_BODY_STDERR_ENDED = "STDERR has ended while the body is being sent"
    SENDING_BODY_STREAMS_ENDED = "both streams have ended while the body is being sent"
    AWAITING_RESPONSE = "the request is sent and no response byte has arrived"
    RECEIVING = "the response is being received"
    STDOUT_ENDED = "STDOUT has ended"
    STDERR_ENDED = "STDERR has ended"
    STREAMS_ENDED = "both streams have ended"
    ENDED = "the request has ended"
    ENDED_EARLY = "the request ended before its body was sent, so the connection cannot be reused"
    ERROR = "the peer broke the protocol"


class ConnectionEvent(Enum):
    """
    What moves a L{ClientConnection}: a call of the caller's, or something
    received from the peer (any byte, then each record as it completes).
    """

    __hash__ = object.__hash__

    START = "startRequest() without the body"
    START_WITH_BODY = "startRequest() with the whole body"
    SEND_BODY = "sendBody()"
    END_BODY = "endBody()"
    RESET = "reset()"
    BYTES = "data"
    STDOUT = "STDOUT data"
    STDERR = "STDERR data"
    STDOUT_END = "the end of STDOUT"
    STDERR_END = "the end of STDERR"
    END_REQUEST = "END_REQUEST"


_S = ConnectionState
_E = ConnectionEvent

# Every legal move: state -> event -> next state.  Anything missing is
# illegal: a L{StateError} for the caller's events, an L{UnexpectedRecord}
# (and then L{ConnectionState.ERROR}, for good) for the peer's.  A stream's
# end may come again (it ends nothing more); its data may not.
_TRANSITIONS: dict[ConnectionState, dict[ConnectionEvent, ConnectionState]] = {
    _S.IDLE: {_E.START: _S.SENDING_BODY, _E.START_WITH_BODY: _S.AWAITING_RESPONSE},
    _S.SENDING_BODY: {
        _E.SEND_BODY: _S.SENDING_BODY,
        _E.END_BODY: _S.AWAITING_RESPONSE,
        _E.BYTES: _S.SENDING_BODY_RECEIVING,
    },
    _S.SENDING_BODY_RECEIVING: {
        _E.SEND_BODY: _S.SENDING_BODY_RECEIVING,
        _E.END_BODY: _S.RECEIVING,
        _E.BYTES: _S.SENDING_BODY_RECEIVING,
        _E.STDOUT: _S.SENDING_BODY_RECEIVING,
        _E.STDERR: _S.SENDING_BODY_RECEIVING,
        _E.STDOUT_END: _S.SENDING_BODY_STDOUT_ENDED,
        _E.STDERR_END: _S.SENDING_BODY_STDERR_ENDED,
        _E.END_REQUEST: _S.ENDED_EARLY,
    },
    _S.SENDING_BODY_STDOUT_ENDED: {
        _E.SEND_BODY: _S.SENDING_BODY_STDOUT_ENDED,
        _E.END_BODY: _S.STDOUT_ENDED,
        _E.BYTES: _S.SENDING_BODY_STDOUT_ENDED,
        _E.STDERR: _S.SENDING_BODY_STDOUT_ENDED,
        _E.STDOUT_END: _S.SENDING_BODY_STDOUT_ENDED,
        _E.STDERR_END: _S.SENDING_BODY_STREAMS_ENDED,
        _E.END_REQUEST: _S.ENDED_EARLY,
    },
    _S.SENDING_BODY_STDERR_ENDED: {
        _E.SEND_BODY: _S.SENDING_BODY_STDERR_ENDED,
        _E.END_BODY: _S.STDERR_ENDED,
        _E.BYTES: _S.SENDING_BODY_STDERR_ENDED,
        _E.STDOUT: _S.SENDING_BODY_STDERR_ENDED,
        _E.STDOUT_END: _S.SENDING_BODY_STREAMS_ENDED,
        _E.STDERR_END: _S.SENDING_BODY_STDERR_ENDED,
        _E.END_REQUEST: _S.ENDED_EARLY,
    },
    _S.SENDING_BODY_STREAMS_ENDED: {
        _E.SEND_BODY: _S.SENDING_BODY_STREAMS_ENDED,
        _E.END_BODY: _S.STREAMS_ENDED,
        _E.BYTES: _S.SENDING_BODY_STREAMS_ENDED,
        _E.STDOUT_END: _S.SENDING_BODY_STREAMS_ENDED,
        _E.STDERR_END: _S.SENDING_BODY_STREAMS_ENDED,
        _E.END_REQUEST: _S.ENDED_EARLY,
    },
    _S.AWAITING_RESPONSE: {_E.BYTES: _S.RECEIVING},
    _S.RECEIVING: {
        _E.BYTES: _S.RECEIVING,
        _E.STDOUT: _S.RECEIVING,
        _E.STDERR: _S.RECEIVING,
        _E.STDOUT_END: _S.STDOUT_ENDED,
        _E.STDERR_END: _S.STDERR_ENDED,
        _E.END_REQUEST: _S.ENDED,
    },
    _S.STDOUT_ENDED: {
        _E.BYTES: _S.STDOUT_ENDED,
        _E.STDERR: _S.STDOUT_ENDED,
        _E.STDOUT_END: _S.STDOUT_ENDED,
        _E.STDERR_END: _S.STREAMS_ENDED,
        _E.END_REQUEST: _S.ENDED,
    },
    _S.STDERR_ENDED: {
        _E.BYTES: _S.STDERR_ENDED,
        _E.STDOUT: _S.STDERR_ENDED,
        _E.STDOUT_END: _S.STREAMS_ENDED,
        _E.STDERR_END: _S.STDERR_ENDED,
        _E.END_REQUEST: _S.ENDED,
    },
    _S.STREAMS_ENDED: {
        _E.BYTES: _S.STREAMS_ENDED,
        _E.STDOUT_END: _S.STREAMS_ENDED,
        _E.STDERR_END: _S.STREAMS_ENDED,
        _E.END_REQUEST: _S.ENDED,
    },
    _S.ENDED: {_E.RESET: _S.IDLE},
    _S.ENDED_EARLY: {},
    _S.ERROR: {},
}

# The states in which nothing of the response has arrived yet.
_NOTHING_RECEIVED = frozenset((_S.IDLE, _S.SENDING_BODY, _S.AWAITING_RESPONSE))

# The events that end a stream, which are not reported: END_REQUEST ends them all.
_STREAM_ENDS = frozenset((_E.STDOUT_END, _E.STDERR_END))
_ENDED_STATES = frozenset((_S.ENDED, _S.ENDED_EARLY))

# Looking a member up on its Enum class costs some 70 ns on Python 3.11
# (the metaclass has a __getattr__); what runs for every request and every
# record uses these names instead.
_START = _E.START
_START_WITH_BODY = _E.START_WITH_BODY
_SEND_BODY = _E.SEND_BODY
_END_BODY = _E.END_BODY
_RESET = _E.RESET
_BYTES = _E.BYTES
_STDOUT = _E.STDOUT
_STDERR = _E.STDERR
_STDOUT_END = _E.STDOUT_END
_STDERR_END = _E.STDERR_END
_END_REQUEST = _E.END_REQUEST


class ClientConnection:
    """
    The client side of one FastCGI connection, one request at a time: php-fpm
    never multiplexes (it answers FCGI_MPXS_CONNS=0), so neither do we.

    Sans-IO: the request methods return the bytes to write and
    L{receiveData} returns the response events.  It is a state machine
    (L{ConnectionState}, moves in L{_TRANSITIONS}): misuse by the caller
    raises L{StateError} and changes nothing; misbehaviour by the peer
    raises L{ProtocolError}, after which the connection is dead
    (L{ConnectionState.ERROR}) and must be closed.
    """

    def __init__(self, requestId: int = 1) -> None:
        if not 1 <= requestId <= 0xFFFF:
            raise ValueError(f"request id {requestId} is not in 1..65535")
        self._requestId = requestId
        # BEGIN_REQUEST for a responder, without and with FCGI_KEEP_CONN:
        # the same bytes for every request.
        self._beginRequest = (
            _encodeBeginRequest(requestId, Role.RESPONDER, 0),
            _encodeBeginRequest(requestId, Role.RESPONDER, FCGI_KEEP_CONN),
        )
        self._decoder = RecordDecoder()
        self._state = ConnectionState.IDLE
        # What ERROR raises again, so that every later call fails the same way.
        self._error: ProtocolError | None = None

    @property
    def state(self) -> ConnectionState:
        """Where the connection is in its request cycle."""
        return self._state

    @property
    def requestComplete(self) -> bool:
        """Whether END_REQUEST has been received for the current request."""
        return self._state in _ENDED_STATES

    @property
    def responseStarted(self) -> bool:
        """
        Whether any byte of the response has arrived, even of an unfinished
        record: then the peer has taken the request.
        """
        return self._state not in _NOTHING_RECEIVED

    def _call(self, event: ConnectionEvent) -> None:
        """Make the move for one of the caller's events, if it is legal."""
        state = self._state
        try:
            self._state = _TRANSITIONS[state][event]
        except KeyError:
            raise StateError(f"{event.value} is not allowed while {state.value}") from None

    def startRequest(
        self,
        params: Iterable[tuple[bytes, bytes]] | bytes,
        keepConnection: bool,
        body: bytes | None = None,
    ) -> bytes:
        """
        Return BEGIN_REQUEST for a responder and the whole PARAMS stream, of
        C{params} as name-value pairs or as L{encodeNameValuePairs} encoded
        them.

        With C{body}, also return the whole STDIN stream, so that a small
        request goes out in one write.  Without it, follow with any number of
        L{sendBody} calls and one L{endBody}.
        """
        self._call(_START if body is None else _START_WITH_BODY)
        requestId = self._requestId
        begin = self._beginRequest[keepConnection]
        if body is None:
            return begin + encodeParams(requestId, params)
        return b"".join(
            (
                begin,
                encodeParams(requestId, params),
                _encodeStream(RecordType.STDIN, requestId, body),
                _endOfStream(RecordType.STDIN, requestId),
            )
        )

    def sendBody(self, data: bytes) -> bytes:
        """
        Return STDIN records for C{data}; empty C{data} gives no bytes rather
        than a terminator, so callers can pass along empty reads.
        """
        self._call(_SEND_BODY)
        return _encodeStream(RecordType.STDIN, self._requestId, data)

    def endBody(self) -> bytes:
        """Return the empty STDIN record that ends the request body."""
        self._call(_END_BODY)
        return _endOfStream(RecordType.STDIN, self._requestId)

    def reset(self) -> None:
        """
        Get ready for the next request on a kept connection: only after
        END_REQUEST, and only if the whole body was sent, since the rest of
        it could be taken for the next request's.
        """
        self._call(_RESET)

    def receiveData(self, data: bytes) -> list[Stdout | Stderr | EndRequest]:
        """
        Return the STDOUT data, STDERR data and END_REQUEST events completed by
        C{data}.  Stream terminators are left out: END_REQUEST ends everything.

        @raise ProtocolError: if the peer sends anything else, or anything at
            all while no request is in progress; every later call raises the
            same error again.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        state = self._state
        try:
            if data:
                state = self._peer(state, _BYTES)
            events: list[Stdout | Stderr | EndRequest] = []
            for record in self._decoder.receiveData(data):
                if isinstance(record, Stdout):
                    event = _STDOUT if record.data else _STDOUT_END
                elif isinstance(record, Stderr):
                    event = _STDERR if record.data else _STDERR_END
                elif isinstance(record, EndRequest):
                    event = _END_REQUEST
                else:
                    raise UnexpectedRecord(
                        f"a FastCGI client must not receive {type(record).__name__} records"
                    )
                if record.requestId != self._requestId:
                    raise UnexpectedRecord(
                        f"{type(record).__name__} record for request {record.requestId},"
                        f" expected {self._requestId}"
                    )
                state = self._peer(state, event)
                if event not in _STREAM_ENDS:
                    events.append(record)
            if self._decoder.pendingBytes:
                # The start of a record after the last one, which may have
                # been END_REQUEST.
                state = self._peer(state, _BYTES)
        except ProtocolError as error:
            self._state = _S.ERROR
            self._error = error
            raise
        self._state = state
        return events

    @staticmethod
    def _peer(state: ConnectionState, event: ConnectionEvent) -> ConnectionState:
        """The move for one of the peer's events from C{state}, if it is legal."""
        nextState = _TRANSITIONS[state].get(event)
        if nextState is None:
            raise UnexpectedRecord(f"{event.value} received while {state.value}")
        return nextState
