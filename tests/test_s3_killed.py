"""An s3:// archive after a run killed at the wrong moment (SIGKILL in a subprocess)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from tests.s3server import REGION, MotoS3, aws_env_fixture, moto_s3_fixture  # noqa: F401  (fixtures)
from tests.standin import StandIn
from tests.test_s3_archive import S3Archive, add_tune, fetch


@pytest.fixture(name="s3")
def s3_fixture(moto_s3: MotoS3, aws_env: None, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Archive]:
    """As test_s3_archive's: a fresh bucket, its archive URL, a plain client."""
    monkeypatch.setenv("TUNE_ARCHIVER_STAGING", str(tmp_path / "staging"))
    client = boto3.client("s3", endpoint_url=moto_s3.endpoint, region_name=REGION)
    bucket = f"archive-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield S3Archive(f"s3://{bucket}/backups", moto_s3.endpoint, bucket, "backups", client)
    client.close()


_KILLED_SETTING_ASIDE = """
import os, signal, sys
from tune_archiver.cli.main import main
from tune_archiver.store.s3.bucket import Bucket

delete = Bucket.delete
async def killed_before_the_delete(self, key):
    if key.endswith("/manifests/1.json"):  # copied to manifests/damaged/ already
        os.kill(os.getpid(), signal.SIGKILL)
    await delete(self, key)
Bucket.delete = killed_before_the_delete
sys.exit(main(sys.argv[1:]))
"""


def killed(standin: StandIn, s3: S3Archive, script: str, *args: str) -> None:
    """`args` run by `script` in a process of its own, which must die of SIGKILL."""
    env = {**os.environ, "ASTRIA_API_KEY": standin.api_key,
           "PYTHONPATH": str(Path(__file__).parents[1])}
    run = subprocess.run([sys.executable, "-c", script, *args, "--archive", s3.url,
                          "--s3-endpoint-url", s3.endpoint, "--api-url", standin.api_url],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGKILL, run.stderr


def test_a_damaged_manifest_a_killed_fetch_copied_aside_is_set_aside_once(
    standin: StandIn, s3: S3Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SIGKILL met the fetch setting an unreadable manifest aside between its copy to
    manifests/damaged/ and the delete of manifests/1.json: the next fetch copied it
    aside again under its own time, two copies of one manifest to look at and remove.
    It now finishes the move the killed run began: one copy, under its first name."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    damaged = b'{"schema_version": 1, "tune_id": 1, "assets": 5}'
    s3.put("manifests/1.json", damaged)
    killed(standin, s3, _KILLED_SETTING_ASIDE, "fetch", "1")
    [first] = s3.keys("manifests/damaged/")
    assert s3.get("manifests/1.json") == damaged
    capsys.readouterr()
    later = datetime.now(UTC) + timedelta(days=1)
    assert fetch(standin, s3, "1", clock=lambda: later) == 1
    name = first.split("/", 1)[1]
    assert f"set aside as {name};" in capsys.readouterr().err
    assert s3.keys("manifests/damaged/") == [first]
    assert s3.get(name) == damaged
    assert s3.keys("manifests/") == [first]
    assert fetch(standin, s3, "1") == 0
