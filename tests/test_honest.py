"""Nothing archived is lost, and "ok" means ok: two fetches of one tune at once, damaged
manifests, files gone upstream, tunes with nothing listed, and verify --repair."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.archive_helpers import (
    Ran,
    add_tune,
    archived,
    cli,
    flip_byte,
    key_of,
    manifest_of,
    two_tunes_sharing_an_image,
    write_manifest,
)
from tests.conftest import check_manifest
from tests.helpers import Sleeps, blob_file, run_fetch, sha256
from tests.standin import StandIn, Status
from tests.test_fetch import make_tune
from tune_archiver.commands import repair as repair_module
from tune_archiver.commands.fetch import fetch
from tune_archiver.commands.repair import RepairReport, _replaced, repair
from tune_archiver.commands.verify import Problem, VerifyReport, verify
from tune_archiver.config import RetryPolicy, Settings
from tune_archiver.download.staging import staging_for
from tune_archiver.errors import storage_error
from tune_archiver.models import Asset, AssetResult, Blob, TuneResult
from tune_archiver.progress import NullProgress
from tune_archiver.store.local import LocalStore

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
EXPIRED = "2026-11-02T14:32:40.363Z"  # before NOW, and before the hosts' own Date
AHEAD = "2027-01-02T14:32:40.363Z"  # after NOW


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def statuses(archive: Path, tune_id: int) -> list[tuple[str, int, str]]:
    return [(e["kind"], e["index"], e["status"]) for e in manifest_of(archive, tune_id)["assets"]]


# -- two fetches of one tune at once ------------------------------------------------------


def fetch_halves_at_once(standin: StandIn, archive: Path) -> None:
    """`fetch 1 --only checkpoints` and `fetch 1 --only images` at once: both read the
    manifest before either writes (no file is answered until both are downloading)."""
    standin.hold_until = 2
    base = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                    retry=RetryPolicy(sleep=Sleeps()))

    async def both() -> None:
        await asyncio.gather(
            fetch(replace(base, only="checkpoints"), [1], NullProgress()),
            fetch(replace(base, only="images"), [1], NullProgress()),
        )

    asyncio.run(both())


def test_two_fetches_of_one_tune_at_once_keep_both_runs_entries(
    standin: StandIn, archive: Path
) -> None:
    """Both runs read the manifest before either writes; the second merges the first's
    entries instead of dropping them, and gc then removes none of their blobs."""
    served = add_tune(standin, 1)
    fetch_halves_at_once(standin, archive)
    assert sorted(statuses(archive, 1)) == sorted(
        [("checkpoint", 0, "ok")] + [("training_image", i, "ok") for i in range(2)]
    )
    check_manifest(archive / "manifests" / "1.json")
    assert main_gc(archive) == 0
    assert all(blob_file(archive, data).exists() for data in served.all)


def main_gc(archive: Path) -> int:
    from tune_archiver.cli.main import main

    return main(["gc", "--archive", str(archive), "-q"])


# -- a damaged manifest ---------------------------------------------------------------------


def test_an_unreadable_manifest_is_set_aside_never_overwritten_and_stops_gc(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged manifest is moved to manifests/damaged/ byte for byte, the tune's fetch
    fails saying so, gc removes nothing while it is kept (not even the checkpoint the API
    no longer lists), and verify names it."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    damaged = b'{"schema_version": 1, "tune_id": 1, "assets": 5}'
    (archive / "manifests" / "1.json").write_bytes(damaged)
    standin.tunes[1]["ckpt_urls"], standin.tunes[1]["ckpt_url"] = [], None  # expired
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    err = capsys.readouterr().err
    assert "set aside as manifests/damaged/1-20261210T120000Z.json" in err
    assert (archive / "manifests" / "damaged" / "1-20261210T120000Z.json").read_bytes() == damaged
    assert not (archive / "manifests" / "1.json").exists()
    ran = cli(capsys, "gc", "--archive", str(archive))
    assert ran.code == 1
    assert "damaged manifest(s) set aside" in ran.err
    assert blob_file(archive, served.checkpoints[0]).exists()
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert ran.errors == ["tune-archiver: error: tune 1: unreadable manifest: a fetch set "
                          "it aside as manifests/"
                          "damaged/1-20261210T120000Z.json (look at it, then remove it: gc "
                          "keeps every blob until then)"]
    ran = cli(capsys, "verify", "--archive", str(archive), "--json")
    problems = json.loads(ran.out)["problems"]
    assert [(p["tune_id"], p["problem"]) for p in problems] == [(1, "unreadable_manifest")]


class Overtaken(LocalStore):
    """A local archive where another run, as this one goes to set a damaged manifest
    aside, has just done so itself and written the good manifest it archived."""

    def __init__(self, root: Path, good: bytes) -> None:
        super().__init__(root)
        self.good = good

    async def set_aside_manifest(self, tune_id: int, stamp: str, damaged: bytes) -> str | None:
        await super().set_aside_manifest(tune_id, "20261210T115959Z", damaged)
        await self.write_manifest(tune_id, self.good)
        return await super().set_aside_manifest(tune_id, stamp, damaged)


def test_a_manifest_another_run_replaced_since_it_was_read_damaged_stays(
    standin: StandIn, archive: Path
) -> None:
    """Two runs read one damaged manifest; the other sets it aside and writes a good one
    first. This run then moves nothing: the good manifest stays in place (it was moved
    to manifests/damaged/, the tune no longer in the archive and gc stopped), and the
    tune's error says why this run did not fetch it."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    good = (archive / "manifests" / "1.json").read_bytes()
    (archive / "manifests" / "1.json").write_bytes(b"{damaged")
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        retry=RetryPolicy(sleep=Sleeps()))
    [result] = asyncio.run(fetch(settings, [1], NullProgress(), clock=lambda: NOW,
                                 store=Overtaken(archive, good)))
    assert result.error is not None
    assert "another run has set it aside or replaced it since" in result.error
    assert (archive / "manifests" / "1.json").read_bytes() == good
    [aside] = (archive / "manifests" / "damaged").iterdir()
    assert (aside.name, aside.read_bytes()) == ("1-20261210T115959Z.json", b"{damaged")


def test_an_unreadable_manifest_is_never_set_aside_through_a_link_at_manifests_damaged(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """manifests/damaged is a link to a folder outside the archive: the damaged manifest
    is not linked out through it; it stays in place and the tune's fetch fails saying so."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    damaged = b'{"schema_version": 1, "tune_id": 1, "assets": 5}'
    (archive / "manifests" / "1.json").write_bytes(damaged)
    outside = tmp_path / "public"
    outside.mkdir()
    (archive / "manifests" / "damaged").symlink_to(outside)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    err = capsys.readouterr().err
    assert list(outside.iterdir()) == []
    assert (archive / "manifests" / "1.json").read_bytes() == damaged
    assert "manifests/damaged is a symbolic link or not a folder" in err
    assert "Traceback" not in err


def test_two_archived_entries_of_one_file_are_never_dropped_to_one(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest (merged by hand, or by an older version) that records two archived
    versions of checkpoint 0 of one URL: the fetch, which keeps one entry a file, sets it
    aside rather than drop the other, and gc then removes neither version's blob."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    earlier = os.urandom(5_000)  # the version of the file archived before
    kept = blob_file(archive, earlier)
    kept.parent.mkdir(exist_ok=True)
    kept.write_bytes(earlier)
    document = manifest_of(archive, 1)
    document["assets"].append({**document["assets"][0], "sha256": sha256(earlier),
                               "size": len(earlier), "path": key_of(earlier)})
    write_manifest(archive, 1, document)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    assert "assets[0] and assets[3] both record checkpoint 0 as archived" in (
        capsys.readouterr().err)
    assert cli(capsys, "gc", "--archive", str(archive)).code == 1
    assert kept.exists()


def test_a_manifest_with_a_field_nested_hundreds_deep_is_damaged_not_an_internal_error(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry's unknown field 600 lists deep reads as JSON, but rewriting the entry
    (its redaction recurses) failed the tune on every run as "internal error ...
    RecursionError". It is a damaged manifest: set aside whole, said as such."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    document = manifest_of(archive, 1)
    document["assets"][0]["future"] = json.loads("[" * 600 + "]" * 600)
    write_manifest(archive, 1, document)
    assert run_fetch(standin, archive, "1") == 1
    err = capsys.readouterr().err
    assert "its JSON is nested too deeply" in err
    assert "internal error" not in err
    [aside] = (archive / "manifests" / "damaged").iterdir()
    assert json.loads(aside.read_bytes()) == document  # kept byte for byte, nothing lost


# -- gone upstream ------------------------------------------------------------------------


def expired_tune_with_a_missing_image(standin: StandIn) -> None:
    add_tune(standin, 1, expires_at=EXPIRED)
    standin.tunes[1]["orig_images"].append(standin.file_url("deleted.jpg"))


def test_a_file_refused_after_expiry_is_gone_said_once_and_never_asked_again(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 404 after expires_at: "gone upstream", exit 1 once; the next fetch does not ask
    for it and exits 0; verify counts it apart and exits 0, or 1 with --strict."""
    expired_tune_with_a_missing_image(standin)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    assert "training_image 2: gone upstream" in capsys.readouterr().err
    assert statuses(archive, 1)[-1] == ("training_image", 2, "gone")
    check_manifest(archive / "manifests" / "1.json")
    asked = len(standin.seen("cdn", "/files/deleted.jpg"))
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 0
    assert len(standin.seen("cdn", "/files/deleted.jpg")) == asked
    assert statuses(archive, 1)[-1] == ("training_image", 2, "gone")
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert ran.code == 0
    assert ran.out.strip().endswith("all intact; 1 file gone upstream, never archived")
    assert cli(capsys, "verify", "--archive", str(archive), "--strict").code == 1


def test_a_file_gone_before_is_never_counted_already_archived(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fetch after the one that found a file gone counts it gone, not "already
    archived": its summary's counts add up to its files, and --json's too (its gone
    counts every file gone upstream, as the summary line does; already_archived only
    the files whose blobs the archive holds)."""
    expired_tune_with_a_missing_image(standin)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    capsys.readouterr()
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 0
    assert "4 files, " in (line := capsys.readouterr().out)
    assert "(0 new, 3 already archived, 0 failed, 1 gone upstream)" in line
    assert run_fetch(standin, archive, "1", "--json", clock=lambda: NOW) == 0
    tune = json.loads(capsys.readouterr().out)["tunes"][0]
    counts = [tune[name] for name in ("files", "new", "already_archived", "failed", "gone")]
    assert counts == [4, 0, 3, 0, 1]  # they add up, as the summary line's do
    assert (tune["ok"], tune["failures"]) == (True, [])  # said once, by the first run
    assert run_fetch(standin, archive, "1", "--dry-run", clock=lambda: NOW) == 0
    assert "would download 0 files, 0 B; 3 already archived" in capsys.readouterr().out


def test_a_file_refused_before_expiry_fails_and_is_tried_again(
    standin: StandIn, archive: Path
) -> None:
    """The same 404 while the tune has not expired is a failure, asked for again next time."""
    add_tune(standin, 1, expires_at=AHEAD)
    standin.tunes[1]["orig_images"].append(standin.file_url("flaky.jpg"))
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    assert statuses(archive, 1)[-1] == ("training_image", 2, "failed")
    standin.add_file("flaky.jpg", os.urandom(3000))
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 0
    assert statuses(archive, 1)[-1] == ("training_image", 2, "ok")


def test_a_failure_of_a_tune_about_to_expire_says_how_long_is_left(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cron run (-q) whose tune fails hours before Astria deletes it says so among its
    error lines: "HTTP 404" alone read as "the next run will get it", and there may be
    no next run. A tune deleted weeks on, or one that fetched whole, says nothing of it."""
    add_tune(standin, 1, expires_at="2026-12-10T17:30:00Z")  # 5 h 30 m after NOW
    standin.tunes[1]["orig_images"].append(standin.file_url("flaky.jpg"))
    add_tune(standin, 2, expires_at=AHEAD)
    standin.tunes[2]["orig_images"].append(standin.file_url("flaky.jpg"))
    add_tune(standin, 3, expires_at="2026-12-10T17:30:00Z")
    assert run_fetch(standin, archive, "1", "2", "3", "-q", clock=lambda: NOW) == 1
    err = capsys.readouterr().err.splitlines()
    said = [line for line in err if "deletes it" in line]
    assert said == ["tune-archiver: error: tune 1 (Tune 1): not archived whole, and Astria "
                    f"deletes it in 5h 30m: run tune-archiver fetch 1 --archive {archive} "
                    f"--api-url {standin.api_url} again before then"]
    assert any(line.startswith("tune-archiver: error: tune 2 (Tune 2): training_image")
               for line in err)


def test_a_prompt_file_failing_hours_before_deletion_names_the_prompts_run(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command said for a tune about to be deleted is one that asks for its failed
    files again: a prompt's only with --prompts (without, it exits 0, the file failed)."""
    add_tune(standin, 1, expires_at="2026-12-10T17:30:00Z")
    standin.add_prompt(1, 7, "ohwx woman", [standin.file_url("flaky.png")])
    assert run_fetch(standin, archive, "1", "--prompts", "-q", clock=lambda: NOW) == 1
    said = [line for line in capsys.readouterr().err.splitlines() if "deletes it" in line]
    assert said == ["tune-archiver: error: tune 1 (Tune 1): not archived whole, and Astria "
                    "deletes it in 5h 30m: run tune-archiver fetch 1 --prompts --archive "
                    f"{archive} --api-url {standin.api_url} again before then"]


def test_prompts_unread_hours_before_deletion_name_the_prompts_run(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune about to be deleted whose prompts could not be read (an HTML page for the
    listing) was told to run 'fetch 1' again, without --prompts: that run lists no
    prompt, writes the manifest complete and exits 0, and the images are lost with the
    tune. The command said asks for its prompts."""
    add_tune(standin, 1, expires_at="2026-12-10T17:30:00Z")
    standin.add_prompt(1, 7, "ohwx woman", [standin.add_file("seven.png", os.urandom(900))])
    standin.page_faults = [Status(200, {"Content-Type": "text/html"}, b"<html>oops</html>")]
    assert run_fetch(standin, archive, "1", "--prompts", "-q", clock=lambda: NOW) == 1
    said = [line for line in capsys.readouterr().err.splitlines() if "deletes it" in line]
    assert said == ["tune-archiver: error: tune 1 (Tune 1): not archived whole, and Astria "
                    "deletes it in 5h 30m: run tune-archiver fetch 1 --prompts --archive "
                    f"{archive} --api-url {standin.api_url} again before then"]


@pytest.mark.parametrize("expires_at", ["2026-12-10T12:00:45Z", "2026-12-10T12:00:00.500Z"])
def test_a_failure_of_a_tune_deleted_within_a_minute_says_under_a_minute(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], expires_at: str
) -> None:
    """Seconds before Astria deletes a tune that failed, the line says "under a minute":
    "deletes it in 0h 0m" read as already gone, or as a clock gone wrong, and half a
    second before, "deletes it in expired" (the seconds left were cut to 0)."""
    add_tune(standin, 1, expires_at=expires_at)  # 45 s, or half a second, after NOW
    standin.tunes[1]["orig_images"].append(standin.file_url("flaky.jpg"))
    assert run_fetch(standin, archive, "1", "-q", clock=lambda: NOW) == 1
    said = [line for line in capsys.readouterr().err.splitlines() if "deletes it" in line]
    assert said == ["tune-archiver: error: tune 1 (Tune 1): not archived whole, and Astria "
                    "deletes it in under a minute: run tune-archiver fetch 1 --archive "
                    f"{archive} --api-url {standin.api_url} again before then"]


def test_json_says_how_long_each_tune_has_left(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json says what the error line says: the seconds left before Astria deletes the
    tune (null for one with no expires_at), so a monitor can tell a failure due today."""
    add_tune(standin, 1, expires_at="2026-12-10T17:30:00Z")
    standin.tunes[1]["orig_images"].append(standin.file_url("flaky.jpg"))
    add_tune(standin, 2, expires_at=None)
    assert run_fetch(standin, archive, "1", "2", "--json", clock=lambda: NOW) == 1
    tunes = json.loads(capsys.readouterr().out)["tunes"]
    assert [(t["tune_id"], t["ok"], t["expires_in"]) for t in tunes] == [
        (1, False, 5 * 3600 + 1800), (2, True, None)]


def test_a_tune_about_to_expire_whose_only_loss_is_gone_upstream_is_not_told_to_run_again(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that failed, then left the tune's listing hours before Astria deletes it,
    is gone upstream: never asked for again. Telling the user to "run fetch again
    before then" sent them to a run that exits 0 with that file never archived."""
    add_tune(standin, 1, images=2, expires_at="2026-12-10T17:30:00Z")  # 5 h 30 m left
    standin.faults["img-1-1.jpg"] = [Status(404)] * 10
    assert run_fetch(standin, archive, "1", "-q", clock=lambda: NOW) == 1
    assert "deletes it in 5h 30m" in capsys.readouterr().err  # a failure: worth a run
    standin.tunes[1]["orig_images"] = standin.tunes[1]["orig_images"][:1]
    assert run_fetch(standin, archive, "1", "-q", clock=lambda: NOW) == 1
    err = capsys.readouterr().err
    assert "training_image 1: gone upstream, never archived" in err
    assert "deletes it" not in err
    assert run_fetch(standin, archive, "1", "-q", clock=lambda: NOW) == 0  # what it led to


def test_a_lost_blob_that_cannot_be_fetched_again_is_a_failure_and_keeps_its_entry(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A blob the disk lost is fetched again; when that fails, the run says the file
    failed (exit 1, not "already archived"), and the manifest still names the blob, so
    nothing archived is dropped and verify says what is missing."""
    served = add_tune(standin, 1, images=2, expires_at=AHEAD)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 0
    before = manifest_of(archive, 1)
    blob_file(archive, served.images[0]).unlink()
    standin.faults["img-1-0.jpg"] = [Status(404)] * 10
    capsys.readouterr()
    assert run_fetch(standin, archive, "1", "--json", clock=lambda: NOW) == 1
    [tune] = json.loads(capsys.readouterr().out)["tunes"]
    assert tune["ok"] is False
    assert manifest_of(archive, 1)["assets"] == before["assets"]


def test_a_lost_blob_of_a_file_no_longer_listed_is_a_failure_and_keeps_its_entry(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file the tune no longer lists, whose blob the disk lost, cannot be fetched
    again: the run says it failed (not "already archived"), and the manifest still
    names it."""
    served = add_tune(standin, 1, images=2, expires_at=AHEAD)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 0
    standin.tunes[1]["orig_images"] = standin.tunes[1]["orig_images"][:1]
    blob_file(archive, served.images[1]).unlink()
    capsys.readouterr()
    assert run_fetch(standin, archive, "1", "--json", clock=lambda: NOW) == 1
    [tune] = json.loads(capsys.readouterr().out)["tunes"]
    assert (tune["ok"], tune["failed"]) == (False, 1)
    assert ("training_image", 1, "ok") in statuses(archive, 1)


@pytest.mark.parametrize("listed", [True, False])
def test_a_lost_blob_that_cannot_be_fetched_again_leaves_the_manifest_not_complete(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], listed: bool
) -> None:
    """The run that says a lost blob could not be fetched again (listed, or no longer
    listed) writes a manifest that says the tune is not complete, as list shows it."""
    served = add_tune(standin, 1, images=2, expires_at=AHEAD)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 0
    blob_file(archive, served.images[1]).unlink()
    if listed:
        standin.faults["img-1-1.jpg"] = [Status(404)] * 10
    else:
        standin.tunes[1]["orig_images"] = standin.tunes[1]["orig_images"][:1]
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    assert check_manifest(archive / "manifests" / "1.json")["complete"] is False
    assert ("training_image", 1, "ok") in statuses(archive, 1)
    [row] = json.loads(cli(capsys, "list", "--archive", str(archive), "--json").out)["tunes"]
    assert row["complete"] is False


def test_a_failed_file_the_tune_no_longer_lists_is_said_gone_and_kept(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that failed (a 404 on day 1) and that the API no longer lists on day 2 was
    dropped from the manifest: day 2 exited 0, complete, and verify said all intact, for
    a file never archived. It is now gone upstream: said once (exit 1), kept as gone
    (not complete; verify --strict fails), and later runs exit 0 with its error as it was."""
    add_tune(standin, 1, images=2, expires_at=AHEAD)
    standin.faults["img-1-1.jpg"] = [Status(404)] * 10
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    standin.tunes[1]["orig_images"] = standin.tunes[1]["orig_images"][:1]
    capsys.readouterr()
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    assert "training_image 1: gone upstream, never archived" in capsys.readouterr().err
    document = check_manifest(archive / "manifests" / "1.json")
    assert ("training_image", 1, "gone") in statuses(archive, 1)
    assert document["complete"] is False
    errors = [e["error"] for e in document["assets"] if e["status"] == "gone"]
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 0
    assert [e["error"] for e in manifest_of(archive, 1)["assets"]
            if e["status"] == "gone"] == errors
    assert cli(capsys, "verify", "--strict", "--archive", str(archive)).code == 1


def test_a_listing_of_no_file_at_all_turns_no_failed_file_gone(
    standin: StandIn, archive: Path
) -> None:
    """A tune that lists nothing for a while (a glitch) proves no file gone: a failed one
    is tried again once the files are listed again."""
    add_tune(standin, 1, images=2, expires_at=AHEAD)
    standin.faults["img-1-1.jpg"] = [Status(404)] * 10
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    names = ("ckpt_urls", "ckpt_url", "orig_images")
    listed = {name: standin.tunes[1].get(name) for name in names}
    standin.tunes[1].update(ckpt_urls=[], ckpt_url=None, orig_images=[])
    run_fetch(standin, archive, "1", clock=lambda: NOW)
    assert not [s for s in statuses(archive, 1) if s[2] == "gone"]
    standin.tunes[1].update(listed)
    standin.faults["img-1-1.jpg"] = []
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 0
    assert ("training_image", 1, "ok") in statuses(archive, 1)


def test_a_failed_prompt_image_is_not_gone_in_a_run_without_prompts(
    standin: StandIn, archive: Path
) -> None:
    """Without --prompts no prompt is listed: a prompt image that failed is not gone (it
    was not asked for), nor a failure of that run, nor dropped from the manifest, which
    stays not complete; a later --prompts run tries it again."""
    add_tune(standin, 1, images=1, expires_at=AHEAD)
    standin.add_prompt(1, 500, "ohwx", [standin.add_file("gen", b"g" * 900)])
    standin.faults["gen"] = [Status(404)] * 10
    assert run_fetch(standin, archive, "1", "--prompts", clock=lambda: NOW) == 1
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 0
    assert ("prompt_image", 0, "gone") not in statuses(archive, 1)
    # Nor is it forgotten: it stays failed, with its error, and the tune is not complete.
    [entry] = [e for e in manifest_of(archive, 1)["assets"] if e["kind"] == "prompt_image"]
    assert (entry["status"], "404" in entry["error"]) == ("failed", True)
    assert manifest_of(archive, 1)["complete"] is False
    standin.faults["gen"] = []
    assert run_fetch(standin, archive, "1", "--prompts", clock=lambda: NOW) == 0
    assert ("prompt_image", 0, "ok") in statuses(archive, 1)


def test_all_does_not_fail_forever_on_a_file_gone_upstream(
    standin: StandIn, archive: Path
) -> None:
    """fetch --all says the loss once, then exits 0 on every later day."""
    expired_tune_with_a_missing_image(standin)
    assert run_fetch(standin, archive, "--all", clock=lambda: NOW) == 1
    later = NOW + timedelta(days=1)
    assert run_fetch(standin, archive, "--all", clock=lambda: later) == 0


# -- nothing listed -----------------------------------------------------------------------


def test_a_tune_still_training_says_so_and_is_not_complete(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No file listed yet: a warning, state "training", never "complete", and list says
    checkpoint "none" and "still training"."""
    standin.add_tune(1, [], [], trained_at=None)
    assert run_fetch(standin, archive, "1") == 0
    assert "the API lists no files yet (still training)" in capsys.readouterr().err
    document = check_manifest(archive / "manifests" / "1.json")
    assert (document["state"], document["complete"]) == ("training", False)
    ran = cli(capsys, "list", "--archive", str(archive))
    row = ran.out.splitlines()[1]
    assert " none " in row
    assert "still training" in row


def test_a_trained_tune_listing_nothing_says_so(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trained tune with no file at all (purged) is "no_files_listed", with a warning."""
    standin.add_tune(1, [], [])
    assert run_fetch(standin, archive, "1") == 0
    assert "the API lists no files (expired and deleted upstream?)" in capsys.readouterr().err
    document = check_manifest(archive / "manifests" / "1.json")
    assert (document["state"], document["complete"]) == ("no_files_listed", False)



def test_a_tune_listing_nothing_is_never_made_complete_by_what_it_once_listed(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune archived in part (its photos left out by --only, or sent malformed) whose
    files are then purged upstream lists nothing: its manifest, complete false, was
    rewritten complete true, so list said 'yes' and fetch --all skipped it from then
    on, its photos never archived. A listing of no file proves nothing: not complete."""
    photo = standin.add_file("photo-1.jpg", os.urandom(3_000))
    tune = standin.add_tune(1, [standin.add_file("ckpt-1", os.urandom(2_000))], [photo])
    assert run_fetch(standin, archive, "1", "--only", "checkpoints") == 0
    assert check_manifest(archive / "manifests" / "1.json")["complete"] is False
    capsys.readouterr()
    # Intact, not complete: verify says so, as list does ('no'), never 'all intact' alone.
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert (ran.code, ran.out.split(": ", 1)[1]) == (
        0, "all intact; 1 tune archived in part, not complete\n")
    tune.update(ckpt_urls=[], ckpt_url=None, orig_images=[])
    assert run_fetch(standin, archive, "1") == 0
    assert "the API lists no files" in capsys.readouterr().err
    document = check_manifest(archive / "manifests" / "1.json")
    assert (document["state"], document["complete"]) == ("no_files_listed", False)
    assert [entry["kind"] for entry in document["assets"]] == ["checkpoint"]
    row = cli(capsys, "list", "--archive", str(archive)).out.splitlines()[1]
    assert " no " in row
    assert cli(capsys, "verify", "--archive", str(archive)).out.endswith(
        "all intact; 1 tune archived in part, not complete\n")


def test_a_purged_tune_listing_its_prompts_alone_is_not_made_complete_by_them(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune archived in part (its photos left out by --only) whose own files are then
    purged upstream while its prompts are still listed: a 'fetch --prompts' archived the
    prompt's image and wrote the tune complete, list 'yes', its photos never archived.
    Its prompts' files say nothing of its own: as the manifest was, not complete."""
    photo = standin.add_file("photo-1.jpg", os.urandom(3_000))
    tune = standin.add_tune(1, [standin.add_file("ckpt-1", os.urandom(2_000))], [photo])
    standin.add_prompt(1, 7, "ohwx woman", [standin.add_file("seven.png", os.urandom(900))])
    assert run_fetch(standin, archive, "1", "--only", "checkpoints") == 0
    tune.update(ckpt_urls=[], ckpt_url=None, orig_images=[])
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    assert sorted(entry["kind"] for entry in document["assets"]) == ["checkpoint",
                                                                     "prompt_image"]
    assert document["complete"] is False
    capsys.readouterr()
    row = cli(capsys, "list", "--archive", str(archive)).out.splitlines()[1]
    assert " no " in row


def test_a_tune_archived_whole_listing_its_prompts_alone_stays_complete(
    standin: StandIn, archive: Path
) -> None:
    """Archived whole, then purged upstream but for its prompts: complete, as it was."""
    tune = standin.add_tune(1, [standin.add_file("ckpt-1", os.urandom(2_000))],
                            [standin.add_file("photo-1.jpg", os.urandom(3_000))])
    standin.add_prompt(1, 7, "ohwx woman", [standin.add_file("seven.png", os.urandom(900))])
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    tune.update(ckpt_urls=[], ckpt_url=None, orig_images=[])
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    assert check_manifest(archive / "manifests" / "1.json")["complete"] is True


def test_a_tune_archived_whole_whose_files_are_then_deleted_stays_complete(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Astria deletes a tune's files 30 days on, and may then list none: a tune archived
    whole before that keeps its manifest complete, every file in it (list: 'yes')."""
    tune = standin.add_tune(1, [standin.add_file("ckpt-1", os.urandom(2_000))],
                            [standin.add_file("photo-1.jpg", os.urandom(3_000))])
    assert run_fetch(standin, archive, "1") == 0
    tune.update(ckpt_urls=[], ckpt_url=None, orig_images=[])
    assert run_fetch(standin, archive, "1") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    assert (document["state"], document["complete"]) == ("no_files_listed", True)
    assert [(e["kind"], e["status"]) for e in document["assets"]] == [
        ("checkpoint", "ok"), ("training_image", "ok")]
    row = cli(capsys, "list", "--archive", str(archive)).out.splitlines()[1]
    assert " yes " in row


# -- verify --repair ------------------------------------------------------------------------


def test_repair_moves_a_corrupt_blob_aside_and_fetches_it_again(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify --repair: the corrupt blob goes to tmp/damaged/ (kept even by a later gc),
    the tune is fetched again, and the archive is whole: exit 0."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    blob = blob_file(archive, served.images[0])
    flip_byte(blob, 10)
    damaged_bytes = blob.read_bytes()
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert ran.code == 1
    assert ran.errors[0].endswith(f"(repair: tune-archiver verify --repair 1 --archive {archive})")
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 0, ran.err
    assert "the archive is whole" in ran.out
    assert blob.read_bytes() == served.images[0]
    [kept] = (archive / "tmp" / "damaged").iterdir()
    assert kept.name.startswith(f"{sha256(served.images[0])}-")
    assert kept.read_bytes() == damaged_bytes
    assert cli(capsys, "gc", "--archive", str(archive), now=NOW + timedelta(days=30)).code == 0
    assert kept.read_bytes() == damaged_bytes
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_repair_says_what_it_could_not_mend_and_exits_1(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A blob lost from the archive whose file is gone upstream cannot be repaired: the
    repair says so and exits 1."""
    served = add_tune(standin, 1, expires_at=EXPIRED)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW - timedelta(days=20)) == 0
    blob_file(archive, served.checkpoints[0]).unlink()
    standin.faults["ckpt-1.safetensors"] = [Status(404)]
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url, now=NOW)
    assert ran.code == 1
    assert "the archive is NOT whole" in ran.out
    assert any("not repaired" in line and "checkpoint 0" in line for line in ran.errors)
    # Not complete now for its missing blob, said as such: never "archived in part".
    ran = cli(capsys, "verify", "--archive", str(archive), now=NOW)
    assert (ran.code, ran.out.split(": ", 1)[1]) == (1, "1 problem\n")


def gone_upstream(standin: StandIn) -> None:
    """The tunes have expired: Astria deleted every file, so nothing can be fetched again."""
    for name in list(standin.files):
        standin.faults[name] = [Status(404)] * 10


def test_repair_keeps_an_intact_blob_whose_manifest_path_is_wrong(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only an entry's "path" is off; the blob hashes right. verify --repair mends the
    path in the manifest and never takes the blob out of objects/ (for a tune gone
    upstream it could not be fetched again): exit 0, and verify finds it whole."""
    served = add_tune(standin, 1, expires_at=EXPIRED)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW - timedelta(days=20)) == 0
    image = served.images[0]
    document = manifest_of(archive, 1)
    entry = next(e for e in document["assets"] if e["sha256"] == sha256(image))
    entry["path"] = f"objects/sha256/zz/{entry['sha256']}"
    write_manifest(archive, 1, document)
    gone_upstream(standin)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url, now=NOW)
    assert blob_file(archive, image).read_bytes() == image, ran.out
    assert not (archive / "tmp" / "damaged").exists()
    assert ran.code == 0, ran.err
    assert [e["path"] for e in manifest_of(archive, 1)["assets"]
            if e["sha256"] == sha256(image)] == [key_of(image)]
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def misplace(archive: Path, data: bytes) -> Path:
    """Move the blob of `data` into the wrong fan-out folder objects/sha256/zz/."""
    elsewhere = archive / "objects" / "sha256" / "zz" / sha256(data)
    elsewhere.parent.mkdir(exist_ok=True)
    blob_file(archive, data).rename(elsewhere)
    return elsewhere


@pytest.mark.parametrize("at_its_place", ["nothing", "rotted bytes"])
def test_repair_puts_a_whole_blob_found_at_a_wrong_place_back(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], at_its_place: str
) -> None:
    """The blob of a tune gone upstream sits whole in the wrong fan-out folder (nothing at
    its place, or a rotted copy there): verify --repair puts it back and fetches nothing,
    exit 0. It was moved to tmp/damaged/ and fetched again: for a tune gone upstream it
    could never be, and the archive was NOT whole for good."""
    served = add_tune(standin, 1, expires_at=EXPIRED)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW - timedelta(days=20)) == 0
    image = served.images[0]
    elsewhere = misplace(archive, image)
    rotted = bytes(len(image))
    if at_its_place == "rotted bytes":
        blob_file(archive, image).write_bytes(rotted)
    gone_upstream(standin)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive), "--json",
              "--api-url", standin.api_url, now=NOW)
    assert ran.code == 0, ran.err
    repair = json.loads(ran.out)["repair"]
    assert repair["put_back"] == [f"{key_of(image)} from objects/sha256/zz/{sha256(image)}"]
    assert repair["fetched"] == []
    assert blob_file(archive, image).read_bytes() == image
    assert blob_file(archive, image).stat().st_mode & 0o777 == 0o400
    assert not elsewhere.exists()
    kept = [path.read_bytes() for path in (archive / "tmp" / "damaged").glob("*")]
    assert kept == ([rotted] if at_its_place == "rotted bytes" else [])
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_repair_never_puts_back_a_misplaced_copy_that_is_not_whole(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy at a wrong place whose bytes do not hash to its name stays out of the
    blob's place: it is moved aside and the tune fetched again, as before."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    image = served.images[0]
    elsewhere = misplace(archive, image)
    flip_byte(elsewhere, 10)
    damaged = elsewhere.read_bytes()
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive), "--json",
              "--api-url", standin.api_url, now=NOW)
    assert ran.code == 0, ran.err
    repair = json.loads(ran.out)["repair"]
    assert (repair["put_back"], [t["tune_id"] for t in repair["fetched"]]) == ([], [1])
    assert blob_file(archive, image).read_bytes() == image
    assert [path.read_bytes() for path in (archive / "tmp" / "damaged").glob("*")] == [damaged]


def test_repair_never_takes_away_a_blob_another_tune_holds_intact(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tunes 1 and 2 share an image; only tune 2's manifest records a wrong size for it
    (the blob hashes right). verify --repair sets tune 2's size to the blob's and keeps
    the blob: once both tunes are gone upstream, tune 1 still verifies whole."""
    shared = os.urandom(4_000)
    add_tune(standin, 1, shared=(shared,), expires_at=EXPIRED)
    add_tune(standin, 2, shared=(shared,), expires_at=EXPIRED)
    assert run_fetch(standin, archive, "1", "2", clock=lambda: NOW - timedelta(days=20)) == 0
    document = manifest_of(archive, 2)
    entry = next(e for e in document["assets"] if e["sha256"] == sha256(shared))
    entry["size"] += 1
    write_manifest(archive, 2, document)
    gone_upstream(standin)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url, now=NOW)
    assert blob_file(archive, shared).read_bytes() == shared, "the intact shared blob left"
    assert ran.code == 0, ran.err
    assert [e["size"] for e in manifest_of(archive, 2)["assets"]
            if e["sha256"] == sha256(shared)] == [len(shared)]
    assert cli(capsys, "verify", "1", "--archive", str(archive)).code == 0
    assert cli(capsys, "verify", "2", "--archive", str(archive)).code == 0


def test_repair_never_moves_a_blob_through_a_link_planted_at_tmp_damaged(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tmp/damaged is a link to a folder outside the archive: verify --repair moves no
    damaged blob (a person's photo) out through it, and says the refusal once, then the
    blob not repaired, exit 1."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    blob = blob_file(archive, served.images[0])
    flip_byte(blob, 10)
    damaged_bytes = blob.read_bytes()
    outside = tmp_path / "public"
    outside.mkdir()
    (archive / "tmp" / "damaged").symlink_to(outside)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert list(outside.iterdir()) == [], ran.out
    assert blob.read_bytes() == damaged_bytes
    assert ran.code == 1
    assert ran.err.splitlines() == ran.errors
    assert ran.errors[0] == (
        f"tune-archiver: error: not repaired: refused to set a damaged blob aside in "
        f"{archive}: tmp/damaged is a symbolic link or not a folder, never followed; nothing "
        "was moved (remove it, then try again)")
    assert [line.split(": ")[3:5] for line in ran.errors[1:]] == [
        ["tune 1", "training_image 0"]]


def test_a_blob_repair_cannot_set_aside_stops_no_other_tunes_repair(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fan-out folder of one tune's blob is a file (a damaged disk): repair cannot set
    that blob aside and says so, but still moves the other tune's rotted blob aside and
    fetches it again (that tune verifies whole); exit 1. The refusal stopped the whole
    repair, and every damaged blob sorted after it was never mended."""
    while True:  # random bytes: no blob of the rotting tune in the folder made a file
        one, two = add_tune(standin, 1), add_tune(standin, 2)
        # The blob refused sorts first: repair takes damaged blobs in sha256 order.
        first = min(one.all + two.all, key=sha256)
        stuck, rotting = (1, 2) if first in one.all else (2, 1)
        others = (two if rotting == 2 else one).all
        if all(sha256(blob)[:2] != sha256(first)[:2] for blob in others):
            break
    archived(standin, archive, 1, 2)
    rotted = max(others, key=sha256)
    folder = blob_file(archive, first).parent
    for blob in folder.iterdir():
        blob.unlink()
    folder.rmdir()
    folder.write_bytes(b"not a folder")
    flip_byte(blob_file(archive, rotted), 10)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 1
    assert blob_file(archive, rotted).read_bytes() == rotted
    assert cli(capsys, "verify", str(rotting), "--archive", str(archive)).code == 0
    assert any(f"objects/sha256/{sha256(first)[:2]} is a symbolic link or not a folder"
               in line for line in ran.errors), ran.err
    assert any(line.startswith(f"tune-archiver: error: not repaired: tune {stuck}: ")
               for line in ran.errors), ran.err


class CountedWalks(LocalStore):
    """A local archive that counts the walks of objects/ looking for misplaced blobs."""

    walks = 0

    async def misplaced(self) -> dict[str, str]:
        self.walks += 1
        return await super().misplaced()


def test_repair_walks_the_objects_folder_once_however_many_blobs_are_damaged(
    standin: StandIn, archive: Path
) -> None:
    """Every blob of a tune rotted: verify walks objects/ once, and the repair once more
    to set them all aside. It walked the whole of objects/ again for each damaged blob,
    so 500 rotted blobs of a 100,000-blob archive took over 15 minutes to set aside."""
    served = add_tune(standin, 1, images=4)
    archived(standin, archive, 1)
    for data in served.all:
        flip_byte(blob_file(archive, data), 10)
    store = CountedWalks(archive)
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        retry=RetryPolicy(sleep=Sleeps()))

    async def verify_and_repair() -> RepairReport:
        found = await verify(store, [], NullProgress())
        return await repair(store, found, settings, staging_for(archive), NullProgress(),
                            lambda: NOW)

    mended = asyncio.run(verify_and_repair())
    assert mended.ok
    assert len(mended.moved) == len(served.all)
    assert store.walks == 3  # verify, the repair, and the verify after


def test_verify_reports_a_link_at_a_blobs_place_as_not_a_file(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A symlink where a blob should be is never read through: problem not_a_file."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    blob = blob_file(archive, served.images[1])
    outside = tmp_path / "outside"
    outside.write_bytes(served.images[1])  # even the right bytes: a link is no blob
    blob.unlink()
    blob.symlink_to(outside)
    ran = cli(capsys, "verify", "--archive", str(archive), "--json")
    assert ran.code == 1
    problems = json.loads(ran.out)["problems"]
    assert [(p["index"], p["problem"]) for p in problems] == [(1, "not_a_file")]


class FailingDisk(LocalStore):
    """A local archive where reading one blob fails with `error`: the disk's EIO, or
    EACCES, a blob this user may not read (another user's 0400 file, a run under sudo,
    or its mode changed by hand)."""

    def __init__(self, root: Path, bad: str, error: int = errno.EIO) -> None:
        super().__init__(root)
        self.bad, self.error = bad, error

    async def hash_blob(
        self, sha256: str, advance: Callable[[int], None]
    ) -> tuple[int, str] | None:
        if sha256 == self.bad:
            raise storage_error(OSError(self.error, os.strerror(self.error)), self.root,
                                f"read the blob {sha256}")
        return await super().hash_blob(sha256, advance)


def test_a_blob_the_disk_cannot_read_is_its_own_problem(
    standin: StandIn, archive: Path
) -> None:
    """EIO on one blob is an "unreadable" problem for it; every other blob is still checked."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    store = FailingDisk(archive, sha256(served.images[0]))
    found = asyncio.run(verify(store, [], NullProgress()))
    assert [(p.kind, p.index, p.problem) for p in found.problems] == [
        ("training_image", 0, "unreadable")
    ]
    assert "Input/output error" in found.problems[0].detail
    assert found.blobs == len(served.all)


def test_repair_never_moves_aside_a_blob_this_user_may_not_read(
    standin: StandIn, archive: Path
) -> None:
    """A blob whose bytes are whole but that this user may not read (EACCES) was taken
    for a disk's damage: verify --repair moved it to tmp/damaged/ and fetched its tune
    again, which for a tune gone upstream left its checkpoint 'missing' for good, the
    one copy of its bytes, whole, set aside where no repair looks. It stays, said as
    that blob's error (exit 1), and its tune is not fetched over it."""
    served = add_tune(standin, 1, expires_at=EXPIRED)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW - timedelta(days=20)) == 0
    gone_upstream(standin)
    checkpoint = sha256(served.checkpoints[0])
    store = FailingDisk(archive, checkpoint, errno.EACCES)
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        retry=RetryPolicy(sleep=Sleeps()))

    async def verify_and_repair() -> RepairReport:
        found = await verify(store, [], NullProgress())
        assert [p.problem for p in found.problems] == ["unreadable"]
        return await repair(store, found, settings, staging_for(archive), NullProgress(),
                            lambda: NOW)

    mended = asyncio.run(verify_and_repair())
    assert blob_file(archive, served.checkpoints[0]).read_bytes() == served.checkpoints[0]
    assert (mended.moved, mended.fetched, mended.ok) == ([], [], False)
    assert "Permission denied; not moved aside" in mended.refused[0]


def prompt_entries(archive: Path, tune_id: int) -> set[tuple[int, str, int, str]]:
    return {(e["prompt_id"], e["kind"], e["index"], e["status"])
            for e in manifest_of(archive, tune_id)["assets"] if e.get("prompt_id")}


def test_an_input_of_a_deleted_prompt_stays_when_another_prompt_uses_the_same_url(
    standin: StandIn, archive: Path
) -> None:
    """Prompt 500 used a reference image; it is deleted upstream, and prompt 501 uses the
    same image as its second input. Prompt 500's entry stays (no longer listed), and
    501 has its own: a file of one prompt is never taken for another's."""
    standin.add_tune(10, [standin.add_file("ckpt", os.urandom(4_000))], [])
    ref = standin.add_file("ref", os.urandom(900))
    standin.add_prompt(10, 500, "ohwx in paris", [], input_image=ref)
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    assert prompt_entries(archive, 10) == {(500, "prompt_input", 0, "ok")}
    standin.prompts[10] = []
    standin.add_prompt(10, 501, "ohwx in rome", [], input_image=standin.add_file(
        "other", os.urandom(901)), image_references=[ref])
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    assert prompt_entries(archive, 10) == {(500, "prompt_input", 0, "ok"),
                                          (501, "prompt_input", 0, "ok"),
                                          (501, "prompt_input", 1, "ok")}


def test_an_image_of_a_deleted_prompt_stays_when_another_prompt_lists_its_url(
    standin: StandIn, archive: Path
) -> None:
    """The same with generated images, listed by two prompts at different places."""
    standin.add_tune(10, [standin.add_file("ckpt", os.urandom(4_000))], [])
    shared = standin.add_file("shared", os.urandom(900))
    standin.add_prompt(10, 500, "first", [shared])
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    standin.prompts[10] = []
    standin.add_prompt(10, 501, "second", [standin.add_file("own", os.urandom(902)), shared])
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    assert (500, "prompt_image", 0, "ok") in prompt_entries(archive, 10)


def test_repair_never_says_whole_while_another_tunes_manifest_is_unreadable(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tune 1 has a corrupt blob (mended by fetching it again); tune 2's manifest is not
    JSON, which no repair mends: the archive is not whole, so exit 1 naming tune 2."""
    served = add_tune(standin, 1)
    add_tune(standin, 2)
    archived(standin, archive, 1, 2)
    flip_byte(blob_file(archive, served.images[0]), 10)
    (archive / "manifests" / "2.json").write_text("{not json")
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive), "--json",
              "--api-url", standin.api_url)
    assert blob_file(archive, served.images[0]).read_bytes() == served.images[0]
    assert ran.code == 1, ran.out
    after = json.loads(ran.out)["repair"]["after"]
    assert [(p["tune_id"], p["problem"]) for p in after["problems"]] == [
        (2, "unreadable_manifest")]
    assert any("tune 2" in line for line in ran.errors)


def test_repair_strict_never_forgets_a_file_gone_upstream_of_a_tune_it_left_alone(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tune 1 has a corrupt blob; tune 2 has a file gone upstream: verify --repair
    --strict mends tune 1 and still counts tune 2's lost file, exit 1."""
    served = add_tune(standin, 1)
    add_tune(standin, 2)
    archived(standin, archive, 1, 2)
    flip_byte(blob_file(archive, served.images[0]), 10)
    document = manifest_of(archive, 2)
    lost = document["assets"][-1]
    for name in ("sha256", "size", "path", "content_type"):
        lost.pop(name)
    lost.update(status="gone", error="HTTP 404 after the tune expired")
    write_manifest(archive, 2, document)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--strict", "--archive", str(archive), "--json",
              "--api-url", standin.api_url)
    assert blob_file(archive, served.images[0]).read_bytes() == served.images[0]
    assert ran.code == 1, ran.out
    assert [(p["tune_id"], p["problem"]) for p in
            json.loads(ran.out)["repair"]["after"]["gone"]] == [(2, "gone")]
    assert json.loads(ran.out)["ok"] is False


def test_verify_strict_json_says_not_ok_when_it_exits_1_for_a_file_gone_upstream(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--strict --json: a file gone upstream makes the run exit 1, and the document's
    "ok" says the same (a script reading it was told the archive passed)."""
    expired_tune_with_a_missing_image(standin)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    ran = cli(capsys, "verify", "--archive", str(archive), "--strict", "--json")
    assert (ran.code, json.loads(ran.out)["ok"]) == (1, False)
    ran = cli(capsys, "verify", "--archive", str(archive), "--json")
    assert (ran.code, json.loads(ran.out)["ok"]) == (0, True)


def test_repair_fetches_a_damaged_generated_image_again(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune archived with --prompts: the blob of a generated image rots. verify
    --repair moves it aside and fetches the tune again, its prompts too: it fetched
    without them, so the image was never downloaded again and every repair said "NOT
    whole" (exit 1) for a file the API still serves."""
    add_tune(standin, 1)
    picture = os.urandom(6_000)
    standin.add_prompt(1, 500, "a photo of ohwx", [standin.add_file("gen-500-0.png", picture)])
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    flip_byte(blob_file(archive, picture), 10)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 0, ran.err
    assert blob_file(archive, picture).read_bytes() == picture
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_verify_strict_never_says_all_intact_when_it_fails_for_a_file_gone_upstream(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--strict with a file gone upstream exits 1: its summary said "all intact; 1 file
    gone upstream" and stderr said nothing; now the summary says it failed, and an error
    line names the file."""
    expired_tune_with_a_missing_image(standin)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    ran = cli(capsys, "verify", "--archive", str(archive), "--strict")
    assert ran.code == 1
    assert "all intact" not in ran.out
    assert "tune 1: training_image 2: gone upstream" in ran.err
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--strict", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 1
    assert "all intact" not in ran.out
    assert "the archive is NOT whole" in ran.out
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert (ran.code, ran.err) == (0, "")


@pytest.mark.parametrize("deleted", ["its files", "the tune"])
def test_repair_of_a_blob_shared_with_a_tune_gone_upstream_says_whole(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], deleted: str
) -> None:
    """Tunes 1 and 2 share an image whose blob rots; Astria has deleted tune 2 (its files
    answer 404, or the tune itself). The repair fetches the blob again with tune 1, so
    the archive is whole, and says so, exit 0 (it said NOT whole, exit 1, for tune 2's
    fetch, though the verify after and the next repair found nothing)."""
    one, _ = two_tunes_sharing_an_image(standin, archive)
    shared = one.images[-1]
    if deleted == "the tune":
        del standin.tunes[2]
    else:
        standin.tunes[2]["expires_at"] = EXPIRED
        for name in [n for n in standin.files if n.startswith(("img-2-", "ckpt-2."))]:
            del standin.files[name]
    flip_byte(blob_file(archive, shared), 10)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive), "--json",
              "--api-url", standin.api_url, now=NOW)
    assert blob_file(archive, shared).read_bytes() == shared
    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["ok"] is True
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_repair_says_not_whole_for_a_prompt_file_found_gone_beside_another_gone_one(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prompts 500 and 501 each have an image 0. 500's is gone upstream already; 501's
    failed, and Astria deleted prompt 501 before the repair fetched it again: a file
    found gone meanwhile, so the archive is NOT whole, exit 1. Both are prompt_image 0 of
    tune 1: the repair took the new one for the old, and said whole, exit 0."""
    add_tune(standin, 1, images=1, expires_at=AHEAD)
    standin.add_prompt(1, 500, "ohwx", [standin.add_file("gen-a", b"a" * 900)])
    standin.add_prompt(1, 501, "ohwx", [standin.add_file("gen-b", b"b" * 900)])
    standin.faults["gen-a"] = [Status(404)] * 10
    standin.faults["gen-b"] = [Status(404)] * 10
    assert run_fetch(standin, archive, "1", "--prompts", clock=lambda: NOW) == 1
    standin.prompts[1] = [p for p in standin.prompts[1] if p["id"] != 500]
    assert run_fetch(standin, archive, "1", "--prompts", clock=lambda: NOW) == 1
    assert [s for s in statuses(archive, 1) if s[0] == "prompt_image"] == [
        ("prompt_image", 0, "failed"), ("prompt_image", 0, "gone")]
    standin.prompts[1] = []
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive), "--json",
              "--api-url", standin.api_url, now=NOW)
    assert statuses(archive, 1).count(("prompt_image", 0, "gone")) == 2
    assert (ran.code, json.loads(ran.out)["ok"]) == (1, False), ran.out


def test_a_photo_archived_before_that_the_api_now_lists_as_null_is_no_failure(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two photos archived; Astria then lists the second as null (a photo it gives no
    URL for). Every fetch said 'some training images not archived' (exit 1, never
    complete), though that photo's entry is kept, archived, and retrain sends it: a
    daily cron failed forever on a tune missing nothing. The archived photo stands for
    the null; a null none stands for still fails, and so does one whose blob is lost."""
    served = add_tune(standin, 1, images=2, expires_at=AHEAD)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 0
    listed = standin.tunes[1]["orig_images"]
    standin.tunes[1]["orig_images"] = [listed[0], None]
    capsys.readouterr()
    assert run_fetch(standin, archive, "1", "--dry-run", clock=lambda: NOW) == 0
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 0
    assert "not archived" not in capsys.readouterr().err
    assert manifest_of(archive, 1)["complete"] is True
    standin.tunes[1]["orig_images"] = [listed[0], None, None]
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    assert "'orig_images' holds 2 items that are not a URL" in capsys.readouterr().err
    assert manifest_of(archive, 1)["complete"] is False
    standin.tunes[1]["orig_images"] = [listed[0], None]
    blob_file(archive, served.images[1]).unlink()
    assert run_fetch(standin, archive, "1", clock=lambda: NOW) == 1
    assert manifest_of(archive, 1)["complete"] is False


def test_the_bench_switch_that_skips_hashing_is_said_even_with_q(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TUNE_ARCHIVER_BENCH_SKIP_HASH names blobs by their size alone: left in a cron's
    environment, a -q run said nothing of it and exited 0, its "ok" worth nothing."""
    monkeypatch.setattr("tune_archiver.cli.main.SKIP_HASH", True)
    make_tune(standin, 1, images=1)
    assert run_fetch(standin, tmp_path / "archive", "1", "-q") == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "TUNE_ARCHIVER_BENCH_SKIP_HASH is set" in err[0]


def test_the_bench_switch_that_skips_hashing_is_said_by_a_repair_too(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """verify --repair fetches a damaged tune again, its blobs named by the same hash:
    left in a cron's environment, the switch was said by fetch alone, never by a -q
    repair run from the same crontab."""
    make_tune(standin, 1, images=1)
    archive = tmp_path / "archive"
    assert run_fetch(standin, archive, "1") == 0
    monkeypatch.setattr("tune_archiver.cli.main.SKIP_HASH", True)
    capsys.readouterr()
    from tune_archiver.cli.main import main

    assert main(["verify", "--repair", "-q", "--archive", str(archive),
                 "--api-url", standin.api_url], sleep=Sleeps()) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "TUNE_ARCHIVER_BENCH_SKIP_HASH is set" in err[0]


def one_replaced(standin: StandIn, archive: Path,
                 capsys: pytest.CaptureFixture[str]) -> tuple[Ran, str]:
    """verify --repair --json of an archive whose tune 1's first photo its host now serves
    other bytes of: not whole (exit 1, not ok), and the one replaced file's line."""
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive), "--api-url",
              standin.api_url, "--json")
    assert ran.code == 1
    document = json.loads(ran.out)
    assert document["ok"] is False
    [line] = document["repair"]["replaced"]
    assert line.startswith("tune 1: training_image 0: its host serves other bytes now")
    return ran, line


def test_a_repair_whose_host_serves_other_bytes_now_never_says_the_archive_is_whole(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A photo's blob rotted; its host serves other bytes now. The repair fetched them,
    the manifest named them, the verify after found nothing: 'the archive is whole',
    exit 0, though the photo first archived was lost. It is said, exit 1, and --json
    names it; the next verify finds the archive as it now is."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    flip_byte(blob_file(archive, served.images[0]), 10)
    [name] = [n for n, data in standin.files.items() if data == served.images[0]]
    standin.files[name] = os.urandom(len(served.images[0]))
    ran, line = one_replaced(standin, archive, capsys)
    assert sha256(served.images[0]) in line
    assert any(error.endswith(line) for error in ran.errors)


def test_a_prompts_file_its_host_replaced_is_said_with_its_prompt(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prompts 7 and 8 each generated an image 0; prompt 8's blob rotted and its host
    serves other bytes now. The line saying the bytes first archived are lost names
    prompt 8, not 'prompt_image 0' alone, which was either prompt's."""
    add_tune(standin, 1)
    standin.add_prompt(1, 7, "ohwx woman", [standin.add_file("seven.png", os.urandom(900))])
    eight = os.urandom(800)
    standin.add_prompt(1, 8, "ohwx man", [standin.add_file("eight.png", eight)])
    assert run_fetch(standin, archive, "1", "--prompts", "-q") == 0
    flip_byte(blob_file(archive, eight), 10)
    standin.files["eight.png"] = os.urandom(800)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive), "--api-url",
              standin.api_url, "--json")
    assert ran.code == 1
    [line] = json.loads(ran.out)["repair"]["replaced"]
    assert line.startswith("tune 1: prompt_image 0 of prompt 8: its host serves other bytes")
    assert sha256(eight) in line


def test_a_prompt_file_that_failed_in_a_repair_is_not_said_replaced_by_another_prompts(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prompts 7 and 8 each generated an image 0; prompt 8's failed when archived. Prompt
    7's blob rotted, and its host fails it as the repair fetches it again, while prompt
    8's comes at last. The repair said of prompt 7's 'its host serves other bytes now,
    archived in its place; the bytes first archived are lost': prompt 8's image, new, has
    the same kind and index. Its entry still names its blob, which the verify after
    names missing: it is said so, not as a file the host replaced."""
    add_tune(standin, 1)
    seven = os.urandom(900)
    standin.add_prompt(1, 7, "ohwx woman", [standin.add_file("seven.png", seven)])
    standin.add_prompt(1, 8, "ohwx man", [standin.file_url("eight.png")])  # 404 for now
    assert run_fetch(standin, archive, "1", "--prompts", "-q") == 1
    flip_byte(blob_file(archive, seven), 10)
    del standin.files["seven.png"]
    standin.add_file("eight.png", os.urandom(800))
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive), "--api-url",
              standin.api_url, "--json")
    assert ran.code == 1
    document = json.loads(ran.out)
    assert document["repair"]["replaced"] == [], ran.err
    assert [(p["kind"], p["index"], p["problem"]) for p in document["repair"]["after"][
        "problems"]] == [("prompt_image", 0, "missing")]


async def test_a_store_error_looking_for_a_replaced_blob_loses_no_repair_report() -> None:
    """Whether a damaged blob came back is asked of the store after the fetch; a bucket's
    503 there ended the repair with that error, and what it had moved aside and fetched
    went unsaid. A blob not known back is said so (the next test)."""
    class Unanswering:
        async def blob_size(self, sha: str) -> int | None:
            raise storage_error(OSError(errno.EIO, "Input/output error"), Path("b"), "look")

    old, new = "a" * 64, "b" * 64
    damaged = [Problem(1, "checkpoint", 0, "corrupt", "", sha256=old)]
    asset = AssetResult(Asset("checkpoint", 0, "https://h/c"), Blob(new, 5))
    fetched = [TuneResult(1, (asset,))]
    [line] = await _replaced(Unanswering(), damaged, fetched,  # type: ignore[arg-type]
                             VerifyReport())
    assert "not known to be back" in line


def test_a_repair_that_cannot_tell_whether_replaced_bytes_are_back_never_says_whole(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above, but the store fails the look whether the bytes first archived came back
    (a bucket's 503 at the HEAD): the repair said nothing of the photo lost, 'the archive
    is whole', exit 0. It says the bytes not known back, exit 1."""
    served = add_tune(standin, 1)
    archived(standin, archive, 1)
    flip_byte(blob_file(archive, served.images[0]), 10)
    [name] = [n for n, data in standin.files.items() if data == served.images[0]]
    standin.files[name] = os.urandom(len(served.images[0]))
    lost = sha256(served.images[0])
    blob_size, fetched, done = LocalStore.blob_size, repair_module.fetch, []

    async def fetch_then_fail(*args: Any, **kwargs: Any) -> list[TuneResult]:
        results = await fetched(*args, **kwargs)
        done.append(True)  # the store fails from now on
        return results

    async def unanswered(self: LocalStore, sha: str) -> int | None:
        if done and sha == lost:
            raise storage_error(OSError(errno.EIO, "Input/output error"), Path("b"), "look")
        return await blob_size(self, sha)

    monkeypatch.setattr(repair_module, "fetch", fetch_then_fail)
    monkeypatch.setattr(LocalStore, "blob_size", unanswered)
    _, line = one_replaced(standin, archive, capsys)
    assert lost in line
    assert "Input/output error" in line


def test_a_tune_still_training_with_its_photos_is_not_complete_until_its_checkpoint(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune still training lists its photos but no checkpoint yet (ckpt_url null,
    trained_at null): its manifest was written complete, so a cron's 'fetch --all'
    skipped it as unchanged. It is "training", not complete, said on a line, and list
    says "still training"; once trained, the next --all archives the checkpoint."""
    photo = os.urandom(3_000)
    tune = standin.add_tune(1, [], [standin.add_file("photo-1.jpg", photo)], trained_at=None,
                            ckpt_url=None)
    assert run_fetch(standin, archive, "--all") == 0
    assert "still training" in capsys.readouterr().err
    document = check_manifest(archive / "manifests" / "1.json")
    assert (document["state"], document["complete"]) == ("training", False)
    row = cli(capsys, "list", "--archive", str(archive)).out.splitlines()[1]
    assert "still training" in row
    ran = cli(capsys, "verify", "--archive", str(archive))
    assert (ran.code, ran.out.split(": ", 1)[1]) == (
        0, "all intact; 1 tune still training, not complete\n")
    ckpt = os.urandom(30_000)
    tune.update(ckpt_urls=[standin.add_file("ckpt-1.safetensors", ckpt)],
                trained_at="2026-11-02T15:00:00Z")
    tune["ckpt_url"] = tune["ckpt_urls"][0]
    assert run_fetch(standin, archive, "--all") == 0
    assert blob_file(archive, ckpt).read_bytes() == ckpt
    document = check_manifest(archive / "manifests" / "1.json")
    assert (document["state"], document["complete"]) == ("files_listed", True)
    assert cli(capsys, "verify", "--archive", str(archive)).out.endswith(": all intact\n")


def test_a_tune_whose_listing_has_no_trained_at_is_not_taken_for_training(
    standin: StandIn, archive: Path
) -> None:
    """A tune object without trained_at at all (an API shape Astria's docs do not show,
    a stand-in's) with photos and no checkpoint says nothing of training: archived
    whole, it is complete, as before e014af3; only a trained_at sent null says so."""
    tune = standin.add_tune(1, [], [standin.add_file("photo-1.jpg", os.urandom(3_000))])
    tune.pop("trained_at", None)
    assert run_fetch(standin, archive, "1") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    assert (document["state"], document["complete"]) == ("files_listed", True)


def test_a_tune_whose_checkpoint_field_is_unread_is_listed_as_fetch_wrote_it(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune not trained yet whose ckpt_urls the API sent malformed lists a checkpoint,
    unread: fetch writes it files_listed, not complete. Reading it back took it for one
    an older version wrote complete while training (no checkpoint entry): list said
    'still training' of what fetch had called a field it could not read."""
    tune = standin.add_tune(1, [], [standin.add_file("photo-1.jpg", os.urandom(3_000))],
                            trained_at=None)
    tune.update(ckpt_urls="not a list")
    assert run_fetch(standin, archive, "1") == 1
    document = check_manifest(archive / "manifests" / "1.json")
    assert (document["state"], document["complete"]) == ("files_listed", False)
    [row] = json.loads(cli(capsys, "list", "--json", "--archive", str(archive)).out)["tunes"]
    assert (row["state"], row["complete"]) == ("files_listed", False)


def test_a_faceid_tune_with_every_photo_archived_is_complete(
    standin: StandIn, archive: Path
) -> None:
    """A FaceID tune has trained_at from its creation and never a checkpoint: with its
    photos archived it is complete, not "training"."""
    standin.add_tune(1, [], [standin.add_file("photo-1.jpg", os.urandom(3_000))],
                     model_type="faceid", ckpt_url=None)
    assert run_fetch(standin, archive, "1") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    assert (document["state"], document["complete"]) == ("files_listed", True)


def test_a_failed_photo_of_a_tune_that_then_lists_no_file_is_not_dropped(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A photo that failed (a 404 before expiry), then the API listing no file at all (a
    tune purged upstream, a glitch): the failed entry was dropped, every entry left ok,
    and the manifest written complete, exit 0, list 'yes': a photo never archived said
    of by nothing. It stays failed (a listing of nothing proves nothing gone): exit 1."""
    ckpt = standin.add_file("ckpt-1", os.urandom(2_000))
    tune = standin.add_tune(1, [ckpt], [standin.file_url("missing-photo.jpg")])
    assert run_fetch(standin, archive, "1") == 1
    tune.update(ckpt_url=None, ckpt_urls=[], orig_images=[])
    assert run_fetch(standin, archive, "1") == 1
    document = check_manifest(archive / "manifests" / "1.json")
    assert document["complete"] is False
    assert sorted((a["kind"], a["status"]) for a in document["assets"]) == [
        ("checkpoint", "ok"), ("training_image", "failed")]


def test_a_failed_photo_of_a_tune_that_then_lists_its_prompts_alone_is_not_gone(
    standin: StandIn, archive: Path
) -> None:
    """As above, but a 'fetch --prompts' still lists the tune's prompts: its own fields
    listing nothing proves nothing gone either, so the photo stays failed, asked for
    again, and archived once the API lists it again, not said gone for good."""
    ckpt = standin.add_file("ckpt-1", os.urandom(2_000))
    photo = standin.file_url("late-photo.jpg")
    tune = standin.add_tune(1, [ckpt], [photo])
    standin.add_prompt(1, 7, "ohwx woman", [standin.add_file("seven.png", os.urandom(900))])
    assert run_fetch(standin, archive, "1", "--prompts") == 1
    tune.update(ckpt_url=None, ckpt_urls=[], orig_images=[])
    assert run_fetch(standin, archive, "1", "--prompts") == 1
    document = check_manifest(archive / "manifests" / "1.json")
    assert sorted((a["kind"], a["status"]) for a in document["assets"]) == [
        ("checkpoint", "ok"), ("prompt_image", "ok"), ("training_image", "failed")]
    data = os.urandom(3_000)
    standin.add_file("late-photo.jpg", data)
    tune.update(ckpt_url=ckpt, ckpt_urls=[ckpt], orig_images=[photo])
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    assert check_manifest(archive / "manifests" / "1.json")["complete"] is True
