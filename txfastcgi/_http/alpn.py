"""
One TLS listener, two fronts: HTTP/2 to twisted.web's H2 stack, when the
client chose it by ALPN, and everything else (C{http/1.1}, or no ALPN at all)
to the dedicated HTTP/1.1 front, L{txfastcgi._http.http1}.

Each connection starts as an L{HTTP1Connection}, so that its deadlines
apply from the start, the TLS handshake included. The protocol negotiated
is known once the handshake is done, which is before the first bytes
arrive: if it is C{h2}, the HTTP/1.1 connection steps aside (it has read
nothing) and the HTTP/2 factory's protocol takes the connection over, as
twisted.web's own HTTP/1.1 channel hands over to its HTTP/2 one.

Usage::

    factory = ByALPN(HTTP1Factory(proxy, ...), FastCGISite(resource))
    endpoints.serverFromString(reactor, "ssl:8443:...").listen(factory)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress, IProtocol, IProtocolNegotiationFactory, ITransport
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer

from txfastcgi._http.http1 import HTTP1Connection, HTTP1Factory

__all__ = ["ByALPN"]


if TYPE_CHECKING:
    _ServerFactory = ServerFactory[Protocol]
else:  # Twisted 25.5, the last with TLS on Python 3.9 (PyPy), cannot subscript its factories.
    _ServerFactory = ServerFactory


@implementer(IProtocolNegotiationFactory)
class ByALPN(_ServerFactory):
    """
    Serves each TLS connection with C{http1}, or with C{h2} where the
    client negotiated HTTP/2.

    @param http1: the HTTP/1.1 front.
    @param h2: the site that serves HTTP/2 connections, and says which
        protocols it speaks: C{h2} only if twisted.web has its HTTP/2
        support installed, and C{http/1.1}.
    """

    noisy = False

    def __init__(self, http1: HTTP1Factory, h2: Site) -> None:
        self.http1 = http1
        self.h2 = h2

    def logPrefix(self) -> str:
        return self.http1.logPrefix()

    def acceptableProtocols(self) -> list[bytes]:
        """What ALPN offers: C{h2} first, if the HTTP/2 side has it."""
        protocols: list[bytes] = self.h2.acceptableProtocols()
        return protocols

    def buildProtocol(self, addr: IAddress | None) -> _Negotiated:
        return _Negotiated(self.http1.buildProtocol(addr), self, addr)


class _Negotiated(Protocol):
    """A TLS connection, served by whichever front its negotiated protocol asks for."""

    def __init__(self, http1: HTTP1Connection, factory: ByALPN, addr: IAddress | None) -> None:
        self._serving: IProtocol = http1
        self._http1: HTTP1Connection | None = http1
        self._factory = factory
        self._addr = addr

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        self._serving.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        http1, self._http1 = self._http1, None
        transport = self.transport
        assert transport is not None
        if http1 is not None and getattr(transport, "negotiatedProtocol", None) == b"h2":
            http1.handOver()
            h2 = self._factory.h2.buildProtocol(self._addr)
            assert h2 is not None
            self._serving = h2
            h2.makeConnection(transport)
        self._serving.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._serving.connectionLost(reason)
