"""
Every error a user of txfastcgi can see, in one hierarchy under
L{TxFastCGIError}.

A L{BackendError} is a request that php-fpm could not answer; it says which
HTTP status it becomes (its C{status}, after h11's C{error_status_hint}) and
what the client's error page says (its C{explanation}), so the core answers
any of them the same way instead of one C{except} per status.  A
L{ProtocolError} is a FastCGI peer that broke the protocol, which as a
backend's is a L{BackendError} too.  A L{StateError} is a caller's mistake:
a method called in a state that does not allow it.

This module imports nothing of Twisted's at run time, so that the FastCGI
codec, which knows nothing of Twisted, can raise from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from twisted.python.failure import Failure

__all__ = [
    "BackendClosed",
    "BackendError",
    "BackendOverloaded",
    "BackendRefused",
    "BackendTimeout",
    "BackendUnavailable",
    "InvalidResponse",
    "MalformedRecord",
    "MalformedResponse",
    "PHPFPMNotFound",
    "PoolStateError",
    "ProtocolError",
    "QueueTimeout",
    "StateError",
    "TxFastCGIError",
    "UnexpectedRecord",
    "UnsupportedVersion",
]


class TxFastCGIError(Exception):
    """The base of every error txfastcgi raises on purpose."""


class BackendError(TxFastCGIError):
    """
    A request php-fpm could not answer; the client gets an error page.

    The message says what happened, for the log; the client sees only
    C{explanation}, which gives away nothing of the backend.
    """

    status: ClassVar[int] = 502
    """The HTTP status the client gets."""
    explanation: ClassVar[str] = "The PHP backend failed."
    """What the client's error page says."""
    headers: ClassVar[tuple[tuple[bytes, bytes], ...]] = ()
    """Response headers of the error page."""


class BackendUnavailable(BackendError):
    """No connection to the backend could be made (refused, or timed out)."""

    explanation = "The PHP backend is unavailable."


class BackendOverloaded(BackendError):
    """The backend said it is overloaded (FastCGI's C{FCGI_OVERLOADED})."""

    status = 503
    explanation = "The PHP backend is overloaded."


class QueueTimeout(BackendOverloaded):
    """A request waited longer than the queue timeout for a free connection."""

    headers = ((b"retry-after", b"5"),)


class BackendRefused(BackendError):
    """The backend refused the request (a FastCGI protocol status other than complete)."""

    explanation = "The PHP backend refused the request."


class BackendTimeout(BackendError):
    """The backend sent nothing for longer than the read timeout."""

    status = 504
    explanation = "The PHP backend did not answer in time."


class BackendClosed(BackendError):
    """
    The backend closed the connection before it ended the request.

    C{beforeResponse} tells whether no response byte had arrived: then the
    request was sent to a kept connection php-fpm had already decided to
    close, or php-fpm went away before the script said anything, and an
    idempotent request can be sent again (as nginx's default
    C{fastcgi_next_upstream error} does).
    """

    explanation = "The PHP backend closed the connection."

    def __init__(self, reason: Failure, beforeResponse: bool) -> None:
        super().__init__(reason.getErrorMessage())
        self.reason = reason
        self.beforeResponse = beforeResponse


class InvalidResponse(BackendError):
    """The backend's answer cannot be passed on: the client gets a 502."""

    explanation = "The PHP backend sent an invalid response."


class MalformedResponse(InvalidResponse):
    """
    The script's output does not start with a valid CGI header block.

    The message says what is wrong, for the log: the HTTP client only ever
    sees a 502.
    """


class ProtocolError(InvalidResponse):
    """
    The peer broke the FastCGI protocol; the connection cannot be trusted any
    more and should be closed.
    """


class UnsupportedVersion(ProtocolError):
    """A record header carries a version other than FastCGI 1."""


class MalformedRecord(ProtocolError):
    """A record's lengths contradict its type or its own content."""


class UnexpectedRecord(ProtocolError):
    """A well-formed record that this side must not receive at this point."""


class StateError(TxFastCGIError, RuntimeError):
    """
    A method was called in a state that does not allow it: a programming
    error of the caller, unlike L{ProtocolError}, which the peer causes.
    """


class PoolStateError(StateError):
    """A connection was moved in a way its state does not allow."""


class PHPFPMNotFound(TxFastCGIError):
    """
    No php-fpm binary could be found.

    The message is a single line meant to be shown as it is on the command line.
    """
