"""
The access log: one line for each request answered, in the format and at
the place the operator chose.

The combined format is the exact one log tools parse: twisted.web's own
C{combinedLogFormatter} quotes the client address (C{"127.0.0.1" - - [...]}),
which GoAccess, AWStats, fail2ban's and Logstash's standard patterns
(C{%h} / C{COMBINEDAPACHELOG}) do not accept. The JSON format has what
nginx C{log_format} and Caddy users log besides: the request time, the
time spent on PHP's side, the backend and its retries.

Lines go to the process's event log by default, so that they end up where
its other messages do (the journal, C{twist --log-file}, C{twistd}'s log
file) as events of their own namespace, C{txfastcgi.access}; or straight to
standard output or a file, where each line is exactly the format.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from functools import lru_cache
from typing import IO

from twisted.logger import Logger
from twisted.web.http import datetimeToLogString

from txfastcgi._http.served import Served

__all__ = [
    "ACCESS_LOG_FORMATS",
    "AccessLog",
    "combinedLine",
    "jsonLine",
]


def combinedLine(served: Served) -> str:
    """
    C{%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"}, as Apache and
    nginx write it: the client address bare, the request line, status, body
    bytes sent (C{-} for none), referrer and user agent, with quotes,
    backslashes and control characters escaped as C{\\xHH}.
    """
    method, target, protocol = (
        _escape(part) for part in (served.method, served.target, served.protocol)
    )
    referrer = _escape(served.referrer or b"-")
    agent = _escape(served.userAgent or b"-")
    return (
        f'{served.client} - - {_logTime(int(served.time))} "{method} {target} {protocol}" '
        f'{served.status} {served.sent or "-"} "{referrer}" "{agent}"'
    )


def jsonLine(served: Served) -> str:
    """
    One JSON object: the combined format's fields by name, plus C{host},
    C{request_time} and, for what a script answered, C{upstream_time},
    C{backend} and C{retries} (L{None} for the others). Times are seconds.
    Bytes that are not UTF-8 are escaped as C{\\xHH}.
    """
    upstream = served.upstream
    return json.dumps(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(served.time))
            + f".{int(served.time % 1 * 1000):03d}Z",
            "remote_addr": served.client,
            "method": _text(served.method),
            "uri": _text(served.target),
            "protocol": _text(served.protocol),
            "status": served.status,
            "bytes_sent": served.sent,
            "referer": None if served.referrer is None else _text(served.referrer),
            "user_agent": None if served.userAgent is None else _text(served.userAgent),
            "host": None if served.host is None else _text(served.host),
            "request_time": round(served.seconds, 6),
            "upstream_time": None if upstream is None else round(upstream.seconds, 6),
            "backend": None if upstream is None else upstream.backend,
            "retries": None if upstream is None else upstream.retries,
        },
        ensure_ascii=False,
    )


ACCESS_LOG_FORMATS: dict[str, Callable[[Served], str]] = {
    "combined": combinedLine,
    "json": jsonLine,
}


class AccessLog:
    """
    Writes a line for each L{Served} record it is given.

    @param destination: L{None} for the event log; C{-} for standard output; a file name,
        opened for appending; or C{/dev/null} for no log at all, in which case
        no line is even formatted.
    @param format: C{combined} or C{json}.
    """

    def __init__(self, destination: str | None = None, format: str = "combined") -> None:
        self._format = ACCESS_LOG_FORMATS[format]
        self._destination = destination
        self._file: IO[str] | None = None

    def open(self) -> None:
        """Open the file, if the destination is one: the process is about to serve."""
        destination = self._destination
        if destination is not None and destination not in ("-", os.devnull) and self._file is None:
            self._file = open(destination, "a", buffering=1, encoding="utf-8")

    def reopen(self) -> None:
        """
        Open the file again, under its name: logrotate has renamed it and
        sends SIGHUP or SIGUSR1.
        """
        if self._file is not None:
            self.close()
            self.open()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __call__(self, served: Served) -> None:
        destination = self._destination
        if destination == os.devnull:
            return
        line = self._format(served)
        if self._file is not None:
            self._file.write(line + "\n")
        elif destination == "-":
            # File descriptor 1, not sys.stdout: twist redirects that into
            # its log, which would wrap each line in an event.
            os.write(1, (line + "\n").encode("utf-8"))
        else:
            _accessEvents.info("{line}", line=line, status=served.status)


# Module level: a Logger as a class attribute takes the class's name.
_accessEvents = Logger(namespace="txfastcgi.access")

_NEEDS_ESCAPING = re.compile(rb'[^\x20-\x7e]|["\\]')


def _escape(value: bytes) -> str:
    """Printable ASCII as it is, but for C{"} and C{\\}; any other byte as C{\\xHH}."""
    if _NEEDS_ESCAPING.search(value) is None:
        return value.decode("ascii")
    return "".join(
        chr(byte) if 0x20 <= byte < 0x7F and byte not in b'"\\' else f"\\x{byte:02x}"
        for byte in value
    )


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


@lru_cache(maxsize=4)
def _logTime(second: int) -> str:
    """C{[02/Dec/2026:20:25:38 +0000]}, made once a second."""
    line: str = datetimeToLogString(second)
    return line
