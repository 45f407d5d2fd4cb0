"""verify's verdict, said: what it found, and the error that stopped its repair, if one
did, after it (the damaged tunes are named whatever stopped the mending)."""

from __future__ import annotations

import argparse

from tune_archiver.cli import report
from tune_archiver.cli.exits import Exit
from tune_archiver.cli.printing import emit
from tune_archiver.commands.verify import VerifyReport
from tune_archiver.errors import ConfigError


def said_verified(args: argparse.Namespace, secrets: list[str], found: VerifyReport,
                  refused: ConfigError | None = None) -> Exit:
    """Print what verify `found` (as verify without --repair does); with `refused`, the
    error that stopped the repair, last, and --json's "error": exit 2, as any error of
    configuration (README's exit codes), never 0 while a blob is damaged."""
    # --json's "ok" is the exit code's verdict: with --strict a file gone upstream fails.
    whole = found.ok and not (args.strict and found.gone) and refused is None
    args.summary = report.verify_counts(found.tunes, found, args.strict)
    document = {**report.verify_json(found), "ok": whole}
    errors = report.verify_problems(found, args.strict)
    if refused is not None:
        document["error"] = str(refused)
        errors.append(str(refused))
    emit(args, secrets, errors, document, [report.verify_summary(found, args.strict)])
    if refused is not None:
        return Exit.USAGE
    return Exit.OK if whole else Exit.FAILED
