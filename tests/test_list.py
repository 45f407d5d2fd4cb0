"""`list`: one row per archived tune, from the manifests, with the time left before expiry."""

from __future__ import annotations

import asyncio
import json
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.archive_helpers import add_tune, archived, cli, manifest_of
from tests.helpers import run_fetch
from tests.standin import StandIn
from tune_archiver.store.local import LocalStore

NOW = datetime(2026, 12, 1, 9, 30, 15, tzinfo=UTC)  # the clock `list` is given
HEADER = ("id", "title", "branch", "model type", "checkpoint", "files", "size", "complete",
          "archived at", "expires at", "left")

_ROW = {
    "type": "object",
    "additionalProperties": False,
    "required": ["tune_id", "title", "branch", "model_type", "files", "failed", "gone",
                 "checkpoint", "state", "prompts_unread", "unread", "workspace", "bytes",
                 "complete",
                 "archived_at", "expires_at", "seconds_left"],
    "properties": {
        "tune_id": {"type": "integer", "minimum": 1},
        "title": {"type": ["string", "null"]},
        "branch": {"type": ["string", "null"]},
        "model_type": {"type": ["string", "null"]},
        "files": {"type": "integer", "minimum": 0, "description": "files archived"},
        "failed": {"type": "integer", "minimum": 0, "description": "files recorded as failed"},
        "gone": {"type": "integer", "minimum": 0, "description": "files lost upstream"},
        "checkpoint": {"enum": ["yes", "none", "failed"]},
        "state": {"enum": ["files_listed", "training", "no_files_listed", None]},
        "prompts_unread": {"type": "boolean", "description": "--prompts could not read them"},
        "unread": {"type": "array", "items": {"type": "string"},
                   "description": "kinds of file whose field the API sent malformed"},
        "workspace": {"type": ["string", "null"], "description": "id, personal, or null"},
        "bytes": {"type": "integer", "minimum": 0, "description": "bytes of the files archived"},
        "complete": {"type": "boolean"},
        "archived_at": {"type": ["string", "null"]},
        "expires_at": {"type": ["string", "null"], "description": "as the API gave it"},
        "seconds_left": {"type": ["integer", "null"], "minimum": 0,
                         "description": "0 once expired; null without a readable expires_at"},
    },
}
# The documented shape of `list --json`: newest id first; a manifest that cannot be read
# is a row of its own with only the id and an error.
LIST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["tunes"],
    "properties": {
        "tunes": {
            "type": "array",
            "items": {
                "oneOf": [
                    _ROW,
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["tune_id", "error"],
                        "properties": {"tune_id": {"type": "integer", "minimum": 1},
                                       "error": {"type": "string"}},
                    },
                ]
            },
        }
    },
}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def api_time(moment: datetime) -> str:
    """A timestamp written the way Astria writes them: milliseconds and a Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def table(text: str) -> list[dict[str, str]]:
    """The rows of the printed table, cut at the columns the header line shows."""
    header, *lines = text.splitlines()
    starts = [header.index(name) for name in HEADER]
    assert starts == sorted(starts)
    assert header.split("  ")[0] == "id"
    ends = [*starts[1:], None]
    return [
        {name: line[start:end].strip() for name, start, end in zip(HEADER, starts, ends,
                                                                     strict=True)}
        for line in lines
    ]


def kib(count: int) -> str:
    assert 1024 <= count < 1024**2
    return f"{count / 1024:.1f} KiB"


def day(moment: str) -> str:
    """A timestamp as the table shows it: to the minute, a space for the T."""
    return moment[:16].replace("T", " ")


def a_day_on() -> datetime:
    """The clock `list` is told when a tune must not have expired at its fetch, which
    runs by the real clock: its file that fails is then failed, not gone upstream."""
    return datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=1)


def test_table_has_one_row_per_tune(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each tune's id, title, branch, type, files, size, completeness, dates and time left."""
    later = a_day_on()
    three_days = api_time(later + timedelta(days=3))
    hours = api_time(later + timedelta(hours=5, minutes=30))
    one = add_tune(standin, 1, title="Jane Doe", branch="flux1", model_type="lora",
                   expires_at=three_days)
    two = add_tune(standin, 2, title="John Doe", branch="sdxl1", model_type="checkpoint",
                   expires_at=hours)
    standin.tunes[2]["orig_images"].append(standin.file_url("gone.jpg"))
    archived(standin, archive, 1)
    assert run_fetch(standin, archive, "2") == 1
    ran = cli(capsys, "list", "--archive", str(archive), now=later)
    assert ran.code == 0
    assert ran.err == ""
    assert ran.out.splitlines()[0].split() == " ".join(HEADER).split()
    rows = table(ran.out)
    assert rows == [
        {"id": "2", "title": "John Doe", "branch": "sdxl1", "model type": "checkpoint",
         "checkpoint": "yes", "files": f"{len(two.all)} (1 failed)",
         "size": kib(sum(map(len, two.all))),
         "complete": "no", "archived at": day(manifest_of(archive, 2)["archived_at"]),
         "expires at": day(hours), "left": "5h 30m"},
        {"id": "1", "title": "Jane Doe", "branch": "flux1", "model type": "lora",
         "checkpoint": "yes", "files": str(len(one.all)), "size": kib(sum(map(len, one.all))),
         "complete": "yes", "archived at": day(manifest_of(archive, 1)["archived_at"]),
         "expires at": day(three_days), "left": "3d 0h"},
    ]


# expires_at relative to NOW, and the time left the table shows for it
LEFT = [
    (timedelta(days=12, hours=3, minutes=59), "12d 3h"),
    (timedelta(days=2, hours=23, minutes=59, seconds=59), "2d 23h"),
    (timedelta(hours=23, minutes=59, seconds=59), "23h 59m"),
    (timedelta(seconds=59), "under a minute"),
    (timedelta(0), "expired"),
    (timedelta(hours=-1), "expired"),
    (None, "-"),
]


def test_time_left_counts_down_to_expired(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The "left" column: days and hours, then hours and minutes, "expired" once past, else "-"."""
    for tune_id, (delta, _) in enumerate(LEFT, start=1):
        add_tune(standin, tune_id, images=0,
                 expires_at=None if delta is None else api_time(NOW + delta))
    archived(standin, archive, *range(1, len(LEFT) + 1))
    rows = table(cli(capsys, "list", "--archive", str(archive), now=NOW).out)
    assert [(int(r["id"]), r["left"]) for r in reversed(rows)] == [
        (tune_id, text) for tune_id, (_, text) in enumerate(LEFT, start=1)
    ]
    assert rows[0]["expires at"] == "-"
    document = json.loads(cli(capsys, "list", "--archive", str(archive), "--json", now=NOW).out)
    assert [row["seconds_left"] for row in reversed(document["tunes"])] == [
        None if delta is None else max(0, int(delta.total_seconds())) for delta, _ in LEFT
    ]


def test_long_title_is_cut_to_fit(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A title longer than 30 characters shows its first 29 and an ellipsis."""
    title = "An extremely long title that goes on and on"
    add_tune(standin, 1, title=title)
    archived(standin, archive, 1)
    rows = table(cli(capsys, "list", "--archive", str(archive)).out)
    assert rows[0]["title"] == title[:29] + "…"


def test_json_has_the_documented_shape(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json matches LIST_SCHEMA, newest first, seconds_left counted from expires_at."""
    later = a_day_on()  # tune 2 has expired by then, not when it is fetched
    soon = later + timedelta(days=2, hours=7, seconds=3)
    one = add_tune(standin, 1, title="One", expires_at=api_time(soon))
    two = add_tune(standin, 2, title="Two", branch="flux1", model_type="checkpoint",
                   expires_at=api_time(later - timedelta(hours=23)))
    standin.tunes[2]["orig_images"].append(standin.file_url("gone.jpg"))
    archived(standin, archive, 1)
    assert run_fetch(standin, archive, "2") == 1
    add_tune(standin, 3)
    archived(standin, archive, 3)
    (archive / "manifests" / "3.json").write_text("{ broken")
    ran = cli(capsys, "list", "--archive", str(archive), "--json", now=later)
    assert ran.code == 1  # an unreadable manifest is a failure, named on stderr
    document = json.loads(ran.out)
    jsonschema.Draft202012Validator(LIST_SCHEMA).validate(document)
    assert document["tunes"] == [
        {"tune_id": 3, "error": "the manifest is unreadable: it is not JSON (Expecting "
                                "property name enclosed in double quotes: line 1 column 3 "
                                "(char 2))"},
        {"tune_id": 2, "title": "Two", "branch": "flux1", "model_type": "checkpoint",
         "files": len(two.all), "failed": 1, "gone": 0, "checkpoint": "yes",
             "state": "files_listed", "prompts_unread": False, "unread": [], "workspace": None,
         "bytes": sum(map(len, two.all)),
         "complete": False, "archived_at": manifest_of(archive, 2)["archived_at"],
         "expires_at": standin.tunes[2]["expires_at"], "seconds_left": 0},
        {"tune_id": 1, "title": "One", "branch": "sdxl1", "model_type": "lora",
         "files": len(one.all), "failed": 0, "gone": 0, "checkpoint": "yes",
             "state": "files_listed", "prompts_unread": False, "unread": [], "workspace": None,
         "bytes": sum(map(len, one.all)),
         "complete": True,
         "archived_at": manifest_of(archive, 1)["archived_at"],
         "expires_at": standin.tunes[1]["expires_at"],
         "seconds_left": int((soon - later).total_seconds())},
    ]


def test_unreadable_manifest_is_a_row_of_its_own(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken manifest shows its id and why it is unreadable, exits 1; the others
    still list."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    archived(standin, archive, 1, 2)
    (archive / "manifests" / "2.json").write_text("[]")
    ran = cli(capsys, "list", "--archive", str(archive))
    assert ran.code == 1
    why = "the manifest is unreadable: it holds a list, not a JSON object"
    assert ran.errors == [f"tune-archiver: error: tune 2: {why}"]
    lines = ran.out.splitlines()
    assert lines[1].split("  ")[0] == "2"
    assert lines[1].split()[1:] == why.split()
    assert table("\n".join([lines[0], lines[2]]))[0]["id"] == "1"


def test_empty_archive_prints_only_the_header(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An archive without manifests lists the header line and nothing else; --json no tunes."""
    asyncio.run(LocalStore(archive).prepare())
    ran = cli(capsys, "list", "--archive", str(archive))
    assert (ran.code, ran.err) == (0, "")
    assert ran.out == "  ".join(HEADER) + "\n"
    ran = cli(capsys, "list", "--archive", str(archive), "--json")
    assert json.loads(ran.out) == {"tunes": []}


def test_no_archive_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """list where there is no archive exits 2 with one error line and creates nothing."""
    ran = cli(capsys, "list", "--archive", str(tmp_path / "none"))
    assert ran.code == 2
    assert ran.out == ""
    assert ran.errors == [f"tune-archiver: error: no archive at {tmp_path / 'none'} "
                          "(it has no manifests/ folder)"]
    assert not (tmp_path / "none").exists()



def test_list_columns_stay_aligned_under_wide_and_combining_titles(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Japanese title (two columns a character), one with a combining accent (none for
    the accent) and one wider than the title column: each row's branch starts in the
    header's column, as a terminal shows it; the long title is cut to 30 columns."""
    archive = tmp_path / "archive"
    titles = {1: "山田花子", 2: "e\u0301mile", 3: "ポートレート写真" * 3}
    for tune_id, title in titles.items():
        add_tune(standin, tune_id, images=1, title=title, branch="flux1")
    assert run_fetch(standin, archive, "1", "2", "3") == 0
    ran = cli(capsys, "list", "--archive", str(archive))
    header, *rows = ran.out.splitlines()

    def shown_width(text: str) -> int:
        return sum(0 if unicodedata.combining(char) else
                   2 if unicodedata.east_asian_width(char) == "W" else 1 for char in text)

    for row in rows:
        assert shown_width(row[:row.index("flux1")]) == header.index("branch")
    long_title = rows[0].split("  ")[1]
    assert long_title.endswith("…")
    assert shown_width(long_title) <= 30


def test_a_checkpoint_tune_shows_model_type_checkpoint(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Astria sends a full checkpoint tune's model_type as null (its docs: "lora, pti,
    faceid, null for checkpoint"): list showed '-' for it, and --json null, as for a
    tune whose type is not known at all, while --model-type checkpoint selects it. It is
    'checkpoint'; a tune sending no model_type stays '-'."""
    add_tune(standin, 1, model_type=None)
    add_tune(standin, 2)
    del standin.tunes[2]["model_type"]
    archived(standin, archive, 1, 2)
    ran = cli(capsys, "list", "--archive", str(archive), now=a_day_on())
    assert [(row["id"], row["model type"]) for row in table(ran.out)] == [
        ("2", "-"), ("1", "checkpoint")]
    ran = cli(capsys, "list", "--json", "--archive", str(archive), now=a_day_on())
    assert [(row["tune_id"], row["model_type"]) for row in json.loads(ran.out)["tunes"]] == [
        (2, None), (1, "checkpoint")]


def test_list_says_a_training_photo_listed_as_null_is_not_archived(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune whose orig_images holds a null (a photo Astria gives no URL for) is archived
    not complete, with no entry for that photo: list said only 'complete no' (0 failed,
    nothing gone, not training) while verify names the photo not archived. Its row says
    why ('training_image list unread'), and --json gives unread."""
    add_tune(standin, 5, title="Jane")
    standin.tunes[5]["orig_images"].append(None)
    assert run_fetch(standin, archive, "5") == 1
    row = cli(capsys, "list", "--archive", str(archive), now=NOW).out.splitlines()[1]
    assert "training_image list unread" in row
    ran = cli(capsys, "list", "--archive", str(archive), "--json", now=NOW)
    document = json.loads(ran.out)
    jsonschema.Draft202012Validator(LIST_SCHEMA).validate(document)
    [tune] = document["tunes"]
    assert (tune["complete"], tune["failed"], tune["unread"]) == (False, 0, ["training_image"])


def test_a_checkpoint_left_out_by_only_images_is_not_none(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune fetched with --only images, its checkpoint listed by the API but never
    archived, showed checkpoint 'none', which says the API listed none (a Flux LoRA,
    FaceID): a user read that as nothing more to keep. The tune recorded lists one and
    none is archived: 'failed', as the README defines it; one listing none stays 'none'."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    standin.tunes[2].update(ckpt_url=None, ckpt_urls=[])
    assert run_fetch(standin, archive, "1", "--only", "images") == 0
    archived(standin, archive, 2)
    ran = cli(capsys, "list", "--json", "--archive", str(archive), now=a_day_on())
    assert [(row["tune_id"], row["checkpoint"], row["complete"])
            for row in json.loads(ran.out)["tunes"]] == [(2, "none", True), (1, "failed", False)]


def test_a_tune_page_names_a_checkpoint_left_out_by_only_images(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its page (serve's, and the export's index.html) said 'Checkpoints: none listed' for
    a tune fetched with --only images whose checkpoint the API lists, where list says
    'failed': one opening the page took the tune for one with no checkpoint to keep."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    standin.tunes[2].update(ckpt_url=None, ckpt_urls=[])
    assert run_fetch(standin, archive, "1", "--only", "images") == 0
    archived(standin, archive, 2)
    pages = {}
    for tune_id in (1, 2):
        assert cli(capsys, "export", str(tune_id), str(tmp_path / "dest"),
                   "--archive", str(archive)).code == 0
        [folder] = (tmp_path / "dest").glob(f"{tune_id}-*")
        pages[tune_id] = (folder / "index.html").read_text()
    assert "none listed" not in pages[1]
    assert "listed by the API, not archived" in pages[1]
    assert "none listed" in pages[2]
