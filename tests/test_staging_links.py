"""The staging folders (a local archive's tmp/, an S3 archive's under $XDG_CACHE_HOME or
$TUNE_ARCHIVER_STAGING): fetch and gc never go through a link planted at a folder the
tool makes, and gc removes only what the tool left there."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.archive_helpers import add_tune, archived, cli
from tests.s3server import (  # noqa: F401  (fixtures)
    MotoS3,
    aws_env_fixture,
    moto_s3_fixture,
    plain_client,
)
from tests.standin import StandIn
from tests.test_s3_archive import S3Archive, tune_archiver
from tests.test_s3_archive import fetch as s3_fetch
from tune_archiver.download.staging import Staging, staging_for

LATER = datetime.now(UTC) + timedelta(days=3)  # the clock gc is told: every partial is stale
A_PARTIAL = "a" * 40 + ".part"  # named as this tool names one


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A private folder of the user's, holding old files, one named as a partial is."""
    folder = tmp_path / "victim"
    folder.mkdir(mode=0o700)
    old = (datetime.now(UTC) - timedelta(days=30)).timestamp()
    for name in ("notes.txt", A_PARTIAL):
        (folder / name).write_text("mine")
        os.utime(folder / name, (old, old))
    return folder


def untouched(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def bucket(moto_s3: MotoS3) -> S3Archive:
    client = plain_client(moto_s3.endpoint)
    name = f"archive-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return S3Archive(f"s3://{name}/backups", moto_s3.endpoint, name, "backups", client)


@pytest.fixture
def cached(moto_s3: MotoS3, aws_env: None, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Archive]:
    """A fresh bucket whose staging is the default one, under $XDG_CACHE_HOME."""
    monkeypatch.delenv("TUNE_ARCHIVER_STAGING", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    s3 = bucket(moto_s3)
    yield s3
    s3.client.close()


def test_gc_never_goes_through_a_link_planted_at_tmp(
    standin: StandIn, archive: Path, victim: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tmp/ replaced by a link to a folder outside: gc refuses it on one line and
    removes nothing there, not even a file named as a partial."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    os.rmdir(archive / "tmp")
    (archive / "tmp").symlink_to(victim)
    ran = cli(capsys, "gc", "--archive", str(archive), now=LATER)
    assert ran.code == 2
    assert any("symbolic link" in line for line in ran.errors)
    assert untouched(victim) == [A_PARTIAL, "notes.txt"]


def test_gc_never_goes_through_a_link_planted_at_the_s3_staging_folder(
    standin: StandIn, cached: S3Archive, victim: Path
) -> None:
    """The default S3 staging folder replaced by a link: gc removes nothing through it."""
    standin.add_tune(1, [], [standin.add_file("img.jpg", b"\xff\xd8\xff" + os.urandom(3000))])
    assert s3_fetch(standin, cached, "1") == 0
    staging = staging_for(cached.url).directory
    os.rmdir(staging)
    staging.symlink_to(victim)
    assert tune_archiver(cached, "gc", clock=lambda: LATER) == 2
    assert untouched(victim) == [A_PARTIAL, "notes.txt"]


def test_fetch_never_makes_its_s3_staging_through_a_link_planted_in_the_cache(
    standin: StandIn, cached: S3Archive, victim: Path, tmp_path: Path
) -> None:
    """$XDG_CACHE_HOME/tune-archiver planted as a link: the run refuses it and writes
    nothing through it."""
    (tmp_path / "xdg").mkdir()
    (tmp_path / "xdg" / "tune-archiver").symlink_to(victim)
    standin.add_tune(1, [], [standin.add_file("img.jpg", b"\xff\xd8\xff" + os.urandom(3000))])
    assert s3_fetch(standin, cached, "1") == 2
    assert untouched(victim) == [A_PARTIAL, "notes.txt"]


def test_gc_removes_from_a_chosen_staging_folder_only_what_the_tool_left(
    standin: StandIn, moto_s3: MotoS3, aws_env: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$TUNE_ARCHIVER_STAGING may name a folder that holds the user's files too: gc
    removes a stale partial the tool left there, and nothing else."""
    chosen = tmp_path / "chosen"
    chosen.mkdir(mode=0o700)
    (chosen / "notes.txt").write_text("mine")
    monkeypatch.setenv("TUNE_ARCHIVER_STAGING", str(chosen))
    s3 = bucket(moto_s3)
    standin.add_tune(1, [], [standin.add_file("img.jpg", b"\xff\xd8\xff" + os.urandom(3000))])
    assert s3_fetch(standin, s3, "1") == 0
    (chosen / A_PARTIAL).write_bytes(b"left by a killed run")
    old = (datetime.now(UTC) - timedelta(days=30)).timestamp()
    for name in ("notes.txt", A_PARTIAL):
        os.utime(chosen / name, (old, old))
    assert tune_archiver(s3, "gc", clock=lambda: LATER) == 0
    assert untouched(chosen) == ["notes.txt"]
    s3.client.close()


def test_gc_takes_a_chosen_staging_folder_that_is_a_link(
    standin: StandIn, moto_s3: MotoS3, aws_env: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$TUNE_ARCHIVER_STAGING is the user's to make a link (to a bigger disk, say): fetch
    stages through it, and gc sweeps it."""
    real = tmp_path / "big-disk" / "staging"
    real.mkdir(parents=True, mode=0o700)
    (tmp_path / "staging").symlink_to(real)
    monkeypatch.setenv("TUNE_ARCHIVER_STAGING", str(tmp_path / "staging"))
    s3 = bucket(moto_s3)
    standin.add_tune(1, [], [standin.add_file("img.jpg", b"\xff\xd8\xff" + os.urandom(3000))])
    assert s3_fetch(standin, s3, "1") == 0
    (real / A_PARTIAL).write_bytes(b"left by a killed run")
    old = (datetime.now(UTC) - timedelta(days=30)).timestamp()
    os.utime(real / A_PARTIAL, (old, old))
    assert tune_archiver(s3, "gc", clock=lambda: LATER) == 0
    assert untouched(real) == []
    s3.client.close()


def test_a_partial_committed_while_gc_lists_the_folder_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 archive has no lock: a fetch may commit (and remove) a partial while gc
    lists the shared staging folder. The vanished file is passed over, no error."""
    folder = tmp_path / "staging"
    folder.mkdir(mode=0o700)
    (folder / A_PARTIAL).write_bytes(b"x" * 100)
    real_scandir = os.scandir

    class Racing:
        """os.scandir of a folder whose partial is committed as the listing reaches it."""

        def __init__(self, fd: int) -> None:
            self._inner, self._fd = real_scandir(fd), fd

        def __enter__(self) -> Racing:
            return self

        def __exit__(self, *exc: object) -> None:
            self._inner.close()

        def __iter__(self) -> Iterator[os.DirEntry[str]]:
            for entry in self._inner:
                if entry.name == A_PARTIAL:
                    os.unlink(entry.name, dir_fd=self._fd)
                yield entry

    monkeypatch.setattr(os, "scandir", lambda fd: Racing(fd))
    staging = Staging(folder, made=())
    assert asyncio.run(staging.remove_stale(LATER)) == []


def test_repair_never_writes_a_manifest_through_a_link_planted_at_tmp(
    standin: StandIn, archive: Path, tmp_path: Path, victim: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """verify --repair mends a manifest: with tmp/ a link to a folder outside, the
    manifest's temp copy is not written there (the folder is not touched); the repair
    is refused on one line, the manifest kept."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    document = json.loads((archive / "manifests" / "1.json").read_text())
    document["assets"][1]["path"] = "objects/sha256/00/elsewhere"  # an entry-only problem
    (archive / "manifests" / "1.json").write_text(json.dumps(document))
    shutil.rmtree(archive / "tmp")
    (archive / "tmp").symlink_to(victim)
    before = victim.stat().st_mtime_ns
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 2  # refused before any write, as fetch refuses it
    assert "Traceback" not in ran.err
    assert any("tmp: it is a symbolic link" in line for line in ran.errors)
    assert victim.stat().st_mtime_ns == before  # nothing was made, or removed, in it
    assert untouched(victim) == sorted(["notes.txt", A_PARTIAL])
    assert json.loads((archive / "manifests" / "1.json").read_text()) == document
