"""`gc`: unreferenced blobs and day-old partials go; a blob a manifest or a fetch needs never."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.archive_helpers import (
    Gate,
    Served,
    add_tune,
    archived,
    cli,
    first_error_line,
    key_of,
    start,
    stop,
    two_tunes_sharing_an_image,
)
from tests.conftest import check_manifest
from tests.helpers import blob_file, run_fetch, sha256, stored_blobs
from tests.standin import StandIn
from tests.test_process import wait_until
from tune_archiver.commands.gc import collect
from tune_archiver.download.staging import staging_for
from tune_archiver.layout import blob_key
from tune_archiver.store import locks as store_module
from tune_archiver.store.local import LocalStore

DAY = 86400
_REMOVED = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["path", "bytes"],
        "properties": {
            "path": {"type": "string", "description": "relative to the archive"},
            "bytes": {"type": "integer", "minimum": 0},
        },
    },
}
# The documented shape of `gc --json`.
GC_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["dry_run", "blobs", "partials", "bytes", "failed"],
    "properties": {
        "dry_run": {"type": "boolean"},
        "failed": {"type": "array", "items": {"type": "string"},
                   "description": "why a blob or partial could not be removed"},
        "blobs": {**_REMOVED, "description": "unreferenced blobs removed (or that would be)"},
        "partials": {**_REMOVED, "description": "stale files in tmp/ removed (or would be)"},
        "bytes": {"type": "integer", "minimum": 0, "description": "the total freed"},
    },
}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def orphaned(standin: StandIn, archive: Path) -> tuple[Served, Served]:
    """Tunes 1 and 2 archived, sharing one image; then tune 2's manifest deleted."""
    one, two = two_tunes_sharing_an_image(standin, archive)
    (archive / "manifests" / "2.json").unlink()
    return one, two


def only_in(served: Served, other: Served) -> dict[str, int]:
    """Blob key -> size of each file `served` has and `other` does not."""
    return {key_of(data): len(data) for data in served.all if data not in other.all}


def kib(count: int) -> str:
    assert 1024 <= count < 1024**2
    return f"{count / 1024:.1f} KiB"


def partial(archive: Path, name: str, size: int, age: float = 0.0) -> list[Path]:
    """A partial download tmp/NAME.part and its sidecar, last written `age` seconds ago."""
    part, sidecar = archive / "tmp" / f"{name}.part", archive / "tmp" / f"{name}.json"
    part.write_bytes(os.urandom(size))
    sidecar.write_text(json.dumps({"url": f"http://example.invalid/{name}"}))
    when = time.time() - age
    for path in (part, sidecar):
        os.utime(path, (when, when))
    return [part, sidecar]


def gc_json(capsys: pytest.CaptureFixture[str], archive: Path, *args: str) -> dict[str, Any]:
    ran = cli(capsys, "gc", "--archive", str(archive), "--json", *args)
    assert ran.code == 0, ran.err
    report: dict[str, Any] = json.loads(ran.out)
    jsonschema.Draft202012Validator(GC_SCHEMA).validate(report)
    return report


def test_dry_run_lists_unreferenced_blobs_and_removes_nothing(
    archive: Path, orphaned: tuple[Served, Served], capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run names each blob only tune 2 used, with its size and the total; all stay."""
    one, two = orphaned
    before = stored_blobs(archive)
    ran = cli(capsys, "gc", "--dry-run", "--archive", str(archive))
    assert (ran.code, ran.err) == (0, "")
    *lines, summary = ran.out.splitlines()
    doomed = only_in(two, one)
    assert sorted(lines) == sorted(f"would remove {key} ({kib(size)})"
                                   for key, size in doomed.items())
    assert summary == (f"gc would remove {len(doomed)} unreferenced blobs and 0 stale partial "
                       f"files: {kib(sum(doomed.values()))}")
    assert stored_blobs(archive) == before


def test_gc_removes_exactly_the_unreferenced_blobs(
    archive: Path, orphaned: tuple[Served, Served], capsys: pytest.CaptureFixture[str]
) -> None:
    """gc removes the blobs only tune 2 used, keeps all of tune 1's (the shared one too)."""
    one, two = orphaned
    ran = cli(capsys, "gc", "--archive", str(archive))
    assert ran.code == 0
    doomed = only_in(two, one)
    assert sorted(ran.out.splitlines()[:-1]) == sorted(
        f"removed {key} ({kib(size)})" for key, size in doomed.items()
    )
    assert stored_blobs(archive) == sorted(blob_file(archive, data) for data in set(one.all))
    assert blob_file(archive, two.images[-1]).exists()  # shared with tune 1
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0
    assert gc_json(capsys, archive) == {"dry_run": False, "blobs": [], "partials": [],
                                        "bytes": 0, "failed": []}


def test_stale_partials_go_and_fresh_ones_stay(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .part and its sidecar untouched for two days are removed; ones written now are kept."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    stale = partial(archive, "a" * 40, 5_000, age=2 * DAY)
    fresh = partial(archive, "b" * 40, 6_000)
    listed: list[dict[str, Any]] = [{"path": f"tmp/{p.name}", "bytes": p.stat().st_size}
                                    for p in sorted(stale)]
    would = gc_json(capsys, archive, "--dry-run")
    assert would == {"dry_run": True, "blobs": [], "partials": listed,
                     "bytes": sum(p["bytes"] for p in listed), "failed": []}
    assert all(p.exists() for p in stale)
    done = gc_json(capsys, archive)
    assert done == {**would, "dry_run": False}
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in fresh)
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_a_photo_copy_a_killed_retrain_left_goes_after_a_day(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retrain killed while it read a photo back leaves tmp/retrain-XXXXXXXX/blob, a
    private photo: gc removes it once a day old, and never what looks like it but is not
    ours (a fresh copy, a link to a folder elsewhere, a name of another shape)."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    when = time.time() - 2 * DAY

    def copy_folder(name: str, age_it: bool = True) -> Path:
        folder = archive / "tmp" / name
        folder.mkdir(mode=0o700)
        (folder / "blob").write_bytes(b"a photo" * 100)
        if age_it:
            for path in (folder / "blob", folder):
                os.utime(path, (when, when))
        return folder

    stale = copy_folder("retrain-k2x_9q0a")
    fresh = copy_folder("retrain-7bbbbbbb", age_it=False)
    theirs = copy_folder("retrain-mine")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "blob").write_bytes(b"not ours")
    link = archive / "tmp" / "retrain-linkxxxx"
    link.symlink_to(outside)
    os.utime(link, (when, when), follow_symlinks=False)
    listed = [{"path": "tmp/retrain-k2x_9q0a", "bytes": 700}]
    assert gc_json(capsys, archive, "--dry-run")["partials"] == listed
    assert stale.exists()
    assert gc_json(capsys, archive)["partials"] == listed
    assert not stale.exists()
    assert all((folder / "blob").exists() for folder in (fresh, theirs, outside))
    assert link.is_symlink()


@pytest.fixture
def locked_partial(standin: StandIn, archive: Path) -> Iterator[list[Path]]:
    """A two-day-old partial that this process holds flock(LOCK_EX) on, as a download would."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    paths = partial(archive, "c" * 40, 7_000, age=2 * DAY)
    fd = os.open(paths[0], os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield paths
    finally:
        os.close(fd)


def test_locked_stale_partial_is_kept(
    archive: Path, locked_partial: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A stale .part another process holds locked survives gc, and so does its sidecar."""
    contents = [p.read_bytes() for p in locked_partial]
    assert cli(capsys, "gc", "--archive", str(archive)).code == 0
    assert [p.read_bytes() for p in locked_partial] == contents


def test_locked_stale_partial_is_not_reported_removed(
    archive: Path, locked_partial: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """gc does not say it removed, nor count the bytes of, a partial it had to keep."""
    report = gc_json(capsys, archive)
    assert all(p.exists() for p in locked_partial)
    assert (report["partials"], report["bytes"]) == ([], 0)


def test_sidecar_of_a_fresh_partial_is_not_reported_removed(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A day-old sidecar beside a .part written now is kept, and gc does not claim it removed it."""
    # A resumed download appends to its .part without rewriting the sidecar: this is the
    # state of any download resumed since yesterday.
    add_tune(standin, 1)
    archived(standin, archive, 1)
    part, sidecar = partial(archive, "f" * 40, 3_000)
    old = time.time() - 2 * DAY
    os.utime(sidecar, (old, old))
    report = gc_json(capsys, archive)
    assert part.exists()
    assert sidecar.exists()
    assert (report["partials"], report["bytes"]) == ([], 0)


@pytest.mark.parametrize("as_json", [False, True])
def test_gc_stopped_part_way_says_the_blobs_it_removed(
    orphaned: tuple[Served, Served], archive: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], as_json: bool,
) -> None:
    """A SIGTERM (cron's timeout) after gc removed a blob says that blob, a line of its
    own or in --json beside "interrupted", exit 143: it said only 'stopped by SIGTERM',
    and the blobs gone unsaid."""
    real, calls = LocalStore.delete_blob, []

    async def stopped_after_one(self: LocalStore, sha256: str, older_than: Any = None) -> bool:
        calls.append(sha256)
        if len(calls) == 2:  # the first removed: the stop comes before the second
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.Event().wait()  # until the stop cancels gc
        return await real(self, sha256, older_than)

    monkeypatch.setattr(LocalStore, "delete_blob", stopped_after_one)
    one, two = orphaned
    candidates = only_in(two, one)
    ran = cli(capsys, "gc", "--archive", str(archive), *(["--json"] if as_json else []))
    assert ran.code == 128 + signal.SIGTERM
    gone = [key for key in candidates if not (archive / key).exists()]
    assert len(gone) == 1
    if as_json:
        document = json.loads(ran.out)
        assert document["interrupted"] is True
        assert document["blobs"] == [{"path": gone[0], "bytes": candidates[gone[0]]}]
    else:
        assert f"removed {gone[0]} ({kib(candidates[gone[0]])})" in ran.out.splitlines()
    assert "stopped by SIGTERM" in ran.err


def test_a_dry_run_lists_no_partial_or_sidecar_that_gc_keeps(
    archive: Path, locked_partial: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run lists exactly what gc removes: neither a stale partial a download holds
    (with its sidecar), nor a day-old sidecar beside a partial resumed since; a stale
    pair no one holds is listed, and removed."""
    part, sidecar = partial(archive, "f" * 40, 3_000)
    old = time.time() - 2 * DAY
    os.utime(sidecar, (old, old))
    stale = partial(archive, "a" * 40, 2_000, age=2 * DAY)
    dry = gc_json(capsys, archive, "--dry-run")
    listed = {"tmp/" + p.name for p in stale}
    assert {found["path"] for found in dry["partials"]} == listed
    real = gc_json(capsys, archive)
    assert (real["partials"], real["bytes"]) == (dry["partials"], dry["bytes"])
    assert all(p.exists() for p in [*locked_partial, part, sidecar])
    assert not any(p.exists() for p in stale)


@pytest.mark.parametrize("dry_run", [False, True])
def test_unreadable_manifest_stops_gc(
    archive: Path,
    orphaned: tuple[Served, Served],
    capsys: pytest.CaptureFixture[str],
    dry_run: bool,
) -> None:
    """With a manifest gc cannot read it exits 1 and removes nothing, blobs or partials."""
    stale = partial(archive, "d" * 40, 1_000, age=2 * DAY)
    (archive / "manifests" / "1.json").write_text('{"schema_version": 1, "assets": [')
    before = stored_blobs(archive)
    ran = cli(capsys, "gc", "--archive", str(archive), *(["--dry-run"] if dry_run else []))
    assert ran.code == 1
    assert ran.errors == ["tune-archiver: error: the manifest of tune 1 is unreadable: it is "
                          "not JSON (Expecting value: line 1 column 34 (char 33)); gc removes "
                          "nothing until it is mended: the next fetch of tune 1 sets it aside, "
                          "and the fetch after it archives the tune anew (one gone upstream, "
                          "which no fetch finds, is moved to manifests/damaged/1-0.json by "
                          "hand; never "
                          "remove it: gc would then take the "
                          "blobs it alone names)"]
    assert ran.out == ""
    assert stored_blobs(archive) == before
    assert all(p.exists() for p in stale)


def test_json_output_has_the_documented_shape(
    archive: Path, orphaned: tuple[Served, Served], capsys: pytest.CaptureFixture[str]
) -> None:
    """--json matches GC_SCHEMA: removed blobs and partials with their bytes, and the total."""
    one, two = orphaned
    stale: list[dict[str, Any]] = [
        {"path": f"tmp/{p.name}", "bytes": p.stat().st_size}
        for p in sorted(partial(archive, "e" * 40, 2_500, age=2 * DAY))
    ]
    report = gc_json(capsys, archive)
    doomed = only_in(two, one)
    assert report["dry_run"] is False
    assert sorted((b["path"], b["bytes"]) for b in report["blobs"]) == sorted(doomed.items())
    assert report["partials"] == stale
    assert report["bytes"] == sum(doomed.values()) + sum(p["bytes"] for p in stale)


def lock_is_held(archive: Path) -> bool:
    """True when some other open file holds the archive lock (we cannot take it exclusively)."""
    fd = os.open(archive / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_gc_waits_for_a_running_fetch(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gc started mid-fetch says it waits, takes none of the fetch's blobs, then does its work."""
    # The fetch will have stored its images but not yet its manifest (the checkpoint is
    # held at a gate), so a gc that did not wait would take the images as unreferenced.
    old = add_tune(standin, 2)
    archived(standin, archive, 2)
    (archive / "manifests" / "2.json").unlink()
    checkpoint = os.urandom(50_000)
    target = standin.add_file("ckpt-1.safetensors", checkpoint)
    images = [os.urandom(3_000 + i) for i in range(3)]
    urls = [standin.add_file(f"img-1-{i}.jpg", data) for i, data in enumerate(images)]
    with Gate(target) as gate:
        standin.add_tune(1, [gate.url("ckpt-1.safetensors")], urls)
        fetch = start(archive, "fetch", "1", "--api-url", standin.api_url,
                      env={"ASTRIA_API_KEY": standin.api_key})
        gc = None
        try:
            assert gate.arrived.wait(20), "the checkpoint's download never began"
            wait_until(lambda: all(blob_file(archive, d).exists() for d in images),
                       "the fetch's images committed")
            assert not (archive / "manifests" / "1.json").exists()
            gc = start(archive, "gc", "--json")
            assert "waiting: a fetch, forget or verify --repair is running" in first_error_line(gc)
            assert lock_is_held(archive)
            assert gc.poll() is None
            assert all(blob_file(archive, d).exists() for d in images)
            gate.open()
            _, fetch_err = fetch.communicate(timeout=30)
            assert fetch.returncode == 0, fetch_err
            gc_out, gc_err = gc.communicate(timeout=30)
            assert gc.returncode == 0, gc_err
        finally:
            stop(fetch)
            if gc is not None:
                stop(gc)
    removed = {blob["path"] for blob in json.loads(gc_out)["blobs"]}
    assert removed == {key_of(data) for data in old.all}
    document = check_manifest(archive / "manifests" / "1.json")
    assert document["complete"] is True
    assert len(document["assets"]) == 1 + len(images)
    for entry in document["assets"]:
        assert sha256((archive / entry["path"]).read_bytes()) == entry["sha256"]
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_a_fetch_whose_lock_file_was_removed_never_names_blobs_a_gc_took_meanwhile(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The archive's lock file, taken for one a killed run left, was removed by hand
    while a fetch held it; a gc then took a new one at once and removed the images the
    fetch had stored, no manifest naming them yet. The fetch then wrote its manifest
    naming them, 'ok', exit 0: verify found them missing, and a tune expired upstream
    could never have them again. Nothing is written once the lock held is gone."""
    checkpoint = os.urandom(50_000)
    target = standin.add_file("ckpt-1.safetensors", checkpoint)
    images = [os.urandom(3_000 + i) for i in range(3)]
    urls = [standin.add_file(f"img-1-{i}.jpg", data) for i, data in enumerate(images)]
    with Gate(target) as gate:
        standin.add_tune(1, [gate.url("ckpt-1.safetensors")], urls)
        fetch = start(archive, "fetch", "1", "--api-url", standin.api_url,
                      env={"ASTRIA_API_KEY": standin.api_key})
        try:
            assert gate.arrived.wait(20), "the checkpoint's download never began"
            wait_until(lambda: all(blob_file(archive, d).exists() for d in images),
                       "the fetch's images committed")
            (archive / "lock").unlink()
            # and the journal naming them (journal.py), as a hand clean-up of tmp/ would
            (archive / "tmp" / "1.committed").unlink()
            gc = cli(capsys, "gc", "--json", "--archive", str(archive))
            assert gc.code == 0, gc.err
            assert len(json.loads(gc.out)["blobs"]) == len(images)  # it did not wait
            gate.open()
            _, fetch_err = fetch.communicate(timeout=30)
        finally:
            stop(fetch)
    assert fetch.returncode == 1, fetch_err
    assert f"lock file {archive / 'lock'} was removed while this run held it" in fetch_err
    assert not (archive / "manifests" / "1.json").exists()
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0
    standin.add_tune(1, [target], urls)  # the next fetch archives it whole
    assert run_fetch(standin, archive, "1") == 0
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_gc_whose_lock_file_was_removed_never_takes_a_blob_a_fetch_named_meanwhile(
    standin: StandIn, archive: Path
) -> None:
    """Tune 1's manifest was lost (a killed run had stored its files, none named). gc
    listed its blobs as unreferenced; its lock file was then removed by hand, so a
    fetch of tune 1 took a new one at once, stored the same files and wrote the manifest
    naming them. gc then removed them all: the manifest said 'ok' of blobs gone."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    (archive / "manifests" / "1.json").unlink()

    class Meanwhile(LocalStore):
        async def blobs(self) -> list[Any]:
            listed = await super().blobs()
            (archive / "lock").unlink()  # taken for a killed run's, by hand
            fetch = start(archive, "fetch", "1", "--api-url", standin.api_url,
                          env={"ASTRIA_API_KEY": standin.api_key})  # not kept waiting
            _, err = fetch.communicate(timeout=60)
            assert fetch.returncode == 0, err
            return listed

    later = datetime.now(UTC) + timedelta(days=2)
    found = asyncio.run(collect(Meanwhile(archive), later, False, staging_for(archive)))
    assert found.blobs == []
    assert [f"lock file {archive / 'lock'} was removed while this run held it" in line
            for line in found.failed] == [True]
    for data in served.all:
        assert blob_file(archive, data).read_bytes() == data


def test_fetch_waits_for_gc(standin: StandIn, archive: Path) -> None:
    """A fetch started while gc holds the archive says it waits, downloads nothing, then runs."""
    served = add_tune(standin, 1)
    asyncio.run(LocalStore(archive).prepare())
    fd = os.open(archive / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as gc holds it
        fetch = start(archive, "fetch", "1", "--api-url", standin.api_url,
                      env={"ASTRIA_API_KEY": standin.api_key})
        try:
            assert "waiting: a gc, forget or verify --repair is running" in first_error_line(fetch)
            assert standin.seen("cdn") == []
            os.close(fd)  # gc is done
            fd = -1
            _, err = fetch.communicate(timeout=30)
            assert fetch.returncode == 0, err
        finally:
            stop(fetch)
    finally:
        if fd >= 0:
            os.close(fd)
    for data in served.all:
        assert blob_file(archive, data).read_bytes() == data


class FlockSpy:
    """The fcntl module as the store sees it, counting the lock requests it refuses."""

    def __init__(self, refusals: int) -> None:
        self.refused = 0
        self.enough = asyncio.Event()
        self._wanted = refusals

    def __getattr__(self, name: str) -> Any:
        return getattr(fcntl, name)

    def flock(self, fd: int, operation: int) -> None:
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            self.refused += 1
            if self.refused >= self._wanted:
                self.enough.set()
            raise


async def unreferenced_blob(store: LocalStore) -> Path:
    """A blob no manifest names, in a fresh archive."""
    await store.prepare()
    data = os.urandom(1_000)
    path = store.path(blob_key(sha256(data)))
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


async def test_collect_waits_while_a_fetch_holds_the_lock_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """collect calls `waiting`, keeps retrying and removes nothing until the shared lock goes."""
    spy = FlockSpy(refusals=3)
    monkeypatch.setattr(store_module, "fcntl", spy)
    monkeypatch.setattr(store_module, "LOCK_POLL", 0.001)
    store = LocalStore(tmp_path / "archive")
    blob = await unreferenced_blob(store)
    held, release, waited = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def fetch_holding_the_lock() -> None:
        async with store.locked(exclusive=False):
            held.set()
            await release.wait()

    holder = asyncio.create_task(fetch_holding_the_lock())
    await held.wait()
    gc = asyncio.create_task(collect(store, datetime.now(UTC), dry_run=False,
                                     staging=staging_for(store.root), waiting=waited.set))
    await asyncio.wait_for(waited.wait(), 10)
    await asyncio.wait_for(spy.enough.wait(), 10)  # refused again after saying it waits
    assert not gc.done()
    assert blob.exists()
    release.set()
    await holder
    report = await asyncio.wait_for(gc, 10)
    assert report.blobs == [(str(blob.relative_to(store.root)), 1_000)]
    assert not blob.exists()


async def test_dry_run_waits_for_a_fetch_and_lists_exactly_what_gc_would_remove(
    tmp_path: Path,
) -> None:
    """A dry run waits like gc: a blob a running fetch references by the time it ends is
    not listed as removable, so the listing is what gc would remove now."""
    store = LocalStore(tmp_path / "archive")
    blob = await unreferenced_blob(store)
    held, waited = asyncio.Event(), asyncio.Event()

    async def fetch_that_references_it() -> None:
        async with store.locked(exclusive=False):
            held.set()
            await waited.wait()  # the dry run has said it waits for us
            entry = {"kind": "checkpoint", "index": 0, "url": "https://h/x", "status": "ok",
                     "sha256": blob.name, "size": 1_000, "content_type": None,
                     "path": str(blob.relative_to(store.root))}
            document = {"schema_version": 1, "tune_id": 1, "tune": {"id": 1}, "complete": True,
                        "archived_at": "2026-11-29T00:00:00Z", "assets": [entry]}
            await store.write_manifest(1, json.dumps(document).encode())

    fetcher = asyncio.create_task(fetch_that_references_it())
    await held.wait()
    report = await asyncio.wait_for(
        collect(store, datetime.now(UTC), dry_run=True, staging=staging_for(store.root),
                waiting=waited.set),
        10,
    )
    await fetcher
    assert waited.is_set()
    assert report.blobs == []
    assert blob.exists()


def test_gc_never_removes_through_a_link_planted_at_a_fan_out_folder_while_it_runs(
    archive: Path, orphaned: tuple[Served, Served], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A fan-out folder swapped for a link to a folder outside between gc's listing and
    its removal: the file outside named as the blob is not removed through it."""
    _, two = orphaned
    doomed = blob_file(archive, two.checkpoints[0])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / doomed.name).write_bytes(b"precious")
    listed = LocalStore.blobs

    async def then_swapped(store: LocalStore) -> Any:
        found = await listed(store)
        doomed.parent.rename(tmp_path / "moved")
        doomed.parent.symlink_to(elsewhere)
        return found

    monkeypatch.setattr(LocalStore, "blobs", then_swapped)
    ran = cli(capsys, "gc", "--archive", str(archive))
    assert (elsewhere / doomed.name).read_bytes() == b"precious"
    assert "Traceback" not in ran.err
    assert any("symbolic link" in line for line in ran.errors)


def test_a_blob_the_disk_will_not_remove_stops_no_other_and_what_was_removed_is_said(
    archive: Path, orphaned: tuple[Served, Served], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One unreferenced blob whose removal the disk refuses (its folder made read-only:
    EACCES) is one error line, exit 1; the other blobs are still removed and named. gc
    stopped at it with that line alone: the blobs it had removed were never said, the
    rest never removed, and --json printed nothing."""
    one, two = orphaned
    doomed = only_in(two, one)
    stuck = sorted(doomed)[0].rsplit("/", 1)[-1]
    kept, gone = partial(archive, "a" * 40, 100, age=2 * DAY), partial(archive, "b" * 40, 200,
                                                                       age=2 * DAY)
    real_unlink = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.path.basename(path) in (stuck, kept[0].name):
            raise PermissionError(errno.EACCES, "Permission denied")
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    ran = cli(capsys, "gc", "--archive", str(archive), "--json")
    assert ran.code == 1
    assert len(ran.errors) == 2
    assert all("Permission denied" in line for line in ran.errors)
    assert stuck in ran.errors[0]
    assert f"tmp/{kept[0].name}" in ran.errors[1]
    report = json.loads(ran.out)
    jsonschema.Draft202012Validator(GC_SCHEMA).validate(report)
    assert report["failed"] == [line.removeprefix("tune-archiver: error: ")
                                for line in ran.errors]
    removed = {key: size for key, size in doomed.items() if not key.endswith(stuck)}
    assert {b["path"]: b["bytes"] for b in report["blobs"]} == removed
    assert {p["path"]: p["bytes"] for p in report["partials"]}[f"tmp/{gone[0].name}"] == 200
    assert {p["path"] for p in report["partials"]} == {f"tmp/{p.name}" for p in gone}
    assert report["bytes"] == sum(removed.values()) + sum(p["bytes"] for p in report["partials"])
    assert kept[0].exists()
    assert not any(p.exists() for p in gone)
    assert [p.name for p in stored_blobs(archive) if p.name in {k[-64:] for k in doomed}] == [
        stuck]


def test_a_leftover_folder_gc_cannot_look_into_is_one_line_never_a_traceback(
    archive: Path, orphaned: tuple[Served, Served], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A killed retrain's copy in tmp/ that cannot be opened (chmod 000, as another user
    leaves it: EACCES) made gc and gc --dry-run end in a PermissionError traceback, no
    blob removed. The dry run lists it (its size unknown, 0); gc says on one line that it
    could not remove it (exit 1) and removes the rest."""
    one, two = orphaned
    copy = archive / "tmp" / "retrain-abcdefgh"
    copy.mkdir()
    (copy / "photo.jpg").write_bytes(b"x" * 100)
    os.utime(copy, (time.time() - 2 * DAY, time.time() - 2 * DAY))
    real_open = os.open

    def refusing(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) == copy.name:
            raise PermissionError(errno.EACCES, "Permission denied", copy.name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    would = gc_json(capsys, archive, "--dry-run")
    assert would["partials"] == [{"path": f"tmp/{copy.name}", "bytes": 0}]
    ran = cli(capsys, "gc", "--archive", str(archive))
    assert ran.code == 1
    assert ran.errors == [f"tune-archiver: error: cannot remove tmp/{copy.name} in {archive}: "
                          "Permission denied"]
    assert copy.is_dir()
    assert not any(blob_file(archive, data).exists() for data in two.all if data not in one.all)
