"""W5's stand-in: an Astria account of many tiny tunes, served by aiohttp on 127.0.0.1.

    python bench/account.py --tunes 20000 --port 8080 [--key bench-key]

Plays what `fetch --all` asks of Astria: GET /tunes (pages of at most 120, newest
first, `before_id` and `limit` as astria/client.py sends them), GET /tunes/:id, and
the files: each tune has one checkpoint of its own (2 KiB, distinct per tune: the
tool refuses checkpoints under 1 KiB as glitches) and the same two training images
as every other tune. The API answers only the Bearer key; the files need none.

Tune ids are 1..N; pages are encoded once, at start, so the server costs little next
to the client it serves (curl paging the same listing gets the same pages). When it
listens it prints one line, `listening http://127.0.0.1:PORT`, and flushes: start()
runs it in a subprocess and waits for that line.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from aiohttp import web

API_KEY = "bench-key"
PAGE = 120  # the most Astria gives per page
CKPT_BYTES = 2048
IMAGES = {"a.jpg": 3000, "b.jpg": 5000}  # name -> size; shared by every tune
STAMPS = {"updated_at": "2026-11-01T10:00:00.000Z", "expires_at": "2027-12-01T10:00:00.000Z",
          "trained_at": "2026-10-31T10:00:00.000Z"}


def tune_json(base: str, tune_id: int) -> dict[str, object]:
    """The tune as GET /tunes/:id and the listing give it."""
    ckpt = f"{base}/ckpt/{tune_id}.safetensors"
    return {"id": tune_id, "title": f"tune {tune_id}", "name": "man", "branch": "flux1",
            "model_type": "lora", "ckpt_url": ckpt, "ckpt_urls": [ckpt],
            "orig_images": [f"{base}/img/{name}" for name in IMAGES], **STAMPS}


def checkpoint(tune_id: int) -> bytes:
    """Tune `tune_id`'s checkpoint: CKPT_BYTES, different for every tune."""
    line = f"checkpoint of tune {tune_id}\n".encode()
    return (line * (CKPT_BYTES // len(line) + 1))[:CKPT_BYTES]


class Account:
    """The account's answers, encoded once."""

    def __init__(self, tunes: int, base: str, key: str = API_KEY) -> None:
        self.tunes = tunes
        self.key = key
        self.bodies = {i: json.dumps(tune_json(base, i)).encode() for i in range(1, tunes + 1)}
        # The page before each id a page can end on (and the first, before None).
        self.pages: dict[int | None, bytes] = {}
        for top in range(tunes, 0, -PAGE):
            ids = range(top, max(top - PAGE, 0), -1)
            before = None if top == tunes else top + 1
            self.pages[before] = b"[" + b",".join(self.bodies[i] for i in ids) + b"]"
        rng = random.Random(5)
        self.images = {name: rng.randbytes(size) for name, size in IMAGES.items()}

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.key}"

    async def list_tunes(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "Unauthorized"}, status=401)
        limit = int(request.query.get("limit", "20"))
        before = int(request.query.get("before_id", "0")) or None
        body = self.pages.get(before) if limit == PAGE else None
        if body is None:  # a page not encoded ahead: built on the spot
            top = min(before - 1 if before else self.tunes, self.tunes)
            ids = range(top, max(top - min(limit, PAGE), 0), -1)
            body = b"[" + b",".join(self.bodies[i] for i in ids) + b"]"
        return web.Response(body=body, content_type="application/json")

    async def tune(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "Unauthorized"}, status=401)
        body = self.bodies.get(int(request.match_info["id"]))
        if body is None:
            return web.json_response({"error": "Not found"}, status=404)
        return web.Response(body=body, content_type="application/json")

    async def ckpt(self, request: web.Request) -> web.Response:
        tune_id = int(request.match_info["id"])
        if not 1 <= tune_id <= self.tunes:
            return web.Response(status=404)
        return web.Response(body=checkpoint(tune_id), content_type="application/octet-stream")

    async def image(self, request: web.Request) -> web.Response:
        data = self.images.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/jpeg")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/tunes", self.list_tunes)
        app.router.add_get(r"/tunes/{id:\d+}", self.tune)
        app.router.add_get(r"/ckpt/{id:\d+}.safetensors", self.ckpt)
        app.router.add_get("/img/{name}", self.image)
        return app


def start(tunes: int, key: str = API_KEY) -> tuple[subprocess.Popen[str], str]:
    """Run the account in a subprocess on a free port; (the process, its base URL).

    The caller stops it (terminate, then wait)."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--tunes", str(tunes), "--port", "0",
         "--key", key], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the stand-in account did not start: {line!r}")
    return proc, line.split()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tunes", type=int, default=20_000)
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--key", default=API_KEY)
    args = parser.parse_args()
    import asyncio
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", args.port))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def serve() -> None:
        runner = web.AppRunner(Account(args.tunes, base, args.key).app(), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=1024).start()
        print(f"listening {base}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
