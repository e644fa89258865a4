"""
Sizes and durations as people write them on a command line or in a
configuration file: C{64M}, C{30s}, C{500ms}.

Pure functions of a string; a plain number keeps meaning bytes or seconds,
so that existing command lines mean what they meant.
"""

from __future__ import annotations

import re

__all__ = ["UnitError", "parseDuration", "parseSize"]

# Powers of 1024, as php.ini's upload_max_filesize and nginx's
# client_max_body_size count them.
_SIZES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DURATIONS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_QUANTITY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


class UnitError(ValueError):
    """A value that is not a size or a duration; its message says why in words."""


def _split(value: str, units: dict[str, float] | dict[str, int], kind: str) -> tuple[float, str]:
    match = _QUANTITY.fullmatch(value)
    if match is None or match.group(2).lower() not in units:
        raise UnitError(f"{value!r} is not a {kind}")
    return float(match.group(1)), match.group(2).lower()


def parseSize(value: str) -> int:
    """
    A number of bytes: C{1048576}, C{1024K}, C{64M}, C{1G} (powers of 1024,
    either case), C{1.5M}.

    @raise UnitError: if C{value} is none of these.
    """
    number, unit = _split(value, _SIZES, "size (like 1048576, 512K, 64M or 1G)")
    return int(number * _SIZES[unit])


def parseDuration(value: str) -> float:
    """
    A number of seconds: C{30}, C{2.5}, C{30s}, C{500ms}, C{2m}, C{1h}.

    @raise UnitError: if C{value} is none of these.
    """
    number, unit = _split(value, _DURATIONS, "duration (like 30, 30s, 500ms or 2m)")
    return number * _DURATIONS[unit]
