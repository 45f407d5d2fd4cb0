import sys

from fuzz import raw as H
from fuzz.raw import resp, run_case

BIG = bytes(range(256)) * (4 * 4096)  # 4 MiB
H.DATA = BIG
ETAG = '"big1"'


def ranged(
    h, data=BIG, etag=ETAG, extra=None, status="206 Partial Content", body_override=None, cr=None
):
    a, _, b = h["range"][6:].partition("-")
    a = int(a)
    b = int(b) if b else len(data) - 1
    body = data[a : b + 1] if body_override is None else body_override
    hd = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Length": str(len(body)),
        "Content-Range": cr or f"bytes {a}-{b}/{len(data)}",
    }
    hd.update(extra or {})
    return resp(status, hd, body)


def whole(extra=None):
    hd = {"ETag": ETAG, "Accept-Ranges": "bytes", "Content-Length": str(len(BIG))}
    hd.update(extra or {})
    return resp("200 OK", hd, BIG)


def s_ok(i, p, h):
    return ranged(h) if "range" in h else whole()


def s_gzip_piece(i, p, h):
    return ranged(h, extra={"Content-Encoding": "gzip"}) if "range" in h else whole()


def s_etag_changes(i, p, h):
    return ranged(h, etag='"big2"') if "range" in h else whole()


def s_piece_short(i, p, h):
    if "range" in h and i < 4:
        r = ranged(h)
        return r[: len(r) - 1000]
    return ranged(h) if "range" in h else whole()


def s_piece_other_bytes(i, p, h):
    # second piece's bytes come from another version but same etag: undetectable by design
    return ranged(h) if "range" in h else whole()


def s_piece_html(i, p, h):
    return ranged(h, extra={"Content-Type": "text/html"}) if "range" in h else whole()


def s_piece_416(i, p, h):
    if "range" in h and i == 2:
        return resp("416 Range Not Satisfiable", {"Content-Range": f"bytes */{len(BIG)}"}, b"")
    return ranged(h) if "range" in h else whole()


def s_piece_500(i, p, h):
    if "range" in h and i in (1, 2, 3):
        return resp("500 Oops", {"Content-Length": "0"}, b"")
    return ranged(h) if "range" in h else whole()


def s_piece_redirect_private(i, p, h):
    if "range" in h and p == "/f":
        return resp("302 Found", {"Location": "/g", "Content-Length": "0"}, b"")
    return ranged(h) if "range" in h else whole()


def s_piece_longer(i, p, h):
    if "range" in h:
        a, _, b = h["range"][6:].partition("-")
        a = int(a)
        b = int(b)
        return ranged(h, body_override=BIG[a : b + 1] + b"Z" * 10, cr=f"bytes {a}-{b}/{len(BIG)}")
    return whole()


def s_total_changes(i, p, h):
    if "range" in h:
        a, _, b = h["range"][6:].partition("-")
        return ranged(h, cr=f"bytes {a}-{b}/{len(BIG) + 1}")
    return whole()


names = [n for n in dir() if n.startswith("s_")]
want = sys.argv[1:] or names
for n in names:
    if n in want:
        run_case(n, globals()[n], extra=("--split-threshold", "1M", "--split", "4"))
