"""`list`: one row per archived tune, read from the manifests alone."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tune_archiver import manifest
from tune_archiver.commands.nulls import recorded_tune, unarchived_fields
from tune_archiver.errors import Denied, StorageError, UnreadableManifest
from tune_archiver.manifest import Manifest
from tune_archiver.selection import model_type_of, parse_moment
from tune_archiver.store import Store


async def archived_tunes(store: Store, now: datetime) -> list[dict[str, Any]]:
    """Rows of archived tunes, newest id first (the --json shape of `list`).

    A manifest that cannot be read (damaged, or the disk cannot read it) is a row with
    an "error" saying why; the other tunes are still listed.
    """
    rows = []
    for tune_id in sorted(await store.manifest_ids(), reverse=True):
        try:
            found = await manifest.read(store, tune_id)
        except UnreadableManifest as exc:
            rows.append({"tune_id": tune_id, "error": f"the manifest is unreadable: {exc.reason}"})
            continue
        # A folder or a FIFO in its place, EIO, a bucket refusing that one object: this
        # tune's alone (credentials refused outright stop the run).
        except (StorageError, Denied) as exc:
            rows.append({"tune_id": tune_id, "error": str(exc)})
            continue
        if found is not None:  # None: removed since it was listed, so no longer archived
            rows.append(tune_row(found, now))
    return rows


def tune_row(found: Manifest, now: datetime) -> dict[str, Any]:
    """What `list` says of one tune; pure."""
    tune = found.tune
    archived = [blob for blob in (entry.blob for entry in found.entries) if blob is not None]
    gone = sum(1 for entry in found.entries if entry.status == "gone")
    expires = parse_moment(tune.get("expires_at"))
    return {
        "tune_id": found.tune_id,
        "title": found.title,
        "branch": _text(tune.get("branch")),
        "model_type": model_type_of(tune),
        "files": len(archived),
        "failed": len(found.entries) - len(archived) - gone,
        "gone": gone,
        "checkpoint": checkpoint_state(found),
        "state": found.state,
        "prompts_unread": found.prompts_unread is not None,  # not complete till read
        "unread": [] if found.complete else unread_kinds(found),
        "workspace": found.workspace,
        "bytes": sum(blob.size for blob in archived),
        "complete": found.complete,
        "archived_at": found.archived_at,
        "expires_at": tune.get("expires_at") if expires else None,
        "seconds_left": max(0, int((expires - now).total_seconds())) if expires else None,
    }


def unread_kinds(found: Manifest) -> list[str]:
    """The kinds of file whose field the API sent malformed (a null in orig_images no
    archived photo stands for, a string for a list): never archived and no entry, so
    not counted failed, yet the tune is not complete; verify names them too."""
    return sorted({kind for kind, _ in unarchived_fields(found)})


def checkpoint_state(found: Manifest) -> str:
    """yes: a checkpoint is archived; none: the API listed none (LoRA, FaceID, training);
    failed: it listed one and none is archived (failed, gone upstream, or left out by
    --only images: no entry, but the tune recorded lists it, so never 'none')."""
    entries = [entry for entry in found.entries if entry.kind == "checkpoint"]
    if any(entry.status == "ok" for entry in entries):
        return "yes"
    listed = recorded_tune(found)  # --only images left it out: no entry, yet listed
    return "failed" if entries or (listed and listed.checkpoint_urls) else "none"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
