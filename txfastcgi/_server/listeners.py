"""
The listening ports of a process, opened on its own endpoints (the main
process) or adopted from the main process (a worker).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorSocket,
)

from txfastcgi._server.front import Front

__all__ = ["Listen", "Listeners", "adopt", "isTLS"]


def adopt(
    reactor: IReactorSocket, descriptor: int, family: int, factory: IProtocolFactory
) -> Deferred[IListeningPort]:
    port = reactor.adoptStreamPort(
        descriptor,
        socket.AddressFamily(family),
        factory,  # type: ignore[arg-type]
    )
    return succeed(port)


Listen = Callable[[IProtocolFactory], Deferred[IListeningPort]]


class Listeners:
    """
    The listening ports of a process: open them all, close them all.

    @param listeners: how to listen on each, and whether it is a TLS one.
    """

    def __init__(self, listeners: Sequence[tuple[Listen, bool]]) -> None:
        self._listeners = listeners
        self.ports: list[IListeningPort] = []

    async def listen(self, front: Front) -> None:
        """Open the access log, and listen with the factory C{front} has for each."""
        front.accessLog.open()
        for listen, tls in self._listeners:
            self.ports.append(await listen(front.factory(tls)))

    def stopListening(self) -> Deferred[None]:
        return gatherResults(
            [maybeDeferred(port.stopListening) for port in self.ports]
        ).addCallback(lambda _: None)


def isTLS(description: str) -> bool:
    """Whether a --listen endpoint string is a TLS one (ssl: or tls:, behind haproxy: too)."""
    return description.removeprefix("haproxy:").partition(":")[0] in ("ssl", "tls")
