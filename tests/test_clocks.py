"""A machine whose clock is wrong (a VM resumed, a clock hours ahead) against Astria's
times: what it decides from its own clock must not lose a file for good."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from tests.archive_helpers import add_tune, manifest_of
from tests.helpers import run_fetch
from tests.standin import StandIn, Status


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def _statuses(archive: Path) -> list[tuple[str, int, str]]:
    return [(e["kind"], e["index"], e["status"]) for e in manifest_of(archive, 1)["assets"]]


def test_a_404_before_expiry_by_the_hosts_clock_is_failed_though_ours_runs_ahead(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune Astria deletes in two hours, fetched by a machine whose clock runs a day
    ahead: a 404 for one photo (a glitch of the host) is a failure asked for again, not
    'gone upstream, never archived' for good: the host's own Date says the tune has not
    expired. The next run, the host answering, archives it."""
    now = datetime.now(UTC)
    add_tune(standin, 1, expires_at=(now + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    standin.tunes[1]["orig_images"].append(standin.file_url("flaky.jpg"))
    standin.add_file("flaky.jpg", photo := os.urandom(3000))
    standin.faults["flaky.jpg"] = [Status(404, {"Date": format_datetime(now, usegmt=True)})]
    ahead = now + timedelta(days=1)
    assert run_fetch(standin, archive, "1", clock=lambda: ahead) == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err
    assert "gone upstream" not in err
    assert _statuses(archive)[-1] == ("training_image", 2, "failed")
    assert run_fetch(standin, archive, "1", clock=lambda: ahead) == 0
    assert _statuses(archive)[-1] == ("training_image", 2, "ok")
    assert manifest_of(archive, 1)["assets"][-1]["size"] == len(photo)


@pytest.mark.parametrize(("ours", "hosts"), [
    (timedelta(days=-7), timedelta(0)),  # a VM resumed a week late; the host's Date right
    (timedelta(0), timedelta(days=365 * 70)),  # ours right; a host's Date of 70 years on
], ids=["ours behind", "host's ahead"])
def test_a_404_is_gone_only_once_the_tune_expired_by_both_clocks(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str],
    ours: timedelta, hosts: timedelta,
) -> None:
    """A file called gone upstream is never asked for again, so one clock saying the tune
    has expired is not enough: a host whose Date said 2096 made a 404 (a glitch) of a
    tune with a month left 'gone upstream, never archived', the next run exit 0 without
    it. Failed instead, and asked for again: archived once the host serves it. A machine
    behind only delays 'gone' (the tune expired two hours ago) till its clock catches up."""
    now = datetime.now(UTC)
    expires = now + (timedelta(days=30) if hosts else timedelta(hours=-2))
    add_tune(standin, 1, expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
    standin.tunes[1]["orig_images"].append(standin.file_url("flaky.jpg"))
    standin.add_file("flaky.jpg", photo := os.urandom(3000))
    date = format_datetime(now + hosts, usegmt=True)
    standin.faults["flaky.jpg"] = [Status(404, {"Date": date})]
    assert run_fetch(standin, archive, "1", clock=lambda: now + ours) == 1
    assert "gone upstream" not in capsys.readouterr().err
    assert _statuses(archive)[-1] == ("training_image", 2, "failed")
    assert run_fetch(standin, archive, "1", clock=lambda: now + ours) == 0
    assert _statuses(archive)[-1] == ("training_image", 2, "ok")
    assert manifest_of(archive, 1)["assets"][-1]["size"] == len(photo)


def test_a_failure_of_a_tune_past_its_expiry_by_our_clock_says_to_run_again_now(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune that failed while its expires_at has passed by this machine's clock, yet
    Astria still serves it (a clock a day ahead, or Astria not deleting it yet), is the
    one most urgent: a cron's mail (-q) said 'HTTP 404' and nothing more, where a tune
    due in hours said to run again before then."""
    now = datetime.now(UTC)
    add_tune(standin, 1, expires_at=(now + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    standin.tunes[1]["orig_images"].append(standin.file_url("flaky.jpg"))
    assert run_fetch(standin, archive, "1", "-q", clock=lambda: now + timedelta(days=1)) == 1
    said = [line for line in capsys.readouterr().err.splitlines() if "not archived whole" in line]
    assert said == ["tune-archiver: error: tune 1 (Tune 1): not archived whole, and its "
                    "expires_at has passed by this machine's clock: Astria may delete it at "
                    f"any moment: run tune-archiver fetch 1 --archive {archive} --api-url "
                    f"{standin.api_url} again now"]


def test_expiring_within_keeps_a_tune_not_expired_by_the_apis_clock_though_ours_runs_ahead(
    standin: StandIn, archive: Path
) -> None:
    """fetch --all --expiring-within 24h on a machine whose clock runs five hours ahead:
    a tune Astria deletes in two hours has expired by our clock alone, the API's Date
    says it has not. Left out, its photos were lost for good the same day; dropped as
    expired only by both clocks, it is archived. One expired by both is still left out."""
    now = datetime.now(UTC)
    add_tune(standin, 1, expires_at=(now + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    add_tune(standin, 2, expires_at=(now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    ahead = now + timedelta(hours=5)
    assert run_fetch(standin, archive, "--all", "--expiring-within", "24h",
                     clock=lambda: ahead) == 0
    assert {status for _, _, status in _statuses(archive)} == {"ok"}
    assert not (archive / "manifests" / "2.json").exists()


def test_expiring_within_keeps_a_tune_inside_the_window_by_the_apis_clock_though_ours_runs_behind(
    standin: StandIn, archive: Path
) -> None:
    """fetch --all --expiring-within 24h on a machine whose clock runs five hours behind:
    a tune Astria deletes in 22 hours is 27 hours off by our clock alone, outside the
    window; left out, the next daily run came after Astria deleted it. The window is taken
    by whichever clock says the tune is nearer its end. One far outside both is left out."""
    now = datetime.now(UTC)
    add_tune(standin, 1, expires_at=(now + timedelta(hours=22)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    add_tune(standin, 2, expires_at=(now + timedelta(days=9)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    behind = now - timedelta(hours=5)
    assert run_fetch(standin, archive, "--all", "--expiring-within", "24h",
                     clock=lambda: behind) == 0
    assert {status for _, _, status in _statuses(archive)} == {"ok"}
    assert not (archive / "manifests" / "2.json").exists()
