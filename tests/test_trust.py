"""Trust: hosts that glitch as real CDNs do never put wrong bytes under an asset, and one
bad file never stops a run."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import check_manifest
from tests.helpers import Sleeps, blob_file, run_fetch, sha256, stored_blobs
from tests.standin import Body, Cut, Drip, Splice, StandIn, Status
from tune_archiver.commands.fetch import fetch
from tune_archiver.config import RetryPolicy, Settings
from tune_archiver.download.staging import Incoming, Staging, staging_for
from tune_archiver.progress import NullProgress
from tune_archiver.store import Store

MiB = 2**20


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def entries(archive: Path, tune_id: int) -> list[dict[str, object]]:
    return check_manifest(archive / "manifests" / f"{tune_id}.json")["assets"]


def test_a_host_ignoring_if_range_never_splices_two_versions(
    standin: StandIn, archive: Path
) -> None:
    """A resume answered 206 from a changed file (new ETag) starts over: the new file whole."""
    old, new = os.urandom(3 * MiB), os.urandom(3 * MiB)
    standin.add_tune(1, [standin.add_file("model", old)], [])
    standin.faults["model"] = [Cut(at=2 * MiB)]
    assert run_fetch(standin, archive, "1", "--retries", "0") == 1  # 2 MiB kept to resume
    standin.files["model"] = new
    standin.faults["model"] = [Splice(new)]  # the resume gets bytes 2 MiB- of the new file
    assert run_fetch(standin, archive, "1") == 0
    [entry] = entries(archive, 1)
    assert entry["sha256"] == sha256(new)
    assert blob_file(archive, new).read_bytes() == new
    assert stored_blobs(archive) == [blob_file(archive, new)]
    asked = [r.headers.get("Range") for r in standin.seen("cdn", "/files/model")]
    assert asked == [None, f"bytes={2 * MiB}-", None]


def test_a_range_of_a_changed_file_sends_the_download_back_to_one_stream(
    standin: StandIn, archive: Path
) -> None:
    """A piece answered from another version (it ignores If-Range) is never stitched in."""
    old, new = os.urandom(16 * MiB), os.urandom(16 * MiB)
    standin.add_tune(1, [standin.add_file("model", old)], [])
    standin.range_faults[("model", 3 * MiB)] = [Splice(new)]
    assert run_fetch(standin, archive, "1", "--split", "4", "--split-threshold", "8M") == 0
    [entry] = entries(archive, 1)
    assert entry["sha256"] == sha256(old)
    assert blob_file(archive, old).read_bytes() == old
    assert stored_blobs(archive) == [blob_file(archive, old)]


def test_urls_that_differ_only_in_their_query_are_different_files(
    standin: StandIn, archive: Path
) -> None:
    """/img?id=1, ?id=2 and ?id=3 are three images, each with its own bytes."""
    images = [os.urandom(2000 + i) for i in range(3)]
    urls = []
    for i, data in enumerate(images, start=1):
        standin.files[f"img?id={i}"] = data
        urls.append(standin.file_url("img", query=f"id={i}&X-Amz-Signature=s{i}"))
    standin.add_tune(1, [], urls)
    assert run_fetch(standin, archive, "1") == 0
    assert [entry["sha256"] for entry in entries(archive, 1)] == [sha256(d) for d in images]


def test_two_tunes_files_told_apart_by_a_secret_looking_parameter_are_never_one_download(
    standin: StandIn, archive: Path
) -> None:
    """/img?key=a and /img?key=b (or ?author=...: a name that merely looks like a
    credential's) are two files: fetched in one run, each tune's manifest holds its own
    bytes, not the other tune's under its name."""
    images = {f"img?{query}": os.urandom(3000) for query in ("key=a", "key=b", "author=c")}
    for tune_id, (name, data) in enumerate(images.items(), start=1):
        standin.files[name] = data
        path, _, query = name.partition("?")
        standin.add_tune(tune_id, [], [standin.file_url(path, query=f"{query}&X-Amz-Signature=s")])
    assert run_fetch(standin, archive, "1", "2", "3") == 0
    assert [entries(archive, t)[0]["sha256"] for t in (1, 2, 3)] == [
        sha256(data) for data in images.values()]


@pytest.mark.parametrize(
    ("kind", "served"), [("checkpoint", b""), ("checkpoint", b"x" * 500), ("image", b"")]
)
def test_an_empty_or_tiny_body_is_a_failure_never_an_asset(
    standin: StandIn, archive: Path, kind: str, served: bytes
) -> None:
    """A 200 with 0 bytes (or a checkpoint under 1 KiB) is retried, then failed, never "ok"."""
    url = standin.add_file("file", served)
    standin.add_tune(1, [url] if kind == "checkpoint" else [], [url] if kind == "image" else [])
    assert run_fetch(standin, archive, "1", "--retries", "2") == 1
    [entry] = entries(archive, 1)
    assert entry["status"] == "failed"
    assert "too few for this file" in str(entry["error"])
    assert check_manifest(archive / "manifests" / "1.json")["complete"] is False
    assert len(standin.seen("cdn", "/files/file")) == 3
    assert stored_blobs(archive) == []


def test_an_empty_body_then_the_file_archives_the_file(standin: StandIn, archive: Path) -> None:
    """One empty 200 is a glitch: the retry gets the real image, which is archived."""
    data = os.urandom(5000)
    standin.add_tune(1, [], [standin.add_file("img", data)])
    standin.faults["img"] = [Body(b"", "image/jpeg")]
    assert run_fetch(standin, archive, "1") == 0
    assert entries(archive, 1)[0]["sha256"] == sha256(data)


def test_a_host_that_drips_is_cut_by_the_stall_rule(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A byte every 20 ms is never silent for --read-timeout, but --min-rate ends it."""
    standin.add_tune(1, [], [standin.add_file("img", os.urandom(100_000))])
    standin.faults["img"] = [Drip(0.02)]
    assert run_fetch(standin, archive, "1", "--retries", "0", "--min-rate", "1M",
                     "--stall-window", "0.3") == 1
    assert "slower than 1048576 bytes/s" in capsys.readouterr().err
    assert entries(archive, 1)[0]["status"] == "failed"


def test_a_damaged_sidecar_is_ignored_and_the_file_starts_over(
    standin: StandIn, archive: Path
) -> None:
    """A sidecar with a CR/LF validator and a string total cannot crash a run: it starts over."""
    data = os.urandom(2 * MiB)
    url = standin.add_file("model", data)
    standin.add_tune(1, [url], [])
    standin.faults["model"] = [Cut(at=MiB)]
    assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    [sidecar] = (archive / "tmp").glob("*.json")
    state = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**state, "validator": 'x"\r\nEvil: 1', "total": "many"}))
    assert run_fetch(standin, archive, "1") == 0
    assert blob_file(archive, data).read_bytes() == data
    assert standin.seen("cdn", "/files/model")[-1].headers.get("Range") is None


@pytest.mark.parametrize(
    "bad_url",
    ["http://127.0.0.1:1/a\x1b[2Jb", "http://127.0.0.1:1/a\r\nHost: evil", "http://h:+1/x"],
    ids=["escape", "crlf", "plus-port"],
)
def test_a_bad_url_fails_its_file_and_every_other_tune_is_archived(
    standin: StandIn, archive: Path, bad_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One hostile URL fails that file; its tune and the next still get manifests, no traceback."""
    good = os.urandom(3000)
    standin.add_tune(1, [], [standin.add_file("good1", good), bad_url])
    standin.add_tune(2, [], [standin.add_file("good2", os.urandom(3000))])
    assert run_fetch(standin, archive, "1", "2") == 1
    assert [e["status"] for e in entries(archive, 1)] == ["ok", "failed"]
    assert [e["status"] for e in entries(archive, 2)] == ["ok"]
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "\x1b" not in err
    assert "\r" not in err
    assert "refused" in err


def test_a_redirect_to_a_malformed_port_fails_only_that_file(
    standin: StandIn, archive: Path
) -> None:
    """A Location of http://host:+1/x is refused for that file; the run goes on."""
    moved, kept = standin.add_file("moved", b"m" * 100), standin.add_file("ok", b"k" * 99)
    standin.add_tune(1, [], [moved, kept])
    standin.faults["moved"] = [Status(302, {"Location": "http://127.0.0.1:+1/x"})]
    standin.add_tune(2, [], [standin.add_file("ok2", os.urandom(3000))])
    assert run_fetch(standin, archive, "1", "2") == 1
    assert [e["status"] for e in entries(archive, 1)] == ["failed", "ok"]
    assert str(entries(archive, 1)[0]["error"]).startswith("refused malformed URL")
    assert [e["status"] for e in entries(archive, 2)] == ["ok"]


class BrokenStaging(Staging):
    """A staging that meets a bug (not one of our errors) on one URL."""

    async def open(self, url: str, store: Store) -> Incoming:
        if "cursed" in url:
            raise RuntimeError("a bug nobody foresaw")
        return await super().open(url, store)


def test_a_bug_met_on_one_file_fails_that_file_and_the_run_goes_on(
    standin: StandIn, archive: Path
) -> None:
    """An unexpected exception in one download is that file's error; every tune gets its
    manifest, instead of an ExceptionGroup ending the run."""
    cursed, fine = standin.add_file("cursed", b"c" * 100), standin.add_file("a", b"a" * 9)
    standin.add_tune(1, [], [cursed, fine])
    standin.add_tune(2, [], [standin.add_file("b", os.urandom(3000))])
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        retry=RetryPolicy(sleep=Sleeps()))
    staging = BrokenStaging(archive / "tmp", archive)
    results = asyncio.run(fetch(settings, [1, 2], NullProgress(), staging=staging))
    assert [r.ok for r in results] == [False, True]
    [failure] = results[0].failed
    assert failure.error == ("internal error while downloading "
                             f"{standin.file_url('cursed')}: RuntimeError: a bug nobody foresaw")
    assert [e["status"] for e in entries(archive, 1)] == ["failed", "ok"]
    assert [e["status"] for e in entries(archive, 2)] == ["ok"]


def test_thousands_of_files_fit_under_a_small_open_files_limit(
    standin: StandIn, archive: Path
) -> None:
    """With ulimit -n 128, a tune of 600 images archives all 600: partials open only as
    downloads get their turn."""
    urls = [standin.add_file(f"i{i}", os.urandom(200) + i.to_bytes(4, "big")) for i in range(600)]
    standin.add_tune(1, [], urls)
    env = {**os.environ, "ASTRIA_API_KEY": standin.api_key}

    def small_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    done = subprocess.run(
        [sys.executable, "-m", "tune_archiver", "fetch", "1", "--archive", str(archive),
         "--api-url", standin.api_url, "-q"],
        env=env, capture_output=True, text=True, timeout=120, preexec_fn=small_limit,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(stored_blobs(archive)) == 600


def test_a_renewed_tune_in_another_order_never_swaps_two_images(
    standin: StandIn, archive: Path
) -> None:
    """After a 403 the tune comes back with its images swapped: image 0 is not stored with
    image 1's bytes; it fails, saying why, and image 1 is archived from its own URL."""
    first, second = os.urandom(3000), os.urandom(3000)
    urls = [standin.add_file("a", first), standin.add_file("b", second)]
    old = standin.add_tune(1, [], urls)
    standin.api_versions[1] = [dict(old)]
    standin.add_tune(1, [], list(reversed(urls)))  # what the renewal sees
    standin.faults["a"] = [Status(403)]
    assert run_fetch(standin, archive, "1") == 1
    image0, image1 = entries(archive, 1)
    assert image0["status"] == "failed"
    assert "the renewed tune lists another file as training_image 0" in str(image0["error"])
    assert image1["sha256"] == sha256(second)
    assert blob_file(archive, second).exists()
    assert not blob_file(archive, first).exists()


def full_disk_after(limit: int) -> Callable[[int, list[memoryview], int], int]:
    """A pwritev that writes `limit` bytes in all, then meets ENOSPC, as a filling disk does."""
    written = [0]

    def write(fd: int, pieces: list[memoryview], offset: int) -> int:
        size = sum(len(piece) for piece in pieces)
        if written[0] + size > limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        written[0] += size
        return os.pwritev(fd, pieces, offset)

    return write


def test_forced_ranges_into_a_full_disk_end_cleanly(
    standin: StandIn, archive: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--force into a disk that fills mid-way fails the file with "disk full", leaves no
    partial, and no task's exception goes unretrieved (asyncio would log it)."""
    data = os.urandom(16 * MiB)
    standin.add_tune(1, [standin.add_file("model", data)], [])
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        retry=RetryPolicy(sleep=Sleeps()), force=True, split=4,
                        split_threshold=8 * MiB)
    staging = staging_for(archive, write=full_disk_after(5 * MiB))
    [result] = asyncio.run(fetch(settings, [1], NullProgress(), staging=staging))
    gc.collect()  # an unretrieved task exception is logged when its task is collected
    assert [failure.error for failure in result.failed] == [f"disk full in {archive}"]
    assert list((archive / "tmp").iterdir()) == []
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_a_redacted_url_is_still_known_again_by_its_source(
    standin: StandIn, archive: Path
) -> None:
    """`?id=1&hdnts=...` is stored as `?id=REDACTED&hdnts=REDACTED`, yet the next fetch
    knows the file again (by the entry's source) and downloads nothing."""
    images = [os.urandom(2000 + i) for i in range(2)]
    urls = []
    for i, data in enumerate(images, start=1):
        standin.files[f"img?id={i}"] = data
        urls.append(standin.file_url("img", query=f"id={i}&hdnts=exp=1~hmac=SECRET{i}"))
    standin.add_tune(1, [], urls)
    assert run_fetch(standin, archive, "1") == 0
    text = (archive / "manifests" / "1.json").read_text()
    assert "SECRET" not in text
    assert "id=REDACTED" in text
    asked = len(standin.seen("cdn", "/files/img"))
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("cdn", "/files/img")) == asked
    assert [e["status"] for e in entries(archive, 1)] == ["ok", "ok"]


def test_a_json_web_token_in_a_urls_path_is_never_shown_or_stored(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cloudflare Stream signs a URL with a JWT in place of the video's id in its path
    (`/<header.payload.signature>/downloads/default.mp4`): no name=value, so it was
    stored in the manifest and printed in an error whole, a bearer credential. It is
    REDACTED, while each file is still known again by its source."""
    tokens = [f"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ2aWRlbz{i}ifQ.c2lnbmF0dXJl{i}X2xvbmc"
              for i in range(3)]
    for token in tokens[:2]:
        standin.files[token] = os.urandom(3000)
    standin.faults[tokens[2]] = [Status(403)]
    standin.add_tune(1, [], [standin.file_url(token) for token in tokens])
    assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    shown = capsys.readouterr()
    text = (archive / "manifests" / "1.json").read_text()
    for token in tokens:
        assert token.split(".")[2] not in shown.out + shown.err + text
    assert "/files/REDACTED" in shown.err
    asked = len(standin.seen("cdn", "/files/eyJ"))
    standin.faults[tokens[2]] = []
    standin.files[tokens[2]] = os.urandom(3000)
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("cdn", "/files/eyJ")) == asked + 1  # the failed one alone
    assert [e["status"] for e in entries(archive, 1)] == ["ok", "ok", "ok"]
