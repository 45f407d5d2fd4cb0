"""`export`: a tune as a plain folder under DEST, hard-linked or copied, never escaping DEST."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import jsonschema
import pytest

from tests.archive_helpers import (
    Served,
    add_tune,
    archived,
    cli,
    everything_under,
    flip_byte,
    manifest_of,
    write_manifest,
)
from tests.helpers import blob_file, refuse_folder_fsyncs, run_fetch, tmpfs
from tests.standin import Body, StandIn
from tune_archiver.commands import export
from tune_archiver.store import saving

# The documented shape of `export --json`.
EXPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["ok", "folder", "linked", "copied", "failed", "gone"],
    "properties": {
        "ok": {"type": "boolean", "description": "true when every file was exported"},
        "folder": {"type": "string", "description": "DEST/<id>-<slug>"},
        "linked": {"type": "array", "items": {"type": "string"},
                   "description": "paths inside the folder that are hard links to blobs"},
        "copied": {"type": "array", "items": {"type": "string"},
                   "description": "paths inside the folder written as copies"},
        "failed": {"type": "array", "items": {"type": "string"},
                   "description": "one line per file not exported, naming kind and index"},
        "gone": {"type": "array", "items": {"type": "string"},
                 "description": "one line per file gone upstream, never archived (not failed)"},
    },
}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def tune(standin: StandIn, archive: Path) -> Served:
    """Tune 1, "Jane Doe": checkpoint ckpt-1.safetensors and three .jpg training images."""
    served = add_tune(standin, 1, images=3, title="Jane Doe")
    archived(standin, archive, 1)
    return served


def expected_files(served: Served) -> dict[str, bytes]:
    """Path inside the export folder -> the bytes it must hold."""
    files = {f"checkpoints/{i:03d}.safetensors": d for i, d in enumerate(served.checkpoints)}
    files.update({f"training_images/{i:03d}.jpg": d for i, d in enumerate(served.images)})
    return files


def exported(folder: Path) -> dict[str, bytes]:
    """Every file in the export folder except manifest.json and index.html, by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and path.name not in ("manifest.json", "index.html")
    }


def snapshot(root: Path) -> dict[Path, tuple[int, int, bytes]]:
    """Each file under root: inode, mtime and bytes."""
    return {
        path: (path.stat().st_ino, path.stat().st_mtime_ns, path.read_bytes())
        for path in root.rglob("*") if path.is_file()
    }


def test_tree_of_hard_links(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """--link: checkpoints/, training_images/ hard-linked to the blobs, and manifest.json."""
    dest = tmp_path / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--link", "--archive", str(archive))
    assert (ran.code, ran.err) == (0, "")
    folder = dest / "1-jane-doe"
    assert sorted(dest.iterdir()) == [folder]
    assert ran.out == f"exported to {folder}: {len(tune.all)} hard links, 0 copies, 0 failed\n"
    assert exported(folder) == expected_files(tune)
    assert (folder / "manifest.json").read_bytes() == (
        archive / "manifests" / "1.json"
    ).read_bytes()
    for name, data in expected_files(tune).items():
        copy, blob = (folder / name).stat(), blob_file(archive, data).stat()
        assert (copy.st_dev, copy.st_ino) == (blob.st_dev, blob.st_ino)
        assert copy.st_mode & 0o222 == 0  # read-only: editing the export cannot alter the blob


@pytest.mark.parametrize("flags", [(), ("--copy",)], ids=["default", "--copy"])
def test_copy_makes_independent_private_files(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str],
    flags: tuple[str, ...],
) -> None:
    """By default (and with --copy) an export is byte-identical files with their own inodes,
    0600 in 0700 folders; editing one cannot touch the archive, whose blobs gain no links."""
    dest = tmp_path / "dest"
    old_umask = os.umask(0o022)
    try:
        ran = cli(capsys, "export", "1", str(dest), *flags, "--archive", str(archive),
                  "--json")
    finally:
        os.umask(old_umask)
    assert ran.code == 0
    report = json.loads(ran.out)
    assert report["linked"] == []
    assert sorted(report["copied"]) == sorted(expected_files(tune))
    folder = dest / "1-jane-doe"
    assert exported(folder) == expected_files(tune)
    for name, data in expected_files(tune).items():
        assert (folder / name).stat().st_ino != blob_file(archive, data).stat().st_ino
        assert blob_file(archive, data).stat().st_nlink == 1
        assert (folder / name).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in folder.rglob(".export-*")] == []
    assert (folder / "manifest.json").stat().st_mode & 0o777 == 0o600
    assert {p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")] if p.is_dir()} == {
        0o700
    }


def test_extension_from_the_content_type(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file served as image/png is exported .png whatever its URL says; others from the URL."""
    served = add_tune(standin, 1, images=2)
    standin.faults["img-1-1.jpg"] = [Body(served.images[1], "image/png")]
    archived(standin, archive, 1)
    assert cli(capsys, "export", "1", str(tmp_path / "dest"), "--archive", str(archive)).code == 0
    names = sorted(exported(tmp_path / "dest" / "1-tune-1"))
    assert names == ["checkpoints/000.safetensors", "training_images/000.jpg",
                     "training_images/001.png"]


@pytest.mark.parametrize(
    ("title", "folder"),
    [
        ("../../etc/passwd", "1-etc-passwd"),
        ("..\\x", "1-x"),
        ("/abs", "1-abs"),
        ("..", "1-tune"),
        ("¿¡—…‽«»", "1-tune"),
        ("a/../../b\x00c", "1-a-b-c"),
        ("Ünïcödé Tüne", "1-unicode-tune"),
    ],
)
def test_hostile_title_stays_inside_dest(
    standin: StandIn,
    archive: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    title: str,
    folder: str,
) -> None:
    """A title made to climb out of DEST gives a safe slug; nothing is created outside DEST."""
    served = add_tune(standin, 1, title=title)
    archived(standin, archive, 1)
    dest = tmp_path / "deep" / "dest"
    dest.mkdir(parents=True)
    before = everything_under(tmp_path, dest, archive)
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--json")
    assert ran.code == 0
    assert json.loads(ran.out)["folder"] == str(dest / folder)
    assert [p.name for p in dest.iterdir()] == [folder]
    assert exported(dest / folder) == expected_files(served)
    assert everything_under(tmp_path, dest, archive) == before


def test_existing_folder_is_never_overwritten(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second export to the same DEST exits 2 and leaves the first export exactly as it was."""
    dest = tmp_path / "dest"
    assert cli(capsys, "export", "1", str(dest), "--copy", "--archive", str(archive)).code == 0
    first = snapshot(dest)
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive))
    assert ran.code == 2
    assert ran.errors == [f"tune-archiver: error: {dest / '1-jane-doe'} already exists; "
                          "nothing was overwritten (remove it, or export to another DEST)"]
    assert snapshot(dest) == first


def test_a_stopped_export_leaves_no_half_folder_under_the_tunes_name(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop (Ctrl-C, SIGTERM, or a SIGKILL no cleanup sees) as the second file is
    written: the tune's folder held the first file alone under its final name, without
    manifest.json nor index.html, and the next export refused it as existing (exit 2).
    The folder is filled under a hidden name and renamed once whole; a stop removes it."""
    dest = tmp_path / "dest"
    made_dir, seen = export._make_dir, []

    def stopped_at_the_second(path: Path) -> None:
        seen.append(sorted(p.name for p in dest.iterdir()))  # what a SIGKILL would leave
        if len(seen) == 2:
            raise KeyboardInterrupt
        made_dir(path)

    monkeypatch.setattr(export, "_make_dir", stopped_at_the_second)
    assert cli(capsys, "export", "1", str(dest), "--archive", str(archive)).code == 130
    assert "1-jane-doe" not in seen[1]
    assert list(dest.iterdir()) == []  # nothing left behind by a stop
    monkeypatch.setattr(export, "_make_dir", made_dir)
    assert cli(capsys, "export", "1", str(dest), "--archive", str(archive)).code == 0
    assert exported(dest / "1-jane-doe") == expected_files(tune)
    assert [p.name for p in dest.iterdir()] == ["1-jane-doe"]


def test_an_empty_folder_made_after_the_last_check_is_never_renamed_over(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A folder of the tune's name made (empty) between the check that it does not exist
    and the rename of the filled folder: the rename replaced it (Linux renames a folder
    over an empty one) and the export said it made the folder, exit 0. Nothing that
    exists is overwritten: renameat2's RENAME_NOREPLACE refuses it, exit 2, no hidden
    folder left."""
    dest = tmp_path / "dest"
    checked, checks = export.exists_at, []

    def made_right_after(at: int, name: str) -> bool:
        found = checked(at, name)
        checks.append(name)
        if checks.count("1-jane-doe") == 2:  # the check just before the rename
            (dest / "1-jane-doe").mkdir()  # another export's, or the user's
        return found

    monkeypatch.setattr(export, "exists_at", made_right_after)
    mine = dest / "1-jane-doe"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive))
    assert (ran.code, ran.errors) == (2, [f"tune-archiver: error: {mine} already exists; "
                                          "nothing was overwritten (remove it, or export to "
                                          "another DEST)"])
    assert [p.name for p in dest.iterdir()] == ["1-jane-doe"]
    assert list(mine.iterdir()) == []


def test_a_file_in_the_folders_place_is_not_overwritten(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain file named like the tune's folder is kept as it was; the export exits 2."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "1-jane-doe").write_text("mine")
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive))
    assert ran.code == 2
    assert (dest / "1-jane-doe").read_text() == "mine"


def test_a_dest_that_is_a_file_exits_2(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """DEST naming a file (or a FIFO, /dev/full) is the operator's to fix, exit 2 as a DEST
    under a file is: it exited 1, as if a blob had failed."""
    dest = tmp_path / "notes.txt"
    dest.write_text("mine")
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive))
    assert ran.code == 2
    assert ran.errors == [f"tune-archiver: error: cannot use the export folder {dest}: "
                          "Not a directory"]
    assert dest.read_text() == "mine"


@pytest.mark.parametrize("copy", [False, True])
def test_missing_blob_fails_that_file_only(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str], copy: bool
) -> None:
    """A file whose blob is gone is named as failed (exit 1); every other file is exported."""
    blob_file(archive, tune.images[1]).unlink()
    dest = tmp_path / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--json",
              *([] if copy else ["--link"]))
    assert ran.code == 1
    report = json.loads(ran.out)
    assert report["ok"] is False
    assert len(report["failed"]) == 1
    assert report["failed"][0].startswith("training_image 1: ")
    assert "missing" in report["failed"][0]
    assert ran.errors == [f"tune-archiver: error: tune 1: {report['failed'][0]}"]
    files = expected_files(tune)
    del files["training_images/001.jpg"]
    folder = dest / "1-jane-doe"
    assert exported(folder) == files
    assert sorted(report["copied" if copy else "linked"]) == sorted(files)
    assert [p.name for p in folder.rglob(".export-*")] == []
    assert (folder / "manifest.json").exists()


def test_failed_asset_is_listed_as_not_archived(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file the manifest records as failed is named, with its error, and gives exit 1."""
    served = add_tune(standin, 1)
    standin.tunes[1]["orig_images"].append(standin.file_url("gone.jpg"))
    assert run_fetch(standin, archive, "1") == 1
    error = manifest_of(archive, 1)["assets"][-1]["error"]
    ran = cli(capsys, "export", "1", str(tmp_path / "dest"), "--archive", str(archive), "--json")
    assert ran.code == 1
    report = json.loads(ran.out)
    assert report["failed"] == [f"training_image {len(served.images)}: not archived ({error})"]
    assert exported(tmp_path / "dest" / "1-tune-1") == expected_files(served)


def test_training_images_the_api_sent_malformed_are_named_not_archived(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """orig_images sent as a string (or holding a null no archived photo stands for):
    the photos were never archived, and fetch, verify, list and retrain say so, yet
    export said '0 failed', exit 0, as a tune exported whole, while one failed photo
    with an entry is 'not archived', exit 1. It is named so too, by its kind."""
    served = add_tune(standin, 1)
    standin.tunes[1]["orig_images"] = standin.file_url("photos.zip")
    assert run_fetch(standin, archive, "1") == 1
    ran = cli(capsys, "export", "1", str(tmp_path / "dest"), "--archive", str(archive), "--json")
    assert ran.code == 1
    assert json.loads(ran.out)["failed"] == [
        "training_image: not archived (training images not archived: 'orig_images' is a "
        "string, not a list of URLs)"]
    assert "training_image: not archived" in ran.err
    assert exported(tmp_path / "dest" / "1-tune-1") == {
        name: data for name, data in expected_files(served).items()
        if name.startswith("checkpoints/")}


def test_a_prompts_failed_file_is_named_with_its_prompt(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every prompt has a prompt_image 0: the one export names as not archived is named
    with its prompt, or a user of fifty prompts cannot tell which is missing."""
    add_tune(standin, 1)
    standin.add_prompt(1, 7, "ohwx", [standin.add_file("seven.png", os.urandom(900))])
    standin.add_prompt(1, 8, "ohwx b", [standin.file_url("eight.png")])  # 404
    assert run_fetch(standin, archive, "1", "--prompts") == 1
    ran = cli(capsys, "export", "1", str(tmp_path / "dest"), "--archive", str(archive), "--json")
    assert ran.code == 1
    [failed] = json.loads(ran.out)["failed"]
    assert failed.startswith("prompt_image 0 of prompt 8: not archived (HTTP 404")


def test_tune_not_archived_exits_1(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exporting a tune the archive lacks exits 1 naming it, and creates no folder."""
    dest = tmp_path / "dest"
    ran = cli(capsys, "export", "5", str(dest), "--archive", str(archive))
    assert ran.code == 1
    assert ran.errors == [f"tune-archiver: error: tune 5 is not in the archive {archive}"]
    assert not dest.exists()


def test_json_output_has_the_documented_shape(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json matches EXPORT_SCHEMA and lists every exported file once."""
    dest = tmp_path / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--json")
    assert ran.code == 0
    report = json.loads(ran.out)
    jsonschema.Draft202012Validator(EXPORT_SCHEMA).validate(report)
    assert report == {"ok": True, "folder": str(dest / "1-jane-doe"),
                      "linked": [], "copied": sorted(expected_files(tune)), "failed": [],
                      "gone": []}


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A folder on another filesystem than tmp_path (/dev/shm), or skip."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    with tempfile.TemporaryDirectory(dir=shm) as name:
        if Path(name).stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("/dev/shm is on the same filesystem as the archive")
        yield Path(name)


def test_copies_when_hard_links_are_impossible(
    archive: Path, tune: Served, other_filesystem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exporting to another filesystem falls back to copies, byte-identical."""
    dest = other_filesystem / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--json")
    assert ran.code == 0
    report = json.loads(ran.out)
    assert report["linked"] == []
    assert sorted(report["copied"]) == sorted(expected_files(tune))
    assert exported(dest / "1-jane-doe") == expected_files(tune)


@pytest.mark.parametrize("copy", [False, True])
def test_a_blob_cut_short_by_the_disk_fails_that_file_and_is_not_exported(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str], copy: bool
) -> None:
    """A checkpoint's blob truncated to half its size (one fstat shows it) is named as
    failed (exit 1), not exported, linked or copied; every other file is."""
    blob = blob_file(archive, tune.checkpoints[0])
    blob.chmod(0o600)
    with blob.open("r+b") as file:
        file.truncate(len(tune.checkpoints[0]) // 2)
    exported_but(capsys, archive, tmp_path / "dest", tune, copy, "checkpoint 0", "damaged",
                 "checkpoints/000.safetensors")


@pytest.mark.parametrize("copy", [False, True])
def test_a_blob_rotted_on_the_disk_fails_that_file_and_is_not_exported(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str], copy: bool
) -> None:
    """A training image's blob with one flipped byte (its size unchanged) is named as
    failed, corrupt (exit 1), neither linked nor copied: the export never hands over
    wrong bytes under a file's name; every other file is exported."""
    image = tune.images[1]
    flip_byte(blob_file(archive, image), len(image) // 2)
    exported_but(capsys, archive, tmp_path / "dest", tune, copy, "training_image 1", "corrupt",
                 "training_images/001.jpg")


def exported_but(capsys: pytest.CaptureFixture[str], archive: Path, dest: Path, tune: Served,
                 copy: bool, asset: str, why: str, name: str) -> None:
    """`export 1` (copied, or with --link) exits 1 naming `asset` alone as failed, saying
    `why`, and exports every file of the tune but `name`."""
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--json",
              *([] if copy else ["--link"]))
    assert ran.code == 1, ran.out
    report = json.loads(ran.out)
    assert [line.split(": ")[0] for line in report["failed"]] == [asset]
    assert why in report["failed"][0]
    files = expected_files(tune)
    del files[name]
    assert exported(dest / "1-jane-doe") == files


def test_export_of_an_entry_whose_url_urlsplit_refuses_is_no_traceback(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry whose url is "http://[x/ckpt" (urlsplit raises ValueError) and whose
    content type says nothing is exported as .bin; the other files too, exit 0."""
    document = manifest_of(archive, 1)
    document["assets"][0]["url"] = "http://[x/ckpt"
    document["assets"][0]["content_type"] = None
    write_manifest(archive, 1, document)
    dest = tmp_path / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive))
    assert ran.code == 0, ran.err
    files = expected_files(tune)
    files["checkpoints/000.bin"] = files.pop("checkpoints/000.safetensors")
    assert exported(dest / "1-jane-doe") == files
    assert (dest / "1-jane-doe" / "manifest.json").exists()


def test_an_index_of_a_thousand_digits_is_exported_under_a_name_a_disk_takes(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged manifest's index (or prompt id) of a thousand digits, which json reads,
    made a name no filesystem takes: that file was not exported, its line a thousand
    digits long. It is exported under "file", as an entry without an index; exit 0."""
    document = manifest_of(archive, 1)
    document["assets"][0]["index"] = 10**1000
    write_manifest(archive, 1, document)
    dest = tmp_path / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive))
    assert ran.code == 0, ran.err[:300]
    files = expected_files(tune)
    files["checkpoints/file.safetensors"] = files.pop("checkpoints/000.safetensors")
    assert exported(dest / "1-jane-doe") == files


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, where the test may mount one (root on Linux)."""
    with tmpfs(tmp_path / "tiny", "64k") as mount:
        yield mount


def test_a_full_disk_names_every_file_not_exported_and_leaves_none_cut_short(
    standin: StandIn, archive: Path, tiny_tmpfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exporting 30 photos to a 64 KiB filesystem: each file that did not fit is named on
    its own line (exit 1), manifest.json's failure does not hide them, and no file is
    left cut short there."""
    served = add_tune(standin, 1, images=30)
    assert run_fetch(standin, archive, "1") == 0
    ran = cli(capsys, "export", "1", str(tiny_tmpfs / "out"), "--archive", str(archive))
    assert ran.code == 1
    assert "Traceback" not in ran.err
    folder = tiny_tmpfs / "out" / "1-tune-1"
    written = exported(folder)
    assert any(line.endswith("disk full in " + str(folder / "training_images"))
               for line in ran.errors)
    for index in range(len(served.images)):
        name = f"training_images/{index:03d}.jpg"
        assert (name in written) != any(f"training_image {index}:" in line
                                        for line in ran.errors)
    whole = expected_files(served)
    assert all(data == whole[name] for name, data in written.items() if name in whole)
    manifest = folder / "manifest.json"  # whole, or named as not written; never cut short
    if manifest.exists():
        assert manifest.read_bytes() == (archive / "manifests" / "1.json").read_bytes()
    else:
        assert any("manifest.json: " in line for line in ran.errors)


def test_a_checkpoint_larger_than_the_free_space_is_failed_not_exported_cut_short(
    standin: StandIn, archive: Path, tiny_tmpfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 100 KB checkpoint exported to a 64 KiB filesystem from another one (no
    copy_file_range across them): the full disk's write stores part of it and returns
    short, no error. The checkpoint is failed as 'disk full' (exit 1), never exported
    cut short under its name and counted among the copies."""
    checkpoint = os.urandom(100_000)
    standin.add_tune(1, [standin.add_file("ckpt.safetensors", checkpoint)], [])
    assert run_fetch(standin, archive, "1") == 0
    ran = cli(capsys, "export", "1", str(tiny_tmpfs / "out"), "--archive", str(archive),
              "--json")
    assert ran.code == 1
    assert "Traceback" not in ran.err
    folder = tiny_tmpfs / "out" / "1-tune-1"
    report = json.loads(ran.out)
    assert "checkpoints/000.safetensors" not in report["copied"]
    assert any(line.startswith("checkpoint 0: disk full in ") for line in report["failed"])
    assert not (folder / "checkpoints" / "000.safetensors").exists()


@pytest.mark.parametrize("link", [False, True], ids=["copy", "--link"])
@pytest.mark.parametrize("folder", ["objects", "objects/sha256"])
def test_export_never_reads_blobs_through_a_link_planted_at_the_objects_folder(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str],
    folder: str, link: bool,
) -> None:
    """objects/ (or objects/sha256) a link to a folder outside holding same-size other
    bytes at every blob's name: each file fails on its line (exit 1), and nothing from
    there is copied or hard-linked into the export."""
    elsewhere = tmp_path / "elsewhere"
    shutil.move(archive / folder, elsewhere)
    for path in elsewhere.rglob("*"):
        if path.is_file():
            path.chmod(0o600)
            path.write_bytes(os.urandom(path.stat().st_size))
    (archive / folder).symlink_to(elsewhere)
    dest = tmp_path / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--json",
              *(["--link"] if link else []))
    assert ran.code == 1
    assert "Traceback" not in ran.err
    report = json.loads(ran.out)
    assert (report["linked"], report["copied"]) == ([], [])
    assert len(report["failed"]) == len(tune.all)
    assert all("symbolic link" in line for line in report["failed"])
    assert exported(dest / "1-jane-doe") == {}


def test_the_exports_own_files_are_synced_whole_before_they_take_their_names(
    tune: Served, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """manifest.json and index.html are written beside their names, fsynced, then linked
    into place: a crash, or a stick pulled out right after export ended, never leaves
    one cut short, or empty, under its name (they were written in place, unsynced)."""
    synced: set[tuple[int, int]] = set()  # (device, inode) of each file fsynced
    named: dict[str, bool] = {}  # each name a file was linked to: was it synced first?
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        real_fsync(fd)
        found = os.fstat(fd)
        synced.add((found.st_dev, found.st_ino))

    def link(source: Any, target: Any, **kwargs: Any) -> None:
        found = os.stat(source)
        named[Path(target).name] = (found.st_dev, found.st_ino) in synced
        real_link(source, target, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    dest = tmp_path / "out"
    assert cli(capsys, "export", "1", str(dest), "--archive", str(archive)).code == 0
    folder = dest / "1-jane-doe"
    assert named["index.html"]
    assert named["manifest.json"]
    assert (folder / "index.html").stat().st_size > 0
    assert (folder / "manifest.json").read_bytes() == (
        archive / "manifests" / "1.json").read_bytes()


def test_an_export_to_a_filesystem_that_syncs_no_folder_still_exports(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DEST on a filesystem that refuses fsync of a folder (EINVAL: some FUSE and network
    ones, a USB stick or a share an export is made for): the export, a copy made again
    at will, makes its folders without syncing them, and exports every file."""
    refuse_folder_fsyncs(monkeypatch)
    dest = tmp_path / "usb" / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive))
    assert (ran.code, ran.err) == (0, "")
    assert exported(dest / "1-jane-doe") == expected_files(tune)


@pytest.mark.parametrize("modes", ["modes", "no modes"])
@pytest.mark.parametrize("link", [False, True], ids=["copy", "--link"])
def test_an_export_to_a_filesystem_without_hard_links_still_exports(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, link: bool, modes: str,
) -> None:
    """DEST on a FAT or exFAT USB stick, where os.link fails with EPERM: every file, the
    manifest and index.html are still exported whole (each was 'cannot write', exit 1).
    Where fchmod fails too (a stick not mounted `quiet`: the folders' 0700 is refused,
    EPERM), the folders are as the mount makes them (it was 'cannot create', exit 1)."""
    def no_link(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_link)
    if modes == "no modes":  # FAT and exFAT keep the mount's modes: fchmod 0700 says EPERM
        monkeypatch.setattr(os, "fchmod", no_link)
    dest = tmp_path / "usb" / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive),
              *(["--link"] if link else []))
    assert (ran.code, ran.err) == (0, "")
    folder = dest / "1-jane-doe"
    assert exported(folder) == expected_files(tune)
    assert (folder / "manifest.json").read_bytes() == (
        archive / "manifests" / "1.json").read_bytes()
    assert (folder / "index.html").stat().st_size > 0
    assert not [path for path in folder.rglob(".export-*")]


def test_a_blob_the_archives_disk_fails_to_read_is_said_of_the_archive_not_dest(
    archive: Path, tmp_path: Path, tune: Served, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The archive's disk failing one photo's read (EIO) fails that photo alone, exit 1,
    on a line naming the archive's blob, as verify names it: 'cannot write 000.jpg in
    DEST' sent the operator to replace a good USB stick while the archive's disk was
    the one failing."""
    failing = blob_file(archive, tune.images[0])
    real_open = saving.open_regular

    class Failing:
        def __init__(self, opened: BinaryIO) -> None:
            self.opened = opened

        def __enter__(self) -> Failing:
            return self

        def __exit__(self, *exc: object) -> None:
            self.opened.close()

        def fileno(self) -> int:
            return self.opened.fileno()

        def read(self, size: int = -1) -> bytes:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def open_regular(path: Path, what: str = "a blob") -> Any:
        opened = real_open(path, what)
        return Failing(opened) if path == failing else opened

    monkeypatch.setattr(saving, "open_regular", open_regular)
    dest = tmp_path / "stick"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--json")
    assert ran.code == 1
    assert "Traceback" not in ran.err
    report = json.loads(ran.out)
    assert report["failed"] == [
        f"training_image 0: cannot read the blob {failing.name} in {archive}: Input/output "
        "error"]
    files_now = expected_files(tune)
    del files_now["training_images/000.jpg"]
    assert exported(dest / "1-jane-doe") == files_now


@pytest.mark.parametrize("hard_link", [False, True], ids=["copy", "--link"])
def test_a_stop_while_a_large_checkpoint_is_exported_ends_at_its_next_chunk(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, hard_link: bool,
) -> None:
    """SIGTERM (cron's or systemd's timeout) or Ctrl-C while export read a large checkpoint
    waited for the whole blob to be hashed and copied in its worker thread: a 6.5 GB
    checkpoint copied to a USB stick held the stop for minutes, past the grace time whose
    SIGKILL leaves the hidden folder and no line. The read is given up at its next chunk,
    and the stop removes the hidden folder as before."""
    import signal
    import time

    monkeypatch.setattr(saving, "READ_BLOCK", 4096)
    checkpoint = os.urandom(512 * 4096)  # 512 chunks
    standin.add_tune(1, [standin.add_file("ckpt.safetensors", checkpoint)], [])
    archived(standin, archive, 1)
    real, chunks = saving.open_regular, []

    class Counted:
        def __init__(self, source: BinaryIO) -> None:
            self.source = source

        def __getattr__(self, name: str) -> Any:
            return getattr(self.source, name)

        def __enter__(self) -> Counted:
            return self

        def __exit__(self, *exc: object) -> None:
            self.source.close()

        def read(self, size: int) -> bytes:
            chunks.append(size)
            if len(chunks) == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # the timeout, as the blob is read
            else:
                time.sleep(0.01)  # a slow disk: 10 ms a chunk, 5 s for this blob
            return self.source.read(size)

    def opened(path: Path, *what: str) -> Any:  # a blob: save_as names nothing more
        return real(path, *what) if what else Counted(real(path))

    monkeypatch.setattr(saving, "open_regular", opened)
    dest = tmp_path / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive),
              *(["--link"] if hard_link else []))
    assert ran.code == 143, ran.err
    assert len(chunks) < 100  # not the 512 of the whole blob
    assert list(dest.iterdir()) == []


def test_a_file_gone_upstream_is_said_apart_and_fails_no_export(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A photo that failed, then deleted upstream before it was ever archived, is gone:
    fetch and verify count it apart and exit 0, so a daily cron does not fail forever.
    export called it failed, exit 1 on every run, a failure no run could cure, while it
    exported every archived file. It is said apart (its line and --json's gone), exit 0."""
    served = add_tune(standin, 1)
    standin.tunes[1]["orig_images"].append(standin.file_url("gone.jpg"))  # 404
    assert run_fetch(standin, archive, "1") == 1
    standin.tunes[1]["orig_images"].pop()  # deleted upstream: gone
    run_fetch(standin, archive, "1")
    assert [a["status"] for a in manifest_of(archive, 1)["assets"]][-1] == "gone"
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0
    dest = tmp_path / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--json")
    assert ran.code == 0, ran.out
    report = json.loads(ran.out)
    jsonschema.validate(report, EXPORT_SCHEMA)
    assert (report["ok"], report["failed"]) == (True, [])
    [gone] = report["gone"]
    assert gone.startswith(f"training_image {len(served.images)}: gone upstream, never archived")
    assert exported(dest / "1-tune-1") == expected_files(served)
    ran = cli(capsys, "export", "1", str(tmp_path / "other"), "--archive", str(archive))
    assert (ran.code, ran.err) == (0, "")
    assert ran.out.splitlines() == [
        f"tune 1: {gone}",
        f"exported to {tmp_path / 'other' / '1-tune-1'}: 0 hard links, "
        f"{len(served.all)} copies, 0 failed, 1 gone upstream (never archived)"]
