"""
What the README, the guides and the examples tell a new user is true: each
test here is a claim a user followed and tripped on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from tests.processes import freePort

if TYPE_CHECKING:
    from tests.conftest import PHPFPMPool

REPOSITORY = Path(__file__).resolve().parent.parent
DOCS = REPOSITORY / "docs"
EXAMPLES = DOCS / "examples"
WORDPRESS = DOCS / "guides" / "wordpress.rst"
# The pages that tell a user how to install and where php-fpm listens.
INSTALLING = [REPOSITORY / "README.rst", DOCS / "getting-started.rst", *DOCS.glob("guides/*.rst")]


def _paragraphs(path: Path) -> list[str]:
    return re.split(r"\n\s*\n", path.read_text())


def test_noPageInstallsAReleaseThatIsNotPublished() -> None:
    """
    txfastcgi is not on PyPI yet: the pages install it from a clone or a
    built wheel, never with C{pip install txfastcgi}.
    """
    for page in INSTALLING:
        text = page.read_text()
        assert re.search(r"pip install '?txfastcgi(?![\w-])", text) is None, page
    gettingStarted = (DOCS / "getting-started.rst").read_text()
    assert "git clone" in gettingStarted
    assert ".whl" in gettingStarted


def test_theWordPressGuideNamesTheBodySizeLimit() -> None:
    """
    Requests over 100 MiB get 413 unless C{--max-body-size} says otherwise:
    the guide does not say there is no limit.
    """
    text = " ".join(WORDPRESS.read_text().split())
    assert "no limit of its own" not in text
    assert ":option:`--max-body-size`" in text and "100 MiB" in text


def test_theMustUsePluginHasOneName() -> None:
    """
    README and the WordPress guide name the must-use plugin as the example
    file they both mean.
    """
    (plugin,) = (EXAMPLES / "wordpress").glob("*-rewrite.php")
    for page in [REPOSITORY / "README.rst", WORDPRESS]:
        named = set(re.findall(r"mu-plugins/([\w.-]+\.php)", page.read_text()))
        assert named == {plugin.name}, page


def test_theKleinExampleSaysItNeedsKlein() -> None:
    docstring = (EXAMPLES / "klein.tac").read_text().split('"""')[1]
    assert "pip install klein" in docstring


def test_thePlainExampleRunsWithTheVirtualenvsPythonAndLogs(
    php_fpm: PHPFPMPool, tmp_path: Path
) -> None:
    """
    plain.py says to run it with the Python of txfastcgi's virtual
    environment, and run so it logs to standard output: that it listens,
    and each request.
    """
    plain = EXAMPLES / "plain.py"
    assert "/opt/txfastcgi/bin/python plain.py" in plain.read_text().split('"""')[1]
    port = freePort()
    output = tmp_path / "plain.log"
    with output.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(plain)],
            stdout=log,
            stderr=subprocess.DEVNULL,
            env=dict(
                os.environ,
                PYTHONPATH=str(REPOSITORY),
                PHP_FPM=php_fpm.endpointDescription,
                BLOG_ROOT=php_fpm.documentRoot,
                LISTEN=f"tcp:{port}:interface=127.0.0.1",
            ),
        )
    try:
        deadline = time.monotonic() + 20
        while f"Site starting on {port}" not in output.read_text():
            assert process.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/blog/info.php", timeout=10) as r:
            assert r.status == 200
        while '"GET /blog/info.php HTTP/1.1" 200' not in output.read_text():
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(10)


def test_twistdsPidFileIsIgnoredByGit() -> None:
    """
    C{twistd -ny example.tac}, as the examples say, leaves C{twistd.pid}
    behind in the clone.
    """
    subprocess.run(["git", "check-ignore", "-q", "twistd.pid"], cwd=REPOSITORY, check=True)


def test_theDefaultSocketIsSaidToNeedSystemd() -> None:
    """
    Wherever a page calls C{/run/php/php-fpm.sock} the default, it says the
    alias is made by the systemd unit, which containers do not run.
    """
    for page in [REPOSITORY / "README.rst", DOCS / "getting-started.rst"]:
        told = [p for p in _paragraphs(page) if "/run/php/php-fpm.sock" in p and "default" in p]
        assert told != [], page
        for paragraph in told:
            assert "systemd" in paragraph and "container" in paragraph, paragraph


def test_theWordPressGuideCoversDebiansPackage() -> None:
    """
    WordPress from Debian's C{wordpress} package lives elsewhere than an
    upstream tarball, and the guide says where and how to serve it.
    """
    text = WORDPRESS.read_text()
    assert "apt-get install wordpress" in text
    assert "/etc/wordpress/config-" in text
    assert re.search(r"--path /usr/share/wordpress\b", text)


def test_theExamplesNameTheirEnvironmentVariablesAlike() -> None:
    """
    Every example reads where php-fpm listens from PHP_FPM and where to
    listen from LISTEN, and each document root from a NAME_ROOT: a user who
    ran one example can run the next with the same variables.
    """
    names = set()
    for example in [*EXAMPLES.glob("*.tac"), *EXAMPLES.glob("*.py")]:
        read = set(re.findall(r"os\.environ\.get\(\"(\w+)\"", example.read_text()))
        assert {"PHP_FPM", "LISTEN"} <= read, example.name
        assert all(name.endswith("_ROOT") for name in read - {"PHP_FPM", "LISTEN"}), example.name
        names |= read
    assert names == {
        "PHP_FPM",
        "LISTEN",
        "BLOG_ROOT",
        "SITE_ROOT",
        "PHPMYADMIN_ROOT",
        "LARAVEL_ROOT",
    }


PLUGIN_CACHE = (
    "/opt/txfastcgi/bin/python -c"
    " 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'"
)


def test_everyInstallWritesThePluginCache() -> None:
    """
    After a root install, a start by another user finds Twisted's plugin
    cache stale and logs twice that it cannot write it: every page that
    installs into /opt/txfastcgi writes the cache right after.
    """
    installs = 0
    for page in INSTALLING + [DOCS / "https.rst"]:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines):
            if "/opt/txfastcgi/bin/pip install" in line and "$ " in line:
                installs += 1
                assert PLUGIN_CACHE in lines[number + 1], f"{page.name}:{number + 2}"
    assert installs >= 3
