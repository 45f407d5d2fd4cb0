"""A tune's journal of committed files: what a stopped run archived, until a manifest says it.

A fetch commits each file's blob as it arrives, but writes the tune's manifest, the only
thing naming blobs, once the tune is done: a run killed in between (cron's timeout, the
OOM killer, a power cut) left blobs named by nothing, which a rerun after the tune
expired called "gone upstream, never archived" and gc removed. So each commit appends
the file's entry, as its manifest would record it, to `<staging>/<tune_id>.committed`
(O_APPEND, one write, no fsync: a line a power cut loses is a file fetched again), in
its thread just before the store takes the blob (a line whose blob never came is passed
by; a stop met by a commit's thread, which runs to its end, has its line written). The
next fetch of the tune takes a file a line names, its blob held with that size, as
archived; gc keeps those blobs while it keeps the journal (a day untouched). Once a
manifest names every blob the journal does, the journal goes, unless a run storing a
blob it names holds it (Noting). A journal that is a link,
another user's file or not a regular file is ignored, and so is a line that is no entry;
one that is not JSON (cut short by a full disk) may name any file: none is called gone
upstream while it is there, and gc, and the journal, keep the blob it names, if read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from pathlib import Path
from stat import S_ISREG
from typing import Any

from tune_archiver.download.cut import Listed, cut_blobs, cut_prefixes, not_an_entry, rebuilt
from tune_archiver.errors import ArchiverError, DataError, UnreadableManifest
from tune_archiver.manifest import Entry, parse_entry
from tune_archiver.models import Blob, Tune, parse_tune
from tune_archiver.safefs import Planted, open_own
from tune_archiver.store.location import is_remote
from tune_archiver.store.locks import names_it
from tune_archiver.threads import in_thread

log = logging.getLogger(__name__)
SUFFIX = ".committed"
NAME = re.compile(r"([1-9][0-9]*)(\.[0-9a-f]{12})?\.committed")
MAX_JOURNAL = 256 * 2**20  # as a manifest: 10,000 files' lines are a few MiB
_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Journals:
    """The journals in one staging folder (a local archive's tmp/, an S3 archive's own)."""

    def __init__(self, directory: Path, archive: str | Path = "") -> None:
        self.directory = directory
        # One $TUNE_ARCHIVER_STAGING may serve two buckets: each names its own journals
        # (`<id>.<tag>.committed`), or one's fetch took and removed the other's.
        self._tag = "" if not is_remote(archive) else "." + hashlib.sha256(
            str(archive).encode()).hexdigest()[:12]
        self._listed: set[int] | None = None  # the tunes with one at the run's start
        self.unread: dict[int, str] = {}  # tune id -> why its journal could not be read

    def path(self, tune_id: int) -> Path:
        return self.directory / f"{tune_id}{self._tag}{SUFFIX}"

    async def record(self, tune_id: int, entry: dict[str, Any],
                     tune: Callable[[], dict[str, Any]]) -> None:
        """Append the entry of a file just committed; a new journal first gets the tune
        (as its manifest records it): one deleted upstream is recorded from it. Never
        fails: a line not written (a full disk, a planted name) leaves the file as a
        killed run did before journals."""
        line = _line(entry)
        try:
            if _append(self.path(tune_id), line, tune, blocking=False) is None:  # settling
                await in_thread(_append, self.path(tune_id), line, tune, True)
        except OSError as exc:
            log.debug("tune %d: the journal of committed files was not written: %s",
                      tune_id, exc)

    def note(self, tune_id: int, entry: dict[str, Any],
             tune: Callable[[], dict[str, Any]], hold: bool = False) -> int | None:
        """record, from the thread of the commit about to store the file (Noted): a stop
        cannot come between the blob and its line; a line whose blob never came is passed
        by (see with_journaled). With `hold`, gives the journal open, its shared lock held,
        for the caller to close (see Noting)."""
        try:
            fd = _append(self.path(tune_id), _line(entry), tune, blocking=True, hold=hold)
            return fd if hold else None
        except OSError as exc:
            log.debug("tune %d: the journal of committed files was not written: %s",
                      tune_id, exc)
            return None

    async def entries(self, tune_id: int, touch: bool = False,
                      held: Callable[[str], Awaitable[int | None]] | None = None,
                      listed: Listed | None = None) -> list[Entry]:
        """The ok entries the tune's journal records, in the order committed; none when
        there is none, or it is not ours. With `touch` (a fetch relying on it) it is
        marked written now: gc sweeps a journal left a day, and runs each stopped before
        the tune is done (a checkpoint longer than cron's timeout) may append nothing.
        With `touch`, a tune with none at tune_ids is not looked at (one thread hop a tune:
        W5's 20,000): one made since is another run's, in flight, whose files it stores.
        One a fetch cannot read (EIO, EACCES) is none, and `unread` says why: any file
        found gone upstream may be one it holds (gc keeps its blobs meanwhile). So may a
        line cut short (a full disk), unless it is rebuilt, its blob `held`, or `listed`
        when the cut came inside its sha256 (cut.py)."""
        if touch and self._listed is not None and tune_id not in self._listed:
            return []
        why = f"its journal of files a stopped fetch committed, {self.path(tune_id)},"
        try:
            found, cut = _lines(await in_thread(_read, self.path(tune_id), touch, touch))
        except OSError as exc:
            self.unread[tune_id] = f"{why} cannot be read ({exc.strerror or exc}) and may hold it"
            return []
        mended = [entry for line in cut if held and (entry := await rebuilt(line, held, listed))]
        if len(mended) < len(cut):  # its file's entry not known, its blob may be held
            self.unread[tune_id] = f"{why} holds a line cut short (a full disk?) that may name it"
        return found + mended

    async def tune(self, tune_id: int) -> Tune | None:
        """The tune as a stopped run's journal recorded it, when the journal also records
        a file it committed; else None."""
        data = await in_thread(_read, self.path(tune_id))
        if not parsed(data):
            return None
        for line in data.splitlines():
            try:
                found = json.loads(line)
                if isinstance(found, dict) and found.keys() == {"tune"}:
                    return parse_tune(found["tune"], tune_id)
            except (ValueError, RecursionError, DataError):
                continue
        return None

    async def held_tune(self, tune_id: int, held: Callable[[str], Awaitable[int | None]]
                        ) -> Tune | None:
        """The tune as its journal recorded it, when a file the journal records is `held`
        (the store's size of a blob) at its size: the API no longer finds the tune. Its
        fetch then reads the journal, made after tune_ids or not."""
        tune = await self.tune(tune_id)
        for entry in await self.entries(tune_id) if tune is not None else []:
            with contextlib.suppress(ArchiverError):  # not known held: not found, as ever
                if await held(entry.sha256 or "") == entry.size:
                    if self._listed is not None:
                        self._listed.add(tune_id)
                    return tune
        return None

    async def settle(self, tune_id: int, named: Collection[str],
                     held: Callable[[str], Awaitable[int | None]]) -> None:
        """Remove the tune's journal once its manifest names (`named`: sha256s) every
        blob it records that is `held` (the store's size of a blob): a line written before
        a commit that failed names none. One another run appended meanwhile keeps it, and
        so does one a run holds (note): its blob, not stored yet, may be on its way."""
        try:  # one thread hop a tune, as a rule: every line named by the manifest
            left, seen = await in_thread(_settle, self.path(tune_id), named)
            never = set()
            for sha256, size in left:  # size None: a cut line's, kept while its blob is held
                with contextlib.suppress(ArchiverError):  # not known absent: kept
                    if (found := await held(sha256)) is None or size not in (None, found):
                        never.add(sha256)
            if never:  # unless a line came since: its blob, stored since, was not asked
                await in_thread(_settle, self.path(tune_id), {*named, *never}, seen)
        except OSError as exc:  # left for the next fetch, or gc
            log.debug("tune %d: the journal of committed files stays: %s", tune_id, exc)

    async def remove(self, tune_id: int) -> None:
        """Remove the tune's journal, if it has one (its tune forgotten). Raises OSError."""
        with contextlib.suppress(FileNotFoundError):
            await in_thread(os.unlink, self.path(tune_id))

    async def tune_ids(self) -> set[int]:
        """The tunes that have a journal: what a stopped run committed is not yet in
        their manifests."""
        self._listed = {int(found[1]) for path in await in_thread(_journals, self.directory)
                        if (found := NAME.fullmatch(path.name)) and (found[2] or "") == self._tag}
        return self._listed

    async def blobs(self, newer_than: datetime) -> set[str]:
        """The sha256 of every blob named by a journal written since `newer_than`, the
        other archives' that share the folder too (gc keeps them; an older journal is
        swept as partials are), or its first 16+ digits, a line cut inside it: a fetch
        rebuilds the line from the blob (cut.py). Raises ArchiverError for one of ours it
        cannot read."""
        return await in_thread(_blobs, self.directory, newer_than.timestamp())


class Noting:
    """Journals.note for one download of a tune's file (staging's Noted): the blobs it
    noted, and the journal held (a shared lock) till `close`, once the store is done with
    them (a whole upload to a bucket): another run's settle meanwhile, which would find
    the blob not stored yet and drop its line, keeps the journal (see settle)."""

    def __init__(self, journals: Journals, tune_id: int,
                 entry: Callable[[Blob], dict[str, Any]],
                 tune: Callable[[], dict[str, Any]]) -> None:
        self._journals, self._tune_id, self._entry, self._tune = journals, tune_id, entry, tune
        self.blobs: list[Blob] = []
        self._held: list[int] = []

    def __call__(self, blob: Blob) -> None:  # in the commit's thread, before it is stored
        fd = self._journals.note(self._tune_id, self._entry(blob), self._tune, hold=True)
        if fd is not None:
            self._held.append(fd)
        self.blobs.append(blob)

    def close(self) -> None:
        while self._held:
            os.close(self._held.pop())


def _line(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, separators=(",", ":")) + "\n").encode()


def _append(path: Path, line: bytes, tune: Callable[[], dict[str, Any]], blocking: bool,
            hold: bool = False) -> int | None:
    """One write at the journal's end, on a line of its own though a full disk cut the
    last short (write() stores part of it, no error); None, nothing written, when a
    settle holds it and not `blocking`. Taken again when a settle removed it meanwhile.
    Gives -1, or with `hold` the journal, still open and locked, for the caller to close."""
    while True:
        fd = os.open(path, _FLAGS, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                return None
            found = os.fstat(fd)
            if found.st_nlink == 0 or not names_it(path, fd):
                continue  # removed by a settle, or replaced by a copy: taken again
            if not S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
                raise OSError(f"{path} is not a regular file of this user")
            if found.st_nlink != 1:  # a snapshot's second name: never written to
                _own_copy(path, fd)
                continue
            if found.st_size == 0:
                line = _line({"tune": tune()}) + line
            elif os.pread(fd, 1, found.st_size - 1) != b"\n":
                line = b"\n" + line  # a full disk cut the last short: ours stays whole
            os.write(fd, line)
            if hold:
                held, fd = fd, -1
                return held
            return -1
        finally:
            if fd != -1:
                os.close(fd)


def _own_copy(path: Path, fd: int) -> None:
    """Rename a copy of the journal `fd` over `path`: a hard-link snapshot of the archive
    (`cp -al`, rsnapshot's) shares it, and a line appended there was the snapshot's too,
    so none was, and a rerun's files stopped again before the manifest were named by
    nothing (gc took them). Only while no other holds it (else OSError: no line)."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no line appended while copied
    if not names_it(path, fd):
        return
    # A name gc sweeps after a day, as a partial, should a crash leave it.
    copy, name = tempfile.mkstemp(dir=path.parent, prefix="private-", suffix=".part")
    try:
        while chunk := os.pread(fd, MAX_JOURNAL, os.lseek(copy, 0, os.SEEK_CUR)):
            os.write(copy, chunk)  # a full disk's short write is read again after it
        os.fsync(copy)  # every earlier line names a blob gc keeps only for it
        os.replace(name, path)
    finally:
        os.close(copy)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _read(path: Path, touch: bool = False, strict: bool = False) -> bytes:
    """The journal's bytes; none when it cannot be read, or, `strict`, only when there is
    none or it is not ours (OSError: the disk failed, EIO, EACCES)."""
    try:
        # A FIFO never blocks us; a second name (a snapshot's) is read, never written to.
        fd = open_own(path, os.O_RDONLY | os.O_NONBLOCK, links=True)
    except OSError as exc:  # none, a link, another user's: nothing vouched for
        if strict and not isinstance(exc, FileNotFoundError | Planted):
            raise
        return b""
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(MAX_JOURNAL)
        except OSError:
            if strict:
                raise
            return b""
        if touch and data:
            with contextlib.suppress(OSError):  # kept a day from its last line, as ever
                os.utime(fd)
        return data


def parsed(data: bytes) -> list[Entry]:
    """The ok entries of a journal's lines; one that is no such entry is passed by."""
    return _lines(data)[0]


def _lines(data: bytes) -> tuple[list[Entry], list[bytes]]:
    """The ok entries of a journal's lines, and the lines that are not JSON (cut short)."""
    found, cut = [], []
    for line in data.splitlines():
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            cut.append(line)
            continue
        try:
            entry = parse_entry(value, "a journal line", not_an_entry)
        except (ValueError, RecursionError, UnreadableManifest):
            continue
        if entry.blob is not None:
            found.append(entry)
    return found, cut


Seen = tuple[int, int] | None  # a journal as read by a settle: its inode and size


def _settle(path: Path, named: Collection[str], seen: Seen = None
            ) -> tuple[set[tuple[str, int | None]], Seen]:
    """Remove the journal if `named` holds the blob of each line (and it is still as
    `seen`, if given); else the (sha256, size) of the lines it does not (none for a
    journal too large to be read whole, or one a run holds: kept), and how it was seen."""
    try:
        fd = open_own(path, os.O_RDONLY | os.O_NONBLOCK, links=True)
    except FileNotFoundError:
        return set(), None
    try:
        try:  # no line is appended while it is read and removed; none is being stored
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a run storing a blob it names (or appending): its own
            return set(), None  # settle, or the next fetch's, takes the journal
        found = os.fstat(fd)
        if found.st_nlink == 0 or seen not in (None, (found.st_ino, found.st_size)):
            return set(), None  # another run's settle removed it, or appended since
        with open(fd, "rb", closefd=False) as file:
            data = file.read(MAX_JOURNAL + 1)
        if len(data) > MAX_JOURNAL:
            return set(), None
        entries, cut = _lines(data)
        left: set[tuple[str, int | None]] = {
            (e.sha256, e.size) for e in entries if e.sha256 and e.sha256 not in named}
        left.update((sha256, None) for sha256 in cut_blobs(cut) - set(named))
        if not left:
            os.unlink(path)
        return left, (found.st_ino, found.st_size)
    finally:
        os.close(fd)


def _blobs(directory: Path, since: float) -> set[str]:
    found: set[str] = set()
    for path in _journals(directory, strict=True):
        try:
            if path.lstat().st_mtime < since:
                continue
            data = _read(path, strict=True)
        except FileNotFoundError:  # swept or settled meanwhile
            continue
        except OSError as exc:  # what it names may be the only copy of a stopped run's
            raise ArchiverError(
                f"{path}, a tune's journal of files a stopped fetch committed, cannot be "
                f"read ({exc.strerror or exc}); gc removes nothing until it can, since it "
                "cannot know which blobs it keeps (left a day untouched, it is swept with "
                "them)") from exc
        entries, cut = _lines(data)
        found.update({entry.sha256 for entry in entries if entry.sha256}, cut_blobs(cut),
                     cut_prefixes(cut))
    return found


def _journals(directory: Path, strict: bool = False) -> list[Path]:
    """The journals in `directory`; none when it cannot be listed (OSError, `strict`, but
    for none there yet)."""
    try:
        with os.scandir(directory) as entries:
            names = [entry.name for entry in entries if NAME.fullmatch(entry.name)]
    except FileNotFoundError:  # no staging folder (yet): no journal
        return []
    except OSError as exc:
        if strict:
            raise ArchiverError(f"the staging folder {directory}, which holds tunes' "
                                f"journals, cannot be listed ({exc.strerror or exc}); gc "
                                "removes nothing until it can") from exc
        return []
    return [directory / name for name in sorted(names)]
