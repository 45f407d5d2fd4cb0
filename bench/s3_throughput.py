"""Throughput of `tune-archiver fetch` of a 1 GiB checkpoint into an S3 bucket (issue 6).

Starts the test stand-in on 127.0.0.1 serving a generated 1 GiB file from disk and
moto's S3 server in this process, runs the real command (into s3://<bucket>/bench)
under /usr/bin/time -v, checks the stored object's size and sha256, and prints wall
time, MB/s and peak RSS. moto keeps objects in this process, so the figure is bounded
by moto, not by S3. Run from the repository root: python bench/s3_throughput.py
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.memory_check import write_checkpoint  # noqa: E402
from tests.standin import StandIn  # noqa: E402

SIZE = 2**30  # bench/memory_check.write_checkpoint writes this much


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tune-archiver-s3-bench-") as scratch:
        work = Path(scratch)
        served = work / "served"
        served.mkdir()
        expected = write_checkpoint(served / "model.safetensors")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        standin = StandIn(files_dir=served).start()
        try:
            host, port = moto.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            env = {**os.environ, "ASTRIA_API_KEY": standin.api_key,
                   "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                   "AWS_DEFAULT_REGION": "us-east-1",
                   "TUNE_ARCHIVER_STAGING": str(work / "staging")}
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                  aws_access_key_id="bench", aws_secret_access_key="bench-secret")
            client.create_bucket(Bucket="bench")
            standin.add_tune(1, [f"{standin.urls['cdn']}/disk/model.safetensors"], [])
            command = ["/usr/bin/time", "-v", sys.executable, "-m", "tune_archiver", "fetch", "1",
                       "--archive", "s3://bench/archive", "--s3-endpoint-url", endpoint,
                       "--api-url", standin.api_url, "-q"]
            started = time.monotonic()
            run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            wall = time.monotonic() - started
            if run.returncode != 0:
                print(run.stderr, file=sys.stderr)
                return 1
            manifest = json.loads(client.get_object(
                Bucket="bench", Key="archive/manifests/1.json")["Body"].read())
            [entry] = manifest["assets"]
            head = client.head_object(Bucket="bench", Key=f"archive/{entry['path']}")
            assert entry["sha256"] == expected, "the manifest's sha256 is not the file's"
            assert head["ContentLength"] == SIZE, "the stored object has the wrong size"
            rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
            peak = int(rss.group(1)) / 1024 if rss else float("nan")
            print(f"1 GiB into s3://bench/archive on moto: {wall:.1f} s wall, "
                  f"{SIZE / wall / 1e6:.0f} MB/s, peak RSS {peak:.1f} MiB")
        finally:
            standin.close()
            moto.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
