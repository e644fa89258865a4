"""
How access lines are written, on a deterministic clock: gathered and
written together a moment later, never lost when the file is closed or
reopened; and, in the event log under twist, the very text twisted.logger
writes, in the order of the events.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import cast

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    eventAsJSON,
    eventFromJSON,
    globalLogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python import usage

from txfastcgi._http.accesslog import ACCESS_NAMESPACE, AccessLog, LineBuffer, jsonLine
from txfastcgi._http.served import Served, Upstream
from txfastcgi._server.eventlog import EventLogFiles, eventFromJSONLine
from txfastcgi._server.options import Options
from txfastcgi._server.service import _twistLogFileReopener


def _served(target: bytes = b"/index.php", when: float = 1767225599.25) -> Served:
    return Served(
        time=when,
        client="127.0.0.1",
        method=b"GET",
        target=target,
        protocol=b"HTTP/1.1",
        status=200,
        sent=14,
        referrer=None,
        userAgent=b'say "hi"',
        host=b"example.org",
        seconds=0.002,
        upstream=Upstream("unix:/run/php.sock", 0.001),
    )


def test_a_line_buffer_writes_what_it_gathered_together_a_tenth_of_a_second_later() -> None:
    clock = MemoryReactorClock()
    writes: list[str] = []
    buffer = LineBuffer(writes.append, clock)
    buffer.add("one\n")
    buffer.add("two\n")
    clock.advance(0.05)
    assert writes == []
    clock.advance(0.05)
    assert writes == ["one\ntwo\n"]
    buffer.add("three\n")
    clock.advance(0.1)
    assert writes == ["one\ntwo\n", "three\n"]


def test_a_line_buffer_writes_at_once_when_it_holds_its_limit() -> None:
    clock = MemoryReactorClock()
    writes: list[str] = []
    buffer = LineBuffer(writes.append, clock, limit=10)
    buffer.add("12345\n")
    buffer.add("67890\n")
    assert writes == ["12345\n67890\n"]
    assert not clock.getDelayedCalls()


def test_a_flushed_line_buffer_leaves_no_timer_behind() -> None:
    clock = MemoryReactorClock()
    writes: list[str] = []
    buffer = LineBuffer(writes.append, clock)
    buffer.add("one\n")
    buffer.flush()
    buffer.flush()
    assert writes == ["one\n"]
    assert not clock.getDelayedCalls()


def test_access_lines_reach_the_file_together_and_at_close(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    clock = MemoryReactorClock()
    accessLog = AccessLog(str(path), reactor=clock)
    accessLog.open()
    accessLog(_served(b"/first"))
    accessLog(_served(b"/second"))
    assert path.read_text() == ""
    clock.advance(0.1)
    assert [line.split('"')[1] for line in path.read_text().splitlines()] == [
        "GET /first HTTP/1.1",
        "GET /second HTTP/1.1",
    ]
    accessLog(_served(b"/last"))
    accessLog.close()
    assert path.read_text().splitlines()[-1] == (
        '127.0.0.1 - - [31/Dec/2025:23:59:59 +0000] "GET /last HTTP/1.1" 200 14'
        ' "-" "say \\x22hi\\x22"'
    )
    assert not clock.getDelayedCalls()


def test_lines_gathered_before_a_reopen_go_to_the_renamed_file(tmp_path: Path) -> None:
    path, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    clock = MemoryReactorClock()
    accessLog = AccessLog(str(path), reactor=clock)
    accessLog.open()
    accessLog(_served(b"/before"))
    path.rename(rotated)
    accessLog.reopen()
    accessLog(_served(b"/after"))
    accessLog.close()
    assert "/before" in rotated.read_text() and "/after" not in rotated.read_text()
    assert "/after" in path.read_text() and "/before" not in path.read_text()


def test_json_access_lines_keep_their_format() -> None:
    line = json.loads(jsonLine(_served(when=1767225599.25)))
    assert line["time"] == "2025-12-31T23:59:59.250Z"
    assert line["user_agent"] == 'say "hi"' and line["backend"] == "unix:/run/php.sock"


def _events() -> list[LogEvent]:
    """
    Access events as our Logger makes them and as they come back from a
    worker, between the other events of a process, one with a traceback.
    """
    emitted: list[LogEvent] = []
    observer = cast(ILogObserver, emitted.append)
    access = Logger(namespace=ACCESS_NAMESPACE, observer=observer)
    other = Logger(namespace="txfastcgi", observer=observer)
    other.info("serving {what}", what="http://127.0.0.1:8080/")
    access.info("{line}", line='127.0.0.1 - - [x] "GET /\u00fc HTTP/1.1" 200 5 "-" "-"', status=200)
    access.info("{line}", line='{"uri": "/json", "status": 404}', status=404)
    try:
        raise ZeroDivisionError("no script")
    except ZeroDivisionError:
        other.failure("script failed")
    access.info("{line}", line="::1 - - [y] next", status=200)
    fromWorker = {**eventFromJSON(eventAsJSON(dict(emitted[1]))), "worker": 1234}
    emitted.insert(3, fromWorker)
    for number, event in enumerate(emitted):
        event["log_time"] = 1767225599.0 + number * 0.4
    return emitted


def _written(observer: ILogObserver, out: io.StringIO, events: list[LogEvent]) -> str:
    for event in events:
        observer(dict(event))
    return out.getvalue()


def test_the_event_log_is_what_twisted_logger_writes_in_text_and_json() -> None:
    """Access events or not, from a worker or not, character for character."""
    events = _events()
    for format, twisted in (("text", textFileLogObserver), ("json", jsonFileLogObserver)):
        expected = io.StringIO()
        _written(twisted(expected), expected, events)
        out = io.StringIO()
        files = EventLogFiles(format, MemoryReactorClock())
        before = _written(files(out), out, events)
        assert before != expected.getvalue(), "the last access event was not gathered"
        files.flush()
        assert out.getvalue() == expected.getvalue(), format


def test_access_events_wait_for_the_next_other_event_or_the_timer() -> None:
    clock = MemoryReactorClock()
    out = io.StringIO()
    observer = EventLogFiles("text", clock)(out)
    events = _events()
    observer(dict(events[1]))
    assert out.getvalue() == ""
    observer(dict(events[0]))
    first, second = out.getvalue().splitlines()
    assert "[txfastcgi.access#info]" in first and "serving" in second
    observer(dict(events[2]))
    clock.advance(0.1)
    assert out.getvalue().splitlines()[2].endswith('{"uri": "/json", "status": 404}')


def test_access_events_gathered_are_written_at_the_reactors_shutdown() -> None:
    clock = MemoryReactorClock()
    out = io.StringIO()
    observer = EventLogFiles("json", clock)(out)
    observer(dict(_events()[1]))
    ((flush, args, kwargs),) = clock.triggers["after"]["shutdown"]
    flush(*args, **kwargs)
    assert json.loads(out.getvalue().lstrip("\x1e"))["status"] == 200


def test_a_twist_log_file_reopened_gets_the_access_events_that_followed(tmp_path: Path) -> None:
    """logrotate renamed twist's --log-file: the gathered lines go to the old file."""
    path, rotated = tmp_path / "proxy.log", tmp_path / "proxy.log.1"
    logFile = open(path, "a")
    parent = usage.Options()
    parent["logFile"] = logFile
    options = Options()
    options.parent = parent
    files = EventLogFiles("text", MemoryReactorClock())
    observer = files(logFile)
    reopen = _twistLogFileReopener(options, files)
    assert reopen is not None
    events = _events()
    observer(dict(events[1]))
    path.rename(rotated)
    reopen()
    observer(dict(events[5]))
    files.flush()
    logFile.close()
    assert "/\u00fc" in rotated.read_text() and "next" not in rotated.read_text()
    assert "next" in path.read_text() and os.path.getsize(path) < os.path.getsize(rotated)


def test_events_from_a_worker_decode_as_twisted_logger_decodes_them() -> None:
    for event in _events():
        text = eventAsJSON(dict(event))
        decoded = eventFromJSONLine(text)
        assert decoded["log_level"] is event["log_level"]
        assert list(decoded) == list(eventFromJSON(text))
        assert eventAsJSON(decoded) == eventAsJSON(eventFromJSON(text))


def test_an_access_event_is_the_one_its_logger_would_emit() -> None:
    """The access log makes its events itself: the same keys, in the same order."""
    emitted: list[LogEvent] = []
    observer = cast(ILogObserver, emitted.append)
    globalLogPublisher.addObserver(observer)
    try:
        AccessLog()(_served())
    finally:
        globalLogPublisher.removeObserver(observer)
    (made,) = [e for e in emitted if e.get("log_namespace") == ACCESS_NAMESPACE]
    expected: list[LogEvent] = []
    Logger(namespace=ACCESS_NAMESPACE, observer=cast(ILogObserver, expected.append)).info(
        "{line}", line=made["line"], status=200
    )
    assert list(made) == list(expected[0])
    assert {**made, "log_time": 0, "log_logger": None} == {
        **expected[0],
        "log_time": 0,
        "log_logger": None,
    }
    assert isinstance(made["log_logger"], Logger)
    assert made["log_logger"].namespace == ACCESS_NAMESPACE
