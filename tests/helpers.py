"""Small helpers for tests that run the command line against the stand-in."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.standin import StandIn
from tune_archiver.cli.main import main


@dataclass
class Sleeps:
    """An injected sleep: records each wait between retries and returns at once."""

    waits: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def run_fetch(
    standin: StandIn,
    archive: Path,
    *args: str,
    sleep: Sleeps | None = None,
    key: str | None = None,
    clock: Callable[[], datetime] | None = None,
) -> int:
    """`tune-archiver fetch ARGS` against the stand-in, with the stand-in's key."""
    os.environ["ASTRIA_API_KEY"] = standin.api_key if key is None else key
    return main(
        ["fetch", *args, "--archive", str(archive), "--api-url", standin.api_url],
        sleep=sleep or Sleeps(),
        clock=clock or (lambda: datetime.now(UTC)),
    )


def refuse_folder_fsyncs(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.fsync refusing every folder (EINVAL), as some FUSE and network filesystems do;
    files are synced as ever."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


NOBODY = 65534  # another user's uid


def others_link(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A link `name`, of another user, planted in a shared folder (sticky, 1777) and
    leading to a folder of theirs: (the link, their folder). Only root can give a link
    to another user: the test is skipped for anyone else."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a link to another user")
    shared, theirs = tmp_path / "shared", tmp_path / "theirs"
    shared.mkdir(mode=0o1777)
    theirs.mkdir(mode=0o777)
    (shared / name).symlink_to(theirs)
    os.lchown(shared / name, NOBODY, NOBODY)
    return shared / name, theirs


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_file(archive: Path, data: bytes) -> Path:
    digest = sha256(data)
    return archive / "objects" / "sha256" / digest[:2] / digest


def stored_blobs(archive: Path) -> list[Path]:
    return sorted(p for p in (archive / "objects" / "sha256").glob("*/*") if p.is_file())


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` ("64k", "1m") mounted at `mount` for the block: a disk that
    really fills up. Skips the test where none can be mounted (root on Linux only)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
