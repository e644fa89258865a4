"""
The options of C{twist fastcgi-proxy}: parsed, checked and completed, or
refused with one line that says what is wrong (exit status 2), before the
reactor runs.
"""

from __future__ import annotations

import getopt
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import twisted
from twisted.internet import endpoints
from twisted.python import usage

from txfastcgi._http.accesslog import ACCESS_LOG_FORMATS
from txfastcgi._limits import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_BODY_SIZE
from txfastcgi._server import sitefile
from txfastcgi._server.checks import (
    directoryProblem,
    earlyHintProblem,
    endpointProblem,
    isUnder,
    networkProblem,
    unshareable,
)
from txfastcgi._server.configuration import EXTERNAL_CONNECTIONS
from txfastcgi._server.endpointstrings import isTLS, splitTLS
from txfastcgi._server.phpfpm import findPHPFPM
from txfastcgi._server.sitefile import SPAWN
from txfastcgi._server.units import parseDuration, parseSize
from txfastcgi._version import __version__
from txfastcgi.errors import PHPFPMNotFound

__all__ = ["Options", "versionLine"]


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
            "check",
            None,
            "With --config: check the site file, print what is wrong with it"
            " (FILE:LINE: problem) and exit (2 if anything is).",
        ],
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
        [
            "acme",
            None,
            "Get the certificate of the --host names by ACME (HTTP-01, answered on the plain"
            " listener), renew it, and serve it on the TLS listeners.",
        ],
    ]

    optParameters = [
        [
            "config",
            None,
            None,
            "Site file (TOML): the sites to serve, replacing the per-site options.",
        ],
        ["path", None, None, "Document root: static files and scripts. [default: .]"],
        ["index", None, sitefile.DEFAULT_INDEX, "Directory index script."],
        [
            "front-controller",
            None,
            sitefile.DEFAULT_FRONT_CONTROLLER,
            "Where paths that name no file go.",
        ],
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
            sitefile.DEFAULT_ACCESS_LOG_FORMAT,
            "Access line format: combined, or json (with request and upstream time, backend).",
        ],
        ["status-path", None, None, "URL path of a JSON status page of the backends (off)."],
        ["metrics-path", None, None, "URL path of a Prometheus metrics page (off)."],
        _count(
            "spawn-children",
            sitefile.DEFAULT_SPAWN_CHILDREN,
            "Workers of the php-fpm started by --php-fpm spawn.",
        ),
        _count(
            "max-connections",
            None,
            "Most FastCGI connections open to one backend"
            f" [default: {EXTERNAL_CONNECTIONS}; with spawn, --spawn-children].",
        ),
        _seconds(
            "connect-timeout",
            sitefile.DEFAULT_CONNECT_TIMEOUT,
            "Time to connect to the backend (then 502).",
        ),
        _seconds(
            "read-timeout",
            sitefile.DEFAULT_READ_TIMEOUT,
            "Time to wait for backend output (then 504).",
        ),
        _seconds(
            "idle-timeout",
            sitefile.DEFAULT_IDLE_TIMEOUT,
            "Time a kept FastCGI connection may stay idle.",
        ),
        _seconds(
            "queue-timeout",
            sitefile.DEFAULT_QUEUE_TIMEOUT,
            "Time to wait for a connection (then 503).",
        ),
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
            DEFAULT_HEADER_TIMEOUT,
            "Time a client may take to send a whole request head (then 408).",
        ),
        _seconds(
            "body-timeout",
            DEFAULT_BODY_TIMEOUT,
            "Time a client may pause while sending a request body (then 408).",
        ),
        _seconds(
            "shutdown-timeout",
            sitefile.DEFAULT_SHUTDOWN_TIMEOUT,
            "On SIGTERM, time to let requests in progress finish and their connections close.",
        ),
        ["acme-email", None, None, "With --acme: the account's contact address."],
        ["acme-directory", None, sitefile.ACME_DIRECTORY, "With --acme: the CA's directory URL."],
        [
            "acme-state",
            None,
            sitefile.DEFAULT_ACME_STATE,
            "With --acme: the directory of the account key and the certificates.",
        ],
        [
            "acme-ca-bundle",
            None,
            None,
            "With --acme: PEM certificates to trust for the CA's own HTTPS (a private CA).",
        ],
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
        self["host"] = []
        self._given: set[str] = set()

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
        """
        Server endpoint to listen on, repeatable (tcp:8080, ssl:8443:...); with
        --acme, ssl:443 needs no certificate files. [default: tcp:8080]
        """
        self["listen"].append(description)

    def opt_host(self, name: str) -> None:
        """
        A host name the site answers for (example.org, or a wildcard for its
        subdomains), repeatable: the names --acme gets a certificate for.
        [default: every host]
        """
        problem = sitefile.hostProblem(name.lower())
        if problem:
            raise usage.UsageError(f"--host {name!r}: {problem}")
        self["host"].append(name.lower())

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
        problem = earlyHintProblem(path, link) if equals else "it wants /PATH=<URL>; rel=..."
        if problem:
            raise usage.UsageError(f"--early-hint {hint!r}: {problem}")
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
        if self["config"] is None:
            if self["check"]:
                raise usage.UsageError("--check checks a site file: give --config FILE")
        else:
            perSite = sorted(self._given & sitefile.PER_SITE_OPTIONS)
            if perSite:
                raise usage.UsageError(
                    f"--config replaces the per-site options: move --{', --'.join(perSite)}"
                    " into the site file's [[site]]"
                )
        self["path-defaulted"] = self["path"] is None
        if self["path-defaulted"]:
            self["path"] = os.curdir
        self["path"] = _directory("--path", self["path"])
        if not self["php-fpm"]:
            self["php-fpm"] = [sitefile.DEFAULT_BACKEND]
        duplicates = {d for d in self["php-fpm"] if self["php-fpm"].count(d) > 1}
        if duplicates:
            raise usage.UsageError(f"--php-fpm {sorted(duplicates)[0]!r} is given twice")
        if not self["listen"]:
            self["listen"] = [sitefile.DEFAULT_LISTEN]
        if self["config"] is None:
            self._checkListeners()
        if self["workers"] > 1:
            for description in unshareable(self["listen"]):
                raise usage.UsageError(
                    f"--workers shares only tcp, tcp6 and unix listeners, not {description!r}"
                )
        for page in ("status-path", "metrics-path"):
            if self[page] is not None and not self[page].startswith("/"):
                raise usage.UsageError(f"--{page} {self[page]!r} must start with /")
        if self["metrics-path"] is not None and self["metrics-path"] == self["status-path"]:
            raise usage.UsageError("--metrics-path and --status-path must be different paths")
        for uri, directory in self["accel-prefix"].items():
            if not isUnder(directory, self["sendfile-root"]):
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
        self["site-file"] = None
        if self["config"] is not None:
            self._serveSiteFile(self["config"])
        elif self["acme"]:
            self._checkACME()
        served = self["site-file"] or sitefile.fromOptions(self)
        if any(SPAWN in site.php_fpm for site in served.sites):
            try:
                self["php-fpm-binary"] = findPHPFPM()
            except PHPFPMNotFound as e:
                raise usage.UsageError(str(e)) from None

    def _serveSiteFile(self, path: str) -> None:
        """
        Read the site file at C{path} over the command line's server
        options. With C{--check}, say whether it is valid and exit; else
        keep it, for L{Configuration} to serve.
        """
        try:
            siteFile = sitefile.loadSiteFile(path, sitefile.fromOptions(self).server)
        except sitefile.SiteFileError as e:
            sys.stderr.write(f"{e}\n")
            raise SystemExit(2) from None
        if self["check"]:
            count = len(siteFile.sites)
            print(f"{path}: ok, {count} site{'' if count == 1 else 's'}")
            raise SystemExit(0)
        self["path-defaulted"] = False
        self["site-file"] = siteFile

    def _checkListeners(self) -> None:
        """Fail now, not at start-up, on a --listen that cannot listen."""
        for description in self["listen"]:
            if self["acme"] and isTLS(description):
                try:
                    description = splitTLS(description)[0]
                except ValueError as e:
                    raise usage.UsageError(f"--listen {e}") from None
            _checkEndpoint(endpoints.serverFromString, description, "--listen")

    def _checkACME(self) -> None:
        """What --acme needs: an email, host names to prove, one process."""
        if self["acme-email"] is None:
            raise usage.UsageError("--acme needs --acme-email ADDRESS, for the CA to write to")
        if not self["host"]:
            raise usage.UsageError("--acme needs --host NAME, the names to get a certificate for")
        for name in self["host"]:
            if name.startswith("*."):
                raise usage.UsageError(
                    f"--host {name!r}: --acme cannot get a certificate for a wildcard"
                    " (HTTP-01 challenges validate single names)"
                )
        if self["workers"] > 1:
            raise usage.UsageError(
                "--acme needs --workers 1: the process that orders a certificate answers"
                " its challenges"
            )
        self["acme-state"] = os.path.abspath(self["acme-state"])

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, or exit with status 2 and one line that says what is wrong."""
        arguments = sys.argv[1:] if options is None else options
        try:
            # The options given, by their full names, for --config to refuse
            # the per-site ones (their values cannot tell a default from a
            # repeated one). getopt's errors are left to the parse proper.
            given = getopt.getopt(list(arguments), self.shortOpt, self.longOpt)[0]
            self._given = {name.lstrip("-") for name, _ in given}
        except getopt.GetoptError:
            pass
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
    problem = directoryProblem(directory)
    if problem:
        raise usage.UsageError(f"{option} {problem}")
    return os.path.abspath(directory)


def _network(option: str, network: str) -> str:
    """C{network}, if it is an address or a network, for C{option}."""
    problem = networkProblem(network)
    if problem:
        raise usage.UsageError(f"{option}: {problem}")
    return network


def _exitWithUsageError(message: str) -> NoReturn:
    sys.stderr.write(f"twist fastcgi-proxy: error: {message}\n")
    raise SystemExit(2)


def _checkEndpoint(parse: Callable[[object, str], object], description: str, option: str) -> None:
    """Fail now, not at start-up, on an endpoint string that does not parse."""
    problem = endpointProblem(parse, description)
    if problem:
        raise usage.UsageError(f"{option} {problem}")
