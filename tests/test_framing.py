"""
Response body framing (RFC 9112 section 6.3): which responses have a body,
and what delimits it.
"""

from __future__ import annotations

import pytest

from txfastcgi._http.framing import BodyFraming, Delimiter, responseBodyFraming

NONE = BodyFraming(Delimiter.NONE, 0)
CHUNKED = BodyFraming(Delimiter.CHUNKED, None)
CLOSE = BodyFraming(Delimiter.CLOSE, None)


@pytest.mark.parametrize(
    ("method", "code", "contentLength", "clientProtocol", "expected"),
    [
        # HEAD never has a body: its Content-Length is the GET's.
        (b"HEAD", 200, 5, b"HTTP/1.1", NONE),
        (b"HEAD", 200, None, b"HTTP/1.1", NONE),
        (b"HEAD", 404, 120, b"HTTP/1.0", NONE),
        # Nor do 1xx, 204 and 304, to any method.
        (b"GET", 100, None, b"HTTP/1.1", NONE),
        (b"GET", 103, 0, b"HTTP/1.1", NONE),
        (b"POST", 204, 5, b"HTTP/1.1", NONE),
        (b"GET", 304, 5, b"HTTP/1.1", NONE),
        (b"GET", 304, None, b"HTTP/1.0", NONE),
        # Everything else is delimited by its Content-Length when it has one,
        (b"GET", 200, 5, b"HTTP/1.1", BodyFraming(Delimiter.CONTENT_LENGTH, 5)),
        (b"GET", 200, 0, b"HTTP/1.0", BodyFraming(Delimiter.CONTENT_LENGTH, 0)),
        (b"POST", 201, 7, b"HTTP/1.1", BodyFraming(Delimiter.CONTENT_LENGTH, 7)),
        (b"GET", 205, 0, b"HTTP/1.1", BodyFraming(Delimiter.CONTENT_LENGTH, 0)),
        (b"GET", 404, 9, b"HTTP/1.1", BodyFraming(Delimiter.CONTENT_LENGTH, 9)),
        # else by chunked coding for HTTP/1.1 and the connection's end for 1.0.
        (b"GET", 200, None, b"HTTP/1.1", CHUNKED),
        (b"DELETE", 500, None, b"HTTP/1.1", CHUNKED),
        (b"GET", 200, None, b"HTTP/1.0", CLOSE),
    ],
)
def test_body_framing(
    method: bytes,
    code: int,
    contentLength: int | None,
    clientProtocol: bytes,
    expected: BodyFraming,
) -> None:
    assert responseBodyFraming(method, code, contentLength, clientProtocol) == expected


def test_only_a_response_without_body_says_so() -> None:
    assert not NONE.hasBody
    assert CHUNKED.hasBody and CLOSE.hasBody
    assert BodyFraming(Delimiter.CONTENT_LENGTH, 0).hasBody
