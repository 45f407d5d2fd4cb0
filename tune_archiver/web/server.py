"""`serve`'s routes: the tunes, one page per tune, its blobs, and "verify this tune".

Read-only: nothing here writes to the archive (no fetch, no gc, no repair). Pages come
from gallery.py; a Content-Security-Policy forbids scripts as a second wall behind the
escaping.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from tune_archiver import gallery, manifest
from tune_archiver.commands.listing import archived_tunes
from tune_archiver.commands.verify import VerifyReport, verify
from tune_archiver.errors import ArchiverError, ConfigError
from tune_archiver.gallery import attr, e
from tune_archiver.manifest import Entry
from tune_archiver.progress import NullProgress
from tune_archiver.scrub import cleaned, scrub
from tune_archiver.store import Store
from tune_archiver.text import human_bytes
from tune_archiver.web.access import Handler, guard
from tune_archiver.web.blobs import blob_response

Clock = Callable[[], datetime]
# A connection that sends no whole request is closed after this long: aiohttp's default
# (an hour) let anyone who can reach the port, token or not, hold connections open until
# serve ran out of descriptors and its owner's own requests hung.
IDLE_SECONDS = 30.0
POLICY = ("default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; "
          "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


class Views:
    """The handlers, over one store."""

    def __init__(self, store: Store, clock: Clock, secrets: Sequence[str]) -> None:
        self.store, self.clock = store, clock
        # An older version's manifest may hold the key: scrubbed as every page is made,
        # in the form a page holds it too (escaped, should it hold & or a quote).
        self.secrets = [*secrets, *(escape(secret, quote=True) for secret in secrets)]

    def _html(self, text: str) -> web.Response:
        return web.Response(text=scrub(text, self.secrets), content_type="text/html",
                            charset="utf-8")

    async def tunes(self, request: web.Request) -> web.Response:
        rows = await archived_tunes(self.store, self.clock())
        return self._html(gallery.tunes_page(
            rows, lambda tune_id: _link(request, f"/tunes/{tune_id}")))

    async def tune(self, request: web.Request) -> web.Response:
        return self._html(await self._tune_page(request, ""))

    async def verify(self, request: web.Request) -> web.Response:
        tune_id = int(request.match_info["tune_id"])
        found = await verify(self.store, [tune_id], NullProgress())
        return self._html(await self._tune_page(request, verdict(found)))

    async def blob(self, request: web.Request) -> web.StreamResponse:
        return await blob_response(self.store, request.match_info["sha256"], request)

    async def _tune_page(self, request: web.Request, result: str) -> str:
        tune_id = int(request.match_info["tune_id"])
        found = await manifest.read(self.store, tune_id)
        if found is None:
            raise web.HTTPNotFound(text=f"tune {tune_id} is not in the archive")

        def href(entry: Entry) -> str | None:
            return _link(request, f"/blobs/{entry.sha256}") if entry.sha256 else None

        verify_at = _link(request, f"/tunes/{tune_id}/verify")
        form = (f"<p><a href=\"{attr(_link(request, '/'))}\">all tunes</a></p>"
                f"<form method=\"post\" action=\"{attr(verify_at)}\">"
                f"<button type=\"submit\">verify this tune</button></form>{result}")
        return gallery.tune_page(found, href, form)


def verdict(found: VerifyReport) -> str:
    """What verify found, as HTML: intact, or one line per problem."""
    if found.ok:
        return (f"<p class=\"ok\" id=\"verdict\">intact: {found.blobs} blobs, "
                f"{e(human_bytes(found.bytes))} re-hashed</p>")
    lines = "".join(f"<li>{e(p.kind or 'manifest')} {e(p.index)}: {e(p.problem)} "
                    f"({e(p.detail)})</li>" for p in found.problems)
    return f"<div class=\"failed\" id=\"verdict\"><p>problems found:</p><ul>{lines}</ul></div>"


def _link(request: web.Request, path: str) -> str:
    """A link within the site, carrying the request's ?token= on when it came with one."""
    token = request.query.get("token")
    return f"{path}?token={quote(token, safe='')}" if token else path


def _said(secrets: Sequence[str]) -> Middleware:
    """Our error in any handler (a damaged manifest, EIO, a link planted in objects/, an
    object the bucket refuses) is a 500 that says why, not a logged traceback; scrubbed
    and redacted as every line (a damaged manifest's reason quotes a value of it, which
    an older version's may hold the key in; the token is among the secrets)."""

    @web.middleware
    async def said(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ArchiverError as exc:
            raise web.HTTPInternalServerError(text=cleaned(str(exc), secrets)) from exc

    return said


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"


def build_app(store: Store, clock: Clock, token: str | None,
              secrets: Sequence[str] = ()) -> web.Application:
    """The read-only application: GET pages and blobs, POST verify; the token when given,
    the `secrets` (the API keys known) in no page."""
    views = Views(store, clock, secrets)
    app = web.Application(middlewares=[guard(token), _said([*secrets, *filter(None, [token])])])
    app.on_response_prepare.append(_headers)
    app.router.add_get("/", views.tunes)
    # A tune id is positive (0 would reach manifest_key's ValueError: a 500, logged).
    app.router.add_get(r"/tunes/{tune_id:[1-9]\d{0,17}}", views.tune)
    app.router.add_post(r"/tunes/{tune_id:[1-9]\d{0,17}}/verify", views.verify)
    app.router.add_get(r"/blobs/{sha256:[0-9a-f]{64}}", views.blob)
    return app


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log as our lines: one line, its traceback with -v only (in a
    debug record), scrubbed, redacted and escaped as every line. Left to aiohttp, a
    request it cannot parse (any local user may send one, no token needed) printed a
    traceback through Python's last-resort handler, quoting the request line raw, a
    ?token= in it too. Such a request is the client's fault: a debug line (-v)."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("tune_archiver.serve"), {})

    def log(self, level: int, msg: object, *args: object, **kwargs: object) -> None:
        found = kwargs.get("exc_info")
        error = found if isinstance(found, BaseException) else (
            sys.exc_info()[1] if found else None)
        text = str(msg) % args if args else str(msg)
        if error is not None:
            detail = str(getattr(error, "message", "") or error) or type(error).__name__
            first = next((line for line in detail.splitlines() if line.strip()), detail)
            text += f": {first.strip(' :')}"
            if isinstance(error, HttpProcessingError):
                level = logging.DEBUG
        self.logger.log(level, "serve: %s", text)
        if error is not None:
            self.logger.debug("serve: its traceback", exc_info=error)


async def start(
    store: Store, host: str, port: int, token: str | None, clock: Clock,
    secrets: Sequence[str] = (),
) -> tuple[web.AppRunner, str]:
    """The app listening on host:port (0: any free port); returns its runner and base URL."""
    runner = web.AppRunner(build_app(store, clock, token, secrets), access_log=None,
                           logger=ServerLog(), keepalive_timeout=IDLE_SECONDS)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{shown}:{bound_port}/"


async def serve(
    store: Store, host: str, port: int, token: str | None, clock: Clock,
    started: Callable[[str], None], secrets: Sequence[str] = (),
) -> None:
    """Serve until cancelled (Ctrl-C); `started(url)` is told where, once listening."""
    runner, url = await start(store, host, port, token, clock, secrets)
    # Left in place to the loop's end: after accept() met EMFILE, asyncio retries a
    # second later, and that retry, run while serve shuts down (its socket closed: "Bad
    # file descriptor"), printed a traceback once the handler before was back.
    asyncio.get_running_loop().set_exception_handler(_loop_error)
    try:
        started(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An error the event loop meets outside any request (accept() out of descriptors,
    EMFILE) as one line of serve's log, its traceback with -v only: asyncio's own
    handler printed a traceback for each connection refused so."""
    ServerLog().log(logging.ERROR, "%s", context.get("message", "the event loop failed"),
                    exc_info=context.get("exception"))
