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
from typing import Any

from tune_archiver import manifest
from tune_archiver.layout import blob_key, is_sha256
from tune_archiver.progress import Progress
from tune_archiver.store import Store

WORKERS = max(2, min(8, os.cpu_count() or 2))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the archive, where a user can find it."""

    tune_id: int
    kind: str | None  # None for a problem with the manifest itself
    index: int | None
    problem: str  # missing, corrupt, wrong_path, failed, no_manifest, unreadable_manifest
    detail: str


@dataclass
class VerifyReport:
    tunes: int = 0
    blobs: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Ref:
    """One manifest entry that references a blob, and the size it records."""

    tune_id: int
    kind: Any
    index: Any
    size: int


async def verify(
    store: Store, tune_ids: Sequence[int], progress: Progress
) -> VerifyReport:
    """Check the tunes' manifests (all of them when `tune_ids` is empty) and their blobs."""
    report = VerifyReport()
    sizes: dict[str, int] = {}  # sha256 -> the size the manifests give it
    refs: dict[str, list[_Ref]] = defaultdict(list)
    for tune_id in dict.fromkeys(tune_ids) or await store.manifest_ids():
        report.tunes += 1
        document = await _manifest(store, tune_id, report)
        for entry in _entries(document):
            sha, size = entry.get("sha256"), entry.get("size")
            ref = _Ref(tune_id, entry.get("kind"), entry.get("index"),
                       size if isinstance(size, int) else -1)
            if entry.get("status") != "ok":
                report.problems.append(_problem(ref, "failed", str(entry.get("error"))))
            elif not is_sha256(sha) or not isinstance(size, int):
                report.problems.append(_problem(ref, "unreadable_manifest",
                                                "the entry has no valid sha256 and size"))
            else:
                if entry.get("path") != blob_key(sha):
                    report.problems.append(_problem(
                        ref, "wrong_path",
                        f"the manifest says {entry.get('path')!r}; its sha256 names "
                        f"{blob_key(sha)}",
                    ))
                sizes.setdefault(sha, size)
                refs[sha].append(ref)
    report.blobs = len(sizes)
    report.bytes = sum(sizes.values())
    progress.add_bytes(report.bytes)
    progress.add_files(len(sizes))
    misplaced = await store.misplaced()
    loop = asyncio.get_running_loop()

    def advance(nbytes: int) -> None:  # called from a worker thread
        loop.call_soon_threadsafe(progress.advance, nbytes)

    workers = asyncio.Semaphore(WORKERS)

    async def check(sha: str) -> tuple[int, str] | None:
        async with workers:
            found = await store.hash_blob(sha, advance)
        progress.file_done()
        return found

    async with asyncio.TaskGroup() as group:
        tasks = {sha: group.create_task(check(sha)) for sha in sizes}
    for sha, task in tasks.items():
        for ref in refs[sha]:
            outcome = _judge(sha, ref.size, task.result(), misplaced)
            if outcome is not None:
                report.problems.append(_problem(ref, *outcome))
    return report


def _judge(
    sha: str, size: int, found: tuple[int, str] | None, misplaced: dict[str, str]
) -> tuple[str, str] | None:
    """What is wrong with a blob, as one manifest entry sees it; None when nothing."""
    if found is None:
        if sha in misplaced:
            return "wrong_path", f"found at {misplaced[sha]}, not at {blob_key(sha)}"
        return "missing", f"{blob_key(sha)} is missing"
    actual, digest = found
    if actual != size:
        return "corrupt", f"{blob_key(sha)} holds {actual} bytes, not {size}"
    if digest != sha:
        return "corrupt", f"the bytes of {blob_key(sha)} hash to {digest}"
    return None


async def _manifest(
    store: Store, tune_id: int, report: VerifyReport
) -> dict[str, Any] | None:
    data = await store.read_manifest(tune_id)
    document = manifest.decode(data or b"")
    if data is None:
        report.problems.append(Problem(tune_id, None, None, "no_manifest",
                                       f"tune {tune_id} is not in the archive"))
    elif document is None:
        report.problems.append(Problem(tune_id, None, None, "unreadable_manifest",
                                       f"the manifest of tune {tune_id} is not valid JSON "
                                       "of a known schema version"))
    return document


def _entries(document: dict[str, Any] | None) -> list[dict[str, Any]]:
    entries = document.get("assets") if document is not None else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _problem(ref: _Ref, problem: str, detail: str) -> Problem:
    kind = ref.kind if isinstance(ref.kind, str) else None
    index = ref.index if isinstance(ref.index, int) else None
    return Problem(ref.tune_id, kind, index, problem, detail)
