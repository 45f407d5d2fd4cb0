"""A download's way into the bucket: whole parts sent while it grows (live.py), then a
commit that finishes the upload, checks it, and copies it to its blob key; or, when the
live upload fell behind the download, sends the file straight to its blob key."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tune_archiver.digest import SKIP_HASH, new_hash
from tune_archiver.errors import IntegrityError, StorageError
from tune_archiver.layout import TMP, blob_key
from tune_archiver.models import Blob
from tune_archiver.store import Growing
from tune_archiver.store.s3.bucket import Bucket
from tune_archiver.store.s3.errors import Absent, Unchecked
from tune_archiver.store.s3.live import LiveUpload
from tune_archiver.store.s3.transfer import (
    check_upload,
    complete,
    copy,
    settle,
    stream,
    upload,
)
from tune_archiver.threads import in_thread

log = logging.getLogger(__name__)
_DIGEST = re.compile(rb"[0-9a-f]{64}")


class S3Intake:
    """One download on its way into the bucket: a live upload, then a checked commit."""

    def __init__(
        self, bucket: Bucket, file: Growing, gc_grace: timedelta,
        settled: Callable[[S3Intake], None], stored: dict[str, tuple[Blob, datetime]],
    ) -> None:
        self._bucket = bucket
        self._file = file
        self._gc_grace = gc_grace
        self._settled = settled  # tells the store this intake needs no abort at its close
        self._stored = stored  # the store's: the blobs in and their dates, till named
        self.live = LiveUpload(bucket, file)
        self.live.start()

    async def commit(self, finish: Callable[[], Blob]) -> Blob:
        """Finish the file (`finish`, in a worker thread), then its upload; make it
        visible under the blob's key and remove the file.

        The bytes go to a temporary key first; the blob key is written (by a
        server-side copy) only once the temporary object has the right size and
        SHA-256. A file larger than a part whose live upload fell behind goes straight
        to the blob key instead, as a multipart upload completed only once the parts
        the store holds are checked. A blob already present with the same size is
        kept and nothing is uploaded; its date is refreshed if gc might soon take it
        for an old one (stored anew if gc took it meanwhile). On failure or
        cancellation any multipart upload is aborted and the temporary key deleted;
        the file is left to the caller. Raises
        IntegrityError when the bytes do not match their name, StorageError (or
        ConfigError for refused credentials) when the store fails.
        """
        bucket, live = self._bucket, self.live
        try:
            blob = await in_thread(finish)
            # Decided before draining: sending what is on disk only to abort it is waste.
            # Never straight to the blob key on a store known to keep no SHA-256s: there
            # the upload is checked by reading it back, which, cut short, would leave
            # bytes never checked under the blob's name (see Bucket). Not known yet, it
            # completes there only once its parts' answers show the store keeps them.
            direct = (blob.size > bucket.part_size and bucket.keeps_checksums is not False
                      and (live.failed or live.behind(blob.size)))
            await live.stop(drain=not direct)
            final = bucket.key(blob_key(blob.sha256))
            kept = await held_young(bucket, final, blob, self._gc_grace)
            if kept is None and direct:
                await settle(live.abort(), f"abort the upload to {live.key}")
                try:
                    await self._send_to(blob, final)
                except Unchecked as exc:  # sent again, to a temporary key, and checked
                    log.info("%s; sending it through a temporary key", exc)
                    await self._store_new(blob, final)
            elif kept is None:
                await self._store_new(blob, final)
        finally:
            self._settled(self)
            await settle(live.abort(), f"abort the upload to {live.key}")
        self._stored[blob.sha256] = (blob, kept or fetch_now(bucket))
        await self._drop_file()
        return blob

    async def _drop_file(self) -> None:
        """Remove the file, once the upload has read all of it (see drop_file). A file
        that will not go is only left over: the next gc sweeps it."""
        try:
            await in_thread(drop_file, self._file.path)
        except OSError as exc:
            log.warning("could not remove %s: %s", self._file.path, exc.strerror or exc)

    async def _store_new(self, blob: Blob, final: str) -> None:
        """Finish the live upload (or send the whole file), check it, copy it into place."""
        bucket, live = self._bucket, self.live
        temp = bucket.key(f"{TMP}/upload-{blob.sha256[:16]}-{uuid.uuid4().hex}")
        local = self._file.path.parent
        try:
            with bucket.translated("upload a blob", local):
                if await live.send_rest(blob.size) and (
                    SKIP_HASH or live.whole.hexdigest() == blob.sha256
                ):
                    temp = live.key
                    await complete(bucket, live.key, live.upload_id or "", live.parts)
                    live.upload_id = None  # completed: nothing to abort
                    checksum = live.checksum()
                else:
                    checksum = await upload(bucket, temp, self._file.path, blob)
                if not await check_upload(bucket, temp, blob, checksum):
                    await self._read_back(temp, blob)
                # Another writer may have stored it meanwhile: identical bytes.
                if await bucket.size_at(final, "look up a blob") != blob.size:
                    await copy(bucket, temp, final, blob, sent=checksum)
        finally:
            await settle(bucket.delete(temp), f"delete {temp}")

    async def _send_to(self, blob: Blob, final: str) -> None:
        """Send the file to its blob key as one multipart upload, which shows nothing there
        until it completes, and completes only once its parts are checked (see upload)."""
        bucket = self._bucket
        with bucket.translated("upload a blob", self._file.path.parent):
            checksum = await upload(bucket, final, self._file.path, blob, straight=True)
            try:
                if not await check_upload(bucket, final, blob, checksum):
                    await self._read_back(final, blob)
            except IntegrityError:
                # The store put together other bytes than the parts it holds: take them away.
                await settle(bucket.delete(final), f"delete {final}")
                raise

    async def _read_back(self, key: str, blob: Blob) -> None:
        """Hash the uploaded object at `key` as the store gives it back: one that keeps
        no SHA-256 (older MinIO, Backblaze B2, some Ceph) accepts the parts' unchecked,
        and its size alone says nothing of its bytes. Raises IntegrityError."""
        bucket, digest = self._bucket, new_hash()
        relative = key.removeprefix(bucket.key(""))
        await stream(bucket, blob.sha256, "check an upload", digest.update, lambda n: None,
                     blob.size, key=relative)
        if digest.hexdigest() != blob.sha256:
            raise IntegrityError(f"the upload of blob {blob.sha256} to {bucket} has another "
                                 "SHA-256; not stored")

    async def abandon(self) -> None:
        """Stop following the download and abort what was sent ahead."""
        self._settled(self)
        await self.live.stop()
        await settle(self.live.abort(), f"abort the upload to {self.live.key}")


def fetch_now(bucket: Bucket) -> datetime:
    """Now as a fetch reads its blobs' ages: the later of the bucket's clock (gc's, see
    Bucket.now) and ours, so a blob old by either is refreshed. The bucket's alone, where
    its answers' Date runs behind (a caching proxy's, a balancer's node on a host days
    behind), took a blob a day and a half old for young, which a gc reading the store
    through another endpoint took; ours ahead only refreshes more."""
    return max(bucket.now(), datetime.now(UTC))


async def held_young(bucket: Bucket, key: str, blob: Blob,
                     gc_grace: timedelta) -> datetime | None:
    """The blob's date once kept young (see keep_young) when `key` holds it at its size;
    None when it is not there whole."""
    found = await bucket.head(key, "look up a blob")
    if found is None or found[0] != blob.size:
        return None
    return await keep_young(bucket, key, found[1], blob, gc_grace)


async def keep_young(bucket: Bucket, key: str, modified: datetime, blob: Blob,
                     gc_grace: timedelta) -> datetime | None:
    """Refresh an old blob's date (a copy onto itself), so gc sees it as in use; its
    date then. None when it is gone meanwhile (gc on another machine took it after the
    HEAD that found it): the commit then stores it anew. Raises StorageError when the
    blob is still old after a copy part by part: one that did not complete (aborted
    meanwhile). A copy in place the store answered but left at its old date (some
    MinIO releases make no new object of one) is made again part by part: completing
    an upload makes a new object on any store."""
    if fetch_now(bucket) - modified < gc_grace / 2:
        return modified
    for in_parts in (False, True) if blob.size <= bucket.copy_limit else (True,):
        try:
            with bucket.translated("refresh a blob"):
                if in_parts:  # a checkpoint past 5 GB; left old, gc elsewhere took it
                    await copy(bucket, key, key, blob, in_parts=True)
                else:
                    await bucket.client.copy_object(
                        Bucket=bucket.name, Key=key,
                        CopySource={"Bucket": bucket.name, "Key": key},
                        MetadataDirective="REPLACE",
                        ContentType=blob.content_type or "application/octet-stream",
                    )
        except Absent:
            log.info("blob %s was removed as it was about to be reused; storing it anew",
                     blob.sha256)
            return None
        # A copy aborted meanwhile (NoSuchUpload, taken by complete() for a lost
        # answer), or one in place the store made no new object of, leaves it whole
        # but old: gc would still take it.
        found = await bucket.head(key, "check a refreshed blob")
        if found is None or found[1] > modified:
            return None if found is None else found[1]
    raise StorageError(f"the copy refreshing blob {blob.sha256} in {bucket} did not "
                       "complete or did not move its date; not stored")


async def named_still_here(bucket: Bucket, stored: dict[str, tuple[Blob, datetime]],
                           data: bytes, gc_grace: timedelta, tune_id: int) -> list[str]:
    """Check that each blob of `stored` (this run's, by sha256, with its date in the
    store) that the manifest `data` names is still in the bucket, refreshed if getting
    old: a tune's manifest is written once all its files are in, and until then nothing
    names the blobs stored before, which a gc elsewhere takes once gc_grace old by the
    bucket's clock (a slow tune's checkpoint). One still young is not asked for, as a
    commit does not. Gives those named, for the caller to drop from `stored` once
    the manifest is written (till then, another tune's manifest naming one asks too).
    StorageError, nothing to be written, for one gone."""
    now, named = fetch_now(bucket), sorted({m.decode() for m in _DIGEST.findall(data)}
                                               & stored.keys())
    for sha256 in named:
        if (held := stored.get(sha256)) is None:  # another manifest, written while this
            continue  # one looked up the blobs before, named it and let it go
        blob, dated = held
        if now - dated < gc_grace / 2:
            continue
        kept = await held_young(bucket, bucket.key(blob_key(sha256)), blob, gc_grace)
        if kept is None:
            raise StorageError(f"cannot write the manifest of tune {tune_id} in {bucket}: "
                               f"blob {sha256}, stored by this run, is gone before the "
                               "manifest named it (a gc elsewhere took it?); nothing "
                               "written: run fetch again")
        stored[sha256] = (blob, kept)
    return named


def let_go(stored: dict[str, tuple[Blob, datetime]], named: list[str], key: str) -> str:
    """Drop the blobs a manifest written at `key` names from `stored` (named from now on,
    no longer this run's to look up); gives `key`."""
    for sha256 in named:
        stored.pop(sha256, None)  # another tune's manifest may have let it go first
    return key


def drop_file(path: Path) -> None:
    """Empty, then remove, the staged file at `path` (gone already: nothing to do).

    Emptied first because its descriptor stays open until the commit returns: the bytes
    the disk has not written yet (none are fsynced, see staging.py) are then never
    written, and the blocks it has are freed now, off the event loop.
    The caller still holds the file's lock, so its name is ours to remove.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    os.unlink(path)
