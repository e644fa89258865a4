"""
The environment of txfastcgi's worker processes: under PyPy they get a
nursery large enough for the proxy's allocation rate, unless the operator
chose one (L{txfastcgi._server.child.withPyPyNursery}).
"""

from __future__ import annotations

from txfastcgi._server.child import PYPY_NURSERY, withPyPyNursery


def test_a_pypy_worker_gets_a_nursery_for_the_proxy() -> None:
    environment = withPyPyNursery({"PATH": "/usr/bin"}, implementation="PyPy")
    assert environment == {"PATH": "/usr/bin", "PYPY_GC_NURSERY": PYPY_NURSERY}
    assert PYPY_NURSERY == "32M"


def test_the_operators_nursery_is_kept() -> None:
    environment = withPyPyNursery({"PYPY_GC_NURSERY": "8M"}, implementation="PyPy")
    assert environment == {"PYPY_GC_NURSERY": "8M"}


def test_a_cpython_worker_gets_nothing_more() -> None:
    assert withPyPyNursery({"PATH": "/usr/bin"}, implementation="CPython") == {"PATH": "/usr/bin"}
