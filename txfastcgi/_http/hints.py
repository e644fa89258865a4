"""
103 Early Hints, learned: php-fpm cannot send a 1xx through FastCGI, so a
PHP page's C{Link: <...>; rel=preload} headers reach the browser only with
the page, once PHP is done. The browser could have been fetching the style
sheets and scripts they name all that time. So the links a page's response
carried are remembered for its path, and sent as a 103 the next time that
path is asked for, before the request reaches PHP.

What is learned, and what is never sent:

- only C{rel=preload}, C{modulepreload} and C{preconnect} links, from 2xx
  responses to GET;
- only links to the same origin (a path, or an absolute URL on the
  request's own host) or to origins the operator names, so a script cannot
  make the server announce a third party's resources in its name;
- a link value with a control character is dropped, and the values are
  sent as they came (each a whole C{Link} field), never joined with others;
- a response for the path without such links forgets them; an entry
  expires after L{HINT_LIFETIME} seconds, and the table holds at most
  L{MAX_PATHS} paths, the least recently learned going first.

Hints configured for a path are sent from its first request on.

It knows nothing of Twisted: the core asks it, and the fronts write the 103.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

__all__ = ["HINT_LIFETIME", "MAX_PATHS", "EarlyHints", "hintLinks"]

HINT_LIFETIME = 600.0
"""Seconds a learned hint is sent for without a response to confirm it."""

MAX_PATHS = 1024
"""Paths whose hints are kept at most."""

_HINT_RELATIONS = frozenset({b"preload", b"modulepreload", b"preconnect"})

# One link-value: <target> and its parameters, up to the comma that ends it
# (a comma inside a quoted parameter does not).
_LINK_VALUE = re.compile(rb'\s*<([^>]*)>((?:[^,"]|"[^"]*")*)')
_REL = re.compile(rb'(?:^|;)\s*rel\s*=\s*(?:"([^"]*)"|([^;\s]*))', re.IGNORECASE)
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def hintLinks(
    fields: Sequence[bytes], host: bytes | None, origins: frozenset[bytes] = frozenset()
) -> tuple[bytes, ...]:
    """
    The link-values of a response's C{Link} C{fields} that may go into a
    103 for a request to C{host}: preload, modulepreload or preconnect, to
    the same origin or one of C{origins} (C{https://cdn.example.org}).
    """
    hints = []
    for field in fields:
        if _CONTROL.search(field):
            continue
        for match in _LINK_VALUE.finditer(field):
            target, parameters = match.group(1), match.group(2)
            rel = _REL.search(parameters)
            if rel is None:
                continue
            relations = (rel.group(1) or rel.group(2) or b"").lower().split()
            if _HINT_RELATIONS.isdisjoint(relations):
                continue
            if _allowedTarget(target, host, origins):
                hints.append(match.group(0).strip())
    return tuple(hints)


def _allowedTarget(target: bytes, host: bytes | None, origins: frozenset[bytes]) -> bool:
    if target.startswith(b"/") and not target.startswith(b"//"):
        return True
    try:
        parts = urlsplit(target)
    except ValueError:
        return False
    if parts.scheme not in (b"http", b"https") or not parts.netloc:
        return False
    return parts.netloc == host or parts.scheme + b"://" + parts.netloc in origins


class EarlyHints:
    """
    The hints of each path: learned from its responses, and configured.

    @param configured: link-values to send for a path whatever its
        responses say, by path (C{/}, C{/shop/}).
    @param origins: origins other than the request's own whose links may be
        learned (C{https://cdn.example.org}).
    """

    def __init__(
        self, configured: Mapping[bytes, Iterable[bytes]] = {}, origins: Iterable[bytes] = ()
    ) -> None:
        self.configured = {path: tuple(links) for path, links in configured.items()}
        self.origins = frozenset(origin.rstrip(b"/") for origin in origins)
        self._learned: OrderedDict[bytes, tuple[float, tuple[bytes, ...]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._learned)

    def hintsFor(self, path: bytes, now: float) -> tuple[bytes, ...]:
        """The link-values to send in a 103 for a request for C{path}."""
        configured = self.configured.get(path, ())
        learned = self._learned.get(path)
        if learned is None:
            return configured
        expires, links = learned
        if expires <= now:
            del self._learned[path]
            return configured
        if not configured:
            return links
        return configured + tuple(link for link in links if link not in configured)

    def learn(
        self, path: bytes, linkFields: Sequence[bytes], host: bytes | None, now: float
    ) -> None:
        """A 2xx response to a GET for C{path} carried these C{Link} fields (or none)."""
        links = hintLinks(linkFields, host, self.origins) if linkFields else ()
        learned = self._learned
        if not links:
            learned.pop(path, None)
            return
        learned[path] = (now + HINT_LIFETIME, links)
        learned.move_to_end(path)
        if len(learned) > MAX_PATHS:
            learned.popitem(last=False)
