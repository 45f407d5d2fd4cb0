"""retry.py: Retry-After parsing, what is retryable, and the retry loop's bounds."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.helpers import Sleeps, run_fetch
from tests.standin import StandIn, Status
from tune_archiver.config import RetryPolicy
from tune_archiver.errors import (
    ArchiverError,
    AuthError,
    BodyError,
    ConfigError,
    ConnectError,
    DataError,
    IntegrityError,
    NetworkError,
    ReadTimeout,
    RefusedUrl,
    StatusError,
    StorageError,
    TuneNotFound,
)
from tune_archiver.net.retry import (
    MOVED_ON,
    call_with_retries,
    is_retryable,
    parse_retry_after,
)

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 08:28:00 GMT", 3600.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Tue, 20 Oct 2015 07:28:00 GMT", 0.0),  # in the past: no wait
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str, expected: float) -> None:
    """Seconds are taken as they are; an HTTP-date becomes the seconds until then, never < 0."""
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "1.5", "-3", "1e3", "Wed, 99 Foo"])
def test_parse_retry_after_junk_is_none(value: str | None) -> None:
    """A missing or unreadable Retry-After gives None, not an exception."""
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize("value", ["²", "1²"])
def test_parse_retry_after_unicode_digit_is_none(value: str) -> None:
    """Characters str.isdigit accepts but float does not are junk too: None, not ValueError."""
    assert parse_retry_after(value, NOW) is None


def error_id(exc: BaseException) -> str:
    return f"{type(exc).__name__}{getattr(exc, 'status', '')}"


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        *((StatusError("x", status), True) for status in (408, 429, 500, 502, 503, 504)),
        *((StatusError("x", status), False) for status in (400, 401, 403, 404, 422, 501)),
        (TuneNotFound("tune 1 not found", 404), False),
        (NetworkError("x"), True),
        (ConnectError("x"), True),
        (BodyError("x"), True),
        (ReadTimeout("x"), True),
        (IntegrityError("x"), True),
        (DataError("x"), False),
        (AuthError("x"), False),
        (ConfigError("x"), False),
        (RefusedUrl("x"), False),
        (StorageError("x"), False),
        (ArchiverError("x"), False),
        (ValueError("x"), False),
    ],
    ids=lambda v: str(v) if isinstance(v, bool) else error_id(v),
)
def test_is_retryable(exc: BaseException, retryable: bool) -> None:
    """Network trouble and 408/429/5xx-gateway statuses are retried; nothing else is."""
    assert is_retryable(exc) is retryable


class Attempts:
    """An attempt that fails with the given errors in turn, then returns "done"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.count = 0
        self.raised: list[BaseException] = []

    async def __call__(self) -> str:
        self.count += 1
        if self.errors:
            error = self.errors.pop(0)
            self.raised.append(error)
            raise error
        return "done"


def policy(sleeps: Sleeps, **kwargs: float) -> RetryPolicy:
    return RetryPolicy(sleep=sleeps, jitter=0.0, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("retries", [0, 1, 3])
async def test_retryable_error_makes_retries_plus_one_attempts(retries: int) -> None:
    """A request that keeps failing retryably is tried exactly retries + 1 times."""
    sleeps = Sleeps()
    attempt = Attempts(*(ConnectError(f"refused {i}") for i in range(10)))
    with pytest.raises(ConnectError) as info:
        await call_with_retries(policy(sleeps, retries=retries), "tune 1", attempt)
    assert attempt.count == retries + 1
    assert len(sleeps.waits) == retries
    assert info.value is attempt.raised[-1]  # the last error itself, not tenacity's RetryError


async def test_attempts_that_move_a_download_on_start_the_retries_over() -> None:
    """With progress, a round of retries that added MOVED_ON bytes to resume from is
    followed by another; one that added less ends it: six attempts here where
    --retries 1 alone allows two."""
    sleeps = Sleeps()
    attempt = Attempts(*(ConnectError(f"cut {i}") for i in range(10)))
    moved = [MOVED_ON, MOVED_ON, MOVED_ON, MOVED_ON, 1, 1]  # each attempt's new bytes

    def progress() -> int:
        return sum(moved[:attempt.count])

    with pytest.raises(ConnectError):
        await call_with_retries(policy(sleeps, retries=1), "model", attempt, progress)
    assert attempt.count == 6


async def test_rounds_of_retries_end_when_the_bytes_stop_passing_their_best() -> None:
    """A host that restarts the file on each attempt (the bytes to resume from go up
    and down) gets no new round for reaching again what it had: each round must pass
    the most there ever were by MOVED_ON."""
    sleeps = Sleeps()
    attempt = Attempts(*(ConnectError(f"cut {i}") for i in range(100)))
    sizes = [0, 3 * MOVED_ON, 3 * MOVED_ON, 1, 3 * MOVED_ON, 2, 3 * MOVED_ON + 5]

    def progress() -> int:
        return sizes[min(attempt.count, len(sizes) - 1)]

    with pytest.raises(ConnectError):
        await call_with_retries(policy(sleeps, retries=1), "model", attempt, progress)
    assert attempt.count == 4  # a round to 3 MiB, then one that got no further


async def test_each_round_of_retries_has_its_own_time_bound() -> None:
    """max_total bounds the time that got nowhere, not the download: with no time for a
    retry at all, an attempt that moved on still gets another (a slow link's 30
    minutes are spent downloading, not failing), until one moves nothing."""
    sleeps = Sleeps()
    attempt = Attempts(*(ConnectError(f"cut {i}") for i in range(10)))
    moved = [MOVED_ON, MOVED_ON, MOVED_ON, 0, 0]

    def progress() -> int:
        return sum(moved[:attempt.count])

    with pytest.raises(ConnectError):
        await call_with_retries(policy(sleeps, retries=5, max_total=0), "model", attempt,
                                progress)
    assert attempt.count == 4


async def test_non_retryable_error_is_raised_after_one_attempt() -> None:
    """A DataError is raised at once, without a retry or a wait."""
    sleeps = Sleeps()
    error = DataError("tune 1: malformed JSON")
    attempt = Attempts(error, ConnectError("never reached"))
    with pytest.raises(DataError) as info:
        await call_with_retries(policy(sleeps, retries=5), "tune 1", attempt)
    assert info.value is error
    assert attempt.count == 1
    assert sleeps.waits == []


async def test_success_after_failures_returns_the_result() -> None:
    """Two retryable failures followed by a success return the success."""
    sleeps = Sleeps()
    attempt = Attempts(BodyError("short"), StatusError("busy", 503))
    assert await call_with_retries(policy(sleeps, retries=2), "tune 1", attempt) == "done"
    assert attempt.count == 3


async def test_backoff_doubles_up_to_max_wait() -> None:
    """Without jitter the waits are initial_wait doubled each time, capped at max_wait."""
    sleeps = Sleeps()
    attempt = Attempts(*(ReadTimeout("slow") for _ in range(6)))
    with pytest.raises(ReadTimeout):
        await call_with_retries(
            policy(sleeps, retries=5, initial_wait=1.0, max_wait=5.0), "tune 1", attempt
        )
    assert sleeps.waits == [1.0, 2.0, 4.0, 5.0, 5.0]


async def test_initial_wait_other_than_one_without_deprecation() -> None:
    """An initial_wait of 2 s gives waits of 2 then 4 s, with no DeprecationWarning."""
    sleeps = Sleeps()
    attempt = Attempts(ConnectError("a"), ConnectError("b"))
    await call_with_retries(policy(sleeps, retries=2, initial_wait=2.0), "tune 1", attempt)
    assert sleeps.waits == [2.0, 4.0]


@pytest.mark.parametrize(("retry_after", "waited"), [(7.0, 7.0), (0.0, 0.0), (1000.0, 30.0)])
async def test_retry_after_is_honoured_up_to_the_cap(retry_after: float, waited: float) -> None:
    """A StatusError's retry_after replaces the backoff, cut to retry_after_cap."""
    sleeps = Sleeps()
    attempt = Attempts(StatusError("slow down", 429, retry_after=retry_after))
    result = await call_with_retries(
        policy(sleeps, retries=3, retry_after_cap=30.0), "tune 1", attempt
    )
    assert result == "done"
    assert sleeps.waits == [waited]


async def test_max_total_stops_retrying() -> None:
    """With max_total 0 no second attempt starts, however many retries are allowed."""
    sleeps = Sleeps()
    attempt = Attempts(*(ConnectError("refused") for _ in range(10)))
    with pytest.raises(ConnectError) as info:
        await call_with_retries(policy(sleeps, retries=9, max_total=0.0), "tune 1", attempt)
    assert attempt.count == 1
    assert sleeps.waits == []
    assert info.value is attempt.raised[0]


def test_each_retry_is_one_warning_line_at_the_default_verbosity(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 503 then success: one stderr line "retrying URL in N s (attempt 2/6): HTTP 503",
    the URL redacted; -q hides it."""
    data = b"x" * 1000
    url = standin.add_file("m", data) + "?X-Amz-Signature=SECRETSIG"
    standin.add_tune(1, [], [url])
    standin.faults["m"] = [Status(503)]
    assert run_fetch(standin, tmp_path / "a", "1", "--retries", "5") == 0
    [line] = [x for x in capsys.readouterr().err.splitlines() if "retrying" in x]
    assert re.fullmatch(
        r"tune-archiver: retrying http://127\.0\.0\.1:\d+/files/m\?X-Amz-Signature=REDACTED "
        r"in [\d.]+ s \(attempt 2/6\): HTTP 503", line), line
    standin.faults["m"] = [Status(503)]
    assert run_fetch(standin, tmp_path / "b", "1", "-q") == 0
    assert "retrying" not in capsys.readouterr().err
