"""manifest.py: the document built for a tune, its schema, and the one reader of it."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Collection
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import jsonschema
import pytest

from tests.conftest import SCHEMA
from tune_archiver.commands.plan import assets_of
from tune_archiver.errors import StorageError, UnreadableManifest
from tune_archiver.manifest import (
    SCHEMA_VERSION,
    Entry,
    Manifest,
    build_manifest,
    encode,
    entry_dict,
    format_time,
    parse,
    read,
)
from tune_archiver.models import Asset, AssetResult, Blob, Tune, parse_tune
from tune_archiver.urls import identity

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
        "source": identity(tune.checkpoint_urls[0]), "status": "ok", "sha256": SHA,
        "size": 5, "path": f"objects/sha256/{SHA[:2]}/{SHA}",
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


def test_a_failed_entrys_error_quoting_a_signed_url_is_stored_redacted() -> None:
    """An error whose text quotes a presigned URL (a server's message, a library's) is
    stored with that URL redacted."""
    tune = make_tune()
    results = results_for(tune)
    results[1] = AssetResult(results[1].asset,
                             error=f"malformed response (b'Location: {tune.checkpoint_urls[0]}')")
    entry = build_manifest(tune, results, WHEN, complete=True)["assets"][1]
    assert SECRET not in entry["error"]
    assert "X-Amz-Signature=REDACTED" in entry["error"]


def test_a_signed_url_as_a_key_of_the_tunes_json_is_stored_redacted() -> None:
    """A URL the API sends as an object's key (unknown fields are kept as they came: a
    map from each file's URL to its details) is stored with its signature redacted, as a
    URL sent as a value is."""
    tune = parse_tune({"id": 7, "files_by_url": {
        f"https://b.example/c?X-Amz-Signature={SECRET}": {"size": 1},
        f"see https://i.example/0.jpg?sig={SECRET}": "a note"}}, 7)
    document = build_manifest(tune, [], WHEN, complete=True)
    assert SECRET not in json.dumps(document)
    assert sorted(document["tune"]["files_by_url"]) == [
        "https://b.example/c?X-Amz-Signature=REDACTED", "see https://i.example/0.jpg?sig=REDACTED"]


def test_two_url_keys_that_redact_alike_are_both_kept() -> None:
    """Two keys of one object that are two URLs redacted alike (`?id=1` and `?id=2` both
    read `?id=REDACTED`) are kept as two keys, the second numbered: merged into one, the
    other's details were lost from the manifest, which keeps every field of the tune."""
    tune = parse_tune({"id": 7, "files_by_url": {
        "https://b.example/get?id=1": {"size": 1}, "https://b.example/get?id=2": {"size": 2}}}, 7)
    files = build_manifest(tune, [], WHEN, complete=True)["tune"]["files_by_url"]
    assert files == {"https://b.example/get?id=REDACTED": {"size": 1},
                     "https://b.example/get?id=REDACTED (2)": {"size": 2}}


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


# -- reading back: parse and read ----------------------------------------------------

PROMPT_SHA = hashlib.sha256(b"prompt image").hexdigest()
PROMPT = Asset("prompt_image", 0, "https://p.example/0.png", 900, "a cat")
DROP = object()  # a field to remove


def good() -> dict[str, Any]:
    """Tune 42's manifest: checkpoint 0 and image 0 ok, image 1 failed, one prompt image ok."""
    tune = make_tune()
    results = [*results_for(tune, failed={2}),
               AssetResult(PROMPT, Blob(PROMPT_SHA, 7, "image/png"))]
    return build_manifest(tune, results, WHEN, complete=False)


def changed(**fields: Any) -> bytes:
    """The good manifest with top-level fields replaced (or removed, given DROP)."""
    document = good()
    for name, value in fields.items():
        document.pop(name, None)
        if value is not DROP:
            document[name] = value
    return encode(document)


def entry_changed(position: int, **fields: Any) -> bytes:
    """The good manifest with fields of assets[position] replaced (or removed, given DROP)."""
    document = good()
    entry = document["assets"][position]
    for name, value in fields.items():
        entry.pop(name, None)
        if value is not DROP:
            entry[name] = value
    return encode(document)


UPPER = SHA.upper()
KINDS = "one of checkpoint, training_image, prompt_image, prompt_input, face_swap_image"

NOT_A_MANIFEST = [
    pytest.param(b"", "it is not JSON (", id="empty"),
    pytest.param(b"not json", "it is not JSON (", id="not JSON"),
    pytest.param(b'{"schema_version": 1', "it is not JSON (", id="cut short"),
    pytest.param(b"\xff\xfe\x00", "it is not UTF-8 text", id="not UTF-8"),
    pytest.param(b"[" * 100_000, "its JSON is nested too deeply", id="nested too deep"),
    # Within what the decoder takes, past what the walks of it (redaction) recurse.
    pytest.param(entry_changed(1, future=json.loads("[" * 600 + "]" * 600)),
                 "its JSON is nested too deeply", id="a field nested 600 deep"),
]

MALFORMED = [
    pytest.param(b"[1, 2]", "it holds a list, not a JSON object", id="a list"),
    pytest.param(b'"text"', 'it holds "text", not a JSON object', id="a string"),
    pytest.param(b"null", "it holds null, not a JSON object", id="null"),
    pytest.param(changed(schema_version=2), "it was written by a newer tune-archiver "
                 "(schema_version 2; this version reads 1)", id="version 2"),
    pytest.param(changed(schema_version=9), "it was written by a newer tune-archiver "
                 "(schema_version 9; this version reads 1), or it is damaged: 9 is what a 1 "
                 "reads with one bit flipped on disk; if no newer tune-archiver writes to "
                 "this archive, move it into manifests/damaged/ and fetch the tune again",
                 id="version 9, one bit from 1"),
    pytest.param(changed(schema_version=0), "schema_version is 0, not 1", id="version 0"),
    pytest.param(changed(schema_version="1"), 'schema_version is "1", not 1', id="version '1'"),
    pytest.param(changed(schema_version=True), "schema_version is true, not 1", id="version true"),
    pytest.param(changed(schema_version=DROP), "schema_version is missing, not 1",
                 id="no version"),
    pytest.param(changed(tune_id=DROP), "tune_id is missing, not an integer", id="no tune_id"),
    pytest.param(changed(tune_id="42"), 'tune_id is "42", not an integer', id="tune_id '42'"),
    pytest.param(changed(tune_id=43), "it is the manifest of tune 43", id="another tune"),
    pytest.param(changed(archived_at=5), "archived_at is 5, not a string", id="archived_at"),
    pytest.param(changed(complete="yes"), 'complete is "yes", not true or false', id="complete"),
    pytest.param(changed(tune=[]), "tune is a list, not a JSON object", id="tune a list"),
    pytest.param(changed(tune=DROP), "tune is missing, not a JSON object", id="no tune"),
    pytest.param(changed(assets=5), "assets is 5, not a list", id="assets 5"),
    pytest.param(changed(assets=DROP), "assets is missing, not a list", id="no assets"),
    pytest.param(changed(assets={"a": 1}), "assets is a JSON object, not a list",
                 id="assets an object"),
    pytest.param(changed(assets=[5]), "assets[0] is 5, not a JSON object", id="assets [5]"),
    pytest.param(changed(assets=[None]), "assets[0] is null, not a JSON object",
                 id="assets [null]"),
    pytest.param(changed(assets=[[]]), "assets[0] is a list, not a JSON object",
                 id="assets [[]]"),
    pytest.param(entry_changed(1, kind="lora"), f'assets[1]: kind is "lora", not {KINDS}',
                 id="kind lora"),
    pytest.param(entry_changed(1, kind=DROP), f"assets[1]: kind is missing, not {KINDS}",
                 id="no kind"),
    pytest.param(entry_changed(1, index="0"),
                 'assets[1] (training_image): index is "0", not a non-negative integer',
                 id="index '0'"),
    pytest.param(entry_changed(1, index=-1),
                 "assets[1] (training_image): index is -1, not a non-negative integer",
                 id="index -1"),
    pytest.param(entry_changed(1, index=True),
                 "assets[1] (training_image): index is true, not a non-negative integer",
                 id="index true"),
    pytest.param(entry_changed(1, index=1.0),
                 "assets[1] (training_image): index is 1.0, not a non-negative integer",
                 id="index 1.0"),
    pytest.param(entry_changed(1, url=None), "assets[1] (training_image 0): url is null, "
                 "not a string", id="url null"),
    pytest.param(entry_changed(1, status="OK"), 'assets[1] (training_image 0): status is "OK", '
                 "not ok, failed or gone", id="status OK"),
    pytest.param(entry_changed(1, status=DROP), "assets[1] (training_image 0): status is "
                 "missing, not ok, failed or gone", id="no status"),
    pytest.param(entry_changed(0, sha256=UPPER), f'assets[0] (checkpoint 0): sha256 is "{UPPER}",'
                 " not 64 lower-case hex digits", id="sha256 upper-case"),
    pytest.param(entry_changed(0, sha256=SHA[:-1]), f'assets[0] (checkpoint 0): sha256 is '
                 f'"{SHA[:-1]}", not 64 lower-case hex digits', id="sha256 short"),
    pytest.param(entry_changed(0, sha256="../../etc/passwd"), "assets[0] (checkpoint 0): sha256 "
                 'is "../../etc/passwd", not 64 lower-case hex digits', id="sha256 a path"),
    pytest.param(entry_changed(0, sha256=DROP), "assets[0] (checkpoint 0): sha256 is missing, "
                 "not 64 lower-case hex digits", id="ok without sha256"),
    pytest.param(entry_changed(0, size="5"), 'assets[0] (checkpoint 0): size is "5", not a '
                 "non-negative integer below 2^63", id="size '5'"),
    pytest.param(entry_changed(0, size=-1), "assets[0] (checkpoint 0): size is -1, not a "
                 "non-negative integer below 2^63", id="size -1"),
    pytest.param(entry_changed(0, size=None), "assets[0] (checkpoint 0): size is null, not a "
                 "non-negative integer below 2^63", id="size null"),
    pytest.param(entry_changed(0, size=False), "assets[0] (checkpoint 0): size is false, not a "
                 "non-negative integer below 2^63", id="size false"),
    pytest.param(entry_changed(0, size=2**63), "assets[0] (checkpoint 0): size is "
                 "9223372036854775808, not a non-negative integer below 2^63", id="size 2^63"),
    pytest.param(entry_changed(0, path=5), "assets[0] (checkpoint 0): path is 5, not a string",
                 id="path 5"),
    pytest.param(entry_changed(0, content_type=5), "assets[0] (checkpoint 0): content_type is 5, "
                 "not a string or null", id="content_type 5"),
    pytest.param(entry_changed(2, error=5), "assets[2] (training_image 1): error is 5, not a "
                 "string", id="error 5"),
    pytest.param(entry_changed(2, sha256="no"), 'assets[2] (training_image 1): sha256 is "no", '
                 "not 64 lower-case hex digits", id="failed with a bad sha256"),
    pytest.param(entry_changed(3, prompt_id=0), "assets[3] (prompt_image 0): prompt_id is 0, not "
                 "a positive integer", id="prompt_id 0"),
    pytest.param(entry_changed(3, prompt_tune_id="1"), "assets[3] (prompt_image 0): "
                 'prompt_tune_id is "1", not a positive integer', id="prompt_tune_id string"),
    pytest.param(changed(workspace=41), "workspace is 41, not a string", id="workspace 41"),
    pytest.param(entry_changed(3, prompt_text=5), "assets[3] (prompt_image 0): prompt_text is 5, "
                 "not a string or null", id="prompt_text 5"),
    pytest.param(entry_changed(0, kind={"a": [1] * 100}), f"assets[0]: kind is a JSON object, "
                 f"not {KINDS}", id="kind a big object"),
]


def refused(data: bytes) -> UnreadableManifest:
    """The error parse raises for tune 42's manifest; fails the test if it raises none."""
    with pytest.raises(UnreadableManifest) as caught:
        parse(data, 42)
    return caught.value


@pytest.mark.parametrize(("data", "start"), NOT_A_MANIFEST)
def test_parse_refuses_what_is_not_json(data: bytes, start: str) -> None:
    """Bytes that are not UTF-8 JSON are unreadable, and the one line says which."""
    error = refused(data)
    assert error.reason.startswith(start)
    assert str(error) == f"the manifest of tune 42 is unreadable: {error.reason}"
    assert "\n" not in str(error)


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_parse_refuses_a_malformed_manifest(data: bytes, reason: str) -> None:
    """Each way a manifest can break the schema is one error naming the tune and the field."""
    error = refused(data)
    assert isinstance(error, StorageError)
    assert (error.tune_id, error.reason) == (42, reason)
    assert str(error) == f"the manifest of tune 42 is unreadable: {reason}"


def test_parse_reads_every_field_and_keeps_extra_ones() -> None:
    """A good manifest reads back typed; rewriting its entries gives the same dicts, extras kept."""
    document = good()
    document["assets"][0]["note"] = {"from": "a later version"}
    document["assets"][2]["attempts"] = 3
    found = parse(encode(document), 42)
    assert (found.tune_id, found.archived_at, found.complete) == (42, "2026-11-29T10:00:00Z",
                                                                   False)
    assert found.tune == document["tune"]
    assert found.title == "Jane"
    assert found.entries[0] == Entry(
        "checkpoint", 0, "https://b.example/c?X-Amz-Signature=REDACTED", "ok", SHA, 5,
        f"objects/sha256/{SHA[:2]}/{SHA}", None, source=document["assets"][0]["source"],
        extra={"note": {"from": "a later version"}},
    )
    assert found.entries[2].blob is None
    assert (found.entries[2].error, found.entries[2].extra) == (
        "HTTP 404 from https://i.example/0.jpg", {"attempts": 3})
    assert found.entries[3].asset == PROMPT
    assert found.entries[3].blob == Blob(PROMPT_SHA, 7, "image/png")
    assert [entry_dict(entry) for entry in found.entries] == document["assets"]


def test_encode_ends_with_a_newline_and_parses_back() -> None:
    """encode ends its JSON with a newline, and parse gives back the same document's values."""
    tune = make_tune()
    document = build_manifest(tune, results_for(tune, {2}), WHEN, complete=True)
    data = encode(document)
    assert data.endswith(b"}\n")
    found = parse(data, 42)
    assert (found.complete, found.tune) == (document["complete"], document["tune"])
    assert [entry_dict(entry) for entry in found.entries] == document["assets"]


def test_path_that_does_not_match_the_sha256_is_readable() -> None:
    """A wrong path is read as recorded (verify reports it); a rewrite writes the right one."""
    wrong = f"objects/sha256/00/{SHA}"
    found = parse(entry_changed(0, path=wrong), 42)
    assert found.entries[0].path == wrong
    assert entry_dict(found.entries[0])["path"] == f"objects/sha256/{SHA[:2]}/{SHA}"


def test_manifest_with_no_assets_is_readable() -> None:
    """An empty assets list is a manifest of no files, not an error."""
    assert parse(changed(assets=[]), 42).entries == ()


class Shelf:
    """A store as far as `read` needs one: manifests by tune id."""

    def __init__(self, manifests: dict[int, bytes]) -> None:
        self.manifests = manifests

    async def read_manifest(self, tune_id: int) -> bytes | None:
        return self.manifests.get(tune_id)


def test_read_gives_the_manifest_none_or_the_error() -> None:
    """read parses what the store holds, says None when it holds nothing, raises when damaged."""
    found = asyncio.run(read(Shelf({42: encode(good())}), 42))
    assert isinstance(found, Manifest)
    assert found == parse(encode(good()), 42)
    assert asyncio.run(read(Shelf({42: encode(good())}), 8)) is None
    with pytest.raises(UnreadableManifest) as caught:
        asyncio.run(read(Shelf({42: changed(assets=5)}), 42))
    assert str(caught.value) == "the manifest of tune 42 is unreadable: assets is 5, not a list"


def test_a_gone_entry_and_the_state_read_back() -> None:
    """An entry gone upstream keeps its status and error, and the listing state is read."""
    document = {
        "schema_version": 1, "tune_id": 3, "archived_at": "2026-11-29T10:00:00Z",
        "complete": False, "state": "files_listed", "tune": {"id": 3},
        "assets": [{"kind": "checkpoint", "index": 0, "url": "https://h/c", "status": "gone",
                    "error": "HTTP 404 from https://h/c"}],
    }
    found = parse(json.dumps(document).encode(), 3)
    assert found.state == "files_listed"
    [entry] = found.entries
    assert (entry.status, entry.error, entry.blob) == ("gone", "HTTP 404 from https://h/c", None)
    assert entry_dict(entry) == document["assets"][0]


def test_an_unknown_state_is_unreadable() -> None:
    """A state this version does not know is refused, not guessed at."""
    document = {"schema_version": 1, "tune_id": 3, "archived_at": "2026-11-29T10:00:00Z",
                "complete": False, "state": "sleeping", "tune": {"id": 3}, "assets": []}
    with pytest.raises(UnreadableManifest, match="its state is"):
        parse(json.dumps(document).encode(), 3)
