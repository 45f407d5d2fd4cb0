"""A tune whose journal a stopped run left, that the API holds in a workspace the rerun
does not ask in: not taken for deleted upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.archive_helpers import cli
from tests.conftest import check_manifest
from tests.helpers import blob_file
from tests.standin import StandIn
from tests.test_journal import images_of, stopped_after_the_images


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
