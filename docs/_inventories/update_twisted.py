"""
Regenerate ``twisted.inv``, the intersphinx inventory of Twisted's API docs.

The documentation is built offline (CI reaches package registries only), so
intersphinx cannot download https://docs.twisted.org/en/stable/api/objects.inv
at build time. Twisted's API docs are made by pydoctor; running pydoctor on the
installed Twisted gives the same names and the same page addresses. Only the
public names of the packages a PHP proxy's documentation can mention are kept,
to keep the file small.

Run it after upgrading Twisted, from the repository root::

    pip install pydoctor
    python docs/_inventories/update_twisted.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zlib

import twisted

KEPT_PACKAGES = (
    "twisted.application.",
    "twisted.internet.",
    "twisted.logger.",
    "twisted.python.",
    "twisted.runner.",
    "twisted.web.",
)
HERE = os.path.dirname(os.path.abspath(__file__))


def isKept(name: str) -> bool:
    if not name.startswith(KEPT_PACKAGES) and name not in {p[:-1] for p in KEPT_PACKAGES}:
        return False
    parts = name.split(".")
    return not any(part.startswith("_") or part == "test" for part in parts)


def main() -> None:
    source = os.path.dirname(twisted.__file__)
    with tempfile.TemporaryDirectory() as output:
        subprocess.run(
            [
                "pydoctor",
                "--quiet",
                "--quiet",
                "--make-intersphinx",
                "--project-name=Twisted",
                f"--project-version={twisted.__version__}",
                f"--html-output={output}",
                "--docformat=epytext",
                source,
            ],
            check=True,
        )
        with open(os.path.join(output, "objects.inv"), "rb") as f:
            data = f.read()
    header = data.split(b"\n", 4)
    lines = zlib.decompress(header[4]).decode("utf-8").splitlines()
    kept = [line for line in lines if isKept(line.split(" ", 1)[0])]
    with open(os.path.join(HERE, "twisted.inv"), "wb") as f:
        f.write(b"\n".join(header[:4]) + b"\n")
        f.write(zlib.compress(("\n".join(kept) + "\n").encode("utf-8"), 9))
    sys.stdout.write(f"kept {len(kept)} of {len(lines)} names for Twisted {twisted.__version__}\n")


if __name__ == "__main__":
    main()
