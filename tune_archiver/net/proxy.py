"""The proxy the environment names for a URL, as pip (urllib) and botocore read it:
HTTPS_PROXY, HTTP_PROXY, ALL_PROXY (or their lower-case forms), NO_PROXY (its
address ranges too, as pip and curl take them).

aiohttp reads these only in a session that trusts the environment, which also sends
~/.netrc's password to every host the file names (an asset host; the API's host beside
our Authorization is a ValueError). Our sessions trust nothing: each request is given
its proxy here. The proxy's own user and password go to the proxy alone.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
from yarl import URL

from tune_archiver.addresses import literal
from tune_archiver.errors import ConfigError, ConnectError
from tune_archiver.urls import redact


@dataclass(frozen=True)
class Proxy:
    """The proxy to send one request through, as aiohttp takes it (proxy=, proxy_headers=)."""

    url: URL | None = None  # None: connect directly; else without user or password
    headers: dict[str, str] | None = None  # its Proxy-Authorization, on the CONNECT
    # The Proxy-Authorization a plain-http request carries itself (no CONNECT is sent;
    # aiohttp gives proxy_headers to a CONNECT alone).
    in_request: dict[str, str] = field(default_factory=dict)

    def sent(self, headers: Mapping[str, str]) -> dict[str, Any]:
        """aiohttp's keyword arguments for a request with `headers` through this proxy."""
        return {"headers": {**headers, **self.in_request}, "proxy": self.url,
                "proxy_headers": self.headers}


DIRECT = Proxy()


# Read for every request: without one of them set, as on most machines, getproxies'
# walk of the whole environment (about 45 us) is spared each file.
_SCHEMES = ("http_proxy", "https_proxy", "all_proxy")


def _named(scheme: str) -> str | None:
    if not any(name in os.environ or name.upper() in os.environ for name in _SCHEMES):
        return None
    proxies = getproxies()
    return proxies.get(scheme) or proxies.get("all") or None


def _proxy(given: str, scheme: str) -> Proxy:
    """The Proxy of a proxy URL for a request of `scheme`; ConfigError for one aiohttp
    cannot use (socks5://)."""
    full = given if "://" in given else f"http://{given}"  # as curl reads proxy:3128
    try:
        url = URL(full)
        # A doubled dot, a label over 63 characters: the resolver's UnicodeError, at each
        # request, would be an internal error of every tune.
        (url.raw_host or "").encode("idna")
    except ValueError:  # a port such as 31x8: redact sees the user:password in `full` only
        raise ConfigError(f"cannot read the proxy URL {redact(full)} the environment "
                          "names") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"cannot use the proxy {redact(full)} the environment names: "
                          "only http:// and https:// proxies are supported")
    headers = {}
    if url.user is not None:
        headers["Proxy-Authorization"] = aiohttp.encode_basic_auth(url.user, url.password or "")
    if scheme == "https":
        return Proxy(url.with_user(None), headers)
    return Proxy(url.with_user(None), None, headers)


def check_proxies() -> None:
    """ConfigError, before any request, when the environment names a proxy we cannot use."""
    for scheme in ("http", "https"):
        given = _named(scheme)
        if given:
            _proxy(given, scheme)


def proxy_for(url: str) -> Proxy:
    """The proxy for a request to `url`; DIRECT when none is named, or the host is in
    NO_PROXY."""
    parts = urlsplit(url)
    given = _named(parts.scheme)
    if not given or not parts.hostname or _bypassed(parts.hostname):
        return DIRECT
    return _proxy(given, parts.scheme)


def _bypassed(host: str) -> bool:
    """Whether NO_PROXY names the host; an address also within a range it gives
    (10.0.0.0/8), as pip and curl read it (urllib alone does not)."""
    if proxy_bypass(host):
        return True
    address = literal(host)
    for entry in (getproxies().get("no") or "").split(",") if address is not None else ():
        with suppress(ValueError):
            if address in ipaddress.ip_network(entry.strip().strip("[]"), strict=False):
                return True
    return False


@contextmanager
def proxied(url: str) -> Iterator[None]:
    """Turn aiohttp's errors of the proxy a request to `url` goes through into ours, the
    proxy named as what failed: one that cannot be reached (its name unresolved too:
    aiohttp gives that as any host's) or that does not answer, a CONNECT it refused or
    asked credentials for."""
    try:
        yield
    except aiohttp.ClientHttpProxyError as exc:  # a CONNECT refused
        if exc.status == 407:
            raise asks_credentials(url) from exc
        raise ConnectError(f"the proxy refused to connect to the server of {redact(url)} "
                           f"(HTTP {exc.status})") from exc
    except aiohttp.ConnectionTimeoutError as exc:  # a proxy off the network drops the SYN
        via = proxy_for(url).url
        if via is None:
            raise
        # Through a CONNECT, the timeout spans the tunnel and its TLS handshake as well.
        onward = f" or, through it, to the server of {redact(url)}" if urlsplit(
            url).scheme == "https" else ""
        raise ConnectError(f"timed out connecting to the proxy {via.host}:{via.port}{onward}"
                           ) from exc
    except aiohttp.ClientConnectorError as exc:
        via = proxy_for(url).url
        ours = via is not None and (exc.host, exc.port) == (via.host, via.port)
        if isinstance(exc, aiohttp.ClientConnectorCertificateError) or not (
                ours or isinstance(exc, aiohttp.ClientProxyConnectionError)):
            raise
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        raise ConnectError(f"cannot connect to the proxy {exc.host}:{exc.port} ({reason})") from exc


def asks_credentials(url: str) -> ConnectError:
    """The error for the proxy of a request to `url` answering 407 (Proxy Authentication
    Required): it wants a user name and password, or refused those its URL gives."""
    proxy = proxy_for(url)
    shown = redact(str(proxy.url))  # never with its user or password: Proxy keeps neither
    named = "HTTPS_PROXY" if urlsplit(url).scheme == "https" else "HTTP_PROXY"
    if proxy.headers or proxy.in_request:
        return ConnectError(f"the proxy {shown} refused the user name and password given "
                            f"(HTTP 407): check the user:password in {named} (or ALL_PROXY)")
    return ConnectError(f"the proxy {shown} asks for a user name and password (HTTP 407): "
                        f"give them in {named} (or ALL_PROXY) as http://user:password@host:port")
