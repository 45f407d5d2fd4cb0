"""The manifest: built (pure) from a tune and its results, encoded, and decoded again.

Writing it atomically is the store's job; this module never touches the disk.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tune_archiver.layout import blob_key
from tune_archiver.models import AssetResult, Tune
from tune_archiver.urls import redact, redact_json

SCHEMA_VERSION = 1


def build_manifest(
    tune: Tune, results: Sequence[AssetResult], archived_at: datetime, complete: bool
) -> dict[str, Any]:
    """The manifest for one tune, with every URL redacted.

    `complete` is true only when every file of the tune is archived; the caller
    decides it, since only it knows what was left out.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "tune_id": tune.id,
        "archived_at": format_time(archived_at),
        "complete": complete and all(result.ok for result in results),
        "tune": redact_json(tune.raw),
        "assets": [asset_entry(result) for result in results],
    }


def asset_entry(result: AssetResult) -> dict[str, Any]:
    """One asset of the manifest: where it came from and its blob, or why it failed."""
    asset, blob = result.asset, result.blob
    entry: dict[str, Any] = {"kind": asset.kind, "index": asset.index, "url": redact(asset.url)}
    if asset.prompt_id is not None:
        entry["prompt_id"] = asset.prompt_id
        entry["prompt_text"] = asset.prompt_text
    if blob is None:
        entry["status"] = "failed"
        entry["error"] = result.error or "unknown error"
    else:
        entry["status"] = "ok"
        entry["sha256"] = blob.sha256
        entry["size"] = blob.size
        entry["path"] = blob_key(blob.sha256)
        entry["content_type"] = blob.content_type
    return entry


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode(manifest: dict[str, Any]) -> bytes:
    """The manifest as the bytes written to disk."""
    return (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def decode(data: bytes) -> dict[str, Any] | None:
    """A manifest read back, or None when it is not one (damaged, or another format)."""
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        return None
    return manifest
