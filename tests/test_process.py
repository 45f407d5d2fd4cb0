"""The real command in a subprocess: killed, interrupted, and run twice at once."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.archive_helpers import add_tune
from tests.conftest import check_manifest
from tests.helpers import blob_file, run_fetch, stored_blobs
from tests.standin import Stall, StandIn
from tests.test_honest import misplace

MiB = 2**20
DAY = timedelta(days=1)


def start_fetch(standin: StandIn, archive: Path, *ids: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ASTRIA_API_KEY": standin.api_key}
    command = [sys.executable, "-m", "tune_archiver", "fetch", *ids, "--archive", str(archive),
               "--api-url", standin.api_url, "-q"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(process: subprocess.Popen[str]) -> int:
    """Wait for the process, closing its pipes; its exit code."""
    process.communicate(timeout=60)
    return process.returncode


def wait_until(condition: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Poll a condition the test cannot be told about (bytes reaching another process's disk)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def partial_size(archive: Path) -> int:
    parts = list((archive / "tmp").glob("*.part")) if (archive / "tmp").exists() else []
    return parts[0].stat().st_size if parts else 0


def stalled_tune(standin: StandIn) -> bytes:
    """A 4 MiB checkpoint whose first answer sends 3 MiB and then goes silent."""
    data = os.urandom(4 * MiB)
    standin.add_tune(1, [standin.add_file("model", data)], [])
    standin.faults["model"] = [Stall(3 * MiB)]
    return data


def test_killed_run_is_resumed_by_the_next(standin: StandIn, tmp_path: Path) -> None:
    """After SIGKILL mid-download, the next fetch asks for Range from the kept offset."""
    archive = tmp_path / "archive"
    data = stalled_tune(standin)
    process = start_fetch(standin, archive, "1")
    wait_until(lambda: partial_size(archive) > 0, "bytes on disk")
    process.kill()
    process.communicate()
    kept = partial_size(archive)
    assert kept > 0
    rerun = start_fetch(standin, archive, "1")
    assert finish(rerun) == 0
    last = standin.seen("cdn", "/files/model")[-1]
    assert last.headers["Range"] == f"bytes={kept}-"
    assert blob_file(archive, data).read_bytes() == data
    assert check_manifest(archive / "manifests" / "1.json")["complete"] is True


def recorded_pieces(archive: Path) -> int:
    """Pieces of a split partial its sidecar records as received."""
    sidecars = list((archive / "tmp").glob("*.json")) if (archive / "tmp").exists() else []
    try:
        spans = json.loads(sidecars[0].read_text()).get("spans") if sidecars else None
    except (OSError, ValueError):  # being replaced this very moment
        return 0
    return sum(pos == end for _, pos, end in spans or [])


def test_a_split_download_killed_resumes_every_piece_where_it_was(
    standin: StandIn, tmp_path: Path
) -> None:
    """SIGKILL (no close to record anything) mid split download: the next run asks
    again only for the piece that was still coming, not for the pieces received."""
    archive = tmp_path / "archive"
    data = os.urandom(24 * MiB)  # --split 2: eight pieces of 3 MiB
    standin.add_tune(1, [standin.add_file("model", data)], [])
    standin.range_faults[("model", 6 * MiB)] = [Stall()]  # the third piece never comes
    process = start_fetch(standin, archive, "1", "--split", "2", "--split-threshold", "4MiB")
    wait_until(lambda: recorded_pieces(archive) == 7, "every other piece recorded")
    process.kill()
    process.communicate()
    asked = len(standin.seen("cdn", "/files/model"))
    assert finish(start_fetch(standin, archive, "1")) == 0
    again = [r.headers.get("Range") for r in standin.seen("cdn", "/files/model")[asked:]]
    assert again == [f"bytes={6 * MiB}-{9 * MiB - 1}"]
    assert blob_file(archive, data).read_bytes() == data
    assert list((archive / "tmp").iterdir()) == []


@pytest.mark.parametrize(("signum", "code"), [
    (signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_stops_within_two_seconds_keeping_the_partial(
    standin: StandIn, tmp_path: Path, signum: int, code: int
) -> None:
    """SIGINT/SIGTERM/SIGHUP: exit 130/143/129 promptly, partial kept, no blob, no
    manifest, undone named."""
    archive = tmp_path / "archive"
    stalled_tune(standin)
    process = start_fetch(standin, archive, "1")
    wait_until(lambda: partial_size(archive) > 0, "bytes on disk")
    process.send_signal(signum)
    _, err = process.communicate(timeout=2)
    assert process.returncode == code
    assert "not finished: 1" in err
    assert "Traceback" not in err
    assert stored_blobs(archive) == []
    assert not (archive / "manifests" / "1.json").exists()
    assert sorted(p.suffix for p in (archive / "tmp").iterdir()) == [".json", ".part"]


def test_two_fetches_at_once_share_an_archive(standin: StandIn, tmp_path: Path) -> None:
    """Two processes fetching overlapping tunes into one archive both succeed, intact."""
    archive = tmp_path / "archive"
    shared = [standin.add_file(f"shared-{i}", os.urandom(300_000)) for i in range(6)]
    standin.add_tune(1, [standin.add_file("m1", os.urandom(2 * MiB))], shared)
    standin.add_tune(2, [standin.add_file("m2", os.urandom(2 * MiB))], shared)
    first = start_fetch(standin, archive, "1", "2")
    second = start_fetch(standin, archive, "2", "1")
    assert finish(first) == 0
    assert finish(second) == 0
    assert len(stored_blobs(archive)) == len(standin.files)
    for path in stored_blobs(archive):
        assert blob_file(archive, path.read_bytes()) == path
    for tune_id in (1, 2):
        assert check_manifest(archive / "manifests" / f"{tune_id}.json")["complete"] is True
    assert list((archive / "tmp").iterdir()) == []


def test_a_low_soft_limit_on_open_files_fails_no_download(
    standin: StandIn, tmp_path: Path
) -> None:
    """Started with a soft limit of 32 open files (macOS gives 256, a wrapper may give
    less) and a hard limit far above, a fetch of three tunes of 71 files at the default
    concurrency failed nearly all of them with 'Too many open files', exit 1 (at 64,
    some, run by run): the machine allowed more, and the program did not ask for it."""
    import resource

    for tune in (1, 2, 3):
        standin.add_tune(tune, [standin.add_file(f"ckpt-{tune}", os.urandom(100_000))],
                         [standin.add_file(f"img-{tune}-{n}", os.urandom(5_000 + n))
                          for n in range(70)])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"the hard limit on open files here is {hard}")
    archive = tmp_path / "archive"
    env = {**os.environ, "ASTRIA_API_KEY": standin.api_key}
    run = subprocess.run(
        [sys.executable, "-m", "tune_archiver", "fetch", "1", "2", "3", "--archive",
         str(archive), "--api-url", standin.api_url, "-q"],
        env=env, capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard)),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(stored_blobs(archive)) == 3 * 71


def fetch_under_hard_limit(
    standin: StandIn, archive: Path, limit: int, tunes: int
) -> subprocess.CompletedProcess[str]:
    import resource

    env = {**os.environ, "ASTRIA_API_KEY": standin.api_key}
    return subprocess.run(
        [sys.executable, "-m", "tune_archiver", "fetch", *map(str, range(1, tunes + 1)),
         "--archive", str(archive), "--api-url", standin.api_url],
        env=env, capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    )


def test_a_hard_limit_of_64_open_files_fails_no_download(
    standin: StandIn, tmp_path: Path
) -> None:
    """At a hard limit of 64 open files, a fetch of 60 tunes at the default --concurrency
    failed some files with 'Too many open files', exit 1 (16 slots of 4 partials, the
    tunes in flight, the connections): --concurrency is lowered to fit, said once."""
    if (os.cpu_count() or 1) > 24:  # 1 descriptor a worker thread: 64 holds no slot there
        pytest.skip(f"{os.cpu_count()} cores: 64 open files are below the minimum here")
    for tune in range(1, 61):
        standin.add_tune(tune, [standin.add_file(f"ckpt-{tune}", os.urandom(20_000))],
                         [standin.add_file(f"img-{tune}-{n}", os.urandom(500 + n))
                          for n in range(5)])
    archive = tmp_path / "archive"
    run = fetch_under_hard_limit(standin, archive, 64, 60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(stored_blobs(archive)) == 60 * 6
    assert the_lowering(run).startswith("tune-archiver: warning: the limit on open files is "
                                        "64 (ulimit -n): lowered --concurrency from 16 to ")


def the_lowering(run: subprocess.CompletedProcess[str]) -> str:
    """The one line of a run saying what the limit on open files lowered."""
    [line] = [line for line in run.stderr.splitlines() if "limit on open files" in line]
    return line


def test_a_hard_limit_too_low_for_one_download_is_a_usage_error(
    standin: StandIn, tmp_path: Path
) -> None:
    """Below what one download needs, the run stops before it starts: one line, exit 2,
    not a 'Too many open files' for each tune's lock or file."""
    standin.add_tune(1, [standin.add_file("ckpt", os.urandom(20_000))], [])
    run = fetch_under_hard_limit(standin, tmp_path / "archive", 24, 1)
    assert run.returncode == 2
    assert run.stderr.startswith("tune-archiver: error: the limit on open files is 24, "
                                 "and a run needs at least ")
    assert len(run.stderr.splitlines()) == 1
    assert not (tmp_path / "archive").exists()


def test_a_concurrency_past_4096_open_files_is_kept_where_the_hard_limit_allows(
    standin: StandIn, tmp_path: Path
) -> None:
    """--concurrency 300 needs more than the 4,096 open files the soft limit is raised
    to as the program starts: where the hard limit allows them, the soft one is raised
    as far as it needs, not the concurrency lowered."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 8192:
        pytest.skip(f"the hard limit on open files here is {hard}")
    standin.add_tune(1, [standin.add_file("ckpt", os.urandom(20_000))], [])
    env = {**os.environ, "ASTRIA_API_KEY": standin.api_key}
    run = subprocess.run(
        [sys.executable, "-m", "tune_archiver", "fetch", "1", "--archive",
         str(tmp_path / "archive"), "--api-url", standin.api_url, "--concurrency", "300"],
        env=env, capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "limit on open files" not in run.stderr


def test_retrain_under_a_hard_limit_too_low_for_a_download_is_not_refused(
    standin: StandIn, tmp_path: Path
) -> None:
    """retrain downloads nothing (one POST of the archived photos): the fit of
    --concurrency to the limit on open files made it warn that --concurrency 16 --split
    8 were lowered at a hard limit of 64, and refuse it, exit 2, at 40, where it ran."""
    import resource

    archive = tmp_path / "archive"
    standin.add_tune(5, [], [standin.add_file("img", b"\xff\xd8\xff" + os.urandom(900))],
                     model_type="faceid", title="Jane", base_tune_id=1504944)
    assert run_fetch(standin, archive, "5") == 0
    for limit in (64, 40):
        run = subprocess.run(
            [sys.executable, "-m", "tune_archiver", "retrain", "5", "--yes", "--archive",
             str(archive), "--api-url", standin.api_url, "--title", f"Jane {limit}"],
            env={**os.environ, "ASTRIA_API_KEY": standin.api_key}, capture_output=True,
            text=True, timeout=120,
            preexec_fn=lambda at=limit: resource.setrlimit(resource.RLIMIT_NOFILE, (at, at)),
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert "limit on open files" not in run.stderr
    assert [fields["tune[title]"] for fields, _ in standin.created] == ["Jane 64", "Jane 40"]


def test_a_concurrency_past_the_hard_limit_is_lowered_to_the_hard_limit_not_4096(
    standin: StandIn, tmp_path: Path
) -> None:
    """--concurrency 1000 needs more than a hard limit of 8,000 open files holds: the
    soft limit stayed at the 4,096 the program starts with, and --concurrency was lowered
    to 270, what 4,096 hold, with a warning naming 4,096 as the limit, where 8,000 hold
    531. The soft limit is raised to the hard one, and the rest lowered to fit that."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 8000:
        pytest.skip(f"the hard limit on open files here is {hard}")
    standin.add_tune(1, [standin.add_file("ckpt", os.urandom(20_000))], [])
    run = subprocess.run(
        [sys.executable, "-m", "tune_archiver", "fetch", "1", "--archive",
         str(tmp_path / "archive"), "--api-url", standin.api_url, "--concurrency", "1000"],
        env={**os.environ, "ASTRIA_API_KEY": standin.api_key}, capture_output=True,
        text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 8000)),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert the_lowering(run).startswith("tune-archiver: warning: the limit on open files is "
                                        "8000 (ulimit -n): lowered --concurrency from 1000 to ")


def test_a_hard_limit_of_64_on_many_cores_lowers_concurrency_not_refuses_the_run(
    standin: StandIn, tmp_path: Path
) -> None:
    """On 28 cores or more, asyncio's executor has 32 worker threads, and each was
    counted an open file whatever --concurrency: one slot 'needed' 68, so at a hard
    limit of 64 every fetch stopped, exit 2, even at --concurrency 2, which ran there.
    Only the threads the slots can keep busy are counted: --concurrency is lowered."""
    import resource

    for tune in range(1, 11):
        standin.add_tune(tune, [standin.add_file(f"ckpt-{tune}", os.urandom(20_000))],
                         [standin.add_file(f"img-{tune}-{n}", os.urandom(500 + n))
                          for n in range(3)])
    archive = tmp_path / "archive"
    program = ("import os, sys; os.cpu_count = lambda: 32; sys.argv[0] = 'tune-archiver'; "
               "from tune_archiver.cli.main import entry; raise SystemExit(entry())")
    run = subprocess.run(
        [sys.executable, "-c", program, "fetch", *map(str, range(1, 11)), "--archive",
         str(archive), "--api-url", standin.api_url, "--concurrency", "2"],
        env={**os.environ, "ASTRIA_API_KEY": standin.api_key}, capture_output=True,
        text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(stored_blobs(archive)) == 10 * 4
    assert "Too many open files" not in run.stderr
    assert "(ulimit -n): lowered --concurrency from 2 to 1 to fit it" in run.stderr


def test_verify_repair_under_a_low_limit_on_open_files_warns_only_when_it_fetches(
    standin: StandIn, tmp_path: Path
) -> None:
    """verify --repair of a whole archive downloads nothing: at a hard limit of 64 every
    cron run warned that --concurrency 16 --split 8 were lowered, and at 40 it stopped,
    exit 2, before verifying. The fit is made once a blob is found to fetch again."""
    import resource

    archive = tmp_path / "archive"
    data = os.urandom(20_000)
    standin.add_tune(1, [standin.add_file("ckpt", data)], [])
    assert run_fetch(standin, archive, "1") == 0

    def repair(limit: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tune_archiver", "verify", "--repair", "--archive",
             str(archive), "--api-url", standin.api_url],
            env={**os.environ, "ASTRIA_API_KEY": standin.api_key}, capture_output=True,
            text=True, timeout=120,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
        )

    for limit in (64, 40):
        run = repair(limit)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stderr == ""
    blob = blob_file(archive, data)
    blob.chmod(0o600)
    blob.write_bytes(b"rot" + data[3:])
    run = repair(64)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "the limit on open files is 64" in run.stderr
    assert "--split" not in run.stderr  # verify has none: only what was lowered is named
    assert blob.read_bytes() == data


def test_verify_repair_stopped_by_the_limit_on_open_files_says_what_it_found(
    standin: StandIn, tmp_path: Path
) -> None:
    """verify --repair that found a damaged blob, then could not fit one download under a
    limit of 40 open files, printed only the limit's line: the operator never learned
    which tune was damaged. Then it said what verify found and stopped there, exit 2,
    making no repair at all: tune 2's whole blob, found at a wrong place, was never put
    back though that needs no download (nor tune 1's rotted one set aside), run after
    run while the limit stayed. Every repair that downloads nothing is made; what was
    not repaired is named, then the limit's line, exit 2."""
    import resource

    archive = tmp_path / "archive"
    data, other = os.urandom(20_000), os.urandom(30_000)
    standin.add_tune(1, [standin.add_file("ckpt", data)], [])
    standin.add_tune(2, [standin.add_file("ckpt2", other)], [])
    assert run_fetch(standin, archive, "1", "2") == 0
    blob = blob_file(archive, data)
    blob.chmod(0o600)
    blob.write_bytes(b"rot" + data[3:])
    misplace(archive, other)

    def repair(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tune_archiver", "verify", "--repair", "--archive",
             str(archive), "--api-url", standin.api_url, *extra],
            env={**os.environ, "ASTRIA_API_KEY": standin.api_key}, capture_output=True,
            text=True, timeout=120,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)),
        )

    run = repair()
    assert run.returncode == 2, run.stderr[-2000:]
    problem = run.stderr.index("not repaired: tune 1: checkpoint 0: missing")
    assert problem < run.stderr.index("the limit on open files is 40")
    assert "verified 2 tunes, 2 blobs" in run.stdout
    assert "2 problems" in run.stdout
    assert blob_file(archive, other).read_bytes() == other  # put back
    assert not blob.exists()  # set aside, for the run the limit lets fetch it
    [aside] = (archive / "tmp" / "damaged").iterdir()
    assert aside.read_bytes() == b"rot" + data[3:]
    document = json.loads(repair("--json").stdout)
    assert document["ok"] is False
    assert "the limit on open files is 40" in document["error"]
    assert [p["problem"] for p in document["problems"]] == ["missing"]
    assert [p["tune_id"] for p in document["repair"]["after"]["problems"]] == [1]


def test_verify_repair_that_downloads_nothing_is_not_fitted_to_open_files(
    standin: StandIn, tmp_path: Path
) -> None:
    """An archive with a damaged manifest (which no repair touches) and another tune's
    entry to mend in its manifest: verify --repair fetches nothing, yet it warned at a
    hard limit of 64 that --concurrency was lowered, each cron run, and at 40 stopped,
    exit 2, the entry unmended. The fit is made only when a tune is fetched again."""
    import resource

    archive = tmp_path / "archive"
    standin.add_tune(1, [standin.add_file("one", os.urandom(20_000))], [])
    standin.add_tune(2, [standin.add_file("two", os.urandom(20_000))], [])
    assert run_fetch(standin, archive, "1", "2") == 0
    (archive / "manifests" / "1.json").write_bytes(b"{broken")
    path = archive / "manifests" / "2.json"
    document = json.loads(path.read_text())
    document["assets"][0]["path"] = "objects/elsewhere"
    path.write_text(json.dumps(document))

    def repair(limit: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tune_archiver", "verify", "--repair", "--archive",
             str(archive), "--api-url", standin.api_url, "2", "1"],
            env={**os.environ, "ASTRIA_API_KEY": standin.api_key}, capture_output=True,
            text=True, timeout=120,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
        )

    for limit in (64, 40):
        run = repair(limit)
        assert run.returncode == 1, run.stderr[-2000:]  # the damaged manifest, said
        assert "limit on open files" not in run.stderr
        assert "tune 1" in run.stderr
    assert json.loads(path.read_text())["assets"][0]["path"].startswith("objects/sha256/")


def test_a_dry_run_under_a_hard_limit_too_low_for_a_download_is_not_refused(
    standin: StandIn, tmp_path: Path
) -> None:
    """fetch --dry-run downloads nothing (it asks each file's size, one connection a
    slot): fitted to the limit on open files as a download is, it was refused at a hard
    limit of 40 (exit 2, nothing previewed) and warned of --split lowered at 64."""
    import resource

    standin.add_tune(1, [standin.add_file("ckpt", os.urandom(20_000))],
                     [standin.add_file(f"img-{n}", os.urandom(500 + n)) for n in range(20)])
    for limit in (64, 40):
        run = subprocess.run(
            [sys.executable, "-m", "tune_archiver", "fetch", "1", "--dry-run", "--archive",
             str(tmp_path / "archive"), "--api-url", standin.api_url],
            env={**os.environ, "ASTRIA_API_KEY": standin.api_key}, capture_output=True,
            text=True, timeout=120,
            preexec_fn=lambda at=limit: resource.setrlimit(resource.RLIMIT_NOFILE, (at, at)),
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert "would download 21 files" in run.stdout
        assert "connections" not in run.stderr  # it has none to lower
    assert not (tmp_path / "archive").exists()


_KILLED_SETTING_ASIDE = """
import os, signal, sys
from tune_archiver.cli.main import main

unlink = os.unlink
def killed_before_the_unlink(path, *, dir_fd=None):
    if path == "1.json" and dir_fd is not None:  # linked into manifests/damaged/ already
        os.kill(os.getpid(), signal.SIGKILL)
    unlink(path, dir_fd=dir_fd)
os.unlink = killed_before_the_unlink
sys.exit(main(sys.argv[1:]))
"""


def a_fetch_killed_setting_aside(standin: StandIn, archive: Path, script: str) -> bytes:
    """Tune 1 archived, its manifest then damaged, and a fetch (`script`) killed while
    it set that manifest aside: the damaged bytes."""
    add_tune(standin, 1)
    assert run_fetch(standin, archive, "1") == 0
    damaged = b'{"schema_version": 1, "tune_id": 1, "assets": 5}'
    (archive / "manifests" / "1.json").write_bytes(damaged)
    env = {**os.environ, "ASTRIA_API_KEY": standin.api_key}
    killed = subprocess.run([sys.executable, "-c", script, "fetch", "1",
                             "--archive", str(archive), "--api-url", standin.api_url],
                            env=env, capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return damaged


def test_a_damaged_manifest_a_killed_fetch_linked_aside_is_set_aside_once(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SIGKILL met the fetch setting an unreadable manifest aside between its link into
    manifests/damaged/ and the unlink of manifests/1.json: the next fetch linked it aside
    again under its own time, two copies of one manifest in manifests/damaged/ to look
    at. It now finishes the move the killed run began: one copy, under its first name."""
    archive = tmp_path / "archive"
    damaged = a_fetch_killed_setting_aside(standin, archive, _KILLED_SETTING_ASIDE)
    aside = archive / "manifests" / "damaged"
    [first] = list(aside.iterdir())
    assert (archive / "manifests" / "1.json").read_bytes() == damaged
    capsys.readouterr()
    assert run_fetch(standin, archive, "1", clock=lambda: datetime.now(UTC) + DAY) == 1
    assert f"set aside as manifests/damaged/{first.name};" in capsys.readouterr().err
    assert [(p.name, p.read_bytes()) for p in aside.iterdir()] == [(first.name, damaged)]
    assert not (archive / "manifests" / "1.json").exists()
    assert run_fetch(standin, archive, "1") == 0


_KILLED_CLAIMING_ASIDE = """
import errno, os, signal, sys
from tune_archiver.cli.main import main

def no_link(*args, **kwargs):
    raise OSError(errno.EPERM, os.strerror(errno.EPERM))
rename = os.rename
def killed_before_the_rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
    if src == "1.json":  # its name in manifests/damaged/ claimed already
        os.kill(os.getpid(), signal.SIGKILL)
    rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
os.link, os.rename = no_link, killed_before_the_rename
sys.exit(main(sys.argv[1:]))
"""


def test_the_empty_claim_a_fetch_killed_setting_aside_left_is_taken_over(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without hard links (exFAT, FAT) a damaged manifest's name in manifests/damaged/ is
    claimed, an empty file, before the manifest is renamed over it: a SIGKILL between
    the two left the claim, and the next fetch set the manifest aside under a name of
    its own, so the empty file stayed for good, named by verify as a manifest set aside
    and stopping gc until removed by hand. The next set-aside now renames over it."""
    archive = tmp_path / "archive"
    damaged = a_fetch_killed_setting_aside(standin, archive, _KILLED_CLAIMING_ASIDE)
    aside = archive / "manifests" / "damaged"
    [claim] = list(aside.iterdir())
    assert claim.read_bytes() == b""

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_link)
    capsys.readouterr()
    assert run_fetch(standin, archive, "1", clock=lambda: datetime.now(UTC) + DAY) == 1
    assert f"set aside as manifests/damaged/{claim.name};" in capsys.readouterr().err
    assert [(p.name, p.read_bytes()) for p in aside.iterdir()] == [(claim.name, damaged)]
    assert not (archive / "manifests" / "1.json").exists()
