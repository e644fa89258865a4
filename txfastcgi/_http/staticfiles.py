"""
Static file responses that know no front: what to answer, what to keep in
memory, and how to put a large file on the wire.

Three pieces, each usable by any HTTP front (twisted.web's or a dedicated
one), none of them importing twisted.web:

  - L{decideResponse}, a pure function: a method, the conditional and range
    headers of a request, and the L{FileFacts} of a file give the
    L{StaticResponse} (200, 206, 304, 405, 412 or 416, with or without a
    body) by the rules of RFC 9110. Everything that depends only on the file
    (ETag, Last-Modified, the whole header block of a 200, 304 and 416) is
    computed once per L{FileFacts}, so that deciding costs a few attribute
    reads on the common paths.
  - L{SmallFileCache}: small files kept in memory, checked against one
    C{os.stat} of their path on every request.
  - L{FileSender}: a byte range of an open file written to a Twisted
    transport, by C{os.sendfile} when the transport is a plain socket.

A front decides which path names a static file (L{txfastcgi._http.routing}), then::

    cached = cache.get(path)
    if cached is not None:
        response = decideResponse(method, cached.facts, ...)
        # write response.head and the front's own fields, then
        # cached.content(response.byteRange) unless byteRange is None
    else:
        file, facts = openFile(path)
        response = decideResponse(method, facts, ...)
        # write response.head and the front's own fields, then
        # FileSender(transport, file, *response.byteRange).start(), or
        # file.close() if response.byteRange is None

Two choices differ from twisted.web's L{twisted.web.static.File} and follow
nginx instead: a file whose type is unknown is C{application/octet-stream},
not C{text/html} (which would let an uploaded file run as a page), and
C{.gz} files are C{application/gzip} without C{Content-Encoding: gzip}
(which would make a browser unpack a downloaded tarball). Like both of them,
text types get no C{charset} parameter: the server cannot know a file's
encoding, and adding one would break files that are not UTF-8.
"""

from __future__ import annotations

import mimetypes
import os
import re
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import cached_property
from socket import socket
from typing import BinaryIO, NamedTuple

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IPullProducer, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txfastcgi._compat import SLOTS

__all__ = [
    "ByteRange",
    "CachedFile",
    "FileFacts",
    "FileSender",
    "SmallFileCache",
    "StaticResponse",
    "contentTypeFor",
    "decideResponse",
    "openFile",
    "parseHTTPDate",
    "satisfiableRanges",
    "withHeaders",
]


class ByteRange(NamedTuple):
    """C{length} bytes of a file from C{offset}."""

    offset: int
    length: int


@dataclass(frozen=True, **SLOTS)
class StaticResponse:
    """
    What to answer to one request for a static file.

    The front adds the status line and its own headers (Date, Server,
    Connection) to these.

    @ivar status: the HTTP status code.
    @ivar reason: its reason phrase.
    @ivar headers: the response's header fields, in order.
    @ivar headerBlock: the same fields as C{Name: value\\r\\n} lines, ready to
        be written after the status line.
    @ivar head: the status line (HTTP/1.1) and the header block, ready to be
        written first, then the front's own fields and the blank line.
    @ivar byteRange: the part of the file that is the body, or L{None} when
        the response has no body (HEAD, 304, 405, 412, 416). A 200 for an
        empty file has an empty range, not L{None}.
    """

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    headerBlock: bytes
    head: bytes
    byteRange: ByteRange | None


def _response(
    status: int,
    reason: bytes,
    headers: tuple[tuple[bytes, bytes], ...],
    byteRange: ByteRange | None,
) -> StaticResponse:
    block = b"".join([b"%s: %s\r\n" % header for header in headers])
    head = b"HTTP/1.1 %d %s\r\n%s" % (status, reason, block)
    return StaticResponse(status, reason, headers, block, head, byteRange)


def _withoutBody(response: StaticResponse) -> StaticResponse:
    """The same answer to a HEAD: the GET's headers, no body."""
    return replace(response, byteRange=None)


def withHeaders(response: StaticResponse, headers: Sequence[tuple[bytes, bytes]]) -> StaticResponse:
    """
    The same answer with C{headers} too, for a file a script handed off: a
    Content-Type among them replaces the file's own where the answer has
    one (a 304 has none), the others are added.
    """
    contentType = [header for header in headers if header[0].lower() == b"content-type"]
    others = tuple(header for header in headers if header[0].lower() != b"content-type")
    own = response.headers
    if contentType and any(name == b"Content-Type" for name, _ in own):
        own = tuple(
            contentType[-1] if name == b"Content-Type" else (name, value) for name, value in own
        )
    return _response(response.status, response.reason, own + others, response.byteRange)


_EMPTY = ((b"Content-Length", b"0"),)
_METHOD_NOT_ALLOWED = _response(
    405, b"Method Not Allowed", ((b"Allow", b"GET, HEAD"), *_EMPTY), None
)
_PRECONDITION_FAILED = _response(412, b"Precondition Failed", _EMPTY, None)


class FileFacts:
    """
    What a response depends on about one version of a file, and every
    answer that depends on nothing else, computed once.

    @ivar size: its size in bytes.
    @ivar mtimeNs: its modification time, in nanoseconds since the epoch.
    @ivar contentType: its media type.
    @ivar etag: its strong entity tag, C{"MTIME-SIZE"} in hexadecimal with
        the time in nanoseconds: the ETag txfastcgi has always sent, so that
        no client cache is invalidated by a change of front.
    @ivar lastModified: C{mtimeNs} as an HTTP date.
    @ivar lastModifiedSeconds: C{mtimeNs} in whole seconds, as HTTP dates
        compare.
    """

    def __init__(self, size: int, mtimeNs: int, contentType: bytes) -> None:
        self.size = size
        self.mtimeNs = mtimeNs
        self.contentType = contentType
        self.etag = b'"%x-%x"' % (mtimeNs, size)
        self.lastModifiedSeconds = mtimeNs // 1_000_000_000
        self.lastModified = _formatHTTPDate(self.lastModifiedSeconds)
        self._validators = ((b"ETag", self.etag), (b"Last-Modified", self.lastModified))
        self.ok = _response(
            200,
            b"OK",
            (
                (b"Content-Type", contentType),
                (b"Content-Length", b"%d" % size),
                *self._validators,
                (b"Accept-Ranges", b"bytes"),
            ),
            ByteRange(0, size),
        )

    # The rarer answers are made when first needed: a large file's facts are
    # made for every request, and a 200 is all most of them need.

    @cached_property
    def okWithoutBody(self) -> StaticResponse:
        """The 200 answer to a HEAD."""
        return _withoutBody(self.ok)

    @cached_property
    def notModified(self) -> StaticResponse:
        """The 304 answer."""
        return _response(304, b"Not Modified", self._validators, None)

    @cached_property
    def unsatisfiable(self) -> StaticResponse:
        """The 416 answer."""
        headers = ((b"Content-Range", b"bytes */%d" % self.size), *_EMPTY)
        return _response(416, b"Range Not Satisfiable", headers, None)

    @classmethod
    def fromStat(cls, path: str, info: os.stat_result) -> FileFacts:
        """The facts of the file at C{path}, whose C{os.stat} is C{info}."""
        return cls(info.st_size, info.st_mtime_ns, contentTypeFor(path))

    def partial(self, byteRange: ByteRange) -> StaticResponse:
        """The 206 response that sends C{byteRange} of this file."""
        offset, length = byteRange
        contentRange = b"bytes %d-%d/%d" % (offset, offset + length - 1, self.size)
        headers = (
            (b"Content-Type", self.contentType),
            (b"Content-Length", b"%d" % length),
            *self._validators,
            (b"Content-Range", contentRange),
        )
        return _response(206, b"Partial Content", headers, byteRange)


def decideResponse(
    method: bytes,
    facts: FileFacts,
    *,
    ifMatch: bytes | None = None,
    ifNoneMatch: bytes | None = None,
    ifModifiedSince: bytes | None = None,
    ifUnmodifiedSince: bytes | None = None,
    ifRange: bytes | None = None,
    rangeHeader: bytes | None = None,
) -> StaticResponse:
    """
    The response to a C{method} request for the file described by C{facts},
    given the values of the request's conditional and range headers (L{None}
    for an absent one; a repeated one joined with C{b", "}).

    Preconditions are evaluated in the order of RFC 9110 section 13.2.2:
    If-Match, or else If-Unmodified-Since (412 when false); then
    If-None-Match with weak comparison, or else If-Modified-Since (304 when
    false); an unparsable date is ignored. Then a Range on GET or HEAD
    (HEAD answers as GET would, as nginx does), unless If-Range names
    another version: one satisfiable range gives 206, none gives 416 with
    C{Content-Range: bytes */SIZE}; several give the whole file with 200
    (multipart/byteranges is not offered, which RFC 9110 allows), as does a
    Range that is malformed, or any Range on an empty file (as nginx does).
    Methods other than GET and HEAD get 405.
    """
    if method == b"GET":
        withBody = True
    elif method == b"HEAD":
        withBody = False
    else:
        return _METHOD_NOT_ALLOWED
    if ifMatch is not None:
        if not _tagMatches(ifMatch, facts.etag, weak=False):
            return _PRECONDITION_FAILED
    elif ifUnmodifiedSince is not None:
        since = parseHTTPDate(ifUnmodifiedSince)
        if since is not None and facts.lastModifiedSeconds > since:
            return _PRECONDITION_FAILED
    if ifNoneMatch is not None:
        if ifNoneMatch == facts.etag or _tagMatches(ifNoneMatch, facts.etag, weak=True):
            return facts.notModified
    elif ifModifiedSince is not None and _notModifiedSince(ifModifiedSince, facts):
        return facts.notModified
    if rangeHeader is not None and facts.size and (ifRange is None or _sameVersion(ifRange, facts)):
        ranges = satisfiableRanges(rangeHeader, facts.size)
        if ranges is not None and len(ranges) < 2:
            response = facts.partial(ranges[0]) if ranges else facts.unsatisfiable
            return response if withBody or response.byteRange is None else _withoutBody(response)
    return facts.ok if withBody else facts.okWithoutBody


# An entity tag in a list, with its weakness indicator (RFC 9110 section 8.8.3).
_ENTITY_TAG = re.compile(rb'(W/)?("[^"]*")')


def _tagMatches(header: bytes, etag: bytes, weak: bool) -> bool:
    """
    Whether an If-Match or If-None-Match list names C{etag}, or is C{*}.
    The weak comparison of If-None-Match also takes C{W/"..."} for our
    strong tag; the strong one of If-Match does not.
    """
    if header.strip() == b"*":
        return True
    return any(
        tag == etag and (weak or not weakness) for weakness, tag in _ENTITY_TAG.findall(header)
    )


def _notModifiedSince(header: bytes, facts: FileFacts) -> bool:
    """If-Modified-Since is false: the file is no newer than the date."""
    if header == facts.lastModified:
        # What browsers send: the Last-Modified they were given.
        return True
    since = parseHTTPDate(header)
    return since is not None and facts.lastModifiedSeconds <= since


def _sameVersion(ifRange: bytes, facts: FileFacts) -> bool:
    """
    If-Range holds: it is our entity tag, compared strongly, or exactly our
    Last-Modified date (RFC 9110 section 13.1.5).
    """
    ifRange = ifRange.strip()
    if ifRange.startswith((b'"', b"W/")):
        return ifRange == facts.etag
    return parseHTTPDate(ifRange) == facts.lastModifiedSeconds


_RANGE_SPEC = re.compile(rb"[ \t]*(?:([0-9]+)-([0-9]*)|-([0-9]+))[ \t]*")


def satisfiableRanges(header: bytes, size: int) -> list[ByteRange] | None:
    """
    The ranges of a C{size}-byte file that a Range header asks for and that
    exist, clipped to the file, in the order asked (RFC 9110 section 14.1.2).
    An empty list means that none is satisfiable (416); L{None} means that
    the header is to be ignored, because its unit is not C{bytes} or it is
    malformed (a range whose last byte precedes its first is malformed).
    """
    unit, equals, rangeSet = header.partition(b"=")
    if not equals or unit.lower() != b"bytes":
        return None
    ranges = []
    empty = True
    for element in rangeSet.split(b","):
        match = _RANGE_SPEC.fullmatch(element)
        if match is None:
            if element.strip(b" \t"):
                return None
            # RFC 9110 section 5.6.1: empty list elements are ignored.
            continue
        empty = False
        first, last, suffix = match.groups()
        if suffix is not None:
            length = min(int(suffix), size)
            if length:
                ranges.append(ByteRange(size - length, length))
            continue
        start = int(first)
        if last and int(last) < start:
            return None
        if start < size:
            end = min(int(last), size - 1) if last else size - 1
            ranges.append(ByteRange(start, end - start + 1))
    return None if empty else ranges


_DAY_NAMES = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTH_NAMES = b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_MONTHS = {month: number for number, month in enumerate(_MONTH_NAMES, start=1)}
_MONTH = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = rb"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# The three forms of RFC 9110 section 5.6.7, each as (day, month, year, H, M, S).
_IMF_FIXDATE = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{2}) " + _MONTH + rb" ([0-9]{4}) " + _TIME + rb" GMT"
)
_RFC850_DATE = re.compile(
    rb"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, ([0-9]{2})-"
    + _MONTH
    + rb"-([0-9]{2}) "
    + _TIME
    + rb" GMT"
)
_ASCTIME_DATE = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) " + _MONTH + rb" ([ 0-9][0-9]) " + _TIME + rb" ([0-9]{4})"
)


def _formatHTTPDate(seconds: int) -> bytes:
    """
    An IMF-fixdate, as C{email.utils.formatdate(usegmt=True)} makes it but
    three times faster, and with English names whatever the locale.
    """
    t = time.gmtime(seconds)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAY_NAMES[t.tm_wday],
        t.tm_mday,
        _MONTH_NAMES[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


def parseHTTPDate(value: bytes) -> int | None:
    """
    An HTTP date in any of its three forms, as seconds since the epoch; or
    L{None} if it is not one. A two-digit year is the one at most 50 years
    ahead of the current year, as RFC 9110 asks.
    """
    value = value.strip()
    if match := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
        fullYear = int(year)
    elif match := _RFC850_DATE.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
        thisYear = datetime.now(timezone.utc).year
        fullYear = thisYear // 100 * 100 + int(year)
        if fullYear > thisYear + 50:
            fullYear -= 100
    elif match := _ASCTIME_DATE.fullmatch(value):
        month, day, hour, minute, second, year = match.groups()
        fullYear = int(year)
    else:
        return None
    try:
        moment = datetime(
            fullYear,
            _MONTHS[month],
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=timezone.utc,
        )
    except ValueError:
        # 31 Feb, 25:00 and the like.
        return None
    return int(moment.timestamp())


def _loadTypes() -> dict[str, str]:
    """
    The system's extension to media type table (/etc/mime.types and the
    like), on top of Python's own: read into a table of our own, so that
    what we send does not depend on who else changed the global one of
    L{mimetypes} (twisted.web.static does, when it is imported).
    """
    types = mimetypes.MimeTypes()
    for name in mimetypes.knownfiles:
        if os.path.isfile(name):
            types.read(name)
    return types.types_map[True]


_TYPES = _loadTypes()
_UNKNOWN_TYPE = b"application/octet-stream"


def contentTypeFor(path: str) -> bytes:
    """The media type of a file, by the extension of its name."""
    extension = os.path.splitext(path)[1].lower()
    known = _TYPES.get(extension)
    return _UNKNOWN_TYPE if known is None else known.encode("ascii")


def openFile(path: str) -> tuple[BinaryIO, FileFacts]:
    """
    Open C{path} for a L{FileSender}, with the facts of the file that was
    opened (not of whatever the path names a moment later).
    """
    file = open(path, "rb", buffering=0)
    try:
        return file, FileFacts.fromStat(path, os.fstat(file.fileno()))
    except BaseException:
        file.close()
        raise


@dataclass(frozen=True, **SLOTS)
class CachedFile:
    """A small file's facts and its whole content, in memory."""

    facts: FileFacts
    body: bytes

    def content(self, byteRange: ByteRange) -> bytes | memoryview:
        """The bytes of C{byteRange}, without copying them."""
        offset, length = byteRange
        if length == len(self.body):
            return self.body
        return memoryview(self.body)[offset : offset + length]


# What tells one version of a file from another. The ctime is set by the
# kernel on every write and cannot be set back, unlike the mtime (touch -d,
# cp -p, rsync -t), and the inode changes when a file is replaced by rename.
_Version = tuple[int, int, int, int, int]


def _version(info: os.stat_result) -> _Version:
    return (info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino, info.st_dev)


# A file changed this recently may change again within the same tick of the
# filesystem's clock without a visible change of its times (ext4 ticks every
# few milliseconds, FAT every 2 s): what was read from it is served, but not
# kept, as git does for its "racily clean" index entries.
_RACY_NS = 2_000_000_000


class SmallFileCache:
    """
    Files of at most C{maxFileSize} bytes, kept in memory up to C{maxBytes}
    in all, least recently used first out.

    Every L{get} checks the file with one C{os.stat} of its path (about 2 µs
    here, a sixth of the prototype's cached 12-byte response; none when the
    router has just taken one): any change of
    its mtime, ctime, size, inode or device is seen by the next request,
    never served stale, and a deleted file is forgotten at once. nginx's
    C{open_file_cache} instead trusts an entry for 60 s; Caddy stats every
    time, as this does. A file changed within the last 2 s is not kept (see
    C{_RACY_NS}), so the coarse clock of a filesystem cannot hide a change.

    The default C{maxFileSize}, 128 KiB, takes in the style sheets and scripts
    of a WordPress page (block-library's style.min.css is 95 KB, jQuery 87
    KB): served from memory, the 95 KB style sheet cost about 108 CPU µs a
    request under C{wrk -c32}, against 173 µs by C{os.sendfile}, whose
    opening, producer registration and extra reactor turn outweigh the
    copy at that size (issue 12). Larger files go by C{os.sendfile}.

    @param clock: the time in seconds since the epoch, as C{time.time}.
    """

    def __init__(
        self,
        maxFileSize: int = 128 * 1024,
        maxBytes: int = 16 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if maxFileSize > maxBytes:
            raise ValueError(f"maxFileSize {maxFileSize} is above maxBytes {maxBytes}")
        self.maxFileSize = maxFileSize
        self.maxBytes = maxBytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[_Version, CachedFile]] = OrderedDict()
        self.cachedBytes = 0
        """The bytes of content now held."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str, info: os.stat_result | None = None) -> CachedFile | None:
        """
        The file at C{path}, current as of this call: from memory, or read
        (and kept, if it stays small and quiet). L{None} if it is too large
        (or is being written to): send it with L{openFile} and L{FileSender}.

        @param info: the C{os.stat} of C{path} taken a moment ago, in the
            same call (by the router, see
            L{txfastcgi._http.routing.FoundFile}), if there is one: it then
            takes none of its own.
        @raise OSError: if it cannot be read (FileNotFoundError when it is
            gone); a cached copy of it is forgotten.
        """
        entries = self._entries
        if info is None:
            try:
                info = os.stat(path)
            except OSError:
                self._forget(path)
                raise
        entry = entries.get(path)
        if entry is not None:
            if entry[0] == _version(info):
                entries.move_to_end(path)
                return entry[1]
            self._forget(path)
        if info.st_size > self.maxFileSize or not stat.S_ISREG(info.st_mode):
            return None
        return self._read(path)

    def _read(self, path: str) -> CachedFile | None:
        file, facts = openFile(path)
        with file:
            before = os.fstat(file.fileno())
            body = file.read(self.maxFileSize + 1)
            after = os.fstat(file.fileno())
        version = _version(after)
        if len(body) != facts.size or version != _version(before):
            # Written to while it was read: what was read matches no version.
            return None
        cached = CachedFile(facts, body)
        changed = max(after.st_mtime_ns, after.st_ctime_ns)
        if self._clock() * 1e9 - changed >= _RACY_NS:
            self._entries[path] = version, cached
            self.cachedBytes += len(body)
            while self.cachedBytes > self.maxBytes:
                self._forget(next(iter(self._entries)))
        return cached

    def _forget(self, path: str) -> None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            self.cachedBytes -= len(entry[1].body)


# How much of a file one read or one sendfile call handles, so that one
# fast client cannot hold the reactor for long.
_READ_SIZE = 64 * 1024
_SENDFILE_SIZE = 1024 * 1024


@implementer(IPullProducer)
class FileSender:
    """
    Write C{length} bytes of C{file} from C{offset} to C{transport}, then
    close the file (also when the connection is lost first).

    It registers itself as the transport's pull producer (the transport must
    have none at the time), which is how a Twisted transport tells when its
    write buffer has drained: then, on a plain TCP or UNIX socket, it calls
    C{os.sendfile}, and when the socket is full it asks the transport to wait
    for writability again (C{startWriting}); the file never passes through
    user space, and a slow reader simply leaves it waiting. On any other
    transport (TLS, a wrapping protocol) it reads and writes the file in
    64 KiB chunks, one per drained buffer. Either way memory stays bounded.

    Touching neither the reactor's registration of the socket (a second
    descriptor for the same fd would replace the transport's own) nor the
    transport's private buffer, it waits one reactor turn before its first
    C{os.sendfile}, for whatever the transport still holds (the response's
    headers) to be written first, unless told that it holds nothing.

    @ivar sent: how many bytes of the file went to the socket (or, without
        sendfile, to the transport) so far.
    """

    def __init__(self, transport: ITransport, file: BinaryIO, offset: int, length: int) -> None:
        self._transport = transport
        self._consumer = IConsumer(transport)
        self._file = file
        self._fd = file.fileno()
        self._offset = offset
        self._remaining = length
        self.sent = 0
        self._socket = _plainSocket(transport)
        self._done: Deferred[None] = Deferred()
        self._registered = False
        self._registering = False
        self._finished = False

    def start(self, drained: bool = False) -> Deferred[None]:
        """
        Start sending: at once if C{drained} says the transport holds no
        bytes yet to be written, else once it has written them. The result
        fires with L{None} once every byte has been handed to the transport
        or the kernel, so that the connection can go on with its next
        response; or fails with L{ConnectionLost} if the connection went
        first, or with the L{OSError} that stopped the sending (the
        connection is then closed: the client must not take the short body
        as complete).
        """
        if not self._remaining:
            self._finish(None)
            return self._done
        self._registered = True
        # A transport calls a pull producer at once when it is registered,
        # whatever its buffer still holds: the first sendfile waits for the
        # transport's first drain instead.
        self._registering = not drained
        self._consumer.registerProducer(self, False)
        self._registering = False
        return self._done

    def resumeProducing(self) -> None:
        """The transport has written all it held: send more."""
        if self._socket is None:
            self._writeChunk()
        elif self._registering:
            self._startWriting()
        else:
            self._sendfile(self._socket)

    def stopProducing(self) -> None:
        """The connection is gone."""
        self._registered = False
        self._finish(Failure(ConnectionLost("the connection closed before the file was sent")))

    def _startWriting(self) -> None:
        # Only for a plain socket, that is, a FileDescriptor.
        transport = self._transport
        assert isinstance(transport, FileDescriptor)
        transport.startWriting()

    def _sendfile(self, socketFD: int) -> None:
        try:
            count = os.sendfile(
                socketFD, self._fd, self._offset, min(self._remaining, _SENDFILE_SIZE)
            )
        except BlockingIOError:
            count = None
        except OSError as e:
            self._abort(e)
            return
        if count == 0:
            self._abort(EOFError(f"the file ended {self._remaining} bytes early"))
            return
        if count is not None:
            self._advance(count)
        if self._remaining:
            # The socket is full, or this turn's share is sent.
            self._startWriting()
        else:
            self._finish(None)

    def _writeChunk(self) -> None:
        try:
            data = os.pread(self._fd, min(self._remaining, _READ_SIZE), self._offset)
        except OSError as e:
            self._abort(e)
            return
        if not data:
            self._abort(EOFError(f"the file ended {self._remaining} bytes early"))
            return
        self._advance(len(data))
        self._transport.write(data)
        if not self._remaining:
            self._finish(None)

    def _advance(self, count: int) -> None:
        self._offset += count
        self._remaining -= count
        self.sent += count

    def _abort(self, reason: BaseException) -> None:
        """Sending failed: the client must see a cut connection, not a whole body."""
        self._finish(Failure(reason))
        self._transport.loseConnection()

    def _finish(self, reason: Failure | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._file.close()
        if self._registered:
            self._registered = False
            self._consumer.unregisterProducer()
        if reason is None:
            self._done.callback(None)
        else:
            self._done.errback(reason)


def _plainSocket(transport: ITransport) -> int | None:
    """
    The file descriptor of the socket under C{transport} if bytes written to
    it reach the peer as they are (no TLS on it), else L{None}.
    """
    if not isinstance(transport, FileDescriptor) or getattr(transport, "TLS", False):
        return None
    handle = transport.getHandle()  # type: ignore[attr-defined]
    return handle.fileno() if isinstance(handle, socket) else None
