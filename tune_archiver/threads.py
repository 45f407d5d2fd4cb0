"""Blocking file work in worker threads, seen through to its end even when cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(function: Callable[..., T], *args: object) -> T:
    """Run a blocking partial-file call in a worker thread and see it through.

    If we are cancelled meanwhile, we still wait for the thread before re-raising:
    a write left running would race the partial's close (its size, even its fd).
    """
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        # Its error, if it fails, is seen: the stop is what is raised, and asyncio would
        # print the error's traceback when the task is dropped (a second stop included).
        work.add_done_callback(_seen)
        await asyncio.wait([work])
        raise


def _seen(work: asyncio.Future[Any]) -> None:
    if not work.cancelled():
        work.exception()
