"""
What a static file request is answered with (RFC 9110 preconditions and
ranges), as one table; range and date parsing; content types.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txfastcgi._http.staticfiles import (
    ByteRange,
    FileFacts,
    StaticResponse,
    contentTypeFor,
    decideResponse,
    parseHTTPDate,
    satisfiableRanges,
)

# Sun, 06 Nov 1994 08:49:37 GMT, and half a second.
MTIME_NS = 784111777_500_000_000
FACTS = FileFacts(1000, MTIME_NS, b"text/css")
ETAG = b'"%x-3e8"' % MTIME_NS
LAST_MODIFIED = b"Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = b"Sun, 06 Nov 1994 08:49:36 GMT"
LATER = b"Sun, 06 Nov 1994 08:49:38 GMT"

WHOLE = ByteRange(0, 1000)
GET, HEAD = b"GET", b"HEAD"


def case(
    name: str, status: int, byteRange: ByteRange | None, method: bytes = GET, **headers: bytes
) -> Any:
    return pytest.param(method, headers, status, byteRange, id=name)


DECISIONS = [
    case("plain GET", 200, WHOLE),
    case("HEAD has no body", 200, None, HEAD),
    case("POST is not allowed", 405, None, b"POST"),
    case("OPTIONS is not allowed", 405, None, b"OPTIONS"),
    # If-None-Match, weak comparison.
    case("INM our tag", 304, None, ifNoneMatch=ETAG),
    case("INM our tag, HEAD", 304, None, HEAD, ifNoneMatch=ETAG),
    case("INM our tag, weak", 304, None, ifNoneMatch=b"W/" + ETAG),
    case("INM our tag in a list", 304, None, ifNoneMatch=b'"x", ' + ETAG + b' , "y"'),
    case("INM star", 304, None, ifNoneMatch=b"*"),
    case("INM another tag", 200, WHOLE, ifNoneMatch=b'"other"'),
    case("INM unquoted tag", 200, WHOLE, ifNoneMatch=ETAG.strip(b'"')),
    case("INM tag of an older size", 200, WHOLE, ifNoneMatch=b'"%x-3e7"' % MTIME_NS),
    # If-Modified-Since, by seconds: the file is no newer than the date.
    case("IMS its date", 304, None, ifModifiedSince=LAST_MODIFIED),
    case("IMS later", 304, None, ifModifiedSince=LATER),
    case("IMS earlier", 200, WHOLE, ifModifiedSince=EARLIER),
    case("IMS RFC 850 date", 304, None, ifModifiedSince=b"Sunday, 06-Nov-94 08:49:37 GMT"),
    case("IMS asctime date", 304, None, ifModifiedSince=b"Sun Nov  6 08:49:37 1994"),
    case("IMS not a date", 200, WHOLE, ifModifiedSince=b"yesterday"),
    case("IMS on HEAD", 304, None, HEAD, ifModifiedSince=LAST_MODIFIED),
    # If-None-Match wins over If-Modified-Since, either way.
    case("INM miss beats IMS hit", 200, WHOLE, ifNoneMatch=b'"x"', ifModifiedSince=LATER),
    case("INM hit beats IMS miss", 304, None, ifNoneMatch=ETAG, ifModifiedSince=EARLIER),
    # If-Match, strong comparison.
    case("IM our tag", 200, WHOLE, ifMatch=ETAG),
    case("IM our tag in a list", 200, WHOLE, ifMatch=b'"a", ' + ETAG),
    case("IM star", 200, WHOLE, ifMatch=b"*"),
    case("IM our tag, weak", 412, None, ifMatch=b"W/" + ETAG),
    case("IM another tag", 412, None, ifMatch=b'"other"'),
    case("IM fails on HEAD", 412, None, HEAD, ifMatch=b'"other"'),
    # If-Unmodified-Since.
    case("IUS its date", 200, WHOLE, ifUnmodifiedSince=LAST_MODIFIED),
    case("IUS later", 200, WHOLE, ifUnmodifiedSince=LATER),
    case("IUS earlier", 412, None, ifUnmodifiedSince=EARLIER),
    case("IUS not a date", 200, WHOLE, ifUnmodifiedSince=b"soon"),
    # If-Match wins over If-Unmodified-Since; 412 comes before 304.
    case("IM hit beats IUS miss", 200, WHOLE, ifMatch=ETAG, ifUnmodifiedSince=EARLIER),
    case("IM miss beats IUS hit", 412, None, ifMatch=b'"x"', ifUnmodifiedSince=LATER),
    case("IM miss beats INM hit", 412, None, ifMatch=b'"x"', ifNoneMatch=ETAG),
    case("IUS miss beats INM hit", 412, None, ifUnmodifiedSince=EARLIER, ifNoneMatch=ETAG),
    case("IM hit, INM hit", 304, None, ifMatch=ETAG, ifNoneMatch=ETAG),
    # Ranges.
    case("first byte", 206, ByteRange(0, 1), rangeHeader=b"bytes=0-0"),
    case("last byte", 206, ByteRange(999, 1), rangeHeader=b"bytes=999-999"),
    case("last 500 bytes", 206, ByteRange(500, 500), rangeHeader=b"bytes=-500"),
    case("from 500 on", 206, ByteRange(500, 500), rangeHeader=b"bytes=500-"),
    case("past the end is clipped", 206, ByteRange(990, 10), rangeHeader=b"bytes=990-5000"),
    case("suffix longer than the file", 206, WHOLE, rangeHeader=b"bytes=-5000"),
    case("unit in capitals", 206, ByteRange(0, 1), rangeHeader=b"BYTES=0-0"),
    case("spaces and empty elements", 206, ByteRange(2, 3), rangeHeader=b"bytes=, 2-4 ,"),
    case("starts at the end", 416, None, rangeHeader=b"bytes=1000-"),
    case("empty suffix", 416, None, rangeHeader=b"bytes=-0"),
    case("none satisfiable", 416, None, rangeHeader=b"bytes=2000-2001, 3000-"),
    case("one of two satisfiable", 206, ByteRange(0, 11), rangeHeader=b"bytes=0-10,5000-"),
    case("two ranges: whole file", 200, WHOLE, rangeHeader=b"bytes=0-10,20-30"),
    case("overlapping ranges: whole file", 200, WHOLE, rangeHeader=b"bytes=0-10,5-20"),
    case("backwards range is malformed", 200, WHOLE, rangeHeader=b"bytes=5-2"),
    case("malformed among good", 200, WHOLE, rangeHeader=b"bytes=0-1,x"),
    case("not numbers", 200, WHOLE, rangeHeader=b"bytes=a-b"),
    case("signed number", 200, WHOLE, rangeHeader=b"bytes=+1-2"),
    case("no range at all", 200, WHOLE, rangeHeader=b"bytes="),
    case("only commas", 200, WHOLE, rangeHeader=b"bytes=,,"),
    case("another unit", 200, WHOLE, rangeHeader=b"items=0-5"),
    case("no equals sign", 200, WHOLE, rangeHeader=b"bytes 0-5"),
    case("range on HEAD", 206, None, HEAD, rangeHeader=b"bytes=0-0"),
    case("unsatisfiable on HEAD", 416, None, HEAD, rangeHeader=b"bytes=1000-"),
    case("range on POST", 405, None, b"POST", rangeHeader=b"bytes=0-0"),
    # Preconditions come before the range.
    case("INM hit beats range", 304, None, ifNoneMatch=ETAG, rangeHeader=b"bytes=0-0"),
    case("IM miss beats range", 412, None, ifMatch=b'"x"', rangeHeader=b"bytes=0-0"),
    case("IM hit, range", 206, ByteRange(0, 1), ifMatch=ETAG, rangeHeader=b"bytes=0-0"),
    # If-Range: a strong tag match or the exact date, else the whole file.
    case("IR our tag", 206, ByteRange(0, 1), ifRange=ETAG, rangeHeader=b"bytes=0-0"),
    case("IR our tag, weak", 200, WHOLE, ifRange=b"W/" + ETAG, rangeHeader=b"bytes=0-0"),
    case("IR another tag", 200, WHOLE, ifRange=b'"other"', rangeHeader=b"bytes=0-0"),
    case("IR its date", 206, ByteRange(0, 1), ifRange=LAST_MODIFIED, rangeHeader=b"bytes=0-0"),
    case("IR a later date", 200, WHOLE, ifRange=LATER, rangeHeader=b"bytes=0-0"),
    case("IR not a date", 200, WHOLE, ifRange=b"whenever", rangeHeader=b"bytes=0-0"),
    case("IR without range", 200, WHOLE, ifRange=b'"other"'),
    case("IR miss, unsatisfiable", 200, WHOLE, ifRange=b'"x"', rangeHeader=b"bytes=1000-"),
]


@pytest.mark.parametrize(("method", "headers", "status", "byteRange"), DECISIONS)
def test_decision(
    method: bytes, headers: dict[str, bytes], status: int, byteRange: ByteRange | None
) -> None:
    response = decideResponse(method, FACTS, **headers)
    assert (response.status, response.byteRange) == (status, byteRange)
    assert response.headerBlock == b"".join(b"%s: %s\r\n" % h for h in response.headers)
    assert response.head == b"HTTP/1.1 %d %s\r\n%s" % (
        status,
        response.reason,
        response.headerBlock,
    )


def headers(response: StaticResponse) -> dict[bytes, bytes]:
    return dict(response.headers)


def test_a_whole_file_has_type_length_validators_and_accepts_ranges() -> None:
    response = decideResponse(GET, FACTS)
    assert response.reason == b"OK"
    assert response.headers == (
        (b"Content-Type", b"text/css"),
        (b"Content-Length", b"1000"),
        (b"ETag", ETAG),
        (b"Last-Modified", LAST_MODIFIED),
        (b"Accept-Ranges", b"bytes"),
    )


def test_the_etag_is_the_one_txfastcgi_always_sent() -> None:
    """resource.py's format, so that changing fronts invalidates no cache."""
    assert FileFacts(12, 0x1234, b"text/plain").etag == b'"1234-c"'


def test_head_has_the_headers_of_get() -> None:
    for get, head in [
        (decideResponse(GET, FACTS), decideResponse(HEAD, FACTS)),
        (
            decideResponse(GET, FACTS, rangeHeader=b"bytes=1-2"),
            decideResponse(HEAD, FACTS, rangeHeader=b"bytes=1-2"),
        ),
    ]:
        assert (head.status, head.headers, head.headerBlock) == (
            get.status,
            get.headers,
            get.headerBlock,
        )


def test_a_partial_response_says_which_part() -> None:
    response = decideResponse(GET, FACTS, rangeHeader=b"bytes=500-")
    assert response.reason == b"Partial Content"
    assert headers(response) == {
        b"Content-Type": b"text/css",
        b"Content-Length": b"500",
        b"ETag": ETAG,
        b"Last-Modified": LAST_MODIFIED,
        b"Content-Range": b"bytes 500-999/1000",
    }


def test_an_unsatisfiable_range_says_the_size() -> None:
    response = decideResponse(GET, FACTS, rangeHeader=b"bytes=1000-")
    assert response.reason == b"Range Not Satisfiable"
    assert headers(response) == {b"Content-Range": b"bytes */1000", b"Content-Length": b"0"}


def test_not_modified_carries_the_validators_only() -> None:
    response = decideResponse(GET, FACTS, ifNoneMatch=ETAG)
    assert response.reason == b"Not Modified"
    assert response.headers == ((b"ETag", ETAG), (b"Last-Modified", LAST_MODIFIED))


def test_errors_have_an_empty_body() -> None:
    failed = decideResponse(GET, FACTS, ifMatch=b'"x"')
    assert (failed.reason, headers(failed)) == (b"Precondition Failed", {b"Content-Length": b"0"})
    refused = decideResponse(b"PUT", FACTS)
    assert refused.reason == b"Method Not Allowed"
    assert headers(refused) == {b"Allow": b"GET, HEAD", b"Content-Length": b"0"}


def test_an_empty_file_ignores_ranges() -> None:
    """No Content-Range can describe a part of nothing: 200, as nginx answers."""
    empty = FileFacts(0, MTIME_NS, b"text/plain")
    for header in [b"bytes=0-0", b"bytes=-5", b"bytes=0-"]:
        response = decideResponse(GET, empty, rangeHeader=header)
        assert (response.status, response.byteRange) == (200, ByteRange(0, 0))
        assert headers(response)[b"Content-Length"] == b"0"


def test_last_modified_is_whole_seconds() -> None:
    assert FACTS.lastModified == LAST_MODIFIED
    assert FACTS.lastModifiedSeconds == 784111777


# Range parsing, against a model of RFC 9110 section 14.1.2.

sizes = st.integers(min_value=1, max_value=10_000)
positions = st.integers(min_value=0, max_value=20_000)


@given(size=sizes, first=positions, last=positions | st.none())
def test_an_int_range_is_clipped_to_the_file(size: int, first: int, last: int | None) -> None:
    header = b"bytes=%d-%s" % (first, b"" if last is None else b"%d" % last)
    ranges = satisfiableRanges(header, size)
    if last is not None and last < first:
        assert ranges is None
    elif first >= size:
        assert ranges == []
    else:
        end = size - 1 if last is None else min(last, size - 1)
        assert ranges == [ByteRange(first, end - first + 1)]


@given(size=sizes, suffix=positions)
def test_a_suffix_range_is_the_end_of_the_file(size: int, suffix: int) -> None:
    ranges = satisfiableRanges(b"bytes=-%d" % suffix, size)
    length = min(suffix, size)
    assert ranges == ([ByteRange(size - length, length)] if length else [])


@given(size=sizes, header=st.binary(max_size=40) | st.binary(max_size=40).map(b"bytes=".__add__))
def test_any_header_gives_ranges_inside_the_file_or_none(size: int, header: bytes) -> None:
    ranges = satisfiableRanges(header, size)
    for offset, length in ranges or []:
        assert 0 <= offset and 1 <= length and offset + length <= size


@given(st.lists(st.tuples(positions, positions).map(sorted), min_size=1, max_size=5))
def test_ranges_come_in_the_order_asked(pairs: list[list[int]]) -> None:
    header = b"bytes=" + b",".join(b"%d-%d" % (first, last) for first, last in pairs)
    assert satisfiableRanges(header, 30_000) == [
        ByteRange(first, last - first + 1) for first, last in pairs
    ]


# HTTP dates.


@given(st.integers(min_value=0, max_value=2**34))
def test_a_date_we_format_parses_back(seconds: int) -> None:
    assert parseHTTPDate(formatdate(seconds, usegmt=True).encode()) == seconds


@pytest.mark.parametrize(
    "value",
    [
        b"Sun, 06 Nov 1994 08:49:37 GMT",
        b"  Sun, 06 Nov 1994 08:49:37 GMT ",
        b"Sunday, 06-Nov-94 08:49:37 GMT",
        b"Sun Nov  6 08:49:37 1994",
    ],
)
def test_the_three_date_forms(value: bytes) -> None:
    assert parseHTTPDate(value) == 784111777


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"Sun, 06 Nov 1994 08:49:37 UTC",
        b"Sun, 31 Feb 1994 08:49:37 GMT",
        b"Sun, 06 Nov 1994 25:49:37 GMT",
        b"Sun, 6 Nov 1994 08:49:37 GMT",
        b"1994-11-06T08:49:37Z",
        b"784111777",
    ],
)
def test_what_is_not_a_date(value: bytes) -> None:
    assert parseHTTPDate(value) is None


def test_a_two_digit_year_is_at_most_50_years_ahead() -> None:
    """RFC 9110 section 5.6.7: 2099 is too far ahead (until 2049), so 99 is 1999."""
    assert parseHTTPDate(b"Friday, 31-Dec-99 23:59:59 GMT") == 946684799
    assert parseHTTPDate(b"Saturday, 01-Jan-00 00:00:00 GMT") == 946684800


# Content types.


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/srv/wp-includes/css/dist/block-library/style.min.css", b"text/css"),
        ("/srv/STYLE.CSS", b"text/css"),
        ("/srv/app.js", b"text/javascript"),
        ("/srv/logo.svg", b"image/svg+xml"),
        ("/srv/font.woff2", b"font/woff2"),
        ("/srv/readme.txt", b"text/plain"),
        ("/srv/backup.tar.gz", b"application/gzip"),
        ("/srv/upload.unknownextension", b"application/octet-stream"),
        ("/srv/Makefile", b"application/octet-stream"),
    ],
)
def test_content_type(path: str, expected: bytes) -> None:
    assert contentTypeFor(path) == expected


@given(st.integers(min_value=0, max_value=2**34), st.integers(0, 999_999_999))
def test_last_modified_is_the_standard_date_form(seconds: int, nanoseconds: int) -> None:
    facts = FileFacts(1, seconds * 1_000_000_000 + nanoseconds, b"text/plain")
    assert facts.lastModified == formatdate(seconds, usegmt=True).encode()
