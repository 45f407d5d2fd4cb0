"""The progress bar: tqdm on stderr, with sizes in binary units (KiB, MiB, GiB, as every
summary does), and a rate and time left from the last RATE_WINDOW seconds only: bytes a
resumed file had on disk already never count as speed, and a stalled host makes the
rate fall and the clock tick (a ticker redraws the bar every TICK seconds).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from tune_archiver.text import human_bytes

RATE_WINDOW = 5.0  # seconds the shown rate is averaged over
TICK = 0.5  # seconds between redraws when nothing arrives
BAR_FORMAT = "{done} / {size} {bar} {percentage:3.0f}% {speed} {left}{postfix}"


class _Bar(tqdm):  # type: ignore[type-arg]
    """tqdm, with sizes in binary units and a rate over the last RATE_WINDOW seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, **options: Any) -> None:
        self.samples: deque[tuple[float, int]] = deque()  # (time, bytes counted as speed)
        self.counted = 0
        self.clock = clock
        super().__init__(**options)

    @property
    def format_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = dict(super().format_dict)
        rate = self.rate()
        left = (found["total"] or 0) - found["n"]
        found.update(
            done=human_bytes(found["n"]), size=human_bytes(found["total"] or 0),
            speed=f"{human_bytes(rate)}/s",
            left=f"{_clock(left / rate)} left" if rate > 0 and left > 0 else "--:-- left",
        )
        return found

    def rate(self) -> float:
        """Bytes per second over the last RATE_WINDOW seconds; 0 when nothing came."""
        now = self.clock()
        self.samples.append((now, self.counted))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()
        start, first = self.samples[0]
        return (self.counted - first) / (now - start) if now > start else 0.0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class BarProgress:
    """One tqdm bar on stderr: bytes with rate and time left, and tunes and files done
    (or, for verify, blobs checked)."""

    def __init__(self, items: str = "files", shown: set[object] | None = None) -> None:
        """`shown`: where the bar is listed while on screen (progress.SHOWN, which
        progress.above_bar reads)."""
        self._bar = _Bar(
            total=0, file=sys.stderr, dynamic_ncols=True, leave=False, bar_format=BAR_FORMAT,
        )
        self._items = items
        self._tunes = 0
        self._tunes_done = 0
        self._files = 0
        self._done = 0
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()
        self._shown = set() if shown is None else shown
        self._shown.add(self)

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
        self._bar.counted += max(nbytes, 0)
        self._bar.update(nbytes)

    def resumed(self, nbytes: int) -> None:
        self._bar.update(nbytes)

    def file_done(self) -> None:
        self._done += 1
        self._show_files()

    def close(self) -> None:
        self._shown.discard(self)
        self._stop.set()
        self._ticker.join()
        self._bar.close()

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            self._bar.refresh()  # the clock ticks and the rate falls while nothing comes

    def _show_files(self) -> None:
        items = f"{self._items} {self._done}/{self._files}"
        text = f"tunes {self._tunes_done}/{self._tunes}, {items}" if self._tunes else items
        self._bar.set_postfix_str(text, refresh=False)
