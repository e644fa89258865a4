"""
Each site's own certificate, through the real command: chosen by SNI on
a TLS listener that names no certificate itself (or whose certificate is
for the other names), over HTTP/1.1 and HTTP/2, replaced by a reload; and
automatic HTTPS by ACME against Debian's pebble on loopback: issuance,
the issued chain served, what is kept on disk, a restart that serves the
kept certificate, and a CA that is down.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.certificates import selfSignedCertificate
from tests.pebble import Pebble, listenDNS
from tests.processes import REPOSITORY, Proxy, freePort, startServer, stopProxy
from tests.test_https import curl
from tests.test_sites import reload


def served(port: int, name: str, cadata: bytes | None = None) -> tuple[str, bytes]:
    """
    The common name of the certificate the listener on C{port} serves for
    C{name}, and the body of C{GET /hello.txt}; verified against
    C{cadata} if given.
    """
    if cadata is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cadata=cadata.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            tls.sendall(
                f"GET /hello.txt HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode()
            )
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
    subject = x509.load_der_x509_certificate(der).subject
    common = subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return str(common), response.partition(b"\r\n\r\n")[2]


def servedSerial(port: int, name: str, cadata: bytes) -> int:
    """The serial number of the verified certificate the listener on C{port} serves for C{name}."""
    context = ssl.create_default_context(cadata=cadata.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def siteRoot(directory: Path) -> Path:
    root = directory / "www"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    return root


def startSites(directory: Path, text: str, port: int) -> Proxy:
    (directory / "sites.toml").write_text(text)
    arguments = ["-m", "twisted", "fastcgi-proxy", "--config", str(directory / "sites.toml")]
    return startServer(arguments, port, directory / "twist.log")


def writeCertificate(directory: Path, name: str) -> tuple[Path, Path]:
    key, certificate = selfSignedCertificate(name)
    (directory / f"{name}.key").write_bytes(key)
    (directory / f"{name}.pem").write_bytes(certificate)
    return directory / f"{name}.pem", directory / f"{name}.key"


@pytest.fixture
def twoCertificates(tmp_path: Path) -> Iterator[Proxy]:
    """Two sites with certificates of their own on a TLS listener that has none."""
    root = siteRoot(tmp_path)
    port = freePort()
    sites = ""
    for name in ("alpha.test", "beta.test"):
        certificate, key = writeCertificate(tmp_path, name)
        sites += (
            f'\n[[site]]\nhosts = ["{name}", "*.{name}"]\nroot = "{root}"\n'
            f'php_fpm = "unix:/nonexistent.sock"\n'
            f'tls = {{ certificate = "{certificate}", key = "{key}" }}\n'
        )
    proxy = startSites(
        tmp_path, f'[server]\nlisten = "ssl:{port}:interface=127.0.0.1"\n' + sites, port
    )
    yield proxy
    stopProxy(proxy)


def test_each_site_gets_its_own_certificate_by_sni(twoCertificates: Proxy) -> None:
    port = twoCertificates.port
    assert served(port, "alpha.test") == ("alpha.test", b"hello\n")
    assert served(port, "beta.test") == ("beta.test", b"hello\n")
    assert served(port, "www.beta.test")[0] == "beta.test"
    # A name no site has a certificate for gets the placeholder.
    assert served(port, "other.test")[0] == "txfastcgi.invalid"


def test_http_2_is_negotiated_beside_the_sites_certificates(twoCertificates: Proxy) -> None:
    port = twoCertificates.port
    result = curl(
        "--http2",
        "--resolve",
        f"beta.test:{port}:127.0.0.1",
        "--write-out",
        " %{http_version}",
        f"https://beta.test:{port}/hello.txt",
    )
    assert result.stdout == b"hello\n 2"


def test_a_reload_serves_a_replaced_certificate(twoCertificates: Proxy, tmp_path: Path) -> None:
    port = twoCertificates.port
    key, certificate = selfSignedCertificate("alpha.renewed")
    (tmp_path / "alpha.test.key").write_bytes(key)
    (tmp_path / "alpha.test.pem").write_bytes(certificate)
    reload(twoCertificates, tmp_path, "reloaded")
    assert served(port, "alpha.test")[0] == "alpha.renewed"
    assert served(port, "beta.test")[0] == "beta.test"


def test_the_listeners_own_certificate_is_for_the_other_names(tmp_path: Path) -> None:
    root = siteRoot(tmp_path)
    port = freePort()
    ownCertificate, ownKey = writeCertificate(tmp_path, "listener.test")
    certificate, key = writeCertificate(tmp_path, "alpha.test")
    proxy = startSites(
        tmp_path,
        f'[server]\nlisten = "ssl:{port}:interface=127.0.0.1:privateKey={ownKey}'
        f':certKey={ownCertificate}"\n'
        f'[[site]]\nhosts = "alpha.test"\nroot = "{root}"\nphp_fpm = "unix:/nonexistent.sock"\n'
        f'tls = {{ certificate = "{certificate}", key = "{key}" }}\n',
        port,
    )
    try:
        assert served(port, "alpha.test")[0] == "alpha.test"
        assert served(port, "other.test") == ("listener.test", b"hello\n")
    finally:
        stopProxy(proxy)


# Automatic HTTPS, against pebble


class AutomaticHTTPSTests(TestCase):
    """
    Trial runs the reactor, which answers pebble's DNS queries (every name
    is 127.0.0.1) while the proxy, another process, orders certificates.
    """

    timeout = 120

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="txfastcgi-test-https-"))
        self.addCleanup(shutil.rmtree, self.directory)
        dns, self.dnsPort = listenDNS()
        self.addCleanup(dns.stopListening)
        self.pebble = Pebble(self.directory, self.dnsPort)
        self.root = siteRoot(self.directory)
        self.state = self.directory / "state"
        self.tlsPort = freePort()

    async def test_the_command_line_gets_its_sites_certificate_too(self) -> None:
        self.pebble.start()
        self.addCleanup(self.pebble.stop)
        arguments = [
            *("-m", "twisted", "fastcgi-proxy", "--path", str(self.root)),
            *("--listen", f"tcp:{self.pebble.httpPort}:interface=127.0.0.1"),
            *("--listen", f"ssl:{self.tlsPort}:interface=127.0.0.1"),
            *("--host", "a.test", "--acme", "--acme-email", "admin@a.test"),
            *("--acme-directory", self.pebble.directory, "--acme-state", str(self.state)),
            *("--acme-ca-bundle", str(self.pebble.caBundle)),
        ]
        proxy = startServer(arguments, self.tlsPort, self.directory / "twist.log")
        self.addCleanup(stopProxy, proxy)
        self.assertEqual(await self.issued(self.pebble.root(), "a.test"), ("a.test", b"hello\n"))

    def start(self, *server: str) -> Proxy:
        """
        The proxy of one site with acme = true, on pebble's HTTP-01 port and
        a TLS port, with C{server}'s lines in its C{[server]}.
        """
        listen = (
            f'listen = ["tcp:{self.pebble.httpPort}:interface=127.0.0.1",'
            f' "ssl:{self.tlsPort}:interface=127.0.0.1"]'
        )
        proxy = startSites(
            self.directory,
            "[server]\n"
            + "".join(f"{line}\n" for line in (listen, *server))
            + f'[[site]]\nhosts = ["a.test", "www.a.test"]\nroot = "{self.root}"\n'
            'php_fpm = "unix:/nonexistent.sock"\nacme = true\n'
            f'[acme]\nemail = "admin@a.test"\ndirectory = "{self.pebble.directory}"\n'
            f'state = "{self.state}"\nca_bundle = "{self.pebble.caBundle}"\n',
            self.tlsPort,
        )
        self.addCleanup(stopProxy, proxy)
        return proxy

    def issued(self, root: bytes, name: str) -> Deferred[tuple[str, bytes]]:
        """What C{name} is served once its certificate, from C{root}'s CA, is."""

        def wait() -> tuple[str, bytes]:
            deadline = time.monotonic() + 60
            while True:
                try:
                    return served(self.tlsPort, name, root)
                except ssl.SSLCertVerificationError:
                    log = (self.directory / "twist.log").read_text()
                    assert time.monotonic() < deadline, f"no certificate was issued: {log}"
                    time.sleep(0.2)

        return deferToThread(wait)

    async def test_a_site_gets_serves_and_keeps_its_certificate(self) -> None:
        self.pebble.start()
        self.addCleanup(self.pebble.stop)
        root = self.pebble.root()
        proxy = self.start()
        # Until it comes, the placeholder: HTTPS answers, unverified.
        self.assertEqual(await self.issued(root, "a.test"), ("a.test", b"hello\n"))
        self.assertEqual((await self.issued(root, "www.a.test"))[1], b"hello\n")
        stored = self.state / "certificates" / "a.test"
        for name in ("fullchain.pem", "privkey.pem"):
            self.assertEqual(stat.S_IMODE((stored / name).stat().st_mode), 0o600)
        # Started again with the CA down, it serves the kept certificate at once.
        stopProxy(proxy)
        self.pebble.stop()
        self.start()
        self.assertEqual(served(self.tlsPort, "a.test", root), ("a.test", b"hello\n"))

    async def test_with_only_a_tls_listener_the_ca_is_answered_over_tls(self) -> None:
        """No plain listener: TLS-ALPN-01, on the port the CA validates it on (443)."""
        self.pebble.start()
        self.addCleanup(self.pebble.stop)
        self.tlsPort = self.pebble.tlsPort
        proxy = startSites(
            self.directory,
            f'[server]\nlisten = "ssl:{self.tlsPort}:interface=127.0.0.1"\n'
            f'[[site]]\nhosts = ["a.test", "www.a.test"]\nroot = "{self.root}"\n'
            'php_fpm = "unix:/nonexistent.sock"\nacme = true\n'
            f'[acme]\nemail = "admin@a.test"\ndirectory = "{self.pebble.directory}"\n'
            f'state = "{self.state}"\nca_bundle = "{self.pebble.caBundle}"\n',
            self.tlsPort,
        )
        self.addCleanup(stopProxy, proxy)
        root = self.pebble.root()
        self.assertEqual(await self.issued(root, "www.a.test"), ("a.test", b"hello\n"))
        self.assertNotIn("/.well-known/acme-challenge/", (self.directory / "twist.log").read_text())

    async def test_a_certificate_is_renewed_before_it_runs_out(self) -> None:
        # Valid for 9 s: renewed once 3 s are left.
        self.pebble = Pebble(self.directory, self.dnsPort, validity=9)
        self.pebble.start()
        self.addCleanup(self.pebble.stop)
        root = self.pebble.root()
        self.start()
        await self.issued(root, "a.test")
        first = servedSerial(self.tlsPort, "a.test", root)

        def renewed() -> int:
            deadline = time.monotonic() + 30
            while (serial := servedSerial(self.tlsPort, "a.test", root)) == first:
                assert time.monotonic() < deadline, "the certificate was not renewed"
                time.sleep(0.2)
            return serial

        await deferToThread(renewed)
        log = (self.directory / "twist.log").read_text()
        self.assertEqual(log.count("ACME: new certificate for a.test www.a.test"), 2)

    async def test_with_the_ca_down_the_site_is_served_and_the_log_says_why(self) -> None:
        self.start('metrics_path = "/metrics"')
        self.assertEqual(served(self.tlsPort, "a.test"), ("txfastcgi.invalid", b"hello\n"))
        log = self.directory / "twist.log"

        def failed() -> None:
            deadline = time.monotonic() + 30
            while "ACME: no new certificate for a.test www.a.test" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)

        await deferToThread(failed)
        self.assertIn("the last one stays, retry in 3600", log.read_text())
        self.assertEqual(served(self.tlsPort, "a.test")[1], b"hello\n")
        metrics = f"http://127.0.0.1:{self.pebble.httpPort}/metrics"
        with urllib.request.urlopen(metrics, timeout=10) as response:
            self.assertIn(b"\ntxfastcgi_acme_failures_total 1.0\n", response.read())


@pytest.mark.parametrize(
    "arguments, line",
    [
        (
            ["--acme", "--host", "a.test"],
            "--acme needs --acme-email ADDRESS, for the CA to write to",
        ),
        (
            ["--acme", "--acme-email", "a@a.test"],
            "--acme needs --host NAME, the names to get a certificate for",
        ),
        (
            ["--acme", "--acme-email", "a@a.test", "--host", "*.a.test"],
            "--host '*.a.test': --acme cannot get a certificate for a wildcard"
            " (HTTP-01 challenges validate single names)",
        ),
        (
            ["--host", "a:80"],
            "--host 'a:80': not a host name (letters, digits, - and dots; no port)",
        ),
    ],
)
def test_the_command_line_refuses_what_acme_cannot_do_in_one_line(
    tmp_path: Path, arguments: list[str], line: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "fastcgi-proxy", "--path", str(tmp_path), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
    )
    assert (result.returncode, result.stderr.splitlines()) == (
        2,
        [f"twist fastcgi-proxy: error: {line}"],
    )
