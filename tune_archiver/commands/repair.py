"""`verify --repair`: what verify found broken is mended, moved aside or fetched again.

A manifest entry that is wrong about a whole blob (its path, or its size where the
blob hashes to its name) is mended in the manifest: the blob stays, since other tunes
may hold it and a tune gone upstream can never fetch it again. A whole copy of a
blob found at a wrong place is put back in its place. Each other damaged blob
(corrupt, missing, at a wrong place, not a file, unreadable) is moved to tmp/damaged/
(never deleted), and every tune that references one, or has a file that failed, is
fetched again with fresh URLs; then the tunes touched are verified again. The
archive is whole afterwards only if that verify finds nothing and no file was found
gone upstream meanwhile.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tune_archiver import manifest
from tune_archiver.commands.fetch import Clock, fetch
from tune_archiver.commands.verify import (
    BLOB_PROBLEMS,
    Problem,
    VerifyReport,
    damaged_tune,
    verify,
)
from tune_archiver.commands.workspaces import ALL
from tune_archiver.config import Settings
from tune_archiver.download.staging import Staging
from tune_archiver.errors import (
    ArchiverError,
    Denied,
    NoAccess,
    StorageError,
    UnreadableManifest,
)
from tune_archiver.layout import blob_key, named_blob
from tune_archiver.models import PROMPT_KINDS, TuneResult, file_said
from tune_archiver.progress import NullProgress, Progress
from tune_archiver.store import Store


@dataclass
class RepairReport:
    """What a repair mended, moved aside, fetched again, and found afterwards."""

    mended: list[str] = field(default_factory=list)  # one line per manifest field mended
    moved: list[str] = field(default_factory=list)  # keys under tmp/damaged/
    put_back: list[str] = field(default_factory=list)  # "<blob's key> from <wrong place>"
    refused: list[str] = field(default_factory=list)  # why a blob could not be set aside
    # A damaged blob whose file its host serves as other bytes now: archived as served,
    # its manifest naming them, so the verify after finds nothing; the bytes first
    # archived are lost but for their damaged copy. One line each.
    replaced: list[str] = field(default_factory=list)
    fetched: list[TuneResult] = field(default_factory=list)
    after: VerifyReport = field(default_factory=VerifyReport)
    # Why the tunes to fetch again were not (ulimit -n), or not all (a key rejected, the
    # API out of reach): what was mended, put back and moved aside is said with it.
    stopped: ArchiverError | None = None

    before_gone: list[Problem] = field(default_factory=list)  # verify's, before the repair

    @property
    def ok(self) -> bool:
        """Whole: the verify after finds nothing, and no file was found gone upstream
        meanwhile. A tune fetched again that failed counts only so: a blob it shares,
        fetched whole by another tune, is whole for it too, its own tune gone upstream.
        Counted, not matched: two prompts' files, or a photo and the one replacing it,
        share a kind and index, and a gone entry is never dropped, so one more is new."""
        before = Counter((p.tune_id, p.kind, p.index) for p in self.before_gone)
        after = Counter((p.tune_id, p.kind, p.index) for p in self.after.gone)
        return self.after.ok and not self.refused and not self.replaced and not after - before


def fetches(found: VerifyReport) -> bool:
    """Whether a repair of what `found` reports may fetch a tune again (a damaged blob, a
    failed file): mending entries, or a manifest it leaves as it is, downloads nothing."""
    return any(p.problem == "failed" or (p.problem in BLOB_PROBLEMS and not p.entry_only)
               for p in found.problems)


async def repair(
    store: Store,
    found: VerifyReport,
    settings: Settings | None,
    staging: Staging,
    progress: Progress,
    clock: Clock,
    waiting: Callable[[], None] | None = None,
    stopped: ArchiverError | None = None,
    report: RepairReport | None = None,
) -> RepairReport:
    """Mend what `found` reports: mend the manifest entries wrong about a whole blob,
    move the damaged blobs aside, fetch their tunes again and verify the tunes touched
    again. A fetch stopped by its error (a rejected key, the API out of reach) is said in
    the report's `stopped` (what was moved aside stays in tmp/damaged/, and the next
    repair fetches it as missing). `waiting` is called if a
    fetch or gc holds the archive when damaged blobs are to be put back or set aside.
    With `stopped` (a limit on open files too low for one download, no API key: then no
    `settings`), every repair that downloads nothing is made, and no tune is fetched
    again: said in `stopped`, when one was to be. Filled in as it goes, `report` (a
    new one if None) says what was done when a signal stops the repair part way."""
    report = RepairReport() if report is None else report
    report.before_gone = list(found.gone)
    entries = [p for p in found.problems if p.entry_only]
    damaged = [p for p in found.problems if p.problem in BLOB_PROBLEMS and not p.entry_only]
    failed = [p for p in found.problems if p.problem == "failed"]
    mended_tunes = sorted({p.tune_id for p in entries})
    missing = {p.sha256 for p in found.problems if p.problem == "missing" and p.sha256}
    if not damaged and not failed and not mended_tunes:
        report.after = found
        return report
    # Checked as a fetch checks it, before the first write: an archive of another user
    # (root's cron on a user's archive) would get manifests and folders its owner
    # can no longer read or write.
    await store.prepare()
    for tune_id in mended_tunes:
        try:  # a manifest the store will not take (or a blob it cannot look up): that
            # tune's alone, said; every other tune's damage is still mended below
            report.mended += await _mend_entries(store, tune_id, entries, missing)
        except (StorageError, Denied) as exc:
            report.refused = list(dict.fromkeys([*report.refused, str(exc)]))
    stamp = clock().strftime("%Y%m%dT%H%M%SZ")
    whole: set[str] = set()  # put back, or whole again: its tunes are not fetched
    stuck: set[str] = set()  # could not be set aside: not fetched again over it
    if damaged:
        # Under the archive lock, exclusive as gc's: a fetch of another tune committing
        # whole bytes of a damaged blob between the look and the move would have that
        # good blob moved aside, and its manifest just written "ok" name a blob not there.
        # Let go before the fetch below, which takes it shared.
        async with store.locked(exclusive=True, waiting=waiting) as held:
            await _set_aside(store, damaged, stamp, report, whole, stuck, held)
    tunes = sorted({p.tune_id for p in damaged if p.sha256 not in whole | stuck}
                   | {p.tune_id for p in failed})
    touched = {p.tune_id for p in damaged + failed} | set(mended_tunes)
    # Held shared, as the fetch below holds it, so that no forget comes between the look
    # and the fetch: a tune forgotten since verify read it (a cron's forget --keep-within
    # while verify hashed the rest) is no longer archived, and fetched again it would be
    # back, downloaded whole, or, gone upstream, a failure of a tune no longer there.
    async with store.locked(exclusive=False, waiting=waiting):
        # (one whose manifest a fetch set aside as damaged meanwhile is fetched anew)
        forgotten = touched - set(await store.manifest_ids()) - {
            damaged_tune(key) for key in await store.damaged_manifests()}
        tunes = [tune_id for tune_id in tunes if tune_id not in forgotten]
        if tunes and (stopped is not None or settings is None):
            report.stopped = stopped
        elif tunes and settings is not None:
            # A prompt's file (a generated image, an input) comes back only with the prompts.
            prompts = settings.prompts or any(p.kind in PROMPT_KINDS for p in damaged + failed)
            # A tune of a workspace is fetched where it was archived (its manifest says
            # it): asked in the run's scope (the personal one), it is not found.
            scoped = [tune_id for tune_id in tunes if tune_id in found.in_workspace]
            try:
                for group, scope in (([t for t in tunes if t not in scoped],
                                      settings.workspace), (scoped, ALL)):
                    report.fetched += await fetch(
                        replace(settings, prompts=prompts, workspace=scope), group,
                        NullProgress(), clock=clock, store=store, staging=staging,
                    ) if group else []
            except ArchiverError as exc:  # the tunes touched are verified again all the same
                report.stopped = exc
    touched -= forgotten  # what was put back is hashed again
    report.after = (await verify(store, sorted(touched), progress) if touched
                    else VerifyReport())
    report.replaced = await _replaced(store, damaged, report.fetched, report.after)
    # What no repair touches (a manifest unreadable or missing, a file gone upstream) is
    # still there: the archive is not whole while it is, nor --strict content without it.
    report.after.problems += [p for p in found.problems
                              if p.tune_id not in touched | forgotten]
    report.after.gone += [p for p in found.gone if p.tune_id not in touched | forgotten]
    return report


async def _set_aside(store: Store, damaged: list[Problem], stamp: str, report: RepairReport,
                     whole: set[str], stuck: set[str], held: Callable[[], bool]) -> None:
    """Put back each damaged blob whose whole copy sits at a wrong place, else move it
    to tmp/damaged/ unless it is whole now; adds to `whole` and `stuck` the blobs put
    back (or whole) and those that could not be set aside. None is moved once the
    archive lock is lost (`held` False), as gc removes none."""
    # Walked once: walking objects/ again for each damaged blob made a repair of many
    # in a large archive take hours.
    misplaced = await store.misplaced()
    for sha in sorted({p.sha256 for p in damaged if p.sha256}):
        try:
            # A whole copy at a wrong place goes back: a tune gone upstream has no other.
            aside = (await store.put_back(sha, misplaced[sha], stamp) if sha in misplaced
                     else None)
            if aside is None and await _whole_now(store, sha):
                whole.add(sha)  # put back, or fetched, by another run since our verify
                continue
            if aside is None and not held():  # a fetch may have stored it whole since
                raise StorageError(
                    f"the archive's lock file {store}/lock was removed while this run held "
                    "it (a fetch may have stored a damaged blob whole since): no further "
                    "blob moved aside; run verify --repair again, and never remove a lock "
                    "file (a lock dies with its process)")
            if aside is None:
                report.moved += await store.set_aside_blob(sha, stamp, misplaced.get(sha))
                continue
        # A folder on its way that is a link or not a folder, EIO, a bucket refusing that
        # one object: this blob's alone, said; it is not fetched again over what is there.
        except (StorageError, Denied) as exc:
            report.refused = list(dict.fromkeys([*report.refused, str(exc)]))
            stuck.add(sha)
            continue
        report.moved += aside
        report.put_back.append(f"{blob_key(sha)} from {misplaced[sha]}")
        whole.add(sha)


async def _replaced(store: Store, damaged: list[Problem], fetched: list[TuneResult],
                    after: VerifyReport) -> list[str]:
    """The damaged blobs whose file the fetch archived as other bytes (its host serves
    those now) while the bytes first archived are not back: the manifest names the new
    ones, so the verify `after` says nothing of it."""
    # Downloaded now, not reused: an entry this repair mended names its true blob anew.
    now: dict[tuple[int, str | None, int | None, int | None], str] = {
        (r.tune_id, a.asset.kind, a.asset.prompt_id, a.asset.index): a.blob.sha256
        for r in fetched for a in r.assets if a.blob is not None and not a.reused}
    # A manifest still naming the blob (its file failed, while another prompt's file of
    # that kind and index came): the verify after says it missing, not replaced.
    named = {(q.tune_id, q.sha256) for q in after.problems + after.gone}
    lines = []
    for p in damaged:
        other = now.get((p.tune_id, p.kind, p.prompt_id, p.index))
        if p.sha256 is None or other in (None, p.sha256) or (p.tune_id, p.sha256) in named:
            continue
        lost = "are lost"
        try:  # a bucket's 503 here would lose the report of all the repair did
            if await store.blob_size(p.sha256) is not None:
                continue
        except (StorageError, Denied) as exc:  # not known back: never "whole"
            lost = f"are not known to be back ({exc})"
        copy = "" if p.problem == "missing" else " but for the damaged copy moved aside"
        of = "" if p.prompt_id is None else f" of prompt {p.prompt_id}"
        lines.append(f"tune {p.tune_id}: {p.kind} {p.index}{of}: its host serves other bytes "
                     f"now, archived in its place; the bytes first archived "
                     f"({blob_key(p.sha256)}) {lost}{copy}")
    return lines


async def _whole_now(store: Store, sha256: str) -> bool:
    """Whether the blob's place holds its bytes now: what verify found may be stale, and
    a whole blob there (another repair's) is never moved aside. StorageError for a
    bucket's blob that cannot be read: it may be whole there (the read failed on its way,
    a proxy cut it short), and moved aside, a tune gone upstream would have it no more."""
    try:
        found = await store.hash_blob(sha256, lambda n: None)
    # A blob this user may not read (another user's, or its mode changed: EACCES) is
    # no damage either: moved aside, a tune gone upstream would have it no more.
    except NoAccess as exc:
        raise StorageError(f"{exc}; not moved aside: it may be whole; let this user read "
                           "it (its owner or mode), then run verify again") from exc
    except StorageError as exc:
        if not store.unreadable_is_damaged:
            raise StorageError(f"{exc}; not moved aside: it may be whole in {store}, and "
                               "is read again by the next verify") from exc
        return False  # not a file, unreadable: damaged still
    except ArchiverError:
        return False
    return found is not None and found[1] == sha256


async def _names_another(store: Store, path: str | None, sha256: str) -> bool:
    """Whether `path` names a blob other than `sha256` that the archive holds."""
    named = named_blob(path)
    return named not in (None, sha256) and await store.blob_size(named) is not None


async def _whole_as(store: Store, named: str | None, size: int, sha256: str) -> bool:
    """Whether the archive holds `named` whole, of `size` bytes, while still no `sha256`:
    the blob an entry's path names, its sha256 being the one field wrong. A bucket's
    blob that could not be read is not known whole: the entry is left for the verify
    after to say, not the repair of every other tune stopped."""
    if named is None or await store.blob_size(sha256) is not None or (
            await store.blob_size(named) != size):
        return False
    try:
        return await _whole_now(store, named)
    except StorageError:
        return False


class _Unchanged(Exception):
    """Nothing to mend in the manifest as it is now: nothing is written."""


async def _mend_entries(store: Store, tune_id: int, problems: list[Problem],
                        missing: set[str]) -> list[str]:
    """Give each archived entry of the tune's manifest the path its sha256 names (unless
    its path names another blob the archive holds) and,
    where verify found the blob whole with another size, that size; an entry whose
    sha256 names a blob `missing` while its path names a whole one of its size gets
    that one's sha256 (a digit of it changed). Returns one line
    per field mended. The manifest is read again under its lock: what changed since
    verify is kept, and a manifest now unreadable or gone is left to the verify after."""
    sizes = {p.sha256: p.true_size for p in problems
             if p.tune_id == tune_id and p.sha256 and p.true_size is not None}
    lines: list[str] = []

    async def change(data: bytes | None) -> bytes:
        lines.clear()  # a store may call it again after another writer's update
        if data is None:
            raise _Unchanged
        entries = manifest.parse(data, tune_id).entries  # UnreadableManifest: left alone
        document = json.loads(data)
        for item, entry in zip(document["assets"], entries, strict=True):
            blob = entry.blob
            if blob is None:
                continue
            where = f"tune {tune_id}: {file_said(entry.asset)}"  # a prompt's: which
            named = named_blob(entry.path)
            if named not in (None, blob.sha256) and blob.sha256 in missing and (
                    await _whole_as(store, named, blob.size, blob.sha256)):
                item["sha256"], item["path"] = named, blob_key(named)
                lines.append(f"{where}: its sha256 set to {named}, the whole blob its "
                             "path names")
                continue
            # A path naming another blob the archive holds is the one reference left
            # to it when the sha256 was edited: rewritten, gc would remove that blob.
            # Left as it is. One naming a blob not there (its digest changed) is no
            # reference: left, verify --repair would say 'wrong path' for ever.
            if entry.path != blob_key(blob.sha256) and not await _names_another(
                    store, entry.path, blob.sha256):
                item["path"] = blob_key(blob.sha256)
                lines.append(f"{where}: its path set to {item['path']}")
            size = sizes.get(blob.sha256)
            if size is not None and size != blob.size:
                item["size"] = size
                lines.append(f"{where}: its size set to {size}, the whole blob's")
        if not lines:
            raise _Unchanged
        return manifest.encode(document)

    try:
        await store.update_manifest(tune_id, change)
    except (_Unchanged, UnreadableManifest):
        return []
    return lines
