"""--json is one document whatever happens: serve's (its URL, and the token said only
there), a bind error, -q, --token-file, a request aiohttp cannot parse, a stop before it
listens; and a fetch an error stopped after some tunes."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.archive_helpers import cli, stop
from tests.archive_helpers import start as start_process
from tests.conftest import ROOT
from tests.helpers import run_fetch
from tests.standin import StandIn, Status
from tests.test_fetch import make_tune
from tests.test_start import stopped_while_importing
from tune_archiver.cli.exits import Exit

FILE_TOKEN = "file-token-0123456789abcdef"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """An archive with nothing in it yet: serve needs only its manifests/ folder."""
    (tmp_path / "archive" / "manifests").mkdir(parents=True)
    return tmp_path / "archive"


def serving(archive: Path, *words: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    """`serve --bind 127.0.0.1:0 --json WORDS` in a subprocess, and its document once it
    listens (read to its closing brace, as test_serve.py reads it)."""
    process = start_process(archive, "serve", "--bind", "127.0.0.1:0", "--json", *words,
                            env={"PYTHONPATH": str(ROOT)})
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30)
    assert ready, "serve said nothing"
    lines = [process.stdout.readline()]  # the rest may be in the reader's buffer already
    while lines[-1] not in ("}\n", ""):
        lines.append(process.stdout.readline())
    return process, json.loads("".join(lines))


def port_of(document: dict[str, object]) -> int:
    return int(str(document["serving"]).rstrip("/").rsplit(":", 1)[1])


def bad_request(port: int, request: bytes) -> bytes:
    """Send `request` as it is and read the whole answer (the server closes after a 400)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def ended(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    return process.returncode, out, err


# -- serve --json ------------------------------------------------------------------------


def test_serve_bind_error_is_one_document(
    capsys: pytest.CaptureFixture[str], archive: Path
) -> None:
    """A port taken: exit 2, one line on stderr and one document on stdout."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = cli(capsys, "serve", "--archive", str(archive), "--bind", f"127.0.0.1:{port}",
                  "--json")
    assert ran.code == Exit.USAGE
    document = json.loads(ran.out)
    assert document["ok"] is False
    assert "cannot listen" in document["error"]
    assert "Traceback" not in ran.err


@pytest.mark.parametrize("words", [(), ("-q",)])
def test_serve_json_quiet_or_not_is_one_document(archive: Path, words: tuple[str, ...]) -> None:
    """serve --json: one document once it listens, saying where and the token that opens
    it (apart: a URL in a document is redacted); -q changes nothing of it, and a Ctrl-C
    adds none. It printed the plain "serving" line, then a second document."""
    process, document = serving(archive, *words)
    try:
        assert document == {"ok": True, "serving": document["serving"],
                            "token": document["token"]}
        url = f"{document['serving']}?token={document['token']}"
        with urllib.request.urlopen(url, timeout=30) as response:  # 127.0.0.1 only
            assert response.status == 200
        code, out, err = ended(process)
        assert (code, out) == (130, "")
        assert err == ""
    finally:
        stop(process)


def test_serve_json_with_a_token_file_says_no_token_and_logs_none(
    archive: Path, tmp_path: Path
) -> None:
    """--token-file: the document's token is null, and the token is in no output nor the
    --log-file."""
    token_file = tmp_path / "token"
    token_file.write_text(FILE_TOKEN + "\n")
    log_file = tmp_path / "run.jsonl"
    process, document = serving(archive, "--token-file", str(token_file),
                                "--log-file", str(log_file))
    try:
        assert document["token"] is None
        assert FILE_TOKEN not in json.dumps(document)
        code, out, err = ended(process)
        assert code == 130
        assert FILE_TOKEN not in out + err
        assert FILE_TOKEN not in log_file.read_text()
    finally:
        stop(process)


@pytest.mark.parametrize("verbose", [(), ("-v",)])
def test_a_malformed_request_prints_no_traceback_nor_the_token(
    archive: Path, verbose: tuple[str, ...]
) -> None:
    """Any local user may send bytes to serve's port. A request aiohttp cannot parse was
    logged by aiohttp's own logger, through Python's last-resort handler: a traceback on
    stderr without -v, and the offending request line quoted raw, with its ?token= (the
    one that opens the archive) unredacted."""
    process, document = serving(archive, *verbose)
    try:
        token = str(document["token"])
        for request in (
            f"GET /?token={token} HTTP/1.1 x\r\nHost: h\r\n\r\n",  # a bad request line
            f"GET /\x01?token={token} HTTP/1.1\r\nHost: h\r\n\r\n",  # a control char
            "GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n",  # a bad header
        ):
            assert bad_request(port_of(document), request.encode()).startswith(
                b"HTTP/1.0 400 ")
        code, out, err = ended(process)
        assert code == 130
        assert out == ""
        assert token not in err
        if not verbose:
            assert "Traceback" not in err
    finally:
        stop(process)


# -- fetch stopped by an error after some tunes ------------------------------------------


def test_a_key_rejected_mid_run_is_one_document_and_the_log_holds_no_key(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tunes 3 and 2 archived, then the key rejected for tune 1: exit 3, one document
    naming 3 and 2, and the --log-file's lines hold neither the key nor a second run_end."""
    archive = tmp_path / "fetched"
    for tune_id in (1, 2, 3):
        make_tune(standin, tune_id, images=1)
    assert run_fetch(standin, archive, "2", "3") == 0
    standin.api_faults[1] = [Status(401)]
    log_file = tmp_path / "run.jsonl"
    capsys.readouterr()
    assert run_fetch(standin, archive, "--all", "--json", "--log-file", str(log_file)) == 3
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert [t["tune_id"] for t in document["tunes"]] == [3, 2]
    assert "Traceback" not in captured.err
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert standin.api_key not in log_file.read_text()
    assert [line["exit"] for line in lines if line["event"] == "run_end"] == [3]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_serve_stopped_before_it_listens_is_one_document(
    tmp_path: Path, signum: int, code: int
) -> None:
    """A stop while serve imports its server (before it listens): 128 + the signal and
    --json's one interrupted document."""
    (tmp_path / "a" / "manifests").mkdir(parents=True)
    returncode, out, err = stopped_while_importing(
        tmp_path, signum, False, "tune_archiver.web.server", ("serve", "--bind", "127.0.0.1:0"))
    assert returncode == code
    assert json.loads(out) == {"ok": False, "interrupted": True,
                               "signal": signal.Signals(signum).name}
    assert "Traceback" not in err


def test_serve_quiet_still_says_a_fresh_token(archive: Path) -> None:
    """serve -q without --token-file printed nothing: the token made for the run was known
    to no one, and the archive could not be opened. Its one line is said even then."""
    process = start_process(archive, "serve", "--bind", "127.0.0.1:0", "-q",
                            env={"PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "serve said nothing"
        url = process.stdout.readline().split()[1]
        with urllib.request.urlopen(url, timeout=30) as response:  # 127.0.0.1 only
            assert response.status == 200
    finally:
        stop(process)


@pytest.mark.parametrize("where", ["summary", "ping"])
def test_a_stop_after_the_document_is_said_adds_no_second_one(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, where: str,
) -> None:
    """A SIGTERM (raised as Interrupted outside an event loop, as start.py's handler does)
    right after fetch --json printed its document, while it counts for the ping or as
    the success ping begins: stdout held that document and then a second one saying
    interrupted, which no JSON parser reads; now the first stands alone, exit 143."""
    from tune_archiver.cli import main as cli_main
    from tune_archiver.cli import report
    from tune_archiver.cli.running import Interrupted

    def stopped(*args: object, **kwargs: object) -> None:
        raise Interrupted(signal.SIGTERM)

    make_tune(standin, 1)
    if where == "summary":
        monkeypatch.setattr(report, "tune_counts", stopped)
    else:
        monkeypatch.setattr(cli_main, "send_ping", lambda url, what, *rest: (
            None if what == "start" else stopped()))
    extra = ["--ping-url", "http://127.0.0.1:9/x"] if where == "ping" else []
    code = run_fetch(standin, tmp_path / "a", "1", "--json", *extra)
    printed = capsys.readouterr()
    assert code == Exit.TERMINATED
    assert json.loads(printed.out)["tunes"][0]["ok"] is True
    assert "stopped by SIGTERM" in printed.err


def test_a_stop_during_the_fail_ping_of_a_refused_log_file_adds_no_second_document(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SIGTERM as the fail ping of a run refused for its --log-file begins (raised as
    Interrupted outside an event loop): it escaped main, for start.py to print a second
    document after the refusal's; now the refusal's stands alone, exit 143."""
    from tune_archiver.cli import main as cli_main
    from tune_archiver.cli.running import Interrupted

    def stopped(*args: object, **kwargs: object) -> None:
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(cli_main, "send_ping", stopped)
    make_tune(standin, 1)
    code = run_fetch(standin, tmp_path / "a", "1", "--json", "--ping-url",
                     "http://127.0.0.1:9/x", "--log-file", str(tmp_path / "no" / "run.jsonl"))
    printed = capsys.readouterr()
    assert code == Exit.TERMINATED
    assert "cannot open the log file" in json.loads(printed.out)["error"]
    assert "stopped by SIGTERM" in printed.err


@pytest.mark.parametrize("stopped_by", ["key", "sigterm"])
def test_a_stopped_fetch_all_document_names_its_workspace(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, stopped_by: str,
) -> None:
    """fetch --all --json stopped after a tune (the key rejected, a SIGTERM) printed a
    document without "workspace", which its document says when it ends: a monitor could
    not tell which listing the tunes it names came from."""
    import os

    from tune_archiver.commands import fetch as archive

    for tune_id in (1, 2):
        make_tune(standin, tune_id, images=1)
    if stopped_by == "key":
        standin.api_faults[1] = [Status(401)]
    else:
        real = archive.fetch

        async def fetch(*args: object, **kwargs: object) -> object:
            told = kwargs.get("announce")  # None when fetch calls itself again

            def announce(result: object) -> None:  # cron's timeout, once a tune is done
                told(result)  # type: ignore[misc,operator]
                os.kill(os.getpid(), signal.SIGTERM)
            if told is not None:
                kwargs["announce"] = announce
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(archive, "fetch", fetch)
    code = run_fetch(standin, tmp_path / "a", "--all", "--json", "--concurrency", "1")
    document = json.loads(capsys.readouterr().out)
    assert code == (Exit.AUTH if stopped_by == "key" else Exit.TERMINATED)
    assert document["ok"] is False
    assert document["workspace"] == "personal"
    if stopped_by == "sigterm":
        # Whichever were done by the time the signal was taken: two tunes are in flight
        # at one slot, and the other may end before the handler runs.
        assert {t["tune_id"] for t in document["tunes"]} in ({1}, {2}, {1, 2})
