"""Output as it happens, in a real subprocess: a finished tune's line is on stdout before
the run ends, and what Ctrl-C leaves behind is said (and, with --json, one document)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.standin import Stall, StandIn

MiB = 2**20


def one_done_one_stalled(standin: StandIn) -> None:
    """Tune 1 is small and finishes; tune 2's checkpoint sends 1 MiB and goes silent."""
    standin.add_tune(1, [], [standin.add_file("img", os.urandom(5_000))])
    standin.add_tune(2, [standin.add_file("model", os.urandom(2 * MiB))], [])
    standin.faults["model"] = [Stall(MiB)]


def start(standin: StandIn, archive: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ASTRIA_API_KEY": standin.api_key}
    command = [sys.executable, "-m", "tune_archiver", "fetch", "1", "2", "--archive",
               str(archive), "--api-url", standin.api_url, *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_finished_tune_is_printed_while_another_stalls(
    standin: StandIn, tmp_path: Path
) -> None:
    """Tune 1's summary is read from the pipe while tune 2 stalls; SIGINT then exits 130."""
    one_done_one_stalled(standin)
    process = start(standin, tmp_path / "archive")
    assert process.stdout is not None
    first = process.stdout.readline()  # blocks until the line is flushed, not the run's end
    assert first.startswith("tune 1 (Tune 1): 1 file,")
    assert process.poll() is None  # the run is still going: tune 2 stalls
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "tune 2" not in out
    assert "1 of 2 tunes done; not finished: 2" in err


def test_json_after_an_interrupt_is_one_document(standin: StandIn, tmp_path: Path) -> None:
    """--json stopped by SIGINT prints one document: ok false, interrupted, the done tunes;
    --log-file - puts the events on stderr as they happen (read from the pipe)."""
    one_done_one_stalled(standin)
    archive = tmp_path / "archive"
    process = start(standin, archive, "--json", "--log-file", "-")
    assert process.stderr is not None
    events = []
    while not events or events[-1]["event"] != "tune_end":
        line = process.stderr.readline()
        assert line, "stderr closed before tune 1 ended"
        events.append(json.loads(line))
    assert events[-1]["tune_id"] == 1
    assert events[0]["event"] == "run_start"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130
    document = json.loads(out)
    assert document["ok"] is False
    assert document["interrupted"] is True
    assert [tune["tune_id"] for tune in document["tunes"]] == [1]
    rest = [json.loads(line) for line in err.splitlines()]  # JSON lines only, no human line
    assert [e["event"] for e in rest][-2:] == ["failure", "run_end"]
    assert rest[-1]["exit"] == 130
