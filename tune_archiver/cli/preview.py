"""What `fetch --dry-run` prints: one line per tune and the total, an error line per
tune not had and per file no fetch could download, and its --json shape (see README).

Pure, as report.py is; main.py prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tune_archiver.cli.report import tune_name
from tune_archiver.models import Asset, file_said
from tune_archiver.text import counted, human_bytes
from tune_archiver.urls import redact

if TYPE_CHECKING:  # the dry run's module is imported when it runs
    from tune_archiver.commands.dry_run import Preview


def as_json(previews: Sequence[Preview], scope: str | None = None) -> dict[str, Any]:
    """The --json shape of `fetch --dry-run`; `scope`: the workspace --all covers."""
    tunes = []
    for p in previews:
        tunes.append({
            "tune_id": p.tune_id, "title": p.title, "error": p.error, "skipped": p.skipped,
            "already_archived": p.archived, "left_out": p.left_out,
            "download": [
                {"kind": a.kind, "index": a.index, **_prompt_of(a), "url": redact(a.url),
                 "size": size}
                for a, size in p.download
            ],
            "not_downloadable": [
                {"kind": a.kind, "index": a.index, **_prompt_of(a), "url": redact(a.url),
                 "status": probe.status, "reason": probe.refused}
                for a, probe in p.not_downloadable
            ],
        })
    sizes = [size for p in previews for _, size in p.download]
    return {
        "dry_run": True,
        **({"workspace": scope} if scope else {}),
        "ok": all(p.ok for p in previews),
        "files": len(sizes),
        "bytes": sum(s for s in sizes if s is not None),
        "unknown_sizes": sum(1 for s in sizes if s is None),
        "not_downloadable": sum(len(p.not_downloadable) for p in previews),
        "tunes": tunes,
    }


def lines(previews: Sequence[Preview]) -> list[str]:
    """One line per tune, then the total."""
    said = []
    for p in previews:
        name = tune_name(p.tune_id, p.title)
        if p.error is not None:
            continue  # reported as an error line
        if p.skipped:
            said.append(f"{name}: unchanged since archived, would skip")
            continue
        refused = ""
        if p.not_downloadable:
            which = ", ".join(f"{file_said(a)}: "
                              + (f"HTTP {probe.status}" if probe.status else "URL refused")
                              for a, probe in p.not_downloadable)
            refused = f"; {len(p.not_downloadable)} not downloadable ({which})"
        said.append(f"{name}: would download {_files_and_size([s for _, s in p.download])}"
                    f"{refused}; {p.archived} already archived"
                    + (f", {p.left_out} left out" if p.left_out else ""))
    everything = [size for p in previews for _, size in p.download]
    refused_total = sum(len(p.not_downloadable) for p in previews)
    said.append(f"dry run: would download {_files_and_size(everything)}; "
                + (f"{refused_total} not downloadable; " if refused_total else "")
                + "nothing was written")
    return said


def errors(previews: Sequence[Preview]) -> list[str]:
    """One line per tune that could not be had, and per file no fetch could download."""
    said = []
    for p in previews:
        if p.error is not None:
            said.append(p.error)
        name = tune_name(p.tune_id, p.title)
        for asset, probe in p.not_downloadable:  # a refused URL's reason names it
            where = f" from {redact(asset.url)}" if probe.status else ""
            said.append(f"{name}: {file_said(asset)}: not downloadable: "
                        f"{probe.refused}{where}")
    return said


def _prompt_of(asset: Asset) -> dict[str, int]:
    """A prompt's file names its prompt in --json, as its line does (file_said)."""
    return {} if asset.prompt_id is None else {"prompt_id": asset.prompt_id}


def _files_and_size(sizes: Sequence[int | None]) -> str:
    known = sum(s for s in sizes if s is not None)
    unknown = sum(1 for s in sizes if s is None)
    text = f"{counted(len(sizes), 'file')}, {human_bytes(known)}"
    return text + (f" (size of {unknown} unknown)" if unknown else "")
