"""`list`: one row per archived tune, read from the manifests alone."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tune_archiver import manifest
from tune_archiver.commands.plan import parse_time
from tune_archiver.store import Store


async def archived_tunes(store: Store, now: datetime) -> list[dict[str, Any]]:
    """Rows of archived tunes, newest id first (the --json shape of `list`)."""
    rows = []
    for tune_id in sorted(await store.manifest_ids(), reverse=True):
        document = manifest.decode(await store.read_manifest(tune_id) or b"")
        rows.append(tune_row(tune_id, document, now))
    return rows


def tune_row(tune_id: int, document: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """What `list` says of one tune; pure."""
    if document is None:
        return {"tune_id": tune_id, "error": "the manifest is unreadable"}
    found = document.get("tune")
    tune: dict[str, Any] = found if isinstance(found, dict) else {}
    entries = [e for e in document.get("assets") or [] if isinstance(e, dict)]
    archived = [e for e in entries if e.get("status") == "ok"]
    expires = parse_time(tune.get("expires_at"))
    return {
        "tune_id": tune_id,
        "title": _text(tune.get("title")),
        "branch": _text(tune.get("branch")),
        "model_type": _text(tune.get("model_type")),
        "files": len(archived),
        "failed": len(entries) - len(archived),
        "bytes": sum(e["size"] for e in archived if isinstance(e.get("size"), int)),
        "complete": document.get("complete") is True,
        "archived_at": document.get("archived_at"),
        "expires_at": tune.get("expires_at") if expires else None,
        "seconds_left": max(0, int((expires - now).total_seconds())) if expires else None,
    }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
