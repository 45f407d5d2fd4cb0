"""verify's verdict, said: what it found, and with --repair what the repair did, and the
error that stopped its downloads, if one did, after it (the damaged tunes are named
whatever stopped the fetching); and what gc had removed when a stop cut it short."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tune_archiver.cli import report, upkeep
from tune_archiver.cli.exits import Exit, for_error
from tune_archiver.cli.printing import emit, print_error
from tune_archiver.cli.rerun import rerun_options
from tune_archiver.cli.running import Interrupted
from tune_archiver.commands.verify import VerifyReport
from tune_archiver.errors import ArchiverError
from tune_archiver.progress import Progress

if TYPE_CHECKING:  # loaded by verify --repair alone (the CLI loads no other command)
    from tune_archiver.commands.gc import GcReport
    from tune_archiver.commands.repair import RepairReport


def said_verified(args: argparse.Namespace, secrets: list[str], found: VerifyReport,
                  refused: ArchiverError | None = None) -> Exit:
    """Print what verify `found` (as verify without --repair does); with `refused`, the
    error that stopped the repair, last, and --json's "error": its exit code, as it
    stopping any run gives (2 for configuration, 3 for a key rejected, 4 for an API out
    of reach: README's exit codes), never 0 while a blob is damaged."""
    # --json's "ok" is the exit code's verdict: with --strict a file gone upstream fails.
    whole = found.ok and not (args.strict and found.gone) and refused is None
    args.summary = report.verify_counts(found.tunes, found, args.strict)
    document = {**report.verify_json(found), "ok": whole}
    errors = report.verify_problems(found, args.strict, rerun_options(args))
    if refused is not None:
        document["error"] = str(refused)
    emit(args, secrets, errors, document, [report.verify_summary(found, args.strict)],
         refused)
    if refused is not None:
        return for_error(refused)
    return Exit.OK if whole else Exit.FAILED


def said_repaired(args: argparse.Namespace, secrets: list[str], found: VerifyReport,
                  mended: RepairReport) -> Exit:
    """Print what verify `found` and the repair did; a repair whose tunes to fetch again
    were not (a limit on open files too low for one download, a key rejected, the API
    out of reach: mended.stopped) says why last, and --json's "error", with its exit
    code, as it stopping any run gives (README's exit codes), never 0 while a blob is
    damaged."""
    whole = mended.ok and not (args.strict and mended.after.gone) and not mended.stopped
    args.summary = report.verify_counts(found.tunes, mended.after, args.strict,
                                        [r.tune_id for r in mended.fetched if not r.ok])
    document = {**report.repair_json(found, mended), "ok": whole}
    errors = report.repair_errors(mended, args.strict, rerun_options(args))
    if mended.stopped is not None:  # what verify found first, as a stop before it says
        errors = report.verify_problems(found, args.strict, rerun_options(args)) + errors
        document["error"] = str(mended.stopped)
    emit(args, secrets, errors, document, report.repair_lines(found, mended, args.strict),
         mended.stopped)
    if mended.stopped is not None:
        return for_error(mended.stopped)
    return Exit.OK if whole else Exit.FAILED


@contextlib.contextmanager
def said_if_stopped(args: argparse.Namespace, secrets: list[str], progress: Progress,
                    seen: list[VerifyReport], doing: RepairReport | None = None
                    ) -> Iterator[None]:
    """The bar closed once the work ends. A stop (cron's timeout, SIGTERM) that cuts a
    repair short says what verify had found first (`seen`), as an error stopping it
    does: each problem's line, --json's fields beside "interrupted", and the fail
    ping's tune ids; else the operator learned only "stopped by SIGTERM". What the
    repair had mended, put back and moved aside (`doing`) is said too, with the command
    that finishes it: else blobs gone to tmp/damaged/ were never named."""
    try:
        yield
    except Interrupted as stop:
        progress.close()  # the bar goes before the lines
        for found in seen:
            for line in report.verify_problems(found, args.strict, rerun_options(args)):
                print_error(line, secrets)
            stop.done = {**report.verify_json(found), "ok": False}
            args.summary = report.verify_counts(found.tunes, found, args.strict)
            if doing is not None and (doing.mended or doing.put_back or doing.moved):
                for line in report.repair_cut_short(found, doing, rerun_options(args)):
                    print_error(line, secrets)
                stop.done["repair"] = {"mended": doing.mended, "moved": doing.moved,
                                       "put_back": doing.put_back}
        raise
    finally:
        progress.close()


@contextlib.contextmanager
def said_if_gc_stopped(args: argparse.Namespace, secrets: list[str],
                       found: GcReport) -> Iterator[None]:
    """A stop (cron's timeout, SIGTERM) that cuts gc short once it removed blobs says
    them, as a failure part way does: a line for each, and --json's fields beside
    "interrupted"; else the operator learned only "stopped by SIGTERM", whatever was gone."""
    try:
        yield
    except Interrupted as stop:
        if found.blobs and not args.dry_run:  # else its document is the usual stop's
            if not args.json:
                emit(args, secrets, [], None, upkeep.gc_lines(found, args.dry_run))
            stop.done = upkeep.gc_json(found, args.dry_run)
        raise
