"""
Running one of txfastcgi's own modules as a child process, with the Python
and the import path of the process that starts it.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

__all__ = ["PYPY_NURSERY", "moduleCommand", "withPyPyNursery"]


def moduleCommand(
    module: str, arguments: list[str], environment: Mapping[str, str] = os.environ
) -> tuple[list[str], dict[str, str]]:
    """
    The argument list and environment that run C{python -m module arguments}.

    The child gets this process's C{sys.path} as C{PYTHONPATH}, so that it
    imports the same txfastcgi however this one was started (a checkout, a
    virtualenv, C{twist} or a C{.tac} file).
    """
    command = [sys.executable, "-m", module, *arguments]
    return command, dict(environment, PYTHONPATH=os.pathsep.join(sys.path))


PYPY_NURSERY = "32M"
"""
The PyPy nursery size that txfastcgi's own worker processes get unless
C{PYPY_GC_NURSERY} says otherwise: PyPy's default (half the L2 cache) has
its minor collections cost about a third of the proxy's user time on a
tiny PHP response; with 32 MiB a request took 21-25 CPU microseconds of user
time instead of 34-35, for about 32 MiB of memory more per process.
"""


def withPyPyNursery(
    environment: dict[str, str], implementation: str = platform.python_implementation()
) -> dict[str, str]:
    """C{environment}, with L{PYPY_NURSERY} as the nursery size if PyPy runs and none is set."""
    if implementation == "PyPy":
        environment.setdefault("PYPY_GC_NURSERY", PYPY_NURSERY)
    return environment
