"""
L{FastCGIClientProtocol} as a state machine: every state it can be in,
reached through its public API, against everything that can happen to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Union

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from txfastcgi._client.protocol import FastCGIClientProtocol, ProtocolState
from txfastcgi._fastcgi.records import EndRequest, Stdout
from txfastcgi.errors import StateError
from txfastcgi.testing import ResponseRecorder

READ_TIMEOUT = 10
OUTPUT = Stdout(1, b"Status: 200 OK\r\n\r\n").encode()
END = OUTPUT + EndRequest(1, 0, 0).encode()


@dataclass
class Connection:
    clock: MemoryReactorClock = field(default_factory=MemoryReactorClock)
    transport: StringTransport = field(default_factory=StringTransport)
    protocol: FastCGIClientProtocol = field(init=False)

    def __post_init__(self) -> None:
        self.protocol = FastCGIClientProtocol(self.clock, READ_TIMEOUT)

    def send(self, keepConnection: bool = True, bodyLength: int = 0) -> None:
        body = BytesIO(bytes(bodyLength))
        self.protocol.sendRequest([], body, bodyLength, ResponseRecorder(), keepConnection)


Step = Callable[[Connection], object]

# What can happen to a connection, through the public API.
EVENTS: dict[str, Step] = {
    "connect": lambda c: c.protocol.makeConnection(c.transport),
    "send": lambda c: c.send(),
    "output": lambda c: c.protocol.dataReceived(OUTPUT),
    "end": lambda c: c.protocol.dataReceived(END),
    "pause": lambda c: c.protocol.pauseProducing(),
    "resume": lambda c: c.protocol.resumeProducing(),
    "abort": lambda c: c.protocol.abort(),
    "lose": lambda c: c.protocol.connectionLost(Failure(ConnectionError())),
    "silence": lambda c: c.clock.advance(READ_TIMEOUT),
}
connect = EVENTS["connect"]


def sendNotKept(connection: Connection) -> None:
    connection.send(keepConnection=False)


def sendLargeBody(connection: Connection) -> None:
    connection.send(bodyLength=300_000)


S = ProtocolState
Moves = dict[str, Union[ProtocolState, type[StateError]]]
# Every situation: how to get there, the state it is, and where each event
# leads from it (StateError: a programming error, the state unchanged).
SITUATIONS: dict[str, tuple[list[Step], ProtocolState, Moves]] = {
    "new": (
        [],
        S.CONNECTING,
        {
            "connect": S.IDLE,
            "send": StateError,
            "output": S.CONNECTING,
            "end": S.CONNECTING,
            "pause": StateError,
            "resume": StateError,
            "abort": StateError,
            "lose": StateError,
            "silence": S.CONNECTING,
        },
    ),
    "connected": (
        [connect],
        S.IDLE,
        {
            "connect": StateError,
            "send": S.IN_FLIGHT,
            "output": S.ABORTED,  # stray bytes: nobody asked for them
            "end": S.ABORTED,
            "pause": S.IDLE,
            "resume": S.IDLE,
            "abort": S.ABORTED,
            "lose": S.CLOSED,
            "silence": S.IDLE,
        },
    ),
    "kept after a request": (
        [connect, EVENTS["send"], EVENTS["end"]],
        S.IDLE,
        {
            "connect": StateError,
            "send": S.IN_FLIGHT,
            "output": S.ABORTED,
            "end": S.ABORTED,
            "pause": S.IDLE,
            "resume": S.IDLE,
            "abort": S.ABORTED,
            "lose": S.CLOSED,
            "silence": S.IDLE,
        },
    ),
    "carrying a request": (
        [connect, EVENTS["send"]],
        S.IN_FLIGHT,
        {
            "connect": StateError,
            "send": StateError,
            "output": S.IN_FLIGHT,
            "end": S.IDLE,
            "pause": S.PAUSED,
            "resume": S.IN_FLIGHT,
            "abort": S.ABORTED,
            "lose": S.CLOSED,
            "silence": S.ABORTED,  # the read timeout
        },
    ),
    "carrying its last request": (
        [connect, sendNotKept],
        S.IN_FLIGHT,
        {
            "connect": StateError,
            "send": StateError,
            "output": S.IN_FLIGHT,
            "end": S.SPENT,
            "pause": S.PAUSED,
            "resume": S.IN_FLIGHT,
            "abort": S.ABORTED,
            "lose": S.CLOSED,
            "silence": S.ABORTED,
        },
    ),
    "sending a large body": (
        [connect, sendLargeBody],
        S.IN_FLIGHT,
        {
            "connect": StateError,
            "send": StateError,
            "output": S.IN_FLIGHT,
            "end": S.SPENT,  # the rest of the body cannot be sent
            "pause": S.PAUSED,
            "resume": S.IN_FLIGHT,
            "abort": S.ABORTED,
            "lose": S.CLOSED,
            "silence": S.ABORTED,
        },
    ),
    "paused": (
        [connect, EVENTS["send"], EVENTS["pause"]],
        S.PAUSED,
        {
            "connect": StateError,
            "send": StateError,
            "output": S.PAUSED,
            "end": S.IDLE,
            "pause": S.PAUSED,
            "resume": S.IN_FLIGHT,
            "abort": S.ABORTED,
            "lose": S.CLOSED,
            "silence": S.PAUSED,  # no read timeout while held back
        },
    ),
    "spent": (
        [connect, sendNotKept, EVENTS["end"]],
        S.SPENT,
        {
            "connect": StateError,
            "send": StateError,
            "output": S.ABORTED,
            "end": S.ABORTED,
            "pause": S.SPENT,
            "resume": S.SPENT,
            "abort": S.ABORTED,
            "lose": S.CLOSED,
            "silence": S.SPENT,
        },
    ),
    "aborted": (
        [connect, EVENTS["send"], EVENTS["abort"]],
        S.ABORTED,
        {
            "connect": StateError,
            "send": StateError,
            "output": S.ABORTED,  # read before the close: not delivered
            "end": S.ABORTED,
            "pause": S.ABORTED,
            "resume": S.ABORTED,
            "abort": S.ABORTED,
            "lose": S.CLOSED,
            "silence": S.ABORTED,
        },
    ),
    "closed": (
        [connect, EVENTS["lose"]],
        S.CLOSED,
        {
            "connect": StateError,
            "send": StateError,
            "output": S.CLOSED,
            "end": S.CLOSED,
            "pause": S.CLOSED,
            "resume": S.CLOSED,
            "abort": S.CLOSED,
            "lose": StateError,
            "silence": S.CLOSED,
        },
    ),
}
CASES = [
    pytest.param(situation, event, id=f"{situation}-{event}")
    for situation in SITUATIONS
    for event in EVENTS
]


def test_the_situations_cover_every_state_and_every_event() -> None:
    assert {state for _, state, _ in SITUATIONS.values()} == set(ProtocolState)
    for _, _, moves in SITUATIONS.values():
        assert moves.keys() == EVENTS.keys()


@pytest.mark.parametrize(("situation", "event"), CASES)
def test_every_event_in_every_state(situation: str, event: str) -> None:
    steps, state, moves = SITUATIONS[situation]
    connection = Connection()
    for step in steps:
        step(connection)
    protocol = connection.protocol
    assert protocol.state is state
    expected = moves[event]

    if expected is StateError:
        with pytest.raises(StateError):
            EVENTS[event](connection)
        assert protocol.state is state
    else:
        EVENTS[event](connection)
        assert protocol.state is expected
    assert protocol.reusable is (protocol.state is S.IDLE)
    assert protocol.connected is (protocol.state not in (S.CONNECTING, S.CLOSED))
    if protocol.state is not S.CLOSED:
        # Only giving up closes the connection from this side.
        assert connection.transport.disconnecting is (protocol.state is S.ABORTED)


def test_a_request_on_a_busy_connection_is_a_programming_error() -> None:
    connection = Connection()
    connect(connection)
    connection.send()
    message = r"sendRequest\(\) is not allowed while the connection is carrying a request"
    with pytest.raises(StateError, match=message):
        connection.send()
    assert issubclass(StateError, RuntimeError)
