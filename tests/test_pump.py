"""transport.pump: a body handed to the writer in order, one batch at a time, while the
next batch is received; what arrived before a failure is never lost."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tune_archiver.errors import BodyError, IntegrityError
from tune_archiver.net.transport import CHUNK_BYTES, pump, translated

BODY = os.urandom(5 * CHUNK_BYTES + 12345)
CUT_AFTER = 3 * CHUNK_BYTES + 777  # the broken route sends this much, then hangs up
PIECE = 64 * 1024


async def whole(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
    await response.prepare(request)
    for start in range(0, len(BODY), PIECE):
        await response.write(BODY[start:start + PIECE])
    await response.write_eof()
    return response


async def broken(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
    await response.prepare(request)
    await response.write(BODY[:CUT_AFTER])
    assert request.transport is not None
    request.transport.close()
    return response


@pytest.fixture
async def host() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/whole", whole)
    app.router.add_get("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


class Recorder:
    """A sink that notes each batch, and whether two calls ever overlapped."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[bytes] = []
        self.busy = False
        self.overlapped = False
        self.fail_on = fail_on

    async def __call__(self, pieces: list[bytes]) -> None:
        self.overlapped |= self.busy
        self.busy = True
        try:
            await asyncio.sleep(0)  # let the pump run on while this batch is "written"
            if self.fail_on == len(self.batches):
                raise IntegrityError("the sink refused this batch")
            self.batches.append(b"".join(pieces))
        finally:
            self.busy = False


async def test_every_byte_reaches_the_sink_in_order_one_batch_at_a_time(host: str) -> None:
    sink = Recorder()
    async with aiohttp.ClientSession() as session, session.get(f"{host}/whole") as response:
        tail = await pump(response, sink)
    assert b"".join(sink.batches) + b"".join(tail) == BODY
    assert len(sink.batches) >= 4  # batched, not one call per piece nor one in all
    assert not sink.overlapped


async def test_bytes_before_a_broken_body_are_handed_over_before_the_error(host: str) -> None:
    sink = Recorder()
    async with aiohttp.ClientSession() as session, session.get(f"{host}/broken") as response:
        with pytest.raises(BodyError), translated(f"{host}/broken"):
            await pump(response, sink)
    assert b"".join(sink.batches) == BODY[:CUT_AFTER]
    assert not sink.overlapped


async def test_a_failing_sink_stops_the_pump_and_nothing_follows_it(host: str) -> None:
    sink = Recorder(fail_on=1)
    async with aiohttp.ClientSession() as session, session.get(f"{host}/whole") as response:
        with pytest.raises(IntegrityError, match="refused"):
            await pump(response, sink)
    assert b"".join(sink.batches) == BODY[:len(sink.batches[0])]  # the first batch only
    assert not sink.overlapped
