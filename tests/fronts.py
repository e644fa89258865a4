"""
Either HTTP front of the proxy, built the same way, so that one HTTP-level
specification runs against both (issue 12, "one core, two fronts"):

  - C{"twisted.web"}: a L{FastCGISite} serving a L{FastCGIResource};
  - C{"http1"}: the dedicated L{HTTP1Factory} over the same kind of core,
    the resource's L{txfastcgi._http.core.Proxy}.

L{serve} builds either with the same limits and observers.  A test serves it
in one of three ways:

  - L{InMemoryFront}: on a L{MemoryReactorClock} of its own, clients on
    string transports, and a fake core (L{FakeCore}) that answers when the
    test says so: for parsing, limits and deadlines, which no script is
    needed to show;
  - L{onEveryFront}: a trial test case (usually a L{ProxyTestCase}), twice,
    each front on a loopback port of this process over a real core;
  - L{startFront}: in a child process (C{twistd} and a tac), in front of a
    real php-fpm, for blocking clients.

Both serve static files, each its own way: http1 by its L{StaticFiles}.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union, cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IReactorTime, ITCPTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import alsoProvides

from tests.processes import TWISTD, Proxy, freePort, startProxy, startServer, stopProxy
from tests.recordingbackend import (
    Answer,
    RecordingServer,
    exchange,
    parseAnswer,
    parseAnswers,
    request,
    waitUntil,
)
from txfastcgi import FastCGIResource
from txfastcgi._client.pool import ConnectionPool
from txfastcgi._http.accesslog import AccessLog
from txfastcgi._http.core import Handler, Phase, RequestFacts, ResponseWriter
from txfastcgi._http.framing import responseBodyFraming
from txfastcgi._http.http1 import DEFAULT_IDLE_TIMEOUT, HTTP1Factory, ServeStaticFile, StaticFiles
from txfastcgi._http.resource import CoreResource
from txfastcgi._http.served import Served
from txfastcgi._http.web import FastCGISite
from txfastcgi._limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
)

__all__ = [
    "COMMAND_FRONT",
    "FRONTS",
    "Client",
    "FakeCore",
    "FakeExchange",
    "InMemoryFront",
    "ProxyTestCase",
    "RunningFronts",
    "SiteOptions",
    "onEveryFront",
    "serve",
    "siteFronts",
    "startFront",
]

FRONTS = ("twisted.web", "http1")
"""Every HTTP/1.1 front, by the name its tests are known by."""

COMMAND_FRONT = "http1"
"""The front that C{twist fastcgi-proxy} serves: see L{startFront}."""

Front = Union[FastCGISite, HTTP1Factory]


def serve(
    front: str,
    resource: CoreResource,
    *,
    maxBodySize: int = DEFAULT_MAX_BODY_SIZE,
    maxHeaderSize: int = DEFAULT_MAX_HEADER_SIZE,
    headerTimeout: float = DEFAULT_HEADER_TIMEOUT,
    bodyTimeout: float = DEFAULT_BODY_TIMEOUT,
    idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
    observers: Sequence[Callable[[Served], object]] | None = None,
    serveStaticFile: ServeStaticFile | None = None,
    reactor: IReactorTime | None = None,
) -> Front:
    """
    The factory of C{front} serving C{resource} (or, for http1, its core),
    with these limits; observers default to an access log in the event log
    for both, as L{FastCGISite}'s do.  C{serveStaticFile} is http1's static
    file sender, by default its own L{StaticFiles} (twisted.web's front has
    its own).
    """
    shared: dict[str, Any] = {
        "maxBodySize": maxBodySize,
        "maxHeaderSize": maxHeaderSize,
        "headerTimeout": headerTimeout,
        "bodyTimeout": bodyTimeout,
        "observers": [AccessLog()] if observers is None else list(observers),
        "reactor": reactor,
    }
    if front == "twisted.web":
        return FastCGISite(resource, timeout=idleTimeout, **shared)
    assert front == "http1", front
    return HTTP1Factory(
        resource.core,
        serveStaticFile=StaticFiles() if serveStaticFile is None else serveStaticFile,
        idleTimeout=idleTimeout,
        **shared,
    )


# In memory


@dataclass
class FakeExchange:
    """
    One request the fake core was given, answered when the test says so.

    @ivar phase: where it is, as far as a front asks (twisted.web's does, to
        know whether to watch for the client going away).
    """

    request: RequestFacts
    writer: ResponseWriter
    body: bytes
    gone: bool = False
    phase: Phase = Phase.SENT

    def clientGone(self) -> None:
        self.gone = True

    def answer(
        self,
        body: bytes = b"ran",
        code: int = 200,
        headers: Sequence[tuple[bytes, bytes]] = (),
        contentLength: bool = True,
    ) -> None:
        """Answer as the core does, with the framing it would choose."""
        framing = responseBodyFraming(
            self.request.method, code, len(body) if contentLength else None, self.request.version
        )
        self.phase = Phase.DONE
        self.writer.writeHead(code, b"OK", headers, framing)
        if framing.hasBody:
            self.writer.writeBody(body)
        self.writer.finish()


@dataclass
class FakeCore:
    """
    A core that follows the core/front contract: it reads the whole body,
    and answers at once unless told to wait.
    """

    answerAtOnce: bool = True
    exchanges: list[FakeExchange] = field(default_factory=list)

    def handle(self, request: RequestFacts, writer: ResponseWriter) -> FakeExchange:
        request.body.seek(0)
        exchange = FakeExchange(request, writer, request.body.read())
        self.exchanges.append(exchange)
        if self.answerAtOnce:
            exchange.answer()
        return exchange

    def seen(self) -> list[tuple[bytes, bytes]]:
        """The target and body of each request handed over."""
        return [(exchange.request.target, exchange.body) for exchange in self.exchanges]


class TCPTransport(StringTransport):
    """A L{StringTransport} that, as TCP does, can half-close."""

    writeClosed = False
    noDelay = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


class Client:
    """One client connection to a front, over a L{TCPTransport}."""

    def __init__(self, factory: Front) -> None:
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = factory.buildProtocol(address)
        assert protocol is not None
        self.protocol: IProtocol = protocol
        self.transport = TCPTransport(
            peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.2", 8080)
        )
        alsoProvides(self.transport, ITCPTransport)
        protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        received: bytes = self.transport.value()
        return received

    def answers(self, methods: Sequence[bytes] = ()) -> list[Answer]:
        """The responses received so far."""
        return parseAnswers(self.received(), methods)

    def statuses(self) -> list[int]:
        return [answer.status for answer in self.answers()]

    def closed(self) -> bool:
        """Whether the server has closed (or begun to close) the connection."""
        return bool(self.transport.disconnecting or self.transport.disconnected)

    def reading(self) -> bool:
        return bool(self.transport.producerState == "producing")

    def close(self, reason: type[Exception] = ConnectionDone) -> None:
        self.protocol.connectionLost(Failure(reason()))


class InMemoryFront:
    """
    One front on a clock of its own, in front of a L{FakeCore}; the
    timeouts are nginx's (60 s) unless given.

    @ivar factory: the front itself.
    """

    def __init__(self, front: str, core: FakeCore | None = None, **limits: Any) -> None:
        self.clock = MemoryReactorClock()
        self.core = core if core is not None else FakeCore()
        # Both fronts hand their requests to it.
        resource = CoreResource(cast(Handler, self.core))
        limits.setdefault("headerTimeout", 60.0)
        limits.setdefault("bodyTimeout", 60.0)
        limits.setdefault("observers", [])
        self.factory = serve(front, resource, reactor=self.clock, **limits)

    def connect(self) -> Client:
        return Client(self.factory)


# On a loopback port, as trial test cases

_Case = TypeVar("_Case", bound=type)


def onEveryFront(case: _Case) -> _Case:
    """
    Run the trial test case C{case} once on each front: as C{Case[twisted.web]}
    and C{Case[http1]} in its module, each with its C{front} attribute set.
    C{case} itself is not collected.
    """
    module = sys.modules[case.__module__]
    for front in FRONTS:
        name = f"{case.__name__}[{front}]"
        namespace: dict[str, Any] = {
            "front": front,
            "__test__": True,
            "__module__": case.__module__,
            "__qualname__": name,
        }
        setattr(module, name, type(name, (case,), namespace))
    case.__test__ = False  # type: ignore[attr-defined]
    return case


class ProxyTestCase(TestCase):
    """
    A front (L{tests.fronts}) serving a L{FastCGIResource} for the attack
    site, in front of a L{RecordingServer}, all in this process and on real
    sockets.

    A fixture sets C{documentRoot} (see L{buildAttackSite}).  Subclasses
    tune the proxy with the class attributes; L{tests.fronts.onEveryFront}
    runs one on each front.
    """

    front = "twisted.web"
    documentRoot: str
    maxBodySize = 1024 * 1024
    maxHeaderSize = DEFAULT_MAX_HEADER_SIZE
    frontController: str | None = "/index.php"
    params: Mapping[bytes | str, bytes | str] = {}

    def setUp(self) -> None:
        self.backend = RecordingServer()
        self.backend.listen()
        self.addCleanup(lambda: ensureDeferred(self.backend.stop()))
        self.pool = ConnectionPool(reactor, self.backend.endpoint())
        self.addCleanup(self.pool.close)
        self.resource = FastCGIResource(
            self.pool, self.documentRoot, frontController=self.frontController, params=self.params
        )
        self.port = self.listen(self.resource)
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def listen(self, resource: FastCGIResource) -> int:
        """Serve C{resource} through the front on a new port of the loopback; its number."""
        factory = serve(
            self.front, resource, maxBodySize=self.maxBodySize, maxHeaderSize=self.maxHeaderSize
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        # Trial wants every connection closed at the end of the test, also
        # those the server is still closing.
        self.addCleanup(lambda: ensureDeferred(waitUntil(lambda: not len(factory.deadlines))))
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    def send(self, *writes: bytes, pause: float = 0.0, port: int | None = None) -> Deferred[bytes]:
        """Send raw bytes to the proxy; everything it answered, once it closed."""
        return exchange(self.port if port is None else port, *writes, pause=pause)

    async def fetch(self, target: bytes, **options: Any) -> Answer:
        """One request (see L{request} for C{options}), and its answer."""
        return parseAnswer(await self.send(request(target, **options)))

    def logged(self) -> str:
        return "\n".join(formatEvent(event) for event in self.events)


# In a child process

_TAC = """
from twisted.application import internet, service
from twisted.internet import endpoints, reactor
from txfastcgi import FastCGIResource
from tests.fronts import serve

phpFPM = endpoints.clientFromString(reactor, {endpoint!r})
resource = FastCGIResource(phpFPM, {root!r}, **{site!r})
factory = serve({front!r}, resource, **{limits!r})
listen = endpoints.serverFromString(reactor, "tcp:{port}:interface=127.0.0.1")
application = service.Application("txfastcgi on " + {front!r})
internet.StreamServerEndpointService(listen, factory).setServiceParent(application)
"""


@dataclass(frozen=True)
class SiteOptions:
    """
    How a site is served beyond its document root, said both ways: as the
    command's options, and as L{FastCGIResource}'s keyword arguments.
    """

    arguments: Sequence[str] = ()
    resource: Mapping[str, Any] = field(default_factory=dict)


def startFront(
    front: str,
    phpFPM: str,
    documentRoot: str,
    logPath: Path,
    site: SiteOptions = SiteOptions(),
    **limits: float,
) -> Proxy:
    """
    Serve C{documentRoot} through C{front} in front of the php-fpm at the
    endpoint C{phpFPM}, in a child process, on a free port of the loopback.

    The front the command serves, L{COMMAND_FRONT}, is run by the real
    C{twist fastcgi-proxy} with C{site.arguments} unless C{limits} (which
    it has no options for) are given; otherwise C{twistd} runs a tac built
    by L{serve}, with C{site.resource}.
    """
    if front == COMMAND_FRONT and not limits:
        return startProxy(["--php-fpm", phpFPM, "--path", documentRoot, *site.arguments], logPath)
    port = freePort()
    tacPath = logPath.with_suffix(".tac")
    tacPath.write_text(
        _TAC.format(
            endpoint=phpFPM,
            root=documentRoot,
            site=dict(site.resource),
            front=front,
            limits=limits,
            port=port,
        )
    )
    return startServer([*TWISTD, "-ny", str(tacPath)], port, logPath)


class RunningFronts:
    """
    Each front in a child process of its own (see L{startFront}), started
    when first asked for, all serving C{documentRoot} in front of the same
    php-fpm; for a module-scoped fixture, so that a module starts each
    front once.
    """

    def __init__(
        self, phpFPM: str, documentRoot: str, directory: Path, site: SiteOptions = SiteOptions()
    ) -> None:
        self._phpFPM = phpFPM
        self._documentRoot = documentRoot
        self._directory = directory
        self._site = site
        self._running: dict[str, Proxy] = {}

    def __getitem__(self, front: str) -> Proxy:
        running = self._running.get(front)
        if running is None:
            logPath = self._directory / f"{front}.log"
            running = startFront(front, self._phpFPM, self._documentRoot, logPath, self._site)
            self._running[front] = running
        return running

    def stop(self) -> None:
        for running in self._running.values():
            stopProxy(running)

    def __enter__(self) -> RunningFronts:
        return self

    def __exit__(self, *exception: object) -> None:
        self.stop()


def siteFronts(php_fpm: Any, directory: Path, site: SiteOptions = SiteOptions()) -> RunningFronts:
    """The test site through each front, in front of the C{php_fpm} fixture's pool."""
    return RunningFronts(php_fpm.endpointDescription, str(php_fpm.documentRoot), directory, site)
