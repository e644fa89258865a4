"""
What every listener of one process serves: the core over a balancer of the
backends, the dedicated HTTP/1.1 front, twisted.web's site for HTTP/2 over
TLS, the status and metrics pages, and the access log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from twisted.internet import endpoints
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from txfastcgi._client.balancer import Balancer
from txfastcgi._client.pool import ConnectionPool
from txfastcgi._emptied import Emptied
from txfastcgi._http.accesslog import AccessLog
from txfastcgi._http.alpn import ByALPN
from txfastcgi._http.http1 import HTTP1Factory, StaticFiles
from txfastcgi._http.resource import FastCGIResource
from txfastcgi._http.served import Served
from txfastcgi._http.status import (
    OperatorPage,
    PagesBeforeProxy,
    StatisticsSource,
    StatusResource,
    WithPages,
)
from txfastcgi._http.web import FastCGISite
from txfastcgi._server.configuration import Configuration
from txfastcgi._server.phpfpm import PHPFPMService

if TYPE_CHECKING:
    from txfastcgi._server.metrics import Metrics


__all__ = ["Front", "HTTP2Site"]


class Front:
    """
    What every listener of one process serves, over one core (one
    L{txfastcgi._http.core.Proxy}, over a balancer of the backends, with one
    backend too, which then notices a restart of php-fpm at once): the
    dedicated HTTP/1.1 front (L{txfastcgi._http.http1}) on every listener, and on
    TLS listeners twisted.web's site for the clients that negotiate HTTP/2
    (L{txfastcgi._http.alpn}); the status and metrics pages if asked for, and the
    access log.

    With C{--workers} and either page, the metrics are kept where every
    process reads them (the configuration's C{metricsDirectory}, which
    L{makeService} sets), and the status page shows them; otherwise the status page
    reads this process's balancer, and metrics, only with C{--metrics-path},
    cost nothing.

    @param phpFPM: the php-fpm this process spawned, if any, whose restarts
        are counted.
    """

    def __init__(
        self,
        configuration: Configuration,
        reactor: IReactorTime,
        phpFPM: PHPFPMService | None = None,
    ) -> None:
        pools = {
            backend: ConnectionPool(
                reactor,
                endpoints.clientFromString(reactor, backend),
                # The limit is for the backend, so the processes share it.
                maxConnections=max(1, limit // configuration.workers),
                connectTimeout=configuration.connectTimeout,
                readTimeout=configuration.readTimeout,
                idleTimeout=configuration.idleTimeout,
                queueTimeout=configuration.queueTimeout,
                name=backend,
            )
            for backend, limit in configuration.connectionLimits.items()
        }
        self.balancer = Balancer(reactor, pools)
        # Mapping's keys are invariant: a Mapping[str, str] is not one of bytes | str.
        params: dict[bytes | str, bytes | str] = {k: v for k, v in configuration.params.items()}
        resource = FastCGIResource(
            self.balancer,
            configuration.documentRoot,
            index=configuration.index,
            frontController=configuration.frontController,
            params=params,
            https=configuration.https,
            trustedProxies=configuration.trustedProxies,
            sendfileRoots=configuration.sendfileRoots,
            accelPrefixes=configuration.accelPrefixes,
            compress=configuration.compress,
            earlyHints=configuration.earlyHints,
            earlyHintLinks=configuration.earlyHintLinks,
            cacheSize=configuration.cacheSize,
            cacheStatus=configuration.cacheStatus,
            cacheBypassCookies=configuration.cacheBypassCookies,
            cachePurgers=configuration.statusAllow,
            reactor=reactor,
        )
        self.proxy = resource.proxy
        pages: dict[bytes, OperatorPage] = {}
        allowed = configuration.statusAllow
        status: StatisticsSource = self.balancer
        self.metrics: Metrics | None = None
        self.accessLog = AccessLog(configuration.accessLog, configuration.accessLogFormat, reactor)
        observers: list[Callable[[Served], object]] = [self.accessLog]
        directory = configuration.metricsDirectory
        if configuration.metricsPath is not None or directory is not None:
            from txfastcgi._server.metrics import Metrics, MetricsResource, shareAcrossProcesses

            if directory is not None:
                shareAcrossProcesses(directory)
            self.metrics = Metrics(self.balancer, reactor, phpFPM, directory, self.proxy.cache)
            if directory is not None:
                status = self.metrics
            if configuration.metricsPath is not None:
                pages[configuration.metricsPath.encode()] = MetricsResource(self.metrics, allowed)
                observers.append(self.metrics)
        if configuration.statusPath is not None:
            pages[configuration.statusPath.encode()] = StatusResource(status, allowed)
        self.http1 = HTTP1Factory(
            PagesBeforeProxy(self.proxy, pages) if pages else self.proxy,
            serveStaticFile=StaticFiles(),
            maxBodySize=configuration.maxBodySize,
            headerTimeout=configuration.headerTimeout,
            bodyTimeout=configuration.bodyTimeout,
            observers=observers,
            reactor=reactor,
        )
        self.site = HTTP2Site(
            WithPages(resource, pages) if pages else resource, configuration, observers, reactor
        )
        self._tls = ByALPN(self.http1, self.site)

    def factory(self, tls: bool) -> IProtocolFactory:
        """What serves a listener, a TLS one if C{tls}."""
        return self._tls if tls else self.http1

    def keepNoConnections(self) -> None:
        """
        Shutting down: close kept HTTP/1.1 connections idle now, and the
        others once their request is answered (with C{Connection: close}),
        as nginx does, while requests finish.
        """
        self.http1.keepNoConnections()

    def closeConnections(self) -> Deferred[None]:
        """
        Close every client connection once what was written to it is sent,
        and the idle FastCGI connections; then the access log.

        Before this, the reactor's own shutdown would drop them at once,
        with the end of the last responses still in their buffers.
        """
        self.balancer.close()
        closing = gatherResults([self.http1.closeConnections(), self.site.closeConnections()])
        return closing.addCallback(lambda _: self.accessLog.close())


class HTTP2Site(FastCGISite):
    """
    The twisted.web site of a process's HTTP/2 connections, over the same
    core as its HTTP/1.1 front, and the connections, as the lifecycle
    closes them.

    It is never started as a listener's factory (L{txfastcgi._http.alpn.ByALPN}
    only builds its protocols): the access log among its observers is the
    lifecycle's to open and close.
    """

    noisy = False

    def logPrefix(self) -> str:
        return "txfastcgi"

    def __init__(
        self,
        resource: IResource,
        configuration: Configuration,
        observers: Sequence[Callable[[Served], object]],
        reactor: IReactorTime,
    ) -> None:
        self._connections: set[TrackedConnection] = set()
        self._allClosed = Emptied()
        super().__init__(
            resource,
            maxBodySize=configuration.maxBodySize,
            headerTimeout=configuration.headerTimeout,
            bodyTimeout=configuration.bodyTimeout,
            observers=observers,
            reactor=reactor,
        )

    def buildProtocol(self, addr: IAddress | None) -> TrackedConnection:
        return TrackedConnection(super().buildProtocol(addr), self)

    def closeConnections(self) -> Deferred[None]:
        """
        Close every client connection once what was written to it is sent.

        @return: fires once they are all closed.
        """
        for connection in list(self._connections):
            connection.transport.loseConnection()
        return self._allClosed.wait(not self._connections)

    def _opened(self, connection: TrackedConnection) -> None:
        self._connections.add(connection)

    def _lost(self, connection: TrackedConnection) -> None:
        self._connections.discard(connection)
        if not self._connections:
            self._allClosed.fire()


class TrackedConnection(proxyForInterface(IProtocol, "_protocol")):  # type: ignore[misc]
    """A client connection that its site knows of while it is open."""

    transport: ITransport

    def __init__(self, protocol: IProtocol, site: HTTP2Site) -> None:
        super().__init__(protocol)
        self._site = site

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        self._site._opened(self)
        self._protocol.makeConnection(transport)

    def connectionLost(self, reason: Failure) -> None:
        try:
            self._protocol.connectionLost(reason)
        finally:
            self._site._lost(self)
