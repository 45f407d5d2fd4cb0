"""Who may use `serve`: every request carries the token (?token= or Authorization:
Bearer), compared in constant time; on loopback a fresh one for each run unless
--token-file gives one, which any other bind needs."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from tune_archiver.config import secret_file_warnings, secret_text
from tune_archiver.digits import whole_number
from tune_archiver.errors import ConfigError
from tune_archiver.text import has_control

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_bind(text: str) -> tuple[str, int]:
    """HOST:PORT (or [v6]:PORT) as (host, port); raises ConfigError when it is not one."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    number = whole_number(port, 5)
    if not sep or not host or number is None or number > 65535:
        raise ConfigError("--bind takes HOST:PORT, e.g. 127.0.0.1:8765")
    return host, number


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    """The token in the file (stripped); raises ConfigError when unreadable, empty or short,
    or when another user (not root) owns it: they chose the token and may change it, and
    it opens the archive. A file others may read is used with a warning, as an API key
    file is."""
    try:
        # Before opening: a FIFO planted by another user would wait for them to write.
        _refuse_others(path, os.stat(path))
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
            _refuse_others(path, info)  # the name may have been swapped meanwhile
            token = secret_text(file, f"the token file {path}", "the token")
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc}") from exc
    if has_control(token):  # a second line: a Bearer header can never carry it (401)
        raise ConfigError(f"the token file {path} holds more than one line or a control "
                          "character; it must hold the token alone")
    if len(token) < 16:
        raise ConfigError(f"the token file {path} holds fewer than 16 characters")
    for warning in secret_file_warnings(f"the token file {path}", info, os.geteuid()):
        log.warning("%s", warning)
    return token


def _refuse_others(path: str, info: os.stat_result) -> None:
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(f"refused the token file {path}: it belongs to another user "
                          f"(uid {info.st_uid}), who may read or change the token")


def token_for(host: str, token_file: str | None) -> str:
    """The token requests must carry. Off loopback it comes from --token-file (else
    ConfigError). On loopback without one, a fresh one for this run: every local user
    can reach 127.0.0.1, and the archive is private to its owner (as Jupyter does, the
    URL printed at start carries it)."""
    if token_file is not None:
        return read_token(token_file)
    if not is_loopback(host):
        raise ConfigError(f"serving on {host}, not loopback, needs --token-file PATH: every "
                          "request must then carry that token")
    return secrets.token_urlsafe(24)


def given_token(request: web.Request) -> str | None:
    """The token a request carries, from its Authorization header or its ?token=."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query.get("token")


def guard(token: str | None) -> Middleware:
    """A middleware refusing (401) every request without the token, when there is one."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is not None:
            # surrogatepass: a header's bytes that are not UTF-8 come as surrogates,
            # which plain encode() refuses (a 500 for anyone, token or not).
            given = (given_token(request) or "").encode("utf-8", "surrogatepass")
            if not hmac.compare_digest(given, token.encode()):
                return web.Response(status=401, text="a token is needed: ?token= or "
                                    "Authorization: Bearer", headers={
                                        "WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check
