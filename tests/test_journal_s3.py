"""Tunes' journals in a staging folder two S3 archives share ($TUNE_ARCHIVER_STAGING)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.archive_helpers import stop
from tests.helpers import Sleeps, sha256
from tests.s3server import (  # noqa: F401  (fixtures)
    MotoS3,
    aws_env_fixture,
    moto_s3_fixture,
    plain_client,
)
from tests.standin import Stall, StandIn
from tests.test_journal import expire
from tests.test_process import wait_until
from tune_archiver.cli.main import main
from tune_archiver.commands.fetch import fetch
from tune_archiver.config import RetryPolicy, Settings
from tune_archiver.models import Blob
from tune_archiver.progress import NullProgress
from tune_archiver.store.s3.intake import S3Intake

MiB = 2**20


def new_bucket(standin: StandIn, moto_s3: MotoS3, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """A new bucket on moto and a plain client for it (the caller closes it), the
    staging folder in tmp_path/staging and the stand-in's key in the environment."""
    monkeypatch.setenv("TUNE_ARCHIVER_STAGING", str(tmp_path / "staging"))
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    client = plain_client(moto_s3.endpoint)
    bucket = f"archive-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def test_two_buckets_sharing_a_staging_folder_keep_their_journals_apart(
    standin: StandIn, moto_s3: MotoS3, aws_env: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cron fetching into two buckets with one $TUNE_ARCHIVER_STAGING: the run into
    the first killed after the images were committed, the one into the second took the
    first's journal for its own and removed it once its manifest was written, so the
    first's rerun after the tune expired said the images gone upstream, though its
    bucket held them (and its gc would have removed them)."""
    client, bucket = new_bucket(standin, moto_s3, tmp_path, monkeypatch)
    first, second = f"s3://{bucket}/first", f"s3://{bucket}/second"
    images = [os.urandom(3000 + i) for i in range(3)]
    standin.add_tune(1, [standin.add_file("model", os.urandom(4 * MiB))],
                     [standin.add_file(f"i{i}.jpg", data) for i, data in enumerate(images)])
    standin.faults["model"] = [Stall(3 * MiB)]

    def blobs(prefix: str) -> set[str]:
        found = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/objects/")
        return {item["Key"].rsplit("/", 1)[1] for item in found.get("Contents", [])}

    def fetch(archive: str) -> int:
        return main(["fetch", "1", "--archive", archive, "--s3-endpoint-url", moto_s3.endpoint,
                     "--api-url", standin.api_url, "-q"], sleep=Sleeps())

    process = subprocess.Popen(
        [sys.executable, "-m", "tune_archiver", "fetch", "1", "--archive", first,
         "--s3-endpoint-url", moto_s3.endpoint, "--api-url", standin.api_url, "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: {sha256(data) for data in images} <= blobs("first"),
                   "the images committed")
    finally:
        stop(process)
    standin.faults["model"] = []
    assert fetch(second) == 0
    expire(standin)
    assert fetch(first) == 1  # the checkpoint, never received, is gone upstream
    document = json.loads(client.get_object(Bucket=bucket, Key="first/manifests/1.json")
                          ["Body"].read())
    assert [(e["status"], e.get("sha256")) for e in document["assets"]
            if e["kind"] == "training_image"] == [("ok", sha256(data)) for data in images]
    client.close()


def test_another_runs_settle_keeps_the_line_of_a_blob_being_uploaded(
    standin: StandIn, moto_s3: MotoS3, aws_env: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 'fetch 1 --prompts' uploading a prompt's image while a plain fetch of the tune
    ran and finished: its settle found the image's blob not in the bucket yet, and
    dropped its line; the first run, stopped later on the prompt's video, had stored the
    blob, named by nothing, so its rerun once the tune expired said the image 'gone
    upstream, never archived' though the bucket held it."""
    client, bucket = new_bucket(standin, moto_s3, tmp_path, monkeypatch)
    archive = f"s3://{bucket}/backups"
    flags = ["--archive", archive, "--s3-endpoint-url", moto_s3.endpoint,
             "--api-url", standin.api_url, "-q"]
    standin.add_tune(1, [standin.add_file("model", os.urandom(5000))],
                     [standin.add_file("i0.jpg", os.urandom(3000))])
    assert main(["fetch", "1", *flags], sleep=Sleeps()) == 0
    made = os.urandom(4000)
    standin.add_prompt(1, 5, "a photo", [standin.add_file("p0.jpg", made),
                                         standin.add_file("p1.mp4", os.urandom(4 * MiB))])
    standin.faults["p1.mp4"] = [Stall(3 * MiB)]
    uploading, go, committed = threading.Event(), threading.Event(), asyncio.Event()
    store_new, commit = S3Intake._store_new, S3Intake.commit

    async def held_upload(self: S3Intake, blob: Blob, final: str) -> None:
        if blob.sha256 == sha256(made):
            uploading.set()
            assert await asyncio.to_thread(go.wait, 20)
        await store_new(self, blob, final)

    async def told(self: S3Intake, finish: Callable[[], Blob]) -> Blob:
        blob = await commit(self, finish)
        if blob.sha256 == sha256(made):
            committed.set()
        return blob

    monkeypatch.setattr(S3Intake, "_store_new", held_upload)
    monkeypatch.setattr(S3Intake, "commit", told)
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        s3_endpoint_url=moto_s3.endpoint, retry=RetryPolicy(sleep=Sleeps()),
                        prompts=True)
    async def raced() -> None:
        run = asyncio.create_task(fetch(settings, [1], NullProgress()))
        assert await asyncio.to_thread(uploading.wait, 20)
        other = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "tune_archiver", "fetch", "1", *flags],
            capture_output=True, text=True, timeout=60)
        assert other.returncode == 0, other.stderr
        go.set()
        await committed.wait()  # uploaded, its file removed
        run.cancel()  # stopped on the video, never received
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(raced())
    expire(standin)
    assert main(["fetch", "1", "--prompts", *flags], sleep=Sleeps()) == 1  # the video: gone
    document = json.loads(client.get_object(Bucket=bucket, Key="backups/manifests/1.json")
                          ["Body"].read())
    assert [(e["index"], e["status"], e.get("sha256")) for e in document["assets"]
            if e["kind"] == "prompt_image"] == [(0, "ok", sha256(made)), (1, "gone", None)]
    client.close()
