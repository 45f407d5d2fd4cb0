"""The redirect guard: a redirect into a private address is refused before any connection.

An asset host that redirects to 169.254.169.254 (a cloud's metadata service), to
the machine itself or to the local network would have tune-archiver fetch what it
may reach and the host may not, and archive it. transport.get marks each request
that follows a redirect (`redirected_from`); a session built with the guard then
refuses it when its host is a private address literally (checked as the request
starts) or by name (checked by the resolver, whose answer is the very address the
connection goes to: a name cannot resolve to a public address for the check and a
private one for the connection). A host the API names itself is trusted: only
redirects are checked, and a connection kept open to such a host may be reused.

Through a proxy (proxy.py), the resolver sees the proxy's host alone, which may well
be private and is the operator's choice: it is not checked. The target is then checked
as the request starts: a private address given literally, or a name this machine
resolves to one (a name only the proxy resolves cannot be checked here).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import SimpleNamespace
from urllib.parse import unquote

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from tune_archiver.addresses import is_private_host, literal, private_kind
from tune_archiver.errors import RefusedUrl
from tune_archiver.urls import redact

# The URL a request was redirected from (redacted), while that request is being made;
# None for a URL as the caller gave it.
_REDIRECTED_FROM: ContextVar[str | None] = ContextVar("redirected_from", default=None)
# Whether that request goes through a proxy: the resolver then resolves the proxy's host.
_PROXIED: ContextVar[bool] = ContextVar("proxied", default=False)


@contextmanager
def redirected_from(source: str | None, *, proxied: bool = False) -> Iterator[None]:
    """Requests made inside follow a redirect from `source` (None: they do not), through
    a proxy if `proxied`."""
    token = _REDIRECTED_FROM.set(None if source is None else redact(source))
    proxied_token = _PROXIED.set(proxied)
    try:
        yield
    finally:
        _PROXIED.reset(proxied_token)
        _REDIRECTED_FROM.reset(token)


def _refuse(host: str, address: str, kind: str, source: str) -> RefusedUrl:
    via = "" if literal(host.rstrip(".")) is not None else f", which resolves to {address}"
    article = "an" if kind[0] in "aeiou" else "a"  # an unspecified address
    return RefusedUrl(
        f"refused a redirect to {host}{via}, {article} {kind} address, from {source} "
        "(--allow-private-redirects follows it)"
    )


def _check(host: str, addresses: list[str]) -> None:
    """Raise RefusedUrl if this request follows a redirect and any address is private."""
    source = _REDIRECTED_FROM.get()
    if source is None:
        return
    for text in addresses:
        address = literal(text)
        kind = private_kind(address) if address is not None else None
        if kind is not None:
            raise _refuse(host, text, kind, source)


class GuardedResolver(AbstractResolver):
    """aiohttp's threaded resolver, refusing a redirect's host if any of its addresses is
    private. The connector connects only to the addresses returned, which were checked."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if not _PROXIED.get():  # the proxy's host, not the target's: not checked
            _check(host, [item["host"] for item in found])
        return found

    async def close(self) -> None:
        await self._inner.close()


async def _on_request_start(
    session: aiohttp.ClientSession, context: SimpleNamespace,
    params: aiohttp.TraceRequestStartParams,
) -> None:
    """A redirect to a private address given literally (the resolver never sees those),
    a final dot or not; through a proxy, to a localhost name (RFC 6761: the proxy's own
    loopback, resolved here or not) or to a name this machine resolves to one. A host
    percent-encoded (%6cocalhost) is checked as decoded, as a proxy that reads URLs as
    browsers do (WHATWG: Node's) connects to it."""
    shown = params.url.raw_host or ""
    host = unquote(shown)
    if literal(host.rstrip(".")) is not None:  # "127.0.0.1." too, which a proxy reads so
        _check(shown, [host.rstrip(".")])
    elif _PROXIED.get() and _REDIRECTED_FROM.get() is not None:
        if is_private_host(host):  # localhost., *.localhost: the proxy's own loopback
            _check(shown, ["127.0.0.1"])
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, None)
        except (OSError, ValueError):  # only the proxy can resolve it: it connects
            return
        _check(shown, [str(item[4][0]) for item in found])


def guarded_connector(limit: int, limit_per_host: int = 0) -> aiohttp.TCPConnector:
    """A connector whose resolver refuses a redirect's host that resolves privately.

    DNS caching is off: a cached answer would reach the connection without passing
    the resolver's check.
    """
    return aiohttp.TCPConnector(limit=limit, limit_per_host=limit_per_host,
                                resolver=GuardedResolver(), use_dns_cache=False)


def guard_trace() -> aiohttp.TraceConfig:
    """The trace config that refuses a redirect to a private address given literally."""
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(_on_request_start)
    return trace
