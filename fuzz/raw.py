"""Hostile asset hosts: a raw socket host scripted per request, against the real fetch."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from fuzz import api as F
from tests.standin import StandIn

DATA = bytes(range(256)) * 20  # 5120 bytes
ETAG = '"abc123"'


class Raw:
    def __init__(self, script: Callable[[int, str, dict[str, str]], bytes | None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.script = script
        self.seen: list[tuple[str, dict[str, str]]] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(conn,), daemon=True).start()

    def one(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head = buf.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            self.seen.append((path, headers))
            answer = self.script(len(self.seen) - 1, path, headers)
            if answer:
                try:
                    conn.sendall(answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def resp(status: str, headers: dict[str, str], body: bytes) -> bytes:
    h = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 {status}\r\n{h}Connection: close\r\n\r\n".encode() + body


def run_case(name: str, script, kind: str = "ckpt", extra: tuple[str, ...] = ()) -> None:
    s = StandIn().start()
    host = Raw(script)
    try:
        url = host.url + "/f"
        if kind == "ckpt":
            s.add_tune(5, [url], [])
        else:
            s.add_tune(5, [], [url])
        tmp = Path(tempfile.mkdtemp())
        archive = tmp / "a"
        os.environ["ASTRIA_API_KEY"] = s.api_key
        code, _out, err = F.run(
            [
                "fetch",
                "5",
                "--archive",
                str(archive),
                "--api-url",
                s.api_url,
                "--retries",
                "2",
                *extra,
            ]
        )
        manifest = archive / "manifests" / "5.json"
        status = "-"
        bad = []
        if manifest.exists():
            m = json.loads(manifest.read_text())
            for a in m["assets"]:
                status = a["status"]
                if a["status"] == "ok":
                    blob = (archive / a["path"]).read_bytes()
                    if hashlib.sha256(blob).hexdigest() != a["sha256"]:
                        bad.append("blob sha mismatch")
                    if blob != DATA:
                        bad.append(f"ok blob is not the file ({len(blob)} bytes)")
        for path, h in host.seen:
            if "authorization" in h:
                bad.append("AUTH SENT to asset host " + path)
        F.check(name, code, err, s, archive, name)
        print(
            f"{name}: exit {code} status {status} {bad} reqs={len(host.seen)} "
            f"| {err.strip()[:300]!r}"
        )
    finally:
        host.close()
        s.close()


def plain(status="200 OK", extra=None, body=DATA, cl=True):
    h = {"ETag": ETAG, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    if cl:
        h["Content-Length"] = str(len(body))
    h.update(extra or {})
    return resp(status, h, body)
