"""What verify --repair sets aside in a bucket's tmp/damaged/ is kept, each copy of it."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Sleeps
from tests.s3server import (  # noqa: F401  (fixtures)
    Bucket,
    aio_session_fixture,
    aws_env_fixture,
    bucket_fixture,
    moto_s3_fixture,
)
from tests.standin import StandIn
from tests.test_s3_archive import (
    S3Archive,
    add_tune,
    archived_then_rotted,
    fetch,
    s3_fixture,  # noqa: F401  (the fixture)
    tune_archiver,
)
from tests.test_s3store import PREFIX, opened, sha
from tune_archiver.layout import blob_key
from tune_archiver.store.s3 import aside


def test_two_damaged_copies_set_aside_in_one_second_are_both_kept(
    standin: StandIn, s3: S3Archive
) -> None:
    """Two repairs within one second (a cron's and one by hand) each set a damaged copy
    of one checkpoint aside: both took tmp/damaged/<sha256>-<stamp>, so the second
    copy overwrote the first, bytes a user may want back lost. Each keeps its own name."""
    served, checkpoint, first = archived_then_rotted(standin, s3)
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps(), clock=lambda: now) == 0
    second = bytearray(s3.get(checkpoint["path"]))
    second[2000] ^= 0xFF
    s3.put(checkpoint["path"], bytes(second))
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps(), clock=lambda: now) == 0
    kept = sorted(s3.get(key.split("/", 1)[1]) for key in s3.keys("tmp/damaged/"))
    assert kept == sorted([first, bytes(second)])
    assert s3.get(checkpoint["path"]) == served[checkpoint["url"]]


async def test_a_blob_another_repair_put_back_meanwhile_stays_in_its_place(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two repairs of one bucket (two machines: a bucket has no lock) found a blob's
    whole copy at a wrong place. The first put it back and removed the stray while the
    second had read the stray: the second then moved the good blob aside, found the
    stray gone and stopped, the blob's place empty, the move unsaid: a tune gone
    upstream had it no more. The whole blob set aside goes back to its place."""
    data = os.urandom(60_000)
    stray = f"objects/sha256/zz/{sha(data)}"
    await bucket.put(f"{PREFIX}/{stray}", data)
    real = aside.set_aside

    async def the_other_first(*args: object) -> list[str]:
        monkeypatch.setattr(aside, "set_aside", real)
        async with opened(bucket, tmp_path) as other:
            assert await other.put_back(sha(data), stray, "20261201T000000Z") == []
        return await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(aside, "set_aside", the_other_first)
    async with opened(bucket, tmp_path) as store:
        assert await store.put_back(sha(data), stray, "20261201T000000Z") is None
    assert await bucket.get(f"{PREFIX}/{blob_key(sha(data))}") == data
    assert await bucket.keys(f"{PREFIX}/tmp/damaged/") == []


@pytest.mark.parametrize("store", ["honours", "ignores"])
def test_two_damaged_manifests_set_aside_in_one_second_are_both_kept(
    standin: StandIn, s3: S3Archive, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], store: str,
) -> None:
    """Two fetches within one second each set a damaged manifest of tune 1 aside: both
    took manifests/damaged/1-<stamp>.json. A store that honours If-None-Match refused
    the second ('exists already'), the tune not fetched for nothing; one that ignores it
    (older MinIO, some Ceph) wrote it over the first, the evidence lost. Each keeps
    its own name."""
    if store == "ignores":
        async def ignoring(bucket: Bucket, key: str, doing: str, put: Any) -> None:
            await put()  # as such a store takes PUT If-None-Match: written over

        monkeypatch.setattr(aside.conditions, "put_new", ignoring)
    add_tune(standin, 1)
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    damaged = [b'{"schema_version": 1, "tune_id": 1, "assets": 5}',
               b'{"schema_version": 1, "tune_id": 1, "assets": 6}']
    for data in damaged:
        s3.put("manifests/1.json", data)
        capsys.readouterr()
        assert fetch(standin, s3, "1", clock=lambda: now) == 1
        assert "set aside as manifests/damaged/1-" in capsys.readouterr().err
    kept = sorted(s3.get(key.split("/", 1)[1]) for key in s3.keys("manifests/damaged/"))
    assert kept == damaged
