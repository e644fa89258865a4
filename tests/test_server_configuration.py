"""
The typed configuration that the service is assembled from: what the
options say, the connection limits they imply, and the same value again in
a worker process.
"""

from __future__ import annotations

import os

from txfastcgi._server.configuration import SPAWN, Configuration
from txfastcgi.tap import Options


def configured(*arguments: str) -> Configuration:
    options = Options()
    options.parseOptions(["--path", os.curdir, *arguments])
    return Configuration.fromOptions(options)


def test_the_options_become_typed_fields() -> None:
    configuration = configured(
        *("--php-fpm", "tcp:127.0.0.1:9000", "--listen", "tcp:8081", "--param", "A=b"),
        *("--read-timeout", "2m", "--max-body-size", "1K", "--no-front-controller"),
    )
    (site,) = configuration.sites
    assert configuration.backendsOf(site) == ("tcp:127.0.0.1:9000",)
    assert configuration.server.listen == ("tcp:8081",)
    assert site.params == {"A": "b"}
    assert (site.read_timeout, site.max_body_size) == (120.0, 1024)
    assert site.front_controller is None
    assert site.root == os.path.abspath(os.curdir)


def test_a_php_fpm_of_the_systems_gets_four_connections_unless_told() -> None:
    assert configured("--php-fpm", "tcp:127.0.0.1:9000").connectionLimits == {
        "tcp:127.0.0.1:9000": 4
    }
    told = configured("--php-fpm", "tcp:127.0.0.1:9000", "--max-connections", "9")
    assert told.connectionLimits == {"tcp:127.0.0.1:9000": 9}


def test_a_spawned_php_fpm_gets_as_many_connections_as_it_has_workers() -> None:
    configuration = configured("--php-fpm", "spawn", "--spawn-children", "3")
    (site,) = configuration.sites
    assert configuration.backendsOf(site) == (SPAWN,)
    started = configuration.withSpawned(site.root, "unix:/run/tx/php.sock")
    assert started.backendsOf(site) == ("unix:/run/tx/php.sock",)
    assert started.connectionLimits == {"unix:/run/tx/php.sock": 3}
    limited = configured("--php-fpm", "spawn", "--max-connections", "2")
    assert limited.withSpawned(site.root, "unix:/s").connectionLimits == {"unix:/s": 2}


def test_a_worker_gets_the_same_configuration_through_its_environment() -> None:
    configuration = configured("--php-fpm", "spawn", "--status-path", "/status", "--param", "A=b")
    started = configuration.withSpawned(configuration.sites[0].root, "unix:/run/tx/php.sock")
    encoded = started.encode()
    assert encoded.isascii() and "\n" not in encoded
    assert Configuration.decode(encoded) == started


def test_a_system_php_fpm_beside_a_spawned_one_keeps_its_own_default() -> None:
    configuration = configured(
        "--php-fpm", "spawn", "--php-fpm", "tcp:127.0.0.1:9000", "--spawn-children", "3"
    )
    started = configuration.withSpawned(configuration.sites[0].root, "unix:/run/tx/php.sock")
    assert started.connectionLimits == {"unix:/run/tx/php.sock": 3, "tcp:127.0.0.1:9000": 4}
