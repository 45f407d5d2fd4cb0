"""update_manifest: read, change and write one tune's manifest as one step, so a second
writer never loses the first one's entries; set_aside_manifest keeps a damaged one."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from tests.s3server import (  # noqa: F401  (fixtures)
    Bucket,
    aio_session_fixture,
    aws_env_fixture,
    bucket_fixture,
    moto_s3_fixture,
)
from tests.test_gc import FlockSpy
from tests.test_s3store import PREFIX, opened
from tune_archiver.errors import StorageError
from tune_archiver.store import Change, locks
from tune_archiver.store.local import LocalStore
from tune_archiver.store.locks import flocked


def appending(entry: bytes, seen: list[bytes | None]) -> Change:
    """A change that records what it was given and appends one line to it."""

    async def change(current: bytes | None) -> bytes:
        seen.append(current)
        return (current or b"") + entry + b"\n"

    return change


async def test_local_updates_of_one_tune_wait_for_each_other(tmp_path: Path) -> None:
    """While one update holds the tune's lock, the other waits, then builds on its write."""
    store = LocalStore(tmp_path / "archive")
    await store.prepare()
    inside, release = asyncio.Event(), asyncio.Event()
    seen: list[bytes | None] = []

    async def slow(current: bytes | None) -> bytes:
        inside.set()
        await release.wait()
        seen.append(current)
        return b"first\n"

    first = asyncio.create_task(store.update_manifest(7, slow))
    await inside.wait()
    second = asyncio.create_task(store.update_manifest(7, appending(b"second", seen)))
    release.set()
    assert await first == "manifests/7.json"
    assert await second == "manifests/7.json"
    assert seen == [None, b"first\n"]
    assert (tmp_path / "archive" / "manifests" / "7.json").read_bytes() == b"first\nsecond\n"


async def test_a_failed_change_writes_nothing(tmp_path: Path) -> None:
    """A change that raises leaves the manifest as it was, and the lock free for the next."""
    store = LocalStore(tmp_path / "archive")
    await store.prepare()
    await store.write_manifest(3, b"kept\n")

    async def broken(current: bytes | None) -> bytes:
        raise StorageError("no")

    with pytest.raises(StorageError):
        await store.update_manifest(3, broken)
    assert await store.read_manifest(3) == b"kept\n"
    await store.update_manifest(3, appending(b"more", []))
    assert await store.read_manifest(3) == b"kept\nmore\n"


async def test_local_set_aside_moves_and_never_overwrites(tmp_path: Path) -> None:
    """A damaged manifest moves to manifests/damaged/; a second one of the same name fails."""
    store = LocalStore(tmp_path / "archive")
    await store.prepare()
    await store.write_manifest(4, b"{broken")
    key = await store.set_aside_manifest(4, "20261129T000000Z", b"{broken")
    assert key == "manifests/damaged/4-20261129T000000Z.json"
    assert await store.read_manifest(4) is None
    assert await store.damaged_manifests() == [key]
    assert await store.manifest_ids() == []
    await store.write_manifest(4, b"{again")
    with pytest.raises(StorageError):
        await store.set_aside_manifest(4, "20261129T000000Z", b"{again")
    assert (tmp_path / "archive" / key).read_bytes() == b"{broken"
    assert await store.read_manifest(4) == b"{again"


async def test_local_set_aside_leaves_a_manifest_replaced_since(tmp_path: Path) -> None:
    """Another run set the damaged manifest aside and wrote a good one since: setting
    aside the damaged bytes this run read moves nothing, and the good one stays (it was
    moved aside in their place)."""
    store = LocalStore(tmp_path / "archive")
    await store.prepare()
    await store.write_manifest(4, b"good\n")
    assert await store.set_aside_manifest(4, "20261129T000000Z", b"{broken") is None
    assert await store.read_manifest(4) == b"good\n"
    assert await store.damaged_manifests() == []


async def test_local_set_aside_where_the_disk_has_no_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a filesystem without hard links (exFAT, FAT mounted quiet, some FUSE ones:
    link says EPERM) a damaged manifest is still set aside, never over another: else
    every fetch of the tune failed for good, 'it could not be set aside', exit 1."""
    store = LocalStore(tmp_path / "archive")
    await store.prepare()

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_link)
    await store.write_manifest(4, b"{broken")
    key = await store.set_aside_manifest(4, "20261129T000000Z", b"{broken")
    assert key == "manifests/damaged/4-20261129T000000Z.json"
    assert await store.read_manifest(4) is None
    assert (tmp_path / "archive" / key).read_bytes() == b"{broken"
    await store.write_manifest(4, b"{again")
    with pytest.raises(StorageError):
        await store.set_aside_manifest(4, "20261129T000000Z", b"{again")
    assert (tmp_path / "archive" / key).read_bytes() == b"{broken"
    assert await store.read_manifest(4) == b"{again"


async def test_local_set_aside_that_fails_leaves_no_empty_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without hard links the name in manifests/damaged/ is claimed before the rename;
    a rename that fails (EIO, the stick pulled out) takes the claim back: an empty file
    left there was a manifest 'a fetch set aside' to verify, and gc refused to run while
    it was kept, though the damaged manifest never moved."""
    store = LocalStore(tmp_path / "archive")
    await store.prepare()

    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "link", refused)
    monkeypatch.setattr(os, "rename", broken)
    await store.write_manifest(4, b"{broken")
    with pytest.raises(StorageError):
        await store.set_aside_manifest(4, "20261129T000000Z", b"{broken")
    assert await store.read_manifest(4) == b"{broken"
    assert await store.damaged_manifests() == []


async def test_s3_update_retries_when_another_machine_wrote_in_between(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A conditional PUT that loses (412) reads again and changes what the other wrote."""
    seen: list[bytes | None] = []
    async with opened(bucket, tmp_path) as store:
        await store.write_manifest(9, b"base\n")

        async def racing(current: bytes | None) -> bytes:
            seen.append(current)
            if len(seen) == 1:  # another machine writes between our read and our write
                await bucket.put(f"{PREFIX}/manifests/9.json", b"base\nother\n")
            return (current or b"") + b"ours\n"

        assert await store.update_manifest(9, racing) == "manifests/9.json"
        assert await store.read_manifest(9) == b"base\nother\nours\n"
    assert seen == [b"base\n", b"base\nother\n"]


async def test_s3_update_creates_only_when_there_is_none(bucket: Bucket, tmp_path: Path) -> None:
    """With no manifest yet the PUT is If-None-Match: one created meanwhile is not replaced."""
    seen: list[bytes | None] = []
    async with opened(bucket, tmp_path) as store:

        async def racing(current: bytes | None) -> bytes:
            seen.append(current)
            if len(seen) == 1:
                await bucket.put(f"{PREFIX}/manifests/5.json", b"theirs\n")
            return (current or b"") + b"ours\n"

        await store.update_manifest(5, racing)
        assert await store.read_manifest(5) == b"theirs\nours\n"


async def test_s3_update_writes_anew_when_the_manifest_was_removed_in_between(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A manifest removed between our read and our If-Match PUT (forget, or a set-aside,
    on another machine; S3 answers 404) is a lost race like a 412: read again, and write
    what the change makes of no manifest, rather than fail the tune with "not found"."""
    seen: list[bytes | None] = []
    async with opened(bucket, tmp_path) as store:
        await store.write_manifest(8, b"base\n")

        async def racing(current: bytes | None) -> bytes:
            seen.append(current)
            if len(seen) == 1:
                await bucket.client.delete_object(
                    Bucket=bucket.name, Key=f"{PREFIX}/manifests/8.json")
            return (current or b"") + b"ours\n"

        assert await store.update_manifest(8, racing) == "manifests/8.json"
        assert await store.read_manifest(8) == b"ours\n"
    assert seen == [b"base\n", None]


async def test_s3_set_aside_keeps_the_damaged_manifest(bucket: Bucket, tmp_path: Path) -> None:
    """The damaged bytes go to manifests/damaged/ and the manifest's key is freed."""
    async with opened(bucket, tmp_path) as store:
        await store.write_manifest(6, b"{broken")
        key = await store.set_aside_manifest(6, "20261129T000000Z", b"{broken")
        assert await store.read_manifest(6) is None
        assert await store.damaged_manifests() == [key]
        assert await store.manifest_ids() == []
    assert await bucket.get(f"{PREFIX}/{key}") == b"{broken"


async def test_s3_set_aside_leaves_a_manifest_replaced_since(
    bucket: Bucket, tmp_path: Path
) -> None:
    """As for a local archive: a good manifest written by another machine since the
    damaged bytes were read is neither moved nor deleted (it was deleted, and only the
    damaged bytes kept)."""
    async with opened(bucket, tmp_path) as store:
        await store.write_manifest(6, b"good\n")
        assert await store.set_aside_manifest(6, "20261129T000000Z", b"{broken") is None
        assert await store.read_manifest(6) == b"good\n"
        assert await store.damaged_manifests() == []


async def test_s3_set_aside_leaves_a_manifest_written_while_it_copied(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another machine sets the damaged manifest aside and writes a good one while this
    one copies the damaged bytes to manifests/damaged/: the manifest's ETag, read again
    before the delete, has changed, so the good one stays and the copy is withdrawn."""
    async with opened(bucket, tmp_path) as store:
        await store.write_manifest(7, b"{broken")
        put = store._put

        async def racing(key: str, data: bytes, doing: str, **condition: str) -> None:
            await put(key, data, doing, **condition)
            if key.startswith("manifests/damaged/"):
                await bucket.put(f"{PREFIX}/manifests/7.json", b"good\n")

        monkeypatch.setattr(store, "_put", racing)
        assert await store.set_aside_manifest(7, "20261129T000000Z", b"{broken") is None
        assert await store.read_manifest(7) == b"good\n"
        assert await store.damaged_manifests() == []


async def test_a_lock_file_removed_by_its_holder_is_never_held_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiter that opened manifests/<id>.lock before its holder removed it and let go
    must not then take the lock on that orphaned file while a newcomer holds the file
    now at that name: it sees the name names another file, and waits on that one."""
    spy = FlockSpy(refusals=1)
    monkeypatch.setattr(locks, "fcntl", spy)
    lock = tmp_path / "7.lock"
    entered = asyncio.Event()

    async def waiter() -> None:
        async with flocked(lock, True, tmp_path, poll=0):
            entered.set()

    async with flocked(lock, True, tmp_path, poll=0):  # the first holder
        waiting = asyncio.create_task(waiter())
        await asyncio.wait_for(spy.enough.wait(), 10)  # it has the old file open
        lock.unlink()  # the holder cleans up, then lets go
    async with flocked(lock, True, tmp_path, poll=0):  # a newcomer makes a new file
        spy.refused, spy.enough = 0, asyncio.Event()
        watches = [asyncio.create_task(entered.wait()), asyncio.create_task(spy.enough.wait())]
        await asyncio.wait(watches, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        for watch in watches:
            watch.cancel()
        assert not entered.is_set(), "two holders of one lock"
        assert spy.enough.is_set()  # refused on the new file
    await asyncio.wait_for(waiting, 10)
    assert entered.is_set()


async def test_an_update_whose_lock_file_was_removed_meanwhile_builds_on_the_other(
    tmp_path: Path,
) -> None:
    """manifests/<id>.lock removed (by a user, a clean-up) while one update holds it lets
    a second update take a new lock file and write: the first one, finding its lock
    file gone, reads and changes the manifest again rather than write over that one."""
    store = LocalStore(tmp_path / "archive")
    await store.prepare()
    inside, go = asyncio.Event(), asyncio.Event()
    seen: list[bytes | None] = []

    async def slow(current: bytes | None) -> bytes:
        seen.append(current)
        if not go.is_set():
            inside.set()
            await go.wait()
        return (current or b"") + b"first\n"

    first = asyncio.create_task(store.update_manifest(7, slow))
    await inside.wait()
    (tmp_path / "archive" / "manifests" / "7.lock").unlink()
    await asyncio.wait_for(store.update_manifest(7, appending(b"second", [])), 10)
    go.set()
    await asyncio.wait_for(first, 10)
    assert await store.read_manifest(7) == b"second\nfirst\n"
    assert seen == [None, b"second\n"]


@pytest.fixture
def conditions_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto as a store that ignores If-Match and If-None-Match on a PUT (older MinIO,
    some Ceph): it writes whatever the condition says, and answers 200."""
    from moto.s3.responses import S3Response
    from werkzeug.datastructures import Headers

    put_object = S3Response.put_object

    def unconditional(self: S3Response) -> Any:
        self.headers = Headers([(name, value) for name, value in self.headers.items()
                                if name.lower() not in ("if-match", "if-none-match")])
        return put_object(self)

    monkeypatch.setattr(S3Response, "put_object", unconditional)


async def test_s3_update_on_a_store_ignoring_conditions_warns_and_reads_its_write_back(
    bucket: Bucket, tmp_path: Path, conditions_ignored: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a store that ignores the conditions, another machine's write just after ours
    (of the manifest it read before ours) replaced ours without a word: our entries
    were dropped, and each run said them archived. The store is asked once whether it
    honours them (a warning says it does not), and each write is read back: one
    replaced meanwhile is done again on what the other wrote."""
    async with opened(bucket, tmp_path) as store:
        await store.write_manifest(9, b"base\n")
        put = store._put
        others: list[bytes] = []

        async def then_another(key: str, data: bytes, doing: str, **condition: str) -> None:
            await put(key, data, doing, **condition)
            if not others:  # another machine writes what it made of "base\n"
                others.append(b"base\nother\n")
                await bucket.put(f"{PREFIX}/{key}", others[0])

        store._put = then_another  # type: ignore[method-assign]
        assert await store.update_manifest(9, appending(b"ours", [])) == "manifests/9.json"
        await store.update_manifest(9, appending(b"more", []))
        assert await store.read_manifest(9) == b"base\nother\nours\nmore\n"
    [warning] = [r.getMessage() for r in caplog.records if "conditional" in r.getMessage()]
    assert warning.startswith(f"warning: s3://{bucket.name}/{PREFIX} ignores conditional")
    assert await bucket.keys(f"{PREFIX}/tmp/") == []


async def test_s3_update_on_a_store_honouring_conditions_says_nothing(
    bucket: Bucket, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The question leaves no key behind, and a store that honours them is not warned of."""
    async with opened(bucket, tmp_path) as store:
        await store.update_manifest(2, appending(b"ours", []))
        assert await store.read_manifest(2) == b"ours\n"
    assert not [r for r in caplog.records if "conditional" in r.getMessage()]
    assert await bucket.keys(f"{PREFIX}/tmp/") == []


async def test_s3_set_aside_keeps_a_manifest_the_bucket_sent_short(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GET of the manifest answered with fewer bytes than the bucket holds (a proxy
    cutting it, Content-Length to match): not JSON, so fetch set it aside as damaged,
    and what went to manifests/damaged/ was the bytes read, the manifest whole in the
    bucket deleted: every entry past the cut lost. Now the manifest's size in the bucket
    (HEAD) must be that of the bytes set aside, else nothing moves."""
    from moto.s3.responses import S3Response

    whole = b'{"tune_id": 6, "assets": ["' + b"x" * 5000 + b'"]}'
    get_object = S3Response.get_object

    def cut_short(self: S3Response, *args: Any, **kwargs: Any) -> Any:
        status, headers, body = get_object(self, *args, **kwargs)
        if self.path.endswith("/manifests/6.json"):
            return status, {**headers, "content-length": "100"}, body[:100]
        return status, headers, body

    async with opened(bucket, tmp_path) as store:
        await store.write_manifest(6, whole)
        monkeypatch.setattr(S3Response, "get_object", cut_short)
        damaged = await store.read_manifest(6)
        assert damaged == whole[:100]
        with pytest.raises(StorageError, match="holds 5030 bytes, 100 were read"):
            await store.set_aside_manifest(6, "20261201T000000Z", damaged)
        assert await store.damaged_manifests() == []
    monkeypatch.undo()
    assert await bucket.get(f"{PREFIX}/manifests/6.json") == whole


@pytest.fixture
def conditions_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto as a store that refuses If-Match and If-None-Match on a PUT, 501 NotImplemented
    (as S3 did until 2024, and stores made after it still do)."""
    from moto.s3.responses import S3Response

    put_object = S3Response.put_object

    def refusing(self: S3Response) -> Any:
        if any(name.lower() in ("if-match", "if-none-match") for name, _ in self.headers.items()):
            return 501, {}, (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>"
                             b"NotImplemented</Code><Message>A header you provided implies "
                             b"functionality that is not implemented</Message></Error>")
        return put_object(self)

    monkeypatch.setattr(S3Response, "put_object", refusing)


async def test_s3_update_on_a_store_refusing_conditions_writes_and_reads_back(
    bucket: Bucket, tmp_path: Path, conditions_refused: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that answers a conditional PUT 501 NotImplemented had every manifest's
    write fail, each run, though the question asked first found it refused: no tune
    was ever archived there. It is warned of as one that refuses them (it was said to
    ignore them, which sends an operator looking for the wrong fault), and written
    without them, each write read back."""
    async with opened(bucket, tmp_path) as store:
        await store.write_manifest(9, b"base\n")
        assert await store.update_manifest(9, appending(b"ours", [])) == "manifests/9.json"
        await store.update_manifest(10, appending(b"new", []))
        assert await store.read_manifest(9) == b"base\nours\n"
        assert await store.read_manifest(10) == b"new\n"
    [warning] = [r.getMessage() for r in caplog.records if "conditional" in r.getMessage()]
    assert f"s3://{bucket.name}/{PREFIX} refuses (501 Not Implemented) conditional" in warning
    assert await bucket.keys(f"{PREFIX}/tmp/") == []


async def test_s3_set_aside_on_a_store_refusing_conditions(
    bucket: Bucket, tmp_path: Path, conditions_refused: None
) -> None:
    """The copy of a damaged manifest to manifests/damaged/ carried If-None-Match, which
    a store refusing conditions answers 501: the manifest was never set aside, and its
    tune's fetch failed on it each run. There it is written without the condition once
    nothing is at that key (looked up first); never over one that is: a second one set
    aside in the same second takes the next name."""
    async with opened(bucket, tmp_path) as store:
        await store.write_manifest(4, b"{broken")
        key = await store.set_aside_manifest(4, "20261129T000000Z", b"{broken")
        assert key == "manifests/damaged/4-20261129T000000Z.json"
        assert await bucket.get(f"{PREFIX}/{key}") == b"{broken"
        assert await store.read_manifest(4) is None
        await store.write_manifest(4, b"{again")
        again = await store.set_aside_manifest(4, "20261129T000000Z", b"{again")
        assert again == "manifests/damaged/4-20261129T000000Z-1.json"
        assert await bucket.get(f"{PREFIX}/{again}") == b"{again"
        assert await bucket.get(f"{PREFIX}/{key}") == b"{broken"
