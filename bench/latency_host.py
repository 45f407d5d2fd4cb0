"""A file host that waits before every response: latency_host.py ROOT FOLDER PORT DELAY.

Reads every file under ROOT/FOLDER into memory, then serves GET /FOLDER/<name> on
127.0.0.1:PORT, sleeping DELAY seconds before the headers go out. bench.py runs it in
a process of its own, so a tool's many connections at once wait on the delay, not on
this host's CPU or on the stand-in API's event loop. From memory a response costs
about 0.4 ms of CPU (web.FileResponse's stat and open in threads: about 1.1 ms), so
16 connections at 40 ms ask for under a fifth of a core. Ends on SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web


def main() -> None:
    root, folder, port, delay = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), \
        float(sys.argv[4])
    files = {path.relative_to(root).as_posix(): path.read_bytes()
             for path in (root / folder).rglob("*") if path.is_file()}

    async def serve(request: web.Request) -> web.Response:
        data = files.get(request.match_info["path"])
        if data is None:
            raise web.HTTPNotFound()
        await asyncio.sleep(delay)
        return web.Response(body=data, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{path:.+}", serve)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
