"""Throughput of `tune-archiver fetch` of a 1 GiB checkpoint into an S3 bucket (issues 6
and 16, workload W6), against boto3's `upload_file` of the same file into the same server.

Starts moto's S3 server on 127.0.0.1 in a process of its own (so it does not share a GIL
with the file server or the client measured) and the test stand-in in this process,
serving a generated 1 GiB file from disk. Each run, alternately, runs the real command
(into s3://bench/archive-<n>) and a boto3 `upload_file` of the served file (a child
process each, under /usr/bin/time -v), checks what was stored, deletes it, and prints
wall time, MB/s and peak RSS; then the medians. Run from the repository root:
python -m bench.s3_throughput [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.memory_check import write_checkpoint  # noqa: E402
from tests.standin import StandIn  # noqa: E402

SIZE = 2**30  # bench/memory_check.write_checkpoint writes this much
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
# boto3's own transfer manager with its defaults (8 MiB parts, 10 threads), for reference.
BOTO3_UPLOAD = """
import sys, boto3
client = boto3.client("s3", endpoint_url=sys.argv[1])
client.upload_file(sys.argv[2], "bench", sys.argv[3])
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_moto(port: int) -> subprocess.Popen[bytes]:
    moto = subprocess.Popen(
        [Path(sys.executable).parent / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(200):  # until it answers
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
            return moto
        except OSError:
            time.sleep(0.05)
    moto.kill()
    raise RuntimeError("moto_server did not start")


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of the command, which must succeed."""
    started = time.monotonic()
    run = subprocess.run(["/usr/bin/time", "-v", *command], env=env, capture_output=True,
                         text=True, check=False)
    wall = time.monotonic() - started
    if run.returncode != 0:
        raise RuntimeError(run.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
    return wall, int(rss.group(1)) / 1024 if rss else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-boto3", action="store_true", help="time the command only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tune-archiver-s3-bench-") as scratch:
        work = Path(scratch)
        served = work / "served"
        served.mkdir()
        checkpoint = served / "model.safetensors"
        expected = write_checkpoint(checkpoint)
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        moto = start_moto(port)
        standin = StandIn(files_dir=served).start()
        results: dict[str, list[tuple[float, float]]] = {"tune-archiver": [], "boto3": []}
        try:
            env = {**os.environ, **CREDENTIALS, "ASTRIA_API_KEY": standin.api_key}
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                  aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                  aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
            client.create_bucket(Bucket="bench")
            standin.add_tune(1, [f"{standin.urls['cdn']}/disk/model.safetensors"], [])
            for n in range(args.runs):
                archive = f"archive-{n}"
                command = [sys.executable, "-m", "tune_archiver", "fetch", "1",
                           "--archive", f"s3://bench/{archive}", "--s3-endpoint-url", endpoint,
                           "--api-url", standin.api_url, "-q"]
                staging = {"TUNE_ARCHIVER_STAGING": str(work / f"staging-{n}")}
                wall, peak = timed(command, {**env, **staging})
                manifest = json.loads(client.get_object(
                    Bucket="bench", Key=f"{archive}/manifests/1.json")["Body"].read())
                [entry] = manifest["assets"]
                key = f"{archive}/{entry['path']}"
                assert entry["sha256"] == expected, "the manifest's sha256 is not the file's"
                assert client.head_object(Bucket="bench", Key=key)["ContentLength"] == SIZE
                client.delete_object(Bucket="bench", Key=key)  # moto holds objects in memory
                results["tune-archiver"].append((wall, peak))
                print(f"run {n}: tune-archiver fetch {wall:.1f} s wall, "
                      f"{SIZE / wall / 1e6:.0f} MB/s, peak RSS {peak:.1f} MiB", flush=True)
                if args.no_boto3:
                    continue
                wall, peak = timed([sys.executable, "-c", BOTO3_UPLOAD, endpoint,
                                    str(checkpoint), f"boto3-{n}"], env)
                assert client.head_object(Bucket="bench", Key=f"boto3-{n}")[
                    "ContentLength"] == SIZE
                client.delete_object(Bucket="bench", Key=f"boto3-{n}")
                results["boto3"].append((wall, peak))
                print(f"run {n}: boto3 upload_file     {wall:.1f} s wall, "
                      f"{SIZE / wall / 1e6:.0f} MB/s, peak RSS {peak:.1f} MiB", flush=True)
        finally:
            standin.close()
            moto.terminate()
            moto.wait()
    for name, found in results.items():
        if found:
            wall = statistics.median(w for w, _ in found)
            peak = statistics.median(p for _, p in found)
            print(f"median of {len(found)}: {name}: {wall:.1f} s wall, "
                  f"{SIZE / wall / 1e6:.0f} MB/s, peak RSS {peak:.1f} MiB")
    if results["boto3"]:
        ratio = statistics.median(w for w, _ in results["tune-archiver"]) / statistics.median(
            w for w, _ in results["boto3"])
        print(f"tune-archiver / boto3 wall time: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
