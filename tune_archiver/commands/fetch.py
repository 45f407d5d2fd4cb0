"""Orchestration of a fetch: tunes from the API, then plans, then downloads, then manifests.

Failures of one file or one tune become results; only a rejected key (and bugs,
and Ctrl-C) stop the whole run.
"""

from __future__ import annotations

import asyncio
import logging
import reprlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from tune_archiver import manifest
from tune_archiver.astria.client import AstriaClient
from tune_archiver.commands.plan import (
    TunePlan,
    archived_blobs,
    assets_of,
    carried_over,
    expiring,
    in_shard,
    is_unchanged,
    plan_tune,
)
from tune_archiver.config import AllTunes, Settings
from tune_archiver.download.engine import Downloader, Refresh
from tune_archiver.download.staging import Staging, staging_for
from tune_archiver.errors import ArchiverError, ConfigError, DataError
from tune_archiver.models import SMALLEST, Asset, AssetResult, Tune, TuneResult
from tune_archiver.net.session import new_session
from tune_archiver.progress import Progress
from tune_archiver.scrub import scrub_json, scrub_result
from tune_archiver.store import Store
from tune_archiver.store.location import open_store
from tune_archiver.urls import redact, redact_text

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
Waiting = Callable[[], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


async def fetch(
    settings: Settings,
    tunes: Sequence[int] | AllTunes,
    progress: Progress,
    clock: Clock = utc_now,
    finished: list[TuneResult] | None = None,
    store: Store | None = None,
    waiting: Waiting | None = None,
    staging: Staging | None = None,
) -> list[TuneResult]:
    """Archive each tune; one result per tune, in the order asked (or listed, for --all).

    Each result is also appended to `finished` as soon as it is known, so a caller
    that cancels the run can still say what was done. Raises ConfigError (a
    rejected key, say) before anything is written. `store` and `staging` replace
    those settings.archive names (tests inject a staging whose writes fail).
    `waiting` is called if gc holds the archive and the fetch must wait for it.
    """
    finished = [] if finished is None else finished
    if store is None:
        async with open_store(settings.archive, settings.s3_endpoint_url) as opened:
            return await fetch(settings, tunes, progress, clock, finished, opened, waiting,
                               staging)
    staging = staging or staging_for(settings.archive)
    limiter = asyncio.Semaphore(settings.concurrency)
    async with (
        new_session(settings, decompress=True) as api_session,
        new_session(settings, decompress=False) as asset_session,
    ):
        api = AstriaClient(api_session, settings, limiter)
        tune_ids, skipped = await choose(api, store, tunes, settings.prompts, clock())
        progress.add_tunes(len(tune_ids) + len(skipped))
        for result in skipped:
            _finish(progress, finished, result)
        found = await get_tunes(api, tune_ids, settings.prompts)
        for item in found.values():
            if isinstance(item, TuneResult):
                _finish(progress, finished, item)
        await store.prepare()
        await staging.prepare()
        async with store.locked(exclusive=False, waiting=waiting):
            downloader = Downloader(asset_session, store, staging, limiter, settings, progress)
            run = Run(settings, api, store, downloader, progress, clock, finished)
            async with asyncio.TaskGroup() as group:
                tasks = {
                    tune_id: group.create_task(_archive_tune(run, item))
                    for tune_id, item in found.items()
                    if isinstance(item, Tune)
                }
    done = {result.tune_id: result for result in skipped}
    for tune_id, item in found.items():
        done[tune_id] = item if isinstance(item, TuneResult) else tasks[tune_id].result()
    return [scrub_result(done[tune_id], [settings.api_key])
            for tune_id in in_order(tunes, tune_ids, skipped)]


def in_order(
    tunes: Sequence[int] | AllTunes, tune_ids: list[int], skipped: list[TuneResult]
) -> list[int]:
    if not isinstance(tunes, AllTunes):
        return list(dict.fromkeys(tunes))
    return sorted([*tune_ids, *(result.tune_id for result in skipped)], reverse=True)


async def choose(
    api: AstriaClient,
    store: Store,
    tunes: Sequence[int] | AllTunes,
    prompts: bool,
    now: datetime,
) -> tuple[list[int], list[TuneResult]]:
    """The tunes to fetch, and (for --all) those skipped as archived and unchanged.

    A listed tune is skipped when its manifest is complete, records the same
    updated_at and all its blobs are present. With --prompts nothing is skipped:
    new images can be generated without the tune changing. A tune whose expires_at
    cannot be read is kept by --expiring-within, with one warning.
    """
    if not isinstance(tunes, AllTunes):
        return list(dict.fromkeys(tunes)), []
    chosen: dict[int, Any] = {}
    window = tunes.expiring_within
    for item in await api.list_tunes():
        if item["id"] in chosen or not in_shard(item["id"], tunes.shard):
            continue
        if window is not None:
            expiry = expiring(item, now, window)
            if expiry.unreadable:  # repr, shortened: the server's text may hold escapes
                log.warning("tune %d: cannot read its expires_at %s; backing it up in case "
                            "it expires soon", item["id"], reprlib.repr(item["expires_at"]))
            if not expiry.keep:
                continue
        chosen[item["id"]] = item
    fetch_ids, skipped = [], []
    for tune_id, item in chosen.items():
        if not prompts and await _unchanged(store, tune_id, item.get("updated_at")):
            title = item.get("title")
            skipped.append(TuneResult(tune_id, title=title if isinstance(title, str) else None,
                                      skipped=True))
        else:
            fetch_ids.append(tune_id)
    return fetch_ids, skipped


async def _unchanged(store: Store, tune_id: int, updated_at: Any) -> bool:
    previous = await read_previous(store, tune_id)
    present = await blobs_present(store, previous)
    return is_unchanged(previous, updated_at, present)


async def get_tunes(
    api: AstriaClient, tune_ids: Sequence[int], prompts: bool
) -> dict[int, Tune | TuneResult]:
    """Each tune from the API (with its prompts when asked), or a result saying why not."""

    async def one(tune_id: int) -> Tune | TuneResult:
        try:
            return await load_tune(api, tune_id, prompts)
        except ConfigError:
            raise
        except ArchiverError as exc:
            return TuneResult(tune_id, error=str(exc))
        except Exception as exc:  # a bug met on one tune must not stop the others
            return TuneResult(tune_id, error=unexpected(exc, f"reading tune {tune_id}"))

    try:
        async with asyncio.TaskGroup() as group:
            tasks = {i: group.create_task(one(i)) for i in dict.fromkeys(tune_ids)}
    except* ConfigError as errors:
        raise errors.exceptions[0] from None  # one rejected key is enough to say
    return {tune_id: task.result() for tune_id, task in tasks.items()}


async def load_tune(api: AstriaClient, tune_id: int, prompts: bool) -> Tune:
    tune = await api.get_tune(tune_id)
    if prompts:
        tune = replace(tune, prompts=tuple(await api.get_prompts(tune_id)))
    return tune


async def read_previous(store: Store, tune_id: int) -> dict[str, Any] | None:
    """The tune's manifest as last written, or None (none yet, or unreadable)."""
    return manifest.decode(await store.read_manifest(tune_id) or b"")


async def blobs_present(store: Store, previous: dict[str, Any] | None) -> dict[str, int]:
    """sha256 -> size of each blob the manifest names that is in the store."""
    present: dict[str, int] = {}
    for blob in archived_blobs(previous).values():
        size = await store.blob_size(blob.sha256)
        if size is not None:
            present[blob.sha256] = size
    return present


async def plan_for(
    store: Store, tune: Tune, settings: Settings
) -> tuple[TunePlan, list[AssetResult]]:
    """What to download for the tune, and the archived files it no longer lists."""
    previous = await read_previous(store, tune.id)
    present = await blobs_present(store, previous)
    plan = plan_tune(tune, settings.only, archived_blobs(previous), present)
    return plan, carried_over(previous, assets_of(tune), present)


@dataclass(frozen=True)
class Run:
    """What every tune of one fetch shares."""

    settings: Settings
    api: AstriaClient
    store: Store
    downloader: Downloader
    progress: Progress
    clock: Clock
    finished: list[TuneResult]


class FreshUrls:
    """Renewed URLs for a tune's assets, from at most one more request for the tune."""

    def __init__(self, api: AstriaClient, tune_id: int, prompts: bool) -> None:
        self._api = api
        self._tune_id = tune_id
        self._prompts = prompts
        self._tune: asyncio.Task[Tune] | None = None

    def refresh(self, asset: Asset) -> Refresh:
        """A callable that returns the asset's fresh URL, or None when the tune cannot be
        had again. The fresh URL must name the same file: same kind, index and URL path
        (a renewed listing may come in another order); else it raises DataError."""

        async def fresh_url() -> str | None:
            if self._tune is None:
                self._tune = asyncio.ensure_future(
                    load_tune(self._api, self._tune_id, self._prompts)
                )
            try:
                tune = await self._tune
            except ArchiverError:
                return None
            place = (asset.kind, asset.prompt_id, asset.index)
            for candidate in assets_of(tune):
                if (candidate.kind, candidate.prompt_id, candidate.index) == place:
                    if _path(candidate.url) == _path(asset.url):
                        return candidate.url
                    raise DataError(
                        f"the renewed tune lists another file as {asset.kind} {asset.index} "
                        f"({redact(candidate.url)}); not renewed"
                    )
            raise DataError(f"the renewed tune no longer lists {asset.kind} {asset.index}")

        return fresh_url


def _path(url: str) -> str:
    try:
        return urlsplit(url).path
    except ValueError:
        return url


def unexpected(exc: Exception, doing: str) -> str:
    """The one line for a bug met while `doing` something; its traceback goes to -v."""
    log.debug("unexpected error while %s", doing, exc_info=exc)
    return f"internal error while {doing}: {type(exc).__name__}: {redact_text(str(exc))}"


def _finish(progress: Progress, finished: list[TuneResult], result: TuneResult) -> None:
    finished.append(result)
    progress.tune_done()


async def _archive_tune(run: Run, tune: Tune) -> TuneResult:
    """Download what the tune lacks and write its manifest."""
    result = await _try_archive_tune(run, tune)
    _finish(run.progress, run.finished, result)
    return result


async def _try_archive_tune(run: Run, tune: Tune) -> TuneResult:
    started = time.monotonic()
    fresh = FreshUrls(run.api, tune.id, run.settings.prompts)
    try:
        plan, carried = await plan_for(run.store, tune, run.settings)
        run.progress.add_files(len(plan.download))

        async def download(asset: Asset) -> AssetResult:
            try:
                blob = await run.downloader.fetch(
                    asset.url, fresh.refresh(asset), SMALLEST.get(asset.kind, 1)
                )
                return AssetResult(asset, blob)
            except ArchiverError as exc:
                return AssetResult(asset, error=str(exc))
            except Exception as exc:  # a bug met on one file must not stop the others
                return AssetResult(asset, error=unexpected(exc, f"downloading {redact(asset.url)}"))

        async with asyncio.TaskGroup() as group:
            tasks = {asset: group.create_task(download(asset)) for asset in plan.download}
        results = [
            AssetResult(asset, plan.reuse[asset], reused=True)
            if asset in plan.reuse
            else tasks[asset].result()
            for asset in assets_of(tune)
            if asset in plan.reuse or asset in tasks
        ] + carried
        document = scrub_json(  # the API may echo the key in any text or URL
            manifest.build_manifest(tune, results, run.clock(), complete=not plan.left_out),
            [run.settings.api_key],
        )
        key = await run.store.write_manifest(tune.id, manifest.encode(document))
    except ArchiverError as exc:
        return TuneResult(
            tune.id, title=tune.title, error=str(exc), seconds=time.monotonic() - started
        )
    except Exception as exc:  # a bug met on one tune must not stop the others
        return TuneResult(
            tune.id, title=tune.title, error=unexpected(exc, "archiving the tune"),
            seconds=time.monotonic() - started,
        )
    return TuneResult(
        tune.id, tuple(results), title=tune.title, seconds=time.monotonic() - started,
        manifest=key,
    )
