"""Asset hosts that misbehave as real CDNs do: answers that once slipped past the checks."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import check_manifest
from tests.helpers import blob_file, run_fetch, sha256, stored_blobs
from tests.s3server import aws_env_fixture, moto_s3_fixture  # noqa: F401  (fixtures)
from tests.standin import Cut, StandIn, Status
from tests.test_faults import RawHost, archived_from, archived_whole, closing_answer, cut_then
from tests.test_s3_archive import S3Archive, fetch, s3_fixture  # noqa: F401  (fixture)

MiB = 2**20


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def test_a_206_of_the_whole_file_unasked_is_the_file(standin: StandIn, archive: Path) -> None:
    """A host that answers every GET 206 with the whole file and its strong ETag, though
    no Range was asked: the body is the file, as a 200's would be. It failed on every
    attempt as 'the file changed on the server', a file that never changed."""
    data = bytes(range(256)) * 20
    whole = {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}", "ETag": '"v1"'}
    url = standin.add_file("model", data)
    standin.add_tune(1, [url], [])
    standin.faults["model"] = [Status(206, whole, data)] * 6
    assert run_fetch(standin, archive, "1") == 0
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert (entry["status"], entry["sha256"]) == ("ok", sha256(data))
    assert blob_file(archive, data).read_bytes() == data
    assert [r.headers.get("Range") for r in standin.seen("cdn")] == [None]


@pytest.mark.parametrize(("status", "code"), [(403, 0), (404, 1), (410, 1)])
def test_a_cut_body_of_no_length_is_never_taken_whole_when_the_host_refuses_the_question(
    standin: StandIn, archive: Path, status: int, code: int
) -> None:
    """A body of no length cut by a dropped connection, and the host's answer to what
    lies past it is an error: 403 (the presigned URL expired meanwhile), 404 or 410 (the
    file is going). None says the file ends there: the 100,000 bytes of 300,000 were
    archived as the file, 'ok', exit 0. Now an expired URL is renewed and the download
    resumed; the others fail the file, its bytes kept for the next run."""
    data = os.urandom(300_000)
    refused = f"HTTP/1.1 {status} Refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    archived_from(standin, archive, cut_then(data, refused.encode()), code)
    if code == 0:
        archived_whole(archive, data)
        return
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert entry["status"] == "failed"
    assert f"HTTP {status}" in entry["error"]
    assert stored_blobs(archive) == []


@pytest.mark.parametrize("whole", [
    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-{last}/{size}\r\n",
    "HTTP/1.1 200 OK\r\n",
], ids=["206-from-the-start", "200-of-its-length"])
def test_a_cut_body_of_no_length_is_never_taken_whole_when_the_host_says_its_size(
    standin: StandIn, archive: Path, whole: str
) -> None:
    """A body of no length cut by a dropped connection; asked what lies past it, the host
    answers with the whole file under the same ETag (it ignores the Range's start, or
    Range itself), saying its length. The file is longer than the bytes received: they
    were archived as the file all the same, 'ok', exit 0. Now the body is cut, and
    fetched again until whole."""
    data = os.urandom(300_000)
    past_end = (whole.format(last=len(data) - 1, size=len(data)) + f"Content-Length: "
                f'{len(data)}\r\nETag: "v1"\r\nConnection: close\r\n\r\n').encode() + data
    archived_from(standin, archive, cut_then(data, past_end))
    archived_whole(archive, data)


def test_a_piece_cut_again_and_again_is_resumed_while_it_gets_on(
    standin: StandIn, archive: Path
) -> None:
    """A host that drops every connection after 512 KiB: one stream gets on by retries
    that start over while they move the download on, and so must a piece of a split
    file (every checkpoint of 64 MiB or more is split). A 4 MiB piece needs 8 attempts,
    past the 6 one round of retries allows: the file failed, where one stream of it was
    archived."""
    data = os.urandom(32 * MiB)
    standin.add_tune(1, [standin.add_file("model", data)], [])
    piece = 4 * MiB  # 32 MiB over --split 2: 8 pieces of 4 MiB
    standin.range_faults.update({("model", piece + start): [Cut(at=MiB // 2)]
                                 for start in range(0, piece, MiB // 2)})
    assert run_fetch(standin, archive, "1", "--split", "2", "--split-threshold", "8M") == 0
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert (entry["status"], entry["sha256"]) == ("ok", sha256(data))
    resumed = [r.headers.get("Range") for r in standin.seen("cdn", "/files/model")
               if (r.headers.get("Range") or "").endswith(f"-{2 * piece - 1}")]
    assert len(resumed) > 7  # piece 2 was asked for again and again


def test_a_cut_body_of_no_length_is_never_taken_whole_when_a_range_lies_past_it(
    standin: StandIn, archive: Path
) -> None:
    """A body of no length cut by a dropped connection; asked what lies past it, the host
    answers 206 with the rest, whose complete length it does not know (`bytes
    100000-299999/*`, as RFC 9110 allows). A range there is bytes past the end: the cut
    body was archived as the file all the same, 'ok', exit 0, since the Content-Range
    gave no size to compare. Now it is resumed until whole."""
    data = os.urandom(300_000)
    past_end = (f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100000-{len(data) - 1}"
                f"/*\r\nContent-Length: {len(data) - 100_000}\r\n"
                'ETag: "v1"\r\nConnection: close\r\n\r\n').encode() + data[100_000:]
    archived_from(standin, archive, cut_then(data, past_end))
    archived_whole(archive, data)


def test_a_whole_body_of_no_length_whose_url_expired_before_its_end_was_confirmed_is_kept(
    standin: StandIn, archive: Path
) -> None:
    """A file sent with no length, whole, whose URL expired by the time its end was asked
    about (403: a download that outlasts a presigned URL's life). The fresh URL's resume
    is answered 416 'bytes */300000': the bytes held are the file. It was started over,
    the whole file downloaded again, its end asked about again with a URL expired again
    (every download of it outlasts one): the file failed, on every run."""
    data = os.urandom(300_000)
    serves = closing_answer(data, len(data))
    asked: list[str | None] = []
    downloaded = [False]  # a body sent whole since the URL was last renewed: it expired

    def answer(head: str) -> bytes:
        found = re.search(r"(?im)^range: (.*)$", head)
        asked.append(found.group(1).strip() if found else None)
        if found is None:
            downloaded[0] = True
        elif downloaded[0]:
            downloaded[0] = False
            return b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        return serves(head)

    archived_from(standin, archive, answer)
    archived_whole(archive, data)
    assert asked == [None, "bytes=300000-", "bytes=300000-"]  # downloaded once


def ranges_host(data: bytes, etag: bytes, cuts: int) -> Callable[[str], bytes]:
    """A host that serves ranges of `data` under `etag` and says so, cutting its first
    `cuts` answers of the whole file at a third."""
    wholes: list[str] = []

    def answer(head: str) -> bytes:
        validator = b"ETag: " + etag + b"\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
        asked = re.search(r"(?im)^range: bytes=(\d+)-(\d*)", head)
        if asked is None:
            wholes.append(head)
            body = data[: len(data) // 3] if len(wholes) <= cuts else data
            return f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n".encode() + validator + body
        start, last = int(asked.group(1)), int(asked.group(2) or len(data) - 1)
        return (f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{last}/"
                f"{len(data)}\r\nContent-Length: {last + 1 - start}\r\n".encode()
                + validator + data[start:last + 1])

    return answer


@pytest.mark.parametrize(("size", "cuts"), [(4 * MiB, 0), (300_000, 1)],
                         ids=["split", "cut-once"])
def test_an_etag_with_a_control_character_is_no_validator(
    standin: StandIn, archive: Path, size: int, cuts: int
) -> None:
    """An ETag holding a control character (here \\x01), which aiohttp refuses to send
    back in If-Range ('Forbidden control character', a ValueError): a large file was
    split and every piece failed, 'internal error while downloading', exit 1, on every
    run, though the host serves the file whole; a cut one failed at its resume. Such an
    ETag is no validator: the file is fetched in one stream, and starts over if cut."""
    data = os.urandom(size)
    host = RawHost(ranges_host(data, b'"a\x01b"', cuts))
    try:
        standin.add_tune(1, [host.url("/files/model")], [])
        assert run_fetch(standin, archive, "1", "--split-threshold", "1M") == 0
    finally:
        host.close()
    archived_whole(archive, data)


def test_an_answer_aiohttp_cannot_parse_is_one_line(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host sending both Transfer-Encoding: chunked and a Content-Length: aiohttp's
    parse error is its reason, the raw line quoted and a line pointing at the fault,
    so the file's error was four lines in the manifest and, on stderr, one line strewn
    with '\\x0a' and a caret. It is one line: the reason and the quoted header."""
    data = os.urandom(3000)
    host = RawHost(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3010\r\n"
                   + b"Connection: close\r\n\r\n" + b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n")
    try:
        standin.add_tune(1, [host.url("/files/model")], [])
        assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    finally:
        host.close()
    error = check_manifest(archive / "manifests" / "1.json")["assets"][0]["error"]
    assert error.startswith("malformed response (Content-Length can't be present with "
                            "Transfer-Encoding: b'Content-Length: 3010') from http://")
    shown = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(shown) == 1
    assert shown[0].endswith(error)


@pytest.mark.parametrize("length", [50_000, 300_000], ids=["shorter-now", "whole-length"])
def test_a_cut_body_of_no_length_is_never_taken_whole_when_a_416_says_another_length(
    standin: StandIn, archive: Path, length: int
) -> None:
    """A body of no length cut by a dropped connection at 100,000 bytes; asked what lies
    past it, the host answers 416 'bytes */N' with N not the bytes received: the file
    was replaced by a shorter one (50,000 bytes) behind a host that checks Range before
    If-Range, or a host says the whole file's length (300,000) in
    its 416. 416 was taken as 'nothing past it', whatever length it said: the 100,000
    cut bytes, of a version no longer there, were the blob, 'ok', exit 0. A 416 of
    another length now says the body was cut: the file is fetched until whole."""
    old = os.urandom(300_000)
    new = old if length == len(old) else os.urandom(length)
    serves_old, serves_new = closing_answer(old, 100_000), closing_answer(new, len(new))
    asked: list[str] = []

    def answer(head: str) -> bytes:
        asked.append(head)
        if len(asked) == 1:
            return serves_old(head)
        if len(asked) == 2:
            return (f"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{length}\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n").encode()
        return serves_new(head)

    archived_from(standin, archive, answer)
    archived_whole(archive, new)


PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)
# A type a host sends with an escape sequence in it (aiohttp passes it on as it is).
ESCAPED_TYPE = (b"HTTP/1.1 200 OK\r\nContent-Type: image/png\x1b[2J\r\nContent-Length: "
                + str(len(PNG)).encode() + b"\r\nConnection: close\r\n\r\n" + PNG)


def test_a_content_type_with_an_escape_sequence_is_no_type(
    standin: StandIn, archive: Path
) -> None:
    """A host whose Content-Type holds an escape sequence ('image/png\\x1b[2J'): it
    was recorded as the blob's type, the escape in the manifest for whoever reads its
    content_type out. Such a value is no media type: it says nothing, as octet-stream
    does, and the bytes tell."""
    archived_from(standin, archive, lambda head: ESCAPED_TYPE)
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert (entry["status"], entry["content_type"]) == ("ok", "image/png")


def test_a_content_type_with_an_escape_sequence_is_uploaded_to_a_bucket(
    standin: StandIn, s3: S3Archive
) -> None:
    """The same host into an S3 archive: the type went on as the object's Content-Type,
    which the upload refuses ('Forbidden control character detected in headers'), so
    the file failed, exit 1, on every run while the host sent it: never archived. Now
    it is, typed by its bytes."""
    host = RawHost(ESCAPED_TYPE)
    try:
        standin.add_tune(1, [host.url("/files/photo")], [])
        assert fetch(standin, s3, "1") == 0
    finally:
        host.close()
    entry = s3.manifest(1)["assets"][0]
    assert (entry["status"], entry["sha256"]) == ("ok", sha256(PNG))
    found = s3.client.head_object(Bucket=s3.bucket, Key=f"{s3.prefix}/{entry['path']}")
    assert found["ContentType"] == "image/png"
