"""Blocking file work of a local archive, never through a link: a blob's size, reading
it back, walking objects/, and the writes inside the archive (a blob's
rename, a manifest's replacement, a removal) made in folders opened without following
a link (copying a blob out for export: saving.py). Run in worker threads (in_thread)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import BinaryIO

from tune_archiver.errors import (
    ConfigError,
    NotAFile,
    StorageError,
    storage_error,
    whose,
)
from tune_archiver.layout import OBJECTS, is_sha256
from tune_archiver.models import StoredBlob
from tune_archiver.safefs import (
    NOFOLLOW,
    PRIVATE_FILE,
    refuse_links,
)
from tune_archiver.store.aside import open_folder

READ_BLOCK = 4 * 2**20


def size_of(path: Path | str, checked: set[str] | None = None) -> int | None:
    """The size of a regular file at `path`; None for nothing, a link, a folder or a FIFO,
    or a blob in a fan-out folder that is a link (fetched again, and refused at its
    commit). `checked` holds the fan-out folders found whole by earlier calls of one
    batch (a page of 100 tunes' blobs shares a few dozen), so each is looked at once."""
    fan_out = os.path.dirname(path)
    try:
        if checked is None or fan_out not in checked:
            if check_fan_out(Path(path)) and checked is not None:
                checked.add(fan_out)
        stat = os.lstat(path)
    except (FileNotFoundError, NotAFile):
        return None
    return stat.st_size if S_ISREG(stat.st_mode) else None


def check_fan_out(blob: Path) -> bool:
    """Raise NotAFile when a folder on the way to the blob (objects, objects/sha256,
    objects/sha256/<2 hex>) is a link or not a folder: one planted there would pass
    bytes outside the archive off as a blob (export copied or hard-linked them, with
    exit 0), or take a photo out of it. O_NOFOLLOW guards only a path's last part.
    False when one of them is missing (so is the blob), True when all are folders."""
    fan_out = blob.parent
    for folder in (fan_out.parent.parent, fan_out.parent, fan_out):
        try:
            mode = folder.lstat().st_mode
        except FileNotFoundError:
            return False
        if not S_ISDIR(mode):
            raise NotAFile(f"{folder.name}, a folder on the way to {blob.name}, is a "
                           "symbolic link or not a folder")
    return True


def open_regular(path: Path, what: str = "a blob") -> BinaryIO:
    """Open a regular file to read, never following a link nor blocking on a FIFO.

    Raises FileNotFoundError when nothing is there, NotAFile for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotAFile(f"{path.name} is a symbolic link, not {what}") from exc
        raise
    if not S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotAFile(f"{path.name} is not a regular file")
    return os.fdopen(fd, "rb", buffering=0)


def read_capped(path: Path, limit: int, what: str) -> bytes | None:
    """The bytes of the regular file at `path`, at most `limit` of them; None when nothing
    is there. Never follows a link, blocks on a FIFO or reads a device without end.

    Raises NotAFile for anything but a regular file, StorageError for one larger than
    `limit`, and OSError as reading does."""
    try:
        file = open_regular(path, what)
    except FileNotFoundError:
        return None
    with file:
        size = os.fstat(file.fileno()).st_size
        parts, total, step = [], 0, size + 1  # the first read takes it all, and sees EOF
        while total <= limit and (chunk := file.read(min(step, limit + 1 - total))):
            parts.append(chunk)
            total += len(chunk)
            step = READ_BLOCK
    if total > limit:
        raise StorageError(f"{path.name} is larger than {limit} bytes: not {what}")
    return b"".join(parts)


def sync_dir(directory: Path) -> None:
    """fsync a directory so a rename in it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirSyncs:
    """Folders that took a rename not yet made durable.

    A blob's rename needs its folder fsynced only before something names the blob
    (a manifest): a thousand images into 256 folders then cost a few hundred
    fsyncs at their tunes' manifests, not one per image. A blob whose rename a
    power cut undid is simply fetched again; one a manifest names is there.
    """

    def __init__(self) -> None:
        self._dirs: set[Path] = set()
        # Folders whose own name a sync of their parent made durable: once is enough
        # (another run's folder, made and never synced, is synced so once too).
        self._named: set[Path] = set()
        self._lock = threading.Lock()  # the sets only: a commit never waits for an fsync
        self._syncing = threading.Lock()  # one sync at a time

    def add(self, directory: Path, named: bool = False) -> None:
        """`directory` took a rename; with `named`, its own name is to be durable too
        (a blob's folder, which this run or another may have just made)."""
        with self._lock:
            self._dirs.add(directory)
            if named and directory not in self._named:
                self._dirs.add(directory.parent)

    def sync(self) -> None:
        """fsync every folder added so far; blocks. A caller that finds another sync
        running waits for it, so it never returns before the renames added by others
        are durable too."""
        with self._syncing:
            with self._lock:
                dirs, self._dirs = sorted(self._dirs), set()
            for done, directory in enumerate(dirs):
                try:
                    sync_dir(directory)
                except OSError:
                    with self._lock:  # the rest stay, for the next caller
                        self._dirs.update(dirs[done:])
                    raise
            with self._lock:  # the folders in the parents synced have durable names
                self._named.update(d for d in dirs if d.parent in dirs)


def has_manifests(root: Path, manifests: Path) -> bool:
    """True when the archive at `root` has its manifests folder. Raises ConfigError when
    the disk will not say (the archive chmod 000, EIO): "no archive at" told an operator
    whose backups were all there that they were gone."""
    try:
        if not S_ISDIR(os.stat(manifests).st_mode):
            return False
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        denied = exc.errno in (errno.EACCES, errno.EPERM)
        raise ConfigError(f"cannot read the archive {root}: {exc.strerror or exc}"
                          + (whose(root) if denied else "")) from exc
    # Its folders closed to this user (a root cron's archive, read by its owner's login):
    # each manifest said 'Permission denied' as a tune failed, exit 1, not an archive
    # that this user cannot use. Asked as its reads ask (the effective ids): access(2)
    # asks as the real uid, without a capability it was given (CAP_DAC_READ_SEARCH).
    for folder in (manifests, root / OBJECTS):
        if os.path.isdir(folder) and not os.access(folder, os.R_OK | os.X_OK,
                                                   effective_ids=True):
            raise ConfigError(f"cannot read the archive {root}: "
                              f"{folder.relative_to(root)}/ is closed to you{whose(folder)}")
    return True


def walk_objects(
    objects: Path, root: Path, misplaced_only: bool = False
) -> list[tuple[StoredBlob, str]]:
    """Each file under objects/sha256/*/ named by a digest, with its key. Raises
    ConfigError when objects/ or objects/sha256 is a link: gc would remove through it.
    `misplaced_only` (verify's walk, holding little) keeps only the files outside their
    own fan-out folder, and passes by one that cannot be listed or looked into (EACCES,
    EIO) instead of raising: verify hashes each of its blobs, each named unreadable."""
    refuse_links([objects.parent, objects], "the archive's folder")
    found = []
    try:
        for directory in objects.iterdir():
            if not S_ISDIR(directory.lstat().st_mode):
                continue  # a link planted here could lead gc out of the archive
            try:
                found += _digest_files(directory, misplaced_only)
            except OSError:
                if not misplaced_only:
                    raise
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise storage_error(exc, root, "list the blobs") from exc
    return found


def _digest_files(directory: Path, misplaced_only: bool) -> list[tuple[StoredBlob, str]]:
    """The regular files named by a digest in one fan-out folder, with their keys."""
    found = []
    for file in directory.iterdir():
        if misplaced_only and file.name[:2] == directory.name:
            continue
        stat = file.lstat()
        if is_sha256(file.name) and S_ISREG(stat.st_mode):
            modified = datetime.fromtimestamp(stat.st_mtime, UTC)
            key = f"{OBJECTS}/{directory.name}/{file.name}"
            found.append((StoredBlob(file.name, stat.st_size, modified), key))
    return found


def hash_file(
    path: Path, advance: Callable[[int], None], root: Path
) -> tuple[int, str] | None:
    digest, size = hashlib.sha256(), 0
    try:
        check_fan_out(path)
        with open_regular(path) as file:
            while chunk := file.read(READ_BLOCK):
                digest.update(chunk)
                size += len(chunk)
                advance(len(chunk))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(exc, root, f"read the blob {path.name}") from exc
    return size, digest.hexdigest()


# -- writes inside the archive, each folder opened without following a link --------


def store_blob(root: Path, source: Path, key: str) -> None:
    """Rename `source` to the blob at `key`, into its fan-out folder opened without
    following a link (made 0700 when new): a link planted at the folder would take the
    photo out of the archive. A file there already is replaced: these bytes were just
    hashed to its name, and one there may have rotted since (same size, other bytes).
    Raises NotAFile, OSError."""
    folder, name = key.rsplit("/", 1)
    into = _folder(root, folder, create=True)
    try:
        os.replace(source, name, dst_dir_fd=into)
    except IsADirectoryError as exc:  # a rename never replaces one: said where it is
        raise NotAFile(f"{key} is a folder, not a blob") from exc
    finally:
        os.close(into)


def replace_file(root: Path, key: str, data: bytes, staging: str) -> None:
    """Replace the file at `key` with `data`: a new 0600 file in the `staging` folder
    (made 0700 when missing; its name one gc knows as ours), fsynced, renamed into
    place, the folder fsynced. Both folders are opened without following a link.
    Raises NotAFile, OSError."""
    folder, name = key.rsplit("/", 1)
    tmp = _folder(root, staging, create=True)
    try:
        into = _folder(root, folder, create=True)
        try:
            temporary = _write_temp(tmp, data)
            try:
                os.replace(temporary, name, src_dir_fd=tmp, dst_dir_fd=into)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary, dir_fd=tmp)
                raise
            os.fsync(into)
        finally:
            os.close(into)
    finally:
        os.close(tmp)


def remove_file(root: Path, key: str, durable: bool = False) -> None:
    """Remove the file at `key`, its folder opened without following a link (one
    planted there would have a file outside the archive removed); nothing when either
    is missing. `durable`: the folder is fsynced after, so a power cut cannot bring the
    file back. Raises NotAFile, OSError."""
    folder, name = key.rsplit("/", 1)
    fd = open_folder(root, folder, create=False)
    if fd is None:
        return
    try:
        os.unlink(name, dir_fd=fd)
        if durable:
            os.fsync(fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _folder(root: Path, key: str, create: bool) -> int:
    fd = open_folder(root, key, create)
    if fd is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), key)
    return fd


def _write_temp(folder: int, data: bytes) -> str:
    """A new 0600 file manifest-<8 random>.tmp in the open folder holding `data`,
    fsynced; returns its name."""
    while True:
        name = f"manifest-{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, PRIVATE_FILE,
                         dir_fd=folder)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=folder)
        raise
    return name
