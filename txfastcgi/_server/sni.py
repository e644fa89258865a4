"""
TLS certificates chosen by the host name a client asks for (SNI), so that
one listener serves every site with its own certificate, and certificates
that can be replaced while the listener runs (an ACME renewal, a reload).

Usage::

    certificates = CertificatesByName(
        PEMCertificate.fromFiles(defaultFiles),
        {"example.org": PEMCertificate.fromFiles(files), "*.example.org": ...},
        acceptableProtocols=factory.acceptableProtocols(),
    )
    endpoints.SSL4ServerEndpoint(reactor, 443, certificates).listen(factory)
    ...
    certificates.update({"example.org": renewed})

Twisted sets the listening factory's ALPN protocols (C{h2}, C{http/1.1}:
L{txfastcgi._http.alpn}) on the context each connection starts with only.
Whether the context SNI switches to keeps that choice depends on the
OpenSSL and pyOpenSSL underneath (CPython's wheels here do, PyPy 3.9's
pyOpenSSL 25.1 does not), so every context chooses among
C{acceptableProtocols} itself.

TLS-ALPN-01 (RFC 8737), the ACME challenge answered on port 443: while
L{CertificatesByName.addChallenge} has a challenge certificate for a name,
a client that asks for that name and offers ALPN's C{acme-tls/1} (the
CA's validation server) gets that certificate and C{acme-tls/1}; every
other client gets the name's certificate as usual.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from txfastcgi._server.sitefile import TLSFiles

__all__ = ["ACME_TLS_1", "CertificatesByName", "PEMCertificate", "selfSignedCertificate"]

ACME_TLS_1 = b"acme-tls/1"
"""The ALPN protocol of TLS-ALPN-01 validation (RFC 8737)."""

_SelectProtocol = Callable[[SSL.Connection, list[bytes]], bytes]


@dataclass(frozen=True)
class PEMCertificate:
    """
    A certificate to serve, as PEM.

    @ivar chain: the certificate, then the intermediates that lead to a
        root clients trust (Let's Encrypt's C{fullchain.pem}).
    @ivar key: its private key.
    """

    chain: bytes
    key: bytes

    @classmethod
    def fromFiles(cls, files: TLSFiles) -> PEMCertificate:
        """Read the files a site's C{[site.tls]} names."""
        return cls(Path(files.certificate).read_bytes(), Path(files.key).read_bytes())


def selfSignedCertificate(
    hostName: str,
    lifetime: datetime.timedelta = datetime.timedelta(days=1),
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> PEMCertificate:
    """
    A certificate for C{hostName} that no client trusts: what a TLS
    listener serves to names it has no certificate for yet (a site whose
    ACME certificate is not issued yet, a client that sends no SNI), so
    that it can listen before the first certificate comes, as Caddy does;
    with C{extensions} (each with whether it is critical), a TLS-ALPN-01
    challenge's.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostName)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostName)]), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    certificate = builder.sign(key, hashes.SHA256())
    return PEMCertificate(
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _context(certificate: PEMCertificate, selectProtocol: _SelectProtocol) -> SSL.Context:
    """
    A server context for C{certificate}, with Twisted's defaults for
    everything else (protocol versions, ciphers), as C{ssl:} listeners have,
    and C{selectProtocol} choosing the ALPN protocol: it replaces the
    callback Twisted's own ALPN setup installs, and nothing sets another
    later, since a connection creator's connections are used as made.
    Loading it here, not at the first handshake, makes a broken pair of
    files an error for whoever supplies it.
    """
    leaf, *intermediates = x509.load_pem_x509_certificates(certificate.chain)
    key = serialization.load_pem_private_key(certificate.key, password=None)
    context: SSL.Context = CertificateOptions().getContext()
    context.set_alpn_select_callback(selectProtocol)
    context.use_certificate(leaf)
    for intermediate in intermediates:
        context.add_extra_chain_cert(intermediate)
    # The key types loading admits include some that cannot sign (X25519),
    # which use_privatekey refuses with an error.
    context.use_privatekey(key)  # type: ignore[arg-type]
    context.check_privatekey()
    return context


class _Contexts:
    """
    One whole set of certificates, made into contexts: replaced whole and
    never changed, so that a handshake sees one set or the next, never a
    mixture.
    """

    def __init__(
        self,
        default: PEMCertificate,
        byName: Mapping[str, PEMCertificate],
        selectProtocol: _SelectProtocol,
    ) -> None:
        # One context per certificate, however many names share it.
        contexts: dict[PEMCertificate, SSL.Context] = {}
        for certificate in (default, *byName.values()):
            if certificate not in contexts:
                contexts[certificate] = _context(certificate, selectProtocol)
        self.default = contexts[default]
        # What a connection starts with, apart from every context SNI
        # switches to: Twisted 25.5 (PyPy's) puts its own ALPN choice on the
        # context a connection starts with, which knows nothing of
        # acme-tls/1, and a client that names a host always leaves it.
        self.initial = _context(default, selectProtocol)
        self._exact: dict[str, SSL.Context] = {}
        self._wildcards: dict[str, SSL.Context] = {}
        for name, certificate in byName.items():
            name = _normalized(name)
            if name.startswith("*."):
                self._wildcards[name[2:]] = contexts[certificate]
            else:
                self._exact[name] = contexts[certificate]

    def forName(self, name: str) -> SSL.Context:
        """
        The context for C{name}: its exact entry, else the wildcard of the
        nearest parent domain (C{*.example.org} covers every subdomain of
        C{example.org}, as a site's hosts do), else the default.
        """
        exact = self._exact.get(name)
        if exact is not None:
            return exact
        labels = name.split(".")
        for start in range(1, len(labels)):
            wildcard = self._wildcards.get(".".join(labels[start:]))
            if wildcard is not None:
                return wildcard
        return self.default


def _normalized(name: str) -> str:
    """Host names compare without case and without a final dot."""
    return name.lower().rstrip(".")


@implementer(IOpenSSLServerConnectionCreator)
class CertificatesByName:
    """
    Serves each TLS connection the certificate for the host name its
    client sent by SNI, or the default one for clients that sent none or a
    name without a certificate.

    @param default: the certificate for unknown names.
    @param byName: host names (C{example.org}, or C{*.example.org} for its
        subdomains) and their certificates; an exact name wins over a
        wildcard, and names compare without case.
    @param acceptableProtocols: what ALPN offers, as the listening factory's
        C{acceptableProtocols()} says, preferred first.
    """

    def __init__(
        self,
        default: PEMCertificate,
        byName: Mapping[str, PEMCertificate] | None = None,
        *,
        acceptableProtocols: Sequence[bytes],
    ) -> None:
        self._acceptableProtocols = tuple(acceptableProtocols)
        self._byName: dict[str, PEMCertificate] = {}
        self._challenges: dict[str, SSL.Context] = {}
        self.replace(default, byName or {})

    def replace(self, default: PEMCertificate, byName: Mapping[str, PEMCertificate]) -> None:
        """
        Serve these certificates instead, from the next handshake on (a
        reload). Connections already established keep theirs.

        @raise ValueError: a certificate or a key that does not load.
        @raise OpenSSL.SSL.Error: a key that is not the certificate's.
            Either way the current certificates stay.
        """
        contexts = _Contexts(default, byName, self._selectProtocol)
        contexts.initial.set_tlsext_servername_callback(self._chooseByName)
        self._default = default
        self._byName = dict(byName)
        self._contexts = contexts

    def update(self, byName: Mapping[str, PEMCertificate]) -> None:
        """
        Serve these names' new certificates, the others' as before (a
        renewal).
        """
        self.replace(self._default, {**self._byName, **byName})

    def addChallenge(self, name: str, certificate: PEMCertificate) -> None:
        """
        Serve C{certificate}, a TLS-ALPN-01 challenge's, to the clients that
        ask for C{name} (exactly: the challenge has no wildcards) and offer
        C{acme-tls/1}, until L{removeChallenge}.

        @raise ValueError: a certificate or a key that does not load.
        """
        self._challenges[_normalized(name)] = _context(certificate, self._selectProtocol)

    def removeChallenge(self, name: str) -> None:
        """The challenge for C{name} is over: C{acme-tls/1} gets nothing more for it."""
        self._challenges.pop(_normalized(name), None)

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self._contexts.initial, None)

    def _chooseByName(self, connection: SSL.Connection) -> None:
        """
        The client's hello has named a host: switch to that host's
        certificate. C{get_servername} gives the name in its ASCII
        (IDNA) form; bytes that are not ASCII name no host, so they get
        the default certificate rather than a failed handshake.
        """
        name = connection.get_servername()
        if name is not None:
            connection.set_context(
                self._contexts.forName(_normalized(name.decode("ascii", "replace")))
            )

    def _selectProtocol(self, connection: SSL.Connection, offered: list[bytes]) -> bytes:
        """
        The client offered these ALPN protocols: choose the first of ours it
        offers, as Twisted does (an empty choice where there is none), or
        C{acme-tls/1} for a name with a challenge in progress.

        ALPN is chosen after SNI, and before the certificate is sent, so
        this is where a challenge's certificate can take over. The
        connection switches to the challenge's own context rather than
        taking the certificate on (C{use_certificate}): that keeps the
        site's certificate beside it if their key types differ, and
        OpenSSL serves that one with C{acme-tls/1} to a client whose
        signature algorithms leave out the challenge's key type (seen with
        an RSA site and C{openssl s_client -sigalgs rsa_pss_rsae_sha256}).
        """
        if ACME_TLS_1 in offered:
            name = connection.get_servername()
            if name is not None:
                challenge = self._challenges.get(_normalized(name.decode("ascii", "replace")))
                if challenge is not None:
                    connection.set_context(challenge)
                    return ACME_TLS_1
        for protocol in self._acceptableProtocols:
            if protocol in offered:
                return protocol
        return b""
