"""
The access log is the exact combined log format that log tools parse
(Apache's and nginx's, ``COMBINEDAPACHELOG``): written by the real
``twist fastcgi-proxy``, in front of a real php-fpm.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from tests.conftest import PHPFPMPool
from tests.processes import rawRequest, startProxy, stopProxy

# Logstash's COMBINEDAPACHELOG, in short: the address bare, not quoted.
COMBINED = re.compile(
    r"^(?P<host>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"(?P<referrer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)"$'
)


def test_access_lines_are_in_the_combined_log_format(tmp_path: Path, php_fpm: PHPFPMPool) -> None:
    accessLog = tmp_path / "access.log"
    proxy = startProxy(
        [
            "--php-fpm",
            php_fpm.endpointDescription,
            "--path",
            php_fpm.documentRoot,
            "--access-log",
            str(accessLog),
        ],
        tmp_path / "twist.log",
    )
    try:
        response = rawRequest(
            proxy,
            "GET",
            "/info.php?q=1",
            Referer="http://example.org/",
            **{"User-Agent": 'say "hi"'},
        )
        response.read()
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            client.sendall(
                "GET /nowhere/\u00dc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            while client.recv(65536):
                pass
    finally:
        stopProxy(proxy)
    lines = accessLog.read_text().splitlines()
    assert len(lines) == 2, lines
    first, second = (COMBINED.match(line) for line in lines)
    assert first is not None, lines[0]
    assert first["host"] == "127.0.0.1"
    assert first["request"] == "GET /info.php?q=1 HTTP/1.1"
    assert first["status"] == "200"
    assert int(first["bytes"]) > 0
    assert first["referrer"] == "http://example.org/"
    assert first["agent"] == "say \\x22hi\\x22"
    assert second is not None, lines[1]
    assert second["request"] == "GET /nowhere/\\xc3\\x9c HTTP/1.1"
