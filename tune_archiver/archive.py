"""Orchestration of a fetch: tunes from the API, then plans, then downloads, then manifests.

Failures of one file or one tune become results; only a rejected key (and bugs,
and Ctrl-C) stop the whole run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tune_archiver import manifest
from tune_archiver.api import AstriaClient
from tune_archiver.config import Settings
from tune_archiver.download import Downloader, Refresh
from tune_archiver.errors import ArchiverError, ConfigError
from tune_archiver.models import Asset, AssetResult, Tune, TuneResult
from tune_archiver.plan import archived_blobs, assets_of, plan_tune
from tune_archiver.progress import Progress
from tune_archiver.store import LocalStore
from tune_archiver.transport import new_session

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


async def fetch(
    settings: Settings,
    tune_ids: Sequence[int],
    progress: Progress,
    clock: Clock = utc_now,
    finished: list[TuneResult] | None = None,
    store: LocalStore | None = None,
) -> list[TuneResult]:
    """Archive each tune; one result per tune, in the order asked.

    Each result is also appended to `finished` as soon as it is known, so a caller
    that cancels the run can still say what was done. Raises ConfigError (a
    rejected key, say) before anything is written. `store` replaces the archive
    at settings.archive (tests inject one whose writes fail).
    """
    finished = [] if finished is None else finished
    limiter = asyncio.Semaphore(settings.concurrency)
    async with (
        new_session(settings, decompress=True) as api_session,
        new_session(settings, decompress=False) as asset_session,
    ):
        api = AstriaClient(api_session, settings, limiter)
        found = await _get_tunes(api, tune_ids)
        finished.extend(item for item in found.values() if isinstance(item, TuneResult))
        store = store or LocalStore(settings.archive)
        await store.prepare()
        downloader = Downloader(asset_session, store, limiter, settings, progress)
        run = Run(settings, api, store, downloader, progress, clock, finished)
        async with asyncio.TaskGroup() as group:
            tasks = {
                tune_id: group.create_task(_archive_tune(run, item))
                for tune_id, item in found.items()
                if isinstance(item, Tune)
            }
    return [
        item if isinstance(item, TuneResult) else tasks[tune_id].result()
        for tune_id, item in found.items()
    ]


async def _get_tunes(api: AstriaClient, tune_ids: Sequence[int]) -> dict[int, Tune | TuneResult]:
    """Each tune from the API, or a result saying why it could not be had."""

    async def one(tune_id: int) -> Tune | TuneResult:
        try:
            return await api.get_tune(tune_id)
        except ConfigError:
            raise
        except ArchiverError as exc:
            return TuneResult(tune_id, error=str(exc))

    try:
        async with asyncio.TaskGroup() as group:
            tasks = {i: group.create_task(one(i)) for i in dict.fromkeys(tune_ids)}
    except* ConfigError as errors:
        raise errors.exceptions[0] from None  # one rejected key is enough to say
    return {tune_id: task.result() for tune_id, task in tasks.items()}


@dataclass(frozen=True)
class Run:
    """What every tune of one fetch shares."""

    settings: Settings
    api: AstriaClient
    store: LocalStore
    downloader: Downloader
    progress: Progress
    clock: Clock
    finished: list[TuneResult]


class FreshUrls:
    """Renewed URLs for a tune's assets, from at most one more request for the tune."""

    def __init__(self, api: AstriaClient, tune_id: int) -> None:
        self._api = api
        self._tune_id = tune_id
        self._tune: asyncio.Task[Tune] | None = None

    def refresh(self, asset: Asset) -> Refresh:
        """A callable that returns the asset's fresh URL (same kind and index), or None."""

        async def fresh_url() -> str | None:
            if self._tune is None:
                self._tune = asyncio.ensure_future(self._api.get_tune(self._tune_id))
            try:
                tune = await self._tune
            except ArchiverError:
                return None
            for candidate in assets_of(tune):
                if (candidate.kind, candidate.index) == (asset.kind, asset.index):
                    return candidate.url
            return None

        return fresh_url


async def _archive_tune(run: Run, tune: Tune) -> TuneResult:
    """Download what the tune lacks and write its manifest."""
    result = await _try_archive_tune(run, tune)
    run.finished.append(result)
    return result


async def _try_archive_tune(run: Run, tune: Tune) -> TuneResult:
    store, progress = run.store, run.progress
    started = time.monotonic()
    fresh = FreshUrls(run.api, tune.id)
    try:
        previous = archived_blobs(manifest.decode(await store.read_manifest(tune.id) or b""))
        present: dict[str, int] = {}
        for blob in previous.values():
            size = await store.blob_size(blob.sha256)
            if size is not None:
                present[blob.sha256] = size
        plan = plan_tune(tune, run.settings.only, previous, present)
        progress.add_files(len(plan.download))

        async def download(asset: Asset) -> AssetResult:
            try:
                blob = await run.downloader.fetch(asset.url, fresh.refresh(asset))
                return AssetResult(asset, blob)
            except ArchiverError as exc:
                return AssetResult(asset, error=str(exc))

        async with asyncio.TaskGroup() as group:
            tasks = {asset: group.create_task(download(asset)) for asset in plan.download}
        results = [
            AssetResult(asset, plan.reuse[asset], reused=True)
            if asset in plan.reuse
            else tasks[asset].result()
            for asset in assets_of(tune)
            if asset in plan.reuse or asset in tasks
        ]
        document = manifest.build_manifest(
            tune, results, run.clock(), complete=not plan.left_out
        )
        key = await store.write_manifest(tune.id, manifest.encode(document))
    except ArchiverError as exc:
        return TuneResult(
            tune.id, title=tune.title, error=str(exc), seconds=time.monotonic() - started
        )
    return TuneResult(
        tune.id, tuple(results), title=tune.title, seconds=time.monotonic() - started,
        manifest=key,
    )
