"""manifest.py: the document built for a tune, its schema, and reading it back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import jsonschema
import pytest

from tests.conftest import SCHEMA
from tune_archiver.commands.plan import assets_of
from tune_archiver.manifest import SCHEMA_VERSION, build_manifest, decode, encode, format_time
from tune_archiver.models import AssetResult, Blob, Tune, parse_tune

SECRET = "s3cr3tsig"
WHEN = datetime(2026, 11, 29, 10, 0, 0, 999_999, tzinfo=UTC)
SHA = hashlib.sha256(b"bytes").hexdigest()
PLUS_2 = timezone(timedelta(hours=2))
MINUS_5 = timezone(timedelta(hours=-5))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def make_tune() -> Tune:
    """A tune with a signed checkpoint URL, two images and an unknown field."""
    return parse_tune(
        {
            "id": 42,
            "title": "Jane",
            "ckpt_urls": [f"https://b.example/c?X-Amz-Signature={SECRET}"],
            "orig_images": [f"https://i.example/0.jpg?sig={SECRET}", "https://i.example/1.jpg"],
            "extra": {"nested": [f"https://x.example/?token={SECRET}"]},
        },
        42,
    )


def results_for(tune: Tune, failed: Collection[int] = ()) -> list[AssetResult]:
    """A result per asset; those whose position is in `failed` failed."""
    return [
        AssetResult(asset, error="HTTP 404 from https://i.example/0.jpg")
        if i in failed
        else AssetResult(asset, Blob(SHA, 5, "image/jpeg" if i else None))
        for i, asset in enumerate(assets_of(tune))
    ]


@pytest.mark.parametrize(
    ("failed", "complete"),
    [(set(), True), ({1}, True), (set(), False), ({0, 1, 2}, False)],
)
def test_manifest_validates_against_schema(failed: set[int], complete: bool) -> None:
    """Whatever the results, the built manifest is valid under the published schema."""
    tune = make_tune()
    document = build_manifest(tune, results_for(tune, failed), WHEN, complete=complete)
    VALIDATOR.validate(document)
    VALIDATOR.validate(json.loads(encode(document)))


def test_manifest_fields() -> None:
    """The top-level fields and each ok entry carry what the README documents."""
    tune = make_tune()
    document = build_manifest(tune, results_for(tune), WHEN, complete=True)
    assert document["schema_version"] == SCHEMA_VERSION == 1
    assert document["tune_id"] == 42
    assert document["archived_at"] == "2026-11-29T10:00:00Z"
    assert document["complete"] is True
    assert document["tune"]["extra"] == {"nested": ["https://x.example/?token=REDACTED"]}
    first = document["assets"][0]
    assert first == {
        "kind": "checkpoint", "index": 0, "url": "https://b.example/c?X-Amz-Signature=REDACTED",
        "status": "ok", "sha256": SHA, "size": 5, "path": f"objects/sha256/{SHA[:2]}/{SHA}",
        "content_type": None,
    }


def test_no_secret_anywhere_in_the_manifest() -> None:
    """Signatures in the tune object and in asset URLs are all redacted."""
    tune = make_tune()
    document = build_manifest(tune, results_for(tune, {1}), WHEN, complete=True)
    assert SECRET not in encode(document).decode()


def test_failed_entry_has_error_and_no_blob() -> None:
    """A failed asset records its error and none of sha256, size, path."""
    tune = make_tune()
    document = build_manifest(tune, results_for(tune, {1}), WHEN, complete=True)
    entry = document["assets"][1]
    assert entry["status"] == "failed"
    assert entry["error"].startswith("HTTP 404")
    assert not {"sha256", "size", "path"} & entry.keys()


def test_failed_entry_without_message_still_has_error() -> None:
    """A failure with no message gets a non-empty error, as the schema requires."""
    tune = make_tune()
    results = [AssetResult(asset) for asset in assets_of(tune)]
    document = build_manifest(tune, results, WHEN, complete=True)
    VALIDATOR.validate(document)
    assert all(entry["error"] for entry in document["assets"])


@pytest.mark.parametrize(
    ("failed", "complete", "expected"),
    [(set(), True, True), ({2}, True, False), (set(), False, False), ({0}, False, False)],
)
def test_complete_only_when_nothing_failed_or_left_out(
    failed: set[int], complete: bool, expected: bool
) -> None:
    """complete is true only if the caller says so and every result is ok."""
    tune = make_tune()
    document = build_manifest(tune, results_for(tune, failed), WHEN, complete=complete)
    assert document["complete"] is expected


def test_encode_decode_round_trip() -> None:
    """decode(encode(m)) gives m back, and encode ends with a newline."""
    tune = make_tune()
    document = build_manifest(tune, results_for(tune, {2}), WHEN, complete=True)
    data = encode(document)
    assert data.endswith(b"\n")
    assert decode(data) == document


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b'{"schema_version": 1',
        b"[1, 2]",
        b'"a string"',
        b"null",
        b"{}",
        b'{"schema_version": 2, "assets": []}',
        b'{"schema_version": "1", "assets": []}',
        b'{"schema_version": 0}',
    ],
)
def test_decode_returns_none_for_anything_else(data: bytes) -> None:
    """Damaged bytes, other JSON values and other schema versions decode to None."""
    assert decode(data) is None


def test_decode_accepts_minimal_version_1() -> None:
    """A JSON object with schema_version 1 is taken as a manifest."""
    decoded: Any = decode(b'{"schema_version": 1, "assets": []}')
    assert decoded == {"schema_version": 1, "assets": []}


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 999_999, tzinfo=UTC), "2026-01-02T03:04:05Z"),
        (datetime(2026, 1, 2, 1, 0, 0, tzinfo=PLUS_2), "2026-01-01T23:00:00Z"),
        (datetime(2026, 1, 1, 20, 0, 0, tzinfo=MINUS_5), "2026-01-02T01:00:00Z"),
    ],
)
def test_format_time_is_utc_with_z(moment: datetime, expected: str) -> None:
    """Times are converted to UTC and written to the second with a trailing Z."""
    assert format_time(moment) == expected
