"""A lean Python downloader, for context: a row of W1, W2 and W4, never a peer.

    python bench/lean.py JOBS LIST OUT

Downloads each `URL NAME` line of LIST into OUT/NAME, JOBS at once over one aiohttp
session, doing only the work tune-archiver must do for every file: hash every byte
(sha256), make the file durable (fsync) before it takes its final name (a rename),
and the folder once at the end. Bytes are gathered into batches of 1 MiB, each
written and hashed in a worker thread while the next arrives. It keeps no manifest,
journal, lock, sidecar or resume state, checks nothing the host says, and retries
nothing. Where files are many and small (W2, W4) it shows what per-file work costs
Python itself, apart from what tune-archiver adds to be trusted; on one large file
(W1) tune-archiver, which hashes and writes on separate threads, is the faster.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

BATCH = 2**20


def write(fd: int, digest: Any, pieces: list[bytes]) -> None:
    for piece in pieces:
        digest.update(piece)
    os.writev(fd, pieces)


def finish(fd: int, temp: Path, final: Path) -> None:
    os.fsync(fd)
    os.close(fd)
    temp.rename(final)


async def one(session: aiohttp.ClientSession, url: str, out: Path, name: str) -> str:
    temp, digest = out / f".{name}.part", hashlib.sha256()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    async with session.get(url) as response:
        response.raise_for_status()
        pending: list[bytes] = []
        held, writing = 0, None
        async for piece in response.content.iter_any():
            pending.append(piece)
            held += len(piece)
            if held >= BATCH:
                if writing is not None:
                    await writing  # in order: one batch written while the next arrives
                writing = asyncio.ensure_future(asyncio.to_thread(write, fd, digest, pending))
                pending, held = [], 0
        if writing is not None:
            await writing
    await asyncio.to_thread(lambda: (write(fd, digest, pending), finish(fd, temp, out / name)))
    return digest.hexdigest()


async def main(jobs: int, pairs: list[list[str]], out: Path) -> None:
    limit = asyncio.Semaphore(jobs)
    connector = aiohttp.TCPConnector(limit=jobs)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def bounded(url: str, name: str) -> str:
            async with limit:
                return await one(session, url, out, name)

        await asyncio.gather(*(bounded(url, name) for url, name in pairs))
    folder = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


if __name__ == "__main__":
    lines = Path(sys.argv[2]).read_text().splitlines()
    asyncio.run(main(int(sys.argv[1]), [line.split() for line in lines if line], Path(sys.argv[3])))
