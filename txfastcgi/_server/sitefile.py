"""
The site file of C{twist fastcgi-proxy --config sites.toml}: every site one
process serves, as frozen, typed values (L{SiteFile}, L{ServerSettings},
L{Site}, L{ACMESettings}) that a C{.tac} file can also build by hand.

The file is TOML; its keys are the fields of these classes, spelt the same
(their docstrings say what each means, and C{docs/reference/site-file.rst}
shows them all)::

    [server]                  # optional: ServerSettings
    listen = ["tcp:80"]

    [[site]]                  # one per site: Site
    hosts = ["example.org", "*.example.org"]
    root = "/srv/example"
    php_fpm = ["unix:/run/php/php8.2-fpm.sock"]   # or "spawn"

    [acme]                    # needed by a site with acme = true: ACMESettings
    email = "admin@example.org"

A key that is left out has the command line's default, taken from the same
constants as L{txfastcgi._server.options.Options}. Relative paths in the file
are relative to the file's directory, so that it means the same from
wherever the command is run.

L{loadSiteFile} reports every problem of a file at once, each as
C{FILE:LINE: what is wrong} (L{Problem}), as C{nginx -t} does. tomllib
keeps no positions, so L{_KeyLines} finds the line of each key in the text
that tomllib has already accepted.

The command line's one site maps onto the same structure (L{fromOptions}),
through one table, L{_SITE_OPTIONS} and L{_SERVER_OPTIONS}: the process
serves a L{SiteFile} either way.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import sys
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from twisted.internet import endpoints

from txfastcgi._http.accesslog import ACCESS_LOG_FORMATS
from txfastcgi._http.cache import DEFAULT_BYPASS_COOKIES
from txfastcgi._limits import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_BODY_SIZE
from txfastcgi._server.checks import (
    directoryProblem,
    earlyHintProblem,
    endpointProblem,
    isUnder,
    networkProblem,
    unshareable,
)
from txfastcgi._server.endpointstrings import isTLS, splitTLS
from txfastcgi._server.phpfpm import findPHPFPM
from txfastcgi._server.units import UnitError, parseDuration, parseSize
from txfastcgi.errors import PHPFPMNotFound

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = [
    "ACME_DIRECTORY",
    "DEFAULT_ACCESS_LOG_FORMAT",
    "DEFAULT_BACKEND",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_FRONT_CONTROLLER",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_INDEX",
    "DEFAULT_LISTEN",
    "DEFAULT_QUEUE_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_SPAWN_CHILDREN",
    "HSTS_MAX_AGE",
    "PER_SITE_OPTIONS",
    "SPAWN",
    "ACMESettings",
    "Problem",
    "ServerSettings",
    "Site",
    "SiteFile",
    "SiteFileError",
    "TLSFiles",
    "fromOptions",
    "hostProblem",
    "loadSiteFile",
    "parseSiteFile",
]

SPAWN = "spawn"
"""The C{php_fpm} (C{--php-fpm}) value that starts a private php-fpm for the site."""

DEFAULT_LISTEN = "tcp:8080"
"""Where the server listens unless told: C{--listen}'s default."""

DEFAULT_BACKEND = "unix:/run/php/php-fpm.sock"
"""C{--php-fpm}'s default: the alias Debian's php-fpm systemd unit makes."""

DEFAULT_INDEX = "index.php"
"""C{--index}'s default."""

DEFAULT_FRONT_CONTROLLER = "/index.php"
"""C{--front-controller}'s default: where WordPress, Laravel and Drupal route."""

DEFAULT_SPAWN_CHILDREN = 4
"""C{--spawn-children}'s default: the workers of a spawned php-fpm."""

DEFAULT_CONNECT_TIMEOUT = 5.0
"""C{--connect-timeout}'s default, in seconds."""

DEFAULT_READ_TIMEOUT = 60.0
"""C{--read-timeout}'s default, in seconds: nginx's C{fastcgi_read_timeout}."""

DEFAULT_IDLE_TIMEOUT = 5.0
"""C{--idle-timeout}'s default, in seconds."""

DEFAULT_QUEUE_TIMEOUT = 30.0
"""C{--queue-timeout}'s default, in seconds."""

DEFAULT_SHUTDOWN_TIMEOUT = 30.0
"""C{--shutdown-timeout}'s default, in seconds."""

DEFAULT_ACCESS_LOG_FORMAT = "combined"
"""C{--access-log-format}'s default."""

HSTS_MAX_AGE = 365 * 24 * 3600.0
"""The C{max-age} of C{hsts = true}: a year, what the HSTS preload list asks for."""

ACME_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
"""Let's Encrypt's production directory, C{[acme] directory}'s default."""

DEFAULT_ACME_STATE = "/var/lib/txfastcgi/acme"
"""Where the ACME account key and certificates are kept by default."""

UNKNOWN_HOST_CHOICES = ("default", "refuse")
"""
C{[server] unknown_host}: a request for a host no site names goes to the
default site, or is refused with 421 Misdirected Request. C{"default"} is
the default, as nginx's first server is, rather than Caddy's refusal: it is
what the command line's one site does (every host is served), so a
command line moved into a one-site file answers as it did.
"""

REDIRECT_CHOICES = ("www", "non-www")
"""C{redirect}: to the host with C{www.} in front, or to the one without."""


@dataclass(frozen=True)
class TLSFiles:
    """
    A site's own certificate, for its hosts (by SNI).

    @ivar certificate: the PEM certificate, with its chain after it
        (Let's Encrypt's C{fullchain.pem}).
    @ivar key: its PEM private key.
    """

    certificate: str
    key: str


@dataclass(frozen=True)
class Site:
    """
    One site: the hosts it answers for and what it serves, as the command
    line's per-site options describe the only site.

    @ivar root: the document root (C{--path}).
    @ivar hosts: the host names it answers for: exact (C{example.org}) or
        every subdomain (C{*.example.org}); none makes it the default site,
        which answers for every host no other site names.
    @ivar php_fpm: FastCGI backends as Twisted client endpoint strings,
        load-balanced, or C{"spawn"} for a private php-fpm serving this
        site (C{--php-fpm}). Two sites share connections to a backend only
        if they name the same one.
    @ivar index: the directory index script (C{--index}).
    @ivar front_controller: where a path that names no file goes, or
        C{None} (C{false} in the file) for a 404 (C{--front-controller}).
    @ivar params: extra FastCGI params, which win over anything a client
        sends (C{--param}).
    @ivar https: send C{HTTPS=on} even over plain HTTP (C{--https}).
    @ivar max_connections: most connections to each backend; C{None} for
        the command line's default (C{--max-connections}).
    @ivar spawn_children: workers of a spawned php-fpm (C{--spawn-children}).
    @ivar connect_timeout: seconds to connect to a backend, then 502.
    @ivar read_timeout: seconds to wait for backend output, then 504.
    @ivar idle_timeout: seconds a kept FastCGI connection may stay idle.
    @ivar queue_timeout: seconds a request may wait for a connection, then 503.
    @ivar max_body_size: largest request body in bytes, then 413.
    @ivar sendfile_roots: directories PHP may hand files from with
        X-Sendfile or X-Accel-Redirect (C{--sendfile-root}).
    @ivar accel_prefixes: X-Accel-Redirect URI prefix to directory, each
        under a sendfile root (C{--accel-prefix}).
    @ivar compress: compress responses (zstd, br, gzip); C{--no-compress}.
    @ivar early_hints: send 103 Early Hints learned from Link headers.
    @ivar early_hint_links: URL path to the Link fields to hint for it from
        the first request on (C{--early-hint}).
    @ivar cache_size: bytes of PHP responses to cache in memory; 0 for none.
    @ivar cache_status: add C{X-Cache} to responses the cache had a say in.
    @ivar cache_bypass_cookies: names (patterns) of cookies whose requests
        skip the cache (C{--cache-bypass-cookie}).
    @ivar tls: the site's own certificate files, or C{None}.
    @ivar acme: get the hosts' certificates by ACME (see L{ACMESettings}).
    @ivar redirect: C{"www"} or C{"non-www"} to send every request to
        that form of its host with a 301, or C{None}.
    @ivar https_redirect: send plain HTTP requests to HTTPS with a 301.
    @ivar hsts: C{Strict-Transport-Security} C{max-age} in seconds, or
        C{None} for no header (C{true} in the file is L{HSTS_MAX_AGE}).
    """

    root: str
    hosts: tuple[str, ...] = ()
    php_fpm: tuple[str, ...] = (DEFAULT_BACKEND,)
    index: str = DEFAULT_INDEX
    front_controller: str | None = DEFAULT_FRONT_CONTROLLER
    params: Mapping[str, str] = field(default_factory=dict)
    https: bool = False
    max_connections: int | None = None
    spawn_children: int = DEFAULT_SPAWN_CHILDREN
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    sendfile_roots: tuple[str, ...] = ()
    accel_prefixes: Mapping[str, str] = field(default_factory=dict)
    compress: bool = True
    early_hints: bool = True
    early_hint_links: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cache_size: int = 0
    cache_status: bool = False
    cache_bypass_cookies: tuple[str, ...] = DEFAULT_BYPASS_COOKIES
    tls: TLSFiles | None = None
    acme: bool = False
    redirect: str | None = None
    https_redirect: bool = False
    hsts: float | None = None


@dataclass(frozen=True)
class ServerSettings:
    """
    What the whole process does, whatever the site: the C{[server]} table.
    The command line's server options (C{--listen}, C{--workers}, ...) are
    the defaults of the keys the file leaves out.

    @ivar listen: Twisted server endpoint strings (C{--listen}).
    @ivar access_log: the access log's file, C{-} for standard output, or
        C{None} for the event log (C{--access-log}).
    @ivar access_log_format: C{combined} or C{json}.
    @ivar workers: processes sharing the listening sockets.
    @ivar status_path: URL path of the JSON status page, or C{None}.
    @ivar metrics_path: URL path of the Prometheus metrics page, or C{None}.
    @ivar status_allow: networks that may read those pages besides loopback.
    @ivar shutdown_timeout: seconds requests in progress get on SIGTERM.
    @ivar trusted_proxies: networks of proxies whose Forwarded or
        X-Forwarded-* headers are believed (C{--trusted-proxy}).
    @ivar header_timeout: seconds a client may take to send a request head.
    @ivar body_timeout: seconds a client may pause while sending a body.
    @ivar unknown_host: C{"default"} or C{"refuse"}: see
        L{UNKNOWN_HOST_CHOICES}.
    """

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    access_log: str | None = None
    access_log_format: str = DEFAULT_ACCESS_LOG_FORMAT
    workers: int = 1
    status_path: str | None = None
    metrics_path: str | None = None
    status_allow: tuple[str, ...] = ()
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    trusted_proxies: tuple[str, ...] = ()
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    unknown_host: str = UNKNOWN_HOST_CHOICES[0]


@dataclass(frozen=True)
class ACMESettings:
    """
    How the certificates of the sites with C{acme = true} are obtained: the
    C{[acme]} table.

    @ivar email: the account's contact address, which the CA writes to
        before a certificate expires.
    @ivar directory: the ACME server's directory URL.
    @ivar state: the directory of the account key and the certificates.
    @ivar ca_bundle: PEM certificates to trust for the ACME server's own
        TLS (a private CA such as pebble), or C{None} for the system's.
    """

    email: str
    directory: str = ACME_DIRECTORY
    state: str = DEFAULT_ACME_STATE
    ca_bundle: str | None = None


@dataclass(frozen=True)
class SiteFile:
    """
    Everything a site file says.

    @ivar acme: the C{[acme]} table, if there is one.
    """

    server: ServerSettings
    sites: tuple[Site, ...]
    acme: ACMESettings | None = None


@dataclass(frozen=True)
class Problem:
    """
    One thing wrong with a site file, shown as C{FILE:LINE: message} (or
    C{FILE: message} for the file as a whole), as compilers, C{nginx -t}
    and editors' error lists have it.
    """

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


class SiteFileError(ValueError):
    """A site file that cannot be served: its L{problems}, in the order of their lines."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = tuple(problems)


# Where a value is in the parsed file: the keys and array indices leading to
# it, as ("site", 0, "hosts", 1).
Where = tuple[object, ...]


class _KeyLines:
    """
    The line of every table header, key and array element of a TOML text
    that tomllib has accepted.

    String contents and comments are masked first (with the same length, so
    that positions still match the text), after which the text's structure
    is brackets, braces, commas, dots and C{=} alone.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._masked = _mask(text)
        self._starts = [0, *(i + 1 for i, c in enumerate(text) if c == "\n")]
        self._lines: dict[Where, int] = {}
        self._arrays: dict[Where, int] = {}
        self._statements()

    def line(self, where: Where) -> int | None:
        """The line of C{where}, or of the nearest thing around it that is written."""
        for length in range(len(where), 0, -1):
            line = self._lines.get(where[:length])
            if line is not None:
                return line
        return None

    def _lineAt(self, position: int) -> int:
        return bisect_right(self._starts, position)

    def _record(self, where: Where, position: int) -> None:
        self._lines.setdefault(where, self._lineAt(position))

    def _skip(self, position: int, newlines: bool) -> int:
        blanks = " \t\r\n" if newlines else " \t\r"
        while position < len(self._masked) and self._masked[position] in blanks:
            position += 1
        return position

    def _key(self, position: int) -> tuple[tuple[str, ...], int]:
        """A dotted key at C{position}: its parts, and where it ends."""
        match = _DOTTED_KEY.match(self._masked, position)
        if match is None:
            return (), position + 1
        parts = []
        for part in _KEY_PART.finditer(self._masked, match.start(1), match.end(1)):
            name = self._text[part.start() : part.end()]
            parts.append(name[1:-1] if name[0] in "\"'" else name)
        return tuple(parts), match.end()

    def _statements(self) -> None:
        table: Where = ()
        position = self._skip(0, newlines=True)
        while position < len(self._masked):
            if self._masked[position] == "[":
                array = self._masked.startswith("[[", position)
                parts, end = self._key(position + (2 if array else 1))
                table = self._header(parts, array)
                self._record(table, position)
                if array:
                    self._record(table[:-1], position)
                position = self._masked.index("]", end) + (2 if array else 1)
            else:
                parts, end = self._key(position)
                where = (*table, *parts)
                self._record(where, position)
                position = self._value(self._skip(end + 1, newlines=False), where)
            position = self._masked.find("\n", position)
            position = len(self._masked) if position < 0 else self._skip(position, True)

    def _header(self, parts: tuple[str, ...], array: bool) -> Where:
        """
        Where a table header leads: through the latest table of each array
        of tables on its way (C{[site.tls]} is the last C{[[site]]}'s), and
        to a new one for an array's own header.
        """
        where: list[object] = []
        for number, part in enumerate(parts):
            where.append(part)
            if array and number == len(parts) - 1:
                self._arrays[tuple(where)] = self._arrays.get(tuple(where), 0) + 1
            if tuple(where) in self._arrays:
                where.append(self._arrays[tuple(where)] - 1)
        return tuple(where)

    def _value(self, position: int, where: Where) -> int:
        """Record the elements of the value at C{position}; where it ends."""
        masked = self._masked
        opening = masked[position : position + 1]
        if opening in ("[", "{"):
            closing = "]" if opening == "[" else "}"
            index = 0
            position += 1
            while True:
                position = self._skip(position, newlines=True)
                if position >= len(masked) or masked[position] == closing:
                    return position + 1
                if masked[position] == ",":
                    position += 1
                    continue
                if opening == "[":
                    element: Where = (*where, index)
                    index += 1
                else:
                    parts, end = self._key(position)
                    element = (*where, *parts)
                    self._record(element, position)
                    position = self._skip(end + 1, newlines=False)
                self._record(element, position)
                position = self._value(position, element)
        for quote in ('"""', "'''", '"', "'"):
            if masked.startswith(quote, position):
                return masked.index(quote, position + len(quote)) + len(quote)
        end = position
        while end < len(masked) and masked[end] not in ",]}\n":
            end += 1
        return max(end, position + 1)


_BARE_KEY = r"[A-Za-z0-9_-]+"
_KEY_PART = re.compile(rf"{_BARE_KEY}|\"[^\"\n]*\"|'[^'\n]*'")
_DOTTED_KEY = re.compile(rf"\s*((?:{_KEY_PART.pattern})(?:\s*\.\s*(?:{_KEY_PART.pattern}))*)\s*")


def _mask(text: str) -> str:
    """
    C{text} with each string's content replaced by C{x} and each comment by
    spaces, newlines kept: what is left cannot be mistaken for structure.
    """
    masked = list(text)
    position = 0
    while position < len(text):
        character = text[position]
        if character == "#":
            end = text.find("\n", position)
            end = len(text) if end < 0 else end
            masked[position:end] = " " * (end - position)
            position = end
            continue
        if character not in "\"'":
            position += 1
            continue
        quote = (
            text[position : position + 3] if text.startswith(character * 3, position) else character
        )
        end = position + len(quote)
        while not text.startswith(quote, end) and end < len(text):
            end += 2 if character == '"' and text[end] == "\\" else 1
        # A multi-line string may end in up to two more quotes of its own.
        while len(quote) == 3 and text.startswith(character, end + 3):
            end += 1
        for inside in range(position + len(quote), min(end, len(text))):
            if text[inside] != "\n":
                masked[inside] = "x"
        position = end + len(quote)
    return "".join(masked)


class _Wrong(ValueError):
    """
    A value that a reader refuses; its message follows the key's name
    (C{"must be a string, not an integer"}), and C{at} leads from the key
    to the part that is wrong.
    """

    def __init__(self, message: str, at: Where = ()) -> None:
        super().__init__(message)
        self.at = at


_T = TypeVar("_T")
Reader = Callable[[object], Any]

_TOML_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _refuse(wanted: str, value: object, at: Where = ()) -> NoReturn:
    kind = _TOML_TYPES.get(type(value), "a date or time")
    raise _Wrong(f"must be {wanted}, not {kind}", at)


def _string(value: object) -> str:
    if not isinstance(value, str):
        _refuse("a string", value)
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        _refuse("true or false", value)
    return value


def _strings(value: object) -> tuple[str, ...]:
    """An array of strings, or one string for an array of one."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        _refuse("a string or an array of strings", value)
    for index, element in enumerate(value):
        if not isinstance(element, str):
            _refuse("a string", element, (index,))
    return tuple(value)


def _table(value: object, read: Callable[[object], _T]) -> dict[str, _T]:
    if not isinstance(value, dict):
        _refuse("a table", value)
    table = {}
    for key, element in value.items():
        try:
            table[key] = read(element)
        except _Wrong as e:
            raise _Wrong(f"{key!r} {e}", (key, *e.at)) from None
    return table


def _stringTable(value: object) -> dict[str, str]:
    return _table(value, _string)


def _choice(choices: Sequence[str]) -> Reader:
    def read(value: object) -> str:
        choice = _string(value)
        if choice not in choices:
            raise _Wrong(f"{choice!r} is not one of {', '.join(choices)}")
        return choice

    return read


def _quantity(parse: Callable[[str], float], kind: str, minimum: float) -> Reader:
    """A size or a duration: a number, or a string with a unit (C{64M}, C{30s})."""

    def read(value: object) -> float:
        if isinstance(value, str):
            try:
                number = parse(value)
            except UnitError as e:
                raise _Wrong(str(e)) from None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        else:
            _refuse(kind, value)
        if number < minimum:
            raise _Wrong(f"{value!r} is below {minimum:g}")
        return number

    return read


def _count(minimum: int) -> Reader:
    def read(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            _refuse("an integer", value)
        if value < minimum:
            raise _Wrong(f"{value!r} is below {minimum}")
        return value

    return read


def _size(minimum: int) -> Reader:
    read = _quantity(parseSize, "a size (like 1048576, 512K, 64M or 1G)", minimum)
    return lambda value: int(read(value))


_readDuration = _quantity(parseDuration, "a duration (like 30, 30s, 500ms or 2m)", 0.001)


def _duration(value: object) -> float:
    return float(_readDuration(value))


def _urlPath(value: object) -> str:
    path = _string(value)
    if not path.startswith("/"):
        raise _Wrong(f"{path!r} must start with /")
    return path


def _frontController(value: object) -> str | None:
    if value is False:
        return None
    if not isinstance(value, str):
        _refuse("a URL path or false", value)
    return _urlPath(value)


def _hsts(value: object) -> float | None:
    """C{true} for a year, C{false} for none, or a C{max-age} as a duration."""
    if isinstance(value, bool):
        return HSTS_MAX_AGE if value else None
    return _duration(value)


def _earlyHintLinks(value: object) -> dict[str, tuple[str, ...]]:
    return _table(value, _strings)


class _Reading:
    """
    Reads one file: the readers of each table's keys, relative paths made
    absolute against the file's directory, and the problems found.
    """

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.base = os.path.dirname(os.path.abspath(name))
        self._lines = _KeyLines(text)
        self._found: list[tuple[int, Problem]] = []

    def problem(self, where: Where, message: str) -> None:
        line = self._lines.line(where)
        self._found.append((line or 0, Problem(self.name, line, message)))

    def lineOf(self, where: Where) -> int | None:
        return self._lines.line(where)

    def raiseProblems(self) -> None:
        if self._found:
            raise SiteFileError([p for _, p in sorted(self._found, key=lambda found: found[0])])

    def path(self, value: object) -> str:
        return os.path.normpath(os.path.join(self.base, _string(value)))

    def paths(self, value: object) -> tuple[str, ...]:
        return tuple(self.path(p) for p in _strings(value))

    def pathTable(self, value: object) -> dict[str, str]:
        return _table(value, self.path)

    def tls(self, value: object) -> TLSFiles:
        files = _table(value, self.path)
        for key in files.keys() - {"certificate", "key"}:
            raise _Wrong(f"has no key {key!r}{_didYouMean(key, ('certificate', 'key'))}", (key,))
        missing = [key for key in ("certificate", "key") if key not in files]
        if missing:
            raise _Wrong(f"needs a {' and a '.join(missing)} file")
        return TLSFiles(**files)

    def table(
        self, value: object, readers: Mapping[str, Reader], where: Where, title: str
    ) -> dict[str, Any]:
        """
        The keys of a table that C{readers} know, read; a problem for each
        other key and for each value that its reader refuses.
        """
        if not isinstance(value, dict):
            self.problem(where, f"{title} must be a table")
            return {}
        read = {}
        for key, element in value.items():
            reader = readers.get(key)
            if reader is None:
                self.problem((*where, key), _unknownKey(key, readers, title))
                continue
            try:
                read[key] = reader(element)
            except _Wrong as e:
                self.problem((*where, key, *e.at), f"{key} {e}")
        return read

    def siteReaders(self) -> dict[str, Reader]:
        return {
            "root": self.path,
            "hosts": _strings,
            "php_fpm": _strings,
            "index": _string,
            "front_controller": _frontController,
            "params": _stringTable,
            "https": _boolean,
            "max_connections": _count(1),
            "spawn_children": _count(1),
            "connect_timeout": _duration,
            "read_timeout": _duration,
            "idle_timeout": _duration,
            "queue_timeout": _duration,
            "max_body_size": _size(1),
            "sendfile_roots": self.paths,
            "accel_prefixes": self.pathTable,
            "compress": _boolean,
            "early_hints": _boolean,
            "early_hint_links": _earlyHintLinks,
            "cache_size": _size(0),
            "cache_status": _boolean,
            "cache_bypass_cookies": _strings,
            "tls": self.tls,
            "acme": _boolean,
            "redirect": _choice(REDIRECT_CHOICES),
            "https_redirect": _boolean,
            "hsts": _hsts,
        }

    def serverReaders(self) -> dict[str, Reader]:
        return {
            "listen": _strings,
            "access_log": lambda value: "-" if value == "-" else self.path(value),
            "access_log_format": _choice(list(ACCESS_LOG_FORMATS)),
            "workers": _count(1),
            "status_path": _urlPath,
            "metrics_path": _urlPath,
            "status_allow": _strings,
            "shutdown_timeout": _duration,
            "trusted_proxies": _strings,
            "header_timeout": _duration,
            "body_timeout": _duration,
            "unknown_host": _choice(UNKNOWN_HOST_CHOICES),
        }

    def acmeReaders(self) -> dict[str, Reader]:
        return {
            "email": _string,
            "directory": _string,
            "state": self.path,
            "ca_bundle": self.path,
        }


def _unknownKey(key: str, known: Iterable[str], title: str) -> str:
    """That C{key} means nothing in C{title}."""
    return f"unknown key {key!r} in {title}{_didYouMean(key, known)}"


def _didYouMean(key: str, known: Iterable[str]) -> str:
    """Which known key C{key} may be a slip for, if one is close."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def loadSiteFile(path: str, server: ServerSettings | None = None) -> SiteFile:
    """
    The site file at C{path}.

    @param server: the defaults of the keys C{[server]} leaves out: the
        command line's server options.
    @raise SiteFileError: with every problem of the file, or the one that
        it cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as e:
        raise SiteFileError([Problem(path, None, f"cannot be read: {e.strerror}")]) from None
    except UnicodeDecodeError as e:
        raise SiteFileError([Problem(path, None, f"is not UTF-8 text: {e.reason}")]) from None
    return parseSiteFile(text, path, server)


_SYNTAX_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def parseSiteFile(text: str, name: str, server: ServerSettings | None = None) -> SiteFile:
    """
    The site file C{name} whose text is C{text}; see L{loadSiteFile}.
    Relative paths are relative to C{name}'s directory.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        position = _SYNTAX_POSITION.search(str(e))
        message = _SYNTAX_POSITION.sub("", str(e))
        if position is None or position.group(1) is None:
            line, message = max(1, text.count("\n")), f"{message} (at the end of the file)"
        else:
            line, message = int(position.group(1)), f"{message} (column {position.group(2)})"
        problem = Problem(name, line, f"not TOML: {message[:1].lower()}{message[1:]}")
        raise SiteFileError([problem]) from None
    reading = _Reading(name, text)
    for key in data.keys() - {"server", "site", "acme"}:
        reading.problem((key,), _unknownKey(key, ("server", "site", "acme"), "the file"))
    serverKeys = reading.table(
        data.get("server", {}), reading.serverReaders(), ("server",), "[server]"
    )
    settings = dataclasses.replace(server or ServerSettings(), **serverKeys)
    acme = _readACME(reading, data)
    if "site" not in data:
        reading.problem(("site",), "no [[site]]: a site file serves at least one site")
    sites = _readSites(reading, data.get("site", []), acme)
    _checkServer(reading, settings, serverKeys.keys(), [site for site, _ in sites])
    _checkSites(reading, sites, settings)
    reading.raiseProblems()
    return SiteFile(settings, tuple(site for site, _ in sites), acme)


def _readACME(reading: _Reading, data: Mapping[str, object]) -> ACMESettings | None:
    if "acme" not in data:
        return None
    keys = reading.table(data["acme"], reading.acmeReaders(), ("acme",), "[acme]")
    if "@" not in keys.get("email", ""):
        reading.problem(("acme", "email"), "[acme] needs an email: the account's contact address")
        keys["email"] = ""
    if not re.match(r"https?://", keys.get("directory", ACME_DIRECTORY)):
        reading.problem(("acme", "directory"), "directory must be an http:// or https:// URL")
    bundle = keys.get("ca_bundle")
    if bundle is not None and not os.path.isfile(bundle):
        reading.problem(("acme", "ca_bundle"), f"ca_bundle {bundle!r} is not a file")
    return ACMESettings(**keys)


def _readSites(
    reading: _Reading, data: object, acme: ACMESettings | None
) -> list[tuple[Site, set[str]]]:
    """Each site, with the keys its table gives."""
    if not isinstance(data, list):
        reading.problem(("site",), "site must be an array of tables: write [[site]]")
        return []
    sites = []
    for number, table in enumerate(data):
        where = ("site", number)
        keys = reading.table(table, reading.siteReaders(), where, "[[site]]")
        given = set(keys)
        if "root" not in keys:
            if isinstance(table, dict):
                reading.problem(where, "a site needs a root: its document root directory")
            keys["root"] = os.curdir
        keys["hosts"] = tuple(h.lower() for h in keys.get("hosts", ()))
        site = Site(**keys)
        _checkSite(reading, site, number, given, acme)
        sites.append((site, given))
    return sites


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def hostProblem(host: str) -> str | None:
    """What is wrong with a host pattern: a name, C{*.}name, or an IP address."""
    name = host[2:] if host.startswith("*.") else host
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        return "a wildcard covers names, not addresses" if name != host else None
    labels = name.split(".")
    if "*" in name:
        return "a * may only be the whole first label, as in *.example.org"
    if not all(_LABEL.fullmatch(label) for label in labels) or len(name) > 253:
        return "not a host name (letters, digits, - and dots; no port)"
    return None


def _checkSite(
    reading: _Reading, site: Site, number: int, given: Iterable[str], acme: ACMESettings | None
) -> None:
    """The problems of one site that its values show, each value having been read."""
    where = ("site", number)
    given = set(given)

    def problem(key: str, message: str, *at: object) -> None:
        reading.problem((*where, key, *at), message)

    if "root" in given:
        rootProblem = directoryProblem(site.root)
        if rootProblem:
            problem("root", f"root {rootProblem}")
    for index, host in enumerate(site.hosts):
        wrong = hostProblem(host)
        if wrong:
            problem("hosts", f"hosts {host!r}: {wrong}", index)
    if not site.php_fpm:
        problem("php_fpm", "php_fpm names no backend")
    for index, backend in enumerate(site.php_fpm):
        if site.php_fpm.index(backend) != index:
            problem("php_fpm", f"php_fpm {backend!r} is given twice", index)
        elif backend == SPAWN:
            try:
                findPHPFPM()
            except PHPFPMNotFound as e:
                problem("php_fpm", f"php_fpm {backend!r}: {e}", index)
        else:
            endpoint = endpointProblem(endpoints.clientFromString, backend)
            if endpoint:
                problem("php_fpm", f"php_fpm {endpoint}", index)
    for index, directory in enumerate(site.sendfile_roots):
        missing = directoryProblem(directory)
        if missing:
            problem("sendfile_roots", f"sendfile_roots {missing}", index)
    for uri, directory in site.accel_prefixes.items():
        if not uri.startswith("/"):
            problem("accel_prefixes", f"accel_prefixes {uri!r} must be a URI path (/...)", uri)
        elif directoryProblem(directory):
            problem("accel_prefixes", f"accel_prefixes {uri!r} {directoryProblem(directory)}", uri)
        elif not isUnder(directory, site.sendfile_roots):
            problem(
                "accel_prefixes",
                f"accel_prefixes {uri!r} = {directory!r}: the directory is under no sendfile_roots",
                uri,
            )
    for path, links in site.early_hint_links.items():
        for index, link in enumerate(links):
            hint = earlyHintProblem(path, link)
            if hint:
                problem("early_hint_links", f"early_hint_links {hint}", path, index)
    if site.early_hint_links and not site.early_hints:
        problem("early_hints", "early_hint_links and early_hints = false contradict each other")
    for key in ("cache_status", "cache_bypass_cookies"):
        if key in given and not site.cache_size:
            problem(key, f"{key} needs a cache_size")
    if site.tls is not None:
        for kind in ("certificate", "key"):
            path = getattr(site.tls, kind)
            if not os.path.isfile(path):
                problem("tls", f"tls {kind} {path!r} is not a file", kind)
        if site.acme:
            problem("acme", "acme = true and tls contradict each other: give one")
    if site.acme:
        if acme is None:
            problem("acme", "acme = true needs an [acme] table with an email")
        if not site.hosts:
            problem("acme", "acme = true needs hosts to get certificates for")
        for index, host in enumerate(site.hosts):
            if host.startswith("*."):
                problem(
                    "hosts",
                    f"hosts {host!r}: acme = true cannot get a certificate for a wildcard"
                    " (HTTP-01 challenges validate single names)",
                    index,
                )
    if site.redirect is not None and not site.hosts:
        problem("redirect", f"redirect = {site.redirect!r} needs hosts to redirect between")


def _checkSites(
    reading: _Reading, sites: Sequence[tuple[Site, set[str]]], server: ServerSettings
) -> None:
    """The problems between sites: hosts claimed twice, defaults, shared backends."""
    claimed: dict[str, Where] = {}
    default: int | None = None
    backends: dict[str, tuple[int | None, int]] = {}
    for number, (site, given) in enumerate(sites):
        for index, host in enumerate(site.hosts):
            where = ("site", number, "hosts", index)
            if host in claimed:
                other = reading.lineOf(claimed[host])
                reading.problem(
                    where, f"hosts {host!r} is claimed by two sites (also at line {other})"
                )
            else:
                claimed[host] = where
        if not site.hosts:
            if default is not None:
                reading.problem(
                    ("site", number),
                    "a second default site (no hosts): the site at line"
                    f" {reading.lineOf(('site', default))} already is the default",
                )
            elif server.unknown_host == "refuse":
                reading.problem(
                    ("site", number),
                    "a site with no hosts serves unknown hosts, which unknown_host = 'refuse'"
                    " refuses: give it hosts",
                )
            default = number
        if "max_connections" not in given:
            continue
        for backend in site.php_fpm:
            limit, first = backends.setdefault(backend, (site.max_connections, number))
            if backend != SPAWN and limit != site.max_connections:
                reading.problem(
                    ("site", number, "max_connections"),
                    f"max_connections {site.max_connections} for {backend!r}, which the site at"
                    f" line {reading.lineOf(('site', first))} limits to {limit}: sites that"
                    " name the same backend share its connections",
                )


def _checkServer(
    reading: _Reading, server: ServerSettings, given: Iterable[str], sites: Sequence[Site]
) -> None:
    """
    The problems of the C{[server]} table's values. With sites that have
    certificates of their own, a TLS listener needs no certificate (one
    for the names no site has one for is made up), as Caddy's does not.
    """
    given = set(given)
    ownCertificates = any(site.tls is not None or site.acme for site in sites)
    for index, description in enumerate(server.listen):
        where = ("server", "listen", index)
        if ownCertificates and isTLS(description):
            try:
                plain, files = splitTLS(description)
            except ValueError as e:
                reading.problem(where, f"listen {e}")
                continue
            for kind, path in dataclasses.asdict(files).items():
                if path is not None and not os.path.isfile(path):
                    reading.problem(where, f"listen {description!r}: {kind} {path!r} is not a file")
            description = plain
        endpoint = endpointProblem(endpoints.serverFromString, description)
        if endpoint:
            reading.problem(where, f"listen {endpoint}")
    if server.workers > 1 and any(site.acme for site in sites):
        reading.problem(
            ("server", "workers"),
            "acme = true needs workers = 1: the process that orders a certificate answers"
            " its challenges",
        )
    if server.workers > 1:
        for description in unshareable(server.listen):
            reading.problem(
                ("server", "workers" if "workers" in given else "listen"),
                f"workers shares only tcp, tcp6 and unix listeners, not {description!r}",
            )
    for key in ("status_allow", "trusted_proxies"):
        for index, network in enumerate(getattr(server, key)):
            wrong = networkProblem(network)
            if wrong:
                reading.problem(("server", key, index), f"{key} {wrong}")
    if server.metrics_path is not None and server.metrics_path == server.status_path:
        reading.problem(("server", "metrics_path"), "metrics_path and status_path must differ")


def _same(value: Any) -> Any:
    return value


def _tupled(value: Any) -> Any:
    return tuple(value)


def _negated(value: Any) -> Any:
    return not value


def _linksTupled(value: Any) -> Any:
    return {path: tuple(links) for path, links in value.items()}


# The command line's options, and how each becomes a field of Site or of
# ServerSettings: option -> (field, option's value to field's).
_Mapping = tuple[str, Callable[[Any], Any]]

_SITE_OPTIONS: dict[str, _Mapping] = {
    "path": ("root", _same),
    "php-fpm": ("php_fpm", _tupled),
    "index": ("index", _same),
    "front-controller": ("front_controller", _same),
    "param": ("params", dict),
    "https": ("https", bool),
    "max-connections": ("max_connections", _same),
    "spawn-children": ("spawn_children", _same),
    "connect-timeout": ("connect_timeout", _same),
    "read-timeout": ("read_timeout", _same),
    "idle-timeout": ("idle_timeout", _same),
    "queue-timeout": ("queue_timeout", _same),
    "max-body-size": ("max_body_size", _same),
    "sendfile-root": ("sendfile_roots", _tupled),
    "accel-prefix": ("accel_prefixes", dict),
    "no-compress": ("compress", _negated),
    "no-early-hints": ("early_hints", _negated),
    "early-hint": ("early_hint_links", _linksTupled),
    "cache-size": ("cache_size", _same),
    "cache-status": ("cache_status", bool),
    "cache-bypass-cookie": (
        "cache_bypass_cookies",
        lambda cookies: tuple(cookies or DEFAULT_BYPASS_COOKIES),
    ),
    "host": ("hosts", _tupled),
    "acme": ("acme", bool),
}

# The options of the [acme] table, for the command line's one site.
_ACME_OPTIONS: dict[str, _Mapping] = {
    "acme-email": ("email", _same),
    "acme-directory": ("directory", _same),
    "acme-state": ("state", _same),
    "acme-ca-bundle": ("ca_bundle", _same),
}

_SERVER_OPTIONS: dict[str, _Mapping] = {
    "listen": ("listen", _tupled),
    "access-log": ("access_log", _same),
    "access-log-format": ("access_log_format", _same),
    "workers": ("workers", _same),
    "status-path": ("status_path", _same),
    "metrics-path": ("metrics_path", _same),
    "status-allow": ("status_allow", _tupled),
    "shutdown-timeout": ("shutdown_timeout", _same),
    "trusted-proxy": ("trusted_proxies", _tupled),
    "header-timeout": ("header_timeout", _same),
    "body-timeout": ("body_timeout", _same),
}

PER_SITE_OPTIONS = frozenset({*_SITE_OPTIONS, *_ACME_OPTIONS, "no-front-controller", "early-hints"})
"""
The command line's options that describe its one site, which C{--config}
replaces: given beside it, they would be ambiguous.
"""


def fromOptions(options: Mapping[str, Any]) -> SiteFile:
    """
    The site file that parsed options (L{txfastcgi.tap.Options}) describe:
    one default site, and the server settings.
    """
    site = {f: read(options[o]) for o, (f, read) in _SITE_OPTIONS.items()}
    server = {f: read(options[o]) for o, (f, read) in _SERVER_OPTIONS.items()}
    acme = None
    if options["acme"]:
        acme = ACMESettings(**{f: read(options[o]) for o, (f, read) in _ACME_OPTIONS.items()})
    return SiteFile(ServerSettings(**server), (Site(**site),), acme)
