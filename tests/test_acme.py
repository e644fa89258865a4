"""
Certificates by ACME (L{txfastcgi._server.acme}), for real against
Debian's pebble on loopback (L{tests.pebble}), which validates each
HTTP-01 challenge by fetching it from our responder, or each TLS-ALPN-01
one by a handshake with our TLS listener: issuance, what is kept on disk,
renewal, and a CA that is down.

Renewals are scheduled on a L{Clock} that starts at the wall clock's
time, so a test makes one due by advancing it; the orders themselves run
in real threads against the real pebble.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.pebble import Pebble, listenDNS
from tests.test_sni import certificateFor, clientContext
from txfastcgi._http.http1 import HTTP1Factory, StaticFiles
from txfastcgi._http.sites import Sites
from txfastcgi._server.acme import (
    RETRY_DELAY,
    ACMECertificates,
    Answers,
    HTTP01Answers,
    TLSALPN01Answers,
)
from txfastcgi._server.sitefile import ACMESettings
from txfastcgi._server.sni import CertificatesByName, PEMCertificate

HOSTS = ("www.example.test", "example.test")

# An order takes pebble about two seconds (the acme client polls each second).
ORDER_TIMEOUT = 30.0


def verifiedHandshake(port: int, name: str, root: bytes) -> x509.Certificate:
    """
    The certificate a client that trusts only C{root} receives for
    C{name}, having verified the chain and the name.
    """
    return handshakeWith(ssl.create_default_context(cadata=root.decode("ascii")), port, name)


def handshakeWith(context: ssl.SSLContext, port: int, name: str) -> x509.Certificate:
    """The certificate a client of C{context} receives for C{name}."""
    plain = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(plain, server_hostname=name) as connection:
        certificate = connection.getpeercert(binary_form=True)
        assert certificate is not None
        return x509.load_der_x509_certificate(certificate)


def leaf(certificate: PEMCertificate) -> x509.Certificate:
    return x509.load_pem_x509_certificate(certificate.chain)


class Events:
    """What the service tells: certificates issued, and log events, each awaitable."""

    def __init__(self) -> None:
        self.issued: list[tuple[tuple[str, ...], PEMCertificate]] = []
        self.logged: list[LogEvent] = []
        self._waiting: list[tuple[Any, Deferred[None]]] = []

    def certificate(self, hosts: tuple[str, ...], certificate: PEMCertificate) -> None:
        self.issued.append((hosts, certificate))
        self._check()

    def log(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "txfastcgi._server.acme.ACMECertificates":
            self.logged.append(event)
            self._check()

    def _check(self) -> None:
        for condition, waiting in list(self._waiting):
            if condition():
                self._waiting.remove((condition, waiting))
                waiting.callback(None)

    def until(self, condition: Any) -> Deferred[None]:
        """Fires once C{condition()} holds."""
        waiting: Deferred[None] = Deferred()
        self._waiting.append((condition, waiting))
        self._check()
        return waiting.addTimeout(ORDER_TIMEOUT, reactor)


class ACMETests(TestCase):
    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="txfastcgi-test-acme-"))
        self.addCleanup(shutil.rmtree, directory)
        dns, dnsPort = listenDNS()
        self.addCleanup(dns.stopListening)
        self.pebble = Pebble(directory, dnsPort)
        self.pebble.start()
        self.addCleanup(self.pebble.stop)
        self.answers = HTTP01Answers()
        # What answers the challenges on port 80: the HTTP/1.1 front, for no site but them.
        front = HTTP1Factory(
            Sites([], challenges=self.answers), serveStaticFile=StaticFiles(), reactor=reactor
        )
        self.http = reactor.listenTCP(self.pebble.httpPort, front, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(self.http.stopListening)
        self.state = directory / "state"
        self.settings = ACMESettings(
            email="admin@example.test",
            directory=self.pebble.directory,
            state=str(self.state),
            ca_bundle=str(self.pebble.caBundle),
        )
        self.events = Events()
        observer = cast(ILogObserver, self.events.log)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.clock = Clock()
        self.clock.advance(time.time())
        self.served = CertificatesByName(certificateFor("default.test"), acceptableProtocols=[])

    def certificates(
        self, hosts: tuple[str, ...] = HOSTS, answers: Answers | None = None
    ) -> ACMECertificates:
        """
        The service, started, telling L{Events} and the TLS listener of each
        certificate, proving by HTTP-01 unless other C{answers} are given.
        """

        def issued(hosts: tuple[str, ...], certificate: PEMCertificate) -> None:
            self.served.update(dict.fromkeys(hosts, certificate))
            self.events.certificate(hosts, certificate)

        service = ACMECertificates(
            self.settings, [hosts], answers or self.answers, issued, self.clock
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def issuedCount(self, count: int) -> PEMCertificate:
        """The certificate the service tells of the C{count}th time."""
        await self.events.until(lambda: len(self.events.issued) >= count)
        _, certificate = self.events.issued[count - 1]
        return certificate

    async def listen(self, number: int = 0) -> int:
        """A TLS listener serving L{served} on port C{number} (any if 0): its port."""
        endpoint = SSL4ServerEndpoint(reactor, number, self.served, interface="127.0.0.1")
        port = await endpoint.listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        listening: int = port.getHost().port
        return listening

    async def servedFor(self, port: int, name: str) -> x509.Certificate:
        root = await deferToThread(self.pebble.root)
        return await deferToThread(verifiedHandshake, port, name, root)

    def renewal(self) -> float:
        """When the service will renew next, on its clock."""
        (call,) = self.clock.getDelayedCalls()
        return call.getTime()

    async def test_a_certificate_is_issued_for_every_host_and_served(self) -> None:
        self.certificates()
        certificate = await self.issuedCount(1)
        self.assertEqual(self.events.issued[0][0], HOSTS)
        port = await self.listen()
        for name in HOSTS:
            self.assertEqual(await self.servedFor(port, name), leaf(certificate))
        self.assertIsNone(self.answers.answer("anything"))

    async def test_a_certificate_is_issued_by_tls_alpn_01_with_only_a_tls_listener(
        self,
    ) -> None:
        await maybeDeferred(self.http.stopListening)
        answers = TLSALPN01Answers()
        answers.serveOn(self.served)
        port = await self.listen(self.pebble.tlsPort)
        self.certificates(answers=answers)
        certificate = await self.issuedCount(1)
        for name in HOSTS:
            self.assertEqual(await self.servedFor(port, name), leaf(certificate))
        # The challenges are over: a validation server would get no certificate.
        acmeOnly = clientContext(["acme-tls/1"])
        with self.assertRaises(ssl.SSLError):
            await deferToThread(handshakeWith, acmeOnly, port, HOSTS[0])

    async def test_the_account_key_and_certificates_are_kept_privately(self) -> None:
        self.certificates()
        certificate = await self.issuedCount(1)
        stored = self.state / "certificates" / HOSTS[0]
        self.assertEqual((stored / "fullchain.pem").read_bytes(), certificate.chain)
        self.assertEqual((stored / "privkey.pem").read_bytes(), certificate.key)
        for directory in (self.state, self.state / "certificates", stored):
            self.assertEqual(stat.S_IMODE(directory.stat().st_mode), 0o700, directory)
        for file in (self.state / "account.key", stored / "fullchain.pem", stored / "privkey.pem"):
            self.assertEqual(stat.S_IMODE(file.stat().st_mode), 0o600, file)

    async def test_a_restart_serves_the_stored_certificate_without_ordering(self) -> None:
        first = self.certificates()
        certificate = await self.issuedCount(1)
        accountKey = (self.state / "account.key").read_bytes()
        first.stopService()
        self.certificates()
        self.assertEqual(self.events.issued[1], (HOSTS, certificate))
        self.assertEqual(self.renewal(), first_renewal_time(certificate))
        self.assertEqual((self.state / "account.key").read_bytes(), accountKey)

    async def test_a_site_that_gained_a_host_gets_a_new_certificate_at_start(self) -> None:
        first = self.certificates()
        await self.issuedCount(1)
        first.stopService()
        self.certificates(HOSTS + ("shop.example.test",))
        certificate = await self.issuedCount(2)
        port = await self.listen()
        self.assertEqual(await self.servedFor(port, "shop.example.test"), leaf(certificate))

    async def test_renewal_when_a_third_of_the_lifetime_is_left(self) -> None:
        self.certificates()
        certificate = await self.issuedCount(1)
        self.assertEqual(self.renewal(), first_renewal_time(certificate))
        port = await self.listen()
        self.clock.advance(self.renewal() - self.clock.seconds())
        renewed = await self.issuedCount(2)
        self.assertNotEqual(leaf(renewed).serial_number, leaf(certificate).serial_number)
        self.assertEqual(await self.servedFor(port, HOSTS[0]), leaf(renewed))
        stored = self.state / "certificates" / HOSTS[0] / "fullchain.pem"
        self.assertEqual(stored.read_bytes(), renewed.chain)
        self.assertEqual(self.renewal(), first_renewal_time(renewed))

    async def test_a_ca_that_is_down_leaves_the_last_certificate_in_service(self) -> None:
        service = self.certificates()
        certificate = await self.issuedCount(1)
        port = await self.listen()
        root = await deferToThread(self.pebble.root)
        self.pebble.stop()
        failedAt = self.renewal()
        self.clock.advance(failedAt - self.clock.seconds())
        await self.events.until(
            lambda: any(e["log_level"].name == "error" for e in self.events.logged)
        )
        (failure,) = [e for e in self.events.logged if e["log_level"].name == "error"]
        self.assertEqual(failure["hosts"], " ".join(HOSTS))
        self.assertIn("Connection", failure["error"])
        self.assertEqual(service.failures, 1)
        self.assertEqual(len(self.events.issued), 1)
        served = await deferToThread(verifiedHandshake, port, HOSTS[0], root)
        self.assertEqual(served, leaf(certificate))
        self.assertEqual(self.renewal(), failedAt + RETRY_DELAY)

        self.pebble.start()
        self.clock.advance(RETRY_DELAY)
        renewed = await self.issuedCount(2)
        self.assertEqual(await self.servedFor(port, HOSTS[0]), leaf(renewed))
        self.assertEqual(service.failures, 1)


def first_renewal_time(certificate: PEMCertificate) -> float:
    """Two thirds into the certificate's lifetime, in seconds since the epoch."""
    issued = leaf(certificate)
    notBefore = issued.not_valid_before_utc.timestamp()
    notAfter = issued.not_valid_after_utc.timestamp()
    return notBefore + (notAfter - notBefore) * 2 / 3
