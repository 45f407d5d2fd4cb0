"""An s3:// archive after a run killed at the wrong moment (SIGKILL in a subprocess)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.s3server import (  # noqa: F401  (fixtures)
    REGION,
    MotoS3,
    aged,
    aws_env_fixture,
    moto_s3_fixture,
)
from tests.standin import StandIn
from tests.test_s3_archive import (
    S3Archive,
    add_tune,
    archived_then_misplaced,
    archived_then_rotted,
    fetch,
    s3_fixture,  # noqa: F401  (the fixture)
    tune_archiver,
)
from tune_archiver.text import human_bytes

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


_KILLED_PUTTING_BACK = """
import os, signal, sys
from tune_archiver.cli.main import main
from tune_archiver.store.s3.bucket import Bucket

delete = Bucket.delete
async def killed_before_the_delete(self, key):
    if "/objects/sha256/zz/" in key:  # copied to its place already
        os.kill(os.getpid(), signal.SIGKILL)
    await delete(self, key)
Bucket.delete = killed_before_the_delete
sys.exit(main(sys.argv[1:]))
"""


def put_back_killed(standin: StandIn, s3: S3Archive) -> tuple[str, bytes, str]:
    """Tune 1's checkpoint found at a wrong place, put back by a verify --repair killed
    before it deleted the stray: the blob's key, its bytes and the stray's key."""
    checkpoint, data, stray = archived_then_misplaced(standin, s3)
    killed(standin, s3, _KILLED_PUTTING_BACK, "verify", "--repair")
    assert s3.get(checkpoint["path"]) == data
    assert s3.get(stray) == data
    return checkpoint["path"], data, stray


def test_the_copy_a_killed_put_back_left_at_a_wrong_place_is_swept_by_gc(
    standin: StandIn, s3: S3Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bucket has no rename: a put-back copies the stray to the blob's place, then
    deletes it. A SIGKILL between the two left the stray, a whole copy of a photo or
    checkpoint, for good: verify found nothing amiss, gc listed nothing, and once the
    tune was forgotten gc took the blob and the copy stayed. gc now sweeps a stray a day
    old whose blob is whole at its place, before it removes blobs."""
    _, _, stray = put_back_killed(standin, s3)
    assert tune_archiver(s3, "verify") == 0
    assert tune_archiver(s3, "forget", "1") == 0
    capsys.readouterr()
    aged(s3.bucket, timedelta(days=3))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc", "--dry-run") == 0
    assert f"{s3.prefix}/{stray}" in capsys.readouterr().out
    assert tune_archiver(s3, "gc") == 0
    assert s3.keys("objects/") == []


def test_a_stray_whose_blob_is_damaged_at_its_place_is_kept_by_gc(
    standin: StandIn, s3: S3Archive
) -> None:
    """The stray may be the one whole copy: its blob's place holding other bytes of its
    size, gc keeps it, and verify --repair puts it back."""
    path, data, stray = put_back_killed(standin, s3)
    s3.put(path, bytes([data[0] ^ 0xFF]) + data[1:])
    aged(s3.bucket, timedelta(days=3))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc") == 0
    assert s3.get(stray) == data
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url) == 0
    assert s3.get(path) == data
    assert f"{s3.prefix}/{stray}" not in s3.keys("objects/")


_KILLED_SETTING_BLOB_ASIDE = """
import os, signal, sys
from tune_archiver.cli.main import main
from tune_archiver.store.s3.bucket import Bucket

delete = Bucket.delete
async def killed_before_the_delete(self, key):
    if "/objects/sha256/" in key:  # copied to tmp/damaged/ already
        os.kill(os.getpid(), signal.SIGKILL)
    await delete(self, key)
Bucket.delete = killed_before_the_delete
sys.exit(main(sys.argv[1:]))
"""


def test_a_damaged_blob_a_killed_repair_copied_aside_is_set_aside_once(
    standin: StandIn, s3: S3Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SIGKILL met verify --repair setting a damaged checkpoint aside between its copy
    to tmp/damaged/ and the delete of its blob: the next repair copied it aside again
    under its own time, a second copy of gigabytes in tmp/damaged/, which gc keeps for
    good. It now finishes the move the killed run began: one copy, under its first name."""
    served, checkpoint, damaged = archived_then_rotted(standin, s3)
    killed(standin, s3, _KILLED_SETTING_BLOB_ASIDE, "verify", "--repair")
    [first] = s3.keys("tmp/damaged/")
    capsys.readouterr()
    later = datetime.now(UTC) + timedelta(days=1)
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         clock=lambda: later) == 0
    assert first.split("/", 1)[1] in capsys.readouterr().out
    assert s3.keys("tmp/damaged/") == [first]
    assert s3.get(first.split("/", 1)[1]) == damaged
    assert s3.get(checkpoint["path"]) == served[checkpoint["url"]]


def test_gc_counts_a_killed_put_backs_stray_apart_from_partial_downloads(
    standin: StandIn, s3: S3Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stray a killed put-back left, a whole copy of a blob (a checkpoint's: GBs), was
    counted 'gc removed 0 unreferenced blobs and 1 stale partial file': a user read that
    a download was cut short. It is counted apart, as what it is."""
    _, data, stray = put_back_killed(standin, s3)
    capsys.readouterr()
    aged(s3.bucket, timedelta(days=3))  # by the bucket's clock, which gc reads
    for verb in ("would remove", "removed"):
        dry = ("--dry-run",) if verb == "would remove" else ()
        assert tune_archiver(s3, "gc", *dry) == 0
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"gc {verb} 0 unreferenced blobs and 0 stale partial files, and 1 stray blob a "
            f"stopped repair left: {human_bytes(len(data))}")
    assert f"{s3.prefix}/{stray}" not in s3.keys("objects/")
