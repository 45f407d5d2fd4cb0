"""A stop (Ctrl-C, or cron's timeout's SIGTERM) at any moment of the program's start is
said as a later one is: one line on stderr, --json's document, 128 + the signal."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_ping import Monitor, monitor  # noqa: F401  (fixture)
from tune_archiver.cli import start
from tune_archiver.cli.eventlog import JsonLines
from tune_archiver.cli.running import Interrupted

SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]

# The script's entry with one module's import (HELD) held until stdin has a line; it
# says "importing" on another descriptor, so stdout and stderr are the program's own.
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
    """Run the command (`fetch 1`) with --json and stderr closed (2>&-) or not, stop it
    while `held` is being imported; its exit code, stdout and stderr."""
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


@pytest.mark.parametrize(("signum", "code"), SIGNALS)
@pytest.mark.parametrize(("held", "args"), [
    ("aiohttp", ("fetch", "1")),  # the half second of the program's imports
    ("tune_archiver.cli.envopts", ("fetch", "1")),  # start.py's own first imports
    ("tune_archiver.commands.repair", ("verify",)),  # a command importing its modules
], ids=["program", "entry", "command"])
def test_a_stop_while_the_program_starts_is_a_stopped_run(
    tmp_path: Path, signum: int, code: int, held: str, args: tuple[str, ...]
) -> None:
    """Ctrl-C printed a KeyboardInterrupt traceback and SIGTERM ended the process saying
    nothing, in the imports; after them SIGTERM was SIG_DFL until the command's event
    loop took it, and a command importing its modules died as silently."""
    (tmp_path / "a" / "manifests").mkdir(parents=True)
    returncode, out, err = stopped_while_importing(tmp_path, signum, False, held, args)
    name = signal.Signals(signum).name
    assert (returncode, err.splitlines()) == (code, [f"tune-archiver: error: stopped by {name}"])
    assert json.loads(out) == {"ok": False, "interrupted": True, "signal": name}


@pytest.mark.parametrize(("signum", "code"), SIGNALS)
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


def test_a_sigterm_after_the_start_ping_is_said_and_pinged(
    tmp_path: Path, monitor: Monitor  # noqa: F811
) -> None:
    """`verify --ping-url`: the start ping runs its own event loop, whose
    remove_signal_handler puts SIGTERM back to SIG_DFL (asyncio does so), not start.py's
    handler. A SIGTERM while the command then imports its modules killed the process
    silently (-15): no line, no --json document, no fail ping."""
    (tmp_path / "a" / "manifests").mkdir(parents=True)
    returncode, out, err = stopped_while_importing(
        tmp_path, signal.SIGTERM, False, "tune_archiver.commands.repair",
        ("verify", "--ping-url", monitor.url))
    assert (returncode, err.splitlines()) == (143, ["tune-archiver: error: stopped by SIGTERM"])
    assert json.loads(out)["signal"] == "SIGTERM"
    assert [path for _, path, _ in monitor.pings] == ["/ping/abc-uuid/start",
                                                      "/ping/abc-uuid/fail"]


def test_a_sigterm_while_the_log_file_is_written_is_not_swallowed() -> None:
    """Outside an event loop start.py's handler raises Interrupted, then an Exception:
    the --log-file handler's `except Exception` (a log that cannot be written must not
    stop a backup) caught it, said "cannot write the log file: SIGTERM; the run goes on
    without it", and the run went on as if no SIGTERM had come."""
    class Signalled(io.StringIO):
        def write(self, text: str) -> int:
            os.kill(os.getpid(), signal.SIGTERM)  # cron's timeout, mid-write
            return super().write(text)

    record = logging.LogRecord("tune_archiver", logging.DEBUG, __file__, 1, "run started",
                               None, None)
    record.event = "run_start"
    handler = JsonLines(Signalled(), [], owned=False)
    previous = signal.signal(signal.SIGTERM, start._interrupt)
    try:
        with pytest.raises(Interrupted):
            handler.emit(record)
    finally:
        signal.signal(signal.SIGTERM, previous)


# The script's entry with the --log-file handler sending the process SIGTERM as it
# writes the run's last line (run_end): after the run's --json document is out.
AT_THE_END = """
import os, signal, sys
from tune_archiver.cli.eventlog import JsonLines
emit = JsonLines.emit
def emit_stopped(self, record):
    if getattr(record, "event", None) == "run_end":
        os.kill(os.getpid(), signal.SIGTERM)  # cron's timeout, at the very end
    emit(self, record)
JsonLines.emit = emit_stopped
sys.argv[0] = "tune-archiver"
from tune_archiver.cli.start import entry
raise SystemExit(entry())
"""


def test_a_sigterm_after_the_document_is_out_prints_no_second_one(tmp_path: Path) -> None:
    """A SIGTERM while the log's last line was written went up to start.py, which printed
    its own {"ok": false, "interrupted": true} after the run's document: two documents
    on stdout, which a cron script's JSON parser refuses."""
    (tmp_path / "a" / "manifests").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-c", AT_THE_END, "verify", "--archive", str(tmp_path / "a"),
         "--json", "--log-file", str(tmp_path / "run.log")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 143
    assert done.stderr.splitlines() == ["tune-archiver: error: stopped by SIGTERM"]
    assert json.loads(done.stdout)["ok"] is True  # the run's own, alone
