"""Against the real API, only when ASTRIA_LIVE_API_KEY is set: the shapes this package
assumes still hold, and a whole backup of a free mock tune round-trips.

ASTRIA_LIVE_TUNE_ID names a tune made with branch=fast (Astria's free mock tunes,
whose prompts return mock images); the round trip is skipped without one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import check_manifest
from tune_archiver.cli.main import main

LIVE_KEY = os.environ.get("ASTRIA_LIVE_API_KEY", "")  # read before the env is isolated
LIVE_TUNE = os.environ.get("ASTRIA_LIVE_TUNE_ID", "")
API = "https://api.astria.ai"


@pytest.mark.skipif(not LIVE_KEY, reason="set ASTRIA_LIVE_API_KEY to run against the real API")
def test_live_dry_run_of_the_whole_account_with_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run of --all --prompts pages every listing and downloads nothing."""
    monkeypatch.setenv("ASTRIA_API_KEY", LIVE_KEY)
    archive = tmp_path / "archive"
    code = main(["fetch", "--all", "--prompts", "--dry-run", "--archive", str(archive),
                 "--api-url", API, "-q"])
    assert code == 0
    assert not (archive / "objects").exists()


@pytest.mark.skipif(not (LIVE_KEY and LIVE_TUNE.isdigit()),
                    reason="set ASTRIA_LIVE_API_KEY and ASTRIA_LIVE_TUNE_ID (a branch=fast "
                    "mock tune) to round-trip a real tune")
def test_live_fetch_verify_and_export_of_a_mock_tune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fetch --prompts archives the mock tune, verify finds it whole, export writes it."""
    monkeypatch.setenv("ASTRIA_API_KEY", LIVE_KEY)
    archive = tmp_path / "archive"
    assert main(["fetch", LIVE_TUNE, "--prompts", "--archive", str(archive), "--api-url", API,
                 "-q"]) == 0
    document = check_manifest(archive / "manifests" / f"{LIVE_TUNE}.json")
    assert document["assets"], "the mock tune lists no file"
    assert main(["verify", LIVE_TUNE, "--archive", str(archive), "-q"]) == 0
    assert main(["export", LIVE_TUNE, str(tmp_path / "out"), "--archive", str(archive),
                 "-q"]) == 0
