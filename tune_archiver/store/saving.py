"""Copying a blob of a local archive out, for export: linked or copied to a new file,
never through a link, its bytes hashed against its name first. Run in a worker thread
(threads.reading): `step` is called after each chunk read or copied, and a stop raises
there, so a large checkpoint's export gives up at its next chunk."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tune_archiver.errors import IntegrityError, StorageError, not_its_size, storage_error
from tune_archiver.safefs import refuse_past_limit, write_new
from tune_archiver.store.files import READ_BLOCK, check_fan_out, open_regular

FICLONE = 0x40049409  # linux/fs.h: share the source's extents (a reflink)
# A hard link is impossible across filesystems, or where the filesystem refuses it.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})


def save_as(blob: Path, target: Path, hard_link: bool, root: Path, size: int | None,
            step: Callable[[int], None]) -> str:
    try:
        check_fan_out(blob)
        with open_regular(blob) as source:  # a link planted at the blob is never exported
            found = os.fstat(source.fileno()).st_size
            if size is not None and found != size:
                raise not_its_size(blob.name, found, size)
            if not hard_link:  # a copy past the limit would fail there: said before it
                refuse_past_limit(target, found)
            # Rot keeps the size: only the hash tells, before a link or copy hands the
            # bytes over under the file's name (as an S3 archive's export checks them).
            hashing = hashlib.sha256()
            try:  # the archive's disk failing (EIO) is said of the blob, not of `target`
                while chunk := source.read(READ_BLOCK):
                    hashing.update(chunk)
                    step(len(chunk))
            except OSError as exc:
                raise storage_error(exc, root, f"read the blob {blob.name}") from exc
            if (digest := hashing.hexdigest()) != blob.name:
                raise IntegrityError(f"the blob {blob.name} in {root} is corrupt (its bytes "
                                     f"hash to {digest}); nothing was written (repair: "
                                     "verify --repair)")
            if hard_link:
                try:
                    os.link(blob, target, follow_symlinks=False)
                    return "linked"
                except OSError as exc:
                    if exc.errno not in _NO_LINK:
                        raise
                refuse_past_limit(target, found)  # no link here (a USB stick): a copy
            copy_to(source, target, step)
        return "copied"
    except FileExistsError as exc:
        raise StorageError(f"{target} already exists; nothing was overwritten") from exc
    except FileNotFoundError as exc:
        raise StorageError(f"the blob {blob.name} is missing from {root}") from exc
    except OSError as exc:
        raise storage_error(exc, target.parent, f"write {target.name}") from exc


def copy_to(source: BinaryIO, target: Path, step: Callable[[int], None]) -> None:
    """Copy to a new file at `target` (see safefs.write_new). A reflink where the filesystem
    offers one (btrfs, XFS), else copy_file_range (the kernel copies), else read and
    write."""
    write_new(target, lambda out: _copy_bytes(source.fileno(), out.fileno(), step))


def _copy_bytes(source: int, out: int, step: Callable[[int], None]) -> None:
    try:
        fcntl.ioctl(out, FICLONE, source)
        return
    except OSError:
        pass  # not offered here: the bytes are copied
    size = os.fstat(source).st_size
    copied = 0
    try:
        while copied < size:
            # A chunk at a time, so a stop is seen between them (each up to 64 MiB).
            done = os.copy_file_range(source, out, min(size - copied, 16 * READ_BLOCK),
                                      copied, copied)
            if done == 0:
                break
            copied += done
            step(done)
        if copied == size:
            return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.ftruncate(out, 0)
    copied = 0
    while chunk := os.pread(source, READ_BLOCK, copied):
        done = os.pwrite(out, chunk, copied)  # a full disk's may store part, no error
        copied += done
        step(done)
