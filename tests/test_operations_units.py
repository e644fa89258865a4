"""
txfastcgi._server.units: sizes and durations as an operator writes them.
"""

from __future__ import annotations

import pytest

from txfastcgi._server.units import UnitError, parseDuration, parseSize


@pytest.mark.parametrize(
    "written, size",
    [
        ("0", 0),
        ("1048576", 1048576),
        ("512K", 512 * 1024),
        ("512k", 512 * 1024),
        ("64M", 64 * 1024**2),
        ("1G", 1024**3),
        ("1.5M", 1536 * 1024),
        (" 2M ", 2 * 1024**2),
    ],
)
def test_a_size_is_bytes_or_powers_of_1024(written: str, size: int) -> None:
    assert parseSize(written) == size


@pytest.mark.parametrize(
    "written, seconds",
    [
        ("30", 30.0),
        ("2.5", 2.5),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0.5S", 0.5),
    ],
)
def test_a_duration_is_seconds_unless_a_unit_says_otherwise(written: str, seconds: float) -> None:
    assert parseDuration(written) == pytest.approx(seconds)


@pytest.mark.parametrize("written", ["", "abc", "64MB", "M", "-1", "1e3", "5 minutes", "1.2.3"])
def test_anything_else_is_not_a_size(written: str) -> None:
    with pytest.raises(UnitError, match=f"^{written!r} is not a size"):
        parseSize(written)


@pytest.mark.parametrize("written", ["", "abc", "30sec", "2mm", "-5s", "s"])
def test_anything_else_is_not_a_duration(written: str) -> None:
    with pytest.raises(UnitError, match=f"^{written!r} is not a duration"):
        parseDuration(written)
