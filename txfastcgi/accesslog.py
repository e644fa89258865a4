"""
Access log lines in the exact combined log format that log tools parse.

twisted.web's own C{combinedLogFormatter} quotes the client address
(C{"127.0.0.1" - - [...]}), which GoAccess, AWStats, fail2ban's and
Logstash's standard patterns (C{%h} / C{COMBINEDAPACHELOG}) do not accept.
"""

from __future__ import annotations

import re

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.http import Request

__all__ = ["combinedLogLine"]


def combinedLogLine(timestamp: str, request: Request) -> str:
    """
    C{%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"}, as Apache and
    nginx write it: the client address bare (C{-} for a unix socket peer),
    the request line, status, body bytes sent (C{-} for none), referrer and
    user agent, with quotes, backslashes and control characters escaped.

    @param timestamp: the bracketed time, as twisted.web's Site makes it.
    """
    address = request.getClientAddress()
    host = address.host if isinstance(address, IPv4Address | IPv6Address) else "-"
    method, uri, protocol = (
        _escape(part) for part in (request.method, request.uri, request.clientproto)
    )
    referrer = _escape(request.getHeader(b"referer") or b"-")
    agent = _escape(request.getHeader(b"user-agent") or b"-")
    sent = request.sentLength or "-"
    return (
        f'{host} - - {timestamp} "{method} {uri} {protocol}" {request.code} {sent}'
        f' "{referrer}" "{agent}"'
    )


_NEEDS_ESCAPING = re.compile(rb'[^\x20-\x7e]|["\\]')


def _escape(value: bytes) -> str:
    """Printable ASCII as it is, but for C{"} and C{\\}; any other byte as C{\\xHH}."""
    if _NEEDS_ESCAPING.search(value) is None:
        return value.decode("ascii")
    return "".join(
        chr(byte) if 0x20 <= byte < 0x7F and byte not in b'"\\' else f"\\x{byte:02x}"
        for byte in value
    )
