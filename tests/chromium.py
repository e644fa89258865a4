"""
Headless Chromium (Debian's C{chromium}, which .ci/run installs), for what
only a browser can show: that it decodes what txfastcgi sends. A test that
needs it fails when it is missing, never skips.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile

__all__ = ["dumpDOM"]


def dumpDOM(url: str, *flags: str, timeout: float = 60) -> str:
    """The DOM Chromium builds from C{url}, serialized, with C{flags} on its command line."""
    chromium = shutil.which("chromium")
    assert chromium is not None, "chromium is not installed: apt-get install chromium"
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={profile}",
                *flags,
                "--dump-dom",
                url,
            ],
            capture_output=True,
            timeout=timeout,
            check=True,
        )
    return result.stdout.decode("utf-8", "replace")
