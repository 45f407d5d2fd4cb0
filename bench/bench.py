"""Throughput benchmark: tune-archiver against curl, aria2c and boto3 on local hosts.

Run from the repository root, after `pip install -e .` (W6 needs the [s3] extra and
moto[server]), as root on Debian:

    bench/run [--runs 3] [--only W1,W1-nohash,W2,W3,W4,W5,W6] [--ta-args "--concurrency 16"]
              [--keep] [--snapshot]

(`--ta-args=--opt` for a single option without a space.) Installs nginx, aria2 and
curl with apt-get when missing, generates what the chosen workloads serve in a scratch
dir under /tmp, starts their hosts on 127.0.0.1 (bench/servers.py), times every tool
on every workload (bench/workloads.py; median of the runs: wall, CPU user+sys, peak
RSS), checks the output (bench/checks.py), then prints a Markdown table and writes it
to bench/results.md. Note: on a systemd host, installing nginx may also start the
system nginx on :80.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":  # python bench/bench.py: `bench` is the package, not this file
    sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import compileall  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import hashlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import aiohttp  # noqa: E402

from bench import servers  # noqa: E402
from bench.workloads import PEERS_OF, TA, WORKLOADS, Case, Setup, discard  # noqa: E402

RUN_TIMEOUT = 900  # seconds; a hung run is killed and fails the benchmark
RSS_LIMIT_MIB = 100  # tune-archiver rows above this are flagged
MEASURE = Path(__file__).resolve().parent / "measure.py"  # times one run: see there


def run_once(case: Case, out: Path, first: bool, cwd: Path) -> None:
    """Run one case into a fresh `out`, record wall, CPU and peak RSS, and check it."""
    discard(out)
    out.mkdir()
    if case.prepare is not None:
        case.prepare(out)
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


def versions(cwd: Path, names: list[str]) -> str:
    def first_line(argv: list[str]) -> str:
        run = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
        return (run.stdout or run.stderr).strip().splitlines()[0]

    digest = hashlib.sha256()  # which tune_archiver/*.py was measured (no git here)
    for path in sorted((cwd / "tune_archiver").rglob("*.py")):
        digest.update(path.relative_to(cwd).as_posix().encode() + b"\0" + path.read_bytes())
    found = [first_line([*TA, "--version"]) + f" (sources {digest.hexdigest()[:12]})",
             f"Python {sys.version.split()[0]}", f"aiohttp {aiohttp.__version__}"]
    tools = {"nginx": [servers.NGINX, "-v"], "curl": ["curl", "--version"],
             "aria2c": ["aria2c", "--version"]}
    found += [first_line(argv) for argv in tools.values()]
    if "W6" in names:
        found += [f"{p} {importlib.metadata.version(p)}" for p in ("moto", "boto3")]
    return "; ".join(found)


def median_wall(case: Case) -> float:
    return statistics.median(case.walls)


def best_peers(workloads: dict[str, list[Case]]) -> dict[str, Case]:
    """Each workload's fastest peer (any tool but tune-archiver, and no row shown only
    for context) by median wall."""
    best: dict[str, Case] = {}
    for name, cases in workloads.items():
        peers = [c for c in cases if c.peer and not c.is_ta] or [
            c for c in workloads.get(PEERS_OF.get(name, ""), []) if c.peer and not c.is_ta]
        if peers:
            best[name] = min(peers, key=median_wall)
    return best


def report(workloads: dict[str, list[Case]], runs: int, ta_args: list[str], cwd: Path) -> str:
    """The Markdown table of medians, with tune-archiver's wall over the best peer's."""
    best = best_peers(workloads)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# tune-archiver benchmark, {now}", "",
             f"nproc {len(os.sched_getaffinity(0))}; load average at the end "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work skews the walls); "
             f"medians of {runs} runs; extra tune-archiver args: "
             f"`{shlex.join(ta_args) or '(none)'}`", "",
             f"Versions: {versions(cwd, list(workloads))}", "",
             "| workload | tool | wall s | CPU s | peak RSS MiB | walls of the runs | "
             "vs best peer |", "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
    heavy: list[str] = []
    for name, cases in workloads.items():
        for c in cases:
            wall, rss = median_wall(c), statistics.median(c.rss_kib) / 1024
            compared = c.is_ta and c.compare and name in best
            ratio = f"{wall / median_wall(best[name]):.2f}x" if compared else ""
            flag = ""
            if c.is_ta and rss > RSS_LIMIT_MIB:
                flag = " (!)"
                heavy.append(f"{name} {c.tool}")
            lines.append(f"| {name} | {c.tool} | {wall:.2f} | {statistics.median(c.cpus):.2f} | "
                         f"{rss:.1f}{flag} | {', '.join(f'{w:.2f}' for w in c.walls)} | "
                         f"{ratio} |")
    named = [f"{name} {case.tool}" + (f" ({PEERS_OF[name]}'s)" if name in PEERS_OF else "")
             for name, case in best.items()]
    lines += ["", "Best peer (the fastest tool other than tune-archiver, by median wall): "
              f"{'; '.join(named)}."]
    if heavy:
        lines.append(f"(!) tune-archiver's peak RSS over {RSS_LIMIT_MIB} MiB: "
                     f"{', '.join(heavy)}.")
    if "W5" in workloads:  # the issue measured paging with one curl per page
        rerun, loop = workloads["W5"][1], workloads["W5"][3]
        lines.append(f"W5 unchanged rerun vs one curl per page in a shell loop: "
                     f"{median_wall(rerun) / median_wall(loop):.2f}x.")
    if "W1" in workloads and "W1-nohash" in workloads:
        hashed = median_wall(workloads["W1"][0])
        bare = median_wall(workloads["W1-nohash"][0])
        lines.append(f"W1 hashing overhead: {(hashed - bare) / bare:+.1%} "
                     f"({hashed:.2f} s vs {bare:.2f} s with TUNE_ARCHIVER_BENCH_SKIP_HASH=1).")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
    servers.ensure_tools()
    with contextlib.ExitStack() as cleanup:  # undone in reverse, each even if another fails
        scratch = Path(tempfile.mkdtemp(prefix="tune-archiver-bench-"))
        if args.keep:
            cleanup.callback(print, f"kept {scratch}", file=sys.stderr)
        else:
            cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
        cwd = ROOT  # `python -m tune_archiver` imports the package from here
        if args.snapshot:
            cwd = scratch / "snapshot"
            shutil.copytree(ROOT / "tune_archiver", cwd / "tune_archiver",
                            ignore=shutil.ignore_patterns("__pycache__"))
        # Byte-compiled first, as pip leaves an installed package: a checkout run with
        # PYTHONDONTWRITEBYTECODE=1 (this machine sets it) would compile every module
        # at every start, about 0.13 s that no installed copy spends.
        compileall.compile_dir(cwd / "tune_archiver", quiet=1)
        api = servers.Api().start()
        cleanup.callback(api.stop)
        setup = Setup(scratch, api, cleanup, ta_args)
        print(f"generating files and starting hosts in {scratch} ...", file=sys.stderr)
        workloads = {name: build(setup) for name, build in WORKLOADS.items() if name in only}
        for name, cases in workloads.items():
            print(f"{name}:", file=sys.stderr)
            for run in range(args.runs):  # interleaved, so drift hits every tool alike
                for case in cases:
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
