"""Unattended runs: what the tool says (stderr, --json, --log-file, exit codes) when a
run meets trouble of its own, checked against README's promises."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from tests.conftest import check_manifest
from tests.standin import StandIn
from tests.test_fetch import make_tune

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
