"""HTTP sessions: timeouts that never cut a long download, and our User-Agent."""

from __future__ import annotations

import aiohttp

from tune_archiver.config import USER_AGENT, Settings
from tune_archiver.net.guard import guard_trace, guarded_connector
from tune_archiver.net.proxy import check_proxies

ASSET_READ_AHEAD = 2**18  # per connection; aiohttp buffers up to twice this


def new_session(settings: Settings, *, decompress: bool) -> aiohttp.ClientSession:
    """A session with connect and read timeouts but no total one.

    aiohttp's default 300 s total would cut a 2 GB checkpoint on a slow link; a
    server that stalls is caught by the read timeout instead. Asset sessions do not
    decompress, so a blob holds exactly the bytes the server sent. Unless
    settings.private_redirects, a redirect into a private address is refused. The
    environment's proxies are given per request (proxy.py): the session trusts no
    environment, whose ~/.netrc aiohttp would send to the hosts it names.
    """
    check_proxies()
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout
    )
    headers = {"User-Agent": USER_AGENT}
    if not decompress:
        headers["Accept-Encoding"] = "identity"
    # limit=0: the caller's semaphores are the limit (files x --split connections);
    # one host never gets more connections than one of them allows.
    per_host = 0 if decompress else max(settings.concurrency, settings.split)
    if settings.private_redirects:
        connector, traces = aiohttp.TCPConnector(limit=0, limit_per_host=per_host), []
    else:  # the usual case: a redirect into a private address is refused (see guard.py)
        connector, traces = guarded_connector(0, per_host), [guard_trace()]
    return aiohttp.ClientSession(
        # A body is read ahead this far while the last batch is written: aiohttp's
        # 64 KiB stops and restarts the socket many times per MiB of a large file.
        read_bufsize=ASSET_READ_AHEAD if not decompress else 2**16,
        timeout=timeout,
        headers=headers,
        auto_decompress=decompress,
        connector=connector,
        trace_configs=traces,
    )
