"""Things planted in the archive by someone else (a link, a FIFO, a stray name) are never
followed, reused, exported or removed through, and never stop the rest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.archive_helpers import add_tune, archived, cli
from tests.conftest import check_manifest
from tests.helpers import blob_file, run_fetch, sha256
from tests.standin import StandIn
from tune_archiver.cli.main import main
from tune_archiver.commands import export
from tune_archiver.download.partfile import partial_name
from tune_archiver.errors import StorageError
from tune_archiver.store.files import read_capped
from tune_archiver.store.local import LocalStore
from tune_archiver.urls import download_identity


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def replace_with_link(blob: Path, outside: Path) -> None:
    """Put a symlink to `outside` (same size, other bytes) where the blob was."""
    outside.write_bytes(os.urandom(blob.stat().st_size))
    blob.chmod(0o600)
    blob.unlink()
    blob.symlink_to(outside)


def test_a_link_at_a_blobs_place_is_not_reused_and_is_replaced(
    standin: StandIn, archive: Path, tmp_path: Path
) -> None:
    """A symlink with the right size is not the blob: fetch downloads the file again and
    puts it in the link's place; the link's target is untouched."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    blob = blob_file(archive, served.checkpoints[0])
    outside = tmp_path / "outside.bin"
    replace_with_link(blob, outside)
    before = outside.read_bytes()
    assert run_fetch(standin, archive, "1") == 0
    assert not blob.is_symlink()
    assert blob.read_bytes() == served.checkpoints[0]
    assert outside.read_bytes() == before
    assert len(standin.seen("cdn", "/files/ckpt-1")) == 2


def test_a_fifo_at_a_blobs_place_neither_blocks_nor_is_reused(
    standin: StandIn, archive: Path
) -> None:
    """A FIFO where an image's blob was is never opened: the image is fetched again."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    blob = blob_file(archive, served.images[0])
    blob.chmod(0o600)
    blob.unlink()
    os.mkfifo(blob)
    assert run_fetch(standin, archive, "1") == 0
    assert blob.read_bytes() == served.images[0]
    assert check_manifest(archive / "manifests" / "1.json")["complete"] is True


def test_gc_never_removes_through_a_linked_fan_out_folder(
    standin: StandIn, archive: Path, tmp_path: Path
) -> None:
    """A fan-out folder that is a link to a folder outside holds nothing gc may remove."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / sha256(b"precious")
    victim.write_bytes(b"precious")
    (archive / "objects" / "sha256" / "zz").symlink_to(elsewhere)
    assert main(["gc", "--archive", str(archive), "-q"]) == 0
    assert victim.read_bytes() == b"precious"


def test_gc_refuses_a_link_planted_at_the_objects_folder(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """objects/sha256 itself a link to a folder outside: gc refuses it on one line
    (exit 2) and removes nothing there, not even a file named as a blob."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "ab").mkdir(parents=True)
    victim = elsewhere / "ab" / ("ab" + "0" * 62)
    victim.write_bytes(b"precious")
    (archive / "objects" / "sha256").rename(tmp_path / "moved")
    (archive / "objects" / "sha256").symlink_to(elsewhere)
    ran = cli(capsys, "gc", "--archive", str(archive))
    assert ran.code == 2
    assert any("symbolic link" in line for line in ran.errors)
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("command", ["gc", "verify"])
def test_gc_and_verify_refuse_a_link_planted_at_the_manifests_folder(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    """manifests/ a link to a folder outside holding none of the archive's manifests: gc
    read the manifests through it and removed every blob as unreferenced, and verify said
    "verified 0 tunes: all intact", exit 0. Both refuse it on one line (exit 2), as fetch,
    forget and verify --repair do, and no blob goes."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    (archive / "manifests").rename(tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir()
    (archive / "manifests").symlink_to(tmp_path / "elsewhere")
    ran = cli(capsys, command, "--archive", str(archive))
    assert [blob_file(archive, data).read_bytes() for data in served.all] == served.all
    assert ran.code == 2, ran.out
    [line] = ran.errors
    assert "symbolic link" in line


@pytest.mark.parametrize("command", [["verify", "1"], ["export", "1", "exported"]])
def test_a_tune_named_is_never_read_through_a_link_planted_at_the_manifests_folder(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    """manifests/ a link to a folder outside holding a manifest of tune 1: `verify` refused
    it, but `verify 1` read tune 1's manifest through it and said "all intact", exit 0
    (and `export 1` exported what it named). Naming the tune changes nothing: refused
    on one line (exit 2), as `verify` alone is."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    elsewhere = tmp_path / "elsewhere"
    (archive / "manifests").rename(elsewhere)
    (archive / "manifests").symlink_to(elsewhere)
    ran = cli(capsys, *command, "--archive", str(archive))
    assert ran.code == 2, ran.out
    [line] = ran.errors
    assert "symbolic link" in line
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("folder", ["objects", "objects/sha256", "manifests", "tmp"])
def test_fetch_refuses_a_link_planted_at_a_folder_of_the_archive(
    standin: StandIn, archive: Path, tmp_path: Path, folder: str
) -> None:
    """A link at a folder fetch makes itself would take blobs, manifests or partials
    out of the archive: the run refuses it (exit 2) and writes nothing there."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(archive / folder, tmp_path / "moved")
    (archive / folder).symlink_to(elsewhere)
    standin.tunes[1]["updated_at"] = "2026-11-20T00:00:00Z"
    assert run_fetch(standin, archive, "1") == 2
    assert list(elsewhere.iterdir()) == []


def test_export_never_links_or_copies_through_a_planted_link(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A blob replaced by a link to an outside file fails to export; the file is not exported."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    outside = tmp_path / "secret.txt"
    replace_with_link(blob_file(archive, served.checkpoints[0]), outside)
    dest = tmp_path / "out"
    assert main(["export", "1", str(dest), "--archive", str(archive)]) == 1
    assert "symbolic link" in capsys.readouterr().err
    exported = [p for p in dest.rglob("*") if p.is_file()]
    assert all(p.read_bytes() != outside.read_bytes() for p in exported)
    assert not any(p.samefile(outside) for p in exported)


def test_export_writes_nothing_through_a_link_swapped_in_for_its_folder_meanwhile(
    standin: StandIn, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user who may write in DEST (a shared folder) renames the tune's folder
    aside while the export runs and puts a link of theirs in its place: every file went
    on to be written through the name, so into the folder the link names (another of
    the user's, or theirs), while export said it had exported to DEST. The files go
    into the folder made, whatever its name holds, and their link is never renamed to
    the tune's folder: refused, exit 1."""
    served = add_tune(standin, 1, images=2, title="Jane")
    archived(standin, archive, 1)
    dest, elsewhere = tmp_path / "shared", tmp_path / "documents"
    dest.mkdir(mode=0o777)
    elsewhere.mkdir()
    made_dir = export._make_dir

    def swapped_first(path: Path) -> None:  # as the export's first file is written
        [filled] = dest.glob(".1-jane.*.partial")  # filled under a hidden name
        if not filled.is_symlink():
            filled.rename(dest / "aside")
            filled.symlink_to(elsewhere)
            os.lchown(filled, 65534, 65534)
        made_dir(path)

    monkeypatch.setattr(export, "_make_dir", swapped_first)
    assert main(["export", "1", str(dest), "--archive", str(archive)]) == 1
    assert list(elsewhere.iterdir()) == []
    assert not (dest / "1-jane").is_symlink()
    assert not (dest / "1-jane").exists()
    assert sorted(path.read_bytes() for path in (dest / "aside").rglob("*.*")
                  if path.parent.name != "aside") == sorted(served.all)


def test_export_makes_no_folder_through_a_link_planted_on_the_way_after_the_check(
    standin: StandIn, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """DEST's missing folders were made by name after the walk that refuses another
    user's link: one who may write in a folder on the way (`shared/`, 0777) and plants
    a link at `shared/a` between that check and the mkdir (staged here at the mkdir
    itself) had `a/b/1-jane` and every photo made in the folder the link names. Made
    each in the folder held open above it, the link is seen and refused, nothing
    written there."""
    add_tune(standin, 1, images=2, title="Jane")
    archived(standin, archive, 1)
    shared, elsewhere = tmp_path / "shared", tmp_path / "theirs"
    shared.mkdir(mode=0o777)
    elsewhere.mkdir()
    real_mkdir = os.mkdir

    def planted_first(path: str | Path, mode: int = 0o777, *, dir_fd: int | None = None
                      ) -> None:  # as another user would, just before our mkdir of a
        if Path(path).name == "a" and not (shared / "a").is_symlink():
            (shared / "a").symlink_to(elsewhere)
            os.lchown(shared / "a", 65534, 65534)
        real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", planted_first)
    ran = cli(capsys, "export", "1", str(shared / "a" / "b"), "--archive", str(archive))
    assert ran.code == 2
    assert "symbolic link of another user" in ran.err
    assert list(elsewhere.iterdir()) == []


def test_export_makes_no_folder_where_a_link_of_ours_leads_nowhere(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """~/usb -> /media/jane/STICK with the stick not mounted: the walk that makes DEST's
    missing folders followed the link into its missing target and made STICK/backup/
    1-jane there, on the disk under the mount point, 'exported', exit 0, as mkdir -p
    never does (File exists). A missing folder a link leads to is not made: exit 1,
    nothing written; the folders of DEST's own path past a link are made as ever."""
    add_tune(standin, 1, images=2, title="Jane")
    archived(standin, archive, 1)
    media = tmp_path / "media"
    media.mkdir()
    (tmp_path / "usb").symlink_to(media / "STICK")
    ran = cli(capsys, "export", "1", str(tmp_path / "usb" / "backup"), "--archive", str(archive))
    assert (ran.code, list(media.iterdir())) == (1, [])
    assert "STICK does not exist" in ran.err
    (media / "STICK").mkdir()
    ran = cli(capsys, "export", "1", str(tmp_path / "usb" / "backup"), "--archive", str(archive))
    assert ran.code == 0
    assert (media / "STICK" / "backup" / "1-jane").is_dir()


@pytest.mark.parametrize("command", ["list", "verify", "gc"])
def test_a_manifest_named_with_a_unicode_digit_is_no_traceback(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """manifests/\u00b2.json ("\u00b2".isdigit() is True, int() refuses it) is no manifest:
    list, verify and gc pass it by, without a traceback, and go on with tune 1."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    (archive / "manifests" / "\u00b2.json").write_text("{}")
    ran = cli(capsys, command, "--archive", str(archive))
    assert "Traceback" not in ran.err
    assert ran.code == 0, ran.err
    if command != "gc":
        assert "1" in ran.out


def test_a_manifest_name_with_a_leading_zero_or_another_scripts_digit_is_not_the_tunes(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Copies of tune 1's manifest at manifests/01.json and manifests/\u0661.json (an
    Arabic-Indic one) are not read as tune 1 again: only <id>.json as ASCII digits is."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    for name in ("01.json", "\u0661.json"):
        shutil.copy(archive / "manifests" / "1.json", archive / "manifests" / name)
    ran = cli(capsys, "list", "--archive", str(archive), "--json")
    assert [row["tune_id"] for row in json.loads(ran.out)["tunes"]] == [1]


def test_list_does_not_hang_on_a_fifo_planted_as_a_manifest(
    standin: StandIn, archive: Path
) -> None:
    """A FIFO at manifests/2.json is never opened to block on: list gives tune 2 an
    error row and lists tune 1. (A child process, so that a hang cannot hang the tests.)"""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    os.mkfifo(archive / "manifests" / "2.json")
    command = [sys.executable, "-m", "tune_archiver", "list", "--archive", str(archive)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("list blocked for 20 s on the FIFO at manifests/2.json")
    assert "Traceback" not in err
    assert process.returncode == 1
    assert "2.json is not a regular file" in err
    assert any(line.startswith("1 ") for line in out.splitlines())


def test_a_link_planted_at_a_manifests_place_is_not_followed(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """manifests/2.json as a link to a manifest outside the archive is not read as tune
    2's (a link to /dev/zero would be read without end): an error row, and tune 1."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    archived(standin, archive, 1, 2)
    outside = tmp_path / "2.json"
    (archive / "manifests" / "2.json").rename(outside)
    (archive / "manifests" / "2.json").symlink_to(outside)
    ran = cli(capsys, "list", "--archive", str(archive), "--json")
    assert ran.code == 1
    rows = json.loads(ran.out)["tunes"]
    assert [row["tune_id"] for row in rows] == [2, 1]
    assert "symbolic link" in rows[0]["error"]


def test_a_manifest_past_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    """A file at a manifest's place larger than the limit is refused, not read whole."""
    path = tmp_path / "2.json"
    path.write_bytes(b" " * 11)
    assert read_capped(path, 11, "a manifest") == b" " * 11
    with pytest.raises(StorageError, match="larger than 10 bytes"):
        read_capped(path, 10, "a manifest")


def link_fan_out_folder(archive: Path, data: bytes, elsewhere: Path) -> Path:
    """Move the blob of `data` to `elsewhere` and link its fan-out folder there."""
    blob = blob_file(archive, data)
    elsewhere.mkdir()
    blob.rename(elsewhere / blob.name)
    blob.parent.rmdir()
    blob.parent.symlink_to(elsewhere)
    return elsewhere / blob.name


def test_fetch_never_stores_a_blob_through_a_link_planted_at_its_fan_out_folder(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """objects/sha256/<ab> a link to a folder outside: the photo is not renamed out of
    the archive through it (nor the outside file taken as archived); that file fails on
    one line, the others are stored."""
    served = add_tune(standin, 1)
    (archive / "objects" / "sha256").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = sha256(served.images[0])[:2]
    (archive / "objects" / "sha256" / linked).symlink_to(elsewhere)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "fetch", "1", "--archive", str(archive), "--api-url", standin.api_url)
    assert ran.code == 1
    assert "Traceback" not in ran.err
    assert "symbolic link" in ran.err
    assert list(elsewhere.iterdir()) == []
    entries = check_manifest(archive / "manifests" / "1.json")["assets"]
    # Another of the tune's random files shares the linked folder one time in a hundred.
    assert [entry["status"] for entry in entries] == [
        "failed" if sha256(data)[:2] == linked else "ok"
        for data in [*served.checkpoints, *served.images]]


def test_verify_and_export_never_read_a_blob_through_a_linked_fan_out_folder(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A blob's fan-out folder replaced by a link to a folder outside that holds the
    same bytes: verify does not call it intact, export does not copy it from there."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    link_fan_out_folder(archive, served.images[0], tmp_path / "elsewhere")
    ran = cli(capsys, "verify", "--archive", str(archive), "--json")
    assert ran.code == 1
    problems = json.loads(ran.out)["problems"]
    # Another of the tune's blobs shares the linked folder one time in a hundred or so.
    assert {problem["problem"] for problem in problems} == {"not_a_file"}
    assert ("training_image", 0) in {(problem["kind"], problem["index"]) for problem in problems}
    ran = cli(capsys, "export", "1", str(tmp_path / "out"), "--archive", str(archive))
    assert ran.code == 1
    assert "symbolic link" in ran.err
    assert not list((tmp_path / "out").rglob("training_images/000.*"))


async def test_blob_sizes_of_a_batch_never_look_through_a_linked_fan_out_folder(
    tmp_path: Path,
) -> None:
    """One look-up of many blobs (a page of `fetch --all`'s unchanged check) looks at each
    fan-out folder once: a blob in a linked one is not in the archive, nor is every other
    blob there, whichever blobs of whole folders the batch met first."""
    archive = tmp_path / "archive"
    datas = [os.urandom(100) for _ in range(300)]  # more than 256: two share a folder
    by_folder: dict[str, list[bytes]] = {}
    for data in datas:
        blob = blob_file(archive, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        by_folder.setdefault(blob.parent.name, []).append(data)
    shared = next(group for group in by_folder.values() if len(group) > 1)
    elsewhere, folder = tmp_path / "elsewhere", blob_file(archive, shared[0]).parent
    elsewhere.mkdir()
    for data in shared:  # the same bytes, outside, through a link at their folder
        blob_file(archive, data).rename(elsewhere / sha256(data))
    folder.rmdir()
    folder.symlink_to(elsewhere)
    sizes = await LocalStore(archive).blob_sizes([sha256(data) for data in datas])
    assert sizes == {sha256(data): 100 for data in datas if data not in shared}


def test_repair_writes_nothing_through_a_link_planted_at_the_manifests_folder(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify --repair mends a manifest with no fetch's checks before it: with manifests/
    a link to a folder outside, it refuses on one line (exit 2) and makes no file there,
    not even the manifest's lock."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    document = json.loads((archive / "manifests" / "1.json").read_text())
    document["assets"][1]["path"] = "objects/sha256/00/elsewhere"  # an entry-only problem
    (archive / "manifests" / "1.json").write_text(json.dumps(document))
    (archive / "manifests" / "1.lock").unlink()
    elsewhere = tmp_path / "elsewhere"
    (archive / "manifests").rename(elsewhere)
    (archive / "manifests").symlink_to(elsewhere)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 2
    [line] = ran.errors
    assert "symbolic link" in line
    assert sorted(path.name for path in elsewhere.iterdir()) == ["1.json"]
    assert json.loads((elsewhere / "1.json").read_text()) == document


@pytest.mark.parametrize("name", ["{}.part", "{}.json", ".{}.json.tmp"])
def test_a_folder_planted_at_a_partials_name_never_fails_the_download(
    standin: StandIn, archive: Path, name: str
) -> None:
    """A folder where a file's partial, its sidecar or the sidecar's temp name would be,
    in tmp/: the file is downloaded in a private file of its own and archived, as for a
    link or a FIFO there. Opening, renaming over or unlinking the folder said 'Is a
    directory', and the file failed on every run (gc never takes a folder) until it
    expired upstream unarchived."""
    data = os.urandom(2 * 2**20)
    url = standin.add_file("model.safetensors", data)
    standin.add_tune(1, [url], [])
    planted = archive / "tmp" / name.format(partial_name(download_identity(url)))
    planted.mkdir(parents=True)
    assert run_fetch(standin, archive, "1") == 0
    assert blob_file(archive, data).read_bytes() == data
    assert check_manifest(archive / "manifests" / "1.json")["assets"][0]["status"] == "ok"
    assert run_fetch(standin, archive, "1") == 0  # the file archived: its leftovers dropped
    assert planted.is_dir()


def test_a_folder_at_a_new_blobs_place_is_named_on_the_files_line(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder where a file's blob is to go (a rename never replaces one) fails that
    file alone, exit 1, on a line naming the folder and saying to remove it: the line
    was 'cannot store a blob in <archive>: Is a directory', naming no place among the
    archive's fan-out folders, and verify's advice, fetch again, met the same line
    each run. Once it is removed, the next fetch archives the file."""
    data, other = os.urandom(5000), os.urandom(6000)
    standin.add_tune(1, [standin.add_file("ckpt.safetensors", data)],
                     [standin.add_file("photo.jpg", other)])
    folder = blob_file(archive, data)
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("someone's")
    assert run_fetch(standin, archive, "1") == 1
    key = f"objects/sha256/{folder.parent.name}/{folder.name}"
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1
    assert f"checkpoint 0: refused to store a blob in {archive}: {key} is a folder, not a " \
           "blob" in lines[0]
    assert "(remove it, then try again)" in lines[0]
    assert blob_file(archive, other).read_bytes() == other
    assert (folder / "notes.txt").read_text() == "someone's"
    shutil.rmtree(folder)
    assert run_fetch(standin, archive, "1") == 0
    assert blob_file(archive, data).read_bytes() == data
