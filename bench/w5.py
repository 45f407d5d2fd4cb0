"""W5: `fetch --all` of an account of many tiny tunes (bench/account.py), then again
unchanged, against curl paging the same listing (one curl for every page, and one curl per
page in a shell loop). Run from the repository root:

    python bench/w5.py [--tunes 20000] [--runs 1] [--keep]

Each command is timed by measure.py (wall, CPU user+sys, peak RSS of the command
alone): the first fetch into a fresh archive (every tune fetched, 20,002 files), the
rerun into the same archive (every tune skipped as archived and unchanged), and one
curl that pages the whole listing over one connection, as the tool must before it can
skip anything (curl is told every before_id up front, which only favours it). Checks
that the first run fails no tune and archives every checkpoint and both shared images
once, and that the rerun skips every tune. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import account  # beside this script, not a package

ROOT = Path(__file__).resolve().parent.parent
MEASURE = Path(__file__).resolve().parent / "measure.py"
TA = [sys.executable, "-m", "tune_archiver"]
TIMEOUT = 1800


def measure(argv: list[str], scratch: Path, env: dict[str, str], name: str) -> dict[str, float]:
    """Run argv under measure.py; its figures (its output goes to scratch/NAME.out, .err)."""
    result, out, err = scratch / "run.json", scratch / f"{name}.out", scratch / f"{name}.err"
    result.unlink(missing_ok=True)
    os.sync()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        subprocess.run([sys.executable, "-S", "-I", str(MEASURE), str(result), *argv],
                       cwd=ROOT, env={**os.environ, **env}, stdout=stdout, stderr=stderr,
                       stdin=subprocess.DEVNULL, timeout=TIMEOUT, check=False)
    if not result.exists():
        raise RuntimeError(f"measure.py wrote nothing:\n{err.read_text()[-3000:]}")
    run: dict[str, float] = json.loads(result.read_text())
    return run


def failures(scratch: Path, name: str) -> tuple[int, str]:
    """How many tunes run NAME reported as failed (its error lines), and its summary."""
    err = (scratch / f"{name}.err").read_text(errors="replace")
    failed = sum(1 for line in err.splitlines() if line.startswith(("error", "tune ")))
    return failed, (err.strip().splitlines() or [""])[-1]


def check_archive(archive: Path, tunes: int) -> None:
    """Every tune's manifest complete, every checkpoint and both images stored once."""
    manifests = list((archive / "manifests").glob("*.json"))
    if len(manifests) != tunes:
        raise AssertionError(f"{len(manifests)} manifests for {tunes} tunes")
    blobs = [p for p in (archive / "objects").rglob("*") if p.is_file()]
    if len(blobs) != tunes + len(account.IMAGES):
        raise AssertionError(f"{len(blobs)} blobs, not {tunes + len(account.IMAGES)}")
    for path in manifests[:50]:
        document = json.loads(path.read_text())
        if not document.get("complete"):
            raise AssertionError(f"{path} is not complete")


def page_urls(url: str, tunes: int) -> list[str]:
    """Every page of the listing as the tool asks for it, newest first, and the last,
    empty page that ends the listing for the tool too."""
    befores = [None, *range(tunes - account.PAGE + 1, 0, -account.PAGE), 1]
    return [f"{url}/tunes?limit={account.PAGE}" + (f"&before_id={b}" if b else "")
            for b in befores]


def curl_config(scratch: Path, url: str, tunes: int) -> Path:
    """One curl, every page of the listing, over one connection."""
    conf = scratch / "curl-pages.txt"
    lines = [f'header = "Authorization: Bearer {account.API_KEY}"\n']
    lines += [f'url = "{page}"\noutput = "/dev/null"\n' for page in page_urls(url, tunes)]
    conf.write_text("".join(lines))
    return conf


def curl_loop(url: str, tunes: int) -> list[str]:
    """One curl per page, one after the other, as a shell script pages (which must read
    each page for the next before_id; told them here, it is spared that)."""
    pages = " ".join(f"'{page}'" for page in page_urls(url, tunes))
    return ["sh", "-c", f"for u in {pages}; do curl -sS -o /dev/null -H "
            f"'Authorization: Bearer {account.API_KEY}' \"$u\" || exit 1; done"]


def row(name: str, runs: list[dict[str, float]], extra: str = "") -> str:
    wall = statistics.median(r["wall"] for r in runs)
    cpu = statistics.median(r["cpu"] for r in runs)
    rss = max(r["maxrss_kib"] for r in runs) / 1024
    walls = ", ".join(f"{r['wall']:.2f}" for r in runs)
    return f"| {name} | {wall:.2f} | {cpu:.2f} | {rss:.1f} | {walls} | {extra} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tunes", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--ta-args", default="", help="more tune-archiver arguments")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="w5-"))
    server, url = account.start(args.tunes)
    env = {"ASTRIA_API_KEY": account.API_KEY}
    firsts: list[dict[str, float]] = []
    reruns: list[dict[str, float]] = []
    curls: list[dict[str, float]] = []
    loops: list[dict[str, float]] = []
    notes: list[str] = []
    try:
        conf = curl_config(scratch, url, args.tunes)
        for n in range(args.runs):
            archive = scratch / "archive"
            shutil.rmtree(archive, ignore_errors=True)
            argv = [*TA, "fetch", "--all", "--archive", str(archive), "--api-url", url,
                    *args.ta_args.split()]
            first = measure(argv, scratch, env, "first")
            failed, summary = failures(scratch, "first")
            notes.append(f"first run {n + 1}: exit {first['code']}, {failed} error lines; "
                         f"{summary}")
            if first["code"] == 0:
                check_archive(archive, args.tunes)
            firsts.append(first)
            rerun = measure(argv, scratch, env, "rerun")
            notes.append(f"rerun {n + 1}: exit {rerun['code']}; {failures(scratch, 'rerun')[1]}")
            reruns.append(rerun)
            curl = measure(["curl", "-sS", "-K", str(conf)], scratch, {}, "curl")
            if curl["code"] != 0:
                raise RuntimeError("curl failed: " + (scratch / "curl.err").read_text())
            curls.append(curl)
            loop = measure(curl_loop(url, args.tunes), scratch, {}, "loop")
            if loop["code"] != 0:
                raise RuntimeError("curl loop failed: " + (scratch / "loop.err").read_text())
            loops.append(loop)
            for name, run in (("first", first), ("rerun", rerun), ("curl", curl),
                              ("loop", loop)):
                print(f"  run {n + 1} {name:5}: wall {run['wall']:6.2f} s, cpu "
                      f"{run['cpu']:6.2f} s, rss {run['maxrss_kib'] / 1024:6.1f} MiB",
                      file=sys.stderr)
    finally:
        server.terminate()
        server.wait()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    rerun_wall = statistics.median(r["wall"] for r in reruns)
    ratio = rerun_wall / statistics.median(c["wall"] for c in curls)
    loop_ratio = rerun_wall / statistics.median(c["wall"] for c in loops)
    print(f"W5: {args.tunes} tunes, 1 checkpoint of 2 KiB each + 2 shared images; "
          f"median of {args.runs} run(s)\n")
    print("| case | wall s | CPU s | peak RSS MiB | walls | |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    print(row("fetch --all, fresh archive", firsts))
    print(row("fetch --all, unchanged rerun", reruns,
              f"{ratio:.2f}x one curl, {loop_ratio:.2f}x a curl per page"))
    print(row("one curl paging the listing", curls))
    print(row("a curl per page, in a loop", loops))
    print("\n" + "\n".join(f"- {note}" for note in notes))
    return 0 if all(r["code"] == 0 for r in firsts + reruns) else 1


if __name__ == "__main__":
    sys.exit(main())
