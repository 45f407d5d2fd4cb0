"""Review of the last four commits: If-Range's Last-Modified rule, the dry run's refused
URLs, preview.py, and a stop during the imports (cli/start.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from tests.helpers import blob_file, run_fetch, stored_blobs
from tests.standin import Cut, Replace, StandIn
from tune_archiver.download import engine, ranges
from tune_archiver.net import transport

MiB = 2**20

# The script's entry with aiohttp's import held until stdin has a line; "importing" is
# said on fd 3, so stdout and stderr are the program's own.
IMPORTING = """
import os, sys
class Hold:
    def find_spec(self, name, path, target=None):
        if name == os.environ.get("HELD"):
            del os.environ["HELD"]  # once
            os.write(int(os.environ["MARKER_FD"]), b"importing\\n")
            sys.stdin.readline()
        return None
sys.meta_path.insert(0, Hold())
sys.argv[0] = "tune-archiver"
from tune_archiver.cli.start import entry
raise SystemExit(entry())
"""


def stopped_while_importing(
    tmp_path: Path, signum: int, close_stderr: bool, held: str = "aiohttp",
    args: tuple[str, ...] = ("fetch", "1"),
) -> tuple[int, str, str]:
    """Run `fetch 1 --json` with stderr closed (2>&-) or not, stop it while `held` is
    being imported; its exit code, stdout and stderr."""
    marker_r, marker_w = os.pipe()

    def fds() -> None:
        if close_stderr:
            os.close(2)

    with subprocess.Popen(
        [sys.executable, "-c", IMPORTING, *args, "--archive", str(tmp_path / "a"), "--json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        pass_fds=(marker_w,), preexec_fn=fds, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]),
             "MARKER_FD": str(marker_w), "HELD": held},
    ) as process:
        os.close(marker_w)
        with os.fdopen(marker_r) as marker:
            assert marker.readline() == "importing\n"
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    return process.returncode, out, err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_while_importing_with_stderr_closed_keeps_stdout_one_json_document(
    tmp_path: Path, signum: int, code: int
) -> None:
    """With stderr closed (2>&-) Python's sys.stderr is None and print(file=None) writes
    to stdout: the "stopped by" line went into --json's document, which no longer parsed.
    (cli/running.with_streams guards the rest of the program against exactly this.)"""
    returncode, out, _ = stopped_while_importing(tmp_path, signum, close_stderr=True)
    assert returncode == code
    name = signal.Signals(signum).name
    assert json.loads(out) == {"ok": False, "interrupted": True, "signal": name}


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_while_the_entry_module_itself_is_imported_is_a_stopped_run(
    tmp_path: Path, signum: int, code: int
) -> None:
    """start.py's own imports (envopts: argparse; exits: errors, re) came before its
    handlers: a Ctrl-C there printed KeyboardInterrupt's traceback and a SIGTERM ended
    the process saying nothing, as b79a6b6 says they did for every import."""
    returncode, out, err = stopped_while_importing(
        tmp_path, signum, close_stderr=False, held="tune_archiver.cli.envopts")
    name = signal.Signals(signum).name
    assert (returncode, err.splitlines()) == (code, [f"tune-archiver: error: stopped by {name}"])
    assert json.loads(out) == {"ok": False, "interrupted": True, "signal": name}


@pytest.mark.xfail(strict=True, reason="not fixed: SIGTERM is SIG_DFL from the end of "
                   "start.py's imports until until_signal's handler")
def test_a_sigterm_while_a_command_imports_its_module_is_a_stopped_run(tmp_path: Path) -> None:
    """After start.py, SIGTERM is SIG_DFL until the command's event loop takes it: a
    SIGTERM while `verify` imports its modules (main.py imports them when the command
    runs; serve's aiohttp.web takes some 40 ms) kills the process silently, no line, no
    --json document, where a Ctrl-C there is said (main._run catches KeyboardInterrupt)."""
    (tmp_path / "a" / "manifests").mkdir(parents=True)
    returncode, out, err = stopped_while_importing(
        tmp_path, signal.SIGTERM, close_stderr=False, held="tune_archiver.commands.repair",
        args=("verify",))
    assert (returncode, err.splitlines()) == (143, ["tune-archiver: error: stopped by SIGTERM"])
    assert json.loads(out) == {"ok": False, "interrupted": True, "signal": "SIGTERM"}


def test_a_ctrl_c_while_a_command_imports_its_module_is_a_stopped_run(tmp_path: Path) -> None:
    """The same moment, Ctrl-C: said (the contrast to the test above)."""
    (tmp_path / "a" / "manifests").mkdir(parents=True)
    returncode, out, err = stopped_while_importing(
        tmp_path, signal.SIGINT, close_stderr=False, held="tune_archiver.commands.repair",
        args=("verify",))
    assert (returncode, err.splitlines()) == (130, ["tune-archiver: error: stopped by SIGINT"])
    assert json.loads(out) == {"ok": False, "interrupted": True, "signal": "SIGINT"}


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
        old_version.setattr(ranges, "validator_of", _old_validator_of)
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
