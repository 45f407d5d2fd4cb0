"""fetch --all's filters: the API's own sent on every page, and each applied locally too."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_fetch, stored_blobs
from tests.standin import StandIn
from tune_archiver.cli import scale
from tune_archiver.errors import ConfigError
from tune_archiver.selection import TuneFilter, ids_from_lines


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def add_tune(standin: StandIn, tune_id: int, **fields: Any) -> None:
    ckpt = standin.add_file(f"ckpt-{tune_id}.safetensors", os.urandom(2_000 + tune_id))
    standin.add_tune(tune_id, [ckpt], [], **fields)


def manifests(archive: Path) -> set[int]:
    return {int(p.stem) for p in (archive / "manifests").glob("*.json")}


def several(standin: StandIn) -> None:
    """Eight tunes of mixed titles, types, branches and creation dates."""
    add_tune(standin, 1, title="client-Anna", model_type="lora", branch="flux1",
             created_at="2026-01-10T00:00:00Z")
    add_tune(standin, 2, title="client-bob", model_type="faceid", branch="flux1",
             created_at="2026-03-10T00:00:00Z")
    add_tune(standin, 3, title="Client-Carl", model_type="lora", branch="sdxl1",
             created_at="2026-05-10T00:00:00Z")
    add_tune(standin, 4, title="house style", model_type="lora", branch="flux1",
             created_at="2026-07-10T00:00:00Z")
    add_tune(standin, 5, title="client-dora", model_type="lora", branch="flux1",
             created_at="2026-09-10T00:00:00Z")
    add_tune(standin, 6, title="client-eve", model_type="pti", branch="flux1",
             created_at="2026-10-10T00:00:00Z")
    add_tune(standin, 7, title="client-fay", model_type="lora", branch="flux1")
    # A checkpoint tune's model_type is null (astria-docs docs/api/0-tune/1-create.md).
    add_tune(standin, 8, title="client-gus", model_type=None, branch="sd15",
             created_at="2026-11-10T00:00:00Z")


def listing_paths(standin: StandIn) -> list[str]:
    return [r.path for r in standin.seen("api", "/tunes?")]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--title", "CLIENT-*"], {1, 2, 3, 5, 6, 7, 8}),
        (["--title", "client-?o*"], {2, 5}),
        (["--model-type", "lora"], {1, 3, 4, 5, 7}),
        (["--branch", "flux1"], {1, 2, 4, 5, 6, 7}),
        (["--branch", "FLUX1"], {1, 2, 4, 5, 6, 7}),  # any case, as the title
        (["--created-after", "2026-05-01", "--created-before", "2026-10-01"], {3, 4, 5}),
        (["--title", "client-*", "--model-type", "lora", "--branch", "flux1"], {1, 5, 7}),
        (["--model-type", "lora", "--shard", "1/2"], {4}),
        (["--model-type", "checkpoint"], {8}),
        (["--model-type", "checkpoint", "--title", "house*"], set()),
    ],
)
@pytest.mark.parametrize("api_filters", [True, False])
def test_filters_combine_with_and_whether_or_not_the_api_filters(
    standin: StandIn, archive: Path, options: list[str], expected: set[int], api_filters: bool,
) -> None:
    """Each filter and their AND choose the same tunes when the API honours its filters
    and when it ignores them (the local filter still applies)."""
    several(standin)
    standin.ignore_list_filters = not api_filters
    assert run_fetch(standin, archive, "--all", *options) == 0
    assert manifests(archive) == expected


def test_the_apis_own_filters_are_sent_on_every_page(standin: StandIn, archive: Path) -> None:
    """model_type, branch and a plain title go in the query of each page, paged by before_id."""
    several(standin)
    for tune_id in range(9, 15):
        add_tune(standin, tune_id, title="client-x", model_type="lora", branch="flux1")
    standin.ignore_list_filters = True  # so that there is more than one page
    assert run_fetch(standin, archive, "--all", "--model-type", "lora", "--branch", "flux1",
                     "--title", "client-x") == 0
    paths = listing_paths(standin)
    assert len(paths) > 1
    assert paths[1].startswith("/tunes?limit=120&before_id=")
    for path in paths:
        assert path.endswith("&model_type=lora&branch=flux1&title=client-x")
    assert manifests(archive) == set(range(9, 15))


def test_a_glob_title_is_not_sent_to_the_api(standin: StandIn, archive: Path) -> None:
    """The API searches titles as text: a wildcard title stays a local filter only."""
    several(standin)
    assert run_fetch(standin, archive, "--all", "--title", "client-*") == 0
    assert not any("title=" in path for path in listing_paths(standin))


def test_ids_from_a_file_with_comments_and_blank_lines(
    standin: StandIn, archive: Path, tmp_path: Path
) -> None:
    """--ids-from keeps only the listed ids, and combines with the other filters."""
    several(standin)
    ids = tmp_path / "ids.txt"
    ids.write_text("# the ones to keep\n1\n\n  2  # bob, a faceid\n3\n4\n")
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids),
                     "--model-type", "lora") == 0
    assert manifests(archive) == {1, 3, 4}


@pytest.mark.parametrize("options", [[], ["--model-type", "lora"], ["--dry-run"]])
def test_ids_from_names_each_id_the_api_does_not_list(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    options: list[str],
) -> None:
    """An id of --ids-from that the listing never shows (a typo, another account's tune)
    was dropped silently, exit 0, as if backed up; now each is named as a failed tune,
    in --json too, exit 1. One another filter keeps out is not named (the API's own
    filters would hide it: they are not sent with --ids-from)."""
    several(standin)
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\n99\n")
    code = run_fetch(standin, archive, "--all", "--ids-from", str(ids), "--json", *options)
    captured = capsys.readouterr()
    assert code == 1
    assert "tune 99: not listed by the API" in captured.err
    assert "tune 2:" not in captured.err
    document = json.loads(captured.out)
    assert document["ok"] is False
    if "--dry-run" not in options:
        tunes = {t["tune_id"]: t["ok"] for t in document["tunes"]}
        assert tunes == ({1: True, 99: False} if options else {1: True, 2: True, 99: False})
        assert manifests(archive) == set(tunes) - {99}


def kept_then_deleted(standin: StandIn, archive: Path, tmp_path: Path) -> Path:
    """Tunes 1 and 2 archived whole by `--all --ids-from keep.txt`, then tune 2 deleted
    upstream (its expires_at passed); keep.txt's path."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    ids = tmp_path / "keep.txt"
    ids.write_text("1\n2\n")
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids)) == 0
    del standin.tunes[2]
    return ids


def test_ids_from_an_archived_tune_deleted_upstream_fails_no_run(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daily `--all --ids-from keep.txt` archived tune 2 whole; then Astria deleted
    it (its expires_at passed), and every later run failed, exit 1 and a fail ping, "not
    listed by the API (no such tune in this account or workspace?)" for the one tune
    the backup had saved. It is said on a warning line and skipped, exit 0; an id the
    archive does not hold, or holds incomplete, is still a failed tune."""
    ids = kept_then_deleted(standin, archive, tmp_path)
    capsys.readouterr()
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids), "--json") == 0
    captured = capsys.readouterr()
    assert "tune 2: no longer listed by the API (deleted upstream?)" in captured.err
    assert "error" not in captured.err
    document = json.loads(captured.out)
    assert document["ok"] is True
    assert {t["tune_id"]: (t["ok"], t["skipped"]) for t in document["tunes"]} == {
        1: (True, True), 2: (True, True)}
    document = json.loads((archive / "manifests" / "2.json").read_text())
    document["complete"] = False
    (archive / "manifests" / "2.json").write_text(json.dumps(document))
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids)) == 1
    assert "tune 2: not listed by the API" in capsys.readouterr().err


def test_ids_from_a_tune_deleted_upstream_whose_blob_is_lost_fails(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune archived complete, deleted upstream, whose checkpoint's blob the archive
    has since lost is not saved: skipped on the manifest's word alone, the run said it
    ok, exit 0, every day. It fails, naming the files lacking, as an unchanged tune
    listed is skipped only with every blob present."""
    ids = kept_then_deleted(standin, archive, tmp_path)
    tune_2 = standin.files["ckpt-2.safetensors"]
    (lost,) = [b for b in stored_blobs(archive) if b.read_bytes() == tune_2]
    lost.unlink()
    capsys.readouterr()
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids), "--json") == 1
    captured = capsys.readouterr()
    assert "tune 2: not listed by the API" in captured.err
    assert "the archive lacks 1 of its files" in captured.err
    document = json.loads(captured.out)
    assert {t["tune_id"]: (t["ok"], t["skipped"]) for t in document["tunes"]} == {
        1: (True, True), 2: (False, False)}


@pytest.mark.parametrize("scoped", [False, True], ids=["any-scope", "its-workspace-only"])
def test_ids_from_a_tune_of_another_workspace_archived_whole_still_fails(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    scoped: bool,
) -> None:
    """A tune archived whole once with --workspace 42, named in keep.txt of a daily run
    of the personal scope, is not listed there, yet it is not deleted: it was skipped as
    "deleted upstream?", exit 0, and its new files (a checkpoint retrained, images with
    --prompts) never fetched. Only a tune the API says is gone (404) is skipped; and
    since the API answers for the personal scope only without X-Workspace-Id (`scoped`),
    it is asked for in every workspace (all)."""
    standin.scoped_gets = scoped
    add_tune(standin, 1)
    add_tune(standin, 2)
    standin.tune_workspaces[2] = "42"
    assert run_fetch(standin, archive, "2", "--workspace", "42") == 0
    ids = tmp_path / "keep.txt"
    ids.write_text("1\n2\n")
    capsys.readouterr()
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids)) == 1
    err = capsys.readouterr().err
    assert "tune 2: not listed by the API" in err
    assert "deleted upstream?" not in err
    del standin.tunes[2]  # now Astria deleted it: skipped, as the backup holds it whole
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids)) == 0
    assert "tune 2: no longer listed by the API (deleted upstream?)" in capsys.readouterr().err


def test_ids_from_a_windows_file_with_a_bom_and_crlf(
    standin: StandIn, archive: Path, tmp_path: Path
) -> None:
    """A list saved by Notepad or Excel (a UTF-8 byte order mark, CRLF line ends) is read
    as its ids: its first line was refused as no tune id, exit 2."""
    several(standin)
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"\xef\xbb\xbf3\r\n5\r\n")
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids)) == 0
    assert manifests(archive) == {3, 5}


def test_ids_from_stdin(
    standin: StandIn, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ids-from - reads the ids from standard input."""
    several(standin)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"2\n6\n")))
    assert run_fetch(standin, archive, "--all", "--ids-from", "-") == 0
    assert manifests(archive) == {2, 6}


@pytest.mark.parametrize("data", [b"2\n\xff\xfe\n", None], ids=["not-utf8", "closed"])
def test_ids_from_a_stdin_of_bytes_or_none_is_a_usage_error(
    standin: StandIn, archive: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], data: bytes | None,
) -> None:
    """--ids-from - given bytes that are not UTF-8 (a UTF-8 locale's stdin decodes them
    strictly) names the bad line, and a closed stdin (`<&-`) says so: exit 2, one line,
    never a UnicodeDecodeError or AttributeError traceback."""
    stdin = None if data is None else io.TextIOWrapper(io.BytesIO(data), "utf-8", "strict")
    several(standin)
    monkeypatch.setattr("sys.stdin", stdin)
    assert run_fetch(standin, archive, "--all", "--ids-from", "-") == 2
    err = capsys.readouterr().err
    assert err.startswith("tune-archiver: error: --ids-from")
    assert "line 2 is not a tune id" in err if data is not None else "stdin" in err
    assert not manifests(archive)


def test_a_bad_ids_line_is_a_usage_error_naming_only_its_number(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A line that is not an id: exit 2, its line number named and its text never printed."""
    several(standin)
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n# fine\nsk-secret-pasted-here\n")
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids)) == 2
    err = capsys.readouterr().err
    assert "line 3" in err
    assert "sk-secret" not in err
    assert not manifests(archive)


def test_an_ids_line_of_thousands_of_digits_is_a_usage_error(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A line of more digits than int() converts (over 4,300) is a line that is not a
    tune id: exit 2 naming its number, not a ValueError traceback."""
    several(standin)
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n" + "9" * 5000 + "\n")
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids)) == 2
    assert "line 2 is not a tune id" in capsys.readouterr().err
    assert not manifests(archive)


def test_ids_from_a_file_past_the_cap_is_refused_unread(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A file larger than any list of tune ids (a checkpoint named by mistake, /dev/zero)
    is exit 2 saying so, read no further than the cap: it was read whole into memory."""
    several(standin)
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"1\n" * (scale.MAX_IDS_BYTES // 2 + 1))
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids)) == 2
    assert "--ids-from file: larger than" in capsys.readouterr().err
    assert run_fetch(standin, archive, "--all", "--ids-from", "/dev/zero") == 2
    assert not manifests(archive)


@pytest.mark.parametrize("option", ["--title", "--branch"])
def test_a_filter_of_bytes_that_are_not_utf8_is_a_usage_error(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], option: str,
) -> None:
    """An argument with bytes that are not UTF-8 (a Latin-1 terminal's 'café': Python
    hands them over as lone surrogates) is exit 2 naming the option: sent to the API
    as its filter, it raised UnicodeEncodeError, a traceback."""
    several(standin)
    assert run_fetch(standin, archive, "--all", option, "caf\udce9") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tune-archiver: error: argument {option}: not text")
    assert not manifests(archive)


def test_filters_work_with_all_only(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--title with tune ids is a usage error (exit 2)."""
    several(standin)
    assert run_fetch(standin, archive, "1", "--title", "x*") == 2
    assert "--title works with --all" in capsys.readouterr().err


def test_dry_run_applies_the_filters(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch --all --dry-run --branch names only the tunes of that branch."""
    several(standin)
    standin.ignore_list_filters = True
    capsys.readouterr()
    assert run_fetch(standin, archive, "--all", "--dry-run", "--branch", "sd15") == 0
    out = capsys.readouterr().out
    assert [line.split(" (")[0] for line in out.splitlines() if line.startswith("tune ")] == [
        "tune 8"]


@pytest.mark.parametrize(
    ("listed", "keeps"),
    [
        ({"id": 1, "created_at": "not a date"}, False),
        ({"id": 1}, False),
        ({"id": 1, "created_at": "2026-06-01T00:00:00+02:00"}, True),
        ({"id": 1, "created_at": "2026-05-31T21:00:00Z"}, False),
    ],
)
def test_an_unreadable_or_missing_created_at_fails_a_date_filter(
    listed: dict[str, Any], keeps: bool
) -> None:
    """A date filter keeps only tunes whose created_at is readable and inside the bounds."""
    bound = datetime(2026, 5, 31, 21, 30, tzinfo=UTC)
    assert TuneFilter(created_after=bound).keeps(listed) is keeps


@pytest.mark.parametrize("created_at", ["2026-06-01T00:00:00Z", "2026-06-01T02:00:00+02:00",
                                        "2026-05-31T23:59:59Z", "2026-06-01T00:00:01Z"])
def test_two_runs_split_on_one_date_take_every_tune_once(created_at: str) -> None:
    """--created-before X and --created-after X split an account in two: a tune created
    at X itself (to the second) is in exactly one of them, not left out of both."""
    split = datetime(2026, 6, 1, tzinfo=UTC)
    listed = {"id": 1, "created_at": created_at}
    kept = [TuneFilter(created_before=split).keeps(listed),
            TuneFilter(created_after=split).keeps(listed)]
    assert kept.count(True) == 1


def test_ids_from_lines_refuses_zero_and_signs() -> None:
    """0, -1 and +1 are not tune ids: the line number is named."""
    for bad in ("0", "-1", "+1", "1.0"):
        with pytest.raises(ConfigError, match="line 2 is not a tune id"):
            ids_from_lines(["5", bad], "file")


def test_filters_that_select_nothing_say_so(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No tune passing the filters: one warning line saying so, exit 0, nothing fetched."""
    several(standin)
    assert run_fetch(standin, archive, "--all", "--title", "nobody*") == 0
    assert "--all selected no tunes passing the filters" in capsys.readouterr().err
    assert not manifests(archive)


def test_filters_combine_with_expiring_within(standin: StandIn, archive: Path) -> None:
    """--branch flux1 with --expiring-within 7d keeps only flux1 tunes expiring within 7 days."""
    several(standin)
    standin.tunes[1]["expires_at"] = "2026-12-03T00:00:00Z"
    standin.tunes[3]["expires_at"] = "2026-12-03T00:00:00Z"  # sdxl1: filtered by branch
    standin.tunes[5]["expires_at"] = "2027-03-01T00:00:00Z"  # flux1, but not soon
    for tune_id in (2, 4, 6, 7, 8):
        standin.tunes[tune_id]["expires_at"] = None
    now = datetime(2026, 11, 30, tzinfo=UTC)
    assert run_fetch(standin, archive, "--all", "--branch", "flux1", "--expiring-within", "7d",
                     clock=lambda: now) == 0
    assert manifests(archive) == {1}


def test_a_listed_creation_time_that_leaves_the_calendar_stops_no_run(
    standin: StandIn, archive: Path
) -> None:
    """A created_at that is ISO 8601 but falls before year 1 once in UTC is unreadable,
    like any other: no traceback, and the listing's other tunes are archived."""
    add_tune(standin, 1, created_at="0001-01-01T00:00:00+01:00")
    add_tune(standin, 2, created_at="2026-11-02T14:32:05.067Z")
    assert run_fetch(standin, archive, "--all", "--created-after", "2020-01-01") == 0
    assert manifests(archive) == {2}


@pytest.mark.parametrize("option", ["--title", "--branch"])
@pytest.mark.parametrize("blank", ["", " "])
def test_a_blank_filter_is_a_usage_error(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], option: str,
    blank: str,
) -> None:
    """`--title "$CLIENT"` with the variable unset in cron: a filter matching only empty
    text made --all select no tune, exit 0 (a success ping, nothing archived); it is exit
    2 naming the option, as a blank TUNE_ARCHIVER_TITLE is no filter and an empty
    --archive a usage error."""
    several(standin)
    assert run_fetch(standin, archive, "--all", option, blank) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tune-archiver: error: argument {option}: is blank")
    assert not manifests(archive)
