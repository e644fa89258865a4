"""
How L{txfastcgi._http.sites} reads a Host header and picks a site, as
nginx's C{server_name} does: the cases the end-to-end tests in
L{tests.test_sites} do not reach.
"""

from __future__ import annotations

import pytest

from txfastcgi._http.core import ANSWERED, Answered, Exchange, RequestFacts, ResponseWriter
from txfastcgi._http.sites import HostedSite, HostTable, splitHost


class _Named:
    """A handler that is never called: the table only picks it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def handle(self, request: RequestFacts, writer: ResponseWriter) -> Exchange | Answered:
        return ANSWERED


@pytest.mark.parametrize(
    "host, expected",
    [
        (b"Example.ORG", (b"example.org", b"")),
        (b"example.org:8080", (b"example.org", b"8080")),
        (b"example.org.", (b"example.org", b"")),
        (b"example.org.:443", (b"example.org", b"443")),
        (b"[::1]:8080", (b"[::1]", b"8080")),
        (b"[::1]", (b"[::1]", b"")),
        (b"example.org:x", (b"example.org:x", b"")),
        (b"", (b"", b"")),
    ],
)
def test_a_host_header_gives_a_name_and_a_port(host: bytes, expected: tuple[bytes, bytes]) -> None:
    assert splitHost(host) == expected


def table(*hostLists: tuple[str, ...], refuseUnknown: bool = False) -> HostTable:
    return HostTable(
        [HostedSite(_Named(",".join(hosts) or "default"), hosts=hosts) for hosts in hostLists],
        refuseUnknown,
    )


def picked(hosts: HostTable, name: bytes) -> str | None:
    site = hosts.find(name)
    return None if site is None else site.handler.name  # type: ignore[attr-defined]


def test_an_exact_name_wins_over_a_wildcard_and_the_longest_wildcard_wins() -> None:
    hosts = table(("*.example.org",), ("*.shop.example.org",), ("www.shop.example.org",))
    assert picked(hosts, b"www.shop.example.org") == "www.shop.example.org"
    assert picked(hosts, b"eu.shop.example.org") == "*.shop.example.org"
    assert picked(hosts, b"blog.example.org") == "*.example.org"


def test_a_wildcard_does_not_cover_its_own_domain() -> None:
    hosts = table(("*.example.org",), refuseUnknown=True)
    assert picked(hosts, b"example.org") is None
    assert picked(hosts, b"badexample.org") is None


def test_the_site_without_hosts_is_the_default_wherever_it_is() -> None:
    assert picked(table(("a.org",), (), ("b.org",)), b"c.org") == "default"


def test_without_one_the_first_site_is_the_default_unless_unknown_hosts_are_refused() -> None:
    assert picked(table(("a.org",), ("b.org",)), b"c.org") == "a.org"
    assert picked(table(("a.org",), ("b.org",), refuseUnknown=True), b"c.org") is None
