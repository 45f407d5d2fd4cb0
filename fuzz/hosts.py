"""Scripted hostile asset hosts, one case a function (c_*), against fetch."""

import gzip
import sys

from fuzz.raw import DATA, ETAG, plain, resp, run_case


def c_gzip(i, p, h):
    z = gzip.compress(DATA)
    return plain(extra={"Content-Encoding": "gzip"}, body=z)


def c_206_unasked_partial(i, p, h):
    if "range" in h:
        return plain()
    return plain("206 Partial Content", {"Content-Range": f"bytes 0-99/{len(DATA)}"}, DATA[:100])


def c_206_unasked_whole(i, p, h):
    return plain("206 Partial Content", {"Content-Range": f"bytes 0-{len(DATA) - 1}/{len(DATA)}"})


def c_206_whole_short(i, p, h):
    return plain(
        "206 Partial Content",
        {"Content-Range": f"bytes 0-{len(DATA) - 1}/{len(DATA)}"},
        DATA[:3000],
    )


def c_cut_then_200(i, p, h):
    if i == 0:
        return plain(body=DATA)[:-2000]
    return plain()


def c_cut_then_wrong_offset(i, p, h):
    if i == 0:
        return plain()[:-2000]
    if "range" in h:
        start = int(h["range"][6:].split("-")[0])
        return plain(
            "206 Partial Content",
            {"Content-Range": f"bytes {start - 10}-{len(DATA) - 1}/{len(DATA)}"},
            DATA[start - 10 :],
        )
    return plain()


def c_cut_then_wrong_offset_lie(i, p, h):
    # claims the right offset but sends bytes from elsewhere: undetectable, skip
    return plain()


def c_longer_than_cl(i, p, h):
    return plain(extra={"Content-Length": str(len(DATA))}, body=DATA + b"EXTRA" * 100)


def c_shorter_cl_close(i, p, h):
    return plain(extra={"Content-Length": str(len(DATA) + 100)})


def c_no_cl_close(i, p, h):
    return plain(cl=False)


def c_no_cl_cut(i, p, h):
    if i == 0:
        return plain(cl=False, body=DATA[:3000])
    if "range" in h:
        start = int(h["range"][6:].split("-")[0])
        return plain(
            "206 Partial Content",
            {"Content-Range": f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"},
            DATA[start:],
        )
    return plain()


def c_double_cl(i, p, h):
    return resp(
        "200 OK", {"ETag": ETAG, "Content-Length": str(len(DATA)), "content-length": "100"}, DATA
    )


def redirect(location):
    """A case answering 302 to `location`, empty."""
    return lambda i, p, h: resp("302 Found", {"Location": location, "Content-Length": "0"}, b"")


c_redirect_loop = redirect("/f")
c_redirect_file = redirect("file:///etc/passwd")
c_redirect_data = redirect("data:,hello")
c_redirect_noscheme = redirect("//[::1]:1/x")
c_redirect_weird = redirect("http://127.0.0.1:99999/x")
c_redirect_ctrl = redirect("/x\x1b[2J")
c_redirect_empty = redirect("")


def c_te_gzip(i, p, h):
    z = gzip.compress(DATA)
    body = f"{len(z):x}\r\n".encode() + z + b"\r\n0\r\n\r\n"
    return resp("200 OK", {"ETag": ETAG, "Transfer-Encoding": "gzip, chunked"}, body)


def c_cr_weird(i, p, h):
    return plain("206 Partial Content", {"Content-Range": f"bytes 0-{len(DATA) - 1}/*"})


def c_cl_neg(i, p, h):
    return resp("200 OK", {"ETag": ETAG, "Content-Length": "-5"}, DATA)


def c_status_weird(i, p, h):
    return plain("299 Weird")


def c_203(i, p, h):
    return plain("203 Non-Authoritative")


def c_304(i, p, h):
    return resp("304 Not Modified", {"ETag": ETAG}, b"")


def c_100_then(i, p, h):
    return b"HTTP/1.1 100 Continue\r\n\r\n" + plain()


def c_huge_header(i, p, h):
    return plain(extra={"X-Big": "a" * 100000})


def c_many_headers(i, p, h):
    return resp(
        "200 OK", {**{f"X-{n}": "a" for n in range(2000)}, "Content-Length": str(len(DATA))}, DATA
    )


def c_http09(i, p, h):
    return DATA


def c_http10(i, p, h):
    return b"HTTP/1.0 200 OK\r\n\r\n" + DATA


def c_ctype_html(i, p, h):
    return plain(extra={"Content-Type": "TEXT/HTML; charset=x"})


def c_multipart_byteranges(i, p, h):
    if i == 0:
        return plain()[:-2000]
    return plain(
        "206 Partial Content", {"Content-Type": "multipart/byteranges; boundary=X"}, b"--X\r\n"
    )


def c_cut_then_206_total_changed(i, p, h):
    if i == 0:
        return plain()[:-2000]
    start = int(h["range"][6:].split("-")[0])
    return plain(
        "206 Partial Content",
        {"Content-Range": f"bytes {start}-{len(DATA) + 99}/{len(DATA) + 100}"},
        (DATA + b"x" * 100)[start:],
    )


def c_cut_then_206_etag_changed(i, p, h):
    if i == 0:
        return plain()[:-2000]
    start = int(h["range"][6:].split("-")[0])
    return plain(
        "206 Partial Content",
        {"ETag": '"other"', "Content-Range": f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"},
        DATA[start:],
    )


def c_cut_then_206_no_etag(i, p, h):
    if i == 0:
        return plain()[:-2000]
    start = int(h["range"][6:].split("-")[0])
    return resp(
        "206 Partial Content",
        {
            "Content-Length": str(len(DATA) - start),
            "Content-Range": f"bytes {start}-{len(DATA) - 1}/{len(DATA)}",
        },
        DATA[start:],
    )


def c_html_no_type(i, p, h):
    body = b"<!DOCTYPE html><html><body>Access denied</body></html>" + b" " * 1200
    return resp("200 OK", {"Content-Length": str(len(body))}, body)


def c_html_octet(i, p, h):
    body = b"<html><body>Session expired, log in</body></html>" + b" " * 1200
    return resp(
        "200 OK",
        {"Content-Length": str(len(body)), "Content-Type": "application/octet-stream"},
        body,
    )


def c_xml_octet(i, p, h):
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code></Error>'
        + b" " * 1200
    )
    return resp(
        "200 OK", {"Content-Length": str(len(body)), "Content-Type": "binary/octet-stream"}, body
    )


names = [n for n in dir() if n.startswith("c_")]
want = [a for a in sys.argv[1:] if not a.startswith("--")] or names
for n in names:
    if n in want:
        run_case(
            n, globals()[n], kind="ckpt", extra=tuple(a for a in sys.argv[1:] if a.startswith("--"))
        )
