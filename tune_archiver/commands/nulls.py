"""Nulls in orig_images that an archived photo stands for, and the files a manifest's
recorded tune lists that were never archived; pure.

Astria may list a training photo it no longer gives a URL for as null. A photo an
earlier fetch archived from a URL the listing no longer names, whose bytes no photo it
names holds, is such a photo: the tune lacks nothing for that null (fetch), and the
photo is sent (retrain).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from tune_archiver.errors import DataError
from tune_archiver.manifest import Manifest
from tune_archiver.models import AssetResult, Tune, parse_tune
from tune_archiver.urls import identity, redact


def standing_in(photos: Iterable[tuple[bool, str]]) -> int:
    """How many nulls archived photos stand for, given each as (named by the listing
    now, its sha256): the blobs of those not named that no named one holds (a photo
    moved to another URL is named under its new one)."""
    found = list(photos)
    return len({sha256 for named, sha256 in found if not named}
               - {sha256 for named, sha256 in found if named})


def photo_key(url: str) -> str:
    """What a photo's URL names when nulls are counted, the same from a URL as listed
    and as a manifest stores it (redacted): fetch and retrain count by it alike. A stored
    URL's signing dates may be older than the listing's; a value redacted names nothing,
    so in doubt a photo is taken for a listed one, never for a null."""
    return identity(redact(url))


def nulls_in(listed: Any) -> int:
    """The nulls of an orig_images list; 0 when it is not a list or holds anything
    else that is not a URL (malformed: no photo stands for that)."""
    if not isinstance(listed, list) or any(
            item is not None and not isinstance(item, str) for item in listed):
        return 0
    return sum(1 for item in listed if item is None)


def with_nulls_archived(tune: Tune, results: Sequence[AssetResult]) -> Tune:
    """The tune, its orig_images error dropped when archived photos (`results`, as the
    manifest now records them) stand for every null in it."""
    nulls = nulls_in(tune.raw.get("orig_images"))
    if not nulls:
        return tune
    named = {photo_key(url) for url in tune.image_urls}
    photos = [(photo_key(result.asset.url) in named, result.blob.sha256) for result in results
              if result.asset.kind == "training_image" and result.blob is not None]
    if standing_in(photos) < nulls:
        return tune
    return replace(tune, field_errors=tuple(
        error for error in tune.field_errors if error[0] != "training_image"))


def recorded_tune(found: Manifest) -> Tune | None:
    """The tune as its manifest records it (the API's answer, redacted); None when that
    record is malformed."""
    try:
        return parse_tune({**found.tune, "id": found.tune_id})
    except DataError:
        return None


def unarchived_fields(found: Manifest) -> tuple[tuple[str, str], ...]:
    """The (kind, error) of each file field the API sent malformed, as the manifest
    records the tune, less a null that an archived photo stands for: their files have
    no entry, yet were never archived."""
    tune = recorded_tune(found)
    if tune is None:
        return ()
    kept = [AssetResult(entry.asset, entry.blob) for entry in found.entries]
    return with_nulls_archived(tune, kept).field_errors
