"""`serve`: the archive's pages, its blobs with Range, verify, the token, and no writes."""

from __future__ import annotations

import asyncio
import errno
import gzip
import json
import logging
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.archive_helpers import cli, first_error_line, manifest_of, stop, write_manifest
from tests.archive_helpers import start as start_process
from tests.conftest import ROOT
from tests.gallery_helpers import NOW, Gallery, archived_gallery
from tests.helpers import blob_file, run_fetch, sha256
from tests.s3server import (  # noqa: F401  (fixtures)
    Bucket,
    aio_session_fixture,
    aws_env_fixture,
    bucket_fixture,
    moto_s3_fixture,
)
from tests.standin import StandIn
from tune_archiver.errors import ConfigError, StorageError
from tune_archiver.layout import blob_key
from tune_archiver.store import local as local_module
from tune_archiver.store.local import LocalStore
from tune_archiver.store.s3.store import S3Store
from tune_archiver.web import blobs, server
from tune_archiver.web.access import is_loopback, parse_bind, read_token
from tune_archiver.web.blobs import byte_range
from tune_archiver.web.server import start

TOKEN = "s3cret-token-0123456789"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def gallery(standin: StandIn, archive: Path) -> Gallery:
    return archived_gallery(standin, archive)


Site = tuple[str, aiohttp.ClientSession]


async def running(archive: Path, token: str | None = None) -> AsyncIterator[Site]:
    """`serve`'s app on 127.0.0.1 (a free port) and a client session."""
    runner, url = await start(LocalStore(archive), "127.0.0.1", 0, token, lambda: NOW)
    try:
        async with aiohttp.ClientSession() as session:
            yield url, session
    finally:
        await runner.cleanup()


@pytest.fixture
async def site(gallery: Gallery, archive: Path) -> AsyncIterator[Site]:
    async for pair in running(archive):
        yield pair


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes())
            for p in root.rglob("*") if p.is_file()}


async def test_tunes_page_lists_newest_first(site: Site) -> None:
    """The tunes page lists 5 before 4, complete, with its checkpoint and the time left."""
    url, session = site
    async with session.get(url) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "script-src" not in response.headers["Content-Security-Policy"]
        text = await response.text()
    assert text.index('href="/tunes/5"') < text.index('href="/tunes/4"')
    assert "20d 12h" in text
    assert "complete" in text
    assert "&lt;script&gt;" in text
    assert "<script>" not in text


@pytest.fixture
def unfinished(standin: StandIn, archive: Path) -> Path:
    """Tune 1 still training, tune 2 with its one photo gone upstream: neither failed."""
    standin.add_tune(1, [], [], trained_at=None)
    standin.add_tune(2, [], [standin.file_url("deleted.jpg")],
                     expires_at="2026-11-01T00:00:00Z")
    assert run_fetch(standin, archive, "1") == 0
    run_fetch(standin, archive, "2")
    assert run_fetch(standin, archive, "2") == 0  # gone upstream: said once, exit 1 then 0
    return archive


async def test_tunes_page_says_training_and_gone_upstream_not_failed(unfinished: Path) -> None:
    """A tune still training and one whose photo is gone upstream are not complete, and
    the page says why, as `list` does: neither is called "failed", which only a file
    that failed is."""
    async for url, session in running(unfinished):
        async with session.get(url) as response:
            text = await response.text()
    rows = {line.split("</td>")[0]: line for line in text.split("<tr><td>")[1:]}
    assert "still training" in rows["1"]
    assert "1 gone upstream" in rows["2"]
    assert not [row for row in rows.values() if "failed" in row.replace('class="failed"', "")]


async def test_tune_page_links_every_blob(
    site: Site, gallery: Gallery
) -> None:
    """A tune's page shows its prompts and links each file by its sha256 under /blobs/."""
    url, session = site
    async with session.get(f"{url}tunes/5") as response:
        text = await response.text()
    for data in [gallery.checkpoint, *gallery.training, *gallery.generated[11]]:
        assert f'/blobs/{sha256(data)}"' in text
    assert "a photo of ohwx woman in Paris" in text
    assert "&quot;cinematic&quot; &lt;lighting&gt;" in text
    assert 'action="/tunes/5/verify"' in text


async def test_blob_has_its_type_and_ranges(
    site: Site, gallery: Gallery
) -> None:
    """A blob is sent with the type its bytes show; a Range gets 206 and those bytes."""
    url, session = site
    async with session.get(f"{url}blobs/{sha256(gallery.training[0])}") as response:
        assert response.headers["Content-Type"] == "image/png"
        assert await response.read() == gallery.training[0]
    blob = f"{url}blobs/{sha256(gallery.checkpoint)}"
    async with session.get(blob, headers={"Range": "bytes=100-1099"}) as response:
        assert response.status == 206
        assert response.headers["Content-Type"] == "application/x-safetensors"
        assert await response.read() == gallery.checkpoint[100:1100]
    async with session.get(f"{url}blobs/{'0' * 64}") as response:
        assert response.status == 404


async def test_verify_button_says_intact_then_corrupt(
    site: Site, gallery: Gallery, archive: Path
) -> None:
    """POST verify re-hashes the tune: intact, then the corrupted training image named."""
    url, session = site
    async with session.post(f"{url}tunes/5/verify") as response:
        assert "intact: 8 blobs" in await response.text()
    path = blob_file(archive, gallery.training[1])
    path.chmod(0o600)
    path.write_bytes(b"rot" + gallery.training[1][3:])
    async with session.post(f"{url}tunes/5/verify") as response:
        text = await response.text()
    assert "problems found" in text
    assert "training_image 1: corrupt" in text


async def test_serving_writes_nothing(
    site: Site, archive: Path
) -> None:
    """Pages, blobs and verify change no file of the archive; PUT and DELETE are refused."""
    url, session = site
    before = snapshot(archive)
    for path in ("", "tunes/5", "tunes/4"):
        async with session.get(url + path) as response:
            assert response.status == 200
    async with session.post(f"{url}tunes/5/verify") as response:
        assert response.status == 200
    for method in ("PUT", "DELETE"):
        async with session.request(method, f"{url}tunes/5") as response:
            assert response.status == 405
    assert snapshot(archive) == before


async def test_token_is_required_when_set(gallery: Gallery, archive: Path) -> None:
    """With a token, a request without it (or with a wrong one) is 401; ?token= and Bearer pass,
    and the page's links carry the query's token on."""
    async for url, session in running(archive, TOKEN):
        for headers, query in (({}, ""), ({"Authorization": "Bearer nope"}, "?token=nope")):
            async with session.get(f"{url}tunes/5{query}", headers=headers) as response:
                assert response.status == 401
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
        async with session.get(f"{url}tunes/5?token={TOKEN}") as response:
            text = await response.text()
        assert f'action="/tunes/5/verify?token={TOKEN}"' in text


@pytest.mark.parametrize(("words", "message"), [
    (["--bind", "0.0.0.0:8765"], "needs --token-file"),
    (["--bind", "nowhere"], "--bind takes HOST:PORT"),
    # A port isdigit() takes and int() refuses was a ValueError traceback, exit 1; an
    # Arabic-Indic one bound another port than the user's digits say.
    (["--bind", "127.0.0.1:\u00b2"], "--bind takes HOST:PORT"),
    (["--bind", "127.0.0.1:\u0668\u0667\u0666\u0665"], "--bind takes HOST:PORT"),
    (["--bind", "127.0.0.1:1", "--token-file", "missing"], "cannot read the token file"),
    (["--bind", "127.0.0.1:1", "--token-file", "/dev/zero"], "is larger than 4 KiB"),
])
def test_serve_refuses_bad_settings(
    capsys: pytest.CaptureFixture[str], gallery: Gallery, archive: Path, words: list[str],
    message: str,
) -> None:
    """Off loopback without a token file, a bad --bind, an unreadable token or one too
    large to be a token (/dev/zero was read until memory ran out): exit 2."""
    ran = cli(capsys, "serve", "--archive", str(archive), *words)
    assert ran.code == 2
    assert message in ran.err


def test_serve_needs_an_archive(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """serve on a folder that is no archive is a usage error, as for list."""
    ran = cli(capsys, "serve", "--archive", str(tmp_path / "none"))
    assert ran.code == 2
    assert "no archive at" in ran.err


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False)])
def test_a_token_file_others_may_read_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    """The token opens the archive: a token file group or others may read is said, as an
    API key file is (ssh's rule), and used; the warning never shows the token."""
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    with caplog.at_level(logging.WARNING):
        assert read_token(str(path)) == TOKEN
    said = [r.getMessage() for r in caplog.records]
    assert bool(said) is warned
    assert all(f"the token file {path} can be read or changed by group or others" in line
               and TOKEN not in line for line in said)


def test_a_token_file_saved_with_a_byte_order_mark_gives_the_token(tmp_path: Path) -> None:
    """Notepad's byte order mark is not part of the token: kept, every request carrying
    the token was refused (401)."""
    path = tmp_path / "token"
    path.write_bytes(b"\xef\xbb\xbf" + TOKEN.encode() + b"\r\n")
    path.chmod(0o600)
    assert read_token(str(path)) == TOKEN


@pytest.mark.parametrize("content", [TOKEN + "\nsecond line\n", TOKEN + "\tx", "a\x1b[2J" + TOKEN])
def test_a_token_file_of_more_than_the_token_is_refused(tmp_path: Path, content: str) -> None:
    """A token file of two lines (or a control character) was taken whole as the token:
    serve started and refused every request, 401, the token written in the file and the
    Bearer header (which holds no line break) never matching it. It is refused, as an API
    key file of two lines is: exit 2, the token not shown."""
    path = tmp_path / "token"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="must hold the token alone") as refused:
        read_token(str(path))
    assert TOKEN not in str(refused.value)


@pytest.mark.parametrize(("text", "bound", "loopback"), [
    ("127.0.0.1:8765", ("127.0.0.1", 8765), True), ("[::1]:80", ("::1", 80), True),
    ("localhost:0", ("localhost", 0), True), ("0.0.0.0:8080", ("0.0.0.0", 8080), False),
    ("192.168.1.5:1", ("192.168.1.5", 1), False),
])
def test_bind_and_loopback(text: str, bound: tuple[str, int], loopback: bool) -> None:
    """--bind's HOST:PORT is parsed, and only loopback hosts count as loopback."""
    assert parse_bind(text) == bound
    assert is_loopback(bound[0]) is loopback


@pytest.mark.parametrize(("header", "span"), [
    (None, None), ("bytes=0-9", (0, 9)), ("bytes=5-", (5, 99)), ("bytes=-10", (90, 99)),
    ("bytes=90-500", (90, 99)), ("bytes=0-1,5-6", None), ("items=0-1", None),
])
def test_byte_range(header: str | None, span: tuple[int, int] | None) -> None:
    """One bytes= range of a 100-byte blob as (start, end); several or others: the whole."""
    assert byte_range(header, 100) == span


def test_byte_range_past_the_end() -> None:
    """A range starting past the end is 416 with the blob's size."""
    with pytest.raises(web.HTTPRequestRangeNotSatisfiable) as caught:
        byte_range("bytes=100-", 100)
    assert caught.value.headers["Content-Range"] == "bytes */100"


def test_serve_command_runs_until_interrupted(gallery: Gallery, archive: Path) -> None:
    """`tune-archiver serve --bind 127.0.0.1:0` says its URL (with a fresh token: other
    local users must not read the archive through it), serves the tunes to that URL and
    to nothing without the token, and SIGINT stops it with exit 130."""
    process = start_process(archive, "serve", "--bind", "127.0.0.1:0",
                            env={"PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "serve said nothing"
        line = process.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:")
        url = line.split()[1]
        base, _, token = url.partition("?token=")
        assert len(token) >= 24
        with urllib.request.urlopen(url, timeout=30) as response:  # 127.0.0.1 only
            assert b'href="/tunes/5?token=' in response.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base, timeout=30)  # no token: refused
        assert refused.value.code == 401
        refused.value.close()
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130
    finally:
        stop(process)


def test_the_serve_token_is_scrubbed_from_every_log_line(
    gallery: Gallery, archive: Path, tmp_path: Path
) -> None:
    """serve's token opens the archive, as the API key opens the account: a request
    aiohttp cannot parse (any local user may send one) quoted its Authorization line, the
    token in it, in the -v traceback on stderr. It is scrubbed as the key is; the start
    line still gives the link with it."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    process = start_process(archive, "serve", "--bind", "127.0.0.1:0", "-v",
                            "--token-file", str(token_file), env={"PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "serve said nothing"
        host, _, port = process.stdout.readline().split()[1].split("/")[2].partition(":")
        with socket.create_connection((host, int(port)), timeout=30) as raw:
            raw.sendall(f"GET / HTTP/1.1\r\nHost: x\r\n"
                        f"Authorization: Bearer {TOKEN}\x01\r\n\r\n".encode())
            assert raw.recv(100).startswith(b"HTTP/1.0 400")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert "Invalid header value char" in err
        assert TOKEN not in err
        assert "Bearer REDACTED" in err
    finally:
        stop(process)


async def test_a_blob_replaced_by_a_link_is_not_served(
    site: Site, gallery: Gallery, archive: Path, tmp_path: Path
) -> None:
    """A blob swapped for a symlink (to a file outside the archive) is 404, never followed."""
    url, session = site
    secret = tmp_path / "secret.txt"
    secret.write_text("not the archive's")
    path = blob_file(archive, gallery.training[3])
    path.unlink()
    path.symlink_to(secret)
    async with session.get(f"{url}blobs/{sha256(gallery.training[3])}") as response:
        assert response.status == 404
        assert "not the archive's" not in await response.text()


async def test_a_manifest_the_disk_cannot_read_is_one_line_not_a_traceback(
    site: Site, archive: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder in tune 4's manifest's place: its page is a 500 that says why, with no
    traceback logged; the tunes page still lists tune 5."""
    (archive / "manifests" / "4.json").unlink()
    (archive / "manifests" / "4.json").mkdir()
    url, session = site
    async with session.get(f"{url}tunes/4") as response:
        assert response.status == 500
        assert "4.json is not a regular file" in await response.text()
    async with session.get(url) as response:
        assert response.status == 200
        assert 'href="/tunes/5"' in await response.text()
    assert not [record for record in caplog.records if record.exc_info]


async def answers_500_saying(
    session: aiohttp.ClientSession, method: str, url: str, words: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The answer is a 500 whose text says `words`, and no traceback was logged."""
    async with session.request(method, url) as response:
        assert response.status == 500
        assert words in await response.text()
    assert not [record for record in caplog.records if record.exc_info]


async def test_a_blob_the_disk_cannot_read_is_one_line_not_a_traceback(
    site: Site, gallery: Gallery, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """EIO reading a blob's first bytes: a 500 that says why, with no traceback logged."""
    def failing(fd: int, offset: int, count: int, path: str) -> bytes:
        raise StorageError(f"cannot read {path}: Input/output error")

    monkeypatch.setattr(blobs, "_read", failing)
    url, session = site
    await answers_500_saying(session, "GET", f"{url}blobs/{sha256(gallery.training[0])}",
                             "Input/output error", caplog)


async def test_verify_refusing_a_linked_objects_folder_is_one_line_not_a_traceback(
    site: Site, archive: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """objects/sha256 a link to a folder outside: POST verify is a 500 that says why,
    with no traceback logged."""
    (archive / "objects" / "sha256").rename(tmp_path / "moved")
    (archive / "objects" / "sha256").symlink_to(tmp_path / "moved")
    url, session = site
    await answers_500_saying(session, "POST", f"{url}tunes/5/verify", "symbolic link", caplog)


async def test_a_manifests_folder_the_disk_cannot_list_is_one_line_not_a_traceback(
    site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EIO listing manifests/: the tunes page is a 500 that says why, no traceback logged."""
    def failing(path: str) -> list[str]:
        raise OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(local_module.aiofiles.os, "listdir", failing)
    url, session = site
    await answers_500_saying(session, "GET", url, "Input/output error", caplog)


@pytest.mark.parametrize("linked", ["objects", "objects/sha256"])
async def test_a_linked_objects_folder_is_never_served_through(
    site: Site, gallery: Gallery, archive: Path, tmp_path: Path, linked: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """objects/ or objects/sha256 a link to a folder outside the archive, holding other
    bytes under a blob's name: the blob is a 500 that says why, and those bytes are
    never sent (verify and gc refuse the link; serve sent what it led to)."""
    outside = tmp_path / "outside"
    (archive / linked).rename(outside)
    (archive / linked).symlink_to(outside)
    digest = sha256(gallery.training[0])
    planted = outside / ("sha256" if linked == "objects" else "") / digest[:2] / digest
    planted.chmod(0o600)
    planted.write_bytes(b"planted bytes")
    url, session = site
    await answers_500_saying(session, "GET", f"{url}blobs/{digest}", "symbolic link", caplog)


async def test_a_compressed_file_beside_a_blob_is_never_sent_for_it(
    site: Site, gallery: Gallery, archive: Path
) -> None:
    """A stray <sha256>.gz beside a blob (which verify never reads), asked for by a client
    that accepts gzip, as every browser does: the blob's own bytes are sent, whole and by
    range. aiohttp's FileResponse sent the .gz's instead, other bytes under the name."""
    path = blob_file(archive, gallery.training[2])
    stray = path.with_name(f"{path.name}.gz")
    stray.write_bytes(gzip.compress(b"not this blob"))
    stray.chmod(0o600)
    url, session = site
    blob = f"{url}blobs/{path.name}"
    async with session.get(blob, headers={"Accept-Encoding": "gzip"}) as response:
        assert await response.read() == gallery.training[2]
    headers = {"Accept-Encoding": "gzip", "Range": "bytes=0-9"}
    async with session.get(blob, headers=headers) as response:
        assert response.status == 206
        assert await response.read() == gallery.training[2][:10]


async def fails_midway(session: aiohttp.ClientSession, url: str, asked: str | None = None,
                       extra: dict[str, str] | None = None) -> None:
    """The answer starts as a 200 (a 206 to the Range `asked`), and its body is cut
    before its end."""
    headers = {"Range": asked, **(extra or {})} if asked else {}
    async with session.get(url, headers=headers) as response:
        assert response.status == (206 if asked else 200)
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


def rotted(archive: Path, data: bytes) -> tuple[Path, bytes]:
    """The blob of `data`, one byte of it flipped on the disk: its path and its bytes now."""
    path = blob_file(archive, data)
    now = bytearray(data)
    now[len(now) // 2] ^= 0xFF
    path.chmod(0o600)
    path.write_bytes(bytes(now))
    return path, bytes(now)


async def test_a_rotted_blob_is_never_sent_whole(
    site: Site, gallery: Gallery, archive: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A blob whose bytes rotted on the disk (same size, one byte changed): asked whole, the
    connection is cut before its last bytes, so the client's download fails rather than
    completing with other bytes under the blob's name, and serve says why in one line."""
    path, now = rotted(archive, gallery.checkpoint)
    url, session = site
    await fails_midway(session, f"{url}blobs/{path.name}")
    said = [record.getMessage() for record in caplog.records
            if "do not match its sha256" in record.getMessage()]
    assert len(said) == 1
    assert "\n" not in said[0]
    assert not [record for record in caplog.records if record.exc_info]
    async with session.get(f"{url}blobs/{path.name}", headers={"Range": "bytes=0-9"}) as ranged:
        assert await ranged.read() == now[:10]  # a range is sent unhashed


@pytest.mark.parametrize("asked", ["bytes=0-", "bytes=-999999999", "bytes=0-999999999"])
async def test_a_rotted_blob_asked_whole_as_a_range_is_never_sent_whole(
    site: Site, gallery: Gallery, archive: Path, asked: str
) -> None:
    """A range that covers the whole blob (a browser's video player asks bytes=0-) is the
    whole blob: a rotted one is cut before its end, as a plain GET of it is."""
    path, _ = rotted(archive, gallery.checkpoint)
    url, session = site
    await fails_midway(session, f"{url}blobs/{path.name}", asked)


async def test_a_blob_emptied_on_the_disk_is_not_sent_as_an_empty_whole(
    site: Site, gallery: Gallery, archive: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A blob a crash left empty is not answered 200 with an empty, complete body under
    its name: it is refused before its headers, and serve says why in one line."""
    path = blob_file(archive, gallery.checkpoint)
    path.chmod(0o600)
    path.write_bytes(b"")
    url, session = site
    async with session.get(f"{url}blobs/{path.name}") as response:
        assert response.status == 500
    assert [record for record in caplog.records
            if "do not match its sha256" in record.getMessage()]


async def test_a_blob_the_disk_fails_to_read_midway_is_a_failed_download(
    site: Site, gallery: Gallery, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """EIO once the blob's headers are sent: the connection is cut and serve says why in
    one line. A 500 is no longer possible there; aiohttp wrote its status line into the
    body, and the client waited for the rest."""
    read = blobs._read

    def failing_past_the_head(fd: int, offset: int, count: int, path: str) -> bytes:
        if count > blobs.HEAD_BYTES:
            raise StorageError(f"cannot read {path}: Input/output error")
        return read(fd, offset, count, path)

    monkeypatch.setattr(blobs, "_read", failing_past_the_head)
    url, session = site
    await fails_midway(session, f"{url}blobs/{sha256(gallery.checkpoint)}")
    assert [record.getMessage() for record in caplog.records
            if "Input/output error" in record.getMessage()]
    assert not [record for record in caplog.records if record.exc_info]


async def test_a_bucket_blob_is_served_whole_only_when_it_matches_its_name(
    bucket: Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    """A bucket's blob is streamed whole and by range; one whose object holds other bytes
    (replaced in the bucket, or rotted) is cut before its end, as a local one is."""
    good, bad = os.urandom(3 * blobs.CHUNK // 2), os.urandom(5000)
    await bucket.put(f"arch/{blob_key(sha256(good))}", good)
    claimed = sha256(b"the bytes this name promises")
    await bucket.put(f"arch/{blob_key(claimed)}", bad)
    store = S3Store(f"s3://{bucket.name}/arch", bucket.endpoint, attempts=1,
                    session=bucket.session)
    async with store:
        runner, url = await start(store, "127.0.0.1", 0, None, lambda: NOW)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}blobs/{sha256(good)}") as response:
                    assert await response.read() == good
                ranged = {"Range": "bytes=10-19"}
                async with session.get(f"{url}blobs/{sha256(good)}", headers=ranged) as part:
                    assert await part.read() == good[10:20]
                await fails_midway(session, f"{url}blobs/{claimed}")
                resume = {"Range": f"bytes={blobs.CHUNK + 7}-", "If-Range": f'"{sha256(good)}"'}
                async with session.get(f"{url}blobs/{sha256(good)}", headers=resume) as rest:
                    assert await rest.read() == good[blobs.CHUNK + 7:]
                await fails_midway(session, f"{url}blobs/{claimed}", "bytes=4000-",
                                   {"If-Range": f'"{claimed}"'})
        finally:
            await runner.cleanup()
    assert [record for record in caplog.records
            if "do not match its sha256" in record.getMessage()]


async def test_a_token_of_bytes_no_text_can_be_is_401_not_a_500(
    gallery: Gallery, archive: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Any local user's Authorization header of bytes that are not UTF-8, sent over a raw
    socket: 401 like any wrong token. Encoding the surrogates aiohttp decodes them to
    raised in the token check: a 500, and an error line on the owner's terminal."""
    async for url, _ in running(archive, TOKEN):
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
                     b"Connection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 401 ")
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize(("method", "path"), [("GET", "tunes/0"), ("POST", "tunes/0/verify")])
async def test_tune_zero_is_404_not_a_500(
    site: Site, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Tune 0, which no tune can be: not in the archive (404), not a 500 that logged an
    error line for a client's question."""
    url, session = site
    with caplog.at_level(logging.DEBUG, logger="tune_archiver.serve"):
        async with session.request(method, url + path) as response:
            assert response.status == 404
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


async def test_an_unreadable_manifests_500_holds_no_key(
    gallery: Gallery, archive: Path
) -> None:
    """A manifest damaged so that its reason quotes a value (a state that is the key, as
    an older version's may hold it): the 500 said why with the key in it, though every
    page is scrubbed of it. It is scrubbed there too, the reason still said."""
    key = "sd_echoed_key_0123456789abcdef"
    path = archive / "manifests" / "4.json"
    document = json.loads(path.read_text())
    document["state"] = f"see {key}"
    path.write_text(json.dumps(document))
    runner, url = await start(LocalStore(archive), "127.0.0.1", 0, None, lambda: NOW, [key])
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{url}tunes/4") as response:
            assert response.status == 500
            text = await response.text()
    finally:
        await runner.cleanup()
    assert "its state is" in text
    assert key not in text


SIGNED = ("https://cdn.example/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2lnbmF0dXJlMDEyMzQ1"
          "/downloads/default.mp4?X-Amz-Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f0")


async def test_a_signed_url_an_older_manifest_holds_is_redacted_on_the_page(
    gallery: Gallery, archive: Path
) -> None:
    """A manifest written before a signer's redaction was known (a Cloudflare Stream JWT
    in the path, before 251c857) holds the signed URL in its title and a failed file's
    error: `list --json` gives it redacted, as every line and document does, and the
    pages show it so too (they showed it whole). The page's own links keep ?token=."""
    document = manifest_of(archive, 5)
    entry = next(item for item in document["assets"] if item["kind"] == "training_image")
    for name in ("sha256", "size", "path", "content_type"):
        entry.pop(name, None)
    entry.update(status="failed", error=f"HTTP 403 from {SIGNED}")
    document["tune"]["title"] = f"Jane {SIGNED}"
    write_manifest(archive, 5, document)
    async for url, session in running(archive, TOKEN):
        for page in ("", "tunes/5"):
            async with session.get(f"{url}{page}?token={TOKEN}") as response:
                text = await response.text()
            assert "https://cdn.example/REDACTED/downloads/default.mp4" in text
            assert "eyJ" not in text
            assert "0f1e2d3c4b5a" not in text
        assert f'action="/tunes/5/verify?token={TOKEN}"' in text
        assert f'/blobs/{sha256(gallery.checkpoint)}?token={TOKEN}"' in text


async def test_a_connection_that_sends_no_whole_request_is_closed(
    gallery: Gallery, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any local user may connect, token or not: a connection holding a request's first
    line alone was kept an hour (aiohttp's default), so enough of them ran serve out of
    descriptors and the owner's own requests hung. It is closed after IDLE_SECONDS."""
    monkeypatch.setattr(server, "IDLE_SECONDS", 0.2)
    async for url, _ in running(archive, TOKEN):
        port = int(url.rstrip("/").rpartition(":")[2])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()


def test_running_out_of_descriptors_is_one_line_not_a_traceback_each_time(
    gallery: Gallery, archive: Path
) -> None:
    """When connections run serve out of descriptors (EMFILE at accept()), asyncio's
    own handler printed a traceback for each one refused, many a second, to the owner's
    terminal. It is one line of serve's log, its traceback with -v only."""
    command = [sys.executable, "-m", "tune_archiver", "serve", "--bind", "127.0.0.1:0",
               "--archive", str(archive)]
    process = subprocess.Popen(
        command, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)))
    held: list[socket.socket] = []
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "serve said nothing"
        host, _, port = process.stdout.readline().split()[1].split("/")[2].partition(":")
        held += [socket.create_connection((host, int(port)), timeout=30) for _ in range(160)]
        assert "accept() out of system resource: [Errno 24]" in first_error_line(process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert "Traceback" not in err
    finally:
        for raw in held:
            raw.close()
        stop(process)


async def test_a_blob_names_its_bytes_so_a_browser_can_resume_its_download(
    site: Site, gallery: Gallery
) -> None:
    """A browser resumes an interrupted download (a 6 GB checkpoint) only with a
    validator, an ETag or a Last-Modified, sent back in If-Range: serve gave neither,
    so Chrome and Firefox started the download over. The sha256 is its strong ETag; a
    Range If-Range another validator (or a date) is answered with the whole blob."""
    url, session = site
    blob = f"{url}blobs/{sha256(gallery.checkpoint)}"
    etag = f'"{sha256(gallery.checkpoint)}"'
    async with session.get(blob) as response:
        assert response.headers["ETag"] == etag
    async with session.get(blob, headers={"Range": "bytes=100-", "If-Range": etag}) as response:
        assert response.status == 206
        assert await response.read() == gallery.checkpoint[100:]
    for other in ('"0000"', "Tue, 01 Dec 2026 10:00:00 GMT"):
        async with session.get(blob, headers={"Range": "bytes=100-",
                                              "If-Range": other}) as response:
            assert response.status == 200
            assert await response.read() == gallery.checkpoint


async def test_a_rotted_blob_is_not_completed_by_a_browsers_resume(
    site: Site, gallery: Gallery, archive: Path
) -> None:
    """A rotted blob's download is cut before its last piece, and a browser resumes a
    failed download with the ETag in If-Range: the rest, a range, was sent unhashed, so
    the resume completed the file, other bytes under the checkpoint's name. A resume, the
    rest of the blob to its end If-Range its ETag, is hashed with the bytes before it."""
    path, now = rotted(archive, gallery.checkpoint)
    url, session = site
    resume = {"If-Range": f'"{path.name}"'}
    await fails_midway(session, f"{url}blobs/{path.name}",
                        f"bytes={len(now) - 100}-", resume)
    async with session.get(f"{url}blobs/{path.name}",
                           headers={"Range": "bytes=10-19", **resume}) as part:
        assert await part.read() == now[10:20]  # a part, not to the end: unhashed
    intact = f"{url}blobs/{sha256(gallery.training[0])}"
    async with session.get(intact, headers={"Range": "bytes=5-", "If-Range":
                                            f'"{sha256(gallery.training[0])}"'}) as tail:
        assert tail.status == 206
        assert await tail.read() == gallery.training[0][5:]
