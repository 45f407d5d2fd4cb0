"""One bucket under a prefix, through one aiobotocore client: the object the S3 store,
its transfers and its live uploads share. Keys, small requests, and botocore's
errors as ours (errors.translated), in one place.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from tune_archiver.errors import Denied, StorageError
from tune_archiver.store.s3.errors import LISTING, Absent, translated
from tune_archiver.urls import redact

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

ABORT_ATTEMPTS = 3


class Bucket:
    """s3://name/prefix with its open client, and how blobs are written into it."""

    def __init__(
        self, client: S3Client, name: str, prefix: str, part_size: int, copy_limit: int
    ) -> None:
        self.client = client
        self.name = name
        self.prefix = prefix
        self.part_size = part_size  # bytes per uploaded part; also the largest single PUT
        self.copy_limit = copy_limit  # larger objects are copied part by part
        # Whether the store keeps the SHA-256s sent with parts (it answers with them, and
        # so checks them); None until a part is answered, False for good once one is
        # answered without (one node behind a balancer may keep none). Only a store known
        # to keep them has an upload sent straight to a blob key: elsewhere its bytes are
        # checked by reading them back, and a read cut short would leave them unchecked
        # under the blob's name.
        self.keeps_checksums: bool | None = None
        # The Date of its latest answer, and this machine's monotonic clock then: see now
        self._dated: tuple[datetime, float] | None = None
        client.meta.events.register("after-call.s3", self._answered)

    def __str__(self) -> str:
        return f"s3://{self.name}/{self.prefix}" if self.prefix else f"s3://{self.name}"

    def key(self, relative: str) -> str:
        """The bucket key of an archive-relative key ("" gives the prefix with its slash)."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def endpoint(self) -> str:
        """The endpoint, for messages."""
        return redact(self.client.meta.endpoint_url)

    def translated(
        self, doing: str, local: Path | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Turn botocore's and aiohttp's exceptions into ours: one line, no credentials.

        `local` names the local folder an OSError met meanwhile is about.
        """
        return translated(doing, str(self), self.name, self.endpoint, local or Path("."))

    def now(self, ours: datetime | None = None) -> datetime:
        """Now by the bucket's clock, the one its objects' dates are by: the Date of its
        latest answer, plus the time since by this machine's monotonic clock. An age read
        by this machine's clock was as wrong as that clock (gc on one two days ahead took
        the blobs a fetch stored a minute before). Until it answered with one (or for a
        store that sends none), `ours`, else this machine's clock."""
        if self._dated is None:
            return ours or datetime.now(UTC)
        date, at = self._dated
        try:
            return date + timedelta(seconds=time.monotonic() - at)
        except OverflowError:  # a Date of year 9999
            return ours or datetime.now(UTC)

    def _answered(self, http_response: Any, **kwargs: Any) -> None:
        """Keep the Date of an answer (botocore's after-call event), when readable."""
        try:
            date = parsedate_to_datetime(http_response.headers.get("Date", ""))
        except (TypeError, ValueError, IndexError, OverflowError):  # a year past C's long
            return
        self._dated = utc(date), time.monotonic()

    # -- small requests ----------------------------------------------------------------

    async def head(self, key: str, doing: str) -> tuple[int, datetime] | None:
        """(size, last modified) of the object, or None when it is not there."""
        try:
            with self.translated(doing):
                head = await self.client.head_object(Bucket=self.name, Key=key)
        except Absent:
            return None
        except Denied:
            if await self.missing(key, doing):
                return None
            raise
        return head["ContentLength"], utc(head["LastModified"])

    async def get(self, key: str, doing: str) -> Any:
        """The store's answer to a GET of the object (its body still to read); Absent
        when it is not there, even where the store says so with a 403 (see missing)."""
        try:
            with self.translated(doing):
                return await self.client.get_object(Bucket=self.name, Key=key)
        except Denied:
            if await self.missing(key, doing):
                raise Absent(f"cannot {doing} in {self}: not found") from None
            raise

    async def missing(self, key: str, doing: str) -> bool:
        """Whether the object at `key`, whose GET or HEAD the store refused (403), is not
        there. S3 answers 403, not 404, for a missing key to credentials without
        s3:ListBucket on the whole bucket (one granted for the prefix alone, see
        S3Store.prepare): a listing of the key tells which it was. Denied, naming
        s3:ListBucket, when that listing is refused too."""
        try:
            with self.translated(doing):
                listed = await self.client.list_objects_v2(
                    Bucket=self.name, Prefix=key, MaxKeys=1)
        except Denied as exc:
            raise Denied(f"{exc}; listing it was refused too: the credentials may lack "
                         "s3:ListBucket under the archive (S3 answers a missing key 403 "
                         "without it)") from exc
        # or as botocore decodes it from a store that sends it unencoded (see list)
        return all(item["Key"] not in (key, unquote_plus(key))
                   for item in listed.get("Contents", []))

    async def size_at(self, key: str, doing: str) -> int | None:
        """The object's size, or None when it is not there."""
        found = await self.head(key, doing)
        return found[0] if found else None

    async def delete(self, key: str) -> None:
        """Delete an object; one that is not there is not an error."""
        with self.translated("delete an object"):
            await self.client.delete_object(Bucket=self.name, Key=key)

    async def abort(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload. A part still in flight can make the store refuse or
        undo an abort, so (as S3's documentation advises) it is tried again."""
        for attempt in range(ABORT_ATTEMPTS):
            try:
                with self.translated("abort an upload"):
                    await self.client.abort_multipart_upload(
                        Bucket=self.name, Key=key, UploadId=upload_id
                    )
                return
            except Absent:
                return
            except StorageError:
                if attempt == ABORT_ATTEMPTS - 1:
                    raise

    async def list(self, directory: str) -> AsyncIterator[tuple[str, Any]]:
        """(key relative to the prefix, listing entry) of every object under `directory`."""
        asked = self.key(f"{directory}/")
        # botocore asks for URL-encoded keys and decodes them; a store that says it
        # encoded them but sent them as they are has them decoded once too often ("%41"
        # becomes "A"), so that cut at the prefix's length they named nothing of ours, and
        # verify said an archive under s3://bucket/100%25 held no tune, all intact. The
        # part after the prefix has no '%' or '+' in any key of ours.
        decoded = unquote_plus(asked)
        tokens: set[str] = set()
        seen: set[str] = set()  # a store may list a key twice (on two pages): once here
        with self.translated(LISTING):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.name, Prefix=asked
            )
            async for page in pages:
                # botocore refuses a token given twice in a row, not one that comes round
                # again: a store that does that would be listed forever.
                token = page.get("NextContinuationToken")
                # A page that says more follow but gives no token to ask for them ends
                # botocore's listing there: what a list leaves out, gc takes as unnamed.
                if page.get("IsTruncated") and not token:
                    raise StorageError(f"cannot list the bucket in {self}: it said the "
                                       "listing goes on, but gave no token to read on")
                if token in tokens:
                    raise StorageError(f"cannot list the bucket in {self}: it gave a "
                                       "continuation token again; its listing never ends")
                if token:
                    tokens.add(token)
                listed = page.get("Contents", [])
                # Or the same keys again under new tokens: a page of nothing new.
                if token and listed and all(item["Key"] in seen for item in listed):
                    raise StorageError(f"cannot list the bucket in {self}: it listed the "
                                       "same keys again; its listing never ends")
                for item in listed:
                    if item["Key"] in seen:
                        continue
                    seen.add(item["Key"])
                    item["LastModified"] = utc(item["LastModified"])
                    yield self._relative(item["Key"], asked, decoded, directory), item

    def _relative(self, key: str, asked: str, decoded: str, directory: str) -> str:
        """The archive-relative key of a listed `key` under the prefix `asked` (or
        `decoded`, see list); StorageError for one under neither: what gc and verify
        would make of it is unknown."""
        for prefix in (asked, decoded):
            if key.startswith(prefix):
                return f"{directory}/{key[len(prefix):]}"
        raise StorageError(f"cannot list the bucket in {self}: asked for the keys under "
                           f"{asked!r}, it listed {key!r}")


def utc(when: datetime) -> datetime:
    """A date the store sent, in UTC. S3's dates are UTC; some stores send them without
    their "Z", which botocore reads as naive: local time to astimezone(), and a
    TypeError to a comparison with an aware one (gc's)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)

