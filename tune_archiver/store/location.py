"""Which store a location names, opened for the length of a block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tune_archiver.config import padded
from tune_archiver.errors import ConfigError
from tune_archiver.store import Store
from tune_archiver.store.local import LocalStore


def is_remote(location: str | Path) -> bool:
    """True for an s3:// location."""
    return str(location).lower().startswith("s3://")


@asynccontextmanager
async def open_store(
    location: str | Path, endpoint_url: str | None = None
) -> AsyncIterator[Store]:
    """The store at `location`, open for the length of the block.

    Raises ConfigError for an S3 location without the `[s3]` extra, an endpoint
    given for a local archive, or a prefix holding no archive yet with a stray space.
    """
    if not is_remote(location):
        if endpoint_url:
            raise ConfigError("--s3-endpoint-url applies only to an s3:// archive")
        yield LocalStore(Path(location))
        return
    from tune_archiver.store.s3.store import S3Store

    async with S3Store(str(location), endpoint_url) as store:
        # "s3://b/c4 " (a variable's space, a cron line's): as config.archive_dir refuses
        # a new folder so named, else the run archived under a new prefix 'c4 ', exit 0,
        # and c4 was never updated. One holding an archive already is used.
        if any(padded(part) for part in store.bucket.prefix.split("/")) and (
                not await store.exists()):
            raise ConfigError(
                f"no archive at {str(location)!r}, whose prefix has a space or tab at the "
                "start or end of a folder's name: a stray space (a variable's, a cron "
                "line's)? Write it without")
        yield store
