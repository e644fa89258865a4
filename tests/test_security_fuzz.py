"""
A short fuzzing run in the suite: the targets of C{fuzz/} (which atheris runs
for as long as one likes) fed by hypothesis, with arbitrary bytes and with
valid input cut and damaged; and the router asked about arbitrary paths.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import (
    SEEDS,
    fuzzClientConnection,
    fuzzParseResponseHead,
    fuzzRecordDecoder,
    fuzzResponseHeadParser,
)
from tests.recordingbackend import buildAttackSite
from txfastcgi._fastcgi.records import (
    MAX_CONTENT_LENGTH,
    EndRequest,
    GetValuesResult,
    RecordType,
    Stderr,
    Stdout,
    UnknownType,
)
from txfastcgi._http.routing import Router, Script

fuzzing = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A record's bytes as a malicious peer could send them: any type, version,
# request id and lengths, with the content and padding it declares or not.
_rawRecords = st.builds(
    lambda version, recordType, requestId, content, padding, cut: (
        bytes((version, recordType))
        + requestId.to_bytes(2, "big")
        + len(content).to_bytes(2, "big")
        + bytes((padding, 0))
        + content
        + bytes(padding)
    )[: cut or None],
    st.sampled_from([1, 1, 1, 0, 2, 255]),
    st.sampled_from([*RecordType, 0, 12, 255]),
    st.sampled_from([1, 1, 0, 2, 65535]),
    st.binary(max_size=300),
    st.integers(0, 255),
    st.integers(0, 40),
)

_validRecords = st.one_of(
    st.builds(lambda data: Stdout(1, data).encode(), st.binary(max_size=2000)),
    st.builds(lambda data: Stderr(1, data).encode(), st.binary(max_size=200)),
    st.builds(lambda status: EndRequest(1, 0, status).encode(), st.integers(0, 255)),
    st.builds(lambda kind: UnknownType(kind).encode(), st.integers(0, 255)),
    st.builds(
        lambda pairs: GetValuesResult(tuple(pairs)).encode(),
        st.lists(st.tuples(st.binary(max_size=200), st.binary(max_size=200)), max_size=3),
    ),
)


def _flip(data: bytes, position: int, value: int) -> bytes:
    if not data:
        return data
    position %= len(data)
    return data[:position] + bytes((value,)) + data[position + 1 :]


_recordStreams = st.builds(
    lambda seed, records, flips: _applyFlips(bytes((seed,)) + b"".join(records), flips),
    st.integers(0, 255),
    st.lists(st.one_of(_validRecords, _rawRecords), max_size=8),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=2),
)


def _applyFlips(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    for position, value in flips:
        data = _flip(data, position + 1, value) if len(data) > 1 else data
    return data


@fuzzing
@given(st.one_of(st.binary(max_size=600), _recordStreams))
def test_the_record_decoder_takes_any_bytes(data: bytes) -> None:
    fuzzRecordDecoder(data)


@fuzzing
@given(st.one_of(st.binary(max_size=600), _recordStreams))
def test_a_client_connection_takes_any_response(data: bytes) -> None:
    fuzzClientConnection(data)


def test_a_full_size_record_split_anywhere_decodes_whole() -> None:
    stream = Stdout(1, os.urandom(MAX_CONTENT_LENGTH)).encode() + EndRequest(1, 0, 0).encode()
    for seed in (0, 1, 13, 200, 255):
        fuzzRecordDecoder(bytes((seed,)) + stream)
        fuzzClientConnection(bytes((seed,)) + stream)


_headerNames = st.one_of(
    st.sampled_from(
        [b"Status", b"status", b"Location", b"Content-Type", b"Content-Length", b"Set-Cookie"]
    ),
    st.sampled_from([b"Connection", b"Transfer-Encoding", b"Upgrade", b"Keep-Alive", b"X-A"]),
    st.binary(min_size=1, max_size=12),
)
_headerValues = st.one_of(
    st.sampled_from(
        [b"200", b"404 Not Found", b"404: x", b"99", b"600", b"abc", b"100", b"5", b"-1", b""]
    ),
    st.binary(max_size=40),
)
_separators = st.sampled_from([b":", b": ", b" : ", b":\t", b""])
_lineEnds = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n"])

_headerBlocks = st.builds(
    lambda lines: b"".join(lines),
    st.lists(
        st.builds(
            lambda name, separator, value, end: name + separator + value + end,
            _headerNames,
            _separators,
            _headerValues,
            _lineEnds,
        ),
        max_size=8,
    ),
)


@fuzzing
@given(st.one_of(st.binary(max_size=400), _headerBlocks))
def test_any_header_block_parses_sanely_or_is_malformed(block: bytes) -> None:
    fuzzParseResponseHead(block)


@fuzzing
@given(
    st.integers(0, 255),
    st.one_of(st.binary(max_size=400), _headerBlocks),
    st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", b"\n\n", b"\r\n\n", b""]),
    st.binary(max_size=100),
)
def test_script_output_cut_anywhere_gives_one_head(
    seed: int, block: bytes, end: bytes, body: bytes
) -> None:
    fuzzResponseHeadParser(bytes((seed,)) + block + end + body)


def test_a_header_block_at_the_limit_cut_anywhere() -> None:
    line = b"X-Big: " + b"a" * (65536 - 9) + b"\r\n"
    for seed in (0, 1, 50, 255):
        fuzzResponseHeadParser(bytes((seed,)) + line + b"\r\nbody")
        fuzzResponseHeadParser(bytes((seed,)) + line + b"X\r\n\r\nbody")


def test_the_seeds_pass() -> None:
    for seeds, target in [
        (SEEDS["records"], fuzzRecordDecoder),
        (SEEDS["client"], fuzzClientConnection),
        (SEEDS["cgi-head"], fuzzParseResponseHead),
        (SEEDS["cgi-parser"], fuzzResponseHeadParser),
    ]:
        for seed in seeds:
            target(seed)


@pytest.fixture(scope="module")
def attackSite() -> Iterator[str]:
    root, _ = buildAttackSite()
    yield root
    shutil.rmtree(os.path.dirname(root), ignore_errors=True)


_segments = st.sampled_from(
    [
        "..",
        ".",
        "",
        "uploads",
        "evil.jpg",
        "x.php",
        "echo.php",
        "index.php",
        "link-out.php",
        "linkdir",
        "inner.php",
        "sub",
        "X.PHP",
        "x.php.bak",
        "shell.\uff50hp",
        "passwd.txt",
        ".env",
        "outside",
        "secret.php",
        "a\nb",
        "%2e%2e",
    ]
)


@settings(max_examples=500, deadline=None)
@given(
    segments=st.lists(_segments, max_size=6), frontController=st.sampled_from(["/index.php", None])
)
def test_the_router_only_ever_runs_a_php_file_inside_the_root(
    attackSite: str, segments: list[str], frontController: str | None
) -> None:
    """
    Whatever the path, a route to a script names an existing regular
    C{.php} file whose real path is inside the document root.
    """
    root = os.path.realpath(attackSite)
    router = Router(attackSite, "index.php", frontController)
    route = router.route(("/" + "/".join(segments)).encode("utf-8", "surrogateescape"))
    if isinstance(route, Script):
        assert route.filename.endswith(".php")
        assert stat.S_ISREG(os.stat(route.filename).st_mode)
        assert os.path.realpath(route.filename).startswith(root + os.sep)
