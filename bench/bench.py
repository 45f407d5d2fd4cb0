"""Throughput benchmark: tune-archiver against curl and aria2c on local nginx.

Run from the repository root, after `pip install -e .`, as root on Debian:

    bench/run [--runs 3] [--only W1,W1-nohash,W2,W3] [--ta-args "--concurrency 16"] [--keep]
              [--snapshot]

(`--ta-args=--opt` for a single option without a space.) Installs nginx, aria2 and
curl with apt-get when missing, generates a 1 GiB checkpoint and 1,000 images in a
scratch dir under /tmp, serves them from two nginx ports on 127.0.0.1 (one capped
at 40 MiB/s per connection), plays the Astria API with aiohttp, times every tool
on every workload (median of the runs: wall, CPU user+sys, peak RSS), checks the
output, then prints a Markdown table and writes it to bench/results.md.
Note: on a systemd host, installing nginx may also start the system nginx on :80.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
NGINX, API_KEY = "/usr/sbin/nginx", "bench-key"
CKPT_BYTES, IMAGE_TUNES, IMAGES_PER_TUNE, SEED = 2**30, range(101, 151), 20, 20240601
TA = [sys.executable, "-m", "tune_archiver"]
RUN_TIMEOUT = 900  # seconds; a hung run is killed and fails the benchmark
WORKLOADS = ("W1", "W1-nohash", "W2", "W3")
MEASURE = Path(__file__).resolve().parent / "measure.py"  # times one run: see there


@dataclass
class Case:
    """One tool on one workload: the command for an output dir, and its check."""

    tool: str
    argv: Callable[[Path], list[str]]
    verify: Callable[[Path, bool], None]
    env: dict[str, str] = field(default_factory=dict)
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)


def ensure_tools() -> None:
    missing = [pkg for pkg, exe in (("nginx", NGINX), ("aria2", "aria2c"), ("curl", "curl"))
               if shutil.which(exe) is None]
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
            subprocess.run(argv, check=True, env=env, stdout=sys.stderr)


def generate(served: Path) -> dict[str, tuple[int, str]]:
    """The served files: relative name -> (size, sha256)."""
    files: dict[str, tuple[int, str]] = {}
    digest, block = hashlib.sha256(), 16 * 2**20
    with (served / "model.safetensors").open("wb") as file:
        for _ in range(CKPT_BYTES // block):
            data = os.urandom(block)
            digest.update(data)
            file.write(data)
    files["model.safetensors"] = (CKPT_BYTES, digest.hexdigest())
    sizes = random.Random(SEED)
    (served / "img").mkdir()
    for tune in IMAGE_TUNES:
        for i in range(IMAGES_PER_TUNE):
            data = os.urandom(sizes.randint(50_000, 500_000))
            name = f"img/{tune}-{i:02d}.jpg"
            (served / name).write_bytes(data)
            files[name] = (len(data), hashlib.sha256(data).hexdigest())
    return files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_nginx(scratch: Path, served: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """nginx on two ports serving `served`: unlimited, and 40m per connection."""
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
    for port in (fast, slow):
        for _ in range(100):
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {proc.returncode}; see its error log")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"nginx does not listen on 127.0.0.1:{port}")
    return proc, fast, slow


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Api:
    """The stand-in Astria API: GET /tunes/<id>, in a background thread."""

    def __init__(self, tunes: dict[int, dict[str, object]]) -> None:
        self.tunes = tunes
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


def make_tunes(fast: str, slow: str) -> dict[int, dict[str, object]]:
    stamps = {"updated_at": "2026-11-01T10:00:00.000Z", "expires_at": "2026-12-01T10:00:00.000Z"}
    tunes: dict[int, dict[str, object]] = {}
    for tid, base in ((1, fast), (2, slow)):
        url = f"{base}/model.safetensors"
        tunes[tid] = {"id": tid, "title": f"ckpt {tid}", "ckpt_urls": [url], "ckpt_url": url,
                      "orig_images": [], **stamps}
    for tid in IMAGE_TUNES:
        images = [f"{fast}/img/{tid}-{i:02d}.jpg" for i in range(IMAGES_PER_TUNE)]
        tunes[tid] = {"id": tid, "title": f"images {tid}", "ckpt_urls": [], "ckpt_url": None,
                      "orig_images": images, **stamps}
    return tunes


def check_file(path: Path, size: int, sha: str, hash_it: bool) -> None:
    if not path.is_file() or path.stat().st_size != size:
        raise AssertionError(f"{path}: missing or not {size} bytes")
    if hash_it:
        with path.open("rb") as file:
            if hashlib.file_digest(file, "sha256").hexdigest() != sha:
                raise AssertionError(f"{path}: wrong sha256")


def verify_archive(tunes: dict[int, dict[str, object]], files: dict[str, tuple[int, str]],
                   ids: list[int], hashed: bool = True) -> Callable[[Path, bool], None]:
    """Each manifest complete, each asset's sha256 the served file's, each blob present.

    With hashed=False (the bench-only switch that skips hashing) only sizes are checked.
    """

    def verify(out: Path, first: bool) -> None:
        for tid in ids:
            manifest = json.loads((out / "manifests" / f"{tid}.json").read_text())
            if not manifest["complete"]:
                raise AssertionError(f"manifest {tid} not complete")
            tune = tunes[tid]
            urls = [*tune["ckpt_urls"], *tune["orig_images"]]
            wanted = [files[u.split("/", 3)[3]] for u in urls]
            got = [(a["size"], a["sha256"]) for a in manifest["assets"] if a["status"] == "ok"]
            if not hashed:
                got, wanted = [size for size, _ in got], [size for size, _ in wanted]
            if sorted(got) != sorted(wanted):
                raise AssertionError(f"manifest {tid}: sha256s differ from the served files")
            for asset in manifest["assets"]:
                big = hashed and asset["size"] == CKPT_BYTES
                check_file(out / asset["path"], asset["size"], asset["sha256"], first and big)

    return verify


def verify_files(expected: dict[str, tuple[int, str]]) -> Callable[[Path, bool], None]:
    def verify(out: Path, first: bool) -> None:
        for name, (size, sha) in expected.items():
            check_file(out / name, size, sha, first and size == CKPT_BYTES)

    return verify


def build_cases(scratch: Path, api: str, fast: str, slow: str, ta_args: list[str],
                tunes: dict[int, dict[str, object]],
                files: dict[str, tuple[int, str]]) -> dict[str, list[Case]]:
    key = {"ASTRIA_API_KEY": API_KEY}
    ckpt = {"model.safetensors": files["model.safetensors"]}

    def ta(*ids: int) -> Callable[[Path], list[str]]:
        return lambda out: [*TA, "fetch", *map(str, ids), "-q", "--archive", str(out),
                            "--api-url", api, *ta_args]

    def aria(url: str, x: int) -> Callable[[Path], list[str]]:
        return lambda out: ["aria2c", f"-x{x}", f"-s{x}", "-k1M", "-q", "--allow-overwrite=true",
                            "--file-allocation=none", "-d", str(out), "-o", "model.safetensors",
                            url]

    def curl(url: str) -> Callable[[Path], list[str]]:
        return lambda out: ["curl", "-sS", "-o", str(out / "model.safetensors"), url]

    images = {f"{t}-{i:02d}.jpg": files[f"img/{t}-{i:02d}.jpg"]
              for t in IMAGE_TUNES for i in range(IMAGES_PER_TUNE)}
    aria_list, curl_conf = scratch / "aria2-list.txt", scratch / "curl-config.txt"
    aria_list.write_text("".join(f"{fast}/img/{n}\n  out={n}\n" for n in images))
    curl_conf.write_text("".join(f'url = "{fast}/img/{n}"\noutput = "{{out}}/{n}"\n'
                                 for n in images))

    def curl_many(out: Path) -> list[str]:
        conf = out.parent / "curl-config-run.txt"
        conf.write_text(curl_conf.read_text().replace("{out}", str(out)))
        return ["curl", "-sS", "-Z", "--parallel-max", "8", "-K", str(conf)]

    ids = list(IMAGE_TUNES)
    return {
        "W1": [Case("tune-archiver", ta(1), verify_archive(tunes, files, [1]), key),
               Case("curl", curl(f"{fast}/model.safetensors"), verify_files(ckpt)),
               Case("aria2c -x16 -s16", aria(f"{fast}/model.safetensors", 16), verify_files(ckpt)),
               Case("aria2c -x1 -s1", aria(f"{fast}/model.safetensors", 1), verify_files(ckpt))],
        "W1-nohash": [Case("tune-archiver (SKIP_HASH=1)", ta(1),
                           verify_archive(tunes, files, [1], hashed=False),
                           {**key, "TUNE_ARCHIVER_BENCH_SKIP_HASH": "1"})],
        "W2": [Case("tune-archiver", ta(*ids), verify_archive(tunes, files, ids), key),
               Case("aria2c -j8", lambda out: ["aria2c", "-j8", "-q", "--allow-overwrite=true",
                                               "--file-allocation=none", "-d", str(out),
                                               "-i", str(aria_list)], verify_files(images)),
               Case("curl -Z --parallel-max 8", curl_many, verify_files(images))],
        "W3": [Case("tune-archiver", ta(2), verify_archive(tunes, files, [2]), key),
               Case("tune-archiver --split 16 --concurrency 16",
                    lambda out: [*ta(2)(out), "--split", "16", "--concurrency", "16"],
                    verify_archive(tunes, files, [2]), key),
               Case("curl", curl(f"{slow}/model.safetensors"), verify_files(ckpt)),
               Case("aria2c -x16 -s16", aria(f"{slow}/model.safetensors", 16), verify_files(ckpt))],
    }


def run_once(case: Case, out: Path, first: bool, cwd: Path) -> None:
    """Run one case into a fresh `out`, record wall, CPU and peak RSS, and check it."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    argv = case.argv(out)
    os.sync()  # the previous run's dirty pages are not this run's cost
    log, result = out.parent / "run.log", out.parent / "run.json"
    result.unlink(missing_ok=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-S", "-I", str(MEASURE), str(result), *argv],
                                cwd=cwd, env={**os.environ, **case.env}, stdout=sink,
                                stderr=sink, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(RUN_TIMEOUT)
        except BaseException:  # timeout, Ctrl-C, SIGTERM: the tool goes too
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    run = json.loads(result.read_text()) if result.exists() else {"code": proc.returncode}
    if run["code"] != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited with {run['code']}:\n"
                           f"{log.read_text(errors='replace')[-3000:]}")
    case.verify(out, first)
    case.walls.append(run["wall"])
    case.cpus.append(run["cpu"])
    case.rss_kib.append(run["maxrss_kib"])
    print(f"  {case.tool:28} run {len(case.walls)}: wall {run['wall']:6.2f} s, "
          f"cpu {run['cpu']:6.2f} s, rss {run['maxrss_kib'] / 1024:7.1f} MiB", file=sys.stderr)


def versions(cwd: Path) -> str:
    def first_line(argv: list[str]) -> str:
        run = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
        return (run.stdout or run.stderr).strip().splitlines()[0]

    digest = hashlib.sha256()  # which tune_archiver/*.py was measured (no git here)
    for path in sorted((cwd / "tune_archiver").rglob("*.py")):
        digest.update(path.relative_to(cwd).as_posix().encode() + b"\0" + path.read_bytes())
    return "; ".join([first_line([*TA, "--version"]) + f" (sources {digest.hexdigest()[:12]})",
                      f"Python {sys.version.split()[0]}",
                      f"aiohttp {aiohttp.__version__}", first_line([NGINX, "-v"]),
                      first_line(["curl", "--version"]), first_line(["aria2c", "--version"])])


def report(workloads: dict[str, list[Case]], runs: int, ta_args: list[str], cwd: Path) -> str:
    """The Markdown table of medians, with tune-archiver's wall over the best peer's."""
    peers = {"W1": ("curl", "aria2c -x16 -s16", "aria2c -x1 -s1"), "W2": ("aria2c -j8",),
             "W3": ("aria2c -x16 -s16",)}
    best = {w: min(statistics.median(c.walls) for c in workloads[w] if c.tool in tools)
            for w, tools in peers.items() if w in workloads}
    if "W1" in best:
        best["W1-nohash"] = best["W1"]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# tune-archiver benchmark, {now}", "",
             f"nproc {len(os.sched_getaffinity(0))}; load average at the end "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work skews the walls); "
             f"medians of {runs} runs; extra tune-archiver args: "
             f"`{shlex.join(ta_args) or '(none)'}`", "", f"Versions: {versions(cwd)}", "",
             "| workload | tool | wall s | CPU s | peak RSS MiB | walls of the runs | "
             "vs best peer |", "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for name, cases in workloads.items():
        for c in cases:
            wall = statistics.median(c.walls)
            is_ta = c.tool.startswith("tune-archiver")
            ratio = f"{wall / best[name]:.2f}x" if is_ta and name in best else ""
            lines.append(f"| {name} | {c.tool} | {wall:.2f} | {statistics.median(c.cpus):.2f} | "
                         f"{statistics.median(c.rss_kib) / 1024:.1f} | "
                         f"{', '.join(f'{w:.2f}' for w in c.walls)} | {ratio} |")
    lines += ["", "Best peer: W1 (and W1-nohash) the fastest of curl and both aria2c; "
              "W2 aria2c -j8; W3 aria2c -x16 -s16."]
    if "W1" in workloads and "W1-nohash" in workloads:
        hashed = statistics.median(workloads["W1"][0].walls)
        bare = statistics.median(workloads["W1-nohash"][0].walls)
        lines.append(f"W1 hashing overhead: {(hashed - bare) / bare:+.1%} "
                     f"({hashed:.2f} s vs {bare:.2f} s with TUNE_ARCHIVER_BENCH_SKIP_HASH=1).")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    parser.add_argument("--ta-args", default="", help="appended to every tune-archiver fetch")
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir")
    parser.add_argument("--snapshot", action="store_true",
                        help="run a copy of tune_archiver/ taken at the start (others may edit it)")
    args = parser.parse_args()
    only, ta_args = args.only.split(","), shlex.split(args.ta_args)
    if args.runs < 1 or not set(only) <= set(WORKLOADS):
        parser.error(f"--runs must be >= 1 and --only a subset of {','.join(WORKLOADS)}")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the cleanup runs
    ensure_tools()
    with contextlib.ExitStack() as cleanup:  # undone in reverse, each even if another fails
        scratch = Path(tempfile.mkdtemp(prefix="tune-archiver-bench-"))
        if args.keep:
            cleanup.callback(print, f"kept {scratch}", file=sys.stderr)
        else:
            cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
        served = scratch / "served"
        served.mkdir()
        print(f"generating files in {scratch} ...", file=sys.stderr)
        files = generate(served)
        cwd = ROOT  # `python -m tune_archiver` imports the package from here
        if args.snapshot:
            cwd = scratch / "snapshot"
            shutil.copytree(ROOT / "tune_archiver", cwd / "tune_archiver",
                            ignore=shutil.ignore_patterns("__pycache__"))
        nginx, fast_port, slow_port = start_nginx(scratch, served)
        cleanup.callback(stop, nginx)
        fast, slow = f"http://127.0.0.1:{fast_port}", f"http://127.0.0.1:{slow_port}"
        tunes = make_tunes(fast, slow)
        api = Api(tunes).start()
        cleanup.callback(api.stop)
        cases = build_cases(scratch, api.url, fast, slow, ta_args, tunes, files)
        workloads = {name: cases[name] for name in WORKLOADS if name in only}
        for name, wl_cases in workloads.items():
            print(f"{name}:", file=sys.stderr)
            for run in range(args.runs):  # interleaved, so drift hits every tool alike
                for case in wl_cases:
                    run_once(case, scratch / "out", run == 0, cwd)
        table = report(workloads, args.runs, ta_args, cwd)
        print(table)
        (ROOT / "bench" / "results.md").write_text(table)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
