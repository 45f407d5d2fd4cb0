"""A network that intercepts TLS with its own CA: SSL_CERT_FILE names it, as for curl
and pip; without it, one line says the certificate is not trusted and what to set."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import check_manifest
from tests.standin import StandIn
from tests.tls_helpers import TlsFront, make_ca


@pytest.fixture
def front(standin: StandIn, tmp_path: Path) -> Iterator[tuple[TlsFront, Path]]:
    ca, cert, key = make_ca(tmp_path)
    server = TlsFront(cert, key, int(standin.api_url.rpartition(":")[2])).start()
    try:
        yield server, ca
    finally:
        server.close()


def fetch(standin: StandIn, front: TlsFront, archive: Path,
          **env: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: the CA is read as the process starts."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR") and not k.lower().endswith("_proxy")}
    return subprocess.run(
        [sys.executable, "-m", "tune_archiver", "fetch", "1", "--archive", str(archive),
         "--retries", "0", "--api-url", f"https://localhost:{front.port}"],
        env={**clean, "ASTRIA_API_KEY": standin.api_key, **env},
        capture_output=True, text=True, timeout=60, check=False)


def test_the_ca_ssl_cert_file_names_is_trusted(
    standin: StandIn, front: tuple[TlsFront, Path], tmp_path: Path
) -> None:
    server, ca = front
    standin.add_tune(1, [], [standin.add_file("a", b"a" * 2000)])
    done = fetch(standin, server, tmp_path / "archive", SSL_CERT_FILE=str(ca))
    assert done.returncode == 0, done.stderr
    assert check_manifest(tmp_path / "archive" / "manifests" / "1.json")["assets"][0][
        "status"] == "ok"


def test_an_untrusted_certificate_is_one_line_naming_ssl_cert_file(
    standin: StandIn, front: tuple[TlsFront, Path], tmp_path: Path
) -> None:
    server, _ = front
    standin.add_tune(1, [], [standin.add_file("a", b"a" * 2000)])
    done = fetch(standin, server, tmp_path / "archive", SSL_CERT_FILE=str(tmp_path / "none"))
    assert done.returncode == 4, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"tune-archiver: error: the certificate of localhost:{server.port} "
                           "is not trusted (")
    assert "SSL_CERT_FILE" in line
    assert standin.requests == []
