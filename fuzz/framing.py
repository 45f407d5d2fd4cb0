"""Seeded fuzzer of an asset host that lies about framing, never about content: each
answer is right bytes of the file (a slice, or the whole) under a random status, length,
Content-Range, validator, coding or cut. Whatever it does, a file fetch calls ok must be
the file, byte for byte.

    python -m fuzz.framing SEED ROUNDS [--split]
"""

from __future__ import annotations

import gzip
import random
import sys

from fuzz import raw as H
from fuzz.raw import resp, run_case

DATA = bytes(random.Random(0).randbytes(300_000))
SPLIT = "--split" in sys.argv
if SPLIT:
    DATA = bytes(random.Random(0).randbytes(3 * 2**20))
H.DATA = DATA
LOG: list[str] = []


def answer(rng: random.Random, i: int, path: str, h: dict[str, str]) -> bytes:
    n = len(DATA)
    asked = h.get("range", "")
    start, end = 0, n - 1
    if asked.startswith("bytes="):
        a, _, b = asked[6:].partition("-")
        start = int(a) if a else 0
        end = int(b) if b else n - 1
    if rng.random() < 0.08 and i < 6:
        return resp("302 Found", {"Location": "/f?r=" + str(i), "Content-Length": "0"}, b"")
    if rng.random() < 0.08:
        return resp(rng.choice(["500 X", "503 X", "429 X", "408 X"]), {"Content-Length": "0"}, b"")
    # Which bytes it sends: what was asked, the whole file, or another true slice.
    kind = rng.random()
    if kind < 0.6:
        a, b = start, min(end, n - 1)
    elif kind < 0.8:
        a, b = 0, n - 1
    else:
        a = rng.randrange(0, n)
        b = rng.randrange(a, n)
    body = DATA[a : b + 1]
    status = "206 Partial Content" if (a, b) != (0, n - 1) or rng.random() < 0.3 else "200 OK"
    if rng.random() < 0.1 and status.startswith("200"):  # a 200 of a slice would lie
        status = "206 Partial Content"
    hd: dict[str, str] = {"Content-Type": "application/octet-stream"}
    etag = rng.choice(['"v1"', '"v1"', '"v1"', 'W/"v1"', '"v2"', None])
    if etag:
        hd["ETag"] = etag
    if rng.random() < 0.7:
        hd["Accept-Ranges"] = "bytes"
    if status.startswith("206") or rng.random() < 0.1:
        total = rng.choice([str(n), str(n), str(n), "*", str(n + 1)])
        hd["Content-Range"] = rng.choice([f"bytes {a}-{b}/{total}"] * 4 + [f"bytes {a}-{b}"])
    if rng.random() < 0.05:
        hd["Content-Encoding"] = "gzip"
        body = gzip.compress(body)
    framing = rng.random()
    if framing < 0.7:
        hd["Content-Length"] = str(len(body))
    elif framing < 0.8:
        hd["Content-Length"] = str(len(body) + rng.choice([5, 1000]))  # fewer would say
        # the file ends there (bytes past a length are no body): a lie about content
    elif framing < 0.9:
        hd["Transfer-Encoding"] = "chunked"
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    wire = resp(status, hd, body)
    LOG.append(f"  #{i} asked {asked or '-'}: {status} {hd}")
    # Cut mid-body; not a body of no length, which ends where the connection closes (a
    # host that cannot say where is taken at its word, README says).
    framed = "Content-Length" in hd or "Transfer-Encoding" in hd
    if body and framed and rng.random() < 0.2:
        wire = wire[: rng.randrange(len(wire) - len(body), len(wire))]
    return wire


def main_fuzz(seed: int, rounds: int) -> None:
    for r in range(rounds):
        rng = random.Random(seed * 1000 + r)
        extra = ("--retries", "8")
        if SPLIT:
            extra += ("--split-threshold", "1M", "--split", "3")
        LOG.clear()
        run_case(f"{seed}/{r}", lambda i, p, h, rng=rng: answer(rng, i, p, h), extra=extra)
        if "-V" in sys.argv:
            print("\n".join(LOG))


if __name__ == "__main__":
    main_fuzz(int(sys.argv[1]), int(sys.argv[2]))
