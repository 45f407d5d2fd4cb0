"""Peak memory of `tune-archiver fetch` on a 1 GiB checkpoint and 40 images (issue 2).

Starts the test stand-in on 127.0.0.1 serving a generated 1 GiB file from disk,
runs the real command under /usr/bin/time -v, checks every blob's sha256 and prints
wall time and peak RSS. Run from the repository root: python bench/memory_check.py
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.standin import StandIn  # noqa: E402

CHECKPOINT_BYTES = 2**30
IMAGES = 40


def write_checkpoint(path: Path) -> str:
    """A 1 GiB file of random bytes; returns its sha256."""
    digest = hashlib.sha256()
    block = 16 * 2**20
    with path.open("wb") as file:
        for _ in range(CHECKPOINT_BYTES // block):
            data = os.urandom(block)
            digest.update(data)
            file.write(data)
    return digest.hexdigest()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tune-archiver-bench-") as scratch:
        work = Path(scratch)
        served = work / "served"
        served.mkdir()
        expected = {write_checkpoint(served / "model.safetensors")}
        standin = StandIn(files_dir=served).start()
        try:
            images = []
            for i in range(IMAGES):
                data = os.urandom(50_000 + 9_000 * i)
                expected.add(hashlib.sha256(data).hexdigest())
                images.append(standin.add_file(f"img-{i}.jpg", data))
            checkpoint = f"{standin.urls['cdn']}/disk/model.safetensors"
            standin.add_tune(1, [checkpoint], images)
            archive = work / "archive"
            env = {**os.environ, "ASTRIA_API_KEY": standin.api_key}
            command = [
                "/usr/bin/time", "-v", sys.executable, "-m", "tune_archiver", "fetch", "1",
                "--archive", str(archive), "--api-url", standin.api_url, "-q",
            ]
            run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        finally:
            standin.close()
        if run.returncode != 0:
            print(run.stdout, run.stderr, sep="\n")
            return 1
        stored = {p.name for p in (archive / "objects" / "sha256").glob("*/*")}
        for path in (archive / "objects" / "sha256").glob("*/*"):
            with path.open("rb") as file:
                assert hashlib.file_digest(file, "sha256").hexdigest() == path.name
        if stored != expected:
            print("the archive does not hold exactly the served files")
            return 1
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)[1])
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", run.stderr)[1]
        print(f"1 GiB checkpoint + {IMAGES} images: wall {wall}, peak RSS {rss / 1024:.1f} MiB, "
              f"{len(stored)} blobs verified")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
