"""Seeded fuzzer of GET /tunes pages (and prompt pages) against fetch --all."""

from __future__ import annotations

import json
import random
import sys
from typing import Any

from aiohttp import web

from fuzz import api as F
from tests.standin import StandIn

PAGES: list[Any] = []
ASKED: list[str] = []


async def list_tunes(self: StandIn, request: web.Request) -> web.StreamResponse:
    ASKED.append(request.path_qs)
    if not PAGES:
        return web.json_response([])
    page = PAGES.pop(0)
    if isinstance(page, bytes):
        return web.Response(body=page, content_type="application/json")
    return web.json_response(page)


StandIn._list_tunes = list_tunes  # type: ignore[method-assign]


def item(rng: random.Random, s: StandIn, i: Any) -> Any:
    t = {
        "id": i,
        "title": f"T{i}",
        "expires_at": "2026-12-20T00:00:00Z",
        "ckpt_urls": [],
        "orig_images": [s.file_url("b")],
    }
    if rng.random() < 0.3:
        t = F.mutate_tune(rng, s, t)
    return t


def pages(rng: random.Random, s: StandIn) -> list[Any]:
    kind = rng.randrange(12)
    ids = [9, 8, 7, 6]
    if kind == 0:
        return [[item(rng, s, i) for i in ids]] * 30
    if kind == 1:
        return [
            [
                item(rng, s, rng.choice(["9", 9.0, True, 2**70, -3, 0, None, "x", 9.5, [9]]))
                for _ in range(3)
            ]
        ]
    if kind == 2:
        return [
            rng.choice(
                [
                    {"tunes": []},
                    "x",
                    5,
                    None,
                    {"error": "x"},
                    [None],
                    [[1]],
                    b"{not json",
                    b"",
                    b"\xff\xfe",
                    b"[" * 100000,
                    b"1e999999",
                    b'[{"id": 1e400}]',
                    b'[{"id": 99999999999999999999999999}]',
                    b"NaN",
                    b'[{"id": NaN}]',
                    b'[{"id": Infinity}]',
                ]
            )
        ]
    if kind == 3:
        return [[item(rng, s, 9), item(rng, s, 9)]]
    if kind == 4:
        return [[item(rng, s, i)] for i in [5, 4, 3, 2, 1]] + [[item(rng, s, 7)]]
    if kind == 5:
        return [[item(rng, s, i) for i in ids], [item(rng, s, i) for i in [5, 4, 6]]]
    if kind == 6:
        return [[item(rng, s, i) for i in [1, 2, 3]]]
    if kind == 7:
        return [[item(rng, s, 9), "str", 7]]
    if kind == 8:
        return [[{"id": 9, "expires_at": rng.choice(F.weird_values(s))}]]
    return [[item(rng, s, i) for i in ids]]


def main_fuzz(seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    found = 0
    with F.stand_in({"b": b"jpegish" * 100}) as s:
        for i in range(rounds):
            with F.fresh_round(s) as archive:
                for t in (9, 8, 7, 6, 5, 4, 3, 2, 1):
                    s.add_tune(t, [], [s.file_url("b")])
                PAGES[:] = pages(rng, s)
                shown = json.dumps(PAGES, default=repr)[:400]
                ASKED.clear()

                extra = rng.choice(
                    [
                        [],
                        ["--expiring-within", "30d"],
                        ["--shard", "1/2"],
                        ["--dry-run"],
                        ["--json"],
                    ]
                )
                argv = [
                    "fetch",
                    "--all",
                    *extra,
                    "--archive",
                    str(archive),
                    "--api-url",
                    s.api_url,
                    "--retries",
                    "0",
                ]
                code, out, err = F.run(argv)
                print(
                    i, code, err.strip().replace("\n", " || ")[:300], "<<", shown[:150]
                ) if "-V" in sys.argv else None
                found += bool(F.check(f"{seed}/{i} {extra}", code, err, s, archive, shown))
                if "--json" in extra:
                    try:
                        json.loads(out)
                    except ValueError:
                        print("== bad json out", out[:300])
    print(f"seed {seed}: {found} flagged of {rounds}")


if __name__ == "__main__":
    main_fuzz(int(sys.argv[1]), int(sys.argv[2]))
