"""
Running one of txfastcgi's own modules as a child process, with the Python
and the import path of the process that starts it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

__all__ = ["moduleCommand"]


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
