"""Manifests this version did not write: by a newer version (another machine sharing
the archive, a version since downgraded) or edited by hand. What they record is kept,
and what cannot be read is said as what it is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

from tests.archive_helpers import add_tune, archived, cli, manifest_of, write_manifest
from tests.conftest import ROOT, SCHEMA, check_manifest
from tests.helpers import blob_file, run_fetch
from tests.standin import StandIn
from tune_archiver import manifest


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def test_a_manifest_of_a_newer_schema_version_is_left_as_it_is(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest of schema_version 2 is not damaged: fetch neither sets it aside nor
    rewrites it in version 1 (losing what it records), and says to upgrade; verify, list
    and gc say a newer version wrote it, and gc removes nothing."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    document = manifest_of(archive, 1)
    document["schema_version"] = 2
    write_manifest(archive, 1, document)
    written = (archive / "manifests" / "1.json").read_bytes()
    standin.tunes[1]["ckpt_urls"], standin.tunes[1]["ckpt_url"] = [], None  # expired
    for argv in (["1"], ["--all"]):
        capsys.readouterr()
        assert run_fetch(standin, archive, *argv) == 1
        err = capsys.readouterr().err
        assert "written by a newer tune-archiver (schema_version 2; this version reads 1)" in err
        assert "left as it is, and the tune was not fetched: upgrade tune-archiver" in err
        assert (archive / "manifests" / "1.json").read_bytes() == written
        assert not (archive / "manifests" / "damaged").exists()
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert ran.code == 1
    assert ran.errors == ["tune-archiver: error: tune 1: unreadable manifest: it was written "
                          "by a newer tune-archiver (schema_version 2; this version reads 1) "
                          "(upgrade tune-archiver to check it; this version's fetch leaves "
                          "it as it is)"]
    ran = cli(capsys, "gc", "--archive", str(archive))
    assert ran.code == 1
    assert "gc removes nothing until tune-archiver is upgraded" in ran.err
    assert blob_file(archive, served.checkpoints[0]).exists()


@pytest.mark.parametrize("flipped", [3, 5, 9])
def test_a_schema_version_one_flipped_bit_from_1_is_said_to_be_maybe_damaged(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], flipped: int
) -> None:
    """A 1 with one bit flipped on disk reads 3, 5 or 9: fetch, verify and gc said only
    that a newer version wrote it and to upgrade, which never cures it, so the tune was
    never fetched again and gc stopped for good. They still leave it as it is (a newer
    version may have written it), and say it may be damaged and what to do then; after
    that, the next fetch archives the tune anew."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    raw = (archive / "manifests" / "1.json").read_bytes()
    assert raw.count(b'"schema_version": 1,') == 1
    damaged = raw.replace(b'"schema_version": 1,', b'"schema_version": %d,' % flipped)
    (archive / "manifests" / "1.json").write_bytes(damaged)
    maybe = (f"(schema_version {flipped}; this version reads 1), or it is damaged: {flipped} "
             "is what a 1 reads with one bit flipped on disk; if no newer tune-archiver "
             "writes to this archive, move it into manifests/damaged/ and fetch the tune again")
    assert run_fetch(standin, archive, "1") == 1
    assert maybe in capsys.readouterr().err
    assert (archive / "manifests" / "1.json").read_bytes() == damaged
    for command in ("verify", "gc"):
        ran = cli(capsys, command, "--archive", str(archive))
        assert ran.code == 1
        assert maybe in ran.err
    (archive / "manifests" / "damaged").mkdir()
    os.rename(archive / "manifests" / "1.json", archive / "manifests" / "damaged" / "1.json")
    assert run_fetch(standin, archive, "1") == 0
    assert check_manifest(archive / "manifests" / "1.json")["complete"] is True


def test_fields_this_version_does_not_know_are_kept_by_a_fetch(
    standin: StandIn, archive: Path
) -> None:
    """A field a newer version (or the user) added, to the manifest or to an entry, is
    still there after this version's fetch rewrites the manifest, with what it names."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    document = manifest_of(archive, 1)
    document["verified_at"] = {"by": "a newer version", "at": "2027-01-01T00:00:00Z"}
    document["assets"][0]["note"] = "kept"
    write_manifest(archive, 1, document)
    standin.tunes[1]["updated_at"] = "2026-11-30T00:00:00.000Z"
    assert run_fetch(standin, archive, "1") == 0
    written = manifest_of(archive, 1)
    assert written["tune"]["updated_at"] == "2026-11-30T00:00:00.000Z"  # rewritten
    assert written["verified_at"] == {"by": "a newer version", "at": "2027-01-01T00:00:00Z"}
    assert written["assets"][0]["note"] == "kept"


def flipped(digest: str) -> str:
    """Another sha256: its first hex digit changed, as a hand edit or a flipped bit does."""
    return ("1" if digest[0] == "0" else "0") + digest[1:]


def test_gc_keeps_a_blob_an_entry_names_by_its_path_alone(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry whose sha256 no longer names its blob (one digit changed) still names it
    by its path, as it is or in another layout and case: gc removes neither blob, the
    only copy of each photo, while verify says what is wrong with the entry."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    document = manifest_of(archive, 1)
    first, second = document["assets"][1], document["assets"][2]
    first["sha256"] = flipped(first["sha256"])  # its path as written
    second["path"] = f"objects/{second['sha256'][:2]}/{second['sha256'].upper()}"
    second["sha256"] = flipped(second["sha256"])
    write_manifest(archive, 1, document)
    assert cli(capsys, "verify", "--archive", str(archive)).code == 1
    ran = cli(capsys, "gc", "--archive", str(archive))
    assert ran.code == 0
    assert "gc removed 0 unreferenced blobs" in ran.out
    assert all(blob_file(archive, data).exists() for data in served.all)


def test_repair_never_points_an_entry_away_from_the_blob_its_path_names(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify --repair does not 'mend' the path of an entry whose sha256 names no blob
    while its path names another, present one (its sha256 edited): set to the sha256's
    path, the entry named nothing left, and the next gc removed the photo, gone upstream.
    It mends the sha256 instead: the blob the path names is whole, of the entry's size."""
    served = add_tune(standin, 1, expires_at="2026-01-01T00:00:00.000Z")
    archived(standin, archive, 1)
    standin.files.pop("img-1-0.jpg")  # 404 now: the tune has expired
    document = manifest_of(archive, 1)
    document["assets"][1]["sha256"] = flipped(document["assets"][1]["sha256"])
    write_manifest(archive, 1, document)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 0, ran.err
    assert "its sha256 set to" in ran.out
    mended = check_manifest(archive / "manifests" / "1.json")["assets"][1]
    assert mended["path"] == document["assets"][1]["path"]
    assert mended["path"].endswith(mended["sha256"])
    assert cli(capsys, "gc", "--archive", str(archive)).code == 0
    assert blob_file(archive, served.images[0]).exists()
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_repair_keeps_a_path_naming_a_blob_of_another_size(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry whose sha256 names no blob and whose path names one of another size is
    not given that blob (another file's, maybe): the path stays, so gc keeps the blob,
    and verify --repair says it could not mend it."""
    served = add_tune(standin, 1, expires_at="2026-01-01T00:00:00.000Z")
    archived(standin, archive, 1)
    standin.files.pop("img-1-0.jpg")  # 404 now: the tune has expired
    document = manifest_of(archive, 1)
    entry = document["assets"][1]
    entry["sha256"], entry["size"] = flipped(entry["sha256"]), entry["size"] + 1
    write_manifest(archive, 1, document)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 1
    kept = check_manifest(archive / "manifests" / "1.json")["assets"][1]
    assert (kept["sha256"], kept["path"]) == (entry["sha256"], entry["path"])
    assert cli(capsys, "gc", "--archive", str(archive)).code == 0
    assert blob_file(archive, served.images[0]).exists()


@pytest.mark.parametrize("path", sorted((ROOT / "manifests").glob("example*.json")),
                         ids=lambda path: path.name)
def test_each_example_manifest_validates_and_is_read(path: Path) -> None:
    """README says manifests/example.json validates against the schema: it does, and
    this version reads it, every entry."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    document = check_manifest(path)
    assert len(manifest.parse(path.read_bytes(), document["tune_id"]).entries) == len(
        document["assets"])


def test_a_manifest_of_no_file_an_old_version_called_complete_is_not(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Versions before ea3f71b wrote a tune of no file (still training) as complete:
    list said 'complete' with nothing backed up, and fetch --all skipped the tune as
    unchanged. It is read as not complete, and fetched again: written as training."""
    tune = standin.add_tune(6, [], [], trained_at=None)
    (archive / "manifests").mkdir(parents=True)
    write_manifest(archive, 6, {"schema_version": 1, "tune_id": 6, "complete": True,
                                "archived_at": "2026-11-29T10:00:00Z", "tune": tune,
                                "assets": []})
    ran = cli(capsys, "list", "--json", "--archive", str(archive))
    assert json.loads(ran.out)["tunes"][0]["complete"] is False
    assert run_fetch(standin, archive, "--all") == 0
    assert "unchanged since archived" not in capsys.readouterr().out
    written = check_manifest(archive / "manifests" / "6.json")
    assert (written["complete"], written["state"]) == (False, "training")


def test_repair_mends_a_path_of_an_older_layout_into_a_valid_manifest(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path naming the entry's own blob in another folder and case, and a size edited
    by hand, are mended by verify --repair: the manifest it writes validates."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    document = manifest_of(archive, 1)
    entry = document["assets"][1]
    entry["path"] = f"objects/{entry['sha256'][:2]}/{entry['sha256'].upper()}"
    entry["size"] += 1
    write_manifest(archive, 1, document)
    assert cli(capsys, "verify", "--archive", str(archive)).code == 1
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive))
    assert ran.code == 0
    mended = check_manifest(archive / "manifests" / "1.json")["assets"][1]
    assert mended["path"] == f"objects/sha256/{entry['sha256'][:2]}/{entry['sha256']}"
    assert mended["size"] == entry["size"] - 1
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_repair_mends_a_path_naming_a_blob_the_archive_does_not_hold(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path whose digest a flipped bit or a hand edit changed names no blob: its
    entry's sha256 names the whole one. verify --repair sets the path right (it is no
    one's reference), and the verify after finds nothing."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    document = manifest_of(archive, 1)
    entry = document["assets"][1]
    entry["path"] = f"objects/sha256/{entry['sha256'][:2]}/{flipped(entry['sha256'])}"
    write_manifest(archive, 1, document)
    assert cli(capsys, "verify", "--archive", str(archive)).code == 1
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive))
    assert ran.code == 0, ran.err
    mended = check_manifest(archive / "manifests" / "1.json")["assets"][1]
    assert mended["path"] == f"objects/sha256/{entry['sha256'][:2]}/{entry['sha256']}"
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_a_kept_field_has_its_urls_redacted_as_an_entry_field_has(
    standin: StandIn, archive: Path
) -> None:
    """A signed URL in a field this version does not know, at the top as in an entry
    (noted by hand, or by a version that did not redact it), is redacted by the fetch
    that keeps the field: no manifest this version writes holds a URL's signature."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    document = manifest_of(archive, 1)
    signed = "https://cdn.example/a.jpg?X-Amz-Signature=s3cr3tsig&X-Amz-Credential=AKIAX"
    document["note"] = {"original": signed}
    document["assets"][0]["note"] = signed
    write_manifest(archive, 1, document)
    standin.tunes[1]["updated_at"] = "2026-11-30T00:00:00.000Z"
    assert run_fetch(standin, archive, "1") == 0
    text = (archive / "manifests" / "1.json").read_text()
    written = json.loads(text)
    assert written["note"]["original"].startswith("https://cdn.example/a.jpg?")
    assert written["assets"][0]["note"].startswith("https://cdn.example/a.jpg?")
    assert "s3cr3tsig" not in text
    assert "AKIAX" not in text


def test_repair_names_the_prompt_of_a_path_it_mends(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify --repair said of a prompt's entry whose path it mended 'tune 1:
    prompt_image 0: its path set to ...' with no prompt: every prompt has a prompt_image
    0, so of fifty a user could not tell whose entry was rewritten. It names the prompt,
    as verify's other lines do."""
    add_tune(standin, 1)
    standin.add_prompt(1, 7, "ohwx woman", [standin.add_file("p7.png", os.urandom(2_000))])
    standin.add_prompt(1, 8, "ohwx man", [standin.add_file("p8.png", os.urandom(2_100))])
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    document = manifest_of(archive, 1)
    entry = next(e for e in document["assets"] if e.get("prompt_id") == 8)
    entry["path"] = f"objects/{entry['sha256'][:2]}/{entry['sha256'].upper()}"
    write_manifest(archive, 1, document)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 0, ran.err
    assert "tune 1: prompt_image 0 of prompt 8: its path set to " in ran.out
    assert "ohwx" not in ran.out + ran.err


def test_a_tune_still_training_an_old_version_called_complete_is_not(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Versions before e014af3 wrote a tune still training (trained_at null, no
    checkpoint yet) complete with its photos: list said 'yes' and verify 'all intact'
    until training ended, its checkpoint never archived. It is read as not complete,
    still training, as this version writes it; and a fetch once trained archives the
    checkpoint."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    document = manifest_of(archive, 1)
    document["tune"]["trained_at"] = None
    document["assets"] = [e for e in document["assets"] if e["kind"] != "checkpoint"]
    document["state"] = "files_listed"
    write_manifest(archive, 1, document)
    ran = cli(capsys, "list", "--json", "--archive", str(archive))
    [row] = json.loads(ran.out)["tunes"]
    assert (row["complete"], row["state"]) == (False, "training")
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert ran.code == 0
    assert ran.out.endswith("all intact; 1 tune still training, not complete\n")
    assert run_fetch(standin, archive, "--all") == 0
    written = check_manifest(archive / "manifests" / "1.json")
    assert written["complete"] is True
    assert blob_file(archive, served.checkpoints[0]).exists()
