"""Server-side copies against a store whose limit is 5 GB, not S3's 5 GiB (Backblaze B2):
a fake S3 endpoint on 127.0.0.1 that holds no bytes, only the sizes of its objects."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from aiohttp import web

from tests.s3server import aws_env_fixture  # noqa: F401  (fixture)
from tune_archiver.models import Blob
from tune_archiver.store.s3.store import S3Store
from tune_archiver.store.s3.transfer import copy

B2_COPY_LIMIT = 5_000_000_000  # bytes: B2's largest CopyObject, and its largest part
CHECKPOINT = 5_100_000_000  # an SDXL checkpoint between 5 GB and 5 GiB
LAST_MODIFIED = "Tue, 01 Dec 2026 04:00:00 GMT"


class B2Like:
    """CopyObject, UploadPartCopy and the multipart calls around them, refusing a copy
    (or a part) of more than B2_COPY_LIMIT bytes as B2 does."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.parts: dict[int, int] = {}
        self.refused: list[str] = []

    @staticmethod
    def refusal(size: int) -> web.Response:
        return web.Response(status=400, content_type="application/xml", text=(
            "<Error><Code>InvalidRequest</Code><Message>Copy source too big: "
            f"{size}</Message></Error>"))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        query = request.query
        if request.method == "HEAD":
            if key not in self.sizes:
                return web.Response(status=404)
            return web.Response(headers={"Content-Length": str(self.sizes[key]),
                                         "Last-Modified": LAST_MODIFIED, "ETag": '"e"'})
        if request.method == "POST" and "uploads" in query:
            return xml(f"<InitiateMultipartUploadResult><Key>{key}</Key>"
                       "<UploadId>u1</UploadId></InitiateMultipartUploadResult>")
        if request.method == "PUT" and "partNumber" in query:
            found = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["x-amz-copy-source-range"])
            assert found is not None
            size = int(found[2]) - int(found[1]) + 1
            if size > B2_COPY_LIMIT:
                self.refused.append(key)
                return self.refusal(size)
            self.parts[int(query["partNumber"])] = size
            return xml(f'<CopyPartResult><ETag>"p{query["partNumber"]}"</ETag>'
                       f"<LastModified>2026-12-01T04:00:00Z</LastModified></CopyPartResult>")
        if request.method == "GET" and "uploadId" in query:
            parts = "".join(f'<Part><PartNumber>{n}</PartNumber><ETag>"p{n}"</ETag>'
                            f"<Size>{size}</Size></Part>" for n, size in sorted(self.parts.items()))
            return xml(f"<ListPartsResult><IsTruncated>false</IsTruncated>{parts}"
                       "</ListPartsResult>")
        if request.method == "POST" and "uploadId" in query:
            self.sizes[key] = sum(self.parts.values())
            return xml(f'<CompleteMultipartUploadResult><Key>{key}</Key><ETag>"e-1"</ETag>'
                       "</CompleteMultipartUploadResult>")
        if request.method == "PUT" and "x-amz-copy-source" in request.headers:
            source = unquote(request.headers["x-amz-copy-source"]).lstrip("/").split("/", 1)[1]
            if self.sizes[source] > B2_COPY_LIMIT:
                self.refused.append(key)
                return self.refusal(self.sizes[source])
            self.sizes[key] = self.sizes[source]
            return xml('<CopyObjectResult><ETag>"e"</ETag>'
                       "<LastModified>2026-12-01T04:00:00Z</LastModified></CopyObjectResult>")
        if request.method == "DELETE":
            return web.Response(status=204)
        raise AssertionError(f"not expected of the copy: {request.method} {request.url}")


def xml(body: str) -> web.Response:
    return web.Response(content_type="application/xml",
                        text=f'<?xml version="1.0" encoding="UTF-8"?>{body}')


@pytest.fixture
async def b2(aws_env: None) -> AsyncIterator[tuple[B2Like, str]]:
    store = B2Like()
    app = web.Application()
    app.router.add_route("*", "/archive/{key:.+}", store.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield store, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("check", [True, False], ids=["into-place", "set-aside"])
async def test_a_blob_between_5_gb_and_5_gib_is_copied_part_by_part(
    b2: tuple[B2Like, str], tmp_path: Path, check: bool
) -> None:
    """The largest object S3 copies in one CopyObject is 5 GiB, Backblaze B2's is 5 GB:
    a checkpoint of 5.1 GB (SDXL's reach) sent to a temporary key was copied to its
    blob key in one request, which B2 refuses, so it failed on every run, and verify
    --repair could not set such a blob aside. Copies past 5 GB now go part by part."""
    fake, endpoint = b2
    sha = "ab" * 32
    fake.sizes["tmp/upload-1"] = CHECKPOINT
    async with S3Store("s3://archive", endpoint) as store:
        await copy(store.bucket, "tmp/upload-1", f"objects/sha256/ab/{sha}",
                   Blob(sha, CHECKPOINT), check=check)
    assert fake.refused == []
    assert fake.sizes[f"objects/sha256/ab/{sha}"] == CHECKPOINT
    assert max(fake.parts.values()) <= B2_COPY_LIMIT
