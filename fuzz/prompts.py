"""Seeded fuzzer of prompts (a tune's and the account's) against fetch --prompts."""

from __future__ import annotations

import copy
import json
import random
import sys
from typing import Any

from fuzz import api as F
from tests.standin import StandIn

PFIELDS = [
    "id",
    "text",
    "tune_id",
    "images",
    "input_image",
    "image_references",
    "input_video",
    "video_prompt",
    "mask_image",
    "created_at",
    "negative_prompt",
    "url",
]


def mutate_prompt(rng: random.Random, s: StandIn, p: dict[str, Any]) -> Any:
    p = copy.deepcopy(p)
    if rng.random() < 0.05:
        return rng.choice([None, "x", 5, [], [p]])
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(PFIELDS)
        r = rng.random()
        if name in ("images", "image_references") and r < 0.6:
            p[name] = [rng.choice(F.hostile_urls(s)) for _ in range(rng.randint(0, 4))]
        elif name in ("text", "video_prompt") and r < 0.5:
            p[name] = rng.choice(
                [
                    "<lora:5:1> a",
                    "<faceid:5:0.8>",
                    "<lora:5>",
                    "<LORA:05:1>",
                    "<lora:999999999999999999999:1>",
                    "<lora:5:1" * 50,
                    "<faceid:5:\x1b[2J>",
                    "<lora:-5:1>",
                    "<lora:5:1><lora:5:1>",
                ]
            )
        else:
            p[name] = rng.choice(F.weird_values(s))
    return p


def main_fuzz(seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    found = 0
    with F.stand_in({"a": b"A" * 2048, "b": b"jpegish" * 100, "c": b"generated" * 100}) as s:
        for i in range(rounds):
            with F.fresh_round(s) as archive:
                s.add_tune(
                    5,
                    [],
                    [s.file_url("b")],
                    model_type=rng.choice(["lora", "faceid"]),
                    base_tune_id=1504944,
                )
                s.add_tune(1504944, [], [])
                for pid, (tid, text) in enumerate(
                    [
                        (5, "own"),
                        (1504944, "<lora:5:1> x"),
                        (1504944, "<faceid:5:0.8> y"),
                        (1504944, "z"),
                    ],
                    start=100,
                ):
                    p = {"id": pid, "text": text, "tune_id": tid, "images": [s.file_url("c")]}
                    if rng.random() < 0.5:
                        p = mutate_prompt(rng, s, p)
                    s.prompts.setdefault(tid, []).append(p)
                shown = json.dumps(s.prompts, default=repr)[:700]
                extra = rng.choice([[], ["--json"], ["--dry-run"]])
                argv = [
                    "fetch",
                    "5",
                    "--prompts",
                    *extra,
                    "--archive",
                    str(archive),
                    "--api-url",
                    s.api_url,
                    "--retries",
                    "0",
                ]
                try:
                    code, _out, err = F.run(argv)
                except TypeError as exc:  # the stand-in's sort on a bad id
                    print("standin", exc)
                    continue
                if "-V" in sys.argv:
                    print(i, code, err.strip().replace("\n", " || ")[:400])
                found += bool(F.check(f"{seed}/{i} {extra}", code, err, s, archive, shown))
                if code == 0 and (archive / "manifests/5.json").exists():
                    m = json.loads((archive / "manifests/5.json").read_text())
                    if not m["complete"]:
                        print("== exit 0 but not complete", shown)
                for cmd in (["verify"], ["list"], ["export", "5", str(archive.parent / "e")]):
                    c2, _, e2 = F.run([*cmd, "--archive", str(archive)])
                    found += bool(F.check(f"{seed}/{i} {cmd}", c2, e2, s, archive, shown))
    print(f"seed {seed}: {found} flagged of {rounds}")


if __name__ == "__main__":
    main_fuzz(int(sys.argv[1]), int(sys.argv[2]))
