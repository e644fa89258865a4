"""
Map a request path to what serves it: a PHP script, a static file, or an error.

This is nginx's ``try_files $uri $uri/ /index.php?$args`` together with
``fastcgi_split_path_info ^(.+?\\.php)(/.*)$``, but walking the filesystem
instead of matching patterns, so that only a file that really exists and
really ends in ``.php`` is ever run as a script. It knows nothing of Twisted.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Union

__all__ = ["Redirect", "Refused", "Route", "Router", "Script", "StaticFile"]


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
    """Serve this file as it is."""

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

# Files that hold PHP source under other names: other PHP extensions, scripts
# to a filesystem that ignores case (``X.PHP``), editor and backup copies
# (``wp-config.php.bak``, ``index.php~``), included code (``.inc``, and
# Drupal's ``.module``, ``.install``, ``.theme``, ``.profile``, ``.engine``).
# Never served as they are.
_SOURCE_FILE = re.compile(
    r"\.(?:(?:php\d*|phtml|phar|phps)(?:[.~].*)?|inc|module|install|theme|profile|engine)\Z",
    re.IGNORECASE,
)

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
    """

    def __init__(self, documentRoot: str, index: str, frontController: str | None) -> None:
        self.documentRoot = os.path.realpath(documentRoot)
        self._index = index
        self._frontController = frontController

    def route(self, path: bytes) -> Route:
        """
        Find what serves C{path}, a percent-decoded URL path below the mount
        point that starts with C{/}.
        """
        if _CONTROL_CHARACTER.search(path):
            return Refused(400, "The request path contains a control character.")
        parts = _normalize(path.decode("utf-8", "surrogateescape"))
        if parts is None:
            return Refused(400, "The request path leaves the document root.")
        return self._walk(parts, trailingSlash=path.endswith(b"/"), fallback=True)

    def _walk(self, parts: list[str], trailingSlash: bool, fallback: bool) -> Route:
        directory = self.documentRoot
        # Whether a symbolic link was followed: only then can a path that
        # has no ".." segment lead out of the root, and cost a realpath().
        linked = False
        for position, name in enumerate(parts):
            candidate = directory + os.sep + name
            try:
                mode, isLink = _lookup(candidate)
            except OSError:
                break
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
                return Script(candidate, "/" + "/".join(parts[: position + 1]), pathInfo)
            if _SOURCE_FILE.search(name):
                return Refused(403, "Script source is not served.")
            if rest or trailingSlash:
                break
            return StaticFile(candidate)
        else:
            if not linked or self._inside(directory):
                return self._directory(directory, parts, trailingSlash, linked)
        return self._fallback() if fallback else _NOT_FOUND

    def _directory(
        self, directory: str, parts: list[str], trailingSlash: bool, linked: bool
    ) -> Route:
        if parts and not trailingSlash:
            return Redirect()
        index = directory + os.sep + self._index
        try:
            mode, isLink = _lookup(index)
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
        return self._walk(parts, trailingSlash=False, fallback=False)

    def _inside(self, path: str) -> bool:
        """Whether C{path}, symbolic links resolved, is inside the document root."""
        real = os.path.realpath(path)
        return real == self.documentRoot or real.startswith(self.documentRoot + os.sep)


def _lookup(path: str) -> tuple[int, bool]:
    """The mode of what C{path} names, links followed, and whether it is a link."""
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        return os.stat(path).st_mode, True
    return mode, False


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
