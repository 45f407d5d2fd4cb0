"""Parallel ranges: a large file in pieces over several connections, each piece retried
and resumed on its own."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import check_manifest
from tests.helpers import blob_file, run_fetch
from tests.standin import Cut, IgnoreRange, Replace, StandIn, Status
from tune_archiver.download import ranges as range_pieces

MiB = 2**20
SIZE = 16 * MiB
SPAN = MiB  # with --split 4, a 16 MiB file comes in 16 pieces of 1 MiB
PIECES = SIZE // SPAN
SPLIT = ("--split", "4", "--split-threshold", "8M")


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def model(standin: StandIn) -> bytes:
    """A 16 MiB checkpoint: sixteen 1 MiB pieces over four connections with SPLIT."""
    data = os.urandom(SIZE)
    standin.add_tune(1, [standin.add_file("model", data)], [])
    return data


def ranges_asked(standin: StandIn) -> list[str | None]:
    return [r.headers.get("Range") for r in standin.seen("cdn", "/files/model")]


def span_header(index: int, start: int | None = None) -> str:
    first = index * SPAN if start is None else start
    return f"bytes={first}-{(index + 1) * SPAN - 1}"


def test_large_file_is_fetched_in_ranges_at_once(
    standin: StandIn, archive: Path, model: bytes
) -> None:
    """After one look at the file, four pieces are in flight together; the blob is exact."""
    standin.hold_ranges = 4  # a range is answered only once four are asked for
    assert run_fetch(standin, archive, "1", *SPLIT) == 0
    assert blob_file(archive, model).read_bytes() == model
    asked = ranges_asked(standin)
    assert asked[0] is None
    assert asked[1:] == [span_header(i) for i in range(PIECES)]  # taken in order
    assert standin.max_in_flight >= 4
    assert list((archive / "tmp").iterdir()) == []


def test_split_gives_its_connections_whatever_concurrency_says(
    standin: StandIn, archive: Path, model: bytes
) -> None:
    """--split counts one file's connections, --concurrency files at once: with
    --concurrency 1, --split 4 still has four pieces in flight together."""
    standin.hold_ranges = 4
    assert run_fetch(standin, archive, "1", *SPLIT, "--concurrency", "1") == 0
    assert blob_file(archive, model).read_bytes() == model
    assert standin.max_in_flight == 4


def test_file_below_the_threshold_is_one_stream(
    standin: StandIn, archive: Path, model: bytes
) -> None:
    """A file smaller than --split-threshold is fetched in a single request."""
    assert run_fetch(standin, archive, "1", "--split", "4", "--split-threshold", "32M") == 0
    assert ranges_asked(standin) == [None]
    assert blob_file(archive, model).read_bytes() == model


def test_split_one_never_splits(standin: StandIn, archive: Path, model: bytes) -> None:
    """--split 1 keeps every file to one stream."""
    assert run_fetch(standin, archive, "1", "--split", "1", "--split-threshold", "1M") == 0
    assert ranges_asked(standin) == [None]


def test_a_cut_range_resumes_on_its_own(standin: StandIn, archive: Path, model: bytes) -> None:
    """A range cut mid-body asks again for what it lacks; the other ranges are asked once."""
    cut_at = SPAN // 2 + 12345
    standin.range_faults[("model", 2 * SPAN)] = [Cut(at=cut_at)]
    assert run_fetch(standin, archive, "1", *SPLIT) == 0
    assert blob_file(archive, model).read_bytes() == model
    whole_spans = {span_header(i) for i in range(PIECES)}
    asked = ranges_asked(standin)[1:]
    assert sorted(h for h in asked if h in whole_spans) == sorted(whole_spans)
    [resumed] = [h for h in asked if h not in whole_spans]
    start = int(resumed[len("bytes="):].split("-")[0])
    assert 2 * SPAN < start <= 2 * SPAN + cut_at
    assert resumed == span_header(2, start)


def test_server_ignoring_range_falls_back_to_one_stream(
    standin: StandIn, archive: Path, model: bytes
) -> None:
    """Ranges answered with the whole file make the download start over as one stream."""
    standin.ignore_ranges.add("model")
    assert run_fetch(standin, archive, "1", *SPLIT) == 0
    assert blob_file(archive, model).read_bytes() == model
    asked = ranges_asked(standin)
    assert asked[0] is None
    assert asked[-1] is None  # the fallback: one plain request for the whole file


def test_a_range_failing_for_good_fails_the_asset_and_is_resumed_next_run(
    standin: StandIn, archive: Path, model: bytes
) -> None:
    """A piece whose retries are spent fails the file; the next run asks only for what is left.

    The last piece fails: pieces start in order, one as a connection is free, so twelve
    are done before it is asked for (a middle one could spend its retries, answered at
    once, before any other was done)."""
    last = PIECES - 1
    standin.range_faults[("model", last * SPAN)] = [Status(500)] * 6
    assert run_fetch(standin, archive, "1", *SPLIT) == 1
    document = check_manifest(archive / "manifests" / "1.json")
    [entry] = document["assets"]
    assert entry["status"] == "failed"
    assert f"piece {PIECES} of {PIECES}" in entry["error"]
    assert not blob_file(archive, model).exists()
    [sidecar] = (archive / "tmp").glob("*.json")
    spans = json.loads(sidecar.read_text())["spans"]
    assert spans[last] == [last * SPAN, last * SPAN, PIECES * SPAN]  # the failed one: nothing
    left = sorted(f"bytes={pos}-{end - 1}" for _, pos, end in spans if pos < end)
    assert len(left) < PIECES  # the pieces done are kept

    before = len(standin.requests)
    assert run_fetch(standin, archive, "1", *SPLIT) == 0
    assert blob_file(archive, model).read_bytes() == model
    again = [r.headers.get("Range") for r in standin.requests[before:] if r.host == "cdn"]
    assert sorted(h or "" for h in again) == left


def test_concurrency_times_split_bounds_the_connections(
    standin: StandIn, archive: Path, model: bytes
) -> None:
    """Two large files with --concurrency 1 --split 2: one file at a time, two
    connections for it, so never more than two requests at once."""
    other = os.urandom(SIZE)
    standin.add_tune(2, [standin.add_file("other", other)], [])
    split_two = ("--split", "2", "--split-threshold", "8M", "--concurrency", "1")
    assert run_fetch(standin, archive, "1", "2", *split_two) == 0
    assert standin.max_in_flight <= 2
    assert blob_file(archive, model).read_bytes() == model
    assert blob_file(archive, other).read_bytes() == other


def test_file_changed_between_ranges_starts_over(
    standin: StandIn, archive: Path, model: bytes
) -> None:
    """If-Range on every span: a file that changed mid-download is fetched again from the start."""
    standin.range_faults[("model", SPAN)] = [Replace(os.urandom(SIZE))]
    assert run_fetch(standin, archive, "1", *SPLIT) == 0
    [entry] = check_manifest(archive / "manifests" / "1.json")["assets"]
    assert blob_file(archive, model).read_bytes() == model  # never a mix of two versions
    assert ranges_asked(standin)[-1] is None
    assert entry["size"] == SIZE


def test_a_range_sent_compressed_fails_the_asset(
    standin: StandIn, archive: Path, model: bytes
) -> None:
    """A piece answered 206 with the right range and validator but gzipped (asked for
    as it is): its bytes are not the file's, so the file fails and no blob is made."""
    start, end = 3 * SPAN, 4 * SPAN
    headers = {"ETag": '"' + hashlib.sha256(model).hexdigest()[:32] + '"',
               "Content-Range": f"bytes {start}-{end - 1}/{SIZE}", "Content-Encoding": "gzip"}
    standin.range_faults[("model", start)] = [
        Status(206, headers, gzip.compress(model[start:end]))] * 6
    assert run_fetch(standin, archive, "1", *SPLIT) == 1
    [entry] = check_manifest(archive / "manifests" / "1.json")["assets"]
    assert entry["status"] == "failed"
    assert "encoded (gzip)" in entry["error"]
    assert not blob_file(archive, model).exists()


def test_a_piece_refused_as_past_the_end_starts_the_file_over(
    standin: StandIn, archive: Path, model: bytes
) -> None:
    """A kept split partial whose pieces the host now answers 416 (the file shrank upstream,
    and the host checks Range before If-Range): the file starts over in one stream, as a
    416 to a single stream does. It failed for good with HTTP 416, every run after, and
    the new version was never archived while the host served it."""
    standin.range_faults[("model", 3 * SPAN)] = [Status(500)] * 6
    assert run_fetch(standin, archive, "1", *SPLIT) == 1
    [sidecar] = (archive / "tmp").glob("*.json")
    left = [pos for _, pos, end in json.loads(sidecar.read_text())["spans"] if pos < end]
    shorter = os.urandom(SIZE // 2)
    standin.files["model"] = shorter
    for pos in left:
        standin.range_faults[("model", pos)] = [
            Status(416, {"Content-Range": f"bytes */{len(shorter)}"})]
    assert run_fetch(standin, archive, "1", *SPLIT) == 0
    [entry] = check_manifest(archive / "manifests" / "1.json")["assets"]
    assert entry["sha256"] == hashlib.sha256(shorter).hexdigest()
    assert blob_file(archive, shorter).read_bytes() == shorter


def test_pieces_refused_and_failed_at_once_start_the_file_over(
    standin: StandIn, archive: Path, model: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four pieces answered in the same moment, two with the whole file (ranges refused)
    and two with 404: the file starts over in one stream, as when the refusal comes
    alone. Both errors reached the task group together and left it as an
    ExceptionGroup: the file failed as an "internal error", its piece never retried."""
    standin.range_faults[("model", 0)] = [IgnoreRange()]
    standin.range_faults[("model", SPAN)] = [Status(404)]
    standin.range_faults[("model", 2 * SPAN)] = [IgnoreRange()]
    standin.range_faults[("model", 3 * SPAN)] = [Status(404)]
    real_get = range_pieces.get
    answered: list[object] = []
    together = asyncio.Event()  # set once the four answers are in: all go on in one step

    @contextlib.asynccontextmanager
    async def at_once(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with real_get(*args, **kwargs) as response:
            answered.append(response)
            if len(answered) == 4:
                together.set()
            await together.wait()
            yield response

    monkeypatch.setattr(range_pieces, "get", at_once)
    assert run_fetch(standin, archive, "1", *SPLIT) == 0
    assert blob_file(archive, model).read_bytes() == model
    assert ranges_asked(standin)[-1] is None  # the last request: the whole file, at once
