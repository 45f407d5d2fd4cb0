"""`retrain`: a dry run by default; --yes sends a multipart POST /tunes built from the
archived training images, each checked against its sha256."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.archive_helpers import Ran, cli, start, stop
from tests.conftest import check_manifest
from tests.helpers import blob_file, run_fetch
from tests.standin import StandIn, Status
from tune_archiver.astria.client import AstriaClient
from tune_archiver.commands.retrain import retrain as run_retrain
from tune_archiver.config import Settings
from tune_archiver.errors import ArchiverError, AuthError, ConnectError, StatusError
from tune_archiver.store import Change
from tune_archiver.store.local import LocalStore

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


# What retrain says of an orig_images null no archived photo stands for.
ONE_NULL = "some training images not archived: 'orig_images' holds 1 item that is not a URL"


def photos(standin: StandIn, count: int) -> tuple[list[bytes], list[str]]:
    """`count` JPEG-like training images served by the stand-in: their bytes and URLs."""
    images = [b"\xff\xd8\xff" + os.urandom(1_000 + i) for i in range(count)]
    return images, [standin.add_file(f"img{i}", data) for i, data in enumerate(images)]


@pytest.fixture
def archived(standin: StandIn, tmp_path: Path) -> tuple[Path, list[bytes]]:
    """A FaceID tune (no checkpoint) with three training images, archived."""
    archive = tmp_path / "archive"
    images, urls = photos(standin, 3)
    standin.add_tune(5, [], urls, model_type="faceid", title="Jane", base_tune_id=1504944)
    assert run_fetch(standin, archive, "5") == 0
    return archive, images


def retrain(standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], *flags: str
            ) -> tuple[int, dict[str, object]]:
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    capsys.readouterr()
    ran = cli(capsys, "retrain", "5", "--archive", str(archive), "--api-url", standin.api_url,
              "--json", *flags, now=NOW)
    return ran.code, json.loads(ran.out)


def sent(standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]) -> Ran:
    """`retrain 5 --yes` as a user types it (no --json): what it printed, and its code."""
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    return cli(capsys, "retrain", "5", "--yes", "--archive", str(archive),
               "--api-url", standin.api_url, now=NOW)


def test_retrain_is_dry_by_default(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --yes nothing is sent: the plan names the fields and counts the images."""
    code, result = retrain(standin, archived[0], capsys)
    assert code == 0
    assert standin.created == []
    assert result["sent"] is False
    assert result["images"] == 3
    assert result["fields"] == {"tune[title]": "Jane (restored 2026-12-01)", "tune[name]": "woman",
                                "tune[token]": "ohwx", "tune[branch]": "sdxl1",
                                "tune[base_tune_id]": "1504944", "tune[model_type]": "faceid"}


def test_retrain_yes_posts_the_verified_images(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """--yes sends one multipart POST /tunes with every training image, byte for byte."""
    archive, images = archived
    code, result = retrain(standin, archive, capsys, "--yes")
    assert code == 0
    [(fields, sent)] = standin.created
    assert fields["tune[title]"] == "Jane (restored 2026-12-01)"
    assert [data for _, data in sent] == images
    assert [name for name, _ in sent] == ["000.jpg", "001.jpg", "002.jpg"]
    assert result["sent"] is True
    assert result["created"] == {"id": 6, "title": "Jane (restored 2026-12-01)",
                                 "ckpt_urls": [], "orig_images": []}
    assert standin.seen("api", "/tunes")[-1].headers["Authorization"].endswith(standin.api_key)
    document = check_manifest(archive / "manifests" / "5.json")
    assert document["retrained"] == [{"tune_id": 6, "title": "Jane (restored 2026-12-01)",
                                      "at": "2026-12-01T09:00:00Z"}]
    assert run_fetch(standin, archive, "5") == 0  # a later fetch keeps the record
    assert check_manifest(archive / "manifests" / "5.json")["retrained"] == document["retrained"]


def test_retrain_copies_the_photos_only_inside_the_archive(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each photo is read back through a copy in the archive's own tmp/, never in the
    system's temp folder (shared, and where a run killed meanwhile would leave them)."""
    archive, images = archived
    copied: list[Path] = []
    save_blob_as = LocalStore.save_blob_as

    async def watched(store: LocalStore, sha256: str, target: Path, *args: Any,
                      **kwargs: Any) -> str:
        copied.append(target)
        return await save_blob_as(store, sha256, target, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "save_blob_as", watched)
    code, _ = retrain(standin, archive, capsys, "--yes")
    assert code == 0
    assert len(copied) == len(images)
    assert all(path.is_relative_to(archive / "tmp") for path in copied)
    assert list((archive / "tmp").iterdir()) == []


def test_a_disk_out_of_inodes_stops_it_on_one_line_unsent(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder a photo is copied out through cannot be made (ENOSPC: a disk out of
    inodes, as a real tmpfs with nr_inodes shows): "disk full" on one line, exit 1,
    nothing sent. The OSError went up as a traceback."""
    archive, _ = archived
    real_mkdir = os.mkdir

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).name.startswith("retrain-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    ran = sent(standin, archive, capsys)
    assert (ran.code, ran.err.splitlines()) == (
        1, [f"tune-archiver: error: disk full in {archive / 'tmp'}"])
    assert standin.created == []


def test_retrain_takes_the_title_asked_for(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """--title replaces the default title in what is sent."""
    code, result = retrain(standin, archived[0], capsys, "--title", "Jane again")
    assert code == 0
    assert result["fields"]["tune[title]"] == "Jane again"


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_title_is_a_usage_error(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    blank: str,
) -> None:
    """`--title ""` (an unset shell variable, say) was taken for no title: the default
    one was sent and billed. It is refused before anything is sent, exit 2."""
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "retrain", "5", "--yes", "--title", blank, "--archive", str(archived[0]),
              "--api-url", standin.api_url)
    assert ran.code == 2
    assert "--title: not a title (it is blank)" in ran.err
    assert standin.created == []


def test_retrain_refuses_a_damaged_blob(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A training image whose blob no longer matches its sha256 stops the retrain unsent."""
    archive, images = archived
    damaged = blob_file(archive, images[1])
    damaged.chmod(0o600)
    damaged.write_bytes(b"\xff\xd8\xff" + os.urandom(1_001))
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    capsys.readouterr()
    ran = cli(capsys, "retrain", "5", "--yes", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 1
    assert "does not match its sha256; nothing was sent" in ran.err
    assert standin.created == []


def test_retrain_whose_answer_never_comes_says_the_tune_may_exist_and_is_not_exit_4(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The API creates the tune, then answers nothing until the read timeout: not exit 4
    ("unreachable, nothing done", which a cron wrapper may retry, training and billing
    again) but exit 1, its one line saying the tune may have been created."""
    archive, _ = archived
    standin.create_stalls = 1
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "retrain", "5", "--yes", "--archive", str(archive),
              "--api-url", standin.api_url, "--read-timeout", "0.2", now=NOW)
    assert len(standin.created) == 1
    assert ran.code == 1
    [line] = ran.errors
    assert "may have created the tune" in line
    assert "Traceback" not in ran.err


def test_retrain_answered_201_with_no_json_says_the_tune_may_exist(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The API creates the tune and answers 201 with a body that is not JSON (a proxy's
    page): exit 1, its one line saying the tune may have been created, so that it is
    looked for before being sent (and billed) again."""
    archive, _ = archived
    standin.create_answers = [b"<html>created</html>"]
    ran = sent(standin, archive, capsys)
    assert len(standin.created) == 1
    assert ran.code == 1
    [line] = ran.errors
    assert "may have created the tune" in line


def test_retrain_answered_with_the_archived_tune_itself_says_nothing_was_created(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--title "Jane", the archived tune's own title: Astria's idempotency answers with
    tune 5 itself. Not "created tune 5" and exit 0, nor a record of tune 5 retrained as
    itself: exit 1, one line saying nothing was created. (The listing looked up first
    shows it, and nothing is sent; here it does not: one that lags behind.)"""
    archive, _ = archived
    before = (archive / "manifests" / "5.json").read_bytes()

    async def lagging(*_: Any, **__: Any) -> list[dict[str, Any]]:
        return []

    monkeypatch.setattr(AstriaClient, "list_tunes", lagging)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "retrain", "5", "--yes", "--title", "Jane", "--archive", str(archive),
              "--api-url", standin.api_url, now=NOW)
    assert len(standin.created) == 1
    assert ran.code == 1
    [line] = ran.errors
    assert "nothing was created" in line
    assert "created tune" not in ran.out
    assert (archive / "manifests" / "5.json").read_bytes() == before


def test_retrain_records_the_new_tune_in_a_manifest_whose_retrained_is_null(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """"retrained": null (hand-edited; the reader takes it as none yet): the tune created
    is recorded as the first, exit 0, not a traceback once it exists (a second run would
    train, and bill, it again)."""
    archive, _ = archived
    document = json.loads((archive / "manifests" / "5.json").read_text())
    document["retrained"] = None
    (archive / "manifests" / "5.json").write_text(json.dumps(document))
    code, _ = retrain(standin, archive, capsys, "--yes")
    assert code == 0
    assert check_manifest(archive / "manifests" / "5.json")["retrained"] == [
        {"tune_id": 6, "title": "Jane (restored 2026-12-01)", "at": "2026-12-01T09:00:00Z"}]


def test_a_second_retrain_under_a_title_already_recorded_sends_nothing(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A second --yes the same day (a cron line run twice, a retry of a run that looked
    stuck): the manifest already records tune 6 under that title. Sent again, an account
    without idempotency trains and bills a second tune, and one with it is told "created
    tune 6" again and records it twice: exit 1, nothing sent, the manifest unchanged."""
    archive, _ = archived
    assert retrain(standin, archive, capsys, "--yes")[0] == 0
    before = (archive / "manifests" / "5.json").read_bytes()
    ran = sent(standin, archive, capsys)
    assert len(standin.created) == 1
    assert ran.code == 1
    [line] = ran.errors
    assert "tune 6" in line
    assert "--title" in line
    assert (archive / "manifests" / "5.json").read_bytes() == before


@pytest.mark.parametrize("answer", [b'{"title": "Jane (restored 2026-12-01)"}',
                                    b'{"id": "6"}', b'{"id": true}'])
def test_retrain_answered_with_no_tune_id_says_the_tune_may_exist(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    answer: bytes,
) -> None:
    """201 with a JSON object but no whole-number id: not "created tune None" and exit 0
    with nothing recorded (a later run would send, and bill, it again): exit 1, the line
    saying the tune may have been created, no tune recorded, the title marked sent."""
    archive, _ = archived
    standin.create_answers = [answer]
    ran = sent(standin, archive, capsys)
    assert ran.code == 1
    assert "created tune" not in ran.out
    [line] = ran.errors
    assert "may have created the tune" in line
    document = check_manifest(archive / "manifests" / "5.json")
    assert "retrained" not in document
    assert document["retraining"] == [{"title": "Jane (restored 2026-12-01)",
                                       "at": "2026-12-01T09:00:00Z"}]


@pytest.mark.parametrize("status", [202, 303])
def test_retrain_answered_neither_201_nor_a_refusal_keeps_the_title_marked_sent(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    status: int,
) -> None:
    """A 202 Accepted (made later) or a 303 See Other to the tune (a form's answer) to
    the POST: the tune is made and billed, yet any status under 500 was read as the API
    refusing it, no tune made, the mark taken off, so that a second --yes sent (and
    billed) it again. Only a 4xx is a refusal; this one may have made the tune."""
    archive, _ = archived
    standin.create_answers, standin.create_status = [b'{"id": 6}'], status
    ran = sent(standin, archive, capsys)
    assert ran.code == 1
    assert "may have created the tune" in ran.errors[-1]
    assert check_manifest(archive / "manifests" / "5.json")["retraining"] == [
        {"title": "Jane (restored 2026-12-01)", "at": "2026-12-01T09:00:00Z"}]
    again = sent(standin, archive, capsys)
    assert again.code != 0
    assert len(standin.created) == 1  # never sent twice


def test_retrain_whose_manifest_is_damaged_meanwhile_names_the_tune_created(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The POST made tune 6, and the manifest cannot record it (damaged meanwhile): the
    one error line names tune 6, or the user, told only of a damaged manifest, sends
    (and pays for) it again."""
    from tune_archiver.astria.client import AstriaClient

    archive, _ = archived
    create_tune = AstriaClient.create_tune

    async def then_damaged(self: AstriaClient, *args: Any) -> dict[str, Any]:
        created = await create_tune(self, *args)
        (archive / "manifests" / "5.json").write_bytes(b"{not json")
        return created

    monkeypatch.setattr(AstriaClient, "create_tune", then_damaged)
    ran = sent(standin, archive, capsys)
    assert len(standin.created) == 1
    assert ran.code != 0
    [line] = ran.errors
    assert "tune 6" in line


def test_retrain_says_a_training_image_the_api_listed_as_null_is_missing(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune whose orig_images held a null (an image Astria could not give) is archived
    without it, no entry: retrain says a training image is missing, not a plan of the
    others alone as if they were all."""
    archive = tmp_path / "archive"
    _, urls = photos(standin, 2)
    standin.add_tune(5, [], [urls[0], None, urls[1]], model_type="faceid", title="Jane")
    assert run_fetch(standin, archive, "5") == 1
    _, result = retrain(standin, archive, capsys)
    assert result["images"] == 2
    assert result["missing"] == [ONE_NULL]


def test_retrain_yes_quiet_says_on_stderr_the_photos_it_did_not_send(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """retrain --yes -q (a script) sends the archived photos alone, as documented, and
    bills a tune trained on fewer than the user had: the photos left out were named on
    stdout only, which -q hides, and the run said nothing. A line on stderr says it."""
    archive = tmp_path / "archive"
    _, urls = photos(standin, 2)
    standin.add_tune(5, [], [urls[0], None, urls[1]], model_type="faceid", title="Jane")
    assert run_fetch(standin, archive, "5") == 1
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "retrain", "5", "--yes", "-q", "--archive", str(archive),
              "--api-url", standin.api_url, now=NOW)
    assert ran.code == 0
    [(_, images)] = standin.created
    assert len(images) == 2
    assert ran.out == ""
    [line] = ran.err.splitlines()
    assert "created tune 6 from 2 training images" in line
    assert ONE_NULL in line


def test_retrain_says_no_photo_missing_that_an_older_fetch_archived(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three photos archived; the API then lists the second as null (and, later, a
    fourth photo as null too). The second's entry is kept, archived, and sent: retrain
    says no photo missing for it (it said 'holds 1 item that is not a URL'), only for
    the null no archived photo stands for."""
    archive = tmp_path / "archive"
    _, urls = photos(standin, 3)
    tune = standin.add_tune(5, [], urls, model_type="faceid", title="Jane")
    assert run_fetch(standin, archive, "5") == 0
    tune["orig_images"] = [urls[0], None, urls[2]]
    assert run_fetch(standin, archive, "5") == 0  # a photo it gives no URL for: archived
    _, result = retrain(standin, archive, capsys)
    assert result["images"] == 3
    assert result["missing"] == []
    tune["orig_images"] = [urls[0], None, urls[2], None]
    assert run_fetch(standin, archive, "5") == 1
    _, result = retrain(standin, archive, capsys)
    assert result["images"] == 3
    assert result["missing"] == [ONE_NULL]


def test_retrain_after_the_photos_moved_still_says_a_null_no_photo_stands_for(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two photos archived and a null never archived; Astria then moved every photo to
    new paths (another host, say), the same bytes. The fetch archives them under their
    new URLs, keeping the old entries. retrain took each old entry for a photo the API
    now lists as null: the null was said archived (no photo missing), and each photo
    was sent twice, as if the tune had four."""
    archive = tmp_path / "archive"
    images, urls = photos(standin, 2)
    tune = standin.add_tune(5, [], [urls[0], None, urls[1]], model_type="faceid", title="Jane")
    assert run_fetch(standin, archive, "5") == 1
    moved = [standin.add_file(f"moved{i}", data) for i, data in enumerate(images)]
    tune["orig_images"] = [moved[0], None, moved[1]]
    assert run_fetch(standin, archive, "5") == 1
    _, result = retrain(standin, archive, capsys)
    assert result["missing"] == [ONE_NULL]
    assert result["images"] == 2


def test_retrain_with_workspace_all_creates_the_tune_in_the_archived_tunes_workspace(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`all` spans every workspace for a listing, and no tune can be created in it: the
    POST goes to the workspace the manifest records; with none recorded, nothing is sent
    (exit 2)."""
    archive = tmp_path / "archive"
    standin.add_tune(5, [], [standin.add_file("img", b"\xff\xd8\xff" + os.urandom(900))],
                     title="Jane")
    standin.tune_workspaces[5] = "41"
    assert run_fetch(standin, archive, "5", "--workspace", "all") == 0
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "retrain", "5", "--yes", "--workspace", "all", "--archive", str(archive),
              "--api-url", standin.api_url, now=NOW)
    assert ran.code == 0, ran.err
    assert [r.headers.get("X-Workspace-Id") for r in standin.seen("api")
            if r.path == "/tunes"] == ["41"]
    path = archive / "manifests" / "5.json"
    document = json.loads(path.read_text())
    del document["workspace"]  # as an older version wrote it
    path.write_text(json.dumps(document))
    ran = cli(capsys, "retrain", "5", "--yes", "--workspace", "all", "--title", "again",
              "--archive", str(archive), "--api-url", standin.api_url, now=NOW)
    assert ran.code == 2
    assert "--workspace all names no workspace" in ran.err
    assert len(standin.created) == 1


def test_fetchs_title_filter_in_the_environment_never_titles_a_retrained_tune(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TUNE_ARCHIVER_TITLE='client-*', set once for a cron's `fetch --all` (a container's
    environment), is fetch's filter: a retrain run there sends the default title, not
    the glob as the new (billed) tune's title."""
    monkeypatch.setenv("TUNE_ARCHIVER_TITLE", "client-*")
    ran = sent(standin, archived[0], capsys)
    assert ran.code == 0, ran.err
    [(fields, _)] = standin.created
    assert fields["tune[title]"] == "Jane (restored 2026-12-01)"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_retrain_stopped_while_its_post_is_answered_says_the_tune_may_exist(
    standin: StandIn, archived: tuple[Path, list[bytes]], signum: int, code: int
) -> None:
    """A cron's timeout (SIGTERM) or a Ctrl-C once the API has the POST, the tune made
    and its answer not yet come: 'stopped by SIGTERM' alone invited sending (and billing)
    it again; the stop's line comes after one saying the tune may exist, even with -q."""
    standin.create_stalls = 1
    process = start(archived[0], "retrain", "5", "--yes", "-q", "--api-url", standin.api_url,
                    env={"ASTRIA_API_KEY": standin.api_key})
    try:
        assert standin.create_arrived.wait(30)
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)
    finally:
        stop(process)
    assert process.returncode == code
    assert len(standin.created) == 1
    assert "may have created the tune" in err
    assert "Traceback" not in err


def test_retrain_stopped_while_recording_the_created_tune_says_it_exists(
    standin: StandIn, archived: tuple[Path, list[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    """A Ctrl-C or a cron's timeout once the API answered with the new tune, while its
    manifest records it (a manifest lock another run holds, a bucket's slow PUT): the
    tune exists and is billed, but only 'stopped by SIGTERM' was said and nothing may be
    recorded, so the retry sent (and billed) it again. A line says it was created."""
    reached = asyncio.Event()

    class Recording(LocalStore):
        async def update_manifest(self, tune_id: int, change: Change) -> str:
            if not standin.created:  # the title marked sent, before the POST
                return await super().update_manifest(tune_id, change)
            reached.set()
            await asyncio.Event().wait()  # held until the stop
            raise AssertionError("never reached")

    with caplog.at_level(logging.ERROR):
        stopped_once(standin, Recording(archived[0]), reached)
    assert len(standin.created) == 1
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "created tune 6" in line
    assert "do not send it again" in line


def stopped_once(standin: StandIn, store: LocalStore, reached: asyncio.Event) -> None:
    """retrain of tune 5 into `store`, stopped (a Ctrl-C, a cron's timeout: the task
    cancelled) once `reached` is set."""
    settings = Settings(archive=store.root, api_key=standin.api_key, api_url=standin.api_url)

    async def stopped() -> None:
        task = asyncio.ensure_future(run_retrain(settings, store, 5, True, NOW, None))
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stopped())


def slow_to_close(monkeypatch: pytest.MonkeyPatch, on_close: Callable[[], object]) -> None:
    """retrain's HTTP session made slow to close (a proxy slow to hang up): `on_close` is
    called as the close begins, which then waits until the run is stopped."""
    import tune_archiver.commands.retrain as module

    opened = module.new_session

    class SlowToClose:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.session = opened(*args, **kwargs)

        async def __aenter__(self) -> Any:
            return await self.session.__aenter__()

        async def __aexit__(self, *exc: Any) -> None:
            try:
                on_close()
                await asyncio.Event().wait()  # held until the stop
            finally:
                await self.session.__aexit__(*exc)

    monkeypatch.setattr(module, "new_session", SlowToClose)


def test_retrain_stopped_while_its_session_closes_names_and_records_the_created_tune(
    standin: StandIn, archived: tuple[Path, list[bytes]], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C or a cron's timeout once the API answered, while the HTTP session closes
    (a proxy slow to hang up): the tune was made and billed, yet nothing named it, its
    id lost, and the manifest kept the title only as sent. The id is said and recorded."""
    closing = asyncio.Event()
    slow_to_close(monkeypatch, closing.set)
    with caplog.at_level(logging.ERROR):
        stopped_once(standin, LocalStore(archived[0]), closing)
    assert len(standin.created) == 1
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "created tune 6" in line
    document = check_manifest(archived[0] / "manifests" / "5.json")
    assert document["retrained"] == [{"tune_id": 6, "title": "Jane (restored 2026-12-01)",
                                      "at": "2026-12-01T09:00:00Z"}]
    assert "retraining" not in document


def test_retrain_json_stopped_by_sigterm_as_its_session_closes_names_the_created_tune(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """retrain --yes --json from a script, its cron's SIGTERM arriving once the API
    answered, as the session closes: the document said only 'interrupted', the tune's
    id on stderr alone, where the script never looks. It names the tune created."""
    # the cron's timeout, taken by the loop
    slow_to_close(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    code, document = retrain(standin, archived[0], capsys, "--yes")
    assert code == 143
    assert document["interrupted"] is True
    assert document["created"]["id"] == 6
    assert check_manifest(archived[0] / "manifests" / "5.json")["retrained"][0]["tune_id"] == 6


def test_retrain_stopped_as_its_session_closes_after_an_empty_answer_says_it_may_exist(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 2xx answer of {} (no id) and a SIGTERM as the session closes: the tune may be
    made and billed, yet the stop said only 'stopped by SIGTERM', as an empty answer was
    taken for none. It says the API may have created it, as without the stop."""
    standin.create_answers = [b"{}"]
    slow_to_close(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "retrain", "5", "--archive", str(archived[0]), "--api-url",
              standin.api_url, "--json", "--yes", now=NOW)
    assert ran.code == 143
    assert json.loads(ran.out)["created"] == {}
    assert "the API may have created the tune all the same" in ran.err


def test_retrain_after_photos_re_signed_still_says_the_null_fetch_says_is_missing(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two photos archived and a null never archived; the first photo's blob then lost,
    and Astria signed the photos' URLs again (a new X-Amz-Date) before a `fetch --only
    checkpoints`, which keeps the lost photo's entry under its old URL. retrain compared
    stored URLs as written, took that entry for the photo the API lists as null and
    said no photo missing, while fetch (a URL known by what it names, its signature
    aside) said the tune was not complete. Both now count nulls by one rule."""
    archive = tmp_path / "archive"
    images, _ = photos(standin, 2)

    def signed(date: str) -> list[str | None]:
        query = f"X-Amz-Date={date}&X-Amz-Signature=s{date}"
        return [standin.file_url("img0", query=query), None,
                standin.file_url("img1", query=query)]

    checkpoint = standin.add_file("ckpt", os.urandom(2_000))
    tune = standin.add_tune(5, [checkpoint], signed("20261130T000000Z"), title="Jane")
    assert run_fetch(standin, archive, "5") == 1
    blob_file(archive, images[0]).unlink()
    tune["orig_images"] = signed("20261201T000000Z")
    assert run_fetch(standin, archive, "5", "--only", "checkpoints") == 1  # not complete
    _, result = retrain(standin, archive, capsys)
    assert result["missing"] == [ONE_NULL]


def test_a_dry_run_says_a_photo_whose_blob_is_lost_as_yes_does(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A photo whose blob is lost from the archive: the dry run counted it among the
    photos it would send, exit 0, while --yes refuses at it and sends nothing. The dry
    run names it now, uncounted, and says --yes would send nothing (exit 1)."""
    archive, images = archived
    blob_file(archive, images[1]).unlink()
    code, result = retrain(standin, archive, capsys)
    said = "training_image 1: its blob is missing from the archive"
    assert code == 1
    assert (result["images"], result["lost"], result["missing"]) == (2, [said], [])
    dry = cli(capsys, "retrain", "5", "-q", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert dry.code == 1
    assert f"error: tune 5: {said}" in dry.err  # with -q too: why exit 1
    yes = sent(standin, archive, capsys)
    assert yes.code == 1
    assert f"{said}; nothing was sent" in yes.err
    assert standin.created == []


def test_a_dry_run_says_a_photo_whose_blob_is_damaged_as_yes_does(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A photo's blob rotted on disk, its size unchanged: the dry run counted it among
    the photos it would send and said 'add --yes', exit 0, while --yes refuses at it,
    nothing sent. The dry run reads each photo's bytes as --yes does: it names it,
    uncounted, and says --yes would send nothing (exit 1)."""
    archive, images = archived
    damaged = blob_file(archive, images[1])
    damaged.chmod(0o600)
    damaged.write_bytes(b"\xff\xd8\xff" + os.urandom(1_001))
    code, result = retrain(standin, archive, capsys)
    said = "training_image 1: its blob does not match its sha256"
    assert code == 1
    assert (result["images"], result["lost"]) == (2, [said])
    yes = sent(standin, archive, capsys)
    assert yes.code == 1
    assert said in yes.err
    assert standin.created == []


def test_a_dry_run_after_a_retrain_under_that_title_says_yes_would_send_nothing(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Retrained once today: a dry run said 'add --yes to create the tune', exit 0, of a
    --yes that refuses (exit 1, nothing sent). It says what --yes would: the tune the
    manifest records under that title, exit 1."""
    archive, _ = archived
    assert retrain(standin, archive, capsys, "--yes")[0] == 0
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "retrain", "5", "--archive", str(archive), "--api-url", standin.api_url,
              now=NOW)
    assert ran.code == 1
    assert "add --yes" not in ran.out
    [line] = ran.errors
    assert "already retrained as tune 6" in line
    assert len(standin.created) == 1


@pytest.mark.parametrize("first", ["killed", "still running"])
def test_a_retrain_run_while_another_has_sent_its_post_sends_nothing(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    first: str,
) -> None:
    """A --yes whose POST the API has (the tune made, and billed) but whose answer is not
    recorded: killed (SIGKILL, a reboot, the OOM killer) and run again by cron, or a
    second run started while the first waits. The manifest recorded nothing, so the
    second sent (and, without Astria's idempotency, billed) the tune again. The first
    marks the title sent before its POST: the second sends nothing, exit 1, saying the
    tune may exist."""
    archive, _ = archived
    standin.create_stalls = 1
    process = start(archive, "retrain", "5", "--yes", "-q", "--api-url", standin.api_url,
                    env={"ASTRIA_API_KEY": standin.api_key})
    try:
        assert standin.create_arrived.wait(30)
        if first == "killed":
            process.kill()
            process.communicate(timeout=30)
        ran = sent(standin, archive, capsys)
    finally:
        stop(process)
    assert len(standin.created) == 1
    assert ran.code == 1
    [line] = ran.errors
    assert "may have created the tune" in line
    assert "--title" in line
    check_manifest(archive / "manifests" / "5.json")


def killed_after_its_post_then_fetched(standin: StandIn, archive: Path, title: str) -> None:
    """`retrain 5 --yes --title TITLE` in a process killed once the API has its POST (the
    tune made, its answer never recorded), then a fetch of tune 5, which stores every
    string of the manifest, the mark's title too, redacted."""
    standin.create_stalls = 1
    process = start(archive, "retrain", "5", "--yes", "-q", "--title", title,
                    "--api-url", standin.api_url, env={"ASTRIA_API_KEY": standin.api_key})
    try:
        assert standin.create_arrived.wait(30)
        process.kill()
        process.communicate(timeout=30)
    finally:
        stop(process)
    assert run_fetch(standin, archive, "5") == 0


def test_a_mark_a_fetch_stored_redacted_still_stops_a_second_post(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run killed once its POST under --title "Jane token=s3cr3t" was sent, then a
    fetch of the tune, which stores every string of the manifest redacted: the mark read
    "Jane token=REDACTED", matched no title, and the retry (the account's listing not
    showing the new tune yet) sent and billed the tune again. A mark stored redacted
    matches the title it was made of."""
    archive, _ = archived
    title = "Jane token=s3cr3t"
    killed_after_its_post_then_fetched(standin, archive, title)
    [mark] = json.loads((archive / "manifests" / "5.json").read_text())["retraining"]
    assert mark["title"] == "Jane token=REDACTED"  # as the fetch stored it

    async def lagging(*_: Any, **__: Any) -> list[dict[str, Any]]:
        return []

    monkeypatch.setattr(AstriaClient, "list_tunes", lagging)
    ran = cli(capsys, "retrain", "5", "--yes", "--title", title, "--archive", str(archive),
              "--api-url", standin.api_url, now=NOW)
    assert len(standin.created) == 1
    assert ran.code == 1
    assert "may have created the tune" in ran.errors[0]


def test_a_title_refused_for_a_mark_stored_redacted_says_so(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
) -> None:
    """A run killed once its POST under --title "Jane token=a" was sent, then a fetch,
    which stores the mark redacted ("Jane token=REDACTED"). A retrain under "Jane
    token=b" is refused, as it must be (the mark may be of this title), but was said to
    have been sent under "Jane token=b" (shown 'Jane token=REDACTED'), and to choose
    another --title, when any "Jane token=..." is refused alike. The line says the
    manifest records it redacted, and that a title reading otherwise redacted is needed."""
    archive, _ = archived
    killed_after_its_post_then_fetched(standin, archive, "Jane token=a")
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "retrain", "5", "--yes", "--title", "Jane token=b", "--archive",
              str(archive), "--api-url", standin.api_url, now=NOW)
    assert ran.code == 1
    assert len(standin.created) == 1
    [line] = ran.errors
    assert "as the manifest records it, redacted" in line
    assert "a --title that reads otherwise once redacted" in line


@pytest.mark.parametrize(("refused", "code"), [
    (StatusError("creating the tune: 422 images are too small", 422), 1),
    (AuthError("creating the tune: 401 Unauthorized"), 3),
    (ConnectError("creating the tune: connection refused"), 4),
])
def test_a_retrain_the_api_refused_or_never_had_can_be_run_again(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, refused: ArchiverError, code: int,
) -> None:
    """A POST answered 4xx, or never sent (connection refused), made no tune: the title
    is not left marked sent, and the run again, the API mended, creates and records the
    tune."""
    archive, _ = archived
    create_tune = AstriaClient.create_tune
    answers: list[ArchiverError] = [refused]

    async def refusing(self: AstriaClient, *args: Any) -> dict[str, Any]:
        if answers:
            raise answers.pop()
        return await create_tune(self, *args)

    monkeypatch.setattr(AstriaClient, "create_tune", refusing)
    assert sent(standin, archive, capsys).code == code
    assert "retraining" not in check_manifest(archive / "manifests" / "5.json")
    assert sent(standin, archive, capsys).code == 0
    assert len(standin.created) == 1
    assert [record["tune_id"] for record in
            check_manifest(archive / "manifests" / "5.json")["retrained"]] == [6]


@pytest.mark.parametrize("workspace", [None, "42"], ids=["its-scope", "another-workspace"])
def test_retrain_under_the_title_of_another_tune_of_the_account_sends_nothing(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    workspace: str | None,
) -> None:
    """--title "Bob", the title of the account's tune 7 (or the default title, of a tune
    a retrain from another copy of the archive made today): Astria's idempotency answers
    with tune 7, nothing trained. Said 'created tune 7', exit 0, and recorded as retrained
    from tune 5; without the idempotency, a second tune billed. The account's tunes under
    that title are looked up first, in every workspace (the idempotency answers whatever
    the scope, and the lookup listed the personal scope alone): exit 1, nothing sent,
    tune 7 named."""
    archive, _ = archived
    standin.add_tune(7, [], [], title="Bob")
    if workspace is not None:
        standin.tune_workspaces[7] = workspace
    before = (archive / "manifests" / "5.json").read_bytes()
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "retrain", "5", "--yes", "--title", "Bob", "--archive", str(archive),
              "--api-url", standin.api_url, now=NOW)
    assert standin.created == []
    assert ran.code == 1
    assert "created tune" not in ran.out
    [line] = ran.errors
    assert "tune 7" in line
    assert "--title" in line
    assert (archive / "manifests" / "5.json").read_bytes() == before


def test_retrain_whose_lookup_of_every_workspace_was_throttled_sends_nothing(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tune 7 "Bob" is in workspace 42, and the listing of every workspace is answered
    429 (the key may list it, not now): taken as a key refused it, the lookup kept its
    own scope, tune 7 unseen, and the POST was answered with tune 7, nothing trained:
    'created tune 7', exit 0, recorded as retrained. A throttled lookup stops it, unsent."""
    archive, _ = archived
    standin.add_tune(7, [], [], title="Bob")
    standin.tune_workspaces[7] = "42"
    list_tunes = AstriaClient.list_tunes

    async def throttled(self: AstriaClient, workspace: str | None = None,
                        query: Any = None) -> list[dict[str, Any]]:
        if workspace == "all":  # the stand-in's answer to that listing alone
            standin.page_faults.append(Status(429))
        return await list_tunes(self, workspace, query)

    monkeypatch.setattr(AstriaClient, "list_tunes", throttled)
    before = (archive / "manifests" / "5.json").read_bytes()
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "retrain", "5", "--yes", "--title", "Bob", "--retries", "0",
              "--archive", str(archive), "--api-url", standin.api_url, now=NOW)
    assert standin.created == []
    assert ran.code != 0
    assert "created tune" not in ran.out
    assert "429" in ran.errors[0]
    assert (archive / "manifests" / "5.json").read_bytes() == before


def test_retrain_by_a_key_refused_the_listing_of_every_workspace_is_sent(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key the API refuses X-Workspace-Id: all (403) still retrains in its own scope,
    looked up there: not 'API key rejected', exit 3, for a POST it may send."""
    archive, _ = archived
    list_tunes = AstriaClient.list_tunes

    async def scoped(self: AstriaClient, workspace: str | None = None,
                     query: Any = None) -> list[dict[str, Any]]:
        if workspace == "all":
            raise AuthError("API key rejected (HTTP 403)")
        return await list_tunes(self, workspace, query)

    monkeypatch.setattr(AstriaClient, "list_tunes", scoped)
    ran = sent(standin, archive, capsys)
    assert ran.code == 0
    assert len(standin.created) == 1



def test_a_secret_in_the_title_is_stored_redacted_and_still_refuses_a_second_post(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
) -> None:
    """--title holding a presigned URL: the POST sends it as typed, but the manifest's
    record of it (retraining, then retrained) kept the signature as typed, and so did
    every fetch after, when every URL a manifest stores is redacted. Stored redacted, it
    still refuses a second --yes under that title, nothing sent."""
    archive, _ = archived
    title = "Jane https://cdn.example/a.jpg?X-Amz-Signature=s3cr3t"
    code, _ = retrain(standin, archive, capsys, "--yes", "--title", title)
    assert code == 0
    assert standin.created[0][0]["tune[title]"] == title
    manifest = archive / "manifests" / "5.json"
    assert b"s3cr3t" not in manifest.read_bytes()
    [record] = check_manifest(manifest)["retrained"]
    assert record["tune_id"] == 6
    assert run_fetch(standin, archive, "5") == 0
    assert b"s3cr3t" not in manifest.read_bytes()
    code, result = retrain(standin, archive, capsys, "--yes", "--title", title)
    assert (code, result["ok"]) == (1, False)
    assert len(standin.created) == 1


def test_a_fetch_stores_a_secret_an_older_retrain_recorded_redacted(
    standin: StandIn, archived: tuple[Path, list[bytes]],
) -> None:
    """A manifest whose retrained record holds a title with a secret (written by an
    older version): a fetch rewriting it stores it redacted, as every other string."""
    archive, _ = archived
    manifest = archive / "manifests" / "5.json"
    document = json.loads(manifest.read_text())
    document["retrained"] = [{"tune_id": 6, "title": "Jane token=s3cr3t",
                              "at": "2026-12-01T09:00:00Z"}]
    manifest.write_text(json.dumps(document))
    assert run_fetch(standin, archive, "5") == 0
    assert check_manifest(manifest)["retrained"] == [
        {"tune_id": 6, "title": "Jane token=REDACTED", "at": "2026-12-01T09:00:00Z"}]


def test_retrain_again_next_day_after_an_unanswered_post_sends_nothing(
    standin: StandIn, archived: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str],
) -> None:
    """A --yes whose POST made tune 6 and whose answer was lost (a 2xx without an id, a
    timeout, a kill) leaves its title marked sent. The same command again the next day
    (cron's retry after midnight, the user back in the morning) has another default title,
    '(restored 2026-12-02)': it sent, and billed, a second tune. With no --title, any
    retrain still marked sent stops it, nothing sent; a --title chosen sends."""
    archive, _ = archived
    standin.create_answers = [b'{"title": "lost"}']
    assert sent(standin, archive, capsys).code == 1
    assert len(standin.created) == 1
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    tomorrow = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    ran = cli(capsys, "retrain", "5", "--yes", "--archive", str(archive),
              "--api-url", standin.api_url, now=tomorrow)
    assert ran.code == 1
    assert len(standin.created) == 1
    [line] = ran.errors
    assert "Jane (restored 2026-12-01)" in line
    assert "may have created the tune" in line
    assert "--title" in line
    dry = cli(capsys, "retrain", "5", "--archive", str(archive), "--api-url",
              standin.api_url, now=tomorrow)
    assert dry.code == 1
    assert "add --yes" not in dry.out
    chosen = cli(capsys, "retrain", "5", "--yes", "--title", "Jane again", "--archive",
                 str(archive), "--api-url", standin.api_url, now=tomorrow)
    assert chosen.code == 0
    assert len(standin.created) == 2


def test_retrain_sends_photos_of_a_phones_size_byte_for_byte(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A phone's photo is megabytes. Each went into the form as bytes, and aiohttp warns
    of a body over 1 MiB given so (it may hold the event loop while copied whole): a
    ResourceWarning, an error under `-W error`, which stopped the retrain unsent."""
    archive = tmp_path / "archive"
    images = [b"\xff\xd8\xff" + os.urandom(3 * 2**20 + i) for i in range(2)]
    urls = [standin.add_file(f"img{i}", data) for i, data in enumerate(images)]
    standin.add_tune(5, [], urls, model_type="faceid", title="Jane", base_tune_id=1504944)
    assert run_fetch(standin, archive, "5") == 0
    code, result = retrain(standin, archive, capsys, "--yes")
    assert (code, result["sent"]) == (0, True)
    [(_, received)] = standin.created
    assert [data for _, data in received] == images


def test_retrain_holds_each_photo_once_while_it_is_sent(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Photos of a phone's size are held once as the POST sends them: a stream made of
    bytes the run kept as well was copied whole by aiohttp, each photo twice in memory
    (30 photos of 8 MB, half a GB). The stand-in, in this process, keeps what it is
    sent: one copy of the photos is its own."""
    archive = tmp_path / "archive"
    images = [b"\xff\xd8\xff" + os.urandom(2**21) for _ in range(6)]
    urls = [standin.add_file(f"img{i}", data) for i, data in enumerate(images)]
    standin.add_tune(5, [], urls, model_type="faceid", title="Jane")
    assert run_fetch(standin, archive, "5") == 0
    create_tune = AstriaClient.create_tune
    peaks: list[int] = []

    async def measured(self: AstriaClient, *args: Any) -> dict[str, Any]:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            return await create_tune(self, *args)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1] - before)

    monkeypatch.setattr(AstriaClient, "create_tune", measured)
    tracemalloc.start()
    try:
        assert sent(standin, archive, capsys).code == 0
    finally:
        tracemalloc.stop()
    assert [data for _, data in standin.created[0][1]] == images
    photos = sum(map(len, images))
    assert photos < peaks[0] < photos * 1.5  # the stand-in's copy, and no other
