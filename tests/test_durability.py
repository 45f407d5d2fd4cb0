"""What a power cut may cost: a blob folder's rename is fsynced before any manifest
names the blob, once per folder rather than once per file."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import check_manifest
from tests.helpers import blob_file, refuse_folder_fsyncs, run_fetch
from tests.standin import StandIn
from tune_archiver.cli.main import main
from tune_archiver.download.staging import staging_for
from tune_archiver.store import aside, files, local


def test_blob_folders_are_synced_once_each_before_the_manifest(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every folder a blob was renamed into is fsynced before the manifest is written;
    120 images into a handful of folders cost one fsync per folder, not per image."""
    archive = tmp_path / "archive"
    images = [os.urandom(2000 + i) for i in range(120)]
    standin.add_tune(1, [], [standin.add_file(f"img{i}.jpg", d) for i, d in enumerate(images)])
    events: list[tuple[str, str]] = []
    real_sync, real_replace = files.sync_dir, os.replace

    def sync_dir(directory: Path) -> None:
        events.append(("sync", directory.name))
        real_sync(directory)

    def replace(source: str | Path, target: str | Path, **dir_fds: int) -> None:
        if "src_dir_fd" in dir_fds:  # a manifest, from tmp/ into manifests/
            events.append(("manifest", "manifests"))
        elif dir_fds:  # a blob, renamed into its fan-out folder's descriptor
            events.append(("blob", str(target)[:2]))
        else:
            kind = "manifest" if Path(target).parent.name == "manifests" else "blob"
            events.append((kind, Path(target).parent.name))
        real_replace(source, target, **dir_fds)

    monkeypatch.setattr(files, "sync_dir", sync_dir)
    monkeypatch.setattr(local.os, "replace", replace)
    assert run_fetch(standin, archive, "1") == 0
    folders = {blob_file(archive, d).parent.name for d in images}
    manifest_at = events.index(("manifest", "manifests"))
    synced_before = [name for kind, name in events[:manifest_at] if kind == "sync"]
    assert set(synced_before) >= folders  # each blob's rename is durable first
    assert len([n for n in synced_before if n in folders]) == len(folders)  # once each
    assert len(folders) < len(images)  # 120 digests share some of 256 folders
    check_manifest(archive / "manifests" / "1.json")


def test_a_new_blob_folders_own_name_is_synced_before_the_manifest(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob's first fan-out folder is new: objects/sha256, which took its name, is
    fsynced after it was made and before the manifest names the blob, or a power cut
    could keep the manifest and lose the folder."""
    archive = tmp_path / "archive"
    standin.add_tune(1, [], [standin.add_file("img.jpg", os.urandom(3000))])
    events: list[str] = []
    real_sync, real_mkdir, real_replace_file = files.sync_dir, os.mkdir, local.replace_file

    def sync_dir(directory: Path) -> None:
        events.append(f"sync {directory.name}")
        real_sync(directory)

    def mkdir(path: str | Path, *args: object, **kwargs: object) -> None:
        events.append(f"mkdir {Path(path).name}")
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    def replace_file(root: Path, key: str, data: bytes, staging: str) -> None:
        events.append("manifest")  # its rename, after the folders' syncs
        real_replace_file(root, key, data, staging)

    monkeypatch.setattr(files, "sync_dir", sync_dir)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(local, "replace_file", replace_file)
    assert run_fetch(standin, archive, "1") == 0
    [fan_out] = [e for e in events if e.startswith("mkdir ") and len(e) == len("mkdir ab")]
    made, manifest = events.index(fan_out), events.index("manifest")
    assert "sync sha256" in events[made:manifest]


def test_a_blob_folder_another_run_made_has_its_name_synced_before_the_manifest(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blob's fan-out folder is there already, made by another run that has not yet
    fsynced objects/sha256 (it may never: stopped, or its file failed): this run's
    manifest names a blob in it, so objects/sha256 is fsynced first here too."""
    archive = tmp_path / "archive"
    data = os.urandom(3000)
    standin.add_tune(1, [], [standin.add_file("img.jpg", data)])
    folder = blob_file(archive, data).parent  # the other run's mkdir, not yet synced
    for made in (archive, archive / "objects", folder.parent, folder):
        made.mkdir(mode=0o700)
    events: list[str] = []
    real_sync, real_replace_file = files.sync_dir, local.replace_file

    def sync_dir(directory: Path) -> None:
        events.append(f"sync {directory.name}")
        real_sync(directory)

    def replace_file(root: Path, key: str, data: bytes, staging: str) -> None:
        events.append("manifest")
        real_replace_file(root, key, data, staging)

    monkeypatch.setattr(files, "sync_dir", sync_dir)
    monkeypatch.setattr(local, "replace_file", replace_file)
    assert run_fetch(standin, archive, "1") == 0
    assert blob_file(archive, data).read_bytes() == data
    assert "sync sha256" in events[:events.index("manifest")]


def test_a_blob_folders_name_is_synced_once_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three blobs renamed into one fan-out folder, each before a manifest: the folder is
    fsynced each time, objects/sha256 (for the folder's name) the first time only, not
    once per manifest (20,000 tunes would pay 20,000 fsyncs more)."""
    folder = tmp_path / "objects" / "sha256" / "ab"
    folder.mkdir(parents=True)
    events: list[str] = []
    monkeypatch.setattr(files, "sync_dir", lambda directory: events.append(directory.name))
    syncs = files.DirSyncs()
    for _ in range(3):
        syncs.add(folder, named=True)
        syncs.sync()
    assert events == ["sha256", "ab", "ab", "ab"]  # sorted: the parent first


def test_a_new_archives_folders_have_their_names_synced_before_the_first_manifest(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch into a new archive makes its folders: the folder above the archive (naming
    it), the archive (naming objects/ and manifests/) and objects/ (naming sha256) are
    fsynced before the first manifest names a blob, or a power cut could keep the
    manifest and its blob's folder but lose the name that leads to them."""
    archive = tmp_path / "new" / "archive"
    standin.add_tune(1, [], [standin.add_file("img.jpg", os.urandom(3000))])
    events: list[Path] = []
    real_fsync, real_replace_file = os.fsync, local.replace_file

    def fsync(fd: int) -> None:
        if os.path.isdir(where := os.readlink(f"/proc/self/fd/{fd}")):
            events.append(Path(where))
        real_fsync(fd)

    def replace_file(root: Path, key: str, data: bytes, staging: str) -> None:
        events.append(Path("manifest"))  # its rename, after the folders' syncs
        real_replace_file(root, key, data, staging)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(local, "replace_file", replace_file)
    assert run_fetch(standin, archive, "1") == 0
    synced_before = set(events[:events.index(Path("manifest"))])
    assert {tmp_path, archive.parent, archive, archive / "objects"} <= synced_before


def test_a_blob_put_back_into_a_new_fan_out_folder_has_that_folders_name_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify --repair puts a whole blob found at a wrong place back at its own, whose
    fan-out folder is gone: the folder is made, and objects/sha256, which took its name,
    is fsynced. Only the blob's folder and the stray one were: after a power cut the
    only copy of a tune gone upstream could be named by neither."""
    data = os.urandom(3000)
    digest = hashlib.sha256(data).hexdigest()
    objects = tmp_path / "objects" / "sha256"
    (objects / "zz").mkdir(parents=True)
    (objects / "zz" / digest).write_bytes(data)
    synced: list[Path] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.isdir(where := os.readlink(f"/proc/self/fd/{fd}")):
            synced.append(Path(where))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    key = f"objects/sha256/{digest[:2]}/{digest}"
    assert aside.put_back(tmp_path, f"objects/sha256/zz/{digest}", key, digest,
                          "tmp/damaged", f"{digest}-stamp") == []
    assert (tmp_path / key).read_bytes() == data
    assert objects in synced


def test_a_forgotten_manifests_removal_is_synced_before_forget_ends(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """forget removes the manifest and gc then its blobs: manifests/ is fsynced once the
    manifest is gone, or a power cut could bring back a manifest naming removed blobs
    (verify would then call a tune the user forgot damaged)."""
    archive = tmp_path / "archive"
    standin.add_tune(1, [], [standin.add_file("img.jpg", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 0
    manifest = archive / "manifests" / "1.json"
    synced_without: list[bool] = []  # at each fsync of manifests/: was the manifest gone?
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")) == archive / "manifests":
            synced_without.append(not manifest.exists())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["forget", "1", "--archive", str(archive), "-q"]) == 0
    assert not manifest.exists()
    assert True in synced_without


def test_an_s3_archives_staging_is_made_without_syncing_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 archive's staging in ~/.cache is never durable (its partials are uploaded,
    never fsynced): its folders are made without an fsync, so a home on a filesystem
    that refuses fsync of a folder (EINVAL: some FUSE and network ones) can still fetch."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    refuse_folder_fsyncs(monkeypatch)
    staging = staging_for("s3://bucket/prefix")
    asyncio.run(staging.prepare())
    assert staging.directory.is_dir()
