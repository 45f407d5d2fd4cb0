"""partial.Partial with spans: split, writes out of order, prefix hashing, resume records."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tune_archiver.download import partfile as partfile_module
from tune_archiver.download import partial as partial_module
from tune_archiver.download import staging as staging_module
from tune_archiver.download import syncing as syncing_module
from tune_archiver.download.partial import Partial
from tune_archiver.download.staging import Staging
from tune_archiver.errors import IntegrityError, StorageError
from tune_archiver.store.local import LocalStore
from tune_archiver.urls import identity

KEY = "https://cdn.example/model.safetensors"
DATA = os.urandom(1000)
ENOUGH = 30.0  # a guard against hanging, never a wait for something to happen


def new_partial(tmp_path: Path, total: int = len(DATA)) -> Partial:
    partial = Partial.open(tmp_path, KEY, tmp_path)
    partial.describe('"etag-1"', total)
    return partial


def reopen(tmp_path: Path) -> Partial:
    """The partial a later run takes over, its bytes hashed (as Staging.open does)."""
    partial = Partial.open(tmp_path, KEY, tmp_path)
    partial.catch_up_hash(None)
    return partial


def reopen_after_a_reboot(tmp_path: Path) -> Partial:
    """Reopen the partial as a run in another boot would: its sidecar names another boot."""
    [sidecar] = tmp_path.glob("*.json")
    state = json.loads(sidecar.read_text())
    state["boot_id"] = "another boot"
    sidecar.write_text(json.dumps(state))
    return reopen(tmp_path)


def test_split_keeps_the_bytes_on_disk_as_the_first_span(tmp_path: Path) -> None:
    """Spans tile the file; what a single stream had written is the first span's progress."""
    partial = new_partial(tmp_path)
    partial.append([DATA[:100]])
    partial.split(300)
    assert partial.spans == [[0, 100, 400], [400, 400, 700], [700, 700, 1000]]


def test_spans_written_out_of_order_hash_to_the_whole(tmp_path: Path) -> None:
    """The hash waits for the prefix to be contiguous, then covers every byte once."""
    partial = new_partial(tmp_path)
    partial.split(500)
    partial.write_span(1, [DATA[500:]])
    assert partial.catch_up_hash(None) == 0  # nothing continues the prefix yet
    with pytest.raises(IntegrityError):
        partial.sha256()
    partial.write_span(0, [DATA[:250]])
    assert partial.catch_up_hash(None) == 250
    partial.write_span(0, [DATA[250:500]])
    assert partial.catch_up_hash(None) == 750
    assert partial.sha256() == hashlib.sha256(DATA).hexdigest()
    partial.close(keep=False)


def test_a_span_refuses_bytes_past_its_end(tmp_path: Path) -> None:
    """A server that sends more than the range asked for is caught before the write."""
    partial = new_partial(tmp_path)
    partial.split(500)
    with pytest.raises(IntegrityError):
        partial.write_span(0, [DATA[:501]])
    assert partial.spans is not None
    assert partial.spans[0][1] == 0


def test_spans_are_resumed_from_the_sidecar(tmp_path: Path) -> None:
    """A later run in the same boot takes over every span's progress and the prefix hash."""
    partial = new_partial(tmp_path)
    partial.split(500)
    partial.write_span(0, [DATA[:300]])
    partial.write_span(1, [DATA[500:600]])
    partial.close(keep=True)
    again = reopen(tmp_path)
    assert again.spans == [[0, 300, 500], [500, 600, 1000]]
    assert again.hashed == 300
    again.write_span(0, [DATA[300:500]])
    again.write_span(1, [DATA[600:]])
    again.catch_up_hash(None)
    assert again.sha256() == hashlib.sha256(DATA).hexdigest()
    again.close(keep=False)


def test_after_a_reboot_only_synced_spans_count(tmp_path: Path) -> None:
    """In another boot, the spans recorded at the last fsync are trusted, not the latest."""
    partial = new_partial(tmp_path)
    partial.append([DATA[:100]])
    partial.split(500)
    partial.write_span(0, [DATA[100:300]])
    partial.close(keep=True)
    again = reopen_after_a_reboot(tmp_path)
    assert again.size == 0  # nothing had been fsynced: the file starts over
    assert again.spans is None
    again.close(keep=False)


def test_after_a_reboot_synced_spans_are_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress recorded at an fsync survives a reboot; later, unsynced progress does not."""
    monkeypatch.setattr(syncing_module, "SYNC_EVERY", 250)
    partial = new_partial(tmp_path)
    partial.split(500)
    partial.write_span(0, [DATA[:300]])  # 300 bytes: an fsync, and its record
    partial.write_span(1, [DATA[500:600]])  # 100 more: not yet synced
    partial.close(keep=True)
    again = reopen_after_a_reboot(tmp_path)
    assert again.spans == [[0, 300, 500], [500, 500, 1000]]
    again.close(keep=False)


def test_a_partial_that_is_not_durable_is_never_fsynced_and_a_reboot_starts_it_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 archive's partial: no periodic fsync, none at finish, and no byte recorded
    as durable; a kill in the same boot still resumes from the file's length."""
    monkeypatch.setattr(syncing_module, "SYNC_EVERY", 250)
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    partial = Partial.open(tmp_path, KEY, tmp_path, durable=False)
    partial.describe('"etag-1"', len(DATA))
    partial.append([DATA[:300]])
    partial.append([DATA[300:600]])
    partial.close(keep=True)
    again = Partial.open(tmp_path, KEY, tmp_path, durable=False)
    assert again.size == 600  # the same boot: its length is trusted
    again.close(keep=True)
    assert synced == []
    assert reopen_after_a_reboot(tmp_path).size == 0


def test_a_partial_that_is_not_durable_finishes_without_an_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    partial = Partial.open(tmp_path, KEY, tmp_path, durable=False)
    partial.describe('"etag-1"', len(DATA))
    partial.append([DATA])
    partial.finish()
    assert synced == []
    assert partial.sha256() == hashlib.sha256(DATA).hexdigest()
    partial.detach()


def test_a_resume_in_the_same_boot_fsyncs_before_it_records_bytes_as_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the same boot the file's length is trusted, not fsynced: the resume fsyncs it
    before any record says those bytes would survive a reboot."""
    partial = new_partial(tmp_path)
    partial.append([DATA[:300]])  # under SYNC_EVERY: never fsynced
    partial.close(keep=True)
    assert json.loads(partial.path.with_suffix(".json").read_text())["synced"] == 0
    fsync = os.fsync
    synced: list[int] = []

    def recorded(fd: int) -> None:
        synced.append(fd)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recorded)
    again = reopen(tmp_path)
    assert again.size == 300
    assert len(synced) == 1
    again.close(keep=True)
    assert json.loads(partial.path.with_suffix(".json").read_text())["synced"] == 300
    assert reopen_after_a_reboot(tmp_path).size == 300


def test_a_finished_partial_whose_commit_failed_is_kept_whole_for_the_next_run(
    tmp_path: Path,
) -> None:
    """finish removes the resume record (no later run may resume a blob); a commit that
    then fails puts it back, with every byte durable and the file writable again."""
    partial = new_partial(tmp_path)
    partial.append([DATA])
    partial.finish()
    assert not partial.path.with_suffix(".json").exists()
    partial.close(keep=True)
    assert partial.path.stat().st_mode & 0o777 == 0o600
    assert json.loads(partial.path.with_suffix(".json").read_text())["synced"] == len(DATA)
    again = reopen_after_a_reboot(tmp_path)
    assert again.complete
    assert again.sha256() == hashlib.sha256(DATA).hexdigest()
    again.close(keep=False)


def test_a_file_with_no_validator_is_kept_only_whole(tmp_path: Path) -> None:
    """No validator: the bytes of a broken-off download vouch for nothing (the rest could
    not be asked for safely), so its record is never taken; received whole, and its
    commit failed, it is kept, and the next run takes it as it is, after a reboot too."""
    broken = Partial.open(tmp_path, KEY, tmp_path)
    broken.describe(None, len(DATA))
    broken.append([DATA[:600]])
    broken.save()
    broken.close(keep=True)
    started_over = reopen(tmp_path)
    assert started_over.size == 0
    started_over.close(keep=False)

    whole = Partial.open(tmp_path, KEY, tmp_path)
    whole.describe(None, None)  # no length said either: the size is known once all is in
    whole.append([DATA])
    whole.finish()
    whole.close(keep=True)
    again = reopen_after_a_reboot(tmp_path)
    assert (again.complete, again.validator) == (True, None)
    assert again.sha256() == hashlib.sha256(DATA).hexdigest()
    again.close(keep=False)


def test_a_partial_committed_just_before_a_cancel_gets_no_record_back(tmp_path: Path) -> None:
    """Its name went with the commit (a rename): nothing is recorded for what is there now."""
    partial = new_partial(tmp_path)
    partial.append([DATA])
    partial.finish()
    partial.path.rename(tmp_path / "blob")
    partial.close(keep=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["blob"]


@pytest.mark.parametrize(
    "spans",
    [
        [[0, 300, 500], [400, 400, 1000]],  # overlapping
        [[0, 300, 500]],  # short of the total
        [[0, 600, 500], [500, 500, 1000]],  # past its end
        [[0, 300, 500], [500, 900, 1000]],  # claims bytes past the file's end
        "nonsense",
    ],
)
def test_spans_that_do_not_add_up_start_the_file_over(tmp_path: Path, spans: object) -> None:
    """Damaged span records are never trusted, nor is the holed file's length."""
    partial = new_partial(tmp_path)
    partial.split(500)
    partial.write_span(0, [DATA[:300]])
    partial.close(keep=True)
    [sidecar] = tmp_path.glob("*.json")
    state = json.loads(sidecar.read_text())
    state["spans"] = spans
    sidecar.write_text(json.dumps(state))
    again = reopen(tmp_path)
    assert again.spans is None
    assert again.size == 0
    again.close(keep=False)


def test_split_leaves_no_runt_piece_at_the_end(tmp_path: Path) -> None:
    """A last piece under half the size joins the one before it."""
    partial = new_partial(tmp_path)
    partial.split(450)
    assert partial.spans == [[0, 0, 450], [450, 450, 1000]]


def test_a_sidecar_that_cannot_be_written_is_a_storage_error(tmp_path: Path) -> None:
    """When the sidecar cannot be written (here its temporary name is taken by a folder;
    a full disk fails the same way) the error is ours, one line, never a raw OSError; and
    closing the partial afterwards does not raise."""
    partial = new_partial(tmp_path)
    partial.append([DATA[:100]])
    [taken] = [tmp_path / f".{partial.path.with_suffix('.json').name}.tmp"]
    taken.mkdir()
    with pytest.raises(StorageError, match="cannot record a download's progress"):
        partial.save()
    partial.close(keep=True)


def test_the_sidecar_has_one_writer_while_a_sync_records_in_its_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The periodic fsync records progress from a thread of its own; a save asked for
    meanwhile (a retry's new validator) waits its turn: the sidecar's one temp name is
    never written by two at once (that failed the download with a StorageError)."""
    monkeypatch.setattr(syncing_module, "SYNC_EVERY", 250)
    inside, most = 0, 0
    lock = threading.Lock()
    entered = threading.Event()
    release = threading.Event()
    real = partial_module.write_private

    def write_private(path: Path, data: bytes, sync: bool = True) -> None:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        if threading.current_thread() is not threading.main_thread():
            entered.set()  # the sync's record: hold it until the main thread has tried
            assert release.wait(ENOUGH)
        real(path, data, sync)
        with lock:
            inside -= 1

    monkeypatch.setattr(partial_module, "write_private", write_private)
    partial = new_partial(tmp_path)
    partial.append([DATA[:300]])  # past SYNC_EVERY: the sync starts in its own thread
    assert entered.wait(ENOUGH)
    saver = threading.Thread(target=partial.save)
    saver.start()
    saver.join(0.2)  # a bound, not a wait for an event: it must still be queued behind
    assert saver.is_alive()
    release.set()
    saver.join(ENOUGH)
    assert most == 1
    partial.close(keep=True)
    assert json.loads(partial.path.with_suffix(".json").read_text())["synced"] == 300


@pytest.mark.parametrize("validator", ['"etag-1"', None], ids=["resumable", "kept-whole"])
def test_a_stop_while_a_taken_over_partial_is_hashed_keeps_no_one_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, validator: str | None
) -> None:
    """The bytes an earlier run left (GBs of a checkpoint, read back cold after a
    reboot) are hashed a step at a time: a Ctrl-C meanwhile stops at the next step,
    never after reading all of them, and the partial is kept as it was: one to resume,
    or one received whole (with no validator) whose commit failed."""
    monkeypatch.setattr(partfile_module, "READ_BLOCK", 4096)
    monkeypatch.setattr(staging_module, "HASH_STEP", 8 * 4096)
    data = os.urandom(64 * 4096)
    left = Partial.open(tmp_path, identity(KEY), tmp_path)
    left.describe(validator, 2 * len(data) if validator else len(data))
    left.append([data])
    if validator is None:
        left.finish()  # and its commit failed
    left.close(keep=True)
    started, stopped = threading.Event(), threading.Event()
    read: list[int] = []
    blocks = partfile_module.ReadBack.blocks

    def slow_blocks(self: object, fd: int, start: int, end: int) -> Iterator[memoryview]:
        for block in blocks(self, fd, start, end):  # type: ignore[arg-type]
            read.append(len(block))
            started.set()
            assert stopped.wait(ENOUGH)
            yield block

    monkeypatch.setattr(partfile_module.ReadBack, "blocks", slow_blocks)

    async def stop_it() -> None:
        staging = Staging(tmp_path)
        opening = asyncio.ensure_future(staging.open(KEY, LocalStore(tmp_path / "archive")))
        await asyncio.to_thread(started.wait, ENOUGH)
        opening.cancel()
        stopped.set()
        with pytest.raises(asyncio.CancelledError):
            await opening

    asyncio.run(stop_it())
    assert sum(read) <= 8 * 4096 < len(data)
    monkeypatch.undo()
    again = Partial.open(tmp_path, identity(KEY), tmp_path)
    assert again.size == len(data)
    again.close(keep=False)


def test_a_restart_stops_the_record_vouching_for_the_pieces_it_dropped(tmp_path: Path) -> None:
    """A split file whose host then refused a range starts over in one stream: the record
    says so at once, before a byte of the stream is written. It kept listing the pieces
    (fsynced at the resume) until its next save, so a run killed before that, then a
    power cut that lost the stream's unsynced bytes, had the next run take the pieces'
    ranges as received: zeros in a blob named by their hash."""
    partial = new_partial(tmp_path)
    partial.split(500)
    partial.write_span(0, [DATA[:300]])
    partial.close(keep=True)
    partial = reopen(tmp_path)  # the next run: the pieces on disk are fsynced, so durable
    partial.write_span(1, [DATA[500:600]])
    partial.save()  # as each piece is in
    partial.reset()  # a range answered with the whole file: one stream from the first byte
    partial.append([DATA[:700]])  # far under SYNC_EVERY: no fsync, no record since
    partial.detach()  # SIGKILL: no close records anything
    partial.path.write_bytes(bytes(700))  # the power cut: unsynced bytes never reached the disk
    again = reopen_after_a_reboot(tmp_path)
    assert again.size == 0
    assert again.spans is None
    again.close(keep=False)


@pytest.mark.parametrize("hashed", [0, 100])
def test_a_run_stopped_while_checking_kept_bytes_keeps_the_earlier_record(
    tmp_path: Path, hashed: int,
) -> None:
    """A run stopped while it read back the bytes an earlier run kept (before reaching the
    length that run's sha256 covers) recorded the sha256 of what it had read so far, or
    none: a byte the disk changed past it was resumed as received, and archived. The
    earlier record stays until the bytes read back reach it."""
    partial = new_partial(tmp_path, 2000)
    partial.append([DATA])
    partial.close(keep=True)
    stopped = Partial.open(tmp_path, KEY, tmp_path)
    stopped.catch_up_hash(hashed)
    stopped.close(keep=True)
    [part] = tmp_path.glob("*.part")
    with part.open("r+b") as file:
        file.seek(500)
        file.write(bytes([DATA[500] ^ 0xFF]))
    again = reopen(tmp_path)
    assert (again.size, again.hashed) == (0, 0)  # started over
    again.close(keep=False)
