"""The table `list` prints: one line per archived tune, in a terminal's columns.

Pure, as report.py: rows from the manifests in, lines out; main.py prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

from tune_archiver.gallery import notes
from tune_archiver.scrub import cleaned_json
from tune_archiver.selection import parse_moment
from tune_archiver.text import clipped, columns, human_bytes, time_left, visible

COLUMNS = ("id", "title", "branch", "model type", "checkpoint", "files", "size", "complete",
           "archived at", "expires at", "left")
TITLE_WIDTH = 30


def list_table(rows: Sequence[dict[str, Any]], secrets: Sequence[str] = ()) -> list[str]:
    """The table `list` prints: one line per tune under a header. Text from the manifests
    is escaped before the columns are measured, so an escape neither acts on the terminal
    nor breaks the alignment; `secrets` are scrubbed and URLs redacted before a title is
    cut (cut inside an older manifest's key or signed URL, its start was shown)."""
    cells = [COLUMNS] + [_list_cells(row) for row in cleaned_json(rows, secrets)]
    if any(row.get("workspace") for row in rows):  # a column only for workspace archives
        cells = [(*cells[0], "workspace")] + [
            (*line, visible(row.get("workspace") or "-") if "error" not in row else "")
            for line, row in zip(cells[1:], rows, strict=True)]
    # Measured in a terminal's columns, not characters: a CJK title is twice as wide. An
    # unreadable manifest's reason runs on in its row, never widening every title.
    sized = [line for line, row in zip(cells, [{}, *rows], strict=True) if "error" not in row]
    widths = [max(columns(line[i]) for line in sized) for i in range(len(cells[0]))]
    return [
        "  ".join(cell + " " * (width - columns(cell))
                  for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    ]


def _list_cells(row: dict[str, Any]) -> tuple[str, ...]:
    if "error" in row:
        return (str(row["tune_id"]), visible(row["error"]), *("",) * (len(COLUMNS) - 2))
    title = clipped(visible(row["title"] or ""), TITLE_WIDTH)
    said = notes(row)
    files = str(row["files"]) + (f" ({', '.join(said)})" if said else "")
    return (
        str(row["tune_id"]), title, visible(row["branch"] or "-"),
        visible(row["model_type"] or "-"), row["checkpoint"], files,
        human_bytes(row["bytes"]), "yes" if row["complete"] else "no",
        _day(row["archived_at"]), _day(row["expires_at"]), time_left(row["seconds_left"]),
    )


def _day(moment: Any) -> str:
    """A timestamp as "YYYY-MM-DD HH:MM" in UTC; "-" when absent or unreadable."""
    parsed = parse_moment(moment)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if parsed else "-"
