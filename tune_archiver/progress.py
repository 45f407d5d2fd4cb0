"""Progress display: a small protocol, a tqdm bar on stderr, and a silent stand-in."""

from __future__ import annotations

import contextlib
import sys
from typing import Protocol

from tqdm import tqdm


class Progress(Protocol):
    """What the downloads report as they go; one display aggregates them all."""

    def add_tunes(self, count: int) -> None: ...
    def tune_done(self) -> None: ...
    def add_files(self, count: int) -> None: ...
    def add_bytes(self, total: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def file_done(self) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    """Shows nothing: for -q, for a stderr that is not a terminal, and for tests."""

    def add_tunes(self, count: int) -> None:
        pass

    def tune_done(self) -> None:
        pass

    def add_files(self, count: int) -> None:
        pass

    def add_bytes(self, total: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def file_done(self) -> None:
        pass

    def close(self) -> None:
        pass


class BarProgress:
    """One tqdm bar on stderr: bytes with rate and ETA, and tunes and files done."""

    def __init__(self) -> None:
        self._bar = tqdm(
            total=0, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
            dynamic_ncols=True, leave=False,
        )
        self._tunes = 0
        self._tunes_done = 0
        self._files = 0
        self._done = 0

    def add_tunes(self, count: int) -> None:
        self._tunes += count
        self._show_files()

    def tune_done(self) -> None:
        self._tunes_done += 1
        self._show_files()

    def add_files(self, count: int) -> None:
        self._files += count
        self._show_files()

    def add_bytes(self, total: int) -> None:
        self._bar.total = (self._bar.total or 0) + total
        self._bar.refresh()

    def advance(self, nbytes: int) -> None:
        self._bar.update(nbytes)

    def file_done(self) -> None:
        self._done += 1
        self._show_files()

    def close(self) -> None:
        self._bar.close()

    def _show_files(self) -> None:
        self._bar.set_postfix_str(
            f"tunes {self._tunes_done}/{self._tunes}, files {self._done}/{self._files}",
            refresh=False,
        )


def above_bar() -> contextlib.AbstractContextManager[None]:
    """Clear any bar while a line is printed, and draw it again after: a line printed
    while the bar shows would otherwise be cut into it."""
    return tqdm.external_write_mode(file=sys.stderr)


def progress_for(quiet: bool) -> Progress:
    """A bar when stderr is a terminal and -q was not given; otherwise nothing."""
    if quiet or not sys.stderr.isatty():
        return NullProgress()
    return BarProgress()
