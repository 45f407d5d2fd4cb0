"""A stand-in for the Astria API and its asset hosts: real aiohttp servers on 127.0.0.1.

It runs on its own event loop in a background thread, so a test can call
`main([...])` (which runs its own loop) or start a subprocess against it. Routes
misbehave on request: a queue of faults per tune or file is consumed one per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from tests.loop_thread import LoopThread

API_KEY = "test-key-0123456789"


@dataclass
class Status:
    """Answer with this status (and headers, and body) instead of the file or tune."""

    code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Cut:
    """Announce the whole file, send its first `at` bytes, then drop the connection;
    `whole`: a 200 from the first byte, whatever Range asks (a host that never resumes)."""

    at: int
    whole: bool = False


@dataclass
class Stall:
    """Announce the whole file, send its first `at` bytes, then go silent."""

    at: int = 0


@dataclass
class IgnoreRange:
    """Answer 200 with the whole file even when a Range was asked for."""


@dataclass
class Body:
    """Answer 200 with exactly these bytes and this content type."""

    data: bytes
    content_type: str = "application/octet-stream"


@dataclass
class Replace:
    """Serve these bytes (with their own ETag) in place of the file: it changed."""

    data: bytes


@dataclass
class Splice:
    """The file changed to these bytes, and the host ignores If-Range: a Range is answered
    206 from the new bytes, with their own ETag, whatever validator was sent."""

    data: bytes


@dataclass
class Drip:
    """Announce the whole file, then send one byte every `every` seconds, forever."""

    every: float = 0.02


@dataclass
class Chunked:
    """Send the file with chunked encoding and no Content-Length."""


@dataclass
class Claim:
    """Announce a Content-Length of `length`, send nothing, close."""

    length: int


Fault = Status | Cut | Stall | IgnoreRange | Body | Replace | Splice | Drip | Chunked | Claim


@dataclass
class Recorded:
    """One request as the stand-in saw it."""

    host: str  # "api", "cdn" or "mirror"
    path: str
    headers: dict[str, str]


class StandIn(LoopThread):
    """The API on one origin and the same files on two more ("cdn" and "mirror")."""

    def __init__(self, api_key: str = API_KEY, files_dir: Path | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.tunes: dict[int, Any] = {}  # a JSON value, or bytes sent as they are
        self.api_faults: dict[int, list[Fault]] = {}
        self.api_versions: dict[int, list[Any]] = {}  # served one per request before tunes[id]
        self.files: dict[str, bytes] = {}
        self.files_dir = files_dir  # large files served from disk under /disk/<name>
        self.faults: dict[str, list[Fault]] = {}
        self.redirects: dict[str, str] = {}  # file name -> absolute URL to send it to
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold_until = 0  # hold file answers until this many requests are in flight
        # Hold the answer to this API request (its path and query) until some file is
        # asked for, at most 10 s (then hold_timed_out).
        self.hold_until_a_file: str | None = None
        self.hold_timed_out = False
        self.api_date: datetime | None = None  # the API's Date, when not the real now
        self.prompts: dict[int, list[dict[str, Any]]] = {}  # tune id -> its prompts
        # tune id -> its workspace (a numeric id); a tune not here is in the personal scope.
        # /tunes lists by X-Workspace-Id: none, one id, or "all".
        self.tune_workspaces: dict[int, str] = {}
        # GET /tunes/:id answers 404 for a tune outside its X-Workspace-Id's scope too,
        # as the API "answers for the personal scope only" without the header.
        self.scoped_gets = False
        self.before_prompt: Callable[[int], None] | None = None  # called as a prompt is asked
        # prompt id -> its workspace (the docs' prompt[workspace_id]); with scoped_prompts,
        # /prompts and GET /tunes/:id/prompts/:id answer by X-Workspace-Id, as /tunes does.
        self.prompt_workspaces: dict[int, str] = {}
        self.scoped_prompts = False
        self.workspaces_fault: Status | None = None  # /workspaces.json answers this instead
        # Each POST /tunes: its fields, and its tune[images][] as (file name, bytes).
        self.created: list[tuple[dict[str, str], list[tuple[str, bytes]]]] = []
        # A POST /tunes that creates the tune, then answers nothing (as a front proxy
        # that gave up on the API would): the client waits until its read timeout.
        self.create_stalls = 0
        self.create_arrived = threading.Event()  # a POST /tunes was read whole
        # A POST /tunes that creates the tune, then answers create_status (201) with these
        # bytes, in turn.
        self.create_answers: list[bytes] = []
        self.create_status = 201
        self.ignore_list_filters = False  # /tunes ignores title, model_type and branch
        self.page_cap = 5  # the most items a listing page holds, whatever limit asks for
        # Listings that misbehave: one that ignores before_id (its first page, forever),
        # and one that lists oldest first (ascending ids).
        # Answers to listing requests, one per request: a Status, or a Stall (silent
        # after `at` bytes of the page, until the client gives up).
        self.page_faults: list[Status | Stall] = []
        self.ignore_before_id = False
        self.oldest_first = False
        self.misbehaving_paths: tuple[str, ...] | None = None  # those two on these only
        # Faults for the range requests of a file that start at a given byte: (name, start).
        self.range_faults: dict[tuple[str, int], list[Fault]] = {}
        self.ignore_ranges: set[str] = set()  # files served whole whatever Range asks
        self.content_types: dict[str, str] = {}  # else application/octet-stream
        # Files whose only validator is this Last-Modified (no ETag): the same date for
        # every version, as a file changed twice within one second shows.
        self.last_modified: dict[str, str] = {}
        self.hold_ranges = 0  # hold range answers until this many are in flight
        self._ranges_in_flight = 0
        self.urls: dict[str, str] = {}
        self._runners: list[web.AppRunner] = []
        self._crowd: asyncio.Condition | None = None

    # -- life cycle ------------------------------------------------------------

    async def _start(self) -> None:
        self._crowd = asyncio.Condition()
        for host, routes in (
            ("api", [
                web.get("/tunes", self._list_tunes),
                web.get("/tunes/{id}", self._tune),
                web.get("/tunes/{id}/prompts", self._list_prompts),
                web.get("/prompts", self._list_account_prompts),
                web.get("/tunes/{id}/prompts/{prompt}", self._prompt),
                web.get("/workspaces.json", self._list_workspaces),
                web.post("/tunes", self._create_tune),
            ]),
            ("cdn", self._file_routes()),
            ("mirror", self._file_routes()),
        ):
            # Photos of a phone's size in one POST /tunes: aiohttp's 1 MiB default, which
            # a multipart read keeps to, answered 413 where Astria takes them.
            app = web.Application(middlewares=[self._recorder(host)], client_max_size=2**26)
            app.add_routes(routes)
            runner = web.AppRunner(
                app, handle_signals=False, access_log=None, handler_cancellation=True,
                shutdown_timeout=0.5,
            )
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.urls[host] = f"http://127.0.0.1:{port}"
            self._runners.append(runner)

    async def _close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    def _file_routes(self) -> list[web.RouteDef]:
        routes = [web.get("/files/{name}", self._file)]
        if self.files_dir is not None:
            routes.append(web.static("/disk", self.files_dir))
        return routes

    # -- test helpers ----------------------------------------------------------

    @property
    def api_url(self) -> str:
        return self.urls["api"]

    def file_url(self, name: str, host: str = "cdn", query: str = "") -> str:
        return f"{self.urls[host]}/files/{name}" + (f"?{query}" if query else "")

    def add_file(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return self.file_url(name)

    def add_tune(
        self, tune_id: int, checkpoints: list[str], images: list[str], **fields: Any
    ) -> dict[str, Any]:
        """A tune whose URLs are the given absolute URLs, with Astria's usual fields."""
        tune: dict[str, Any] = {
            "id": tune_id,
            "title": f"Tune {tune_id}",
            "name": "woman",
            "token": "ohwx",
            "branch": "sdxl1",
            "model_type": "lora",
            "ckpt_url": checkpoints[0] if checkpoints else None,
            "ckpt_urls": checkpoints,
            "orig_images": images,
            "trained_at": "2026-11-02T14:32:40.363Z",
            "expires_at": _thirty_days_on(),  # never expired while a test runs, whatever the date
            "created_at": "2026-11-02T14:32:05.067Z",
            "updated_at": "2026-11-02T14:32:40.363Z",
            "url": f"https://www.astria.ai/tunes/{tune_id}.json",
        }
        tune.update(fields)
        self.tunes[tune_id] = tune
        return tune

    def add_prompt(
        self, tune_id: int, prompt_id: int, text: str, images: list[str], **fields: Any
    ) -> dict[str, Any]:
        """A prompt created on the tune with these generated image URLs (and `fields`,
        say input_image): listed by /tunes/ID/prompts and by the account's /prompts."""
        prompt = {"id": prompt_id, "text": text, "tune_id": tune_id, "images": images, **fields}
        self.prompts.setdefault(tune_id, []).append(prompt)
        return prompt

    def seen(self, host: str, path_prefix: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.host == host and r.path.startswith(path_prefix)]

    # -- handlers ---------------------------------------------------------------

    def _recorder(self, host: str) -> Callable[..., Any]:
        @web.middleware
        async def record(request: web.Request, handler: Callable[..., Any]) -> Any:
            self.requests.append(Recorded(host, request.path_qs, dict(request.headers)))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.hold_until_a_file is not None:
                await self._hold_until_a_file(host, request.path_qs)
            try:
                response = await handler(request)
                if host == "api" and self.api_date and not response.prepared:
                    response.headers.setdefault("Date", format_datetime(self.api_date,
                                                                        usegmt=True))
                return response
            finally:
                self.in_flight -= 1
                assert self._crowd is not None
                async with self._crowd:
                    self._crowd.notify_all()

        return record

    async def _tune(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        tune_id = int(request.match_info["id"])
        faults = self.api_faults.get(tune_id)
        if faults:
            fault = faults.pop(0)
            if isinstance(fault, Drip):  # the tune's JSON, a byte at a time
                return await self._send(request, json.dumps(self.tunes[tune_id]).encode(),
                                        fault, "application/json")
            assert isinstance(fault, Status)
            return web.Response(status=fault.code, headers=fault.headers, body=fault.body)
        versions = self.api_versions.get(tune_id)
        if versions:
            return web.json_response(versions.pop(0))
        scope = request.headers.get("X-Workspace-Id")
        if tune_id not in self.tunes or (self.scoped_gets and scope not in (
                "all", self.tune_workspaces.get(tune_id))):
            return web.json_response({"error": "Not found"}, status=404)
        tune = self.tunes[tune_id]
        if isinstance(tune, bytes):
            return web.Response(body=tune, content_type="application/json")
        return web.json_response(tune)

    async def _list_tunes(self, request: web.Request) -> web.StreamResponse:
        scope = request.headers.get("X-Workspace-Id")
        tunes = [tune for tune in self.tunes.values() if isinstance(tune, dict)
                 and scope in ("all", self.tune_workspaces.get(tune["id"]))]
        if not self.ignore_list_filters:  # as Astria: title searched, the others exact
            query = request.query
            if "title" in query:
                tunes = [t for t in tunes if query["title"].lower() in str(t["title"]).lower()]
            for name in ("model_type", "branch"):
                if name in query:
                    tunes = [t for t in tunes if t.get(name) == query[name]]
        return await self._page(request, tunes)

    async def _create_tune(self, request: web.Request) -> web.StreamResponse:
        """POST /tunes, multipart: recorded, and answered as Astria does (a new tune, or
        the existing one for a title already used)."""
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        fields: dict[str, str] = {}
        images: list[tuple[str, bytes]] = []
        async for part in await request.multipart():
            assert isinstance(part, BodyPartReader)
            if part.name == "tune[images][]":
                images.append((part.filename or "", bytes(await part.read())))
            elif part.name:
                fields[part.name] = await part.text()
        self.created.append((fields, images))
        self.create_arrived.set()
        for tune in self.tunes.values():
            if isinstance(tune, dict) and tune.get("title") == fields.get("tune[title]"):
                return web.json_response(tune)
        if not images:
            return web.json_response({"error": "images are required"}, status=422)
        tune_id = max([0, *self.tunes]) + 1
        self.tunes[tune_id] = {"id": tune_id, "title": fields.get("tune[title]"),
                               "ckpt_urls": [], "orig_images": []}
        if self.create_stalls:
            self.create_stalls -= 1
            await asyncio.sleep(3600)  # silent until the client gives up
        if self.create_answers:
            return web.Response(status=self.create_status, body=self.create_answers.pop(0),
                                content_type="application/json")
        return web.json_response(self.tunes[tune_id], status=201)

    async def _list_workspaces(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        fault = self.workspaces_fault
        if fault is not None:
            return web.Response(status=fault.code, headers=fault.headers, body=fault.body)
        ids = sorted({int(w) for w in self.tune_workspaces.values()}, reverse=True)
        return web.json_response([{"id": i, "name": f"Workspace {i}"} for i in ids])

    async def _list_prompts(self, request: web.Request) -> web.StreamResponse:
        return await self._page(request, self.prompts.get(int(request.match_info["id"]), []))

    async def _prompt(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        wanted = int(request.match_info["prompt"])
        if self.before_prompt is not None:
            self.before_prompt(wanted)
        for prompt in self.prompts.get(int(request.match_info["id"]), []):
            if prompt["id"] == wanted and self._in_scope(request, prompt):
                return web.json_response(prompt)
        return web.json_response({"error": "Not found"}, status=404)

    async def _list_account_prompts(self, request: web.Request) -> web.StreamResponse:
        return await self._page(request, [p for prompts in self.prompts.values() for p in prompts
                                          if self._in_scope(request, p)])

    def _in_scope(self, request: web.Request, prompt: dict[str, Any]) -> bool:
        scope = request.headers.get("X-Workspace-Id")
        return not self.scoped_prompts or scope in (
            "all", self.prompt_workspaces.get(prompt["id"]))

    async def _page(
        self, request: web.Request, items: list[dict[str, Any]]
    ) -> web.StreamResponse:
        """One page, newest first, as Astria pages: before_id and limit; offset past 200 refused.

        Unless told to misbehave: ignore_before_id, oldest_first.
        """
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        stall = None
        if self.page_faults:
            fault = self.page_faults.pop(0)
            if isinstance(fault, Stall):
                stall = fault
            else:
                return web.Response(status=fault.code, headers=fault.headers, body=fault.body)
        query = request.query
        if int(query.get("offset", "0")) > 200:
            return web.json_response({"error": "offset must be at most 200"}, status=400)
        limit = min(int(query.get("limit", "20")), 120, self.page_cap)
        before = int(query.get("before_id", "0")) or None
        bad = self.misbehaving_paths is None or request.path in self.misbehaving_paths
        if self.ignore_before_id and bad:
            before = None
        oldest_first = self.oldest_first and bad
        ordered = sorted(items, key=lambda item: item["id"], reverse=not oldest_first)
        older = [item for item in ordered if before is None or item["id"] < before]
        start = int(query.get("offset", "0"))
        if stall is not None:
            page = json.dumps(older[start : start + limit]).encode()
            return await self._send(request, page, stall, "application/json")
        return web.json_response(older[start : start + limit])

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        # Files told apart by their query (`img?key=a`, whatever it is signed with; or
        # `img?id=1`, whatever else it says).
        told = "&".join(f"{k}={v}" for k, v in request.query.items()
                        if not k.lower().startswith("x-amz-"))
        for queried in (f"{name}?{told}", f"{name}?id={request.query.get('id')}"):
            if queried in self.files:
                name = queried
                break
        ranged = request.headers.get("Range", "").startswith("bytes=")
        self._ranges_in_flight += ranged
        try:
            return await self._file_answer(request, name, ranged)
        finally:
            self._ranges_in_flight -= ranged

    async def _file_answer(
        self, request: web.Request, name: str, ranged: bool
    ) -> web.StreamResponse:
        await self._hold(ranged)
        if name in self.redirects:
            raise web.HTTPFound(self.redirects[name])
        start = request.headers.get("Range", "bytes=")[len("bytes="):].split("-")[0]
        faults = self.range_faults.get((name, int(start))) if ranged and start else None
        if not faults:
            faults = self.faults.get(name)
        fault = faults.pop(0) if faults else None
        if name in self.ignore_ranges:
            fault = fault or IgnoreRange()
        if isinstance(fault, Status):
            return web.Response(status=fault.code, headers=fault.headers, body=fault.body)
        if isinstance(fault, Body):
            return web.Response(body=fault.data, content_type=fault.content_type)
        if isinstance(fault, Claim):
            response = web.StreamResponse()
            response.content_length = fault.length
            await response.prepare(request)
            assert request.transport is not None
            request.transport.close()
            return response
        if name not in self.files:
            return web.Response(status=404, text="no such file")
        data = fault.data if isinstance(fault, Replace | Splice) else self.files[name]
        return await self._send(request, data, fault, self.content_types.get(name),
                                self.last_modified.get(name))

    async def _send(
        self, request: web.Request, data: bytes, fault: Fault | None,
        content_type: str | None = None, last_modified: str | None = None,
    ) -> web.StreamResponse:
        """The file, honouring Range and If-Range unless the fault says otherwise."""
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        validator = last_modified or etag
        start, stop, status = 0, len(data), 200
        wanted = request.headers.get("Range", "")
        if_range = request.headers.get("If-Range")
        anew = isinstance(fault, IgnoreRange) or (isinstance(fault, Cut) and fault.whole)
        if wanted.startswith("bytes=") and not anew:
            if if_range is None or if_range == validator or isinstance(fault, Splice):
                first, _, last = wanted[len("bytes=") :].partition("-")
                start = int(first)
                stop = min(int(last) + 1, len(data)) if last else len(data)
                if start >= len(data):
                    return web.Response(
                        status=416, headers={"Content-Range": f"bytes */{len(data)}"}
                    )
                status = 206
        response = web.StreamResponse(status=status)
        response.content_type = content_type or "application/octet-stream"
        response.headers["Last-Modified" if last_modified else "ETag"] = validator
        response.headers["Accept-Ranges"] = "bytes"
        if status == 206:
            response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        if isinstance(fault, Chunked):
            response.enable_chunked_encoding()
        else:
            response.content_length = stop - start
        await response.prepare(request)
        body = data[start:stop]
        if isinstance(fault, Drip):
            for byte in body:
                await response.write(bytes([byte]))
                await asyncio.sleep(fault.every)  # the host's pace, not a test waiting
            await response.write_eof()
            return response
        if isinstance(fault, Cut | Stall):
            await response.write(body[: fault.at])
            if isinstance(fault, Stall):
                await asyncio.sleep(3600)  # silent until the client gives up
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(body)
        await response.write_eof()
        return response

    async def _hold_until_a_file(self, host: str, path: str) -> None:
        """Say a file was asked for; hold the API request hold_until_a_file until one is."""
        assert self._crowd is not None
        async with self._crowd:
            self._crowd.notify_all()
            if host == "api" and path == self.hold_until_a_file:
                try:
                    await asyncio.wait_for(self._crowd.wait_for(
                        lambda: any(r.host != "api" for r in self.requests)), 10.0)
                except TimeoutError:
                    self.hold_timed_out = True

    async def _hold(self, ranged: bool) -> None:
        """Wait (at most a second) until hold_until requests (hold_ranges range requests,
        for a range request) are in flight at once."""
        assert self._crowd is not None

        def crowded() -> bool:
            if ranged and self.hold_ranges:
                return self._ranges_in_flight >= self.hold_ranges
            return self.in_flight >= self.hold_until

        async with self._crowd:
            self._crowd.notify_all()
            try:
                await asyncio.wait_for(self._crowd.wait_for(crowded), 1.0)
            except TimeoutError:
                pass


def _thirty_days_on() -> str:
    """An expires_at 30 days from now, as Astria writes one (a fixed date would turn
    every tune of every test expired once the real clock passed it)."""
    return (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
