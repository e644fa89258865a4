"""
A response cache for PHP, as nginx's fastcgi_cache is, with HTTP's own rules
(RFC 9111) deciding what may be kept and for how long.

What is stored: a complete response to a GET, with a status that may be
cached (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501), whose
Cache-Control or Expires gives it a lifetime (C{s-maxage}, else
C{max-age}, else C{Expires} minus C{Date}; no heuristic lifetime), that is
not C{private}, C{no-store} or C{no-cache}, has no Set-Cookie, no
C{Vary: *}, and fits L{ResponseCache.maxEntrySize}.

What is never answered from it: a request with Authorization, or with a
cookie that marks a logged-in user (L{DEFAULT_BYPASS_COOKIES}: WordPress's;
configurable), or a method other than GET and HEAD: those go to PHP
(C{BYPASS}). A request with C{Cache-Control: no-cache} or C{Pragma:
no-cache} goes to PHP too, and its response is stored.

The key is the scheme, the host and the whole target; a response's Vary
names the request headers whose values tell its variants apart.

Within C{stale-while-revalidate} after it goes stale an entry is still
served while it is refreshed, and within C{stale-if-error} it is served
when PHP cannot answer (502, 503, 504). Memory is bounded: the least
recently used entries go first once the entries' bytes pass
L{ResponseCache.maxSize}.

Simultaneous misses for one key wait for the first to fill it (nginx's
C{fastcgi_cache_lock}): L{ResponseCache.fill} says who fills, and
L{ResponseCache.filled} wakes the others.

It knows nothing of Twisted; the core calls it.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from fnmatch import fnmatchcase

__all__ = [
    "DEFAULT_BYPASS_COOKIES",
    "CacheCounts",
    "Recording",
    "ResponseCache",
    "Stored",
    "lifetimes",
]

DEFAULT_BYPASS_COOKIES = ("wordpress_logged_in_*", "comment_author_*", "wp-postpass_*")
"""Cookies of a logged-in WordPress user or commenter, whose pages are their own."""

_CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
_DIRECTIVE = re.compile(rb'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("[^"]*"|[^,\s]*))?\s*')

Key = tuple[bytes, bytes, bytes]
"""Scheme, host and target."""


@dataclass
class Stored:
    """One stored response."""

    code: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    storedAt: float
    freshUntil: float
    staleWhileRevalidate: float
    staleIfError: float

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(n) + len(v) + 4 for n, v in self.headers) + 200

    def age(self, now: float) -> int:
        return max(0, int(now - self.storedAt))


@dataclass
class CacheCounts:
    """How requests fared, for the status page and the metrics."""

    hits: int = 0
    misses: int = 0
    stale: int = 0
    bypasses: int = 0


def _directives(values: Iterable[bytes]) -> dict[bytes, bytes]:
    directives: dict[bytes, bytes] = {}
    for value in values:
        for part in value.split(b","):
            match = _DIRECTIVE.fullmatch(part)
            if match is not None:
                directives[match.group(1).lower()] = (match.group(2) or b"").strip(b'"')
    return directives


def _seconds(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(int(value)))
    except ValueError:
        return None


def _date(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


def lifetimes(
    code: int, headers: Sequence[tuple[bytes, bytes]]
) -> tuple[float, float, float] | None:
    """
    How long a response may be served fresh, then stale while it is
    refreshed, then stale when PHP fails, in seconds; L{None} if it may not
    be stored at all.
    """
    if code not in _CACHEABLE_STATUSES or _values(headers, b"set-cookie"):
        return None
    if any(b"*" in value for value in _values(headers, b"vary")):
        return None
    directives = _directives(_values(headers, b"cache-control"))
    if directives.keys() & {b"private", b"no-store", b"no-cache"}:
        return None
    lifetime = _seconds(directives.get(b"s-maxage"))
    if lifetime is None:
        lifetime = _seconds(directives.get(b"max-age"))
    if lifetime is None:
        expires = _date(next(iter(_values(headers, b"expires")), None))
        if expires is None:
            return None
        date = _date(next(iter(_values(headers, b"date")), None))
        if date is None:
            return None
        lifetime = max(0.0, expires - date)
    if lifetime <= 0:
        return None
    return (
        lifetime,
        _seconds(directives.get(b"stale-while-revalidate")) or 0.0,
        _seconds(directives.get(b"stale-if-error")) or 0.0,
    )


@dataclass
class Recording:
    """A response being stored as it streams by, until it is too large."""

    key: Key
    vary: tuple[bytes, ...]
    variant: tuple[bytes | None, ...]
    stored: Stored
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


class ResponseCache:
    """
    Stored responses, least recently used first.

    @param maxSize: the most bytes the entries may hold together.
    @param maxEntrySize: the largest response stored (default an eighth of
        C{maxSize}, at most 8 MiB).
    @param bypassCookies: patterns of cookie names (C{fnmatch}) whose
        presence sends a request past the cache.
    """

    def __init__(
        self,
        maxSize: int,
        maxEntrySize: int | None = None,
        bypassCookies: Sequence[str] = DEFAULT_BYPASS_COOKIES,
    ) -> None:
        self.maxSize = maxSize
        self.maxEntrySize = (
            min(maxSize // 8, 8 * 1024 * 1024) if maxEntrySize is None else maxEntrySize
        )
        self.bypassCookies = tuple(bypassCookies)
        self.counts = CacheCounts()
        self.size = 0
        self._entries: OrderedDict[tuple[Key, tuple[bytes | None, ...]], Stored] = OrderedDict()
        # Each key's Vary, and the variants stored under it.
        self._vary: dict[Key, tuple[bytes, ...]] = {}
        self._variants: dict[Key, set[tuple[bytes | None, ...]]] = {}
        self._filling: dict[Key, list[Callable[[], None]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    # Requests

    def bypasses(self, method: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Whether a request must go to PHP and its response not be kept."""
        if method not in (b"GET", b"HEAD"):
            return True
        for name, value in headers:
            lower = name.lower()
            if lower == b"authorization":
                return True
            if lower == b"cookie" and self.bypassCookies:
                for cookie in value.split(b";"):
                    cookieName = cookie.partition(b"=")[0].strip().decode("latin-1")
                    if any(fnmatchcase(cookieName, p) for p in self.bypassCookies):
                        return True
        return False

    @staticmethod
    def wantsFresh(headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Whether the client asked for a response from the origin (it is stored all the same)."""
        for name, value in headers:
            lower = name.lower()
            if (lower == b"cache-control" or lower == b"pragma") and b"no-cache" in value.lower():
                return True
        return False

    def lookup(self, key: Key, requestHeaders: Sequence[tuple[bytes, bytes]]) -> Stored | None:
        """The stored response for this request, fresh or not."""
        vary = self._vary.get(key)
        if vary is None:
            return None
        entryKey = (key, _variant(vary, requestHeaders))
        stored = self._entries.get(entryKey)
        if stored is not None:
            self._entries.move_to_end(entryKey)
        return stored

    # Filling

    def fill(self, key: Key, waiter: Callable[[], None]) -> bool:
        """
        Whether the caller fills C{key}; if another request fills it now,
        C{waiter} is called once that one is done (stored or not).
        """
        waiters = self._filling.get(key)
        if waiters is None:
            self._filling[key] = []
            return True
        waiters.append(waiter)
        return False

    def filled(self, key: Key) -> None:
        """The request that filled C{key} is done: wake those that waited for it."""
        for waiter in self._filling.pop(key, ()):
            waiter()

    def record(
        self,
        key: Key,
        requestHeaders: Sequence[tuple[bytes, bytes]],
        code: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        now: float,
    ) -> Recording | None:
        """Start storing a response, if it may be stored."""
        allowed = lifetimes(code, headers)
        if allowed is None:
            return None
        fresh, whileRevalidating, ifError = allowed
        vary = tuple(
            sorted(
                {
                    name.strip().lower()
                    for value in _values(headers, b"vary")
                    for name in value.split(b",")
                    if name.strip()
                }
            )
        )
        stored = Stored(
            code, reason, tuple(headers), b"", now, now + fresh, whileRevalidating, ifError
        )
        return Recording(key, vary, _variant(vary, requestHeaders), stored)

    def add(self, recording: Recording, data: bytes) -> bool:
        """Some of the body; C{False} once the response is too large to keep."""
        recording.size += len(data)
        if recording.size > self.maxEntrySize:
            return False
        recording.parts.append(data)
        return True

    def store(self, recording: Recording) -> None:
        """The recorded response is complete: keep it, evicting the least recently used."""
        stored = recording.stored
        stored.body = b"".join(recording.parts)
        key = recording.key
        if self._vary.get(key, recording.vary) != recording.vary:
            self.purge(key)  # Its Vary changed: the old variants are not comparable.
        variant = recording.variant
        if variant in self._variants.get(key, ()):
            self._drop(key, variant)
        self._vary[key] = recording.vary
        self._entries[key, variant] = stored
        self._variants.setdefault(key, set()).add(variant)
        self.size += stored.size
        while self.size > self.maxSize and self._entries:
            self._drop(*next(iter(self._entries)))

    def purge(self, key: Key) -> int:
        """Drop every variant stored for C{key}; how many there were."""
        variants = list(self._variants.get(key, ()))
        for variant in variants:
            self._drop(key, variant)
        return len(variants)

    def _drop(self, key: Key, variant: tuple[bytes | None, ...]) -> None:
        """Forget one stored variant, and the key once it has none."""
        self.size -= self._entries.pop((key, variant)).size
        variants = self._variants[key]
        variants.discard(variant)
        if not variants:
            del self._variants[key]
            del self._vary[key]


def _variant(
    vary: tuple[bytes, ...], requestHeaders: Sequence[tuple[bytes, bytes]]
) -> tuple[bytes | None, ...]:
    """The values of the request headers a response varies on."""
    if not vary:
        return ()
    values: dict[bytes, list[bytes]] = {}
    for name, value in requestHeaders:
        lower = name.lower()
        if lower in vary:
            values.setdefault(lower, []).append(value.strip())
    return tuple(b", ".join(values[name]) if name in values else None for name in vary)
