"""The exception tree: every failure a user can meet, each with a message fit to read.

    ArchiverError                 base; str() is the one line a user reads
    ├── ConfigError               bad usage or configuration; nothing is written (exit 2)
    │   └── Denied                the store refused one object (AccessDenied): its problem
    ├── AuthError                 the API rejected the key (exit 3)
    ├── Unreachable               the API or the storage never answered: nothing done (exit 4)
    ├── NetworkError              could not complete an exchange with a server
    │   ├── ConnectError          no connection could be made (exit 4 if it stops the run)
    │   ├── ReadTimeout           the server sent nothing for too long (exit 4, likewise)
    │   └── BodyError             the body ended early, broke, or was malformed
    ├── StatusError               the server answered with an unexpected HTTP status
    │   ├── TuneNotFound          the API does not know this tune (404)
    │   └── ExpiredUrl            an asset host refused a URL that has likely expired
    ├── RefusedUrl                a URL or redirect we will not follow (scheme, loop)
    ├── DataError                 the API answered with data we cannot use
    ├── IntegrityError            the bytes received do not match what was promised
    │   └── ChangedOnDisk         a download's bytes on disk are not those received
    └── StorageError              the archive cannot be read or written
        ├── DiskFull              no space left in the archive's filesystem
        ├── TooLarge              a file past the filesystem's or the process's size limit
        ├── NotAFile              a blob's place holds a link, a folder or a FIFO
        └── UnreadableManifest    a manifest in the archive is damaged, or not one we read
            └── NewerManifest     written by a newer version: left as it is, never set aside

Whether an error is worth retrying is decided in retry.py, not here; which exit code
an error gives, in cli/exits.py.
"""

from __future__ import annotations

import errno
import os
import pwd
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class ArchiverError(Exception):
    """Base of every error tune-archiver reports; str() is the user's message."""


class ListingBrokeOff(ArchiverError):
    """fetch --all: the account's listing failed after some tunes were taken up; those
    were archived, and `results` (TuneResults) says how each went."""

    def __init__(self, message: str, results: Sequence[Any]) -> None:
        super().__init__(message)
        self.results = list(results)


class ConfigError(ArchiverError):
    """Bad usage or configuration, found before anything is written."""


class Denied(ConfigError):
    """The store refused us an object (AccessDenied): a policy on that key, or on every
    key. Those going through many objects (verify, export) make it that object's
    problem; credentials refused outright (an expired token) stay a ConfigError."""


class AuthError(ArchiverError):
    """The API rejected the key (401 or 403 from the API's origin)."""


class Unreachable(ArchiverError):
    """The API or the storage could not be reached for anything the run asked for."""


class NetworkError(ArchiverError):
    """An exchange with a server could not be completed."""


class ConnectError(NetworkError):
    """No connection could be made to the server."""


class ReadTimeout(NetworkError):
    """The server sent nothing for longer than the read timeout."""


class BodyError(NetworkError):
    """The response body ended early, broke off, or could not be decoded."""


class StatusError(ArchiverError):
    """The server answered with an HTTP status we did not expect."""

    def __init__(self, message: str, status: int, retry_after: float | None = None,
                 sent: datetime | None = None) -> None:
        super().__init__(message)
        self.status = status
        # Seconds the server asked us to wait (Retry-After), already parsed and capped.
        self.retry_after = retry_after
        # When the host answered, by its own clock (its Date), if it said so readably.
        self.sent = sent


class TuneNotFound(StatusError):
    """The API answered 404 for a tune."""


class TuneElsewhere(TuneNotFound):
    """The API answered 404 for a tune in the run's scope, but another workspace has it."""


class ExpiredUrl(StatusError):
    """An asset host answered 403 (or 400/410 saying "expired"): the URL needs renewing."""


class RefusedUrl(ArchiverError):
    """A URL or redirect we refuse to follow: bad scheme, too many hops."""


class DataError(ArchiverError):
    """The API answered with data we cannot use (malformed JSON, missing fields)."""


class IntegrityError(ArchiverError):
    """The bytes received do not match what the server promised."""


class ChangedOnDisk(IntegrityError):
    """A download's bytes on disk are not those it received and hashed: never kept."""


class StorageError(ArchiverError):
    """The archive cannot be read or written."""


class DiskFull(StorageError):
    """No space left on the archive's filesystem."""


class TooLarge(StorageError):
    """A file past what one file may hold there (EFBIG): FAT32's 4 GiB, or the process's
    file-size limit (ulimit -f). Every run would fail at the same byte."""


# What to do about EFBIG, said with it: the error alone ("File too large") names no cause.
TOO_LARGE = ("a file there may hold no more: the filesystem's limit (FAT32 holds at most "
             "4 GiB a file; exFAT, NTFS and ext4 far more) or this process's file-size "
             "limit (ulimit -f); use another filesystem or raise the limit")


class NoAccess(StorageError):
    """The filesystem refused this user a file (EACCES, EPERM): its bytes may be whole.
    `others` when the file is another user's: closed to this one, nothing of it to mend."""

    def __init__(self, message: str, others: bool = False) -> None:
        super().__init__(message)
        self.others = others


class NotAFile(StorageError):
    """A blob's place holds something other than a regular file; never followed or read."""


class UnreadableManifest(StorageError):
    """A manifest in the archive is damaged or of another format; str() names tune and fault.

    A StorageError, not a DataError: the bytes come from our own archive, not from
    the API, and what is needed is a repair of the archive, not another request.
    """

    def __init__(self, tune_id: int, reason: str, data: bytes = b"") -> None:
        super().__init__(f"the manifest of tune {tune_id} is unreadable: {reason}")
        self.tune_id = tune_id
        self.reason = reason  # what is wrong, without the tune: verify and list show it alone
        self.data = data  # the bytes found: only those are ever set aside


# The reason a manifest of a later schema_version is not read (NewerManifest).
NEWER = "it was written by a newer tune-archiver"


class NewerManifest(UnreadableManifest):
    """A manifest of a schema_version above ours: a newer tune-archiver wrote it (another
    machine sharing the archive, a version since downgraded). Not damaged: it is never
    set aside nor rewritten in our older format, which would drop what it records.
    Nor can it be told from ours damaged by a bit flipped on disk, where it would be
    one bit from ours (1 reads 3, 5 or 9; 2 is two bits away): said so, since no
    upgrade would ever cure that one."""

    def __init__(self, tune_id: int, version: int, ours: int, data: bytes = b"") -> None:
        flipped = len(str(version)) == len(str(ours)) and sum(
            bin(ord(a) ^ ord(b)).count("1") for a, b in zip(str(version), str(ours),
                                                           strict=True)) == 1
        damaged = "" if not flipped else (
            f", or it is damaged: {version} is what a {ours} reads with one bit flipped on "
            "disk; if no newer tune-archiver writes to this archive, move it into "
            "manifests/damaged/ and fetch the tune again")
        super().__init__(
            tune_id, f"{NEWER} (schema_version {version}; this version reads {ours}){damaged}",
            data)


def storage_error(exc: OSError, archive: Path, doing: str) -> StorageError:
    """Our error for a failed filesystem call; a full disk gets a message of its own."""
    if exc.errno in _FULL:
        return DiskFull(f"disk full in {archive}")
    if exc.errno in (errno.EACCES, errno.EPERM):  # another user's file: say whose
        named = exc.filename if isinstance(exc.filename, str | os.PathLike) else None
        owner = whose(named) if named is not None else ""
        return NoAccess(f"cannot {doing} in {archive}: {exc.strerror or exc}{owner}",
                        others=bool(owner))
    if exc.errno == errno.EFBIG:
        return TooLarge(f"cannot {doing} in {archive}: file too large: {TOO_LARGE}")
    return StorageError(f"cannot {doing} in {archive}: {exc.strerror or exc}")


def whose(path: str | os.PathLike[str]) -> str:
    """'; it belongs to OWNER: run it as OWNER (or with sudo)' when another user owns
    the file or folder at `path`, else '' (this user's, or not to be looked at)."""
    try:
        uid = os.stat(path).st_uid
    except (OSError, ValueError):
        return ""
    if uid == os.geteuid():
        return ""
    try:
        owner = pwd.getpwuid(uid).pw_name
    except KeyError:
        owner = f"uid {uid}"
    return f"; it belongs to {owner}: run it as {owner} (or with sudo)"


def not_its_size(sha256: str, found: int, size: int) -> StorageError:
    """A blob to copy out whose size is not the one its manifest records: refused before
    a byte is written. Either may be the damaged one; verify --repair tells which."""
    return StorageError(
        f"the blob {sha256} holds {found} bytes, not the {size} its manifest records: one "
        "of them is damaged (verify --repair finds which, and mends it); nothing was written")
