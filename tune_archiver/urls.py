"""URL rules in one place: which schemes we fetch, what an origin is, and redaction.

A presigned URL carries credentials in its query string; whatever shows or stores
a URL (manifest, log line, error message) goes through `redact` first.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tune_archiver.errors import RefusedUrl

REDACTED = "REDACTED"
FETCHABLE_SCHEMES = ("http", "https")

# Query parameters whose value is a secret, compared in lower case. Any name that
# merely contains one of SECRET_PARTS is treated as secret too.
SECRET_PARAMS = frozenset(
    {"sig", "key", "policy", "key-pair-id", "x-amz-security-token", "access_token", "apikey"}
)
SECRET_PARTS = ("signature", "credential", "token", "secret", "password", "auth")


def is_secret_param(name: str) -> bool:
    """True when a query parameter of this name carries a credential."""
    lowered = name.lower()
    return lowered in SECRET_PARAMS or any(part in lowered for part in SECRET_PARTS)


def redact(url: str) -> str:
    """The URL with secret query values and any user:password replaced by REDACTED."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(name, REDACTED if is_secret_param(name) else value) for name, value in pairs],
            safe="/:",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_json(value: Any) -> Any:
    """A copy of decoded JSON in which every http(s) URL string is redacted."""
    if isinstance(value, str):
        return redact(value) if value[:8].lower().startswith(("http://", "https://")) else value
    if isinstance(value, list):
        return [redact_json(item) for item in value]
    if isinstance(value, dict):
        return {key: redact_json(item) for key, item in value.items()}
    return value


def url_key(url: str) -> str:
    """The URL without credentials, query or fragment: stable when a presigned URL is renewed."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme.lower(), host.lower(), parts.path, "", ""))


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: what decides whether a header may be sent along."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default)


def check_fetchable(url: str) -> None:
    """Raise RefusedUrl unless the URL is absolute http(s) with a host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise RefusedUrl(f"refused malformed URL {redact(url)}") from exc
    if parts.scheme.lower() not in FETCHABLE_SCHEMES:
        scheme = parts.scheme or "no scheme"
        raise RefusedUrl(f"refused {scheme} URL (only http and https): {redact(url)}")
    if not parts.hostname:
        raise RefusedUrl(f"refused URL without a host: {redact(url)}")
