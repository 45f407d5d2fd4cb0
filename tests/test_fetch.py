"""End to end: `main(["fetch", ...])` against the stand-in API and asset hosts."""

from __future__ import annotations

import gzip
import json
import os
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from multidict import CIMultiDict

from tests.conftest import check_manifest
from tests.helpers import Sleeps, blob_file, run_fetch, sha256, stored_blobs
from tests.standin import Body, StandIn, Status
from tune_archiver import __version__
from tune_archiver.download.partfile import partial_name
from tune_archiver.urls import download_identity


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def make_tune(standin: StandIn, tune_id: int, images: int = 3, ckpt: bytes | None = None) -> dict:
    """A tune with one checkpoint (unless ckpt is b"") and `images` training images."""
    checkpoint = os.urandom(300_000) if ckpt is None else ckpt
    ckpts = [standin.add_file(f"ckpt-{tune_id}", checkpoint)] if checkpoint else []
    pics = [standin.add_file(f"img-{tune_id}-{i}", os.urandom(5_000 + i)) for i in range(images)]
    return standin.add_tune(tune_id, ckpts, pics)


def test_blobs_hold_exactly_the_served_bytes(standin: StandIn, archive: Path) -> None:
    """Each file lands under the sha256 of its bytes and the manifest records it."""
    make_tune(standin, 1)
    assert run_fetch(standin, archive, "1") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    assert document["complete"] is True
    served = {standin.file_url(name): data for name, data in standin.files.items()}
    assert len(document["assets"]) == 4
    for entry in document["assets"]:
        data = served[entry["url"]]
        assert entry["status"] == "ok"
        assert entry["sha256"] == sha256(data)
        assert entry["size"] == len(data)
        assert (archive / entry["path"]).read_bytes() == data
    assert [e["kind"] for e in document["assets"]] == ["checkpoint"] + ["training_image"] * 3


def test_nothing_left_in_tmp_after_a_run(standin: StandIn, archive: Path) -> None:
    """Partial files are gone once their blobs are committed."""
    make_tune(standin, 1)
    assert run_fetch(standin, archive, "1") == 0
    assert list((archive / "tmp").iterdir()) == []


def test_tune_still_training_is_complete_without_checkpoints(
    standin: StandIn, archive: Path
) -> None:
    """An empty ckpt_urls and a null ckpt_url are normal: exit 0, images archived."""
    make_tune(standin, 2, images=2, ckpt=b"")
    assert run_fetch(standin, archive, "2") == 0
    document = check_manifest(archive / "manifests" / "2.json")
    assert document["complete"] is True
    assert document["tune"]["ckpt_urls"] == []
    assert [e["kind"] for e in document["assets"]] == ["training_image"] * 2


def test_rejected_key_exits_3_and_writes_nothing(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 401 gives "API key rejected" with what to check, exit 3, no archive at all."""
    make_tune(standin, 1)
    assert run_fetch(standin, archive, "1", key="wrong-key") == 3
    err = capsys.readouterr().err
    assert "API key rejected: check ASTRIA_API_KEY (or --api-key-file) and --workspace" in err
    assert "Traceback" not in err
    assert not archive.exists()


def test_missing_key_exits_2_before_any_request(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No key: a message naming ASTRIA_API_KEY, exit 2, the API never asked."""
    make_tune(standin, 1)
    assert run_fetch(standin, archive, "1", key="") == 2
    assert "ASTRIA_API_KEY" in capsys.readouterr().err
    assert standin.requests == []


def test_unknown_tune_fails_alone(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 404 says "tune N not found" and exits 1 while the other tune is archived."""
    make_tune(standin, 1)
    assert run_fetch(standin, archive, "1", "999") == 1
    assert "tune 999 not found" in capsys.readouterr().err
    assert check_manifest(archive / "manifests" / "1.json")["complete"] is True
    assert not (archive / "manifests" / "999.json").exists()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"id": 5, "ckpt_urls": [', "malformed JSON"),
        (b'{"title": "no id"}', "no valid 'id'"),
        (b'[1, 2]', "not a JSON object"),
    ],
)
def test_unusable_tune_json_is_a_clear_error(
    standin: StandIn,
    archive: Path,
    capsys: pytest.CaptureFixture[str],
    body: bytes,
    expected: str,
) -> None:
    """Broken API data names the tune, exits 1 and shows no traceback."""
    standin.tunes[5] = body
    assert run_fetch(standin, archive, "5") == 1
    err = capsys.readouterr().err
    assert "tune 5" in err
    assert expected in err
    assert "Traceback" not in err


def test_a_null_among_the_training_images_costs_no_other_file(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """orig_images holding a null (an image Astria could not give) fails on one line and
    leaves the tune not complete, while the checkpoint and the other images are archived;
    once the API lists it, the next run archives it and the tune is complete."""
    tune = make_tune(standin, 5, images=2)
    photos = tune["orig_images"]
    tune["orig_images"] = [photos[0], None]
    assert run_fetch(standin, archive, "5") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == ("tune-archiver: error: tune 5 (Tune 5): some training images not archived: "
                    "'orig_images' holds 1 item that is not a URL")
    document = check_manifest(archive / "manifests" / "5.json")
    assert (document["complete"], document["state"]) == (False, "files_listed")
    assert [(e["kind"], e["url"], e["status"]) for e in document["assets"]] == [
        ("checkpoint", tune["ckpt_urls"][0], "ok"), ("training_image", photos[0], "ok")]
    tune["orig_images"] = photos
    assert run_fetch(standin, archive, "5") == 0
    document = check_manifest(archive / "manifests" / "5.json")
    assert document["complete"] is True
    assert [e["url"] for e in document["assets"] if e["kind"] == "training_image"] == photos


def test_an_archived_checkpoint_stays_while_ckpt_urls_cannot_be_read(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ckpt_urls sent as one string, not a list, fails the checkpoints on one line: the
    photos are archived still, and a checkpoint archived before stays ok in the
    manifest, its blob kept, not dropped as no longer listed."""
    tune = make_tune(standin, 6, images=1)
    assert run_fetch(standin, archive, "6") == 0
    [checkpoint] = tune["ckpt_urls"]
    tune["ckpt_urls"], tune["orig_images"] = checkpoint, [
        *tune["orig_images"], standin.add_file("img-6-new", os.urandom(6_000))]
    capsys.readouterr()
    assert run_fetch(standin, archive, "6") == 1
    assert capsys.readouterr().err.splitlines() == [
        "tune-archiver: error: tune 6 (Tune 6): checkpoints not archived: 'ckpt_urls' is a "
        "string, not a list of URLs"]
    document = check_manifest(archive / "manifests" / "6.json")
    assert document["complete"] is False
    kept = [e for e in document["assets"] if e["kind"] == "checkpoint"]
    assert [(e["url"], e["status"]) for e in kept] == [(checkpoint, "ok")]
    assert (archive / kept[0]["path"]).is_file()
    assert len([e for e in document["assets"] if e["kind"] == "training_image"]) == 2


def test_a_photo_sharing_its_url_with_a_checkpoint_is_judged_by_its_own_least_size(
    standin: StandIn, archive: Path
) -> None:
    """Astria's mock tunes (branch=fast; its docs' every example) list one URL as the
    checkpoint and as each photo. The run shared one download per URL, judged by the
    least size of whichever file asked first: a 300-byte photo failed as 'too few for
    this file', a checkpoint's rule, run after run, or a checkpoint of 300 bytes was ok
    after a photo. Each file is judged by its own: the photo is archived, the checkpoint
    (past the least a checkpoint may be) fails alone, as it would if listed alone."""
    mock = b"\xff\xd8\xff\xe0" + os.urandom(300)
    url = standin.add_file("mock", mock)
    standin.add_tune(10, [url], [url, url], branch="fast")
    assert run_fetch(standin, archive, "10") == 1
    assets = check_manifest(archive / "manifests" / "10.json")["assets"]
    assert [(e["kind"], e["status"], e.get("sha256")) for e in assets] == [
        ("checkpoint", "failed", None), *[("training_image", "ok", sha256(mock))] * 2]
    assert "too few for this file" in assets[0]["error"]
    assert blob_file(archive, mock).read_bytes() == mock


def test_api_503_with_retry_after_is_retried(standin: StandIn, archive: Path) -> None:
    """The API's 503 is retried after the Retry-After it asked for."""
    make_tune(standin, 1, images=0)
    standin.api_faults[1] = [Status(503, {"Retry-After": "7"})]
    sleeps = Sleeps()
    assert run_fetch(standin, archive, "1", sleep=sleeps) == 0
    assert sleeps.waits == [7.0]
    assert len(standin.seen("api")) == 2


def test_asset_503_then_200_is_retried(standin: StandIn, archive: Path) -> None:
    """An asset host's 503 with Retry-After is waited out, then the file is archived."""
    make_tune(standin, 1, images=0)
    standin.faults["ckpt-1"] = [Status(503, {"Retry-After": "3"})]
    sleeps = Sleeps()
    assert run_fetch(standin, archive, "1", sleep=sleeps) == 0
    assert sleeps.waits == [3.0]
    assert blob_file(archive, standin.files["ckpt-1"]).exists()


def test_a_retry_after_date_is_read_against_the_hosts_own_clock(
    standin: StandIn, archive: Path
) -> None:
    """A Retry-After date 3 s after the answer's Date is waited out (3 s), whatever our
    clock says: a machine an hour ahead read it as a date in the past and retried at
    once, each retry of a throttled file spent in the same moment."""
    make_tune(standin, 1, images=0)
    sent = datetime.now(UTC) - timedelta(hours=1)  # the host's clock, an hour behind ours
    standin.faults["ckpt-1"] = [Status(503, {
        "Date": format_datetime(sent, usegmt=True),
        "Retry-After": format_datetime(sent + timedelta(seconds=3), usegmt=True)})]
    sleeps = Sleeps()
    assert run_fetch(standin, archive, "1", sleep=sleeps) == 0
    assert sleeps.waits == [3.0]


def test_asset_429_then_200_is_retried(standin: StandIn, archive: Path) -> None:
    """A 429 is retried; the second answer is archived."""
    make_tune(standin, 1, images=0)
    standin.faults["ckpt-1"] = [Status(429)]
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("cdn", "/files/ckpt-1")) == 2


def test_retries_are_bounded(standin: StandIn, archive: Path) -> None:
    """A file that keeps answering 503 is asked for 1 + --retries times, then failed."""
    make_tune(standin, 1, images=0)
    standin.faults["ckpt-1"] = [Status(503)] * 10
    assert run_fetch(standin, archive, "1", "--retries", "2") == 1
    assert len(standin.seen("cdn", "/files/ckpt-1")) == 3


def test_asset_404_fails_that_asset_only(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file is "failed" in a manifest marked incomplete; the rest are archived."""
    tune = make_tune(standin, 1, images=2)
    tune["orig_images"].append(standin.file_url("gone"))
    assert run_fetch(standin, archive, "1") == 1
    document = check_manifest(archive / "manifests" / "1.json")
    assert document["complete"] is False
    statuses = [(e["kind"], e["index"], e["status"]) for e in document["assets"]]
    assert statuses == [
        ("checkpoint", 0, "ok"),
        ("training_image", 0, "ok"),
        ("training_image", 1, "ok"),
        ("training_image", 2, "failed"),
    ]
    assert "HTTP 404" in document["assets"][3]["error"]
    assert len(standin.seen("cdn", "/files/gone")) == 1  # a 404 is not retried
    assert "training_image 2: HTTP 404" in capsys.readouterr().err


def test_private_headers_never_reach_asset_hosts(standin: StandIn, archive: Path) -> None:
    """Authorization and X-Workspace-Id go to the API only, also after a cross-origin redirect."""
    data = os.urandom(10_000)
    standin.add_file("moved", data)
    standin.redirects["start"] = standin.file_url("moved", host="mirror")
    standin.add_tune(1, [standin.file_url("start")], [])
    assert run_fetch(standin, archive, "1", "--workspace", "ws-42") == 0
    assert blob_file(archive, data).read_bytes() == data
    api = standin.seen("api")
    assert api[0].headers["Authorization"] == f"Bearer {standin.api_key}"
    assert api[0].headers["X-Workspace-Id"] == "ws-42"
    assets = standin.seen("cdn") + standin.seen("mirror")
    assert [r.host for r in assets] == ["cdn", "mirror"]
    for request in assets:
        assert "Authorization" not in request.headers
        assert "X-Workspace-Id" not in request.headers


def test_user_agent_names_the_tool(standin: StandIn, archive: Path) -> None:
    """Every request carries User-Agent: tune-archiver/<version>."""
    make_tune(standin, 1, images=1)
    assert run_fetch(standin, archive, "1") == 0
    assert {r.headers["User-Agent"] for r in standin.requests} == {f"tune-archiver/{__version__}"}


def test_images_shared_by_two_tunes_are_stored_once(standin: StandIn, archive: Path) -> None:
    """The same URL in two tunes is downloaded once; equal bytes at two URLs stored once."""
    shared = standin.add_file("shared", b"same picture")
    standin.add_file("copy", b"same picture")
    standin.add_tune(1, [], [shared])
    standin.add_tune(2, [], [shared, standin.file_url("copy")])
    assert run_fetch(standin, archive, "1", "2") == 0
    assert stored_blobs(archive) == [blob_file(archive, b"same picture")]
    assert len(standin.seen("cdn", "/files/shared")) == 1
    first = check_manifest(archive / "manifests" / "1.json")["assets"]
    second = check_manifest(archive / "manifests" / "2.json")["assets"]
    assert {a["sha256"] for a in first + second} == {sha256(b"same picture")}


def test_rerun_downloads_nothing_and_rewrites_the_manifest(
    standin: StandIn, archive: Path
) -> None:
    """A second fetch of an archived tune sends no asset request and writes a new manifest."""
    make_tune(standin, 1)
    assert run_fetch(standin, archive, "1") == 0
    manifest = archive / "manifests" / "1.json"
    before = manifest.stat().st_ino
    asset_requests = len(standin.seen("cdn"))
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("cdn")) == asset_requests
    assert manifest.stat().st_ino != before
    assert check_manifest(manifest)["complete"] is True


def test_a_reordered_listing_downloads_nothing_and_lists_each_file_once(
    standin: StandIn, archive: Path
) -> None:
    """The same files listed in another order are archived already: nothing is asked for
    again, and the manifest holds each once, at its new place, with its blob."""
    make_tune(standin, 1, images=3)
    assert run_fetch(standin, archive, "1") == 0
    asset_requests = len(standin.seen("cdn"))
    images = standin.tunes[1]["orig_images"]
    standin.tunes[1]["orig_images"] = [images[2], images[0], images[1]]
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("cdn")) == asset_requests
    entries = [e for e in check_manifest(archive / "manifests" / "1.json")["assets"]
               if e["kind"] == "training_image"]
    assert [(e["index"], e["sha256"]) for e in entries] == [
        (i, sha256(standin.files[f"img-1-{n}"])) for i, n in enumerate((2, 0, 1))]


def test_rerun_downloads_a_blob_that_went_missing(standin: StandIn, archive: Path) -> None:
    """A blob deleted from the archive is fetched again on the next run."""
    make_tune(standin, 1, images=1)
    assert run_fetch(standin, archive, "1") == 0
    blob_file(archive, standin.files["img-1-0"]).unlink()
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("cdn", "/files/img-1-0")) == 2
    assert len(standin.seen("cdn", "/files/ckpt-1")) == 1


def test_requests_never_exceed_concurrency(standin: StandIn, archive: Path) -> None:
    """With --concurrency 3 the servers see at most (and here exactly) 3 requests at once."""
    make_tune(standin, 1, images=11)
    standin.hold_until = 3
    assert run_fetch(standin, archive, "1", "--concurrency", "3") == 0
    assert standin.max_in_flight == 3


def test_only_checkpoints(standin: StandIn, archive: Path) -> None:
    """--only checkpoints fetches no image; the manifest says the tune is incomplete."""
    make_tune(standin, 1, images=2)
    assert run_fetch(standin, archive, "1", "--only", "checkpoints") == 0
    assert standin.seen("cdn", "/files/img") == []
    document = check_manifest(archive / "manifests" / "1.json")
    assert [e["kind"] for e in document["assets"]] == ["checkpoint"]
    assert document["complete"] is False


def test_only_images_keeps_archived_checkpoints(standin: StandIn, archive: Path) -> None:
    """A later --only images run keeps the checkpoint already in the manifest."""
    make_tune(standin, 1, images=1)
    assert run_fetch(standin, archive, "1") == 0
    assert run_fetch(standin, archive, "1", "--only", "images") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    assert [e["kind"] for e in document["assets"]] == ["checkpoint", "training_image"]
    assert document["complete"] is True


def test_error_page_with_200_fails_the_asset(standin: StandIn, archive: Path) -> None:
    """An HTML page served with 200 where a checkpoint should be is not archived."""
    make_tune(standin, 1, images=0)
    standin.faults["ckpt-1"] = [Body(b"<html>sign in</html>", "text/html")]
    assert run_fetch(standin, archive, "1") == 1
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert entry["status"] == "failed"
    assert "error page (text/html)" in entry["error"]
    assert stored_blobs(archive) == []


@pytest.mark.parametrize(("page", "served_as", "said"), [
    pytest.param(b"<!DOCTYPE html><html><body>Access denied</body></html>", None,
                 "text/html", id="html"),
    pytest.param(b"\xef\xbb\xbf\n  <html><body>Session expired: sign in</body></html>",
                 "application/octet-stream", "text/html", id="html-after-a-bom"),
    pytest.param(b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied'
                 b"</Code></Error>", "binary/octet-stream", "application/xml", id="s3-error"),
])
def test_an_error_page_served_as_no_type_is_not_archived(
    standin: StandIn, archive: Path, page: bytes, served_as: str | None, said: str
) -> None:
    """An HTML or XML page sent with 200 and a type that says nothing (none, or
    octet-stream, as a proxy or a bucket's default sends it) is no checkpoint: its bytes
    tell what it is. It fails, nothing stored, nor kept for a later run to commit."""
    make_tune(standin, 1, images=0)
    body = page + b" " * 2048  # past the 1 KiB a checkpoint needs
    standin.faults["ckpt-1"] = [Status(200, {} if served_as is None else {
        "Content-Type": served_as}, body)]
    assert run_fetch(standin, archive, "1") == 1
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert entry["status"] == "failed"
    assert f"error page ({said})" in entry["error"]
    assert stored_blobs(archive) == []
    assert run_fetch(standin, archive, "1") == 0  # the file itself, asked for again
    assert stored_blobs(archive) == [blob_file(archive, standin.files["ckpt-1"])]


def test_a_host_no_name_may_be_fails_its_file_alone_said_plainly(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL whose host has an empty label (or one past 63 characters) cannot be looked
    up: it fails as a URL refused, not as 'internal error ... UnicodeError', and the
    tune's other files are archived."""
    make_tune(standin, 1, images=1)
    standin.tunes[1]["orig_images"].append("http://cdn..example/img")
    capsys.readouterr()
    assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    entries = check_manifest(archive / "manifests" / "1.json")["assets"]
    assert [e["status"] for e in entries] == ["ok", "ok", "failed"]
    assert entries[2]["error"] == "refused malformed URL http://cdn..example/img"
    assert capsys.readouterr().err.splitlines() == [
        "tune-archiver: error: tune 1 (Tune 1): training_image 1: refused malformed URL "
        "http://cdn..example/img"]


def test_a_body_sent_compressed_is_not_archived_as_the_file(
    standin: StandIn, archive: Path
) -> None:
    """A host that gzips the file though asked for it as it is (Accept-Encoding:
    identity) sends other bytes than the file's: the file fails, nothing is stored."""
    make_tune(standin, 1, images=0)
    standin.faults["ckpt-1"] = [Status(200, {"Content-Encoding": "gzip"},
                                       gzip.compress(standin.files["ckpt-1"]))] * 5
    assert run_fetch(standin, archive, "1") == 1
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert entry["status"] == "failed"
    assert "encoded (gzip)" in entry["error"]
    assert stored_blobs(archive) == []


def test_a_second_content_encoding_field_is_not_missed(
    standin: StandIn, archive: Path
) -> None:
    """Content-Encoding: identity, then Content-Encoding: gzip is a gzipped body (the
    fields combine): refused like one field saying gzip."""
    make_tune(standin, 1, images=0)
    headers = CIMultiDict([("Content-Encoding", "identity"), ("Content-Encoding", "gzip")])
    standin.faults["ckpt-1"] = [Status(200, headers, gzip.compress(standin.files["ckpt-1"]))] * 5
    assert run_fetch(standin, archive, "1") == 1
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert entry["status"] == "failed"
    assert stored_blobs(archive) == []


def test_signatures_are_redacted_in_the_manifest(standin: StandIn, archive: Path) -> None:
    """Presigned query parameters never reach the manifest, in assets or the tune object."""
    standin.add_file("signed", b"weights" * 200)
    url = standin.file_url("signed", query="X-Amz-Signature=s3cr3t&X-Amz-Expires=60")
    standin.add_tune(1, [url], [])
    assert run_fetch(standin, archive, "1") == 0
    text = (archive / "manifests" / "1.json").read_text()
    assert "s3cr3t" not in text
    document = check_manifest(archive / "manifests" / "1.json")
    assert document["assets"][0]["url"].endswith("X-Amz-Signature=REDACTED&X-Amz-Expires=60")
    assert document["tune"]["ckpt_url"] == document["assets"][0]["url"]


def test_a_presigned_url_with_an_apostrophe_is_redacted_in_the_manifests_tune(
    standin: StandIn, archive: Path
) -> None:
    """An image URL whose path holds an apostrophe (legal in a URL, and in a file name
    people upload: "jane's photo.jpg"): the manifest's copy of the tune holds it
    redacted, as the asset entry does."""
    url = standin.file_url("jane's.jpg", query="X-Amz-Date=20261129T000000Z"
                           "&X-Amz-Credential=AKIASECRETCRED&X-Amz-Signature=deadbeefSECRETSIG")
    standin.files["jane's.jpg"] = b"\xff\xd8\xff" + os.urandom(3000)
    standin.add_tune(8, [], [url])
    assert run_fetch(standin, archive, "8") == 0
    document = json.loads((archive / "manifests" / "8.json").read_text())
    assert document["assets"][0]["status"] == "ok"
    assert "SECRETSIG" not in document["assets"][0]["url"]
    text = json.dumps(document)
    assert "SECRETSIG" not in text, document["tune"]["orig_images"]
    assert "AKIASECRETCRED" not in text


def test_key_never_printed_or_stored(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With -v and failures, the key is in no output and no archive file."""
    tune = make_tune(standin, 1, images=1)
    tune["orig_images"].append(standin.file_url("gone"))
    assert run_fetch(standin, archive, "1", "999", "-v", "--json") == 1
    out = capsys.readouterr()
    assert standin.api_key not in out.out + out.err
    for path in archive.rglob("*"):
        if path.is_file():
            assert standin.api_key.encode() not in path.read_bytes()


def test_verbose_logs_each_request_redacted(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-v logs each request, as --help and the README say: it logged none (only where
    the key came from), so a user looking into a slow or failing run saw nothing of what
    was asked of whom. Each line names the URL redacted and the status; without -v, none."""
    checkpoint = standin.add_file("ckpt-1", os.urandom(300_000))
    signed = standin.file_url("img-1", query="X-Amz-Signature=SECRETSIG")
    standin.add_file("img-1", os.urandom(5_000))
    standin.add_tune(1, [checkpoint], [signed])
    assert run_fetch(standin, archive, "1", "-v") == 0
    err = capsys.readouterr().err
    said = sorted(line for line in err.splitlines() if line.startswith("tune-archiver: GET "))
    assert said == sorted([
        f"tune-archiver: GET {standin.api_url}/tunes/1: HTTP 200",
        f"tune-archiver: GET {checkpoint}: HTTP 200",
        f"tune-archiver: GET {standin.file_url('img-1')}?X-Amz-Signature=REDACTED: HTTP 200",
    ])
    assert "SECRETSIG" not in err
    assert standin.api_key not in err
    assert run_fetch(standin, archive, "1") == 0
    assert "GET " not in capsys.readouterr().err


def test_json_result(standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one JSON document with a result per tune and no summary lines."""
    make_tune(standin, 1, images=2)
    assert run_fetch(standin, archive, "1", "999", "--json") == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False
    first, missing = result["tunes"]
    assert first["tune_id"] == 1
    assert first["ok"] is True
    counts = (first["files"], first["new"], first["already_archived"], first["failed"])
    assert counts == (3, 3, 0, 0)
    assert first["bytes"] == sum(len(d) for d in standin.files.values())
    assert first["manifest"] == "manifests/1.json"
    assert missing["tune_id"] == 999
    assert missing["error"] == "tune 999 not found"


def test_summary_line(standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json each tune gets one summary line on stdout: files, new, archived, failed."""
    make_tune(standin, 1, images=2)
    assert run_fetch(standin, archive, "1") == 0
    assert run_fetch(standin, archive, "1") == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("tune 1 (Tune 1): 3 files, ")
    assert "(3 new, 0 already archived, 0 failed)" in first
    assert "(0 new, 3 already archived, 0 failed)" in second


def test_an_unreadable_date_beside_a_retry_after_date_is_no_fault(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 503's Date whose zone no clock has (+99999999999999999999) is unreadable, so
    its Retry-After date is read against now: the file is retried and archived."""
    make_tune(standin, 1, images=0)
    standin.faults["ckpt-1"] = [Status(503, {
        "Date": "Mon, 01 Jan 2020 00:00:00 +99999999999999999999",
        "Retry-After": format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)})]
    assert run_fetch(standin, archive, "1") == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_partial_left_of_a_file_archived_since_is_removed_unless_held(
    standin: StandIn, tmp_path: Path
) -> None:
    """A run stopped (SIGTERM) while another committed the same file keeps its partial
    for a next run that never resumes it, the file being archived: every later run left
    it (GiBs of a checkpoint) in tmp/ until a gc a day on. A run that finds the file
    archived removes it, unless a download holds it (its lock)."""
    import fcntl

    archive = tmp_path / "archive"
    checkpoint = standin.add_file("ckpt", os.urandom(30_000))
    image = standin.add_file("img", os.urandom(3_000))
    standin.add_tune(1, [checkpoint], [image])
    assert run_fetch(standin, archive, "1") == 0
    tmp = archive / "tmp"
    names = [partial_name(download_identity(url)) for url in (checkpoint, image)]
    for name in names:
        (tmp / f"{name}.part").write_bytes(os.urandom(2_000))
        (tmp / f"{name}.json").write_text("{}")
    held = os.open(tmp / f"{names[1]}.part", os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a download of another run's
        assert run_fetch(standin, archive, "1") == 0
    finally:
        os.close(held)
    assert sorted(p.name for p in tmp.iterdir()) == [f"{names[1]}.json", f"{names[1]}.part"]
