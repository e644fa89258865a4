"""
What one request did: the record that the access log and the metrics read.

A front (the twisted.web site, or any other) makes one L{Served} for each
request it answered, once the last byte is written, and hands it to whoever
listens; the resource that ran the script notes its part, L{Upstream}, on
the request as it goes. Neither the access log nor the metrics then need to
know which front answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from txfastcgi._compat import SLOTS

__all__ = ["Served", "Upstream", "noteUpstream", "upstreamOf"]


@dataclass(frozen=True, **SLOTS)
class Upstream:
    """
    The FastCGI side of one request.

    @ivar backend: the endpoint description of the backend that ran the
        script; L{None} if no connection to any backend was had.
    @ivar seconds: from asking for a connection to the script's last byte,
        or to the error: the wait for a free connection is included, as it is
        time spent on PHP's side.
    @ivar retries: how many times the request was sent again on a new
        connection because a kept one was closed under it.
    """

    backend: str | None
    seconds: float
    retries: int = 0


@dataclass(frozen=True, **SLOTS)
class Served:
    """
    One answered request, as the client saw it.

    @ivar time: when its first byte arrived, in seconds since the epoch.
    @ivar client: the client's address, C{-} for a unix socket peer.
    @ivar target: the request target, as sent.
    @ivar sent: body bytes sent.
    @ivar seconds: from its first byte to its last byte answered.
    @ivar upstream: the script's part, L{None} for what no script answered
        (static files, errors found before PHP).
    """

    time: float
    client: str
    method: bytes
    target: bytes
    protocol: bytes
    status: int
    sent: int
    referrer: bytes | None
    userAgent: bytes | None
    host: bytes | None
    seconds: float
    upstream: Upstream | None


_UPSTREAM_ATTRIBUTE = "_txfastcgiUpstream"


def noteUpstream(request: object, upstream: Upstream) -> None:
    """
    Note on C{request} (any front's request object) what its script did,
    for its L{Served} record.
    """
    setattr(request, _UPSTREAM_ATTRIBUTE, upstream)


def upstreamOf(request: object) -> Upstream | None:
    """What L{noteUpstream} noted on C{request}, if anything."""
    upstream: Upstream | None = getattr(request, _UPSTREAM_ATTRIBUTE, None)
    return upstream
