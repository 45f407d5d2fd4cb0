"""A journal's blobs in a bucket, which a gc on another machine sees as no manifest's."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from tests.archive_helpers import stop
from tests.helpers import Sleeps, sha256
from tests.s3server import (  # noqa: F401  (fixtures)
    REGION,
    Bucket,
    MotoS3,
    aio_session_fixture,
    aws_env_fixture,
    bucket_fixture,
    moto_s3_fixture,
)
from tests.standin import Stall, StandIn
from tests.test_journal_s3 import new_bucket
from tests.test_process import wait_until
from tests.test_s3store import opened
from tune_archiver.cli.main import main
from tune_archiver.manifest import Entry
from tune_archiver.store import kept_young
from tune_archiver.store.s3.store import S3Store

MiB = 2**20


def age(bucket: str, key: str, by: timedelta) -> None:
    """Date the object `by` earlier, as if that much time passed (moto runs here)."""
    stored = s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets[bucket].keys[key]
    stored.last_modified -= by


def test_a_journals_blobs_taken_up_are_kept_young_till_the_manifest_names_them(
    standin: StandIn, moto_s3: MotoS3, aws_env: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fetch killed before its manifest (cron's timeout on a long checkpoint), the
    next day's run took the photos its journal names as archived (held, at their size),
    but left them as old as they were: a gc on another machine (a bucket has no lock:
    it takes an unreferenced blob a day old) removed them while the rerun downloaded
    the checkpoint, and the rerun wrote them ok, exit 0, blobs gone: verify said them
    missing, lost once Astria deleted the tune. A blob taken up from a journal is kept
    young as a commit keeps a reused one."""
    client, bucket = new_bucket(standin, moto_s3, tmp_path, monkeypatch)
    archive = f"s3://{bucket}/backups"
    flags = ["--archive", archive, "--s3-endpoint-url", moto_s3.endpoint, "-q"]
    images = [os.urandom(3000 + i) for i in range(2)]
    standin.add_tune(1, [standin.add_file("model", os.urandom(4 * MiB))],
                     [standin.add_file(f"i{i}.jpg", data) for i, data in enumerate(images)])
    standin.faults["model"] = [Stall(3 * MiB)]
    keys = [f"backups/objects/sha256/{sha256(d)[:2]}/{sha256(d)}" for d in images]

    def held() -> list[str]:
        found = client.list_objects_v2(Bucket=bucket, Prefix="backups/objects/")
        return sorted(key for item in found.get("Contents", []) if (key := item["Key"]) in keys)

    process = subprocess.Popen(
        [sys.executable, "-m", "tune_archiver", "fetch", "1", *flags,
         "--api-url", standin.api_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        wait_until(lambda: held() == sorted(keys), "the images committed")
    finally:
        stop(process)
    standin.faults["model"] = []
    for key in keys:  # the next day's run, a few minutes short of a day later
        age(bucket, key, timedelta(hours=23, minutes=55))
    write = S3Store.update_manifest

    async def gc_meanwhile(self: S3Store, tune_id: int, change: Any) -> str:
        for key in keys:  # the checkpoint took ten minutes: past a day now
            age(bucket, key, timedelta(minutes=10))
        gc = await asyncio.to_thread(  # another machine's, its own staging folder
            subprocess.run, [sys.executable, "-m", "tune_archiver", "gc", *flags],
            env={**os.environ, "TUNE_ARCHIVER_STAGING": str(tmp_path / "elsewhere")},
            capture_output=True, text=True, timeout=60)
        assert gc.returncode == 0, gc.stderr
        return await write(self, tune_id, change)

    monkeypatch.setattr(S3Store, "update_manifest", gc_meanwhile)
    code = main(["fetch", "1", *flags, "--api-url", standin.api_url], sleep=Sleeps())
    document = json.loads(client.get_object(Bucket=bucket, Key="backups/manifests/1.json")
                          ["Body"].read())
    assert [(e["status"], e.get("sha256")) for e in document["assets"]
            if e["kind"] == "training_image"] == [("ok", sha256(data)) for data in images]
    assert held() == sorted(keys)
    assert code == 0
    client.close()


async def test_a_bucket_failing_to_refresh_a_journals_blob_is_not_asked_for_each_line(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket failing every request (unreachable, throttling) failed each journal
    line's refresh after all its tries (5, backing off), one line after another, before
    the run met the same failure in its next request: a journal of 200 photos, which a
    run stopped by a network fault leaves, was a silent half hour. The first refresh
    that fails ends them; the rest are taken as before."""
    from moto.s3.models import S3Backend

    asked: list[str] = []

    def failing(backend: S3Backend, name: str, key: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(key)
        raise RuntimeError("the bucket is down")  # moto answers 500 InternalError

    monkeypatch.setattr(S3Backend, "head_object", failing)
    lines = [Entry("training_image", i, f"https://cdn.example/{i}.jpg", "ok",
                   sha256(bytes([i])), 1) for i in range(20)]
    async with opened(bucket, tmp_path) as store:  # one try of each request
        assert await kept_young(store, lines) == lines
    assert len(asked) == 1
