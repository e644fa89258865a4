"""
Who the client really is, behind proxies we trust: ``Forwarded`` (RFC 7239)
or ``X-Forwarded-For`` / ``X-Forwarded-Proto``, believed only from listed
addresses, as nginx's realip module with ``real_ip_recursive on`` does.

Pure functions of addresses and header values; nothing here knows Twisted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Union

__all__ = ["ForwardedClient", "Networks", "TrustedProxies"]

_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class ForwardedClient:
    """
    The client as the trusted proxies say.

    @ivar address: its IP address (REMOTE_ADDR).
    @ivar https: whether it spoke HTTPS to the first trusted proxy, or
        L{None} when no trusted proxy said.
    """

    address: str
    https: bool | None


class Networks:
    """
    Addresses and networks, as an option lists them: the one place that
    matches an address against such a list (trusted proxies, who may read
    the status and metrics pages).

    @param networks: addresses or networks: C{10.0.0.0/8}, C{127.0.0.1},
        C{::1}.
    @raise ValueError: for something that is neither.
    """

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in networks
        )

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, address: str) -> bool:
        """Whether C{address}, an IP address as text, is in one of them."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)


class TrustedProxies:
    """
    The proxies whose forwarding headers are believed.

    @param networks: addresses or networks: C{10.0.0.0/8}, C{127.0.0.1},
        C{::1}.
    @raise ValueError: for something that is neither.
    """

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = Networks(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        """Whether C{address} is one of the trusted proxies."""
        return address in self._networks

    def client(
        self,
        peer: str,
        forwarded: Sequence[bytes],
        forwardedFor: Sequence[bytes],
        forwardedProto: Sequence[bytes],
    ) -> ForwardedClient:
        """
        The client of a request that came from C{peer} with these headers.

        The chain of addresses is walked from the nearest hop back, past
        trusted proxies, to the first address that is not one: anything
        further left was written by the client and may be forged. With no
        trusted peer, or no usable header, the client is the peer itself.
        ``Forwarded`` wins over the ``X-Forwarded-*`` headers when present.
        """
        if not self.trusts(peer):
            return ForwardedClient(peer, None)
        if forwarded:
            hops = _parseForwarded(forwarded)
            chain = [hop.get("for", "") for hop in hops]
            protocols = [hop.get("proto", "") for hop in hops]
        else:
            chain = _commaList(forwardedFor)
            protocols = _commaList(forwardedProto)
        client, clientHop = peer, None
        for hop in reversed(range(len(chain))):
            address = _bareAddress(chain[hop])
            if address is None:
                break
            client, clientHop = address, hop
            if not self.trusts(address):
                break
        # The protocol the client spoke is what its first hop recorded: the
        # entry beside its address, or the only entry there is.
        protocol = ""
        if clientHop is not None and len(protocols) == len(chain):
            protocol = protocols[clientHop]
        elif len(protocols) == 1:
            protocol = protocols[0]
        https = {"https": True, "http": False}.get(protocol.strip().lower())
        return ForwardedClient(client, https)


def _commaList(values: Sequence[bytes]) -> list[str]:
    return [
        item.strip()
        for value in values
        for item in value.decode("latin-1").split(",")
        if item.strip()
    ]


_FORWARDED_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')


def _parseForwarded(values: Sequence[bytes]) -> list[dict[str, str]]:
    """The hops of ``Forwarded`` headers, each a dict of lower-case keys."""
    hops = []
    for element in _commaList(values):
        hop = {}
        for pair in element.split(";"):
            match = _FORWARDED_PAIR.fullmatch(pair)
            if match is not None:
                hop[match.group(1).lower()] = match.group(2).strip('"')
        hops.append(hop)
    return hops


def _bareAddress(value: str) -> str | None:
    """
    The IP address in a hop: C{1.2.3.4}, C{1.2.3.4:80}, C{[2001:db8::1]:80},
    C{2001:db8::1}; L{None} for anything else (C{unknown}, an obfuscated
    identifier, garbage), which ends the walk.
    """
    value = value.strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
