"""
txfastcgi.errors: one hierarchy, and each backend error names the HTTP status
it becomes.
"""

from __future__ import annotations

import pytest

from txfastcgi import errors
from txfastcgi.errors import (
    BackendClosed,
    BackendError,
    BackendOverloaded,
    BackendRefused,
    BackendTimeout,
    BackendUnavailable,
    MalformedRecord,
    MalformedResponse,
    ProtocolError,
    QueueTimeout,
    StateError,
    TxFastCGIError,
    UnexpectedRecord,
    UnsupportedVersion,
)


def test_every_public_error_is_a_txfastcgi_error() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), TxFastCGIError), name


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BackendUnavailable, 502),
        (BackendClosed, 502),
        (BackendRefused, 502),
        (MalformedResponse, 502),
        (UnsupportedVersion, 502),
        (MalformedRecord, 502),
        (UnexpectedRecord, 502),
        (BackendOverloaded, 503),
        (QueueTimeout, 503),
        (BackendTimeout, 504),
    ],
)
def test_each_backend_error_becomes_its_status(error: type[BackendError], status: int) -> None:
    assert error.status == status
    assert error.explanation.startswith("The PHP backend")


def test_only_a_full_queue_asks_the_client_to_retry_later() -> None:
    hinted = {name for name in errors.__all__ if getattr(errors, name).__dict__.get("headers")}
    assert hinted == {"QueueTimeout"}
    assert dict(QueueTimeout.headers) == {b"retry-after": b"5"}


def test_a_peers_protocol_error_is_an_invalid_response_and_a_callers_mistake_is_not() -> None:
    assert issubclass(ProtocolError, BackendError)
    assert not issubclass(StateError, BackendError)
    assert issubclass(StateError, RuntimeError)
