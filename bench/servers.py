"""The hosts the benchmark downloads from and writes to, all on 127.0.0.1.

nginx (two ports: unlimited, and 40 MiB/s per connection), the stand-in Astria API
(aiohttp in a thread of the bench process: it answers a few hundred small JSON
requests), the latency host (bench/latency_host.py in a process of its own, so its
event loop and GIL are not the API's) and moto's S3 server (a process of its own).
Every start_* returns a handle; stop() ends a process started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from aiohttp import web

NGINX, API_KEY = "/usr/sbin/nginx", "bench-key"
LATENCY_HOST = Path(__file__).resolve().parent / "latency_host.py"
# moto's dummy credentials, for tune-archiver, the boto3 peer and the bench's own client
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}


def ensure_tools() -> None:
    missing = [pkg for pkg, exe in (("nginx", NGINX), ("aria2", "aria2c"), ("curl", "curl"),
                                    ("openssl", "openssl")) if shutil.which(exe) is None]
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
            subprocess.run(argv, check=True, env=env, stdout=sys.stderr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(proc: subprocess.Popen[bytes], port: int, what: str,
                   seconds: float = 30) -> None:
    """Wait until `proc` accepts connections on `port`; fail if it exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} does not listen on 127.0.0.1:{port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_nginx(scratch: Path, served: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """nginx serving `served`: the base URLs of its unlimited and its 40m-per-connection port."""
    fast, slow = free_port(), free_port()
    conf, tmp = scratch / "nginx.conf", scratch / "nginx-tmp"
    tmp.mkdir()
    mime = "include /etc/nginx/mime.types;" if Path("/etc/nginx/mime.types").exists() else ""
    temps = "\n".join(f"    {k}_temp_path {tmp}/{k};"
                      for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))

    def server(port: int, extra: str = "") -> str:
        return f"    server {{ listen 127.0.0.1:{port}; root {served}; {extra} }}"

    conf.write_text(f"""daemon off;
worker_processes 2;
pid {scratch}/nginx.pid;
error_log {scratch}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    {mime}
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
{temps}
{server(fast)}
{server(slow, "limit_rate 40m;")}
}}
""")
    scratch.chmod(0o755)  # workers may run as nobody
    proc = subprocess.Popen([NGINX, "-p", str(scratch), "-e", f"{scratch}/nginx-error.log",
                             "-c", str(conf)])
    try:
        for port in (fast, slow):
            wait_listening(proc, port, "nginx (see its error log)")
    except BaseException:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{fast}", f"http://127.0.0.1:{slow}"


def start_latency_host(root: Path, folder: str,
                       delay: float) -> tuple[subprocess.Popen[bytes], str]:
    """bench/latency_host.py serving root/folder, `delay` s before each response: its URL.

    Started after the files are written: it reads them all into memory first.
    """
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(LATENCY_HOST), str(root), folder, str(port),
                             str(delay)], stdin=subprocess.DEVNULL)
    try:
        wait_listening(proc, port, "the latency host")
    except BaseException:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}"


def start_moto(scratch: Path) -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server (python -m moto.server) in a process of its own: its endpoint."""
    port = free_port()
    log = (scratch / "moto.log").open("wb")  # werkzeug logs a line per request
    env = {**os.environ, "TMPDIR": str(scratch)}  # large objects spill to temp files
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=log, env=env)
    log.close()
    try:
        wait_listening(proc, port, f"moto's server (see {scratch / 'moto.log'})", 60)
    except BaseException:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}"


class Api:
    """The stand-in Astria API: GET /tunes/<id>, in a background thread.

    `tunes` may grow until the first request: workloads add theirs as they are built.
    """

    def __init__(self) -> None:
        self.tunes: dict[int, dict[str, object]] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    async def tune(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"error": "unauthorized"}, status=401)
        tune = self.tunes.get(int(request.match_info["id"]))
        return web.json_response(tune) if tune else web.json_response({}, status=404)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get(r"/tunes/{id:\d+}", self.tune)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()

    def start(self) -> Api:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.sock.close()
