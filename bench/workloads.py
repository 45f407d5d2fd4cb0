"""The workloads: each builds its files, its tunes and its Cases (one per tool).

WORKLOADS maps a workload's name to its builder, in the report's order; a builder
takes the shared Setup, which generates files and starts hosts on first use, so
`--only W4` neither writes the 1 GiB checkpoint nor starts nginx. To add a workload,
write a builder and add it to WORKLOADS.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from bench import account, servers
from bench.checks import (
    Files,
    Verify,
    check_account,
    check_s3_archive,
    check_s3_object,
    nothing,
    verify_archive,
    verify_files,
)

CKPT, CKPT_BYTES, SEED = "model.safetensors", 2**30, 20240601
TA = [sys.executable, "-m", "tune_archiver"]
S3_UPLOAD = Path(__file__).resolve().parent / "s3_upload.py"
LEAN = Path(__file__).resolve().parent / "lean.py"
STAMPS = {"updated_at": "2026-11-01T10:00:00.000Z", "expires_at": "2026-12-01T10:00:00.000Z"}
Argv = Callable[[Path], list[str]]


@dataclass
class Case:
    """One tool on one workload: the command for an output dir, and its check.

    `prepare(out)` runs before each run, untimed (W6 makes a fresh bucket there).
    """

    tool: str
    argv: Argv
    verify: Verify
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[Path], None] | None = None
    compare: bool = True  # False: no "vs best peer" (W5's first run has no peer)
    peer: bool = True  # False: a row for context (a peer doing ta's work), never the best
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)

    @property
    def is_ta(self) -> bool:
        return self.tool.startswith("tune-archiver")


MANY_FILES = 100  # an output with this many files is set aside, not deleted (see discard)


def discard(path: Path) -> None:
    """Take a run's output out of the way of the next run: deleted when it holds a few
    files, else renamed into a trash folder beside it that the bench removes at its end.

    On ext4 without a journal (this machine's disk), creating a file skips every inode
    of its group freed in the last minute or more, one lookup each (recently_deleted in
    fs/ext4/ialloc.c): deleting a thousand files just before a run charged that run's
    creates for them, whichever tool it was, about a sixth of tune-archiver's CPU in W2.
    """
    if not path.exists():
        return
    if sum(len(files) for _, _, files in os.walk(path)) < MANY_FILES:
        shutil.rmtree(path)
        return
    trash = path.parent / "trash"
    trash.mkdir(exist_ok=True)
    path.rename(trash / f"{path.name}-{len(os.listdir(trash))}")


class Setup:
    """What the builders share: the served files, the API's tunes and hosts, made once."""

    def __init__(self, scratch: Path, api: servers.Api, cleanup: contextlib.ExitStack,
                 ta_args: list[str]) -> None:
        self.scratch, self.api, self.cleanup, self.ta_args = scratch, api, cleanup, ta_args
        self.served = scratch / "served"  # the root of nginx and of the latency host
        self.served.mkdir()
        self.files: Files = {}
        self.key = {"ASTRIA_API_KEY": servers.API_KEY}

    def write(self, name: str, data: bytes) -> None:
        (self.served / name).parent.mkdir(parents=True, exist_ok=True)
        (self.served / name).write_bytes(data)
        self.files[name] = (len(data), hashlib.sha256(data).hexdigest())

    def random_files(self, folder: str, names: list[str], low: int, high: int) -> list[str]:
        """Files of random bytes with seeded random sizes in [low, high]: their served names."""
        sizes = random.Random(f"{SEED}-{folder}")
        for name in names:
            self.write(f"{folder}/{name}", os.urandom(sizes.randint(low, high)))
        return [f"{folder}/{name}" for name in names]

    @cached_property
    def checkpoint(self) -> str:
        """The 1 GiB checkpoint, written once: its served name."""
        digest, block = hashlib.sha256(), 16 * 2**20
        with (self.served / CKPT).open("wb") as file:
            for _ in range(CKPT_BYTES // block):
                data = os.urandom(block)
                digest.update(data)
                file.write(data)
        self.files[CKPT] = (CKPT_BYTES, digest.hexdigest())
        return CKPT

    @cached_property
    def nginx(self) -> tuple[str, str]:
        """The base URLs of nginx's unlimited and 40 MiB/s-per-connection ports."""
        proc, fast, slow = servers.start_nginx(self.scratch, self.served)
        self.cleanup.callback(servers.stop, proc)
        return fast, slow

    def latency_host(self, folder: str) -> str:
        """The base URL of a host serving served/<folder> (written by now) 40 ms late."""
        proc, url = servers.start_latency_host(self.served, folder, 0.04)
        self.cleanup.callback(servers.stop, proc)
        return url

    @cached_property
    def moto(self) -> str:
        proc, endpoint = servers.start_moto(self.scratch)
        self.cleanup.callback(servers.stop, proc)
        return endpoint

    def tune(self, tid: int, ckpts: Sequence[str] = (), images: Sequence[str] = ()) -> int:
        """Add a tune to the stand-in API: its id."""
        self.api.tunes[tid] = {"id": tid, "title": f"bench {tid}", "ckpt_urls": list(ckpts),
                               "ckpt_url": ckpts[0] if ckpts else None,
                               "orig_images": list(images), **STAMPS}
        return tid

    def ta(self, *ids: int, extra: tuple[str, ...] = ()) -> Argv:
        """tune-archiver fetch of these tunes into a local archive at `out`."""
        return lambda out: [*TA, "fetch", *map(str, ids), "-q", "--archive", str(out),
                            "--api-url", self.api.url, *extra, *self.ta_args]

    def ta_case(self, tool: str, ids: list[int], extra: tuple[str, ...] = (),
                hashed: bool = True, env: dict[str, str] | None = None) -> Case:
        return Case(tool, self.ta(*ids, extra=extra),
                    verify_archive(self.api.tunes, self.files, ids, hashed), env or self.key)


def aria_one(url: str, x: int) -> Argv:
    return lambda out: ["aria2c", f"-x{x}", f"-s{x}", "-k1M", "-q", "--allow-overwrite=true",
                        "--file-allocation=none", "-d", str(out), "-o", CKPT, url]


def curl_one(url: str) -> Argv:
    return lambda out: ["curl", "-sS", "-o", str(out / CKPT), url]


SAME_WORK = "then openssl sha256 and sync (ta's work, one step after another)"


def then_hash_and_sync(download: Argv) -> Argv:
    """The download, then what tune-archiver also does to each file: hash it (with the
    OpenSSL that Python's hashlib uses; coreutils' sha256sum is 5x slower), and make it
    and its folder durable (coreutils' `sync FILE...` fsyncs each one named)."""
    def argv(out: Path) -> list[str]:
        script = ('"$@" && cd "$0" && find . -type f -exec openssl dgst -sha256 {} + '
                  '> /dev/null && find . -exec sync {} +')
        return ["sh", "-c", script, str(out), *download(out)]
    return argv


LEAN_ROW = "lean python (aiohttp, sha256, fsync, rename; nothing else)"


def lean(s: Setup, urls: list[str], j: int) -> Case:
    """bench/lean.py, `j` files at once: each at out/<its name without folders>."""
    listing = s.scratch / f"lean-{Path(urls[0]).parent.name}-{len(urls)}.txt"
    listing.write_text("".join(f"{url} {Path(url).name}\n" for url in urls))
    expected = {Path(url).name: s.files[url.split("/", 3)[3]] for url in urls}
    return Case(LEAN_ROW, lambda out: [sys.executable, str(LEAN), str(j), str(listing),
                                       str(out)], verify_files(expected), peer=False)


def many_files(s: Setup, base: str, names: list[str], j: int) -> list[Case]:
    """aria2c -j<j> (an input list) and curl -Z --parallel-max <j> (a config file): each
    file at out/<its name without folders>."""
    expected = {Path(n).name: s.files[n] for n in names}
    tag = Path(names[0]).parent.name
    aria_list, curl_conf = s.scratch / f"aria2-{tag}.txt", s.scratch / f"curl-{tag}.txt"
    aria_list.write_text("".join(f"{base}/{n}\n  out={Path(n).name}\n" for n in names))
    curl_conf.write_text("".join(f'url = "{base}/{n}"\noutput = "{{out}}/{Path(n).name}"\n'
                                 for n in names))

    def aria(out: Path) -> list[str]:
        return ["aria2c", f"-j{j}", "-q", "--allow-overwrite=true", "--file-allocation=none",
                "-d", str(out), "-i", str(aria_list)]

    def curl(out: Path) -> list[str]:
        conf = out.parent / "curl-config-run.txt"
        conf.write_text(curl_conf.read_text().replace("{out}", str(out)))
        return ["curl", "-sS", "-Z", "--parallel-max", str(j), "-K", str(conf)]

    return [Case(f"aria2c -j{j}", aria, verify_files(expected)),
            Case(f"curl -Z --parallel-max {j}", curl, verify_files(expected)),
            Case(f"curl -Z --parallel-max {j}, {SAME_WORK}", then_hash_and_sync(curl),
                 verify_files(expected), peer=False),
            lean(s, [f"{base}/{n}" for n in names], j)]


def w1(s: Setup) -> list[Case]:
    """A 1 GiB checkpoint from nginx's unlimited port."""
    fast, _ = s.nginx
    ckpt = {CKPT: s.files[s.checkpoint]}
    url = f"{fast}/{CKPT}"
    return [s.ta_case("tune-archiver", [s.tune(1, [url])]),
            Case("curl", curl_one(url), verify_files(ckpt)),
            Case(f"curl, {SAME_WORK}", then_hash_and_sync(curl_one(url)), verify_files(ckpt),
                 peer=False),
            lean(s, [url], 1),
            Case("aria2c -x16 -s16", aria_one(url, 16), verify_files(ckpt)),
            Case("aria2c -x1 -s1", aria_one(url, 1), verify_files(ckpt))]


def w1_nohash(s: Setup) -> list[Case]:
    """W1 with hashing off (a bench-only switch): what hashing costs. Compared with W1's peers."""
    fast, _ = s.nginx
    tid = s.tune(1, [f"{fast}/{s.checkpoint}"])
    return [s.ta_case("tune-archiver (SKIP_HASH=1)", [tid], hashed=False,
                      env={**s.key, "TUNE_ARCHIVER_BENCH_SKIP_HASH": "1"})]


def w2(s: Setup) -> list[Case]:
    """1,000 images of 50-500 KB (50 tunes x 20) from nginx's unlimited port."""
    fast, _ = s.nginx
    ids = list(range(101, 151))
    names = s.random_files("img", [f"{t}-{i:02d}.jpg" for t in ids for i in range(20)],
                           50_000, 500_000)
    for k, tid in enumerate(ids):
        s.tune(tid, images=[f"{fast}/{n}" for n in names[20 * k:20 * k + 20]])
    return [s.ta_case("tune-archiver", ids), *many_files(s, fast, names, 8)]


def w3(s: Setup) -> list[Case]:
    """The 1 GiB checkpoint from nginx's port that allows 40 MiB/s per connection."""
    _, slow = s.nginx
    ckpt = {CKPT: s.files[s.checkpoint]}
    url = f"{slow}/{CKPT}"
    tid = s.tune(2, [url])
    return [s.ta_case("tune-archiver", [tid]),
            s.ta_case("tune-archiver --split 16", [tid], extra=("--split", "16")),
            Case("curl", curl_one(url), verify_files(ckpt)),
            Case("aria2c -x16 -s16", aria_one(url, 16), verify_files(ckpt))]


def w4(s: Setup) -> list[Case]:
    """2,000 files of 20-200 KB (100 tunes x 20) from a host that waits 40 ms per response.

    Latency, not bandwidth, bounds it: with 16 connections at least 2,000 x 40 ms / 16 = 5 s.
    """
    ids = list(range(1001, 1101))
    names = s.random_files("lat", [f"{t}-{i:02d}.jpg" for t in ids for i in range(20)],
                           20_000, 200_000)
    base = s.latency_host("lat")
    for k, tid in enumerate(ids):
        s.tune(tid, images=[f"{base}/{n}" for n in names[20 * k:20 * k + 20]])
    return [s.ta_case("tune-archiver", ids), *many_files(s, base, names, 16)]


W5_TUNES = 20_000


def w5(s: Setup) -> list[Case]:
    """An account of 20,000 tunes (bench/account.py), each 1 tiny checkpoint + 2 images
    shared by all: `fetch --all` into a fresh archive, then again unchanged, against
    curl paging the same listing (told every before_id up front, which only favours it)."""
    proc, url = account.start(W5_TUNES)
    s.cleanup.callback(servers.stop, proc)
    seed = s.scratch / "w5-seed"  # the first run's archive, which the rerun starts from
    befores = [None, *range(W5_TUNES - account.PAGE + 1, 0, -account.PAGE), 1]
    pages = [f"{url}/tunes?limit={account.PAGE}" + (f"&before_id={b}" if b else "")
             for b in befores]  # as the tool asks, with the empty page that ends it
    auth = f"Authorization: Bearer {account.API_KEY}"
    conf = s.scratch / "w5-curl.txt"
    conf.write_text(f'header = "{auth}"\n' + "".join(
        f'url = "{page}"\noutput = "/dev/null"\n' for page in pages))
    loop = (f"for u in {' '.join(repr(p) for p in pages)}; "
            f"do curl -sS -o /dev/null -H '{auth}' \"$u\" || exit 1; done")

    def fetch_all(out: Path) -> list[str]:
        return [*TA, "fetch", "--all", "-q", "--archive", str(out), "--api-url", url,
                *s.ta_args]

    def first_checked(out: Path, first: bool) -> None:
        check_account(out, W5_TUNES, len(account.IMAGES))
        discard(seed)
        out.rename(seed)  # untimed, and the rerun's starting point

    def from_seed(out: Path) -> None:
        if not seed.exists():
            subprocess.run(fetch_all(seed), check=True, env={**os.environ, **s.key})
        out.rmdir()
        seed.rename(out)

    def rerun_checked(out: Path, first: bool) -> None:
        check_account(out, W5_TUNES, len(account.IMAGES))

    return [Case("tune-archiver --all (first run)", fetch_all, first_checked, s.key,
                 compare=False),
            Case("tune-archiver --all (unchanged rerun)", fetch_all, rerun_checked, s.key,
                 from_seed),
            Case("curl -K (every page, one process)", lambda out: ["curl", "-sS", "-K",
                                                                    str(conf)], nothing),
            Case("curl per page (a shell loop)", lambda out: ["sh", "-c", loop], nothing)]


def w6(s: Setup) -> list[Case]:
    """The 1 GiB checkpoint from nginx into an S3 archive on moto (a fresh bucket per run)."""
    import boto3  # only W6 needs the [s3] extra

    fast, _ = s.nginx
    endpoint, local = s.moto, s.served / s.checkpoint
    tune = s.api.tunes[s.tune(3, [f"{fast}/{CKPT}"])]
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=servers.S3_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=servers.S3_ENV["AWS_SECRET_ACCESS_KEY"])
    buckets = (f"w6-{n}" for n in itertools.count())
    bucket = ""

    def fresh(out: Path) -> None:
        nonlocal bucket
        bucket = next(buckets)
        client.create_bucket(Bucket=bucket)

    def ta(out: Path) -> list[str]:  # env(1) execs the tool: nothing more is measured
        return ["env", f"TUNE_ARCHIVER_STAGING={out / 'staging'}", *TA, "fetch", "3", "-q",
                "--archive", f"s3://{bucket}/archive", "--s3-endpoint-url", endpoint,
                "--api-url", s.api.url, *s.ta_args]

    def upload(out: Path) -> list[str]:
        return [sys.executable, str(S3_UPLOAD), endpoint, bucket, CKPT, str(local)]

    def verify_ta(out: Path, first: bool) -> None:
        check_s3_archive(client, bucket, "archive", tune, s.files)
        empty(client, bucket)

    def verify_upload(out: Path, first: bool) -> None:
        check_s3_object(client, bucket, CKPT, CKPT_BYTES)
        empty(client, bucket)

    env = {**s.key, **servers.S3_ENV}
    return [Case("tune-archiver", ta, verify_ta, env, fresh),
            Case("boto3 upload_file", upload, verify_upload, servers.S3_ENV, fresh)]


def empty(client: Any, bucket: str) -> None:
    """Delete the bucket and all in it: moto holds every object in a temp file until then."""
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                      UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    client.delete_bucket(Bucket=bucket)


# name -> builder, in the report's order
WORKLOADS: dict[str, Callable[[Setup], list[Case]]] = {
    "W1": w1, "W1-nohash": w1_nohash, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6,
}
# workloads without peers of their own, compared with another's best peer
PEERS_OF = {"W1-nohash": "W1"}
