"""Health-check pings (--ping-url): URL/start when a run begins, URL on success,
URL/fail with a short plain-text summary otherwise, as healthchecks.io and its kin take.

A ping is a courtesy to the operator's monitoring: one that fails is reported as a
reason, never raised, and never fails the backup.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import aiohttp

from tune_archiver.config import USER_AGENT
from tune_archiver.errors import ArchiverError, ConfigError
from tune_archiver.net.proxy import asks_credentials, proxy_for
from tune_archiver.net.transport import translated

PING_TIMEOUT = 10.0  # seconds for the whole exchange: a slow monitor must not hold a run


def check_ping_url(url: str) -> str:
    """The ping URL without a trailing slash; ConfigError unless it is http(s)."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError("the ping URL must start with http:// or https://")
    return url.rstrip("/")


def on_path(url: str, suffix: str) -> str:
    """The URL with `suffix` (/start, /fail) at the end of its path, its query kept:
    appended to "?create=1", it made a start or fail ping the monitor's success."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix))


async def ping(url: str, suffix: str = "", summary: str | None = None) -> str | None:
    """GET url+suffix, or POST `summary` as text/plain when given; None when the monitor
    answered 2xx, else one line saying why not, naming the monitor's origin alone (its
    path may hold a token: healthchecks.io's UUID)."""
    timeout = aiohttp.ClientTimeout(total=PING_TIMEOUT)
    try:
        # Within the try: urlsplit raises ValueError (an IPv6 bracket left open).
        target = on_path(url, suffix)
        monitor = urlunsplit(urlsplit(target)._replace(path="", query="", fragment=""))
        # aiohttp's errors said in words (cannot connect to host:port (Connection
        # refused), no data for 10 s, the proxy's), as a download's, of the origin.
        with translated(monitor, PING_TIMEOUT):
            async with aiohttp.ClientSession(
                timeout=timeout, headers={"User-Agent": USER_AGENT}
            ) as session:
                proxy = proxy_for(target)
                if summary is None:
                    request = session.get(target, **proxy.sent({}))
                else:
                    request = session.post(target, data=summary.encode(), **proxy.sent(
                        {"Content-Type": "text/plain; charset=utf-8"}))
                async with request as response:
                    if 200 <= response.status < 300:
                        return None
                    if response.status == 407 and proxy.url is not None:  # the proxy's
                        return str(asks_credentials(target))
                    return f"HTTP {response.status}"
    except ArchiverError as exc:  # translated's; a proxy we cannot use (ConfigError) too
        return str(exc)
    # ValueError: a host the IDNA codec refuses (a doubled dot, a label over 63
    # characters) raises UnicodeError from the resolver, past aiohttp's own errors;
    # urlsplit an IPv6 bracket left open. The URL unshown: it may hold the token.
    except ValueError:
        return "a malformed URL: its host cannot be read"
    except (aiohttp.ClientError, OSError) as exc:
        return type(exc).__name__
