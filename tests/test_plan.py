"""plan.py: which assets a tune has and which of them an earlier run already archived."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tune_archiver.commands.plan import (
    Expiry,
    archived_blobs,
    assets_of,
    carried_over,
    entry_key,
    expiring,
    is_unchanged,
    known_entries,
    merged,
    paired,
    plan_tune,
)
from tune_archiver.manifest import Manifest, asset_entry, build_manifest, encode, parse
from tune_archiver.models import Asset, AssetResult, Blob, Tune, parse_tune
from tune_archiver.selection import parse_moment
from tune_archiver.urls import identity

CKPT = "https://bucket.example/ckpt.safetensors"
IMG0 = "https://img.example/0.jpg"
IMG1 = "https://img.example/1.jpg"
SHA_C = hashlib.sha256(b"checkpoint").hexdigest()
SHA_0 = hashlib.sha256(b"image 0").hexdigest()
SHA_1 = hashlib.sha256(b"image 1").hexdigest()
SIZES = {SHA_C: 1000, SHA_0: 10, SHA_1: 11}
WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def make_tune(query: str = "?X-Amz-Signature=old&X-Amz-Expires=60") -> Tune:
    """A tune with one checkpoint and two training images, signed with `query`."""
    return parse_tune(
        {"id": 1, "ckpt_urls": [CKPT + query], "orig_images": [IMG0 + query, IMG1 + query]}, 1
    )


def document_of(tune: Tune, shas: tuple[str, ...] = (SHA_C, SHA_0, SHA_1)) -> dict[str, Any]:
    """The manifest an earlier run wrote after archiving every asset of `tune`, as JSON."""
    results = [
        AssetResult(asset, Blob(sha, SIZES[sha], "image/jpeg"))
        for asset, sha in zip(assets_of(tune), shas, strict=True)
    ]
    return build_manifest(tune, results, WHEN, complete=True)


def read_back(document: dict[str, Any]) -> Manifest:
    """The document as the next run reads it."""
    return parse(encode(document), document["tune_id"])


def manifest_of(tune: Tune) -> Manifest:
    """The manifest an earlier run wrote after archiving every asset of `tune`, read back."""
    return read_back(document_of(tune))


def test_assets_of_lists_checkpoints_then_images() -> None:
    """Checkpoints come first, then training images, each indexed within its own list."""
    tune = make_tune("")
    assert assets_of(tune) == [
        Asset("checkpoint", 0, CKPT),
        Asset("training_image", 0, IMG0),
        Asset("training_image", 1, IMG1),
    ]


def test_archived_blobs_reads_back_a_built_manifest() -> None:
    """Every ok entry is keyed by kind, prompt (none here), index and the identity of the
    URL it came from."""
    found = archived_blobs(manifest_of(make_tune()))
    assert found == {
        ("checkpoint", None, 0, identity(CKPT)): Blob(SHA_C, 1000, "image/jpeg"),
        ("training_image", None, 0, identity(IMG0)): Blob(SHA_0, 10, "image/jpeg"),
        ("training_image", None, 1, identity(IMG1)): Blob(SHA_1, 11, "image/jpeg"),
    }


def test_no_previous_manifest_downloads_everything() -> None:
    """Without a manifest nothing is reused and nothing is left out."""
    tune = make_tune()
    plan = plan_tune(tune, None, known_entries(None), {})
    assert plan.download == assets_of(tune)
    assert plan.reuse == {}
    assert plan.left_out == []


def test_renewed_signature_still_reuses() -> None:
    """A presigned URL renewed since the last run (new query) maps to the same blob."""
    previous = known_entries(manifest_of(make_tune("?X-Amz-Signature=old")))
    tune = make_tune("?X-Amz-Signature=new&X-Amz-Date=20260202")
    plan = plan_tune(tune, None, previous, dict(SIZES))
    assert plan.download == []
    assert plan.left_out == []
    assert [plan.reuse[a].blob.sha256 for a in assets_of(tune)] == [SHA_C, SHA_0, SHA_1]


@pytest.mark.parametrize(
    ("present", "downloaded"),
    [
        ({SHA_C: 1000, SHA_0: 10}, [2]),  # image 1's blob is missing
        ({SHA_C: 999, SHA_0: 10, SHA_1: 11}, [0]),  # the checkpoint blob is truncated
        ({SHA_C: 1000, SHA_0: 10, SHA_1: 12}, [2]),  # image 1's blob grew
        ({}, [0, 1, 2]),
    ],
)
def test_missing_or_wrong_size_blob_is_downloaded(
    present: dict[str, int], downloaded: list[int]
) -> None:
    """An asset is reused only when its blob is present with the recorded size."""
    tune = make_tune()
    plan = plan_tune(tune, None, known_entries(manifest_of(tune)), present)
    assets = assets_of(tune)
    assert plan.download == [assets[i] for i in downloaded]
    assert set(plan.reuse) == {a for i, a in enumerate(assets) if i not in downloaded}


@pytest.mark.parametrize("change", ["kind", "path", "host"])
def test_reuse_needs_kind_and_url_to_match(change: str) -> None:
    """A manifest entry that differs in kind, path or host is not this asset's (one at
    another place of the list is, when no asset is at its own: see paired)."""
    document = document_of(make_tune(""))
    entry = document["assets"][1]  # training image 0
    if change == "kind":
        entry["kind"] = "prompt_image"
    elif change == "path":
        entry["url"] = "https://img.example/other.jpg"
    else:
        entry["url"] = "https://other-host.example/0.jpg"
    entry["source"] = identity(entry["url"])  # what the entry records of where it came from
    tune = make_tune()
    plan = plan_tune(tune, None, known_entries(read_back(document)), dict(SIZES))
    assert plan.download == [assets_of(tune)[1]]
    assert set(plan.reuse) == {assets_of(tune)[0], assets_of(tune)[2]}


def test_failed_entry_is_not_reused() -> None:
    """A manifest entry recorded as failed is downloaded again."""
    tune = make_tune()
    results = [AssetResult(a, Blob(SHA_C, 1000)) for a in assets_of(tune)[:1]]
    results += [AssetResult(a, error="HTTP 404") for a in assets_of(tune)[1:]]
    document = build_manifest(tune, results, WHEN, complete=True)
    plan = plan_tune(tune, None, known_entries(read_back(document)), dict(SIZES))
    assert plan.download == assets_of(tune)[1:]
    assert list(plan.reuse) == assets_of(tune)[:1]


@pytest.mark.parametrize(
    ("only", "download", "left_out"),
    [("checkpoints", [0], [1, 2]), ("images", [1, 2], [0])],
)
def test_only_leaves_out_the_other_kind(
    only: Any, download: list[int], left_out: list[int]
) -> None:
    """--only downloads its kind and leaves the other kind out when nothing is archived."""
    tune = make_tune()
    plan = plan_tune(tune, only, {}, {})
    assets = assets_of(tune)
    assert plan.download == [assets[i] for i in download]
    assert plan.left_out == [assets[i] for i in left_out]
    assert plan.reuse == {}


@pytest.mark.parametrize("only", ["checkpoints", "images"])
def test_only_still_reuses_the_other_kind(only: Any) -> None:
    """An asset of the excluded kind that is already archived is reused, not left out."""
    tune = make_tune()
    plan = plan_tune(tune, only, known_entries(manifest_of(tune)), dict(SIZES))
    assert plan.left_out == []
    assert plan.download == []
    assert set(plan.reuse) == set(assets_of(tune))


def test_carried_over_keeps_files_the_tune_no_longer_lists() -> None:
    """An archived checkpoint the API stopped listing is kept as reused; present ones only."""
    old = make_tune("")
    now_listed = parse_tune({"id": 1, "ckpt_urls": [], "orig_images": [IMG0, IMG1]}, 1)
    kept = carried_over(manifest_of(old), assets_of(now_listed), dict(SIZES))
    assert [(k.asset, k.blob, k.error, k.reused) for k in kept] == [
        (Asset("checkpoint", 0, CKPT), Blob(SHA_C, 1000, "image/jpeg"), None, True)
    ]


def test_carried_over_entries_keep_every_field_when_rewritten() -> None:
    """A carried-over entry is written back with its unknown fields; a failed one keeps them too."""
    document = document_of(make_tune(""))
    document["assets"][0]["note"] = {"kept": True}  # the checkpoint, no longer listed
    document["assets"][1]["origin"] = "upload"  # image 0, no longer listed, its blob lost
    now_listed = parse_tune({"id": 1, "orig_images": ["https://img.example/new.jpg", IMG1]}, 1)
    kept = carried_over(read_back(document), assets_of(now_listed), {SHA_C: 1000})
    checkpoint, image = (asset_entry(result) for result in kept)
    assert checkpoint == document["assets"][0]
    assert image == {"kind": "training_image", "index": 0, "url": IMG0,
                     "source": identity(IMG0), "status": "failed",
                     "error": "no longer listed by the API, and its blob is missing from the "
                     "archive", "origin": "upload"}


def test_carried_over_file_whose_blob_is_gone_is_failed() -> None:
    """A file no longer listed whose blob is missing is recorded as failed, saying why."""
    old = make_tune("")
    now_listed = parse_tune({"id": 1, "ckpt_urls": [], "orig_images": [IMG0, IMG1]}, 1)
    [kept] = carried_over(manifest_of(old), assets_of(now_listed), {SHA_0: 10, SHA_1: 11})
    assert not kept.ok
    assert "missing" in (kept.error or "")


def test_nothing_is_carried_over_when_the_tune_lists_everything() -> None:
    """Re-signed URLs of the same files are the same files."""
    tune = make_tune("?X-Amz-Signature=new")
    assert carried_over(manifest_of(make_tune()), assets_of(tune), dict(SIZES)) == []


UPDATED = "2026-11-02T14:32:40.363Z"


def unchanged_case(**changes: Any) -> Manifest:
    document = document_of(parse_tune({"id": 1, "ckpt_urls": [CKPT],
                                       "orig_images": [IMG0, IMG1], "updated_at": UPDATED}, 1))
    document.update(changes)
    return read_back(document)


@pytest.mark.parametrize(
    ("document", "updated_at", "present", "expected"),
    [
        (unchanged_case(), UPDATED, SIZES, True),
        (unchanged_case(), "2026-11-03T00:00:00Z", SIZES, False),
        (unchanged_case(), None, SIZES, False),
        (unchanged_case(complete=False), UPDATED, SIZES, False),
        (unchanged_case(), UPDATED, {SHA_C: 1000, SHA_0: 10}, False),
        (unchanged_case(), UPDATED, {**SIZES, SHA_C: 999}, False),
        (None, UPDATED, SIZES, False),
    ],
)
def test_is_unchanged(
    document: Any, updated_at: Any, present: dict[str, int], expected: bool
) -> None:
    """Skipped only when complete, same updated_at, and every blob present at its size."""
    assert is_unchanged(document, updated_at, present) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-02T14:32:40.363Z", datetime(2026, 11, 2, 14, 32, 40, 363000, tzinfo=UTC)),
        ("2026-11-02T14:32:40Z", datetime(2026, 11, 2, 14, 32, 40, tzinfo=UTC)),
        ("2026-11-02T14:32:40.123456789Z", datetime(2026, 11, 2, 14, 32, 40, 123456, tzinfo=UTC)),
        ("2026-11-02T16:32:40+02:00", datetime(2026, 11, 2, 14, 32, 40, tzinfo=UTC)),
        ("2026-11-02T09:32:40.5-05:00", datetime(2026, 11, 2, 14, 32, 40, 500000, tzinfo=UTC)),
        ("2026-11-02T14:32:40", datetime(2026, 11, 2, 14, 32, 40, tzinfo=UTC)),
        ("2026-11-02 14:32:40Z", datetime(2026, 11, 2, 14, 32, 40, tzinfo=UTC)),
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
        ("0001-01-01T00:00:00+01:00", None),  # a year 0 in UTC: out of range
        ("2026-13-01", None),
        ("2026-12-01T25:00:00Z", None),
        ("soon", None),
        ("", None),
        (" 2026-12-01", None),
        ("2026-12-01T00:00:00Z\x1b[2J", None),
        (1764547200, None),
        (None, None),
    ],
)
def test_parse_moment(value: Any, expected: datetime | None) -> None:
    """ISO 8601 with or without fraction, Z or offset, naive or a bare date, always in UTC."""
    parsed = parse_moment(value)
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("listed", "keep", "unreadable"),
    [
        ({"expires_at": "2026-01-02T00:00:00Z"}, True, False),
        ({"expires_at": "2026-01-08T00:00:00Z"}, True, False),
        ({"expires_at": "2026-01-08T00:00:01Z"}, False, False),
        ({"expires_at": "2025-12-31T23:59:59Z"}, False, False),
        ({"expires_at": "2026-01-01T00:00:00Z"}, False, False),
        ({"expires_at": "2026-01-02T00:00:00"}, True, False),  # naive: UTC
        ({"expires_at": "2026-01-08"}, True, False),  # midnight UTC, the window's last moment
        ({"expires_at": "2026-01-09"}, False, False),
        ({"expires_at": "2026-01-07T23:00:00-02:00"}, False, False),  # 01:00 on the 8th in UTC
        ({"expires_at": None}, False, False),  # paid storage: never expires
        ({}, False, False),
        ({"expires_at": "soon"}, True, True),
        ({"expires_at": ""}, True, True),
        ({"expires_at": 1767225600}, True, True),
        ({"expires_at": {"at": "2026-01-02"}}, True, True),
    ],
)
def test_expiring_within_a_week(listed: dict[str, Any], keep: bool, unreadable: bool) -> None:
    """Kept when ahead and within the window, or unreadable (said); absent never expires."""
    assert expiring(listed, WHEN, timedelta(days=7)) == Expiry(keep, unreadable)


CHANGED = Blob(hashlib.sha256(b"image 0, changed").hexdigest(), 12, "image/jpeg")


def results_with(tune: Tune, first_image: Blob | str) -> list[AssetResult]:
    """A run's results for `tune`: its first training image as given (a blob, or an
    error), the other files as document_of archived them."""
    return [
        (AssetResult(asset, first_image) if isinstance(first_image, Blob)
         else AssetResult(asset, error=first_image))
        if (asset.kind, asset.index) == ("training_image", 0)
        else AssetResult(asset, Blob(sha, SIZES[sha], "image/jpeg"))
        for asset, sha in zip(assets_of(tune), (SHA_C, SHA_0, SHA_1), strict=True)
    ]


def test_merged_keeps_the_version_another_run_archived_first() -> None:
    """Two runs at once downloaded two versions of a file that changed upstream: the
    manifest keeps the one recorded first, as runs one after the other would."""
    tune = make_tune()
    recorded, reported = merged(results_with(tune, CHANGED), manifest_of(tune))
    assert [r.blob.sha256 for r in recorded if r.blob] == [SHA_C, SHA_0, SHA_1]
    assert reported == recorded


def test_merged_takes_our_download_over_a_blob_we_found_missing() -> None:
    """A file whose blob was missing, downloaded again as another version: ours is
    recorded, not the entry naming the lost blob."""
    tune = make_tune()
    recorded, reported = merged(results_with(tune, CHANGED), manifest_of(tune), {SHA_0})
    assert [r.blob.sha256 for r in recorded if r.blob] == [SHA_C, CHANGED.sha256, SHA_1]
    assert reported == recorded


def test_merged_reports_a_failed_restore_and_records_the_entry() -> None:
    """A file whose blob was missing and whose download failed again: the entry stays
    in the manifest, and the run reports the failure."""
    tune = make_tune()
    recorded, reported = merged(results_with(tune, "404"), manifest_of(tune), {SHA_0})
    assert [r.ok for r in recorded] == [True, True, True]
    assert [r.ok for r in reported] == [True, False, True]


def test_paired_takes_an_entry_of_the_same_url_from_another_place_once() -> None:
    """The list reordered: each key takes the entry of its own key, else one of the same
    kind and URL whose own key no asset wants, lower index first, never one twice."""
    tune = make_tune("")
    entries = list(manifest_of(tune).entries)
    keys = [entry_key(entry) for entry in entries]
    ckpt, img0, img1 = keys
    swapped = [ckpt, (img0[0], None, 0, img1[3]), (img1[0], None, 1, img0[3])]
    found = paired(swapped, entries)
    assert [entry_key(found[key]) for key in swapped] == [ckpt, img1, img0]
    twice = [ckpt, (img0[0], None, 3, img0[3]), (img0[0], None, 4, img0[3])]  # one entry
    assert [key in paired(twice, entries) for key in twice] == [True, True, False]


def test_merged_puts_another_runs_entry_at_the_place_the_list_gives_it_now() -> None:
    """Another run archived [a, b]; this one sees [b, a], fetches b and fails on a. The
    other run's a is kept at its place in the list now (index 1), each index once."""
    a, b = "https://img.example/a.jpg", "https://img.example/b.jpg"
    old = parse_tune({"id": 1, "ckpt_urls": [], "orig_images": [a, b]}, 1)
    new = parse_tune({"id": 1, "ckpt_urls": [], "orig_images": [b, a]}, 1)
    blobs = {data: Blob(hashlib.sha256(data).hexdigest(), 1, "image/jpeg")
             for data in (b"a", b"b")}
    theirs = [AssetResult(asset, blobs[data])
              for asset, data in zip(assets_of(old), [b"a", b"b"], strict=True)]
    current = read_back(build_manifest(old, theirs, WHEN, complete=True))
    b_ours, a_ours = assets_of(new)
    ours = [AssetResult(b_ours, blobs[b"b"]), AssetResult(a_ours, error="HTTP 503")]
    recorded, _ = merged(ours, current)
    assert sorted((r.asset.index, r.asset.url, r.blob) for r in recorded) == [
        (0, b, blobs[b"b"]), (1, a, blobs[b"a"])]
