"""
Certificates obtained and renewed by ACME (RFC 8555: Let's Encrypt and
the like) for the sites with C{acme = true}, proved by the HTTP-01
challenge (RFC 8555) where the server has a plain listener, or by
TLS-ALPN-01 (RFC 8737) where it has only TLS ones, kept in the C{[acme]
state} directory.

The C{acme} library's client blocks (C{requests}, and C{time.sleep}
while it polls), so every call to it runs in a thread; what the reactor
runs only schedules, stores and tells.

Usage::

    answers = challengeAnswers(plainListener=...)
    certificates = ACMECertificates(
        settings, [site.hosts for site in acmeSites], answers,
        issued=lambda hosts, certificate: sni.update(dict.fromkeys(hosts, certificate)),
    )
    certificates.setServiceParent(application)

The answers decide the challenge. L{HTTP01Answers}: the fronts answer
C{GET /.well-known/acme-challenge/TOKEN} with C{answers.forPath(path)}
where that is not C{None} (L{txfastcgi._http.sites.Sites} does).
L{TLSALPN01Answers}: each TLS listener's certificates are given to
C{answers.serveOn}, and serve the challenge certificates to the CA.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import ClassVar, Union, cast

from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ObjectIdentifier
from josepy.b64 import b64encode
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from txfastcgi._http.sites import ACME_CHALLENGE_PATH
from txfastcgi._server.sitefile import ACMESettings
from txfastcgi._server.sni import CertificatesByName, PEMCertificate, selfSignedCertificate
from txfastcgi._version import __version__

__all__ = [
    "ACMECertificates",
    "Answers",
    "HTTP01Answers",
    "TLSALPN01Answers",
    "challengeAnswers",
    "tlsALPN01Certificate",
]

RENEW_WHEN_LEFT = 1 / 3
"""
Renew once less than this share of a certificate's lifetime is left: 30
days of Let's Encrypt's 90, as certbot does, which leaves weeks of retries
before the certificate runs out.
"""

RETRY_DELAY = 3600.0
"""
Seconds before trying again after an order failed: Let's Encrypt allows 5
failed validations per name an hour.
"""

ORDER_TIMEOUT = datetime.timedelta(seconds=90)
"""How long the CA gets to validate the challenges and issue a certificate."""

Issued = Callable[[tuple[str, ...], PEMCertificate], object]


class HTTP01Answers:
    """
    The answers to the HTTP-01 challenges in progress: what the CA must
    read at C{http://HOST/.well-known/acme-challenge/TOKEN} (on port 80)
    to believe we serve C{HOST}.
    """

    challengeType: ClassVar[str] = "http-01"

    def __init__(self) -> None:
        self._byToken: dict[str, bytes] = {}

    def answer(self, token: str) -> bytes | None:
        """The key authorization for C{token}, if its challenge is in progress."""
        return self._byToken.get(token)

    def forPath(self, path: bytes) -> bytes | None:
        """
        The response body for a request for C{path} (without a query), if it
        is a challenge in progress; C{None} for any other path, which the
        front serves as usual.
        """
        if not path.startswith(ACME_CHALLENGE_PATH):
            return None
        return self.answer(path[len(ACME_CHALLENGE_PATH) :].decode("ascii", "replace"))

    def begin(self, name: str, token: str, keyAuthorization: str) -> None:
        """Answer the challenge of C{token}, for C{name}, until L{end}."""
        self._byToken[token] = keyAuthorization.encode("ascii")

    def end(self, name: str, token: str) -> None:
        self._byToken.pop(token, None)


ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
"""The acmeIdentifier certificate extension of TLS-ALPN-01 (RFC 8737, 3)."""


def tlsALPN01Certificate(name: str, keyAuthorization: str) -> PEMCertificate:
    """
    The certificate that answers a TLS-ALPN-01 challenge for C{name}
    (RFC 8737, 3): self-signed, naming C{name} alone, with the SHA-256 of
    the key authorization in a critical acmeIdentifier extension, whose
    value is that digest as a DER OCTET STRING.
    """
    digest = hashlib.sha256(keyAuthorization.encode("ascii")).digest()
    identifier = x509.UnrecognizedExtension(ACME_IDENTIFIER, bytes([0x04, len(digest)]) + digest)
    return selfSignedCertificate(name, extensions=[(identifier, True)])


class TLSALPN01Answers:
    """
    The answers to the TLS-ALPN-01 challenges in progress: the certificate
    the CA must receive when it asks a TLS listener for C{HOST} (on port
    443) with ALPN's C{acme-tls/1}, to believe we serve C{HOST}. Every
    listener given to L{serveOn} serves them.
    """

    challengeType: ClassVar[str] = "tls-alpn-01"

    def __init__(self) -> None:
        self._byName: dict[str, PEMCertificate] = {}
        self._listeners: list[CertificatesByName] = []

    def serveOn(self, certificates: CertificatesByName) -> None:
        """Serve the challenges in progress, and the ones to come, with C{certificates}."""
        self._listeners.append(certificates)
        for name, certificate in self._byName.items():
            certificates.addChallenge(name, certificate)

    def begin(self, name: str, token: str, keyAuthorization: str) -> None:
        """Answer the challenge for C{name} until L{end}."""
        certificate = tlsALPN01Certificate(name, keyAuthorization)
        self._byName[name] = certificate
        for listener in self._listeners:
            listener.addChallenge(name, certificate)

    def end(self, name: str, token: str) -> None:
        self._byName.pop(name, None)
        for listener in self._listeners:
            listener.removeChallenge(name)


Answers = Union[HTTP01Answers, TLSALPN01Answers]


def challengeAnswers(plainListener: bool) -> Answers:
    """
    Where to answer the challenges: over HTTP (HTTP-01) if the server has
    a C{plainListener}, as the CA will connect to port 80; else over TLS
    (TLS-ALPN-01), which port 443 answers alone.
    """
    return HTTP01Answers() if plainListener else TLSALPN01Answers()


class _Ready(challenges.KeyAuthorizationChallengeResponse):
    """
    What tells the CA that a challenge's answer is in place, whatever its
    type: an empty object (RFC 8555, 7.5.1), as the C{acme} library's own
    responses send (they drop their key authorization from the JSON). Not
    registered with the library, whose TLS-ALPN-01 classes are deprecated
    (4.x) or gone (5.x). The key authorization is kept nonetheless: the
    library posts a response with no fields as an empty body, which the CA
    takes for a mere read of the challenge (POST-as-GET).
    """

    typ = "ready"


def _writePrivately(path: Path, data: bytes) -> None:
    """
    Write C{path} whole or not at all (a crash leaves the old file), and
    readable by its owner only (0600) from its first byte.
    """
    temporary = path.with_name(path.name + ".new")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _privateDirectory(path: Path) -> Path:
    """C{path}, made if missing, and only its owner's (0700): it holds private keys."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _newKey() -> bytes:
    """A new P-256 private key, PEM: quick to make, and every CA takes it."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class _State:
    """
    The C{[acme] state} directory::

        account.key                   the ACME account's key
        certificates/HOST/fullchain.pem
        certificates/HOST/privkey.pem  (HOST: a site's first host)
    """

    def __init__(self, directory: str) -> None:
        self._directory = Path(directory)

    def accountKey(self) -> bytes:
        """The account's key, made (once, ever) if there is none yet."""
        path = _privateDirectory(self._directory) / "account.key"
        if not path.exists():
            _writePrivately(path, _newKey())
        return path.read_bytes()

    def _certificateDirectory(self, hosts: Sequence[str]) -> Path:
        return self._directory / "certificates" / hosts[0]

    def certificate(self, hosts: Sequence[str]) -> PEMCertificate | None:
        """
        The stored certificate for C{hosts}, or C{None} if there is none
        that names them all with its key: a site that gained a host, or
        files a crash left half-written, get a new one.
        """
        directory = self._certificateDirectory(hosts)
        try:
            stored = PEMCertificate(
                (directory / "fullchain.pem").read_bytes(), (directory / "privkey.pem").read_bytes()
            )
            leaf = x509.load_pem_x509_certificate(stored.chain)
            key = serialization.load_pem_private_key(stored.key, password=None)
        except (OSError, ValueError):
            return None
        encoding, publicFormat = (
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        if key.public_key().public_bytes(encoding, publicFormat) != leaf.public_key().public_bytes(
            encoding, publicFormat
        ):
            return None
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if not set(hosts) <= set(names.get_values_for_type(x509.DNSName)):
            return None
        return stored

    def store(self, hosts: Sequence[str], certificate: PEMCertificate) -> None:
        """
        Keep C{certificate}, its key first: a crash in between leaves a
        mismatch, which L{certificate} takes for no certificate, rather
        than a certificate whose key is lost.
        """
        directory = self._certificateDirectory(hosts)
        for each in (self._directory, directory.parent, directory):
            _privateDirectory(each)
        _writePrivately(directory / "privkey.pem", certificate.key)
        _writePrivately(directory / "fullchain.pem", certificate.chain)


def _renewalTime(certificate: PEMCertificate) -> float:
    """
    When to renew C{certificate}, in seconds since the epoch: once less
    than L{RENEW_WHEN_LEFT} of its lifetime is left.
    """
    leaf = x509.load_pem_x509_certificate(certificate.chain)
    notBefore = leaf.not_valid_before_utc.timestamp()
    notAfter = leaf.not_valid_after_utc.timestamp()
    return notAfter - (notAfter - notBefore) * RENEW_WHEN_LEFT


class _Account:
    """
    The ACME account, and its blocking client: every method runs in a
    thread, one at a time (L{ACMECertificates} holds a lock).
    """

    def __init__(self, settings: ACMESettings, state: _State) -> None:
        self._settings = settings
        self._state = state
        self._client: client.ClientV2 | None = None

    def _registered(self) -> client.ClientV2:
        """
        The client, signed in to the account of our key, which is created
        on the CA the first time (agreeing to its terms of service, as
        configuring C{[acme]} does).
        """
        if self._client is not None:
            return self._client
        key = serialization.load_pem_private_key(self._state.accountKey(), password=None)
        network = client.ClientNetwork(
            JWKEC(key=key),
            alg=ES256,
            # requests takes a CA bundle's path where a bool is annotated.
            verify_ssl=self._settings.ca_bundle or True,  # type: ignore[arg-type]
            user_agent=f"txfastcgi/{__version__}",
        )
        acme = client.ClientV2(
            client.ClientV2.get_directory(self._settings.directory, network), network
        )
        registration = messages.NewRegistration.from_data(
            email=self._settings.email, terms_of_service_agreed=True
        )
        try:
            acme.new_account(registration)
        except errors.ConflictError as existing:
            # The key has an account already (this CA kept it from a
            # previous run): use it.
            network.account = messages.RegistrationResource(
                uri=existing.location, body=messages.Registration()
            )
        self._client = acme
        return acme

    def signOut(self) -> None:
        """
        Sign in again next time: after a failure, the CA may have lost the
        account (a test CA restarted) or the connection may be broken.
        """
        self._client = None

    def order(self, hosts: Sequence[str]) -> tuple[messages.OrderResource, bytes]:
        """Order a certificate for C{hosts}, with a new key: the order, and the key."""
        key = _newKey()
        csr = crypto_util.make_csr(key, list(hosts))
        return self._registered().new_order(csr), key

    def challenges(
        self, order: messages.OrderResource, challengeType: str
    ) -> list[tuple[messages.ChallengeBody, str, str, str]]:
        """
        The challenges of C{challengeType} of C{order}'s pending
        authorizations, with each one's name, token and key authorization
        (an authorization already valid, that the CA reused, has none).

        The type and token are read from the challenge's JSON, the same
        whether the C{acme} library knows the type (HTTP-01; TLS-ALPN-01 in
        4.x) or decodes it as an C{UnrecognizedChallenge} (TLS-ALPN-01 in 5.x).
        """
        key = self._registered().net.key
        assert key is not None, "the client signs with the account's key"
        found = []
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue
            name = authorization.body.identifier.value
            for challenge in authorization.body.challenges:
                fields = challenge.chall.to_partial_json()
                if fields.get("type") == challengeType:
                    token = fields["token"]
                    found.append((challenge, name, token, _keyAuthorization(token, key)))
                    break
            else:
                raise errors.Error(f"{name}: the CA offers no {challengeType} challenge")
        return found

    def answer(self, challenge: messages.ChallengeBody, keyAuthorization: str) -> None:
        """Tell the CA that the answer to C{challenge} is in place."""
        self._registered().answer_challenge(challenge, _Ready(key_authorization=keyAuthorization))

    def finish(self, order: messages.OrderResource, key: bytes) -> PEMCertificate:
        """Wait for the CA to validate C{order}, then for its certificate."""
        deadline = datetime.datetime.now() + ORDER_TIMEOUT
        finished = self._registered().poll_and_finalize(order, deadline)
        return PEMCertificate(finished.fullchain_pem.encode("ascii"), key)


def _keyAuthorization(token: str, key: JWK) -> str:
    """What proves that the account of C{key} got C{token} (RFC 8555, 8.1)."""
    thumbprint = b64encode(key.thumbprint(hash_function=hashes.SHA256)).decode("ascii")
    return f"{token}.{thumbprint}"


class ACMECertificates(Service):
    """
    Keeps a certificate for each set of host names, issued by the CA of
    C{settings}: the stored one at start, a new one when there is none or
    it is due for renewal. If an order fails, the last good certificate
    stays in service, the failure is logged and counted, and the order is
    tried again after L{RETRY_DELAY}.

    @param settings: the C{[acme]} table.
    @param sites: each site's host names, one certificate each; its first
        name names its files in the state directory.
    @param answers: where the answers go while a challenge is in
        progress, which also says which challenge: L{HTTP01Answers} for
        the port 80 front to serve, L{TLSALPN01Answers} for the TLS
        listeners (see L{challengeAnswers}).
    @param issued: called with a site's host names and the certificate to
        serve for them: for each stored certificate when the service
        starts, and for each one issued since.
    @param clock: what schedules renewals and retries.

    @ivar failures: the orders that failed, for the metrics.
    """

    log = Logger()

    def __init__(
        self,
        settings: ACMESettings,
        sites: Iterable[Sequence[str]],
        answers: Answers,
        issued: Issued,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as globalReactor

            clock = cast(IReactorTime, globalReactor)
        self._clock = clock
        self._sites = [tuple(hosts) for hosts in sites]
        self._answers = answers
        self._issued = issued
        self._state = _State(settings.state)
        self._account = _Account(settings, self._state)
        self._oneOrderAtATime = DeferredLock()
        self._scheduled: dict[tuple[str, ...], IDelayedCall] = {}
        self.failures = 0

    def startService(self) -> None:
        """Serve the stored certificates and schedule their renewal; order the missing ones."""
        super().startService()
        for hosts in self._sites:
            stored = self._state.certificate(hosts)
            if stored is None:
                self.renew(hosts)
            else:
                self._issued(hosts, stored)
                self._schedule(hosts, _renewalTime(stored))

    def stopService(self) -> None:
        """Schedule nothing more; an order in progress still completes and is stored."""
        super().stopService()
        for call in self._scheduled.values():
            if call.active():
                call.cancel()
        self._scheduled.clear()

    def _schedule(self, hosts: tuple[str, ...], when: float) -> None:
        if not self.running:
            return
        delay = max(0.0, when - self._clock.seconds())
        self._scheduled[hosts] = self._clock.callLater(delay, self.renew, hosts)

    def renew(self, hosts: Sequence[str]) -> Deferred[None]:
        """
        Order a new certificate for C{hosts} now, and schedule the next
        renewal (or, if it failed, the retry). Fires when done, failed or
        not: a failure is logged, not raised.
        """
        return ensureDeferred(self._renew(tuple(hosts)))

    async def _renew(self, hosts: tuple[str, ...]) -> None:
        try:
            certificate = await self._oneOrderAtATime.run(
                lambda: ensureDeferred(self._obtain(hosts))
            )
        except Exception as error:
            self.failures += 1
            self.log.error(
                "ACME: no new certificate for {hosts} ({error}); the last one stays,"
                " retry in {retry} s",
                hosts=" ".join(hosts),
                error=f"{type(error).__name__}: {error}",
                retry=RETRY_DELAY,
                failures=self.failures,
            )
            self._schedule(hosts, self._clock.seconds() + RETRY_DELAY)
            return
        self.log.info(
            "ACME: new certificate for {hosts}, renewed from {renewal}",
            hosts=" ".join(hosts),
            renewal=datetime.datetime.fromtimestamp(
                _renewalTime(certificate), datetime.timezone.utc
            ).isoformat(),
        )
        self._schedule(hosts, _renewalTime(certificate))
        self._issued(hosts, certificate)

    async def _obtain(self, hosts: tuple[str, ...]) -> PEMCertificate:
        """Order, prove, and store a certificate for C{hosts}."""
        try:
            certificate = await self._prove(hosts)
        except Exception:
            self._account.signOut()
            raise
        await deferToThread(self._state.store, hosts, certificate)
        return certificate

    async def _prove(self, hosts: tuple[str, ...]) -> PEMCertificate:
        """Order a certificate for C{hosts}, and answer its challenges until it is issued."""
        order, key = await deferToThread(self._account.order, hosts)
        pending = await deferToThread(self._account.challenges, order, self._answers.challengeType)
        try:
            for challenge, name, token, keyAuthorization in pending:
                self._answers.begin(name, token, keyAuthorization)
                await deferToThread(self._account.answer, challenge, keyAuthorization)
            certificate: PEMCertificate = await deferToThread(self._account.finish, order, key)
        finally:
            for _, name, token, _ in pending:
                self._answers.end(name, token)
        return certificate
