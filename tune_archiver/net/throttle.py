"""--limit-rate: one token bucket that every connection of a run takes its bytes from.

Tokens are bytes. A connection takes as many as it received before handing them on,
and may go into debt: it then waits until the bucket has refilled that debt. Takers
queue in arrival order (asyncio.Lock is FIFO), so a connection waits behind at most
one turn of each other: none starves. The bucket holds at most BURST_SECONDS of the
rate, so over any window of T seconds at most rate * (T + BURST_SECONDS) pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

BURST_SECONDS = 0.1  # 1% of a 10 s window


class TokenBucket:
    """A byte budget refilled at `rate` bytes a second; `clock` and `sleep` are injectable."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError("the rate must be positive")
        self.rate = rate
        self.capacity = rate * BURST_SECONDS
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._last = clock()
        self._turn = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def take(self, count: int) -> float:
        """Spend `count` bytes, waiting (in turn) until the budget allows them; returns
        the seconds waited, which a stall rule must not count against the host: the
        turns of the connections queued before this one included (each sleeping off its
        debt), not only its own."""
        if count <= 0:
            return 0.0
        asked = self._clock()
        async with self._turn:
            self._refill()
            self._tokens -= count
            if self._tokens < 0:
                await self._sleep(-self._tokens / self.rate)
                self._refill()  # the debt is paid by the time slept
            return self._clock() - asked
