"""fetch --all of an account of many tunes: a bounded flow, whatever the account's size.

Tunes are taken up as the listing's pages arrive, a few at a time; the API has request
slots of its own; the unchanged check looks each blob up once per run; and the open
files stay few (issue 16, workload W5).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import subprocess
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_fetch, stored_blobs
from tests.standin import StandIn
from tune_archiver.commands.fetch import fetch
from tune_archiver.config import AllTunes, Settings
from tune_archiver.errors import Denied, StorageError
from tune_archiver.progress import NullProgress
from tune_archiver.store.local import LocalStore

SHARED = [("a.jpg", b"a" * 3000), ("b.jpg", b"b" * 5000)]


def account(standin: StandIn, tunes: int, page: int = 120) -> None:
    """Tunes 1..N, each with a 2 KiB checkpoint of its own and the same two images."""
    images = [standin.add_file(name, data) for name, data in SHARED]
    for tune_id in range(1, tunes + 1):
        ckpt = standin.add_file(f"ckpt-{tune_id}", f"{tune_id:08d}".encode() * 256)
        standin.add_tune(tune_id, [ckpt], images)
    standin.page_cap = page


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def manifests(archive: Path) -> set[int]:
    return {int(p.stem) for p in (archive / "manifests").glob("*.json")}


def test_a_large_account_needs_few_open_files(standin: StandIn, archive: Path) -> None:
    """120 tunes under a limit of 48 open files (with --concurrency 4: what a run may
    open grows with it): every tune archived, no "Too many open files" (each tune once
    held its manifest's lock file open while it waited to write)."""
    account(standin, 120)

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    done = subprocess.run(
        [sys.executable, "-m", "tune_archiver", "fetch", "--all", "-q", "--concurrency", "4",
         "--archive", str(archive), "--api-url", standin.api_url],
        env={**os.environ, "ASTRIA_API_KEY": standin.api_key}, preexec_fn=few_files,
        capture_output=True, text=True, timeout=120, check=False)
    assert "Too many open files" not in done.stderr
    assert done.returncode == 0, done.stderr[-2000:]
    assert manifests(archive) == set(range(1, 121))
    assert len(stored_blobs(archive)) == 122


def test_tunes_are_fetched_while_the_listing_is_still_paged(
    standin: StandIn, archive: Path
) -> None:
    """With pages of 120, tunes of the first page are loaded before the third page is
    asked for: the listing is not read whole before anything is done (a page is
    handed on once the next one has passed the checks)."""
    account(standin, 300)
    assert run_fetch(standin, archive, "--all", "-q") == 0
    paths = [r.path for r in standin.seen("api")]
    third = paths.index("/tunes?limit=120&before_id=61")
    assert any(path.startswith("/tunes/") for path in paths[:third])
    assert manifests(archive) == set(range(1, 301))


def test_downloads_go_on_while_a_listing_request_is_held(
    standin: StandIn, archive: Path
) -> None:
    """--concurrency 1, and the listing's last (empty) page held until a file is asked
    for: the API's requests have slots of their own, so the tunes of the first page
    are loaded and downloaded meanwhile (sharing the one slot, nothing could move)."""
    account(standin, 10, page=5)
    standin.hold_until_a_file = "/tunes?limit=120&before_id=1"
    assert run_fetch(standin, archive, "--all", "-q", "--concurrency", "1") == 0
    assert not standin.hold_timed_out
    assert manifests(archive) == set(range(1, 11))


def test_a_dry_run_flows_as_a_fetch_does(standin: StandIn, archive: Path) -> None:
    """fetch --all --dry-run takes tunes up as the listing's pages arrive, as a fetch does
    (it once listed every tune, then loaded them all at once): with the listing's last
    page held until a file is asked for, the first tunes' files are probed meanwhile."""
    account(standin, 10, page=5)
    standin.hold_until_a_file = "/tunes?limit=120&before_id=1"
    assert run_fetch(standin, archive, "--all", "--dry-run", "-q") == 0
    assert not standin.hold_timed_out
    assert not archive.exists()


class CountingStore(LocalStore):
    """A local store that says which blobs it was asked about, one by one or in bulk."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.looked_up: list[str] = []

    async def blob_size(self, sha256: str) -> int | None:
        self.looked_up.append(sha256)
        return await super().blob_size(sha256)

    async def blob_sizes(self, sha256s: Collection[str]) -> dict[str, int]:
        self.looked_up.extend(sha256s)
        return await super().blob_sizes(sha256s)


def test_the_unchanged_check_looks_up_each_blob_once(standin: StandIn, archive: Path) -> None:
    """An unchanged rerun of 40 tunes that share two images skips them all, looking up
    42 blobs (each checkpoint, and each shared image once), not 3 per tune."""
    account(standin, 40)
    assert run_fetch(standin, archive, "--all", "-q") == 0
    store = CountingStore(archive)
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url)
    results = asyncio.run(fetch(settings, AllTunes(), NullProgress(), store=store))
    assert [r.tune_id for r in results] == list(range(40, 0, -1))
    assert all(r.skipped for r in results)
    assert len(store.looked_up) == 42
    assert len(set(store.looked_up)) == 42


class OneByOne:
    """A store without the bulk reads (as the S3 store): every other call passed on."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self.manifests_read = 0

    def __getattr__(self, name: str) -> Any:
        if name in ("read_manifests", "blob_sizes"):
            raise AttributeError(name)
        return getattr(self._store, name)

    async def read_manifest(self, tune_id: int) -> bytes | None:
        self.manifests_read += 1
        return await self._store.read_manifest(tune_id)


@pytest.mark.parametrize("bulk", [True, False])
def test_the_rerun_skips_unchanged_tunes_with_or_without_bulk_reads(
    standin: StandIn, archive: Path, bulk: bool
) -> None:
    """A rerun skips the 5 unchanged tunes and fetches the one updated since, whether
    the store reads in bulk or one manifest at a time."""
    account(standin, 6)
    assert run_fetch(standin, archive, "--all", "-q") == 0
    standin.tunes[4]["updated_at"] = "2026-11-20T00:00:00.000Z"
    local = LocalStore(archive)
    store: Any = local if bulk else OneByOne(local)
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url)
    results = asyncio.run(fetch(settings, AllTunes(), NullProgress(), store=store))
    assert [(r.tune_id, r.skipped, r.ok) for r in results] == [
        (6, True, True), (5, True, True), (4, False, True), (3, True, True),
        (2, True, True), (1, True, True)]
    assert bulk or store.manifests_read >= 6


class OneBlobUnreadable(LocalStore):
    """A local store whose disk will not look up one blob (EIO, a folder another user
    made 0700): asked about it, one by one or in bulk, it raises StorageError."""

    def __init__(self, root: Path, bad: str) -> None:
        super().__init__(root)
        self.bad = bad

    async def blob_size(self, sha256: str) -> int | None:
        if sha256 == self.bad:
            raise StorageError(f"cannot look up blob {sha256[:8]}: Input/output error")
        return await super().blob_size(sha256)

    async def blob_sizes(self, sha256s: Collection[str]) -> dict[str, int]:
        if self.bad in sha256s:
            raise StorageError(f"cannot look up blob {self.bad[:8]}: Input/output error")
        return await super().blob_sizes(sha256s)


def test_a_blob_that_cannot_be_looked_up_fails_its_tune_only(
    standin: StandIn, archive: Path
) -> None:
    """An unchanged rerun where one tune's blob cannot be looked up: that tune fails,
    saying why, and the tunes listed before and after it are skipped as unchanged."""
    account(standin, 3, page=1)
    assert run_fetch(standin, archive, "--all", "-q") == 0
    bad = hashlib.sha256(standin.files["ckpt-2"]).hexdigest()
    store = OneBlobUnreadable(archive, bad)
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url)
    results = asyncio.run(fetch(settings, AllTunes(), NullProgress(), store=store))
    assert [(r.tune_id, r.skipped, r.ok) for r in results] == [
        (3, True, True), (2, False, False), (1, True, True)]
    assert "Input/output error" in (results[1].error or "")


class OneObjectDenied(LocalStore):
    """A store whose bucket refuses one object (AccessDenied: a policy on that key, an
    object another account owns): tune 2's manifest, or its checkpoint's blob."""

    def __init__(self, root: Path, manifest: int | None = None, blob: str | None = None
                 ) -> None:
        super().__init__(root)
        self.manifest, self.blob = manifest, blob

    def _check(self, tune_ids: Collection[int] = (), sha256s: Collection[str] = ()) -> None:
        if self.manifest in tune_ids or self.blob in sha256s:
            raise Denied("cannot read an object in s3://b/a: access denied (AccessDenied)")

    async def read_manifest(self, tune_id: int) -> bytes | None:
        self._check(tune_ids=[tune_id])
        return await super().read_manifest(tune_id)

    async def read_manifests(self, tune_ids: Sequence[int]) -> list[bytes | None]:
        self._check(tune_ids=tune_ids)
        return await super().read_manifests(tune_ids)

    async def blob_size(self, sha256: str) -> int | None:
        self._check(sha256s=[sha256])
        return await super().blob_size(sha256)

    async def blob_sizes(self, sha256s: Collection[str]) -> dict[str, int]:
        self._check(sha256s=sha256s)
        return await super().blob_sizes(sha256s)


@pytest.mark.parametrize("refused", ["manifest", "blob"])
def test_an_object_the_bucket_refuses_fails_its_tune_only(
    standin: StandIn, archive: Path, refused: str
) -> None:
    """An unchanged rerun where the store refuses tune 2's manifest or one of its blobs
    (AccessDenied on that key alone): tune 2 fails, saying so, the others are skipped,
    and the run goes on (it stopped, as if the store refused everything)."""
    account(standin, 3, page=1)
    assert run_fetch(standin, archive, "--all", "-q") == 0
    bad = hashlib.sha256(standin.files["ckpt-2"]).hexdigest()
    store = (OneObjectDenied(archive, manifest=2) if refused == "manifest"
             else OneObjectDenied(archive, blob=bad))
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url)
    results = asyncio.run(fetch(settings, AllTunes(), NullProgress(), store=store))
    assert [(r.tune_id, r.skipped, r.ok) for r in results] == [
        (3, True, True), (2, False, False), (1, True, True)]
    assert "access denied" in (results[1].error or "")
