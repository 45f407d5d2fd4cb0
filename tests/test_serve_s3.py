"""`serve` on a bucket: pages from its manifests, blobs streamed with their type and Range."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from moto.s3.exceptions import MissingKey, S3AccessDeniedError
from moto.s3.models import S3Backend
from moto.s3.responses import S3Response

from tests.gallery_helpers import NOW, PROMPTS, Gallery, archived_gallery
from tests.helpers import sha256
from tests.s3server import (  # noqa: F401  (fixtures)
    MotoS3,
    aws_env_fixture,
    moto_s3_fixture,
    plain_client,
    refuse_gets,
)
from tests.standin import StandIn
from tune_archiver.store.location import open_store
from tune_archiver.store.s3.store import S3Store
from tune_archiver.web.server import start


@pytest.fixture
def bucket_url(moto_s3: MotoS3, aws_env: None, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty bucket of this test's own, as s3://bucket/backups."""
    monkeypatch.setenv("TUNE_ARCHIVER_STAGING", str(tmp_path / "staging"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    client = plain_client(moto_s3.endpoint)
    name = f"serve-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    client.close()
    return f"s3://{name}/backups"


@pytest.fixture
def gallery(standin: StandIn, bucket_url: str) -> Gallery:
    return archived_gallery(standin, bucket_url)  # type: ignore[arg-type]


async def test_bucket_blobs_stream_with_range(
    gallery: Gallery, bucket_url: str, moto_s3: MotoS3
) -> None:
    """A bucket's tune page lists its prompts; a PNG blob is image/png; a Range is 206
    with those bytes, a HEAD carries the length and no body."""
    async with open_store(bucket_url, os.environ["AWS_ENDPOINT_URL"]) as store:
        runner, url = await start(store, "127.0.0.1", 0, None, lambda: NOW)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}tunes/5") as response:
                    text = await response.text()
                assert PROMPTS[11] in text
                async with session.get(f"{url}blobs/{sha256(gallery.training[2])}") as response:
                    assert response.headers["Content-Type"] == "image/png"
                    assert await response.read() == gallery.training[2]
                blob = f"{url}blobs/{sha256(gallery.checkpoint)}"
                async with session.get(blob, headers={"Range": "bytes=-300"}) as response:
                    assert response.status == 206
                    assert response.headers["Content-Range"] == (
                        f"bytes {len(gallery.checkpoint) - 300}-"
                        f"{len(gallery.checkpoint) - 1}/{len(gallery.checkpoint)}")
                    assert await response.read() == gallery.checkpoint[-300:]
                async with session.head(blob) as response:
                    assert response.headers["Content-Length"] == str(len(gallery.checkpoint))
                    assert await response.read() == b""
        finally:
            await runner.cleanup()


async def test_an_object_the_bucket_refuses_is_one_line_not_a_traceback(
    gallery: Gallery, bucket_url: str, moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob or manifest the bucket will not let us read (AccessDenied on that object
    alone, a ConfigError, as verify takes it) is a 500 that says why, as a disk's EIO
    is, not a logged traceback and 'Server got itself in trouble'; the rest is served."""
    refused = (sha256(gallery.training[2]), "manifests/5.json")
    refuse_gets(monkeypatch, lambda key: key.endswith(refused), S3AccessDeniedError)
    async with open_store(bucket_url, os.environ["AWS_ENDPOINT_URL"]) as store:
        runner, url = await start(store, "127.0.0.1", 0, None, lambda: NOW)
        try:
            async with aiohttp.ClientSession() as session:
                for path in (f"blobs/{refused[0]}", "tunes/5"):
                    async with session.get(f"{url}{path}") as response:
                        assert response.status == 500
                        assert "access denied" in await response.text()
                async with session.get(f"{url}blobs/{sha256(gallery.checkpoint)}") as response:
                    assert await response.read() == gallery.checkpoint
        finally:
            await runner.cleanup()


async def test_a_blob_removed_after_it_was_found_is_404_even_behind_a_403(
    gallery: Gallery, bucket_url: str, moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob gc or verify --repair removes between serve's HEAD, which found it, and
    its GET, on a bucket that answers a missing key 403 (credentials granted the
    prefix alone): a 500 'access denied', where fetch and verify say missing, and a
    local archive's blob gone meanwhile is a 404. It is looked up again: 404."""
    get_object = S3Response.get_object

    def refused_get(self: S3Response, *args: Any, **kwargs: Any) -> Any:
        try:
            return get_object(self, *args, **kwargs)
        except MissingKey:
            raise S3AccessDeniedError() from None

    monkeypatch.setattr(S3Response, "get_object", refused_get)
    gone = sha256(gallery.training[2])
    client = plain_client(moto_s3.endpoint)
    name = bucket_url.removeprefix("s3://").split("/")[0]

    def removed_meanwhile(params: dict[str, Any], **_: Any) -> None:
        if params["Key"].endswith(gone):
            client.delete_object(Bucket=name, Key=params["Key"])

    async with open_store(bucket_url, os.environ["AWS_ENDPOINT_URL"]) as store:
        assert isinstance(store, S3Store)
        store.bucket.client.meta.events.register(
            "before-parameter-build.s3.GetObject", removed_meanwhile)
        runner, url = await start(store, "127.0.0.1", 0, None, lambda: NOW)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}blobs/{gone}") as response:
                    assert response.status == 404
                    assert "access denied" not in await response.text()
                async with session.get(f"{url}blobs/{sha256(gallery.checkpoint)}") as response:
                    assert await response.read() == gallery.checkpoint
        finally:
            await runner.cleanup()
            client.close()


async def test_a_listing_the_bucket_refuses_is_one_line_not_a_traceback(
    gallery: Gallery, bucket_url: str, moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tunes page when the bucket refuses to list manifests/ (AccessDenied, a
    ConfigError) is a 500 that says why, as a disk's EIO listing it is."""
    async with open_store(bucket_url, os.environ["AWS_ENDPOINT_URL"]) as store:
        runner, url = await start(store, "127.0.0.1", 0, None, lambda: NOW)
        try:
            def denying(*args: Any, **kwargs: Any) -> Any:
                raise S3AccessDeniedError()

            monkeypatch.setattr(S3Backend, "list_objects_v2", denying)
            async with aiohttp.ClientSession() as session:
                async with session.get(url) as response:
                    assert response.status == 500
                    assert "access denied" in await response.text()
        finally:
            await runner.cleanup()


async def test_a_range_of_thousands_of_digits_is_416_not_a_500(
    gallery: Gallery, bucket_url: str, moto_s3: MotoS3, caplog: pytest.LogCaptureFixture
) -> None:
    """A Range whose number has 5,000 digits (int() refuses over 4,300) is past the end:
    416 with the blob's size, as for a local archive, and a suffix that long is the whole
    blob; it was a 500 and an error logged, for any client's one header."""
    huge = "9" * 5000
    size = len(gallery.checkpoint)
    async with open_store(bucket_url, os.environ["AWS_ENDPOINT_URL"]) as store:
        runner, url = await start(store, "127.0.0.1", 0, None, lambda: NOW)
        try:
            blob = f"{url}blobs/{sha256(gallery.checkpoint)}"
            async with aiohttp.ClientSession() as session:
                async with session.get(blob, headers={"Range": f"bytes={huge}-"}) as response:
                    assert response.status == 416
                    assert response.headers["Content-Range"] == f"bytes */{size}"
                async with session.get(blob, headers={"Range": f"bytes=-{huge}"}) as response:
                    assert response.status == 206
                    assert response.headers["Content-Range"] == f"bytes 0-{size - 1}/{size}"
                    assert await response.read() == gallery.checkpoint
        finally:
            await runner.cleanup()
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a_bucket_that_ignores_range_still_serves_the_bytes_asked_for(
    gallery: Gallery, bucket_url: str, moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store (or a proxy before it) that ignores a GET's Range answers 200 with the
    whole object. serve took that body for the range: a client resuming a checkpoint
    from byte N got its first bytes again, a corrupt file it had no way to tell. Now
    the bytes before the range are skipped and those after it never read."""
    from moto.s3.responses import S3Response

    monkeypatch.setattr(S3Response, "_handle_range_header",
                        lambda self, request, headers, content: (200, headers, content))
    data = gallery.checkpoint
    async with open_store(bucket_url, os.environ["AWS_ENDPOINT_URL"]) as store:
        runner, url = await start(store, "127.0.0.1", 0, None, lambda: NOW)
        try:
            blob = f"{url}blobs/{sha256(data)}"
            async with aiohttp.ClientSession() as session:
                async with session.get(blob, headers={"Range": "bytes=100-"}) as response:
                    assert response.status == 206
                    assert await response.read() == data[100:]
                async with session.get(blob, headers={"Range": "bytes=5-9"}) as response:
                    assert await response.read() == data[5:10]
                async with session.get(blob) as response:
                    assert await response.read() == data
        finally:
            await runner.cleanup()


async def test_a_blob_shorter_than_its_type_sniff_is_served_whole(
    bucket_url: str, moto_s3: MotoS3
) -> None:
    """serve reads a blob's first 64 bytes to tell its type. A bucket answers a range past
    a smaller object's end with what it holds, which serve took for an object cut short:
    a 40-byte file (a 1x1 placeholder image a prompt names) was a 500 from a bucket, while
    the same archive in a folder served it."""
    small = b"\x89PNG\r\n\x1a\n" + os.urandom(32)
    digest = sha256(small)
    bucket = bucket_url.removeprefix("s3://").split("/")[0]
    client = plain_client(moto_s3.endpoint)
    client.put_object(Bucket=bucket, Key=f"backups/objects/sha256/{digest[:2]}/{digest}",
                      Body=small)
    client.close()
    async with open_store(bucket_url, os.environ["AWS_ENDPOINT_URL"]) as store:
        runner, url = await start(store, "127.0.0.1", 0, None, lambda: NOW)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}blobs/{digest}") as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"] == "image/png"
                    assert await response.read() == small
        finally:
            await runner.cleanup()
