"""Whether a store honours conditional writes (If-None-Match, If-Match on a PUT), on which
every manifest's update across machines relies (S3Store.update_manifest). Some do not
(older MinIO, some Ceph and other S3-compatible stores): they write whatever the
condition, and answer 200 where S3 answers 412."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from tune_archiver.errors import Denied, StorageError
from tune_archiver.layout import TMP
from tune_archiver.store.s3.bucket import Bucket
from tune_archiver.store.s3.errors import Conflict, Unsupported
from tune_archiver.store.s3.transfer import settle

DOING = "check the store's conditional writes"
log = logging.getLogger(__name__)


async def honoured(bucket: Bucket) -> bool:
    """Whether the store honours them; a warning when it does not. False, unsaid, when
    it refuses the question (a policy on tmp/, a fault): every write is read back then."""
    try:
        if (does := await ignored(bucket)) is None:
            return True
    except (StorageError, Denied) as exc:
        log.info("%s; each manifest written is read back", exc)
        return False
    log.warning("warning: %s %s conditional writes (If-None-Match, If-Match): two "
                "runs writing one tune at once (two machines, or runs overlapping) may drop "
                "each other's files from its manifest; run one fetch at a time on it",
                bucket, does)
    return False


async def ignored(bucket: Bucket) -> str | None:
    """What the store does with a PUT's condition when it does not honour it: "ignores"
    (it wrote over an object the condition says to keep), "refuses" (501); None when it
    honours them. Asked on a scratch key under tmp/ (removed at once; gc removes one a
    killed run leaves)."""
    key = bucket.key(f"{TMP}/conditions-{uuid.uuid4().hex}")
    with bucket.translated(DOING):
        await bucket.client.put_object(Bucket=bucket.name, Key=key, Body=b"")
    try:
        for condition in ({"IfNoneMatch": "*"}, {"IfMatch": f'"{"0" * 32}"'}):
            try:
                with bucket.translated(DOING):
                    await bucket.client.put_object(
                        Bucket=bucket.name, Key=key, Body=b"", **condition  # type: ignore[arg-type]
                    )
            except Unsupported:  # refused (501, as S3 did until 2024): it cannot guard
                return "refuses (501 Not Implemented)"
            except Conflict:
                continue
            return "ignores"
        return None
    finally:
        await settle(bucket.delete(key), f"remove {key}")


async def put_new(bucket: Bucket, key: str, doing: str,
                  put: Callable[..., Awaitable[None]]) -> None:
    """put(**condition) the object at the archive-relative key only if none is there
    (If-None-Match); Conflict when one is. A store that refuses the condition (501, as
    S3 did until 2024) has the key looked up first and is written without it."""
    try:
        await put(IfNoneMatch="*")
    except Unsupported:
        if await bucket.head(bucket.key(key), doing) is not None:
            raise Conflict(f"{key} is there already") from None
        await put()


class Verdict:
    """Whether one store honours them, asked once (by the first manifest's update)."""

    def __init__(self) -> None:
        self._honoured: bool | None = None
        self._asking = asyncio.Lock()

    async def honoured(self, bucket: Bucket) -> bool:
        async with self._asking:
            if self._honoured is None:
                self._honoured = await honoured(bucket)
        return self._honoured
