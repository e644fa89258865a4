"""
CGI/1.1 on both sides of a FastCGI request, as pure functions.

Outbound: the parameters php-fpm needs (the set nginx's ``fastcgi.conf``
sends), built from a plain description of an HTTP request so that nothing
here knows about twisted.web. Inbound: the CGI header block a script prints
before its body, turned into an HTTP status and headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from txfastcgi._compat import SLOTS
from txfastcgi._fastcgi.records import decodeNameValuePairs, encodeNameValuePairs
from txfastcgi.errors import MalformedResponse

if TYPE_CHECKING:
    # Python 3.9's typing has no TypeAlias; annotations are never evaluated.
    from typing_extensions import TypeAlias

__all__ = [
    "MAX_HEADER_BLOCK",
    "CGIParams",
    "CGIRequest",
    "CGIResponseHead",
    "ResponseHeadParser",
    "headerParams",
    "parseResponseHead",
]

# Request headers whose values reach PHP some other way, or must not reach it:
# CONTENT_TYPE/CONTENT_LENGTH carry the first two (the length of the body as
# forwarded, which differs from the header for chunked uploads); a ``Proxy:``
# header would become HTTP_PROXY, which many HTTP libraries read as their proxy
# setting (httpoxy); the body is no longer chunked when PHP reads it.
_HEADERS_NOT_FORWARDED = frozenset(
    {b"content-type", b"content-length", b"proxy", b"transfer-encoding"}
)

# Only letters, digits and dashes: ``X_Forwarded_For`` or ``X.Forwarded.For``
# would otherwise alias HTTP_X_FORWARDED_FOR, which applications trust.
_VALID_HEADER_NAME = re.compile(rb"[A-Za-z0-9-]+\Z")


def headerParams(rawHeaders: Iterable[tuple[bytes, Sequence[bytes]]]) -> list[tuple[bytes, bytes]]:
    """
    Turn request headers into ``HTTP_*`` parameters.

    Repeated headers are joined into one value (``Cookie`` with ``; `` as
    RFC 6265 wants, the others with ``, ``) rather than keeping only the
    last, which is what a CGI environment can hold.

    @param rawHeaders: pairs of header name and all of its values, as
        L{twisted.web.http_headers.Headers.getAllRawHeaders} gives them.
    """
    joined: dict[bytes, bytes] = {}
    get = joined.get
    for name, values in rawHeaders:
        key = _paramNames.get(name)
        if key is None:
            key = _paramName(name)
        if key:
            for value in values:
                earlier = get(key)
                joined[key] = (
                    value
                    if earlier is None
                    else earlier + (b"; " if key == b"HTTP_COOKIE" else b", ") + value
                )
    return list(joined.items())


def _paramName(name: bytes) -> bytes:
    """
    The ``HTTP_*`` name of a header, or C{b""} for one never forwarded;
    remembered, since the same few names come with every request.
    """
    if name.lower() in _HEADERS_NOT_FORWARDED or not _VALID_HEADER_NAME.match(name):
        key = b""
    else:
        key = b"HTTP_" + name.upper().replace(b"-", b"_")
    if len(_paramNames) < _MAX_PARAM_NAMES:
        _paramNames[name] = key
    return key


# Header names as sent, in the case each client sends them, and their params.
_paramNames: dict[bytes, bytes] = {}
# Enough for every header name real clients send; a client inventing names
# cannot grow it past this.
_MAX_PARAM_NAMES = 4096


# Not frozen: one is made for every request, and a frozen dataclass's
# __init__ costs three times as much (its headers make it unhashable anyway).
@dataclass(**SLOTS)
class CGIRequest:
    """
    Everything the CGI parameters of one request are computed from.

    Paths are already decoded and resolved by the caller (the resource knows
    the document root and the mount point); text values are C{str}, raw wire
    values are C{bytes}.
    """

    method: bytes
    requestURI: bytes
    queryString: bytes
    scriptFilename: str
    scriptName: str
    pathInfo: str
    documentURI: str
    documentRoot: str
    serverProtocol: bytes
    https: bool
    remoteAddr: str
    remotePort: int | None
    serverAddr: str
    serverPort: int | None
    serverName: bytes
    contentType: bytes | None
    contentLength: int | None
    headers: Sequence[tuple[bytes, Sequence[bytes]]]

    def params(
        self, serverSoftware: bytes, extra: Mapping[bytes, bytes] = {}
    ) -> list[tuple[bytes, bytes]]:
        """
        The FastCGI parameters for this request.

        @param serverSoftware: the value of SERVER_SOFTWARE.
        @param extra: operator-configured parameters; they win over every
            computed parameter and every header of the same name, so a
            client can never set them.
        """
        return CGIParams(serverSoftware, extra).params(self)


class CGIParams:
    """
    The FastCGI parameters of one site's requests, encoded as a PARAMS
    body: what is the same for every request (SERVER_SOFTWARE, the
    configured params...) or for every request to one listener and document
    root (SERVER_ADDR, SERVER_PORT, DOCUMENT_ROOT) is encoded once, and
    L{encode} adds the rest.

    @param serverSoftware: the value of SERVER_SOFTWARE.
    @param extra: operator-configured parameters; they win over every
        computed parameter and every header of the same name, so a client
        can never set them.
    """

    def __init__(self, serverSoftware: bytes, extra: Mapping[bytes, bytes] = {}) -> None:
        self._extra = dict(extra)
        self._encodedExtra = encodeNameValuePairs(self._extra.items())
        self._constant = self._encodeUnlessConfigured(
            [
                (b"GATEWAY_INTERFACE", b"CGI/1.1"),
                (b"SERVER_SOFTWARE", serverSoftware),
                # PHP built with --enable-force-cgi-redirect refuses to run without it.
                (b"REDIRECT_STATUS", b"200"),
            ]
        )
        # Encoded SERVER_ADDR and SERVER_PORT of each listener, and
        # DOCUMENT_ROOT of each root: a site has a few of each.
        self._listeners: dict[object, bytes] = {}
        self._roots: dict[object, bytes] = {}

    def _encodeUnlessConfigured(self, pairs: _Pairs) -> bytes:
        """The encoded C{pairs}, but those the configured params replace."""
        extra = self._extra
        return encodeNameValuePairs(
            [pair for pair in pairs if pair[0] not in extra] if extra else pairs
        )

    def _remember(self, cache: dict[object, bytes], key: object, pairs: _Pairs) -> bytes:
        """Encode C{pairs}, which are the same whenever C{key} is, once."""
        encoded = cache[key] = self._encodeUnlessConfigured(pairs)
        if len(cache) > _MAX_REMEMBERED:
            del cache[next(iter(cache))]
        return encoded

    def encode(self, request: CGIRequest) -> bytes:
        """The FastCGI parameters for C{request}, encoded as a PARAMS body."""
        https = request.https
        contentLength = request.contentLength
        pathInfo = _encode(request.pathInfo)
        pairs = [
            (b"REQUEST_METHOD", request.method),
            (b"REQUEST_URI", request.requestURI),
            (b"QUERY_STRING", request.queryString),
            (b"SCRIPT_FILENAME", _encode(request.scriptFilename)),
            (b"SCRIPT_NAME", _encode(request.scriptName)),
            (b"PATH_INFO", pathInfo),
            (b"DOCUMENT_URI", _encode(request.documentURI)),
            (b"SERVER_PROTOCOL", request.serverProtocol),
            (b"REQUEST_SCHEME", b"https" if https else b"http"),
            (b"REMOTE_ADDR", _encode(request.remoteAddr)),
            (b"REMOTE_PORT", _encodePort(request.remotePort)),
            (b"SERVER_NAME", request.serverName),
            (b"CONTENT_TYPE", request.contentType or b""),
            (b"CONTENT_LENGTH", b"" if contentLength is None else b"%d" % contentLength),
        ]
        if pathInfo:
            pairs.append((b"PATH_TRANSLATED", _encode(request.documentRoot + request.pathInfo)))
        if https:
            # Absent rather than "off" on plain HTTP: WordPress and others
            # test isset() or empty() and both are right when it is missing.
            pairs.append((b"HTTPS", b"on"))
        # No computed name starts with HTTP_, so only configured ones can
        # replace a header's.
        pairs += headerParams(request.headers)
        serverAddr, serverPort = request.serverAddr, request.serverPort
        listener = self._listeners.get((serverAddr, serverPort))
        if listener is None:
            listener = self._remember(
                self._listeners,
                (serverAddr, serverPort),
                [(b"SERVER_ADDR", _encode(serverAddr)), (b"SERVER_PORT", _encodePort(serverPort))],
            )
        root = request.documentRoot
        documentRoot = self._roots.get(root)
        if documentRoot is None:
            documentRoot = self._remember(self._roots, root, [(b"DOCUMENT_ROOT", _encode(root))])
        return b"".join(
            (
                self._constant,
                documentRoot,
                listener,
                self._encodeUnlessConfigured(pairs),
                self._encodedExtra,
            )
        )

    def params(self, request: CGIRequest) -> list[tuple[bytes, bytes]]:
        """The FastCGI parameters for C{request}, as L{encode} sends them."""
        return decodeNameValuePairs(self.encode(request))


_Pairs: TypeAlias = "list[tuple[bytes, bytes]]"

# Listeners or document roots remembered at most: a site has a few, and a
# server bound to a wildcard address sees one per local address.
_MAX_REMEMBERED = 64


def _encode(text: str) -> bytes:
    """
    Encode a decoded path or address the way the filesystem and PHP see it.

    C{surrogateescape} gives back the original bytes of a name that is not
    valid UTF-8, so SCRIPT_FILENAME always names the file that was found.
    """
    return text.encode("utf-8", "surrogateescape")


def _encodePort(port: int | None) -> bytes:
    return b"" if port is None else b"%d" % port


MAX_HEADER_BLOCK = 65536
"""Largest CGI header block accepted, as nginx's default buffers allow."""


# Not frozen, as CGIRequest: one is made for every response.
@dataclass(**SLOTS)
class CGIResponseHead:
    """The HTTP status and headers a CGI header block asks for."""

    code: int
    reason: bytes | None
    headers: tuple[tuple[bytes, bytes], ...]
    contentLength: int | None


# Headers that describe one HTTP connection, not the response: the front end
# has its own connection with the client and frames the body itself.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# A value may not hold a NUL or a bare CR: RFC 9110 calls them dangerous,
# and a client or cache that reads a CR as a line end would see another header.
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# A final status: a 1xx would tell the client that another response follows,
# and the body would be read as that response. The reason phrase is written
# into the status line as it is, so it may hold no control character.
_STATUS_VALUE = re.compile(rb"([2-5][0-9][0-9])(?:[ \t:]+([\t\x20-\x7e\x80-\xff]*))?\Z")
_LINE_END = re.compile(rb"\r?\n")


def parseResponseHead(block: bytes) -> CGIResponseHead:
    """
    Parse a CGI header block (without the blank line that ends it).

    ``Status`` is accepted as ``404``, ``404 Not Found``, ``404: Not Found``
    and with or without a space after the colon, before or after
    ``Location``; it is consumed, never forwarded. ``Location`` without
    ``Status`` means 302, as CGI/1.1 says for a client redirect. Lines may end
    with CRLF or a bare LF.

    @raise MalformedResponse: for a line that is not a header (or whose value
        holds a NUL or a CR), a status that is not a number from 200 to 599
        (with a reason phrase free of control characters), or a Content-Length
        that is not a number or comes twice.
    """
    code: int | None = None
    reason: bytes | None = None
    headers: list[tuple[bytes, bytes]] = []
    contentLength: int | None = None
    hasLocation = False
    lines = block.split(b"\r\n") if block else []
    if lines and block.count(b"\n") >= len(lines):
        # Some line ends with a bare LF.
        lines = _LINE_END.split(block)
    for line in lines:
        # A token, optional blanks, a colon, the value between optional blanks.
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")
        value = value.strip(b" \t")
        if not colon or _HEADER_NAME.fullmatch(name) is None or b"\x00" in value or b"\r" in value:
            raise MalformedResponse(f"invalid header line from the script: {line[:80]!r}")
        lowerName = name.lower()
        if lowerName == b"status":
            status = _STATUS_VALUE.match(value)
            if status is None:
                raise MalformedResponse(f"invalid Status header from the script: {value[:80]!r}")
            code = int(status.group(1))
            reason = status.group(2) or None
        elif lowerName in _HOP_BY_HOP:
            continue
        else:
            if lowerName == b"content-length":
                if contentLength is not None:
                    # Two lengths could frame the body two ways downstream.
                    raise MalformedResponse("the script sent Content-Length twice")
                if not value.isdigit():
                    raise MalformedResponse(
                        f"invalid Content-Length from the script: {value[:80]!r}"
                    )
                contentLength = int(value)
            elif lowerName == b"location":
                hasLocation = True
            headers.append((name, value))
    if code is None:
        code = 302 if hasLocation else 200
    return CGIResponseHead(code, reason, tuple(headers), contentLength)


_HEAD_END = re.compile(rb"\r?\n\r?\n")


class ResponseHeadParser:
    """
    Find the header block at the start of a script's output, fed in pieces.

    FastCGI cuts STDOUT into records wherever it likes, so the blank line
    that ends the headers may be split across records.
    """

    def __init__(self, maxSize: int = MAX_HEADER_BLOCK) -> None:
        self._buffer = b""
        self._maxSize = maxSize

    def feed(self, data: bytes) -> tuple[CGIResponseHead, bytes] | None:
        """
        Add output; once the header block is complete, parse it.

        @return: L{None} while the header block is incomplete, then the parsed
            head and the body bytes that followed it in C{data}.
        @raise MalformedResponse: the block is invalid or longer than allowed.
        """
        if not self._buffer:
            # The whole block in the first piece, its lines all ending in
            # CRLF, as php-fpm sends it: no regular expression to run.
            blank = data.find(b"\r\n\r\n")
            if 0 <= blank <= self._maxSize and data.count(b"\n", 0, blank) == data.count(
                b"\r\n", 0, blank
            ):
                return parseResponseHead(data[:blank]), data[blank + 4 :]
        # Search only the new bytes plus enough of the old ones to find a
        # terminator that straddles the two.
        searchFrom = max(len(self._buffer) - 3, 0)
        self._buffer += data
        end = _HEAD_END.search(self._buffer, searchFrom)
        # Without an end yet, up to 3 bytes may be the start of the blank line.
        headSize = len(self._buffer) - 3 if end is None else end.start()
        if headSize > self._maxSize:
            raise MalformedResponse(
                f"the script sent a header block over {self._maxSize} bytes (too big header)"
            )
        if end is None:
            return None
        head = parseResponseHead(self._buffer[: end.start()])
        return head, self._buffer[end.end() :]
