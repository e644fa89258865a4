"""
Run a fuzz target under atheris (libFuzzer) for as long as you like::

    pip install atheris
    python -m fuzz records -max_total_time=600
    python -m fuzz cgi-parser -max_total_time=600 -jobs=2

The first argument names the target (see L{fuzz.targets.TARGETS}); the rest
go to libFuzzer.  Without a corpus directory among them, one is made under
C{fuzz/corpus/TARGET} and seeded with valid inputs.  A crash (any exception
other than the parser's documented protocol error, or a broken invariant)
stops the run and leaves the input that caused it in C{crash-*}.
"""

from __future__ import annotations

import os
import sys

import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

with atheris.instrument_imports(include=["txfastcgi"]):
    from fuzz.targets import SEEDS, TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.stderr.write(f"usage: python -m fuzz {{{','.join(TARGETS)}}} [libFuzzer options]\n")
        raise SystemExit(2)
    name, options = sys.argv[1], sys.argv[2:]
    if not any(not option.startswith("-") for option in options):
        corpus = os.path.join(os.path.dirname(__file__), "corpus", name)
        os.makedirs(corpus, exist_ok=True)
        for index, seed in enumerate(SEEDS[name]):
            with open(os.path.join(corpus, f"seed-{index}"), "wb") as file:
                file.write(seed)
        options.append(corpus)
    atheris.Setup([sys.argv[0], *options], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
