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

A line costs a few microseconds: a write system call for each would cost
more than making it, so lines to a file or standard output are gathered
in a L{LineBuffer} and written together a moment later (nginx's
C{access_log ... buffer=}), and written out before the file is closed or
reopened, so that none is lost at shutdown or at a log rotation.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from functools import lru_cache
from typing import cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.web.http import datetimeToLogString

from txfastcgi._http.served import Served

__all__ = [
    "ACCESS_EVENT_FORMAT",
    "ACCESS_LOG_FORMATS",
    "ACCESS_NAMESPACE",
    "AccessLog",
    "LineBuffer",
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
    return _encodeJSON(
        {
            "time": f"{_isoSecond(int(served.time))}.{int(served.time % 1 * 1000):03d}Z",
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
        }
    )


# Made once: json.dumps with any argument makes an encoder for each call.
_encodeJSON = json.JSONEncoder(ensure_ascii=False).encode


ACCESS_LOG_FORMATS: dict[str, Callable[[Served], str]] = {
    "combined": combinedLine,
    "json": jsonLine,
}


class LineBuffer:
    """
    Text written together: at most C{delay} seconds after the first of it,
    or at once when C{limit} characters are waiting, or on L{flush}.

    @param write: writes what was gathered, all of it.
    @param reactor: for the timer.
    """

    def __init__(
        self,
        write: Callable[[str], object],
        reactor: IReactorTime,
        delay: float = 0.1,
        limit: int = 64 * 1024,
    ) -> None:
        self._write = write
        self._reactor = reactor
        self._delay = delay
        self._limit = limit
        self._pending: list[str] = []
        self._size = 0
        self._timer: IDelayedCall | None = None

    def add(self, text: str) -> None:
        self._pending.append(text)
        self._size += len(text)
        if self._size >= self._limit:
            self.flush()
        elif self._timer is None:
            self._timer = self._reactor.callLater(self._delay, self.flush)

    def flush(self) -> None:
        """Write what is waiting, now: the file is about to be closed or reopened."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self._pending:
            text = "".join(self._pending)
            self._pending = []
            self._size = 0
            self._write(text)


def _writeAll(descriptor: int, text: str) -> None:
    """Write all of C{text}, as UTF-8, to the file C{descriptor}, even a pipe taking parts."""
    data = memoryview(text.encode("utf-8"))
    while data:
        data = data[os.write(descriptor, data) :]


class AccessLog:
    """
    Writes a line for each L{Served} record it is given.

    @param destination: L{None} for the event log; C{-} for standard output; a file name,
        opened for appending; or C{/dev/null} for no log at all, in which case
        no line is even formatted.
    @param format: C{combined} or C{json}.
    @param reactor: for the timer that writes gathered lines (see
        L{LineBuffer}) to a file or standard output; the global one by default.
    """

    def __init__(
        self,
        destination: str | None = None,
        format: str = "combined",
        reactor: IReactorTime | None = None,
    ) -> None:
        self._format = ACCESS_LOG_FORMATS[format]
        self._destination = destination
        self._reactor = reactor
        self._descriptor: int | None = None
        self._buffer: LineBuffer | None = None

    def open(self) -> None:
        """
        Open the file, if the destination is one, and start gathering lines
        for it or for standard output: the process is about to serve.
        """
        destination = self._destination
        if destination is None or destination == os.devnull or self._buffer is not None:
            return
        if destination == "-":
            # File descriptor 1, not sys.stdout: twist redirects that into
            # its log, which would wrap each line in an event.
            descriptor = 1
        else:
            descriptor = self._descriptor = os.open(
                destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666
            )
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = cast(IReactorTime, globalReactor)
        self._buffer = LineBuffer(lambda text: _writeAll(descriptor, text), reactor)

    def reopen(self) -> None:
        """
        Open the file again, under its name: logrotate has renamed it and
        sends SIGHUP or SIGUSR1. The lines gathered so far go to the old one.
        """
        if self._descriptor is not None:
            self.close()
            self.open()

    def close(self) -> None:
        """Write the lines gathered so far, and close the file."""
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            buffer.flush()
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __call__(self, served: Served) -> None:
        destination = self._destination
        if destination == os.devnull:
            return
        line = self._format(served)
        if self._buffer is not None:
            self._buffer.add(line + "\n")
        elif destination == "-":
            _writeAll(1, line + "\n")
        else:
            _emitAccessEvent(line, served.status)


#: The namespace and format of access events in the event log.
ACCESS_NAMESPACE = "txfastcgi.access"
ACCESS_EVENT_FORMAT = "{line}"

# Module level: a Logger as a class attribute takes the class's name.
_accessEvents = Logger(namespace=ACCESS_NAMESPACE)


def _emitAccessEvent(line: str, status: int) -> None:
    """
    C{_accessEvents.info(ACCESS_EVENT_FORMAT, line=line, status=status)}: the
    same event, to the same observer, without the check of its level that
    C{Logger.emit} makes for every event (it sorts the levels each time).
    """
    _accessEvents.observer(
        {
            "line": line,
            "status": status,
            "log_logger": _accessEvents,
            "log_level": LogLevel.info,
            "log_namespace": ACCESS_NAMESPACE,
            "log_source": None,
            "log_format": ACCESS_EVENT_FORMAT,
            "log_time": time.time(),
        }
    )


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


@lru_cache(maxsize=4)
def _isoSecond(second: int) -> str:
    """C{2026-12-02T20:25:38}, in UTC, made once a second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
