"""
A request head in its plainest form, read without llhttp: what browsers,
load generators and monitoring probes send for nearly every request.

llhttp (through httptools) judges every request of the HTTP/1.1 front, and
its callbacks cost several microseconds a request on CPython and about nine
on PyPy, where each one crosses cpyext. L{parsePlainHead} reads a head only
when it is in a narrow form that llhttp takes and reads the same way, and
declines everything else, which llhttp then parses as before:

  - a request line C{METHOD SP origin-form SP HTTP/1.x}, with one of the
    methods llhttp knows for a request without special framing, and a
    target of RFC 3986 characters only;
  - header lines C{name ":" OWS value}, a token for the name and a value of
    visible ASCII, spaces and tabs, with none of those at either end;
  - CRLF line ends, with no bare CR or LF anywhere;
  - no header that changes the framing or the connection's fate beyond
    keep-alive (Content-Length, Transfer-Encoding, Upgrade, Expect, a
    Connection or Proxy-Connection token other than one of C{close} and
    C{keep-alive});
  - a head within the size limit.

So a request with a body, an upgrade, a non-ASCII target, a limit passed
or a malformed byte anywhere is llhttp's, and is refused or answered as
llhttp decides. The two cannot drift apart unnoticed:
C{tests/test_plain_head.py} holds this parser to llhttp's reading of every
head it accepts, over generated variations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from txfastcgi._compat import SLOTS

__all__ = ["PlainHead", "parsePlainHead"]

_REQUEST_LINE = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) (/[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%]*)"
    rb" HTTP/1\.([01])\Z"
)
_FIELD = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x21-\x7e](?:[\t\x20-\x7e]*[\x21-\x7e])?)\Z"
)

# Headers whose meaning llhttp acts on beyond keep-alive, by lower-case name.
_LLHTTP_ONLY = frozenset(
    {b"content-length", b"transfer-encoding", b"upgrade", b"expect", b"proxy-connection"}
)
_CONNECTION_TOKENS = {b"close": False, b"keep-alive": True}


# Not frozen: one is made for nearly every request.
@dataclass(**SLOTS)
class PlainHead:
    """
    A request head as llhttp would have reported it.

    @ivar end: where the head ends in the bytes given, after its blank line.
    @ivar keepAlive: whether the connection may carry another request,
        as llhttp's C{should_keep_alive} says.
    @ivar hosts: how many Host headers there are.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    keepAlive: bool
    hosts: int
    end: int


def parsePlainHead(data: bytes, maxHeaderSize: int) -> PlainHead | None:
    """
    The head at the start of C{data}, if it is whole, in the plain form the
    module docstring describes, and within C{maxHeaderSize} bytes (line ends
    not counted); else L{None}, for llhttp to parse.
    """
    blank = data.find(b"\r\n\r\n")
    if blank == -1:
        return None
    lines = data[:blank].split(b"\r\n")
    # The line ends, of the lines and of the blank line, do not count.
    if blank + 2 - 2 * len(lines) > maxHeaderSize:
        return None
    requestLine = _REQUEST_LINE.match(lines[0])
    if requestLine is None:
        return None
    method, target, minor = requestLine.groups()
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    connection: bool | None = None
    for index in range(1, len(lines)):
        field = _FIELD.match(lines[index])
        if field is None:
            return None
        name, value = field.groups()
        lower = name.lower()
        if lower == b"host":
            hosts += 1
        elif lower == b"connection":
            for token in value.lower().split(b","):
                meaning = _CONNECTION_TOKENS.get(token.strip(b" \t"))
                if meaning is None or (connection is not None and connection is not meaning):
                    return None
                connection = meaning
        elif lower in _LLHTTP_ONLY:
            return None
        headers.append((name, value))
    if minor == b"1":
        version, keepAlive = b"HTTP/1.1", connection is not False
    else:
        version, keepAlive = b"HTTP/1.0", connection is True
    return PlainHead(method, target, version, headers, keepAlive, hosts, blank + 4)
