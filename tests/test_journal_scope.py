"""A tune whose journal a stopped run left that the API does not find: one held in a
workspace the rerun does not ask in is not said deleted upstream, and a dry run says what
the fetch records."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.archive_helpers import cli
from tests.conftest import check_manifest
from tests.helpers import blob_file
from tests.standin import StandIn
from tests.test_journal import expire, images_of, stopped_after_the_images
from tune_archiver.download.journal import Journals


@pytest.mark.parametrize("asked", ["1", "--all"])
def test_a_journaled_tune_of_another_workspace_is_not_said_deleted(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, asked: str,
) -> None:
    """A `fetch 1 --workspace 41` stopped part way; the rerun asks in the personal scope,
    which answers 404: Astria has the tune still, in workspace 41, which is said (the
    journal's files recorded all the same), not 'deleted upstream?'."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    standin.tune_workspaces[1] = "41"
    standin.tunes[1]["workspace_id"] = 41
    standin.scoped_gets = True
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    ran = cli(capsys, "fetch", asked, "--archive", str(archive), "--api-url", standin.api_url)
    assert ran.code == 1
    assert "deleted upstream" not in ran.err
    assert "but in workspace 41: fetch it with --workspace 41" in ran.err
    assert [e["sha256"] for e in images_of(archive)] == [
        blob_file(archive, data).name for data in images]
    assert check_manifest(archive / "manifests" / "1.json")["complete"] is False


def test_a_dry_run_says_what_a_fetch_records_of_a_journaled_tune_deleted_upstream(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fetch records the files the journal kept (exit 1, said): its dry run says so,
    the count the fetch then gives, not 'tune 1 not found', and asks no host."""
    archive = tmp_path / "archive"
    stopped_after_the_images(standin, archive)
    del standin.tunes[1]
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    asked = len(standin.seen("cdn", "/files/"))
    previewed = cli(capsys, "fetch", "1", "--dry-run", "--archive", str(archive),
                    "--api-url", standin.api_url)
    assert len(standin.seen("cdn", "/files/")) == asked
    assert not (archive / "manifests" / "1.json").exists()
    assert previewed.code == 1
    assert previewed.errors == [
        "tune-archiver: error: tune 1 not found (deleted upstream?): a fetch would record the "
        "3 file(s) a stopped run had archived in its manifest, the others not fetched"]
    ran = cli(capsys, "fetch", "1", "--archive", str(archive), "--api-url", standin.api_url)
    assert ran.code == 1
    assert ran.errors[0] == (
        "tune-archiver: error: tune 1 not found (deleted upstream?): the 3 file(s) a stopped "
        "run had archived are recorded in its manifest, the others not fetched")


def test_a_journal_vouching_for_nothing_of_a_tune_deleted_upstream_fails_one_run_only(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A journal whose lines name no blob held (a commit a stop met before the store took
    it, an upload killed part way) of a tune Astria deleted since: the daily `fetch --all`
    took it up each day as deleted and failed on it, 'tune 1 not found', exit 1 for good
    (the daily run has no gc to sweep it). The fetch that finds it vouching for nothing
    removes it, so only that run says so."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    for data in images:
        blob_file(archive, data).unlink()
    del standin.tunes[1]
    standin.add_tune(2, [], [standin.add_file("other.jpg", b"2" * 2000)])
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    argv = ("fetch", "--all", "--archive", str(archive), "--api-url", standin.api_url)
    first = cli(capsys, *argv)
    assert first.code == 1
    assert first.errors == ["tune-archiver: error: tune 1 not found"]
    assert not (archive / "tmp" / "1.committed").exists()
    assert cli(capsys, *argv).code == 0
    assert not (archive / "manifests" / "1.json").exists()


def test_a_journal_made_after_the_listing_of_a_tune_deleted_upstream_is_recorded(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The journal another run (stopped since) made after this run listed the staging
    folder: the API does not find the tune, which the run takes from that journal; the
    files it records are those the journal kept, not none of them."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    del standin.tunes[1]
    journal = archive / "tmp" / "1.committed"
    made_after_the_listing(journal, tmp_path, monkeypatch)
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    ran = cli(capsys, "fetch", "1", "--archive", str(archive), "--api-url", standin.api_url)
    assert ran.code == 1
    assert "the 3 file(s) a stopped run had archived are recorded" in ran.err
    assert [e["sha256"] for e in images_of(archive)] == [
        blob_file(archive, data).name for data in images]
    assert not journal.exists()


def made_after_the_listing(journal: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal of a run stopped since is made just after the next fetch lists the
    staging folder (tune_ids), as if that run committed its files then."""
    aside = journal.rename(tmp_path / "aside.committed")
    listed = Journals.tune_ids

    async def tune_ids(self: Journals) -> set[int]:
        found = await listed(self)
        if aside.exists():
            aside.rename(journal)
        return found

    monkeypatch.setattr(Journals, "tune_ids", tune_ids)


def test_files_a_run_said_gone_though_a_journal_made_after_its_listing_kept_them_are_ok(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tune expired; a fetch that did not read the journal (made after its listing)
    said the stopped run's images 'gone upstream, never archived', and the next fetch,
    which read it, left them so (a gone entry took the journal's line for known), exit 0,
    the journal swept by gc a day later with the only copy of the photos. The journal's
    held blobs are the images' now."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    expire(standin)
    journal = archive / "tmp" / "1.committed"
    made_after_the_listing(journal, tmp_path, monkeypatch)
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    words = ["fetch", "1", "--archive", str(archive), "--api-url", standin.api_url]
    assert cli(capsys, *words).code == 1  # each file gone upstream, for this run
    assert [e["status"] for e in images_of(archive)] == ["gone"] * 3
    assert cli(capsys, *words).code == 0
    assert [(e["status"], e["sha256"]) for e in images_of(archive)] == [
        ("ok", blob_file(archive, data).name) for data in images]
    assert not journal.exists()
