"""Setting damaged things aside in a local archive, never through a planted link.

verify --repair moves a damaged blob to tmp/damaged/, and a fetch moves an unreadable
manifest to manifests/damaged/. A link planted at either folder (or on the way to it)
would carry a person's photo out of the archive, so every folder on the way is opened
with O_NOFOLLOW and the rename or link is made relative to those descriptors: what is
checked is what is used. Blocking; run in worker threads (in_thread).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
from datetime import datetime
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

from tune_archiver.errors import NotAFile
from tune_archiver.layout import OBJECTS
from tune_archiver.safefs import (
    BLOB_MODE,
    NO_HARD_LINKS,
    NOFOLLOW,
    PRIVATE_DIR,
    PRIVATE_FILE,
    exists_at,
)

_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOT_A_FOLDER = frozenset({errno.ELOOP, errno.ENOTDIR})
MAX_NAMES = 1000  # <name>-1 ... : never over another file set aside
_COPY = re.compile(r"\.[0-9a-f]{64}\.put-back")  # _copied's name


def open_folder(root: Path, key: str, create: bool) -> int | None:
    """A descriptor of the folder at the archive-relative `key`, each part of it opened
    without following a link (the root itself may be one); a missing part is made 0700
    when `create`, else None is returned. Raises NotAFile naming the first part that
    is a link or not a folder, OSError as the calls do."""
    fd = os.open(root, _FOLDER)
    try:
        for depth, part in enumerate(parts := key.split("/")):
            child = _open_part(fd, part, "/".join(parts[: depth + 1]), create)
            if child is None:
                os.close(fd)
                return None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_part(parent: int, name: str, shown: str, create: bool) -> int | None:
    made = False
    try:
        try:
            fd = os.open(name, _FOLDER | os.O_NOFOLLOW, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
            try:
                os.mkdir(name, PRIVATE_DIR, dir_fd=parent)
                made = True
            except FileExistsError:
                pass  # made meanwhile by another process (or planted: opened below)
            fd = os.open(name, _FOLDER | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as exc:
        if exc.errno in _NOT_A_FOLDER:
            raise NotAFile(f"{shown} is a symbolic link or not a folder") from exc
        raise
    if made:
        try:
            os.fchmod(fd, PRIVATE_DIR)  # the umask may have widened it
            # Its name made durable: a blob put back or set aside into it may be the only
            # copy (once per folder: a few hundred fan-out folders in an archive's life).
            os.fsync(parent)
        except BaseException:
            os.close(fd)
            raise
    return fd


def move_blobs_aside(root: Path, keys: list[str], folder: str, name: str) -> list[str]:
    """Rename each file at `keys` (a link or a FIFO as it is, never followed) to
    `folder`/`name` (`name`-1, ... when taken); returns the new keys."""
    moved = []
    target = open_folder(root, folder, create=True)
    assert target is not None  # made when missing
    try:
        for key in keys:
            where, _, file = key.rpartition("/")
            source = open_folder(root, where, create=False)
            if source is None:
                continue
            try:
                if not exists_at(source, file):
                    continue
                new = name
                for n in range(1, MAX_NAMES):
                    if not exists_at(target, new):
                        break
                    new = f"{name}-{n}"
                os.rename(file, new, src_dir_fd=source, dst_dir_fd=target)
            finally:
                os.close(source)
            moved.append(f"{folder}/{new}")
        os.fsync(target)
    finally:
        os.close(target)
    return moved


def put_back(root: Path, key: str, blob: str, sha256: str, folder: str,
             name: str) -> list[str] | None:
    """Rename the file at the wrong place `key` to the blob's place `blob` if its bytes
    hash to `sha256`, whatever sat there first moved to `folder`/`name` (as
    move_blobs_aside moves it); returns where that went. None, nothing moved, when the
    file is gone, not a regular file (never followed, a FIFO never waited on) or not
    whole. A file with another name (a hard link to one outside the archive) or of
    another user is never renamed nor chmod-ed: its bytes are copied, and its name here
    removed."""
    where, _, file = key.rpartition("/")
    source = open_folder(root, where, create=False)
    if source is None:
        return None
    try:
        try:
            fd = os.open(file, os.O_RDONLY | NOFOLLOW | os.O_NONBLOCK, dir_fd=source)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, *_NOT_A_FOLDER):  # gone, or a planted link
                return None
            raise
        with os.fdopen(fd, "rb") as found:
            held = os.fstat(fd)
            if not S_ISREG(held.st_mode):
                return None
            if hashlib.file_digest(found, "sha256").hexdigest() != sha256:
                return None
            own = held.st_nlink == 1 and held.st_uid == os.geteuid()
            place, _, placed = blob.rpartition("/")
            into = open_folder(root, place, create=True)
            assert into is not None  # made when missing
            temporary: str | None = None
            try:
                temporary = None if own else _copied(found, into, sha256)
                if not own and temporary is None:
                    return None  # changed since it was hashed
                if own:
                    os.fchmod(fd, BLOB_MODE)
                    os.fsync(fd)
                if not _still_named(file, source, held):  # another file took the name
                    if temporary is not None:  # since: renamed or removed, it would go
                        os.unlink(temporary, dir_fd=into)
                    return None
                moved = move_blobs_aside(root, [blob], folder, name)
                if temporary is None:
                    os.rename(file, placed, src_dir_fd=source, dst_dir_fd=into)
                else:
                    os.rename(temporary, placed, src_dir_fd=into, dst_dir_fd=into)
                    os.unlink(file, dir_fd=source)  # a name only: the file outside stays
                os.fsync(into)
            except BaseException:
                # A copy not renamed into place (setting aside refused, EIO) is no blob:
                # left beside the blobs, no gc nor later run would remove it.
                if temporary is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(temporary, dir_fd=into)
                raise
            finally:
                os.close(into)
        os.fsync(source)
    finally:
        os.close(source)
    return moved


def _still_named(name: str, folder: int, held: os.stat_result) -> bool:
    """Whether `name` in `folder` is still the file held open, not one renamed in since."""
    try:
        now = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _copied(found: BinaryIO, into: int, sha256: str) -> str | None:
    """A new 0400 copy of the open file's bytes in the folder `into`, if they still hash
    to `sha256`: its name there; else None, nothing left behind."""
    temporary = f".{sha256}.put-back"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=into)  # a leftover (or a link: removed, not followed)
    out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, PRIVATE_FILE,
                  dir_fd=into)
    try:
        digest = hashlib.sha256()
        found.seek(0)
        with os.fdopen(out, "wb", closefd=False) as copy:
            while chunk := found.read(1 << 20):
                digest.update(chunk)
                copy.write(chunk)
        os.fchmod(out, BLOB_MODE)
        os.fsync(out)
        if digest.hexdigest() == sha256:
            return temporary
    except BaseException:
        os.unlink(temporary, dir_fd=into)
        raise
    finally:
        os.close(out)
    os.unlink(temporary, dir_fd=into)
    return None


def stale_copies(root: Path, older_than: datetime, remove: bool,
                 found: list[tuple[str, int]] | None = None) -> list[tuple[str, int]]:
    """The copies a put-back killed part way left in the fan-out folders, last written
    before `older_than`: (key, bytes) each added to `found` (removed first with
    `remove`) as it goes; returns them. Only a repair of the same blob removed one, so a
    private photo's copy stayed for good. gc calls this under the archive lock held
    exclusively, as verify --repair holds it while it copies: none is one under way.
    Neither a folder nor a file is followed when a link."""
    found = [] if found is None else found
    objects = open_folder(root, OBJECTS, create=False)
    if objects is None:
        return found
    try:
        for fan_out in sorted(os.listdir(objects)):
            try:
                folder = os.open(fan_out, _FOLDER | os.O_NOFOLLOW, dir_fd=objects)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, *_NOT_A_FOLDER):
                    continue  # a file, or a link planted there: no copy of ours
                raise
            try:
                with os.scandir(folder) as entries:
                    names = sorted(e.name for e in entries if _COPY.fullmatch(e.name))
                for name in names:
                    held = os.stat(name, dir_fd=folder, follow_symlinks=False)
                    if S_ISREG(held.st_mode) and held.st_mtime < older_than.timestamp():
                        if remove:
                            os.unlink(name, dir_fd=folder)
                        found.append((f"{OBJECTS}/{fan_out}/{name}", held.st_size))
            finally:
                os.close(folder)
    finally:
        os.close(objects)
    return found


def move_manifest_aside(root: Path, key: str, aside: str) -> str:
    """Move the manifest at `key` to `aside` by a hard link (failing rather than
    overwrite one) and an unlink, or where there are no hard links a rename over the
    name once claimed; both folders fsynced. Returns where it is now: the name a move
    killed between its link and its unlink gave it, when there is one (only the
    unlink is left to do: a second link set it aside twice)."""
    where, _, file = key.rpartition("/")
    into, _, new = aside.rpartition("/")
    source = open_folder(root, where, create=False)
    if source is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), where)
    try:
        target = open_folder(root, into, create=True)
        assert target is not None  # made when missing
        try:
            if (before := _linked_before(source, file, target)) is not None:
                new = before
                os.unlink(file, dir_fd=source)
            else:
                new = _link_or_rename(source, file, target, new)
            os.fsync(target)
            os.fsync(source)
        finally:
            os.close(target)
    finally:
        os.close(source)
    return f"{into}/{new}"


def _linked_before(source: int, file: str, target: int) -> str | None:
    """The name in `target` of the file `file` in `source`, if it has one there."""
    held = os.stat(file, dir_fd=source, follow_symlinks=False)
    if held.st_nlink < 2:
        return None
    with os.scandir(target) as entries:
        for entry in entries:
            if entry.inode() == held.st_ino and \
                    entry.stat(follow_symlinks=False).st_dev == held.st_dev:
                return entry.name
    return None


def _link_or_rename(source: int, file: str, target: int, new: str) -> str:
    """Link `file` to `new` in `target`, then unlink it; where there are no hard links,
    rename it over the name claimed, or over an empty claim of the tune's a move killed
    before its rename left (else kept for good: verify naming it, gc refusing to run).
    Returns the name it has in `target`."""
    try:
        os.link(file, new, src_dir_fd=source, dst_dir_fd=target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        # A filesystem without hard links (exFAT, FAT, some FUSE ones): the name
        # is claimed (O_EXCL, never another set aside), then renamed over. The
        # caller holds the tune's lock: an empty claim of the tune's is no live run's.
        if (claimed := _claimed_before(target, new.split("-", 1)[0])) is None:
            os.close(os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW,
                             PRIVATE_FILE, dir_fd=target))
        else:
            new = claimed
        try:
            os.rename(file, new, src_dir_fd=source, dst_dir_fd=target)
        except OSError:
            # The empty claim would be taken for a manifest set aside: verify
            # naming it, gc refusing to run while it is kept.
            with contextlib.suppress(OSError):
                os.unlink(new, dir_fd=target)
            raise
    else:
        os.unlink(file, dir_fd=source)
    return new


def _claimed_before(target: int, tune: str) -> str | None:
    """The name of an empty regular file <tune>-*.json in `target` (never a link)."""
    with os.scandir(target) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith(f"{tune}-") and entry.name.endswith(".json") and \
                    entry.is_file(follow_symlinks=False) and \
                    entry.stat(follow_symlinks=False).st_size == 0:
                return entry.name
    return None
