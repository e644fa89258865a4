"""
The event log's file, under C{twist}: twisted.logger's own text or JSON
lines, character for character, at a small part of their cost for access
lines.

An access line in the event log (the default destination) went through
twisted.logger's general formatting: a PEP 3101 format parsed for each
event, the timestamp made with C{strftime} for each, for JSON the event
flattened field by field, then a write system call and a flush for each:
some hundred microseconds of CPU per request, half the cost of answering
it. Here an access event (namespace C{txfastcgi.access}, format
C{{line}}) is written as the same text from what it carries, with the
timestamp made once a second, and gathered with the access events around
it in a L{LineBuffer}, written at most a tenth of a second later. Any
other event is written as twisted.logger writes it, at once, after the
access lines gathered before it, so the order of the log stays the order
of the events; the gathered lines are also written at the reactor's
shutdown and before the file is reopened.

Each fast format is checked against twisted.logger's own on a sample
event when the observer is made: should a Twisted release write access
events differently, every event takes the general way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache, lru_cache
from threading import get_ident
from typing import IO, Any, cast

from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    eventAsJSON,
    eventFromJSON,
    formatTime,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.logger._json import objectLoadHook, objectSaveHook
from twisted.python.compat import ioType
from zope.interface import implementer

from txfastcgi._http.accesslog import ACCESS_EVENT_FORMAT, ACCESS_NAMESPACE, LineBuffer

__all__ = ["EventLogFiles", "eventFromJSONLine"]

FormatEvent = Callable[[LogEvent], "str | None"]


@implementer(ILogObserver)
class EventLogFile:
    """
    Writes events to C{outFile}: access events as C{formatAccess} makes
    them, gathered; the others as C{formatEvent} does, at once.

    @param formatAccess: the text of an access event, or L{None} for one
        it cannot tell (C{formatEvent} then makes it).
    """

    def __init__(
        self,
        outFile: IO[Any],
        formatEvent: FormatEvent,
        formatAccess: FormatEvent,
        reactor: IReactorTime,
    ) -> None:
        encoding = None if ioType(outFile) is str else "utf-8"

        def write(text: str) -> None:
            outFile.write(text if encoding is None else text.encode(encoding))
            outFile.flush()

        self._write = write
        self._formatEvent = formatEvent
        self._formatAccess = formatAccess
        self._buffer = LineBuffer(write, reactor)
        # Made as logging begins, in the thread that runs the reactor.
        self._thread = get_ident()

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == ACCESS_NAMESPACE:
            text = self._formatAccess(event)
            if text is not None:
                self._buffer.add(text)
                return
        text = self._formatEvent(event)
        if get_ident() == self._thread:
            # The reactor's thread alone touches the buffer and its timer.
            self._buffer.flush()
        if text:
            self._write(text)

    def flush(self) -> None:
        """Write the access lines gathered so far."""
        self._buffer.flush()


class EventLogFiles:
    """
    A C{fileLogObserverFactory} for twist: makes the L{EventLogFile} of
    twist's log file, in twist's C{text} or C{json} log format, and
    writes what they gathered on L{flush} and at the reactor's shutdown.

    @param format: C{text} or C{json}.
    """

    def __init__(self, format: str, reactor: IReactorCore) -> None:
        self.format = format
        self._reactor = reactor
        self._observers: list[EventLogFile] = []

    def __call__(self, outFile: IO[Any]) -> EventLogFile:
        if self.format == "json":
            formatEvent = _formatterOf(jsonFileLogObserver(outFile))
            formatAccess = _accessAsJSON
        else:
            formatEvent = _formatterOf(textFileLogObserver(outFile))
            formatAccess = _accessAsText
        if not _writesAsTwisted(formatAccess, formatEvent):
            formatAccess = _general
        observer = EventLogFile(outFile, formatEvent, formatAccess, self._reactor)  # type: ignore[arg-type]
        self._observers.append(observer)
        self._reactor.addSystemEventTrigger("after", "shutdown", observer.flush)
        return observer

    def flush(self) -> None:
        """Write what every observer gathered: its file is about to be reopened."""
        for observer in self._observers:
            observer.flush()


def _formatterOf(observer: object) -> FormatEvent:
    """The event formatter of one of twisted.logger's file observers."""
    formatEvent: FormatEvent = observer.formatEvent  # type: ignore[attr-defined]
    return formatEvent


def _general(event: LogEvent) -> None:
    return None


def _isAccessEvent(event: LogEvent) -> bool:
    """
    Whether C{event} is an access event, as our Logger emits it, or as it
    comes back from a worker's JSON: one line, no failure, no system.
    """
    line = event.get("line")
    return (
        event.get("log_format") == ACCESS_EVENT_FORMAT
        and event.get("log_level") is LogLevel.info
        and "log_failure" not in event
        and "log_system" not in event
        and type(line) is str
        and bool(line)
        and "\n" not in line
        and type(event.get("log_time")) is float
    )


def _accessAsText(event: LogEvent) -> str | None:
    """What C{textFileLogObserver} writes for an access event."""
    if not _isAccessEvent(event):
        return None
    when: float = event["log_time"]
    second = int(when)
    if when - second >= 0.9999995:
        # datetime rounds to the microsecond: this one shows the next second.
        stamp = formatTime(when)
    else:
        stamp = _secondStamp(second)
    return f"{stamp} [{ACCESS_NAMESPACE}#info] {event['line']}\n"


@lru_cache(maxsize=4)
def _secondStamp(second: int) -> str:
    """twisted.logger's RFC 3339 timestamp, with the local offset, made once a second."""
    return formatTime(float(second))


def _accessAsJSON(event: LogEvent) -> str | None:
    """
    What C{jsonFileLogObserver} writes for an access event: the event with
    its C{log_flattened} fields, as C{flattenEvent} adds them for
    C{{line}}, serialized by the same C{json} settings and hook.
    """
    if not _isAccessEvent(event):
        return None
    if "log_flattened" not in event:
        line = event["line"]
        event["log_flattened"] = {"line!s:": line, "line!:": line}
    return f"\x1e{_encodeEvent(event)}\n"


def _saved(unencodable: object) -> object:
    """
    eventAsJSON's hook, with the forms of what every access event carries,
    its level and its Logger, made once.
    """
    if type(unencodable) is Logger:
        return _SAVED_LOGGER
    if type(unencodable) is _LEVEL_TYPE:
        return _SAVED_LEVELS[unencodable]
    if isinstance(unencodable, bytes):
        return unencodable.decode("charmap")
    return objectSaveHook(unencodable)


_SAVED_LOGGER = objectSaveHook(Logger())
_LEVEL_TYPE = type(LogLevel.info)
_SAVED_LEVELS = {level: objectSaveHook(level) for level in LogLevel.iterconstants()}


# eventAsJSON's settings, in an encoder made once.
_encodeEvent = json.JSONEncoder(default=_saved, skipkeys=True).encode


def eventFromJSONLine(text: str) -> LogEvent:
    """
    C{eventFromJSON(text)}, as a worker's events come to the main process,
    without its Python hook called on every JSON object: an event whose only
    object with a class is its log level (an access event, most others) is
    decoded by C{json} alone, and its level made once.
    """
    if text.count('"__class_uuid__"') == 1:
        event: LogEvent = _decodeJSON(text)
        level = event.get("log_level") if isinstance(event, dict) else None
        if isinstance(level, dict) and level.keys() == {"name", "__class_uuid__"}:
            event["log_level"] = _loadedLevel(level["__class_uuid__"], level["name"])
            return event
    return eventFromJSON(text)


_decodeJSON = json.JSONDecoder().decode


@cache
def _loadedLevel(uuid: str, name: str) -> object:
    return objectLoadHook({"name": name, "__class_uuid__": uuid})


def _writesAsTwisted(formatAccess: FormatEvent, formatEvent: FormatEvent) -> bool:
    """
    Whether C{formatAccess} writes a sample access event as C{formatEvent}
    (twisted.logger's own) does, fresh from our Logger and as from a worker.
    """

    emitted: list[LogEvent] = []
    line = '127.0.0.1 - - [x] "GET / HTTP/1.1" 200 5 "-" "\u00fc"'
    observer = cast(ILogObserver, emitted.append)
    Logger(namespace=ACCESS_NAMESPACE, observer=observer).info(
        ACCESS_EVENT_FORMAT, line=line, status=200
    )
    (event,) = emitted
    event["log_time"] = 1767225599.5
    fromWorker = {**eventFromJSONLine(eventAsJSON(dict(event))), "worker": 7}
    return all(
        formatAccess(dict(sample)) == formatEvent(dict(sample)) for sample in (event, fromWorker)
    )
