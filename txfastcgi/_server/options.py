"""
The options of C{twist fastcgi-proxy}: parsed, checked and completed, or
refused with one line that says what is wrong (exit status 2), before the
reactor runs.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import twisted
from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactor
from twisted.python import usage

from txfastcgi._http.accesslog import ACCESS_LOG_FORMATS
from txfastcgi._http.forwarded import Networks
from txfastcgi._limits import DEFAULT_MAX_BODY_SIZE
from txfastcgi._server.configuration import EXTERNAL_CONNECTIONS, SPAWN
from txfastcgi._server.phpfpm import findPHPFPM
from txfastcgi._server.units import parseDuration, parseSize
from txfastcgi._version import __version__
from txfastcgi.errors import PHPFPMNotFound

__all__ = ["Options", "versionLine"]

# Listeners whose sockets worker processes can adopt as they are; a TLS
# listener would need its TLS context rebuilt in each worker.
_SHAREABLE = frozenset({"tcp", "tcp6", "unix"})


def _parameter(
    name: str, default: object, doc: str, parse: Callable[[str], float], minimum: float
) -> list[object]:
    """
    An C{optParameters} row whose value C{parse} reads, no smaller than
    C{minimum}; a value it refuses is named with its option in the error.
    """

    def coerce(value: str) -> float:
        try:
            number = parse(value)
        except ValueError as e:
            raise usage.UsageError(f"--{name}: {e}") from None
        if number < minimum:
            raise usage.UsageError(f"--{name}: {value!r} is below {minimum:g}")
        return number

    return [name, None, default, doc, coerce]


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def _count(name: str, default: object, doc: str) -> list[object]:
    return _parameter(name, default, doc, _integer, 1)


def _seconds(name: str, default: float, doc: str) -> list[object]:
    return _parameter(name, default, f"{doc} Seconds, or 500ms, 30s, 2m.", parseDuration, 0.001)


class Options(usage.Options):
    """The options of C{twist fastcgi-proxy}; see C{docs/reference.rst}."""

    synopsis = "[options]"
    longdesc = (
        "Serve a PHP application through php-fpm: static files from the document root, "
        "scripts over FastCGI, unknown paths to a front controller."
    )

    optFlags = [
        ["https", None, "Send HTTPS=on even on plain listeners (behind a TLS terminator)."],
        ["no-front-controller", None, "Answer paths that name no file with 404."],
        [
            "early-hints",
            None,
            "Send 103 Early Hints learned from earlier responses' Link headers (the default).",
        ],
        ["no-early-hints", None, "Send no 103 Early Hints."],
        [
            "cache-status",
            None,
            "Add X-Cache: HIT, MISS, STALE or BYPASS to the responses the cache had a say in.",
        ],
        [
            "no-compress",
            None,
            "Send responses as they are: no zstd, br or gzip, no precompressed static files.",
        ],
    ]

    optParameters = [
        ["path", None, None, "Document root: static files and scripts. [default: .]"],
        ["index", None, "index.php", "Directory index script."],
        ["front-controller", None, "/index.php", "Where paths that name no file go."],
        [
            "access-log",
            None,
            None,
            "Access log file; - for standard output, /dev/null for none."
            " [default: the event log, as txfastcgi.access events]",
        ],
        [
            "access-log-format",
            None,
            "combined",
            "Access line format: combined, or json (with request and upstream time, backend).",
        ],
        ["status-path", None, None, "URL path of a JSON status page of the backends (off)."],
        ["metrics-path", None, None, "URL path of a Prometheus metrics page (off)."],
        _count("spawn-children", 4, "Workers of the php-fpm started by --php-fpm spawn."),
        _count(
            "max-connections",
            None,
            "Most FastCGI connections open to one backend"
            f" [default: {EXTERNAL_CONNECTIONS}; with spawn, --spawn-children].",
        ),
        _seconds("connect-timeout", 5.0, "Time to connect to the backend (then 502)."),
        _seconds("read-timeout", 60.0, "Time to wait for backend output (then 504)."),
        _seconds("idle-timeout", 5.0, "Time a kept FastCGI connection may stay idle."),
        _seconds("queue-timeout", 30.0, "Time to wait for a connection (then 503)."),
        _count("workers", 1, "Processes sharing the listening sockets."),
        _parameter(
            "cache-size",
            0,
            "Keep PHP's cacheable responses (RFC 9111) in memory, up to this many bytes"
            " (K, M, G: powers of 1024); 0 for no cache.",
            parseSize,
            0,
        ),
        _parameter(
            "max-body-size",
            DEFAULT_MAX_BODY_SIZE,
            "Largest request body, in bytes or with K, M, G (powers of 1024);"
            " larger ones get 413 without reaching PHP.",
            parseSize,
            1,
        ),
        _seconds(
            "header-timeout",
            60.0,
            "Time a client may take to send a whole request head (then 408).",
        ),
        _seconds(
            "body-timeout", 60.0, "Time a client may pause while sending a request body (then 408)."
        ),
        _seconds(
            "shutdown-timeout",
            30.0,
            "On SIGTERM, time to let requests in progress finish and their connections close.",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        # The opt_* docstrings are wrapped source lines; --help wraps them itself.
        self.docs = {name: " ".join(doc.split()) for name, doc in self.docs.items() if doc}
        self["php-fpm"] = []
        self["listen"] = []
        self["param"] = {}
        self["trusted-proxy"] = []
        self["sendfile-root"] = []
        self["accel-prefix"] = {}
        self["early-hint"] = {}
        self["cache-bypass-cookie"] = []
        self["status-allow"] = []

    def opt_php_fpm(self, description: str) -> None:
        """
        FastCGI server endpoint (unix:/run/php/php8.2-fpm.sock, tcp:127.0.0.1:9000),
        or "spawn" to start a private php-fpm; repeat it to balance requests over
        several backends. [default: unix:/run/php/php-fpm.sock]
        """
        if description != SPAWN:
            _checkEndpoint(endpoints.clientFromString, description, "--php-fpm")
        self["php-fpm"].append(description)

    def opt_listen(self, description: str) -> None:
        """Server endpoint to listen on, repeatable (tcp:8080, ssl:8443:...). [default: tcp:8080]"""
        _checkEndpoint(endpoints.serverFromString, description, "--listen")
        self["listen"].append(description)

    def opt_trusted_proxy(self, network: str) -> None:
        """
        Address or network of a proxy in front of this server whose Forwarded or
        X-Forwarded-For/-Proto headers set REMOTE_ADDR and HTTPS, repeatable.
        """
        self["trusted-proxy"].append(_network("--trusted-proxy", network))

    def opt_sendfile_root(self, directory: str) -> None:
        """
        Directory from which PHP may hand a response to a file with X-Sendfile:
        /abs/path or X-Accel-Redirect: /uri, repeatable. [default: none, off]
        """
        self["sendfile-root"].append(_directory("--sendfile-root", directory))

    def opt_accel_prefix(self, mapping: str) -> None:
        """
        URI=DIR: an X-Accel-Redirect URI under URI names a file under DIR
        (nginx's internal location with an alias), repeatable; other URIs are
        under the document root.
        """
        uri, equals, directory = mapping.partition("=")
        if not equals or not uri.startswith("/"):
            raise usage.UsageError(f"--accel-prefix wants /URI=DIR, not {mapping!r}")
        self["accel-prefix"][uri] = _directory("--accel-prefix", directory)

    def opt_early_hint(self, hint: str) -> None:
        """
        PATH=LINK: send this Link field (</style.css>; rel=preload; as=style) in a
        103 for every request for PATH, from the first on; repeatable.
        """
        path, equals, link = hint.partition("=")
        if not equals or not path.startswith("/") or not link.strip().startswith("<"):
            raise usage.UsageError(f"--early-hint wants /PATH=<URL>; rel=..., not {hint!r}")
        if any(ord(character) < 0x20 or ord(character) > 0x7E for character in link):
            raise usage.UsageError(f"--early-hint {hint!r}: the link must be printable ASCII")
        self["early-hint"].setdefault(path, []).append(link.strip())

    def opt_cache_bypass_cookie(self, pattern: str) -> None:
        """
        Requests with a cookie of this name (a pattern: wordpress_logged_in_*) go to
        PHP, past the cache; repeatable, replacing the default list.
        [default: wordpress_logged_in_*, comment_author_*, wp-postpass_*]
        """
        self["cache-bypass-cookie"].append(pattern)

    def opt_status_allow(self, network: str) -> None:
        """
        Address or network (10.0.0.0/8) of clients that may read the status and
        metrics pages besides this machine's loopback, repeatable; they see no
        socket paths.
        """
        self["status-allow"].append(_network("--status-allow", network))

    def opt_param(self, assignment: str) -> None:
        """Extra FastCGI param NAME=VALUE, repeatable; wins over anything a client sends."""
        name, equals, value = assignment.partition("=")
        if not equals or not name:
            raise usage.UsageError(f"--param wants NAME=VALUE, not {assignment!r}")
        self["param"][name] = value

    def opt_version(self) -> NoReturn:
        """Print txfastcgi's version (and Twisted's and Python's) and exit."""
        print(versionLine())
        raise SystemExit(0)

    def postOptions(self) -> None:
        self["path-defaulted"] = self["path"] is None
        if self["path-defaulted"]:
            self["path"] = os.curdir
        self["path"] = _directory("--path", self["path"])
        if not self["php-fpm"]:
            self["php-fpm"] = ["unix:/run/php/php-fpm.sock"]
        duplicates = {d for d in self["php-fpm"] if self["php-fpm"].count(d) > 1}
        if duplicates:
            raise usage.UsageError(f"--php-fpm {sorted(duplicates)[0]!r} is given twice")
        if SPAWN in self["php-fpm"]:
            try:
                self["php-fpm-binary"] = findPHPFPM()
            except PHPFPMNotFound as e:
                raise usage.UsageError(str(e)) from None
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]
        if self["workers"] > 1:
            for description in self["listen"]:
                if description.partition(":")[0] not in _SHAREABLE:
                    raise usage.UsageError(
                        f"--workers shares only tcp, tcp6 and unix listeners, not {description!r}"
                    )
        for page in ("status-path", "metrics-path"):
            if self[page] is not None and not self[page].startswith("/"):
                raise usage.UsageError(f"--{page} {self[page]!r} must start with /")
        if self["metrics-path"] is not None and self["metrics-path"] == self["status-path"]:
            raise usage.UsageError("--metrics-path and --status-path must be different paths")
        roots = [os.path.realpath(root) for root in self["sendfile-root"]]
        for uri, directory in self["accel-prefix"].items():
            real = os.path.realpath(directory)
            if not any(real == root or real.startswith(root + os.sep) for root in roots):
                raise usage.UsageError(
                    f"--accel-prefix {uri}={directory}: the directory is under no --sendfile-root"
                )
        self["cache-size"] = int(self["cache-size"])
        if (self["cache-status"] or self["cache-bypass-cookie"]) and not self["cache-size"]:
            raise usage.UsageError("--cache-status and --cache-bypass-cookie need a --cache-size")
        if self["early-hint"] and self["no-early-hints"]:
            raise usage.UsageError("--early-hint and --no-early-hints contradict each other")
        if self["no-front-controller"]:
            self["front-controller"] = None
        if self["access-log-format"] not in ACCESS_LOG_FORMATS:
            raise usage.UsageError(
                f"--access-log-format {self['access-log-format']!r} is not one of"
                f" {', '.join(ACCESS_LOG_FORMATS)}"
            )

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, or exit with status 2 and one line that says what is wrong."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            _exitWithUsageError(str(e))


def versionLine() -> str:
    """C{txfastcgi X.Y.Z (Twisted A.B.C, Python D.E.F)}: what a bug report needs."""
    return (
        f"txfastcgi {__version__} (Twisted {twisted.__version__},"
        f" Python {platform.python_version()})"
    )


def _directory(option: str, directory: str) -> str:
    """C{directory} made absolute, if it is one, for C{option}."""
    if not os.path.isdir(directory):
        raise usage.UsageError(f"{option} {directory!r} is not a directory")
    return os.path.abspath(directory)


def _network(option: str, network: str) -> str:
    """C{network}, if it is an address or a network, for C{option}."""
    try:
        Networks([network])
    except ValueError:
        raise usage.UsageError(f"{option}: {network!r} is not an address or network") from None
    return network


def _exitWithUsageError(message: str) -> NoReturn:
    sys.stderr.write(f"twist fastcgi-proxy: error: {message}\n")
    raise SystemExit(2)


def _checkEndpoint(parse: Callable[[object, str], object], description: str, option: str) -> None:
    """
    Fail now, not at start-up, on an endpoint string that does not parse.
    The reactor is not chosen yet while options are parsed, so the check
    builds the endpoint for a stand-in that is never used.
    """
    kind = description.removeprefix("haproxy:").partition(":")
    if kind[0] == "unix" and not kind[2]:
        problem = "a unix endpoint needs a socket path, like unix:/run/txfastcgi.sock"
    else:
        try:
            endpoint = parse(MemoryReactor(), description)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError) as e:
            problem = _explain(kind[0], e)
        else:
            if not isinstance(endpoint, endpoints.AdoptedStreamServerEndpoint) or _listening(
                endpoint
            ):
                return
            problem = (
                "systemd passed a connection, not a listening socket:"
                " the .socket unit needs Accept=no (systemd-socket-activate: no --accept)"
            )
    raise usage.UsageError(f"{option} {description!r} is not a valid endpoint: {problem}")


def _listening(endpoint: endpoints.AdoptedStreamServerEndpoint) -> bool:
    """
    Whether the socket systemd passed listens: with C{Accept=yes} it passes
    one accepted connection instead, on which the reactor's accept would
    fail in a loop.
    """
    with socket.fromfd(endpoint.fileno, endpoint.addressFamily, socket.SOCK_STREAM) as adopted:
        return bool(adopted.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def _explain(kind: str, error: Exception) -> str:
    """
    What Twisted's endpoint parsers mean by C{error}, in the words of
    someone who wrote the endpoint string rather than of its parser's code.
    """
    if kind == "systemd" and isinstance(error, (IndexError, KeyError)):
        return (
            "this process was given no such socket by systemd socket activation"
            " (LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID; under systemd-socket-activate,"
            " give --fdname)"
        )
    if kind == "systemd" and isinstance(error, AttributeError):
        return "its domain must be INET, INET6 or UNIX"
    if isinstance(error, OSError) and error.filename is not None:
        hint = " (give privateKey=KEY.pem and certKey=CERT.pem)" if kind == "ssl" else ""
        return f"{error.strerror}: {error.filename}{hint}"
    message = str(error)
    number = re.fullmatch(r"invalid literal for int\(\) with base 10: (.*)", message)
    if number:
        return f"{number.group(1)} is not a number"
    missing = re.search(r"missing \d+ required positional arguments?: (.*)", message)
    if missing:
        return f"{missing.group(1)} is missing".replace("'", "")
    return message
