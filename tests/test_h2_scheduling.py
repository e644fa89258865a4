"""
How the lean HTTP/2 connection (L{txfastcgi._http.h2}) chooses the stream to
send a frame of next: L{RoundRobin}, in the part of C{priority.PriorityTree}'s
interface twisted.web uses, with the same errors. Through the real command,
tests/test_https.py serves parallel streams and 30 MiB over one connection.
"""

from __future__ import annotations

import itertools

import priority
import pytest

from txfastcgi._http.h2 import RoundRobin


def test_streams_with_data_take_turns() -> None:
    streams = RoundRobin()
    for stream in (1, 3, 5):
        streams.insert_stream(stream)
    assert list(itertools.islice(streams, 7)) == [1, 3, 5, 1, 3, 5, 1]


def test_a_blocked_stream_is_skipped_until_unblocked() -> None:
    streams = RoundRobin()
    for stream in (1, 3):
        streams.insert_stream(stream)
    streams.block(1)
    assert [next(streams), next(streams)] == [3, 3]
    streams.unblock(1)
    assert {next(streams), next(streams)} == {1, 3}


def test_with_nothing_to_send_it_says_so_as_the_tree_does() -> None:
    streams = RoundRobin()
    with pytest.raises(priority.DeadlockError):
        next(streams)
    streams.insert_stream(1)
    streams.block(1)
    with pytest.raises(priority.DeadlockError):
        next(streams)


def test_a_removed_stream_is_never_chosen_and_is_unknown() -> None:
    streams = RoundRobin()
    streams.insert_stream(1)
    streams.insert_stream(3)
    streams.remove_stream(1)
    assert [next(streams), next(streams)] == [3, 3]
    for call in (streams.block, streams.unblock, streams.remove_stream, streams.reprioritize):
        with pytest.raises(priority.MissingStreamError):
            call(1)


def test_a_stream_inserted_twice_or_too_many_are_refused() -> None:
    streams = RoundRobin(maximumStreams=2)
    streams.insert_stream(1)
    with pytest.raises(priority.DuplicateStreamError):
        streams.insert_stream(1)
    streams.insert_stream(3)
    with pytest.raises(priority.TooManyStreamsError):
        streams.insert_stream(5)


def test_a_priority_frame_changes_nothing() -> None:
    streams = RoundRobin()
    streams.insert_stream(1)
    streams.insert_stream(3)
    streams.reprioritize(3, depends_on=1, weight=256, exclusive=True)
    assert list(itertools.islice(streams, 4)) == [1, 3, 1, 3]
