"""
Endpoint strings taken apart: a TLS listener (C{ssl:443:privateKey=...})
as the plain listener under it and the files it names, for sites whose own
certificates a front serves by SNI on that plain listener.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TLSFileNames", "isTLS", "splitTLS"]

# What a TLS endpoint string says of TLS rather than of its port; the other
# parameters (interface, backlog) are the plain listener's.
_TLS_PARAMETERS = ("privateKey", "certKey", "extraCertChain", "sslmethod", "dhParameters")
# The separators of an endpoint string: colons not escaped with a backslash.
_SEPARATOR = re.compile(r"(?<!\\):")


@dataclass(frozen=True)
class TLSFileNames:
    """
    The files a TLS listener names: its own certificate, for the names no
    site has one for.

    @ivar privateKey: the key file, if it names one.
    @ivar certKey: the certificate file, if not in the key's.
    @ivar extraCertChain: the intermediates' file, if any.
    """

    privateKey: str | None = None
    certKey: str | None = None
    extraCertChain: str | None = None


def splitTLS(description: str) -> tuple[str, TLSFileNames]:
    """
    The plain listener under a TLS one (C{ssl:443:privateKey=k.pem} is
    C{tcp:443}; C{haproxy:ssl:...} is C{haproxy:tcp:...}), and its files.

    @raise ValueError: a description that names its files by position,
        not as C{privateKey=} and C{certKey=}.
    """
    prefix = "haproxy:" if description.startswith("haproxy:") else ""
    _, *arguments = _SEPARATOR.split(description.removeprefix(prefix))
    kept, files = [], {}
    for index, argument in enumerate(arguments):
        name, equals, value = argument.partition("=")
        if equals and name in _TLS_PARAMETERS:
            files[name] = value.replace("\\:", ":")
        elif index and not equals:
            raise ValueError(
                f"{description!r}: give privateKey=KEY.pem and certKey=CERT.pem by name"
            )
        else:
            kept.append(argument)
    plain = ":".join([f"{prefix}tcp", *kept])
    return plain, TLSFileNames(
        files.get("privateKey"), files.get("certKey"), files.get("extraCertChain")
    )


def isTLS(description: str) -> bool:
    """Whether a --listen endpoint string is a TLS one (ssl: or tls:, behind haproxy: too)."""
    return description.removeprefix("haproxy:").partition(":")[0] in ("ssl", "tls")
