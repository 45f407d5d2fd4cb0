"""Pure planning: which assets a tune has, and which of them are already archived.

The caller passes in what it observed (the previous manifest, which blobs exist);
nothing here touches the network or the disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tune_archiver.config import Only
from tune_archiver.layout import is_sha256
from tune_archiver.models import Asset, AssetKind, Blob, Tune
from tune_archiver.urls import url_key

KINDS_OF: dict[Only, tuple[AssetKind, ...]] = {
    "checkpoints": ("checkpoint",),
    "images": ("training_image", "prompt_image"),
}


def assets_of(tune: Tune) -> list[Asset]:
    """Every file of the tune: its checkpoints, then its training images."""
    return [
        *(Asset("checkpoint", i, url) for i, url in enumerate(tune.checkpoint_urls)),
        *(Asset("training_image", i, url) for i, url in enumerate(tune.image_urls)),
    ]


def archived_blobs(manifest: Mapping[str, Any] | None) -> dict[tuple[str, int, str], Blob]:
    """The blobs a previous manifest recorded as archived, by (kind, index, URL key)."""
    found: dict[tuple[str, int, str], Blob] = {}
    entries = manifest.get("assets") if manifest is not None else None
    if not isinstance(entries, list):
        return found
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("status") != "ok":
            continue
        sha, size, url = entry.get("sha256"), entry.get("size"), entry.get("url")
        kind, index = entry.get("kind"), entry.get("index")
        if (
            isinstance(sha, str) and is_sha256(sha) and isinstance(size, int)
            and isinstance(url, str) and isinstance(kind, str) and isinstance(index, int)
        ):
            found[(kind, index, url_key(url))] = Blob(sha, size, entry.get("content_type"))
    return found


@dataclass
class TunePlan:
    """What to do for one tune."""

    reuse: dict[Asset, Blob] = field(default_factory=dict)  # archived and intact: no download
    download: list[Asset] = field(default_factory=list)
    left_out: list[Asset] = field(default_factory=list)  # not archived, excluded by --only


def plan_tune(
    tune: Tune,
    only: Only | None,
    previous: Mapping[tuple[str, int, str], Blob],
    present: Mapping[str, int],
) -> TunePlan:
    """Sort the tune's assets into reuse, download and left out.

    An asset is reused when the previous manifest has it (same kind, index and URL
    without its query) and its blob is present with the recorded size. `present`
    maps the sha256 of each blob found in the store to its size.
    """
    wanted = KINDS_OF[only] if only else None
    plan = TunePlan()
    for asset in assets_of(tune):
        blob = previous.get((asset.kind, asset.index, url_key(asset.url)))
        if blob is not None and present.get(blob.sha256) == blob.size:
            plan.reuse[asset] = blob
        elif wanted is None or asset.kind in wanted:
            plan.download.append(asset)
        else:
            plan.left_out.append(asset)
    return plan
