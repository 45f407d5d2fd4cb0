"""verify --repair's put-back of a whole blob found at a wrong place, as a hostile world
meets it: two repairs at once, a stray copy that is a hard link to a file outside the
archive or a FIFO, a bucket's copy that fails or races."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.archive_helpers import add_tune, cli
from tests.helpers import Sleeps, blob_file, run_fetch, sha256
from tests.s3server import (  # noqa: F401  (fixtures)
    Bucket,
    MotoS3,
    aio_session_fixture,
    aws_env_fixture,
    bucket_fixture,
    moto_s3_fixture,
)
from tests.standin import StandIn
from tests.test_honest import EXPIRED, NOW, gone_upstream, misplace
from tests.test_ping import Monitor, monitor  # noqa: F401  (fixture)
from tune_archiver.commands.repair import repair
from tune_archiver.commands.verify import verify
from tune_archiver.config import RetryPolicy, Settings
from tune_archiver.download.staging import staging_for
from tune_archiver.errors import StorageError
from tune_archiver.layout import blob_key
from tune_archiver.progress import NullProgress
from tune_archiver.store import aside
from tune_archiver.store.local import LocalStore
from tune_archiver.store.s3.store import MIN_PART, S3Store

# -- put_back: two repairs at once ---------------------------------------------------------


def test_a_second_repair_at_once_never_moves_aside_the_blob_the_first_put_back(
    standin: StandIn, tmp_path: Path
) -> None:
    """Two `verify --repair` runs both verify (the blob is whole under objects/sha256/zz/,
    nothing at its place) before either repairs. The first puts it back; the second
    finds the stray copy gone, so its put_back says None and it sets aside the blob's
    place: the whole blob the first just put back, for a tune gone upstream that can
    never be fetched again. The archive was left NOT whole."""
    archive = tmp_path / "archive"
    served = add_tune(standin, 1, expires_at=EXPIRED)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW - timedelta(days=20)) == 0
    image = served.images[0]
    misplace(archive, image)
    gone_upstream(standin)
    settings = Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                        retry=RetryPolicy(sleep=Sleeps()))

    async def twice() -> tuple[bool, bool]:
        store = LocalStore(archive)
        found = await verify(store, [], NullProgress())  # both runs' verify, before either
        staging = staging_for(archive)
        first = await repair(store, found, settings, staging, NullProgress(), lambda: NOW)
        second = await repair(store, found, settings, staging, NullProgress(),
                              lambda: NOW + timedelta(seconds=1))
        return first.ok, second.ok

    assert asyncio.run(twice()) == (True, True)
    assert blob_file(archive, image).read_bytes() == image
    assert not (archive / "tmp" / "damaged").exists() or not any(
        (archive / "tmp" / "damaged").iterdir())


# -- put_back: what it must never touch ----------------------------------------------------


def test_put_back_never_changes_a_file_outside_the_archive(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stray copy is a hard link to a file of the user's outside the archive (0644):
    put_back fchmod-ed that file to 0400 and renamed the link into the blob's place, so
    the blob shared its inode with a name outside the archive, one chmod from editable."""
    archive = tmp_path / "archive"
    served = add_tune(standin, 1, expires_at=EXPIRED)
    assert run_fetch(standin, archive, "1", clock=lambda: NOW - timedelta(days=20)) == 0
    image = served.images[0]
    outside = tmp_path / "holiday.jpg"
    outside.write_bytes(image)
    outside.chmod(0o644)
    stray = archive / "objects" / "sha256" / "zz" / sha256(image)
    stray.parent.mkdir()
    os.link(outside, stray)
    blob_file(archive, image).unlink()
    gone_upstream(standin)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive), "--json",
              "--api-url", standin.api_url, now=NOW)
    assert ran.code == 0, ran.err
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644
    placed = blob_file(archive, image)
    assert placed.read_bytes() == image
    assert not os.path.samefile(placed, outside)
    assert stat.S_IMODE(placed.stat().st_mode) == 0o400


def test_put_back_never_renames_a_file_put_at_the_stray_name_after_it_was_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stray copy is hashed through its open descriptor but renamed by its name: a
    file put at that name meanwhile (other bytes) was renamed into the blob's place.
    Now the name must still be the file hashed: nothing is moved, and both stay."""
    archive = tmp_path / "archive"
    (archive / "manifests").mkdir(parents=True)
    whole = os.urandom(5_000)
    sha = sha256(whole)
    stray = archive / "objects" / "sha256" / "zz" / sha
    stray.parent.mkdir(parents=True)
    stray.write_bytes(whole)
    other = os.urandom(5_000)
    digest = aside.hashlib.file_digest

    def swapped_after(file: Any, name: str) -> Any:
        found = digest(file, name)
        (stray.parent / "other").write_bytes(other)
        (stray.parent / "other").rename(stray)  # another file takes the name
        return found

    monkeypatch.setattr(aside.hashlib, "file_digest", swapped_after)
    store = LocalStore(archive)
    assert asyncio.run(store.put_back(sha, f"objects/sha256/zz/{sha}", "20261210T120000Z")) \
        is None
    assert stray.read_bytes() == other
    assert not (archive / blob_key(sha)).exists()
    assert sorted(p.name for p in (archive / blob_key(sha)).parent.iterdir()) == []


def test_a_put_back_that_fails_leaves_no_copy_among_the_blobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stray copy is a hard link (so copied, not renamed), and the damaged folder is
    a link planted at tmp/damaged, so setting aside what sits at the blob's place is
    refused: the copy made for the put-back stayed in the blob's fan-out folder, a
    file under objects/ no gc or later run removes (one that repairs it once the link
    is gone does; one whose blob came back whole another way never does). Now a put-
    back that fails removes its copy: said, and nothing of it left."""
    archive = tmp_path / "archive"
    (archive / "manifests").mkdir(parents=True)
    (archive / "tmp").mkdir()
    whole = os.urandom(5_000)
    sha = sha256(whole)
    outside = tmp_path / "holiday.jpg"
    outside.write_bytes(whole)
    stray = archive / "objects" / "sha256" / "zz" / sha
    stray.parent.mkdir(parents=True)
    os.link(outside, stray)
    (tmp_path / "elsewhere").mkdir()
    (archive / "tmp" / "damaged").symlink_to(tmp_path / "elsewhere")
    store = LocalStore(archive)
    with pytest.raises(StorageError, match="never followed"):
        asyncio.run(store.put_back(sha, f"objects/sha256/zz/{sha}", "20261210T120000Z"))
    assert sorted(p.name for p in (archive / blob_key(sha)).parent.iterdir()) == []
    assert stray.read_bytes() == whole
    assert list((tmp_path / "elsewhere").iterdir()) == []

def test_put_back_never_waits_on_a_fifo_at_the_stray_place(tmp_path: Path) -> None:
    """A FIFO put at the stray copy's name (after the walk listed a file there) is opened
    O_RDONLY without O_NONBLOCK: the repair waited forever for a writer."""
    archive = tmp_path / "archive"
    (archive / "manifests").mkdir(parents=True)
    sha = "ab" * 32
    stray = archive / "objects" / "sha256" / "zz" / sha
    stray.parent.mkdir(parents=True)
    os.mkfifo(stray)
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(asyncio.run(LocalStore(archive).put_back(
                sha, f"objects/sha256/zz/{sha}", "20261210T120000Z")))
        except BaseException as exc:
            result.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=20)  # a bound on a hang, not a wait for something to happen
    hung = worker.is_alive()
    if hung:  # let it go: a writer opens and closes the FIFO
        os.close(os.open(stray, os.O_WRONLY))
        worker.join()
    assert not hung
    assert result == [None]
    assert not blob_file(archive, b"").exists()


def stray_of(sha: str) -> str:
    """The wrong place (fan-out folder zz/) where the tests put a blob's copy."""
    return f"objects/sha256/zz/{sha}"


@contextlib.asynccontextmanager
async def holding_a_stray(bucket: Bucket, data: bytes, **options: int) -> AsyncIterator[S3Store]:
    """An S3 archive under arch/ holding `data` at the wrong place only."""
    store = S3Store(f"s3://{bucket.name}/arch", bucket.endpoint, attempts=1,
                    session=bucket.session, **options)
    async with store:
        await store.prepare()
        await bucket.put(f"arch/{stray_of(sha256(data))}", data)
        yield store


async def test_put_back_on_a_bucket_says_a_failed_copy_as_one_storage_error(
    bucket: Bucket,
) -> None:
    """The copy into the blob's place fails (the stray object deleted meanwhile by another
    repair, or the endpoint refusing): copy(check=True) calls copy_object outside
    bucket.translated, so botocore's ClientError came out of put_back as it is, not a
    StorageError: a traceback where the promise is one line."""
    data = os.urandom(7000)
    sha = sha256(data)
    async with holding_a_stray(bucket, data) as store:
        client = store.bucket.client
        real = client.copy_object

        async def gone_first(**kwargs: Any) -> Any:
            if kwargs["Key"].endswith(blob_key(sha)):
                await client.delete_object(Bucket=bucket.name, Key=f"arch/{stray_of(sha)}")
            return await real(**kwargs)

        client.copy_object = gone_first  # type: ignore[method-assign]
        assert await store.put_back(sha, stray_of(sha), "20261210T120000Z") is None


async def test_put_back_of_a_large_object_checks_what_the_copy_put_in_place(
    bucket: Bucket,
) -> None:
    """An object past copy_limit is copied part by part, unchecked: when the stray object
    is replaced between the hash and the copy, other bytes land under the blob's name
    (and the stray object is deleted). The copy is taken away, and said."""
    data = os.urandom(MIN_PART + 1000)
    other = os.urandom(len(data))
    sha = sha256(data)
    async with holding_a_stray(bucket, data, part_size=MIN_PART,
                               copy_limit=MIN_PART) as store:
        client = store.bucket.client
        real = client.create_multipart_upload

        async def replaced_first(**kwargs: Any) -> Any:
            await bucket.put(f"arch/{stray_of(sha)}", other)
            return await real(**kwargs)

        client.create_multipart_upload = replaced_first  # type: ignore[method-assign]
        with pytest.raises(StorageError, match="is not its bytes"):
            await store.put_back(sha, stray_of(sha), "20261210T120000Z")
        assert await store.hash_blob(sha, lambda n: None) is None
    assert await bucket.get(f"arch/{stray_of(sha)}") == other


async def test_setting_aside_a_large_object_the_bucket_refuses_is_one_storage_error(
    bucket: Bucket,
) -> None:
    """An object past copy_limit is set aside part by part (UploadPartCopy), outside
    bucket.translated: when its source is gone meanwhile (another repair set it aside
    first) botocore's ClientError came out of set_aside_blob as it is, a traceback where
    the promise is one line; the copy's upload is aborted and the object left alone."""
    data = os.urandom(MIN_PART + 1000)
    sha = sha256(data)
    store = S3Store(f"s3://{bucket.name}/arch", bucket.endpoint, attempts=1,
                    session=bucket.session, part_size=MIN_PART, copy_limit=MIN_PART)
    async with store:
        await bucket.put(f"arch/{blob_key(sha)}", data)
        client = store.bucket.client
        real = client.upload_part_copy

        async def gone_first(**kwargs: Any) -> Any:
            await client.delete_object(Bucket=bucket.name, Key=f"arch/{blob_key(sha)}")
            return await real(**kwargs)

        client.upload_part_copy = gone_first  # type: ignore[method-assign]
        with pytest.raises(StorageError, match="cannot set a damaged blob aside in ") as caught:
            await store.set_aside_blob(sha, "20261210T120000Z", None)
    assert "\n" not in str(caught.value)
    assert await bucket.uploads() == []
    assert await bucket.keys("arch/tmp/") == []


def test_the_copy_a_repair_killed_while_putting_back_left_goes_with_gc_after_a_day(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SIGKILL met verify --repair while it copied a stray hard link for its put-back:
    the 0400 copy of the photo, .<sha256>.put-back in the blob's fan-out folder, stayed
    for good (only a repair of that very blob removed it; gc listed nothing). gc now
    removes it once a day old, under its exclusive lock, never a fresh one nor a link
    planted under that name."""
    archive = tmp_path / "archive"
    (archive / "manifests").mkdir(parents=True)
    (archive / "tmp").mkdir()
    whole = os.urandom(50_000)
    sha = sha256(whole)
    (tmp_path / "holiday.jpg").write_bytes(whole)
    stray = archive / "objects" / "sha256" / "zz" / sha
    stray.parent.mkdir(parents=True)
    os.link(tmp_path / "holiday.jpg", stray)
    killed = subprocess.run([sys.executable, "-c", _KILLED_PUTTING_BACK, str(archive), sha],
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = archive / "objects" / "sha256" / sha[:2] / f".{sha}.put-back"
    assert left.read_bytes() == whole
    fresh = left.with_name(f".{'e' * 64}.put-back")
    fresh.write_bytes(b"a copy under way")
    planted = left.with_name(f".{'f' * 64}.put-back")
    planted.symlink_to(tmp_path / "holiday.jpg")
    old = time.time() - 2 * 86400
    os.utime(left, (old, old))
    os.utime(planted, (old, old), follow_symlinks=False)
    listed = [{"path": f"objects/sha256/{sha[:2]}/.{sha}.put-back", "bytes": len(whole)}]
    ran = cli(capsys, "gc", "--dry-run", "--json", "--archive", str(archive))
    assert (ran.code, json.loads(ran.out)["partials"]) == (0, listed), ran.err
    assert left.exists()
    ran = cli(capsys, "gc", "--json", "--archive", str(archive))
    assert (ran.code, json.loads(ran.out)["partials"]) == (0, listed), ran.err
    assert not left.exists()
    assert fresh.exists()
    assert planted.is_symlink()
    assert (tmp_path / "holiday.jpg").read_bytes() == whole
    assert stray.exists()


_KILLED_PUTTING_BACK = """
import asyncio, os, signal, sys
from pathlib import Path
from tune_archiver.store.local import LocalStore

fchmod = os.fchmod
def killed_once_copied(fd, mode):
    fchmod(fd, mode)
    if mode == 0o400:  # the copy made 0400, fsynced next: as a kill there leaves it
        os.kill(os.getpid(), signal.SIGKILL)
os.fchmod = killed_once_copied
archive, sha = Path(sys.argv[1]), sys.argv[2]
asyncio.run(LocalStore(archive).put_back(sha, f"objects/sha256/zz/{sha}", "x"))
"""


def test_a_repair_that_fetches_nothing_needs_no_api_key(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """verify --repair refused with 'no API key', exit 2, before it looked, on an archive
    whose damage it puts back from what is local (a blob in the wrong fan-out folder), or
    with nothing damaged: a repair run by hand off the cron line's environment, or on a
    copy, mended nothing. The key is asked for when a tune is to be fetched again."""
    archive = tmp_path / "archive"
    served = add_tune(standin, 1)
    assert run_fetch(standin, archive, "1") == 0
    monkeypatch.delenv("ASTRIA_API_KEY")
    assert cli(capsys, "verify", "--repair", "--archive", str(archive)).code == 0
    misplace(archive, served.images[0])
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive))
    assert ran.code == 0, ran.err
    assert blob_file(archive, served.images[0]).read_bytes() == served.images[0]
    blob_file(archive, served.images[0]).unlink()
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive))
    assert ran.code == 2
    assert ran.errors[-1] == "tune-archiver: error: no API key: set ASTRIA_API_KEY or pass " \
        "--api-key-file PATH"
