"""The progress bar: binary units, a rate that resumed bytes cannot inflate and a stall
lets fall, and counts named for what they count."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import pytest
from tqdm import tqdm

from tune_archiver.bar import BAR_FORMAT, BarProgress, _Bar
from tune_archiver.cli.report import fetch_summary, undone
from tune_archiver.models import Asset, AssetResult, Blob, TuneResult
from tune_archiver.progress import SHOWN, above_bar

MiB = 2**20


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bar(clock: Clock, total: int) -> tuple[_Bar, io.StringIO]:
    out = io.StringIO()
    shown = _Bar(clock=clock, total=total, file=out, bar_format=BAR_FORMAT, ncols=120,
                 leave=True)
    return shown, out


def last_line(shown: _Bar, out: io.StringIO) -> str:
    shown.refresh()
    return out.getvalue().split("\r")[-1]


def test_sizes_are_in_binary_units() -> None:
    """Done and total read MiB, as every summary line does, never MB."""
    clock = Clock()
    shown, out = bar(clock, 10 * MiB)
    shown.counted += 5 * MiB
    shown.update(5 * MiB)
    line = last_line(shown, out)
    assert line.startswith("5.0 MiB / 10.0 MiB ")
    assert " MB" not in line
    shown.close()


def test_bytes_found_on_disk_are_not_speed() -> None:
    """A resumed file's 9 MiB on disk, then 1 MiB in a second: 1.0 MiB/s and 10 s left,
    not a 10 MiB/s burst with 00:01 left."""
    clock = Clock()
    shown, out = bar(clock, 20 * MiB)
    shown.rate()  # the first sample, at the start
    shown.update(9 * MiB)  # resumed: what BarProgress.resumed does
    clock.now += 1
    shown.counted += MiB
    shown.update(MiB)
    line = last_line(shown, out)
    assert "1.0 MiB/s 00:10 left" in line


def test_a_stalled_host_makes_the_rate_fall() -> None:
    """Once nothing has come for longer than the rate window, the rate shows 0 and no
    time left is promised."""
    clock = Clock()
    shown, out = bar(clock, 20 * MiB)
    shown.rate()
    clock.now += 1
    shown.counted += MiB
    shown.update(MiB)
    assert "1.0 MiB/s" in last_line(shown, out)
    clock.now += 7
    line = last_line(shown, out)
    assert "0 B/s --:-- left" in line


def test_verify_counts_blobs_and_no_tunes() -> None:
    """verify's bar counts the blobs it checks; a fetch's counts tunes and files."""
    checking = BarProgress("blobs")
    checking.add_files(3)
    checking.file_done()
    assert checking._bar.postfix == "blobs 1/3"
    checking.close()
    fetching = BarProgress()
    fetching.add_tunes(2)
    fetching.add_files(5)
    assert fetching._bar.postfix == "tunes 0/2, files 0/5"
    fetching.close()


def test_one_file_is_one_file() -> None:
    """A tune of one file says "1 file", not "1 files"."""
    result = TuneResult(7, (AssetResult(Asset("checkpoint", 0, "https://h/c"),
                                        Blob("a" * 64, 2048)),), title="T", seconds=1.0)
    assert fetch_summary(result) == ("tune 7 (T): 1 file, 2.0 KiB (1 new, 0 already "
                                     "archived, 0 failed) in 1.0 s")


def test_a_stopped_fetch_all_of_one_tune_says_1_tune() -> None:
    """`fetch --all` stopped after one tune said "1 tunes done"."""
    said = undone("SIGTERM", None, [TuneResult(7, (), title="T")], "/a/tmp")
    assert said.startswith("stopped by SIGTERM: 1 tune done; ")


def test_a_line_takes_the_bars_lock_only_while_a_bar_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no bar on screen (-q, no terminal) there is nothing to clear: tqdm's locks,
    once per tune of a quiet --all, are not taken. While a bar shows, they are."""
    cleared: list[bool] = []

    @contextlib.contextmanager
    def clearing(**_: object) -> Iterator[None]:
        cleared.append(True)
        yield

    monkeypatch.setattr(tqdm, "external_write_mode", clearing)
    with above_bar():
        pass
    assert cleared == []
    bar = BarProgress(shown=SHOWN)
    try:
        with above_bar():
            pass
    finally:
        bar.close()
    assert cleared == [True]
    with above_bar():
        pass
    assert cleared == [True]
