"""Two runs of one tune at once: one's settle of the journal never drops a line the other
has written for a blob it is still storing."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.archive_helpers import cli, manifest_of
from tests.helpers import Sleeps, blob_file, run_fetch
from tests.standin import StandIn
from tests.test_journal import entry_of, journal_lines
from tests.test_process import finish, start_fetch
from tune_archiver.commands.fetch import fetch
from tune_archiver.config import RetryPolicy, Settings
from tune_archiver.download.journal import Journals
from tune_archiver.progress import NullProgress
from tune_archiver.store import local


def test_another_runs_settle_keeps_the_line_of_a_blob_being_stored(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 'fetch 1 --prompts' storing a prompt's image (a bucket's upload takes minutes)
    while the daily plain fetch of the tune finishes: its settle found the image's blob
    not stored yet and dropped its line, then the first run was stopped before its
    manifest, so the blob, stored, was named by nothing and gc removed it."""
    archive = tmp_path / "archive"
    standin.add_tune(1, [standin.add_file("model", os.urandom(5000))],
                     [standin.add_file("i0.jpg", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 0
    made = os.urandom(4000)
    standin.add_prompt(1, 5, "a photo", [standin.add_file("p0.jpg", made)])
    storing, go = threading.Event(), threading.Event()
    store_blob = local.store_blob

    def held_store(*args: Any) -> None:
        storing.set()
        assert go.wait(20)
        store_blob(*args)

    monkeypatch.setattr(local, "store_blob", held_store)
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        retry=RetryPolicy(sleep=Sleeps()), prompts=True)

    async def raced() -> None:
        run = asyncio.create_task(fetch(settings, [1], NullProgress()))
        assert await asyncio.to_thread(storing.wait, 20)
        assert await asyncio.to_thread(finish, start_fetch(standin, archive, "1")) == 0
        run.cancel()
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(raced())
    assert blob_file(archive, made).read_bytes() == made
    assert [json.loads(line)["sha256"] for line in journal_lines(archive)] == [
        blob_file(archive, made).name]
    later = datetime.now(UTC) + timedelta(hours=2)  # past an S3 store's grace, were it one
    assert cli(capsys, "gc", "--archive", str(archive), now=later).code == 0
    assert blob_file(archive, made).read_bytes() == made


def test_a_journal_line_of_another_version_the_manifest_outranks_lets_it_settle(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Two runs archived two versions of one image (its host served other bytes to each)
    and the manifest recorded one: the other's journal line, whose blob is held, kept the
    journal for good, since each fetch --all took the tune up for it and marked it used
    (gc never swept it), and the blob it named with it."""
    archive = tmp_path / "archive"
    first, other = os.urandom(3000), os.urandom(3001)
    standin.add_tune(1, [standin.add_file("model", os.urandom(5000))],
                     [standin.add_file("i0.jpg", first)])
    assert run_fetch(standin, archive, "1") == 0
    document = manifest_of(archive, 1)
    image = next(e for e in document["assets"] if e["kind"] == "training_image")
    held = blob_file(archive, other)
    held.parent.mkdir(exist_ok=True)
    held.write_bytes(other)
    asyncio.run(Journals(archive / "tmp").record(1, {
        **image, "sha256": held.name, "size": len(other),
        "path": f"objects/sha256/{held.name[:2]}/{held.name}"}, lambda: document["tune"]))
    assert run_fetch(standin, archive, "--all") == 0
    assert not (archive / "tmp" / "1.committed").exists()
    assert manifest_of(archive, 1)["assets"] == document["assets"]
    asked = len(standin.seen("api", "/tunes/1"))
    assert run_fetch(standin, archive, "--all") == 0
    assert len(standin.seen("api", "/tunes/1")) == asked  # unchanged: skipped
    later = datetime.now(UTC) + timedelta(hours=2)
    assert cli(capsys, "gc", "--archive", str(archive), now=later).code == 0
    assert not held.exists()
    assert blob_file(archive, first).read_bytes() == first


def test_a_line_appended_while_a_settle_asks_the_store_keeps_the_journal(
    tmp_path: Path,
) -> None:
    """A line whose blob was not stored (a commit a kill met) is dropped by the settle of
    the tune's next run, which asks the store first, the journal unlocked: another run
    committing that very file meanwhile appended its line and stored the blob, and the
    settle, asking nothing again, removed the journal with that run's line (stopped
    before its manifest, its blob then named by nothing, and gc took it)."""
    journals = Journals(tmp_path)
    ours, lost = entry_of(0, "a"), entry_of(1, "b")

    async def held(sha256: str) -> int | None:  # the other run commits the file now
        if sha256 == lost["sha256"]:
            journals.note(1, lost, lambda: {"id": 1})
            return None  # asked before it was stored
        return 10

    async def steps() -> None:
        await journals.record(1, ours, lambda: {"id": 1})
        await journals.record(1, lost, lambda: {"id": 1})  # its commit met by a kill
        await journals.settle(1, {ours["sha256"]}, held)

    asyncio.run(steps())
    assert [e.sha256 for e in asyncio.run(journals.entries(1))] == [
        "a" * 64, "b" * 64, "b" * 64]
