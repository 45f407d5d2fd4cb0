"""Two operators on one local archive at once: verify --repair, fetch, gc and forget
meeting each other between their steps."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from tests.archive_helpers import add_tune, cli, manifest_of
from tests.helpers import Sleeps, blob_file, run_fetch
from tests.standin import StandIn, Status
from tests.test_honest import EXPIRED, NOW, fetch_halves_at_once, gone_upstream
from tune_archiver.commands import repair as repair_module
from tune_archiver.commands.fetch import fetch
from tune_archiver.commands.forget import forget
from tune_archiver.commands.gc import collect
from tune_archiver.commands.repair import repair
from tune_archiver.commands.verify import verify
from tune_archiver.config import RetryPolicy, Settings
from tune_archiver.download.staging import staging_for
from tune_archiver.models import TuneResult
from tune_archiver.progress import NullProgress
from tune_archiver.store import Store
from tune_archiver.store.local import LocalStore


def test_repair_never_sets_aside_a_blob_another_fetch_committed_whole_since_it_looked(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tunes 1 (gone upstream) and 2 share an image whose blob the disk lost. verify
    --repair 1 finds it missing and looks again (not whole); a fetch of tune 2 run at
    that moment downloads it and commits it whole. The repair then moved that whole
    blob to tmp/damaged/: tune 1 could not fetch it again, and tune 2's manifest, just
    written 'ok', named a blob that was not there."""
    archive = tmp_path / "archive"
    shared, settings = a_shared_image_lost(standin, archive)
    real_whole_now = repair_module._whole_now
    other: list[asyncio.Task[list[TuneResult]]] = []

    async def whole_now(store: Store, sha: str) -> bool:
        found = await real_whole_now(store, sha)
        waits = asyncio.Event()
        # Another operator's fetch of tune 2, now: it runs through, or waits for the
        # archive while the repair holds it.
        other.append(asyncio.create_task(fetch(settings, [2], NullProgress(),
                                               clock=lambda: NOW, waiting=waits.set)))
        waiting = asyncio.create_task(waits.wait())
        await asyncio.wait([other[0], waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        return found

    async def repairs_fetch(*args: Any, **kwargs: Any) -> list[TuneResult]:
        await asyncio.wait(other)  # the other operator's fetch is seen through first
        return await fetch(*args, **kwargs)

    monkeypatch.setattr(repair_module, "_whole_now", whole_now)
    monkeypatch.setattr(repair_module, "fetch", repairs_fetch)

    async def both() -> bool:
        store = LocalStore(archive)
        found = await verify(store, [1], NullProgress())
        mended = await repair(store, found, settings, staging_for(archive), NullProgress(),
                              lambda: NOW)
        [results] = await asyncio.gather(*other)
        assert all(result.ok for result in results)
        return mended.ok

    ok = asyncio.run(both())
    assert blob_file(archive, shared).read_bytes() == shared
    assert ok
    for tune in ("1", "2"):
        assert cli(capsys, "verify", tune, "--archive", str(archive)).code == 0, tune


def test_two_fetches_with_only_at_once_leave_a_manifest_of_every_file_complete(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fetch --only checkpoints` and `fetch --only images` of one tune at once: the
    manifest the second writes holds every file archived (the first's merged in), as
    when they run one after the other. It said "complete": false all the same, since
    the second had planned its left-out files before the first archived them: list
    said "no", and fetch --all never skipped the tune as unchanged."""
    archive = tmp_path / "archive"
    add_tune(standin, 1)
    fetch_halves_at_once(standin, archive)
    document = manifest_of(archive, 1)
    assert [entry["status"] for entry in document["assets"]] == ["ok"] * 3
    assert document["complete"] is True
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_an_archived_file_whose_blob_is_lost_after_expiry_is_never_said_never_archived(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An expired tune's image was archived; the disk lost its blob (or a repair set it
    aside) and the host refuses it now. Each fetch said "gone upstream, never archived
    (it will not be asked for again)": it was archived, the manifest still names it,
    and every later fetch asks for it again. It is a failure, said as what it is."""
    archive = tmp_path / "archive"
    served = add_tune(standin, 1, expires_at=EXPIRED)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW - timedelta(days=20)) == 0
    blob_file(archive, served.images[0]).unlink()
    gone_upstream(standin)
    for _ in range(2):  # the second run asks for it again: no "not asked for again"
        capsys.readouterr()
        assert run_fetch(standin, archive, "1", "--json", clock=lambda: NOW) == 1
        ran = capsys.readouterr()
        [tune] = json.loads(ran.out)["tunes"]
        assert (tune["failed"], tune["gone"]) == (1, 0)
        assert "never archived" not in ran.err
        assert "archived, but its blob is missing from the archive" in ran.err
    assert [e["status"] for e in manifest_of(archive, 1)["assets"]] == ["ok"] * 3


@pytest.mark.parametrize("named", [False, True])
def test_blobs_gc_removes_after_a_forget_while_verify_runs_are_no_damage(
    standin: StandIn, tmp_path: Path, named: bool
) -> None:
    """verify read the manifests of tunes 1 and 2; another operator then forgot tune 1
    and ran gc, which removed its blobs before verify looked for them. verify said them
    missing (exit 1, a fail ping from cron) of an archive that was whole. A tune asked
    for by name and forgotten meanwhile is still said missing: it is not archived now."""
    archive = tmp_path / "archive"
    tune_1 = add_tune(standin, 1)
    add_tune(standin, 2)
    assert run_fetch(standin, archive, "1", "2") == 0
    later = datetime.now(UTC) + timedelta(days=30)  # past gc's grace for young blobs

    class Meanwhile(LocalStore):
        async def misplaced(self) -> dict[str, str]:  # after the manifests, before the blobs
            other = LocalStore(archive)
            assert (await forget(other, [1], None, later, dry_run=False)).removed
            assert (await collect(other, later, False, staging_for(archive))).blobs
            return await super().misplaced()

    found = asyncio.run(verify(Meanwhile(archive), [1, 2] if named else [], NullProgress()))
    assert not blob_file(archive, tune_1.images[0]).exists()
    if named:
        assert {(p.tune_id, p.problem) for p in found.problems} == {(1, "missing")}
    else:
        assert found.ok, found.problems


def test_a_fetch_without_prompts_keeps_a_prompt_file_another_run_found_gone_meanwhile(
    standin: StandIn, tmp_path: Path
) -> None:
    """A prompt image failed; its prompt was then deleted upstream. A cron's `fetch 1`
    (no --prompts) planned; a hand-run `fetch 1 --prompts` then recorded that image
    gone upstream, never archived. The cron's run, writing next, kept the failed prompt
    files of the manifest as it was then, not the gone ones: the entry was dropped and
    the tune said complete, though that image was never archived (and no later run
    knew of it)."""
    archive = tmp_path / "archive"
    add_tune(standin, 1, expires_at=EXPIRED)
    standin.add_prompt(1, 500, "ohwx", [standin.file_url("missing")])
    before = NOW - timedelta(days=40)  # the tune not expired yet, by the host's clock too
    standin.faults["missing"] = [Status(404, {"Date": format_datetime(before, usegmt=True)})]
    assert run_fetch(standin, archive, "1", "--prompts", clock=lambda: before) == 1
    standin.prompts[1] = []  # deleted upstream
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        retry=RetryPolicy(sleep=Sleeps()))
    other: list[list[TuneResult]] = []

    class Meanwhile(LocalStore):
        async def update_manifest(self, tune_id: int, change: Any) -> str:
            if not other:  # the operator's --prompts run, between our plan and our write
                other.append(await fetch(replace(settings, prompts=True), [1], NullProgress(),
                                         clock=lambda: NOW, store=LocalStore(archive)))
            return await super().update_manifest(tune_id, change)

    [ours] = asyncio.run(fetch(settings, [1], NullProgress(), clock=lambda: NOW,
                               store=Meanwhile(archive)))
    [[theirs]] = other
    assert ours.ok  # the cron's own run asked for no prompt: said once, by the other
    assert [a.newly_gone for a in theirs.assets if a.asset.kind == "prompt_image"] == [True]
    document = manifest_of(archive, 1)
    assert [(e["kind"], e["status"]) for e in document["assets"]
            if e["kind"] == "prompt_image"] == [("prompt_image", "gone")]
    assert document["complete"] is False


def test_a_prompts_run_whose_listing_failed_keeps_a_prompt_file_another_run_found_failing(
    standin: StandIn, tmp_path: Path
) -> None:
    """A `fetch 1 --prompts` whose account prompt listing failed planned; another
    `fetch 1 --prompts`, its listing whole, then found a new prompt whose image failed
    and recorded it. The first run, writing next, kept only the prompt files it had
    read before it planned: the failed entry was dropped, and a later run without
    --prompts wrote the tune complete, though that image was never archived."""
    archive = tmp_path / "archive"
    add_tune(standin, 1)
    for prompt_id in range(600, 607):  # the account's, naming another tune
        standin.add_prompt(1504944, prompt_id, "<lora:99:1>", [])
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    standin.ignore_before_id = True  # the account's listing cannot be paged, for us
    standin.misbehaving_paths = ("/prompts",)
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        retry=RetryPolicy(sleep=Sleeps()), prompts=True)
    other: list[list[TuneResult]] = []

    class Meanwhile(LocalStore):
        async def update_manifest(self, tune_id: int, change: Any) -> str:
            if not other:  # the other --prompts run, between our plan and our write
                standin.ignore_before_id = False
                standin.add_prompt(1, 700, "ohwx", [standin.file_url("missing")])
                other.append(await fetch(settings, [1], NullProgress(), clock=lambda: NOW,
                                         store=LocalStore(archive)))
            return await super().update_manifest(tune_id, change)

    [ours] = asyncio.run(fetch(settings, [1], NullProgress(), clock=lambda: NOW,
                               store=Meanwhile(archive)))
    [[theirs]] = other
    assert not ours.ok
    assert not theirs.ok
    document = manifest_of(archive, 1)
    assert [(e["prompt_id"], e["status"]) for e in document["assets"]
            if e["kind"] == "prompt_image"] == [(700, "failed")]
    assert document["complete"] is False
    assert run_fetch(standin, archive, "1") == 0  # without --prompts: the entry is kept
    assert manifest_of(archive, 1)["complete"] is False


@pytest.mark.parametrize("upstream", ["kept", "expired"])
def test_verify_repair_never_fetches_again_a_tune_forgotten_since_verify_read_it(
    standin: StandIn, tmp_path: Path, upstream: str
) -> None:
    """verify --repair found tune 1's checkpoint corrupt; while it hashed the rest of the
    archive, another operator forgot tune 1 (a cron's forget --keep-within). The repair
    then fetched tune 1 again: a forgotten tune back in the archive, every file of it
    downloaded anew ('the archive is whole'); or, expired upstream, 'tune 1: not found',
    exit 1 for a tune no longer archived. It mends only what is still archived."""
    archive = tmp_path / "archive"
    served = add_tune(standin, 1, **({"expires_at": EXPIRED} if upstream == "expired" else {}))
    add_tune(standin, 2)
    assert run_fetch(standin, archive, "1", "2", clock=lambda: NOW - timedelta(days=200)) == 0
    checkpoint = blob_file(archive, served.checkpoints[0])
    checkpoint.chmod(0o600)
    checkpoint.write_bytes(b"x" * len(served.checkpoints[0]))  # rotted, same size
    if upstream == "expired":
        gone_upstream(standin)
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        retry=RetryPolicy(sleep=Sleeps()))
    asked = len(standin.requests)

    async def both() -> Any:
        store = LocalStore(archive)
        found = await verify(store, [], NullProgress())
        assert {(p.tune_id, p.problem) for p in found.problems} == {(1, "corrupt")}
        other = LocalStore(archive)  # the other operator's forget, meanwhile
        assert (await forget(other, [1], None, NOW, dry_run=False)).removed
        return await repair(store, found, settings, staging_for(archive), NullProgress(),
                            lambda: NOW)

    mended = asyncio.run(both())
    assert not (archive / "manifests" / "1.json").exists()
    assert standin.requests[asked:] == []
    assert mended.fetched == []
    assert mended.ok, mended.after.problems


def test_a_file_another_run_archived_again_meanwhile_is_no_failure_of_a_run_that_failed_it(
    standin: StandIn, tmp_path: Path
) -> None:
    """Tune 1's image lost its blob. A cron's fetch found it missing and failed to fetch
    it again (a 404 from a flaky host); meanwhile a hand-run fetch fetched it whole and
    wrote the manifest. The cron's run, writing next, kept the image (the manifest names
    it whole) but said it failed, exit 1, and wrote the tune "complete": false, by what
    it had found missing when it planned: list said "no" of a whole tune, and fetch --all
    never skipped it as unchanged."""
    archive = tmp_path / "archive"
    served = add_tune(standin, 1)
    assert run_fetch(standin, archive, "1") == 0
    image = served.images[0]
    blob_file(archive, image).unlink()
    standin.faults["img-1-0.jpg"] = [Status(404)]  # the cron's try; the other's is whole
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        retry=RetryPolicy(sleep=Sleeps()))
    other: list[list[TuneResult]] = []

    class Meanwhile(LocalStore):
        async def update_manifest(self, tune_id: int, change: Any) -> str:
            if not other:  # the operator's run, between our plan and our write
                other.append(await fetch(settings, [1], NullProgress(),
                                         store=LocalStore(archive)))
            return await super().update_manifest(tune_id, change)

    [ours] = asyncio.run(fetch(settings, [1], NullProgress(), store=Meanwhile(archive)))
    [[theirs]] = other
    assert theirs.ok
    assert blob_file(archive, image).read_bytes() == image
    assert ours.ok, ours
    document = manifest_of(archive, 1)
    assert [entry["status"] for entry in document["assets"]] == ["ok"] * 3
    assert document["complete"] is True


def test_a_blob_cut_short_on_disk_is_no_file_archived_again_for_a_fetch_that_failed_it(
    standin: StandIn, tmp_path: Path
) -> None:
    """Tune 1's image blob was cut short on disk (a full disk, a bad copy back). A fetch
    found it so (its size not the one recorded) and failed to fetch the image again (a
    404 from a flaky host); at its manifest write it looked which of those blobs were
    still missing, found one by that name and took it for one another run stored whole
    since: the image 'ok', the tune "complete": true, exit 0, over a blob cut short."""
    archive = tmp_path / "archive"
    served = add_tune(standin, 1)
    assert run_fetch(standin, archive, "1") == 0
    image = served.images[0]
    cut = blob_file(archive, image)
    cut.chmod(0o600)
    cut.write_bytes(image[:100])
    standin.faults["img-1-0.jpg"] = [Status(404)] * 10
    assert run_fetch(standin, archive, "1") == 1
    document = manifest_of(archive, 1)
    assert document["complete"] is False
    assert [entry["status"] for entry in document["assets"]] == ["ok"] * 3  # kept


def test_repair_whose_lock_file_was_removed_never_sets_aside_a_blob_a_fetch_made_whole(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tunes 1 (gone upstream) and 2 share an image whose blob the disk lost. verify
    --repair 1 holds the archive lock exclusively to set it aside; its lock file is
    removed by hand (taken for one a killed run left), so a fetch of tune 2 takes a new
    one at once, downloads the image and writes its manifest 'ok'. The repair then moved
    that whole blob to tmp/damaged/: tune 2's manifest named a blob not there, and tune
    1 could never have it again. gc stops once its lock is lost; so does the repair."""
    archive = tmp_path / "archive"
    shared, settings = a_shared_image_lost(standin, archive)
    real_whole_now = repair_module._whole_now
    other: list[list[TuneResult]] = []

    async def whole_now(store: Store, sha: str) -> bool:
        found = await real_whole_now(store, sha)
        (archive / "lock").unlink()  # by hand, meanwhile; tune 2's fetch runs through
        other.append(await fetch(settings, [2], NullProgress(), clock=lambda: NOW,
                                 store=LocalStore(archive)))
        return found

    monkeypatch.setattr(repair_module, "_whole_now", whole_now)

    async def both() -> Any:
        store = LocalStore(archive)
        found = await verify(store, [1], NullProgress())
        return await repair(store, found, settings, staging_for(archive), NullProgress(),
                            lambda: NOW)

    mended = asyncio.run(both())
    [[theirs]] = other
    assert theirs.ok
    assert blob_file(archive, shared).read_bytes() == shared  # not moved aside
    assert mended.moved == []
    assert not mended.ok
    [line] = mended.refused
    assert line.startswith(f"the archive's lock file {archive}/lock was removed while this "
                           "run held it")


def a_shared_image_lost(standin: StandIn, archive: Path) -> tuple[bytes, Settings]:
    """Tunes 1 (gone upstream: its files 404) and 2, archived, sharing an image whose blob
    the disk lost; the image's bytes, and the settings a repair runs with."""
    shared = os.urandom(4_000)
    add_tune(standin, 1, shared=(shared,), expires_at=EXPIRED)
    add_tune(standin, 2, shared=(shared,))
    assert run_fetch(standin, archive, "1", "2", clock=lambda: NOW - timedelta(days=20)) == 0
    blob_file(archive, shared).unlink()
    for name in list(standin.files):
        if name.startswith(("img-1-", "ckpt-1")):
            standin.faults[name] = [Status(404)] * 10
    return shared, Settings(archive=archive, api_key=standin.api_key,
                            api_url=standin.api_url, retry=RetryPolicy(sleep=Sleeps()))
