"""HTTP sessions: timeouts that never cut a long download, and our User-Agent."""

from __future__ import annotations

import aiohttp

from tune_archiver.config import USER_AGENT, Settings


def new_session(settings: Settings, *, decompress: bool) -> aiohttp.ClientSession:
    """A session with connect and read timeouts but no total one.

    aiohttp's default 300 s total would cut a 2 GB checkpoint on a slow link; a
    server that stalls is caught by the read timeout instead. Asset sessions do not
    decompress, so a blob holds exactly the bytes the server sent.
    """
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout
    )
    headers = {"User-Agent": USER_AGENT}
    if not decompress:
        headers["Accept-Encoding"] = "identity"
    return aiohttp.ClientSession(
        timeout=timeout,
        headers=headers,
        auto_decompress=decompress,
        connector=aiohttp.TCPConnector(limit=0),  # the caller's semaphore is the limit
    )
