"""Blocking file work in worker threads, seen through to its end even when cancelled."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(function: Callable[..., T], *args: object,
                    stop: threading.Event | None = None) -> T:
    """Run a blocking partial-file call in a worker thread and see it through.

    If we are cancelled meanwhile, we still wait for the thread before re-raising:
    a write left running would race the partial's close (its size, even its fd).
    `stop` is set first: a read that looks at it gives up at its next chunk.
    """
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        if stop is not None:
            stop.set()
        # Its error, if it fails, is seen: the stop is what is raised, and asyncio would
        # print the error's traceback when the task is dropped (a second stop included).
        work.add_done_callback(_seen)
        await asyncio.wait([work])
        raise


class GivenUp(Exception):
    """A read in a worker thread given up because its caller was cancelled."""


async def reading(read: Callable[[Callable[[int], None]], T],
                  advance: Callable[[int], None]) -> T:
    """`read(step)` in a worker thread, `step(n)` called after each chunk (it calls
    `advance`). A stop (SIGTERM, Ctrl-C) gives the read up at its next chunk: a whole
    multi-GB checkpoint hashed to its end on a slow disk held the stop for minutes,
    past the grace time of systemd or Kubernetes, whose SIGKILL then left no line, no
    --json document, no run_end and no fail ping. A read has nothing to see through."""
    stop = threading.Event()

    def step(nbytes: int) -> None:
        if stop.is_set():
            raise GivenUp
        advance(nbytes)

    return await in_thread(read, step, stop=stop)


def _seen(work: asyncio.Future[Any]) -> None:
    if not work.cancelled():
        work.exception()
