"""The Astria API client: tunes and prompts, paged, over a shared session, with retries.

The API key and workspace header go only to the API's own origin (see transport.get).
"""

from __future__ import annotations

import asyncio
import functools
import io
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp

from tune_archiver.config import Settings
from tune_archiver.errors import AuthError, ConnectError, DataError, StatusError, TuneNotFound
from tune_archiver.filetypes import not_json, not_the_apis
from tune_archiver.models import Prompt, Tune, listed_id, parse_prompts, parse_tune
from tune_archiver.net.proxy import asks_credentials, proxy_for
from tune_archiver.net.retry import call_with_retries, retry_after_of
from tune_archiver.net.transport import get, read_capped, sent_at, translated
from tune_archiver.urls import MAX_JSON_DEPTH, json_float, nested_too_deeply, origin, redact

MAX_JSON_BYTES = 16 * 2**20  # a tune is a few KiB; more is a broken or hostile server
MAX_ERROR_BYTES = 64 * 2**10
PAGE_LIMIT = 120  # the most the API gives per page; paging is by before_id, never offset
# A listing longer than this is a server that never stops, not an account: an account
# holds thousands of tunes, a tune thousands of prompts. Both caps bound memory and time.
MAX_LISTED = 100_000
MAX_PAGES = 5_000  # room for servers that give fewer items per page than asked
# The JSON of all pages of one listing, together: this much, and MAX_ITEM_BYTES more for
# each item listed before. A tune of 30 photos under presigned URLs is about 30 KiB, so a
# fixed cap alone stopped honest accounts of some 10,000 tunes; it still stops a
# listing of a few items of endless JSON early.
MAX_LISTED_BYTES = 256 * 2**20
MAX_ITEM_BYTES = 64 * 2**10
# GET /prompts lists every prompt the account ever made, not one tune's: its listing
# may be this many times longer, and only the prompts naming a tune are kept of it.
ACCOUNT_WIDE = 10
# Requests to the API at once, apart from the downloads' --concurrency: small JSON
# answers, a few at a time keep ahead of the downloads without pressing the API.
API_CONCURRENCY = 4
PERSONAL = "personal"  # the scope the API answers for without X-Workspace-Id
FIRST_WAIT_AFTER_500 = 30.0  # Astria asks for backoff starting at 30 s after its 500s
T = TypeVar("T")


class AstriaClient:
    """Requests to the Astria API, each under the shared request limit."""

    def __init__(
        self, session: aiohttp.ClientSession, settings: Settings, limiter: asyncio.Semaphore
    ) -> None:
        self._session = session
        self._settings = settings
        self._limiter = limiter
        self.workspace = settings.workspace  # the scope asked in: an id, all, or personal
        self._headers = {"Authorization": f"Bearer {settings.api_key}",
                         "Accept": "application/json"}
        self.date: datetime | None = None  # the Date of the API's last 200: the host's clock
        # "personal" is the scope the API answers for without the header: the Astria CLI
        # never sends it (its resolve_workspace), so neither do we.
        if settings.workspace and settings.workspace != PERSONAL:
            self._headers["X-Workspace-Id"] = settings.workspace

    async def get_tune(self, tune_id: int, workspace: str | None = None) -> Tune:
        """The tune, checked by parse_tune; asked for in `workspace` when given.

        Raises AuthError (401, 403), TuneNotFound (404), DataError (bad JSON or tune),
        StatusError or NetworkError once retries are spent.
        """
        what = f"tune {tune_id}"
        data = await self._retried(
            what, lambda: self._get_json(f"/tunes/{tune_id}", what, workspace))
        return parse_tune(data, tune_id)

    async def list_tunes(
        self, workspace: str | None = None, query: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Every tune of the account, newest first, as the listing gave them; of
        `workspace` when given (X-Workspace-Id), else of the workspace configured;
        `query` adds the API's own filters (title, model_type, branch) to every page."""
        what = "the list of tunes" + (f" of workspace {workspace}" if workspace else "")
        return await self._pages("/tunes", what, workspace, query)

    async def list_workspaces(self) -> list[str]:
        """The ids of the workspaces the key can reach (GET /workspaces.json).

        Raises DataError when the answer is not a list of objects with ids.
        """
        what = "the list of workspaces"
        data = await self._retried(what, lambda: self._get_json("/workspaces.json", what))
        if not isinstance(data, list):
            raise DataError(f"{what}: the API returned {type(data).__name__}, not a list")
        return [str(listed_id(item, what)) for item in data]

    async def get_prompts(self, tune_id: int) -> list[Prompt]:
        """Every prompt of the tune, newest first, with its generated images."""
        what = f"the prompts of tune {tune_id}"
        return parse_prompts(await self._pages(f"/tunes/{tune_id}/prompts", what), what, tune_id)

    async def get_prompt(self, tune_id: int, prompt_id: int, scope: str | None = None) -> Prompt:
        """One prompt (GET /tunes/:tune_id/prompts/:id), for fresh URLs of its files; asked
        for in workspace `scope` when given. One with an `error` (a field malformed, still
        generating) is given all the same: it is there, with the URLs it does hold."""
        what = f"prompt {prompt_id} of tune {tune_id}"
        path = f"/tunes/{tune_id}/prompts/{prompt_id}"
        data = await self._retried(what, lambda: self._get_json(path, what, scope))
        [prompt] = parse_prompts([data], what, tune_id)
        if prompt.id != prompt_id:
            raise DataError(f"{what}: the API returned prompt {prompt.id} instead")
        return prompt

    async def list_prompts(self) -> list[Prompt]:
        """The account's prompts (GET /prompts) that name a tune (<lora:ID:..>,
        <faceid:ID:..>), newest first: those made on a base tune for a LoRA or FaceID
        tune are listed only here. The others are let go page by page: an account of
        many thousands of prompts is paged through, not held."""
        what = "the account's prompts"
        named: list[Prompt] = []
        async for page in self._each_page("/prompts", what, scale=ACCOUNT_WIDE):
            named += [prompt for prompt in parse_prompts(page, what) if prompt.names]
        return named

    async def tune_pages(
        self, workspace: str | None = None, query: Mapping[str, str] | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The pages of list_tunes as they arrive, checked as _pages checks them, so a
        run can work on the first tunes while later pages are on their way.

        Each page is given only once the next one has passed the checks (the last, at
        the listing's end): a listing that goes wrong at once, on its second page (one
        that ignores before_id repeats its first), has had nothing done with it.
        """
        what = "the list of tunes" + (f" of workspace {workspace}" if workspace else "")
        held: list[dict[str, Any]] | None = None
        async for page in self._each_page("/tunes", what, workspace, query):
            if held is not None:
                yield held
            held = page
        if held is not None:
            yield held

    async def _pages(
        self, path: str, what: str, workspace: str | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """All items of a listing (see _each_page), together."""
        items: list[dict[str, Any]] = []
        async for page in self._each_page(path, what, workspace, filters):
            items.extend(page)
        return items

    async def _each_page(
        self, path: str, what: str, workspace: str | None = None,
        filters: Mapping[str, str] | None = None, scale: int = 1,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Each page of a listing: pages of PAGE_LIMIT, each before the smallest id seen.

        Raises DataError when a page is not a list of objects with ids, when a page
        breaks newest-first order (see checked_ids), or past MAX_LISTED items,
        MAX_PAGES pages or MAX_LISTED_BYTES (each `scale` times; the bytes, MAX_ITEM_BYTES
        more for each item listed before): a listing that never
        ends is stopped, not followed. A page is given only once it passed every check.
        """
        max_items, max_pages, max_bytes = (
            MAX_LISTED * scale, MAX_PAGES * scale, MAX_LISTED_BYTES * scale)
        before: int | None = None
        pages = received = listed = 0
        while True:
            query = f"?limit={PAGE_LIMIT}" + (f"&before_id={before}" if before else "")
            query += "".join(f"&{urlencode({name: value})}"
                             for name, value in (filters or {}).items())
            body = await self._retried(
                what, functools.partial(self._get_body, path + query, what, workspace)
            )
            received += len(body)
            if received > (allowed := max_bytes + listed * MAX_ITEM_BYTES):
                raise DataError(f"{what}: more than {allowed} bytes listed; stopped "
                                "paging (a listing that never ends?)")
            page = parse_json(body, what, listing=True)
            del body
            if not isinstance(page, list):
                raise DataError(f"{what}: the API returned {type(page).__name__}, not a list")
            if not page:
                return
            pages += 1
            if pages > max_pages:
                raise DataError(f"{what}: more than {max_pages} pages listed; stopped paging "
                                "(a listing that never ends?)")
            if listed + len(page) > max_items:
                raise DataError(f"{what}: more than {max_items} items listed; stopped paging "
                                "(a listing that never ends?)")
            ids = checked_ids(page, before, what)
            listed += len(page)
            before = ids[-1]
            yield page

    async def create_tune(
        self, fields: Sequence[tuple[str, str]], images: Sequence[tuple[str, io.BytesIO]]
    ) -> dict[str, Any]:
        """POST /tunes, multipart: the tune[...] fields, each image as tune[images][], a
        stream that alone holds its bytes (aiohttp copies one made of bytes kept elsewhere).

        Sent once, never retried: a failure after the API received it may have
        created the tune. Raises AuthError, StatusError (422: the API's reason),
        NetworkError, or DataError when the answer is not a JSON object.
        """
        what = "creating the tune"
        url = self._settings.api_url + "/tunes"
        form = aiohttp.FormData(list(fields))  # each (name, value) a field
        for filename, photo in images:
            form.add_field("tune[images][]", photo, filename=filename,
                           content_type="application/octet-stream")
        async with self._limiter:
            with translated(url, self._settings.read_timeout):
                proxy = proxy_for(url)
                async with self._session.post(url, data=form, allow_redirects=False,
                                              **proxy.sent(self._headers)) as response:
                    status = response.status
                    body = await read_capped(response, MAX_JSON_BYTES + 1, self._settings.stall)
        if status not in (200, 201):  # a 407 the proxy's, not the API's (as get says)
            raise (asks_credentials(url) if status == 407 and proxy.url is not None
                   else status_error(status, body, what, url, None))
        created = parse_json(body, what)
        if not isinstance(created, dict):
            raise DataError(f"{what}: the API returned {type(created).__name__}, not an object")
        return created

    async def _retried(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` under the retry policy, waiting as Astria asks after its own 500s:
        30 s before the first retry, doubling after each further 500 (a longer
        Retry-After wins; the policy still caps attempts, total time and each wait)."""
        server_errors = 0

        async def once() -> T:
            nonlocal server_errors
            try:
                return await attempt()
            except StatusError as exc:
                if exc.status == 500:
                    server_errors += 1
                    wait = FIRST_WAIT_AFTER_500 * 2.0 ** min(server_errors - 1, 30)
                    exc.retry_after = max(exc.retry_after or 0.0, wait)
                raise

        return await call_with_retries(self._settings.retry, what, once)

    async def _get_json(self, path: str, what: str, workspace: str | None = None) -> Any:
        return parse_json(await self._get_body(path, what, workspace), what)

    async def _get_body(self, path: str, what: str, workspace: str | None = None) -> bytes:
        """The body of a 200 answer, at most MAX_JSON_BYTES; any other status raises.
        `workspace` replaces the configured X-Workspace-Id for this request."""
        url = self._settings.api_url + path
        headers = self._headers | ({"X-Workspace-Id": workspace} if workspace else {})
        async with self._limiter, get(
            self._session, url, headers, read_timeout=self._settings.read_timeout
        ) as response:
            # The stall rule as for files: an answer dripped slower than --min-rate is cut
            # (a byte now and then is never silent long enough for --read-timeout).
            stall = self._settings.stall
            if response.status != 200:
                body = await read_capped(response, MAX_ERROR_BYTES, stall)
                retry_after = retry_after_of(response.headers.get("Retry-After"),
                                             response.headers.get("Date"))
                answered = str(response.url)
                if response.status in (401, 403) and origin(answered) != origin(url):
                    # Only the API's own origin can reject the key (never sent elsewhere):
                    # a refusal where it redirected fails this request, not the whole run.
                    raise StatusError(f"{what}: HTTP {response.status} from {redact(answered)}, "
                                      "where the API redirected", response.status, retry_after)
                raise status_error(response.status, body, what, url, retry_after)
            self.date = sent_at(response.headers.get("Date")) or self.date
            if (response.content_length or 0) > MAX_JSON_BYTES:
                raise DataError(f"{what}: the API's answer is larger than {MAX_JSON_BYTES} bytes")
            body = await read_capped(response, MAX_JSON_BYTES + 1, stall)
            if len(body) > MAX_JSON_BYTES:
                raise DataError(f"{what}: the API's answer is larger than {MAX_JSON_BYTES} bytes")
        return body


def parse_json(body: bytes, what: str, listing: bool = False) -> Any:
    """The JSON value of an API answer, each lone surrogate in its text as U+FFFD;
    DataError when it is not JSON, or nests too deeply to be handled. In a `listing`
    (a list), an item nested too deeply has its deep parts cut to null instead."""
    try:
        value = json.loads(body, parse_constant=str, parse_float=json_float)
    # RecursionError: nesting deeper than the decoder recurses ("[[[[..."), a bad answer.
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DataError(f"{what}: the API returned {not_json(body)}") from exc
    if nested_too_deeply(body, value):
        if not (listing and isinstance(value, list)):
            raise DataError(f"{what}: the API returned JSON nested too deeply")
        # One tune or prompt so nested fails alone, not every one listed: a tune's GET
        # refuses it, a prompt's files cut are malformed; its deep fields are never kept.
        value = [_cut(item, MAX_JSON_DEPTH - 1) for item in value]
    # JSON may escape half a surrogate pair ("\udcff": text cut mid-emoji), which no
    # UTF-8 file can hold: the tune's manifest could never be written.
    return _mended(value) if _SURROGATE_ESCAPE.search(body) else value


def _cut(value: Any, levels: int) -> Any:
    """`value` with each list or object below `levels` more levels of them as null."""
    if not isinstance(value, (list, dict)):
        return value
    if levels == 0:
        return None
    if isinstance(value, list):
        return [_cut(item, levels - 1) for item in value]
    return {key: _cut(item, levels - 1) for key, item in value.items()}


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _mended(value: Any) -> Any:
    """`value` with each lone surrogate in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_mended(item) for item in value]
    if isinstance(value, dict):
        return {_mended(key): _mended(item) for key, item in value.items()}
    return value


def status_error(
    status: int, body: bytes, what: str, url: str, retry_after: float | None
) -> StatusError | AuthError | ConnectError:
    """The error for an API answer other than 200, with the API's own `error` text."""
    if status in (401, 403) and (page := not_the_apis(body)) is not None:  # no key judged
        return ConnectError(f"{what}: HTTP {status} from {redact(url)} is {page}, not the API's "
                            "answer: something between here and the API (a proxy, a web filter, "
                            "a captive portal?) refused the request, or the firewall in front "
                            "of the API refused this machine's address (a VPN's, a server's?)")
    if status in (401, 403):
        return AuthError("API key rejected: check ASTRIA_API_KEY (or --api-key-file) and "
                         f"--workspace (HTTP {status} from {redact(url)})")
    if status == 404:
        return TuneNotFound(f"{what} not found", status)
    reason = api_error_text(body)
    return StatusError(f"{what}: the API answered HTTP {status}{': ' + reason if reason else ''}",
                       status, retry_after)


def api_error_text(body: bytes) -> str:
    """The `error` field of an API error body, on one short line; '' when there is none."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    if error is None:
        return ""
    text = " ".join(str(error).split())
    if len(text) <= MAX_ERROR_TEXT:
        return text
    # Cut between words: the key the API may echo is one word, and the scrubber knows
    # only the whole key; cut inside it, its first characters were printed.
    head = text[: MAX_ERROR_TEXT + 1]
    cut = head.rsplit(" ", 1)[0] if " " in head else ""
    return f"{cut} ..." if cut else "(an error text too long to show)"


MAX_ERROR_TEXT = 200  # characters of the API's `error` text shown: one line


def checked_ids(page: list[Any], before: int | None, what: str) -> list[int]:
    """The ids of one page: strictly decreasing, all below `before` (the last page's least).

    So no id is ever listed twice, across pages or within one, and every page moves
    before_id down: a page served again, or an id seen before, fails the check.
    Raises DataError naming the listing. A listing served oldest first (ids rising
    within a page) cannot be paged by before_id at all: every page would start again
    at the oldest ids below it, and the newest would never be reached.
    """
    ids = [listed_id(item, what) for item in page]
    if len(ids) > 1 and all(a < b for a, b in itertools.pairwise(ids)):
        raise DataError(f"{what}: the API listed ids oldest first ({ids[0]}, then {ids[1]}); "
                        "stopped paging, since before_id would never reach the newest")
    previous: int | None = None
    for item_id in ids:
        if item_id == previous:
            raise DataError(f"{what}: the API listed id {item_id} twice; stopped paging")
        if previous is None and before is not None and item_id >= before:
            raise DataError(f"{what}: asked for ids before {before}, the API listed {item_id} "
                            "again or out of order; stopped paging")
        if previous is not None and item_id > previous:
            raise DataError(f"{what}: the API listed id {item_id} after {previous}, "
                            "not newest first; stopped paging")
        previous = item_id
    return ids
