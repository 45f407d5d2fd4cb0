"""A real S3 API on 127.0.0.1 for the S3 store's tests: moto's server, in a thread.

One server runs for the whole session (on a port the OS picks); each test gets an
empty bucket of its own, dummy credentials in the environment, and a raw client to
arrange and inspect the bucket with, apart from the store under test.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiobotocore.session
import boto3
import botocore.loaders
import botocore.session
import pytest
from aiobotocore.httpsession import AIOHTTPSession
from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.moto_server.werkzeug_app import create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from tests.loop_thread import SHUTDOWN_POLL

if TYPE_CHECKING:
    from aiobotocore.session import AioSession
    from types_aiobotocore_s3 import S3Client

_get_session = aiobotocore.session.get_session

REGION = "us-east-1"
ACCESS_KEY = "AKIATESTTESTTESTTEST"
SECRET_KEY = "test-secret-do-not-print-0123456789"


class MotoS3:
    """moto's S3 server on a free port of 127.0.0.1, in a daemon thread.

    It serves moto's S3 app alone. moto's own server (ThreadedMotoServer) puts a
    dispatcher before it that matches every request against the patterns of all of
    moto's services to find S3: a tenth of the S3 tests' time, for nothing.
    """

    def __init__(self) -> None:
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    def start(self) -> MotoS3:
        self._server = make_server("127.0.0.1", 0, create_backend_app("s3"), threaded=True,
                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": SHUTDOWN_POLL}, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host!s}:{port}"
        return self

    def close(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._thread.join()


@dataclass
class Bucket:
    """An empty bucket for one test, and a raw client to arrange and inspect it with."""

    endpoint: str
    name: str
    client: S3Client
    session: AioSession  # shared: a fresh one per client costs ~0.1 s of loading JSON

    async def put(self, key: str, data: bytes, **extra: Any) -> None:
        await self.client.put_object(Bucket=self.name, Key=key, Body=data, **extra)

    async def get(self, key: str) -> bytes:
        response = await self.client.get_object(Bucket=self.name, Key=key)
        async with response["Body"] as body:
            return await body.read()

    async def head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD answer (with its checksum), or None when it is absent."""
        try:
            return dict(
                await self.client.head_object(Bucket=self.name, Key=key, ChecksumMode="ENABLED")
            )
        except self.client.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
                return None
            raise

    async def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return [item["Key"] async for page in pages for item in page.get("Contents", [])]

    async def uploads(self) -> list[str]:
        """Keys of the multipart uploads still open in the bucket."""
        answer = await self.client.list_multipart_uploads(Bucket=self.name)
        return [upload["Key"] for upload in answer.get("Uploads", [])]


@pytest.fixture(scope="session", name="moto_s3")
def moto_s3_fixture() -> Iterator[MotoS3]:
    """One moto server for the session, stopped at its end."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)  # one line per request otherwise
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.close()
        werkzeug.setLevel(level)


@pytest.fixture(name="aws_env")
def aws_env_fixture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, and no AWS config, profile or endpoint of the user's in sight."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never wait for an IMDS
    monkeypatch.setattr(aiobotocore.session, "get_session", _session_with_shared_data)
    if _build_verify_context is not None:  # aiobotocore's own, as of 2.19-3.x
        monkeypatch.setattr(AIOHTTPSession, "_build_verify_context", _one_verify_context)


_build_verify_context = getattr(AIOHTTPSession, "_build_verify_context", None)
_VERIFY_CONTEXTS: dict[object, Any] = {}


def _one_verify_context(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The TLS context aiobotocore builds for every client (loading the CA bundle: a
    tenth of the S3 tests' time), built once per verify setting: moto's endpoint is
    plain HTTP anyway. Anything unforeseen is passed through as it was."""
    verify = getattr(self, "_verify", None)
    if args or kwargs or not isinstance(verify, bool | str):
        return _build_verify_context(self, *args, **kwargs)
    if verify not in _VERIFY_CONTEXTS:
        _VERIFY_CONTEXTS[verify] = _build_verify_context(self)
    return _VERIFY_CONTEXTS[verify]


_DATA_LOADER = botocore.loaders.create_loader()


def warmed(loader: botocore.loaders.Loader) -> botocore.loaders.Loader:
    """`loader` holding S3's service data already, as every client reads it: loaded while
    the test modules are collected, it is frozen with them (conftest), and no collection
    of the oldest generation walks its ~75,000 dicts and lists again (a tenth of the S3
    tests' CPU when it was loaded by the first test)."""
    for name in ("endpoints", "partitions", "sdk-default-configuration"):
        loader.load_data(name)
    for kind in ("service-2", "endpoint-rule-set-1", "paginators-1"):
        loader.load_service_model("s3", kind)
    return loader


warmed(_DATA_LOADER)


def _session_with_shared_data() -> AioSession:
    """A fresh session, as the store makes one each time it opens, but reading botocore's
    service descriptions once for all tests: parsing them again for every command the
    tests run was a fifth of the S3 tests' time. Everything else in it is fresh."""
    session = _get_session()
    session.register_component("data_loader", _DATA_LOADER)
    return session


def plain_client(endpoint: str) -> Any:
    """A plain (boto3) S3 client on `endpoint` to arrange and inspect a bucket with, as
    boto3.client("s3") makes one, from a fresh session reading the service data loaded
    once (`warmed`): each boto3 session else loads a copy of its own, which every
    collection of the oldest generation then walks."""
    session = botocore.session.get_session()
    session.register_component("data_loader", _DATA_LOADER)
    return boto3.session.Session(botocore_session=session).client(
        "s3", endpoint_url=endpoint, region_name=REGION
    )


@pytest.fixture(scope="session", name="aio_session")
def aio_session_fixture() -> AioSession:
    """One aiobotocore session for all tests (the dummy credentials never change)."""
    return aiobotocore.session.get_session()


@pytest.fixture(name="bucket")
async def bucket_fixture(
    moto_s3: MotoS3, aws_env: None, aio_session: AioSession
) -> AsyncIterator[Bucket]:
    """A fresh, empty bucket on the session's moto server."""
    session = aio_session
    async with session.create_client(
        "s3", endpoint_url=moto_s3.endpoint, region_name=REGION
    ) as client:
        name = f"test-{uuid.uuid4().hex[:16]}"
        await client.create_bucket(Bucket=name)
        yield Bucket(moto_s3.endpoint, name, client, session)


def refuse_gets(monkeypatch: pytest.MonkeyPatch, refused: Callable[[str], bool],
                error: Callable[[], Exception]) -> None:
    """moto raises `error()` for a GET of each key `refused` says (an AccessDenied on some
    objects alone, a token that expires at the blobs), and reads every other as usual."""
    from moto.s3.models import S3Backend

    get_object = S3Backend.get_object

    def refusing(backend: S3Backend, bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        if refused(key):
            raise error()
        return get_object(backend, bucket, key, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "get_object", refusing)


def aged(bucket: str, by: timedelta, prefix: str = "") -> None:
    """Date every object under `prefix` of the bucket `by` earlier, as if that much time
    passed by the bucket's clock, which gc reads ages by (moto runs in this process)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    for key, stored in s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets[bucket].keys.items():
        if key.startswith(prefix):
            stored.last_modified -= by
