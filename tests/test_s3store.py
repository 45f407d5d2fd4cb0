"""The S3 store against moto's real S3 API on 127.0.0.1 (tests/s3server.py)."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextlib import AbstractContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from werkzeug.serving import WSGIRequestHandler

from tests.s3server import (  # noqa: F401  (fixtures)
    SECRET_KEY,
    Bucket,
    aio_session_fixture,
    aws_env_fixture,
    bucket_fixture,
    moto_s3_fixture,
)
from tune_archiver.download import syncing as syncing_module
from tune_archiver.download.partial import RESUMABLE_FROM, Partial
from tune_archiver.download.staging import ENV_STAGING, Incoming, Staging, staging_for
from tune_archiver.errors import (
    ArchiverError,
    ConfigError,
    Denied,
    DiskFull,
    IntegrityError,
    StorageError,
    Unreachable,
)
from tune_archiver.layout import blob_key
from tune_archiver.models import Blob, StoredBlob
from tune_archiver.store.s3.config import INSTALL_HINT, client_config, install_hint
from tune_archiver.store.s3.errors import REACH, translated
from tune_archiver.store.s3.intake import S3Intake, drop_file
from tune_archiver.store.s3.store import MIN_PART, S3Store
from tune_archiver.store.s3.transfer import start_upload

PREFIX = "arch"
BIG = 2 * MIN_PART + 12345  # three parts of the smallest size S3 accepts
URL = "https://cdn.example/ckpt.safetensors"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@asynccontextmanager
async def opened(bucket: Bucket, tmp_path: Path, **options: Any) -> AsyncIterator[S3Store]:
    """A prepared store under s3://<bucket>/arch; no retries, parts of 5 MiB."""
    options = {"part_size": MIN_PART, "attempts": 1, "session": bucket.session, **options}
    url = options.pop("url", f"s3://{bucket.name}/{PREFIX}")
    store = S3Store(url, bucket.endpoint, **options)
    async with store:
        await store.prepare()
        yield store


async def downloaded(store: S3Store, tmp_path: Path, data: bytes, url: str = URL) -> Incoming:
    """A finished download holding `data`, staged in tmp_path/staging, followed by the store."""
    staging = Staging(tmp_path / "staging", durable=False)  # as staging_for stages for S3
    await staging.prepare()
    incoming = await staging.open(url, store)
    await asyncio.to_thread(incoming.partial.append, [data])
    return incoming


async def sent_ahead(store: S3Store, tmp_path: Path, data: bytes) -> Incoming:
    """As `downloaded`, once the live upload has sent every whole part: the commit then
    finishes that upload and copies it to the blob key (see intake.LIVE_KEPT_FROM)."""
    incoming = await downloaded(store, tmp_path, data)
    assert isinstance(incoming.intake, S3Intake)
    await incoming.intake.live.idle()
    return incoming


def count_requests(store: S3Store) -> Counter[str]:
    """A live count of the store's requests, by S3 operation name."""
    counts: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        counts[event_name.rsplit(".", 1)[-1]] += 1

    store.bucket.client.meta.events.register("before-send.s3", count)
    return counts


def key_of(request: Any, bucket: Bucket) -> str:
    return unquote(urlsplit(request.url).path).removeprefix(f"/{bucket.name}/")


async def left_over(bucket: Bucket) -> tuple[list[str], list[str]]:
    """(temp keys, open multipart uploads): both must be empty after any commit."""
    return await bucket.keys(f"{PREFIX}/tmp/"), await bucket.uploads()


# -- commit ---------------------------------------------------------------------


async def test_commit_uploads_a_blob_whose_bytes_match_its_name(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A small blob is PUT once, at its sha256 key with its content type; the partial goes."""
    data = os.urandom(100_000)
    async with opened(bucket, tmp_path) as store:
        partial = await downloaded(store, tmp_path, data)
        requests = count_requests(store)
        blob = await partial.commit("image/png")
        assert blob == Blob(sha(data), len(data), "image/png")
        assert await store.blob_size(sha(data)) == len(data)
    key = f"{PREFIX}/{blob_key(sha(data))}"
    assert sha(await bucket.get(key)) == sha(data)
    head = await bucket.head(key)
    assert head is not None
    assert head["ContentType"] == "image/png"
    assert requests["PutObject"] == 1
    assert requests["CreateMultipartUpload"] == 0
    assert not partial.partial.path.exists()
    assert await left_over(bucket) == ([], [])


async def test_commit_of_a_blob_already_stored_uploads_nothing(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A blob present with its size is found by HEAD; the second commit sends no bytes."""
    data = os.urandom(50_000)
    async with opened(bucket, tmp_path) as store:
        assert await store.blob_size(sha(data)) is None
        await (await downloaded(store, tmp_path, data)).commit(None)
        assert await store.blob_size(sha(data)) == len(data)
        again = await downloaded(store, tmp_path, data, "https://other.example/same.bin")
        requests = count_requests(store)
        assert await again.commit(None) == Blob(sha(data), len(data), "application/octet-stream")
    assert dict(requests) == {"HeadObject": 1}
    assert not again.partial.path.exists()


def age(bucket: Bucket, key: str, by: timedelta) -> None:
    """Make moto's object at `key` look `by` older, as if written that long ago."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    found = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(bucket.name, key)
    assert found is not None
    found.last_modified -= by


async def stored_days_ago(store: S3Store, bucket: Bucket, tmp_path: Path,
                          data: bytes) -> Incoming:
    """`data` stored as a blob three days ago, and a second download of the same bytes
    (another URL, another tune's) ready to commit."""
    await (await downloaded(store, tmp_path, data)).commit(None)
    age(bucket, f"{PREFIX}/{blob_key(sha(data))}", timedelta(days=3))
    return await downloaded(store, tmp_path, data, "https://other.example/same.bin")


@pytest.mark.parametrize("size", [50_000, BIG], ids=["small", "past-the-copy-limit"])
async def test_a_commit_of_an_old_blob_keeps_it_from_gc(
    bucket: Bucket, tmp_path: Path, size: int
) -> None:
    """A blob stored days ago and referenced by no manifest (its tune forgotten) is
    committed again by a fetch about to name it: gc on another machine, which has no lock
    to wait for, must see it as young. A blob past CopyObject's limit was never
    refreshed, so gc removed it and the manifest written next named a missing blob."""
    from tune_archiver.commands.gc import collect

    data = os.urandom(size)
    key = f"{PREFIX}/{blob_key(sha(data))}"
    async with opened(bucket, tmp_path, copy_limit=MIN_PART) as store:
        again = await stored_days_ago(store, bucket, tmp_path, data)
        await again.commit(None)
        found = await collect(store, datetime.now(UTC), False,
                              Staging(tmp_path / "gc-staging", durable=False))
    assert found.blobs == []
    assert sha(await bucket.get(key)) == sha(data)
    assert await left_over(bucket) == ([], [])


async def test_a_commit_on_a_machine_whose_clock_runs_behind_refreshes_an_old_blob(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit read a reused blob's age as its bucket's date against the fetch's own
    clock: on a machine a week behind (a VM resumed late) a blob stored three days ago
    looked young, was not refreshed, and was not looked up again before the manifest
    named it: a gc elsewhere took it meanwhile, and the manifest named a missing blob
    ok. Its age is read by the bucket's clock, as gc reads it."""
    from tune_archiver.commands.gc import collect
    from tune_archiver.store.s3 import intake

    class Behind(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Behind:
            return cls.fromtimestamp((datetime.now(tz) - timedelta(days=7)).timestamp(), tz)

    data = os.urandom(50_000)
    key = f"{PREFIX}/{blob_key(sha(data))}"
    async with opened(bucket, tmp_path) as store:
        again = await stored_days_ago(store, bucket, tmp_path, data)
        monkeypatch.setattr(intake, "datetime", Behind)
        await again.commit(None)
        found = await collect(store, datetime.now(UTC), False,
                              Staging(tmp_path / "gc-staging", durable=False))
    assert found.blobs == []
    assert sha(await bucket.get(key)) == sha(data)


@pytest.mark.parametrize("size", [50_000, BIG], ids=["small", "past-the-copy-limit"])
async def test_an_old_blob_gc_removes_before_the_commit_refreshes_it_is_stored_anew(
    bucket: Bucket, tmp_path: Path, size: int
) -> None:
    """gc on another machine removes an old unreferenced blob between the commit's HEAD,
    which found it, and the copy that refreshes its date. The refresh found nothing to
    copy, and a download whose bytes were all on disk failed ("not found"); it is
    stored as if the blob had never been there."""
    data = os.urandom(size)
    key = f"{PREFIX}/{blob_key(sha(data))}"
    async with opened(bucket, tmp_path, copy_limit=MIN_PART) as store:
        again = await stored_days_ago(store, bucket, tmp_path, data)
        removed: list[str] = []

        async def gc_removes_it(request: Any, **_: Any) -> None:
            if not removed and key_of(request, bucket) == key:  # the refresh, not an upload
                removed.append(key)
                await bucket.client.delete_object(Bucket=bucket.name, Key=key)

        events = store.bucket.client.meta.events
        events.register("before-send.s3.CopyObject", gc_removes_it)
        events.register("before-send.s3.CreateMultipartUpload", gc_removes_it)
        assert await again.commit(None) == Blob(sha(data), size, "application/octet-stream")
    assert removed
    assert await bucket.get(key) == data
    assert await left_over(bucket) == ([], [])


async def test_a_refresh_past_the_copy_limit_whose_copy_was_aborted_fails_the_commit(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The multipart copy that refreshes an old blob past CopyObject's limit is aborted
    before it completes (a lifecycle rule, another machine): NoSuchUpload, which
    complete() takes for a lost answer since 482dd90, and the blob key still held the
    blob's size, its old date. The commit said the blob was kept from gc, and gc
    removed it next, from under the manifest about to name it. Now the commit fails
    (the file kept whole for the next run), and the blob stays for gc to judge."""
    from moto.s3.exceptions import NoSuchUpload
    from moto.s3.responses import S3Response

    real = S3Response._key_response_post
    aborted: list[str] = []

    def aborted_meanwhile(self: Any, request: Any, body: bytes, bucket_name: str,
                          query: dict[str, Any], key_name: str) -> Any:
        upload_id = (query.get("uploadId") or [""])[0]
        if upload_id and "/objects/" in key_name and not aborted:  # the copy's completion
            aborted.append(upload_id)
            self.backend.abort_multipart_upload(bucket_name, upload_id)
            raise NoSuchUpload(upload_id)
        return real(self, request, body, bucket_name, query, key_name)

    data = os.urandom(BIG)
    key = f"{PREFIX}/{blob_key(sha(data))}"
    async with opened(bucket, tmp_path, copy_limit=MIN_PART) as store:
        again = await stored_days_ago(store, bucket, tmp_path, data)
        monkeypatch.setattr(S3Response, "_key_response_post", aborted_meanwhile)
        with pytest.raises(StorageError, match="did not complete"):
            await again.commit(None)
        await again.release(keep=False)
    assert aborted
    assert sha(await bucket.get(key)) == sha(data)
    assert await left_over(bucket) == ([], [])


async def test_a_refresh_the_store_answers_but_leaves_old_is_made_part_by_part(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that answers a blob's copy onto itself with 200 but keeps its old date
    (some MinIO releases do, for a copy in place): the commit of a blob stored days ago
    said it was kept from gc, and gc elsewhere removed it from under the manifest about
    to name it; then (6e73194) every commit reusing an old blob failed, run after run,
    so a tune whose photos an older tune had archived never completed on such a store.
    The copy is made again part by part, which makes a new object on any store."""
    from moto.s3.models import S3Backend

    from tune_archiver.commands.gc import collect

    real = S3Backend.copy_object
    in_place: list[str] = []

    def left_old(backend: Any, src_key: Any, dest_bucket_name: str, dest_key_name: str,
                 *args: Any, **kwargs: Any) -> None:
        if src_key.name == dest_key_name:
            in_place.append(dest_key_name)
            return
        real(backend, src_key, dest_bucket_name, dest_key_name, *args, **kwargs)

    data = os.urandom(50_000)
    key = f"{PREFIX}/{blob_key(sha(data))}"
    async with opened(bucket, tmp_path) as store:
        again = await stored_days_ago(store, bucket, tmp_path, data)
        monkeypatch.setattr(S3Backend, "copy_object", left_old)
        assert await again.commit(None) == Blob(sha(data), len(data), "application/octet-stream")
        found = await collect(store, datetime.now(UTC), False,
                              Staging(tmp_path / "gc-staging", durable=False))
    assert in_place == [key]
    assert found.blobs == []  # young now: gc leaves it
    assert sha(await bucket.get(key)) == sha(data)
    assert await left_over(bucket) == ([], [])


async def test_gc_never_removes_a_blob_a_fetch_refreshed_after_gc_listed_it(
    bucket: Bucket, tmp_path: Path
) -> None:
    """gc lists the blobs with their dates, then removes the old unreferenced ones one
    request at a time; a fetch on another machine that reuses such a blob meanwhile
    refreshes its date and names it in a manifest. gc removed it all the same, by the
    date it had listed, and the manifest named a missing blob."""
    from tune_archiver.commands.gc import collect

    data = os.urandom(50_000)
    key = f"{PREFIX}/{blob_key(sha(data))}"
    async with opened(bucket, tmp_path) as store:
        again = await stored_days_ago(store, bucket, tmp_path, data)
        listing = store.blobs

        async def refreshed_once_listed() -> list[StoredBlob]:
            listed = await listing()
            await again.commit(None)  # the other machine's fetch, between list and delete
            return listed

        store.blobs = refreshed_once_listed  # type: ignore[method-assign]
        found = await collect(store, datetime.now(UTC), False,
                              Staging(tmp_path / "gc-staging", durable=False))
    assert found.blobs == []
    assert sha(await bucket.get(key)) == sha(data)


async def test_a_large_file_the_store_removed_is_closed_off_the_event_loop(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing the last descriptor of a removed file frees its blocks (near a second per
    GiB with online discard): a large one is closed in a worker thread, a small one
    (cheap, and many) on the event loop."""
    on_the_loop: list[bool] = []
    detach = Partial.detach

    def recorded(partial: Partial) -> None:
        on_the_loop.append(threading.current_thread() is threading.main_thread())
        detach(partial)

    monkeypatch.setattr(Partial, "detach", recorded)
    async with opened(bucket, tmp_path) as store:
        large = await downloaded(store, tmp_path, os.urandom(RESUMABLE_FROM))
        await large.commit(None)
        small = await downloaded(store, tmp_path, os.urandom(1000), "https://other.example/s")
        await small.commit(None)
    assert on_the_loop == [False, True]
    assert not large.partial.path.exists()


async def test_an_s3_archives_download_is_never_fsynced_and_is_gone_once_stored(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket makes a blob durable: its staged file is fsynced neither as it grows nor
    at its commit (so the disk need not write bytes removed moments later), and it is
    gone once the blob is stored."""
    monkeypatch.setattr(syncing_module, "SYNC_EVERY", 2**16)
    monkeypatch.setenv(ENV_STAGING, str(tmp_path / "staging"))
    synced: list[str] = []
    fsync = os.fsync

    def recorded(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recorded)
    data = os.urandom(2 * RESUMABLE_FROM)
    async with opened(bucket, tmp_path) as store:
        staging = staging_for(f"s3://{bucket.name}/{PREFIX}")
        await staging.prepare()
        incoming = await staging.open(URL, store)
        await asyncio.to_thread(incoming.partial.append, [data[:RESUMABLE_FROM]])
        await asyncio.to_thread(incoming.partial.append, [data[RESUMABLE_FROM:]])
        await incoming.commit(None)
        assert await store.blob_size(sha(data)) == len(data)
    assert [name for name in synced if name.startswith(str(tmp_path / "staging"))] == []
    assert not incoming.partial.path.exists()


def test_a_staged_file_is_emptied_through_its_open_descriptor_before_it_is_removed(
    tmp_path: Path,
) -> None:
    """Its download still holds it open: emptied, the bytes the disk has not yet written
    are never written, and its blocks are freed at once rather than at the close."""
    staged = tmp_path / "staged.part"
    staged.write_bytes(os.urandom(10_000))
    fd = os.open(staged, os.O_RDONLY)
    try:
        drop_file(staged)
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)
    assert not staged.exists()
    drop_file(staged)  # gone already: nothing to do


def test_a_link_planted_at_a_staged_files_name_is_not_followed(tmp_path: Path) -> None:
    """Only the staged file itself is emptied: a symlink in its place leaves its target whole."""
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    staged = tmp_path / "staged.part"
    staged.symlink_to(target)
    with pytest.raises(OSError, match="symbolic links"):  # ELOOP, from O_NOFOLLOW
        drop_file(staged)
    assert target.read_bytes() == b"keep me"


async def test_file_larger_than_a_part_goes_up_in_parts_and_is_hashed_whole_by_s3(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A file over the part size is sent as three parts; S3 recomputes its full SHA-256 on copy."""
    data = os.urandom(BIG)
    async with opened(bucket, tmp_path) as store:
        requests = count_requests(store)
        await (await sent_ahead(store, tmp_path, data)).commit(None)
    assert requests["UploadPart"] == 3
    assert requests["PutObject"] == 0
    assert requests["CopyObject"] == 1
    key = f"{PREFIX}/{blob_key(sha(data))}"
    assert sha(await bucket.get(key)) == sha(data)
    head = await bucket.head(key)
    assert head is not None
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(sha(data))).decode()
    assert await left_over(bucket) == ([], [])


async def test_blob_over_the_copy_limit_is_copied_part_by_part(
    bucket: Bucket, tmp_path: Path
) -> None:
    """Above CopyObject's limit the blob key is built with UploadPartCopy, bytes intact."""
    data = os.urandom(BIG)
    async with opened(bucket, tmp_path, copy_limit=MIN_PART) as store:
        requests = count_requests(store)
        await (await sent_ahead(store, tmp_path, data)).commit("application/octet-stream")
    assert requests["UploadPartCopy"] == 3
    assert requests["CopyObject"] == 0
    assert sha(await bucket.get(f"{PREFIX}/{blob_key(sha(data))}")) == sha(data)
    assert await left_over(bucket) == ([], [])


@pytest.mark.parametrize("stored", [False, True], ids=["new", "refreshed"])
async def test_a_store_ignoring_copy_source_range_never_damages_a_blob(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stored: bool
) -> None:
    """A store that ignores UploadPartCopy's CopySourceRange copies the whole object into
    each part. The blob key then held three copies of the blob, said ok (a new blob, its
    upload deleted), or in place of a good old blob (refreshed for gc). Now the parts'
    sizes are checked before the copy completes: nothing reaches the blob key."""
    from moto.s3.models import S3Backend

    data = os.urandom(BIG)
    key = f"{PREFIX}/{blob_key(sha(data))}"
    upload_part_copy = S3Backend.upload_part_copy

    def whole(backend: S3Backend, *args: Any, **kwargs: Any) -> Any:
        return upload_part_copy(backend, *args, **{**kwargs, "start_byte": None})

    async with opened(bucket, tmp_path, copy_limit=MIN_PART) as store:
        if stored:
            await (await downloaded(store, tmp_path, data)).commit(None)
            age(bucket, key, timedelta(days=3))
        monkeypatch.setattr(S3Backend, "upload_part_copy", whole)
        partial = await sent_ahead(store, tmp_path, data)
        with pytest.raises(IntegrityError, match="not whole"):
            await partial.commit(None)
        await partial.release(keep=False)
    if stored:
        assert sha(await bucket.get(key)) == sha(data)
    else:
        assert await bucket.keys(f"{PREFIX}/objects/") == []
    assert await left_over(bucket) == ([], [])


@pytest.mark.parametrize(
    ("replacement", "message"),
    [
        (lambda data: {"data": data[:-1]}, "bytes, not"),
        (
            lambda data: {"data": bytes(len(data)), "ChecksumAlgorithm": "SHA256"},
            "another SHA-256",
        ),
    ],
    ids=["size", "sha256"],
)
async def test_an_upload_that_is_wrong_in_the_bucket_never_reaches_its_blob_key(
    bucket: Bucket, tmp_path: Path, replacement: Any, message: str
) -> None:
    """A temp object of another size or SHA-256 is refused; the blob key never appears."""
    data = os.urandom(60_000)

    async def corrupt(request: Any, **_: Any) -> None:
        key = key_of(request, bucket)
        if "/tmp/" in key:  # the check of the upload, not a lookup of the blob key
            change = replacement(data)
            await bucket.put(key, change.pop("data"), **change)

    async with opened(bucket, tmp_path) as store:
        partial = await downloaded(store, tmp_path, data)
        store.bucket.client.meta.events.register("before-send.s3.HeadObject", corrupt)
        with pytest.raises(IntegrityError, match=message):
            await partial.commit(None)
        assert await store.blob_size(sha(data)) is None
        assert partial.partial.path.exists()  # the caller decides; a later run may resume it
        await partial.release(keep=False)
    assert await bucket.keys(f"{PREFIX}/objects/") == []
    assert await left_over(bucket) == ([], [])


def keeping_no_checksum(response_dict: dict[str, Any], **_: Any) -> None:
    """A store that keeps no SHA-256 (older MinIO, Backblaze B2, some Ceph): it accepts
    x-amz-checksum-sha256 unchecked and never reports one, on a HEAD nor a copy."""
    response_dict["headers"].pop("x-amz-checksum-sha256", None)
    if isinstance(response_dict["body"], bytes):  # not a GET's stream
        response_dict["body"] = re.sub(rb"<ChecksumSHA256>[^<]*</ChecksumSHA256>", b"",
                                       response_dict["body"])


async def test_a_store_hashing_no_copy_still_stores_a_blob_sent_in_parts(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A store that ignores x-amz-checksum-algorithm on CopyObject reports the source's
    SHA-256 for the copy: for an upload sent in parts, that of its parts. The commit
    took it for a corrupt copy, so every file larger than a part (every checkpoint)
    failed, on every run. The SHA-256 the upload was checked to have is a copy's too."""
    data = os.urandom(BIG)

    def hashing_no_copy(request: Any, **_: Any) -> None:
        request.headers.pop("x-amz-checksum-algorithm", None)

    async with opened(bucket, tmp_path) as store:
        store.bucket.client.meta.events.register("before-send.s3.CopyObject", hashing_no_copy)
        partial = await sent_ahead(store, tmp_path, data)
        await partial.commit(None)
        assert await store.hash_blob(sha(data), lambda n: None) == (BIG, sha(data))
    assert await left_over(bucket) == ([], [])


@pytest.mark.parametrize("size", [60_000, BIG], ids=["put", "multipart"])
@pytest.mark.parametrize("wrong", [True, False], ids=["wrong", "right"])
async def test_a_store_keeping_no_checksum_never_stores_other_bytes_under_a_blob(
    bucket: Bucket, tmp_path: Path, size: int, wrong: bool
) -> None:
    """On a store that reports no SHA-256, the commit checked the size alone: other
    bytes of that size in the upload (the store's fault, or the wire's: payloads are
    not signed) were copied to the blob key and said stored. Such an upload is now read
    back and hashed; right bytes are still stored."""
    data = os.urandom(size)

    async def corrupt(request: Any, **_: Any) -> None:
        key = key_of(request, bucket)  # the check of the upload (temporary, or straight
        if wrong and await bucket.head(key) is not None:  # to its blob key)
            await bucket.put(key, bytes(size))

    async with opened(bucket, tmp_path) as store:
        partial = await downloaded(store, tmp_path, data)
        events = store.bucket.client.meta.events
        events.register("before-parse.s3", keeping_no_checksum)
        events.register("before-send.s3.HeadObject", corrupt)
        if wrong:
            with pytest.raises(IntegrityError, match="another SHA-256"):
                await partial.commit(None)
            await partial.release(keep=False)
        else:
            await partial.commit(None)
    if wrong:
        assert await bucket.keys(f"{PREFIX}/objects/") == []
    else:
        assert sha(await bucket.get(f"{PREFIX}/{blob_key(sha(data))}")) == sha(data)
    assert await left_over(bucket) == ([], [])


@pytest.mark.parametrize("size", [60_000, BIG], ids=["put", "multipart"])
async def test_a_file_changed_on_disk_after_download_is_not_stored(
    bucket: Bucket, tmp_path: Path, size: int
) -> None:
    """Bytes re-read for upload must hash to the name; if not, nothing is stored or left open."""
    data = os.urandom(size)
    async with opened(bucket, tmp_path) as store:
        partial = await downloaded(store, tmp_path, data)
        await asyncio.to_thread(partial.partial.spill)  # a small file is held until then
        with partial.partial.path.open("r+b") as file:
            file.seek(size - 1)
            file.write(bytes([data[-1] ^ 1]))
        with pytest.raises(IntegrityError, match="changed on disk"):
            await partial.commit(None)
        await partial.release(keep=False)
    assert await bucket.keys() == []
    assert await left_over(bucket) == ([], [])


async def test_cancelled_multipart_upload_is_aborted_and_leaves_the_partial(
    bucket: Bucket, tmp_path: Path
) -> None:
    """Cancelling a commit mid-upload aborts the multipart upload and stores nothing."""
    data = os.urandom(BIG)
    reached = asyncio.Event()

    async def hang(request: Any, **_: Any) -> None:
        if "partNumber=2" in request.url:
            reached.set()
            await asyncio.Event().wait()  # until cancelled

    async with opened(bucket, tmp_path) as store:
        partial = await downloaded(store, tmp_path, data)
        store.bucket.client.meta.events.register("before-send.s3.UploadPart", hang)
        commit = asyncio.create_task(partial.commit(None))
        await reached.wait()
        commit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await commit
        assert partial.partial.path.exists()
        assert partial.partial.size == len(data)
        await partial.release(keep=False)
    assert await bucket.keys() == []
    assert await left_over(bucket) == ([], [])


async def test_an_upload_cancelled_while_s3_starts_it_is_aborted_once_started(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A stop that comes after S3 started a multipart upload, but before its answer is
    read, still learns the upload's id and aborts it: none is left open."""
    answered, go_on = asyncio.Event(), asyncio.Event()

    async def hold(**_: Any) -> None:  # the server has answered; the client has not read it
        answered.set()
        await go_on.wait()

    async with opened(bucket, tmp_path) as store:
        store.bucket.client.meta.events.register("needs-retry.s3.CreateMultipartUpload", hold)
        starting = asyncio.create_task(start_upload(store.bucket, f"{PREFIX}/tmp/x", None))
        await answered.wait()
        starting.cancel()
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await starting
    assert await left_over(bucket) == ([], [])


async def test_failed_part_upload_is_aborted_and_reported_in_one_line(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A part that cannot be sent fails the commit with a StorageError; the upload is aborted."""
    data = os.urandom(BIG)

    def fail(request: Any, **_: Any) -> None:
        if "partNumber=3" in request.url:
            raise ConnectionClosedError(endpoint_url=request.url)

    async with opened(bucket, tmp_path) as store:
        partial = await downloaded(store, tmp_path, data)
        store.bucket.client.meta.events.register("before-send.s3.UploadPart", fail)
        with pytest.raises(StorageError) as caught:
            await partial.commit(None)
        assert partial.partial.path.exists()
        await partial.release(keep=False)
    assert str(caught.value).startswith(f"cannot upload a blob in s3://{bucket.name}/{PREFIX}: ")
    assert "\n" not in str(caught.value)
    assert SECRET_KEY not in str(caught.value)
    assert await bucket.keys() == []
    assert await left_over(bucket) == ([], [])


async def test_two_concurrent_commits_of_one_blob_leave_one_correct_object(
    bucket: Bucket, tmp_path: Path
) -> None:
    """Two writers that both find the blob absent both copy it: one correct object, no debris."""
    data = os.urandom(200_000)
    arrived: list[str] = []
    both, first_done = asyncio.Event(), asyncio.Event()

    async def meet(request: Any, **_: Any) -> None:
        arrived.append(request.url)
        if len(arrived) == 1:
            await both.wait()  # the first copies only once the other has decided to copy too
        else:
            both.set()
            # moto (not S3) fails a copy that overlaps another to the same key: take turns.
            await first_done.wait()

    def done(**_: Any) -> None:
        first_done.set()

    async with opened(bucket, tmp_path) as store:
        first = await downloaded(store, tmp_path, data, "https://a.example/x")
        second = await downloaded(store, tmp_path, data, "https://b.example/y")
        store.bucket.client.meta.events.register("before-send.s3.CopyObject", meet)
        store.bucket.client.meta.events.register("after-call.s3.CopyObject", done)
        blobs = await asyncio.gather(first.commit(None), second.commit(None))
    assert blobs[0] == blobs[1] == Blob(sha(data), len(data), "application/octet-stream")
    assert len(arrived) == 2
    assert await bucket.keys(f"{PREFIX}/objects/") == [f"{PREFIX}/{blob_key(sha(data))}"]
    assert sha(await bucket.get(f"{PREFIX}/{blob_key(sha(data))}")) == sha(data)
    assert await left_over(bucket) == ([], [])


async def test_an_archive_at_the_bucket_root_uses_the_same_layout(
    bucket: Bucket, tmp_path: Path
) -> None:
    """Without a prefix the layout starts at the bucket's root; an empty file is a blob too."""
    async with opened(bucket, tmp_path, url=f"s3://{bucket.name}") as store:
        assert str(store) == f"s3://{bucket.name}"
        blob = await (await downloaded(store, tmp_path, b"")).commit(None)
        assert await store.write_manifest(5, b"{}") == "manifests/5.json"
        assert [(found.sha256, found.size) for found in await store.blobs()] == [(sha(b""), 0)]
        assert await store.manifest_ids() == [5]
        assert await store.hash_blob(blob.sha256, lambda n: None) == (0, sha(b""))
    assert sorted(await bucket.keys()) == ["manifests/5.json", blob_key(sha(b""))]


# -- manifests ------------------------------------------------------------------


async def test_manifests_are_written_read_back_and_listed(bucket: Bucket, tmp_path: Path) -> None:
    """Manifests live at <prefix>/manifests/<id>.json; only such keys count as tunes."""
    async with opened(bucket, tmp_path) as store:
        assert await store.read_manifest(12) is None
        assert await store.write_manifest(12, b'{"tune_id": 12}') == "manifests/12.json"
        await store.write_manifest(3, b"{}")
        await store.write_manifest(12, b'{"tune_id": 12, "v": 2}')
        for junk in ("notes.txt", "0.json", "07.json", "x.json", "sub/5.json"):
            await bucket.put(f"{PREFIX}/manifests/{junk}", b"{}")
        await bucket.put("elsewhere/manifests/4.json", b"{}")
        assert await store.read_manifest(12) == b'{"tune_id": 12, "v": 2}'
        assert await store.manifest_ids() == [3, 12]
    assert await bucket.get(f"{PREFIX}/manifests/3.json") == b"{}"


# -- verify, export, gc -----------------------------------------------------------


async def test_listing_and_hashing_find_corrupted_and_misplaced_blobs(
    bucket: Bucket, tmp_path: Path
) -> None:
    """blobs() lists blobs in place, misplaced() the rest, and hash_blob exposes corruption."""
    good, named, actual, stray = (os.urandom(n) for n in (3 * 2**20, 10, 20, 30))
    async with opened(bucket, tmp_path) as store:
        await (await downloaded(store, tmp_path, good)).commit(None)
        await bucket.put(f"{PREFIX}/{blob_key(sha(named))}", actual)  # corrupted
        await bucket.put(f"{PREFIX}/objects/sha256/zz/{sha(stray)}", stray)
        await bucket.put(f"{PREFIX}/objects/sha256/ab/not-a-digest", b"x")
        listed = await store.blobs()
        assert {(blob.sha256, blob.size) for blob in listed} == {
            (sha(good), len(good)),
            (sha(named), len(actual)),
        }
        assert all(blob.modified.tzinfo == UTC for blob in listed)
        assert await store.misplaced() == {sha(stray): f"objects/sha256/zz/{sha(stray)}"}
        advanced: list[int] = []
        assert await store.hash_blob(sha(good), advanced.append) == (len(good), sha(good))
        assert sum(advanced) == len(good)
        assert len(advanced) > 1
        assert await store.hash_blob(sha(named), lambda n: None) == (len(actual), sha(actual))
        assert await store.hash_blob(sha(b"absent"), lambda n: None) is None


async def test_save_blob_as_writes_a_checked_copy_and_never_overwrites(
    bucket: Bucket, tmp_path: Path
) -> None:
    """export gets the blob's exact bytes; an existing file or a corrupted blob stops it."""
    data, named = os.urandom(70_000), os.urandom(10)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.bin").write_bytes(b"mine")
    async with opened(bucket, tmp_path) as store:
        await (await downloaded(store, tmp_path, data)).commit(None)
        await bucket.put(f"{PREFIX}/{blob_key(sha(named))}", b"not those bytes")
        assert await store.save_blob_as(sha(data), out / "ckpt.bin", hard_link=True) == "copied"
        with pytest.raises(StorageError, match="already exists"):
            await store.save_blob_as(sha(data), out / "mine.bin", hard_link=False)
        with pytest.raises(IntegrityError, match="corrupt"):
            await store.save_blob_as(sha(named), out / "bad.bin", hard_link=False)
        with pytest.raises(StorageError, match="is missing from"):
            await store.save_blob_as(sha(b"absent"), out / "absent.bin", hard_link=False)
    assert (out / "ckpt.bin").read_bytes() == data
    assert (out / "mine.bin").read_bytes() == b"mine"
    assert sorted(path.name for path in out.iterdir()) == ["ckpt.bin", "mine.bin"]


async def test_delete_blob_removes_it_and_tolerates_absence(bucket: Bucket, tmp_path: Path) -> None:
    """A deleted blob is gone; deleting it again is not an error."""
    data = os.urandom(1000)
    async with opened(bucket, tmp_path) as store:
        await (await downloaded(store, tmp_path, data)).commit(None)
        await store.delete_blob(sha(data))
        assert await store.blob_size(sha(data)) is None
        await store.delete_blob(sha(data))
    assert await bucket.keys() == []


async def test_stale_uploads_are_listed_with_sizes_and_removed(
    bucket: Bucket, tmp_path: Path
) -> None:
    """Old temp keys and open multipart uploads under the prefix are found, sized and removed."""
    upload = await bucket.client.create_multipart_upload(
        Bucket=bucket.name, Key=f"{PREFIX}/tmp/upload-b"
    )
    await bucket.client.upload_part(
        Bucket=bucket.name,
        Key=f"{PREFIX}/tmp/upload-b",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=b"12345",
    )
    await bucket.put(f"{PREFIX}/tmp/upload-a", b"0123456789")
    await bucket.put("elsewhere/tmp/upload-c", b"not ours")
    soon = datetime.now(UTC) + timedelta(minutes=1)
    async with opened(bucket, tmp_path) as store:
        blob = await (await downloaded(store, tmp_path, b"kept")).commit(None)
        assert sorted(await store.stale_uploads(soon)) == [
            (f"s3://{bucket.name}/{PREFIX}/tmp/upload-a", 10),
            (f"unfinished multipart upload to s3://{bucket.name}/{PREFIX}/tmp/upload-b", 5),
        ]
        # moto dates every multipart upload 2010-11-10; a fresh temp key is not stale yet.
        assert [size for _, size in await store.stale_uploads(soon - timedelta(hours=1))] == [5]
        assert await store.stale_uploads(datetime(2001, 1, 1, tzinfo=UTC)) == []
        await store.remove_stale_uploads(soon)
        assert await store.stale_uploads(soon) == []
        assert await store.blob_size(blob.sha256) == 4
    assert await left_over(bucket) == ([], [])
    assert await bucket.keys("elsewhere/") == ["elsewhere/tmp/upload-c"]


async def test_dates_a_store_sends_without_their_timezone_are_utc(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that sends LastModified and Initiated without their "Z" (botocore reads
    them naive) stopped gc with a TypeError, comparing them with its aware cut-off, and
    dated blobs in the machine's local time: 9 hours older than they were in Tokyo,
    closer to the grace gc waits out. S3's dates are UTC; so are these now."""
    await bucket.put(f"{PREFIX}/tmp/upload-a", b"0123456789")
    await bucket.put(f"{PREFIX}/{blob_key(sha(b'x'))}", b"x")
    await bucket.client.create_multipart_upload(Bucket=bucket.name, Key=f"{PREFIX}/tmp/upload-b")
    soon = datetime.now(UTC) + timedelta(minutes=1)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        async with opened(bucket, tmp_path) as store:
            def without_timezone(response_dict: dict[str, Any], **_: Any) -> None:
                response_dict["body"] = re.sub(
                    rb"Z</(LastModified|Initiated)>", rb"</\1>", response_dict["body"])

            store.bucket.client.meta.events.register("before-parse.s3", without_timezone)
            [blob] = await store.blobs()
            assert abs(blob.modified - datetime.now(UTC)) < timedelta(minutes=1)
            assert sorted(size for _, size in await store.stale_uploads(soon)) == [0, 10]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


async def test_gc_leaves_alone_multipart_uploads_it_did_not_start(
    bucket: Bucket, tmp_path: Path
) -> None:
    """Only uploads to keys the store writes (tmp/, objects/) are its leftovers: another
    tool's upload under the prefix, or a nested archive's, is never listed nor aborted."""
    theirs = [f"{PREFIX}/notes/video.mp4", f"{PREFIX}/old/tmp/upload-x", f"{PREFIX}/tmpfile"]
    for key in [*theirs, f"{PREFIX}/tmp/upload-ours", f"{PREFIX}/{blob_key(sha(b'x'))}"]:
        await bucket.client.create_multipart_upload(Bucket=bucket.name, Key=key)
    soon = datetime.now(UTC) + timedelta(minutes=1)
    async with opened(bucket, tmp_path) as store:
        assert sorted(what for what, _ in await store.remove_stale_uploads(soon)) == [
            f"unfinished multipart upload to s3://{bucket.name}/{PREFIX}/{blob_key(sha(b'x'))}",
            f"unfinished multipart upload to s3://{bucket.name}/{PREFIX}/tmp/upload-ours",
        ]
    assert sorted(await bucket.uploads()) == sorted(theirs)


# -- setup and errors -------------------------------------------------------------


async def test_prepare_on_a_missing_bucket_is_a_config_error(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A bucket that does not exist is reported in one line, before anything is written."""
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist") as caught:
        async with opened(bucket, tmp_path, url="s3://no-such-bucket/x"):
            pass
    assert "\n" not in str(caught.value)


async def test_prepare_without_credentials_is_a_config_error(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No AWS credentials at all is a ConfigError naming the variables to set."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match=r"no AWS credentials .* AWS_ACCESS_KEY_ID"):
        async with opened(bucket, tmp_path, session=None):  # a session caches credentials
            pass


async def test_prepare_on_an_unreachable_endpoint_is_unreachable(
    aws_env: None, tmp_path: Path
) -> None:
    """An endpoint nobody listens on is Unreachable (exit 4), without credentials in it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        store = S3Store("s3://bkt/p", endpoint, attempts=1)
        with pytest.raises(
            Unreachable, match=r"^cannot reach the bucket in s3://bkt/p: "
        ) as caught:
            async with store:
                await store.prepare()
    assert SECRET_KEY not in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AWS_PROFILE", "no-such-profile"),
        ("AWS_DEFAULT_REGION", "us east 1"),
        ("AWS_ENDPOINT_URL", "minio.local:9000"),
    ],
)
async def test_an_aws_setting_the_client_refuses_is_one_configuration_line(
    aws_env: None, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A profile that is not in ~/.aws, a malformed region or an endpoint without its
    scheme is refused by botocore as the client is made, before any request: that was
    a ProfileNotFound, InvalidRegionError or ValueError traceback, not one line (exit 2)."""
    monkeypatch.setenv(variable, value)
    store = S3Store("s3://bkt/p", attempts=1)
    with pytest.raises(ConfigError, match=r"^cannot open s3://bkt/p: ") as caught:
        async with store:
            pass
    assert value in str(caught.value)
    assert "\n" not in str(caught.value)
    assert SECRET_KEY not in str(caught.value)


async def test_endpoint_is_read_from_aws_endpoint_url(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without endpoint_url, AWS_ENDPOINT_URL points the store at the S3 service."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.endpoint)
    store = S3Store(f"s3://{bucket.name}/a/b/", session=bucket.session)
    async with store:
        await store.prepare()
        await store.write_manifest(1, b"{}")
    assert str(store) == f"s3://{bucket.name}/a/b"
    assert await bucket.keys() == ["a/b/manifests/1.json"]


@pytest.mark.parametrize(
    "url", ["http://bkt/x", "s3://", "s3://Bkt/x", "s3://bkt/../x", "s3://bkt/x?versionId=1"]
)
def test_a_url_that_is_not_s3_bucket_prefix_is_a_config_error(url: str, tmp_path: Path) -> None:
    """Only s3://bucket[/prefix] names an S3 archive."""
    with pytest.raises(ConfigError, match="not an S3 archive URL"):
        S3Store(url)


def test_without_aiobotocore_the_store_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Creating an S3Store without the [s3] extra is a ConfigError with the pip command."""
    monkeypatch.setitem(sys.modules, "aiobotocore", None)
    monkeypatch.setitem(sys.modules, "aiobotocore.session", None)
    with pytest.raises(ConfigError, match=r"needs aiobotocore: pip install '.*\[s3\]'"):
        S3Store("s3://bkt/x")
    assert "tune-archiver[s3]" in INSTALL_HINT


@pytest.mark.parametrize(("value", "attempts"), [(None, 5), ("1", 1), (" 12 ", 12)])
def test_aws_max_attempts_sets_the_tries_of_each_request(
    monkeypatch: pytest.MonkeyPatch, value: str | None, attempts: int
) -> None:
    """botocore's own AWS_MAX_ATTEMPTS is honoured (our config overrode it); unset, five."""
    if value is not None:
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", value)
    else:
        monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    assert client_config(None, None).retries["total_max_attempts"] == attempts
    assert client_config(None, 3).retries["total_max_attempts"] == 3  # the caller's wins


@pytest.mark.parametrize("value", ["0", "many", "²", "-1", "9" * 5000])  # int() reads 4,300
def test_a_malformed_aws_max_attempts_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """One line naming the variable (exit 2), never a ValueError's traceback."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", value)
    with pytest.raises(ConfigError, match=r"^AWS_MAX_ATTEMPTS must be a whole number"):
        client_config(None, None)


def test_the_install_hint_fits_a_checkout_and_an_installed_package(tmp_path: Path) -> None:
    """From a checkout the hint names the checkout's path; else the package name, and
    the '.[s3]' form for an install made from a checkout."""
    checkout = tmp_path / "src"
    (checkout / "tune_archiver").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("[project]\n")
    assert install_hint(checkout / "tune_archiver") == f"pip install '{checkout}[s3]'"
    installed = tmp_path / "site-packages" / "tune_archiver"
    installed.mkdir(parents=True)
    hint = install_hint(installed)
    assert hint.startswith("pip install 'tune-archiver[s3]'")
    assert "pip install '.[s3]'" in hint


async def test_check_room_measures_the_local_staging_directory(tmp_path: Path) -> None:
    """Free space is that of the staging folder, which the message names."""
    staging = Staging(tmp_path / "staging")
    await staging.prepare()
    await staging.check_room(1)
    with pytest.raises(DiskFull, match=f"^disk full in {tmp_path / 'staging'}: "):
        await staging.check_room(2**62)


def in_our_terms(tmp_path: Path) -> AbstractContextManager[None]:
    """The one translation of client library errors, as the bucket uses it."""
    return translated("do a thing", "s3://bkt/p", "bkt", lambda: "http://127.0.0.1:1", tmp_path)


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "msg"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "AnyOperation",
    )


@pytest.mark.parametrize(
    ("source", "ours"),
    [
        (client_error("NoSuchKey", 404), StorageError),
        (client_error("404", 404), StorageError),
        (client_error("SlowDown", 503), StorageError),
        (client_error("InternalError", 500), StorageError),
        (client_error("AccessDenied", 403), Denied),
        (client_error("InvalidAccessKeyId", 403), ConfigError),
        (client_error("SignatureDoesNotMatch", 403), ConfigError),
        (client_error("NoSuchBucket", 404), ConfigError),
        (NoCredentialsError(), ConfigError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1/bkt"), StorageError),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1/bkt"), StorageError),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1/bkt"), StorageError),
        (aiohttp.ClientPayloadError("cut short"), StorageError),
        (TimeoutError(), StorageError),
        (OSError(errno.ENOSPC, "No space left on device"), DiskFull),
        (OSError(errno.EACCES, "Permission denied"), StorageError),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else type(value).__name__,
)
def test_every_client_library_error_becomes_one_of_ours(
    source: Exception, ours: type[ArchiverError], tmp_path: Path
) -> None:
    """botocore's, aiohttp's and the OS's errors are translated, in one line, chained."""
    with pytest.raises(ours) as caught, in_our_terms(tmp_path):
        raise source
    assert type(caught.value) is ours or ours is StorageError
    assert caught.value.__cause__ is source
    assert "\n" not in str(caught.value)
    assert str(caught.value)


@pytest.mark.parametrize(
    "source",
    [
        client_error("SlowDown", 503),
        client_error("500", 500),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1/bkt"),
        ConnectionClosedError(endpoint_url="http://127.0.0.1:1/bkt"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1/bkt"),
    ],
    ids=["503", "500", "read-timeout", "connection-closed", "no-connection"],
)
def test_the_first_request_unanswered_or_refused_by_a_server_fault_is_unreachable(
    source: Exception, tmp_path: Path
) -> None:
    """The run's first request to the bucket (REACH) met by a 5xx after every retry, a
    read timeout or a connection closed is Unreachable (exit 4), not a StorageError that
    prepare turns into a configuration error (exit 2)."""
    with pytest.raises(Unreachable) as caught, translated(
        REACH, "s3://bkt/p", "bkt", lambda: "http://127.0.0.1:1", tmp_path
    ):
        raise source
    assert caught.value.__cause__ is source
    assert "\n" not in str(caught.value)


def test_a_bug_is_not_translated(tmp_path: Path) -> None:
    """Exceptions that are not the client library's (bugs) pass through untouched."""
    with pytest.raises(KeyError), in_our_terms(tmp_path):
        raise KeyError("bug")


async def test_parts_are_signed_without_hashing_their_bodies_again(
    bucket: Bucket, tmp_path: Path
) -> None:
    """Over plain http botocore would sha256 every part on the event loop to sign it;
    each part carries its own signed x-amz-checksum-sha256 instead, which the store
    checks, so the body is sent as UNSIGNED-PAYLOAD."""
    data = os.urandom(BIG)
    seen: list[tuple[bytes, bytes]] = []

    def note(request: Any, **_: Any) -> None:
        headers = request.headers
        seen.append((headers.get("x-amz-content-sha256", b""),
                     headers.get("x-amz-checksum-sha256", b"")))

    async with opened(bucket, tmp_path) as store:
        store.bucket.client.meta.events.register("before-send.s3.UploadPart", note)
        await (await sent_ahead(store, tmp_path, data)).commit(None)
    assert len(seen) == 3
    assert all(payload == b"UNSIGNED-PAYLOAD" and checksum for payload, checksum in seen)
    assert sha(await bucket.get(f"{PREFIX}/{blob_key(sha(data))}")) == sha(data)


async def test_an_upload_whose_read_back_is_cut_leaves_nothing_at_its_blob_key(
    bucket: Bucket, tmp_path: Path
) -> None:
    """On a store that keeps no SHA-256, an upload is read back and hashed before it
    counts. One sent straight to its blob key (the live upload behind) stayed there when
    that read was cut (the network, a Ctrl-C, cron's timeout): the next fetch found an
    object of the right size at the key and kept it, ok, its bytes never checked. Such
    a store's uploads go to a temporary key, copied to the blob's only once checked."""
    data = os.urandom(4 * MIN_PART + 5)  # four whole parts, two at a time

    def cut(request: Any, **_: Any) -> None:
        raise ConnectionClosedError(endpoint_url=request.url)

    def third_live_part_cut(request: Any, **_: Any) -> None:  # sent once one is answered
        if "/tmp/upload-live-" in request.url and "partNumber=3&" in request.url + "&":
            cut(request)

    async with opened(bucket, tmp_path) as store:
        events = store.bucket.client.meta.events
        events.register("before-parse.s3", keeping_no_checksum)
        events.register("before-send.s3.UploadPart", third_live_part_cut)
        partial = await downloaded(store, tmp_path, data)
        assert isinstance(partial.intake, S3Intake)
        await partial.intake.live.idle()  # failed: the commit sends the file itself
        assert partial.intake.live.failed
        events.register("before-send.s3.GetObject", cut)
        with pytest.raises(StorageError):
            await partial.commit(None)
        await partial.release(keep=False)
    assert await bucket.keys(f"{PREFIX}/objects/") == []
    assert await left_over(bucket) == ([], [])


async def test_a_first_upload_whose_read_back_is_cut_leaves_nothing_at_its_blob_key(
    bucket: Bucket, tmp_path: Path
) -> None:
    """Whether a store keeps SHA-256s is learned from a part's answer: before any (the
    run's first checkpoint, its live upload failed or behind at its first part) the
    store is not known to keep them, and a file sent straight to its blob key there
    stayed, unchecked, when its read-back was cut. The straight upload now completes
    only once its parts' answers show the store keeps them; else it goes through a
    temporary key."""
    async with first_upload_straight(bucket, tmp_path, keeping=False) as (_, commit):
        with pytest.raises(StorageError):
            await commit
    assert await bucket.keys(f"{PREFIX}/objects/") == []
    assert await left_over(bucket) == ([], [])


async def test_a_first_upload_to_a_store_keeping_sha256s_goes_straight_to_its_blob_key(
    bucket: Bucket, tmp_path: Path
) -> None:
    """The same first checkpoint, its store unknown, on one that keeps SHA-256s (AWS,
    moto): it completes at its blob key, with no copy of the whole blob. Sent through a
    temporary key whenever the store was not yet known, W6 took 2.3x boto3's time."""
    async with first_upload_straight(bucket, tmp_path, keeping=True) as (store, commit):
        requests = count_requests(store)
        blob = await commit
    assert requests["CopyObject"] == requests["UploadPartCopy"] == 0
    assert await bucket.get(f"{PREFIX}/{blob_key(blob.sha256)}") is not None
    assert await left_over(bucket) == ([], [])


@asynccontextmanager
async def first_upload_straight(
    bucket: Bucket, tmp_path: Path, keeping: bool
) -> AsyncIterator[tuple[S3Store, Coroutine[Any, Any, Blob]]]:
    """A store not yet known to keep SHA-256s (every live part cut, none answered), and
    the commit of a file of four parts that then goes straight to its blob key; a store
    that keeps none answers them without, and has every read-back cut."""
    def cut(request: Any, **_: Any) -> None:
        raise ConnectionClosedError(endpoint_url=request.url)

    def live_parts_cut(request: Any, **_: Any) -> None:
        if "/tmp/upload-live-" in request.url:
            cut(request)

    async with opened(bucket, tmp_path) as store:
        events = store.bucket.client.meta.events
        if not keeping:
            events.register("before-parse.s3", keeping_no_checksum)
        events.register("before-send.s3.UploadPart", live_parts_cut)
        partial = await downloaded(store, tmp_path, os.urandom(4 * MIN_PART + 5))
        assert isinstance(partial.intake, S3Intake)
        await partial.intake.live.idle()
        assert partial.intake.live.failed
        assert store.bucket.keeps_checksums is None
        if not keeping:
            events.register("before-send.s3.GetObject", cut)
        yield store, partial.commit(None)
        await partial.release(keep=False)


async def test_a_store_answering_parts_with_their_sha256_is_known_to_keep_them(
    bucket: Bucket, tmp_path: Path
) -> None:
    """S3 (moto too) answers a part with its SHA-256: later checkpoints may go straight
    to their blob key. One answer without it (another node behind a balancer) is enough
    for the run not to send any there."""
    async with opened(bucket, tmp_path) as store:
        partial = await downloaded(store, tmp_path, os.urandom(2 * MIN_PART + 5))
        await partial.commit(None)
        assert store.bucket.keeps_checksums is True
        store.bucket.client.meta.events.register("before-parse.s3", keeping_no_checksum)
        partial = await downloaded(store, tmp_path, os.urandom(2 * MIN_PART + 5))
        await partial.commit(None)
        assert store.bucket.keeps_checksums is False
        store.bucket.client.meta.events.unregister("before-parse.s3", keeping_no_checksum)
        partial = await downloaded(store, tmp_path, os.urandom(2 * MIN_PART + 5))
        await partial.commit(None)
        assert store.bucket.keeps_checksums is False


async def test_put_back_keeps_the_stray_copy_when_the_store_copied_other_bytes(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify --repair puts a whole blob found at a wrong place back by a copy: a store
    that hashes no copy (it reports no SHA-256 for it) and answers 200 having stored
    other bytes (none) at the blob's key had the stray copy, the one whole one, deleted
    all the same, below the copy limit (only a copy part by part was read back). The
    blob put back is now read back at any size; the stray copy stays."""
    from moto.s3.models import S3Backend

    data = os.urandom(60_000)
    stray = f"objects/sha256/zz/{sha(data)}"
    await bucket.put(f"{PREFIX}/{stray}", data)
    real = S3Backend.copy_object

    def emptied(backend: Any, src_key: Any, bucket_name: str, key: str, *args: Any,
                **kwargs: Any) -> None:
        real(backend, src_key, bucket_name, key, *args, **kwargs)
        if key.endswith(blob_key(sha(data))):
            backend.put_object(bucket_name, key, b"")

    def hashing_no_copy(request: Any, **_: Any) -> None:
        request.headers.pop("x-amz-checksum-algorithm", None)

    monkeypatch.setattr(S3Backend, "copy_object", emptied)
    async with opened(bucket, tmp_path) as store:
        store.bucket.client.meta.events.register("before-send.s3.CopyObject", hashing_no_copy)
        with pytest.raises(StorageError, match="is not its bytes"):
            await store.put_back(sha(data), stray, "20261201T000000Z")
    assert await bucket.get(f"{PREFIX}/{stray}") == data
    assert await bucket.keys(f"{PREFIX}/{blob_key(sha(data))}") == []


async def test_a_blob_another_tunes_manifest_let_go_meanwhile_fails_no_manifest(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tunes 1 and 2 of one run share image B. Tune 1's manifest write looks up its old
    checkpoint A first (a HEAD, a refresh); meanwhile tune 2's manifest, naming B, is
    written and lets B go. Tune 1 then looked B up in the run's list and met a KeyError:
    its manifest never written, a traceback for a blob named and safe. One let go
    meanwhile is named already: nothing to ask."""
    from tune_archiver.store.s3 import intake

    first, second = sorted([os.urandom(3_000), os.urandom(3_000)], key=sha)
    async with opened(bucket, tmp_path) as store:
        for data in (first, second):
            await (await downloaded(store, tmp_path, data, f"https://cdn.example/{sha(data)}")
                   ).commit(None)
        blob, _ = store._stored[sha(first)]
        store._stored[sha(first)] = (blob, datetime.now(UTC) - timedelta(days=3))
        reached, go = asyncio.Event(), asyncio.Event()
        keep_young = intake.keep_young

        async def held(*args: Any) -> datetime | None:
            reached.set()
            await go.wait()
            return await keep_young(*args)

        monkeypatch.setattr(intake, "keep_young", held)

        def naming(*data: bytes) -> Any:
            async def change(current: bytes | None) -> bytes:
                return json.dumps([sha(item) for item in data]).encode()
            return change

        writing = asyncio.create_task(store.update_manifest(1, naming(first, second)))
        await reached.wait()
        await store.update_manifest(2, naming(second))
        go.set()
        await writing
        assert store._stored == {}
    assert sha(first) in (await bucket.get(f"{PREFIX}/manifests/1.json")).decode()


@pytest.mark.parametrize("date", ["two days ahead", "Fri, 31 Dec 9999 23:59:59 GMT",
                                  "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"])
async def test_gc_by_a_bucket_whose_date_runs_ahead_of_its_objects_leaves_a_new_blob(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, date: str
) -> None:
    """gc read ages by the Date of the bucket's answers alone: where that runs ahead of
    the clock its objects are dated by (a proxy or a balancer's node on a host days
    ahead: MinIO behind nginx, which sends its own Date) it took a blob a fetch had just
    stored, which its manifest named next; a Date of year 9999 did so too, and one past
    it stopped the command with a traceback (OverflowError). gc reads the earlier of the
    bucket's clock and its own, and a Date it cannot add to is not kept."""
    from tune_archiver.commands.gc import collect

    if date == "two days ahead":
        date = format_datetime(datetime.now(UTC) + timedelta(days=2), usegmt=True)
    data = os.urandom(50_000)
    key = f"{PREFIX}/{blob_key(sha(data))}"
    async with opened(bucket, tmp_path) as store:
        await (await downloaded(store, tmp_path, data)).commit(None)
        monkeypatch.setattr(WSGIRequestHandler, "date_time_string", lambda *_: date)
        found = await collect(store, datetime.now(UTC), False,
                              Staging(tmp_path / "gc-staging", durable=False))
    assert found.blobs == []
    assert sha(await bucket.get(key)) == sha(data)


async def test_a_commit_through_a_bucket_whose_date_runs_behind_refreshes_an_old_blob(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit read a reused blob's age by the Date of the bucket's answers alone: where
    that runs behind (a caching proxy's, a balancer's node on a host two days behind) a
    blob stored a day and a half ago looked young and was not refreshed, and a gc reading
    the store by a true Date took it as the manifest named it. A fetch reads ages by the
    later of the bucket's clock and its own."""
    from tune_archiver.commands.gc import collect

    data = os.urandom(50_000)
    key = f"{PREFIX}/{blob_key(sha(data))}"
    behind = format_datetime(datetime.now(UTC) - timedelta(days=2), usegmt=True)
    async with opened(bucket, tmp_path) as store:
        await (await downloaded(store, tmp_path, data)).commit(None)
        age(bucket, key, timedelta(days=1, hours=12))
        again = await downloaded(store, tmp_path, data, "https://other.example/same.bin")
        with monkeypatch.context() as patched:
            patched.setattr(WSGIRequestHandler, "date_time_string", lambda *_: behind)
            await again.commit(None)
        found = await collect(store, datetime.now(UTC), False,
                              Staging(tmp_path / "gc-staging", durable=False))
    assert found.blobs == []
    assert sha(await bucket.get(key)) == sha(data)
