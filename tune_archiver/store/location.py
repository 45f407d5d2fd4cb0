"""Which store a location names, opened for the length of a block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

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

    Raises ConfigError for an S3 location without the `[s3]` extra, or an endpoint
    given for a local archive.
    """
    if not is_remote(location):
        if endpoint_url:
            raise ConfigError("--s3-endpoint-url applies only to an s3:// archive")
        yield LocalStore(Path(location))
        return
    from tune_archiver.store.s3.store import S3Store

    async with S3Store(str(location), endpoint_url) as store:
        yield store
