"""Throwaway TLS certificates for tests that serve HTTPS."""

from __future__ import annotations

from txfastcgi._server.sni import selfSignedCertificate as selfSigned


def selfSignedCertificate(hostName: str) -> tuple[bytes, bytes]:
    """A private key and a certificate for C{hostName}, valid for a day, in PEM."""
    certificate = selfSigned(hostName)
    return certificate.key, certificate.chain
