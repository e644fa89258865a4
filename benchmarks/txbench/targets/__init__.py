"""
Every front-end a run can measure, by name: the txfastcgi targets, the
anchors, Jetty. Each name maps to the tool it needs (None: only Python) and
the function that starts it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..context import Context, Target
from ..load import check
from ..processes import waitFor
from ..scenarios import SCENARIOS
from .anchors import ANCHORS, startAnchor
from .jetty import startJetty
from .txfastcgi import startBare, startEmbedded, startProxy

Starter = Callable[[Context, str], Target]

STARTERS: dict[str, tuple[str | None, Starter]] = {
    "txfastcgi": (None, lambda context, name: startProxy(context, name)),
    "txfastcgi-w2": (None, lambda context, name: startProxy(context, name, workers=2)),
    "txfastcgi-embedded": (None, startEmbedded),
    # Needs context.pypy (--pypy, or pypy3 found): checked by chooseTargets.
    "txfastcgi-pypy": (None, lambda context, name: startProxy(context, name, python=context.pypy)),
    "txfastcgi-baseline": (
        None,
        lambda context, name: startProxy(context, name, repo=context.baseline),
    ),
    **{name: (anchor.tool, startAnchor) for name, anchor in ANCHORS.items()},
    "jetty": ("jetty", startJetty),
    "bare": (None, startBare),
}


def startTarget(context: Context, name: str) -> Target:
    """Start one front-end and wait until it serves hello.php."""
    _, starter = STARTERS[name]
    target = starter(context, name)
    probe = next(s for s in SCENARIOS if s.tiny)

    def serving() -> bool:
        return check(probe, target) is None

    try:
        waitFor(serving, f"{name} to serve hello.php")
    except RuntimeError:
        log = context.log(name)
        raise RuntimeError(f"{name} did not start; {log}:\n{log.read_text()[-2000:]}") from None
    context.processes.remember(target.pid)
    return target
