"""
Several sites behind the same listeners, as nginx's server blocks and
Caddy's site blocks are: the site whose host names match a request's Host
answers it (L{Sites}), for either front, since both hand the core a
L{RequestFacts} and a L{ResponseWriter}.

Names match as nginx's C{server_name} does: exactly, case aside, with no
port and no final dot; else C{*.example.org} matches any name that ends in
C{.example.org} (not C{example.org} itself), the longest such pattern
first; else the default site answers (the one with no hosts, or else the
first, as nginx's first server is), or, if unknown hosts are refused,
nobody does and the client gets C{421 Misdirected Request}, as from Caddy.

Before its core, a site may answer with a redirect: to the C{www.} form of
the host or to the form without it, and from plain HTTP to HTTPS (not
C{/.well-known/acme-challenge/}, which an ACME CA asks for over plain
HTTP), in one hop, with 301 for GET and HEAD and 308 for the rest, whose
method and body a 301 would let a client drop. Over HTTPS it may add
C{Strict-Transport-Security} to every response.

The answers to ACME's HTTP-01 challenges in progress come first, for any
host: the CA asks for the name it is proving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from txfastcgi._http.core import (
    ANSWERED,
    HTML_CONTENT_TYPE,
    Answered,
    Exchange,
    Handler,
    RequestFacts,
    ResponseWriter,
    answerPage,
    errorPage,
    reasonPhrase,
)
from txfastcgi._http.framing import BodyFraming
from txfastcgi._http.writers import ForwardingWriter

__all__ = [
    "ACME_CHALLENGE_PATH",
    "Challenges",
    "HostTable",
    "HostedSite",
    "Sites",
    "WithHeader",
    "splitHost",
]

ACME_CHALLENGE_PATH = b"/.well-known/acme-challenge/"
"""Where ACME's HTTP-01 looks for its token's answer (RFC 8555, section 8.3)."""
_KEEPS_METHOD = (b"GET", b"HEAD")


class Challenges(Protocol):
    """The ACME HTTP-01 challenges in progress (L{txfastcgi._server.acme.HTTP01Answers})."""

    def forPath(self, path: bytes) -> bytes | None:
        """The body to answer a request for C{path} with, if it is a challenge's."""


@dataclass(frozen=True)
class HostedSite:
    """
    One site, as L{Sites} routes to it.

    @ivar handler: what answers its requests.
    @ivar hosts: the names it answers for, exact or C{*.}-wildcards, in
        lower case; none makes it the default site.
    @ivar redirect: C{"www"} or C{"non-www"}: send a request for the other
        form of a name to this one, if this site serves that name.
    @ivar httpsRedirect: send plain HTTP requests to HTTPS, on its
        default port.
    @ivar hsts: the C{max-age} of the C{Strict-Transport-Security} header
        on HTTPS responses, or L{None} for none.
    @ivar maxBodySize: the largest request body this site takes, if smaller
        than what the front reads for any site.
    """

    handler: Handler
    hosts: Sequence[str] = ()
    redirect: str | None = None
    httpsRedirect: bool = False
    hsts: float | None = None
    maxBodySize: int | None = None


def splitHost(host: bytes) -> tuple[bytes, bytes]:
    """
    The name a Host header gives, as site names are written (lower case,
    without a final dot; an IPv6 address keeps its brackets), and its port,
    C{b""} if it gives none.
    """
    host = host.strip().lower()
    if host.startswith(b"["):
        address, _, rest = host.partition(b"]")
        port = rest[1:] if rest.startswith(b":") else b""
        return address + b"]", port if port.isdigit() else b""
    name, colon, port = host.rpartition(b":")
    if colon and port.isdigit():
        return name.rstrip(b"."), port
    return host.rstrip(b"."), b""


class HostTable:
    """
    Which of several sites names a host; see the module docstring for the order.

    @param refuseUnknown: no site answers for a host none names.
    """

    def __init__(self, sites: Sequence[HostedSite], refuseUnknown: bool = False) -> None:
        self._exact: dict[bytes, HostedSite] = {}
        wildcards: list[tuple[bytes, HostedSite]] = []
        self.default = None if refuseUnknown or not sites else sites[0]
        for site in sites:
            if not site.hosts:
                self.default = site
            for host in site.hosts:
                name = host.encode("ascii")
                if name.startswith(b"*."):
                    wildcards.append((name[1:], site))
                else:
                    self._exact[name] = site
        self._wildcards = sorted(wildcards, key=lambda wildcard: -len(wildcard[0]))

    def find(self, name: bytes) -> HostedSite | None:
        """The site for C{name} (see L{splitHost}), or L{None} if none serves it."""
        site = self._exact.get(name)
        if site is not None:
            return site
        for suffix, site in self._wildcards:
            if name.endswith(suffix) and len(name) > len(suffix):
                return site
        return self.default


class Sites:
    """
    The core of several sites, for either front: each request to the site
    its Host names (see the module docstring).

    @param sites: the sites; at most one without hosts.
    @param refuseUnknown: answer a request for a host no site names with
        421, rather than from the default site.
    @param challenges: the ACME challenges to answer, if any.
    """

    def __init__(
        self,
        sites: Sequence[HostedSite],
        refuseUnknown: bool = False,
        challenges: Challenges | None = None,
    ) -> None:
        self._refuseUnknown = refuseUnknown
        self._challenges = challenges
        self.table = HostTable(sites, refuseUnknown)

    def replace(self, sites: Sequence[HostedSite]) -> None:
        """
        Serve C{sites} from the next request on, as a reload does: requests
        in progress go on with the sites they were given to.
        """
        self.table = HostTable(sites, self._refuseUnknown)

    def handle(self, request: RequestFacts, writer: ResponseWriter) -> Exchange | Answered:
        challenges = self._challenges
        if challenges is not None and request.target.startswith(ACME_CHALLENGE_PATH):
            answer = challenges.forPath(request.target.partition(b"?")[0])
            if answer is not None:
                headers = [(b"content-type", b"application/octet-stream")]
                answerPage(request, writer, 200, reasonPhrase(200), headers, answer)
                return ANSWERED
        host = b""
        for name, value in request.headers:
            if name.lower() == b"host":
                host = value
                break
        name, port = splitHost(host)
        table = self.table
        site = table.find(name)
        if site is None:
            return _answerError(request, writer, 421, "This server has no site of that name.")
        if site.redirect is not None or site.httpsRedirect:
            location = _redirectLocation(site, table, name, port, request)
            if location is not None:
                return _answerRedirect(request, writer, location)
        if site.maxBodySize is not None and request.bodyLength > site.maxBodySize:
            return _answerError(request, writer, 413, "The request body is too large.")
        if site.hsts is not None and request.secure:
            writer = WithHeader(writer, (b"strict-transport-security", b"max-age=%d" % site.hsts))
        return site.handler.handle(request, writer)


def _redirectLocation(
    site: HostedSite, table: HostTable, name: bytes, port: bytes, request: RequestFacts
) -> bytes | None:
    """Where C{site} sends C{request} instead, if anywhere."""
    target = request.target
    if not target.startswith(b"/"):
        return None
    moved = name
    if site.redirect == "www" and not name.startswith(b"www."):
        moved = b"www." + name
    elif site.redirect == "non-www" and name.startswith(b"www."):
        moved = name[4:]
    if moved != name and table.find(moved) is not site:
        moved = name
    secure = request.secure
    if site.httpsRedirect and not secure and not target.startswith(ACME_CHALLENGE_PATH):
        return b"https://" + moved + target
    if moved == name:
        return None
    authority = moved + b":" + port if port else moved
    return (b"https://" if secure else b"http://") + authority + target


def _answerRedirect(request: RequestFacts, writer: ResponseWriter, location: bytes) -> Answered:
    code = 301 if request.method in _KEEPS_METHOD else 308
    page = b'<a href="%s">Moved here</a>\n' % location.replace(b'"', b"%22")
    headers = [(b"location", location), HTML_CONTENT_TYPE]
    answerPage(request, writer, code, reasonPhrase(code), headers, page)
    return ANSWERED


def _answerError(request: RequestFacts, writer: ResponseWriter, code: int, detail: str) -> Answered:
    page = errorPage(code, detail)
    answerPage(request, writer, code, reasonPhrase(code), [HTML_CONTENT_TYPE], page)
    return ANSWERED


class WithHeader(ForwardingWriter):
    """A L{ResponseWriter} that adds one header to the response, whoever makes it."""

    def __init__(self, writer: ResponseWriter, header: tuple[bytes, bytes]) -> None:
        super().__init__(writer)
        self._header = header

    def writeHead(
        self,
        code: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        framing: BodyFraming,
    ) -> None:
        self._writer.writeHead(code, reason, [*headers, self._header], framing)

    def serveFile(self, filename: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self._writer.serveFile(filename, [*headers, self._header])
