"""
What Python 3.9 lacks and txfastcgi would otherwise use, in one place.

Debian's PyPy is Python 3.9; everything else here reads as Python 3.10+.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["SLOTS"]

#: Spread into C{@dataclass(frozen=True, **SLOTS)}: slotted classes where
#: Python can make them (3.10+), which keeps CPython's per-request records
#: small and their attributes fast; plain ones on 3.9, where PyPy already lays
#: out instances of a class compactly and gains nothing from slots.
SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}
