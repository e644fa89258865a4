"""
Map a request path to what serves it: a PHP script, a static file, or an error.

This is nginx's ``try_files $uri $uri/ /index.php?$args`` together with
``fastcgi_split_path_info ^(.+?\\.php)(/.*)$``, but walking the filesystem
instead of matching patterns, so that only a file that really exists and
really ends in ``.php`` is ever run as a script. It knows nothing of Twisted.

A walk takes an C{lstat} per path segment, about 2 µs each here: 15 µs for
WordPress's C{/wp-includes/css/dist/block-library/style.min.css}. So a path
that led to a file is remembered with the file's identity, and the next
request for it takes a single C{os.stat} of that file instead of the walk;
that stat goes with the route (L{FoundFile}), so that what serves a static
file need not take its own.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

__all__ = [
    "FoundFile",
    "Redirect",
    "Refused",
    "Route",
    "Router",
    "Script",
    "StaticFile",
    "isSourceFile",
]


class FoundFile(str):
    """
    The path of a file the router has just found, with the C{os.stat} of it
    it took while routing this request. It is a C{str}, for whatever takes a
    path; what serves the file in the same call may use C{info} rather than
    stat the file again.

    @ivar info: the C{os.stat} of the file, symbolic links followed.
    """

    __slots__ = ("info",)
    info: os.stat_result

    def __new__(cls, path: str, info: os.stat_result) -> FoundFile:
        found = super().__new__(cls, path)
        found.info = info
        return found


@dataclass(frozen=True)
class Script:
    """
    Run a PHP script.

    @ivar filename: its absolute path (SCRIPT_FILENAME).
    @ivar scriptName: its URL path below the mount point (SCRIPT_NAME).
    @ivar pathInfo: the rest of the URL path after the script (PATH_INFO).
    """

    filename: str
    scriptName: str
    pathInfo: str


@dataclass(frozen=True)
class StaticFile:
    """
    Serve this file as it is.

    @ivar filename: its absolute path; a L{FoundFile} when the router made it.
    """

    filename: str


@dataclass(frozen=True)
class Redirect:
    """A directory was named without its trailing slash: redirect to add it."""


@dataclass(frozen=True)
class Refused:
    """Answer with this HTTP error and nothing else."""

    code: int
    reason: str


Route = Union[Script, StaticFile, Redirect, Refused]

SCRIPT_SUFFIX = ".php"

_NOT_FOUND = Refused(404, "No such page.")

# What tells the file a path led to from any other: a directory on the way
# replaced (by a symbolic link out of the root, say) leads to another file;
# the ctime, which no one can set back, tells a file from a new one that
# reuses a deleted one's inode.
_Identity = tuple[int, int, int]


def _identity(info: os.stat_result) -> _Identity:
    return (info.st_ino, info.st_dev, info.st_ctime_ns)


# A file changed this recently may be replaced within the same tick of a
# coarse filesystem clock by one with the same identity: its path is walked
# again next time, as staticfiles.SmallFileCache keeps no such file.
_RACY_NS = 2_000_000_000

# Files that hold PHP source under other names: other PHP extensions, scripts
# to a filesystem that ignores case (``X.PHP``), editor and backup copies
# (``wp-config.php.bak``, ``index.php~``), included code (``.inc``, and
# Drupal's ``.module``, ``.install``, ``.theme``, ``.profile``, ``.engine``).
# Never served as they are.
_SOURCE_FILE = re.compile(
    r"\.(?:(?:php\d*|phtml|phar|phps)(?:[.~].*)?|inc|module|install|theme|profile|engine)\Z",
    re.IGNORECASE,
)


def isSourceFile(name: str) -> bool:
    """Whether the file C{name} (a name or a path) holds PHP source: never sent as it is."""
    return _SOURCE_FILE.search(name) is not None


# A decoded path with a control character is an attack or a mistake, never a
# file name a site means to serve (CVE-2019-11043 puts "\n" in PATH_INFO).
_CONTROL_CHARACTER = re.compile(rb"[\x00-\x1f\x7f]")


class Router:
    """
    Resolve URL paths under one document root.

    @param documentRoot: the directory; resolved to its real path once.
    @param index: the script that serves a directory.
    @param frontController: the URL path (below the mount point) that serves
        a path naming nothing, or L{None} to answer 404 instead.
    @param remembered: how many paths that led to a file (a script or a
        static file) are remembered; the one remembered first goes first.
    @param clock: the time in seconds since the epoch, as C{time.time}.
    """

    def __init__(
        self,
        documentRoot: str,
        index: str,
        frontController: str | None,
        *,
        remembered: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.documentRoot = os.path.realpath(documentRoot)
        self._index = index
        self._frontController = frontController
        self._remembered = remembered
        self._clock = clock
        # Request path -> the script or the static file's path its walk led
        # to, and the identity of that file.
        self._found: dict[bytes, tuple[Script | str, _Identity]] = {}

    def route(self, path: bytes) -> Route:
        """
        Find what serves C{path}, a percent-decoded URL path below the mount
        point that starts with C{/}.

        A path that led straight to a file (not to a directory's index, nor
        to the front controller) leads there again while that file, as one
        C{os.stat} finds it, is the same file: every other fact the walk
        checked is a fact of the path's text, or holds of any path that leads
        to that file through directories (a file named as a directory fails
        the stat). Any change, a file gone or replaced or a segment made a
        link to elsewhere, means a new walk.
        """
        known = self._found.get(path)
        if known is not None:
            target, identity = known
            filename = target.filename if isinstance(target, Script) else target
            try:
                info = os.stat(filename)
            except OSError:
                info = None
            if info is not None and _identity(info) == identity:
                if isinstance(target, Script):
                    return target
                return StaticFile(FoundFile(filename, info))
            del self._found[path]
        if _CONTROL_CHARACTER.search(path):
            return Refused(400, "The request path contains a control character.")
        parts = _normalize(path.decode("utf-8", "surrogateescape"))
        if parts is None:
            return Refused(400, "The request path leaves the document root.")
        found = self._walk(parts, trailingSlash=path.endswith(b"/"), fallback=True)
        if isinstance(found, tuple):
            route, info = found
            self._remember(path, route, info)
            return route
        return found

    def _remember(self, path: bytes, route: Script | StaticFile, info: os.stat_result) -> None:
        if self._clock() * 1e9 - max(info.st_mtime_ns, info.st_ctime_ns) < _RACY_NS:
            return
        found = self._found
        if len(found) >= self._remembered:
            del found[next(iter(found))]
        target = route if isinstance(route, Script) else str(route.filename)
        found[path] = target, _identity(info)

    def _walk(
        self, parts: list[str], trailingSlash: bool, fallback: bool
    ) -> Route | tuple[Script | StaticFile, os.stat_result]:
        """
        Walk C{parts} down from the root: a route, or, when they led straight
        to a file, that route with the C{os.stat} of the file.
        """
        directory = self.documentRoot
        # Whether a symbolic link was followed: only then can a path that
        # has no ".." segment lead out of the root, and cost a realpath().
        linked = False
        for position, name in enumerate(parts):
            candidate = directory + os.sep + name
            try:
                info, isLink = _lookup(candidate)
            except OSError:
                break
            mode = info.st_mode
            linked = linked or isLink
            if name.startswith(".") and name != ".well-known":
                return Refused(403, "Hidden files are not served.")
            if stat.S_ISDIR(mode):
                directory = candidate
                continue
            if not stat.S_ISREG(mode) or (linked and not self._inside(candidate)):
                break
            rest = parts[position + 1 :]
            if name.endswith(SCRIPT_SUFFIX):
                pathInfo = ""
                if rest or trailingSlash:
                    pathInfo = "/" + "/".join(rest) + ("/" if rest and trailingSlash else "")
                return Script(candidate, "/" + "/".join(parts[: position + 1]), pathInfo), info
            if isSourceFile(name):
                return Refused(403, "Script source is not served.")
            if rest or trailingSlash:
                break
            return StaticFile(FoundFile(candidate, info)), info
        else:
            if not linked or self._inside(directory):
                return self._directory(directory, parts, trailingSlash, linked)
        if fallback:
            return self._fallback()
        return _NOT_FOUND

    def _directory(
        self, directory: str, parts: list[str], trailingSlash: bool, linked: bool
    ) -> Route:
        if parts and not trailingSlash:
            return Redirect()
        index = directory + os.sep + self._index
        try:
            info, isLink = _lookup(index)
            mode = info.st_mode
        except OSError:
            mode, isLink = 0, False
        if stat.S_ISREG(mode) and (not (linked or isLink) or self._inside(index)):
            return Script(index, "/" + "/".join([*parts, self._index]), "")
        return Refused(403, "This directory has no index.")

    def _fallback(self) -> Route:
        if self._frontController is None:
            return _NOT_FOUND
        parts = _normalize(self._frontController)
        if parts is None:
            return _NOT_FOUND
        found = self._walk(parts, trailingSlash=False, fallback=False)
        # Not remembered: it depends on the path naming nothing.
        return found[0] if isinstance(found, tuple) else found

    def _inside(self, path: str) -> bool:
        """Whether C{path}, symbolic links resolved, is inside the document root."""
        real = os.path.realpath(path)
        return real == self.documentRoot or real.startswith(self.documentRoot + os.sep)


def _lookup(path: str) -> tuple[os.stat_result, bool]:
    """The C{os.stat} of what C{path} names, links followed, and whether it is a link."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return os.stat(path), True
    return info, False


def _normalize(path: str) -> list[str] | None:
    """
    The segments of C{path} with empty and C{.} segments dropped and C{..}
    applied; L{None} if C{..} would climb above the root.
    """
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(segment)
    return parts
