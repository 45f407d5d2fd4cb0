"""A test server whose asyncio loop runs in a daemon thread of its own, so tests that
call the tool's blocking main() can talk to it."""

from __future__ import annotations

import asyncio
import threading
from typing import Self

# How often a socketserver's serve_forever looks whether shutdown() was asked for: its
# default, 0.5 s, made every shutdown() wait up to half a second (8 of test_ping's 9 s
# of wall), doing nothing. Twenty wakeups a second cost no measurable CPU.
SHUTDOWN_POLL = 0.05


class LoopThread:
    """start() runs the subclass's `_start` on the loop, close() its `_close`, then
    stops the loop and the thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _start(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
