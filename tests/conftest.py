"""
A real php-fpm for the integration tests.

The pools are configured by L{txfastcgi._server.phpfpm.PoolConfiguration}, as the
product configures its own, but run with C{subprocess} so that no fixture needs
a running reactor.

Permissions: php-fpm started as root (as in CI) refuses to run PHP as root, and
picks a worker user with L{txfastcgi._server.phpfpm.workerUser}, as C{twist
fastcgi-proxy --php-fpm spawn} does.  Rather than start php-fpm with C{-R} and
C{user = root}, which would hide from the tests the permission problems users
meet, the site is copied to a world-readable directory outside pytest's
C{tmp_path} (which is C{0700}, so unreadable to C{www-data}) and PHP runs as
C{www-data}, as in production.  Started by anyone else, php-fpm runs PHP as
that user, who owns the copy.

Test modules that want the types for annotations import them under
C{TYPE_CHECKING} from C{tests.conftest}.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from tests.fronts import FRONTS
from txfastcgi._server.phpfpm import (
    PoolConfiguration,
    acceptsConnections,
    findPHPFPM,
    processArguments,
    workerUser,
)
from txfastcgi.errors import PHPFPMNotFound

SITE = Path(__file__).parent / "site"

# php-fpm starts in a few tens of milliseconds; this only bounds a broken start.
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class PHPFPMPool:
    """
    A running php-fpm with one pool.

    @ivar socketPath: The unix socket it listens on.
    @ivar endpointDescription: The Twisted client endpoint description for it.
    @ivar documentRoot: The absolute path of the copy of C{tests/site} it serves.
    @ivar logPath: php-fpm's log, including what scripts write to
        C{php://stderr}.
    @ivar configuration: Its pool configuration.
    @ivar process: The php-fpm master.
    @ivar runDirectory: Holds the configuration, log, pid file and socket.
    """

    socketPath: str
    endpointDescription: str
    documentRoot: str
    logPath: str
    configuration: PoolConfiguration
    process: subprocess.Popen[bytes]
    runDirectory: str

    def log(self) -> str:
        """
        What php-fpm has logged so far.
        """
        return Path(self.logPath).read_text(errors="replace")


class PHPFPMFactory(Protocol):
    """
    The type of the C{php_fpm_factory} fixture.
    """

    def __call__(
        self, children: int = 1, maxRequests: int = 0, dynamicFrom: int | None = None
    ) -> PHPFPMPool:
        """
        Start another php-fpm serving the test site, stopped after the test.
        """


def startPHPFPM(
    documentRoot: str, children: int = 2, maxRequests: int = 0, dynamicFrom: int | None = None
) -> PHPFPMPool:
    """
    Start php-fpm serving C{documentRoot} and wait until it accepts connections.

    Fails the test, never skips it, when php-fpm is missing or does not start:
    the integration tests are the point of the suite.

    @param dynamicFrom: run C{pm = dynamic}, starting with this many workers
        and forking more, up to C{children}, when none is free (the product
        itself always configures C{pm = static}).
    """
    try:
        binary = findPHPFPM()
    except PHPFPMNotFound as notFound:
        pytest.fail(str(notFound), pytrace=False)
    runDirectory = tempfile.mkdtemp(prefix="txfastcgi-test-php-fpm-")
    configuration = PoolConfiguration(
        socketPath=os.path.join(runDirectory, "php-fpm.sock"),
        children=children,
        runAsUser=workerUser(documentRoot),
        maxRequests=maxRequests,
    )
    configPath = os.path.join(runDirectory, "php-fpm.conf")
    text = configuration.render(runDirectory)
    if dynamicFrom is not None:
        dynamic = (
            f"pm = dynamic\npm.start_servers = {dynamicFrom}\n"
            f"pm.min_spare_servers = 1\npm.max_spare_servers = {dynamicFrom}\n"
        )
        assert "pm = static\n" in text
        text = text.replace("pm = static\n", dynamic)
    Path(configPath).write_text(text)
    logPath = os.path.join(runDirectory, "php-fpm.log")
    with open(logPath, "wb") as log:
        process = subprocess.Popen(
            processArguments(binary, configPath, allowRoot=False),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    pool = PHPFPMPool(
        socketPath=configuration.socketPath,
        endpointDescription=configuration.endpointDescription,
        documentRoot=documentRoot,
        logPath=logPath,
        configuration=configuration,
        process=process,
        runDirectory=runDirectory,
    )
    deadline = time.monotonic() + _START_TIMEOUT
    while not acceptsConnections(pool.socketPath):
        if process.poll() is not None or time.monotonic() > deadline:
            stopPHPFPM(pool)
            pytest.fail(f"php-fpm did not start:\n{pool.log()}", pytrace=False)
        time.sleep(0.01)
    return pool


def stopPHPFPM(pool: PHPFPMPool) -> None:
    """
    Stop php-fpm and remove its run directory.

    SIGTERM rather than the graceful SIGQUIT, which would wait for any request
    a test left hanging.
    """
    if pool.process.poll() is None:
        pool.process.terminate()
        try:
            pool.process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pool.process.kill()
            pool.process.wait()
    shutil.rmtree(pool.runDirectory, ignore_errors=True)


def _makeWorldReadable(top: str) -> None:
    """
    Let anyone read C{top}'s files, whatever the umask they were checked out with.
    """
    for directory, _, files in os.walk(top):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)


@pytest.fixture(scope="session")
def php_document_root() -> Iterator[str]:
    """
    The absolute path of a copy of C{tests/site} that php-fpm's workers can read.
    """
    directory = tempfile.mkdtemp(prefix="txfastcgi-test-site-")
    try:
        os.chmod(directory, 0o755)  # mkdtemp makes it 0700: see the module docstring.
        documentRoot = os.path.join(directory, "site")
        shutil.copytree(SITE, documentRoot)
        _makeWorldReadable(documentRoot)
        yield documentRoot
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def php_fpm(php_document_root: str) -> Iterator[PHPFPMPool]:
    """
    A php-fpm serving the test site for the whole session.
    """
    pool = startPHPFPM(php_document_root, children=4)
    try:
        yield pool
    finally:
        stopPHPFPM(pool)


@pytest.fixture
def php_fpm_factory(php_document_root: str) -> Iterator[PHPFPMFactory]:
    """
    Start pools of a test's own, with the sizes it needs, stopped after it.
    """
    pools: list[PHPFPMPool] = []

    def start(
        children: int = 1, maxRequests: int = 0, dynamicFrom: int | None = None
    ) -> PHPFPMPool:
        pool = startPHPFPM(php_document_root, children, maxRequests, dynamicFrom)
        pools.append(pool)
        return pool

    try:
        yield start
    finally:
        for pool in pools:
            stopPHPFPM(pool)


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> str:
    """Each HTTP/1.1 front in turn (see L{tests.fronts}): the test runs once on each."""
    name: str = request.param
    return name
