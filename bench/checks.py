"""Checks that a run produced what was served: a Verify is called as verify(out, first).

`out` is the run's fresh output dir; `first` is true on a workload's first run, when
the large files are hashed too (later runs check sizes and manifests only).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Files = dict[str, tuple[int, str]]  # served file, relative to the hosts' root -> (size, sha256)
Tunes = dict[int, dict[str, Any]]  # the stand-in API's tunes by id
Verify = Callable[[Path, bool], None]
BIG = 64 * 2**20  # files at least this large are hashed only on the first run


def check_file(path: Path, size: int, sha: str, hash_it: bool) -> None:
    if not path.is_file() or path.stat().st_size != size:
        raise AssertionError(f"{path}: missing or not {size} bytes")
    if hash_it:
        with path.open("rb") as file:
            if hashlib.file_digest(file, "sha256").hexdigest() != sha:
                raise AssertionError(f"{path}: wrong sha256")


def served_name(url: str) -> str:
    """The served file a URL names: its path after the host."""
    return url.split("/", 3)[3]


def check_manifest(manifest: dict[str, Any], tune: dict[str, Any], files: Files,
                   hashed: bool) -> None:
    """Complete, and its ok assets are exactly the tune's files (by size and sha256)."""
    tid = tune["id"]
    if not manifest["complete"]:
        raise AssertionError(f"manifest {tid} not complete")
    urls = [*tune["ckpt_urls"], *tune["orig_images"]]
    wanted = [files[served_name(u)] for u in urls]
    got = [(a["size"], a["sha256"]) for a in manifest["assets"] if a["status"] == "ok"]
    if not hashed:
        got, wanted = [(size, "") for size, _ in got], [(size, "") for size, _ in wanted]
    if sorted(got) != sorted(wanted):
        raise AssertionError(f"manifest {tid}: sha256s differ from the served files")


def verify_archive(tunes: Tunes, files: Files, ids: list[int], hashed: bool = True) -> Verify:
    """Each manifest complete, each asset's sha256 the served file's, each blob present.

    With hashed=False (the bench-only switch that skips hashing) only sizes are checked.
    """

    def verify(out: Path, first: bool) -> None:
        for tid in ids:
            manifest = json.loads((out / "manifests" / f"{tid}.json").read_text())
            check_manifest(manifest, tunes[tid], files, hashed)
            for asset in manifest["assets"]:
                big = hashed and asset["size"] >= BIG
                check_file(out / asset["path"], asset["size"], asset["sha256"], first and big)

    return verify


def verify_files(expected: Files) -> Verify:
    """Each file at out/<its name>, of its size (and, if large, on the first run its sha256)."""

    def verify(out: Path, first: bool) -> None:
        for name, (size, sha) in expected.items():
            check_file(out / name, size, sha, first and size >= BIG)

    return verify


def check_s3_archive(client: Any, bucket: str, prefix: str, tune: dict[str, Any],
                     files: Files) -> None:
    """The tune's manifest in the bucket names the served sha256s; each blob has its size."""
    body = client.get_object(Bucket=bucket, Key=f"{prefix}/manifests/{tune['id']}.json")["Body"]
    manifest = json.loads(body.read())
    check_manifest(manifest, tune, files, hashed=True)
    for asset in manifest["assets"]:
        check_s3_object(client, bucket, f"{prefix}/{asset['path']}", asset["size"])


def check_s3_object(client: Any, bucket: str, key: str, size: int) -> None:
    length = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    if length != size:
        raise AssertionError(f"s3://{bucket}/{key}: {length} bytes, not {size}")


def check_account(archive: Path, tunes: int, shared: int) -> None:
    """W5: a manifest for every tune, complete, and each checkpoint and the shared
    images stored once (a failed tune has a manifest that is not complete)."""
    manifests = list((archive / "manifests").glob("*.json"))
    if len(manifests) != tunes:
        raise AssertionError(f"{len(manifests)} manifests for {tunes} tunes")
    incomplete = [p.name for p in manifests if not json.loads(p.read_text()).get("complete")]
    if incomplete:
        raise AssertionError(f"{len(incomplete)} tunes not complete, e.g. {incomplete[0]}")
    blobs = sum(1 for p in (archive / "objects").rglob("*") if p.is_file())
    if blobs != tunes + shared:
        raise AssertionError(f"{blobs} blobs, not {tunes + shared}")


def nothing(out: Path, first: bool) -> None:
    """For a peer whose output is thrown away (curl paging a listing to /dev/null)."""
