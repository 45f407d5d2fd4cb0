"""Secrets from a server (the API key echoed back, a presigned URL in an error text) are
in no file written and no line printed."""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from tests.archive_helpers import cli, manifest_of, write_manifest
from tests.helpers import run_fetch
from tests.standin import StandIn, Status
from tune_archiver.scrub import scrub, scrub_json
from tune_archiver.store.local import LocalStore
from tune_archiver.web.server import start

KEY = "sd_echoed_key_0123456789abcdef"


@pytest.fixture
def echoing() -> Iterator[StandIn]:
    """A stand-in whose key is KEY."""
    server = StandIn(api_key=KEY).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def files_holding(root: Path, secret: str) -> list[Path]:
    """Every file under root whose bytes hold the secret."""
    return [path for path in root.rglob("*")
            if path.is_file() and secret.encode() in path.read_bytes()]


def echo_the_key(standin: StandIn) -> None:
    """Tune 1 echoes the key in a text field, a prompt, an image's query and a failed
    image's path; tune 2 is refused by an error body that quotes it."""
    images = [standin.add_file("img-a", os.urandom(3000)) + f"?api_key={KEY}",
              standin.file_url(f"gone-{KEY}")]
    ckpt = standin.add_file("ckpt", os.urandom(5000))
    standin.add_tune(1, [ckpt], images, description=f"your key is {KEY}",
                     args={"note": [f"Bearer {KEY}"]})
    standin.files["prompt-img"] = os.urandom(2000)
    standin.add_prompt(1, 11, f"a photo <lora:1:1> {KEY}",
                       [standin.file_url("prompt-img", query=f"api_key={KEY}")])
    body = json.dumps({"error": f"key {KEY} may not see tune 2"}).encode()
    standin.api_faults[2] = [Status(422, {"Content-Type": "application/json"}, body)]


def test_an_echoed_key_is_in_no_file_and_no_line(
    echoing: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch -v (text and --json), verify, list, export and gc: the key appears in no file
    under the archive or the export, and in nothing printed; REDACTED stands in its place."""
    echo_the_key(echoing)
    assert run_fetch(echoing, archive, "1", "2", "--prompts", "-v", "--retries", "0") == 1
    fetched = capsys.readouterr()
    assert run_fetch(echoing, archive, "1", "--prompts", "--json") == 1
    as_json = capsys.readouterr()
    assert "REDACTED" in fetched.err  # tune 2's error line, and image 1's
    printed = [fetched.out, fetched.err, as_json.out, as_json.err]
    document = manifest_of(archive, 1)
    assert document["tune"]["description"] == "your key is REDACTED"
    assert document["assets"][1]["url"].endswith("?api_key=REDACTED")
    assert "REDACTED" in document["assets"][2]["error"]
    assert document["assets"][3]["prompt_text"] == "a photo <lora:1:1> REDACTED"
    for argv in (["verify"], ["list"], ["list", "--json"], ["export", "1", str(tmp_path / "x")],
                 ["gc", "--dry-run"]):
        ran = cli(capsys, *argv, "--archive", str(archive))
        printed += [ran.out, ran.err]
    assert [text for text in printed if KEY in text] == []
    assert files_holding(archive, KEY) == []
    assert files_holding(tmp_path / "x", KEY) == []
    assert (tmp_path / "x" / "1-tune-1" / "manifest.json").exists()


def test_verify_scrubs_a_key_from_an_older_manifest(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest that holds the key (written before it was scrubbed) is printed by verify
    with the key of the environment replaced by REDACTED."""
    standin.add_tune(1, [], [standin.add_file("a", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 0
    document = manifest_of(archive, 1)
    entry = document["assets"][0]
    for field in ("sha256", "size", "path", "content_type"):
        del entry[field]
    entry.update(status="failed", error=f"refused for {standin.api_key}")
    write_manifest(archive, 1, document)
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert ran.errors == ["tune-archiver: error: tune 1: training_image 0: failed: "
                          "refused for REDACTED (retry: tune-archiver fetch 1 --archive "
                          f"{archive})"]


def test_scrub_replaces_every_occurrence_longest_first() -> None:
    """Each secret is replaced wherever it is; a secret inside a longer one leaves no part
    of the longer one behind."""
    assert scrub("abc-abcdef abc", ["abc", "abcdef"]) == "REDACTED-REDACTED REDACTED"
    assert scrub_json({"k abc": ["abc", 1, None, {"x": "abc"}]}, ["abc"]) == {
        "k REDACTED": ["REDACTED", 1, None, {"x": "REDACTED"}]}


# A presigned URL, as the API's error text may quote one.
SIGNED = ("https://sdbooth2-production.s3.amazonaws.com/x/model?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=AKIASECRETCRED&X-Amz-Signature=deadbeefSECRETSIG")


def refused_quoting(standin: StandIn, status: int, text: str) -> None:
    """Tune 8's first request answers `status` with an `error` text naming SIGNED."""
    body = json.dumps({"error": text.format(SIGNED)}).encode()
    standin.api_faults[8] = [Status(status, {"Content-Type": "application/json"}, body)]


def test_an_api_error_naming_a_presigned_url_shows_it_redacted_on_the_error_line(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API's `error` text in a tune's error line names a presigned URL: the line
    shows it redacted, as every URL that is shown."""
    refused_quoting(standin, 422, "could not read {}")
    assert run_fetch(standin, archive, "8", "--retries", "0") == 1
    printed = capsys.readouterr()
    assert "HTTP 422: could not read https://sdbooth2-production" in printed.err
    assert "X-Amz-Signature=REDACTED" in printed.err
    assert "SECRETSIG" not in printed.err + printed.out
    assert "AKIASECRETCRED" not in printed.err + printed.out


def test_an_api_error_naming_a_presigned_url_is_redacted_in_json(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json's `error` of the failed tune holds the same text, redacted too."""
    refused_quoting(standin, 422, "could not read {}")
    assert run_fetch(standin, archive, "8", "--retries", "0", "--json") == 1
    printed = capsys.readouterr()
    [tune] = json.loads(printed.out)["tunes"]
    assert "X-Amz-Signature=REDACTED" in tune["error"]
    assert "SECRETSIG" not in printed.out + printed.err


def test_a_retry_line_quoting_a_presigned_url_shows_it_redacted(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retried API 503 whose `error` names a presigned URL: the retry line (stderr, at
    the default verbosity) shows it redacted."""
    standin.add_tune(8, [], [])
    refused_quoting(standin, 503, "upstream {} unavailable")
    assert run_fetch(standin, archive, "8", "--retries", "1") == 0
    printed = capsys.readouterr()
    assert "retrying" in printed.err
    assert "SECRETSIG" not in printed.err


@pytest.mark.parametrize("filler", [170, 180, 188])  # the cut at 200 falls in the key
def test_an_api_error_shortened_in_the_middle_of_an_echoed_key_shows_none_of_it(
    echoing: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], filler: int
) -> None:
    """An API error text is shortened to a line: cut inside an echoed key, its first
    characters were printed and recorded (the scrubber knows only the whole key); now a
    text is cut between words, so the key is shown whole (and scrubbed) or not at all."""
    body = json.dumps({"error": "x" * filler + f" Bearer {KEY} refused"}).encode()
    echoing.api_faults[2] = [Status(422, {"Content-Type": "application/json"}, body)]
    assert run_fetch(echoing, archive, "2", "--retries", "0", "--json") == 1
    printed = capsys.readouterr()
    [tune] = json.loads(printed.out)["tunes"]
    assert "HTTP 422: xxx" in tune["error"]
    for text in (printed.out, printed.err):
        assert KEY[:4] not in text


def test_list_clips_an_older_title_only_once_the_key_is_scrubbed(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """list cuts a title to 30 columns: cut before the scrub (which knows only the whole
    key), a title of an older manifest holding the key showed its first characters."""
    standin.add_tune(1, [], [standin.add_file("a", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 0
    document = manifest_of(archive, 1)
    document["tune"]["title"] = f"Jane in Rome, with {standin.api_key}"
    write_manifest(archive, 1, document)
    ran = cli(capsys, "list", "--archive", str(archive))
    assert ran.code == 0
    [row] = [line for line in ran.out.splitlines() if line.startswith("1 ")]
    assert "Jane in Rome, with REDACTED" in row
    assert standin.api_key[:5] not in ran.out


def test_list_clips_an_older_title_only_once_its_urls_are_redacted(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same for a signed URL in an older manifest's title: cut to 30 columns before
    the redaction (which needs the whole URL), the table showed the start of its token
    where `list --json` said REDACTED."""
    standin.add_tune(1, [], [standin.add_file("a", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 0
    document = manifest_of(archive, 1)
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2lnbmF0dXJlc2lnbmF0dXJl"  # Cloudflare Stream's
    document["tune"]["title"] = f"J https://cdn.example/{jwt}/downloads/default.mp4"
    write_manifest(archive, 1, document)
    ran = cli(capsys, "list", "--archive", str(archive))
    assert ran.code == 0
    [row] = [line for line in ran.out.splitlines() if line.startswith("1 ")]
    assert "J https://cdn.example/REDACTE…" in row  # cut to 30 columns once redacted
    assert "eyJ" not in row


def test_an_unreadable_expiry_echoing_the_key_shows_none_of_it(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch --all --expiring-within warns of an expires_at it cannot read, quoting it: cut
    short (reprlib) in the middle of an echoed key, the key's ends were shown, which the
    scrub (knowing only the whole key) left. It is quoted whole, or not at all."""
    tune = standin.add_tune(1, [], [standin.add_file("a", os.urandom(3000))])
    tune["expires_at"] = f"soon, for {standin.api_key}"
    tune2 = standin.add_tune(2, [], [standin.add_file("b", os.urandom(3000))])
    tune2["expires_at"] = f"not a date: {'x' * 200} {standin.api_key}"
    assert run_fetch(standin, archive, "--all", "--expiring-within", "3d") == 0
    err = capsys.readouterr().err
    assert "tune 1: cannot read its expires_at 'soon, for REDACTED'" in err
    assert "tune 2: cannot read its expires_at (a text of 232 characters)" in err
    assert standin.api_key[:5] not in err
    assert standin.api_key[-5:] not in err


def test_export_names_no_folder_or_file_after_a_key_in_an_older_title(
    tmp_path: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export names its folder (and --layout the checkpoint) from the title lowercased and
    cut to 60 characters: a title of an older manifest holding the key (mixed case, as
    Astria's are) put it in names on disk and in the path printed, which the scrub (the
    whole key, case as it is) never matched. The title is scrubbed first."""
    key = "sd_Jh7KqP2xVtR9mWcL4nBz8YdFq"
    server = StandIn(api_key=key).start()
    try:
        server.add_tune(1, [server.add_file("ckpt.safetensors", os.urandom(5000))],
                        [server.add_file("a.jpg", os.urandom(3000))])
        assert run_fetch(server, archive, "1") == 0
    finally:
        server.close()
    document = manifest_of(archive, 1)
    document["tune"]["title"] = f"Jane {key} in Rome"
    write_manifest(archive, 1, document)
    ran = cli(capsys, "export", "1", str(tmp_path / "out"), "--layout", "a1111",
              "--archive", str(archive))
    assert ran.code == 0
    names = [str(path) for path in (tmp_path / "out").rglob("*")]
    assert "1-jane-redacted-in-rome" in ran.out
    assert "1-jane-redacted-in-rome.safetensors" in "\n".join(names)
    piece = key[3:11].lower()
    assert [name for name in names if piece in name.lower()] == []
    assert piece not in (ran.out + ran.err).lower()


def test_export_writes_no_key_of_an_older_manifest_into_its_copy_or_page(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """export copied manifest.json byte for byte and made index.html of the prompts as
    stored: a manifest written before the key was scrubbed put the key into DEST (a USB
    stick handed on) twice. Both are made of the manifest scrubbed of the key it knows."""
    standin.files["p.png"] = os.urandom(2000)
    standin.add_tune(1, [standin.add_file("c.safetensors", os.urandom(5000))],
                     [standin.add_file("a.jpg", os.urandom(3000))])
    standin.add_prompt(1, 11, "a photo", [standin.file_url("p.png")])
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    document = manifest_of(archive, 1)
    document["tune"]["description"] = f"your key is {KEY}"
    prompt = next(entry for entry in document["assets"] if entry.get("prompt_text"))
    prompt["prompt_text"] = f"a photo {KEY}"
    write_manifest(archive, 1, document)
    monkeypatch.setenv("ASTRIA_API_KEY", KEY)
    ran = cli(capsys, "export", "1", str(tmp_path / "x"), "--archive", str(archive))
    assert ran.code == 0
    assert files_holding(tmp_path / "x", KEY) == []
    folder = tmp_path / "x" / "1-tune-1"
    copied = json.loads((folder / "manifest.json").read_text())
    assert copied["tune"]["description"] == "your key is REDACTED"
    assert "a photo REDACTED" in (folder / "index.html").read_text()


def key_in_an_older_manifest(standin: StandIn, archive: Path) -> None:
    """Tune 1 archived, then its manifest made as an older version wrote it: the key in
    its title and in a failed image's error (what list and verify print)."""
    standin.add_tune(1, [], [standin.add_file("a.jpg", os.urandom(3000)),
                             standin.add_file("b.jpg", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 0
    del os.environ["ASTRIA_API_KEY"]  # run_fetch's; each test gives the key its own way
    document = manifest_of(archive, 1)
    document["tune"]["title"] = f"Jane {KEY}"
    entry = document["assets"][1]
    for name in ("sha256", "size", "path", "content_type"):
        del entry[name]
    entry.update(status="failed", error=f"refused for {KEY}")
    write_manifest(archive, 1, document)


@pytest.mark.parametrize("source", ["ASTRIA_AUTH_TOKEN", "config", "--api-key-file"])
def test_a_key_given_any_way_is_scrubbed_by_commands_that_need_none(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, source: str,
) -> None:
    """verify, list and export scrubbed only ASTRIA_API_KEY from what they print: the key
    of a user who gives it as ASTRIA_AUTH_TOKEN, in the Astria CLI's config or in a key
    file (cron's verify --api-key-file) was printed as an older manifest holds it. They
    read the key's other sources too, quietly."""
    key_in_an_older_manifest(standin, archive)
    given: list[str] = []
    if source == "ASTRIA_AUTH_TOKEN":
        monkeypatch.setenv(source, KEY)
    elif source == "config":
        folder = tmp_path / "astria"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"api_key": KEY}))
        (folder / "config.json").chmod(0o644)  # a warning for fetch; none here
        monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    else:
        (tmp_path / "key").write_text(KEY + "\n")
        given = ["--api-key-file", str(tmp_path / "key")]
    runs = [cli(capsys, "verify", *given, "--archive", str(archive)),
            cli(capsys, "verify", "--json", *given, "--archive", str(archive))]
    if not given:  # list and export take no key file: theirs are the other sources
        runs += [cli(capsys, "list", "--archive", str(archive)),
                 cli(capsys, "list", "--json", "--archive", str(archive)),
                 cli(capsys, "export", "1", str(tmp_path / "x"), "--archive", str(archive))]
    assert [ran.code for ran in runs] == [1, 1, 0, 0, 1][:len(runs)]
    assert "refused for REDACTED" in runs[0].err
    assert [ran for ran in runs if KEY in ran.out + ran.err] == []
    assert [ran.err for ran in runs if "warning" in ran.err] == []
    assert files_holding(tmp_path / "x", KEY) == []


def test_a_config_key_too_short_to_be_one_garbles_no_line(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A damaged Astria CLI config whose api_key is "e", read unasked by list for a key
    to scrub, had every e of every line it printed replaced."""
    key_in_an_older_manifest(standin, archive)
    folder = tmp_path / "astria"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"api_key": "e"}))
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    ran = cli(capsys, "list", "--json", "--archive", str(archive))
    assert json.loads(ran.out)["tunes"][0]["title"] == f"Jane {KEY}"


def test_a_config_that_cannot_be_read_stops_no_command_that_needs_no_key(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Astria CLI's config is read by list only for a key to scrub: one that is not
    JSON, or a FIFO (which would block the open), is no key and no error."""
    key_in_an_older_manifest(standin, archive)
    folder = tmp_path / "astria"
    folder.mkdir()
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    (folder / "config.json").write_text("{not json")
    assert cli(capsys, "list", "--archive", str(archive)).code == 0
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    assert cli(capsys, "list", "--archive", str(archive)).code == 0


def test_no_home_folder_stops_no_command_and_shows_no_traceback(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No HOME and a uid no passwd names (a container's, cron's env -i): every command,
    list and verify too, read ~/.astria for a key to scrub and stopped on pathlib's
    RuntimeError traceback, before it began. No home is no config: the key in
    ASTRIA_API_KEY is used and the archive listed."""
    monkeypatch.delenv("ASTRIA_CONFIG_DIR")
    monkeypatch.delenv("HOME", raising=False)

    def nobody(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", nobody)
    key_in_an_older_manifest(standin, archive)
    assert [cli(capsys, command, "--archive", str(archive)).code
            for command in ("list", "verify")] == [0, 1]
    ran = cli(capsys, "fetch", "1", "--profile", "work", "--archive", str(archive))
    assert (ran.code, ran.err) == (2, "tune-archiver: error: no home folder to find the "
                                      "Astria CLI's config in: set HOME or ASTRIA_CONFIG_DIR\n")


@pytest.fixture
def older(standin: StandIn, archive: Path) -> Path:
    key_in_an_older_manifest(standin, archive)
    return archive


async def test_serve_shows_no_key_of_an_older_manifest(older: Path) -> None:
    """serve's pages were made of the manifest as stored, no key scrubbed at all: the
    title and a failed image's error showed the key to whoever opened the page. The
    keys it is given are in no page (the list, the tune, its verdict)."""
    runner, url = await start(LocalStore(older), "127.0.0.1", 0, None,
                              lambda: datetime.now(UTC), [KEY])
    try:
        async with aiohttp.ClientSession() as session:
            pages = []
            for method, path in (("GET", ""), ("GET", "tunes/1"), ("POST", "tunes/1/verify")):
                async with session.request(method, url + path) as response:
                    assert response.status == 200
                    pages.append(await response.text())
    finally:
        await runner.cleanup()
    assert [page for page in pages if KEY in page] == []
    assert ["Jane REDACTED" in page for page in pages] == [True, True, True]


def test_a_token_the_api_echoes_by_its_prefix_is_never_shown_nor_logged(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API's error text quoting a Hugging Face or GitHub token (a push to the Hub
    refused), or an Astria key not the one in use: printed whole in the error line and
    the --log-file, bare as it stood (no name=, no URL). Such a key, known by its prefix
    (sd_, hf_, ghp_ ...) and a run of 20 letters and digits, is REDACTED; sd_xl_base_1.0,
    a model's name, is kept."""
    standin.add_tune(1, [], [standin.add_file("a", b"a" * 2000)])
    standin.api_faults[1] = [Status(422, body=json.dumps({"error": (
        "sd_xl_base_1.0: cannot push with token hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789 "
        "(ghp_0123456789abcdefABCDEF0123456789abcd, sd_9f8e7d6c5b4a39281706f5e4)")}).encode())]
    log = tmp_path / "run.jsonl"
    assert run_fetch(standin, tmp_path / "archive", "1", "--log-file", str(log)) == 1
    err = capsys.readouterr().err
    assert ("the API answered HTTP 422: sd_xl_base_1.0: cannot push with token REDACTED "
            "(REDACTED, REDACTED)") in err, err
    for shown in (err, log.read_text()):
        for token in ("hf_AbCd", "ghp_0123", "sd_9f8e"):
            assert token not in shown
