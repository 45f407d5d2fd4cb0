"""transport.translated: every aiohttp failure becomes one of ours, chained and redacted;
and validator_of: which validators If-Range may carry."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from tune_archiver.errors import (
    BodyError,
    ConnectError,
    DataError,
    NetworkError,
    ReadTimeout,
    RefusedUrl,
)
from tune_archiver.net.transport import translated, validator_of

SIG = "s3cr3tSIGvalue"
CRED = "AKIAcredential"
SIGNED = f"https://bucket.example/ckpt.bin?X-Amz-Credential={CRED}&X-Amz-Signature={SIG}"
KEY = ConnectionKey("bucket.example", 443, True, True, None, None, None)
INFO = aiohttp.RequestInfo(URL(SIGNED), "GET", CIMultiDictProxy(CIMultiDict()), URL(SIGNED))


def refused() -> aiohttp.ClientConnectorError:
    return aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(errno.ECONNREFUSED, "refused"))


CASES: list[tuple[str, Callable[[], BaseException], type[Exception]]] = [
    ("connector", refused, ConnectError),
    ("dns", lambda: aiohttp.ClientConnectorDNSError(KEY, OSError(-2, "Unknown")), ConnectError),
    ("disconnected", lambda: aiohttp.ServerDisconnectedError(), BodyError),
    ("disconnected-msg", lambda: aiohttp.ServerDisconnectedError(f"gone: {SIGNED}"), BodyError),
    ("payload", lambda: aiohttp.ClientPayloadError(f"not completed: {SIGNED}"), BodyError),
    ("invalid-url", lambda: aiohttp.InvalidURL(SIGNED), RefusedUrl),
    ("invalid-url-client", lambda: aiohttp.InvalidUrlClientError(SIGNED, "bad"), RefusedUrl),
    ("timeout", lambda: TimeoutError(), ReadTimeout),
    ("timeout-msg", lambda: TimeoutError(SIGNED), ReadTimeout),
    ("server-timeout", lambda: aiohttp.ServerTimeoutError(f"Timeout: {SIGNED}"), ReadTimeout),
    ("connect-timeout", lambda: aiohttp.ConnectionTimeoutError(f"to {SIGNED}"), ConnectError),
    ("socket-timeout", lambda: aiohttp.SocketTimeoutError("Timeout on reading data"), ReadTimeout),
    (
        "response",
        lambda: aiohttp.ClientResponseError(INFO, (), status=400, message="Invalid header"),
        BodyError,
    ),
    (
        "response-quoting-a-url",
        lambda: aiohttp.ClientResponseError(
            INFO, (), status=400, message=f"Invalid header: b'Location : {SIGNED}'"
        ),
        BodyError,
    ),
    ("content-type", lambda: aiohttp.ContentTypeError(INFO, (), message="bad type"), BodyError),
    ("os", lambda: aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset"), NetworkError),
    ("os-no-errno", lambda: aiohttp.ClientOSError(), NetworkError),
    ("connection-reset", lambda: aiohttp.ClientConnectionResetError(SIGNED), NetworkError),
    ("client", lambda: aiohttp.ClientError(SIGNED), NetworkError),
    ("connection", lambda: aiohttp.ClientConnectionError(SIGNED), NetworkError),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_translated_maps_and_chains(make: Callable[[], BaseException], expected: type) -> None:
    """Each aiohttp error becomes exactly the expected error, with the original as __cause__."""
    original = make()
    with pytest.raises(expected) as info, translated(SIGNED, read_timeout=60):
        raise original
    assert type(info.value) is expected
    assert info.value.__cause__ is original


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_translated_never_shows_the_signature(
    make: Callable[[], BaseException], expected: type
) -> None:
    """Neither the signature nor the credential in the URL reaches the message."""
    with pytest.raises(expected) as info, translated(SIGNED, read_timeout=60):
        raise make()
    message = str(info.value)
    assert message
    assert SIG not in message
    assert CRED not in message


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (refused, "cannot connect to bucket.example:443 (refused)"),
        (
            lambda: aiohttp.ClientConnectorError(KEY, OSError()),
            "cannot connect to bucket.example:443 (OSError)",
        ),
        (
            lambda: aiohttp.ClientOSError(errno.ECONNRESET, "reset"),
            "connection failed (ECONNRESET): https://bucket.example/ckpt.bin?"
            "X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED",
        ),
        (
            TimeoutError,
            "no data for 60 s from https://bucket.example/ckpt.bin?"
            "X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED",
        ),
        (
            lambda: aiohttp.ClientError("x"),
            "ClientError: https://bucket.example/ckpt.bin?"
            "X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED",
        ),
    ],
    ids=["connect", "connect-no-reason", "os", "timeout", "client"],
)
def test_translated_messages(make: Callable[[], BaseException], message: str) -> None:
    """Messages name the host or the redacted URL and the reason."""
    with pytest.raises(NetworkError) as info, translated(SIGNED, read_timeout=60):
        raise make()
    assert str(info.value) == message


def test_timeout_without_read_timeout_omits_duration() -> None:
    """Without a read timeout, the message does not invent a duration."""
    with pytest.raises(ReadTimeout, match=r"^no data from https://bucket\.example/"), translated(
        SIGNED
    ):
        raise TimeoutError


@pytest.mark.parametrize(
    "make",
    [lambda: DataError("ours"), lambda: ValueError("x"), asyncio.CancelledError, KeyboardInterrupt],
    ids=["ours", "value-error", "cancelled", "keyboard-interrupt"],
)
def test_other_exceptions_pass_through(make: Callable[[], BaseException]) -> None:
    """Our own errors, plain bugs and cancellation are not wrapped."""
    original = make()
    with pytest.raises(type(original)) as info, translated(SIGNED):
        raise original
    assert info.value is original


def test_no_exception_no_translation() -> None:
    """A block that succeeds runs to its end inside translated."""
    done = []
    with translated(SIGNED):
        done.append(True)
    assert done == [True]


HOUR_BEFORE, DATE = "Mon, 30 Nov 2026 13:00:00 GMT", "Mon, 30 Nov 2026 14:00:00 GMT"


@pytest.mark.parametrize(("headers", "expected"), [
    ({"ETag": '"abc"', "Last-Modified": HOUR_BEFORE, "Date": DATE}, '"abc"'),
    ({"ETag": 'W/"abc"', "Last-Modified": HOUR_BEFORE, "Date": DATE}, HOUR_BEFORE),
    ({"Last-Modified": HOUR_BEFORE, "Date": DATE}, HOUR_BEFORE),
    ({"Last-Modified": "Mon, 30 Nov 2026 13:59:01 GMT", "Date": DATE}, None),  # 59 s
    ({"Last-Modified": DATE, "Date": DATE}, None),
    ({"Last-Modified": HOUR_BEFORE}, None),  # no Date: its age is unknown
    ({"Last-Modified": "yesterday", "Date": DATE}, None),
    ({"Last-Modified": "Mon, 30 Nov 2026 13:00:00 -0000", "Date": DATE}, None),  # no zone
    ({"Last-Modified": HOUR_BEFORE, "Date": "Mon, 30 Nov 99999 14:00:00 GMT"}, None),
    ({"ETag": 'W/"abc"'}, None),
])
def test_only_a_strong_validator_is_taken(headers: dict[str, str], expected: str | None) -> None:
    """A strong ETag; else a Last-Modified at least 60 s before the answer's Date (RFC 9110
    8.8.2.2); else none: a file changed twice within a second shows one date."""
    assert validator_of(CIMultiDictProxy(CIMultiDict(headers))) == expected
