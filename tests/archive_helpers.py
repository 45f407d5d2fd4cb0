"""Helpers for the tests of verify, list, export and gc: archives built by a real fetch."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.helpers import run_fetch, sha256
from tests.loop_thread import SHUTDOWN_POLL
from tests.standin import StandIn
from tune_archiver.cli.main import main


@dataclass
class Served:
    """The bytes a stand-in tune serves, in manifest order."""

    checkpoints: list[bytes]
    images: list[bytes]

    @property
    def all(self) -> list[bytes]:
        return self.checkpoints + self.images


def add_tune(
    standin: StandIn,
    tune_id: int,
    images: int = 2,
    shared: tuple[bytes, ...] = (),
    **fields: Any,
) -> Served:
    """A tune with one checkpoint and `images` training images of its own, then `shared` ones.

    Names carry extensions (ckpt-1.safetensors, img-1-0.jpg) since the stand-in serves
    everything as application/octet-stream. A shared image is served under a name of
    this tune but holds the same bytes, so both tunes reference one blob.
    """
    checkpoint = os.urandom(20_000 + tune_id)
    pictures = [os.urandom(3_000 + 100 * tune_id + i) for i in range(images)] + list(shared)
    ckpt_url = standin.add_file(f"ckpt-{tune_id}.safetensors", checkpoint)
    urls = [standin.add_file(f"img-{tune_id}-{i}.jpg", data) for i, data in enumerate(pictures)]
    standin.add_tune(tune_id, [ckpt_url], urls, **fields)
    return Served([checkpoint], pictures)


def archived(standin: StandIn, archive: Path, *tune_ids: int) -> None:
    """Fetch the tunes into the archive; every one must succeed."""
    assert run_fetch(standin, archive, *(str(i) for i in tune_ids)) == 0


def two_tunes_sharing_an_image(standin: StandIn, archive: Path) -> tuple[Served, Served]:
    """Tunes 1 and 2 archived; each has a checkpoint, two images, and one image they share."""
    shared = os.urandom(4_000)
    one = add_tune(standin, 1, shared=(shared,))
    two = add_tune(standin, 2, shared=(shared,))
    archived(standin, archive, 1, 2)
    return one, two


@dataclass
class Ran:
    """What one command printed, and its exit code."""

    code: int
    out: str
    err: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("tune-archiver: error")]


def cli(capsys: pytest.CaptureFixture[str], *argv: str, now: datetime | None = None) -> Ran:
    """Run `tune-archiver ARGV` in-process (its clock fixed at `now` if given); what it printed."""
    capsys.readouterr()  # forget what earlier steps printed
    code = main(list(argv)) if now is None else main(list(argv), clock=lambda: now)
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)


def manifest_of(archive: Path, tune_id: int) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((archive / "manifests" / f"{tune_id}.json").read_text())
    return document


def write_manifest(archive: Path, tune_id: int, document: dict[str, Any]) -> None:
    (archive / "manifests" / f"{tune_id}.json").write_text(json.dumps(document))


def key_of(data: bytes) -> str:
    """The archive-relative path of the blob holding these bytes."""
    digest = sha256(data)
    return f"objects/sha256/{digest[:2]}/{digest}"


def writable(path: Path) -> Path:
    """Make a committed (read-only) blob writable before the test damages it."""
    path.chmod(0o644)
    return path


def flip_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(writable(path).read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def everything_under(root: Path, *skip: Path) -> set[Path]:
    """Every file and folder under root, except those under the `skip` folders."""
    return {
        path for path in root.rglob("*")
        if not any(path == s or path.is_relative_to(s) for s in skip)
    }


def start(archive: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m tune_archiver ARGV --archive ARCHIVE` in a subprocess, pipes captured."""
    command = [sys.executable, "-m", "tune_archiver", *argv, "--archive", str(archive)]
    return subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def first_error_line(process: subprocess.Popen[str], limit: float = 20.0) -> str:
    """The first line the process writes on stderr; "" if it writes none within `limit` s."""
    assert process.stderr is not None
    ready, _, _ = select.select([process.stderr], [], [], limit)
    return process.stderr.readline() if ready else ""


def stop(process: subprocess.Popen[str]) -> None:
    """Kill the process if it still runs (a failed test must not leave it behind)."""
    if process.poll() is None:
        process.kill()
    process.communicate()


class Gate:
    """An HTTP host that holds every request until the test opens it, then redirects it.

    The stand-in can stall a file only until the client's read timeout; this holds a
    download for exactly as long as the test wants, and `arrived` says it has begun.
    """

    def __init__(self, target: str) -> None:
        self.arrived = threading.Event()
        self._open = threading.Event()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gate.arrived.set()
                gate._open.wait(60)
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": SHUTDOWN_POLL}, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/files/{name}"

    def open(self) -> None:
        """Let held and later requests through."""
        self._open.set()

    def __enter__(self) -> Gate:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.open()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
