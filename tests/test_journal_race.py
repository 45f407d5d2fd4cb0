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

from tests.archive_helpers import cli
from tests.helpers import Sleeps, blob_file, run_fetch
from tests.standin import StandIn
from tests.test_journal import journal_lines
from tests.test_process import finish, start_fetch
from tune_archiver.commands.fetch import fetch
from tune_archiver.config import RetryPolicy, Settings
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
