"""--limit-rate: the shared token bucket under an injected clock, and one real download."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.helpers import blob_file, run_fetch
from tests.standin import StandIn
from tune_archiver.cli.scale import byte_rate
from tune_archiver.net.throttle import TokenBucket

MiB = 2**20


class FakeTime:
    """A clock that only moves when slept on; each sleep yields to the other tasks."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def connections(bucket: TokenBucket, fake: FakeTime, sizes: list[int], until: float
                      ) -> list[list[tuple[float, int]]]:
    """Each connection takes pieces of its size until the fake clock passes `until`;
    returns each one's (time granted, bytes) list."""
    grants: list[list[tuple[float, int]]] = [[] for _ in sizes]

    async def one(index: int, size: int) -> None:
        while fake.now < until:
            await bucket.take(size)
            grants[index].append((fake.now, size))
            await asyncio.sleep(0)

    async with asyncio.TaskGroup() as group:
        for index, size in enumerate(sizes):
            group.create_task(one(index, size))
    return grants


def test_any_10_s_window_stays_within_5_percent_of_the_cap() -> None:
    """Eight connections of mixed piece sizes for 60 simulated seconds: every 10 s window
    carries between 95% and 105% of rate * 10."""
    fake = FakeTime()
    rate = 2 * MiB
    bucket = TokenBucket(rate, fake.clock, fake.sleep)
    grants = asyncio.run(connections(bucket, fake, [16_384, 65_536, 1_000, 250_000] * 2, 60))
    every = sorted(grant for each in grants for grant in each)
    for step in range(0, 500):
        start = step / 10
        carried = sum(size for when, size in every if start <= when < start + 10)
        assert 0.95 * rate * 10 <= carried <= 1.05 * rate * 10, start


def test_no_connection_starves() -> None:
    """Connections taking small and large pieces each get a share: none is left waiting
    while another takes turn after turn (the smallest gets at least a tenth of the bytes
    the largest gets, and every one is served in each simulated second)."""
    fake = FakeTime()
    bucket = TokenBucket(1 * MiB, fake.clock, fake.sleep)
    grants = asyncio.run(connections(bucket, fake, [1_024, 8_192, 65_536, 262_144], 20))
    totals = [sum(size for _, size in each) for each in grants]
    assert min(totals) > 0
    for each in grants:
        for second in range(1, 19):
            assert any(second <= when < second + 1 for when, _ in each), second
    assert totals[3] <= 256 * totals[0]  # turns alternate: bytes follow the piece sizes


def test_a_piece_larger_than_the_burst_waits_for_its_bytes() -> None:
    """A 4 MiB piece at 1 MiB/s, after the burst is spent, waits 4 s."""
    fake = FakeTime()
    bucket = TokenBucket(1 * MiB, fake.clock, fake.sleep)
    asyncio.run(bucket.take(int(bucket.capacity)))
    waited = asyncio.run(bucket.take(4 * MiB))
    assert waited == pytest.approx(4.0)
    assert fake.now == pytest.approx(4.0)


def test_a_connection_queued_behind_another_is_told_the_whole_wait() -> None:
    """A connection that waits its turn behind one sleeping off a debt of 1 s waited for
    the bucket that long too, not only for its own 10 ms: the stall rule must not count
    that second against the host (it counted it, and cut fast downloads shared by a few
    connections as 'slower than --min-rate')."""
    fake = FakeTime()

    async def sleep(seconds: float) -> None:  # the other connection asks meanwhile
        await asyncio.sleep(0)
        fake.now += seconds

    bucket = TokenBucket(1000, fake.clock, sleep)

    async def both() -> list[float]:  # the first has 1 s of debt past the burst
        return list(await asyncio.gather(bucket.take(1100), bucket.take(10)))

    assert asyncio.run(both()) == pytest.approx([1.0, 1.01])


def test_downloads_sharing_the_cap_are_never_cut_as_slow(standin: StandIn, tmp_path: Path
                                                          ) -> None:
    """Four files at once from a fast host under --limit-rate 1M, each at about 256 KiB/s,
    with --min-rate 400K: waiting for the bucket is not the host's slowness, so none is
    cut. Each was cut every second as 'slower than 409600 bytes/s', and retried."""
    files = [os.urandom(600_000) for _ in range(4)]
    urls = [standin.add_file(f"f{i}.safetensors", data) for i, data in enumerate(files)]
    standin.add_tune(1, urls, [])
    assert run_fetch(standin, tmp_path / "a", "1", "--limit-rate", "1M", "--min-rate", "400K",
                     "--stall-window", "1", "--concurrency", "4") == 0
    assert [len(standin.seen("cdn", f"/files/f{i}")) for i in range(4)] == [1] * 4


@pytest.mark.parametrize(("text", "value"), [("20M", 20 * MiB), ("500K", 500 * 1024),
                                             ("1.5M", 1.5 * MiB), ("4096", 4096.0)])
def test_rates_are_read_in_powers_of_1024(text: str, value: float) -> None:
    """--limit-rate takes K, M and G suffixes."""
    assert byte_rate(text) == value


@pytest.mark.parametrize("text", ["0", "fast", "-1M", ""])
def test_a_rate_that_is_not_one_is_refused(text: str, standin: StandIn, tmp_path: Path) -> None:
    """--limit-rate 0 or a word: a usage error, exit 2."""
    assert run_fetch(standin, tmp_path / "a", "1", "--limit-rate", text) == 2


def test_a_real_download_keeps_to_the_cap(standin: StandIn, tmp_path: Path) -> None:
    """6 MiB in three files, one split into ranges, at --limit-rate 3M never goes faster
    than the cap (total bytes over wall time at most 25% above it: the burst and timer
    slack). How near the cap it comes depends on the machine's load, so it is not
    asserted here (a loaded machine failed that); the fake-clock tests above check the
    bucket's arithmetic, waits included."""
    files = [os.urandom(3 * MiB), os.urandom(MiB + 1), os.urandom(2 * MiB - 1)]
    urls = [standin.add_file(f"f{i}.safetensors", data) for i, data in enumerate(files)]
    standin.add_tune(1, urls[:1], [])
    standin.add_tune(2, urls[1:], [])
    started = time.monotonic()
    code = run_fetch(standin, tmp_path / "a", "1", "2", "--limit-rate", "3M", "--split", "4",
                     "--split-threshold", "1M")
    elapsed = time.monotonic() - started
    assert code == 0
    assert all(blob_file(tmp_path / "a", data).exists() for data in files)
    assert any("Range" in seen.headers for seen in standin.seen("cdn", "/files/f0"))
    # The burst (0.1 s of the rate) comes free: the rate over the run is measured past it.
    achieved = (sum(map(len, files)) - 0.1 * 3 * MiB) / elapsed
    assert achieved <= 1.25 * 3 * MiB, achieved
