"""Orchestration of a fetch: tunes from the API, then plans, then downloads, then manifests.

Failures of one file or one tune become results; only a rejected key (and bugs,
and Ctrl-C) stop the whole run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

from tune_archiver import manifest
from tune_archiver.astria.client import API_CONCURRENCY, AstriaClient
from tune_archiver.commands.choose import chosen, plan_for, superseded, unexpected
from tune_archiver.commands.flow import BrokeOff, Loader, not_found_head, run_flow
from tune_archiver.commands.nulls import with_nulls_archived
from tune_archiver.commands.plan import (
    archived_entries,
    assets_of,
    has_expired,
    left_out_now,
    listing_state,
    merged,
    not_asked_failures,
)
from tune_archiver.commands.renew import FreshUrls
from tune_archiver.commands.unread import prompts_unread, purged, unread_failure
from tune_archiver.commands.workspaces import Workspaces
from tune_archiver.config import AllTunes, Settings
from tune_archiver.download.engine import Downloader
from tune_archiver.download.journal import Journals, Noting
from tune_archiver.download.staging import Staging, staging_for
from tune_archiver.errors import (
    ArchiverError,
    ListingBrokeOff,
    NewerManifest,
    StatusError,
    TuneNotFound,
    UnreadableManifest,
)
from tune_archiver.models import PROMPT_KINDS, SMALLEST, Asset, AssetResult, Blob, Tune, TuneResult
from tune_archiver.net.session import new_session
from tune_archiver.progress import Progress
from tune_archiver.scrub import scrub_json, scrub_result
from tune_archiver.selection import parse_moment
from tune_archiver.store import Store, blob_sizes, kept_young
from tune_archiver.store.location import open_store
from tune_archiver.urls import redact, redact_json

log = logging.getLogger(__name__)
GONE_STATUSES = frozenset({403, 404, 410})  # after expiry: deleted, not a glitch
NOT_FOUND = "not fetched: the API did not find the tune (tried again by the next fetch)"
Clock = Callable[[], datetime]
Waiting = Callable[[], None]
Announce = Callable[[TuneResult], None]
# Per --concurrency slot: tunes in flight (loaded, planned, downloading, recorded), so
# the downloads never wait for a tune to be loaded; and files of those tunes whose
# download tasks exist at once (each waits for a download slot).
TUNES_PER_SLOT = 2
FILES_PER_SLOT = 4


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
    announce: Announce | None = None,
) -> list[TuneResult]:
    """Archive each tune; one result per tune, in the order asked (or listed, for --all).

    Tunes flow through a fixed number of workers as the listing arrives (flow.py):
    each is loaded, planned, downloaded and recorded while the next pages are read.
    Each result is also appended to `finished` as soon as it is known, so a caller
    that cancels the run can still say what was done. Raises ConfigError (a
    rejected key, say); the archive is created only when the first tune is loaded.
    `store` and `staging` replace those settings.archive names (tests inject a
    staging whose writes fail). `waiting` is called if gc holds the archive and the
    fetch must wait for it. `announce` is called with each result (the key scrubbed)
    as soon as it is known, so the command line can print it then, not at the end.
    """
    finished = [] if finished is None else finished
    if store is None:
        async with open_store(settings.archive, settings.s3_endpoint_url) as opened:
            return await fetch(settings, tunes, progress, clock, finished, opened, waiting,
                               staging, announce)
    done_with = Finisher(progress, finished, announce, settings.api_key, {})
    async with (
        new_session(settings, decompress=True) as api_session,
        new_session(settings, decompress=False) as asset_session,
        contextlib.AsyncExitStack() as held,
    ):
        # The API has slots of its own: a tune's JSON never waits behind downloads.
        api = AstriaClient(api_session, settings, asyncio.Semaphore(API_CONCURRENCY))
        downloads = asyncio.Semaphore(settings.concurrency)
        staging = staging or staging_for(settings.archive)
        opening = Opening(store, staging, held, waiting)
        downloader = Downloader(asset_session, store, staging, downloads, settings, progress)
        run = Run(settings, api, store, downloader, progress, clock, done_with,
                  Workspaces(api, settings.workspace),
                  asyncio.Semaphore(settings.concurrency * FILES_PER_SLOT),
                  Journals(staging.directory, settings.archive), {})

        async def kept(tune_id: int, exc: TuneNotFound) -> Tune | None:
            """A tune the API did not find, as a stopped run kept it with a file still held."""
            tune = await run.journals.held_tune(tune_id, store.blob_size)
            if tune is None:  # one vouching for nothing goes: --all took it up each day
                await run.journals.settle(tune_id, (), store.blob_size)
            else:  # its prompts unread: no file of theirs is gone
                run.not_found[tune_id] = not_found_head(tune_id, exc)
            return replace(tune, prompt_errors=(NOT_FOUND,)) if (
                tune is not None and settings.lists_prompts) else tune

        loader = Loader(api, settings.lists_prompts, done_with, kept)

        async def work(tune_id: int) -> None:
            tune = await loader.load(tune_id)
            if tune is not None:
                await opening()
                await _archive_tune(run, tune)

        try:
            order = await run_flow(chosen(api, store, tunes, settings.lists_prompts, clock(),
                                          await run.journals.tune_ids()),
                                   work, settings.concurrency * TUNES_PER_SLOT
                                   + API_CONCURRENCY, done_with, progress)
        except BrokeOff as broke:
            loader.close(done_with.keep)  # no tune reached: the API is out of reach, nothing done
            raise ListingBrokeOff(
                f"the listing of tunes broke off after {len(broke.order)} tune(s), which "
                f"were seen through: {broke.error}",
                [done_with.results[tune_id] for tune_id in broke.order]) from broke.error
        loader.close(done_with.keep)
    return [done_with.results[tune_id] for tune_id in order]


class Opening:
    """Creates the archive and takes its shared lock (held to the end of the run), once,
    when the first tune is ready to be archived: a run that loads no tune (a rejected
    key, an API out of reach) leaves no archive behind."""

    def __init__(self, store: Store, staging: Staging, held: contextlib.AsyncExitStack,
                 waiting: Waiting | None) -> None:
        self._store = store
        self._staging = staging
        self._held = held
        self._waiting = waiting
        self._lock = asyncio.Lock()
        self._open = False

    async def __call__(self) -> None:
        if self._open:
            return
        async with self._lock:
            if not self._open:
                await self._store.prepare()
                await self._staging.prepare()
                await self._held.enter_async_context(
                    self._store.locked(exclusive=False, waiting=self._waiting))
                self._open = True


@dataclass(frozen=True)
class Run:
    """What every tune of one fetch shares."""

    settings: Settings
    api: AstriaClient
    store: Store
    downloader: Downloader
    progress: Progress
    clock: Clock
    finish: Finisher
    workspaces: Workspaces
    files: asyncio.Semaphore  # files of all tunes in flight at once: their tasks exist
    journals: Journals  # each tune's files committed before its manifest names them
    not_found: dict[int, str]  # tunes the API did not find, recorded from their journals:
    # how the line of each begins


@dataclass(frozen=True)
class Finisher:
    """What is done with each tune's result as soon as it is known."""

    progress: Progress
    finished: list[TuneResult]
    announce: Announce | None
    api_key: str
    results: dict[int, TuneResult]  # tune id -> its result, the key scrubbed

    def __call__(self, result: TuneResult) -> None:
        scrubbed = self.keep(result)
        self.progress.tune_done()
        if self.announce is not None:
            self.announce(scrubbed)

    def keep(self, result: TuneResult) -> TuneResult:
        """Keep the result for --json and the fail ping (one copy, the key never in it),
        and give it. Alone, for a tune the run stopped on (the API out of reach): neither
        announced nor counted done."""
        scrubbed = scrub_result(result, [self.api_key])
        self.finished.append(scrubbed)
        self.results[result.tune_id] = scrubbed
        return scrubbed


async def _archive_tune(run: Run, tune: Tune) -> TuneResult:
    """Download what the tune lacks and write its manifest."""
    log.debug("tune %d: started", tune.id,
              extra={"event": "tune_start", "machine_only": True, "tune_id": tune.id})
    result = await _try_archive_tune(run, tune)
    # A failure is said with the time left to fetch it again; not of a tune the API no
    # longer finds (its journal's expires_at): no run now would find it either.
    expires = None if tune.id in run.not_found else parse_moment(tune.raw.get("expires_at"))
    if expires is not None:
        result = replace(result, expires_in=(expires - run.clock()).total_seconds())
    run.finish(result)
    return result


async def _try_archive_tune(run: Run, tune: Tune) -> TuneResult:
    started = time.monotonic()
    try:
        results = await _download_and_record(run, tune)
    except UnreadableManifest as exc:
        return TuneResult(tune.id, title=tune.title, error=await _set_aside(run, tune.id, exc),
                          seconds=time.monotonic() - started)
    except ArchiverError as exc:
        return TuneResult(tune.id, title=tune.title, error=str(exc),
                          seconds=time.monotonic() - started)
    except Exception as exc:  # a bug met on one tune must not stop the others
        return TuneResult(
            tune.id, title=tune.title, error=unexpected(exc, "archiving the tune"),
            seconds=time.monotonic() - started)
    key, assets, checked, gone = results
    error = unread_failure(checked)
    if tune.id in run.not_found:
        error = (f"{run.not_found[tune.id]} the "
                 f"{sum(result.ok for result in assets)} file(s) a stopped run had archived "
                 "are recorded in its manifest, the others not fetched")
    return TuneResult(
        tune.id, tuple(assets), title=tune.title, seconds=time.monotonic() - started,
        manifest=key, state=listing_state(tune), error=error,
        prompts_unread=bool(checked.prompt_errors), prompts_gone=gone)


async def _download_and_record(
    run: Run, tune: Tune
) -> tuple[str, list[AssetResult], Tune, str | None]:
    """Download what the tune lacks, then merge the results into its manifest; gives
    the tune as recorded: nulls in its orig_images that archived photos stand for are
    no error (nulls.py), and why its prompts are gone upstream when this run found so.

    The manifest is written by Store.update_manifest: if another run wrote it since
    we planned, what that run archived is kept (plan.merged). Raises
    UnreadableManifest when the manifest is damaged, before anything is written.
    """
    journaled = await kept_young(run.store, await run.journals.entries(
        tune.id, touch=True, held=run.store.blob_size, listed=run.store.blobs))
    plan, carried = await plan_for(run.store, tune, run.settings, run.api, journaled)
    await run.downloader.drop_leftovers(asset.url for asset in plan.reuse)
    run.progress.add_files(len(plan.download))
    fresh = FreshUrls(run.api, tune.id, run.settings.lists_prompts, assets_of(tune))

    def as_kept() -> dict[str, Any]:  # the tune as its manifest records it
        return cast(dict[str, Any], scrub_json(redact_json(tune.raw), [run.settings.api_key]))

    def entry(asset: Asset, blob: Blob) -> dict[str, Any]:
        return cast(dict[str, Any], scrub_json(manifest.asset_entry(AssetResult(asset, blob)),
                                               [run.settings.api_key]))

    async def download(asset: Asset) -> AssetResult:
        if tune.id in run.not_found:  # its URLs, as the journal kept them, are redacted
            return AssetResult(asset, error=NOT_FOUND)
        # The blob's line, the journal held till the store is done with it (Noting)
        noted = Noting(run.journals, tune.id, lambda blob: entry(asset, blob), as_kept)
        try:
            blob = await run.downloader.fetch(
                asset.url, fresh.refresh(asset), SMALLEST.get(asset.kind, 1), noted
            )
            log.debug("tune %d: %s done", tune.id, redact(asset.url), extra={
                "event": "file_done", "machine_only": True, "tune_id": tune.id,
                "url": redact(asset.url), "sha256": blob.sha256, "size": blob.size})
            # Named by nothing until the manifest is written: a stopped run's next one
            # knows it archived (the host may delete it meanwhile), and gc keeps it. One
            # another tune's download stored was not noted for this one.
            if blob not in noted.blobs:
                await run.journals.record(tune.id, entry(asset, blob), as_kept)
            return AssetResult(asset, blob)
        except StatusError as exc:  # refused after the tune expired: gone, not failed
            # Expired by both clocks, ours and the host's Date: either wrong alone (ours a
            # day ahead, a Date of 2099) took a glitch's 404 for gone, never asked again.
            gone = exc.status in GONE_STATUSES and all(
                has_expired(tune, when) for when in (run.clock(), exc.sent) if when)
            held = f"; {run.journals.unread[tune.id]}" if tune.id in run.journals.unread else ""
            return AssetResult(asset, error=f"{exc} (the tune has expired{held})" if gone
                               else str(exc), gone=gone and not held)
        except ArchiverError as exc:
            return AssetResult(asset, error=str(exc))
        except Exception as exc:  # a bug met on one file must not stop the others
            return AssetResult(asset, error=unexpected(exc, f"downloading {redact(asset.url)}"))
        finally:
            noted.close()

    done: dict[Asset, AssetResult] = dict(plan.reuse)

    async def one(asset: Asset) -> None:
        try:
            done[asset] = await download(asset)
        finally:
            run.files.release()

    async with asyncio.TaskGroup() as group:
        for asset in plan.download:
            await run.files.acquire()  # a tune of 10,000 files has a few tasks at a time
            group.create_task(one(asset))
    ours = [done[asset] for asset in assets_of(tune) if asset in done] + carried
    # A run that cannot tell the workspace keeps what an earlier one recorded.
    told = await run.workspaces.of(tune.raw)
    reported: list[AssetResult] = []
    checked = [tune]
    gone: list[str] = []  # its prompts never read, found purged by this run
    named: set[str] = set()  # the blobs the manifest written names

    async def change(current: bytes | None) -> bytes:
        now = manifest.parse(current, tune.id) if current is not None else None
        # What we found missing as we planned, less what another run stored whole since
        # (its file archived again meanwhile: no failure of ours, the tune complete): of
        # the size recorded, as planned; one cut short on disk is missing still.
        stored = await blob_sizes(run.store, plan.missing) if plan.missing else {}
        missing = plan.missing - {blob.sha256 for _, blob in archived_entries(now)
                                  if stored.get(blob.sha256) == blob.size}
        written, reported[:] = merged(ours, now, missing)
        named.clear()
        named.update(result.blob.sha256 for result in written if result.blob is not None)
        named.update(superseded(journaled, written, missing))  # for the journal's settle
        checked[0] = with_nulls_archived(tune, reported)
        # Kept failed (so not complete), not retried: by a run that listed no prompts, or
        # not all of them (another run's entry for a prompt it did not read is no less so).
        if not run.settings.lists_prompts or tune.prompt_errors:
            written += not_asked_failures(now, written)
        unread = prompts_unread(tune, now, run.settings.lists_prompts,
                                (run.clock(), run.api.date))
        was = now.prompts_unread if now is not None else None
        gone[:] = [unread] if unread is not None and purged(unread) and not purged(was) else []
        # Not complete while a file failed (one kept, its blob missing, is ok in `written`
        # alone), nor training; none of its own files listed (prompts' at most): as it was.
        state = listing_state(tune)
        own = tune.field_errors or any(a.kind not in PROMPT_KINDS for a in assets_of(tune))
        complete = (not left_out_now(plan.left_out, now, missing) and unread is None
                    and not checked[0].field_errors and all(result.ok for result in reported)
                    and state != "training" and bool(own or (now and now.complete)))
        document = manifest.build_manifest(
            tune, written, run.clock(), complete=complete, state=state,
            workspace=told if told is not None else now.workspace if now else None,
            retrained=now.retrained if now else (), prompts_unread=unread)
        # A newer version's fields are kept, as an entry's are: their URLs redacted too.
        for name, value in redact_json(now.extra if now else {}).items():
            document.setdefault(name, value)
        # The API may echo the key in any text or URL: it never reaches the archive.
        return manifest.encode(scrub_json(document, [run.settings.api_key]))

    key = await run.store.update_manifest(tune.id, change)
    await run.journals.settle(tune.id, named, run.store.blob_size)
    return key, reported, checked[0], gone[0] if gone else None


async def _set_aside(run: Run, tune_id: int, damaged: UnreadableManifest) -> str:
    """Move a damaged manifest out of the way, never over another; the tune's error.
    One a newer version wrote stays where it is: it is not damaged, and archived anew
    in our format it would lose what it records that we do not know."""
    if isinstance(damaged, NewerManifest):
        return (f"{damaged}; it was left as it is, and the tune was not fetched: "
                "upgrade tune-archiver to fetch it")
    stamp = run.clock().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        where = await run.store.set_aside_manifest(tune_id, stamp, damaged.data)
    except ArchiverError as exc:
        return f"{damaged}; it could not be set aside ({exc}); the tune was not fetched"
    if where is None:  # another run set it aside (and wrote a good one: that one stays)
        return (f"{damaged}; another run has set it aside or replaced it since; the tune "
                "was not fetched by this run: run fetch again")
    return (f"{damaged}; set aside as {where}; the tune was not fetched: run fetch again "
            "to archive it anew, and check the damaged manifest before removing it")
