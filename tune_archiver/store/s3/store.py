"""The archive in S3-compatible object storage: the local layout under a bucket prefix.

Downloads land in a local staging directory (resumable, exactly as for a local
archive); a commit streams the finished file to a temporary key under tmp/, checks
its size and SHA-256 there, and only then copies it to its blob key. Credentials and
the endpoint come from the standard AWS chain (env, ~/.aws, AWS_ENDPOINT_URL).
aiobotocore is imported here and nowhere else: it is the optional `[s3]` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tune_archiver import __version__
from tune_archiver.digest import SKIP_HASH
from tune_archiver.download.partial import Partial, Writer
from tune_archiver.errors import ConfigError, DiskFull, StorageError, storage_error
from tune_archiver.layout import MANIFESTS, OBJECTS, TMP, blob_key, is_sha256, manifest_key
from tune_archiver.models import Blob
from tune_archiver.store.local import StoredBlob
from tune_archiver.store.s3.errors import Absent, translated
from tune_archiver.store.s3.live import LiveUpload
from tune_archiver.store.s3.transfer import (
    b64,
    check_upload,
    complete,
    copy,
    save_as,
    settle,
    stream,
    upload,
)
from tune_archiver.threads import in_thread
from tune_archiver.urls import redact, url_key

if TYPE_CHECKING:
    from aiobotocore.session import AioSession
    from types_aiobotocore_s3 import S3Client

MIN_PART = 5 * 2**20  # S3's smallest part but the last
PART_SIZE = 8 * 2**20  # bytes per uploaded part; also the largest single PUT
COPY_LIMIT = 5 * 2**30  # CopyObject's limit; larger blobs are copied part by part
ABORT_ATTEMPTS = 3
ATTEMPTS = 5  # tries of each request, the first included (botocore's standard retries)
INSTALL_HINT = "pip install 'tune-archiver[s3]'"

_MANIFEST = re.compile(rf"{MANIFESTS}/([1-9][0-9]*)\.json")


class S3Store:
    """An archive under s3://bucket/prefix, with partial downloads in a local directory.

    Use it as an async context manager: it owns one aiobotocore client, which must be
    used and closed on the event loop that opened it.

    There is no lock across machines. gc removes only unreferenced blobs older than
    gc_grace, and a commit that finds its blob already stored refreshes the blob's
    date when it is getting old, so a blob a running fetch is about to reference is
    always younger than gc_grace.
    """

    gc_grace = timedelta(days=1)

    def __init__(
        self,
        url: str,
        staging: Path,
        endpoint_url: str | None = None,
        *,
        part_size: int = PART_SIZE,
        copy_limit: int = COPY_LIMIT,
        attempts: int = ATTEMPTS,
        write: Writer = os.pwritev,
        session: AioSession | None = None,
    ) -> None:
        """Raises ConfigError for a URL that is not s3://bucket[/prefix] or without aiobotocore.

        `session` may be shared by several stores (it caches botocore's service data);
        credentials and the endpoint are read from the environment when the store opens.
        """
        try:
            import aiobotocore.session  # noqa: F401  (only checking that the extra is there)
        except ImportError as exc:
            raise ConfigError(f"an s3:// archive needs aiobotocore: {INSTALL_HINT}") from exc
        self.bucket, self.prefix = _parse_url(url)
        if not MIN_PART <= part_size <= COPY_LIMIT or not MIN_PART <= copy_limit <= COPY_LIMIT:
            raise ValueError("part_size and copy_limit must lie between 5 MiB and 5 GiB")
        self.staging = staging
        self._endpoint_url = endpoint_url
        self.part_size = part_size
        self.copy_limit = copy_limit
        self._attempts = attempts
        self._write = write
        self._session = session
        self._client: S3Client | None = None
        self._live: dict[int, LiveUpload] = {}  # by id() of the partial they follow
        self._stack = contextlib.AsyncExitStack()

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    async def __aenter__(self) -> S3Store:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        # A custom endpoint (MinIO, R2, B2, moto) is addressed path-style: it may have
        # no wildcard DNS for bucket.host names.
        custom = self._endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
        custom = custom or os.environ.get("AWS_ENDPOINT_URL")
        config = AioConfig(
            retries={"mode": "standard", "total_max_attempts": self._attempts},
            connect_timeout=30,
            read_timeout=60,
            user_agent_extra=f"tune-archiver/{__version__}",
            # We send SHA-256 checksums ourselves; botocore's default CRC32 on every
            # request trips up some S3-compatible stores.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if custom else None,
        )
        session = self._session or get_session()
        client = session.create_client("s3", endpoint_url=self._endpoint_url, config=config)
        self._client = await self._stack.enter_async_context(client)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for live in self._live.values():  # partials never committed nor released
            await live.stop()
            await settle(live.abort(), f"abort the upload to {live.key}")
        self._live.clear()
        self._client = None
        await self._stack.aclose()

    @property
    def client(self) -> S3Client:
        """The open aiobotocore client (tests hook its events to count or break requests)."""
        if self._client is None:
            raise RuntimeError("S3Store used outside `async with`")
        return self._client

    @property
    def partials(self) -> str:
        return str(self.staging)

    @contextlib.asynccontextmanager
    async def locked(
        self, exclusive: bool, waiting: Callable[[], None] | None = None
    ) -> AsyncIterator[None]:
        """Nothing to hold: see the class's note on gc_grace."""
        yield

    async def exists(self) -> bool:
        """True when the bucket is reachable and holds an archive under the prefix."""
        await self.prepare()
        for directory in (MANIFESTS, OBJECTS):
            async for _ in self._list(directory):
                return True
        return False

    # -- setup -----------------------------------------------------------------

    async def prepare(self) -> None:
        """Create the staging directory and check the bucket is there and ours to use.

        Raises ConfigError with one line for a missing bucket, refused credentials or an
        unreachable endpoint; StorageError when the staging directory cannot be made.
        """
        try:
            await asyncio.to_thread(self.staging.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, self.staging, "create the staging directory") from exc
        try:
            with self._translated("reach the bucket"):
                await self.client.head_bucket(Bucket=self.bucket)
        except Absent as exc:
            raise ConfigError(
                f"bucket {self.bucket!r} does not exist at {self._endpoint()}"
            ) from exc
        except StorageError as exc:
            raise ConfigError(str(exc)) from exc

    async def check_room(self, nbytes: int) -> None:
        """Raise DiskFull when the local staging filesystem has less than `nbytes` free."""
        try:
            free = (await asyncio.to_thread(shutil.disk_usage, self.staging)).free
        except OSError as exc:
            raise storage_error(exc, self.staging, "measure free space") from exc
        if nbytes > free:
            raise DiskFull(
                f"disk full in {self.staging}: {nbytes} bytes to download, {free} bytes free "
                "(--force to try anyway)"
            )

    async def open_partial(self, url: str) -> Partial:
        """The local partial download of this URL, resumed from an earlier run when possible;
        its whole parts go to the bucket while it downloads (see s3live)."""
        partial = await asyncio.to_thread(
            Partial.open, self.staging, url_key(url), self.staging, self._write
        )
        live = LiveUpload(self, partial)
        self._live[id(partial)] = live
        live.start()
        return partial

    def live_upload(self, partial: Partial) -> LiveUpload | None:
        """The upload following a partial's download, if it is not yet committed."""
        return self._live.get(id(partial))

    async def release(self, partial: Partial, keep: bool) -> None:
        """Take back a partial that was not committed: its live upload is aborted, and the
        file kept for a later run or removed."""
        live = self._live.pop(id(partial), None)
        if live is not None:
            await live.stop()
            await settle(live.abort(), f"abort the upload to {live.key}")
        await in_thread(partial.close, keep)

    # -- blobs -----------------------------------------------------------------

    async def blob_size(self, sha256: str) -> int | None:
        """The size of the blob, or None when it is not in the bucket."""
        return await self._size_at(self.key(blob_key(sha256)), "look up a blob")

    async def commit(
        self, partial: Partial, content_type: str | None, tail: Sequence[bytes] = ()
    ) -> Blob:
        """Upload a finished download (its last pieces `tail` written to it first) and make
        it visible under its blob key.

        The bytes go to a temporary key first; the blob key is written (by a server-side
        copy) only once the temporary object has the right size and SHA-256. A blob
        already present with the same size is kept and nothing is uploaded; its date is
        refreshed if gc might soon take it for an old one. On success the partial is
        closed and removed; on failure or cancellation any multipart upload is aborted,
        the temporary key deleted, and the partial left to the caller. Raises
        IntegrityError when the bytes do not match their name, StorageError (or
        ConfigError for refused credentials) when the store fails.
        """
        live = self._live.pop(id(partial), None)
        try:
            if tail:
                await in_thread(partial.append, tail)
            if live is not None:
                await live.stop()
            blob = Blob(partial.sha256(), partial.size, content_type)
            final = self.key(blob_key(blob.sha256))
            found = await self._head(final, "look up a blob")
            if found is not None and found[0] == blob.size:
                await self._keep_young(final, found[1], blob)
            else:
                await self._store_new(partial, blob, final, live)
        finally:
            if live is not None:
                await settle(live.abort(), f"abort the upload to {live.key}")
        await in_thread(partial.close, False)
        return blob

    async def _store_new(
        self, partial: Partial, blob: Blob, final: str, live: LiveUpload | None
    ) -> None:
        """Finish the live upload (or send the whole file), check it, copy it into place."""
        temp = self.key(f"{TMP}/upload-{blob.sha256[:16]}-{uuid.uuid4().hex}")
        try:
            with self._translated("upload a blob"):
                if live is not None and await live.send_rest() and (
                    SKIP_HASH or live.whole.hexdigest() == blob.sha256
                ):
                    temp = live.key
                    await complete(self, live.key, live.upload_id or "", live.parts)
                    live.upload_id = None  # completed: nothing to abort
                    checksum = live.checksum()
                else:
                    checksum = await upload(self, temp, partial, blob)
                await check_upload(self, temp, blob, checksum)
                # Another writer may have stored it meanwhile: identical bytes.
                if await self._size_at(final, "look up a blob") != blob.size:
                    await copy(self, temp, final, blob)
        finally:
            await settle(self.delete(temp), f"delete {temp}")

    async def _keep_young(self, key: str, modified: datetime, blob: Blob) -> None:
        """Refresh an old blob's date (a copy onto itself), so gc sees it as in use."""
        if datetime.now(UTC) - modified < self.gc_grace / 2 or blob.size > self.copy_limit:
            return
        with self._translated("refresh a blob"):
            await self.client.copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
                ContentType=blob.content_type or "application/octet-stream",
            )

    async def blobs(self) -> list[StoredBlob]:
        """Every object named by a sha256 at its right place under objects/sha256/."""
        found = []
        async for key, item in self._list(OBJECTS):
            name = key.rsplit("/", 1)[-1]
            if is_sha256(name) and key == blob_key(name):
                found.append(StoredBlob(name, item["Size"], item["LastModified"].astimezone(UTC)))
        return found

    async def misplaced(self) -> dict[str, str]:
        """sha256 -> key (relative to the prefix) of digest-named objects at a wrong place."""
        found = {}
        async for key, _ in self._list(OBJECTS):
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
            size = await stream(self, sha256, "read a blob", digest.update, advance)
        except Absent:
            return None
        return size, digest.hexdigest()

    async def save_blob_as(self, sha256: str, target: Path, hard_link: bool) -> str:
        """Write the blob's bytes to the local file `target`, which must not exist yet;
        checked against the name first. "copied": a bucket's object cannot be hard-linked."""
        await save_as(self, sha256, target)
        return "copied"

    async def delete_blob(self, sha256: str) -> None:
        """Remove the blob; removing one that is not there is not an error."""
        await self.delete(self.key(blob_key(sha256)))

    # -- manifests -------------------------------------------------------------

    async def read_manifest(self, tune_id: int) -> bytes | None:
        """The manifest's bytes, or None when the tune has none yet."""
        try:
            with self._translated(f"read the manifest of tune {tune_id}"):
                response = await self.client.get_object(
                    Bucket=self.bucket, Key=self.key(manifest_key(tune_id))
                )
                async with response["Body"] as body:
                    return await body.read()
        except Absent:
            return None

    async def write_manifest(self, tune_id: int, data: bytes) -> str:
        """Replace the tune's manifest (a PUT is atomic); returns its key under the prefix."""
        key = manifest_key(tune_id)
        with self._translated("write a manifest"):
            await self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(key),
                Body=data,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=b64(hashlib.sha256(data).digest()),
            )
        return key

    async def manifest_ids(self) -> list[int]:
        """Every tune with a manifest, in ascending order; other keys are ignored."""
        ids = set()
        async for key, _ in self._list(MANIFESTS):
            if match := _MANIFEST.fullmatch(key):
                ids.add(int(match[1]))
        return sorted(ids)

    # -- leftovers -------------------------------------------------------------

    async def stale_uploads(self, older_than: datetime) -> list[tuple[str, int]]:
        """(description, bytes) of temp objects and unfinished multipart uploads under the
        prefix that were started before `older_than` (an aware datetime)."""
        objects, uploads = await self._stale(older_than)
        found = [(f"s3://{self.bucket}/{key}", size) for key, size in objects]
        for key, _, size in uploads:
            found.append((f"unfinished multipart upload to s3://{self.bucket}/{key}", size))
        return found

    async def remove_stale_uploads(self, older_than: datetime) -> list[tuple[str, int]]:
        """Delete the temp objects and abort the multipart uploads `stale_uploads` lists;
        returns what was removed, as stale_uploads describes it."""
        objects, uploads = await self._stale(older_than)
        removed = []
        for key, size in objects:
            await self.delete(key)
            removed.append((f"s3://{self.bucket}/{key}", size))
        for key, upload_id, size in uploads:
            await self.abort(key, upload_id)
            removed.append((f"unfinished multipart upload to s3://{self.bucket}/{key}", size))
        return removed

    async def _stale(
        self, older_than: datetime
    ) -> tuple[list[tuple[str, int]], list[tuple[str, str, int]]]:
        objects = [
            (self.key(key), item["Size"])
            async for key, item in self._list(TMP)
            if item["LastModified"] < older_than
        ]
        uploads = []
        with self._translated("list unfinished uploads"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.key("")
            )
            async for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < older_than:
                        key, upload_id = upload["Key"], upload["UploadId"]
                        uploads.append((key, upload_id, await self._uploaded(key, upload_id)))
        return objects, uploads

    async def _uploaded(self, key: str, upload_id: str) -> int:
        """Bytes already sent to an unfinished multipart upload."""
        try:
            with self._translated("list the parts of an upload"):
                pages = self.client.get_paginator("list_parts").paginate(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                )
                return sum([part["Size"] async for page in pages for part in page.get("Parts", [])])
        except Absent:
            return 0  # finished or aborted since it was listed

    # -- small requests ----------------------------------------------------------

    async def _size_at(self, key: str, doing: str) -> int | None:
        found = await self._head(key, doing)
        return found[0] if found else None

    async def _head(self, key: str, doing: str) -> tuple[int, datetime] | None:
        """(size, last modified) of the object, or None when it is not there."""
        try:
            with self._translated(doing):
                head = await self.client.head_object(Bucket=self.bucket, Key=key)
        except Absent:
            return None
        return head["ContentLength"], head["LastModified"].astimezone(UTC)

    async def delete(self, key: str) -> None:
        with self._translated("delete an object"):
            await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def abort(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload. A part still in flight can make the store refuse or
        undo an abort, so (as S3's documentation advises) it is tried again."""
        for attempt in range(ABORT_ATTEMPTS):
            try:
                with self._translated("abort an upload"):
                    await self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
                return
            except Absent:
                return
            except StorageError:
                if attempt == ABORT_ATTEMPTS - 1:
                    raise

    async def _list(self, directory: str) -> AsyncIterator[tuple[str, Any]]:
        """(key relative to the prefix, listing entry) of every object under `directory`."""
        start = len(self.key(""))
        with self._translated("list the bucket"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key(f"{directory}/")
            )
            async for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][start:], item

    def key(self, relative: str) -> str:
        """The bucket key of an archive-relative key ("" gives the prefix with its slash)."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _endpoint(self) -> str:
        return redact(self._client.meta.endpoint_url) if self._client else "the default endpoint"

    # -- errors ----------------------------------------------------------------

    def _translated(self, doing: str) -> contextlib.AbstractContextManager[None]:
        """Turn botocore's and aiohttp's exceptions into ours: one line, no credentials."""
        return translated(doing, str(self), self.bucket, self._endpoint, self.staging)


def _parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without slashes) of s3://bucket[/prefix]; ConfigError otherwise."""
    parts = urlsplit(url)
    segments = [segment for segment in parts.path.split("/") if segment]
    if (
        parts.scheme != "s3"
        or not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]", parts.netloc)
        or parts.query
        or parts.fragment
        or any(segment in (".", "..") for segment in segments)
    ):
        raise ConfigError(f"not an S3 archive URL (s3://bucket or s3://bucket/prefix): {url!r}")
    return parts.netloc, "/".join(segments)


def staging_dir(url: str) -> Path:
    """Where partial downloads for an S3 archive wait: $TUNE_ARCHIVER_STAGING, else the
    user's cache directory, one folder per archive."""
    chosen = os.environ.get("TUNE_ARCHIVER_STAGING")
    if chosen:
        return Path(chosen)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    bucket, _ = _parse_url(url)
    tag = hashlib.sha256(url.encode()).hexdigest()[:12]
    return cache / "tune-archiver" / "staging" / f"{bucket}-{tag}"
