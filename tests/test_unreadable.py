"""A manifest the reader refuses, or the disk cannot read as a file, through verify, list,
gc and export: one line, exit 1."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.archive_helpers import (
    Served,
    add_tune,
    archived,
    cli,
    flip_byte,
    key_of,
    manifest_of,
    two_tunes_sharing_an_image,
    write_manifest,
)
from tests.helpers import blob_file, run_fetch, sha256, stored_blobs
from tests.standin import StandIn


def assets_five(document: dict[str, Any]) -> str:
    document["assets"] = 5
    return "assets is 5, not a list"


def assets_list_of_five(document: dict[str, Any]) -> str:
    document["assets"] = [5]
    return "assets[0] is 5, not a JSON object"


def upper_case_sha256(document: dict[str, Any]) -> str:
    checkpoint = document["assets"][0]
    checkpoint["sha256"] = checkpoint["sha256"].upper()
    return (f'assets[0] (checkpoint 0): sha256 is "{checkpoint["sha256"]}", not 64 lower-case '
            "hex digits")


def size_no_file_can_have(document: dict[str, Any]) -> str:
    document["assets"][0]["size"] = 10**400  # as many digits as json reads; no float holds it
    return ("assets[0] (checkpoint 0): size is a long number, not a non-negative integer "
            "below 2^63")


@dataclass
class Broken:
    """Tunes 1 and 2 archived (sharing an image); tune 1's manifest damaged."""

    one: Served
    two: Served
    original: bytes  # tune 1's manifest before the damage
    reason: str  # what the reader says is wrong with it


@pytest.fixture(params=[assets_five, assets_list_of_five, upper_case_sha256,
                        size_no_file_can_have],
                ids=["assets 5", "assets [5]", "bad sha256", "size past any file"])
def broken(
    request: pytest.FixtureRequest, standin: StandIn, archive: Path
) -> Broken:
    damage: Callable[[dict[str, Any]], str] = request.param
    one, two = two_tunes_sharing_an_image(standin, archive)
    original = (archive / "manifests" / "1.json").read_bytes()
    document = manifest_of(archive, 1)
    reason = damage(document)
    write_manifest(archive, 1, document)
    return Broken(one, two, original, reason)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def error(line: str) -> str:
    return f"tune-archiver: error: {line}"


def test_verify_names_it_and_still_verifies_the_other_tune(
    capsys: pytest.CaptureFixture[str], archive: Path, broken: Broken
) -> None:
    """verify says unreadable_manifest for tune 1 and exits 1, and still finds tune 2's damage."""
    checkpoint = broken.two.checkpoints[0]
    flip_byte(blob_file(archive, checkpoint))
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert ran.code == 1
    assert ran.err.splitlines() == ran.errors == [
        error(f"tune 1: unreadable manifest: {broken.reason} (tune-archiver fetch 1 "
              f"--archive {archive} sets it aside, and the fetch after it archives the "
              "tune anew; of a tune "
              "gone upstream, which no fetch finds, move it to manifests/damaged/1-0.json in "
              "the archive: gc keeps every blob while it is there)"),
        error(f"tune 2: checkpoint 0: corrupt: the bytes of {key_of(checkpoint)} hash to "
              f"{sha256(blob_file(archive, checkpoint).read_bytes())} "
              f"(repair: tune-archiver verify --repair 2 --archive {archive})"),
    ]
    assert ran.out.startswith(f"verified 2 tunes, {len(broken.two.all)} blobs, ")


def test_list_prints_one_error_line_and_lists_the_other_tune(
    capsys: pytest.CaptureFixture[str], archive: Path, broken: Broken
) -> None:
    """list names tune 1 on one error line, no traceback, lists tune 2 in full, and exits 1."""
    ran = cli(capsys, "list", "--archive", str(archive))
    assert ran.code == 1
    why = f"the manifest is unreadable: {broken.reason}"
    assert ran.err.splitlines() == ran.errors == [error(f"tune 1: {why}")]
    header, two, one = ran.out.splitlines()
    assert header.split()[:2] == ["id", "title"]
    assert two.split()[:7] == ["2", "Tune", "2", "sdxl1", "lora", "yes",
                               str(len(broken.two.all))]
    assert one.split() == ["1", *why.split()]


def test_list_keeps_its_columns_with_an_unreadable_manifest(
    capsys: pytest.CaptureFixture[str], archive: Path, broken: Broken
) -> None:
    """The reason in an unreadable manifest's row runs on in that row: measured as a
    title, it widened the title column of every tune to its length (a newer version's
    manifest: over 100 columns), and the table wrapped on every line of a terminal."""
    ran = cli(capsys, "list", "--archive", str(archive))
    header, two, one = ran.out.splitlines()
    assert header.index("branch") == two.index("sdxl1") == len("id  Tune 2  ")
    assert one.split() == ["1", "the", "manifest", "is", "unreadable:", *broken.reason.split()]


def test_gc_stops_before_removing_anything(
    capsys: pytest.CaptureFixture[str], archive: Path, broken: Broken
) -> None:
    """gc exits 1 naming the manifest and keeps a blob no manifest references, until repaired."""
    (archive / "manifests" / "2.json").unlink()  # tune 2's own blobs are now unreferenced
    orphan = blob_file(archive, broken.two.checkpoints[0])
    before = stored_blobs(archive)
    ran = cli(capsys, "gc", "--archive", str(archive))
    assert ran.code == 1
    assert ran.err.splitlines() == ran.errors == [error(
        f"the manifest of tune 1 is unreadable: {broken.reason}; gc removes nothing until it "
        "is mended: the next fetch of tune 1 sets it aside, and the fetch after it archives "
        "the tune anew "
        "(one gone upstream, which no fetch finds, is moved to manifests/damaged/1-0.json "
        "by hand; never "
        "remove it: gc would then take the blobs it alone names)"
    )]
    assert ran.out == ""
    assert stored_blobs(archive) == before
    (archive / "manifests" / "1.json").write_bytes(broken.original)
    assert cli(capsys, "gc", "--archive", str(archive)).code == 0
    assert not orphan.exists()  # what the damaged manifest alone had kept


def test_what_gc_says_to_do_about_it_keeps_its_blobs(
    standin: StandIn, capsys: pytest.CaptureFixture[str], archive: Path, broken: Broken
) -> None:
    """gc's line says the tune's next fetch sets the manifest aside, which keeps every blob
    it names: it said "until it is repaired or removed", and a manifest removed as it said
    had the next gc take the blobs it alone named (a checkpoint that may no longer be had
    upstream), where verify says never to remove one in place."""
    alone = [blob_file(archive, data) for data in broken.one.all if data not in broken.two.all]
    said = cli(capsys, "gc", "--archive", str(archive)).errors
    assert [line for line in said if "or removed" in line] == []
    assert "the next fetch of tune 1 sets it aside" in said[0]
    assert run_fetch(standin, archive, "1") == 1  # as said: set aside, the tune not fetched
    assert list((archive / "manifests" / "damaged").iterdir())
    assert cli(capsys, "gc", "--archive", str(archive)).code == 1
    assert all(blob.exists() for blob in alone)


def test_export_fails_with_one_error_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], archive: Path, tmp_path: Path, broken: Broken
) -> None:
    """export of tune 1 exits 1 with one line naming it and creates no folder; tune 2 exports."""
    dest = tmp_path / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive))
    assert ran.code == 1
    assert ran.err.splitlines() == ran.errors == [
        error(f"the manifest of tune 1 is unreadable: {broken.reason}")
    ]
    assert ran.out == ""
    assert not dest.exists()
    assert cli(capsys, "export", "2", str(dest), "--archive", str(archive)).code == 0


@pytest.mark.parametrize("command", ["list", "verify"])
def test_a_folder_at_a_manifests_place_stops_nothing_else(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """A folder at manifests/2.json (as a manifest the disk cannot read: EIO, EACCES) is
    tune 2's problem alone: list or verify give it its own row, go on with tune 1, and
    exit 1."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    (archive / "manifests" / "2.json").mkdir()
    ran = cli(capsys, command, "--archive", str(archive), "--json")
    assert ran.code == 1
    document = json.loads(ran.out)
    assert "error" not in document, f"the whole {command} stopped: {document['error']}"
    if command == "list":
        assert [row["tune_id"] for row in document["tunes"]] == [2, 1]
        assert "error" in document["tunes"][0]
    else:
        assert document["tunes"] == 2
        assert [(p["tune_id"], p["problem"]) for p in document["problems"]] == [
            (2, "unreadable_manifest")]


def test_what_verify_says_to_do_about_a_folder_at_a_manifests_place_mends_it(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder at manifests/1.json: verify's line said "tune-archiver fetch 1 sets it
    aside and archives the tune anew", but that fetch fails on it, setting nothing aside,
    exit 1 run after run. The line says to move it into manifests/damaged/ by hand; done
    so, the fetch archives the tune anew and gc keeps the blobs until it is looked at."""
    one = add_tune(standin, 1)
    archived(standin, archive, 1)
    (archive / "manifests" / "1.json").unlink()
    (archive / "manifests" / "1.json").mkdir()
    mend = (f"a fetch cannot set it aside: move it to manifests/damaged/1-0.json in the "
            f"archive (gc keeps every blob while it is there), then tune-archiver fetch 1 "
            f"--archive {archive} archives the tune anew")
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert ran.code == 1
    assert ran.errors == [error(f"tune 1: unreadable manifest: cannot read the manifest of "
                                f"tune 1 in {archive}: 1.json is not a regular file ({mend})")]
    assert run_fetch(standin, archive, "1") == 1  # what the line said before: no mend
    (archive / "manifests" / "damaged").mkdir()
    (archive / "manifests" / "1.json").rename(archive / "manifests" / "damaged" / "1-0.json")
    assert cli(capsys, "gc", "--archive", str(archive)).code == 1  # nothing removed
    assert all(blob_file(archive, data).exists() for data in one.all)
    assert run_fetch(standin, archive, "1") == 0
    assert manifest_of(archive, 1)["complete"] is True


def test_a_manifest_the_disk_cannot_read_stops_no_other_tune_of_fetch_all(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--all reads a listing page's manifests together to skip unchanged tunes; one the
    disk will not read (a folder in its place, as EIO) fails its own tune, and the
    page's other tunes are fetched as `fetch 1 2 3` would."""
    for tune_id in (1, 2, 3):
        add_tune(standin, tune_id)
    assert run_fetch(standin, archive, "--all") == 0
    for tune_id in (1, 3):  # changed upstream: to be fetched again, not skipped
        standin.tunes[tune_id]["updated_at"] = "2026-11-20T00:00:00Z"
    (archive / "manifests" / "2.json").unlink()
    (archive / "manifests" / "2.json").mkdir()
    before = len(standin.seen("api", "/tunes/"))
    capsys.readouterr()
    assert run_fetch(standin, archive, "--all") == 1
    asked = {r.path for r in standin.seen("api", "/tunes/")[before:]}
    assert {"/tunes/1", "/tunes/3"} <= asked
    assert "manifest of tune 2" in capsys.readouterr().err


def test_a_file_at_the_damaged_manifests_folder_stops_no_verify(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stray file named manifests/damaged (no folder, so no manifest was ever set aside
    in it) does not stop verify: every tune is still checked, and found intact."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    (archive / "manifests" / "damaged").write_text("stray")
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert ran.code == 0, ran.err
    assert "verified 1 tune, 3 blobs" in ran.out


def test_what_gc_says_of_a_folder_at_a_manifests_place_is_true(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gc's line for a folder at manifests/1.json said the next fetch sets it aside, when
    that fetch fails on it, setting nothing aside: its line names the way verify's does."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    (archive / "manifests" / "1.json").unlink()
    (archive / "manifests" / "1.json").mkdir()
    ran = cli(capsys, "gc", "--archive", str(archive))
    assert ran.code == 1
    assert "sets it aside" not in ran.errors[0]
    assert "until it is moved to manifests/damaged/1-0.json" in ran.errors[0]
    assert run_fetch(standin, archive, "1") == 1  # no fetch sets it aside


def test_what_gc_and_verify_say_of_a_tune_gone_upstream_mends_it(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], broken: Broken
) -> None:
    """Tune 1's manifest unreadable, the tune expired upstream: gc's and verify's lines
    said only that its next fetch sets it aside, but that fetch finds no tune ('tune 1 not
    found'), sets nothing aside, and gc stopped on it run after run, told never to remove
    it. They say to move it to manifests/damaged/1-0.json, after which gc keeps its blobs
    and verify names it as set aside."""
    alone = [blob_file(archive, data) for data in broken.one.all if data not in broken.two.all]
    del standin.tunes[1]
    move = "manifests/damaged/1-0.json"
    assert move in cli(capsys, "gc", "--archive", str(archive)).errors[0]
    said = cli(capsys, "verify", "--archive", str(archive)).errors
    assert [line for line in said if line.startswith(error("tune 1:"))] == [
        line for line in said if move in line]
    assert run_fetch(standin, archive, "1") == 1  # no fetch sets it aside: not found
    assert not (archive / "manifests" / "damaged").exists()
    (archive / "manifests" / "damaged").mkdir()
    (archive / "manifests" / "1.json").rename(archive / move)
    assert cli(capsys, "gc", "--archive", str(archive)).code == 1
    assert all(blob.exists() for blob in alone)
    assert "look at it" in cli(capsys, "verify", "--archive", str(archive)).err


def test_what_verify_says_of_a_manifest_the_disk_cannot_read_mends_it(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest the local disk fails to read (EIO; here one past the size a manifest
    may have): verify's line said 'tune-archiver fetch 1 sets it aside', but a fetch sets
    aside only a manifest it read and found damaged, and fails on this one as verify did,
    run after run. The line says to move it to manifests/damaged/1-0.json, as for a
    folder at its place; done so, the fetch archives the tune anew."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    monkeypatch.setattr("tune_archiver.store.local.MAX_MANIFEST_BYTES", 100)
    said = cli(capsys, "verify", "--archive", str(archive)).errors
    [line] = said
    assert "larger than 100 bytes" in line
    assert "sets it aside and" not in line
    assert "move it to manifests/damaged/1-0.json" in line
    assert run_fetch(standin, archive, "1") == 1  # no fetch sets it aside
    assert not (archive / "manifests" / "damaged").exists()
    (archive / "manifests" / "damaged").mkdir()
    (archive / "manifests" / "1.json").rename(archive / "manifests" / "damaged" / "1-0.json")
    monkeypatch.undo()
    assert run_fetch(standin, archive, "1") == 0
    assert manifest_of(archive, 1)["complete"] is True


def test_what_gc_says_of_a_manifest_the_disk_cannot_read_mends_it(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest the local disk fails to read (EIO; here one past the size a manifest
    may have): gc said only 'cannot read the manifest of tune 1 ...', neither that it
    removes nothing nor what mends it, so a user removing it had the next gc take the
    blobs it alone named. It says what verify says: move it to manifests/damaged/1-0.json,
    where gc keeps every blob."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    blobs = stored_blobs(archive)
    monkeypatch.setattr("tune_archiver.store.local.MAX_MANIFEST_BYTES", 100)
    said = cli(capsys, "gc", "--archive", str(archive))
    assert said.code == 1
    [line] = said.errors
    assert "larger than 100 bytes" in line
    assert "gc removes nothing until it is moved to manifests/damaged/1-0.json" in line
    (archive / "manifests" / "damaged").mkdir()
    (archive / "manifests" / "1.json").rename(archive / "manifests" / "damaged" / "1-0.json")
    assert "set aside in manifests/damaged/" in cli(capsys, "gc", "--archive", str(archive)).err
    assert stored_blobs(archive) == blobs
