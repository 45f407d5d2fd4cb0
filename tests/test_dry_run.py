"""fetch --dry-run against the stand-in: files a host refuses, sizes it will not say."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import jsonschema
import pytest

from tests.helpers import run_fetch
from tests.standin import StandIn, Status
from tests.test_fetch_all import DRY_RUN_SCHEMA

# Three files of 1 MiB in all, and a fourth the host may refuse.
SIZES = {"ckpt-5": 1_000_000, "img-5-0": 40_000, "img-5-1": 8_576, "img-5-2": 5_000}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def add_tune_5(standin: StandIn) -> None:
    """Tune 5 ("T"): one checkpoint and three training images, 1 MiB without the last."""
    urls = {name: standin.add_file(name, bytes(size)) for name, size in SIZES.items()}
    images = [urls["img-5-0"], urls["img-5-1"], urls["img-5-2"]]
    standin.add_tune(5, [urls["ckpt-5"]], images, title="T")


def refuse(standin: StandIn, how: str) -> int:
    """Make the host refuse training image 2 in the way named; the HTTP status it answers."""
    if how == "missing":
        del standin.files["img-5-2"]
        return 404
    if how == "redirect-to-missing":
        standin.redirects["img-5-2"] = standin.file_url("gone", host="mirror")
        return 404
    status = int(how)
    body = b"<Error><Code>AccessDenied</Code></Error>" if status == 403 else b""
    standin.faults["img-5-2"] = [Status(status, body=body)]
    return status


@pytest.mark.parametrize("how", ["403", "missing", "401", "410", "redirect-to-missing"])
def test_dry_run_names_a_file_the_host_refuses_and_exits_1(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """A 401/403/404/410 answer is "not downloadable" with its status, in text and on stderr."""
    add_tune_5(standin)
    status = refuse(standin, how)
    assert run_fetch(standin, archive, "5", "--dry-run") == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"tune 5 (T): would download 3 files, 1.0 MiB; 1 not downloadable "
        f"(training_image 2: HTTP {status}); 0 already archived",
        "dry run: would download 3 files, 1.0 MiB; 1 not downloadable; nothing was written",
    ]
    assert captured.err.splitlines() == [
        f"tune-archiver: error: tune 5 (T): training_image 2: not downloadable: "
        f"HTTP {status} from {standin.file_url('img-5-2')}"
    ]
    assert not archive.exists()


@pytest.mark.parametrize("how", ["403", "missing"])
def test_dry_run_json_lists_files_not_downloadable(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """--json: a not_downloadable list per tune with each status, a total, and ok false."""
    add_tune_5(standin)
    standin.add_tune(6, [standin.add_file("ckpt-6", bytes(100))], [])
    status = refuse(standin, how)
    assert run_fetch(standin, archive, "5", "6", "--dry-run", "--json") == 1
    result = json.loads(capsys.readouterr().out)
    jsonschema.validate(result, DRY_RUN_SCHEMA)
    assert (result["ok"], result["files"], result["bytes"], result["unknown_sizes"],
            result["not_downloadable"]) == (False, 4, 1_048_676, 0, 1)
    five, six = result["tunes"]
    assert five["not_downloadable"] == [{
        "kind": "training_image", "index": 2, "url": standin.file_url("img-5-2"),
        "status": status, "reason": f"HTTP {status}",
    }]
    assert [d["index"] for d in five["download"] if d["kind"] == "training_image"] == [0, 1]
    assert (six["tune_id"], six["not_downloadable"], six["error"]) == (6, [], None)


@pytest.mark.parametrize("how", ["ftp", "userinfo-redirect", "empty-label", "long-label"])
def test_dry_run_names_a_url_a_fetch_would_refuse_as_not_downloadable(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """A URL or redirect a fetch refuses for good (an ftp:// URL, a redirect carrying a user
    name and password, a host with an empty label or one past 63 characters, which no
    name may have) is not downloadable, with the refusal's reason; never "size
    unknown", which would let the dry run exit 0 for a file no fetch can archive."""
    add_tune_5(standin)
    if how == "ftp":
        standin.tunes[5]["orig_images"][2] = "ftp://files.example/img-5-2"
    elif how.endswith("label"):  # a host no name may be: the dry run died of its UnicodeError
        host = "cdn..example" if how == "empty-label" else "a" * 64 + ".example"
        standin.tunes[5]["orig_images"][2] = f"http://{host}/img-5-2"
    else:
        port = standin.file_url("img-5-2").split(":")[2].split("/")[0]
        standin.redirects["img-5-2"] = f"http://user:pw@127.0.0.1:{port}/files/img-5-2"
    assert run_fetch(standin, archive, "5", "--dry-run", "--json") == 1
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    jsonschema.validate(result, DRY_RUN_SCHEMA)
    assert (result["ok"], result["unknown_sizes"], result["not_downloadable"]) == (False, 0, 1)
    [refused] = result["tunes"][0]["not_downloadable"]
    assert (refused["index"], refused["status"]) == (2, None)
    assert refused["reason"].startswith("refused ")
    assert "pw" not in captured.out + captured.err
    [line] = captured.err.splitlines()
    assert line.startswith("tune-archiver: error: tune 5 (T): training_image 2: not "
                           "downloadable: refused ")


def test_dry_run_quiet_still_says_why_it_exits_1(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With -q the summary goes, but the file no fetch could download is still named."""
    add_tune_5(standin)
    refuse(standin, "404")
    assert run_fetch(standin, archive, "5", "--dry-run", "-q") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "training_image 2: not downloadable: HTTP 404" in captured.err


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("fault", [Status(503, {"Retry-After": "1"}), Status(500), Status(400)])
def test_dry_run_other_failures_leave_the_size_unknown(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], fault: Status
) -> None:
    """A 5xx, a 400 or a host that cannot be reached: size unknown, not refused; exit 0."""
    add_tune_5(standin)
    standin.faults["img-5-2"] = [fault]
    standin.tunes[5]["orig_images"].append(f"http://127.0.0.1:{closed_port()}/files/img")
    assert run_fetch(standin, archive, "5", "--dry-run") == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == (
        "tune 5 (T): would download 5 files, 1.0 MiB (size of 2 unknown); 0 already archived"
    )
    assert captured.err == ""


def test_dry_run_knows_an_empty_file_is_empty(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty file has no byte 0 (416), but its Content-Range gives its size: 0, not unknown."""
    standin.add_tune(7, [standin.add_file("empty", b"")], [])
    assert run_fetch(standin, archive, "7", "--dry-run", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["unknown_sizes"], result["not_downloadable"]) == (True, 0, 0)
    assert [d["size"] for d in result["tunes"][0]["download"]] == [0]


@pytest.mark.parametrize("total", ["\u00b2", "9" * 5000])
def test_dry_run_over_a_size_of_no_plain_number_leaves_it_unknown(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], total: str
) -> None:
    """A Content-Range total that is no plain number (a superscript digit passes
    str.isdigit; 5,000 digits pass int()'s limit) is a size the host will not say: the
    dry run ends with its lines, not a traceback."""
    add_tune_5(standin)
    standin.faults["img-5-2"] = [Status(206, {"Content-Range": f"bytes 0-0/{total}"})]
    assert run_fetch(standin, archive, "5", "--dry-run") == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == (
        "tune 5 (T): would download 4 files, 1.0 MiB (size of 1 unknown); 0 already archived"
    )


def test_a_prompts_file_not_downloadable_is_said_with_its_prompt(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each prompt's first image is its prompt_image 0: the dry run's lines and --json
    name the prompt of one the host refuses (its id, never its text), and of each it
    would download."""
    add_tune_5(standin)
    standin.add_prompt(5, 700, "ohwx", [standin.file_url("missing")])
    standin.add_prompt(5, 701, "ohwx b", [standin.add_file("there", bytes(2_000))])
    assert run_fetch(standin, archive, "5", "--prompts", "--dry-run") == 1
    captured = capsys.readouterr()
    assert "(prompt_image 0 of prompt 700: HTTP 404)" in captured.out
    assert captured.err.splitlines() == [
        "tune-archiver: error: tune 5 (T): prompt_image 0 of prompt 700: not downloadable: "
        f"HTTP 404 from {standin.file_url('missing')}"]
    assert run_fetch(standin, archive, "5", "--prompts", "--dry-run", "--json") == 1
    [tune] = json.loads(capsys.readouterr().out)["tunes"]
    assert [f["prompt_id"] for f in tune["not_downloadable"]] == [700]
    assert [f.get("prompt_id") for f in tune["download"]].count(701) == 1


def test_dry_run_of_filters_that_select_nothing_says_so_as_the_fetch_does(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch --all --title 'Jnae*' says '--all selected no tunes passing the filters';
    its dry run, the way to try a filter before a cron line uses it, said only 'would
    download 0 files, 0 B' (exit 0), as of an account already archived."""
    add_tune_5(standin)
    assert run_fetch(standin, archive, "--all", "--title", "X*", "--dry-run") == 0
    captured = capsys.readouterr()
    assert "--all selected no tunes passing the filters" in captured.err
    assert "would download 0 files" in captured.out
    assert run_fetch(standin, archive, "--all", "--title", "T", "--dry-run") == 0
    assert "selected no tunes" not in capsys.readouterr().err
