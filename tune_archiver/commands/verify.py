"""`verify`: re-read every blob the chosen manifests reference and prove it is whole.

Each distinct blob is hashed once, in worker threads, however many tunes share it.
A problem is reported for every tune, kind and index that references it.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tune_archiver import manifest
from tune_archiver.astria.client import PERSONAL
from tune_archiver.commands.nulls import unarchived_fields
from tune_archiver.commands.unread import purged
from tune_archiver.errors import (
    ArchiverError,
    Denied,
    NoAccess,
    NotAFile,
    StorageError,
    UnreadableManifest,
)
from tune_archiver.layout import blob_key, tune_id_of
from tune_archiver.manifest import Manifest
from tune_archiver.progress import Progress
from tune_archiver.store import Store

WORKERS = max(2, min(8, os.cpu_count() or 2))
SET_ASIDE = "a fetch set it aside as"  # the detail of a manifest in manifests/damaged/


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the archive, where a user can find it."""

    tune_id: int
    kind: str | None  # None for a problem with the manifest itself
    index: int | None
    # missing, corrupt, wrong_path, not_a_file, unreadable, failed, no_manifest,
    # unreadable_manifest; and gone (lost upstream), which is counted apart
    problem: str
    detail: str
    sha256: str | None = None  # the blob the problem is with, if any
    # True when the blob is not at fault, only this manifest entry: its path, or its size
    # where the blob's bytes hash to its name. A repair mends the entry and keeps the
    # blob, which other tunes may hold and which may no longer be fetched again.
    entry_only: bool = False
    true_size: int | None = None  # the whole blob's size, when the entry records another
    # A manifest no fetch sets aside (it sets aside only one it read and found damaged), to
    # be moved by hand: a folder, link or FIFO at its place, one the disk fails to read or
    # too large to be one, on which a fetch fails as verify did (see _mend in cli/report.py).
    set_aside_by_hand: bool = False
    # One this user may not read (another user's blob, any manifest): maybe whole; no repair,
    # fetch or move mends that, only its owner's eyes (see _mend in cli/report.py).
    closed: bool = False
    prompt_id: int | None = None  # a prompt's file: its prompt (each has a prompt_image 0)


# Problems that a repair can mend: by mending the manifest entry (entry_only), else by
# moving the blob aside and fetching it again.
BLOB_PROBLEMS = frozenset({"missing", "corrupt", "wrong_path", "not_a_file", "unreadable"})


@dataclass
class VerifyReport:
    tunes: int = 0
    blobs: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    gone: list[Problem] = field(default_factory=list)  # lost upstream, never archived
    training: list[int] = field(default_factory=list)  # tunes not complete: no checkpoint yet
    # Tunes not complete with nothing failed, gone or damaged: files an --only run left
    # out, or a tune purged upstream before they were archived (list says it 'no').
    partial: list[int] = field(default_factory=list)
    # Tunes whose manifest records a workspace not the personal scope: a command said
    # for one asks in every workspace, where a run with no --workspace finds it not.
    in_workspace: set[int] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class _Ref:
    """One manifest entry that references a blob, and the size it records."""

    tune_id: int
    kind: str
    index: int
    size: int
    sha256: str
    prompt_id: int | None = None


async def verify(
    store: Store, tune_ids: Sequence[int], progress: Progress
) -> VerifyReport:
    """Check the tunes' manifests (all of them when `tune_ids` is empty) and their blobs.

    A manifest that is missing or unreadable is a problem of its tune; the others are
    still checked.
    """
    report = VerifyReport()
    sizes: dict[str, int] = {}  # sha256 -> the size the manifests give it
    refs: dict[str, list[_Ref]] = defaultdict(list)
    chosen = list(dict.fromkeys(tune_ids)) or await store.manifest_ids()
    for key in await store.damaged_manifests():
        damaged = damaged_tune(key)
        if damaged is not None and (not tune_ids or damaged in chosen):
            report.problems.append(Problem(
                damaged, None, None, "unreadable_manifest",
                f"{SET_ASIDE} {key}",
            ))
    for tune_id in chosen:
        report.tunes += 1
        found = await _manifest(store, tune_id, report)
        if found is not None and found.workspace not in (None, PERSONAL):
            report.in_workspace.add(tune_id)
        for entry in found.entries if found is not None else ():
            blob = entry.blob
            if blob is None:
                gone = entry.status == "gone"
                (report.gone if gone else report.problems).append(Problem(
                    tune_id, entry.kind, entry.index, "gone" if gone else "failed",
                    entry.error or "no error was recorded", prompt_id=entry.prompt_id,
                ))
                continue
            ref = _Ref(tune_id, entry.kind, entry.index, blob.size, blob.sha256,
                       entry.prompt_id)
            if entry.path != blob_key(blob.sha256):  # the sha256 alone names the path
                said = "has no path" if entry.path is None else f"says {entry.path!r}"
                report.problems.append(_problem(
                    ref, "wrong_path",
                    f"the manifest {said}; its sha256 names {blob_key(blob.sha256)}",
                    entry_only=True,
                ))
            sizes.setdefault(blob.sha256, blob.size)
            refs[blob.sha256].append(ref)
        if found is not None and not found.complete:
            unread = unread_fields(found)
            report.problems += [p for p in unread if p.problem != "gone"]
            report.gone += [p for p in unread if p.problem == "gone"]  # purged prompts
            if found.state == "training":
                report.training.append(tune_id)
            elif not unread and all(entry.status == "ok" for entry in found.entries):
                report.partial.append(tune_id)
    report.blobs = len(sizes)
    report.bytes = sum(sizes.values())
    progress.add_bytes(report.bytes)
    progress.add_files(len(sizes))
    misplaced = await store.misplaced()
    loop = asyncio.get_running_loop()

    def advance(nbytes: int) -> None:  # called from a worker thread
        loop.call_soon_threadsafe(progress.advance, nbytes)

    hashed: dict[str, tuple[int, str] | ArchiverError | None] = {}
    waiting = iter(sizes)  # shared by the workers: a few tasks, however many blobs

    async def check() -> None:
        for sha in waiting:
            try:
                hashed[sha] = await store.hash_blob(sha, advance)
            # A link, a FIFO, EIO, or a bucket that refuses this one object (AccessDenied;
            # the bucket itself was reached): this blob's problem alone. Credentials
            # refused outright (an expired token) stop the run, said once.
            except (StorageError, Denied) as exc:
                hashed[sha] = exc
            finally:
                progress.file_done()

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(WORKERS):
                group.create_task(check())
    except* ArchiverError as errors:
        raise errors.exceptions[0] from None
    lost = {ref.tune_id for sha in sizes if hashed[sha] is None
            and sha not in misplaced for ref in refs[sha]}
    named_now = {tune_id: await _named_now(store, tune_id, named=bool(tune_ids))
                 for tune_id in lost}
    for sha in sizes:
        for ref in refs[sha]:
            outcome = _judge(sha, ref.size, hashed[sha], misplaced)
            now = named_now.get(ref.tune_id)
            if outcome is not None and outcome[0] == "missing" and now is not None and (
                sha not in now
            ):
                continue  # dropped from its manifest since, then removed by gc: no damage
            if outcome is not None:
                problem, detail, true_size = outcome
                report.problems.append(_problem(ref, problem, detail,
                                                entry_only=true_size is not None,
                                                true_size=true_size,
                                                closed=_closed(hashed[sha])))
    failing = {p.tune_id for p in report.problems}  # said already: a failed file, say
    report.partial = [tune_id for tune_id in report.partial if tune_id not in failing]
    return report


def _judge(
    sha: str, size: int, found: tuple[int, str] | ArchiverError | None,
    misplaced: dict[str, str],
) -> tuple[str, str, int | None] | None:
    """What is wrong with a blob, as one manifest entry sees it: (problem, detail, the
    blob's true size when only the entry's size is wrong); None when nothing."""
    if isinstance(found, NotAFile):
        return "not_a_file", f"{blob_key(sha)}: {found}", None
    if isinstance(found, ArchiverError):
        return "unreadable", str(found), None
    if found is None:
        if sha in misplaced:
            return "wrong_path", f"found at {misplaced[sha]}, not at {blob_key(sha)}", None
        return "missing", f"{blob_key(sha)} is missing", None
    actual, digest = found
    if digest == sha:  # the bytes are those the name says: only the entry can be wrong
        if actual == size:
            return None
        return "corrupt", (f"the manifest records {size} bytes; {blob_key(sha)} holds "
                           f"{actual}, whose sha256 is its name"), actual
    if actual != size:
        return "corrupt", f"{blob_key(sha)} holds {actual} bytes, not {size}", None
    return "corrupt", f"the bytes of {blob_key(sha)} hash to {digest}", None


async def _named_now(store: Store, tune_id: int, named: bool) -> set[str] | None:
    """The blobs the tune's manifest names now; None when it cannot be read again, or it
    is gone and the tune was `named` (asked for: it is no longer archived, so what was
    missing stays missing). verify takes no lock, so that it can check a read-only
    archive: a blob found missing may be one that a fetch or a forget dropped from the
    manifest after verify read it, and that gc then removed."""
    try:
        found = await manifest.read(store, tune_id)
    except (UnreadableManifest, StorageError, Denied):
        return None
    if found is None:
        return None if named else set()
    return {entry.blob.sha256 for entry in found.entries if entry.blob is not None}


async def _manifest(store: Store, tune_id: int, report: VerifyReport) -> Manifest | None:
    """The tune's manifest; None, with the problem reported, when it is missing, damaged
    or the disk cannot read it."""
    try:
        found = await manifest.read(store, tune_id)
    except UnreadableManifest as exc:
        report.problems.append(Problem(tune_id, None, None, "unreadable_manifest", exc.reason))
        return None
    # A folder or a FIFO in its place, EIO, a bucket refusing that one object (AccessDenied;
    # credentials refused outright stop the run): this tune's alone.
    except (StorageError, Denied) as exc:
        # A local disk's failure is the file's (EIO: fetch fails on it as well), where a
        # bucket's may pass (a 503) or be its policy's (AccessDenied): no move mends those.
        closed = isinstance(exc, NoAccess)
        stuck = isinstance(exc, NotAFile) or (store.unreadable_is_damaged and not closed
                                              and not isinstance(exc, Denied))
        report.problems.append(Problem(tune_id, None, None, "unreadable_manifest", str(exc),
                                       set_aside_by_hand=stuck, closed=closed))
        return None
    if found is None:
        report.problems.append(Problem(tune_id, None, None, "no_manifest",
                                       f"tune {tune_id} is not in the archive"))
    return found


def unread_fields(found: Manifest) -> list[Problem]:
    """The file fields the API sent malformed, as the manifest records the tune (a string
    for orig_images, a null in it): their files have no entry, yet were never archived,
    which made the fetch write the tune not complete. A null that an archived photo
    stands for is none, as fetch counts it. So are prompts a --prompts run could not
    read (their files have no entry either), till a --prompts run reads them: gone
    upstream once the tune expired before one did (unread.purged)."""
    gone = purged(found.prompts_unread)
    unread = [Problem(found.tune_id, "prompt_image", None, "gone" if gone else "failed",
                      f"the prompts could not be read: {found.prompts_unread}")
              ] if found.prompts_unread is not None else []
    return unread + [Problem(found.tune_id, kind, None, "failed", error)
                     for kind, error in unarchived_fields(found)]


def damaged_tune(key: str) -> int | None:
    """The tune a set-aside manifest (manifests/damaged/<id>-<time>.json) belonged to."""
    return tune_id_of(key.rsplit("/", 1)[-1].split("-", 1)[0])


def _problem(
    ref: _Ref, problem: str, detail: str, entry_only: bool = False,
    true_size: int | None = None, closed: bool = False,
) -> Problem:
    return Problem(ref.tune_id, ref.kind, ref.index, problem, detail, ref.sha256, entry_only,
                   true_size, prompt_id=ref.prompt_id, closed=closed)


def _closed(found: object) -> bool:
    """Whether a blob was refused as another user's: maybe whole, closed to this one. One
    of this user's own refused (its mode, or a disk that says EACCES for a read it
    failed: some FUSE mounts) gets a repair's advice as any unreadable blob."""
    return isinstance(found, NoAccess) and found.others
