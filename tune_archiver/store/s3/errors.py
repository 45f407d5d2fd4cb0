"""S3 errors as ours: botocore's and aiohttp's exceptions become one clear line, in one
place, never with credentials in it (as transport.py does for HTTP)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp

from tune_archiver.errors import (
    ArchiverError,
    ConfigError,
    Denied,
    StorageError,
    Unreachable,
    storage_error,
)

# Error codes that mean the credentials (or the policy) refuse us: a configuration problem.
CREDENTIALS_REFUSED = frozenset(
    "AccessDenied 403 InvalidAccessKeyId SignatureDoesNotMatch ExpiredToken InvalidToken "
    "TokenRefreshRequired AuthorizationHeaderMalformed".split()
)
DENIED = frozenset({"AccessDenied", "403"})  # of those, a policy may refuse one key alone
ABSENT = frozenset({"404", "NoSuchKey", "NoSuchUpload", "NotFound"})
REACH = "reach the bucket"  # the first request of a run: failing it, nothing was done
LISTING = "list the bucket"
CONFLICT = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
UNSUPPORTED = frozenset({"NotImplemented", "501"})  # a header it has no use for (If-Match)
SERVER_TROUBLE = frozenset({500, 502, 503, 504})  # down, overloaded, throttling (SlowDown)


class Absent(StorageError):
    """The key (or upload) asked for is not there; callers that expect this catch it."""


class Unchecked(StorageError):
    """An upload straight to a blob key, not completed: the store answered its parts
    without their SHA-256s, so it may not have checked them (see Bucket.keeps_checksums)."""


class Unsupported(StorageError):
    """The store refuses what a request asks of it (a conditional PUT): 501."""


class Conflict(StorageError):
    """A conditional write lost to another writer (412 or 409); callers read and retry."""


@contextlib.contextmanager
def translated(
    doing: str, store: str, bucket: str, endpoint: Callable[[], str], staging: Path
) -> Iterator[None]:
    """Raise ours for a client library's exception met while `doing` something in `store`."""
    try:
        yield
    except ArchiverError:
        raise
    except Exception as exc:
        error = translate(exc, doing, store, bucket, endpoint, staging)
        if error is None:
            raise
        raise error from exc


def translate(
    exc: Exception, doing: str, store: str, bucket: str, endpoint: Callable[[], str],
    staging: Path,
) -> ArchiverError | None:
    """Our error for a client library's exception; None for anything else (a bug)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    where = f"cannot {doing} in {store}"
    if isinstance(exc, NoCredentialsError):
        return ConfigError(
            f"no AWS credentials for {store}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or exc.response["ResponseMetadata"]["HTTPStatusCode"])
        message = (str(error.get("Message") or "").splitlines() or [""])[0][:200]
        if code == "NoSuchBucket":
            return ConfigError(f"bucket {bucket!r} does not exist at {endpoint()}")
        if code in DENIED:
            need = "; listing needs s3:ListBucket" if doing == LISTING else ""
            return Denied(f"{where}: access denied ({code}); check the AWS credentials "
                          f"and the bucket's policy{need}")
        if code in CREDENTIALS_REFUSED:
            return ConfigError(f"{where}: access denied ({code}); check the AWS credentials")
        if code in ABSENT:
            return Absent(f"{where}: not found")
        if code in CONFLICT:
            return Conflict(f"{where}: changed meanwhile by another writer ({code})")
        if code in UNSUPPORTED:
            return Unsupported(f"{where}: {code} {message}".rstrip())
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if doing == REACH and status in SERVER_TROUBLE:  # not the configuration's fault
            return Unreachable(f"{where}: {code} {message}".rstrip())
        return StorageError(f"{where}: {code} {message}".rstrip())
    from botocore.exceptions import ConnectionError as NoConnection
    from botocore.exceptions import HTTPClientError

    # Connecting, or waiting for the answer (a read timeout, a connection closed):
    # either way the bucket never answered the run's first request.
    if doing == REACH and isinstance(
        exc, NoConnection | HTTPClientError | aiohttp.ClientError | TimeoutError
    ):
        return Unreachable(f"{where}: {str(exc) or type(exc).__name__}")
    if isinstance(exc, BotoCoreError | aiohttp.ClientError | TimeoutError):
        return StorageError(f"{where}: {str(exc) or type(exc).__name__}")
    if isinstance(exc, OSError):
        return storage_error(exc, staging, doing)
    return None
