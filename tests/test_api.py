"""api.AstriaClient against aioresponses: statuses, retries, limits and request headers."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from tests.conftest import check_manifest
from tests.helpers import Sleeps, run_fetch
from tests.standin import StandIn
from tune_archiver import __version__
from tune_archiver.astria import client as api
from tune_archiver.astria.client import AstriaClient
from tune_archiver.config import RetryPolicy, Settings
from tune_archiver.errors import AuthError, DataError, StatusError, TuneNotFound
from tune_archiver.models import Tune
from tune_archiver.net.session import new_session

API = "http://api.test"
TUNE_URL = f"{API}/tunes/7"
KEY = "sd_secret_key"
TUNE = {"id": 7, "title": "Jane", "ckpt_urls": ["https://b.example/c"], "orig_images": []}


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def settings(sleeps: Sleeps) -> Settings:
    return Settings(
        archive=Path("a"), api_key=KEY, api_url=API, retry=RetryPolicy(retries=2, sleep=sleeps)
    )


@pytest.fixture
async def session(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    session = new_session(settings, decompress=True)
    try:
        yield session
    finally:
        await session.close()


class CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 omits the stream_writer aiohttp 3.14 requires (aioresponses#289)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


class Mocked(aioresponses):
    """aioresponses whose canned responses can be built under aiohttp 3.14."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", CompatResponse)
        super().add(*args, **kwargs)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with Mocked() as m:
        yield m


async def get_tune(session: aiohttp.ClientSession, settings: Settings, tune_id: int = 7) -> Tune:
    return await AstriaClient(session, settings, asyncio.Semaphore(4)).get_tune(tune_id)


def calls(m: aioresponses, url: str = TUNE_URL) -> list:
    """The requests aioresponses recorded for a GET of `url`."""
    return m.requests.get(("GET", URL(url)), [])


async def test_200_returns_the_tune(mocked: aioresponses, session, settings) -> None:
    """A 200 with a tune object gives the parsed Tune after one request."""
    mocked.get(TUNE_URL, payload=TUNE)
    tune = await get_tune(session, settings)
    assert tune.id == 7
    assert tune.title == "Jane"
    assert tune.checkpoint_urls == ("https://b.example/c",)
    assert tune.raw == TUNE
    assert len(calls(mocked)) == 1


async def test_401_is_auth_error_after_one_request(mocked, session, settings, sleeps) -> None:
    """A rejected key raises AuthError at once, without retries, and without the key."""
    mocked.get(TUNE_URL, status=401, payload={"error": "unauthorized"}, repeat=True)
    with pytest.raises(AuthError) as info:
        await get_tune(session, settings)
    assert "API key rejected" in str(info.value)
    assert KEY not in str(info.value)
    assert len(calls(mocked)) == 1
    assert sleeps.waits == []


async def test_404_is_tune_not_found(mocked, session, settings, sleeps) -> None:
    """A 404 raises TuneNotFound "tune 7 not found" after one request."""
    mocked.get(TUNE_URL, status=404, payload={"error": "not found"}, repeat=True)
    with pytest.raises(TuneNotFound) as info:
        await get_tune(session, settings)
    assert str(info.value) == "tune 7 not found"
    assert info.value.status == 404
    assert len(calls(mocked)) == 1
    assert sleeps.waits == []


async def test_422_is_not_retried_and_shows_api_error(mocked, session, settings, sleeps) -> None:
    """A 422 raises StatusError with the API's error text, squeezed to one line, unretried."""
    mocked.get(TUNE_URL, status=422, payload={"error": "tune is\n  being  deleted"}, repeat=True)
    with pytest.raises(StatusError) as info:
        await get_tune(session, settings)
    assert type(info.value) is StatusError
    assert info.value.status == 422
    assert str(info.value) == "tune 7: the API answered HTTP 422: tune is being deleted"
    assert len(calls(mocked)) == 1
    assert sleeps.waits == []


async def test_503_three_times_fails_after_three_requests(
    mocked, session, settings, sleeps
) -> None:
    """With retries=2 a persistent 503 is tried 3 times, then raised as StatusError."""
    mocked.get(TUNE_URL, status=503, body="busy", repeat=True)
    with pytest.raises(StatusError) as info:
        await get_tune(session, settings)
    assert info.value.status == 503
    assert "HTTP 503" in str(info.value)
    assert len(calls(mocked)) == 3
    assert len(sleeps.waits) == 2


async def test_503_then_200_succeeds(mocked, session, settings, sleeps) -> None:
    """One 503 followed by a 200 gives the tune after two requests and one wait."""
    mocked.get(TUNE_URL, status=503)
    mocked.get(TUNE_URL, payload=TUNE)
    assert (await get_tune(session, settings)).id == 7
    assert len(calls(mocked)) == 2
    assert len(sleeps.waits) == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(mocked, session, settings, sleeps, status: int) -> None:
    """The wait before the retry is the Retry-After the API sent, not the backoff."""
    mocked.get(TUNE_URL, status=status, headers={"Retry-After": "17"})
    mocked.get(TUNE_URL, payload=TUNE)
    assert (await get_tune(session, settings)).id == 7
    assert sleeps.waits == [17.0]


async def test_500_waits_30_s_then_doubles(mocked, session, settings, sleeps) -> None:
    """After the API's 500s the waits are 30 s, then 60 s, as Astria asks; then the tune."""
    mocked.get(TUNE_URL, status=500, payload={"error": "internal"})
    mocked.get(TUNE_URL, status=500, payload={"error": "internal"})
    mocked.get(TUNE_URL, payload=TUNE)
    assert (await get_tune(session, settings)).id == 7
    assert sleeps.waits == [30.0, 60.0]


async def test_500_is_still_capped_by_retries(mocked, session, settings, sleeps) -> None:
    """A 500 that persists is tried retries + 1 times, however long the waits."""
    mocked.get(TUNE_URL, status=500, repeat=True)
    with pytest.raises(StatusError) as info:
        await get_tune(session, settings)
    assert info.value.status == 500
    assert len(calls(mocked)) == 3
    assert sleeps.waits == [30.0, 60.0]


async def test_500_wait_gives_way_to_a_longer_retry_after(
    mocked, session, settings, sleeps
) -> None:
    """A 500 with a Retry-After longer than 30 s waits that long."""
    mocked.get(TUNE_URL, status=500, headers={"Retry-After": "45"})
    mocked.get(TUNE_URL, payload=TUNE)
    assert (await get_tune(session, settings)).id == 7
    assert sleeps.waits == [45.0]


async def test_504_is_retried_with_the_usual_backoff(mocked, session, settings, sleeps) -> None:
    """A 504 (Astria's 30 s request timeout) is retried, with the ordinary short backoff."""
    mocked.get(TUNE_URL, status=504)
    mocked.get(TUNE_URL, payload=TUNE)
    assert (await get_tune(session, settings)).id == 7
    [wait] = sleeps.waits
    assert wait < 30.0


async def test_unreadable_retry_after_is_ignored(mocked, session, settings, sleeps) -> None:
    """A Retry-After that is not a number of seconds or a date falls back to the backoff."""
    mocked.get(TUNE_URL, status=503, headers={"Retry-After": "²"})
    mocked.get(TUNE_URL, payload=TUNE)
    assert (await get_tune(session, settings)).id == 7
    assert len(sleeps.waits) == 1


@pytest.mark.parametrize("body", ["{not json", "", "\xff\xfe", '{"id": 7'])
async def test_malformed_json_is_data_error(mocked, session, settings, body: str) -> None:
    """A 200 whose body is not JSON raises DataError naming the tune, unretried."""
    mocked.get(TUNE_URL, body=body.encode("latin-1"), repeat=True)
    with pytest.raises(DataError) as info:
        await get_tune(session, settings)
    assert str(info.value) == "tune 7: the API returned malformed JSON"
    assert len(calls(mocked)) == 1


async def test_invalid_tune_is_data_error(mocked, session, settings) -> None:
    """Valid JSON that is not a usable tune (here, another tune's id) raises DataError."""
    mocked.get(TUNE_URL, payload={**TUNE, "id": 8}, repeat=True)
    with pytest.raises(DataError, match="tune 7"):
        await get_tune(session, settings)
    assert len(calls(mocked)) == 1


@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "content-length"])
async def test_oversized_body_is_data_error(
    mocked, session, settings, monkeypatch: pytest.MonkeyPatch, declared: bool
) -> None:
    """A body over MAX_JSON_BYTES, declared or not, raises DataError instead of being parsed."""
    monkeypatch.setattr(api, "MAX_JSON_BYTES", 64)
    body = ('{"id": 7, "title": "' + "x" * 200 + '"}').encode()
    headers = {"Content-Length": str(len(body))} if declared else None
    mocked.get(TUNE_URL, body=body, headers=headers, repeat=True)
    with pytest.raises(DataError, match="larger than 64 bytes"):
        await get_tune(session, settings)
    assert len(calls(mocked)) == 1


async def test_body_of_exactly_the_limit_is_accepted(
    mocked, session, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body of exactly MAX_JSON_BYTES is still read and parsed."""
    body = b'{"id": 7, "title": "abc"}'
    monkeypatch.setattr(api, "MAX_JSON_BYTES", len(body))
    mocked.get(TUNE_URL, body=body)
    assert (await get_tune(session, settings)).title == "abc"


async def test_request_headers(mocked, session, settings) -> None:
    """The request carries the bearer key, our User-Agent, JSON Accept, and no redirects."""
    mocked.get(TUNE_URL, payload=TUNE)
    await get_tune(session, settings)
    (call,) = calls(mocked)
    headers = call.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["User-Agent"] == f"tune-archiver/{__version__}"
    assert headers["Accept"] == "application/json"
    assert "X-Workspace-Id" not in headers
    assert call.kwargs["allow_redirects"] is False


async def test_workspace_header_when_set(mocked, session, settings) -> None:
    """With settings.workspace, the request carries X-Workspace-Id."""
    mocked.get(TUNE_URL, payload=TUNE)
    settings = Settings(archive=Path("a"), api_key=KEY, api_url=API, workspace="42")
    await get_tune(session, settings)
    (call,) = calls(mocked)
    assert call.kwargs["headers"]["X-Workspace-Id"] == "42"


async def test_redirect_to_another_origin_drops_private_headers(
    mocked, session, settings
) -> None:
    """A redirect is followed by the client itself and the key is not sent to a new origin."""
    other = "http://elsewhere.test/tunes/7.json"
    mocked.get(TUNE_URL, status=302, headers={"Location": other})
    mocked.get(other, payload=TUNE)
    settings = Settings(archive=Path("a"), api_key=KEY, api_url=API, workspace="42")
    assert (await get_tune(session, settings)).id == 7
    (first,) = calls(mocked)
    (second,) = calls(mocked, other)
    assert first.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"
    assert "Authorization" not in second.kwargs["headers"]
    assert "X-Workspace-Id" not in second.kwargs["headers"]
    assert second.kwargs["headers"]["User-Agent"] == f"tune-archiver/{__version__}"


async def list_tunes(session: aiohttp.ClientSession, settings: Settings) -> list[dict[str, Any]]:
    return await AstriaClient(session, settings, asyncio.Semaphore(4)).list_tunes()


def pages_at(mocked: aioresponses, path: str, pages: list[list[int]]) -> None:
    """Serve `pages` (lists of ids) in turn, each at the URL a well-behaved client asks next."""
    before: int | None = None
    for ids in pages:
        query = "?limit=120" + (f"&before_id={before}" if before else "")
        mocked.get(f"{API}{path}{query}", payload=[{"id": i} for i in ids])
        before = min(ids) if ids else before


@pytest.mark.parametrize(
    ("pages", "message"),
    [
        ([[9, 8], [9, 8]], "asked for ids before 8, the API listed 9 again or out of order"),
        ([[9, 8], [8, 7]], "asked for ids before 8, the API listed 8 again or out of order"),
        ([[9, 8], [10, 2]], "asked for ids before 8, the API listed 10 again or out of order"),
        ([[9, 8], [7, 9, 1]], "the API listed id 9 after 7, not newest first"),
        ([[9, 6, 7]], "the API listed id 7 after 6, not newest first"),
        ([[9, 9]], "the API listed id 9 twice"),
        ([[1, 2, 3]], r"the API listed ids oldest first \(1, then 2\)"),
        ([[9, 8], [3, 4, 5]], r"the API listed ids oldest first \(3, then 4\)"),
    ],
    ids=["same-page-again", "id-already-seen", "not-moving-down", "rising-between-pages",
         "rising-within-a-page", "repeated-within-a-page", "oldest-first",
         "oldest-first-later"],
)
async def test_listing_out_of_order_is_refused_at_once(
    mocked: aioresponses, session: aiohttp.ClientSession, settings: Settings,
    sleeps: Sleeps, pages: list[list[int]], message: str,
) -> None:
    """A page that repeats an id, rises, or does not move below before_id stops paging there."""
    pages_at(mocked, "/tunes", [*pages, []])
    with pytest.raises(DataError, match=f"^the list of tunes: {message}; stopped"):
        await list_tunes(session, settings)
    asked = [key for key, requests in mocked.requests.items() for _ in requests]
    assert len(asked) == len(pages)  # no page requested after the bad one
    assert sleeps.waits == []


async def test_prompt_listing_that_repeats_names_the_tune(
    mocked: aioresponses, session: aiohttp.ClientSession, settings: Settings
) -> None:
    """The prompts of a tune are paged under the same checks, and the error names the tune."""
    pages_at(mocked, "/tunes/7/prompts", [[30, 20], [30, 20]])
    client = AstriaClient(session, settings, asyncio.Semaphore(4))
    with pytest.raises(DataError, match=r"^the prompts of tune 7: asked for ids before 20"):
        await client.get_prompts(7)


async def test_listing_longer_than_max_listed_is_stopped(
    mocked: aioresponses, session: aiohttp.ClientSession, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listing past MAX_LISTED items fails before the page that would cross it is kept."""
    monkeypatch.setattr(api, "MAX_LISTED", 4)
    pages_at(mocked, "/tunes", [[9, 8, 7], [6, 5], [4], []])
    with pytest.raises(DataError, match=r"^the list of tunes: more than 4 items listed"):
        await list_tunes(session, settings)
    assert len(mocked.requests) == 2


async def test_listing_larger_than_max_listed_bytes_is_stopped(
    mocked: aioresponses, session: aiohttp.ClientSession, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pages whose JSON adds up to more than MAX_LISTED_BYTES, and MAX_ITEM_BYTES for each
    item listed before them, stop the listing."""
    monkeypatch.setattr(api, "MAX_LISTED_BYTES", 30)
    monkeypatch.setattr(api, "MAX_ITEM_BYTES", 1)
    pages_at(mocked, "/tunes", [[9], [8], [7], []])  # [{"id": 9}] is 11 bytes
    with pytest.raises(DataError, match=r"^the list of tunes: more than 32 bytes listed"):
        await list_tunes(session, settings)
    assert len(mocked.requests) == 3


async def test_a_long_listing_of_items_of_honest_size_is_read_whole(
    mocked: aioresponses, session: aiohttp.ClientSession, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An account's listing past MAX_LISTED_BYTES, of items each no larger than
    MAX_ITEM_BYTES, is read to its end: a fixed cap stopped `fetch --all` of every
    account of more than some 10,000 tunes (about 30 KiB each, with presigned URLs of
    their photos), every night."""
    monkeypatch.setattr(api, "MAX_LISTED_BYTES", 30)
    monkeypatch.setattr(api, "MAX_ITEM_BYTES", 11)
    pages_at(mocked, "/tunes", [[9], [8], [7], [6], [5], []])  # 11 bytes a page
    assert [t["id"] for t in await list_tunes(session, settings)] == [9, 8, 7, 6, 5]


async def test_listing_of_more_than_max_pages_is_stopped(
    mocked: aioresponses, session: aiohttp.ClientSession, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listing that keeps giving new, older ids stops after MAX_PAGES pages."""
    monkeypatch.setattr(api, "MAX_PAGES", 3)
    pages_at(mocked, "/tunes", [[9], [8], [7], [6], []])
    with pytest.raises(DataError, match=r"^the list of tunes: more than 3 pages listed"):
        await list_tunes(session, settings)
    assert len(mocked.requests) == 4


async def test_listing_of_exactly_max_pages_is_read_whole(
    mocked: aioresponses, session: aiohttp.ClientSession, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MAX_PAGES full pages and MAX_LISTED items, then the empty page, are all accepted."""
    monkeypatch.setattr(api, "MAX_PAGES", 3)
    monkeypatch.setattr(api, "MAX_LISTED", 3)
    pages_at(mocked, "/tunes", [[9], [8], [7], []])
    assert [t["id"] for t in await list_tunes(session, settings)] == [9, 8, 7]


@pytest.mark.parametrize("page", [{"tunes": []}, [{"title": "no id"}], [5]])
async def test_listing_page_that_is_not_a_list_of_tunes_is_refused(
    mocked: aioresponses, session: aiohttp.ClientSession, settings: Settings, page: Any
) -> None:
    """A page must be a JSON list of objects with ids."""
    mocked.get(f"{API}/tunes?limit=120", payload=page)
    with pytest.raises(DataError, match="the list of tunes"):
        await list_tunes(session, settings)


async def test_listing_ends_at_the_first_empty_page(
    mocked: aioresponses, session: aiohttp.ClientSession, settings: Settings
) -> None:
    """Pages are read by before_id until one comes back empty."""
    mocked.get(f"{API}/tunes?limit=120", payload=[{"id": 9}, {"id": 7}])
    mocked.get(f"{API}/tunes?limit=120&before_id=7", payload=[{"id": 3}])
    mocked.get(f"{API}/tunes?limit=120&before_id=3", payload=[])
    assert [t["id"] for t in await list_tunes(session, settings)] == [9, 7, 3]


def test_numbers_json_cannot_write_back_are_kept_as_their_text(
    standin: StandIn, tmp_path: Path
) -> None:
    """NaN and Infinity (which Python's JSON reads, but are no JSON), and a number past a
    float's range (1e999, read as inf): the manifest wrote them back as NaN and Infinity,
    a file JSON.parse, Go or serde refuse. Each is kept as the text the API sent."""
    ckpt = standin.add_file("ckpt-1", os.urandom(4_000))
    tune = {"id": 1, "title": "Jane", "ckpt_urls": [ckpt], "orig_images": []}
    standin.tunes[1] = json.dumps(tune)[:-1].encode() + (
        b', "steps": NaN, "args": [Infinity, -Infinity, 1e999, -1e999, 0.5]}')
    archive = tmp_path / "archive"
    assert run_fetch(standin, archive, "1") == 0

    def no_json(constant: str) -> None:
        raise AssertionError(f"{constant} is no JSON")

    text = (archive / "manifests" / "1.json").read_text()
    tune_kept = json.loads(text, parse_constant=no_json)["tune"]
    assert (tune_kept["steps"], tune_kept["args"]) == (
        "NaN", ["Infinity", "-Infinity", "1e999", "-1e999", 0.5])
    check_manifest(archive / "manifests" / "1.json")


def test_lone_surrogate_escapes_in_the_apis_json_leave_the_tune_archivable(
    standin: StandIn, tmp_path: Path
) -> None:
    """JSON may escape half a surrogate pair ("\\udcff", a title or prompt cut mid-emoji):
    it is read as U+FFFD, so the tune and its prompts are archived, exit 0; the lone
    surrogate made the manifest unencodable, and the tune failed after its downloads."""
    ckpt = standin.add_file("ckpt-1", os.urandom(4_000))
    image = standin.add_file("prompt-1", os.urandom(3_000))
    tune = {"id": 1, "title": "Jane \\ud83d", "ckpt_urls": [ckpt], "orig_images": [],
            "updated_at": "2026-11-02T14:32:40.363Z"}
    standin.tunes[1] = json.dumps(tune).replace("\\\\ud83d", "\\ud83d").encode()
    standin.add_prompt(1, 11, "a \udcff portrait", [image])
    archive = tmp_path / "archive"
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    assert document["tune"]["title"] == "Jane \ufffd"
    assert [e["prompt_text"] for e in document["assets"] if e.get("prompt_id")] == [
        "a \ufffd portrait"]
