"""Parts go up several at once, never more than PARTS_IN_FLIGHT, each read only when it may
start (so memory is parts in flight x part size); a failure among them stores nothing;
a live upload that fell behind is replaced by an upload straight to the blob key."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp.payload
import pytest
from botocore.exceptions import ConnectionClosedError

from tests.s3server import (  # noqa: F401  (fixtures)
    Bucket,
    aio_session_fixture,
    aws_env_fixture,
    bucket_fixture,
    moto_s3_fixture,
)
from tests.test_s3store import PREFIX, count_requests, downloaded, key_of, left_over, opened
from tune_archiver.errors import IntegrityError, StorageError
from tune_archiver.layout import blob_key
from tune_archiver.models import Blob
from tune_archiver.store.s3 import live as live_module
from tune_archiver.store.s3 import parts as parts_module
from tune_archiver.store.s3 import transfer
from tune_archiver.store.s3.intake import S3Intake
from tune_archiver.store.s3.store import MIN_PART, S3Store

PART = MIN_PART
LIMIT = transfer.PARTS_IN_FLIGHT
ENOUGH = 60.0  # a guard against hanging, never a wait for something to happen


class InFlight:
    """Records how many UploadParts are in flight at once, and how many parts are held
    (read, not yet answered). Each part is held at the door until LIMIT are in flight,
    so parts sent one at a time would never get through (the test fails, not hangs)."""

    def __init__(self, store: S3Store, only: Callable[[str], bool] = lambda key: True) -> None:
        self.active = self.peak = self.read = self.answered = self.held_peak = 0
        self._full = asyncio.Event()
        self._only = only
        self._bucket = store.bucket
        events = store.bucket.client.meta.events
        events.register("before-send.s3.UploadPart", self._before)
        events.register("after-call.s3.UploadPart", self._after)

    async def _before(self, request: Any, **_: Any) -> None:
        if not self._only(request.url):
            return
        self.active += 1
        self.peak = max(self.peak, self.active)
        if self.active >= LIMIT:
            self._full.set()
        await asyncio.wait_for(self._full.wait(), ENOUGH)

    def _after(self, **_: Any) -> None:
        self.active -= 1
        self.answered += 1

    def count_reads(self, monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
        """Count the parts `module` reads, and the most held at once."""
        real = module.read_part

        def counted(*args: Any) -> tuple[io.BytesIO, str]:
            self.read += 1
            self.held_peak = max(self.held_peak, self.read - self.answered)
            result: tuple[io.BytesIO, str] = real(*args)
            return result

        monkeypatch.setattr(module, "read_part", counted)


async def test_an_upload_sends_parts_several_at_once_and_holds_no_more(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten parts: LIMIT of them in flight at once, never more read than that."""
    data = os.urandom(10 * PART + 17)
    path = tmp_path / "file"
    path.write_bytes(data)
    blob = Blob(hashlib.sha256(data).hexdigest(), len(data))
    async with opened(bucket, tmp_path) as store:
        flight = InFlight(store)
        flight.count_reads(monkeypatch, transfer)
        await transfer.upload(store.bucket, f"{PREFIX}/x", path, blob)
    assert flight.peak == LIMIT
    assert flight.read == flight.answered == 11
    assert flight.held_peak <= LIMIT
    assert await bucket.get(f"{PREFIX}/x") == data


async def test_a_parts_buffer_is_freed_once_answered_not_when_the_collector_comes(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part answered gives its buffer back at once: held on by botocore's and aiohttp's
    request objects (at times in cycles only the collector frees), a third part's was
    read beside the two in flight, W6's peak RSS a part higher. Here every buffer is
    kept referenced: only closing it frees it."""
    data = os.urandom(6 * PART + 5)
    path = tmp_path / "file"
    path.write_bytes(data)
    bodies: list[io.BytesIO] = []
    open_when_read: list[int] = []
    real = transfer.read_part

    def read(*args: Any) -> tuple[io.BytesIO, str]:
        open_when_read.append(sum(not body.closed for body in bodies))
        body, checksum = real(*args)
        bodies.append(body)
        return body, checksum

    monkeypatch.setattr(transfer, "read_part", read)
    async with opened(bucket, tmp_path) as store:
        await transfer.upload(store.bucket, f"{PREFIX}/x", path,
                              Blob(hashlib.sha256(data).hexdigest(), len(data)))
    assert len(bodies) == 7
    assert all(body.closed for body in bodies)
    assert max(open_when_read) < LIMIT  # the others in flight, never one answered
    assert await bucket.get(f"{PREFIX}/x") == data


async def test_an_upload_in_parts_gives_back_free_memory_before_it_reads_one(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the download freed goes back to the system before the part buffers are made;
    a file sent in one request makes none, and costs no trim."""
    events: list[str] = []
    real_read = transfer.read_part

    def read(*args: Any) -> tuple[io.BytesIO, str]:
        events.append("read")
        result: tuple[io.BytesIO, str] = real_read(*args)
        return result

    monkeypatch.setattr(transfer, "read_part", read)
    monkeypatch.setattr(transfer, "give_back_free_memory", lambda: events.append("trim"))
    async with opened(bucket, tmp_path) as store:
        for name, size in (("large", 2 * PART + 1), ("small", 1000)):
            data = os.urandom(size)
            path = tmp_path / name
            path.write_bytes(data)
            blob = Blob(hashlib.sha256(data).hexdigest(), len(data))
            await transfer.upload(store.bucket, f"{PREFIX}/{name}", path, blob)
    assert events == ["trim", "read", "read", "read", "read"]


async def test_a_live_upload_sends_parts_several_at_once_and_holds_no_more(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole parts on disk go up LIMIT at a time while the download goes on."""
    data = os.urandom(2 * LIMIT * PART)
    async with opened(bucket, tmp_path) as store:
        flight = InFlight(store)
        flight.count_reads(monkeypatch, live_module)
        incoming = await downloaded(store, tmp_path, data)
        assert isinstance(incoming.intake, S3Intake)
        await incoming.intake.live.idle()
        assert flight.peak == LIMIT
        assert flight.read == flight.answered == 2 * LIMIT
        assert flight.held_peak <= LIMIT
        blob = await incoming.commit(None)
    assert await bucket.get(f"{PREFIX}/{blob_key(blob.sha256)}") == data
    assert await left_over(bucket) == ([], [])


def holding_live_parts(store: S3Store) -> None:
    """The live upload's parts never get through: it falls behind the download, on a
    store known (from a part answered earlier in the run) to keep SHA-256s."""
    store.bucket.keeps_checksums = True

    async def hold(request: Any, **_: Any) -> None:
        if "/tmp/upload-live-" in request.url:
            await asyncio.Event().wait()  # until the commit cancels it

    store.bucket.client.meta.events.register("before-send.s3.UploadPart", hold)


async def test_a_live_upload_that_fell_behind_gives_way_to_one_straight_to_the_blob_key(
    bucket: Bucket, tmp_path: Path
) -> None:
    """No temp object, no whole-blob copy: the parts go to the blob key, checked first."""
    data = os.urandom(3 * PART + 5)
    async with opened(bucket, tmp_path) as store:
        holding_live_parts(store)
        requests = count_requests(store)
        incoming = await downloaded(store, tmp_path, data)
        blob = await incoming.commit(None)
    final = f"{PREFIX}/{blob_key(blob.sha256)}"
    assert await bucket.get(final) == data
    assert requests["CopyObject"] == requests["UploadPartCopy"] == 0
    assert requests["ListParts"] == 1
    assert requests["CompleteMultipartUpload"] == 1
    assert await left_over(bucket) == ([], [])  # the live upload was aborted


async def test_parts_the_store_holds_wrongly_never_complete_at_the_blob_key(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A part replaced in the store (another size) is caught before the upload completes:
    the blob key never shows anything, and the upload is aborted."""
    data = os.urandom(2 * PART + 5)

    async def replace_part(request: Any, **_: Any) -> None:
        upload_id = parse_qs(urlsplit(request.url).query)["uploadId"][0]
        await bucket.client.upload_part(
            Bucket=bucket.name, Key=key_of(request, bucket), UploadId=upload_id,
            PartNumber=1, Body=os.urandom(PART + 1),
        )

    async with opened(bucket, tmp_path) as store:
        holding_live_parts(store)
        store.bucket.client.meta.events.register("before-send.s3.ListParts", replace_part)
        incoming = await downloaded(store, tmp_path, data)
        with pytest.raises(IntegrityError, match="not those sent"):
            await incoming.commit(None)
        await incoming.release(keep=False)
    assert await bucket.keys() == []
    assert await left_over(bucket) == ([], [])


async def test_a_part_failing_among_others_in_flight_aborts_the_upload(
    bucket: Bucket, tmp_path: Path
) -> None:
    """The parts still in flight are cancelled, the upload aborted, nothing stored."""
    data = os.urandom(8 * PART)
    failed = []

    def fail(request: Any, **_: Any) -> None:
        if "partNumber=3&" in request.url + "&" and "/tmp/upload-live-" not in request.url:
            failed.append(request.url)
            raise ConnectionClosedError(endpoint_url=request.url)

    async with opened(bucket, tmp_path) as store:
        holding_live_parts(store)
        flight = InFlight(store, only=lambda url: "/tmp/upload-live-" not in url)
        store.bucket.client.meta.events.register("before-send.s3.UploadPart", fail)
        incoming = await downloaded(store, tmp_path, data)
        with pytest.raises(StorageError, match="cannot upload a blob"):
            await incoming.commit(None)
        assert failed
        assert flight.peak == LIMIT  # part 3 failed while others were in flight
        await incoming.release(keep=False)
    assert await bucket.keys() == []
    assert await left_over(bucket) == ([], [])


def test_a_part_is_handed_to_aiohttp_without_a_copy() -> None:
    """aiohttp's BytesIOPayload takes getbuffer() of the body: for a part read by read_part
    that costs nothing, where a BytesIO around bytes (what botocore makes of bytes) copies."""
    data = os.urandom(PART)
    path_fd = os.memfd_create("part")
    try:
        os.write(path_fd, data)
        body, checksum = parts_module.read_part(path_fd, 0, PART, None)
    finally:
        os.close(path_fd)
    assert body.getvalue() == data
    assert checksum == parts_module.b64(hashlib.sha256(data).digest())

    def cost(make: Callable[[], Any]) -> int:
        tracemalloc.start()
        try:
            kept = make()
            size = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        del kept
        return size

    assert cost(lambda: aiohttp.payload.BytesIOPayload(body)) < PART // 8
    assert cost(lambda: aiohttp.payload.BytesIOPayload(io.BytesIO(data))) >= PART


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
async def test_a_live_upload_that_cannot_keep_up_gives_up_before_the_commit(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts it would send only to throw away are not sent: it aborts as soon as it is
    judged behind, and the commit sends the file straight to its blob key."""
    monkeypatch.setattr(live_module, "JUDGED_FROM", 2)
    data = os.urandom(4 * PART)
    async with opened(bucket, tmp_path) as store:
        holding_live_parts(store)
        requests = count_requests(store)
        incoming = await downloaded(store, tmp_path, data)
        assert isinstance(incoming.intake, S3Intake)
        await incoming.intake.live.idle()
        assert incoming.intake.live.failed
        assert await bucket.uploads() == []  # aborted already
        blob = await incoming.commit(None)
    assert await bucket.get(f"{PREFIX}/{blob_key(blob.sha256)}") == data
    assert requests["CopyObject"] == 0
    assert await left_over(bucket) == ([], [])


async def test_a_live_upload_that_keeps_up_is_not_judged_behind(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole parts sent as they come: it goes on, and the commit finishes it (a copy)."""
    monkeypatch.setattr(live_module, "JUDGED_FROM", 2)
    data = os.urandom(4 * PART + 1)
    async with opened(bucket, tmp_path) as store:
        requests = count_requests(store)
        incoming = await downloaded(store, tmp_path, b"")
        assert isinstance(incoming.intake, S3Intake)
        for n in range(4):  # a part at a time, each sent before the next is written
            await asyncio.to_thread(incoming.partial.append, [data[n * PART : (n + 1) * PART]])
            await incoming.intake.live.idle()
        assert not incoming.intake.live.failed
        await asyncio.to_thread(incoming.partial.append, [data[4 * PART :]])
        blob = await incoming.commit(None)
    assert await bucket.get(f"{PREFIX}/{blob_key(blob.sha256)}") == data
    assert requests["UploadPart"] == 5
    assert requests["CopyObject"] == 1
    assert await left_over(bucket) == ([], [])


async def test_a_live_upload_is_judged_by_the_bytes_received_not_the_hashed_prefix(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A split download fills out of order: with three of four parts on disk but only a
    byte of the first, the upload has taken nothing of them, and gives up at once."""
    monkeypatch.setattr(live_module, "JUDGED_FROM", 2)
    data = os.urandom(4 * PART)
    async with opened(bucket, tmp_path) as store:
        incoming = await downloaded(store, tmp_path, b"")
        assert isinstance(incoming.intake, S3Intake)
        partial = incoming.partial
        partial.describe('"v1"', len(data))
        await asyncio.to_thread(partial.split, PART)
        for n in (1, 2, 3):
            await asyncio.to_thread(partial.write_span, n, [data[n * PART : (n + 1) * PART]])
        await asyncio.to_thread(partial.write_span, 0, [data[:1]])
        await asyncio.to_thread(partial.catch_up_hash, None)  # the prefix: one byte
        await incoming.intake.live.idle()
        assert incoming.intake.live.failed
        await incoming.release(keep=False)
    assert await left_over(bucket) == ([], [])


async def test_a_blob_another_writer_copied_over_a_straight_upload_is_never_removed(
    bucket: Bucket, tmp_path: Path
) -> None:
    """Two machines store one blob: this one straight to the blob key (its live upload
    fell behind), the other by its checked copy, which lands between this one's
    CompleteMultipartUpload and its check. The copy reports the whole bytes' SHA-256,
    not this upload's composite: the check took it for other bytes and deleted the blob
    the other machine's manifest names."""
    data = os.urandom(2 * PART + 5)
    final = f"{PREFIX}/{blob_key(hashlib.sha256(data).hexdigest())}"

    async def other_writer_copies(**_: Any) -> None:
        await bucket.put(final, data, ChecksumAlgorithm="SHA256")

    async with opened(bucket, tmp_path) as store:
        holding_live_parts(store)
        store.bucket.client.meta.events.register(
            "after-call.s3.CompleteMultipartUpload", other_writer_copies)
        incoming = await downloaded(store, tmp_path, data)
        blob = await incoming.commit(None)
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert await bucket.get(final) == data
    assert await left_over(bucket) == ([], [])


@pytest.mark.parametrize("direct", [False, True], ids=["live-upload", "straight-to-the-blob"])
async def test_an_upload_completed_though_its_answer_was_lost_is_stored(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    """CompleteMultipartUpload completes the upload, but its answer is lost (a read
    timeout while a store puts many parts together, a 500): botocore asks again, and a
    store that does not take that as done says NoSuchUpload. The commit failed with
    'not found' though every byte was in the bucket, and threw the completed object away;
    the key is checked instead, as after any completion."""
    completed = completions_answered_lost(monkeypatch)
    data = os.urandom(2 * PART + 5)
    async with opened(bucket, tmp_path, attempts=2) as store:
        if direct:
            holding_live_parts(store)
        incoming = await downloaded(store, tmp_path, data)
        assert isinstance(incoming.intake, S3Intake)
        if not direct:
            await incoming.intake.live.idle()
        blob = await incoming.commit(None)
    assert completed
    assert await bucket.get(f"{PREFIX}/{blob_key(blob.sha256)}") == data
    assert await left_over(bucket) == ([], [])


async def test_a_copy_past_the_copy_limit_completed_though_its_answer_was_lost_is_stored(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob past CopyObject's limit (a checkpoint over 5 GiB) reaches its blob key by a
    multipart copy, whose CompleteMultipartUpload answer can be lost as an upload's can:
    botocore asks again, and the store says NoSuchUpload. The commit failed with 'cannot
    upload a blob: not found', though the blob key held every byte."""
    completed = completions_answered_lost(monkeypatch, "/objects/")  # the copy's, not the upload's
    data = os.urandom(2 * PART + 5)
    async with opened(bucket, tmp_path, attempts=2, copy_limit=MIN_PART) as store:
        incoming = await downloaded(store, tmp_path, data)
        assert isinstance(incoming.intake, S3Intake)
        await incoming.intake.live.idle()
        blob = await incoming.commit(None)
    assert completed
    assert await bucket.get(f"{PREFIX}/{blob_key(blob.sha256)}") == data
    assert await left_over(bucket) == ([], [])


def completions_answered_lost(monkeypatch: pytest.MonkeyPatch, under: str = "") -> set[str]:
    """moto completes each multipart upload to a key holding `under`, then answers 500
    (the answer lost), and NoSuchUpload when asked again, as a store may: the ids of
    the uploads so completed, filled as they are."""
    from moto.s3.exceptions import NoSuchUpload
    from moto.s3.responses import S3Response

    real = S3Response._key_response_post
    completed: set[str] = set()

    def answer_lost(self: Any, request: Any, body: bytes, bucket_name: str,
                    query: dict[str, Any], key_name: str) -> Any:
        upload_id = (query.get("uploadId") or [""])[0]
        if upload_id in completed:
            raise NoSuchUpload(upload_id)
        answer = real(self, request, body, bucket_name, query, key_name)
        if upload_id and under in key_name:
            completed.add(upload_id)
            return 500, {}, b"<Error><Code>InternalError</Code><Message>lost</Message></Error>"
        return answer

    monkeypatch.setattr(S3Response, "_key_response_post", answer_lost)
    return completed
