"""`verify --repair`: what verify found broken is moved aside and fetched again.

Each damaged blob (corrupt, missing, at a wrong place, not a file, unreadable) is moved
to tmp/damaged/ (never deleted), and every tune that references one, or has a file that
failed, is fetched again with fresh URLs; then those tunes are verified again. The
archive is whole afterwards only if that verify finds nothing and no file was found
gone upstream meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tune_archiver.commands.fetch import Clock, fetch
from tune_archiver.commands.verify import BLOB_PROBLEMS, VerifyReport, verify
from tune_archiver.config import Settings
from tune_archiver.download.staging import Staging
from tune_archiver.models import TuneResult
from tune_archiver.progress import NullProgress, Progress
from tune_archiver.store import Store


@dataclass
class RepairReport:
    """What a repair moved aside, fetched again, and found afterwards."""

    moved: list[str] = field(default_factory=list)  # keys under tmp/damaged/
    fetched: list[TuneResult] = field(default_factory=list)
    after: VerifyReport = field(default_factory=VerifyReport)

    @property
    def ok(self) -> bool:
        return self.after.ok and all(result.ok for result in self.fetched)


async def repair(
    store: Store,
    found: VerifyReport,
    settings: Settings,
    staging: Staging,
    progress: Progress,
    clock: Clock,
) -> RepairReport:
    """Mend what `found` reports: move its damaged blobs aside, fetch the tunes again
    and verify them again. Raises ConfigError for a rejected key (what was moved
    aside stays in tmp/damaged/, and the next repair fetches it as missing)."""
    report = RepairReport()
    broken = [p for p in found.problems if p.problem in BLOB_PROBLEMS | {"failed"}]
    tunes = sorted({p.tune_id for p in broken})
    if not tunes:
        report.after = found
        return report
    stamp = clock().strftime("%Y%m%dT%H%M%SZ")
    for sha in sorted({p.sha256 for p in broken if p.sha256 and p.problem in BLOB_PROBLEMS}):
        report.moved += await store.set_aside_blob(sha, stamp)
    report.fetched = await fetch(settings, tunes, NullProgress(), clock=clock, store=store,
                                 staging=staging)
    report.after = await verify(store, tunes, progress)
    return report
