"""Unattended runs: what the tool says (stderr, --json, --log-file, exit codes) when a
run meets trouble of its own, checked against README's promises."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import check_manifest
from tests.helpers import run_fetch
from tests.standin import StandIn
from tests.test_fetch import make_tune
from tune_archiver.cli.main import main
from tune_archiver.errors import storage_error

MiB = 2**20


def test_a_log_file_that_cannot_be_written_is_one_warning_and_the_run_goes_on(
    standin: StandIn, tmp_path: Path
) -> None:
    """A --log-file whose disk is full (here: the file-size limit reached, EFBIG) is one
    warning line on stderr, never a "--- Logging error ---" traceback per event nor a
    crash at exit: the backup is archived, --json is one document and the exit code 0."""
    make_tune(standin, 1, images=1)
    log = tmp_path / "run.jsonl"
    log.write_bytes(b"\n" * MiB)  # every further byte is refused
    log.chmod(0o600)

    def file_size_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB))

    env = {**os.environ, "ASTRIA_API_KEY": standin.api_key}
    done = subprocess.run(
        [sys.executable, "-m", "tune_archiver", "fetch", "1", "--archive",
         str(tmp_path / "a"), "--api-url", standin.api_url, "--log-file", str(log), "--json"],
        env=env, capture_output=True, text=True, timeout=60, preexec_fn=file_size_limit,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "Logging error" not in done.stderr
    assert done.stderr.splitlines() == [
        f"tune-archiver: warning: cannot write the log file {log}: File too large; "
        "the run goes on without it"]
    assert json.loads(done.stdout)["ok"] is True
    assert check_manifest(tmp_path / "a" / "manifests" / "1.json")["complete"] is True


def test_a_log_line_a_full_disk_cut_short_is_not_glued_to_the_next_runs_first(
    standin: StandIn, tmp_path: Path
) -> None:
    """A disk that filled (here: ulimit -f reached) in the middle of a log line left half a
    line; the next run, space freed, appended its run_start to it: one line no JSON parser
    reads (jq stops there) and a log collector drops, the run's start lost. The next run
    starts on a line of its own, every line of its parsing."""
    make_tune(standin, 1, images=1)
    log = tmp_path / "run.jsonl"
    log.write_bytes(b"\n" * (MiB - 40))  # room for 40 bytes of the run_start line
    log.chmod(0o600)
    argv = ("fetch", "1", "--archive", str(tmp_path / "a"), "--api-url", standin.api_url,
            "--log-file", str(log))
    env = {"ASTRIA_API_KEY": standin.api_key}
    assert limited_run(*argv, env=env).returncode == 0
    assert log.stat().st_size == MiB  # half a line, then the limit
    done = subprocess.run([sys.executable, "-m", "tune_archiver", *argv],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    cut, *lines = log.read_bytes()[MiB - 40:].decode().splitlines()
    assert cut.startswith('{"time"')
    assert len(cut) == 40  # ended there, on a line of its own
    events = [json.loads(line) for line in lines]
    assert (events[0]["event"], events[-1]["event"]) == ("run_start", "run_end")


def limited_run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`tune-archiver ARGV` in a process whose file-size limit (ulimit -f) is 1 MiB."""
    return subprocess.run(
        [sys.executable, "-m", "tune_archiver", *argv], env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB)))


def test_a_checkpoint_past_the_file_size_limit_is_refused_before_its_download(
    standin: StandIn, tmp_path: Path
) -> None:
    """A checkpoint larger than the process's file-size limit (ulimit -f; FAT32's 4 GiB is
    the other) failed, each run, with 'cannot write a download in ...: File too large'
    after downloading up to the limit: no cause, nothing to do, the same bytes fetched
    again every night. Its announced size is compared with the limit first: one line
    naming the limit and what to do, nothing downloaded, the other files archived."""
    make_tune(standin, 1, images=1, ckpt=os.urandom(3 * MiB))
    archive = tmp_path / "a"
    done = limited_run("fetch", "1", "--archive", str(archive), "--api-url", standin.api_url,
                       env={"ASTRIA_API_KEY": standin.api_key})
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if "checkpoint 0" in line]
    assert line.endswith(f"checkpoint 0: file too large for {archive}: {3 * MiB} bytes, past "
                         f"this process's file-size limit (ulimit -f) of {MiB} bytes; raise "
                         "it (ulimit -f unlimited); nothing was downloaded")
    assert [path.stat().st_size for path in (archive / "tmp").rglob("*")
            if path.is_file() and path.stat().st_size] == []
    assert check_manifest(archive / "manifests" / "1.json")["assets"][1]["status"] == "ok"


def test_an_export_past_the_file_size_limit_says_the_cause(
    standin: StandIn, tmp_path: Path
) -> None:
    """An export of a checkpoint past the file-size limit (a 5 GB one to a FAT32 stick;
    here the process's limit, ulimit -f) copied, or read from S3, bytes up to the limit,
    then failed with 'File too large': its size is compared with the limit first, and
    the line names it and what to do; with --link (no bytes written) it is linked."""
    make_tune(standin, 1, images=1, ckpt=os.urandom(3 * MiB))
    archive = tmp_path / "a"
    assert run_fetch(standin, archive, "1") == 0
    done = limited_run("export", "1", str(tmp_path / "out"), "--archive", str(archive))
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    folder = tmp_path / "out" / "1-tune-1"
    assert line == (f"tune-archiver: error: tune 1: checkpoint 0: cannot write 000.bin in "
                    f"{folder}/checkpoints: {3 * MiB} bytes, past this process's file-size "
                    f"limit (ulimit -f) of {MiB} bytes; raise it (ulimit -f unlimited); "
                    "nothing was written")
    assert list((folder / "checkpoints").iterdir()) == []
    done = limited_run("export", "1", str(tmp_path / "linked"), "--link", "--archive",
                       str(archive))
    assert (done.returncode, done.stderr) == (0, "")


def test_an_export_at_the_top_of_its_folder_past_fat32s_limit_is_no_traceback(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint past FAT32's 4 GiB (a full SDXL one, ~6.5 GB) exported with --layout
    diffusers goes at the top of the tune's folder, written through /proc/self/fd/N: the
    filesystem's look-up (O_NOFOLLOW) refused that link, and export stopped on a
    NotADirectoryError traceback. Here the 4 GiB is 1 KiB, so a 1 MiB one is past it."""
    monkeypatch.setattr("tune_archiver.safefs.FAT_MAX", 1024)
    make_tune(standin, 1, images=1, ckpt=os.urandom(MiB))
    archive = tmp_path / "a"
    assert run_fetch(standin, archive, "1") == 0
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["export", "1", str(out), "--archive", str(archive), "--layout",
                 "diffusers"]) == 0
    assert capsys.readouterr().err == ""
    assert (out / "1-tune-1" / "pytorch_lora_weights.bin").stat().st_size == MiB


def test_an_export_with_link_to_another_disk_past_the_file_size_limit_copies_nothing(
    standin: StandIn, tmp_path: Path
) -> None:
    """export --link to another filesystem (the README's `export ID /mnt/usb --link`)
    has no hard link to make and copies: a checkpoint past the limit (ulimit -f here,
    FAT32's 4 GiB on the stick) was copied up to it, then failed 'File too large'. It is
    refused by its size before the copy, as without --link; on one filesystem it is
    linked, as before."""
    other = Path("/dev/shm")
    if not os.access(other, os.W_OK) or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no writable filesystem apart from the tests' (/dev/shm)")
    make_tune(standin, 1, images=1, ckpt=os.urandom(3 * MiB))
    archive = tmp_path / "a"
    assert run_fetch(standin, archive, "1") == 0
    with tempfile.TemporaryDirectory(dir=other) as dest:
        done = limited_run("export", "1", dest, "--link", "--archive", str(archive))
        assert done.returncode == 1, done.stderr
        folder = Path(dest) / "1-tune-1"
        assert done.stderr == (
            f"tune-archiver: error: tune 1: checkpoint 0: cannot write 000.bin in "
            f"{folder}/checkpoints: {3 * MiB} bytes, past this process's file-size limit "
            f"(ulimit -f) of {MiB} bytes; raise it (ulimit -f unlimited); nothing was "
            "written\n")
        assert list((folder / "checkpoints").iterdir()) == []


def test_a_write_refused_efbig_says_the_cause(tmp_path: Path) -> None:
    """A write past a size limit not told ahead (a file whose size no header announced)
    names the limit and what to do, not only 'File too large'."""
    error = storage_error(OSError(errno.EFBIG, "File too large"), tmp_path, "write x")
    assert str(error) == (
        f"cannot write x in {tmp_path}: file too large: a file there may hold no more: the "
        "filesystem's limit (FAT32 holds at most 4 GiB a file; exFAT, NTFS and ext4 far "
        "more) or this process's file-size limit (ulimit -f); use another filesystem or "
        "raise the limit")


@pytest.mark.parametrize("command", [["gc"], ["forget", "1"], ["gc", "--dry-run"]])
def test_a_command_stopped_by_sigterm_says_so_on_stderr_and_in_the_log(
    standin: StandIn, tmp_path: Path, command: list[str]
) -> None:
    """gc or forget stopped by SIGTERM (cron's timeout, here while it waits for a running
    fetch's lock) exits 143 with one line saying it was stopped, a `failure` event in
    --log-file and one --json document: not a silent 143 that looks like a crash."""
    archive = tmp_path / "archive"
    make_tune(standin, 1, images=1)
    assert run_fetch(standin, archive, "1") == 0
    log = tmp_path / "run.jsonl"
    with open(archive / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # a fetch running
        process = subprocess.Popen(
            [sys.executable, "-m", "tune_archiver", *command, "--archive", str(archive),
             "--json", "--log-file", str(log)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        assert "waiting: a fetch" in process.stderr.readline()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 143
    assert err.splitlines() == ["tune-archiver: error: stopped by SIGTERM"]
    assert json.loads(out) == {"ok": False, "interrupted": True, "signal": "SIGTERM"}
    found = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in found] == ["run_start", "warning", "failure", "run_end"]
    assert "waiting: a fetch" in str(found[1]["message"])  # why it ran so long
    assert found[-1]["exit"] == 143
    assert (archive / "manifests" / "1.json").exists()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_slow_start_ping_is_a_stopped_run(
    standin: StandIn, tmp_path: Path, signum: int, code: int
) -> None:
    """SIGTERM (cron's timeout) or Ctrl-C while the monitor holds the start ping: exit
    143/130 with the stop said, --json's document and the log's run_end; SIGTERM killed
    the process silently (no document, no run_end) and Ctrl-C printed nothing on stdout
    and claimed "the run is not affected"."""
    make_tune(standin, 1, images=1)
    log = tmp_path / "run.jsonl"
    with socket.socket() as monitor:  # takes the connection, never answers
        monitor.bind(("127.0.0.1", 0))
        monitor.listen()
        monitor.settimeout(30)
        url = f"http://127.0.0.1:{monitor.getsockname()[1]}/ping/uuid"
        process = subprocess.Popen(
            [sys.executable, "-m", "tune_archiver", "fetch", "1", "--archive",
             str(tmp_path / "a"), "--api-url", standin.api_url, "--json", "--ping-url", url,
             "--log-file", str(log)],
            env={**os.environ, "ASTRIA_API_KEY": standin.api_key},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        connection, _ = monitor.accept()
        with connection:
            assert b"GET /ping/uuid/start" in connection.recv(4096)
            process.send_signal(signum)
            told, _ = monitor.accept()  # an interrupted run pings /fail too (README)
            with told:
                assert told.recv(4096).startswith(b"POST /ping/uuid/fail")
                told.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            out, err = process.communicate(timeout=30)
    name = signal.Signals(signum).name
    assert process.returncode == code
    assert json.loads(out) == {"ok": False, "interrupted": True, "signal": name}
    assert f"tune-archiver: error: stopped by {name}" in err.splitlines()
    assert "not affected" not in err
    assert "Traceback" not in err
    found = [json.loads(line) for line in log.read_text().splitlines()]
    assert found[-1]["event"] == "run_end"
    assert found[-1]["exit"] == code
    assert not standin.seen("api")  # the run never began


def test_a_bad_ping_url_still_writes_run_start_and_run_end_to_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A TUNE_ARCHIVER_PING_URL that is not http(s) (a typo in a systemd unit) is exit 2,
    and --log-file says so as every run does, run_start then run_end with exit 2: it held
    a lone failure event, which a log watcher keyed on run_end never sees."""
    monkeypatch.setenv("TUNE_ARCHIVER_PING_URL", "ftp://hc-ping.example/uuid")
    log = tmp_path / "run.jsonl"
    assert main(["verify", "--archive", str(tmp_path / "a"), "--log-file", str(log),
                 "--json"]) == 2
    found = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in found] == ["run_start", "failure", "run_end"]
    assert found[-1]["exit"] == 2
    assert json.loads(capsys.readouterr().out) == {
        "ok": False, "error": "the ping URL must start with http:// or https://"}


@pytest.mark.parametrize("words", [["fetch", "1", "--bogus"], ["fetch", "1", "--concurrency", "0"],
                                   ["list", "--arch", "x"]])
def test_a_usage_error_under_tune_archiver_json_prints_its_json_document(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], words: list[str]
) -> None:
    """--json set as TUNE_ARCHIVER_JSON=1 (README: any option from the environment) makes
    a usage error print {"ok": false, "error": ...} as --json on the command line does:
    stdout was empty, and a script parsing it failed on nothing."""
    monkeypatch.setenv("TUNE_ARCHIVER_JSON", "1")
    assert main(words) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is False
    assert captured.err.startswith("tune-archiver: error: ")


def test_a_closed_stdout_never_stops_the_backup(standin: StandIn, tmp_path: Path) -> None:
    """stdout piped to a reader that has gone (`fetch ... | head`, a log pipe that died):
    every tune is still archived, exit 0, no traceback, the log ends with run_end; the
    first tune's summary line raised BrokenPipeError, which stopped the run with exit 1."""
    for tune_id in (1, 2, 3):
        make_tune(standin, tune_id, images=1)
    archive, log = tmp_path / "a", tmp_path / "run.jsonl"
    reader, writer = os.pipe()
    os.close(reader)
    try:
        for extra in ([], ["--json"]):
            done = subprocess.run(
                [sys.executable, "-m", "tune_archiver", "fetch", "1", "2", "3", "--archive",
                 str(archive), "--api-url", standin.api_url, "--log-file", str(log), *extra],
                env={**os.environ, "ASTRIA_API_KEY": standin.api_key}, stdout=writer,
                stderr=subprocess.PIPE, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert "Traceback" not in done.stderr
            assert "Exception ignored" not in done.stderr
        listed = subprocess.run(
            [sys.executable, "-m", "tune_archiver", "list", "--archive", str(archive)],
            stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
        assert (listed.returncode, listed.stderr) == (0, "")
    finally:
        os.close(writer)
    for tune_id in (1, 2, 3):
        assert check_manifest(archive / "manifests" / f"{tune_id}.json")["complete"] is True
    found = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["exit"] for e in found if e["event"] == "run_end"] == [0, 0]


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_a_stdout_on_a_full_disk_never_stops_the_backup(
    standin: StandIn, tmp_path: Path, extra: list[str]
) -> None:
    """stdout on a full disk (a cron line's `>> /var/log/tune-archiver.log` with /var
    full; /dev/full here): a summary line's ENOSPC stopped the run with a traceback, 18
    of 30 tunes archived, and --json's document raised it after all were. Now it is one
    warning, every tune archived, exit 0 and run_end in the log."""
    for tune_id in range(1, 31):
        make_tune(standin, tune_id, images=1)
    archive, log = tmp_path / "a", tmp_path / "run.jsonl"
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "tune_archiver", "fetch", "--all", "--archive", str(archive),
             "--api-url", standin.api_url, "--log-file", str(log), *extra],
            env={**os.environ, "ASTRIA_API_KEY": standin.api_key}, stdout=full,
            stderr=subprocess.PIPE, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "tune-archiver: warning: cannot write to "
                                              "stdout: No space left on device; the run "
                                              "goes on without it\n")
    for tune_id in range(1, 31):
        assert check_manifest(archive / "manifests" / f"{tune_id}.json")["complete"] is True
    found = [json.loads(line) for line in log.read_text().splitlines()]
    assert (found[-1]["event"], found[-1]["exit"]) == ("run_end", 0)


def test_a_stderr_whose_reader_has_gone_never_stops_the_backup(
    standin: StandIn, tmp_path: Path
) -> None:
    """stderr piped to a reader that has gone (journald restarted under the systemd
    unit, a `2>&1 | logger` that died): the first error line raised BrokenPipeError out
    of the tune's announcement, which cancelled every other tune (2 of 30 archived, no
    run_end). Now the line is lost, the rest archived, exit 1 for the one that failed."""
    for tune_id in range(1, 31):
        make_tune(standin, tune_id, images=1)
    standin.tunes[30]["orig_images"].append(standin.file_url("missing"))  # 404: its line
    archive, log = tmp_path / "a", tmp_path / "run.jsonl"
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tune_archiver", "fetch", "--all", "-q", "--retries", "0",
             "--archive", str(archive), "--api-url", standin.api_url, "--log-file", str(log)],
            env={**os.environ, "ASTRIA_API_KEY": standin.api_key}, stdout=subprocess.PIPE,
            stderr=writer, text=True, timeout=60)
    finally:
        os.close(writer)
    assert done.returncode == 1
    for tune_id in range(1, 30):
        assert check_manifest(archive / "manifests" / f"{tune_id}.json")["complete"] is True
    found = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum(1 for e in found if e["event"] == "tune_end") == 30
    assert found[-1]["event"] == "run_end"
    assert found[-1]["exit"] == 1


def test_a_stdout_that_cannot_encode_a_title_never_stops_the_backup(
    standin: StandIn, tmp_path: Path
) -> None:
    """stdout in a locale that cannot write a title's letters (ISO-8859-1 for CJK,
    PYTHONIOENCODING=ascii): the letters are shown as escapes and every tune archived,
    exit 0; the first summary line raised UnicodeEncodeError, a traceback, exit 1."""
    for tune_id in (1, 2):
        make_tune(standin, tune_id, images=1)
        standin.tunes[tune_id]["title"] = "caf\u00e9 \u65e5\u672c"
    archive = tmp_path / "a"
    for extra in ([], ["--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "tune_archiver", "fetch", "1", "2", "--archive",
             str(archive), "--api-url", standin.api_url, *extra],
            env={**os.environ, "ASTRIA_API_KEY": standin.api_key, "PYTHONIOENCODING": "ascii"},
            capture_output=True, timeout=60)
        assert (done.returncode, done.stderr) == (0, b"")
        assert b"caf\\xe9 \\u65e5\\u672c" in done.stdout or extra
    listed = subprocess.run(
        [sys.executable, "-m", "tune_archiver", "list", "--archive", str(archive)],
        env={**os.environ, "PYTHONIOENCODING": "ascii"}, capture_output=True, timeout=60)
    assert (listed.returncode, listed.stderr) == (0, b"")
    for tune_id in (1, 2):
        assert check_manifest(archive / "manifests" / f"{tune_id}.json")["complete"] is True


def test_json_in_a_locale_that_cannot_encode_a_title_is_still_json(
    standin: StandIn, tmp_path: Path
) -> None:
    """--json with stdout in ASCII (PYTHONIOENCODING=ascii, LANG=C on an old system): the
    document is one JSON document whose strings read back as the titles; stdout's
    backslashreplace wrote 'caf\\xe9', which no JSON parser reads, after exit 0."""
    make_tune(standin, 1, images=1)
    standin.tunes[1]["title"] = "caf\u00e9 \u65e5\u672c \U0001f600"
    done = subprocess.run(
        [sys.executable, "-m", "tune_archiver", "fetch", "1", "--archive",
         str(tmp_path / "a"), "--api-url", standin.api_url, "--json"],
        env={**os.environ, "ASTRIA_API_KEY": standin.api_key, "PYTHONIOENCODING": "ascii"},
        capture_output=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, b"")
    assert "caf\u00e9 \u65e5\u672c \U0001f600" in json.dumps(
        json.loads(done.stdout), ensure_ascii=False)


def test_a_closed_stderr_keeps_error_lines_out_of_the_json_on_stdout(tmp_path: Path) -> None:
    """Run with stderr closed (`2>&-`, as some wrappers start jobs), --json's stdout is the
    one document: the error line went to stdout ahead of it (print to a None stderr is
    print to stdout), and a script's json.loads failed."""
    done = subprocess.run(
        [sys.executable, "-m", "tune_archiver", "list", "--json", "--archive",
         str(tmp_path / "missing")],
        stdout=subprocess.PIPE, text=True, timeout=60, preexec_fn=lambda: os.close(2))
    assert done.returncode == 2
    assert json.loads(done.stdout)["ok"] is False
