"""Fault handling of fetch: resume, truncation, expiry, full disks, hostile input."""

from __future__ import annotations

import asyncio
import errno
import gzip
import json
import os
import re
import shutil
import socketserver
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from tests.conftest import check_manifest
from tests.helpers import Sleeps, blob_file, run_fetch, sha256, stored_blobs, tmpfs
from tests.loop_thread import SHUTDOWN_POLL
from tests.standin import Chunked, Claim, Cut, IgnoreRange, Replace, Stall, StandIn, Status
from tune_archiver import urls
from tune_archiver.commands import fetch as archive_module
from tune_archiver.config import RetryPolicy, Settings
from tune_archiver.download import engine
from tune_archiver.download import ranges as range_pieces
from tune_archiver.download.staging import staging_for
from tune_archiver.net import transport
from tune_archiver.progress import NullProgress

MiB = 2**20


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def one_file_tune(standin: StandIn, size: int = 3 * MiB, name: str = "model") -> bytes:
    data = os.urandom(size)
    standin.add_tune(1, [standin.add_file(name, data)], [])
    return data


def ranges(standin: StandIn, name: str = "model") -> list[str | None]:
    return [r.headers.get("Range") for r in standin.seen("cdn", f"/files/{name}")]


def resumed_at(header: str) -> int:
    assert header.startswith("bytes=")
    assert header.endswith("-")
    return int(header[len("bytes=") : -1])


def test_cut_body_resumes_from_the_bytes_on_disk(standin: StandIn, archive: Path) -> None:
    """A connection dropped mid-body is resumed with Range at the kept offset and If-Range."""
    data = one_file_tune(standin)
    standin.faults["model"] = [Cut(2 * MiB)]
    assert run_fetch(standin, archive, "1") == 0
    first, retry = standin.seen("cdn", "/files/model")
    assert "Range" not in first.headers
    # aiohttp drops what it buffered when the connection breaks, so the offset is what
    # reached the disk: more than nothing, no more than was sent.
    assert 0 < resumed_at(retry.headers["Range"]) <= 2 * MiB
    assert retry.headers["If-Range"].startswith('"')
    assert blob_file(archive, data).read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(standin: StandIn, archive: Path) -> None:
    """A 200 to a Range request replaces the partial; the blob is still exactly right."""
    data = one_file_tune(standin)
    standin.faults["model"] = [Cut(MiB), IgnoreRange()]
    assert run_fetch(standin, archive, "1") == 0
    assert blob_file(archive, data).read_bytes() == data
    assert stored_blobs(archive) == [blob_file(archive, data)]


def test_changed_file_restarts_from_zero(standin: StandIn, archive: Path) -> None:
    """When the file changes between attempts (new ETag), If-Range makes it start over."""
    old = one_file_tune(standin)
    new = os.urandom(len(old))
    standin.faults["model"] = [Cut(2 * MiB), Replace(new)]
    assert run_fetch(standin, archive, "1") == 0
    first, second = ranges(standin)
    assert first is None
    assert second is not None
    assert resumed_at(second) > 0
    assert stored_blobs(archive) == [blob_file(archive, new)]


def test_a_file_changed_within_its_last_modified_second_is_never_spliced(
    standin: StandIn, archive: Path
) -> None:
    """A host whose only validator is a Last-Modified of this very second: the file may
    change again within it, under the same date, so If-Range could join two versions.
    The broken-off download starts over (no Range): the blob is the new file whole."""
    old = one_file_tune(standin)
    new = os.urandom(len(old))
    standin.last_modified["model"] = format_datetime(datetime.now(UTC), usegmt=True)
    standin.faults["model"] = [Cut(2 * MiB), Replace(new)]
    assert run_fetch(standin, archive, "1") == 0
    assert ranges(standin) == [None, None]
    assert stored_blobs(archive) == [blob_file(archive, new)]


def test_a_last_modified_settled_long_before_the_answer_still_resumes(
    standin: StandIn, archive: Path
) -> None:
    """A Last-Modified an hour before the host's Date is a strong validator: a broken-off
    download resumes with Range and If-Range carrying that date."""
    data = one_file_tune(standin)
    modified = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    standin.last_modified["model"] = modified
    standin.faults["model"] = [Cut(2 * MiB)]
    assert run_fetch(standin, archive, "1") == 0
    _, retry = standin.seen("cdn", "/files/model")
    assert resumed_at(retry.headers["Range"]) > 0
    assert retry.headers["If-Range"] == modified
    assert blob_file(archive, data).read_bytes() == data


def _old_validator_of(headers: transport.CIMultiDictProxy[str]) -> str | None:
    """validator_of before 819782a: a Last-Modified whatever the Date."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified") or None


def test_a_sidecar_of_an_earlier_version_holding_an_unsettled_last_modified_never_splices(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partial left by a version before 819782a records a Last-Modified as its validator
    whatever the Date said (here: the very second the file changed). The file changes
    again within that second, under the same date; this version resumes it later, when
    that date is long settled against the 206's Date: If-Range matches and the old
    bytes are spliced to the new into one blob, recorded ok. The validator was never
    vetted: the file must start over."""
    archive = tmp_path / "archive"
    old = os.urandom(3 * MiB)
    new = os.urandom(len(old))
    standin.add_tune(1, [standin.add_file("model", old)], [])
    # The earlier run: at the date the file was last modified (its Date that very second).
    standin.last_modified["model"] = format_datetime(
        datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    standin.faults["model"] = [Cut(2 * MiB)]
    with monkeypatch.context() as old_version:
        old_version.setattr(engine, "validator_of", _old_validator_of)
        old_version.setattr(range_pieces, "validator_of", _old_validator_of)
        assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    # The partial's sidecar, with that date, as the earlier version wrote it.
    [sidecar] = [p for p in archive.rglob("*.json") if "manifests" not in p.parts]
    state = json.loads(sidecar.read_text())
    state.pop("settled", None)
    sidecar.write_text(json.dumps(state))
    # Later, with this version: the file was changed again within that second.
    standin.faults["model"] = [Replace(new)]
    assert run_fetch(standin, archive, "1") == 0
    [blob] = stored_blobs(archive)
    kept = blob.read_bytes()
    assert kept[:MiB] != old[:MiB] or kept[-MiB:] != new[-MiB:], "old bytes spliced to new"
    assert blob == blob_file(archive, new)


def test_truncated_body_fails_when_retries_are_spent(
    standin: StandIn, archive: Path
) -> None:
    """A body that always ends early is never committed; the asset fails with a clear error."""
    one_file_tune(standin, size=100_000)
    standin.faults["model"] = [Cut(10)] * 3
    assert run_fetch(standin, archive, "1", "--retries", "2") == 1
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert entry["status"] == "failed"
    assert "broke off" in entry["error"] or "ended after" in entry["error"]
    assert stored_blobs(archive) == []


def test_retries_count_only_the_attempts_that_got_nowhere(
    standin: StandIn, archive: Path
) -> None:
    """A host that drops every connection after 2 MiB: each attempt moves the download on,
    so --retries 1 (two attempts) still archives a 12 MiB file that takes six or more,
    each resumed where the last one broke off."""
    data = one_file_tune(standin, size=12 * MiB)
    standin.faults["model"] = [Cut(2 * MiB)] * 12
    assert run_fetch(standin, archive, "1", "--retries", "1") == 0
    assert blob_file(archive, data).read_bytes() == data
    requests = standin.seen("cdn", "/files/model")
    assert len(requests) >= 6
    offsets = [resumed_at(r.headers["Range"]) for r in requests[1:]]
    assert offsets == sorted(offsets)
    assert offsets[0] > 0


def test_a_host_that_starts_every_attempt_over_gets_one_round_of_retries(
    standin: StandIn, archive: Path
) -> None:
    """A host with a validator that answers every Range with the file from its first
    byte, dropping it at 2 MiB each time: no attempt resumes, so none moves the download
    on, and --retries 1 means two attempts (a second round of two followed, as the
    first had taken the bytes on disk from nothing to 2 MiB)."""
    one_file_tune(standin, size=12 * MiB)
    standin.faults["model"] = [Cut(2 * MiB, whole=True)] * 12
    assert run_fetch(standin, archive, "1", "--retries", "1") == 1
    requests = standin.seen("cdn", "/files/model")
    assert len(requests) == 2
    assert resumed_at(requests[1].headers["Range"]) == 2 * MiB  # it was asked to resume


def test_a_host_that_resumes_again_after_starting_over_once_moves_the_download_on(
    standin: StandIn, archive: Path
) -> None:
    """A host (one edge of a CDN, say) that answers one Range with the file from its
    first byte, and resumes every later one, dropping each connection at 2 MiB: the
    resumes move the download on, so its retries start over and the 12 MiB file is
    archived. Once started over, a download counted nothing it resumed after as progress,
    and failed when its first round of three attempts was spent."""
    data = one_file_tune(standin, size=12 * MiB)
    standin.faults["model"] = [Cut(2 * MiB), Cut(2 * MiB, whole=True)] + [Cut(2 * MiB)] * 12
    assert run_fetch(standin, archive, "1", "--retries", "2", "--split", "1") == 0
    assert blob_file(archive, data).read_bytes() == data
    requests = standin.seen("cdn", "/files/model")
    assert resumed_at(requests[-1].headers["Range"]) == 10 * MiB


def test_a_file_signed_anew_with_an_akamai_token_is_one_file_resumed_across_runs(
    standin: StandIn, archive: Path
) -> None:
    """Akamai signs each URL with a token of its own (`?hdnts=exp=...~hmac=...`): a run
    that lists the checkpoint under a fresh token resumes the last run's partial, and the
    manifest holds it once. Each token made it another file: the partial was left behind
    and the checkpoint downloaded again, the old entry said 'gone upstream, never
    archived' (exit 1), and every later run added one more entry, downloading it again."""
    data = one_file_tune(standin, size=3 * MiB)
    signed = [standin.file_url("model", query=f"hdnts=exp%3D{i}~acl%3D%2F*~hmac%3D{i}a")
              for i in range(3)]
    standin.add_tune(1, [signed[0]], [])
    standin.faults["model"] = [Cut(2 * MiB)]
    assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    standin.add_tune(1, [signed[1]], [])
    assert run_fetch(standin, archive, "1") == 0
    assert ranges(standin)[-1] == f"bytes={2 * MiB}-"
    asked = len(standin.seen("cdn"))
    standin.add_tune(1, [signed[2]], [])
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("cdn")) == asked  # archived: not asked for again
    [entry] = check_manifest(archive / "manifests" / "1.json")["assets"]
    assert entry["sha256"] == sha256(data)
    assert list((archive / "tmp").iterdir()) == []


SIGNED_ANEW = {
    "cloudflare": "verify={i}-{i}a0b1c2d3e4f5",
    "keycdn": "token={i}a0b1c2d3e4f5&expire={i}",
    "tencent-cos": ("q-sign-algorithm=sha1&q-ak=AKID{i}&q-sign-time={i}%3B9&q-key-time={i}%3B9"
                    "&q-header-list=host&q-url-param-list=&q-signature={i}a0b1"
                    "&x-cos-security-token=T{i}"),
    "aliyun-oss": "OSSAccessKeyId=STS.{i}&Expires={i}&Signature={i}a0b1&security-token=T{i}",
    "aliyun-oss-v4": ("x-oss-signature-version=OSS4-HMAC-SHA256&x-oss-credential=LTAI%2F{i}"
                      "&x-oss-date=2026120{i}T000000Z&x-oss-expires=60&x-oss-signature={i}a0"),
    "google-media-cdn": "edge-cache-token=Expires%3D{i}~KeyName%3Dk~Signature%3D{i}a0b1",
    # COS's signature as one parameter (its SDKs' `sign` in a URL), Huawei OBS's
    "tencent-cos-sign": ("sign=q-sign-algorithm%3Dsha1%26q-ak%3DAKID{i}%26q-sign-time%3D{i}"
                         "%253B9%26q-key-time%3D{i}%253B9%26q-signature%3D{i}a0b1"),
    "huawei-obs": "AccessKeyId=STS{i}&Expires={i}&Signature={i}a0b1&x-obs-security-token=T{i}",
}


@pytest.mark.parametrize("query", SIGNED_ANEW.values(), ids=SIGNED_ANEW.keys())
def test_a_file_signed_anew_by_any_cdn_is_one_file_across_runs(
    standin: StandIn, archive: Path, query: str
) -> None:
    """Cloudflare's ?verify=, KeyCDN's ?expire=, Tencent COS's q-*, Aliyun OSS's
    OSSAccessKeyId and x-oss-* and the security tokens of temporary credentials change
    at each signing: url_key kept them, so each run's listing was another file, the
    last run's failed download said 'gone upstream, never archived' (exit 1), the
    checkpoint downloaded again and one more entry added each run. Now one file,
    resumed from its partial (but under KeyCDN's ?token=, which may name a file: a
    share link's), asked for no more once archived."""
    data = one_file_tune(standin, size=3 * MiB)
    signed = [standin.file_url("model", query=query.format(i=i)) for i in range(1, 4)]
    standin.add_tune(1, [signed[0]], [])
    standin.faults["model"] = [Cut(2 * MiB)]
    assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    standin.add_tune(1, [signed[1]], [])
    assert run_fetch(standin, archive, "1") == 0
    assert ranges(standin)[-1] == (None if query.startswith("token=") else f"bytes={2 * MiB}-")
    asked = len(standin.seen("cdn"))
    standin.add_tune(1, [signed[2]], [])
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("cdn")) == asked  # archived: not asked for again
    [entry] = check_manifest(archive / "manifests" / "1.json")["assets"]
    assert (entry["status"], entry["sha256"]) == ("ok", sha256(data))
    assert not re.search(r"=[0-9]a0|T[0-9]|STS|AKID|LTAI", entry["url"])


def test_a_file_in_a_new_session_each_listing_is_one_file_across_runs(
    standin: StandIn, archive: Path
) -> None:
    """A servlet's session in a URL's path (`/files/model;jsessionid=...`), new at each
    listing: url_key kept the path whole, so the last run's failed download was said
    'gone upstream, never archived' (exit 1), downloaded again from the start, and an
    archived file got one more entry each run. The session names no file."""
    data = os.urandom(3 * MiB)
    names = [f"model;jsessionid={i}A0B1C2" for i in range(1, 4)]
    for name in names:
        standin.files[name] = data
    standin.add_tune(1, [standin.file_url(names[0])], [])
    standin.faults[names[0]] = [Cut(2 * MiB)]
    assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    standin.add_tune(1, [standin.file_url(names[1])], [])
    assert run_fetch(standin, archive, "1") == 0
    assert ranges(standin, names[1]) == [f"bytes={2 * MiB}-"]
    asked = len(standin.seen("cdn"))
    standin.add_tune(1, [standin.file_url(names[2])], [])
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("cdn")) == asked  # archived: not asked for again
    [entry] = check_manifest(archive / "manifests" / "1.json")["assets"]
    assert (entry["status"], entry["sha256"]) == ("ok", sha256(data))
    assert entry["url"].endswith("/files/model;jsessionid=REDACTED")


def keyed_as_before_akamai(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """URL keys as the versions before ec94c82 made them (hdnts kept); the undo back."""
    cached = (urls.identity, urls.url_key, urls.download_key, urls.download_identity)
    for name in ("SECRET_PARAMS", "SIGNATURES"):
        monkeypatch.setattr(urls, name, getattr(urls, name) - {"hdnts", "hdnea", "__token__"})
    for function in cached:
        function.cache_clear()

    def undo() -> None:
        monkeypatch.undo()
        for function in cached:
            function.cache_clear()
    return undo


@pytest.mark.parametrize("failed", [False, True], ids=["archived", "failed"])
def test_an_entry_keyed_by_an_akamai_token_before_is_the_file_listed_now(
    standin: StandIn, archive: Path, monkeypatch: pytest.MonkeyPatch, failed: bool
) -> None:
    """A manifest an older version wrote recorded the file under a key that kept its
    token: the file listed under a fresh one is that entry's (its stored URL, redacted,
    names it), not another. It was downloaded again and recorded twice ('2 files'), or,
    failed under the old token, said 'gone upstream, never archived' (exit 1) by the
    run that archived it."""
    data = one_file_tune(standin)
    signed = [standin.file_url("model", query=f"hdnts=exp%3D{i}~acl%3D%2F*~hmac%3D{i}a")
              for i in range(2)]
    standin.add_tune(1, [signed[0]], [])
    if failed:
        standin.faults["model"] = [Cut(2 * MiB)]
    undo = keyed_as_before_akamai(monkeypatch)
    assert run_fetch(standin, archive, "1", "--retries", "0") == (1 if failed else 0)
    undo()
    asked = len(standin.seen("cdn"))
    standin.add_tune(1, [signed[1]], [])
    assert run_fetch(standin, archive, "1") == 0
    [entry] = check_manifest(archive / "manifests" / "1.json")["assets"]
    assert (entry["status"], entry["sha256"]) == ("ok", sha256(data))
    assert len(standin.seen("cdn")) == asked + failed  # archived before: not asked again


def test_partial_is_kept_for_the_next_run(standin: StandIn, archive: Path) -> None:
    """A download that fails for good leaves its partial; the next run resumes it. (Its
    first round of retries moved it on, so a second round is tried, and fails too.)"""
    data = one_file_tune(standin)
    standin.faults["model"] = [Cut(2 * MiB)] + [Status(500)] * 5
    assert run_fetch(standin, archive, "1", "--retries", "2") == 1
    [kept] = (archive / "tmp").glob("*.part")
    assert sorted(p.suffix for p in (archive / "tmp").iterdir()) == [".json", ".part"]
    size = kept.stat().st_size
    assert size > 0
    assert run_fetch(standin, archive, "1") == 0
    assert ranges(standin)[-1] == f"bytes={size}-"
    assert blob_file(archive, data).read_bytes() == data
    assert list((archive / "tmp").iterdir()) == []


def test_expired_url_is_renewed_once_and_resumed(standin: StandIn, archive: Path) -> None:
    """A 403 "Request has expired" re-fetches the tune for a fresh URL and resumes there."""
    data = os.urandom(3 * MiB)
    standin.add_file("model", data)
    old = standin.add_tune(1, [standin.file_url("model", query="X-Amz-Signature=old")], [])
    standin.api_versions[1] = [dict(old)]
    standin.add_tune(1, [standin.file_url("model", query="X-Amz-Signature=new")], [])
    expired = Status(403, body=b"<Error><Message>Request has expired</Message></Error>")
    standin.faults["model"] = [Cut(2 * MiB), expired]
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("api")) == 2  # once more, to renew
    seen = standin.seen("cdn", "/files/model")
    assert [r.path.rsplit("=", 1)[1] for r in seen] == ["old", "old", "new"]
    assert resumed_at(seen[2].headers["Range"]) > 0
    assert blob_file(archive, data).read_bytes() == data


def test_a_download_outlasting_two_urls_is_renewed_each_time_it_moved_on(
    standin: StandIn, archive: Path
) -> None:
    """A checkpoint whose renewed URL expires in turn, after more bytes came through it, is
    renewed again (a fresh request for the tune) and resumed: it failed at the second
    expiry, a 2 GB checkpoint whose URLs outlive a few minutes never whole in one run."""
    data = os.urandom(10 * MiB)
    standin.add_file("model", data)
    signed = [standin.add_tune(1, [standin.file_url("model", query=f"X-Amz-Signature=s{i}")],
                               []) for i in (1, 2, 3)]
    standin.api_versions[1] = [dict(signed[0]), dict(signed[1])]
    expired = Status(403, body=b"<Error><Message>Request has expired</Message></Error>")
    standin.faults["model"] = [Cut(3 * MiB), expired, Cut(3 * MiB), expired]
    assert run_fetch(standin, archive, "1", "--split", "1") == 0
    assert len(standin.seen("api")) == 3  # the run's, then one for each fresh URL
    seen = standin.seen("cdn", "/files/model")
    assert [r.path.rsplit("=", 1)[1] for r in seen] == ["s1", "s1", "s2", "s2", "s3"]
    assert resumed_at(seen[-1].headers["Range"]) > resumed_at(seen[2].headers["Range"]) > 0
    assert blob_file(archive, data).read_bytes() == data


def test_expired_url_without_renewal_fails(standin: StandIn, archive: Path) -> None:
    """If the renewed tune still gives a refused URL, the asset fails after one renewal."""
    one_file_tune(standin, size=1000)
    standin.faults["model"] = [Status(403)] * 5
    assert run_fetch(standin, archive, "1") == 1
    assert len(standin.seen("api")) == 2
    assert len(standin.seen("cdn")) == 2
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert "HTTP 403" in entry["error"]


def test_a_file_another_tune_could_not_renew_is_tried_with_this_tunes_own_url(
    standin: StandIn, archive: Path
) -> None:
    """Two tunes list one file, each signed for it apart: the URL of the tune that asks
    first refused as expired (its renewal too) does not fail the other's, which is
    fetched with its own URL (it shared the first one's failure, with no request)."""
    data = os.urandom(3000)
    standin.files["img"] = data
    standin.add_tune(1, [], [standin.file_url("img", query="X-Amz-Signature=one")])
    standin.add_tune(2, [], [standin.file_url("img", query="X-Amz-Signature=two")])
    standin.faults["img"] = [Status(403), Status(403)]  # the first URL, then its renewal
    assert run_fetch(standin, archive, "1", "2") == 1
    assert {r.path.rsplit("=", 1)[1] for r in standin.seen("cdn", "/files/img")} == {
        "one", "two"}
    statuses = [check_manifest(archive / "manifests" / f"{i}.json")["assets"][0]["status"]
                for i in (1, 2)]
    assert sorted(statuses) == ["failed", "ok"]
    assert blob_file(archive, data).read_bytes() == data


def test_redirect_loop_fails_the_asset(standin: StandIn, archive: Path) -> None:
    """More than 10 redirects fail the asset with a clear error."""
    standin.redirects["loop"] = standin.file_url("loop")
    standin.add_tune(1, [standin.file_url("loop")], [])
    assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert "more than 10 redirects" in entry["error"]
    assert len(standin.seen("cdn", "/files/loop")) == 11


def test_redirect_to_another_scheme_is_refused(standin: StandIn, archive: Path) -> None:
    """A redirect to file: is refused, with no request made for it."""
    standin.redirects["sneaky"] = "file:///etc/passwd"
    standin.add_tune(1, [standin.file_url("sneaky")], [])
    assert run_fetch(standin, archive, "1") == 1
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert "refused file URL" in entry["error"]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://host/x", "data:text/plain,hi"])
def test_asset_url_with_another_scheme_fails_without_a_request(
    standin: StandIn, archive: Path, url: str
) -> None:
    """Only http and https URLs are fetched; others fail their asset."""
    standin.add_tune(1, [url], [])
    assert run_fetch(standin, archive, "1") == 1
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert entry["status"] == "failed"
    assert "only http and https" in entry["error"]
    assert standin.seen("cdn") == []


def test_hostile_names_change_nothing_outside_the_archive(
    standin: StandIn, tmp_path: Path
) -> None:
    """../ in a URL path and in Content-Disposition never become a path."""
    archive = tmp_path / "deep" / "archive"
    archive.parent.mkdir()
    data = b"payload" * 200  # a checkpoint is at least 1 KiB
    standin.add_file("../../evil", data)
    url = f"{standin.urls['cdn']}/files/..%2F..%2Fevil"
    standin.add_tune(1, [url], [])
    before = sorted(p for p in tmp_path.rglob("*"))
    assert run_fetch(standin, archive, "1") == 0
    after = sorted(p for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before and not p.is_relative_to(archive)] == []
    assert blob_file(archive, data).exists()


class RawHost:
    """An asset host that answers every request with these raw bytes (or those the
    function makes of the request's head), then closes."""

    def __init__(self, answer: bytes | Callable[[str], bytes]) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    received += chunk
                head = received.decode("latin-1")
                self.request.sendall(answer if isinstance(answer, bytes) else answer(head))

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": SHUTDOWN_POLL}, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def closing_answer(data: bytes, cut_at: int, ranges: bool = True) -> Callable[[str], bytes]:
    """What a host answers (to a request's head) that sends the file with no length
    (its end is the connection's close), closing after `cut_at` bytes, as a dropped
    connection does; it serves ranges of the file (each with its length) when
    `ranges`, and says so."""
    validator = b'ETag: "v1"\r\n' + (b"Accept-Ranges: bytes\r\n" if ranges else b"")

    def answer(head: str) -> bytes:
        asked = re.search(r"(?im)^range: bytes=(\d+)-", head)
        if asked is None or not ranges:
            return b"HTTP/1.1 200 OK\r\n" + validator + b"Connection: close\r\n\r\n" + data[:cut_at]
        start = int(asked.group(1))
        if start >= len(data):
            return (f"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len(data)}"
                    "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").encode()
        return (f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{len(data) - 1}/"
                f"{len(data)}\r\nContent-Length: {len(data) - start}\r\n".encode()
                + validator + b"Connection: close\r\n\r\n" + data[start:])

    return answer


def cut_then(data: bytes, past_end: bytes) -> Callable[[str], bytes]:
    """closing_answer's host, cutting the body at a third, that answers the question of
    what lies past the cut body (the second request) with `past_end`."""
    serves = closing_answer(data, len(data) // 3)
    asked: list[str] = []

    def answer(head: str) -> bytes:
        asked.append(head)
        return past_end if len(asked) == 2 else serves(head)

    return answer


def archived_from(standin: StandIn, archive: Path, answer: Callable[[str], bytes],
                  code: int = 0) -> None:
    """Tune 1, one file from a RawHost giving `answer`, fetched with exit `code`."""
    host = RawHost(answer)
    try:
        standin.add_tune(1, [host.url("/files/model")], [])
        assert run_fetch(standin, archive, "1") == code
    finally:
        host.close()


def archived_whole(archive: Path, data: bytes) -> None:
    """Tune 1's one file is `data`, ok, its blob the only one."""
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert (entry["status"], entry["size"], entry["sha256"]) == ("ok", len(data), sha256(data))
    assert stored_blobs(archive) == [blob_file(archive, data)]


@pytest.mark.parametrize(("cut", "ranges"), [(True, True), (False, True), (False, False)],
                         ids=["cut", "whole", "no-ranges"])
def test_a_body_of_no_length_cut_by_a_closed_connection_is_never_taken_whole(
    standin: StandIn, archive: Path, cut: bool, ranges: bool
) -> None:
    """A file sent with no length ends where the connection closes, and so does one a
    dropped connection cuts: from a host that serves ranges, what lies past the bytes
    received is asked for. A cut body is resumed, never archived as the file; a whole
    one (nothing past it: 416) is archived as it came; so is one from a host without
    ranges, which cannot say where the file ends (as every downloader takes it)."""
    data = os.urandom(300_000)
    archived_from(standin, archive, closing_answer(data, len(data) // 3 if cut else len(data),
                                                   ranges))
    assert stored_blobs(archive) == [blob_file(archive, data)]


def test_a_cut_body_of_no_length_is_never_taken_whole_when_the_host_is_busy(
    standin: StandIn, archive: Path
) -> None:
    """A host that serves ranges and answers the question of what lies past a body of
    no length with a 503 (busy, a moment) has not said the file ends there: the cut
    body is resumed once the host answers, never archived as the file."""
    data = os.urandom(300_000)
    archived_from(standin, archive, cut_then(data, b"HTTP/1.1 503 Service Unavailable\r\n"
                  b"Retry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
    archived_whole(archive, data)


def test_a_cut_body_of_no_length_of_a_file_changed_since_is_never_taken_whole(
    standin: StandIn, archive: Path
) -> None:
    """The file changed between the cut body and the question of what lies past it: the
    host answers the If-Range with the new version whole (200, another ETag). The cut
    body of the old one is never archived; the file starts over, and the new one is."""
    old, new = os.urandom(300_000), os.urandom(250_000)
    serves = closing_answer(old, len(old) // 3)
    asked: list[str] = []

    def answer(head: str) -> bytes:
        asked.append(head)
        if len(asked) == 1:
            return serves(head)
        return (f"HTTP/1.1 200 OK\r\nETag: \"v2\"\r\nContent-Length: {len(new)}\r\n"
                "Connection: close\r\n\r\n").encode() + new

    archived_from(standin, archive, answer)
    assert stored_blobs(archive) == [blob_file(archive, new)]


def test_a_body_sent_with_a_gzip_transfer_coding_is_not_archived_as_the_file(
    standin: StandIn, archive: Path
) -> None:
    """A host that gzips the file as a transfer coding (Transfer-Encoding: gzip, chunked),
    which no request of ours offered to take (no TE), sends other bytes than the file's:
    aiohttp takes off the chunking only, so the file fails and nothing is stored."""
    packed = gzip.compress(os.urandom(5000))
    host = RawHost(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n"
                   b"Connection: close\r\n\r\n" + f"{len(packed):x}\r\n".encode() + packed
                   + b"\r\n0\r\n\r\n")
    try:
        standin.add_tune(1, [host.url("/files/model")], [])
        assert run_fetch(standin, archive, "1") == 1
    finally:
        host.close()
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert entry["status"] == "failed"
    assert "encoded (gzip)" in entry["error"]
    assert stored_blobs(archive) == []


def test_a_malformed_answer_quoting_a_presigned_url_is_redacted_in_the_manifest_and_lines(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An asset host's redirect that aiohttp cannot parse (a space before the colon of
    Location): aiohttp's error quotes the header line, presigned Location and all. The
    file's error, in the manifest and on stderr, names it redacted."""
    signed = ("https://sdbooth2-production.s3.amazonaws.com/x/model?X-Amz-Algorithm=AWS4-HMAC"
              "-SHA256&X-Amz-Credential=AKIASECRETCRED&X-Amz-Signature=deadbeefSECRETSIG")
    host = RawHost(b"HTTP/1.1 302 Found\r\nLocation : " + signed.encode()
                   + b"\r\nContent-Length: 0\r\n\r\n")
    try:
        image = standin.add_file("img.jpg", b"\xff\xd8\xff" + b"j" * 3000)
        standin.add_tune(8, [], [host.url("/files/model"), image])
        assert run_fetch(standin, archive, "8", "--retries", "0") == 1
    finally:
        host.close()
    printed = capsys.readouterr()
    manifest = (archive / "manifests" / "8.json").read_text()
    assert "malformed response" in manifest
    assert "SECRETSIG" not in manifest
    assert "AKIASECRETCRED" not in manifest
    assert "SECRETSIG" not in printed.err + printed.out


def test_stalled_server_is_retried_then_failed(standin: StandIn, archive: Path) -> None:
    """A server silent for --read-timeout is retried, then the asset fails; nothing hangs."""
    one_file_tune(standin, size=10_000)
    standin.faults["model"] = [Stall(100), Stall(100)]
    code = run_fetch(standin, archive, "1", "--read-timeout", "0.3", "--retries", "1")
    assert code == 1
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert "no data for 0.3 s" in entry["error"]
    assert len(standin.seen("cdn", "/files/model")) == 2


def test_body_without_content_length_is_accepted_when_it_ends_cleanly(
    standin: StandIn, archive: Path
) -> None:
    """A chunked body without Content-Length is archived once the stream ends properly."""
    data = one_file_tune(standin, size=200_000)
    standin.faults["model"] = [Chunked()]
    assert run_fetch(standin, archive, "1") == 0
    assert blob_file(archive, data).read_bytes() == data


def failing_write(fd: int, pieces: list[memoryview], offset: int) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_fails_the_asset_and_keeps_the_archive(
    standin: StandIn, archive: Path
) -> None:
    """ENOSPC fails the asset with "disk full in <archive>", removes its partial, keeps blobs."""
    good = os.urandom(1000)
    standin.add_tune(1, [], [standin.add_file("old", good)])
    assert run_fetch(standin, archive, "1") == 0
    manifest_before = (archive / "manifests" / "1.json").read_bytes()
    standin.add_tune(2, [standin.add_file("new", os.urandom(5000))], [])
    settings = Settings(
        archive=archive, api_key=standin.api_key, api_url=standin.api_url,
        retry=RetryPolicy(sleep=Sleeps()),
    )
    staging = staging_for(archive, write=failing_write)
    [result] = asyncio.run(archive_module.fetch(settings, [2], NullProgress(), staging=staging))
    assert result.failed[0].error == f"disk full in {archive}"
    assert list((archive / "tmp").iterdir()) == []
    assert blob_file(archive, good).read_bytes() == good
    assert (archive / "manifests" / "1.json").read_bytes() == manifest_before
    assert check_manifest(archive / "manifests" / "2.json")["complete"] is False


def test_file_larger_than_free_space_is_refused_unless_forced(
    standin: StandIn, archive: Path
) -> None:
    """A Content-Length beyond the free space fails the asset at once; --force tries anyway."""
    one_file_tune(standin, size=1000)
    big = 2**62
    standin.faults["model"] = [Claim(big), Claim(big)]
    assert run_fetch(standin, archive, "1") == 1
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert entry["error"].startswith(f"disk full in {archive}: {big} bytes to download")
    assert len(standin.seen("cdn")) == 1  # not retried
    assert run_fetch(standin, archive, "1", "--force", "--retries", "0") == 1
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert "disk full" not in entry["error"]


def test_a_resume_refused_for_want_of_room_keeps_the_bytes_on_disk(
    standin: StandIn, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume whose rest does not fit the free space fails the file before a byte is
    written, and keeps the bytes on disk: the next run, given room, resumes after them.
    They were removed as if they had filled the disk, so a 2 GB checkpoint 95% in was
    fetched again from its first byte for want of a few MB (or lost, if it expired)."""
    data = one_file_tune(standin, size=20 * MiB)
    standin.faults["model"] = [Cut(4 * MiB)]
    assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    usage = shutil.disk_usage(archive)
    with monkeypatch.context() as short:
        short.setattr(shutil, "disk_usage", lambda path: usage._replace(free=MiB))
        assert run_fetch(standin, archive, "1") == 1
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert entry["error"].startswith(f"disk full in {archive}: {16 * MiB} bytes to download")
    assert run_fetch(standin, archive, "1") == 0
    assert blob_file(archive, data).read_bytes() == data
    assert ranges(standin)[-1] == f"bytes={4 * MiB}-"


def test_a_forced_file_of_an_absurd_size_fails_alone(standin: StandIn, archive: Path) -> None:
    """--force, and a host that announces 2**62 bytes (a validator, ranges taken): the file
    fails as a body that broke off, the other tune is archived. Splitting it made one
    16 MiB piece per 16 MiB announced: a MemoryError ("internal error") at 2**62, and
    gigabytes of memory and a sidecar too large to read back at sizes below it."""
    standin.add_tune(2, [], [standin.add_file("image", os.urandom(3000))])
    host = RawHost(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: \"v1\"\r\n"
                   b"Accept-Ranges: bytes\r\nConnection: close\r\n\r\n" % 2**62)
    try:
        standin.add_tune(1, [host.url("/model")], [])
        assert run_fetch(standin, archive, "1", "2", "--force", "--retries", "0") == 1
    finally:
        host.close()
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert entry["error"] == f"the response body broke off: {host.url('/model')}"
    assert check_manifest(archive / "manifests" / "2.json")["complete"] is True


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1 MiB tmpfs, where the test may mount one (root on Linux)."""
    with tmpfs(tmp_path / f"full-{uuid.uuid4().hex[:8]}", "1m") as mount:
        yield mount


def test_real_full_disk(standin: StandIn, small_tmpfs: Path) -> None:
    """On a real 1 MiB filesystem a 3 MiB file fails with "disk full"; a small one is kept."""
    archive = small_tmpfs / "archive"
    small = os.urandom(10_000)
    standin.add_tune(1, [], [standin.add_file("small", small)])
    assert run_fetch(standin, archive, "1") == 0
    standin.add_tune(2, [standin.add_file("big", os.urandom(3 * MiB))], [])
    assert run_fetch(standin, archive, "2", "--force") == 1
    entry = check_manifest(archive / "manifests" / "2.json")["assets"][0]
    assert entry["error"] == f"disk full in {archive}"
    assert blob_file(archive, small).read_bytes() == small
    assert [p for p in (archive / "tmp").iterdir() if p.suffix == ".part"] == []


def test_416_drops_the_partial_and_starts_over(standin: StandIn, archive: Path) -> None:
    """A 416 to a resume drops the partial; the next attempt fetches the file from byte 0."""
    data = one_file_tune(standin)
    standin.faults["model"] = [Cut(2 * MiB), Status(416)]
    assert run_fetch(standin, archive, "1") == 0
    first, refused, again = ranges(standin)
    assert first is None
    assert refused is not None
    assert again is None
    assert blob_file(archive, data).read_bytes() == data


def test_a_resume_answered_with_a_total_past_ints_limit_starts_over(
    standin: StandIn, archive: Path
) -> None:
    """A 206 whose Content-Range total has 5,000 digits (past int()'s limit) is a
    malformed answer: the file starts over and is archived, never failed as an
    internal error."""
    data = one_file_tune(standin)
    answer = f"bytes {2 * MiB}-{len(data) - 1}/{'9' * 5000}"
    standin.faults["model"] = [Cut(2 * MiB), Status(206, {"Content-Range": answer})]
    assert run_fetch(standin, archive, "1") == 0
    assert ranges(standin)[-1] is None
    assert blob_file(archive, data).read_bytes() == data


def test_api_500_waits_30_s_and_a_file_500_does_not(standin: StandIn, archive: Path) -> None:
    """A 500 from the API waits 30 s before its retry; a 500 from an asset host, the backoff."""
    one_file_tune(standin, size=5_000)
    standin.api_faults[1] = [Status(500, body=b'{"error": "internal"}')]
    standin.faults["model"] = [Status(500)]
    sleeps = Sleeps()
    assert run_fetch(standin, archive, "1", sleep=sleeps) == 0
    api_wait, file_wait = sleeps.waits
    assert api_wait == 30.0
    assert file_wait < 30.0
