"""--ping-url: start, success and fail pings to a monitor on 127.0.0.1, and a ping that
fails being one warning, never a failed backup."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.helpers import run_fetch
from tests.loop_thread import SHUTDOWN_POLL
from tests.standin import StandIn
from tests.test_exits import closed_port_url
from tests.test_fetch import make_tune
from tests.test_live import one_done_one_stalled, start
from tune_archiver.cli.main import main
from tune_archiver.commands import flow
from tune_archiver.errors import ReadTimeout


@dataclass
class Monitor:
    """A health-check server recording each ping: (method, path, body)."""

    url: str
    pings: list[tuple[str, str, str]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    found = Monitor("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer("")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            self._answer(self.rfile.read(length).decode())

        def _answer(self, body: str) -> None:
            found.pings.append((self.command, self.path, body))
            self.send_response(found.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.url = f"http://127.0.0.1:{server.server_address[1]}/ping/abc-uuid"
    thread = threading.Thread(target=server.serve_forever,
                              kwargs={"poll_interval": SHUTDOWN_POLL}, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


def test_a_run_that_succeeds_pings_start_then_the_url(
    standin: StandIn, tmp_path: Path, monitor: Monitor
) -> None:
    """A whole fetch sends GET URL/start, then GET URL."""
    make_tune(standin, 1, images=1)
    assert run_fetch(standin, tmp_path / "a", "1", "--ping-url", monitor.url) == 0
    assert monitor.pings == [("GET", "/ping/abc-uuid/start", ""), ("GET", "/ping/abc-uuid", "")]


def test_a_run_that_fails_posts_a_summary_to_fail(
    standin: StandIn, tmp_path: Path, monitor: Monitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed tune: POST URL/fail with the counts and the failed ids, no URL or key;
    the URL may come from TUNE_ARCHIVER_PING_URL."""
    make_tune(standin, 1, images=1)
    monkeypatch.setenv("TUNE_ARCHIVER_PING_URL", monitor.url)
    assert run_fetch(standin, tmp_path / "a", "1", "404") == 1
    [start, (method, path, body)] = monitor.pings
    assert start[1] == "/ping/abc-uuid/start"
    assert (method, path) == ("POST", "/ping/abc-uuid/fail")
    assert body == "tune-archiver fetch: exit 1; 2 tunes done, 1 failed: 404\n"
    assert "http" not in body
    assert standin.api_key not in body


def test_a_rejected_key_pings_fail_with_the_exit_code(
    standin: StandIn, tmp_path: Path, monitor: Monitor
) -> None:
    """A run stopped by a rejected key still sends its fail ping, saying exit 3."""
    make_tune(standin, 1)
    assert run_fetch(standin, tmp_path / "a", "1", "--ping-url", monitor.url, key="bad") == 3
    assert monitor.pings[-1] == ("POST", "/ping/abc-uuid/fail", "tune-archiver fetch: exit 3\n")


@pytest.mark.parametrize("status", [500, None])
def test_a_ping_that_fails_is_one_warning_never_a_failed_backup(
    standin: StandIn, tmp_path: Path, monitor: Monitor, status: int | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A monitor answering 500, or not listening, costs one warning a ping; exit stays 0."""
    make_tune(standin, 1, images=1)
    monitor.status = status or 200
    url = monitor.url if status else closed_port_url() + "/secret-token"
    assert run_fetch(standin, tmp_path / "a", "1", "--ping-url", url) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "ping" in line]
    assert len(warnings) == 2  # start and success
    assert all("the run is not affected" in line for line in warnings)
    assert not any("secret-token" in line or "abc-uuid" in line for line in warnings)


def test_a_ping_that_cannot_connect_says_why_in_words(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A monitor not listening was said by aiohttp's class name ('failed
    (ClientConnectorError)'): now as a download's is, its host and port, never its path."""
    make_tune(standin, 1, images=1)
    url = closed_port_url() + "/secret-token"
    assert run_fetch(standin, tmp_path / "a", "1", "--ping-url", url) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "ping" in line]
    assert len(warnings) == 2
    assert all(f"failed (cannot connect to {urlsplit(url).netloc} (" in line
               for line in warnings), warnings
    assert not any("secret-token" in line for line in warnings)


def test_a_ping_url_that_is_not_http_is_a_usage_error(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--ping-url ftp://... is refused before the run, exit 2."""
    assert run_fetch(standin, tmp_path / "a", "1", "--ping-url", "ftp://x") == 2
    assert standin.requests == []


def test_an_interrupted_run_pings_fail_with_what_was_done(
    standin: StandIn, tmp_path: Path, monitor: Monitor
) -> None:
    """SIGINT after one tune of two: exit 130 and POST URL/fail saying so (a subprocess)."""
    one_done_one_stalled(standin)
    process = start(standin, tmp_path / "a", "--ping-url", monitor.url)
    assert process.stdout is not None
    assert process.stdout.readline().startswith("tune 1 ")
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert process.returncode == 130
    assert monitor.pings[0] == ("GET", "/ping/abc-uuid/start", "")
    assert monitor.pings[-1] == (
        "POST", "/ping/abc-uuid/fail",
        "tune-archiver fetch: exit 130; stopped by SIGINT; 1 tune done, 0 failed\n",
    )


def test_a_hangup_is_a_stop_said_logged_and_pinged(
    standin: StandIn, tmp_path: Path, monitor: Monitor
) -> None:
    """SIGHUP (the terminal or ssh session of a run by hand closed, systemd's SendSIGHUP)
    killed the run without a word: no line, no run_end in --log-file, and no fail ping, the
    monitor told only /start. It stops the run as SIGTERM does: exit 129, said, pinged."""
    one_done_one_stalled(standin)
    log = tmp_path / "run.jsonl"
    process = start(standin, tmp_path / "a", "--ping-url", monitor.url, "--log-file", str(log))
    assert process.stdout is not None
    assert process.stdout.readline().startswith("tune 1 ")
    process.send_signal(signal.SIGHUP)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 129
    assert "stopped by SIGHUP: 1 of 2 tunes done; not finished: 2" in err
    assert monitor.pings[-1] == (
        "POST", "/ping/abc-uuid/fail",
        "tune-archiver fetch: exit 129; stopped by SIGHUP; 1 tune done, 0 failed\n",
    )
    last = json.loads(log.read_text().splitlines()[-1])
    assert (last["event"], last["exit"]) == ("run_end", 129)


def test_a_hangup_nohup_ignores_stays_ignored(
    standin: StandIn, tmp_path: Path, monitor: Monitor
) -> None:
    """Under nohup (SIGHUP ignored as the program starts) a hangup does not stop the run."""
    one_done_one_stalled(standin)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by the child
    try:
        process = start(standin, tmp_path / "a", "--ping-url", monitor.url)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert process.stdout is not None
    assert process.stdout.readline().startswith("tune 1 ")
    process.send_signal(signal.SIGHUP)
    process.send_signal(signal.SIGINT)  # an ignored signal is dropped as it is sent
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "SIGHUP" not in err


@pytest.mark.parametrize("host", ["hc-ping..com", f"{'x' * 64}.example", "[hc-ping.com"])
def test_a_ping_url_whose_host_is_no_name_is_one_warning_never_a_traceback(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    """A host no DNS name can be (a doubled dot, a label over 63 characters): the start
    and success pings fail with a warning each, and the backup runs, exit 0, --json's one
    document; before, the IDNA codec's UnicodeError escaped the ping as a traceback,
    exit 1, and the backup never ran. So did urlsplit's ValueError for an IPv6 bracket
    left open, read before the ping's try."""
    make_tune(standin, 1, images=1)
    url = f"https://{host}/secret-uuid"
    assert run_fetch(standin, tmp_path / "a", "1", "--json", "--ping-url", url) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["ok"] is True
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if "ping" in line]
    assert len(warnings) == 2
    assert all("the run is not affected" in line for line in warnings)
    assert all("malformed URL" in line for line in warnings)
    assert "secret-uuid" not in err


def test_a_ping_url_with_a_query_keeps_it_after_start_and_fail(
    standin: StandIn, tmp_path: Path, monitor: Monitor
) -> None:
    """A URL with a query (healthchecks.io's ?create=1 for a slug URL): /start and /fail
    go on its path and the query stays whole; they were appended to the query
    ("?create=1/fail"), so the monitor took a start, and a failed backup, for a success."""
    make_tune(standin, 1, images=1)
    url = f"{monitor.url}?create=1"
    assert run_fetch(standin, tmp_path / "a", "1", "404", "--ping-url", url) == 1
    assert [(method, path) for method, path, _ in monitor.pings] == [
        ("GET", "/ping/abc-uuid/start?create=1"), ("POST", "/ping/abc-uuid/fail?create=1")]


def test_a_log_file_that_cannot_be_opened_still_pings_fail(
    standin: StandIn, tmp_path: Path, monitor: Monitor, capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-file in a folder that is not there (a read-only or unmounted disk): the run
    is refused, exit 2, and the monitor is told so at once; it was told nothing, so a
    cron job that never ran looked like one the monitor only had not heard from yet."""
    make_tune(standin, 1)
    log_file = tmp_path / "no-such-folder" / "run.jsonl"
    assert run_fetch(standin, tmp_path / "a", "1", "--ping-url", monitor.url,
                     "--log-file", str(log_file)) == 2
    assert monitor.pings == [("POST", "/ping/abc-uuid/fail", "tune-archiver fetch: exit 2\n")]
    assert "cannot open the log file" in capsys.readouterr().err
    assert standin.requests == []


def test_a_verify_that_finds_damage_names_the_tunes_in_its_fail_ping(
    standin: StandIn, tmp_path: Path, monitor: Monitor
) -> None:
    """A nightly `verify --ping-url` that finds a blob gone: the fail ping's body counts
    the tunes and problems and names the damaged tunes, as a fetch's names its failed
    ones (README); it said "tune-archiver verify: exit 1" alone, so the monitor could not
    tell one damaged tune from the whole archive. So does verify --repair's."""
    for tune_id in (1, 2, 3):
        make_tune(standin, tune_id, images=1)
    archive = tmp_path / "a"
    assert run_fetch(standin, archive, "1", "2", "3") == 0
    blob = json.loads((archive / "manifests" / "2.json").read_text())["assets"][0]["path"]
    (archive / blob).unlink()
    assert main(["verify", "--archive", str(archive), "--ping-url", monitor.url]) == 1
    [_, (method, path, body)] = monitor.pings
    assert (method, path) == ("POST", "/ping/abc-uuid/fail")
    assert body == "tune-archiver verify: exit 1; 3 tunes verified, 1 problem: 2\n"
    standin.files.clear()  # the repair cannot fetch it again
    monitor.pings.clear()
    assert main(["verify", "--repair", "--retries", "0", "--archive", str(archive),
                 "--api-url", standin.api_url, "--ping-url", monitor.url]) == 1
    [_, (_, _, body)] = monitor.pings
    assert body == "tune-archiver verify: exit 1; 3 tunes verified, 1 problem: 2\n"


def test_a_tune_out_of_reach_beside_unchanged_ones_is_named(
    standin: StandIn, tmp_path: Path, monitor: Monitor, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """fetch --all: tunes 1 and 2 unchanged, skipped; tune 3 changed and its GET times
    out. Nothing was done (exit 4), but --json holds the three results, 3's error with
    it, and the fail ping names 3 (it named no tune, and --json only 1 and 2)."""
    for tune_id in (1, 2, 3):
        make_tune(standin, tune_id, images=1)
    archive = tmp_path / "a"
    assert run_fetch(standin, archive, "--all") == 0
    standin.tunes[3]["updated_at"] = "2026-11-20T00:00:00Z"
    loaded = flow.load_tune

    async def slow_for_3(api: Any, tune_id: int, *args: Any) -> Any:
        if tune_id == 3:
            raise ReadTimeout(f"no answer from {standin.api_url}/tunes/3 within 30 s")
        return await loaded(api, tune_id, *args)

    monkeypatch.setattr(flow, "load_tune", slow_for_3)
    capsys.readouterr()
    code = run_fetch(standin, archive, "--all", "--json", "--ping-url", monitor.url)
    assert code == 4
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False
    tunes = {t["tune_id"]: t for t in document["tunes"]}
    assert tunes.keys() == {1, 2, 3}
    assert tunes[1]["skipped"]
    assert tunes[2]["skipped"]
    assert "no answer from" in tunes[3]["error"]
    assert monitor.pings[-1] == ("POST", "/ping/abc-uuid/fail",
                                 "tune-archiver fetch: exit 4; the run stopped; 3 tunes done, "
                                 "1 failed: 3\n")


def test_a_usage_error_pings_fail(
    tmp_path: Path, monitor: Monitor, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A cron line that no longer parses (an option mistyped or renamed, a
    TUNE_ARCHIVER_<OPTION> set wrong) exits 2 every night, and the monitor was told
    nothing: a job that never ran looked like one it only had not heard from yet. It is
    told at once, as of any exit 2 (from --ping-url as given, or the environment); a
    command that takes no --ping-url (gc) sends none."""
    fail = ("POST", "/ping/abc-uuid/fail", "tune-archiver fetch: exit 2\n")
    assert main(["fetch", "1", "--bogus", "--ping-url", monitor.url]) == 2
    assert monitor.pings == [fail]
    assert main(["verify", f"--ping-url={monitor.url}", "not-an-id"]) == 2
    assert monitor.pings[1:] == [("POST", "/ping/abc-uuid/fail", "tune-archiver verify: exit 2\n")]
    monkeypatch.setenv("TUNE_ARCHIVER_PING_URL", monitor.url)
    monkeypatch.setenv("TUNE_ARCHIVER_CONCURRENCY", "0")
    assert main(["fetch", "1", "--archive", str(tmp_path / "a")]) == 2
    assert monitor.pings[2:] == [fail]
    assert main(["gc", "--bogus"]) == 2
    assert len(monitor.pings) == 3
    assert "see tune-archiver gc --help" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
