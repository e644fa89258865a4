"""
A script hands its response to a file: C{X-Sendfile: /abs/path} (lighttpd,
Apache's mod_xsendfile) or C{X-Accel-Redirect: /uri} (nginx), so that a
private or large download is served as a static file is (conditional GET,
Range, HEAD, C{os.sendfile}) while PHP only decides who may have it.

Off unless the operator names the directories such files may come from
(C{--sendfile-root}). A path is refused, never served, when it is not
absolute, holds a C{..} segment or a control character, leads (through a
symbolic link, say) out of every root, names PHP source, or names no
regular file. The client sees only "500" or "404": the path is in the log.

It knows nothing of Twisted: one call with the script's headers, some
filesystem calls, and an answer.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Union
from urllib.parse import unquote_to_bytes

from txfastcgi._http.routing import FoundFile, isSourceFile

__all__ = ["Handoff", "HandoffRefused", "HandoffResult", "Handoffs"]

_X_SENDFILE = b"x-sendfile"
_X_ACCEL_REDIRECT = b"x-accel-redirect"

# What the script said about its own body, which the file replaces: the
# front describes the file instead. X-Accel-* (Buffering, Limit-Rate,
# Expires, Charset) are nginx's orders to itself, and go too.
_DROPPED = frozenset(
    {
        b"content-length",
        b"content-range",
        b"content-encoding",
        b"transfer-encoding",
        b"etag",
        b"last-modified",
        b"accept-ranges",
        b"status",
        _X_SENDFILE,
    }
)


@dataclass(frozen=True)
class Handoff:
    """
    Serve C{filename} instead of the script's body.

    @ivar filename: the file, symbolic links resolved, with its C{os.stat}.
    @ivar headers: the script's headers that go with it: all but those that
        described its own body, and its Content-Type only if not empty (an
        empty one, as nginx reads it, asks for the file's own type).
    """

    filename: FoundFile
    headers: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class HandoffRefused:
    """
    Answer C{code} and log C{detail}, which names the path; the client is
    told only that it is not found (404) or that the server failed (500).
    """

    code: int
    detail: str


HandoffResult = Union[Handoff, HandoffRefused]


class Handoffs:
    """
    Where a script's file may come from.

    @param roots: the directories under which files may be handed off.
    @param documentRoot: what an X-Accel-Redirect URI is resolved against,
        below any of C{accelPrefixes}.
    @param accelPrefixes: URI prefixes (C{/protected}) and the directories
        they name, as nginx's C{internal} locations with an C{alias}.
    """

    def __init__(
        self,
        roots: Sequence[str],
        documentRoot: str,
        accelPrefixes: Mapping[str, str] = {},
    ) -> None:
        if not roots:
            raise ValueError("no directory to hand files off from")
        self.roots = tuple(os.path.realpath(root) for root in roots)
        self.documentRoot = documentRoot
        # Longest first, so that /a/b wins over /a.
        self.accelPrefixes = sorted(
            ((prefix.rstrip("/"), directory) for prefix, directory in accelPrefixes.items()),
            key=lambda item: -len(item[0]),
        )

    def find(self, headers: Sequence[tuple[bytes, bytes]]) -> HandoffResult | None:
        """
        What the script's C{headers} hand off: a file, a refusal, or
        L{None} when they name no file.
        """
        named: list[tuple[bytes, bytes]] = []
        contentType: bytes | None = None
        kept: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            lower = name.lower()
            if lower == _X_SENDFILE or lower == _X_ACCEL_REDIRECT:
                named.append((lower, value.strip()))
            elif lower == b"content-type":
                contentType = value
            elif lower not in _DROPPED and not lower.startswith(b"x-accel-"):
                kept.append((name, value))
        if not named:
            return None
        if len(named) > 1:
            return HandoffRefused(500, f"the script names {len(named)} files to send")
        [(which, value)] = named
        shown = value.decode("utf-8", "surrogateescape")
        if which == _X_SENDFILE:
            path = shown
            source = f"X-Sendfile {shown!r}"
        else:
            path = self._accelPath(value)
            source = f"X-Accel-Redirect {shown!r} ({path!r})"
        result = self._check(source, path)
        if isinstance(result, HandoffRefused):
            return result
        if contentType:
            kept.insert(0, (b"Content-Type", contentType))
        return Handoff(result, tuple(kept))

    def _accelPath(self, uri: bytes) -> str:
        """The file an X-Accel-Redirect URI names: under a prefix, or the document root."""
        path = unquote_to_bytes(uri.partition(b"?")[0]).decode("utf-8", "surrogateescape")
        for prefix, directory in self.accelPrefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return directory + path[len(prefix) :]
        return self.documentRoot + path

    def _check(self, named: str, path: str) -> FoundFile | HandoffRefused:
        """C{path}, if it may be sent; C{named} says where it came from, for the log."""

        def refused(reason: str, code: int = 500) -> HandoffRefused:
            return HandoffRefused(code, f"{named} {reason}")

        if not path.startswith("/"):
            return refused("is not an absolute path")
        if any(ord(character) < 0x20 or character == "\x7f" for character in path):
            return refused("holds a control character")
        if ".." in path.split("/"):
            return refused("holds a .. segment")
        real = os.path.realpath(path)
        if not any(real == root or real.startswith(root + "/") for root in self.roots):
            return refused("is outside every --sendfile-root")
        if isSourceFile(os.path.basename(real)):
            return refused("is PHP source, which is never sent")
        try:
            info = os.stat(real)
        except OSError:
            return refused("names no file", 404)
        if not stat.S_ISREG(info.st_mode):
            return refused("is not a regular file", 404)
        return FoundFile(real, info)
