"""`export`: a tune's archived files as a plain folder a person can browse.

DEST/<id>-<slug>/checkpoints/, training_images/, prompt_images/, manifest.json and
index.html (gallery.py: the tune as a page, relative links only, opened from a USB stick).
Files are hard links to the blobs when possible (blobs are read-only), else copies.
Nothing that exists is ever overwritten: the tune's folder must be new. It is filled
under a hidden name and renamed once whole, so no stop leaves half of it under its name.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from urllib.parse import quote

from tune_archiver import gallery, manifest
from tune_archiver.commands.layouts import Layout, layout_path, sidecar_name, trigger_words
from tune_archiver.commands.names import export_path, folder_name
from tune_archiver.commands.verify import unread_fields
from tune_archiver.errors import (
    ArchiverError,
    ConfigError,
    Denied,
    IntegrityError,
    StorageError,
)
from tune_archiver.models import file_said
from tune_archiver.safefs import (
    NO_MODES,
    NOFOLLOW,
    PRIVATE_DIR,
    exists_at,
    make_dir_at,
    make_private_dir,
    write_new,
)
from tune_archiver.scrub import cleaned_json
from tune_archiver.store import Store
from tune_archiver.threads import in_thread

_RENAME_NOREPLACE = 1  # <linux/fs.h>


@dataclass
class ExportResult:
    """What an export wrote, and what it could not."""

    folder: Path
    linked: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one line per file not exported
    # Never archived, lost upstream: no export can hold it, and no run asks for it again
    # (fetch and verify count it apart, exit 0); said, never failed.
    gone: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


async def export_tune(
    store: Store, tune_id: int, dest: Path, link: bool, layout: Layout | None = None,
    secrets: Sequence[str] = (),
) -> ExportResult:
    """Write the tune's folder under `dest` (0700): copies of the blobs (0600), or with
    `link` hard links to them (read-only, the archive's own files). With `layout`, the
    checkpoints go where that tool looks for them (layouts.py). The `secrets` (the API
    key an older version's manifest may hold) are scrubbed from the manifest before any
    name, sidecar, page or copy of it is made: lowercased and cut into a folder's name,
    the key would be on disk and in the path printed, whole or in part.

    Raises ArchiverError when the tune is not archived, UnreadableManifest (before
    anything is written) when its manifest cannot be read, ConfigError when its
    folder exists already.
    """
    data = await store.read_manifest(tune_id)
    if data is None:
        raise ArchiverError(f"tune {tune_id} is not in the archive {store}")
    data = _scrubbed(data, secrets)
    found = manifest.parse(data, tune_id)
    folder = dest / folder_name(tune_id, found.title)
    # Filled under a hidden name, then renamed: a stop, a kill or a power cut never
    # leaves half a tune under the name of an export (nor one that refuses the next).
    at, made, staged = await in_thread(_new_folder, dest, folder)
    try:
        inside = _through(made, dest / staged)
        result = await _fill(store, found, data, inside, ExportResult(folder), link, layout)
        await in_thread(_into_place, at, made, staged, folder)
        return result
    except BaseException:
        with contextlib.suppress(OSError):  # what a stop leaves here is removed after
            if _still_ours(at, made, staged):
                shutil.rmtree(staged, dir_fd=at)
        raise
    finally:
        os.close(made)
        os.close(at)


async def _fill(store: Store, found: manifest.Manifest, data: bytes, inside: Path,
                result: ExportResult, link: bool, layout: Layout | None) -> ExportResult:
    """Write every file into the folder made, reached as `inside` (see _through)."""
    tune_id = found.tune_id

    def said(exc: Exception) -> str:  # the folder as the user named it
        return str(exc).replace(str(inside), str(result.folder))

    taken: set[str] = set()
    # entry -> its path in the folder: the entry itself, since two may share a kind and
    # index (one the API no longer lists), and each must link its own file.
    placed_at: dict[manifest.Entry, str] = {}
    for entry in found.entries:
        where, blob = file_said(entry.asset), entry.blob
        if blob is None:
            why = entry.error or "no error recorded"
            if entry.status == "gone":
                result.gone.append(f"{where}: gone upstream, never archived ({why})")
            else:
                result.failed.append(f"{where}: not archived ({why})")
            continue
        placed = layout_path(layout, entry, tune_id, found.tune) if layout else None
        name = placed if placed is not None and placed not in taken else export_path(entry, taken)
        taken.add(name)
        target = inside / name
        try:
            await in_thread(_make_dir, target.parent)
            how = await store.save_blob_as(blob.sha256, target, hard_link=link, size=blob.size)
        # This file's alone, the others go on: a bucket refusing this one object
        # (AccessDenied) too, as verify takes it.
        except (StorageError, IntegrityError, Denied) as exc:
            result.failed.append(f"{where}: {said(exc)}")
            continue
        (result.linked if how == "linked" else result.copied).append(name)
        placed_at[entry] = name
        if placed is not None and name == placed:  # its trigger words beside it
            words = trigger_words(tune_id, found.tune).encode()
            try:
                await in_thread(_write_new, inside / sidecar_name(name, taken), words)
            except StorageError as exc:
                result.failed.append(f"{where}: its trigger words: {said(exc)}")
    # Files of a field the API sent malformed, or of prompts not read, have no entry,
    # yet were never archived: named as verify names them, never a silent "0 failed".
    for unread in unread_fields(found):
        if unread.problem == "gone":
            result.gone.append(f"{unread.kind}: gone upstream, never archived ({unread.detail})")
        else:
            result.failed.append(f"{unread.kind}: not archived ({unread.detail})")
    page = gallery.tune_page(found, lambda entry: _relative(placed_at.get(entry)))
    # Failed as a file is (a full disk, say): the files that failed before are still named.
    for name, content in (("manifest.json", data), ("index.html", page.encode())):
        try:
            await in_thread(_write_new, inside / name, content)
        except StorageError as exc:
            result.failed.append(f"{name}: {said(exc)}")
    return result


def _scrubbed(data: bytes, secrets: Sequence[str]) -> bytes:
    """The manifest's bytes with the secrets scrubbed from every string and every URL
    redacted (an older version's manifest may hold a signature redacted only now, a
    Cloudflare Stream JWT say, which index.html beside it hides), and its hidden
    characters escaped (one written before they were holds a title's raw U+202E, which
    `grep -r` of the stick would print): re-encoded (a current manifest's copy is the
    archive's byte for byte; an older one's holds no key, signature nor hidden
    character). Bytes that are no JSON are left to manifest.parse to say so."""
    try:
        return manifest.encode(cleaned_json(json.loads(data), secrets))
    except (ValueError, RecursionError):
        return data


def _relative(name: str | None) -> str | None:
    """A path inside the folder as a relative URL: each segment percent-encoded."""
    return None if name is None else "/".join(quote(part) for part in name.split("/"))


def _through(made: int, folder: Path) -> Path:
    """The folder made, as a path to write through: its open fd's /proc/self/fd/N, which
    stays that folder whatever its name comes to hold. In a DEST another user may write
    in, the name could be swapped for a link to another folder (the user's, or theirs)
    while a 2 GB checkpoint is copied, and the next files would be written there. The
    name itself where there is no /proc."""
    through = Path(f"/proc/self/fd/{made}")
    return through if through.is_dir() else folder


def _new_folder(dest: Path, folder: Path) -> tuple[int, int, str]:
    """Create the tune's folder under a hidden name beside `folder`, which must not
    exist yet, never through a link another user planted on the way (DEST in a shared
    folder); returns DEST and that folder open, once known to be the empty folder
    made, not one another user swapped in for it, and its hidden name. DEST's missing
    folders and the tune's are made each in the folder held open above it
    (safefs.make_dir_at): by name, a folder on the way could be swapped for a link of
    theirs after the check, before the mkdir."""
    if dest.exists() and not dest.is_dir():  # a file named as DEST: the operator's to fix
        raise ConfigError(f"cannot use the export folder {dest}: Not a directory")
    # Its folders' names unsynced (its files are): an export is a copy, made again at
    # will, often onto a USB stick or a share that refuses fsync of a folder (EINVAL),
    # or keeps no modes (FAT, exFAT: fchmod says EPERM).
    at = make_dir_at(dest, "the export folder")
    staged = f".{folder.name}.{token_hex(4)}.partial"
    try:
        if exists_at(at, folder.name):
            raise _exists(folder)
        os.mkdir(staged, PRIVATE_DIR, dir_fd=at)
        made = os.open(staged, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=at)
        owner = os.fstat(at).st_uid  # a FAT stick's files are all the mount's user's
    except OSError as exc:  # a link swapped in for it meanwhile too (ELOOP)
        os.close(at)
        raise StorageError(f"cannot create {folder}: {exc.strerror or exc}") from exc
    except BaseException:
        os.close(at)
        raise
    try:
        swapped = os.fstat(made).st_uid not in (os.geteuid(), owner) or os.listdir(made)
        if not swapped:
            try:
                os.fchmod(made, PRIVATE_DIR)
            except OSError as exc:  # one that keeps no modes (FAT) stays as mounted
                if exc.errno not in NO_MODES:
                    raise
    except OSError as exc:
        os.close(made)
        os.close(at)
        raise StorageError(f"cannot create {folder}: {exc.strerror or exc}") from exc
    if swapped:
        os.close(made)
        os.close(at)
        raise StorageError(f"refused {folder}: another user replaced it as it was made")
    return at, made, staged


def _still_ours(at: int, made: int, staged: str) -> bool:
    """Whether the hidden name is still the folder made, not a link or a folder another
    user who may write in DEST put in its place."""
    held, named = os.fstat(made), os.stat(staged, dir_fd=at, follow_symlinks=False)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _into_place(at: int, made: int, staged: str, folder: Path) -> None:
    """Rename the filled folder to the tune's, in DEST held open; never over one made
    meanwhile, nor another's link or folder swapped in for it."""
    try:
        if not _still_ours(at, made, staged):
            raise StorageError(f"refused {folder}: another user replaced it as it was made")
        if exists_at(at, folder.name):
            raise _exists(folder)
        _rename_new(at, staged, folder.name)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise _exists(folder) from exc
        raise StorageError(f"cannot create {folder}: {exc.strerror or exc}") from exc


def _rename_new(at: int, name: str, new: str) -> None:
    """Rename `name` to `new` in the folder `at`, never over what is there: renameat2's
    RENAME_NOREPLACE (EEXIST), as a plain rename replaces an empty folder made since the
    check. That rename where the C library or the filesystem lacks it (NFS, some FUSE)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        if renameat2(at, os.fsencode(name), at, os.fsencode(new), _RENAME_NOREPLACE) == 0:
            return
        if (code := ctypes.get_errno()) not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), new)
    os.rename(name, new, src_dir_fd=at, dst_dir_fd=at)


def _exists(folder: Path) -> ConfigError:
    return ConfigError(
        f"{folder} already exists; nothing was overwritten (remove it, or export to "
        "another DEST)"
    )


def _make_dir(path: Path) -> None:
    try:
        make_private_dir(path, durable=False, modes=False)
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc


def _write_new(path: Path, data: bytes) -> None:
    """A new private file (0600) holding `data` (see safefs.write_new)."""
    try:
        write_new(path, lambda out: out.write(data))
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
