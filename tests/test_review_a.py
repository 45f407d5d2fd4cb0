"""Review of the last four commits: If-Range's Last-Modified rule, the dry run's refused
URLs, preview.py, and a stop during the imports (cli/start.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# The script's entry with aiohttp's import held until stdin has a line; "importing" is
# said on fd 3, so stdout and stderr are the program's own.
IMPORTING = """
import os, sys
class Hold:
    def find_spec(self, name, path, target=None):
        if name == "aiohttp":
            os.write(int(os.environ["MARKER_FD"]), b"importing\\n")
            sys.stdin.readline()
        return None
sys.meta_path.insert(0, Hold())
sys.argv[0] = "tune-archiver"
from tune_archiver.cli.start import entry
raise SystemExit(entry())
"""


def stopped_while_importing(
    tmp_path: Path, signum: int, close_stderr: bool
) -> tuple[int, str]:
    """Run `fetch 1 --json` with stderr closed (2>&-) or not, stop it during the imports;
    its exit code and stdout."""
    marker_r, marker_w = os.pipe()

    def fds() -> None:
        if close_stderr:
            os.close(2)

    with subprocess.Popen(
        [sys.executable, "-c", IMPORTING, "fetch", "1", "--archive", str(tmp_path / "a"),
         "--json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        pass_fds=(marker_w,), preexec_fn=fds, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]),
             "MARKER_FD": str(marker_w)},
    ) as process:
        os.close(marker_w)
        with os.fdopen(marker_r) as marker:
            assert marker.readline() == "importing\n"
        process.send_signal(signum)
        out, _ = process.communicate(timeout=30)
    return process.returncode, out


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_while_importing_with_stderr_closed_keeps_stdout_one_json_document(
    tmp_path: Path, signum: int, code: int
) -> None:
    """With stderr closed (2>&-) Python's sys.stderr is None and print(file=None) writes
    to stdout: the "stopped by" line went into --json's document, which no longer parsed.
    (cli/running.with_streams guards the rest of the program against exactly this.)"""
    returncode, out = stopped_while_importing(tmp_path, signum, close_stderr=True)
    assert returncode == code
    name = signal.Signals(signum).name
    assert json.loads(out) == {"ok": False, "interrupted": True, "signal": name}
