"""`fetch --dry-run`: what a fetch would download, with sizes where the hosts tell them.

It reads the API and the archive and writes nothing, not even the archive's folders.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tune_archiver.astria.client import API_CONCURRENCY, AstriaClient
from tune_archiver.commands.choose import chosen, plan_for
from tune_archiver.commands.fetch import NOT_FOUND, TUNES_PER_SLOT, Clock, utc_now
from tune_archiver.commands.flow import BrokeOff, Loader, not_found_head, run_flow
from tune_archiver.commands.nulls import with_nulls_archived
from tune_archiver.commands.unread import unread_failure
from tune_archiver.config import AllTunes, Settings
from tune_archiver.download.journal import Journals
from tune_archiver.download.staging import staging_for
from tune_archiver.errors import ArchiverError, TuneNotFound
from tune_archiver.models import Asset, Tune, TuneResult
from tune_archiver.net.session import new_session
from tune_archiver.net.transport import Probe, probe_size
from tune_archiver.progress import NullProgress
from tune_archiver.store.location import open_store


@dataclass(frozen=True)
class Preview:
    """What a fetch would do for one tune."""

    tune_id: int
    title: str | None = None
    error: str | None = None
    skipped: bool = False  # archived, complete and unchanged
    download: tuple[tuple[Asset, int | None], ...] = ()  # each file and its size, if known
    # Files no fetch could download, each with its probe: a host's refusal (401, 403,
    # 404, 410), or a URL or redirect we refuse to follow.
    not_downloadable: tuple[tuple[Asset, Probe], ...] = ()
    archived: int = 0  # files already in the archive
    left_out: int = 0  # files --only leaves out

    @property
    def ok(self) -> bool:
        """True when a fetch could archive everything: the tune was had, every file can be."""
        return self.error is None and not self.not_downloadable


async def dry_run(
    settings: Settings, tunes: Sequence[int] | AllTunes, clock: Clock = utc_now
) -> list[Preview]:
    """One preview per tune, in the order a fetch would report them. The tunes flow as a
    fetch's do (flow.py): loaded and previewed as the listing arrives, a few at a time."""
    limiter = asyncio.Semaphore(settings.concurrency)
    done: dict[int, Preview] = {}

    def finish(result: TuneResult) -> None:  # skipped as unchanged, or not had from the API
        done[result.tune_id] = Preview(result.tune_id, result.title, error=result.error,
                                       skipped=result.skipped)

    async with (
        open_store(settings.archive, settings.s3_endpoint_url) as store,
        new_session(settings, decompress=True) as api_session,
        new_session(settings, decompress=False) as asset_session,
    ):
        api = AstriaClient(api_session, settings, asyncio.Semaphore(API_CONCURRENCY))
        # what a stopped run kept
        journals = Journals(staging_for(settings.archive).directory, settings.archive)
        not_found: dict[int, str] = {}  # tunes a fetch records from their journals (as it)

        async def kept(tune_id: int, exc: TuneNotFound) -> Tune | None:
            tune = await journals.held_tune(tune_id, store.blob_size)
            if tune is not None:
                not_found[tune_id] = not_found_head(tune_id, exc)
            return replace(tune, prompt_errors=(NOT_FOUND,)) if (
                tune is not None and settings.lists_prompts) else tune

        loader = Loader(api, settings.lists_prompts, finish, kept)

        async def size_of(asset: Asset) -> Probe:
            async with limiter:
                return await probe_size(asset_session, asset.url, settings.read_timeout)

        async def preview(tune: Tune) -> Preview:
            try:
                journaled = await journals.entries(tune.id, held=store.blob_size,
                                                   listed=store.blobs)
                plan, carried = await plan_for(store, tune, settings, api, journaled)
            except ArchiverError as exc:
                return Preview(tune.id, tune.title, error=str(exc))
            archived = sum(1 for r in [*plan.reuse.values(), *carried] if r.ok)  # not gone
            if tune.id in not_found:  # its other files are not asked for
                return Preview(tune.id, tune.title, archived=archived, error=(
                    f"{not_found[tune.id]} a fetch would record the {archived} file(s) a "
                    "stopped run had archived in its manifest, the others not fetched"))
            probes = await asyncio.gather(*(size_of(asset) for asset in plan.download))
            probed = list(zip(plan.download, probes, strict=True))
            # A fetch would take a null its archived photos stand for as no failure.
            failure = unread_failure(with_nulls_archived(tune, [*plan.reuse.values(), *carried]))
            return Preview(
                tune.id, tune.title, error=f"tune {tune.id}: {failure}" if failure else None,
                download=tuple((a, p.size) for a, p in probed if p.refused is None),
                not_downloadable=tuple((a, p) for a, p in probed if p.refused is not None),
                archived=archived,
                left_out=len(plan.left_out),
            )

        async def work(tune_id: int) -> None:
            tune = await loader.load(tune_id)
            if tune is not None:
                done[tune_id] = await preview(tune)

        try:
            order = await run_flow(chosen(api, store, tunes, settings.lists_prompts, clock(),
                                          await journals.tune_ids()),
                                   work, settings.concurrency * TUNES_PER_SLOT
                                   + API_CONCURRENCY, finish, NullProgress())
        except BrokeOff as broke:  # a preview of part of a listing would mislead: said as
            raise broke.error from None  # the listing's failure, as before anything is done
        loader.close()
    return [done[tune_id] for tune_id in order]
