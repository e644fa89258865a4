"""
Response compression: zstd, brotli or gzip, as the client's Accept-Encoding
and the response allow, streamed.

The rules, all here and none in a front:

- the coding is the one the client weighs highest (RFC 9110 section 12.5.3:
  q-values, C{*}, C{q=0} refuses), zstd before br before gzip at equal
  weight, none if it accepts none of them;
- only compressible media types (text, JSON, JavaScript, XML, SVG, fonts
  that are not compressed already), and never a response that has a
  Content-Encoding already, says C{Cache-Control: no-transform}, is a 206,
  has no body (HEAD, 204, 304), or is shorter than L{MINIMUM_SIZE};
- a compressible response says C{Vary: Accept-Encoding} whether or not this
  client got it compressed, so that a cache never hands one to the other;
- a compressed one loses its Content-Length (the front frames it) and its
  strong ETag becomes weak (RFC 9110 section 8.8.3: the bytes changed).

L{CompressingWriter} stands between the core and a front's writer. A body
whose length is unknown is held until L{MINIMUM_SIZE} bytes, a flush or its
end: a short whole response then goes as it is, with its length, and a
script's flush (server-sent events, progress output) is a flush of the
encoder too, so that what the script flushed reaches the client now.

Levels, measured on a 25 KB HTML page on this machine (CPU per response):
zstd 3 (130 µs), brotli 4 (400 µs), gzip 4 (400 µs); higher levels gained
under 1 % of size for up to twice the time.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import zstandard

from txfastcgi._http.framing import BodyFraming, Delimiter
from txfastcgi._http.writers import ForwardingWriter

try:
    import brotli
except ImportError:  # PyPy: the same API from brotlicffi.
    import brotlicffi as brotli

if TYPE_CHECKING:
    from txfastcgi._http.core import ResponseWriter

__all__ = [
    "MINIMUM_SIZE",
    "CompressingWriter",
    "Encoder",
    "acceptedCodings",
    "chooseEncoding",
    "isCompressible",
    "makeEncoder",
    "precompressed",
    "varyOnEncoding",
]

MINIMUM_SIZE = 1024
"""Bodies shorter than this go as they are: the coding's frame costs more than it saves."""

# The server's preference among codings the client weighs the same.
_CODINGS = (b"zstd", b"br", b"gzip")

_COMPRESSIBLE_TYPES = frozenset(
    {
        b"application/javascript",
        b"application/x-javascript",
        b"application/ecmascript",
        b"application/json",
        b"application/xml",
        b"application/wasm",
        b"application/vnd.ms-fontobject",
        b"application/x-font-ttf",
        b"font/ttf",
        b"font/otf",
        b"image/svg+xml",
        b"image/x-icon",
        b"image/bmp",
    }
)

_VARY = b"Accept-Encoding"


def acceptedCodings(acceptEncoding: Sequence[bytes]) -> list[bytes]:
    """
    The codings of ours a client whose Accept-Encoding fields are
    C{acceptEncoding} (none: the header is absent) takes, the one it weighs
    highest first.
    """
    if not acceptEncoding:
        return []  # Most clients but browsers: nothing to weigh.
    weights: dict[bytes, float] = {}
    anyWeight: float | None = None
    for field in acceptEncoding:
        for item in field.split(b","):
            coding, _, parameters = item.partition(b";")
            coding = coding.strip().lower()
            weight = 1.0
            for parameter in parameters.split(b";"):
                name, _, value = parameter.partition(b"=")
                if name.strip().lower() == b"q":
                    try:
                        weight = float(value.strip())
                    except ValueError:
                        weight = 0.0  # A weight that cannot be read accepts nothing.
            if coding == b"*":
                anyWeight = weight
            elif coding:
                weights[coding] = weight
    otherwise = 0.0 if anyWeight is None else anyWeight
    weighed = [(weights.get(coding, otherwise), coding) for coding in _CODINGS]
    # sorted() keeps the server's order among equal weights.
    return [coding for weight, coding in sorted(weighed, key=lambda w: -w[0]) if weight > 0]


def chooseEncoding(acceptEncoding: Sequence[bytes]) -> bytes | None:
    """The coding to compress with for this client, or L{None} for none."""
    codings = acceptedCodings(acceptEncoding)
    return codings[0] if codings else None


# Where precompressed copies of a file are, beside it.
_SUFFIXES = {b"zstd": ".zst", b"br": ".br", b"gzip": ".gz"}


def precompressed(filename: str, acceptEncoding: Sequence[bytes]) -> tuple[str, bytes] | None:
    """
    A precompressed copy of C{filename} beside it (C{style.css.zst}, C{.br}
    or C{.gz}) in a coding the client takes, the one it prefers first, and
    that coding; L{None} if there is none. A copy must be a regular file,
    not a symbolic link, which could lead out of the document root.
    """
    for coding in acceptedCodings(acceptEncoding):
        variant = filename + _SUFFIXES[coding]
        try:
            info = os.lstat(variant)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            return variant, coding
    return None


def isCompressible(contentType: bytes | None) -> bool:
    """Whether a body of this media type shrinks when compressed (not images, video, archives)."""
    if not contentType:
        return False
    mediaType = contentType.partition(b";")[0].strip().lower()
    return (
        mediaType.startswith(b"text/")
        or mediaType in _COMPRESSIBLE_TYPES
        or mediaType.endswith((b"+json", b"+xml"))
    )


def varyOnEncoding(headers: list[tuple[bytes, bytes]]) -> None:
    """Make C{headers} say C{Vary: Accept-Encoding}, merged into a Vary they have."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            named = {part.strip().lower() for part in value.split(b",")}
            if b"accept-encoding" not in named and b"*" not in named:
                headers[index] = (name, value + b", " + _VARY)
            return
    headers.append((b"Vary", _VARY))


class Encoder(Protocol):
    """One response's compressor: what each coding's library offers, under one name."""

    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes:
        """All that was given so far, decodable now; the stream goes on."""

    def finish(self) -> bytes:
        """The end of the stream."""


class _Gzip:
    def __init__(self) -> None:
        self._compressor = zlib.compressobj(4, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def compress(self, data: bytes) -> bytes:
        return self._compressor.compress(data)

    def flush(self) -> bytes:
        return self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._compressor.flush()


class _Brotli:
    def __init__(self) -> None:
        self._compressor = brotli.Compressor(quality=4)

    def compress(self, data: bytes) -> bytes:
        result: bytes = self._compressor.process(data)
        return result

    def flush(self) -> bytes:
        result: bytes = self._compressor.flush()
        return result

    def finish(self) -> bytes:
        result: bytes = self._compressor.finish()
        return result


_ZSTD = zstandard.ZstdCompressor(level=3)


class _Zstd:
    def __init__(self) -> None:
        self._compressor = _ZSTD.compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._compressor.compress(data)

    def flush(self) -> bytes:
        return self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


_ENCODERS: dict[bytes, type[Encoder]] = {b"zstd": _Zstd, b"br": _Brotli, b"gzip": _Gzip}


def makeEncoder(coding: bytes) -> Encoder:
    """A new encoder for C{coding}, one of what L{chooseEncoding} returns."""
    return _ENCODERS[coding]()


def _weakened(etag: bytes) -> bytes:
    return etag if etag.startswith(b"W/") else b"W/" + etag


class CompressingWriter(ForwardingWriter):
    """
    A L{ResponseWriter} that compresses the body it is given with C{coding}
    for C{writer}, once the body is known to be worth it (see the module
    docstring); otherwise it passes the response on as it is.

    @param unknownLength: the framing of a body whose length only its end
        tells, for this client (chunked, or the connection's end for HTTP/1.0).
    """

    def __init__(self, writer: ResponseWriter, coding: bytes, unknownLength: BodyFraming) -> None:
        super().__init__(writer)
        self._coding = coding
        self._unknownLength = unknownLength
        self._encoder: Encoder | None = None
        self._deciding = True
        self._held: list[bytes] = []
        self._heldSize = 0
        self._head: tuple[int, bytes, list[tuple[bytes, bytes]]] = (0, b"", [])

    def writeHead(
        self,
        code: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        framing: BodyFraming,
    ) -> None:
        self._head = (code, reason, list(headers))

    def writeBody(self, data: bytes) -> None:
        encoder = self._encoder
        if encoder is not None:
            compressed = encoder.compress(data)
            if compressed:
                self._writer.writeBody(compressed)
            return
        if not self._deciding:
            self._writer.writeBody(data)
            return
        self._held.append(data)
        self._heldSize += len(data)
        if self._heldSize >= MINIMUM_SIZE:
            self._startCompressing(self._unknownLength)

    def flush(self) -> None:
        if self._deciding and self._held:
            # The script flushed before the threshold: the rest may come
            # much later, so its bytes go now, compressed as they will be.
            self._startCompressing(self._unknownLength)
        encoder = self._encoder
        if encoder is not None:
            flushed = encoder.flush()
            if flushed:
                self._writer.writeBody(flushed)
        self._writer.flush()

    def finish(self) -> None:
        writer = self._writer
        if self._deciding:
            body = b"".join(self._held)
            self._deciding = False
            code, reason, headers = self._head
            if len(body) < MINIMUM_SIZE:
                writer.writeHead(code, reason, headers, _lengthOf(body))
                writer.writeBody(body)
            else:
                # Whole already: compressed at once, and sent with its length.
                encoder = makeEncoder(self._coding)
                compressed = encoder.compress(body) + encoder.finish()
                writer.writeHead(code, reason, self._encodedHeaders(), _lengthOf(compressed))
                writer.writeBody(compressed)
        elif self._encoder is not None:
            writer.writeBody(self._encoder.finish())
        writer.finish()

    def _startCompressing(self, framing: BodyFraming) -> None:
        self._deciding = False
        encoder = self._encoder = makeEncoder(self._coding)
        code, reason, _ = self._head
        self._writer.writeHead(code, reason, self._encodedHeaders(), framing)
        held, self._held = self._held, []
        compressed = encoder.compress(b"".join(held))
        if compressed:
            self._writer.writeBody(compressed)

    def _encodedHeaders(self) -> list[tuple[bytes, bytes]]:
        _, _, headers = self._head
        encoded = [
            (name, _weakened(value) if name.lower() == b"etag" else value)
            for name, value in headers
            if name.lower() != b"content-length"
        ]
        encoded.append((b"Content-Encoding", self._coding))
        return encoded


def _lengthOf(body: bytes) -> BodyFraming:
    return BodyFraming(Delimiter.CONTENT_LENGTH, len(body))
