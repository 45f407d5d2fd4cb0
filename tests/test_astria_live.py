"""Against the real API, read-only, and only when ASTRIA_LIVE_API_KEY is set: the shapes
this package assumes (tunes, prompts and the account's prompts listings) still hold."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tune_archiver.cli.main import main

LIVE_KEY = os.environ.get("ASTRIA_LIVE_API_KEY", "")  # read before the env is isolated


@pytest.mark.skipif(not LIVE_KEY, reason="set ASTRIA_LIVE_API_KEY to run against the real API")
def test_live_dry_run_of_the_whole_account_with_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run of --all --prompts pages every listing and downloads nothing."""
    monkeypatch.setenv("ASTRIA_API_KEY", LIVE_KEY)
    archive = tmp_path / "archive"
    code = main(["fetch", "--all", "--prompts", "--dry-run", "--archive", str(archive),
                 "--api-url", "https://api.astria.ai", "-q"])
    assert code == 0
    assert not (archive / "objects").exists()
