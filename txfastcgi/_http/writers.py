"""
L{ForwardingWriter}: the base of the response writers that wrap another,
below the core, which uses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IPushProducer

from txfastcgi._http.framing import BodyFraming

if TYPE_CHECKING:
    from txfastcgi._http.core import ResponseWriter

__all__ = ["ForwardingWriter"]


class ForwardingWriter:
    """
    A L{ResponseWriter} that hands every call to another, for a wrapper to
    override those it changes: a compressing writer, one that adds a header.
    """

    def __init__(self, writer: ResponseWriter) -> None:
        self._writer = writer

    def writeInformational(self, code: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self._writer.writeInformational(code, headers)

    def writeHead(
        self,
        code: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        framing: BodyFraming,
    ) -> None:
        self._writer.writeHead(code, reason, headers, framing)

    def writeBody(self, data: bytes) -> None:
        self._writer.writeBody(data)

    def flush(self) -> None:
        self._writer.flush()

    def finish(self) -> None:
        self._writer.finish()

    def abort(self) -> None:
        self._writer.abort()

    def registerProducer(self, producer: IPushProducer) -> None:
        self._writer.registerProducer(producer)

    def unregisterProducer(self) -> None:
        self._writer.unregisterProducer()

    def serveFile(self, filename: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self._writer.serveFile(filename, headers)
