"""
Debian's C{pebble}, a small ACME server, on loopback for the ACME tests,
with a DNS responder that sends its challenge checks back to loopback.

Pebble validates an HTTP-01 challenge by connecting to the name being
validated on its configured C{httpPort}, and a TLS-ALPN-01 one on its
C{tlsPort}; L{LoopbackResolver}, which pebble
is pointed at with C{-dnsserver}, resolves every name to 127.0.0.1, so the
tests can use any names, without touching C{/etc/hosts}. Each pebble gets
its own certificate for its own HTTPS (made here: Debian ships none) and
its own ports, and keeps nothing between runs.

No test skips when pebble is missing: L{Pebble} raises.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.names import dns
from twisted.names.server import DNSServerFactory

from tests.processes import freePort

# Pebble starts in well under a second; this only bounds a broken start.
_START_TIMEOUT = 20.0

_Records = tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]


class LoopbackResolver:
    """Answers every A query with 127.0.0.1, and every other with nothing."""

    def query(self, query: dns.Query, timeout: object = None) -> Deferred[_Records]:
        if query.type != dns.A:
            return succeed(([], [], []))
        record = dns.Record_A("127.0.0.1", ttl=0)
        return succeed(([dns.RRHeader(query.name.name, dns.A, dns.IN, 0, record)], [], []))


def listenDNS() -> tuple[IListeningPort, int]:
    """A L{LoopbackResolver} on a free UDP port of 127.0.0.1: the port, and its number."""
    from twisted.internet import reactor

    factory = DNSServerFactory(clients=[LoopbackResolver()])
    protocol = dns.DNSDatagramProtocol(factory)
    port = reactor.listenUDP(  # type: ignore[attr-defined]
        0, protocol, interface="127.0.0.1", maxPacketSize=8192
    )
    return port, port.getHost().port


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pebbleTLS(directory: Path) -> tuple[Path, Path, Path]:
    """
    A CA, and a certificate it signs for pebble's own HTTPS on 127.0.0.1:
    the CA file, the certificate's, its key's.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    caKey = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("pebble test CA"))
        .issuer_name(_name("pebble test CA"))
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(caKey.public_key()), False)
        .sign(caKey, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(caKey, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem(key))
    return paths


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Pebble:
    """
    A pebble, configured in a directory of its own, resolving names with
    the DNS server on C{dnsPort} of 127.0.0.1. It keeps its ports when it
    is restarted, but (as any pebble) forgets its accounts and makes a new
    root.

    @ivar directory: its ACME directory URL.
    @ivar caBundle: the PEM file that trusts its own HTTPS.
    @ivar httpPort: where it connects to validate HTTP-01 challenges.
    @ivar tlsPort: where it connects to validate TLS-ALPN-01 challenges.

    @param validity: the seconds its certificates are valid for, if not
        its default five years.
    """

    def __init__(self, directory: Path, dnsPort: int, validity: int | None = None) -> None:
        executable = shutil.which("pebble") or shutil.which("pebble", path="/usr/bin")
        if executable is None:
            raise RuntimeError(
                "pebble is not installed (apt-get install pebble): the ACME tests need it"
            )
        self.caBundle, certificate, key = _pebbleTLS(directory)
        self._listenPort, self._managementPort, self.httpPort, self.tlsPort = (
            freePort() for _ in range(4)
        )
        self.directory = f"https://127.0.0.1:{self._listenPort}/dir"
        settings = {
            "listenAddress": f"127.0.0.1:{self._listenPort}",
            "managementListenAddress": f"127.0.0.1:{self._managementPort}",
            "certificate": str(certificate),
            "privateKey": str(key),
            "httpPort": self.httpPort,
            "tlsPort": self.tlsPort,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity is not None:
            settings["certificateValidityPeriod"] = validity
        configuration = directory / "pebble-config.json"
        configuration.write_text(json.dumps({"pebble": settings}))
        self._command = [executable, "-config", str(configuration)]
        self._command += ["-dnsserver", f"127.0.0.1:{dnsPort}"]
        self._log = directory / "pebble.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """
        Start, and return once it listens.

        @raise RuntimeError: it did not start.
        """
        # No random sleeps before validating, no nonces refused at random,
        # no authorizations reused: quick and deterministic, each order's
        # challenges really validated.
        environment = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        }
        with self._log.open("ab") as output:
            self._process = subprocess.Popen(
                self._command, env=environment, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while not (_listening(self._listenPort) and _listening(self._managementPort)):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pebble did not start:\n{self._log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop, if it runs: its ports refuse connections from then on."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None

    def root(self) -> bytes:
        """The PEM root certificate the certificates it issues lead to."""
        context = ssl.create_default_context(cafile=str(self.caBundle))
        url = f"https://127.0.0.1:{self._managementPort}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            root: bytes = response.read()
            return root
