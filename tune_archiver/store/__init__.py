"""The storage seam: what every archive backend offers, and which one a location names.

A plain path is a local directory (store.LocalStore); s3://bucket/prefix is object
storage (s3store.S3Store, the optional `[s3]` extra). Planning, downloads, manifests
and the archive commands talk to a Store and never know which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from tune_archiver.download.partial import Partial
from tune_archiver.errors import ConfigError
from tune_archiver.layout import TMP
from tune_archiver.models import Blob
from tune_archiver.store.local import LocalStore, StoredBlob


class Store(Protocol):
    """An archive: blobs by sha256, manifests by tune, partial downloads on local disk."""

    gc_grace: timedelta  # gc leaves unreferenced blobs younger than this alone

    @property
    def partials(self) -> str:
        """Where partial downloads are kept, for messages."""
        ...

    def locked(
        self, exclusive: bool, waiting: Callable[[], None] | None = None
    ) -> AbstractAsyncContextManager[None]: ...
    async def exists(self) -> bool: ...
    async def prepare(self) -> None: ...
    async def blob_size(self, sha256: str) -> int | None: ...
    async def open_partial(self, url: str) -> Partial: ...
    async def release(self, partial: Partial, keep: bool) -> None: ...
    async def check_room(self, nbytes: int) -> None: ...
    async def commit(
        self, partial: Partial, content_type: str | None, tail: Sequence[bytes] = ()
    ) -> Blob: ...
    async def read_manifest(self, tune_id: int) -> bytes | None: ...
    async def write_manifest(self, tune_id: int, data: bytes) -> str: ...
    async def manifest_ids(self) -> list[int]: ...
    async def blobs(self) -> list[StoredBlob]: ...
    async def misplaced(self) -> dict[str, str]: ...
    async def hash_blob(
        self, sha256: str, advance: Callable[[int], None]
    ) -> tuple[int, str] | None: ...
    async def save_blob_as(self, sha256: str, target: Path, hard_link: bool) -> str: ...
    async def delete_blob(self, sha256: str) -> None: ...
    async def stale_uploads(self, older_than: datetime) -> list[tuple[str, int]]: ...
    async def remove_stale_uploads(self, older_than: datetime) -> list[tuple[str, int]]: ...


def is_remote(location: str | Path) -> bool:
    return str(location).lower().startswith("s3://")


@asynccontextmanager
async def open_store(
    location: str | Path, endpoint_url: str | None = None
) -> AsyncIterator[Store]:
    """The store at `location`, open for the length of the block.

    Raises ConfigError for an S3 location without the `[s3]` extra, or an endpoint
    given for a local archive.
    """
    if not is_remote(location):
        if endpoint_url:
            raise ConfigError("--s3-endpoint-url applies only to an s3:// archive")
        yield LocalStore(Path(location))
        return
    from tune_archiver.store.s3.store import S3Store, staging_dir

    async with S3Store(str(location), staging_dir(str(location)), endpoint_url) as store:
        yield store


def partials_dir(location: str | Path) -> str:
    """Where the archive at `location` keeps partial downloads, for messages."""
    if not is_remote(location):
        return str(Path(location) / TMP)
    from tune_archiver.store.s3.store import staging_dir

    return str(staging_dir(str(location)))
