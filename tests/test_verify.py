"""`verify`: each referenced blob re-hashed; every problem named by tune, kind and index."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.archive_helpers import (
    Ran,
    Served,
    add_tune,
    cli,
    flip_byte,
    key_of,
    manifest_of,
    two_tunes_sharing_an_image,
    writable,
    write_manifest,
)
from tests.helpers import blob_file, run_fetch, sha256
from tests.standin import StandIn
from tune_archiver.commands.verify import verify
from tune_archiver.progress import NullProgress
from tune_archiver.store.local import LocalStore

# The documented shape of `verify --json`.
VERIFY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["ok", "tunes", "blobs", "bytes", "problems", "gone"],
    "properties": {
        "ok": {"type": "boolean", "description": "true when no problem was found"},
        "tunes": {"type": "integer", "minimum": 0, "description": "manifests checked"},
        "blobs": {"type": "integer", "minimum": 0, "description": "distinct blobs hashed"},
        "bytes": {"type": "integer", "minimum": 0, "description": "their size per the manifests"},
        "problems": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["tune_id", "kind", "index", "problem", "detail"],
                "properties": {
                    "tune_id": {"type": "integer", "minimum": 1},
                    "kind": {
                        "description": "null for a problem with the manifest itself",
                        "enum": ["checkpoint", "training_image", "prompt_image", None],
                    },
                    "index": {"type": ["integer", "null"], "minimum": 0},
                    "problem": {"enum": ["missing", "corrupt", "wrong_path", "not_a_file",
                                         "unreadable", "failed", "no_manifest",
                                         "unreadable_manifest"]},
                    "detail": {"type": "string", "minLength": 1},
                },
            },
        },
        "gone": {
            "description": "files lost upstream, never archived: not problems unless --strict",
            "type": "array",
            "items": {"type": "object", "required": ["tune_id", "kind", "index", "problem"]},
        },
    },
}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def tunes(standin: StandIn, archive: Path) -> tuple[Served, Served]:
    """Tunes 1 and 2 archived; each has a checkpoint, two images, and one image they share."""
    return two_tunes_sharing_an_image(standin, archive)


def error(line: str) -> str:
    return f"tune-archiver: error: {line}"


def repair(tune_id: int, archive: Path) -> str:
    """The end of a line about a damaged blob: the command that mends it, on that archive."""
    return f" (repair: tune-archiver verify --repair {tune_id} --archive {archive})"


def retry(tune_id: int, archive: Path) -> str:
    """The end of a line about a file that failed: the command that tries it again."""
    return f" (retry: tune-archiver fetch {tune_id} --archive {archive})"


def verified(
    capsys: pytest.CaptureFixture[str], archive: Path, *args: str
) -> tuple[int, list[str], str]:
    """Exit code, error lines and stdout of `verify ARGS`."""
    ran = cli(capsys, "verify", "--archive", str(archive), *args)
    return ran.code, ran.errors, ran.out


def test_clean_archive_is_all_intact(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """An untouched archive exits 0 with a summary counting tunes, distinct blobs and bytes."""
    one, two = tunes
    distinct = set(one.all + two.all)
    size = sum(len(data) for data in distinct)
    assert 1024 <= size < 1024**2  # printed in KiB
    code, errors, out = verified(capsys, archive)
    assert (code, errors) == (0, [])
    assert out == f"verified 2 tunes, {len(distinct)} blobs, {size / 1024:.1f} KiB: all intact\n"


def test_flipped_byte_is_corrupt(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """One flipped byte in one blob: exit 1 and one line naming tune, kind, index and the hash."""
    image = tunes[0].images[1]
    blob = blob_file(archive, image)
    flip_byte(blob, len(image) // 2)
    code, errors, out = verified(capsys, archive)
    assert code == 1
    assert errors == [error(f"tune 1: training_image 1: corrupt: the bytes of {key_of(image)} "
                            f"hash to {sha256(blob.read_bytes())}{repair(1, archive)}")]
    assert out.endswith(": 1 problem\n")


def test_truncated_blob_is_corrupt(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """A blob one byte short is corrupt, and the line says both sizes."""
    checkpoint = tunes[1].checkpoints[0]
    writable(blob_file(archive, checkpoint)).write_bytes(checkpoint[:-1])
    code, errors, _ = verified(capsys, archive)
    assert code == 1
    assert errors == [error(f"tune 2: checkpoint 0: corrupt: {key_of(checkpoint)} holds "
                            f"{len(checkpoint) - 1} bytes, not {len(checkpoint)}"
                            f"{repair(2, archive)}")]


def test_missing_blob(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """A deleted blob is reported missing for the tune, kind and index that reference it."""
    checkpoint = tunes[0].checkpoints[0]
    blob_file(archive, checkpoint).unlink()
    code, errors, _ = verified(capsys, archive)
    assert code == 1
    assert errors == [error(f"tune 1: checkpoint 0: missing: {key_of(checkpoint)} is missing"
                            f"{repair(1, archive)}")]


def test_blob_in_the_wrong_fan_out_folder(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """A blob moved to objects/sha256/zz/ is "wrong path", naming where it was found."""
    image = tunes[1].images[0]
    elsewhere = archive / "objects" / "sha256" / "zz" / sha256(image)
    elsewhere.parent.mkdir()
    blob_file(archive, image).rename(elsewhere)
    code, errors, _ = verified(capsys, archive)
    assert code == 1
    assert errors == [error(f"tune 2: training_image 0: wrong path: found at "
                            f"objects/sha256/zz/{sha256(image)}, not at {key_of(image)}"
                            f"{repair(2, archive)}")]


def test_manifest_path_that_does_not_match_the_sha256(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """An entry whose "path" is not the one its sha256 names is "wrong path", blob intact."""
    document = manifest_of(archive, 1)
    entry = document["assets"][1]
    assert entry["sha256"] == sha256(tunes[0].images[0])
    wrong = f"objects/sha256/zz/{entry['sha256']}"  # 00 would be right 1 time in 256
    entry["path"] = wrong
    write_manifest(archive, 1, document)
    code, errors, _ = verified(capsys, archive)
    assert code == 1
    assert errors == [error(f"tune 1: training_image 0: wrong path: the manifest says "
                            f"{wrong!r}; its sha256 names {key_of(tunes[0].images[0])}"
                            f"{repair(1, archive)}")]


def test_shared_corrupt_blob_is_reported_for_each_tune_and_hashed_once(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """A corrupt blob two tunes share gives one problem per tune; the count of blobs is distinct."""
    one, two = tunes
    shared = one.images[-1]
    assert shared == two.images[-1]
    flip_byte(blob_file(archive, shared))
    ran = cli(capsys, "verify", "--archive", str(archive), "--json")
    assert ran.code == 1
    report = json.loads(ran.out)
    jsonschema.Draft202012Validator(VERIFY_SCHEMA).validate(report)
    index = len(one.images) - 1
    assert [(p["tune_id"], p["kind"], p["index"], p["problem"]) for p in report["problems"]] == [
        (1, "training_image", index, "corrupt"), (2, "training_image", index, "corrupt"),
    ]
    assert report["blobs"] == len(set(one.all + two.all))
    assert report["bytes"] == sum(len(data) for data in set(one.all + two.all))


class CountingStore(LocalStore):
    """The archive, counting which blobs verify re-reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hashed: Counter[str] = Counter()

    async def hash_blob(
        self, sha256: str, advance: Callable[[int], None]
    ) -> tuple[int, str] | None:
        self.hashed[sha256] += 1
        return await super().hash_blob(sha256, advance)


def test_each_distinct_blob_is_read_once(archive: Path, tunes: tuple[Served, Served]) -> None:
    """verify reads each blob exactly once, the one two tunes share included."""
    one, two = tunes
    store = CountingStore(archive)
    report = asyncio.run(verify(store, [], NullProgress()))
    assert report.ok
    assert store.hashed == Counter({sha256(data): 1 for data in one.all + two.all})


class TaskCountingStore(LocalStore):
    """The archive, noting the most asyncio tasks alive while verify re-reads a blob."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.most_tasks = 0

    async def hash_blob(
        self, sha256: str, advance: Callable[[int], None]
    ) -> tuple[int, str] | None:
        self.most_tasks = max(self.most_tasks, len(asyncio.all_tasks()))
        return await super().hash_blob(sha256, advance)


def test_verify_holds_a_few_tasks_however_many_blobs(
    archive: Path, tunes: tuple[Served, Served]
) -> None:
    """A few workers hash the blobs, not a task made up front for each: an archive of
    100,000 blobs held 258 MB that way. 64 more blobs must not mean 64 more tasks."""
    document = manifest_of(archive, 1)
    first = document["assets"][0]
    for n in range(64):
        data = f"blob {n}".encode()
        path = blob_file(archive, data)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        document["assets"].append({**first, "kind": "prompt_image", "index": n,
                                   "sha256": sha256(data), "size": len(data),
                                   "path": key_of(data), "url": f"{first['url']}?n={n}"})
    write_manifest(archive, 1, document)
    store = TaskCountingStore(archive)
    report = asyncio.run(verify(store, [], NullProgress()))
    assert report.ok
    assert report.blobs == len(set(tunes[0].all + tunes[1].all)) + 64
    assert 0 < store.most_tasks <= 16


def test_given_tune_is_checked_alone(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """`verify 2` passes while a blob only tune 1 uses is corrupt; `verify 1` fails."""
    flip_byte(blob_file(archive, tunes[0].checkpoints[0]))
    code, errors, out = verified(capsys, archive, "2")
    assert (code, errors) == (0, [])
    assert out.startswith(f"verified 1 tune, {len(tunes[1].all)} blobs, ")
    code, errors, _ = verified(capsys, archive, "1")
    assert code == 1
    assert [line.split(": corrupt: ")[0] for line in errors] == [error("tune 1: checkpoint 0")]


def test_unknown_tune_is_not_in_the_archive(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """A tune id with no manifest exits 1, saying it is not in the archive."""
    code, errors, _ = verified(capsys, archive, "1", "99")
    assert code == 1
    assert errors == [error(f"tune 99: no manifest: tune 99 is not in the archive"
                            f"{retry(99, archive)}")]


def test_failed_asset_in_the_manifest(
    standin: StandIn, capsys: pytest.CaptureFixture[str], archive: Path
) -> None:
    """A file the fetch could not archive is a "failed" problem carrying the recorded error."""
    served = add_tune(standin, 1)
    standin.tunes[1]["orig_images"].append(standin.file_url("gone.jpg"))
    assert run_fetch(standin, archive, "1") == 1
    recorded = manifest_of(archive, 1)["assets"][-1]
    assert recorded["status"] == "failed"
    code, errors, _ = verified(capsys, archive)
    assert code == 1
    index = len(served.images)
    assert errors == [
        error(f"tune 1: training_image {index}: failed: {recorded['error']}{retry(1, archive)}")
    ]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"schema_version": 1, "assets": [',
         "it is not JSON (Expecting value: line 1 column 34 (char 33))"),
        (b"[]", "it holds a list, not a JSON object"),
        (b'{"schema_version": 0}', "schema_version is 0, not 1"),
    ],
)
def test_unreadable_manifest_is_a_problem(
    capsys: pytest.CaptureFixture[str],
    archive: Path,
    tunes: tuple[Served, Served],
    content: bytes,
    reason: str,
) -> None:
    """Invalid JSON or an unknown format in one manifest is a problem of that tune only."""
    (archive / "manifests" / "1.json").write_bytes(content)
    code, errors, out = verified(capsys, archive)
    assert code == 1
    assert errors == [error(f"tune 1: unreadable manifest: {reason} "
                            f"(tune-archiver fetch 1 --archive {archive} sets it aside, and "
                            "the fetch after it archives the tune anew; of a tune gone "
                            "upstream, which no fetch finds, move it to "
                            "manifests/damaged/1-0.json in the archive: gc keeps every blob "
                            "while it is there)")]
    assert out.startswith(f"verified 2 tunes, {len(tunes[1].all)} blobs, ")


def test_json_output_has_the_documented_shape(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """--json, clean then with three kinds of problem, matches VERIFY_SCHEMA and the facts."""
    one, two = tunes
    clean = cli(capsys, "verify", "--archive", str(archive), "--json")
    assert clean.code == 0
    report = json.loads(clean.out)
    jsonschema.Draft202012Validator(VERIFY_SCHEMA).validate(report)
    assert report == {"ok": True, "tunes": 2, "blobs": len(set(one.all + two.all)),
                      "bytes": sum(len(d) for d in set(one.all + two.all)), "problems": [],
                      "gone": []}

    blob_file(archive, one.images[0]).unlink()
    flip_byte(blob_file(archive, two.checkpoints[0]))
    broken = cli(capsys, "verify", "--archive", str(archive), "--json", "1", "2", "7")
    assert broken.code == 1
    report = json.loads(broken.out)
    jsonschema.Draft202012Validator(VERIFY_SCHEMA).validate(report)
    assert report["ok"] is False
    assert report["tunes"] == 3
    found = {(p["tune_id"], p["kind"], p["index"], p["problem"]) for p in report["problems"]}
    assert found == {
        (1, "training_image", 0, "missing"),
        (2, "checkpoint", 0, "corrupt"),
        (7, None, None, "no_manifest"),
    }
    assert len(broken.errors) == 3


@pytest.mark.parametrize("make", ["absent", "empty folder", "file"])
def test_not_an_archive_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make: str
) -> None:
    """verify on a place with no manifests/ folder exits 2, creating nothing there."""
    place = tmp_path / "place"
    if make == "empty folder":
        place.mkdir()
    elif make == "file":
        place.write_text("not an archive")
    ran = cli(capsys, "verify", "--archive", str(place))
    assert ran.code == 2
    assert ran.errors == [error(f"no archive at {place} (it has no manifests/ folder)")]
    assert not (place / "manifests").exists()
    assert (sorted(place.iterdir()) if place.is_dir() else []) == []


def test_wrong_size_in_a_second_manifest_is_reported(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """A manifest whose size for a shared blob is wrong fails `verify`, as it fails `verify 2`."""
    shared = tunes[1].images[-1]
    document = manifest_of(archive, 2)
    entry = document["assets"][-1]
    assert entry["sha256"] == sha256(shared)
    entry["size"] = len(shared) + 1
    write_manifest(archive, 2, document)
    alone, _, _ = verified(capsys, archive, "2")
    assert alone == 1
    code, errors, _ = verified(capsys, archive)
    assert code == 1
    assert [line.split(": corrupt: ")[0] for line in errors] == [
        error(f"tune 2: training_image {len(tunes[1].images) - 1}")
    ]


def test_a_tune_named_twice_is_verified_once(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """`verify 1 1` checks tune 1 once: one tune counted, one line per problem."""
    flip_byte(blob_file(archive, tunes[0].checkpoints[0]))
    code, errors, out = verified(capsys, archive, "1", "1")
    assert code == 1
    assert out.startswith(f"verified 1 tune, {len(tunes[0].all)} blobs, ")
    assert len(errors) == 1


def test_a_damaged_manifest_named_with_a_unicode_digit_is_no_traceback(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served]
) -> None:
    """manifests/damaged/\u00b2-<time>.json names no tune ("\u00b2".isdigit() is True,
    int() refuses it): verify passes it by and verifies the tunes, no traceback."""
    (archive / "manifests" / "damaged").mkdir()
    (archive / "manifests" / "damaged" / "\u00b2-20261201T000000Z.json").write_text("{}")
    code, errors, out = verified(capsys, archive)
    assert (code, errors) == (0, [])
    assert out.startswith("verified 2 tunes")


def test_repair_mends_a_manifest_when_tmp_was_removed(
    standin: StandIn, archive: Path, tunes: tuple[Served, Served],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """tmp/ holds only partials, so a user may remove it: verify --repair still mends a
    manifest entry (its temp copy needs tmp/, made again 0700), and exits 0."""
    document = manifest_of(archive, 1)
    document["assets"][1]["path"] = "objects/sha256/00/elsewhere"
    write_manifest(archive, 1, document)
    shutil.rmtree(archive / "tmp")
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 0, ran.err
    assert manifest_of(archive, 1)["assets"][1]["path"] == key_of(tunes[0].images[0])
    assert (archive / "tmp").stat().st_mode & 0o777 == 0o700
    assert verified(capsys, archive)[0] == 0


def test_a_fetch_that_downloads_a_rotted_blobs_bytes_again_stores_them(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tune 1's image rotted on disk (a byte flipped, same size); tune 2, new, serves the
    same image: its fetch downloads it and puts the right bytes under the blob's name,
    rather than keep the rotted file and say "ok". Both tunes then verify intact."""
    shared = os.urandom(4_000)
    add_tune(standin, 1, shared=(shared,))
    assert run_fetch(standin, archive, "1") == 0
    flip_byte(blob_file(archive, shared), 100)
    add_tune(standin, 2, shared=(shared,))
    assert run_fetch(standin, archive, "2") == 0
    assert blob_file(archive, shared).read_bytes() == shared
    assert blob_file(archive, shared).stat().st_mode & 0o777 == 0o400
    assert verified(capsys, archive)[0] == 0


@pytest.mark.parametrize("refused", ["iterdir", "lstat"])
def test_a_fan_out_folder_that_cannot_be_listed_stops_no_other_blob(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served],
    monkeypatch: pytest.MonkeyPatch, refused: str,
) -> None:
    """A fan-out folder whose listing the disk refuses (EACCES: chmod 311 by hand, or EIO),
    or whose files it will not look at (chmod 400), is only where verify looks for
    misplaced copies: every blob is still read, those in it too, and the archive found
    intact; it stopped the whole verify with one line."""
    one, two = tunes
    folder = blob_file(archive, one.images[-1]).parent  # the image both tunes share
    real = getattr(Path, refused)

    def refusing(path: Path) -> Any:
        if (path if refused == "iterdir" else path.parent) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, refused, refusing)
    code, errors, out = verified(capsys, archive)
    assert (code, errors) == (0, [])
    assert out.startswith(f"verified 2 tunes, {len(one.all) + len(two.all) - 1} blobs, ")


@pytest.mark.parametrize("command", ["verify", "list", "gc"])
def test_an_archive_the_disk_will_not_open_is_never_said_to_be_gone(
    capsys: pytest.CaptureFixture[str], archive: Path, tunes: tuple[Served, Served],
    monkeypatch: pytest.MonkeyPatch, command: str,
) -> None:
    """The archive chmod 000 (EACCES; or EIO from a failing disk): the commands said "no
    archive at ... (it has no manifests/ folder)", telling the operator the backups were
    gone while every byte was there. They say the disk would not open it, exit 2."""
    looked = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path) == archive / "manifests":
            raise PermissionError(13, "Permission denied", str(path))
        return looked(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    ran = cli(capsys, command, "--archive", str(archive))
    assert ran.code == 2
    assert ran.errors == [error(f"cannot read the archive {archive}: Permission denied")]


@pytest.mark.parametrize(("api", "code", "said"), [
    ("rejected", 3, "API key rejected"), ("unreachable", 4, "127.0.0.1:9")],
    ids=["key-rejected", "api-unreachable"])
def test_a_repair_stopped_by_the_api_says_what_verify_found(
    standin: StandIn, archive: Path, tunes: tuple[Served, Served],
    capsys: pytest.CaptureFixture[str], api: str, code: int, said: str,
) -> None:
    """verify --repair from cron whose key was rotated (or whose API was down) found a
    rotted checkpoint, moved it aside, and said only 'API key rejected' (exit 3), --json
    {ok, error} alone: which tune was damaged was never said, nor in the fail ping.
    Verify's findings come first, then the error, with its own exit code."""
    flip_byte(blob_file(archive, tunes[0].checkpoints[0]), 100)
    rejected = api == "rejected"
    os.environ["ASTRIA_API_KEY"] = "a-rotated-key-0123456789" if rejected else standin.api_key
    url = standin.api_url if rejected else "http://127.0.0.1:9"
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive), "--json",
              "--api-url", url, "--retries", "0")
    assert ran.code == code, ran.err
    document = json.loads(ran.out)
    assert document["ok"] is False
    assert said in document["error"]
    assert [(p["tune_id"], p["problem"]) for p in document["problems"]] == [(1, "corrupt")]
    assert ran.err.index("tune 1: checkpoint 0: corrupt") < ran.err.index(said)


@pytest.mark.parametrize(("api", "code"), [("rejected", 3), ("unreachable", 4)],
                         ids=["key-rejected", "api-unreachable"])
def test_a_repair_stopped_by_the_api_says_what_it_had_done(
    standin: StandIn, archive: Path, tunes: tuple[Served, Served],
    capsys: pytest.CaptureFixture[str], api: str, code: int,
) -> None:
    """verify --repair -v --json whose key was rotated (or whose API was down) had moved
    the rotted checkpoint aside before its fetch was refused: the document had no
    "repair" (a cron script could not tell what was moved, nor find it in tmp/damaged/),
    no line said it, and -v showed no traceback of the error. The repair's document
    comes with the error, its exit code kept, and -v shows the error's traceback."""
    flip_byte(blob_file(archive, tunes[0].checkpoints[0]), 100)
    rejected = api == "rejected"
    os.environ["ASTRIA_API_KEY"] = "a-rotated-key-0123456789" if rejected else standin.api_key
    url = standin.api_url if rejected else "http://127.0.0.1:9"
    ran = cli(capsys, "verify", "--repair", "-v", "--archive", str(archive), "--json",
              "--api-url", url, "--retries", "0")
    assert ran.code == code, ran.err
    document = json.loads(ran.out)
    assert document["ok"] is False
    [moved] = document["repair"]["moved"]
    assert (archive / moved).is_file()
    assert [(p["tune_id"], p["problem"]) for p in document["repair"]["after"]["problems"]] == [
        (1, "missing")]
    assert "Traceback (most recent call last)" in ran.err
    assert ran.err.index("Traceback") < ran.err.index(document["error"])


def repair_stopped_as_it_fetches(
    standin: StandIn, archive: Path, tunes: tuple[Served, Served],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> Ran:
    """verify --repair --json of tune 1's checkpoint rotted, stopped by a SIGTERM (cron's
    timeout) as its fetch of the tune begins."""
    import signal

    from tune_archiver.commands import repair

    async def fetch(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.Event().wait()  # the stop ends it

    monkeypatch.setattr(repair, "fetch", fetch)
    flip_byte(blob_file(archive, tunes[0].checkpoints[0]), 100)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    return cli(capsys, "verify", "--repair", "--archive", str(archive), "--json",
               "--api-url", standin.api_url)


def test_a_repair_stopped_by_a_signal_says_what_verify_found(
    standin: StandIn, archive: Path, tunes: tuple[Served, Served],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """verify --repair that cron's timeout stopped (SIGTERM) while it fetched a damaged
    tune again said only 'stopped by SIGTERM', --json {ok, interrupted, signal}: which
    tune was damaged (its blob already moved aside) was never said. Verify's findings
    come first, in --json too, then the stop, exit 143."""
    ran = repair_stopped_as_it_fetches(standin, archive, tunes, capsys, monkeypatch)
    assert ran.code == 143, ran.err
    document = json.loads(ran.out)
    assert (document["ok"], document["interrupted"], document["signal"]) == (
        False, True, "SIGTERM")
    assert [(p["tune_id"], p["problem"]) for p in document["problems"]] == [(1, "corrupt")]
    assert ran.err.index("tune 1: checkpoint 0: corrupt") < ran.err.index("stopped by SIGTERM")


def test_a_repair_stopped_by_a_signal_names_what_it_moved_aside(
    standin: StandIn, archive: Path, tunes: tuple[Served, Served],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A repair stopped (SIGTERM, Ctrl-C) once it had moved a damaged checkpoint to
    tmp/damaged/ never said so: the user did not know its bytes were moved, where to,
    nor that the repair was not finished. Each key moved aside is named (--json's
    "repair"), with the command that finishes the repair."""
    ran = repair_stopped_as_it_fetches(standin, archive, tunes, capsys, monkeypatch)
    assert ran.code == 143, ran.err
    [moved] = json.loads(ran.out)["repair"]["moved"]
    assert (archive / moved).is_file()
    assert f"moved aside {moved}" in ran.err
    assert f"run tune-archiver verify --repair 1 --archive {archive}" in ran.err
    assert ran.err.index(moved) < ran.err.index("stopped by SIGTERM")


def test_a_stop_while_a_large_blob_is_hashed_ends_at_its_next_chunk(
    archive: Path, tunes: tuple[Served, Served], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM (systemd's or cron's timeout, a Kubernetes pod stopped) while verify hashed a
    large checkpoint waited for the whole blob to be read: 45 s for a 12 GB one here,
    minutes on a slow disk, past the grace time whose SIGKILL leaves no line, no --json
    document and no fail ping. The read is given up at its next chunk."""
    import signal
    import time

    from tune_archiver.store import files, local

    monkeypatch.setattr(files, "READ_BLOCK", 4096)
    big = blob_file(archive, tunes[0].checkpoints[0])
    big.chmod(0o600)
    os.truncate(big, 512 * 4096)  # 512 chunks
    real, chunks = local.hash_file, []

    def hash_file(path: Path, advance: Callable[[int], None], root: Path) -> Any:
        def step(nbytes: int) -> None:
            chunks.append(nbytes)
            if len(chunks) == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # the timeout, as the blob is read
            else:
                time.sleep(0.01)  # a slow disk: 10 ms a chunk, 5 s for this blob
            advance(nbytes)

        return real(path, step if path == big else advance, root)

    monkeypatch.setattr(local, "hash_file", hash_file)
    ran = cli(capsys, "verify", "--archive", str(archive), "--json")
    assert ran.code == 143, ran.err
    assert json.loads(ran.out)["interrupted"] is True
    assert ran.errors == [error("stopped by SIGTERM")]
    assert len(chunks) < 100  # not the 512 of the whole blob


def test_a_prompt_file_that_failed_is_said_to_need_a_prompts_run(
    capsys: pytest.CaptureFixture[str], standin: StandIn, archive: Path
) -> None:
    """A prompt's file is asked for again only by a fetch with --prompts: "retry:
    tune-archiver fetch 1" ran a fetch that exited 0 and left the file failed, and verify
    said the same line again, run after run. The line names --prompts, which mends it."""
    add_tune(standin, 1)
    late = standin.file_url("late.png")
    standin.add_prompt(1, 7, "ohwx woman", [late])
    assert run_fetch(standin, archive, "1", "--prompts") == 1
    standin.add_file("late.png", os.urandom(2_000))
    code, errors, _ = verified(capsys, archive)
    assert (code, errors) == (1, [error("tune 1: prompt_image 0 of prompt 7: failed: HTTP 404 "
                                        f"from {late} (retry: tune-archiver fetch 1 "
                                        f"--prompts --archive {archive})")])
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    assert verified(capsys, archive)[:2] == (0, [])


def test_the_command_said_names_the_archive_it_was_said_of(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """'(retry: tune-archiver fetch 1)' for an archive given by --archive, run as said
    (from a shell, not the cron line), made ./tune-archive and archived the tune there,
    exit 0, while the archive verify spoke of kept its failed file. The command names that
    archive (a folder as an absolute path, quoted for the shell); the default too, which
    is a folder of the cron line's working folder, not of the shell's it is pasted in."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNE_ARCHIVE", raising=False)
    add_tune(standin, 1)
    standin.tunes[1]["orig_images"].append(standin.file_url("late.jpg"))
    chosen = tmp_path / "my backups"
    assert run_fetch(standin, Path("my backups"), "1") == 1
    ran = cli(capsys, "verify", "--archive", "my backups")
    assert ran.errors[0].endswith(f" (retry: tune-archiver fetch 1 --archive '{chosen}')")
    standin.add_file("late.jpg", os.urandom(3_000))
    assert run_fetch(standin, chosen, "1") == 0  # the command said
    assert cli(capsys, "verify", "--archive", str(chosen)).code == 0
    assert not (tmp_path / "tune-archive").exists()
    shutil.move(chosen, tmp_path / "tune-archive")
    (tmp_path / "tune-archive" / "manifests" / "1.json").chmod(0o600)
    document = manifest_of(tmp_path / "tune-archive", 1)
    document["assets"][-1].update(status="failed", error="HTTP 404")
    write_manifest(tmp_path / "tune-archive", 1, document)
    ran = cli(capsys, "verify")
    assert ran.errors[0].endswith(
        f" (retry: tune-archiver fetch 1 --archive {tmp_path / 'tune-archive'})")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # by hand, from another folder
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    said = shlex.split(ran.errors[0].rsplit("(retry: tune-archiver ", 1)[1].removesuffix(")"))
    assert cli(capsys, *said, "--api-url", standin.api_url).code == 0
    assert cli(capsys, "verify", "--archive", str(tmp_path / "tune-archive")).code == 0
    assert not (tmp_path / "elsewhere" / "tune-archive").exists()


def archive_said(
    capsys: pytest.CaptureFixture[str], standin: StandIn, archive: Path
) -> tuple[str, dict[str, bytes]]:
    """verify's one error line for an archive at `archive` (tune 99 not in it), and the
    path its command's --archive word gives back, run by sh (cron's: dash here) and bash."""
    two_tunes_sharing_an_image(standin, archive)
    code, errors, _ = verified(capsys, archive, "1", "99")
    assert code == 1
    [line] = errors
    word = line.split(" --archive ", 1)[1].removesuffix(")")
    return line, {shell: subprocess.run([shell, "-c", f"printf %s {word}"],
                                        capture_output=True, check=True).stdout
                  for shell in ("sh", "bash")}


def test_the_command_said_names_an_archive_whose_path_a_line_shows_escaped(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path
) -> None:
    """A folder named with a tab or an ESC is shown escaped ('a\\x09b'): in '...'
    quotes, the command said named a folder of backslashes, where fetch made an archive
    of its own, exit 0. Nor bash's $'...': cron's /bin/sh (dash) reads it as '$' then
    the escapes. The word is printf's octal escapes, run by any POSIX shell."""
    archive = tmp_path / "a\tb\x1b[31m'c\\d%s\u202e\u00e9 e"
    line, read = archive_said(capsys, standin, archive)
    assert not {"\t", "\x1b", "\u202e"} & set(line)  # shown escaped, as a line does
    assert read == {"sh": os.fsencode(archive), "bash": os.fsencode(archive)}


def test_the_command_said_names_an_archive_whose_path_ends_in_a_newline(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path
) -> None:
    """A shell's "$(printf ...)" drops the newlines its output ends with: the word of a
    folder named 'backups\\n' read back as 'backups', another archive (fetch makes one of
    its own there, exit 0). It names the folder with a '/' after, the same folder."""
    archive = tmp_path / "backups\n"
    line, read = archive_said(capsys, standin, archive)
    assert "\n" not in line
    assert {shell: os.path.normpath(said) for shell, said in read.items()} == {
        "sh": os.fsencode(archive), "bash": os.fsencode(archive)}


def test_a_file_field_the_api_sent_malformed_is_no_archive_all_intact(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune whose orig_images the API sent as a string (its manifest not complete, no
    entry for the photos) was 'all intact', exit 0, --json ok, while list said it not
    complete: the photos were never archived. verify names them as failed, exit 1, and
    --repair fetches the tune again, whole once the API sends the field right."""
    standin.add_tune(1, [standin.add_file("ckpt-1", os.urandom(2_000))], [])
    standin.tunes[1]["orig_images"] = "not a list"
    assert run_fetch(standin, archive, "1") == 1
    assert manifest_of(archive, 1)["complete"] is False
    code, errors, out = verified(capsys, archive)
    assert code == 1
    assert errors == [error("tune 1: training_image: failed: training images not archived: "
                            "'orig_images' is a string, not a list of URLs" + retry(1, archive))]
    assert out.endswith(": 1 problem\n")
    ran = cli(capsys, "verify", "--archive", str(archive), "--json")
    document = json.loads(ran.out)
    jsonschema.validate(document, VERIFY_SCHEMA)
    assert (ran.code, document["ok"]) == (1, False)
    assert [(p["kind"], p["index"], p["problem"]) for p in document["problems"]] == [
        ("training_image", None, "failed")]
    standin.tunes[1]["orig_images"] = [standin.add_file("photo-1.jpg", os.urandom(1_000))]
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive), "--api-url",
              standin.api_url)
    assert ran.code == 0, ran.err
    assert manifest_of(archive, 1)["complete"] is True
    assert verified(capsys, archive)[0] == 0
