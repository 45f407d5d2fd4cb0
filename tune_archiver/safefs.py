"""Files and folders the tool creates: private modes set explicitly, never through a link.

The archive holds photos of people's faces and often runs as root from cron on a shared
machine. So every folder it makes is 0700 and every file 0600 (blobs 0400), set with
fchmod on what was opened (umask and makedirs only govern the leaf); every file it
opens to write is opened with O_NOFOLLOW and must be a regular file of this user with
one name, so a link planted by another local user is never written through.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from tune_archiver.errors import ConfigError, StorageError, TooLarge, storage_error

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
BLOB_MODE = 0o400  # read-only: a hard-linked export cannot edit a blob in place
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
# What os.link says where the filesystem has no hard links (FAT, exFAT, some FUSE ones).
NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# What fchmod says where the filesystem keeps no modes: FAT and exFAT (EPERM, unless
# mounted `quiet`; their modes are the mount's), some FUSE ones (ENOSYS).
NO_MODES = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# A folder that cannot be made here: the operator's to fix (exit 2), not a failed run.
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS}) | NO_MODES  # 0700 refused


class Planted(OSError):
    """A name the tool writes holds something it did not make: a link, another user's file."""


def open_own(path: Path, flags: int, mode: int = PRIVATE_FILE, links: bool = False) -> int:
    """os.open without following a link; the result must be a regular file of this user
    with one name (else Planted, and nothing was written). With `links`, for a file only
    read or locked, never written, more names are allowed: a hard-link snapshot of the
    archive (`cp -al`) gives every file a second one."""
    try:
        fd = os.open(path, flags | NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Planted(f"{path} is a symbolic link") from exc
        raise
    try:
        check_own(fd, path, links)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_own(fd: int, path: Path, links: bool = False) -> None:
    """Raise Planted unless the open file is a regular file of this user with one name
    (or, `links`, with any)."""
    found = os.fstat(fd)
    names = found.st_nlink >= 1 if links else found.st_nlink == 1
    if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid() or not names:
        raise Planted(f"{path} is not a regular file of this user with one name")


def new_private_dir(path: Path, modes: bool = True) -> None:
    """Create the folder, which must not exist yet (FileExistsError), 0700 by fchmod.
    Without `modes`, on a filesystem that keeps no modes (an export's FAT stick) it is
    as the mount makes it."""
    os.mkdir(path, PRIVATE_DIR)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
    try:
        os.fchmod(fd, PRIVATE_DIR)
    except OSError as exc:
        if modes or exc.errno not in NO_MODES:
            raise
    finally:
        os.close(fd)


def write_new(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """A new 0600 file at `target`, which must not exist (FileExistsError): written
    beside it, fsynced, then linked into place (on a filesystem without hard links,
    renamed over the name once claimed). Nothing is ever overwritten, and no crash, full
    disk or stick pulled out leaves a file cut short under its name."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=".export-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        place_new(name, target)
    finally:
        Path(name).unlink(missing_ok=True)  # gone when renamed into place


def place_new(name: str | Path, target: Path) -> None:
    """Give the whole, synced file `name` the name `target`, which must not exist
    (FileExistsError): a hard link (the caller removes `name`), or on a filesystem
    without hard links a rename over the name once claimed."""
    try:
        os.link(name, target)
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        # A FAT or exFAT stick has no hard links: the name is taken (O_EXCL, never
        # another's file replaced), then the whole, synced file renamed over it.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW,
                         PRIVATE_FILE))
        os.replace(name, target)


def make_private_dir(path: Path, durable: bool = True, modes: bool = True) -> None:
    """Create the folder (and missing parents) if need be; one this call creates is 0700,
    set by fchmod, since the umask may have widened it. With `durable`, the folder above
    each one missing is fsynced: a new archive's objects/ and manifests/ hold what a
    manifest names, and a power cut must not lose the names leading to them. `modes`:
    see new_private_dir."""
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            new_private_dir(folder, modes)
        except FileExistsError:
            pass  # made by another process meanwhile, which may not have synced it yet
        if durable:
            _sync_folder(folder.parent)


def make_archive_folders(root: Path, names: Sequence[str]) -> None:
    """make_private_dir each of the archive's folders under `root`; raises ConfigError
    when they are not on one filesystem (tmp/ mounted apart): a blob or a manifest is
    renamed into place from tmp/, which would fail (EXDEV) at every commit."""
    for name in names:
        make_private_dir(root / name)
    # A folder bind-mounted in (a Docker volume at tmp/) is another mount of the same
    # device, which rename refuses to cross (EXDEV) as well: one mount, and one device.
    if len({_mount_of(root / name) for name in names}) > 1 or len(
            {os.stat(root / name).st_dev for name in names}) > 1:
        raise ConfigError(
            f"cannot use the archive {root}: its {', '.join(f'{n}/' for n in names)} are not all "
            "on one filesystem (blobs and manifests are renamed into place from tmp/)")


def _mount_of(folder: Path | str) -> str | None:
    """The id of the mount the folder is in (its fd's mnt_id, /proc/self/fdinfo); None
    where that is not told (no /proc)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
            return next((line.split()[1] for line in info if line.startswith("mnt_id:")),
                        None)
    except OSError:
        return None
    finally:
        os.close(fd)


FAT_MAX = 2**32 - 1  # the most bytes a file on FAT32 holds (exFAT has no such limit)
_FAT = frozenset({"vfat", "msdos", "fat", "fuse.fusefat"})


def file_size_limit(folder: Path | str, size: int) -> str | None:
    """Why a file of `size` bytes cannot be written in the folder, or None: past this
    process's file-size limit (ulimit -f, RLIMIT_FSIZE) or FAT32's 4 GiB a file. Every
    write past it fails (EFBIG) at the same byte, run after run."""
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if soft != resource.RLIM_INFINITY and size > soft:
        return (f"past this process's file-size limit (ulimit -f) of {soft} bytes; raise "
                "it (ulimit -f unlimited)")
    if size > FAT_MAX and _filesystem_of(folder) in _FAT:
        return "past FAT32's limit of 4 GiB a file; use another filesystem (exFAT, NTFS, ext4)"
    return None


def refuse_past_limit(target: Path, size: int) -> None:
    """Raise TooLarge when a copy of `size` bytes cannot be written at `target` (see
    file_size_limit): said before a byte is read, not at the limit (an export's 4 GiB
    copied, or paid for from a bucket, to fail there). The folder is looked up with a
    slash after it: an export's is /proc/self/fd/N, a link O_NOFOLLOW refuses (ENOTDIR);
    the slash has it followed to the folder the fd holds."""
    try:
        why = file_size_limit(os.path.join(target.parent, ""), size)
    except OSError as exc:
        raise storage_error(exc, target.parent, "look at the file-size limit") from exc
    if why:
        raise TooLarge(f"cannot write {target.name} in {target.parent}: {size} bytes, {why}; "
                       "nothing was written")


def _filesystem_of(folder: Path | str) -> str | None:
    """The type of the filesystem the folder is on (/proc/self/mountinfo); None where
    that is not told."""
    mount = _mount_of(folder)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                fields = line.split(" - ", 1)
                if line.split(" ", 1)[0] == mount and len(fields) == 2:
                    return fields[1].split(" ", 1)[0]
    except OSError:
        pass
    return None


def _sync_folder(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:  # a folder one may write in but not read (-wx): not ours to sync
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_links(paths: Sequence[Path], what: str) -> None:
    """Raise ConfigError when any of these names is a symbolic link (the folders the tool
    makes itself: a link at one was planted, and would lead it out of them)."""
    for path in paths:
        try:
            is_link = stat.S_ISLNK(path.lstat().st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot use {what} {path}: {exc.strerror or exc}") from exc
        if is_link:
            raise ConfigError(f"refused {what} {path}: it is a symbolic link")


_MAX_LINKS = 40  # links one path may go through: Linux's limit


def refuse_others_links(path: Path, what: str) -> None:
    """Raise ConfigError when a symbolic link of another user (neither this one nor root)
    is on the way to `path`: planted in a shared folder (/tmp, a sticky /srv/backups),
    it would lead our writes into a folder of theirs. As the kernel's protected_symlinks,
    which is often off. A link of ours or root's is followed in this walk: where it
    leads (~/archive -> /srv/backups/archive, theirs) is on the way too. The walk goes
    a folder at a time, as the kernel does: a path it takes may lead through more than
    PATH_MAX characters of folders."""
    _walk(path, what, make=False)


def make_dir_at(path: Path, what: str) -> int:
    """The folder at `path` open (O_PATH), its missing folders made on the way (0700 by
    fchmod where the filesystem keeps modes) by refuse_others_links' walk, each in the
    folder it holds open: by name, a folder on the way that another user may write in
    (DEST under /tmp) could be swapped for a link between the check and the mkdir.

    Raises ConfigError as refuse_others_links does, StorageError for a folder it cannot
    make."""
    return _walk(path, what, make=True)


def _walk(path: Path, what: str, make: bool) -> int:
    """The walk of both: with `make`, the folder reached, open; else -1."""
    way = path.absolute()
    todo = list(reversed(way.parts[1:]))  # the names still to look at, the next last
    probe, links, tries = Path(way.anchor), 0, 0
    # todo[floor:] are names a link leads to: a missing one is not made (as mkdir -p):
    # a link to a stick not mounted would have the export written to the disk under it.
    floor = sys.maxsize
    folder = os.open(way.anchor, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while todo:
            name = todo.pop()
            floor = floor if len(todo) >= floor else sys.maxsize
            probe = probe / name
            try:
                found = os.stat(name, dir_fd=folder, follow_symlinks=False)
                if stat.S_ISLNK(found.st_mode):
                    if found.st_uid not in (os.geteuid(), 0):
                        raise ConfigError(f"refused {what} {path}: {probe} is a symbolic "
                                          f"link of another user (uid {found.st_uid})")
                    links += 1
                    if links > _MAX_LINKS:  # the kernel refuses the path itself (ELOOP)
                        if not make:
                            return -1
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                    target = Path(os.readlink(name, dir_fd=folder))
                    floor = min(floor, len(todo))
                    todo.extend(reversed(target.parts[1:] if target.anchor else target.parts))
                    probe = Path(probe.parent, target.anchor)
                    if target.anchor:
                        os.close(folder)
                        folder = -1  # closed, if the next open fails
                        folder = os.open(target.anchor, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                elif todo or make:
                    inner = os.open(name, os.O_PATH | os.O_DIRECTORY | NOFOLLOW, dir_fd=folder)
                    os.close(folder)
                    folder = inner
            except FileNotFoundError:
                if not make:
                    return -1
                if len(todo) >= floor:
                    raise StorageError(f"cannot create {path}: {probe} does not exist, "
                                       "and a link leads there") from None
                tries += 1
                if tries > _MAX_LINKS:  # removed as often as made: another user's doing
                    raise ConfigError(f"cannot use {what} {path}: {probe} keeps "
                                      "vanishing") from None
                _make_at(folder, name, path, what)
                todo.append(name)  # looked at again: made, or planted meanwhile
                probe = probe.parent
            except OSError as exc:
                raise ConfigError(f"cannot use {what} {path}: {exc.strerror or exc}") from exc
        if not make:
            return -1
        result, folder = folder, -1
        return result
    finally:
        if folder >= 0:
            os.close(folder)


def _make_at(folder: int, name: str, path: Path, what: str) -> None:
    """A new 0700 folder `name` in the open `folder` (one there already is looked at);
    StorageError when it cannot be made."""
    try:
        os.mkdir(name, PRIVATE_DIR, dir_fd=folder)
        made = os.open(name, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=folder)
    except FileExistsError:
        return
    except OSError as exc:  # a disk's fault (read-only, full), as a file's would be
        raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc
    try:
        os.fchmod(made, PRIVATE_DIR)
    except OSError as exc:
        if exc.errno not in NO_MODES:
            raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(made)


def check_folder(path: Path, what: str) -> str | None:
    """Refuse (ConfigError) a folder not owned by this user or writable by group or
    others: someone else could plant files in it. Returns a warning when group or
    others can read it, else None."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot use {what} {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(found.st_mode):
        raise ConfigError(f"{what} {path} is not a folder")
    if found.st_uid != os.geteuid():
        raise ConfigError(f"refused {what} {path}: it belongs to another user")
    if found.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"refused {what} {path}: group or others may write in it (chmod go-w {path})"
        )
    if found.st_mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH):
        return (f"warning: {what} {path} is readable by other users (chmod 700 {path} to "
                "keep it private)")
    return None


def write_private(path: Path, data: bytes, sync: bool = True) -> None:
    """Replace `path` with `data` by a new 0600 file beside it and a rename, so neither
    a reader nor a link planted at either name ever sees half of it."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        os.unlink(temporary)  # a leftover, or a planted link: removed, never followed
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, PRIVATE_FILE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def exists_at(folder: int, name: str) -> bool:
    """True when `name` exists in the open folder (a link counts; it is not followed)."""
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
