"""`export`: a tune's archived files as a plain folder a person can browse.

DEST/<id>-<slug>/checkpoints/, training_images/, prompt_images/ and manifest.json.
Files are hard links to the blobs when possible (blobs are read-only), else copies.
Nothing that exists is ever overwritten: the tune's folder must be new.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from tune_archiver import manifest
from tune_archiver.commands.names import export_path, folder_name
from tune_archiver.errors import ArchiverError, ConfigError, StorageError
from tune_archiver.layout import is_sha256
from tune_archiver.store import Store


@dataclass
class ExportResult:
    """What an export wrote, and what it could not."""

    folder: Path
    linked: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one line per file not exported

    @property
    def ok(self) -> bool:
        return not self.failed


async def export_tune(store: Store, tune_id: int, dest: Path, copy: bool) -> ExportResult:
    """Write the tune's folder under `dest`.

    Raises ArchiverError when the tune is not archived, ConfigError when its folder
    exists already.
    """
    data = await store.read_manifest(tune_id)
    document = manifest.decode(data or b"")
    if data is None or document is None:
        state = "not in" if data is None else "unreadable in"
        raise ArchiverError(f"tune {tune_id} is {state} the archive {store}")
    tune = document.get("tune")
    folder = dest / folder_name(tune_id, tune.get("title") if isinstance(tune, dict) else None)
    await asyncio.to_thread(_new_folder, dest, folder)
    result = ExportResult(folder)
    taken: set[str] = set()
    entries = document.get("assets")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        where = f"{entry.get('kind')} {entry.get('index')}"
        sha = entry.get("sha256")
        if entry.get("status") != "ok" or not is_sha256(sha):
            result.failed.append(f"{where}: not archived ({entry.get('error', 'no blob')})")
            continue
        name = export_path(entry, taken)
        target = folder / name
        try:
            await asyncio.to_thread(_make_dir, target.parent)
            how = await store.save_blob_as(sha, target, hard_link=not copy)
        except StorageError as exc:
            result.failed.append(f"{where}: {exc}")
            continue
        (result.linked if how == "linked" else result.copied).append(name)
    await asyncio.to_thread(_write_new, folder / "manifest.json", data)
    return result


def _new_folder(dest: Path, folder: Path) -> None:
    """Create the tune's folder, which must not exist yet."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        folder.mkdir()
    except FileExistsError as exc:
        raise ConfigError(
            f"{folder} already exists; nothing was overwritten (remove it, or export to "
            "another DEST)"
        ) from exc
    except OSError as exc:
        raise StorageError(f"cannot create {folder}: {exc.strerror or exc}") from exc


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc


def _write_new(path: Path, data: bytes) -> None:
    try:
        with path.open("xb") as file:
            file.write(data)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
