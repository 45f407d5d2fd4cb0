"""What the archive's upkeep commands print: gc, export and forget, their summary
lines and --json shapes (see README). Pure, as report.py is; main.py prints them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tune_archiver.text import counted, human_bytes

if TYPE_CHECKING:  # their commands' modules are imported when those commands run
    from tune_archiver.commands.export import ExportResult
    from tune_archiver.commands.forget import ForgetReport
    from tune_archiver.commands.gc import GcReport


def gc_json(report: GcReport, dry_run: bool) -> dict[str, Any]:
    """The --json shape of `gc`."""
    return {
        "dry_run": dry_run,
        "blobs": [{"path": key, "bytes": size} for key, size in report.blobs],
        "partials": [{"path": key, "bytes": size} for key, size in report.partials],
        "bytes": report.bytes,
        "failed": report.failed,
    }


def gc_lines(report: GcReport, dry_run: bool) -> list[str]:
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {key} ({human_bytes(size)})" for key, size in report.blobs + report.partials]
    said = f", and {counted(n, 'stray blob')} a stopped repair left" if (n := report.copies) else ""
    lines.append(f"gc {verb} {counted(len(report.blobs), 'unreferenced blob')} and "
                 f"{counted(len(report.partials) - n, 'stale partial file')}{said}: "
                 f"{human_bytes(report.bytes)}")
    return lines


def export_json(result: ExportResult) -> dict[str, Any]:
    """The --json shape of `export`."""
    return {"ok": result.ok, "folder": str(result.folder), "linked": result.linked,
            "copied": result.copied, "failed": result.failed, "gone": result.gone}


def export_summary(result: ExportResult) -> str:
    gone = f", {len(result.gone)} gone upstream (never archived)" if result.gone else ""
    return (f"exported to {result.folder}: {len(result.linked)} hard links, "
            f"{len(result.copied)} copies, {len(result.failed)} failed{gone}")


def forget_lines(found: ForgetReport, dry_run: bool) -> list[str]:
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} the " + ("journal of the files a stopped fetch committed"
                               if tune_id in found.journal_only else "manifest")
             + f" of tune {tune_id}" + (f" ({title})" if title else "")
             for tune_id, title in found.removed]
    lines += [f"tune {tune_id} has not expired: the next fetch --all archives it again "
              "while Astria lists it" for tune_id in found.live]
    journals = sum(1 for tune_id, _ in found.removed if tune_id in found.journal_only)
    lines.append(f"forget {verb} {len(found.removed) - journals} manifest(s)"
                 + (f" and {journals} journal(s) of a stopped fetch" if journals else "")
                 + "; run gc to free the blobs no other tune uses")
    return lines


def forget_json(found: ForgetReport, dry_run: bool) -> dict[str, Any]:
    return {"ok": found.ok, "dry_run": dry_run, "unknown": found.unknown,
            # What went of each: a journal alone is a stopped first fetch's, no manifest.
            "removed": [{"tune_id": i, "title": t,
                         "what": "journal" if i in found.journal_only else "manifest"}
                        for i, t in found.removed],
            "failed": [{"tune_id": i, "error": why} for i, why in found.failed],
            "live": found.live}
