"""
Forwarding headers are believed only from trusted proxies, and only as far
back as the chain of trusted proxies goes.
"""

from __future__ import annotations

import pytest

from txfastcgi._http.forwarded import ForwardedClient, TrustedProxies

PROXIES = TrustedProxies(["10.0.0.0/8", "127.0.0.1", "::1"])


def client(
    peer: str,
    forwarded: list[bytes] | None = None,
    forwardedFor: list[bytes] | None = None,
    forwardedProto: list[bytes] | None = None,
) -> ForwardedClient:
    return PROXIES.client(peer, forwarded or [], forwardedFor or [], forwardedProto or [])


def test_an_untrusted_peer_cannot_spoof_its_address_or_scheme() -> None:
    assert client("203.0.113.9", forwardedFor=[b"1.2.3.4"], forwardedProto=[b"https"]) == (
        ForwardedClient("203.0.113.9", None)
    )


def test_a_trusted_proxy_gives_the_client_address_and_scheme() -> None:
    assert client("10.1.2.3", forwardedFor=[b"198.51.100.7"], forwardedProto=[b"https"]) == (
        ForwardedClient("198.51.100.7", True)
    )
    assert client("127.0.0.1", forwardedFor=[b"198.51.100.7"], forwardedProto=[b"http"]) == (
        ForwardedClient("198.51.100.7", False)
    )


def test_addresses_the_client_wrote_before_the_trusted_chain_are_ignored() -> None:
    # The client sent "X-Forwarded-For: 6.6.6.6"; the edge proxy appended
    # the real address, an inner trusted proxy appended the edge's.
    chain = [b"6.6.6.6, 198.51.100.7", b"10.0.0.5"]
    assert client("10.0.0.9", forwardedFor=chain).address == "198.51.100.7"


def test_a_chain_of_only_trusted_proxies_gives_its_first_address() -> None:
    assert client("10.0.0.9", forwardedFor=[b"10.0.0.1, 10.0.0.2"]).address == "10.0.0.1"


def test_garbage_in_the_chain_stops_the_walk() -> None:
    assert client("10.0.0.9", forwardedFor=[b"198.51.100.7, unknown"]).address == "10.0.0.9"


def test_the_forwarded_header_wins_and_may_carry_ports_and_ipv6() -> None:
    forwarded = [b'for="[2001:db8::7]:4711";proto=https, for=10.0.0.2:80;proto=http']
    assert client("::1", forwarded=forwarded, forwardedFor=[b"6.6.6.6"]) == ForwardedClient(
        "2001:db8::7", True
    )


def test_a_trusted_tls_terminator_may_send_only_the_scheme() -> None:
    assert client("127.0.0.1", forwardedProto=[b"https"]) == ForwardedClient("127.0.0.1", True)


def test_no_trusted_proxies_trusts_nobody() -> None:
    nobody = TrustedProxies([])
    assert not nobody
    assert nobody.client("127.0.0.1", [], [b"1.2.3.4"], []) == ForwardedClient("127.0.0.1", None)


@pytest.mark.parametrize("bad", ["not-an-address", "10.0.0.0/33", ""])
def test_a_bad_proxy_address_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        TrustedProxies([bad])
