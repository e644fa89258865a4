"""
HTTP/2 through twisted.web, made lean: twisted.web's H2 connection with two
of its costs taken out.

twisted.web's C{H2Connection} sends one frame per reactor turn: after each
DATA frame or end of stream it writes what h2 made to the transport (one TLS
record, one C{send}) and schedules itself with C{callLater(0)}. A tiny
response is three of those turns. L{LeanH2Connection} sends the frames of
every stream that has some ready, up to a bound, in one turn and one write.

It also chooses the next stream by RFC 7540's dependency tree (the
C{priority} package), whose bookkeeping cost more than the rest of the
sending loop here. RFC 9113 (section 5.3) deprecates that scheme, and
browsers have stopped relying on it: L{RoundRobin} serves the streams with
data in turn, which is what equal weights in the tree amounted to.

Measured on this machine with C{h2load -c32 -m16} on a 14-byte PHP response
through C{twist fastcgi-proxy}: 700 CPU µs a request with twisted.web's
connection, 510 to 560 with this one (28 % more requests a second).

Both rely on how C{twisted.web._http2.H2Connection} uses its C{priority}
attribute and its send loop (the same from Twisted 25.5 to 26.10);
tests/test_https.py and the HTTP/2 tests of tests/test_security.py hold
them to it.
"""

from __future__ import annotations

from typing import Any, cast

import priority
from twisted.internet.defer import Deferred
from twisted.web import _http2
from twisted.web.http import _GenericHTTPChannelProtocol

__all__ = ["LeanH2Connection", "RoundRobin", "SwitchingToLeanH2"]

# Frames sent in one reactor turn at most, so that one connection with many
# streams does not keep the others waiting.
_FRAMES_PER_TURN = 64

_END_STREAM = _http2._END_STREAM_SENTINEL


class RoundRobin:
    """
    The streams of a connection that have data to send, served in turn: the
    part of C{priority.PriorityTree}'s interface that twisted.web's
    connection uses, and its errors, with no dependency tree.

    @param maximumStreams: the most streams known at once, as the tree's
        own bound (against a client that opens streams without end).
    """

    def __init__(self, maximumStreams: int = 1000) -> None:
        self._maximumStreams = maximumStreams
        self._known: set[int] = set()
        # Insertion-ordered: the next to send first.
        self._ready: dict[int, None] = {}

    def insert_stream(
        self, stream_id: int, depends_on: Any = None, weight: int = 16, exclusive: bool = False
    ) -> None:
        """A new stream, ready to send (twisted.web blocks it at once)."""
        if stream_id in self._known:
            raise priority.DuplicateStreamError(stream_id)
        if len(self._known) >= self._maximumStreams:
            raise priority.TooManyStreamsError(f"more than {self._maximumStreams} streams")
        self._known.add(stream_id)
        self._ready[stream_id] = None

    def reprioritize(
        self, stream_id: int, depends_on: Any = None, weight: int = 16, exclusive: bool = False
    ) -> None:
        """A PRIORITY frame: nothing changes but that the stream must be known."""
        self._check(stream_id)

    def block(self, stream_id: int) -> None:
        """The stream has nothing to send for now."""
        self._check(stream_id)
        self._ready.pop(stream_id, None)

    def unblock(self, stream_id: int) -> None:
        """The stream has something to send; it keeps its turn if it had one."""
        self._check(stream_id)
        self._ready[stream_id] = None

    def remove_stream(self, stream_id: int) -> None:
        """The stream is over."""
        self._check(stream_id)
        self._known.remove(stream_id)
        self._ready.pop(stream_id, None)

    def __iter__(self) -> RoundRobin:
        return self

    def __next__(self) -> int:
        """The stream to send a frame of next, which goes to the back of the line."""
        ready = self._ready
        if not ready:
            raise priority.DeadlockError("no stream has data to send")
        stream = next(iter(ready))
        del ready[stream]
        ready[stream] = None
        return stream

    def _check(self, stream_id: int) -> None:
        if stream_id not in self._known:
            raise priority.MissingStreamError(stream_id)


class LeanH2Connection(_http2.H2Connection):
    """
    twisted.web's HTTP/2 connection, sending the frames that are ready in
    one turn and one write, and choosing streams in turn.
    """

    def __init__(self, reactor: Any = None) -> None:
        super().__init__(reactor)
        self.priority = RoundRobin()

    def _sendPrioritisedData(self, *args: object) -> None:
        # The frames of one turn: h2 gathers them, and they leave in one write.
        if not self._stillProducing:
            return
        conn = self.conn
        queues = self._outboundStreamQueues
        framed = 0
        while framed < _FRAMES_PER_TURN:
            try:
                streamID = next(self.priority)
            except priority.DeadlockError:
                self._writeFramed(framed)
                # Nothing to send: wait until a stream has something.
                waiting: Deferred[object] = Deferred()
                waiting.addCallback(self._sendPrioritisedData)
                self._sendingDeferred = waiting
                return
            if self._consumerBlocked is not None:
                # The transport is full: go on once it drains.
                self._writeFramed(framed)
                self._consumerBlocked.addCallback(self._sendPrioritisedData)
                return
            framed += 1
            queue = queues[streamID]
            data = queue.popleft()
            if data is _END_STREAM:
                conn.end_stream(streamID)
                self._requestDone(streamID)
                continue
            room = min(conn.max_outbound_frame_size, conn.local_flow_control_window(streamID))
            if len(data) > room:
                queue.appendleft(data[room:])
                data = data[:room]
            if data:
                conn.send_data(streamID, data)
            if not queue:
                self.priority.block(streamID)
            if self.remainingOutboundWindow(streamID) <= 0:
                self.streams[streamID].flowControlBlocked()
        self._writeFramed(framed)
        self._reactor.callLater(0, self._sendPrioritisedData)

    def _writeFramed(self, framed: int) -> None:
        """Write the frames of this turn, if it made any."""
        if framed:
            self.resetTimeout()
            transport = self.transport
            assert transport is not None
            transport.write(self.conn.data_to_send())


class SwitchingToLeanH2(_GenericHTTPChannelProtocol):
    """
    twisted.web's protocol that serves HTTP/1.1, or HTTP/2 when TLS's ALPN
    chose it, with a L{LeanH2Connection} for HTTP/2. It makes the switch
    itself on the first bytes, as twisted.web does, with the lean class.
    """

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is None:
            # twisted.web's own attributes, which it leaves untyped.
            http11: Any = self._channel
            transport = http11.transport
            if getattr(transport, "negotiatedProtocol", None) == b"h2":
                # The HTTP/1.1 channel lets go of the transport and its timer.
                networkProducer = http11._networkProducer
                networkProducer.unregisterProducer()
                http11.setTimeout(None)
                channel: Any = LeanH2Connection()
                channel.requestFactory = self._requestFactory
                channel.site = self._site
                channel.factory = self._factory
                channel.timeOut = self._timeOut
                channel.callLater = self._callLater
                self._channel = channel
                channel.makeConnection(transport)
                networkProducer.registerProducer(channel, True)
                self._negotiatedProtocol = cast(Any, b"h2")
        super().dataReceived(data)
