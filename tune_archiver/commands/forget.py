"""`forget`: remove tunes' manifests, so that the next gc frees the blobs only they used.

It holds the archive lock exclusively, as gc does (a local archive): no fetch is
writing a manifest while one is removed. With --keep-within, a tune is forgotten
once its expires_at passed longer ago than the window (by the injected clock).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tune_archiver import manifest
from tune_archiver.download.journal import Journals
from tune_archiver.download.staging import staging_for
from tune_archiver.errors import Denied, StorageError
from tune_archiver.manifest import Manifest
from tune_archiver.models import Tune
from tune_archiver.selection import parse_moment
from tune_archiver.store import Store


@dataclass
class ForgetReport:
    """The tunes whose manifests were removed (or would be, with --dry-run), the ids
    asked for that the archive does not hold, and the manifests that could not be
    removed."""

    removed: list[tuple[int, str | None]] = field(default_factory=list)  # (id, title)
    # Of those, the tunes with no manifest, only the journal of a stopped fetch's files.
    journal_only: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)  # (id, why)
    # Of those removed, the tunes whose expires_at (as the manifest, or a stopped first
    # fetch's journal, records it) is still ahead: Astria lists them, so the next fetch
    # --all archives them again, the forget undone.
    live: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unknown and not self.failed


async def forget(
    store: Store,
    tune_ids: Sequence[int],
    keep_within: timedelta | None,
    now: datetime,
    dry_run: bool,
    waiting: Callable[[], None] | None = None,
    archive: str | None = None,
) -> ForgetReport:
    """Remove the manifests of `tune_ids`, or with `keep_within` of every tune expired
    longer ago than that; nothing is removed on a dry run. A manifest that cannot be
    read (damaged, or refused by the store) is never forgotten by --keep-within (its
    expiry is unknown). The tune's journal in the `archive`'s staging folder goes too:
    the next fetch would record the files a stopped run committed, the tune back."""
    report = ForgetReport()
    journals = None if archive is None else Journals(staging_for(archive).directory, archive)
    titles: dict[int, str | None] = {}  # the tunes a stopped fetch's journal alone names
    journaled_tunes: dict[int, Tune] = {}  # ... as that journal recorded them
    async with store.locked(exclusive=True, waiting=waiting):
        archived = set(await store.manifest_ids())
        if keep_within is None:
            chosen = list(dict.fromkeys(tune_ids))
            # A stopped first fetch left a journal and no manifest: the next fetch would
            # record the tune from it, so it is forgotten too, not "not in the archive".
            # (One that records no file of it, a link planted there, vouches for nothing.)
            journaled = await journals.tune_ids() if journals is not None else set()
            journaled_tunes = {i: tune for i in chosen if i in journaled - archived
                               if journals and (tune := await journals.tune(i)) is not None}
            titles = {i: tune.title for i, tune in journaled_tunes.items()}
            report.journal_only = list(titles)
            report.unknown = [i for i in chosen if i not in archived and i not in titles]
            chosen = [i for i in chosen if i in archived or i in titles]
        else:
            chosen = [i for i in sorted(archived) if await _expired(store, i, now - keep_within)]
        for tune_id in chosen:
            only = tune_id in report.journal_only
            found = None if only else await _read(store, tune_id)
            title = titles[tune_id] if only else found.title if found else None
            if not dry_run:
                # The journal first: a kill between the two left it with no manifest, and
                # forget again said the tune not archived while the next fetch took it back.
                if journals is not None:
                    try:
                        await journals.remove(tune_id)
                    except OSError as exc:  # a folder planted there: the manifest stays,
                        report.failed.append((tune_id, (  # or the next fetch took it back
                            f"tune {tune_id}: {journals.path(tune_id)}, the files a stopped "
                            f"fetch committed, could not be removed ({exc.strerror}): not "
                            f"forgotten{'' if only else ', its manifest kept'}")))
                        continue
                try:
                    if not only:
                        await store.delete_manifest(tune_id)
                # This tune's alone (a folder planted at its manifest's place, a bucket
                # refusing that one object): the others are still forgotten.
                except (StorageError, Denied) as exc:
                    report.failed.append((tune_id, str(exc)))
                    continue
            report.removed.append((tune_id, title))
            # As its manifest records the tune, or the journal of a stopped first fetch
            raw = found.tune if found else journaled_tunes[tune_id].raw if only else {}
            expires = parse_moment(raw.get("expires_at"))
            if expires is not None and expires > now:
                report.live.append(tune_id)
    return report


async def _expired(store: Store, tune_id: int, before: datetime) -> bool:
    try:
        found = await manifest.read(store, tune_id)
    # Damaged, or refused by the store (a FIFO or a link in its place, past the size
    # limit, a bucket policy on that object): its expiry is unknown, so it is kept, and
    # the other tunes are still seen to.
    except (StorageError, Denied):
        return False
    expires = parse_moment(found.tune.get("expires_at")) if found is not None else None
    return expires is not None and expires < before


async def _read(store: Store, tune_id: int) -> Manifest | None:
    try:
        return await manifest.read(store, tune_id)
    # Damaged, or refused by the store (past the size limit, a FIFO in its place, a
    # bucket policy on that object): a manifest asked for by id is forgotten all the
    # same, untitled.
    except (StorageError, Denied):
        return None

