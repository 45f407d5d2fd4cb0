"""Progress display: a small protocol, a silent stand-in, and the choice of a bar.

The bar itself (bar.py) imports tqdm, which only a run with a bar needs: a quiet run
(cron's) starts without it.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Protocol

SHOWN: set[object] = set()  # the bars on screen now (bar.BarProgress), for above_bar


class Progress(Protocol):
    """What the downloads report as they go; one display aggregates them all."""

    def add_tunes(self, count: int) -> None: ...
    def tune_done(self) -> None: ...
    def add_files(self, count: int) -> None: ...
    def add_bytes(self, total: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def resumed(self, nbytes: int) -> None:
        """Bytes a download found on disk already: done, but never counted as speed."""
        ...

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

    def resumed(self, nbytes: int) -> None:
        pass

    def file_done(self) -> None:
        pass

    def close(self) -> None:
        pass


def above_bar() -> contextlib.AbstractContextManager[None]:
    """Clear any bar while a line is printed, and draw it again after: a line printed
    while the bar shows would otherwise be cut into it. With no bar on screen (-q, or
    stderr no terminal) there is nothing to clear, and tqdm's locks are not taken: a
    quiet --all of 20,000 tunes spent half a second in them."""
    if not SHOWN:
        return contextlib.nullcontext()
    from tqdm import tqdm  # loaded with the bar already

    return tqdm.external_write_mode(file=sys.stderr)


def progress_for(quiet: bool, items: str = "files") -> Progress:
    """A bar when stderr is a terminal and -q was not given; otherwise nothing. `items`
    names what its count counts (files fetched, blobs verified)."""
    if quiet or not sys.stderr.isatty():
        return NullProgress()
    from tune_archiver.bar import BarProgress

    return BarProgress(items, SHOWN)
