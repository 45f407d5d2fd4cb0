"""A run stopped after committing some of a tune's files: its next run knows them archived
(tmp/<id>.committed), even once the tune expired upstream, and gc keeps them meanwhile."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.archive_helpers import cli, stop
from tests.conftest import check_manifest
from tests.helpers import NOBODY, Sleeps, blob_file, run_fetch, stored_blobs
from tests.standin import Stall, StandIn, Status
from tests.test_process import start_fetch, wait_until
from tune_archiver.commands.fetch import fetch
from tune_archiver.config import RetryPolicy, Settings
from tune_archiver.download.journal import Journals
from tune_archiver.progress import NullProgress
from tune_archiver.store import local

MiB = 2**20
GONE = "gone upstream, never archived"


def stopped_after_the_images(standin: StandIn, archive: Path,
                             signum: int = signal.SIGKILL) -> list[bytes]:
    """Tune 1's three images committed, its checkpoint stalled part way: the run stopped
    by `signum` there (SIGKILL: no cleanup at all). The images' bytes."""
    images = [os.urandom(3000 + i) for i in range(3)]
    standin.add_tune(1, [standin.add_file("model", os.urandom(4 * MiB))],
                     [standin.add_file(f"i{i}.jpg", data) for i, data in enumerate(images)])
    standin.faults["model"] = [Stall(3 * MiB)]
    process = start_fetch(standin, archive, "1")
    try:
        wait_until(lambda: len(journal_lines(archive)) == 3 and all(
            blob_file(archive, data).exists() for data in images), "the images committed")
        process.send_signal(signum)
    finally:
        stop(process)
    assert all(blob_file(archive, data).exists() for data in images)
    assert not (archive / "manifests" / "1.json").exists()
    return images


def expire(standin: StandIn) -> None:
    """Astria deletes the tune's files: each now answers 404, its expires_at passed."""
    standin.tunes[1]["expires_at"] = "2026-01-01T00:00:00Z"
    for name in list(standin.files):
        standin.faults[name] = [Status(404)] * 10


def images_of(archive: Path) -> list[dict[str, object]]:
    return [entry for entry in check_manifest(archive / "manifests" / "1.json")["assets"]
            if entry["kind"] == "training_image"]


def a_prompts_fetch_stopped_after_one_image(standin: StandIn, archive: Path) -> None:
    """Tune 1 archived, then a `fetch 1 --prompts` stopped once it committed the first
    of its prompt's two files: the tune's journal names a blob its manifest does not."""
    standin.add_tune(1, [standin.add_file("model", os.urandom(5000))],
                     [standin.add_file("i0.jpg", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 0
    standin.add_prompt(1, 5, "a photo", [standin.add_file("p0.jpg", os.urandom(4000)),
                                         standin.add_file("p1.mp4", os.urandom(4 * MiB))])
    standin.faults["p1.mp4"] = [Stall(3 * MiB)]
    process = start_fetch(standin, archive, "1", "--prompts")
    try:
        wait_until(lambda: len(journal_lines(archive)) == 1, "the first image committed")
    finally:
        stop(process)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_stopped_runs_images_are_archived_though_the_tune_expired_before_the_rerun(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], signum: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive, signum)
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    # gc before the rerun (a daily cron's) keeps the blobs only the journal names
    assert cli(capsys, "gc", "--archive", str(archive)).code == 0
    assert all(blob_file(archive, data).exists() for data in images)
    expire(standin)
    asked = len(standin.seen("cdn", "/files/i"))
    ran = cli(capsys, "fetch", "1", "--archive", str(archive), "--api-url", standin.api_url)
    assert ran.code == 1  # the checkpoint, never received, is gone upstream
    assert [line for line in ran.errors if GONE in line] == [
        line for line in ran.errors if "checkpoint 0" in line]
    assert [(e["status"], e["sha256"]) for e in images_of(archive)] == [
        ("ok", blob_file(archive, data).name) for data in images]
    assert len(standin.seen("cdn", "/files/i")) == asked  # taken as archived: not asked for
    assert not (archive / "tmp" / "1.committed").exists()  # the manifest names them now
    assert cli(capsys, "gc", "--archive", str(archive)).code == 0
    assert all(blob_file(archive, data).read_bytes() == data for data in images)


def test_a_journal_line_whose_blob_is_gone_is_not_trusted(
    standin: StandIn, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    lost = blob_file(archive, images[1])
    lost.chmod(0o600)
    lost.unlink()
    asked = len(standin.seen("cdn", "/files/i1.jpg"))
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("cdn", "/files/i1.jpg")) == asked + 1  # fetched again
    assert lost.read_bytes() == images[1]
    assert [e["status"] for e in images_of(archive)] == ["ok"] * 3


def test_a_journal_line_whose_blob_is_gone_is_not_archived_once_the_tune_expired(
    standin: StandIn, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    blob_file(archive, images[1]).unlink()
    expire(standin)
    assert run_fetch(standin, archive, "1") == 1
    assert [e["status"] for e in images_of(archive)] == ["ok", "gone", "ok"]


def journal_lines(archive: Path) -> list[str]:
    """The lines of tune 1's journal that record a file (the first records the tune)."""
    journal = archive / "tmp" / "1.committed"
    lines = journal.read_text().splitlines() if journal.exists() else []
    return [line for line in lines if line.startswith('{"kind"')]


def test_a_damaged_journal_is_ignored_line_by_line(standin: StandIn, tmp_path: Path) -> None:
    """Bad JSON, wrong types, a status not ok, a line for a blob another line names with
    another size: none is taken; the good lines still are. A line that is not JSON (cut
    short) may name any file: none is called gone upstream, each failed."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    first, second, third = sorted((json.loads(line) for line in journal_lines(archive)),
                                  key=lambda entry: entry["index"])
    planted = [
        json.dumps(first)[:-9],  # cut short
        json.dumps({**second, "index": "1"}),
        json.dumps({**second, "status": "failed", "error": "x"}),
        json.dumps({**second, "size": second["size"] + 1}),
        "[]", "\x00\xff",
        json.dumps(third),
    ]
    (archive / "tmp" / "1.committed").write_text("\n".join(planted) + "\n")
    expire(standin)
    assert run_fetch(standin, archive, "1") == 1
    assert [(e["index"], e["status"]) for e in images_of(archive)] == [
        (0, "failed"), (1, "failed"), (2, "ok")]
    assert images_of(archive)[2]["sha256"] == blob_file(archive, images[2]).name


def test_a_planted_journal_is_never_read(standin: StandIn, tmp_path: Path) -> None:
    """A link at the journal's name, or another user's file there, vouches for nothing."""
    archive = tmp_path / "archive"
    stopped_after_the_images(standin, archive)
    journal = archive / "tmp" / "1.committed"
    elsewhere = tmp_path / "elsewhere"
    journal.rename(elsewhere)
    journal.symlink_to(elsewhere)
    expire(standin)
    assert run_fetch(standin, archive, "1") == 1
    assert [e["status"] for e in images_of(archive)] == ["gone"] * 3
    assert journal.is_symlink()  # neither followed nor removed


def test_another_users_journal_is_never_read(standin: StandIn, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    archive = tmp_path / "archive"
    stopped_after_the_images(standin, archive)
    os.chown(archive / "tmp" / "1.committed", NOBODY, NOBODY)
    expire(standin)
    assert run_fetch(standin, archive, "1") == 1
    assert [e["status"] for e in images_of(archive)] == ["gone"] * 3


def test_gc_sweeps_a_journal_left_for_a_day_with_the_blobs_it_alone_named(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    later = datetime.now(UTC) + timedelta(hours=23)
    assert cli(capsys, "gc", "--archive", str(archive), now=later).code == 0
    assert (archive / "tmp" / "1.committed").exists()
    assert all(blob_file(archive, data).exists() for data in images)
    ran = cli(capsys, "gc", "--archive", str(archive), now=later + timedelta(hours=2))
    assert ran.code == 0
    assert "tmp/1.committed" in ran.out
    assert not (archive / "tmp" / "1.committed").exists()
    assert stored_blobs(archive) == []


def test_a_manifest_naming_only_some_lines_keeps_the_journal(tmp_path: Path) -> None:
    """A line another run appended (a file it committed that our manifest does not name)
    keeps the journal for its next run; once every blob is named, it goes."""
    journals = Journals(tmp_path)
    ours, theirs = (entry_of(i, digit) for i, digit in enumerate("ab"))

    async def held(sha256: str) -> int:  # every blob is in the store
        return 10

    async def steps() -> None:
        await journals.record(1, ours, lambda: {"id": 1})
        await journals.record(1, theirs, lambda: {"id": 1})
        await journals.settle(1, {ours["sha256"]}, held)
        assert [e.sha256 for e in await journals.entries(1)] == ["a" * 64, "b" * 64]
        await journals.settle(1, {ours["sha256"], theirs["sha256"]}, held)
        assert await journals.entries(1) == []

    asyncio.run(steps())
    assert list(tmp_path.iterdir()) == []


def test_a_line_a_full_disk_cut_short_does_not_take_the_next_with_it(tmp_path: Path) -> None:
    """A write at a full disk's end stores part of its line (write() returns short, no
    error): the line appended once space is back starts a line of its own."""
    journals = Journals(tmp_path)
    cut, whole = entry_of(0, "a"), entry_of(1, "b")
    journals.path(1).write_text(json.dumps({"tune": {"id": 1}}) + "\n" + json.dumps(cut)[:40])
    journals.path(1).chmod(0o600)
    journals.note(1, whole, lambda: {"id": 1})
    assert [e.sha256 for e in asyncio.run(journals.entries(1))] == ["b" * 64]


def entry_of(index: int, digit: str) -> dict[str, object]:
    return {"kind": "training_image", "index": index, "url": f"https://cdn.example/{index}",
            "status": "ok", "sha256": digit * 64, "size": 10, "content_type": None}


def test_a_stopped_runs_images_are_archived_though_the_tune_was_deleted_before_the_rerun(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API no longer finds the tune (404): its manifest is written from the tune and
    files the journal kept, the images ok, the checkpoint failed (not gone: a 404 may be
    another workspace's), nothing asked of the hosts; said, exit 1."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    title = standin.tunes[1]["title"]
    del standin.tunes[1]
    asked = len(standin.seen("cdn", "/files/"))
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    ran = cli(capsys, "fetch", "1", "--archive", str(archive), "--api-url", standin.api_url)
    assert ran.code == 1
    assert ran.errors[0].startswith("tune-archiver: error: tune 1 not found (deleted upstream?)")
    assert len(standin.seen("cdn", "/files/")) == asked
    document = check_manifest(archive / "manifests" / "1.json")
    assert document["tune"]["title"] == title
    assert document["complete"] is False
    assert [(e["kind"], e["status"]) for e in document["assets"]] == [
        ("checkpoint", "failed"), *[("training_image", "ok")] * 3]
    assert [e["sha256"] for e in images_of(archive)] == [
        blob_file(archive, data).name for data in images]
    assert not (archive / "tmp" / "1.committed").exists()
    assert cli(capsys, "gc", "--archive", str(archive)).code == 0
    assert all(blob_file(archive, data).read_bytes() == data for data in images)


def test_a_tune_not_found_past_its_expires_at_is_not_said_to_be_fetched_again_now(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tune the API no longer finds, recorded from its journal, whose expires_at (as the
    journal kept it) had passed: said 'Astria may delete it at any moment: run
    tune-archiver fetch 1 again now' beside 'not found (deleted upstream?)', a command
    that finds no tune either (exit 1, the same line again). Its not-found line alone."""
    archive = tmp_path / "archive"
    stopped_after_the_images(standin, archive)
    del standin.tunes[1]
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    ran = cli(capsys, "fetch", "1", "--archive", str(archive), "--api-url", standin.api_url,
              now=datetime.now(UTC) + timedelta(days=31))
    assert ran.code == 1
    assert ran.errors[0].startswith("tune-archiver: error: tune 1 not found (deleted upstream?)")
    assert not [line for line in ran.errors if "again" in line and "not archived whole" in line]


def test_a_tune_not_found_with_a_journal_of_no_file_is_not_found(
    standin: StandIn, tmp_path: Path
) -> None:
    """A journal whose lines name no blob held records nothing: the tune is not found."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    for data in images:
        blob_file(archive, data).unlink()
    del standin.tunes[1]
    assert run_fetch(standin, archive, "1") == 1
    assert not (archive / "manifests" / "1.json").exists()


def test_fetch_all_takes_up_an_unchanged_tune_whose_journal_names_files(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tune 1 archived complete; a `fetch 1 --prompts` killed after a prompt's first image
    was committed: the daily `fetch --all` (no --prompts), finding the tune unchanged,
    skipped it, so the journal was swept a day later with that image's blob, deleted
    upstream by then. It fetches the tune, which records the image."""
    archive = tmp_path / "archive"
    standin.add_tune(1, [standin.add_file("model", os.urandom(5000))],
                     [standin.add_file("i0.jpg", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 0
    made = os.urandom(4000)
    standin.add_prompt(1, 5, "a photo", [standin.add_file("p0.jpg", made),
                                         standin.add_file("p1.mp4", os.urandom(4 * MiB))])
    standin.faults["p1.mp4"] = [Stall(3 * MiB)]
    process = start_fetch(standin, archive, "1", "--prompts")
    try:
        wait_until(lambda: len(journal_lines(archive)) == 1 and blob_file(archive, made).exists(),
                   "the first image committed")
    finally:
        stop(process)
    standin.faults["p0.jpg"] = [Status(404)] * 10
    assert run_fetch(standin, archive, "--all") == 0
    prompts = [e for e in check_manifest(archive / "manifests" / "1.json")["assets"]
               if e["kind"] == "prompt_image"]
    assert [(e["index"], e["status"], e["sha256"]) for e in prompts] == [
        (0, "ok", blob_file(archive, made).name)]
    later = datetime.now(UTC) + timedelta(days=2)
    assert cli(capsys, "gc", "--archive", str(archive), now=later).code == 0
    assert blob_file(archive, made).read_bytes() == made


def test_a_journal_a_fetch_relies_on_is_kept_by_gc_as_long_as_fetches_are_stopped(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint longer than cron's timeout: each day's run is killed part way and
    commits nothing new, reusing the images the first committed. Its journal stays
    fresh, so gc never sweeps it (with the blobs only it names) between two runs."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    journal = archive / "tmp" / "1.committed"
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    os.utime(journal, (two_days_ago, two_days_ago))
    standin.faults["model"] = [Stall(0)]
    asked = len(standin.seen("cdn", "/files/model"))
    process = start_fetch(standin, archive, "1")
    try:  # past its plan: downloading the checkpoint
        wait_until(lambda: len(standin.seen("cdn", "/files/model")) > asked, "the checkpoint")
    finally:
        stop(process)
    assert cli(capsys, "gc", "--archive", str(archive)).code == 0
    assert all(blob_file(archive, data).read_bytes() == data for data in images)
    assert len(journal_lines(archive)) == 3


def test_a_file_whose_commit_a_stop_met_is_journaled(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop (SIGTERM, Ctrl-C) while a commit's thread stores a blob: the thread runs to
    its end, so the blob is stored though the run stops there. Its line is written in
    that thread before the blob is stored, so the journal names it."""
    archive = tmp_path / "archive"
    image = os.urandom(3000)
    standin.add_tune(1, [], [standin.add_file("i0.jpg", image)])
    storing, stop_sent = threading.Event(), threading.Event()
    store_blob = local.store_blob

    def stored_once_stopped(*args: Any) -> None:
        storing.set()
        assert stop_sent.wait(20)
        store_blob(*args)

    monkeypatch.setattr(local, "store_blob", stored_once_stopped)
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        retry=RetryPolicy(sleep=Sleeps()))

    async def stopped() -> None:
        run = asyncio.create_task(fetch(settings, [1], NullProgress()))
        assert await asyncio.to_thread(storing.wait, 20)
        run.cancel()
        stop_sent.set()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(stopped())
    assert blob_file(archive, image).read_bytes() == image
    assert not (archive / "manifests" / "1.json").exists()
    assert [json.loads(line)["sha256"] for line in journal_lines(archive)] == [
        blob_file(archive, image).name]


@pytest.mark.parametrize("how", [("--all",), ("--all", "--expiring-within", "7d")])
def test_fetch_all_records_a_journaled_tune_deleted_upstream_since(
    standin: StandIn, tmp_path: Path, how: tuple[str, ...]
) -> None:
    """The daily `fetch --all` stopped part way through a tune; by the next day Astria
    deleted it, so the listing no longer shows it: its journal is recorded still."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    soon = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    standin.add_tune(2, [], [standin.add_file("other.jpg", os.urandom(2000))], expires_at=soon)
    del standin.tunes[1]
    assert run_fetch(standin, archive, *how) == 1
    assert [e["sha256"] for e in images_of(archive)] == [
        blob_file(archive, data).name for data in images]
    assert check_manifest(archive / "manifests" / "2.json")["complete"] is True


def test_fetch_all_expiring_within_records_a_journaled_tune_listed_past_its_expiry(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hand-run `fetch 1` on the tune's last day, stopped once its photos were
    committed; the cron's `fetch --all --expiring-within 3d` after its expires_at, Astria
    listing it still: --expiring-within left it out (not ahead), though one the listing
    no longer shows is taken up, so its journal was never recorded and gc swept it a day
    later with the only copy of the photos. A journaled tune is taken up whatever its
    expiry, as a deleted one is (the shard and the other filters still apply)."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    expire(standin)
    assert run_fetch(standin, archive, "--all", "--expiring-within", "3d") == 1
    assert [(e["status"], e["sha256"]) for e in images_of(archive)] == [
        ("ok", blob_file(archive, data).name) for data in images]
    later = datetime.now(UTC) + timedelta(days=2)
    assert cli(capsys, "gc", "--archive", str(archive), now=later).code == 0
    assert all(blob_file(archive, data).read_bytes() == data for data in images)


def test_fetch_all_filtered_by_the_api_leaves_a_journaled_tune_it_did_not_list(
    standin: StandIn, tmp_path: Path
) -> None:
    """An API filter (--title) hides tunes it leaves out: one not listed is not deleted."""
    archive = tmp_path / "archive"
    stopped_after_the_images(standin, archive)
    standin.add_tune(2, [], [standin.add_file("other.jpg", os.urandom(2000))], title="Other")
    asked = len(standin.seen("api", "/tunes/1"))
    assert run_fetch(standin, archive, "--all", "--title", "Other") == 0
    assert len(standin.seen("api", "/tunes/1")) == asked
    assert not (archive / "manifests" / "1.json").exists()


def test_a_forgotten_tune_is_not_recorded_again_from_a_stopped_runs_journal(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `fetch 1 --prompts` killed after a prompt's image was committed, then the tune
    deleted upstream and forgotten: the daily `fetch --all` took the journaled tune up
    and wrote its manifest again from the journal, the forgotten tune back (exit 1)."""
    archive = tmp_path / "archive"
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    a_prompts_fetch_stopped_after_one_image(standin, archive)
    del standin.tunes[1]
    assert cli(capsys, "forget", "1", "--archive", str(archive)).code == 0
    ran = cli(capsys, "fetch", "--all", "--archive", str(archive), "--api-url", standin.api_url)
    assert not (archive / "manifests" / "1.json").exists()
    assert ran.code == 0
    assert not (archive / "tmp" / "1.committed").exists()


_KILLED_FORGETTING = """
import os, signal, sys
from tune_archiver.cli.main import main
from tune_archiver.download.journal import Journals
from tune_archiver.store.local import LocalStore

def killed_after(step):
    async def once_done(*args):
        await step(*args)
        os.kill(os.getpid(), signal.SIGKILL)  # the other removal not made
    return once_done
LocalStore.delete_manifest = killed_after(LocalStore.delete_manifest)
Journals.remove = killed_after(Journals.remove)
sys.exit(main(sys.argv[1:]))
"""


def test_a_forget_killed_between_its_two_removals_is_finished_by_the_next_forget(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `forget 1` killed after it removed the manifest, before the tune's journal of a
    stopped fetch: `forget 1` again said the tune is not archived (exit 1) and left the
    journal, and the daily `fetch --all` wrote the forgotten tune's manifest again from
    it. The journal now goes first: a kill leaves the manifest, the tune archived still,
    and the next forget removes it."""
    archive = tmp_path / "archive"
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    a_prompts_fetch_stopped_after_one_image(standin, archive)
    del standin.tunes[1]
    killed = subprocess.run([sys.executable, "-c", _KILLED_FORGETTING, "forget", "1",
                             "--archive", str(archive)], capture_output=True, text=True,
                            timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert cli(capsys, "forget", "1", "--archive", str(archive)).code == 0
    ran = cli(capsys, "fetch", "--all", "--archive", str(archive), "--api-url", standin.api_url)
    assert not (archive / "manifests" / "1.json").exists()
    assert ran.code == 0
    assert not (archive / "tmp" / "1.committed").exists()


def test_a_forget_that_cannot_remove_the_journal_keeps_the_manifest(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forget whose removal of the tune's journal failed went on to remove the manifest
    alone: the next fetch --all took the tune back up from the journal, the very thing a
    forget is asked not to let happen. The tune is now not forgotten, and says so."""
    archive = tmp_path / "archive"
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    a_prompts_fetch_stopped_after_one_image(standin, archive)

    async def refused(self: Journals, tune_id: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(Journals, "remove", refused)
    ran = cli(capsys, "forget", "1", "--archive", str(archive))
    assert ran.code != 0
    assert "not forgotten, its manifest kept" in ran.err
    assert (archive / "manifests" / "1.json").exists()


def test_forget_of_a_tune_a_stopped_first_fetch_left_only_a_journal_forgets_it(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first fetch of tune 1 killed before its manifest leaves the tune's journal
    alone: `forget 1` said 'tune 1: not in the archive' (exit 1) and left the journal,
    so the daily `fetch --all`, the tune deleted upstream meanwhile, wrote the forgotten
    tune's manifest from it (exit 1) and gc kept its blobs. forget removes the journal,
    names the tune, exit 0; the next fetch records nothing and gc frees the blobs."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    # a link planted at a journal's name vouches for nothing, as a fetch ignores it
    (archive / "tmp" / "9.committed").symlink_to(archive / "tmp" / "1.committed")
    planted = cli(capsys, "forget", "9", "--archive", str(archive))
    assert (planted.code, planted.errors) == (1, ["tune-archiver: error: tune 9: not in the "
                                                  "archive"])
    (archive / "tmp" / "9.committed").unlink()
    dry = cli(capsys, "forget", "1", "--dry-run", "--archive", str(archive))
    assert dry.code == 0, dry.err
    assert "journal of the files a stopped fetch committed of tune 1" in dry.out
    # no manifest counted removed, where none is (it said 'would remove 1 manifest(s)')
    assert "forget would remove 0 manifest(s) and 1 journal(s) of a stopped fetch;" in dry.out
    # Astria lists it still: the next fetch --all takes it back, as of a tune archived
    assert "tune 1 has not expired: the next fetch --all archives it again" in dry.out
    assert journal_lines(archive)
    forgot = cli(capsys, "forget", "1", "--archive", str(archive), "--json")
    assert forgot.code == 0, forgot.err
    assert json.loads(forgot.out)["removed"] == [{"tune_id": 1, "title": "Tune 1",
                                                  "what": "journal"}]
    assert json.loads(forgot.out)["live"] == [1]
    assert not (archive / "tmp" / "1.committed").exists()
    del standin.tunes[1]
    ran = cli(capsys, "fetch", "--all", "--archive", str(archive), "--api-url", standin.api_url)
    assert ran.code == 0, ran.err
    assert not (archive / "manifests" / "1.json").exists()
    assert cli(capsys, "gc", "--archive", str(archive)).code == 0
    assert not any(blob_file(archive, data).exists() for data in images)


def test_a_journal_a_hard_link_snapshot_shares_is_still_read(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cp -al archive snapshot` (rsnapshot's way) taken while a stopped run's journal
    is there gives the journal a second name: the next run still reads it, gc keeps
    its blobs, and the snapshot's copy is never written to."""
    archive, snapshot = tmp_path / "archive", tmp_path / "snapshot"
    images = stopped_after_the_images(standin, archive)
    subprocess.run(["cp", "-al", str(archive), str(snapshot)], check=True)
    kept = (snapshot / "tmp" / "1.committed").read_bytes()
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    gc = cli(capsys, "gc", "--archive", str(archive))
    assert gc.code == 0
    assert all(blob_file(archive, data).exists() for data in images)
    expire(standin)
    ran = cli(capsys, "fetch", "1", "--archive", str(archive), "--api-url", standin.api_url)
    assert ran.code == 1  # the checkpoint, never received, is gone upstream
    assert [(e["status"], e["sha256"]) for e in images_of(archive)] == [
        ("ok", blob_file(archive, data).name) for data in images]
    assert (snapshot / "tmp" / "1.committed").read_bytes() == kept
    assert cli(capsys, "gc", "--archive", str(archive)).code == 0
    assert all(blob_file(archive, data).read_bytes() == data for data in images)


def test_a_line_for_a_journal_a_snapshot_shares_goes_to_a_copy_of_our_own(
    tmp_path: Path,
) -> None:
    """A journal with a second name (a `cp -al` snapshot's, rsnapshot's daily one) took
    no line: a rerun's commits, stopped again before the manifest, were named by nothing,
    so gc removed them and, once expired, they were 'gone upstream'. The line goes to a
    copy of the journal of our own, every earlier line in it; the snapshot's is as it was."""
    journals = Journals(tmp_path / "tmp")
    journals.directory.mkdir()
    first, then = entry_of(0, "a"), entry_of(1, "b")
    journals.note(1, first, lambda: {"id": 1})
    os.link(journals.path(1), tmp_path / "snapshot.committed")
    kept = (tmp_path / "snapshot.committed").read_bytes()
    journals.note(1, then, lambda: {"id": 1})
    entries = asyncio.run(journals.entries(1))
    assert [e.sha256 for e in entries] == ["a" * 64, "b" * 64]
    assert (tmp_path / "snapshot.committed").read_bytes() == kept
    assert journals.path(1).stat().st_nlink == 1
    assert [p.name for p in journals.directory.iterdir()] == ["1.committed"]


@pytest.mark.parametrize("inside", [False, True], ids=["after_its_sha256", "inside_it"])
def test_a_line_a_full_disk_cut_short_loses_nothing_its_blob_held(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, inside: bool,
) -> None:
    """A run stopped after its images, the journal's last line cut short by a full disk
    (write() stored part of it), the tune expired since: the line was passed by, so the
    image it named, its blob in the archive, was said 'gone upstream, never archived' for
    good, and gc, the journal settled, removed the blob. Later it was failed, the journal
    kept, for good: each daily fetch exit 1, with no way out. The line is rebuilt (its
    kind, index and url come before its sha256; the size is the held blob's): the image
    is archived ok, the journal settled, gc keeps the blob. Cut inside its sha256 (40 of
    its 64 digits written), the one blob whose sha256 starts with those digits (16 at
    least) is the line's."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    cut = cut_last_line(archive, inside)
    image = fetched_once_expired(standin, archive, capsys, monkeypatch, cut["index"])
    assert (image["status"], image["sha256"], image["size"]) == ("ok", cut["sha256"],
                                                                 cut["size"])
    assert {e["status"] for e in images_of(archive)} == {"ok"}
    assert not (archive / "tmp" / "1.committed").exists()
    later = datetime.now(UTC) + timedelta(hours=12)
    assert cli(capsys, "gc", "--archive", str(archive), now=later).code == 0
    assert all(blob_file(archive, data).read_bytes() == data for data in images)


def test_gc_keeps_the_blob_of_a_line_cut_inside_its_sha256(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The line cut inside its sha256 (40 of its 64 digits), gc run before the next fetch
    (a weekly cron's gc, the daily fetch after): gc read only a sha256 written whole as
    the journal's, so it removed the blob the fetch would rebuild the line from, the
    image's only copy, the tune expired: that fetch failed it, the one after said it
    'gone upstream, never archived'. gc keeps the one blob the digits name, as fetch
    reads them."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    cut = cut_last_line(archive, inside_its_sha256=True)
    later = datetime.now(UTC) + timedelta(hours=12)
    assert cli(capsys, "gc", "--archive", str(archive), now=later).code == 0
    assert all(blob_file(archive, image).read_bytes() == image for image in images)
    image = fetched_once_expired(standin, archive, capsys, monkeypatch, cut["index"])
    assert (image["status"], image["sha256"]) == ("ok", cut["sha256"])


def cut_last_line(archive: Path, inside_its_sha256: bool) -> dict[str, Any]:
    """Tune 1's journal's last line cut short by a full disk: past its sha256, or 40
    digits into it (16 is what a fetch needs to find the blob). The entry the line was."""
    journal = archive / "tmp" / "1.committed"
    data = journal.read_bytes()
    last = data.splitlines()[-1]
    kept = last.index(b'"sha256":"') + 50 if inside_its_sha256 else len(last) - 11
    journal.write_bytes(data[:len(data) - len(last) - 1 + kept])
    entry: dict[str, Any] = json.loads(last)
    return entry


def fetched_once_expired(standin: StandIn, archive: Path,
                         capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                         index: int) -> dict[str, Any]:
    """Tune 1 expired upstream, then fetched: the manifest's entry of training image
    `index`, no line said of any training image."""
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    expire(standin)
    ran = cli(capsys, "fetch", "1", "--archive", str(archive), "--api-url", standin.api_url)
    assert not [line for line in ran.errors if "training_image" in line]
    [image] = [e for e in images_of(archive) if e["index"] == index]
    return image
