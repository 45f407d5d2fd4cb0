"""Retries, and the only importer of tenacity: what is retryable, how long to wait.

Every retry is bounded twice, by attempts and by total time, waits with exponential
backoff and jitter, and honours a server's Retry-After up to a cap.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from tune_archiver.config import RetryPolicy
from tune_archiver.errors import IntegrityError, NetworkError, StatusError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MOVED_ON = 2**20  # bytes a round of retries must add to what a retry resumes from


def is_retryable(exc: BaseException) -> bool:
    """Network trouble, a short or garbled body, and 408/429/5xx are worth another try."""
    if isinstance(exc, StatusError):
        return exc.status in RETRYABLE_STATUSES
    return isinstance(exc, NetworkError | IntegrityError)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # a zone of 20 digits overflows
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


async def call_with_retries(
    policy: RetryPolicy, what: str, attempt: Callable[[], Awaitable[T]],
    progress: Callable[[], int] | None = None,
) -> T:
    """Await `attempt()` until it succeeds, fails for good, or the policy's bounds are spent.

    The last error is raised as it is. `what` names the request in log lines and
    must already be redacted. With `progress` (the bytes a retry resumes from), a
    round of retries that took them MOVED_ON or more past the most they ever were is
    followed by another, with its own `retries` and `max_total`: the bounds count
    attempts and time that got nowhere (a CDN that drops a 2 GB checkpoint every
    100 MB would fail it at its sixth drop, a slow link once its 30 minutes were
    spent downloading). Each round moves on by MOVED_ON, so they end.
    """
    best = progress() if progress else 0
    while True:
        try:
            return await _round(policy, what, attempt)
        except Exception as exc:
            now = progress() if progress else 0
            if (progress is None or not is_retryable(exc) or policy.retries == 0
                    or now < best + MOVED_ON):
                raise
            log.info("%s: %d more bytes to resume from; its retries start over", what,
                     now - best)
            best = now


async def _round(policy: RetryPolicy, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """One round: the first attempt runs outside tenacity, whose set-up costs more than
    a small download; only a failure worth retrying enters it."""
    try:
        return await attempt()
    except Exception as exc:
        if not is_retryable(exc) or policy.retries == 0:
            raise
        first_failure: list[BaseException] = [exc]

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, StatusError) and exc.retry_after is not None:
            return min(exc.retry_after, policy.retry_after_cap)
        return backoff(policy, state.attempt_number)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait_s = state.next_action.sleep if state.next_action else 0.0
        # Shown at the default verbosity (not with -q): an operator sees a slow run's cause.
        log.warning(
            "retrying %s in %s s (attempt %d/%d): %s", what, f"{wait_s:.0f}" if wait_s >= 1
            else f"{wait_s:.1f}", state.attempt_number + 1, policy.retries + 1, why(exc),
            extra={"event": "retry", "attempt": state.attempt_number + 1, "wait": wait_s},
        )

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.retries + 1) | stop_after_delay(policy.max_total),
        wait=wait,
        retry=retry_if_exception(is_retryable),
        before_sleep=before_sleep,
        sleep=policy.sleep,
        reraise=True,
    )

    async def run() -> T:  # tenacity awaits only what is declared a coroutine function
        if first_failure:  # tenacity's attempt 1 is the one already made
            raise first_failure.pop()
        return await attempt()

    return await retrying(run)


def why(exc: BaseException | None) -> str:
    """What failed, short: "HTTP 503" for a status (with the API's own reason, if it
    gave one), else the error's own line."""
    if isinstance(exc, StatusError):
        said = f"HTTP {exc.status}"
        reason = str(exc).partition(said)[2]
        return said + reason if reason.startswith(": ") else said
    return str(exc) or type(exc).__name__


def backoff(policy: RetryPolicy, attempt: int) -> float:
    """Exponential backoff with full jitter added: initial, doubling, capped at max_wait."""
    exponential = policy.initial_wait * 2.0 ** min(attempt - 1, 30)
    return min(policy.max_wait, exponential) + random.uniform(0, policy.jitter)


def retry_after_of(header: str | None, date: str | None = None) -> float | None:
    """Retry-After seconds from a header; a date in it is read against the answer's own
    Date when it has a readable one (the host's clock, not ours, set it), else now."""
    now = datetime.now(UTC)
    try:
        sent = parsedate_to_datetime(date) if date else now
    except (TypeError, ValueError, OverflowError):  # a zone of 20 digits overflows
        sent = now
    return parse_retry_after(header, sent if sent.tzinfo is not None else now)
