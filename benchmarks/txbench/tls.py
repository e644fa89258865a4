"""A throw-away certificate for the TLS (HTTP/2) listeners."""

from __future__ import annotations

import subprocess
from pathlib import Path


def makeCertificate(work: Path, openssl: str) -> tuple[Path, Path] | None:
    """A throw-away self-signed certificate for the HTTP/2 listeners."""
    key, cert = work / "key.pem", work / "cert.pem"
    done = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return None
    key.chmod(0o644)
    return key, cert
