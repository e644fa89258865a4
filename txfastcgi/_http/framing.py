"""
How an HTTP response body is delimited: one pure function and its table.

A response to HEAD, and a 1xx, 204 or 304 response, has no body, whatever
its headers say (RFC 9112 section 6.3): a HEAD's Content-Length is that of
the GET it stands for, a 304's that of the representation the client has.
Reading or sending body bytes for such a response, or waiting for the bytes
its Content-Length promises, would mix up or stall the connection. Every
other response is delimited by its Content-Length, by chunked coding for an
HTTP/1.1 client, or by the end of the connection for an HTTP/1.0 one.

The same decision serves both directions of the proxy: how many body bytes
to expect from the script, and how to frame them for the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from txfastcgi._compat import SLOTS

__all__ = ["BodyFraming", "Delimiter", "responseBodyFraming"]


class Delimiter(Enum):
    """What ends a response body."""

    NONE = "none"
    """There is no body: HEAD, 1xx, 204 and 304."""
    CONTENT_LENGTH = "content-length"
    """The body is exactly C{length} bytes."""
    CHUNKED = "chunked"
    """Chunked transfer coding, for an HTTP/1.1 client, length unknown."""
    CLOSE = "close"
    """The end of the connection, for an HTTP/1.0 client, length unknown."""


@dataclass(frozen=True, **SLOTS)
class BodyFraming:
    """
    How one response body is delimited.

    @ivar length: the body's length for L{Delimiter.CONTENT_LENGTH}, 0 for
        L{Delimiter.NONE}, L{None} when only the end of the output tells.
    """

    delimiter: Delimiter
    length: int | None

    @property
    def hasBody(self) -> bool:
        """Whether any body bytes belong to the response."""
        return self.delimiter is not Delimiter.NONE


_NO_BODY = BodyFraming(Delimiter.NONE, 0)
_CHUNKED = BodyFraming(Delimiter.CHUNKED, None)
_CLOSE = BodyFraming(Delimiter.CLOSE, None)


def responseBodyFraming(
    method: bytes, code: int, contentLength: int | None, clientProtocol: bytes = b"HTTP/1.1"
) -> BodyFraming:
    """
    How the body of a response with status C{code} to a C{method} request
    is delimited, given the Content-Length the response declares (if any)
    and the HTTP version of the client it goes to.
    """
    if method == b"HEAD" or code < 200 or code in (204, 304):
        return _NO_BODY
    if contentLength is not None:
        return BodyFraming(Delimiter.CONTENT_LENGTH, contentLength)
    if clientProtocol == b"HTTP/1.0":
        return _CLOSE
    return _CHUNKED
