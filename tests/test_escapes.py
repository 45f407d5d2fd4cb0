"""Text from servers and manifests never acts on a terminal: escapes are shown, not obeyed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.archive_helpers import add_tune, cli, manifest_of, write_manifest
from tests.helpers import run_fetch
from tests.standin import StandIn, Status
from tune_archiver.cli.terminal import json_text
from tune_archiver.text import visible

# An OSC 52 clipboard write, a CR LF that starts a forged summary line, a screen clear,
# and the same sequences started by C1 controls (CSI U+009B, OSC U+009D).
FORGED = "tune 9 (x): 0 files, 0 B (0 new, 0 already archived, 0 failed)"
HOSTILE = f"T\x1b]52;c;ZXZpbA==\x07\r\n{FORGED}\x1b[2J\u009b2J\u009d52;c;eA==\u009c"
# Every control character but the LF that ends our own lines.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def assert_safe(*printed: str) -> None:
    """No control character but LF, and no line that starts with the forged summary."""
    for text in printed:
        assert CONTROL.findall(text) == []
        assert not any(line.startswith("tune 9 (x)") for line in re.split(r"[\r\n]", text))


def hostile_tune(standin: StandIn) -> None:
    add_tune(standin, 9, title=HOSTILE, branch="sd\x1b[31m", model_type="lo\rra")


def test_fetch_summary_shows_a_hostile_title_escaped(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch's summary line shows the title's escapes, CR and LF as \\xNN on one line."""
    hostile_tune(standin)
    assert run_fetch(standin, archive, "9") == 0
    printed = capsys.readouterr()
    assert_safe(printed.out, printed.err)
    [line] = printed.out.splitlines()
    assert line.startswith("tune 9 (T\\x1b]52;c;ZXZpbA==\\x07\\x0d\\x0atune 9 (x): 0 files")
    assert "\\x9b2J" in line


def test_an_api_error_body_is_one_escaped_error_line(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API's `error` text in a failed tune's error line is escaped, and stays one line."""
    body = json.dumps({"error": HOSTILE}).encode()
    standin.api_faults[8] = [Status(422, {"Content-Type": "application/json"}, body)]
    assert run_fetch(standin, archive, "8", "--retries", "0") == 1
    printed = capsys.readouterr()
    assert_safe(printed.out, printed.err)
    [line] = printed.err.splitlines()
    assert line.startswith("tune-archiver: error: tune 8: the API answered HTTP 422: T\\x1b]52")


def test_fetch_json_escapes_c1_controls(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json holds no raw control character (C1 written as \\u009b) and gives the title back."""
    hostile_tune(standin)
    assert run_fetch(standin, archive, "9", "--json") == 0
    printed = capsys.readouterr()
    assert_safe(printed.out, printed.err)
    assert "\\u009b2J" in printed.out
    [tune] = json.loads(printed.out)["tunes"]
    assert tune["title"] == HOSTILE


def test_the_manifest_on_disk_holds_no_raw_hidden_character(
    standin: StandIn, archive: Path
) -> None:
    """`cat` or `grep -r` of an archive (or an export's manifest.json) printed a title's
    C1 controls and bidi overrides raw, which JSON allows: written as \\u009b and
    \\u202e, the manifest still gives the title back."""
    add_tune(standin, 9, title=f"{HOSTILE} \u202eevil")
    assert run_fetch(standin, archive, "9") == 0
    text = (archive / "manifests" / "9.json").read_text()
    assert_safe(text.replace("\n", ""))
    assert "\u202e" not in text
    assert "\\u009b2J" in text
    assert manifest_of(archive, 9)["tune"]["title"] == f"{HOSTILE} \u202eevil"


def test_dry_run_lines_are_escaped(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch --dry-run names the tune with its title escaped."""
    hostile_tune(standin)
    assert run_fetch(standin, archive, "9", "--dry-run") == 0
    printed = capsys.readouterr()
    assert_safe(printed.out, printed.err)
    assert printed.out.splitlines()[0].startswith("tune 9 (T\\x1b]52;c;")


def test_list_table_is_escaped_and_aligned(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """list shows title, branch and model type escaped; the table keeps one line per tune."""
    hostile_tune(standin)
    assert run_fetch(standin, archive, "9") == 0
    ran = cli(capsys, "list", "--archive", str(archive))
    assert ran.code == 0
    assert_safe(ran.out, ran.err)
    header, row = ran.out.splitlines()
    assert row[header.index("branch"):].startswith("sd\\x1b[31m")
    assert row[header.index("model type"):].startswith("lo\\x0dra")
    ran = cli(capsys, "list", "--archive", str(archive), "--json")
    assert_safe(ran.out, ran.err)
    assert json.loads(ran.out)["tunes"][0]["title"] == HOSTILE


def planted_failure(standin: StandIn, archive: Path) -> None:
    """Tune 9 archived, then its manifest says image 0 failed with a hostile error."""
    hostile_tune(standin)
    assert run_fetch(standin, archive, "9") == 0
    document = manifest_of(archive, 9)
    entry = document["assets"][1]
    for field in ("sha256", "size", "path", "content_type"):
        del entry[field]
    entry.update(status="failed", error=HOSTILE)
    write_manifest(archive, 9, document)


def test_verify_error_lines_are_escaped(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed entry's error from the manifest is one escaped verify error line."""
    planted_failure(standin, archive)
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert ran.code == 1
    assert_safe(ran.out, ran.err)
    [line] = ran.errors
    assert line.startswith("tune-archiver: error: tune 9: training_image 0: failed: T\\x1b]52")


def test_export_lines_are_escaped(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export's error line for a file not archived, and its --json, hold no raw control."""
    planted_failure(standin, archive)
    ran = cli(capsys, "export", "9", str(tmp_path / "out"), "--archive", str(archive))
    assert ran.code == 1
    assert_safe(ran.out, ran.err)
    assert ran.errors[0].startswith("tune-archiver: error: tune 9: training_image 0: not "
                                    "archived (T\\x1b]52")
    ran = cli(capsys, "export", "9", str(tmp_path / "again"), "--archive", str(archive),
              "--json")
    assert_safe(ran.out, ran.err)
    assert json.loads(ran.out)["failed"][0].endswith(f"({HOSTILE})")


def test_log_lines_are_escaped(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-v's retry line, which quotes the API's error text, is one escaped line."""
    hostile_tune(standin)
    body = json.dumps({"error": HOSTILE}).encode()
    standin.api_faults[9] = [Status(500, {"Content-Type": "application/json"}, body)]
    assert run_fetch(standin, archive, "9", "-v") == 0
    printed = capsys.readouterr()
    assert_safe(printed.out, printed.err)
    [retry] = [line for line in printed.err.splitlines() if "retrying tune 9" in line]
    assert "HTTP 500: T\\x1b]52;c;ZXZpbA==\\x07 tune 9 (x)" in retry


def test_json_text_escapes_del_and_c1_but_keeps_text() -> None:
    """DEL and C1 become \\u escapes; other text, non-ASCII included, is kept as is."""
    text = json_text({"t": "é\x7f\x85\u009b"}, [])
    assert text == '{\n  "t": "é\\u007f\\u0085\\u009b"\n}'
    assert json.loads(text) == {"t": "é\x7f\x85\u009b"}


def test_bidi_controls_in_a_title_are_shown_as_escapes(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unicode's bidirectional controls (U+202E RIGHT-TO-LEFT OVERRIDE, the U+2066-U+2069
    isolates) reorder what a terminal shows ("Trojan Source"): a title holding them could
    make a summary line read "0 failed" where it says otherwise. Like the C0 and C1
    controls they are shown as escapes, not printed raw."""
    add_tune(standin, 9, title="Jane\u202e deliaf 0 \u2066x\u2069")
    assert run_fetch(standin, archive, "9") == 0
    printed = capsys.readouterr()
    for control in ("\u202e", "\u2066", "\u2069"):
        assert control not in printed.out + printed.err
    assert printed.out.startswith("tune 9 (Jane\\u202e deliaf 0 \\u2066x\\u2069): ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\u202ab\u202bc\u202cd\u202de\u202e", "a\\u202ab\\u202bc\\u202cd\\u202de\\u202e"),
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
        ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),
        ("zero\u200bwidth\ufeff soft\u00adhyphen", "zero\\u200bwidth\\ufeff soft\\xadhyphen"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("lone \ud800", "lone \\ud800"),
        ("\U000e0001en", "\\U000e0001en"),
        ("Zoë, 東京, Ελένη, \U0001f469\u200d\U0001f4bb, \u0645\u06cc\u200c\u0634\u0648\u062f",
         "Zoë, 東京, Ελένη, \U0001f469\u200d\U0001f4bb, \u0645\u06cc\u200c\u0634\u0648\u062f"),
    ],
    ids=["embeddings-overrides", "isolates", "marks", "invisible", "separators", "surrogate",
         "language-tag", "ordinary-text"],
)
def test_visible_escapes_format_characters_and_keeps_ordinary_text(
    text: str, expected: str
) -> None:
    """Format characters (Unicode Cf), line and paragraph separators and lone surrogates
    are shown as escapes; accented letters, CJK, Greek, emoji joined by ZWJ and Persian
    joined by ZWNJ are kept as they are. (Compared as ascii(): a failure that quotes a
    lone surrogate could not be reported.)"""
    assert ascii(visible(text)) == ascii(expected)


def test_json_text_escapes_bidi_controls_and_reads_back_the_same() -> None:
    """--json writes bidirectional and other format characters as \\u escapes (a pair
    beyond U+FFFF); a parser gets the same text back."""
    value = {"t": "a\u202eb\u2066c\U000e0001d \U0001f469\u200d\U0001f4bb"}
    text = json_text(value, [])
    assert [char for char in "\u202e\u2066\U000e0001" if char in text] == []
    assert "\\u202e" in text
    assert "\\udb40\\udc01" in text
    assert "\U0001f469\u200d\U0001f4bb" in text
    assert json.loads(text) == value
