"""The Astria API client: tunes and prompts, paged, over a shared session, with retries.

The API key and workspace header go only to the API's own origin (see transport.get).
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import aiohttp

from tune_archiver.config import Settings
from tune_archiver.errors import AuthError, DataError, StatusError, TuneNotFound
from tune_archiver.models import Prompt, Tune, listed_id, parse_prompts, parse_tune
from tune_archiver.net.retry import call_with_retries, retry_after_of
from tune_archiver.net.transport import get, read_capped
from tune_archiver.urls import redact

MAX_JSON_BYTES = 16 * 2**20  # a tune is a few KiB; more is a broken or hostile server
MAX_ERROR_BYTES = 64 * 2**10
PAGE_LIMIT = 120  # the most the API gives per page; paging is by before_id, never offset


class AstriaClient:
    """Requests to the Astria API, each under the shared request limit."""

    def __init__(
        self, session: aiohttp.ClientSession, settings: Settings, limiter: asyncio.Semaphore
    ) -> None:
        self._session = session
        self._settings = settings
        self._limiter = limiter
        self._headers = {
            "Authorization": f"Bearer {settings.api_key}",
            "Accept": "application/json",
        }
        if settings.workspace:
            self._headers["X-Workspace-Id"] = settings.workspace

    async def get_tune(self, tune_id: int) -> Tune:
        """The tune, checked by parse_tune.

        Raises AuthError (401), TuneNotFound (404), DataError (bad JSON or tune),
        StatusError or NetworkError once retries are spent.
        """
        what = f"tune {tune_id}"
        data = await call_with_retries(
            self._settings.retry, what, lambda: self._get_json(f"/tunes/{tune_id}", what)
        )
        return parse_tune(data, tune_id)

    async def list_tunes(self) -> list[dict[str, Any]]:
        """Every tune of the account, newest first, as the listing gave them."""
        return await self._pages("/tunes", "the list of tunes")

    async def get_prompts(self, tune_id: int) -> list[Prompt]:
        """Every prompt of the tune, newest first, with its generated images."""
        return parse_prompts(
            await self._pages(f"/tunes/{tune_id}/prompts", f"the prompts of tune {tune_id}"),
            tune_id,
        )

    async def _pages(self, path: str, what: str) -> list[dict[str, Any]]:
        """All items of a listing: pages of PAGE_LIMIT, each before the last id seen.

        Raises DataError when a page is not a list of objects with ids, or when
        paging does not move on to older ids (a loop we would never leave).
        """
        items: list[dict[str, Any]] = []
        before: int | None = None
        while True:
            query = f"?limit={PAGE_LIMIT}" + (f"&before_id={before}" if before else "")
            page = await call_with_retries(
                self._settings.retry, what, functools.partial(self._get_json, path + query, what)
            )
            if not isinstance(page, list):
                raise DataError(f"{what}: the API returned {type(page).__name__}, not a list")
            if not page:
                return items
            last = min(listed_id(item, what) for item in page)
            if before is not None and last >= before:
                raise DataError(f"{what}: paging before id {before} did not move on")
            items.extend(page)
            before = last

    async def _get_json(self, path: str, what: str) -> Any:
        url = self._settings.api_url + path
        async with self._limiter, get(
            self._session, url, self._headers, read_timeout=self._settings.read_timeout
        ) as response:
            if response.status != 200:
                body = await read_capped(response, MAX_ERROR_BYTES)
                retry_after = retry_after_of(response.headers.get("Retry-After"))
                raise status_error(response.status, body, what, url, retry_after)
            if (response.content_length or 0) > MAX_JSON_BYTES:
                raise DataError(f"{what}: the API's answer is larger than {MAX_JSON_BYTES} bytes")
            body = await read_capped(response, MAX_JSON_BYTES + 1)
            if len(body) > MAX_JSON_BYTES:
                raise DataError(f"{what}: the API's answer is larger than {MAX_JSON_BYTES} bytes")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{what}: the API returned malformed JSON") from exc


def status_error(
    status: int, body: bytes, what: str, url: str, retry_after: float | None
) -> StatusError | AuthError:
    """The error for an API answer other than 200, with the API's own `error` text."""
    if status == 401:
        return AuthError(f"API key rejected (HTTP 401 from {redact(url)})")
    if status == 404:
        return TuneNotFound(f"{what} not found", status)
    reason = api_error_text(body)
    return StatusError(
        f"{what}: the API answered HTTP {status}{': ' + reason if reason else ''}",
        status,
        retry_after,
    )


def api_error_text(body: bytes) -> str:
    """The `error` field of an API error body, on one short line; '' when there is none."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    if error is None:
        return ""
    text = " ".join(str(error).split())
    return text[:200]
