"""
The listening ports of a process: opened on its own endpoints (the main
process), or its channel to the main process (a worker).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
)

from txfastcgi._server.endpointstrings import TLSFileNames
from txfastcgi._server.front import Front
from txfastcgi._server.sni import PEMCertificate, selfSignedCertificate

__all__ = ["Listen", "Listeners", "defaultCertificate"]


Listen = Callable[[IProtocolFactory], Deferred[IListeningPort]]


class Listeners:
    """
    The listening ports of a process: open them all, close them all.

    @param listeners: how to listen on each, and what it serves of the
        front: whether it is a TLS one, or, for a plain listener that the
        front makes a TLS one with the sites' own certificates, the files
        of the TLS listener it was (L{splitTLS}).
    """

    def __init__(self, listeners: Sequence[tuple[Listen, bool | TLSFileNames]]) -> None:
        self._listeners = listeners
        self.ports: list[IListeningPort] = []

    async def listen(self, front: Front) -> None:
        """Open the access log, and listen with the factory C{front} has for each."""
        front.accessLog.open()
        for listen, tls in self._listeners:
            if isinstance(tls, TLSFileNames):
                factory = front.tlsFactory(defaultCertificate(tls))
            else:
                factory = front.factory(tls)
            self.ports.append(await listen(factory))

    def stopListening(self) -> Deferred[None]:
        return gatherResults(
            [maybeDeferred(port.stopListening) for port in self.ports]
        ).addCallback(lambda _: None)


def defaultCertificate(files: TLSFileNames) -> PEMCertificate:
    """
    What a TLS listener of sites with certificates of their own serves to
    names no site has one for: its own certificate, or a placeholder.
    """
    if files.privateKey is None:
        return selfSignedCertificate("txfastcgi.invalid")
    chain = Path(files.certKey or files.privateKey).read_bytes()
    if files.extraCertChain is not None:
        chain += b"\n" + Path(files.extraCertChain).read_bytes()
    return PEMCertificate(chain, Path(files.privateKey).read_bytes())
