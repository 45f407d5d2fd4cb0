"""Tunes' journals in a staging folder two S3 archives share ($TUNE_ARCHIVER_STAGING)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from tests.archive_helpers import stop
from tests.helpers import Sleeps, sha256
from tests.s3server import (  # noqa: F401  (fixtures)
    REGION,
    MotoS3,
    aws_env_fixture,
    moto_s3_fixture,
)
from tests.standin import Stall, StandIn
from tests.test_journal import expire
from tests.test_process import wait_until
from tune_archiver.cli.main import main

MiB = 2**20


def test_two_buckets_sharing_a_staging_folder_keep_their_journals_apart(
    standin: StandIn, moto_s3: MotoS3, aws_env: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cron fetching into two buckets with one $TUNE_ARCHIVER_STAGING: the run into
    the first killed after the images were committed, the one into the second took the
    first's journal for its own and removed it once its manifest was written, so the
    first's rerun after the tune expired said the images gone upstream, though its
    bucket held them (and its gc would have removed them)."""
    staging = tmp_path / "staging"
    monkeypatch.setenv("TUNE_ARCHIVER_STAGING", str(staging))
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    client = boto3.client("s3", endpoint_url=moto_s3.endpoint, region_name=REGION)
    bucket = f"archive-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
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
