"""
txfastcgi.testing, as a user would test their own embedding with it: a
resource in their own site, answered by the in-memory php-fpm, with no
process, no socket and no real time.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

from txfastcgi import FastCGIResource
from txfastcgi.testing import FakeBackendEndpoint, Reply, stall


def serve(root: Path, endpoint: FakeBackendEndpoint, clock: MemoryReactorClock) -> Site:
    """The user's own site, with the application mounted under /app."""
    tree = Resource()
    tree.putChild(b"app", FastCGIResource(endpoint, str(root), reactor=clock))
    return Site(tree, reactor=clock)


def ask(site: Site, path: bytes) -> StringTransport:
    """A client connection to C{site} that sent C{GET path}: its transport holds the answer."""
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
    assert protocol is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 50000))
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: example.org\r\n\r\n")
    return transport


def test_a_mounted_application_gets_its_params_and_its_answer_reaches_the_client(
    tmp_path: Path,
) -> None:
    (tmp_path / "index.php").write_text("<?php")
    clock = MemoryReactorClock()
    endpoint = FakeBackendEndpoint(
        clock, Reply(stdout=b"Status: 201 Created\r\nX-App: yes\r\n\r\nhello")
    )
    client = ask(serve(tmp_path, endpoint, clock), b"/app/index.php?a=1")
    endpoint.flush()
    answer = client.value()
    assert answer.startswith(b"HTTP/1.1 201 Created\r\n")
    assert b"X-App: yes" in answer and answer.endswith(b"Content-Length: 5\r\n\r\nhello")
    params = endpoint.backends[0].request.params
    assert params[b"SCRIPT_NAME"] == b"/app/index.php"
    assert params[b"REQUEST_URI"] == b"/app/index.php?a=1"


def test_a_backend_that_never_answers_gives_a_504_when_the_clock_says_so(tmp_path: Path) -> None:
    (tmp_path / "index.php").write_text("<?php")
    clock = MemoryReactorClock()
    endpoint = FakeBackendEndpoint(clock, stall)
    client = ask(serve(tmp_path, endpoint, clock), b"/app/index.php")
    endpoint.flush()
    assert client.value() == b""
    clock.advance(61)
    assert client.value().startswith(b"HTTP/1.1 504 ")
