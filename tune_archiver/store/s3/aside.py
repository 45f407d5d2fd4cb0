"""Damaged blobs and manifests set aside in a bucket, and a misplaced whole blob put back
in its place.

A bucket has no rename: each move is a server-side copy, then a delete.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable

from tune_archiver.errors import StorageError
from tune_archiver.layout import DAMAGED, DAMAGED_BLOBS, blob_key, manifest_key
from tune_archiver.models import Blob
from tune_archiver.store.s3 import conditions
from tune_archiver.store.s3.bucket import Bucket
from tune_archiver.store.s3.errors import Absent, Conflict
from tune_archiver.store.s3.transfer import copy, stream


async def set_aside(bucket: Bucket, sha256: str, keys: list[str], stamp: str) -> list[str]:
    """Copy each object at `keys` (archive-relative) to tmp/damaged/<sha256>-<stamp>[-n]
    (kept by gc; -n when the name is taken), then delete it; returns the new keys."""
    moved: list[str] = []
    taken: set[str] | None = None
    for key in keys:
        found = await bucket.head(bucket.key(key), "set a damaged blob aside")
        if found is None:
            continue
        if (before := await _blob_copied_before(bucket, sha256, key, found[0])) is not None:
            await bucket.delete(bucket.key(key))  # a set-aside killed before its delete
            moved.append(before)
            continue
        # Never over another copy set aside in the same second (two repairs, one
        # after the other): a copy's bytes, the one left of a file gone upstream, lost.
        taken = await _names(bucket, sha256) if taken is None else taken
        target = next(name for n in range(len(taken) + 1)
                      if (name := f"{DAMAGED_BLOBS}/{sha256}-{stamp}"
                          + (f"-{n}" if n else "")) not in taken)
        taken.add(target)
        with bucket.translated("set a damaged blob aside"):  # part by part past copy_limit
            await copy(bucket, bucket.key(key), bucket.key(target), Blob(sha256, found[0]),
                       check=False)
        # A store may answer the copy 200 and store nothing, or other bytes: the delete
        # would lose the damaged bytes, all there is of a file gone upstream.
        copied = await bucket.size_at(bucket.key(target), "check a damaged blob set aside")
        if copied != found[0]:
            if copied is not None:
                await bucket.delete(bucket.key(target))
            raise StorageError(f"cannot set a damaged blob aside in {bucket}: its copy to "
                               f"{target} holds {copied or 0} bytes, not {found[0]}; "
                               f"{key} is kept")
        await bucket.delete(bucket.key(key))
        moved.append(target)
    return moved


async def _names(bucket: Bucket, sha256: str) -> set[str]:
    """The keys in tmp/damaged/ of the copies of the blob `sha256` set aside."""
    return {key async for key, _ in bucket.list(DAMAGED_BLOBS)
            if key.startswith(f"{DAMAGED_BLOBS}/{sha256}-")}


async def _blob_copied_before(bucket: Bucket, sha256: str, key: str, size: int) -> str | None:
    """The key in tmp/damaged/ of a copy of the object at `key`, byte for byte: one a
    set-aside killed between its copy and its delete made (a second copy, of a
    checkpoint of gigabytes, kept for good). Both are read only when sizes match."""
    held: str | None = None
    async for aside_key, item in bucket.list(DAMAGED_BLOBS):
        if aside_key.startswith(f"{DAMAGED_BLOBS}/{sha256}-") and item["Size"] == size:
            held = held or await _digest(bucket, sha256, key)
            if held is not None and await _digest(bucket, sha256, aside_key) == held:
                return aside_key
    return None


async def _digest(bucket: Bucket, sha256: str, key: str) -> str | None:
    """The sha256 of the object at `key` (of the blob `sha256`'s), read; None if gone."""
    digest = hashlib.sha256()
    try:
        await stream(bucket, sha256, "set a damaged blob aside", digest.update,
                     lambda n: None, key=key)
    except Absent:
        return None
    return digest.hexdigest()


async def put_back(bucket: Bucket, sha256: str, key: str, stamp: str) -> list[str] | None:
    """Copy the object at the wrong place `key` to the blob's place if its bytes hash to
    its name, whatever sat there first set aside; then delete it. Returns what was set
    aside; None, nothing moved, when the object is gone or not whole. StorageError, the
    object kept, when its copy at the blob's place does not read back as its bytes."""
    digest = hashlib.sha256()
    try:
        size = await stream(bucket, sha256, "put a misplaced blob back", digest.update,
                            lambda n: None, key=key)
    except Absent:
        return None
    if digest.hexdigest() != sha256:
        # Sent short on its way (a proxy), not the object, when the bucket holds another
        # size: moved aside, the one whole copy of a file gone upstream would be lost.
        held = await bucket.size_at(bucket.key(key), "look up a misplaced blob")
        if held not in (None, size):
            raise StorageError(f"cannot read a misplaced blob in {bucket}: {key} holds "
                               f"{held} bytes; {size} were sent; not moved aside: it may "
                               "be whole, and is read again by the next verify")
        return None
    moved = await set_aside(bucket, sha256, [blob_key(sha256)], stamp)
    try:
        with bucket.translated("put a misplaced blob back"):  # one line, never botocore's
            await copy(bucket, bucket.key(key), bucket.key(blob_key(sha256)),
                       Blob(sha256, size))
    except Absent:  # gone meanwhile (another repair put it back): nothing copied
        await _restore(bucket, sha256, moved)
        return None
    # Read back at any size: part by part S3 hashes no copy, and a store that hashes
    # none (it reports no SHA-256) may have stored other bytes; the stray is the one left.
    again = hashlib.sha256()
    with contextlib.suppress(Absent):
        await stream(bucket, sha256, "check a blob put back", again.update, lambda n: None)
    if again.hexdigest() != sha256:  # not what was hashed (or changed since):
        await bucket.delete(bucket.key(blob_key(sha256)))  # a copy of what stays there
        raise StorageError(f"cannot put a misplaced blob back in {bucket}: its copy to "
                           f"{blob_key(sha256)} is not its bytes; {key} is kept")
    await bucket.delete(bucket.key(key))
    return moved


async def _restore(bucket: Bucket, sha256: str, moved: list[str]) -> None:
    """Copy back to the blob's place, while it is empty, a copy in `moved` whose bytes
    hash to its name, then delete that copy: another repair (a bucket has no lock) put
    the blob back and removed its stray after this one read the stray, and the whole
    blob this one set aside would leave its place empty, moved unsaid."""
    place = bucket.key(blob_key(sha256))
    for key in moved:
        if await bucket.size_at(place, "put a blob back") is not None:
            return
        size = await bucket.size_at(bucket.key(key), "put a blob back")
        if size is None or await _digest(bucket, sha256, key) != sha256:
            continue
        with bucket.translated("put a blob back"):
            await copy(bucket, bucket.key(key), place, Blob(sha256, size))
        if await _digest(bucket, sha256, blob_key(sha256)) == sha256:
            await bucket.delete(bucket.key(key))
            return


Read = Callable[[str, str], Awaitable[tuple[bytes, str] | None]]  # (bytes, ETag) or None
Put = Callable[..., Awaitable[None]]  # (key, data, doing, **condition)


async def manifest_aside(bucket: Bucket, tune_id: int, stamp: str, damaged: bytes,
                         read: Read, put: Put) -> str | None:
    """Copy the tune's manifest to manifests/damaged/<id>-<stamp>[-n].json (never over
    another), then delete it, if it still holds `damaged`; returns where it went, None
    when it holds other bytes now or is gone. A copy of those very bytes already there
    is a set-aside killed before its delete: that one is kept, and the delete alone is
    done (a second copy set it aside twice). With no conditional delete, the manifest's
    ETag is read again just before: a good one written meanwhile by another machine
    stays, and a copy this call made is withdrawn."""
    doing, source = "set a damaged manifest aside", manifest_key(tune_id)
    found = await read(source, doing)
    if found is None or found[0] != damaged:
        return None
    # Bytes cut short on their way (a proxy) are no manifest's whole: the bucket's stays.
    held = await bucket.size_at(bucket.key(source), doing)
    if held not in (None, len(damaged)):
        raise StorageError(f"cannot {doing} in {bucket}: manifests/{tune_id}.json holds "
                           f"{held} bytes, {len(damaged)} were read; nothing moved")
    key = await _copied_before(bucket, tune_id, damaged, read, doing)
    made = key is None
    if key is None:  # -n when taken (another set aside in the same second): a store
        # ignoring If-None-Match would write over it, one honouring it refuse the move
        taken = {name async for name, _ in bucket.list(DAMAGED)}
        key = next(name for n in range(len(taken) + 1)
                   if (name := f"{DAMAGED}/{tune_id}-{stamp}{f'-{n}' if n else ''}.json")
                   not in taken)
        try:
            await conditions.put_new(bucket, key, doing,
                                     lambda **c: put(key, found[0], doing, **c))
        except Conflict as exc:
            raise StorageError(f"{key} exists already in {bucket}; nothing moved") from exc
    again = await read(source, doing)
    if again is None or again[1] != found[1]:  # set aside and replaced meanwhile
        if made:
            await bucket.delete(bucket.key(key))
        return None
    await bucket.delete(bucket.key(source))
    return key


async def _copied_before(bucket: Bucket, tune_id: int, damaged: bytes, read: Read,
                         doing: str) -> str | None:
    """The key in manifests/damaged/ of the tune's that holds `damaged`, byte for byte."""
    async for key, item in bucket.list(DAMAGED):
        if key.startswith(f"{DAMAGED}/{tune_id}-") and item["Size"] == len(damaged):
            copy = await read(key, doing)
            if copy is not None and copy[0] == damaged:
                return key
    return None
