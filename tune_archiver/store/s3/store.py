"""The archive in S3-compatible object storage: the local layout under a bucket prefix.

Downloads grow in a local staging folder (download/staging.py); while one grows, its
whole parts go to a multipart upload at a temporary key (live.py), and its commit
sends the rest, checks size and SHA-256 there, and only then copies it to its blob
key (transfer.py). Credentials and the endpoint come from the standard AWS chain
(env, ~/.aws, AWS_ENDPOINT_URL). aiobotocore is imported under store/s3/ only: it is
the optional `[s3]` extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from tune_archiver.errors import ConfigError, Denied, StorageError, Unreachable
from tune_archiver.layout import (
    DAMAGED,
    MANIFESTS,
    MAX_MANIFEST_BYTES,
    OBJECTS,
    blob_key,
    is_sha256,
    manifest_key,
)
from tune_archiver.models import Blob, StoredBlob
from tune_archiver.safefs import refuse_past_limit
from tune_archiver.store import Change, Growing
from tune_archiver.store.s3 import aside, conditions, leftovers
from tune_archiver.store.s3.bucket import Bucket
from tune_archiver.store.s3.config import client_config, install_hint, parse_url
from tune_archiver.store.s3.errors import REACH, Absent, Conflict, Unsupported
from tune_archiver.store.s3.intake import S3Intake, held_young, let_go, named_still_here
from tune_archiver.store.s3.parts import b64, keep_big_blocks_apart
from tune_archiver.store.s3.reading import read_range
from tune_archiver.store.s3.transfer import save_as, stream
from tune_archiver.threads import in_thread
from tune_archiver.urls import redact_text

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

MIN_PART = 5 * 2**20  # S3's smallest part but the last
PART_SIZE = 8 * 2**20  # bytes per uploaded part; also the largest single PUT
# CopyObject's limit; larger blobs are copied part by part. S3's is 5 GiB, Backblaze
# B2's 5 GB: past that B2 refuses the copy, and an SDXL checkpoint may lie between.
COPY_LIMIT = 5_000_000_000
MANIFEST_ATTEMPTS = 10  # conditional writes of one manifest lost to other writers
_MANIFEST = re.compile(rf"{MANIFESTS}/([1-9][0-9]*)\.json")


class S3Store:
    """An archive under s3://bucket/prefix.

    Use it as an async context manager: it owns one aiobotocore client, which must be
    used and closed on the event loop that opened it. There is no lock across machines.
    gc removes only unreferenced blobs older than gc_grace; a commit that finds its blob
    stored, and a manifest's write for each blob of the run it names (one a gc took is
    then said), refresh the blob's date when it is getting old.
    """

    gc_grace = timedelta(days=1)
    unreadable_is_damaged = False  # a read that failed on its way says nothing of the bytes

    def __init__(
        self,
        url: str,
        endpoint_url: str | None = None,
        *,
        part_size: int = PART_SIZE,
        copy_limit: int = COPY_LIMIT,
        attempts: int | None = None,
        session: AioSession | None = None,
    ) -> None:
        """Raises ConfigError for a URL that is not s3://bucket[/prefix] or without
        aiobotocore. `session` may be shared by several stores (it caches botocore's
        service data); credentials, the endpoint and AWS_MAX_ATTEMPTS (botocore's own,
        unless `attempts`) are read from the environment when the store opens."""
        try:
            import aiobotocore.session  # noqa: F401  (only checking that the extra is there)
        except ImportError as exc:
            raise ConfigError(f"an s3:// archive needs aiobotocore: {install_hint()}") from exc
        self.name, self.prefix = parse_url(url)
        if not MIN_PART <= part_size <= COPY_LIMIT or not MIN_PART <= copy_limit <= COPY_LIMIT:
            raise ValueError("part_size and copy_limit must lie between 5 MiB and 5 GB")
        self._endpoint_url = endpoint_url
        self._part_size, self._copy_limit = part_size, copy_limit
        self._attempts = attempts
        self._session = session
        self._bucket: Bucket | None = None
        self._intakes: set[S3Intake] = set()  # neither committed nor abandoned yet
        self._stored: dict[str, tuple[Blob, datetime]] = {}  # this run's blobs, till named
        self._conditions = conditions.Verdict()  # whether it honours conditional PUTs
        self._stack = contextlib.AsyncExitStack()

    def __str__(self) -> str:
        return f"s3://{self.name}/{self.prefix}" if self.prefix else f"s3://{self.name}"

    async def __aenter__(self) -> S3Store:
        from aiobotocore.session import get_session
        from botocore.exceptions import BotoCoreError

        config = client_config(self._endpoint_url, self._attempts)
        keep_big_blocks_apart()  # a part's buffer is freed to the system once sent
        session = self._session or get_session()
        client = session.create_client("s3", endpoint_url=self._endpoint_url, config=config)
        try:
            opened = await self._stack.enter_async_context(client)
        except (BotoCoreError, ValueError) as exc:
            # The AWS settings, read as the client is made: a profile not in ~/.aws, a
            # malformed region, an endpoint without its scheme (botocore's ValueError).
            raise ConfigError(f"cannot open {self}: {redact_text(str(exc))}") from exc
        self._bucket = Bucket(opened, self.name, self.prefix, self._part_size,
                              self._copy_limit)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for intake in list(self._intakes):  # downloads never committed nor released
            await intake.abandon()
        self._bucket = None
        await self._stack.aclose()

    @property
    def bucket(self) -> Bucket:
        """The open bucket (tests hook its client's events to count or break requests)."""
        if self._bucket is None:
            raise RuntimeError("S3Store used outside `async with`")
        return self._bucket

    @contextlib.asynccontextmanager
    async def locked(
        self, exclusive: bool, waiting: Callable[[], None] | None = None
    ) -> AsyncIterator[Callable[[], bool]]:
        """Nothing to hold: see the class's note on gc_grace."""
        yield lambda: True

    def now(self, ours: datetime) -> datetime:
        """Now by the bucket's clock, which dates its objects (see Bucket.now)."""
        return self.bucket.now(ours)

    async def exists(self) -> bool:
        """True when the bucket is reachable and holds an archive under the prefix."""
        await self.prepare()
        for directory in (MANIFESTS, OBJECTS):
            async for _ in self.bucket.list(directory):
                return True
        return False

    async def prepare(self) -> None:
        """Check the bucket is there and ours to use.

        Raises ConfigError with one line for a missing bucket or refused credentials,
        Unreachable for an endpoint that cannot be reached.
        """
        bucket = self.bucket
        try:
            try:
                with bucket.translated(REACH):
                    await bucket.client.head_bucket(Bucket=bucket.name)
            except Denied:
                if not bucket.prefix:
                    raise
                # A policy may grant one prefix alone (s3:ListBucket on the condition
                # s3:prefix), which HeadBucket, naming no prefix, never meets.
                with bucket.translated(REACH):
                    await bucket.client.list_objects_v2(Bucket=bucket.name,
                                                        Prefix=bucket.key(""), MaxKeys=1)
        except Absent as exc:
            raise ConfigError(f"bucket {bucket.name!r} does not exist at "
                              f"{bucket.endpoint()}") from exc
        except Denied as exc:
            at_least = " (on the prefix at least)" if bucket.prefix else ""
            raise Denied(f"{exc}; reaching it needs s3:ListBucket{at_least}") from exc
        except Unreachable:
            raise
        except StorageError as exc:
            raise ConfigError(str(exc)) from exc

    # -- blobs -----------------------------------------------------------------

    async def blob_size(self, sha256: str) -> int | None:
        """The size of the blob, or None when it is not in the bucket."""
        return await self.bucket.size_at(self.bucket.key(blob_key(sha256)), "look up a blob")

    async def keep_young(self, blob: Blob) -> None:
        """Refresh a blob held at its size that this run names unstored (a stopped run's,
        from its journal) when getting old, and keep it with those the run stored, looked
        up again before a manifest names it (see the class's note)."""
        kept = await held_young(self.bucket, self.bucket.key(blob_key(blob.sha256)), blob,
                                self.gc_grace)
        if kept is not None:
            self._stored.setdefault(blob.sha256, (blob, kept))

    def intake(self, file: Growing) -> S3Intake:
        """Follow a download, sending its whole parts as they are hashed (see live.py)."""
        intake = S3Intake(self.bucket, file, self.gc_grace, self._intakes.discard, self._stored)
        self._intakes.add(intake)
        return intake

    async def blobs(self) -> list[StoredBlob]:
        """Every object named by a sha256 at its right place under objects/sha256/."""
        found = []
        async for key, item in self.bucket.list(OBJECTS):
            name = key.rsplit("/", 1)[-1]
            if is_sha256(name) and key == blob_key(name):
                found.append(StoredBlob(name, item["Size"], item["LastModified"]))
        return found

    async def misplaced(self) -> dict[str, str]:
        """sha256 -> key (relative to the prefix) of digest-named objects at a wrong place."""
        found = {}
        async for key, _ in self.bucket.list(OBJECTS):
            name = key.rsplit("/", 1)[-1]
            if is_sha256(name) and key != blob_key(name):
                found[name] = key
        return found

    async def hash_blob(
        self, sha256: str, advance: Callable[[int], None]
    ) -> tuple[int, str] | None:
        """(size, sha256 of the bytes) of the stored blob, read as a stream; None if absent.

        `advance(n)` is called as each chunk is hashed.
        """
        digest = hashlib.sha256()
        try:
            size = await stream(self.bucket, sha256, "read a blob", digest.update, advance)
        except Absent:
            return None
        # Bytes that are not the name's may be a GET cut short on its way (a proxy), not
        # the object: one the bucket holds at another size is unread, not corrupt.
        if digest.hexdigest() != sha256 and (held := await self.blob_size(sha256)) not in (
                None, size):
            raise StorageError(f"cannot read a blob in {self}: {sha256} holds {held} bytes; "
                               f"{size} were sent")
        return size, digest.hexdigest()

    def read_blob(self, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes `start` to `end` (inclusive) of the blob, streamed (serve's Range)."""
        return read_range(self.bucket, sha256, start, end)

    async def save_blob_as(
        self, sha256: str, target: Path, hard_link: bool, size: int | None = None
    ) -> str:
        """Write the blob's bytes to the local file `target`, which must not exist yet;
        one not of `size` bytes is refused unread, and every byte is hashed against the
        name. "copied": a bucket's object cannot be hard-linked, and one past the
        file-size limit there is refused before a byte is read."""
        if size is not None:  # a copy past it would fail there, the bytes paid for
            await in_thread(refuse_past_limit, target, size)
        await save_as(self.bucket, sha256, target, size)
        return "copied"

    async def set_aside_blob(self, sha256: str, stamp: str, misplaced: str | None) -> list[str]:
        """Copy the blob's object, and the copy at the wrong place `misplaced`, to
        tmp/damaged/<sha256>-<stamp> (kept by gc), then delete it; returns the new keys."""
        keys = [blob_key(sha256), *([misplaced] if misplaced else [])]
        return await aside.set_aside(self.bucket, sha256, keys, stamp)

    async def put_back(self, sha256: str, key: str, stamp: str) -> list[str] | None:
        """The object at `key` copied to the blob's place if whole (see Store.put_back)."""
        return await aside.put_back(self.bucket, sha256, key, stamp)

    async def delete_blob(self, sha256: str, older_than: datetime | None = None) -> bool:
        """Remove the blob; removing one that is not there is not an error. With
        `older_than`, its date is read again first: gc listed it old, but a fetch on
        another machine may have refreshed it since to name it (see the class's note)."""
        key = self.bucket.key(blob_key(sha256))
        if older_than is not None:
            found = await self.bucket.head(key, "look up a blob")
            if found is not None and found[1] > older_than:
                return False
        await self.bucket.delete(key)
        return True

    # -- manifests -------------------------------------------------------------

    async def delete_manifest(self, tune_id: int) -> None:
        """Remove the tune's manifest; removing one that is not there is not an error."""
        await self.bucket.delete(self.bucket.key(manifest_key(tune_id)))

    async def read_manifest(self, tune_id: int) -> bytes | None:
        """The manifest's bytes, or None when the tune has none yet."""
        found = await self._read(manifest_key(tune_id), f"read the manifest of tune {tune_id}")
        return found[0] if found else None

    async def _read(self, key: str, doing: str) -> tuple[bytes, str] | None:
        """(bytes, ETag) of the object at the archive-relative key, or None; StorageError,
        its body unread, when it is larger than MAX_MANIFEST_BYTES (a planted one may be)."""
        bucket = self.bucket
        try:
            response = await bucket.get(bucket.key(key), doing)
            with bucket.translated(doing):
                async with response["Body"] as body:
                    if response["ContentLength"] > MAX_MANIFEST_BYTES:
                        raise StorageError(f"cannot {doing} in {self}: {key} is larger "
                                           f"than {MAX_MANIFEST_BYTES} bytes: not a manifest")
                    return await body.read(), response["ETag"]
        except Absent:
            return None

    async def write_manifest(self, tune_id: int, data: bytes) -> str:
        """Replace the tune's manifest (a PUT is atomic); returns its key under the prefix."""
        await self._put(key := manifest_key(tune_id), data, "write a manifest")
        return key

    async def update_manifest(self, tune_id: int, change: Change) -> str:
        """Read, change and write the tune's manifest with a conditional PUT (If-Match its
        ETag, or If-None-Match when there was none): when another machine wrote or removed
        it in between, read it again and change that, up to MANIFEST_ATTEMPTS times.
        On a store that ignores (or refuses) them, warned of once, each write is read back
        and done again on what is there when another writer's replaced it meanwhile (the
        run's blobs it names looked up first, and then let go: intake.named_still_here)."""
        key, doing = manifest_key(tune_id), f"read the manifest of tune {tune_id}"
        guarded = await self._conditions.honoured(self.bucket)
        for _ in range(MANIFEST_ATTEMPTS):
            found = await self._read(key, doing)
            data = await change(found[0] if found else None)
            named = await named_still_here(self.bucket, self._stored, data, self.gc_grace, tune_id)
            condition = {"IfMatch": found[1]} if found else {"IfNoneMatch": "*"}
            try:
                await self._put(key, data, "write a manifest", **condition)
            except Unsupported:  # refused (501, warned of): written without, read back
                if guarded:
                    raise
                await self._put(key, data, "write a manifest")
            except (Conflict, Absent):  # Absent: removed meanwhile (If-Match answers 404)
                continue
            if guarded or ((again := await self._read(key, doing)) and again[0] == data):
                return let_go(self._stored, named, key)
        raise StorageError(
            f"cannot write the manifest of tune {tune_id} in {self}: another writer changed "
            f"it each of {MANIFEST_ATTEMPTS} times"
        )

    async def _put(self, key: str, data: bytes, doing: str, **condition: str) -> None:
        bucket = self.bucket
        with bucket.translated(doing):
            await bucket.client.put_object(
                Bucket=bucket.name,
                Key=bucket.key(key),
                Body=data,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=b64(hashlib.sha256(data).digest()),
                **condition,  # type: ignore[arg-type]
            )

    async def set_aside_manifest(self, tune_id: int, stamp: str, damaged: bytes) -> str | None:
        """Copy the manifest to manifests/damaged/<id>-<stamp>.json (never over another),
        then delete it, if it still holds `damaged` (see Store.set_aside_manifest): the
        move a killed run began is finished (see aside.manifest_aside)."""
        return await aside.manifest_aside(self.bucket, tune_id, stamp, damaged,
                                          self._read, self._put)

    async def damaged_manifests(self) -> list[str]:
        """The manifests set aside as damaged, by key under the prefix. A key ending in
        "/" is a folder marker (a console's "Create folder", s3fs, rclone), no manifest:
        counted, it would stop gc for good, as no local folder can."""
        return sorted([key async for key, _ in self.bucket.list(DAMAGED)
                       if not key.endswith("/")])

    async def manifest_ids(self) -> list[int]:
        """Every tune with a manifest, in ascending order; other keys are ignored."""
        ids = set()
        async for key, _ in self.bucket.list(MANIFESTS):
            if match := _MANIFEST.fullmatch(key):
                ids.add(int(match[1]))
        return sorted(ids)

    # -- leftovers -------------------------------------------------------------

    async def stale_uploads(self, older_than: datetime) -> list[tuple[str, int]]:
        """(description, bytes) of temp objects and unfinished multipart uploads to the
        store's own keys that were started before `older_than` (an aware datetime), and
        strays a killed put-back left of blobs whole at their place (see leftovers.py)."""
        return await leftovers.stale(self.bucket, older_than, remove=False)

    async def remove_stale_uploads(
        self, older_than: datetime, removed: list[tuple[str, int]] | None = None
    ) -> list[tuple[str, int]]:
        """Delete the temp objects and abort the multipart uploads `stale_uploads` lists;
        returns what was removed, as stale_uploads describes it."""
        return await leftovers.stale(self.bucket, older_than, remove=True, found=removed)
