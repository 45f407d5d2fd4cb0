"""Peak memory and wall time of `tune-archiver verify` on a large archive.

Fetches one tune from the test stand-in on 127.0.0.1 (a real manifest to copy), then
writes TUNES more manifests of PER tiny blobs each, every blob distinct, and runs the
real command under /usr/bin/time -v. Run from the repository root:
python bench/verify_memory.py [--tunes 10000] [--per 10]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.standin import StandIn  # noqa: E402


def first_manifest(archive: Path, per: int) -> dict[str, object]:
    """A real fetch of one tune of PER files; its manifest."""
    standin = StandIn().start()
    try:
        images = [standin.add_file(f"i{n}.jpg", os.urandom(100 + n)) for n in range(per - 1)]
        checkpoint = standin.add_file("model.safetensors", os.urandom(2**20))
        standin.add_tune(1, [checkpoint], images)
        env = {**os.environ, "ASTRIA_API_KEY": standin.api_key}
        subprocess.run([sys.executable, "-m", "tune_archiver", "fetch", "1", "-q", "--archive",
                        str(archive), "--api-url", standin.api_url], env=env, check=True)
    finally:
        standin.close()
    document: dict[str, object] = json.loads((archive / "manifests" / "1.json").read_text())
    return document


def write_tunes(archive: Path, first: dict[str, object], tunes: int) -> None:
    """Manifests 2..tunes+1, each entry of its own tiny blob."""
    for tune_id in range(2, tunes + 2):
        document = copy.deepcopy(first)
        document["tune_id"] = tune_id
        document["tune"]["id"] = tune_id  # type: ignore[index]
        for asset in document["assets"]:  # type: ignore[attr-defined]
            data = f"{tune_id}-{asset['kind']}-{asset['index']}".encode()
            digest = hashlib.sha256(data).hexdigest()
            key = f"objects/sha256/{digest[:2]}/{digest}"
            (archive / key).parent.mkdir(exist_ok=True)
            (archive / key).write_bytes(data)
            asset.update(sha256=digest, size=len(data), path=key)
        (archive / "manifests" / f"{tune_id}.json").write_text(json.dumps(document))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tunes", type=int, default=10_000)
    parser.add_argument("--per", type=int, default=10, help="files per tune")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tune-archiver-bench-") as scratch:
        archive = Path(scratch) / "archive"
        write_tunes(archive, first_manifest(archive, args.per), args.tunes)
        command = ["/usr/bin/time", "-v", sys.executable, "-m", "tune_archiver", "verify",
                   "-q", "--archive", str(archive)]
        run = subprocess.run(command, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        print(run.stdout, run.stderr, sep="\n")
        return 1
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)[1])
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", run.stderr)[1]
    blobs = (args.tunes + 1) * args.per
    print(f"verify of {args.tunes + 1} tunes, {blobs} blobs: wall {wall}, "
          f"peak RSS {rss / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
