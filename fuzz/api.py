"""Seeded fuzzer: hostile tune JSON and listing pages against the real CLI (in process)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import random
import re as _re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema

from tests.helpers import Sleeps
from tests.standin import StandIn
from tune_archiver.cli.main import main

SCHEMA = json.loads(Path("manifests/tune-manifest.schema.json").read_text())
DEFINED = {0, 1, 2, 3, 4}


def hostile_urls(s: StandIn) -> list[Any]:
    api = s.api_url
    return [
        "file:///etc/passwd",
        "data:text/plain;base64,aGVsbG8=",
        "ftp://127.0.0.1/x",
        "javascript:alert(1)",
        "/files/a",
        "files/a",
        "//127.0.0.1/files/a",
        s.file_url("a").replace("http://", "http://user:pw@"),
        "http://[::1]:1/files/a",
        "http://[::ffff:127.0.0.1]:1/x",
        f"{api}/tunes/1",
        f"{api}/files/a",
        "http://127.0.0.1:1/x",
        "http://127.0.0.1:99999/x",
        s.file_url("a") + "?" + "x" * 100000,
        s.file_url("a") + "\x1b[2J",
        s.file_url("a") + "\r\nX: y",
        "http://",
        "http:///x",
        "https://[zz]/x",
        "http://127.0.0.1:abc/x",
        "HTTP://127.0.0.1",
        "  " + s.file_url("a"),
        s.file_url("a"),
        s.file_url("a"),
        5,
        None,
        True,
        1.5,
        [],
        {},
        [s.file_url("a")],
        {"url": s.file_url("a")},
        "",
        "\u202e" + s.file_url("a"),
        s.file_url("a\x00"),
        s.file_url("a") + "#frag",
        "http://127.0.0.1:0/x",
        "http://0.0.0.0/x",
        "http://%31%32%37.0.0.1/x",
        "http://a..b/x",
        "http://" + "a" * 70 + "/x",
        "http://[::1]:80:80/",
        "http://[1:2:3]/",
        "http://[v1.x]/",
        "http://a%00b/",
        "http://a%2fb/",
        "http://xn--zz/",
        "http://\u00e9.example/",
        "http://\u2488/",
        "http://\ufb01.example/",
        "http://a\u200db/",
        "http://\U0001f600.example/",
        "http://1.2.3.4.5/",
        "http://256.1.1.1/",
        "http://0x7f.1/",
        "http://a:b:c/",
        "http:\\\\127.0.0.1\\x",
        "mailto:a@b",
        s.file_url(s.api_key),
        s.file_url("a") + "?x=" + s.api_key,
        s.file_url("a") + "#" + s.api_key,
        s.file_url("a").replace("http://", f"http://{s.api_key}@"),
        f"http://127.0.0.1:1/{s.api_key}",
        s.file_url("a%20" + s.api_key),
    ]


def weird_values(s: StandIn) -> list[Any]:
    return [
        None,
        True,
        False,
        0,
        -1,
        1.5,
        2**70,
        "1",
        "abc",
        "",
        [],
        {},
        [None],
        [[1]],
        {"a": 1},
        "\x1b]52;c;aGk=\x07",
        "\u202eok",
        "x" * 5000,
        1e308,
        -0.0,
        "2026-13-45T99:99:99Z",
        "not a date",
        "2026-11-02",
        "9999-12-31T23:59:59Z",
        "0000-01-01T00:00:00Z",
        "2026-11-02T14:32:40.363+25:00",
        s.api_key,
        f"my key is {s.api_key}!",
        {"k": s.api_key},
        [s.api_key],
        s.api_key.upper(),
        *hostile_urls(s)[:6],
    ]


FIELDS = [
    "id",
    "title",
    "name",
    "token",
    "branch",
    "model_type",
    "ckpt_url",
    "ckpt_urls",
    "orig_images",
    "trained_at",
    "expires_at",
    "created_at",
    "updated_at",
    "url",
    "face_swap_images",
    "workspace_id",
    "base_tune_id",
    "args",
    "steps",
    "prompts",
    "is_api",
    "face_crop",
]


def mutate_tune(rng: random.Random, s: StandIn, tune: dict[str, Any]) -> Any:
    tune = copy.deepcopy(tune)
    if rng.random() < 0.04:
        return rng.choice([[], [tune], "tune", 7, None, {"error": "x"}])
    for _ in range(rng.randint(1, 4)):
        name = rng.choice(FIELDS)
        choice = rng.random()
        if name in ("ckpt_urls", "orig_images", "face_swap_images") and choice < 0.6:
            tune[name] = [rng.choice(hostile_urls(s)) for _ in range(rng.randint(0, 5))]
        elif name in ("ckpt_url", "url") and choice < 0.6:
            tune[name] = rng.choice(hostile_urls(s))
        elif rng.random() < 0.05:
            tune.pop(name, None)
        else:
            tune[name] = rng.choice(weird_values(s))
    return tune


_RAW = _re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028-\u202e\u2066-\u2069\u061c\ufeff]"
)
LAST_OUT = [""]
LAST_ARGV: list[list[str]] = [[]]


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv, sleep=Sleeps())
        except BaseException:
            code = -1
            err.write("UNCAUGHT " + traceback.format_exc())
    LAST_OUT[0] = out.getvalue()
    LAST_ARGV[0] = argv
    return code, out.getvalue(), err.getvalue()


def check(label: str, code: int, err: str, s: StandIn, archive: Path, extra: Any) -> list[str]:
    problems = []
    err = "\n".join(b for b in err.split("Error handling request from 127.0.0.1\n") if True)
    own = [blk for blk in err.split("\n") if blk.startswith("Traceback")]
    if "UNCAUGHT" in err or (
        own and "aiohttp/web_protocol.py" not in err and "-v" not in LAST_ARGV[0]
    ):
        problems.append("traceback")
    if code not in DEFINED:
        problems.append(f"exit {code}")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln]
    heads = [ln.split(": ")[:4] for ln in errors]
    heads = [":".join(h) for h in heads]
    if len(set(heads)) != len(heads):
        problems.append("repeated error lines")
    if not errors and code not in (0,):
        problems.append("failure without error line")
    for r in s.requests:
        if r.host == "api" and "Authorization" in r.headers and r.path.startswith("/files"):
            print("   note: key sent to API origin for asset", r.path[:80])
        # Basic is the URL's own user:password (the API listed it so), never our Bearer.
        if r.host != "api" and r.headers.get("Authorization", "").startswith("Bearer"):
            problems.append(f"the key sent to {r.host}{r.path}")
    if (archive / "manifests").is_dir():
        for m in (archive / "manifests").glob("*.json"):
            try:
                jsonschema.validate(json.loads(m.read_text()), SCHEMA)
            except Exception as exc:
                problems.append(f"schema {m.name}: {str(exc).splitlines()[0][:200]}")
    for name, text in (("stdout", LAST_OUT[0]), ("stderr", err)):
        hit = _RAW.search(text)
        if hit and "Traceback" not in text:
            near = text[max(0, hit.start() - 60) : hit.end() + 20]
            problems.append(f"raw {hit.group()!r} on {name}: ...{near!r}")
    if "--json" in LAST_ARGV[0]:
        try:
            json.loads(LAST_OUT[0])
        except ValueError:
            problems.append(f"--json stdout not one JSON document: {LAST_OUT[0][:200]!r}")
    if "-q" in LAST_ARGV[0] and LAST_OUT[0].strip():
        problems.append(f"-q printed {LAST_OUT[0][:200]!r}")
    if "internal error" in err or "unexpected error" in err:
        problems.append("a server's fault said as our bug (internal/unexpected error)")
    if s.api_key in err or s.api_key in LAST_OUT[0]:
        problems.append("key in stderr")
    if problems:
        print(f"== {label}: code {code}: {problems}")
        print("   input:", json.dumps(extra, default=str)[:600])
        print("   stderr:", err[-1500:].replace("\n", "\n   | "))
    return problems


@contextlib.contextmanager
def stand_in(files: dict[str, bytes]) -> Iterator[StandIn]:
    """The stand-in API and hosts serving `files`, its key in the environment; closed
    at the end."""
    s = StandIn().start()
    for name, data in files.items():
        s.add_file(name, data)
    os.environ["ASTRIA_API_KEY"] = s.api_key
    try:
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def fresh_round(s: StandIn) -> Iterator[Path]:
    """One round: the stand-in's tunes, prompts and requests cleared, and the path of a
    fresh archive in a temporary folder removed after."""
    s.tunes.clear()
    s.prompts.clear()
    s.requests.clear()
    tmp = Path(tempfile.mkdtemp())
    try:
        yield tmp / "a"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main_fuzz(seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    found = 0
    with stand_in({"a": b"A" * 2048, "b": b"jpegish" * 100}) as s:
        for i in range(rounds):
            with fresh_round(s) as archive:
                base = s.add_tune(5, [s.file_url("a")], [s.file_url("b")])
                tune = mutate_tune(rng, s, base)
                s.tunes[5] = tune
                if rng.random() < 0.2:
                    s.add_prompt(
                        5,
                        9,
                        rng.choice(["<lora:5:1> x", "\x1b[2J", 5, None]),
                        [rng.choice(hostile_urls(s)) for _ in range(2)],
                        input_image=rng.choice(hostile_urls(s)),
                    )
                mode = rng.choice(["one", "all", "prompts", "verify"])
                common = ["--archive", str(archive), "--api-url", s.api_url, "--retries", "0"]
                if mode == "one":
                    argv = ["fetch", "5", *common]
                elif mode == "all":
                    if not isinstance(tune, dict):
                        s.tunes[5] = tune = base
                    argv = ["fetch", "--all", *common]
                else:
                    argv = ["fetch", "5", "--prompts", *common]
                argv += rng.choice(
                    [
                        [],
                        ["-v"],
                        ["--log-file", "-"],
                        ["--json"],
                        ["-q"],
                        ["--dry-run"],
                        ["--dry-run", "--json"],
                    ]
                )
                code, _out, err = run(argv)
                found += bool(check(f"{seed}/{i} {mode} {argv[-2:]}", code, err, s, archive, tune))
                if mode == "verify" or rng.random() < 0.3:
                    for extra in (["verify"], ["list"], ["verify", "--json"], ["list", "--json"]):
                        c2, _, e2 = run([*extra, "--archive", str(archive)])
                        found += bool(check(f"{seed}/{i} {extra}", c2, e2, s, archive, tune))
    print(f"seed {seed}: {found} flagged of {rounds}")


if __name__ == "__main__":
    main_fuzz(int(sys.argv[1]), int(sys.argv[2]))
