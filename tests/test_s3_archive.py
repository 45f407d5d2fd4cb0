"""The whole command on an s3:// archive, against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from moto.s3.exceptions import EntityTooSmall, MissingKey, S3AccessDeniedError, S3ClientError
from moto.s3.models import FakeKey, S3Backend
from moto.s3.responses import S3Response

from tests.archive_helpers import Gate
from tests.conftest import SCHEMA
from tests.helpers import Sleeps, sha256
from tests.s3server import (  # noqa: F401  (fixtures)
    SECRET_KEY,
    MotoS3,
    aged,
    aws_env_fixture,
    moto_s3_fixture,
    plain_client,
    refuse_gets,
)
from tests.standin import StandIn, Status
from tests.test_process import wait_until
from tune_archiver.cli.main import main
from tune_archiver.commands import fetch as archive_module
from tune_archiver.config import RetryPolicy, Settings
from tune_archiver.download.staging import staging_for
from tune_archiver.errors import IntegrityError, StorageError
from tune_archiver.progress import NullProgress
from tune_archiver.store.s3 import intake as intake_module
from tune_archiver.store.s3 import leftovers
from tune_archiver.store.s3 import store as s3store_module
from tune_archiver.store.s3.store import S3Store

MiB = 2**20


@dataclass
class S3Archive:
    """A fresh bucket, the archive URL under it, and a plain client to look inside."""

    url: str
    endpoint: str
    bucket: str
    prefix: str
    client: Any

    def keys(self, under: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/{under}"
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")[
            "Body"
        ].read()
        return body

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)

    def manifest(self, tune_id: int) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.get(f"manifests/{tune_id}.json"))
        jsonschema.Draft202012Validator(SCHEMA).validate(document)
        return document


@pytest.fixture(name="s3")
def s3_fixture(moto_s3: MotoS3, aws_env: None, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Archive]:
    """A fresh bucket, its archive URL, a plain client."""
    monkeypatch.setenv("TUNE_ARCHIVER_STAGING", str(tmp_path / "staging"))
    client = plain_client(moto_s3.endpoint)
    bucket = f"archive-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield S3Archive(f"s3://{bucket}/backups", moto_s3.endpoint, bucket, "backups", client)
    client.close()


def tune_archiver(s3: S3Archive, *args: str, **kwargs: Any) -> int:
    return main([*args, "--archive", s3.url, "--s3-endpoint-url", s3.endpoint], **kwargs)


def fetch(standin: StandIn, s3: S3Archive, *args: str, **kwargs: Any) -> int:
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    return tune_archiver(s3, "fetch", *args, "--api-url", standin.api_url, sleep=Sleeps(),
                         **kwargs)


def add_tune(standin: StandIn, tune_id: int, ckpt_size: int = 200_000, images: int = 2,
             shared: list[str] | None = None) -> dict[str, bytes]:
    """A tune with a checkpoint and images; returns URL -> bytes of its files."""
    files = {standin.add_file(f"ckpt-{tune_id}.safetensors", os.urandom(ckpt_size)): b""}
    files.update({standin.add_file(f"img-{tune_id}-{i}.jpg", os.urandom(5000 + i)): b""
                  for i in range(images)})
    served = {url: standin.files[url.rsplit("/", 1)[1]] for url in files}
    urls = list(served)
    standin.add_tune(tune_id, urls[:1], urls[1:] + (shared or []))
    return served


def archived_then_rotted(
    standin: StandIn, s3: S3Archive
) -> tuple[dict[str, bytes], dict[str, Any], bytes]:
    """Tune 1 fetched into the bucket, then a byte of its checkpoint's object flipped:
    the tune's served files, the checkpoint's manifest entry and the object's bytes."""
    served = add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    [checkpoint] = [e for e in s3.manifest(1)["assets"] if e["kind"] == "checkpoint"]
    damaged = bytearray(s3.get(checkpoint["path"]))
    damaged[1000] ^= 0xFF
    s3.put(checkpoint["path"], bytes(damaged))
    return served, checkpoint, bytes(damaged)


def archived_then_misplaced(
    standin: StandIn, s3: S3Archive
) -> tuple[dict[str, Any], bytes, str]:
    """Tune 1 fetched into the bucket, then its checkpoint's object moved, whole, to a
    wrong fan-out folder: the checkpoint's manifest entry, its bytes and the stray key."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    [checkpoint] = [e for e in s3.manifest(1)["assets"] if e["kind"] == "checkpoint"]
    data, stray = s3.get(checkpoint["path"]), f"objects/sha256/zz/{checkpoint['sha256']}"
    s3.put(stray, data)
    s3.client.delete_object(Bucket=s3.bucket, Key=f"{s3.prefix}/{checkpoint['path']}")
    return checkpoint, data, stray


def test_fetch_into_a_bucket_then_verify_list_and_export(
    standin: StandIn, s3: S3Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Blobs (a 20 MiB one by multipart upload) and the manifest land under the prefix in the
    archive's layout; verify, list and export read them back."""
    served = add_tune(standin, 1, ckpt_size=20 * MiB)
    assert fetch(standin, s3, "1", "-v") == 0
    document = s3.manifest(1)
    assert document["complete"] is True
    for entry in document["assets"]:
        assert s3.get(entry["path"]) == served[entry["url"]]
        assert entry["sha256"] == sha256(served[entry["url"]])
    assert s3.keys("tmp/") == []
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert tune_archiver(s3, "verify") == 0
    assert tune_archiver(s3, "list", "--json") == 0
    assert tune_archiver(s3, "export", "1", str(tmp_path / "out")) == 0
    exported = sorted(p.name for p in (tmp_path / "out" / "1-tune-1").rglob("*") if p.is_file())
    assert exported == ["000.jpg", "000.safetensors", "001.jpg", "index.html", "manifest.json"]
    printed = capsys.readouterr()
    assert SECRET_KEY not in printed.out + printed.err
    assert '"tune_id": 1' in printed.out


def test_a_second_fetch_uploads_nothing(standin: StandIn, s3: S3Archive) -> None:
    """Blobs already in the bucket are neither downloaded nor uploaded again."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    keys = {k: s3.client.head_object(Bucket=s3.bucket, Key=k)["ETag"] for k in s3.keys("objects/")}
    files_asked = len(standin.seen("cdn"))
    assert fetch(standin, s3, "1") == 0
    assert len(standin.seen("cdn")) == files_asked
    again = {k: s3.client.head_object(Bucket=s3.bucket, Key=k)["ETag"] for k in s3.keys("objects/")}
    assert again == keys


@pytest.mark.parametrize("size", [2 * MiB, 200_000], ids=["large", "small"])
def test_a_download_whose_upload_failed_is_kept_and_stored_later_without_the_host(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Every byte was in when the bucket refused it: the next run uploads the kept file
    and asks the host nothing, so a file the host deleted meanwhile is not lost. A small
    one too, though its bytes were held in memory until the commit."""
    served = add_tune(standin, 1, ckpt_size=size, images=0)
    [url] = served
    put_object = S3Backend.put_object

    def refused(backend: S3Backend, bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        if key.startswith((f"{s3.prefix}/tmp/", f"{s3.prefix}/objects/")):
            raise EntityTooSmall()  # any refusal that no retry mends
        return put_object(backend, bucket, key, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", refused)
    assert fetch(standin, s3, "1") == 1
    assert s3.manifest(1)["assets"][0]["status"] == "failed"
    monkeypatch.setattr(S3Backend, "put_object", put_object)
    del standin.files[url.rsplit("/", 1)[1]]  # the host deleted it: a 404 from now on
    asked = len(standin.seen("cdn"))
    assert fetch(standin, s3, "1") == 0
    assert len(standin.seen("cdn")) == asked
    [entry] = s3.manifest(1)["assets"]
    assert entry["status"] == "ok"
    assert s3.get(entry["path"]) == served[url]


def test_a_download_the_bucket_stored_wrong_is_kept_and_stored_later_without_the_host(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket's copy failed its check, not the file received: the file is kept whole,
    and the next run stores it without the host."""
    served = add_tune(standin, 1, ckpt_size=2 * MiB, images=0)
    [url] = served
    check_upload = intake_module.check_upload

    async def wrong(*args: Any) -> None:
        raise IntegrityError("the bucket reports other bytes")

    monkeypatch.setattr(intake_module, "check_upload", wrong)
    assert fetch(standin, s3, "1") == 1
    monkeypatch.setattr(intake_module, "check_upload", check_upload)
    del standin.files[url.rsplit("/", 1)[1]]
    asked = len(standin.seen("cdn"))
    assert fetch(standin, s3, "1") == 0
    assert len(standin.seen("cdn")) == asked
    [entry] = s3.manifest(1)["assets"]
    assert s3.get(entry["path"]) == served[url]


def test_a_download_whose_bytes_changed_on_disk_is_not_kept(
    standin: StandIn, s3: S3Archive, tmp_path: Path
) -> None:
    """Bytes on disk that are not those received (the upload re-reads and re-hashes
    them) fail the file, and nothing is kept for a later run to take as it is."""
    add_tune(standin, 1, ckpt_size=2 * MiB, images=0)

    received = [0]  # the file's first byte, as it came

    def flipping(fd: int, pieces: list[memoryview], offset: int) -> int:
        written = os.pwritev(fd, pieces, offset)
        if offset == 0:
            received[0] = os.pread(fd, 1, 0)[0]
        # Never the byte received (toggling 0 and 1 gave it back, now and then: a file
        # whose first byte was 1, written an even number of times, was whole on disk).
        os.pwrite(fd, bytes([received[0] ^ 0xFF]), 0)
        return written

    settings = Settings(archive=s3.url, api_key=standin.api_key, api_url=standin.api_url,
                        s3_endpoint_url=s3.endpoint, retry=RetryPolicy(sleep=Sleeps()))
    [result] = asyncio.run(archive_module.fetch(
        settings, [1], NullProgress(), staging=staging_for(s3.url, write=flipping)))
    assert "changed on disk" in result.failed[0].error
    assert list((tmp_path / "staging").iterdir()) == []


def test_verify_catches_a_corrupted_object(
    standin: StandIn, s3: S3Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """An object whose bytes no longer match its name fails verify, naming the tune's file."""
    archived_then_rotted(standin, s3)
    capsys.readouterr()
    assert tune_archiver(s3, "verify") == 1
    assert "tune 1: checkpoint 0: corrupt" in capsys.readouterr().err


def test_verify_repair_on_a_bucket_sets_the_corrupt_object_aside_and_mends_it(
    standin: StandIn, s3: S3Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify --repair on S3: the corrupt object is copied to tmp/damaged/ (which gc keeps),
    the tune fetched again, and the archive verifies whole."""
    served, checkpoint, damaged = archived_then_rotted(standin, s3)
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps()) == 0
    assert s3.get(checkpoint["path"]) == served[standin.tunes[1]["ckpt_urls"][0]]
    [kept] = s3.keys("tmp/damaged/")
    assert s3.get(kept.removeprefix(f"{s3.prefix}/")) == damaged
    aged(s3.bucket, timedelta(days=30))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc") == 0
    assert s3.keys("tmp/damaged/") == [kept]
    assert tune_archiver(s3, "verify") == 0


def test_verify_repair_on_a_bucket_puts_a_whole_misplaced_object_back(
    standin: StandIn, s3: S3Archive
) -> None:
    """The checkpoint's object sits whole under a wrong fan-out folder, its place empty,
    and the file is gone upstream: verify --repair copies it back to its place, removes
    the stray one, fetches nothing and verifies whole."""
    checkpoint, data, _ = archived_then_misplaced(standin, s3)
    for name in list(standin.files):
        standin.faults[name] = [Status(404)] * 10
    served = len(standin.requests)
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps()) == 0
    assert s3.get(checkpoint["path"]) == data
    assert s3.keys("objects/sha256/zz/") == []
    assert s3.keys("tmp/damaged/") == []
    assert standin.requests[served:] == []
    assert tune_archiver(s3, "verify") == 0


def test_gc_on_a_bucket_waits_out_the_grace_period(standin: StandIn, s3: S3Archive) -> None:
    """Unreferenced blobs stay while young (a fetch may be about to use them), go after a day;
    referenced ones always stay."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    assert fetch(standin, s3, "1", "2") == 0
    only_2 = {e["path"] for e in s3.manifest(2)["assets"]}
    s3.client.delete_object(Bucket=s3.bucket, Key=f"{s3.prefix}/manifests/2.json")
    before = s3.keys("objects/")
    assert tune_archiver(s3, "gc") == 0
    assert s3.keys("objects/") == before
    aged(s3.bucket, timedelta(days=2))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc") == 0
    assert s3.keys("objects/") == sorted(set(before) - {f"{s3.prefix}/{p}" for p in only_2})
    assert tune_archiver(s3, "verify") == 0


# The script's entry with the bucket's clock as the fetch reads it two days on once
# LATER_FLAG exists: a fetch that spends that long on one tune (its objects aged so).
TWO_DAYS_ON = """
import os, sys
from datetime import timedelta
from tune_archiver.store.s3.bucket import Bucket
now = Bucket.now
def later(self, ours=None):
    return now(self, ours) + timedelta(days=2 if os.path.exists(os.environ["LATER_FLAG"]) else 0)
Bucket.now = later
sys.argv[0] = "tune-archiver"
from tune_archiver.cli.start import entry
raise SystemExit(entry())
"""


def held_while(standin: StandIn, s3: S3Archive, tmp_path: Path, gate: Gate, ids: list[str],
               stored: int, meanwhile: Callable[[Path], None]) -> tuple[int, str]:
    """`fetch IDS` in a process of its own, whose checkpoints `gate` holds: once `stored`
    objects are in, `meanwhile(flag)` runs (the bucket's clock as the fetch reads it
    moves two days on once `flag` exists), then the gate opens. Its exit code, stderr."""
    flag = tmp_path / "later"
    env = {**os.environ, "ASTRIA_API_KEY": standin.api_key, "LATER_FLAG": str(flag),
           "PYTHONPATH": str(Path(__file__).parents[1]),
           "TUNE_ARCHIVER_STAGING": str(tmp_path / "fetching")}  # gc's is elsewhere
    command = [sys.executable, "-c", TWO_DAYS_ON, "fetch", *ids, "--archive", s3.url,
               "--s3-endpoint-url", s3.endpoint, "--api-url", standin.api_url, "-q"]
    running = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert gate.arrived.wait(20), "no checkpoint's download began"
        wait_until(lambda: len(s3.keys("objects/")) == stored, "the images stored")
        meanwhile(flag)
        gate.open()
        _, err = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
            running.communicate()
    return running.returncode, err


def robbed_while_slow(standin: StandIn, s3: S3Archive, tmp_path: Path, gate: Gate,
                      ids: list[str], stored: int) -> tuple[int, str]:
    """held_while: two days pass by the bucket's clock (its objects aged so), a gc
    elsewhere takes them (no manifest names them yet), and the bucket's clock as the
    fetch reads it moves two days on too."""
    def rob(flag: Path) -> None:
        aged(s3.bucket, timedelta(days=2))
        assert tune_archiver(s3, "gc") == 0
        assert s3.keys("objects/") == []  # no manifest named them yet
        flag.touch()

    return held_while(standin, s3, tmp_path, gate, ids, stored, rob)


def test_a_blob_a_gc_elsewhere_took_before_the_manifest_named_it_is_never_said_ok(
    standin: StandIn, s3: S3Archive, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A fetch stores a tune's images, then spends two days on its checkpoint; a gc
    elsewhere takes the images, which no manifest names yet. The fetch says the tune
    failed, writes no manifest naming them ok, and the next fetch archives it whole."""
    target = standin.add_file("ckpt-1.safetensors", os.urandom(50_000))
    urls = [standin.add_file(f"img-1-{i}.jpg", os.urandom(3_000 + i)) for i in range(2)]
    with Gate(target) as gate:
        standin.add_tune(1, [gate.url("ckpt-1.safetensors")], urls)
        code, err = robbed_while_slow(standin, s3, tmp_path, gate, ["1"], len(urls))
    assert code == 1, err
    assert "is gone before the manifest named it" in err
    assert s3.keys("manifests/") == []
    capsys.readouterr()
    standin.add_tune(1, [target], urls)
    assert fetch(standin, s3, "1") == 0
    assert tune_archiver(s3, "verify") == 0


def test_a_blob_two_tunes_share_that_a_gc_took_fails_both(
    standin: StandIn, s3: S3Archive, tmp_path: Path
) -> None:
    """Two tunes of one run share an image; both spend two days on their checkpoints,
    and a gc elsewhere takes the image, which no manifest names yet. The first tune to
    write its manifest finds it gone and fails; the other must too, never ok and
    complete with the image missing (the first's failed write no longer hides it)."""
    target = standin.add_file("ckpt.safetensors", os.urandom(50_000))
    shared = standin.add_file("shared.jpg", os.urandom(3_000))
    with Gate(target) as gate:
        for tune_id in (1, 2):
            standin.add_tune(tune_id, [gate.url(f"ckpt-{tune_id}.safetensors")], [shared])
        code, err = robbed_while_slow(standin, s3, tmp_path, gate, ["1", "2"], 1)
    assert code == 1, err
    assert err.count("is gone before the manifest named it") == 2, err
    assert s3.keys("manifests/") == []


def test_gc_on_a_machine_whose_clock_runs_ahead_leaves_a_running_fetchs_blobs(
    standin: StandIn, s3: S3Archive, tmp_path: Path
) -> None:
    """gc read a blob's age as its bucket's date against gc's own clock: on a machine two
    days ahead it took the images a running fetch had stored a minute before (no manifest
    names them yet), and the fetch, whose clock called them young, wrote them ok and
    complete, exit 0: verify said them missing. Ages are read by the bucket's clock now
    (its answers' Date): gc takes nothing there, and the archive verifies whole."""
    target = standin.add_file("ckpt-1.safetensors", os.urandom(50_000))
    urls = [standin.add_file(f"img-1-{i}.jpg", os.urandom(3_000 + i)) for i in range(2)]

    def gc_ahead(flag: Path) -> None:
        stored = s3.keys("objects/")
        ahead = datetime.now(UTC) + timedelta(days=2)
        assert tune_archiver(s3, "gc", clock=lambda: ahead) == 0
        assert s3.keys("objects/") == stored

    with Gate(target) as gate:
        standin.add_tune(1, [gate.url("ckpt-1.safetensors")], urls)
        code, err = held_while(standin, s3, tmp_path, gate, ["1"], len(urls), gc_ahead)
    assert code == 0, err
    assert tune_archiver(s3, "verify") == 0


def test_shards_split_an_account_between_machines(standin: StandIn, s3: S3Archive) -> None:
    """--shard 1/2 and 2/2 take disjoint halves of the tunes by id; together, all of them."""
    for tune_id in range(1, 7):
        add_tune(standin, tune_id, images=1)
    assert fetch(standin, s3, "--all", "--shard", "1/2") == 0
    first = {k.rsplit("/", 1)[1] for k in s3.keys("manifests/")}
    assert first == {"2.json", "4.json", "6.json"}
    assert fetch(standin, s3, "--all", "--shard", "2/2") == 0
    assert len(s3.keys("manifests/")) == 6


def test_two_writers_at_once_leave_the_bucket_consistent(standin: StandIn, s3: S3Archive) -> None:
    """Two processes archiving tunes that share images into one bucket both succeed, and the
    bucket verifies: every blob once, whole, and no temporary key or upload left."""
    shared = [standin.add_file(f"shared-{i}.jpg", os.urandom(300_000)) for i in range(6)]
    add_tune(standin, 1, ckpt_size=2 * MiB, shared=shared)
    add_tune(standin, 2, ckpt_size=2 * MiB, shared=shared)
    env = {**os.environ, "ASTRIA_API_KEY": standin.api_key}
    command = [sys.executable, "-m", "tune_archiver", "fetch", "--archive", s3.url,
               "--s3-endpoint-url", s3.endpoint, "--api-url", standin.api_url, "-q"]
    runs = [subprocess.Popen([*command, *ids], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for ids in (["1", "2"], ["2", "1"])]
    for run in runs:
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
    assert tune_archiver(s3, "verify") == 0
    blobs = s3.keys("objects/")
    assert len(blobs) == len({k.rsplit("/", 1)[1] for k in blobs}) == 2 + 2 * 2 + 6
    assert s3.keys("tmp/") == []
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_a_missing_bucket_is_a_configuration_error(
    standin: StandIn, s3: S3Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch into a bucket that does not exist exits 2 with one line, before any download."""
    add_tune(standin, 1)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    code = main(["fetch", "1", "--archive", "s3://no-such-bucket-here/x", "--s3-endpoint-url",
                 s3.endpoint, "--api-url", standin.api_url], sleep=Sleeps())
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("tune-archiver: error:") == 1
    assert "no-such-bucket-here" in err
    assert standin.seen("cdn") == []


@pytest.mark.parametrize("command", ["fetch", "verify", "list", "gc"])
def test_a_bucket_down_or_throttling_at_the_first_request_is_unreachable_not_usage(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], command: str,
) -> None:
    """A bucket answering its first request 503 (SlowDown, a store restarting) after every
    retry is storage that cannot be reached, nothing done: exit 4 with one line. It was
    exit 2, 'usage or configuration', which tells cron's caller to fix a setting."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own backoff sleeps for real
    monkeypatch.setattr(S3Response, "head_bucket", lambda self: (503, {}, ""))
    capsys.readouterr()
    code = fetch(standin, s3, "1") if command == "fetch" else tune_archiver(s3, command)
    assert code == 4
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("tune-archiver: error: cannot reach the bucket in ")
    assert "503" in line


@pytest.mark.parametrize("command", ["fetch", "verify", "list", "gc"])
def test_credentials_granted_the_prefix_alone_can_use_it(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], command: str,
) -> None:
    """A policy that grants s3:ListBucket on the condition s3:prefix (one prefix of a
    shared bucket, AWS's own example of least privilege) refuses HeadBucket, which names
    no prefix: every command stopped at once with 'access denied', exit 2, though every
    request it makes under the prefix is allowed. An archive at the bucket's root is
    still refused."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    monkeypatch.setattr(S3Response, "head_bucket", lambda self: (403, {}, ""))
    capsys.readouterr()
    code = fetch(standin, s3, "1") if command == "fetch" else tune_archiver(s3, command)
    assert code == 0
    assert "error" not in capsys.readouterr().err
    root = main(["list", "--archive", f"s3://{s3.bucket}", "--s3-endpoint-url", s3.endpoint])
    assert root == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("tune-archiver: error: cannot reach the bucket in ")
    assert "access denied" in line
    assert line.endswith("; reaching it needs s3:ListBucket")


def missing_keys_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bucket as S3 answers credentials without s3:ListBucket on it: 403 for a GET,
    a HEAD of a missing key, and a HeadBucket."""
    get_object, head_object = S3Response.get_object, S3Response.head_object

    def refused_get(self: S3Response, *args: Any, **kwargs: Any) -> Any:
        try:
            return get_object(self, *args, **kwargs)
        except MissingKey:
            raise S3AccessDeniedError() from None

    def refused_head(self: S3Response, *args: Any, **kwargs: Any) -> Any:
        status, headers, body = head_object(self, *args, **kwargs)
        return (403, {}, "") if status == 404 else (status, headers, body)

    monkeypatch.setattr(S3Response, "get_object", refused_get)
    monkeypatch.setattr(S3Response, "head_object", refused_head)
    monkeypatch.setattr(S3Response, "head_bucket", lambda self: (403, {}, ""))


def test_credentials_granted_the_prefix_alone_fetch_a_new_tune_and_find_a_missing_blob(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without s3:ListBucket on the whole bucket (granted for the prefix alone, as above)
    S3 answers a GET or HEAD of a missing key 403, not 404: the first fetch of any tune
    failed on 'access denied' reading the manifest it had not written yet (and every new
    blob would on its HEAD), exit 1, and verify called a missing blob a refused one. A
    403 is now looked up in a listing of that key: not listed, it is not there."""
    add_tune(standin, 1)
    missing_keys_refused(monkeypatch)
    assert fetch(standin, s3, "1") == 0
    assert "error" not in capsys.readouterr().err
    assert tune_archiver(s3, "verify") == 0
    lost = s3.manifest(1)["assets"][0]["path"]
    s3.client.delete_object(Bucket=s3.bucket, Key=f"{s3.prefix}/{lost}")
    capsys.readouterr()
    assert tune_archiver(s3, "verify", "--json") == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [(p["tune_id"], p["problem"]) for p in problems] == [(1, "missing")]


def test_verify_on_an_empty_prefix_says_there_is_no_archive(s3: S3Archive) -> None:
    """Reading commands refuse a prefix that holds no archive, with exit 2."""
    assert tune_archiver(s3, "verify") == 2


def test_a_bucket_prefix_with_a_stray_space_is_refused_not_made(
    standin: StandIn, s3: S3Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """--archive "s3://b/c4 " (a variable's space) archived under a new prefix 'c4 ',
    exit 0, the real archive never updated: refused as a new folder so named is, and
    one that holds an archive already is used."""
    add_tune(standin, 1)
    named = replace(s3, url=s3.url + " ", prefix=s3.prefix + " ")
    capsys.readouterr()
    assert fetch(standin, named, "1") == 2
    assert repr(named.url) in capsys.readouterr().err
    assert s3.client.list_objects_v2(Bucket=s3.bucket).get("KeyCount") == 0
    named.put("manifests/.keep", b"")  # named so on purpose, its archive there
    assert fetch(standin, named, "1") == 0
    assert json.loads(named.get("manifests/1.json"))["tune_id"] == 1


def test_sha256_of_the_manifest_blob_paths(standin: StandIn, s3: S3Archive) -> None:
    """Every blob key ends in the sha256 of the object's bytes (content addressing holds)."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    for key in s3.keys("objects/"):
        data = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        assert key.endswith(hashlib.sha256(data).hexdigest())


def test_forget_then_gc_on_a_bucket(
    standin: StandIn, s3: S3Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """forget 2 deletes its manifest object; gc (past the grace) then removes the objects
    only tune 2 used and keeps the image both tunes share."""
    shared = standin.add_file("shared.jpg", os.urandom(6000))
    one = add_tune(standin, 1, shared=[shared])
    two = add_tune(standin, 2, shared=[shared])
    assert fetch(standin, s3, "1", "2") == 0
    assert tune_archiver(s3, "forget", "2") == 0
    assert "removed the manifest of tune 2" in capsys.readouterr().out
    assert s3.keys("manifests/") == [f"{s3.prefix}/manifests/1.json"]
    aged(s3.bucket, timedelta(days=3))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc") == 0
    left = {key.rsplit("/", 1)[1] for key in s3.keys("objects/")}
    kept = {sha256(data) for data in one.values()} | {sha256(standin.files["shared.jpg"])}
    assert left == kept
    assert not {sha256(data) for data in two.values()} & left


def test_a_manifest_set_aside_elsewhere_while_gc_reads_stops_gc_before_it_removes(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fetch on another machine sets a damaged manifest aside (copied to
    manifests/damaged/, then deleted) after gc listed the manifests, before it read that
    one: gc found it gone, and took every blob only it named as unreferenced, though
    gc removes nothing while a damaged manifest is kept. It stops in one line, exit 1."""
    two = add_tune(standin, 2)
    add_tune(standin, 1)
    assert fetch(standin, s3, "1", "2") == 0
    real = S3Store.read_manifest

    async def set_aside_first(self: S3Store, tune_id: int) -> bytes | None:
        if tune_id == 2 and (data := await real(self, 2)) is not None:
            assert await self.set_aside_manifest(2, "20260101T000000Z", data) is not None
        return await real(self, tune_id)

    monkeypatch.setattr(S3Store, "read_manifest", set_aside_first)
    before = s3.keys("objects/")
    capsys.readouterr()
    aged(s3.bucket, timedelta(days=3))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc", "--json") == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "manifests/damaged/2-20260101T000000Z.json" in err
    assert s3.keys("objects/") == before
    assert {k.rsplit("/", 1)[1] for k in before} >= {sha256(data) for data in two.values()}


def test_gc_that_cannot_sweep_a_buckets_old_uploads_still_says_what_it_removed(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The sweep of old uploads, gc's last step, failing (the bucket's listing of
    uploads refused by a 500 after every retry) is one error line, exit 1, with the
    blobs already removed named in --json. It stopped gc with that line alone: the
    blobs it had removed were never said."""
    two = add_tune(standin, 2)
    add_tune(standin, 1)
    assert fetch(standin, s3, "1", "2") == 0
    assert tune_archiver(s3, "forget", "2") == 0

    async def refused(self: Any, older_than: datetime, removed: Any = None) -> list[Any]:
        raise StorageError(f"cannot list uploads in {s3.url}: InternalError")

    monkeypatch.setattr(S3Store, "remove_stale_uploads", refused)
    capsys.readouterr()
    aged(s3.bucket, timedelta(days=3))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc", "--json") == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"tune-archiver: error: cannot list uploads in {s3.url}: "
                                "InternalError"]
    report = json.loads(out)
    assert report["failed"] == [f"cannot list uploads in {s3.url}: InternalError"]
    assert {b["path"].rsplit("/", 1)[1] for b in report["blobs"]} == {
        sha256(data) for data in two.values()}


def test_gc_whose_sweep_of_old_uploads_fails_part_way_says_what_it_swept(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The sweep deletes a day-old temporary object, then the listing of unfinished
    uploads fails: exit 1, and the deleted object is named in --json's partials (since
    08afbf1 the sweep's failure gave none: what it had removed was never said)."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    s3.put("tmp/upload-left", b"0123456789")

    listed = leftovers._old_uploads

    async def refused(bucket: Any, older_than: datetime) -> list[tuple[str, str]]:
        if not calls:  # gc's listing of what is stale; its sweep's fails
            calls.append(1)
            return await listed(bucket, older_than)
        raise StorageError(f"cannot list unfinished uploads in {s3.url}: InternalError")

    calls: list[int] = []
    monkeypatch.setattr(leftovers, "_old_uploads", refused)
    capsys.readouterr()
    aged(s3.bucket, timedelta(days=3))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc", "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == [f"cannot list unfinished uploads in {s3.url}: InternalError"]
    assert report["partials"] == [
        {"path": f"s3://{s3.bucket}/{s3.prefix}/tmp/upload-left", "bytes": 10}]
    assert s3.keys("tmp/") == []


def test_verify_reports_a_blob_the_bucket_refuses_and_checks_the_others(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One object the bucket will not let us read (AccessDenied on its GET alone) is that
    blob's problem, said in one line: verify checks every other blob and exits 1, with
    no traceback."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    assert fetch(standin, s3, "1", "2") == 0
    [checkpoint] = [e for e in s3.manifest(1)["assets"] if e["kind"] == "checkpoint"]
    refuse_gets(monkeypatch, lambda key: key.endswith(checkpoint["sha256"]),
                S3AccessDeniedError)
    capsys.readouterr()
    assert tune_archiver(s3, "verify") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = err.splitlines()
    assert line.startswith("tune-archiver: error: tune 1: checkpoint 0: unreadable: ")
    assert "access denied" in line
    assert tune_archiver(s3, "verify", "2") == 0


def test_verify_stops_once_on_credentials_refused_outright(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A token that expires mid-verify is no blob's problem: verify stops on one line,
    exit 2 (as any refused credentials), rather than call every blob unreadable."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0

    # The manifests were read: it expires at the blobs.
    refuse_gets(monkeypatch, lambda key: "/objects/" in key,
                lambda: S3ClientError("ExpiredToken", "The provided token has expired."))
    capsys.readouterr()
    assert tune_archiver(s3, "verify") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = err.splitlines()
    assert "ExpiredToken" in line


def test_a_folder_marker_under_manifests_damaged_does_not_stop_gc(
    standin: StandIn, s3: S3Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """The empty key manifests/damaged/ that a console's "Create folder" (or s3fs, rclone)
    leaves is no damaged manifest: gc still removes what no manifest references, and
    verify and gc agree that nothing is set aside."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    assert fetch(standin, s3, "1", "2") == 0
    only_2 = {f"{s3.prefix}/{e['path']}" for e in s3.manifest(2)["assets"]}
    assert tune_archiver(s3, "forget", "2") == 0
    for marker in ("manifests/damaged/", "manifests/", "objects/", "tmp/damaged/"):
        s3.put(marker, b"")
    capsys.readouterr()
    assert tune_archiver(s3, "verify") == 0
    aged(s3.bucket, timedelta(days=2))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc") == 0
    assert capsys.readouterr().err == ""
    assert not only_2 & set(s3.keys("objects/"))
    assert tune_archiver(s3, "verify") == 0


def test_an_object_at_a_manifests_key_past_the_size_limit_is_refused_unread(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An object at manifests/<id>.json larger than MAX_MANIFEST_BYTES is refused by its
    size, as a local archive refuses such a file, not read whole into memory: verify and
    list name that tune and go on with the others."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    assert fetch(standin, s3, "1", "2") == 0
    padded = s3.get("manifests/2.json").rstrip() + b" " * 4096 + b"\n"  # still a manifest
    s3.put("manifests/2.json", padded)
    monkeypatch.setattr(s3store_module, "MAX_MANIFEST_BYTES", 4096)
    capsys.readouterr()
    assert tune_archiver(s3, "verify") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("tune-archiver: error: tune 2: unreadable manifest: ")
    assert "larger than 4096 bytes" in line
    assert tune_archiver(s3, "list", "--json") == 1
    rows = json.loads(capsys.readouterr().out)["tunes"]
    assert [row["tune_id"] for row in rows] == [2, 1]
    assert "larger than 4096 bytes" in rows[0]["error"]
    assert tune_archiver(s3, "verify", "1") == 0


def test_export_refuses_a_blob_of_another_size_before_writing_it(
    standin: StandIn, s3: S3Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An object at a blob's key that is not the size its manifest records (replaced by a
    far larger one, say) is refused by that size, as a local archive does, before a byte
    of it reaches DEST; the tune's other files are exported."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    [checkpoint] = [e for e in s3.manifest(1)["assets"] if e["kind"] == "checkpoint"]
    s3.put(checkpoint["path"], os.urandom(3 * MiB))
    capsys.readouterr()
    assert tune_archiver(s3, "export", "1", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert f"holds {3 * MiB} bytes, not the {checkpoint['size']} its manifest records" in err
    folder = tmp_path / "out" / "1-tune-1"
    written = sorted(p.name for p in folder.rglob("*") if p.is_file())
    assert written == ["000.jpg", "001.jpg", "index.html", "manifest.json"]


def test_export_with_link_of_a_blob_past_the_file_size_limit_reads_none_of_it(
    standin: StandIn, s3: S3Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bucket's object cannot be hard-linked, so export --link copies it: a checkpoint
    past the limit (5 GB to a FAT32 stick, the README's --link example) was read from
    the bucket, paid for, up to the limit, then failed 'File too large'; it is refused
    by its size first, as without --link. Here the 4 GiB is 100 kB on a 'vfat' DEST."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    monkeypatch.setattr("tune_archiver.safefs.FAT_MAX", 100_000)
    monkeypatch.setattr("tune_archiver.safefs._filesystem_of", lambda folder: "vfat")
    capsys.readouterr()
    assert tune_archiver(s3, "export", "1", str(tmp_path / "out"), "--link") == 1
    folder = tmp_path / "out" / "1-tune-1"
    assert capsys.readouterr().err == (
        f"tune-archiver: error: tune 1: checkpoint 0: cannot write 000.safetensors in "
        f"{folder}/checkpoints: 200000 bytes, past FAT32's limit of 4 GiB a file; use "
        "another filesystem (exFAT, NTFS, ext4); nothing was written\n")
    assert not (folder / "checkpoints" / "000.safetensors").exists()


def test_export_of_a_blob_the_bucket_refuses_fails_that_file_alone(
    standin: StandIn, s3: S3Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One object the bucket will not let us read (AccessDenied on its GET alone, which
    verify calls that blob's problem) fails that file of the export, named, exit 1: the
    tune's other files, manifest.json and index.html are still written."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    [checkpoint] = [e for e in s3.manifest(1)["assets"] if e["kind"] == "checkpoint"]
    refuse_gets(monkeypatch, lambda key: key.endswith(checkpoint["sha256"]),
                S3AccessDeniedError)
    capsys.readouterr()
    assert tune_archiver(s3, "export", "1", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "checkpoint 0: " in err
    assert "access denied" in err
    folder = tmp_path / "out" / "1-tune-1"
    written = sorted(p.name for p in folder.rglob("*") if p.is_file())
    assert written == ["000.jpg", "001.jpg", "index.html", "manifest.json"]


def test_forget_removes_a_manifest_the_store_refuses_to_read(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`forget ID` of a tune whose manifest object the store refuses to read (past the
    size limit) removes it all the same, its title unknown, and the other ids asked for
    too: reading the manifest is only for its title."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    assert fetch(standin, s3, "1", "2") == 0
    s3.put("manifests/2.json", s3.get("manifests/2.json").rstrip() + b" " * 4096 + b"\n")
    monkeypatch.setattr(s3store_module, "MAX_MANIFEST_BYTES", 4096)
    capsys.readouterr()
    assert tune_archiver(s3, "forget", "2", "1") == 0
    out = capsys.readouterr().out
    assert "removed the manifest of tune 2\n" in out
    assert "removed the manifest of tune 1 (Tune 1)\n" in out
    assert s3.keys("manifests/") == []


@pytest.mark.parametrize("command", ["verify", "list"])
def test_a_manifest_the_bucket_refuses_is_that_tunes_problem_alone(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], command: str,
) -> None:
    """A bucket policy refusing one manifest object (AccessDenied on its GET alone) is
    that tune's problem, said on one line: verify and list still check and show the
    other tune, exit 1. It stopped both (exit 2) with no other tune verified or listed."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    assert fetch(standin, s3, "1", "2") == 0
    refuse_gets(monkeypatch, lambda key: key.endswith("/manifests/1.json"),
                S3AccessDeniedError)
    capsys.readouterr()
    assert tune_archiver(s3, command, "--json") == 1
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith("tune-archiver: error: tune 1: ")
    assert "access denied" in line
    document = json.loads(captured.out)
    if command == "verify":
        assert (document["tunes"], document["blobs"]) == (2, 3)
        assert [(p["tune_id"], p["problem"]) for p in document["problems"]] == [
            (1, "unreadable_manifest")]
    else:
        assert [row["tune_id"] for row in document["tunes"]] == [2, 1]
        assert "error" in document["tunes"][1]


@pytest.mark.parametrize("tokens", ["taking turns", "never given before"])
def test_a_listing_that_goes_round_in_circles_is_one_line_not_a_run_that_never_ends(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tokens: str,
) -> None:
    """A store whose ListObjectsV2 answers every page with the first one again kept
    list, verify and gc listing forever, saying nothing: under continuation tokens that
    take turns (botocore only refuses one token twice in a row), or each time under one
    never given before. A token seen before, or a page of nothing but keys listed
    before that says more follow, stops the listing: one line, exit 1."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    list_objects_v2 = S3Backend.list_objects_v2
    pages = []

    def circling(backend: S3Backend, *args: Any, **kwargs: Any) -> Any:
        pages.append(kwargs.get("continuation_token"))
        keys, _, _ = list_objects_v2(backend, *args, **{**kwargs, "continuation_token": None})
        if len(pages) > 50:  # the test's own stop, were the listing never refused
            return keys, False, None
        if tokens == "never given before":
            return keys, True, f"token-{len(pages)}"
        return keys, True, "B" if kwargs.get("continuation_token") == "A" else "A"

    monkeypatch.setattr(S3Backend, "list_objects_v2", circling)
    capsys.readouterr()
    assert tune_archiver(s3, "list") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("tune-archiver: error: cannot list the bucket in ")
    assert "again" in line
    assert len(pages) < 10


def test_a_listing_truncated_without_a_token_stops_gc_before_it_removes_a_named_blob(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A store whose ListObjectsV2 says IsTruncated but gives no NextContinuationToken
    ended botocore's listing after its first page, silently: gc read one manifest of
    two, took the other tune's blob for unreferenced and removed it, exit 0. Now such a
    page stops the listing: one line, exit 1, every blob kept."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    assert fetch(standin, s3, "1", "2") == 0
    before = s3.keys("objects/")
    list_objects_v2 = S3Backend.list_objects_v2

    def tokenless(backend: S3Backend, *args: Any, **kwargs: Any) -> Any:
        keys, truncated, _ = list_objects_v2(backend, *args, **{**kwargs, "max_keys": 1})
        return keys, truncated, None

    monkeypatch.setattr(S3Backend, "list_objects_v2", tokenless)
    capsys.readouterr()
    aged(s3.bucket, timedelta(days=2))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("tune-archiver: error: cannot list the bucket in ")
    monkeypatch.undo()
    assert s3.keys("objects/") == before


def test_a_listing_that_repeats_keys_has_gc_say_each_blob_it_removed_once(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A store whose ListObjectsV2 lists a key twice (one page's last again on the
    next) had gc say it removed each such blob twice: 'removed 6 unreferenced blobs:
    410.2 KiB' of 3 blobs and 205.1 KiB. A key listed again is now skipped."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    assert fetch(standin, s3, "1", "2") == 0
    s3.client.delete_object(Bucket=s3.bucket, Key=f"{s3.prefix}/manifests/2.json")
    list_objects_v2 = S3Backend.list_objects_v2

    def repeating(backend: S3Backend, *args: Any, **kwargs: Any) -> Any:
        keys, truncated, token = list_objects_v2(backend, *args, **kwargs)
        return [*keys, *keys], truncated, token

    monkeypatch.setattr(S3Backend, "list_objects_v2", repeating)
    capsys.readouterr()
    aged(s3.bucket, timedelta(days=2))  # by the bucket's clock, which gc reads
    named = {entry["path"] for entry in s3.manifest(1)["assets"]}
    assert tune_archiver(s3, "gc", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    removed = [blob["path"] for blob in document["blobs"]]
    assert len(removed) == len(set(removed)) == 3
    assert not named & set(removed)
    assert document["bytes"] == sum(blob["bytes"] for blob in document["blobs"])


@pytest.fixture
def odd_prefix(s3: S3Archive) -> S3Archive:
    """The archive under a prefix with a '%' in it (s3://bucket/100%25)."""
    return replace(s3, url=f"s3://{s3.bucket}/100%25", prefix="100%25")


def test_a_store_listing_keys_unencoded_under_an_odd_prefix_still_reads_the_archive(
    standin: StandIn, odd_prefix: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A store that says its listing's keys are URL-encoded (botocore asks for that)
    but sends them as they are: botocore decodes them, '100%25/' becomes '100%/', and
    cut at the prefix's length they named nothing of ours. verify said 'verified 0
    tunes ...: all intact', exit 0, list showed no tune and forget 'not in the
    archive'. Each key is now taken after the prefix as asked, or as decoded."""
    s3 = odd_prefix
    add_tune(standin, 1)
    add_tune(standin, 2)
    assert fetch(standin, s3, "1", "2") == 0
    s3.client.delete_object(Bucket=s3.bucket, Key=f"{s3.prefix}/manifests/2.json")
    named = {entry["path"] for entry in s3.manifest(1)["assets"]}
    monkeypatch.setattr(FakeKey, "safe_name", lambda key, encoding_type=None: key.name)
    capsys.readouterr()
    assert tune_archiver(s3, "verify") == 0
    assert capsys.readouterr().out.startswith("verified 1 tune, 3 blobs")
    aged(s3.bucket, timedelta(days=2))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc", "--json") == 0
    removed = {blob["path"] for blob in json.loads(capsys.readouterr().out)["blobs"]}
    assert len(removed) == 3
    assert not named & removed
    monkeypatch.undo()
    assert {key.removeprefix(f"{s3.prefix}/") for key in s3.keys("objects/")} == named


def test_a_blob_refused_under_an_odd_prefix_of_a_store_listing_keys_unencoded_is_denied(
    standin: StandIn, odd_prefix: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A GET refused 403 is looked up in a listing of its key (a missing key is a 403
    to credentials granted the prefix alone). On a store listing keys unencoded though
    it says they are, under s3://bucket/100%25, the key listed ('100%/...') was never
    the one asked: a blob the bucket refuses was said missing, not refused."""
    s3 = odd_prefix
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    [checkpoint] = [e for e in s3.manifest(1)["assets"] if e["kind"] == "checkpoint"]
    refuse_gets(monkeypatch, lambda key: key.endswith(checkpoint["sha256"]),
                S3AccessDeniedError)
    monkeypatch.setattr(FakeKey, "safe_name", lambda key, encoding_type=None: key.name)
    capsys.readouterr()
    assert tune_archiver(s3, "verify") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("tune-archiver: error: tune 1: checkpoint 0: unreadable: ")
    assert "access denied" in line


def test_a_listing_of_keys_outside_the_prefix_asked_stops_gc_in_one_line(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Keys a listing gives under another prefix than the one asked for are no archive's
    that gc or verify can read: the listing stops, one line, exit 1, nothing removed."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    before = s3.keys("objects/")
    monkeypatch.setattr(FakeKey, "safe_name",
                        lambda key, encoding_type=None: "elsewhere/" + key.name)
    capsys.readouterr()
    aged(s3.bucket, timedelta(days=2))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("tune-archiver: error: cannot list the bucket in ")
    assert "elsewhere/backups/manifests/1.json" in line
    monkeypatch.undo()
    assert s3.keys("objects/") == before


def test_an_export_to_a_filesystem_without_hard_links_still_exports(
    standin: StandIn, s3: S3Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DEST on a FAT or exFAT USB stick, where os.link fails with EPERM: a bucket's blobs
    are exported whole there too, as a local archive's are (each was 'cannot export a
    blob: Operation not permitted', exit 1), and nothing is left beside them."""
    served = add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0

    def no_link(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_link)
    capsys.readouterr()
    assert tune_archiver(s3, "export", "1", str(tmp_path / "usb")) == 0
    assert capsys.readouterr().err == ""
    folder = tmp_path / "usb" / "1-tune-1"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert sorted(p.name for p in files) == [
        "000.jpg", "000.safetensors", "001.jpg", "index.html", "manifest.json"]
    blobs = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert {hashlib.sha256(data).hexdigest() for data in served.values()} <= blobs


def test_gc_whose_abort_of_an_old_upload_is_denied_says_what_it_removed(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bucket's policy that lists unfinished uploads but refuses their abort
    (AccessDenied, no s3:AbortMultipartUpload) makes the sweep's failure one line, exit
    1, with the blobs and the temporary object removed before it named in --json, as
    any other failure of the sweep. Denied stopped gc with that line alone, exit 2: what
    it had removed was never said."""
    two = add_tune(standin, 2)
    add_tune(standin, 1)
    assert fetch(standin, s3, "1", "2") == 0
    assert tune_archiver(s3, "forget", "2") == 0
    s3.put("tmp/upload-left", b"0123456789")
    key = f"{s3.prefix}/tmp/upload-started"
    upload = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
    s3.client.upload_part(Bucket=s3.bucket, Key=key, UploadId=upload, PartNumber=1,
                          Body=b"x" * 100)

    def denied(*args: Any, **kwargs: Any) -> None:
        raise S3AccessDeniedError()

    monkeypatch.setattr(S3Backend, "abort_multipart_upload", denied)
    capsys.readouterr()
    aged(s3.bucket, timedelta(days=3))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc", "--json") == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    report = json.loads(out)
    [failure] = report["failed"]
    assert "abort an upload" in failure
    assert "access denied" in failure
    assert err.splitlines() == [f"tune-archiver: error: {failure}"]
    assert {b["path"].rsplit("/", 1)[1] for b in report["blobs"]} == {
        sha256(data) for data in two.values()}
    assert report["partials"] == [
        {"path": f"s3://{s3.bucket}/{s3.prefix}/tmp/upload-left", "bytes": 10}]
    assert s3.keys("tmp/") == []


def test_gc_whose_delete_of_a_blob_is_denied_says_the_blobs_it_removed_before(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bucket's policy refusing the delete of one blob (AccessDenied) is one line, exit
    1, and no further blob is tried; the blobs gc removed before it are named in --json.
    Denied stopped gc with that line alone, exit 2, and what it had removed went unsaid."""
    two = add_tune(standin, 2)
    add_tune(standin, 1)
    assert fetch(standin, s3, "1", "2") == 0
    assert tune_archiver(s3, "forget", "2") == 0
    unreferenced = sorted(sha256(data) for data in two.values())
    delete_object = S3Backend.delete_object

    def denied(backend: S3Backend, bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        if key.endswith(unreferenced[-1]):  # gc goes through them in order
            raise S3AccessDeniedError()
        return delete_object(backend, bucket, key, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "delete_object", denied)
    capsys.readouterr()
    aged(s3.bucket, timedelta(days=3))  # by the bucket's clock, which gc reads
    assert tune_archiver(s3, "gc", "--json") == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    [failure] = report["failed"]
    assert "access denied" in failure
    assert failure.endswith("; gc removed no further blob")
    assert err.splitlines() == [f"tune-archiver: error: {failure}"]
    assert [b["path"].rsplit("/", 1)[1] for b in report["blobs"]] == unreferenced[:-1]
    left = {key.rsplit("/", 1)[1] for key in s3.keys("objects/")}
    assert not set(unreferenced[:-1]) & left
    assert unreferenced[-1] in left


@pytest.mark.parametrize("how", [["2", "1"], ["--keep-within", "1d"]])
def test_forget_goes_on_past_a_manifest_the_bucket_refuses(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], how: list[str],
) -> None:
    """A bucket policy refusing manifests/2.json alone (AccessDenied on its GET) stopped
    forget whole, exit 2, nothing forgotten. By id, tune 2 is forgotten untitled (the
    read is only for its title) and tune 1 too; with --keep-within, tune 2's expiry is
    unknown, so it is kept, and tune 1, expired, is forgotten."""
    for tune_id in (1, 2):
        add_tune(standin, tune_id)
        standin.tunes[tune_id]["expires_at"] = "2026-01-01T00:00:00Z"
    assert fetch(standin, s3, "1", "2") == 0
    refuse_gets(monkeypatch, lambda key: key.endswith("/manifests/2.json"),
                S3AccessDeniedError)
    capsys.readouterr()
    assert tune_archiver(s3, "forget", *how) == 0, capsys.readouterr().err
    left = [key.rsplit("/", 2)[-2:] for key in s3.keys("manifests/")]
    assert left == ([] if how[0] == "2" else [["manifests", "2.json"]])


@pytest.mark.parametrize("refusal", [errno.EPERM, errno.ENOSYS, errno.EROFS])
def test_a_staging_folder_that_cannot_be_made_exits_2_as_the_archive_does(
    standin: StandIn, s3: S3Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, refusal: int,
) -> None:
    """$TUNE_ARCHIVER_STAGING on a FAT stick or a read-only folder (a service's
    ProtectHome, for ~/.cache) refuses the staging folder's 0700: the operator's to fix,
    exit 2, as a local archive there is. It was 'cannot create the staging folder', exit
    1, a failed run a wrapper retries, every run, before any download."""
    def refused(*args: object) -> None:
        raise OSError(refusal, os.strerror(refusal))

    add_tune(standin, 1)
    monkeypatch.setenv("TUNE_ARCHIVER_STAGING", str(tmp_path / "stick" / "staging"))
    monkeypatch.setattr(os, "fchmod", refused)
    assert fetch(standin, s3, "1") == 2
    assert "cannot create the staging folder in " in capsys.readouterr().err
    assert standin.seen("cdn") == []
    assert s3.keys("objects/") == []


@pytest.mark.parametrize("wrote", [b"", b"short"], ids=["empty", "other-bytes"])
def test_verify_repair_keeps_a_damaged_blob_whose_copy_aside_the_bucket_did_not_store(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], wrote: bytes,
) -> None:
    """A store that answers the copy of a damaged blob to tmp/damaged/ with 200 but
    stores nothing there, or other bytes: the damaged object was deleted all the same,
    and its bytes (all there is of a file gone upstream) were lost. The copy is read
    back first; one that is not there whole keeps the damaged blob, said, exit 1."""
    _, checkpoint, damaged = archived_then_rotted(standin, s3)
    real = S3Backend.copy_object

    def unstored(backend: S3Backend, src_key: FakeKey, bucket: str, key: str,
                 *args: Any, **kwargs: Any) -> None:
        if "/tmp/damaged/" not in key:
            real(backend, src_key, bucket, key, *args, **kwargs)
        else:  # an empty object, or a few bytes, under the name asked for
            backend.put_object(bucket, key, wrote)

    monkeypatch.setattr(S3Backend, "copy_object", unstored)
    capsys.readouterr()
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps()) == 1
    assert s3.get(checkpoint["path"]) == damaged
    assert s3.keys("tmp/damaged/") == []
    err = capsys.readouterr().err
    assert "its copy to tmp/damaged/" in err
    assert f"{checkpoint['path']} is kept" in err


def test_credentials_that_may_list_no_key_say_s3_listbucket_may_be_missing(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Credentials that may list no key under the archive (s3:ListBucket missing, or
    granted on the prefix itself alone): S3 answers 403 for a missing key, and the
    listing that tells a missing key from a refused one is refused too. fetch said only
    'access denied; check the AWS credentials and the bucket's policy' for a manifest
    not written yet, which names nothing to grant. It names s3:ListBucket now; gc,
    which cannot list, removes nothing."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    list_objects_v2 = S3Response.list_objects_v2

    def prefix_alone(self: S3Response) -> Any:
        if self.querystring.get("prefix", [""])[0] != f"{s3.prefix}/":
            raise S3AccessDeniedError()
        return list_objects_v2(self)

    missing_keys_refused(monkeypatch)
    monkeypatch.setattr(S3Response, "list_objects_v2", prefix_alone)
    add_tune(standin, 2)
    capsys.readouterr()
    assert fetch(standin, s3, "2") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert "s3:ListBucket" in line
    before = s3.keys()
    assert tune_archiver(s3, "gc") == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith("; listing needs s3:ListBucket")
    assert s3.keys() == before
    monkeypatch.setattr(S3Response, "list_objects_v2", lambda self: (403, {}, ""))
    capsys.readouterr()
    for command in ("verify", "gc"):  # s3:ListBucket on nothing at all: stopped at once
        assert tune_archiver(s3, command) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert "s3:ListBucket" in line
    monkeypatch.setattr(S3Response, "list_objects_v2", list_objects_v2)
    assert s3.keys() == before


def cut_short(monkeypatch: pytest.MonkeyPatch, ending: str,
              said_whole: bool = False) -> Callable[[], None]:
    """GETs of the keys ending so cut to their first 1,000 bytes on their way (a proxy),
    with a Content-Length to match, or with `said_whole` the object's own; returns what
    undoes it."""
    get_object = S3Response.get_object

    def cut(self: S3Response, *args: Any, **kwargs: Any) -> Any:
        status, headers, body = get_object(self, *args, **kwargs)
        if self.path.endswith(ending):
            said = len(body) if said_whole else 1000
            return status, {**headers, "content-length": str(said)}, body[:1000]
        return status, headers, body

    monkeypatch.setattr(S3Response, "get_object", cut)
    return lambda: monkeypatch.setattr(S3Response, "get_object", get_object)


def test_verify_repair_never_moves_aside_a_blob_the_bucket_cannot_send_whole(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A checkpoint whole in the bucket whose GETs come back cut short (a proxy, a
    link that drops): verify says it unreadable, and --repair moved it aside as it
    would a disk's bad sector; its tune gone upstream, the fetch again found nothing,
    and the checkpoint was 'missing' from then on, its whole bytes left in
    tmp/damaged/, where no repair looks. A read that fails says nothing of a bucket's
    bytes: it stays in place, said, exit 1, and the next verify reads it again."""
    add_tune(standin, 1)
    assert fetch(standin, s3, "1") == 0
    [checkpoint] = [e for e in s3.manifest(1)["assets"] if e["kind"] == "checkpoint"]
    whole = s3.get(checkpoint["path"])
    restore = cut_short(monkeypatch, checkpoint["sha256"], said_whole=True)
    for name in list(standin.files):
        standin.faults[name] = [Status(404)] * 10
    capsys.readouterr()
    assert tune_archiver(s3, "verify") == 1
    assert "checkpoint 0: unreadable: " in capsys.readouterr().err
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps()) == 1
    assert "not moved aside: it may be whole" in capsys.readouterr().err
    restore()
    assert s3.get(checkpoint["path"]) == whole
    assert s3.keys("tmp/damaged/") == []
    assert tune_archiver(s3, "verify") == 0


def test_verify_repair_never_moves_aside_a_misplaced_blob_the_bucket_cannot_send_whole(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The checkpoint's one whole copy sits at a wrong place, its GETs cut short on their
    way (a proxy, Content-Length to match): put back hashed the bytes sent, took the
    stray for not whole, and repair moved it aside to tmp/damaged/, the tune gone
    upstream, the checkpoint 'missing' from then on. It stays where it is, said, exit 1."""
    checkpoint, data, stray = archived_then_misplaced(standin, s3)
    restore = cut_short(monkeypatch, stray)
    for name in list(standin.files):
        standin.faults[name] = [Status(404)] * 10
    capsys.readouterr()
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps()) == 1
    assert "not moved aside: it may be whole" in capsys.readouterr().err
    restore()
    assert s3.get(stray) == data
    assert s3.keys("tmp/damaged/") == []
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps()) == 0
    assert s3.get(checkpoint["path"]) == data


def test_verify_repair_mends_the_other_tunes_when_a_blob_to_vouch_for_is_sent_short(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An entry whose sha256 names no blob while its path names one is mended once that
    one reads whole; a GET of it cut short on its way stopped the whole repair, every
    other tune's damage left as it was, since 7b1a751 made such a read an error. It is
    that entry's alone, said: the other tune's image is fetched again."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    assert fetch(standin, s3, "1", "2") == 0
    document = s3.manifest(1)
    [checkpoint] = [e for e in document["assets"] if e["kind"] == "checkpoint"]
    real = checkpoint["sha256"]
    checkpoint["sha256"] = ("1" if real[0] == "0" else "0") + real[1:]
    s3.put("manifests/1.json", json.dumps(document).encode())
    [image] = [e for e in s3.manifest(2)["assets"] if e["kind"] == "training_image"][:1]
    s3.client.delete_object(Bucket=s3.bucket, Key=f"{s3.prefix}/{image['path']}")
    restore = cut_short(monkeypatch, real)
    capsys.readouterr()
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps()) == 1
    assert "tune 1: checkpoint 0: unreadable: " in capsys.readouterr().err
    assert s3.get(image["path"]) == standin.files[image["url"].rsplit("/", 1)[1]]
    restore()
    assert tune_archiver(s3, "verify") == 0


def test_verify_repair_mends_the_other_tunes_when_one_manifest_cannot_be_written(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An entry's path mended in a manifest the bucket will not take (a PUT refused, 500
    each try) stopped the whole repair with one line, every other tune's missing file
    left as it was, each cron run: the fault 4fc123c mended for a blob that could not be
    read, by another path. It is that tune's alone, said: the other's image comes back."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    add_tune(standin, 1)
    add_tune(standin, 2)
    assert fetch(standin, s3, "1", "2") == 0
    document = s3.manifest(1)
    [checkpoint] = [e for e in document["assets"] if e["kind"] == "checkpoint"]
    checkpoint["path"] = "objects/elsewhere"
    s3.put("manifests/1.json", json.dumps(document).encode())
    [image] = [e for e in s3.manifest(2)["assets"] if e["kind"] == "training_image"][:1]
    s3.client.delete_object(Bucket=s3.bucket, Key=f"{s3.prefix}/{image['path']}")
    put_object = S3Response.put_object

    def refusing(self: S3Response) -> Any:
        if self.path.endswith("/manifests/1.json"):
            return 500, {}, (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>"
                             b"InternalError</Code><Message>We encountered an internal "
                             b"error.</Message></Error>")
        return put_object(self)

    monkeypatch.setattr(S3Response, "put_object", refusing)
    capsys.readouterr()
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps()) == 1
    err = capsys.readouterr().err
    assert "not repaired: cannot write a manifest in" in err
    assert "InternalError" in err
    assert s3.get(image["path"]) == standin.files[image["url"].rsplit("/", 1)[1]]
    monkeypatch.setattr(S3Response, "put_object", put_object)
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps()) == 0
    assert tune_archiver(s3, "verify") == 0


def test_the_command_a_line_says_to_run_names_the_buckets_endpoint(
    standin: StandIn, s3: S3Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """The repair a line says to run on a bucket of MinIO, R2 or B2 names its endpoint:
    '--archive s3://bucket/prefix' alone, run as said from a shell, went to AWS (a bucket
    of that name there is another's, or the user's own, not this archive). Run as said,
    the command mends the archive."""
    archived_then_rotted(standin, s3)
    capsys.readouterr()
    assert tune_archiver(s3, "verify") == 1
    said = capsys.readouterr().err
    command = f"tune-archiver verify --repair 1 --archive {s3.url} --s3-endpoint-url {s3.endpoint}"
    assert f"(repair: {command})" in said
    assert main([*command.split()[1:], "--api-url", standin.api_url], sleep=Sleeps()) == 0
    assert tune_archiver(s3, "verify") == 0
