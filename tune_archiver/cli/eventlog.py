"""--log-file: what a run did as JSON lines (run, tune and file events, retries,
failures), each with a UTC timestamp, the key scrubbed and every URL redacted.

Events are log records carrying an `event` attribute (`extra={"event": ...}`), and
every warning line (as a `warning` event); this handler writes those and nothing
else. Records meant for the log alone also carry `machine_only`, which keeps them
off the human lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from tune_archiver.cli import terminal
from tune_archiver.errors import ConfigError
from tune_archiver.safefs import Planted, open_own, refuse_others_links
from tune_archiver.scrub import cleaned, cleaned_json

# LogRecord's own attributes: everything else on a record came from `extra`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
QUIET = {"machine_only": True}  # extra for an event the human lines never show
READABLE = ("warning: the log file %s is readable by every user of this machine (it names "
            "your tunes and files): chmod 600 it")


def event(name: str, **fields: Any) -> dict[str, Any]:
    """The `extra` of a log call that is an event for --log-file only."""
    return {"event": name, **QUIET, **fields}


class HumanOnly(logging.Filter):
    """Keeps records meant for the log file alone off the human lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "machine_only", False)


class JsonLines(logging.Handler):
    """Writes each event record as one JSON object on one line, flushed at once."""

    def __init__(
        self, stream: IO[str], secrets: Sequence[str], owned: bool, name: str = "-"
    ) -> None:
        super().__init__(logging.DEBUG)
        self.stream = stream
        self._secrets = secrets  # shared with main: grows once the key is read
        self._owned = owned
        self._name = name
        self._failed = False
        self._first = cut_short(stream) if owned else ""  # what the next line starts with

    def emit(self, record: logging.LogRecord) -> None:
        name = getattr(record, "event", None)
        if name is None and record.levelno >= logging.WARNING:
            name = "warning"  # a warning line (nothing listed, no tune selected) is said here too
        if name is None or self._failed:
            return
        try:
            fields = {k: v for k, v in vars(record).items()
                      if k not in _STANDARD and k not in ("event", "machine_only")}
            line = {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                    timespec="milliseconds").replace("+00:00", "Z"),
                "event": name,
                "level": record.levelname.lower(),
                "message": cleaned(record.getMessage(), self._secrets),
                **{k: cleaned_json(v, self._secrets) for k, v in fields.items()},
            }
            if self._owned:
                self._follow_rotation(record.name)
            self.stream.write(self._first + json.dumps(line, ensure_ascii=True, default=str)
                              + "\n")
            self.stream.flush()
            self._first = ""
        except Exception:  # a log that cannot be written must not stop a backup
            self.handleError(record)

    def _follow_rotation(self, record_name: str) -> None:
        """Open the path again when it no longer names our file: logrotate moved it away
        (and may have created a new one), so a long run's lines would go on into the
        moved file, which a later rotation compresses and deletes, losing them. As
        logging's WatchedFileHandler, but through open_own: never a planted link. A new
        file every user can read is warned about, through the logger of `record_name`."""
        try:
            moved = os.stat(self._name, follow_symlinks=False)
            ours = os.fstat(self.stream.fileno())
            if (moved.st_dev, moved.st_ino) == (ours.st_dev, ours.st_ino):
                return
        except FileNotFoundError:
            pass  # moved away and not created again: we create it, as logrotate would
        stream = _appending(self._name)
        with contextlib.suppress(OSError):
            self.stream.close()
        self.stream, self._first = stream, cut_short(stream)
        if readable_by_all(self):  # logrotate's `create 0644`: said now, not next run
            logging.getLogger(record_name).warning(READABLE, self._name)

    def handleError(self, record: logging.LogRecord) -> None:
        """A log that cannot be written (a full disk) is said once, on one line, and no
        longer written to: not logging's traceback for every event of the run."""
        self._failed = True
        error = sys.exc_info()[1]
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        if self.stream is sys.stderr:
            return  # nowhere left to say it
        try:
            sys.stderr.write(terminal.shown(
                f"tune-archiver: warning: cannot write the log file {self._name}: {reason}; "
                "the run goes on without it", self._secrets) + "\n")
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        if self._owned:
            try:  # the buffered lines a full disk refused are refused again here
                self.stream.close()
            except OSError:
                pass
        super().close()


def open_log(path: str, secrets: Sequence[str]) -> JsonLines:
    """The handler for --log-file PATH (appended to, private to its owner) or - (stderr).

    Raises ConfigError when the file cannot be opened, or when PATH is a link or
    anything but a regular file of this user with one name (safefs.open_own).
    """
    if path == "-":
        return JsonLines(sys.stderr, secrets, owned=False)
    try:
        stream = _appending(path)
    except Planted as exc:
        raise ConfigError(f"refused the log file: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot open the log file {path}: {exc.strerror or exc}") from exc
    return JsonLines(stream, secrets, owned=True, name=path)


def _appending(path: str) -> IO[str]:
    """The log opened to append, and to read its last byte (cut_short) when it may be
    read: one its owner made write-only (0200) is appended to as ever, not refused."""
    try:
        return open(path, "a+", encoding="utf-8", opener=_own)
    except PermissionError:
        return open(path, "a", encoding="utf-8", opener=_own)


def cut_short(stream: IO[str]) -> str:
    """A newline when the file's last line was cut short (a disk full, ulimit -f reached
    in the middle of a line), else "": glued to it, the next run's first line was one
    line no JSON parser reads (jq stops there) and a collector drops."""
    try:
        size = os.fstat(stream.fileno()).st_size
        return "\n" if size and os.pread(stream.fileno(), 1, size - 1) != b"\n" else ""
    except OSError:
        return ""


def readable_by_all(handler: JsonLines) -> bool:
    """Whether the log file is readable by every user of the machine: one that existed
    before the run, 0644 (`touch`, logrotate's `create 0644`); a new one is made 0600.
    Not when a folder on the way shuts others out (a 0700 home): none can reach it."""
    return handler.stream is not sys.stderr and bool(
        os.fstat(handler.stream.fileno()).st_mode & stat.S_IROTH) and _others_reach(
        handler._name)


def _others_reach(path: str | None) -> bool:
    """Whether every folder above `path` lets others through (o+x); True when one
    cannot be looked at: a warning too many, never one missed."""
    folder = os.path.dirname(os.path.realpath(path or "."))
    while True:
        try:
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return True
        if folder == (folder := os.path.dirname(folder)):
            return True


def _own(path: str, flags: int) -> int:
    # As every file we write: never through a link planted at its name (a shared log
    # folder) or, by another user, on the way to it (ConfigError), and never blocked on
    # a FIFO planted there.
    refuse_others_links(Path(path), "the log file")
    return open_own(Path(path), flags | os.O_NONBLOCK)
