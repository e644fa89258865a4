"""
What the main process says once it listens: one line of what it serves, and
a warning for each thing in it that will not work as the operator probably
thinks (no --path, a missing front controller, a backend that does not
accept connections).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txfastcgi._server.configuration import Configuration
from txfastcgi._server.options import versionLine
from txfastcgi._server.sitefile import Site

__all__ = ["announceServing"]

_log = Logger(namespace="txfastcgi")


def announceServing(
    reactor: IReactorTime, configuration: Configuration, ports: Sequence[IListeningPort]
) -> None:
    """
    Log one line that says what this proxy serves, and one warning for each
    thing in it that will not work as the operator probably thinks; those
    about tcp backends follow once a connect to each has been tried, without
    holding up the start-up.
    """
    urls = ", ".join(_url(d, p.getHost()) for d, p in zip(configuration.server.listen, ports))
    for site in configuration.sites:
        backends = ", ".join(configuration.backendsOf(site))
        if configuration.path is None:
            _log.info(
                "{version} serving {root} on {urls} with PHP from {backends}",
                version=versionLine(),
                root=site.root,
                urls=urls,
                backends=backends,
            )
        else:
            _log.info(
                "{version} serving {hosts} from {root} on {urls} with PHP from {backends}",
                version=versionLine(),
                hosts=", ".join(site.hosts) or "every other host",
                root=site.root,
                urls=urls,
                backends=backends,
            )
        _warnOfSite(reactor, configuration, site)


def _warnOfSite(reactor: IReactorTime, configuration: Configuration, site: Site) -> None:
    """Warn of what in C{site} will not work as the operator probably thinks."""
    if configuration.documentRootDefaulted:
        _log.warn("serving the current directory {root}: no --path was given", root=site.root)
    frontController = site.front_controller
    if frontController is not None:
        script = frontController.partition("?")[0].lstrip("/")
        if not os.path.isfile(os.path.join(site.root, script)):
            _log.warn(
                "--front-controller {url}: there is no {script} in {root}",
                url=frontController,
                script=script,
                root=site.root,
            )
    for backend in configuration.backendsOf(site):
        if backend.partition(":")[0] == "tcp":
            _tcpBackendProblem(reactor, backend).addCallback(partial(_warnOfBackend, backend))
        else:
            _warnOfBackend(backend, _unixBackendProblem(backend))


def _warnOfBackend(backend: str, problem: str | None) -> None:
    if problem is not None:
        _log.warn("PHP backend {backend}: {problem}", backend=backend, problem=problem)


# Seconds a start-up connect to a tcp backend may take: a php-fpm on the
# network answers in milliseconds; this only bounds one that drops packets.
_PROBE_TIMEOUT = 2.0


if TYPE_CHECKING:
    _ProbeFactory = Factory[Protocol]
else:  # Twisted 25.5, the last with TLS on Python 3.9 (PyPy), cannot subscript its factories.
    _ProbeFactory = Factory


class _Probe(_ProbeFactory):
    """A connection that says nothing: whether a tcp backend accepts one."""

    noisy = False
    protocol = Protocol


def _tcpBackendProblem(reactor: IReactorTime, description: str) -> Deferred[str | None]:
    """
    Why tcp backend C{description} cannot be connected to, as the
    unix backends' problems say it, if it cannot; L{None} if it can.
    """
    endpoint = endpoints.clientFromString(reactor, description)
    connecting = endpoint.connect(_Probe())
    connecting.addTimeout(_PROBE_TIMEOUT, reactor)

    def connected(protocol: Protocol) -> None:
        assert protocol.transport is not None
        protocol.transport.loseConnection()

    def failed(reason: Failure) -> str:
        error = reason.value
        if isinstance(error, TimeoutError):
            problem = f"no answer within {_PROBE_TIMEOUT:g} s"
        elif isinstance(error, ConnectError) and isinstance(error.osError, int):
            problem = os.strerror(error.osError)
        else:
            problem = reason.getErrorMessage()
        return f"cannot connect: {problem} (is php-fpm running?)"

    probed: Deferred[str | None] = connecting.addCallbacks(connected, failed)
    return probed


def _unixBackendProblem(description: str) -> str | None:
    """
    Why the unix socket of backend C{description} cannot be connected to
    now, if it cannot; C{None} for a socket that accepts and for other kinds.
    """
    kind, _, rest = description.partition(":")
    if kind != "unix":
        return None
    path = rest.split(":")[0].removeprefix("path=")
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError as e:
            return f"cannot connect to {path}: {e.strerror} (is php-fpm running?)"
    return None


def _url(description: str, address: IAddress) -> str:
    """Where clients reach a listener of C{description} at C{address}."""
    if isinstance(address, UNIXAddress):
        return f"unix:{os.fsdecode(address.name or b'')}"
    assert isinstance(address, (IPv4Address, IPv6Address))
    wrapped = description.removeprefix("haproxy:")
    scheme = "https" if wrapped.partition(":")[0] in ("ssl", "tls") else "http"
    host = f"[{address.host}]" if isinstance(address, IPv6Address) else address.host
    proxied = " (PROXY protocol)" if wrapped != description else ""
    return f"{scheme}://{host}:{address.port}/{proxied}"
