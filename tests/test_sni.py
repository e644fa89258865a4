"""
Certificates chosen by SNI (L{txfastcgi._server.sni}), over real TLS on
loopback: what certificate and what ALPN protocol a client asking for
each name receives, before and after the certificates are replaced, and
while a TLS-ALPN-01 challenge is pending (a client offering only
C{acme-tls/1}, as the CA's validation server does).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
from pathlib import Path

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.certificates import selfSignedCertificate
from txfastcgi._server.sitefile import TLSFiles
from txfastcgi._server.sni import CertificatesByName, PEMCertificate

PROTOCOLS = [b"h2", b"http/1.1"]


def certificateFor(name: str) -> PEMCertificate:
    """A throwaway self-signed certificate naming C{name}."""
    key, certificate = selfSignedCertificate(name)
    return PEMCertificate(chain=certificate, key=key)


def der(certificate: PEMCertificate) -> bytes:
    return ssl.PEM_cert_to_DER_cert(certificate.chain.decode("ascii"))


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@implementer(IProtocolNegotiationFactory)
class EchoFactory(Factory):
    """Echoes, and offers HTTP/2 and HTTP/1.1 by ALPN, as the project's TLS fronts do."""

    protocol = Echo

    def acceptableProtocols(self) -> list[bytes]:
        return PROTOCOLS


def clientContext(protocols: list[str]) -> ssl.SSLContext:
    """A client that takes any certificate, so that the test can look at which one it got."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(protocols)
    return context


def connect(port: int, name: str | None, protocols: list[str]) -> ssl.SSLSocket:
    """A blocking client's handshake, sending C{name} by SNI (none if C{None})."""
    plain = socket.create_connection(("127.0.0.1", port), timeout=10)
    return clientContext(protocols).wrap_socket(plain, server_hostname=name)


def handshake(
    port: int, name: str | None, protocols: list[str] | None = None
) -> tuple[bytes, str | None]:
    """The certificate a client asking for C{name} receives, and the protocol ALPN chose."""
    with connect(port, name, protocols or ["h2", "http/1.1"]) as connection:
        certificate = connection.getpeercert(binary_form=True)
        assert certificate is not None
        return certificate, connection.selected_alpn_protocol()


def echoes(connection: ssl.SSLSocket) -> bytes:
    with connection:
        connection.sendall(b"still here")
        return connection.recv(100)


async def listen(test: TestCase, certificates: CertificatesByName) -> int:
    """A TLS listener on loopback serving C{certificates}, for the time of C{test}: its port."""
    endpoint = SSL4ServerEndpoint(reactor, 0, certificates, interface="127.0.0.1")
    port = await endpoint.listen(EchoFactory())
    test.addCleanup(port.stopListening)
    number: int = port.getHost().port
    return number


class CertificatesByNameTests(TestCase):
    def setUp(self) -> None:
        self.default = certificateFor("default.test")
        self.exact = certificateFor("www.example.org")
        self.wildcard = certificateFor("*.example.org")
        self.other = certificateFor("other.test")
        self.certificates = CertificatesByName(
            self.default,
            {
                "www.example.org": self.exact,
                "*.example.org": self.wildcard,
                "Other.Test": self.other,
            },
            acceptableProtocols=PROTOCOLS,
        )

    async def listen(self) -> int:
        return await listen(self, self.certificates)

    async def received(self, port: int, name: str | None) -> bytes:
        certificate, _ = await deferToThread(handshake, port, name)
        return certificate

    async def test_each_name_gets_its_certificate(self) -> None:
        port = await self.listen()
        self.assertEqual(await self.received(port, "www.example.org"), der(self.exact))
        self.assertEqual(await self.received(port, "other.test"), der(self.other))
        self.assertEqual(await self.received(port, "WWW.Example.ORG"), der(self.exact))

    async def test_a_wildcard_covers_subdomains_the_exact_names_leave(self) -> None:
        port = await self.listen()
        self.assertEqual(await self.received(port, "shop.example.org"), der(self.wildcard))
        self.assertEqual(await self.received(port, "a.b.example.org"), der(self.wildcard))
        self.assertEqual(await self.received(port, "example.org"), der(self.default))

    async def test_an_unknown_name_or_none_gets_the_default(self) -> None:
        port = await self.listen()
        self.assertEqual(await self.received(port, "unknown.test"), der(self.default))
        self.assertEqual(await self.received(port, None), der(self.default))

    async def test_alpn_still_chooses_http_2_or_http_1_1(self) -> None:
        port = await self.listen()
        for name in ("www.example.org", "shop.example.org", "unknown.test", None):
            _, protocol = await deferToThread(handshake, port, name)
            self.assertEqual(protocol, "h2", name)
            _, protocol = await deferToThread(handshake, port, name, ["http/1.1"])
            self.assertEqual(protocol, "http/1.1", name)

    async def test_a_renewed_certificate_is_served_to_new_connections(self) -> None:
        port = await self.listen()
        established = await deferToThread(connect, port, "www.example.org", ["http/1.1"])
        renewed = certificateFor("www.example.org")
        self.certificates.update({"www.example.org": renewed})
        self.assertEqual(await self.received(port, "www.example.org"), der(renewed))
        self.assertEqual(await self.received(port, "shop.example.org"), der(self.wildcard))
        self.assertEqual(await deferToThread(echoes, established), b"still here")

    async def test_a_reload_replaces_every_certificate(self) -> None:
        port = await self.listen()
        default = certificateFor("new-default.test")
        only = certificateFor("only.test")
        self.certificates.replace(default, {"only.test": only})
        self.assertEqual(await self.received(port, "only.test"), der(only))
        self.assertEqual(await self.received(port, "www.example.org"), der(default))
        self.assertEqual(await self.received(port, None), der(default))

    async def test_a_key_that_is_not_the_certificates_is_refused_and_the_old_ones_stay(
        self,
    ) -> None:
        mismatched = PEMCertificate(chain=self.exact.chain, key=self.other.key)
        with self.assertRaises(SSL.Error):
            self.certificates.update({"www.example.org": mismatched})
        port = await self.listen()
        self.assertEqual(await self.received(port, "www.example.org"), der(self.exact))

    async def test_certificates_load_from_a_sites_tls_files(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="txfastcgi-test-sni-"))
        self.addCleanup(shutil.rmtree, directory)
        renewed = certificateFor("www.example.org")
        (directory / "fullchain.pem").write_bytes(renewed.chain + self.other.chain)
        (directory / "key.pem").write_bytes(renewed.key)
        files = TLSFiles(str(directory / "fullchain.pem"), str(directory / "key.pem"))
        self.certificates.update({"www.example.org": PEMCertificate.fromFiles(files)})
        port = await self.listen()
        self.assertEqual(await self.received(port, "www.example.org"), der(renewed))


class TLSALPN01ChallengeTests(TestCase):
    def setUp(self) -> None:
        self.default = certificateFor("default.test")
        self.site = certificateFor("www.example.org")
        self.wildcard = certificateFor("*.example.org")
        self.challenge = certificateFor("www.example.org")
        self.certificates = CertificatesByName(
            self.default,
            {"www.example.org": self.site, "*.example.org": self.wildcard},
            acceptableProtocols=PROTOCOLS,
        )
        self.certificates.addChallenge("WWW.example.org", self.challenge)

    async def listen(self) -> int:
        return await listen(self, self.certificates)

    async def test_the_validation_server_gets_the_challenge_and_acme_tls_1(self) -> None:
        port = await self.listen()
        received = await deferToThread(handshake, port, "www.example.org", ["acme-tls/1"])
        self.assertEqual(received, (der(self.challenge), "acme-tls/1"))

    async def test_other_clients_of_the_name_meanwhile_get_its_certificate_and_h2(
        self,
    ) -> None:
        port = await self.listen()
        validating = await deferToThread(connect, port, "www.example.org", ["acme-tls/1"])
        self.addCleanup(validating.close)
        received = await deferToThread(handshake, port, "www.example.org")
        self.assertEqual(received, (der(self.site), "h2"))
        received = await deferToThread(handshake, port, "www.example.org", ["http/1.1"])
        self.assertEqual(received, (der(self.site), "http/1.1"))
        self.assertEqual(validating.getpeercert(binary_form=True), der(self.challenge))

    async def test_acme_tls_1_for_a_name_without_a_challenge_is_refused(self) -> None:
        port = await self.listen()
        for name in ("shop.example.org", "unknown.test", None):
            with self.assertRaises(ssl.SSLError):
                await deferToThread(handshake, port, name, ["acme-tls/1"])

    async def test_a_removed_challenge_is_served_no_more(self) -> None:
        port = await self.listen()
        self.certificates.removeChallenge("www.example.org")
        with self.assertRaises(ssl.SSLError):
            await deferToThread(handshake, port, "www.example.org", ["acme-tls/1"])
        received = await deferToThread(handshake, port, "www.example.org")
        self.assertEqual(received, (der(self.site), "h2"))

    async def test_a_challenge_outlasts_a_renewal_or_a_reload(self) -> None:
        port = await self.listen()
        renewed = certificateFor("www.example.org")
        self.certificates.update({"www.example.org": renewed})
        self.certificates.replace(self.default, {"www.example.org": renewed})
        received = await deferToThread(handshake, port, "www.example.org", ["acme-tls/1"])
        self.assertEqual(received, (der(self.challenge), "acme-tls/1"))
        received = await deferToThread(handshake, port, "www.example.org")
        self.assertEqual(received, (der(renewed), "h2"))
