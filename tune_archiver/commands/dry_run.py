"""`fetch --dry-run`: what a fetch would download, with sizes where the hosts tell them.

It reads the API and the archive and writes nothing, not even the archive's folders.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from tune_archiver.astria.client import API_CONCURRENCY, AstriaClient
from tune_archiver.commands.choose import choose, get_tunes, in_order, plan_for
from tune_archiver.commands.fetch import Clock, utc_now
from tune_archiver.config import AllTunes, Settings
from tune_archiver.errors import ArchiverError
from tune_archiver.models import Asset, Tune, TuneResult
from tune_archiver.net.session import new_session
from tune_archiver.net.transport import Probe, probe_size
from tune_archiver.store.location import open_store


@dataclass(frozen=True)
class Preview:
    """What a fetch would do for one tune."""

    tune_id: int
    title: str | None = None
    error: str | None = None
    skipped: bool = False  # archived, complete and unchanged
    download: tuple[tuple[Asset, int | None], ...] = ()  # each file and its size, if known
    # Files whose host refused them (401, 403, 404, 410), each with that HTTP status.
    not_downloadable: tuple[tuple[Asset, int], ...] = ()
    archived: int = 0  # files already in the archive
    left_out: int = 0  # files --only leaves out

    @property
    def ok(self) -> bool:
        """True when a fetch could archive everything: the tune was had, every file can be."""
        return self.error is None and not self.not_downloadable


async def dry_run(
    settings: Settings, tunes: Sequence[int] | AllTunes, clock: Clock = utc_now
) -> list[Preview]:
    """One preview per tune, in the order a fetch would report them."""
    limiter = asyncio.Semaphore(settings.concurrency)
    async with (
        open_store(settings.archive, settings.s3_endpoint_url) as store,
        new_session(settings, decompress=True) as api_session,
        new_session(settings, decompress=False) as asset_session,
    ):
        api = AstriaClient(api_session, settings, asyncio.Semaphore(API_CONCURRENCY))
        tune_ids, skipped = await choose(api, store, tunes, settings.prompts, clock())
        found = await get_tunes(api, tune_ids, settings.prompts)

        async def size_of(asset: Asset) -> Probe:
            async with limiter:
                return await probe_size(asset_session, asset.url, settings.read_timeout)

        async def preview(tune: Tune) -> Preview:
            try:
                plan, carried = await plan_for(store, tune, settings)
            except ArchiverError as exc:
                return Preview(tune.id, tune.title, error=str(exc))
            probes = await asyncio.gather(*(size_of(asset) for asset in plan.download))
            probed = list(zip(plan.download, probes, strict=True))
            return Preview(
                tune.id, tune.title,
                download=tuple((a, p.size) for a, p in probed if p.refused is None),
                not_downloadable=tuple(
                    (a, p.refused) for a, p in probed if p.refused is not None
                ),
                archived=len(plan.reuse) + sum(1 for r in carried if r.ok),
                left_out=len(plan.left_out),
            )

        async with asyncio.TaskGroup() as group:
            tasks = {i: group.create_task(preview(t)) for i, t in found.items()
                     if isinstance(t, Tune)}
    done = {r.tune_id: Preview(r.tune_id, r.title, skipped=True) for r in skipped}
    for tune_id, item in found.items():
        done[tune_id] = (
            _failed(item) if isinstance(item, TuneResult) else tasks[tune_id].result()
        )
    return [done[tune_id] for tune_id in in_order(tunes, tune_ids, skipped)]


def _failed(result: TuneResult) -> Preview:
    return Preview(result.tune_id, result.title, error=result.error)
