"""
The checks that the command line and the site file
(L{txfastcgi._server.sitefile}) both make of a value, each written once.

Each returns what is wrong, in words that start with the value (C{"'tcp:x'
is not a valid endpoint: 'x' is not a number"}), or C{None}; the caller puts
in front of it where the value was written: C{--php-fpm}, or
C{sites.toml:12: php_fpm}.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterable

from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactor

from txfastcgi._http.forwarded import Networks

__all__ = [
    "directoryProblem",
    "earlyHintProblem",
    "endpointProblem",
    "isUnder",
    "networkProblem",
    "unshareable",
]

# Listeners whose sockets worker processes can adopt as they are; a TLS
# listener would need its TLS context rebuilt in each worker.
_SHAREABLE = frozenset({"tcp", "tcp6", "unix"})


def endpointProblem(parse: Callable[[object, str], object], description: str) -> str | None:
    """
    What is wrong with an endpoint string, found now rather than at
    start-up. The reactor is not chosen yet while options are parsed, so the
    check builds the endpoint for a stand-in that is never used: nothing
    connects or listens.

    @param parse: C{endpoints.clientFromString} or C{serverFromString}.
    """
    kind = description.removeprefix("haproxy:").partition(":")
    if kind[0] == "unix" and not kind[2]:
        problem = "a unix endpoint needs a socket path, like unix:/run/txfastcgi.sock"
    else:
        try:
            endpoint = parse(MemoryReactor(), description)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError) as e:
            problem = _explain(kind[0], e)
        else:
            if not isinstance(endpoint, endpoints.AdoptedStreamServerEndpoint) or _listening(
                endpoint
            ):
                return None
            problem = (
                "systemd passed a connection, not a listening socket:"
                " the .socket unit needs Accept=no (systemd-socket-activate: no --accept)"
            )
    return f"{description!r} is not a valid endpoint: {problem}"


def directoryProblem(directory: str) -> str | None:
    """Unless C{directory} is one, that it is not."""
    return None if os.path.isdir(directory) else f"{directory!r} is not a directory"


def networkProblem(network: str) -> str | None:
    """Unless C{network} is an address or a network, that it is neither."""
    try:
        Networks([network])
    except ValueError:
        return f"{network!r} is not an address or network"
    return None


def isUnder(directory: str, roots: Iterable[str]) -> bool:
    """
    Whether C{directory}, once its symbolic links are resolved, is one of
    C{roots} or inside one: an X-Accel-Redirect prefix may hand out only
    files that a sendfile root allows.
    """
    real = os.path.realpath(directory)
    return any(
        real == root or real.startswith(root + os.sep)
        for root in (os.path.realpath(r) for r in roots)
    )


def earlyHintProblem(path: str, link: str) -> str | None:
    """
    What is wrong with a 103 Early Hints C{Link} field for the URL path
    C{path}: it goes into a response head as it is written.
    """
    if not path.startswith("/"):
        return f"{path!r} is not a URL path (one starts with /)"
    if not link.strip().startswith("<"):
        return f"{link!r} is not a Link field (<URL>; rel=...)"
    if any(ord(character) < 0x20 or ord(character) > 0x7E for character in link):
        return f"{link!r}: the link must be printable ASCII"
    return None


def unshareable(listen: Iterable[str]) -> list[str]:
    """The listeners among C{listen} that worker processes cannot share."""
    return [d for d in listen if d.partition(":")[0] not in _SHAREABLE]


def _listening(endpoint: endpoints.AdoptedStreamServerEndpoint) -> bool:
    """
    Whether the socket systemd passed listens: with C{Accept=yes} it passes
    one accepted connection instead, on which the reactor's accept would
    fail in a loop.
    """
    with socket.fromfd(endpoint.fileno, endpoint.addressFamily, socket.SOCK_STREAM) as adopted:
        return bool(adopted.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def _explain(kind: str, error: Exception) -> str:
    """
    What Twisted's endpoint parsers mean by C{error}, in the words of
    someone who wrote the endpoint string rather than of its parser's code.
    """
    if kind == "systemd" and isinstance(error, (IndexError, KeyError)):
        return (
            "this process was given no such socket by systemd socket activation"
            " (LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID; under systemd-socket-activate,"
            " give --fdname)"
        )
    if kind == "systemd" and isinstance(error, AttributeError):
        return "its domain must be INET, INET6 or UNIX"
    if isinstance(error, OSError) and error.filename is not None:
        hint = " (give privateKey=KEY.pem and certKey=CERT.pem)" if kind == "ssl" else ""
        return f"{error.strerror}: {error.filename}{hint}"
    message = str(error)
    number = re.fullmatch(r"invalid literal for int\(\) with base 10: (.*)", message)
    if number:
        return f"{number.group(1)} is not a number"
    missing = re.search(r"missing \d+ required positional arguments?: (.*)", message)
    if missing:
        return f"{missing.group(1)} is missing".replace("'", "")
    return message
