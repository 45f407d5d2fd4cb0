"""fetch --all, --expiring-within, --prompts and --dry-run against the stand-in."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web

from tests.conftest import check_manifest
from tests.helpers import blob_file, run_fetch, sha256
from tests.standin import StandIn, Status
from tune_archiver.commands import flow
from tune_archiver.errors import ConnectError

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def fixed_clock() -> datetime:
    return NOW


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def add_tune(standin: StandIn, tune_id: int, images: int = 2, **fields: Any) -> dict[str, Any]:
    """A tune with one small checkpoint and `images` training images."""
    ckpt = standin.add_file(f"ckpt-{tune_id}.safetensors", os.urandom(20_000 + tune_id))
    pics = [
        standin.add_file(f"img-{tune_id}-{i}.jpg", os.urandom(3_000 + i)) for i in range(images)
    ]
    return standin.add_tune(tune_id, [ckpt], pics, **fields)


def listing_requests(standin: StandIn, prefix: str = "/tunes?") -> list[str]:
    return [r.path for r in standin.seen("api", prefix)]


def tune_requests(standin: StandIn) -> list[str]:
    return [r.path for r in standin.seen("api", "/tunes/")]


def manifests(archive: Path) -> set[int]:
    return {int(p.stem) for p in (archive / "manifests").glob("*.json")}


def test_all_pages_through_every_tune_by_before_id(standin: StandIn, archive: Path) -> None:
    """Twelve tunes in pages of five: all archived, paged by before_id, never by offset."""
    for tune_id in range(1, 13):
        add_tune(standin, tune_id, images=1)
    assert run_fetch(standin, archive, "--all") == 0
    assert manifests(archive) == set(range(1, 13))
    assert listing_requests(standin) == [
        "/tunes?limit=120",
        "/tunes?limit=120&before_id=8",
        "/tunes?limit=120&before_id=3",
        "/tunes?limit=120&before_id=1",
    ]
    assert not any("offset" in path for path in listing_requests(standin, "/"))


@pytest.mark.parametrize(
    ("misbehaviour", "message", "pages"),
    [
        ("ignore_before_id", "asked for ids before 8, the API listed 12 again or out of order",
         2),
        ("oldest_first", "the API listed ids oldest first (1, then 2)", 1),
    ],
)
def test_all_stops_a_listing_that_would_never_end(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str],
    misbehaviour: str, message: str, pages: int,
) -> None:
    """A listing that repeats its first page or runs oldest first: one error line, exit 1."""
    for tune_id in range(1, 13):
        add_tune(standin, tune_id, images=1)
    setattr(standin, misbehaviour, True)
    assert run_fetch(standin, archive, "--all") == 1
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith(f"tune-archiver: error: the list of tunes: {message}; stopped paging")
    assert captured.out == ""
    assert len(listing_requests(standin)) == pages
    assert tune_requests(standin) == []
    assert not archive.exists()


def test_prompt_listing_that_never_ends_fails_only_its_tunes_prompts(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt listing that repeats itself fails that tune's prompts by name; its other
    files are archived (not complete), and the other tune whole."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    add_prompts(standin, 1, 7)
    standin.ignore_before_id = True
    standin.misbehaving_paths = ("/tunes/1/prompts",)
    assert run_fetch(standin, archive, "1", "2", "--prompts") == 1
    assert capsys.readouterr().err.splitlines() == [
        "tune-archiver: error: tune 1 (Tune 1): prompt files not archived: the prompts of "
        "tune 1: asked for ids before 102, the API listed 106 again or out of order; "
        "stopped paging"
    ]
    assert len(listing_requests(standin, "/tunes/1/prompts")) == 2
    assert manifests(archive) == {1, 2}
    assert json.loads((archive / "manifests" / "1.json").read_text())["complete"] is False


def test_one_failing_tune_does_not_stop_the_others(standin: StandIn, archive: Path) -> None:
    """A listed tune whose retrieval fails is reported; the rest are archived; exit 1."""
    for tune_id in (1, 2, 3):
        add_tune(standin, tune_id, images=1)
    standin.api_faults[2] = [Status(404, body=b'{"error": "gone"}')]
    assert run_fetch(standin, archive, "--all") == 1
    assert manifests(archive) == {1, 3}


@pytest.mark.parametrize(
    ("window", "chosen"),
    [("3d", {1}), ("7d", {1, 2}), ("36h", {1}), ("90m", set())],
)
def test_expiring_within_picks_tunes_by_a_fixed_clock(
    standin: StandIn, archive: Path, window: str, chosen: set[int]
) -> None:
    """Only tunes whose expires_at lies ahead within the window are fetched."""
    expiries = {
        1: NOW + timedelta(days=1),
        2: NOW + timedelta(days=5),
        3: NOW - timedelta(hours=1),  # expired already: nothing left to save
        4: NOW + timedelta(days=30),
    }
    for tune_id, moment in expiries.items():
        add_tune(standin, tune_id, images=1, expires_at=moment.isoformat().replace("+00:00", "Z"))
    add_tune(standin, 5, images=1, expires_at=None)  # paid storage: never expires
    standin.api_date = NOW  # the API's clock agrees with ours: the window is read by both
    assert run_fetch(standin, archive, "--all", "--expiring-within", window,
                     clock=fixed_clock) == 0
    fetched = {int(path.rsplit("/", 1)[1]) for path in tune_requests(standin)}
    assert fetched == chosen
    assert (manifests(archive) if archive.exists() else set()) == chosen


def test_expiring_within_keeps_tunes_whose_expiry_cannot_be_read(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bare dates, offsets and naive times are read; an unreadable one is kept and warned once."""
    expiries: dict[int, Any] = {
        1: "2026-12-01",  # midnight UTC, within 3 days
        2: "2026-11-30T10:00:00",  # naive: UTC
        3: "2026-12-02T13:00:00+02:00",  # 11:00 UTC, within 3 days
        4: "2026-12-02T13:00:01Z",  # just past the window
        5: None,  # never expires: left out
        6: "next week\x1b[2J\u202e",  # unreadable: kept, and its escapes never printed raw
        7: 1764547200,  # a number, not ISO 8601: kept
    }
    for tune_id, value in expiries.items():
        add_tune(standin, tune_id, images=1, expires_at=value)
    standin.api_date = NOW
    assert run_fetch(standin, archive, "--all", "--expiring-within", "3d",
                     clock=fixed_clock) == 0
    assert manifests(archive) == {1, 2, 3, 6, 7}
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "tune-archiver: tune 7: cannot read its expires_at 1764547200; backing it up in case "
        "it expires soon",
        "tune-archiver: tune 6: cannot read its expires_at 'next week\\x1b[2J\\u202e'; backing "
        "it up in case it expires soon",
    ]
    assert "\x1b" not in err
    assert "\u202e" not in err


def test_second_all_skips_unchanged_tunes(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A complete, unchanged tune with its blobs present is skipped without any request."""
    for tune_id in (1, 2):
        add_tune(standin, tune_id)
    assert run_fetch(standin, archive, "--all") == 0
    capsys.readouterr()
    before = len(standin.requests)
    assert run_fetch(standin, archive, "--all") == 0
    assert [r.path for r in standin.requests[before:]] == [
        "/tunes?limit=120",
        "/tunes?limit=120&before_id=1",
    ]
    out = capsys.readouterr().out
    assert "tune 1 (Tune 1): unchanged since archived, skipped" in out
    assert "tune 2 (Tune 2): unchanged since archived, skipped" in out


def test_changed_or_damaged_tunes_are_fetched_again(standin: StandIn, archive: Path) -> None:
    """A new updated_at, or a blob gone missing, brings the tune back into the run."""
    for tune_id in (1, 2, 3):
        add_tune(standin, tune_id)
    assert run_fetch(standin, archive, "--all") == 0
    standin.tunes[1]["updated_at"] = "2026-11-20T00:00:00Z"
    lost = standin.files["img-2-0.jpg"]
    blob = blob_file(archive, lost)
    blob.chmod(0o644)
    blob.unlink()
    before = len(standin.requests)
    assert run_fetch(standin, archive, "--all") == 0
    fetched = [r.path for r in standin.requests[before:] if r.host != "api" or "?" not in r.path]
    assert sorted(p for p in fetched if p.startswith("/tunes/")) == ["/tunes/1", "/tunes/2"]
    assert [p for p in fetched if p.startswith("/files/")] == ["/files/img-2-0.jpg"]
    assert blob_file(archive, lost).read_bytes() == lost


def test_a_file_the_listing_adds_brings_the_tune_back_whatever_its_updated_at(
    standin: StandIn, archive: Path
) -> None:
    """A tune archived complete with photos only (trained: a tune still training is never
    complete, so never skipped) whose listing then names a checkpoint is fetched again,
    though its updated_at did not move."""
    add_tune(standin, 1)
    tune = standin.add_tune(2, [], [standin.add_file("photo-2.jpg", os.urandom(3_000))])
    assert run_fetch(standin, archive, "--all") == 0
    assert json.loads((archive / "manifests" / "2.json").read_text())["complete"] is True
    ckpt = os.urandom(30_000)
    tune["ckpt_urls"] = [standin.add_file("ckpt-2-trained.safetensors", ckpt)]
    assert run_fetch(standin, archive, "--all") == 0
    assert blob_file(archive, ckpt).read_bytes() == ckpt
    kinds = [a["kind"] for a in json.loads((archive / "manifests" / "2.json").read_text())
             ["assets"]]
    assert sorted(kinds) == ["checkpoint", "training_image"]


def test_all_json_marks_skipped_tunes(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json says which tunes were skipped as unchanged, and names the manifest of each,
    skipped or not: a skipped tune's was null, so a script copying every manifest the
    document names offsite (or opening it) missed, or stumbled on, each unchanged one."""
    add_tune(standin, 1)
    assert run_fetch(standin, archive, "--all") == 0
    add_tune(standin, 2)
    capsys.readouterr()
    assert run_fetch(standin, archive, "--all", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert [(t["tune_id"], t["skipped"], t["manifest"]) for t in result["tunes"]] == [
        (2, False, "manifests/2.json"), (1, True, "manifests/1.json")]


def add_prompts(standin: StandIn, tune_id: int, count: int) -> dict[str, bytes]:
    """`count` prompts of the tune, each with two generated images; returns URL -> bytes."""
    served = {}
    for prompt_id in range(100, 100 + count):
        urls = []
        for i in range(2):
            data = os.urandom(2_000 + prompt_id + i)
            url = standin.add_file(f"gen-{prompt_id}-{i}.png", data)
            served[url] = data
            urls.append(url)
        standin.add_prompt(tune_id, prompt_id, f"ohwx woman, style {prompt_id}", urls)
    return served


def test_prompts_are_paged_and_archived_with_their_text(standin: StandIn, archive: Path) -> None:
    """Seven prompts over two pages: every generated image is archived with prompt id and text."""
    add_tune(standin, 1)
    served = add_prompts(standin, 1, 7)
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    assert listing_requests(standin, "/tunes/1/prompts") == [
        "/tunes/1/prompts?limit=120",
        "/tunes/1/prompts?limit=120&before_id=102",
        "/tunes/1/prompts?limit=120&before_id=100",
    ]
    document = check_manifest(archive / "manifests" / "1.json")
    generated = [e for e in document["assets"] if e["kind"] == "prompt_image"]
    assert len(generated) == 14
    for entry in generated:
        assert entry["sha256"] == sha256(served[entry["url"]])
        assert entry["prompt_text"] == f"ohwx woman, style {entry['prompt_id']}"
    assert document["complete"] is True


def test_fetch_without_prompts_keeps_the_prompt_images(standin: StandIn, archive: Path) -> None:
    """Images archived by an earlier --prompts run stay in the manifest of a plain fetch."""
    add_tune(standin, 1)
    add_prompts(standin, 1, 2)
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    first = check_manifest(archive / "manifests" / "1.json")
    standin.tunes[1]["updated_at"] = "2026-11-20T00:00:00Z"
    assert run_fetch(standin, archive, "1") == 0
    second = check_manifest(archive / "manifests" / "1.json")
    kept = [e for e in second["assets"] if e["kind"] == "prompt_image"]
    assert kept == [e for e in first["assets"] if e["kind"] == "prompt_image"]


def test_files_the_api_stops_listing_stay_archived(standin: StandIn, archive: Path) -> None:
    """After expiry the API lists no checkpoint; the archived one stays in the manifest."""
    add_tune(standin, 1)
    assert run_fetch(standin, archive, "1") == 0
    standin.tunes[1]["ckpt_urls"], standin.tunes[1]["ckpt_url"] = [], None
    assert run_fetch(standin, archive, "1") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    [checkpoint] = [e for e in document["assets"] if e["kind"] == "checkpoint"]
    assert checkpoint["status"] == "ok"
    assert (archive / checkpoint["path"]).is_file()


DRY_RUN_SCHEMA = {
    "type": "object",
    "required": ["dry_run", "ok", "files", "bytes", "unknown_sizes", "not_downloadable",
                 "tunes"],
    "properties": {
        "dry_run": {"const": True},
        "not_downloadable": {"type": "integer"},
        "tunes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["tune_id", "title", "error", "skipped", "already_archived",
                             "left_out", "download", "not_downloadable"],
                "properties": {
                    "not_downloadable": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["kind", "index", "url", "status", "reason"],
                            "properties": {
                                "kind": {"type": "string"},
                                "index": {"type": "integer"},
                                "prompt_id": {"type": "integer"},  # a prompt's file
                                "url": {"type": "string"},
                                "status": {"enum": [401, 403, 404, 410, None]},
                                "reason": {"type": "string"},
                            },
                            "additionalProperties": False,
                        },
                    },
                    "download": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["kind", "index", "url", "size"],
                            "properties": {
                                "kind": {"type": "string"},
                                "index": {"type": "integer"},
                                "prompt_id": {"type": "integer"},  # a prompt's file
                                "url": {"type": "string"},
                                "size": {"type": ["integer", "null"]},
                            },
                            "additionalProperties": False,
                        },
                    },
                },
            },
        },
    },
}


def test_dry_run_says_what_and_how_much_and_writes_nothing(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run reports every file with its size, creates no archive, and downloads no body."""
    tune = add_tune(standin, 1, images=2)
    assert run_fetch(standin, archive, "1", "--dry-run", "--json") == 0
    assert not archive.exists()
    result = json.loads(capsys.readouterr().out)
    jsonschema.validate(result, DRY_RUN_SCHEMA)
    sizes = {standin.file_url(n): len(d) for n, d in standin.files.items()}
    [preview] = result["tunes"]
    assert {d["url"]: d["size"] for d in preview["download"]} == {
        url: sizes[url] for url in [*tune["ckpt_urls"], *tune["orig_images"]]
    }
    assert result["bytes"] == sum(sizes.values())
    assert all(r.headers.get("Range") == "bytes=0-0" for r in standin.seen("cdn"))


def test_dry_run_counts_what_is_already_archived(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a fetch of the checkpoint only, a dry run would download just the images."""
    add_tune(standin, 1, images=3)
    assert run_fetch(standin, archive, "1", "--only", "checkpoints") == 0
    listing = sorted(p.name for p in archive.rglob("*"))
    capsys.readouterr()
    assert run_fetch(standin, archive, "1", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "tune 1 (Tune 1): would download 3 files" in out
    assert "1 already archived" in out
    assert sorted(p.name for p in archive.rglob("*")) == listing


@pytest.mark.parametrize(
    "args",
    [[], ["--all", "5"], ["5", "--expiring-within", "3d"], ["--all", "--expiring-within", "3y"],
     ["--all", "--expiring-within", "0d"]],
)
def test_fetch_usage_errors(standin: StandIn, archive: Path, args: list[str]) -> None:
    """Ids and --all exclude each other, --expiring-within needs --all and a real duration."""
    assert run_fetch(standin, archive, *args) == 2
    assert standin.requests == []


class ListingBreaks(StandIn):
    """A stand-in whose listing answers one page (before_id=3) with a broken body."""

    async def _list_tunes(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("before_id") == "3":
            return web.Response(text="{ not json", content_type="application/json")
        return await super()._list_tunes(request)


def test_a_listing_that_breaks_off_says_what_it_archived_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The third page of the listing is broken after tunes of the first were taken up:
    they are archived, the run says the listing broke off, names them in --json, and
    exits 1 (not 4, "nothing was done", nor a run that names none of them)."""
    server = ListingBreaks().start()
    try:
        for tune_id in range(1, 13):
            add_tune(server, tune_id, images=1)
        archive = tmp_path / "archive"
        capsys.readouterr()
        assert run_fetch(server, archive, "--all", "--json", "--retries", "0") == 1
    finally:
        server.close()
    out, err = capsys.readouterr()
    archived = manifests(archive)
    assert archived >= set(range(8, 13))  # the first page's, at least
    document = json.loads(out)
    assert document["ok"] is False
    assert f"broke off after {len(archived)} tune(s)" in document["error"]
    assert {t["tune_id"] for t in document["tunes"]} == archived
    assert "broke off" in err


def test_a_listing_that_breaks_off_when_no_tune_could_be_reached_did_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API out of reach for every tune taken up, then the listing breaks off: nothing
    was done, exit 4 and one line (not a traceback)."""
    async def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectError("cannot connect to api.astria.ai:443 (Connection refused)")

    monkeypatch.setattr(flow, "load_tune", unreachable)
    server = ListingBreaks().start()
    try:
        for tune_id in range(1, 13):
            add_tune(server, tune_id, images=1)
        capsys.readouterr()
        code = run_fetch(server, tmp_path / "archive", "--all", "--retries", "0")
    finally:
        server.close()
    assert code == 4
    [line] = capsys.readouterr().err.splitlines()
    assert "cannot connect" in line


def test_a_listing_whose_file_field_is_malformed_is_not_taken_for_unchanged(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune archived while training whose listing then holds its checkpoint in a field
    that cannot be read (ckpt_urls a string, not a list) is fetched again, so the tune
    says so and exits 1, never 'unchanged since archived', exit 0."""
    tune = standin.add_tune(2, [], [standin.add_file("photo-2.jpg", os.urandom(3_000))],
                            trained_at=None)
    assert run_fetch(standin, archive, "--all") == 0
    tune["ckpt_urls"] = standin.add_file("ckpt-2-trained.safetensors", os.urandom(30_000))
    capsys.readouterr()
    assert run_fetch(standin, archive, "--all") == 1
    captured = capsys.readouterr()
    assert "unchanged since archived" not in captured.out
    assert "'ckpt_urls' is a string, not a list of URLs" in captured.err
    assert "/tunes/2" in tune_requests(standin)
