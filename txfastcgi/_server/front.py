"""
What every listener of one process serves: each site's core over a balancer
of its backends, the dedicated HTTP/1.1 front, twisted.web's site for HTTP/2
over TLS, the status and metrics pages, and the access log; and, on a
reload, the sites of the site file read again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from OpenSSL import SSL
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from txfastcgi._client.balancer import BackendGroup, Balancer
from txfastcgi._client.pool import ConnectionPool
from txfastcgi._emptied import Emptied
from txfastcgi._http.accesslog import AccessLog
from txfastcgi._http.alpn import ByALPN
from txfastcgi._http.cache import ResponseCache
from txfastcgi._http.core import Handler
from txfastcgi._http.http1 import HTTP1Factory, StaticFiles
from txfastcgi._http.resource import CoreResource, FastCGIResource
from txfastcgi._http.served import Served
from txfastcgi._http.sites import Challenges, HostedSite, Sites
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
from txfastcgi._server.sitefile import Site
from txfastcgi._server.sni import CertificatesByName, PEMCertificate

if TYPE_CHECKING:
    from txfastcgi._server.metrics import ACMEFailures, Metrics


__all__ = ["Front", "HTTP2Site"]

# What a pool is made with: its backend, most connections, and timeouts.
_PoolSettings = tuple[str, int, float, float, float, float]


class TLSChallenges(Protocol):
    """The ACME TLS-ALPN-01 challenges (L{txfastcgi._server.acme.TLSALPN01Answers})."""

    def serveOn(self, certificates: CertificatesByName) -> None:
        """Serve the challenges with the certificates of a TLS listener."""


class Front:
    """
    What every listener of one process serves: the dedicated HTTP/1.1 front
    (L{txfastcgi._http.http1}) on every listener, and on TLS listeners
    twisted.web's site for the clients that negotiate HTTP/2
    (L{txfastcgi._http.alpn}), both over the same cores: one
    L{txfastcgi._http.core.Proxy} for each site, over a balancer of its
    backends (with one backend too, which then notices a restart of
    php-fpm at once); the status and metrics pages if asked for, and the
    access log.

    The command line's one site is answered by its core directly; the sites
    of a site file through L{Sites}, which picks the site a request's Host
    names, and which L{reload} hands the sites of the file read again.
    Sites that name the same backend share its pool; sites that name the
    same backends, its balancer.

    With C{--workers} and either page, the metrics are kept where every
    process reads them (the configuration's C{metricsDirectory}, which
    L{makeService} sets), and the status page shows them; otherwise the status page
    reads this process's balancers, and metrics, only with C{--metrics-path},
    cost nothing.

    Sites with certificates of their own (C{tls} files, or C{acme}) have
    them served on the TLS listeners by SNI (L{tlsFactory}); ACME's
    challenges are answered for every site, HTTP-01 by L{Sites} and
    TLS-ALPN-01 by the TLS listeners.

    @param phpFPMs: the php-fpms this process spawned, whose restarts are
        counted.
    @param httpChallenges: the ACME HTTP-01 challenges in progress, if
        sites get their certificates that way.
    @param tlsChallenges: the TLS-ALPN-01 ones, if that way.
    @param acme: what gets them, whose failures the metrics count.
    """

    log = Logger()

    def __init__(
        self,
        configuration: Configuration,
        reactor: IReactorTime,
        phpFPMs: Sequence[PHPFPMService] = (),
        httpChallenges: Challenges | None = None,
        tlsChallenges: TLSChallenges | None = None,
        acme: ACMEFailures | None = None,
    ) -> None:
        self._reactor = reactor
        self._tlsChallenges = tlsChallenges
        self.configuration = configuration
        self._pools: dict[_PoolSettings, ConnectionPool] = {}
        self._balancers: dict[tuple[ConnectionPool, ...], Balancer] = {}
        # Each site's core and the balancer it was made over; a list, since
        # a Site holds dictionaries and is not hashable.
        self._cores: list[tuple[Site, Balancer, FastCGIResource]] = []
        # The cores that a reload retired, until their last requests end.
        self._retiring: set[FastCGIResource] = set()
        self.backends = BackendGroup([])
        self.caches: list[ResponseCache] = []
        # Each TLS listener's certificates, with its default certificate.
        self._certificates: list[tuple[CertificatesByName, PEMCertificate]] = []
        # The certificates ACME issued, by the hosts of their site.
        self._issued: dict[tuple[str, ...], PEMCertificate] = {}
        hosted = self._serve(configuration)
        server = configuration.server
        self.sites: Sites | None = None
        handler: Handler
        if not _routed(configuration) and httpChallenges is None:
            ((_, _, core),) = self._cores
            handler = core.proxy
            resource: IResource = core
        else:
            self.sites = Sites(
                hosted, refuseUnknown=server.unknown_host == "refuse", challenges=httpChallenges
            )
            handler = self.sites
            resource = CoreResource(self.sites)
        pages: dict[bytes, OperatorPage] = {}
        allowed = server.status_allow
        status: StatisticsSource = self.backends
        self.metrics: Metrics | None = None
        self.accessLog = AccessLog(server.access_log, server.access_log_format, reactor)
        observers: list[Callable[[Served], object]] = [self.accessLog]
        directory = configuration.metricsDirectory
        if server.metrics_path is not None or directory is not None:
            from txfastcgi._server.metrics import Metrics, MetricsResource, shareAcrossProcesses

            if directory is not None:
                shareAcrossProcesses(directory)
            self.metrics = Metrics(self.backends, reactor, phpFPMs, directory, self.caches, acme)
            if directory is not None:
                status = self.metrics
            if server.metrics_path is not None:
                pages[server.metrics_path.encode()] = MetricsResource(self.metrics, allowed)
                observers.append(self.metrics)
        if server.status_path is not None:
            pages[server.status_path.encode()] = StatusResource(status, allowed)
        maxBodySize = max(site.max_body_size for site in configuration.sites)
        self.http1 = HTTP1Factory(
            PagesBeforeProxy(handler, pages) if pages else handler,
            serveStaticFile=StaticFiles(),
            maxBodySize=maxBodySize,
            headerTimeout=server.header_timeout,
            bodyTimeout=server.body_timeout,
            observers=observers,
            reactor=reactor,
        )
        self.site = HTTP2Site(
            WithPages(resource, pages) if pages else resource,
            maxBodySize,
            configuration,
            observers,
            reactor,
        )
        self._tls = ByALPN(self.http1, self.site)

    def _serve(self, configuration: Configuration) -> list[HostedSite]:
        """
        The cores of C{configuration}'s sites, and how L{Sites} routes to
        them: those of sites that have not changed are kept (with their
        cache and learned hints), and so are the pools and balancers that
        are still named; the others are retired once their requests end.
        """
        settings = _poolSettings(configuration)
        pools = {each: self._pool(each) for each in settings.values()}
        balancers: dict[tuple[ConnectionPool, ...], Balancer] = {}
        cores: list[tuple[Site, Balancer, FastCGIResource]] = []
        for site in configuration.sites:
            sitePools = tuple(pools[settings[b]] for b in configuration.backendsOf(site))
            balancer = balancers.get(sitePools) or self._balancers.get(sitePools)
            if balancer is None:
                balancer = Balancer(self._reactor, {pool.name: pool for pool in sitePools})
            balancers[sitePools] = balancer
            kept = [core for s, b, core in self._cores if (s, b) == (site, balancer)]
            core = kept[0] if kept else self._core(configuration, site, balancer)
            cores.append((site, balancer, core))
        current = {id(core) for _, _, core in cores}
        retired = [core for _, _, core in self._cores if id(core) not in current]
        retiredPools = [pool for each, pool in self._pools.items() if each not in pools]
        self._pools, self._balancers, self._cores = pools, balancers, cores
        self.backends.balancers = list(balancers.values())
        self.caches[:] = [c.proxy.cache for _, _, c in cores if c.proxy.cache is not None]
        self._retire(retired, retiredPools)
        largest = max(site.max_body_size for site in configuration.sites)
        return [
            HostedSite(
                core.proxy,
                hosts=site.hosts,
                redirect=site.redirect,
                httpsRedirect=site.https_redirect,
                hsts=site.hsts,
                maxBodySize=site.max_body_size if site.max_body_size < largest else None,
            )
            for site, _, core in cores
        ]

    def _pool(self, settings: _PoolSettings) -> ConnectionPool:
        """The pool these settings describe: the one there is, or a new one."""
        pool = self._pools.get(settings)
        if pool is not None:
            return pool
        backend, limit, connectTimeout, readTimeout, idleTimeout, queueTimeout = settings
        return ConnectionPool(
            self._reactor,
            endpoints.clientFromString(self._reactor, backend),
            # The limit is for the backend, so the processes share it.
            maxConnections=max(1, limit // self.configuration.server.workers),
            connectTimeout=connectTimeout,
            readTimeout=readTimeout,
            idleTimeout=idleTimeout,
            queueTimeout=queueTimeout,
            name=backend,
        )

    def _core(
        self, configuration: Configuration, site: Site, balancer: Balancer
    ) -> FastCGIResource:
        """A new core for C{site}."""
        server = configuration.server
        # Mapping's keys are invariant: a Mapping[str, str] is not one of bytes | str.
        params: dict[bytes | str, bytes | str] = {k: v for k, v in site.params.items()}
        return FastCGIResource(
            balancer,
            site.root,
            index=site.index,
            frontController=site.front_controller,
            params=params,
            https=site.https,
            trustedProxies=server.trusted_proxies,
            sendfileRoots=site.sendfile_roots,
            accelPrefixes=site.accel_prefixes,
            compress=site.compress,
            earlyHints=site.early_hints,
            earlyHintLinks=site.early_hint_links,
            cacheSize=site.cache_size,
            cacheStatus=site.cache_status,
            cacheBypassCookies=site.cache_bypass_cookies,
            cachePurgers=server.status_allow,
            reactor=self._reactor,
        )

    def _retire(self, cores: Sequence[FastCGIResource], pools: Sequence[ConnectionPool]) -> None:
        """Close C{pools} once C{cores}, which a reload replaced, have no request left."""
        if not cores and not pools:
            return
        self._retiring.update(cores)

        def closePools(_: object) -> None:
            self._retiring.difference_update(cores)
            for pool in pools:
                pool.close()

        gatherResults([core.whenIdle() for core in cores]).addCallback(closePools)

    def reload(self, configuration: Configuration) -> None:
        """
        Serve C{configuration}'s sites from the next request on; requests
        in progress finish on the sites they began on. The server settings
        (listeners, workers, logs, pages) stay those the process started
        with: a change to them is logged, and waits for a restart.
        """
        assert self.sites is not None, "only a site file's sites are reloaded"
        server = self.configuration.server
        changed = [
            key
            for key in server.__dataclass_fields__
            if getattr(server, key) != getattr(configuration.server, key)
        ]
        if changed:
            self.log.warn(
                "reload: the [server] settings {keys} change only with a restart",
                keys=", ".join(changed),
            )
        configuration = configuration.reloaded(
            dataclasses.replace(configuration.siteFile, server=server)
        )
        if _acmeHosts(configuration) != _acmeHosts(self.configuration):
            self.log.warn(
                "reload: the sites with acme = true and [acme] change only with a restart"
            )
        try:
            byName = self._siteCertificates(configuration)
            for certificates, default in self._certificates:
                certificates.replace(default, byName)
        except (OSError, ValueError, SSL.Error) as e:
            self.log.error(
                "reload: a site's certificate cannot be served ({error}); the sites stay as"
                " they were",
                error=str(e),
            )
            return
        self.configuration = configuration
        self.sites.replace(self._serve(configuration))

    def whenIdle(self) -> Deferred[None]:
        """Fires once no script request is in progress on any site, retired ones too."""
        cores = [*(core for _, _, core in self._cores), *self._retiring]
        return gatherResults([core.whenIdle() for core in cores]).addCallback(lambda _: None)

    def factory(self, tls: bool) -> IProtocolFactory:
        """What serves a listener, a TLS one if C{tls}."""
        return self._tls if tls else self.http1

    def tlsFactory(self, default: PEMCertificate) -> IProtocolFactory:
        """
        What serves a plain listener as a TLS one with each site's own
        certificate, chosen by SNI, and C{default} for the other names.
        """
        certificates = CertificatesByName(
            default,
            self._siteCertificates(self.configuration),
            acceptableProtocols=self._tls.acceptableProtocols(),
        )
        self._certificates.append((certificates, default))
        if self._tlsChallenges is not None:
            self._tlsChallenges.serveOn(certificates)
        return TLSMemoryBIOFactory(certificates, False, self._tls)

    def certificateIssued(self, hosts: tuple[str, ...], certificate: PEMCertificate) -> None:
        """Serve C{certificate}, which ACME issued, for C{hosts} from the next handshake on."""
        self._issued[hosts] = certificate
        for certificates, _ in self._certificates:
            certificates.update(dict.fromkeys(hosts, certificate))

    def _siteCertificates(self, configuration: Configuration) -> dict[str, PEMCertificate]:
        """Each host's certificate: its site's files, or what ACME issued for it."""
        byName: dict[str, PEMCertificate] = {}
        for site in configuration.sites:
            if site.tls is not None:
                byName.update(dict.fromkeys(site.hosts, PEMCertificate.fromFiles(site.tls)))
        for hosts, certificate in self._issued.items():
            byName.update(dict.fromkeys(hosts, certificate))
        return byName

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
        self.backends.close()
        closing = gatherResults([self.http1.closeConnections(), self.site.closeConnections()])
        return closing.addCallback(lambda _: self.accessLog.close())


def _routed(configuration: Configuration) -> bool:
    """
    Whether requests go through L{Sites}: for several sites, sites by name,
    a site with redirects or HSTS, or a site file, which a reload may
    change; the command line's one site is answered by its core directly.
    """
    if configuration.path is not None or len(configuration.sites) > 1:
        return True
    (site,) = configuration.sites
    return bool(site.hosts) or site.https_redirect or site.hsts is not None


def _acmeHosts(configuration: Configuration) -> tuple[object, ...]:
    """What the ACME service started with: the hosts of each site with C{acme}, and C{[acme]}."""
    return (configuration.siteFile.acme, *(site.hosts for site in configuration.sites if site.acme))


def _poolSettings(configuration: Configuration) -> dict[str, _PoolSettings]:
    """
    The settings of each backend's one pool: those of the first site that
    names it, whose timeouts the sites after it that name it share.
    """
    limits = configuration.connectionLimits
    first: dict[str, _PoolSettings] = {}
    for site in configuration.sites:
        for backend in configuration.backendsOf(site):
            first.setdefault(
                backend,
                (
                    backend,
                    limits[backend],
                    site.connect_timeout,
                    site.read_timeout,
                    site.idle_timeout,
                    site.queue_timeout,
                ),
            )
    return first


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
        maxBodySize: int,
        configuration: Configuration,
        observers: Sequence[Callable[[Served], object]],
        reactor: IReactorTime,
    ) -> None:
        self._connections: set[TrackedConnection] = set()
        self._allClosed = Emptied()
        super().__init__(
            resource,
            maxBodySize=maxBodySize,
            headerTimeout=configuration.server.header_timeout,
            bodyTimeout=configuration.server.body_timeout,
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
