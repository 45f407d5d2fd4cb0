"""Two-phase fuzz: archive a tune whole, then fetch it again against a hostile tune JSON;
every entry ok before must stay ok (nothing archived is dropped)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from fuzz import api as F


def oks(archive: Path) -> set[tuple]:
    p = archive / "manifests" / "5.json"
    if not p.exists():
        return set()
    m = json.loads(p.read_text())
    return {(a["kind"], a["sha256"]) for a in m["assets"] if a["status"] == "ok"}


def main_fuzz(seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    found = 0
    with F.stand_in({"a": b"A" * 2048, "b": b"jpegish" * 100, "b2": b"jpegish2" * 100}) as s:
        for i in range(rounds):
            with F.fresh_round(s) as archive:
                base = s.add_tune(5, [s.file_url("a")], [s.file_url("b"), s.file_url("b2")])
                s.add_prompt(5, 9, "x", [s.file_url("b")])
                common = ["--archive", str(archive), "--api-url", s.api_url, "--retries", "0"]
                code, _, err = F.run(["fetch", "5", "--prompts", *common])
                assert code == 0, err
                before = oks(archive)
                tune = F.mutate_tune(rng, s, base)
                s.tunes[5] = tune
                if rng.random() < 0.3:
                    s.prompts[5] = [
                        rng.choice(
                            [
                                {"id": 9, "text": "x", "images": "str"},
                                {"id": 9, "text": "x", "images": [None]},
                                {"id": "9", "images": []},
                                {"id": 9},
                            ]
                        )
                    ]
                extra = rng.choice(
                    [[], ["--prompts"], ["--only", "images"], ["--only", "checkpoints"]]
                )
                code, _out, err = F.run(["fetch", "5", *extra, *common])
                found += bool(F.check(f"{seed}/{i}", code, err, s, archive, tune))
                after = oks(archive)
                if not before <= after:
                    found += 1
                    print(f"== {seed}/{i} {extra}: DROPPED {before - after} exit {code}")
                    print("   input:", json.dumps(tune, default=str)[:500])
                    print("   err:", err[-600:])
                c2, _o2, e2 = F.run(["verify", "--archive", str(archive)])
                if code == 0 and c2 != 0:
                    print(f"== {seed}/{i}: fetch 0 but verify {c2}: {e2[:300]}")
    print(f"seed {seed}: {found} flagged of {rounds}")


if __name__ == "__main__":
    main_fuzz(int(sys.argv[1]), int(sys.argv[2]))
