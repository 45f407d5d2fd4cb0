"""URL rules in one place: which schemes we fetch, what an origin is, and redaction.

A presigned URL carries credentials in its query string; whatever shows or stores
a URL (manifest, log line, error message) goes through `redact` first.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from yarl import URL

from tune_archiver.errors import RefusedUrl
from tune_archiver.text import visible
from tune_archiver.wording import ORDINARY_NAMES, words

REDACTED = "REDACTED"
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f]")
# A URL inside free text (an error message, a traceback, a title): its "//" and what
# follows, to the next whitespace (quotes and <> may sit inside a URL as a server sent
# it: jane's.jpg; cut there, the rest of its query would show as plain text), with the
# scheme before it when there is one (any: s3:// and hxxps:// hide secrets as well).
# A scheme may start after punctuation ("...https://", "1.https://") and is at most 32
# characters, so each place is tried in bounded time (linear on a.a.a...); a URL glued
# to a longer run, or with a longer scheme, is still caught at its "//".
_URL_IN_TEXT = re.compile(r"(?i)(?:(?<![a-z0-9])[a-z][a-z0-9+.\-]{0,31}:)?(?<!/)//\S*")
# Closing punctuation at the end of a URL in text, given back to the text: it tells nothing.
_CLOSING = ".,;:!?'\"`)]}>\u2019\u201d\u00bb"
_INSIDE = re.compile(r"[?@]")  # a query or a user:password before a hostless one's '#'
# What a URL-like run in text may keep after its '#' when nothing else is redacted:
# "#2", "#noir"; no key=value, no URL, no user:password, nothing a token's length.
_PLAIN_FRAGMENT = re.compile(r"[^=&/?@]{0,32}")
# A user:password in a path: another URL, run into this one (`..."https://u:pw@h/...`).
_USERINFO_IN_PATH = re.compile(r"//[^/?#@]*@")
# A user:password before a host, "//" left out (alice:s3cret@proxy:3128), to its last '@'
_USERINFO_BARE = re.compile(r"(?<![\w.+%~-])[A-Za-z][\w.+%~-]*:[^\s/?#:]+@(?=[\w-]+[.:]|\[)")
FETCHABLE_SCHEMES = ("http", "https")
# A name=value in text or in a URL's path, its '=' maybe percent-encoded: the last net
# for a secret no URL was seen around (`https:/h/?sig=...`, `https:\/\/h\/...` as JSON
# may escape it, `/a%3FX-Amz-Signature%3D...`); replaced when its name is a secret's.
# A name is the whole run of name characters before the '=' (glued to other text, it
# is still seen), taken from its start only, so the text is gone through once. After a
# percent-escape (`%3Fsig%3D...`, `%26sig%3D...`) the name starts past its two hex
# digits: glued to them ("3Fsig"), no secret's name would be seen; so for a query
# encoded twice (`%253Fsig%253D...`, a URL in a URL's path in a URL), past `%25XX`. A
# value may be quoted (`oauth_signature="..."`, as an OAuth or Digest header writes
# it), the quote maybe JSON-escaped (`\"...\"`: that header in a JSON body quoted in
# an error). A value ends before `~name=`, Akamai's field separator (`exp=1~acl=/*~hmac=
# ...` in a path): run on, a first harmless field would hide the HMAC in its value.
_PAIR = re.compile(r"(?:(?<=%[0-9A-Fa-f]{2})(?<!%25)|(?<=%25[0-9A-Fa-f]{2})"
                   r"|(?<![\w.\-])(?!(?<=%)[0-9A-Fa-f]{2}))"
                   r"([\w.\-]+)(=|%3[dD]|%253[dD])((?:\\?[\"'])?)"
                   r"((?:(?!~[\w.\-]+(?:=|%3[dD]))(?:[^\s&;,\"'<>\\%]|\\/|%(?!26|2526)))+)")

# Query parameters whose value is a secret, compared in lower case. Any name that
# merely contains one of SECRET_PARTS is treated as secret too.
SECRET_PARAMS = frozenset({
    "sig", "key", "policy", "key-pair-id", "x-amz-security-token", "access_token", "apikey",
    "api_key", "api-key", "x-api-key", "hdnts", "hdnea",  # Akamai's edge tokens
    "verify",  # Cloudflare's signed URL: <expiry>-<HMAC>
    "sign",  # Tencent COS's signature as one parameter (q-ak=...&q-signature=..., encoded)
})
# An HMAC and a session (`;jsessionid=`, `PHPSESSID`) are credentials too: in a URL's
# path (Akamai's `exp=...~hmac=...` token, a servlet's path parameter) no other rule sees them.
SECRET_PARTS = ("signature", "credential", "token", "secret", "password", "auth", "hmac",
                "session", "sessid")


def is_secret_param(name: str) -> bool:
    """True when a query parameter of this name carries a credential."""
    lowered = name.lower()
    return lowered in SECRET_PARAMS or any(part in lowered for part in SECRET_PARTS)


# Query parameters whose value is shown and stored as it is: the dates and algorithm of
# a signature, and a media file's shape. Every other value is replaced by REDACTED.
HARMLESS_PARAMS = frozenset({
    "x-amz-algorithm", "x-amz-date", "x-amz-expires", "x-amz-signedheaders",
    "x-goog-algorithm", "x-goog-date", "x-goog-expires", "x-goog-signedheaders",
    "expires", "se", "st", "sv", "sr", "sp", "spr", "versionid", "response-content-type",
    "w", "h", "width", "height", "format", "fm", "q", "quality", "size",
})
# What a harmless value is kept as: a date, a number, a word, a MIME type. A value
# holding anything else (`;` and `=` above all: `?w=512;X-Amz-Signature=...` is two
# parameters to servers that split on `;`, one to parse_qsl) is replaced as well, and
# so is one holding a run of 20 letters, digits, '-', '_' and '+': no date or size is
# one, while a hash is (`?st=<md5>` of nginx's secure_link, in base64url, `?h=<hmac>`
# of a CDN's signed URL, in base64).
_PLAIN_VALUE = re.compile(r"(?![\w.:/+,~-]*[A-Za-z0-9_+-]{20})[\w.:/+,~-]*")
# A hash in base64 holds '/' as well, which cuts its runs short as often (a quarter of
# md5s, 22 characters): a run of 20 with '/' in it is a hash's when it holds a digit,
# which a MIME type's (application/octet-stream) does not.
_BASE64_RUN = re.compile(r"[A-Za-z0-9_+/-]{20,}")
# What a parameter's name is shown as: a word (letters, '-' and '_'), with a value; any
# other, and one with no value or only '=' (a bare token: ?eyJhbGciOi..., ?QxTrVb...,
# ?c2VjcmV0==), is REDACTED like a value. Those with digits that servers use are
# named above.
_NAME = re.compile(r"[A-Za-z][A-Za-z_-]{0,39}|" + "|".join(
    re.escape(name) for name in sorted(SECRET_PARAMS | HARMLESS_PARAMS)), re.IGNORECASE)


def redact(url: str) -> str:
    """The URL with every query value but the harmless ones (HARMLESS_PARAMS, with a
    plain value), and any user:password (in its path too), replaced by REDACTED: a
    secret named in no list (`s`, `hmac`, `verify`, ...) is never shown or
    stored."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if not netloc and "@" in re.split(r"[/?#]", url, maxsplit=1)[0]:  # alice:pw@host/x,
        return redact(f"//{url}")[2:]  # no "//": its user:password was a scheme and a path
    netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}" if "@" in netloc else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(name if _NAME.fullmatch(name) and value.strip("=") else REDACTED,
              value if _kept(name, value) else REDACTED) for name, value in pairs],
            safe="/:",
        )
    # A path's name=value ends with its segment (`/a;jsessionid=X/b.jpg`): run on, the
    # file's name would be hidden, and two files stored as one URL. No host: its user too.
    hostless = parts.path if netloc else re.sub(r"^/*[^/?#@]*@", f"{REDACTED}@", parts.path)
    path = "/".join(_secret_pairs(segment) for segment in
                    _USERINFO_IN_PATH.sub(f"//{REDACTED}@", hostless).split("/"))
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def _kept(name: str, value: str) -> bool:
    """True when a query parameter's (decoded) value may be shown as it is."""
    return (name.lower() in HARMLESS_PARAMS and not is_secret_param(name)
            and _PLAIN_VALUE.fullmatch(value) is not None
            and not any(re.search(r"[0-9]", run) for run in _BASE64_RUN.findall(value)))


def redact_text(text: str, *, prompt: bool = False) -> str:
    """Free text with every URL in it redacted, protocol-relative ones included; a
    `prompt`'s own words (`key=light`) kept, credentials not (wording.words).

    A URL runs to the next whitespace, less the closing punctuation at its end; a URL
    run into it lies in its query (redacted) or its path (user:password redacted).
    """
    def redacted(found: re.Match[str]) -> str:
        url = found.group(0).rstrip(_CLOSING)
        if _hostless(url):
            return found.group(0)  # "Portrait // studio", "a (//) b": nothing to redact
        shown = redact(url)
        base, _, fragment = url.partition("#")
        # Nothing redacted but a plain "#..." or the scheme's case: the text keeps its
        # own ("Java//C#", "C://Users").
        if shown.lower() in (url.lower(), base.lower()) and _PLAIN_FRAGMENT.fullmatch(fragment):
            shown = url
        return shown + found.group(0)[len(url):]

    text = _URL_IN_TEXT.sub(redacted, text)  # a prompt's "16:9@2x.png" is its words
    return _secret_pairs(text if prompt else _USERINFO_BARE.sub(f"{REDACTED}@", text), prompt)


# A bearer credential anywhere: a JSON Web Token ("eyJ...", in a signed URL's path too:
# Cloudflare Stream's), or a key by its prefix (Astria's sd_, Hugging Face's, GitHub's).
_BEARER = re.compile(r"(?<![\w-])(?:eyJ[\w-]+\.[\w-]+\.[\w-]*"
                     r"|(?:sd|hf|gh[pousr])_[A-Za-z0-9]{20,}(?![\w-]))")


def _secret_pairs(text: str, prompt: bool = False) -> str:
    """The text with every bearer token (a JSON Web Token, an sd_ or hf_ key) and the
    value of every name=value whose name is a secret's REDACTED."""
    if "eyJ" in text or "_" in text:
        text = _BEARER.sub(REDACTED, text)

    def replaced(found: re.Match[str]) -> str:
        name, equals, quote, value = found.groups()
        if value.startswith(f"{REDACTED}/"):  # a path's, redacted to its segment (redact)
            return f"{name}{equals}{quote}{REDACTED}{_secret_pairs(value[len(REDACTED):])}"
        if is_secret_param(name) and name.lower() not in ORDINARY_NAMES and not (
                prompt and words(text, found.start(), found.end(), equals, value)):
            # Closing punctuation at its end closes the text around it ("(...?token=x)",
            # "... token=x."): given back, as redact_text gives it back after a URL.
            # A quoted value is the secret's to its quote ('password="hunter2!"').
            kept = "" if quote else value[len(value.rstrip(_CLOSING)):]
            return f"{name}{equals}{quote}{REDACTED}{kept}"
        return found.group(0)

    return _PAIR.sub(replaced, text) if "=" in text or "%3" in text or "%25" in text else text


def _hostless(url: str) -> bool:
    """True for what only looks like a URL in text ("//", "///", "//#noir"): no host, no
    query, and no URL inside it, so nothing to redact, and the text stays as it is."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    rest = url[url.index("//"):].lstrip("/")
    before, _, fragment = rest.partition("#")
    return (not parts.netloc and not parts.query and "//" not in rest
            and not _INSIDE.search(before) and "=" not in fragment)  # #access_token=...


# redact_json (and every other walk of decoded JSON here) recurses once a level, and
# Python stops near 1,000 frames: JSON nested past this is refused where it comes in,
# the API's answers and manifests, far past any either really holds.
MAX_JSON_DEPTH = 100


def nested_too_deeply(data: bytes, value: Any, wrapping: int = 0) -> bool:
    """Whether `value`, decoded from `data`, nests lists and objects past MAX_JSON_DEPTH
    and the `wrapping` levels it holds the API's JSON in (one level at a time, without
    recursing; a text of fewer brackets is not walked)."""
    limit = MAX_JSON_DEPTH + wrapping
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    level = [value] if type(value) in _CONTAINERS else []
    for _ in range(limit):
        inner: list[Any] = []
        for item in level:
            inner += [child for child in (item.values() if type(item) is dict else item)
                      if type(child) in _CONTAINERS]
        level = inner
    return bool(level)


_CONTAINERS = (dict, list)  # as json.loads makes them: exact types, checked fastest so


def json_float(text: str) -> float | str:
    """A JSON number with a fraction or an exponent, as a float; its text when past a
    float's range (1e999 reads as inf, which a manifest would write as Infinity, no
    JSON). Python's reader takes NaN and Infinity too: parse_constant=str keeps those."""
    value = float(text)
    return value if math.isfinite(value) else text


def redact_json(value: Any) -> Any:
    """A copy of decoded JSON in which every URL is redacted, in a string of its own or
    inside text, protocol-relative ones included, in values and in keys (a map from URL
    to details). A string that starts as a URL is redacted whole, as one URL, a space in
    it or not ("https://h/my photo.jpg?sig=...")."""
    if isinstance(value, str):
        whole = _URL_IN_TEXT.match(value) and not _hostless(value.rstrip(_CLOSING))
        return redact(value) if whole else redact_text(value)
    if isinstance(value, list):
        return [redact_json(item) for item in value]
    if isinstance(value, dict):
        redacted: dict[Any, Any] = {}
        for key, item in value.items():
            redacted[_redacted_key(key, redacted)] = redact_json(item)
        return redacted
    return value


def _redacted_key(key: Any, taken: dict[Any, Any]) -> Any:
    """An object's key as redact_json redacts a string; one without '/', '=' or '%' (a
    field's name: most keys of a large document) holds no URL nor name=value. One that
    reads as a key already `taken` (`?id=1` and `?id=2` both read `?id=REDACTED`) is
    numbered: merged, one of the two values would be lost."""
    if isinstance(key, str) and ("/" in key or "=" in key or "%" in key):
        key = redact_json(key)
    free, n = key, 1
    while free in taken:
        n += 1
        free = f"{key} ({n})"
    return free


# Parameters a signer sets anew each time it signs a URL: not secret, but not part of
# what the URL names either (AWS SigV2/SigV4, Google, Azure SAS, CloudFront, KeyCDN's
# expire, Tencent COS's q-*, Aliyun OSS's V1 and V4, Huawei OBS's AccessKeyId: an STS
# key's, new each time, as OSS's).
SIGNING_PARAMS = frozenset({
    "x-amz-algorithm", "x-amz-date", "x-amz-expires", "x-amz-signedheaders",
    "x-goog-algorithm", "x-goog-date", "x-goog-expires", "x-goog-signedheaders",
    "awsaccesskeyid", "expires", "se", "st", "sv", "sp", "sr", "spr", "skoid", "sktid",
    "skt", "ske", "sks", "skv", "expire", "q-sign-algorithm", "q-ak", "q-sign-time",
    "q-key-time", "q-header-list", "q-url-param-list", "ossaccesskeyid",
    "x-oss-signature-version", "x-oss-date", "x-oss-expires", "x-oss-additional-headers",
    "accesskeyid",
})
# And the signatures themselves, with what changes along with them: a run's downloads
# are shared whatever these say, and by every other parameter (download_key). Akamai's
# tokens (its expiry, path and HMAC in one value) and Cloudflare's ?verify= (its expiry
# and HMAC) are signed anew each time too, and so are the security tokens of temporary
# credentials (COS's, OSS's).
SIGNATURES = SIGNING_PARAMS | {
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature",
    "x-goog-credential", "googleaccessid", "signature", "sig", "policy", "key-pair-id",
    "hdnts", "hdnea", "__token__", "verify", "q-signature", "x-cos-security-token",
    "security-token", "x-oss-credential", "x-oss-signature", "x-oss-security-token",
    "edge-cache-token",  # Google Media CDN's: expiry, key and signature in one value
    "sign", "x-obs-security-token",
}


@functools.lru_cache(maxsize=4096)  # asked of each file's URL several times a run
def identity(url: str) -> str:
    """A short hash of url_key: what a manifest records to know a file again, since its
    URL is stored redacted (and `?id=1` may read `?id=REDACTED` there)."""
    return _short_hash(url_key(url))


@functools.lru_cache(maxsize=4096)
def url_key(url: str) -> str:
    """What a URL names, whatever its signature: the identity of a file across runs.

    The whole URL (scheme and host in lower case, path, query) less userinfo, the
    fragment, and the query parameters that carry credentials or are set by signing
    (SIGNING_PARAMS), so a renewed presigned URL keeps its key while `?id=1` and
    `?id=2` stay two files. The remaining parameters keep their order.
    """
    return _without(url, lambda name: is_secret_param(name) or name.lower() in SIGNING_PARAMS)


@functools.lru_cache(maxsize=4096)
def download_key(url: str) -> str:
    """What one download of a run is shared by: the URL less its signature alone
    (SIGNATURES). A parameter that only looks secret may name the file: `?key=a` and
    `?key=b` (one url_key) are two files, never one download's bytes."""
    return _without(url, lambda name: name.lower() in SIGNATURES)


@functools.lru_cache(maxsize=4096)
def download_identity(url: str) -> str:
    """identity's for download_key: what a partial in tmp/ is named and resumed by, so
    the bytes of /img?key=a, kept whole or in part, are never taken up for /img?key=b."""
    return _short_hash(download_key(url))


def _short_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# What a path holds of a signature or a session, never of the file it names: Akamai's
# token (`/exp=...~acl=/*~hmac=...`, its fields joined by `~`, the HMAC last, an acl's
# value holding '/'), Bunny's (`/bcdn_token=...&expires=...&token_path=...`, one
# segment) and a servlet's `;jsessionid=` (or PHPSESSID), new each session. Only an
# acl's value runs over a '/': another field's ends with its segment, so a segment
# before the token (`/w=512/exp=...`) stays, and with it what tells two files apart.
_PATH_SIGNATURE = re.compile(r"/(?:(?:acl=[^~?#]*|[\w.\-]+=[^~/?#]*)~)+hmac=[^/;?#]*"
                             r"|/bcdn_token=[^/?#]*"
                             r"|;[^/;=]*(?:session|sessid)[^/;=]*=[^/;]*", re.IGNORECASE)


def _without(url: str, dropped: Callable[[str], bool]) -> str:
    """The URL less userinfo, fragment, a token or session in its path and the query
    parameters `dropped` names; scheme and host in lower case, the other parameters in
    their order."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    query = ""
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode([(name, value) for name, value in pairs if not dropped(name)],
                          safe="/:")
    path = _PATH_SIGNATURE.sub("", parts.path)
    return urlunsplit((parts.scheme.lower(), host.lower(), path, query, ""))


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: what decides whether a header may be sent along."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default)


def check_fetchable(url: str) -> None:
    """Raise RefusedUrl unless the URL is absolute http(s) with a host a name may be, a
    port of digits, and no whitespace or control character anywhere."""
    if _UNSAFE.search(url):
        shown = visible(redact(url)).replace(" ", "\\x20")
        raise RefusedUrl(f"refused a URL with whitespace or control characters: {shown}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise RefusedUrl(f"refused malformed URL {redact(url)}") from exc
    port = parts.netloc.rsplit("@", 1)[-1].rpartition("]")[2].partition(":")[2]
    if port and not port.isdigit():
        raise RefusedUrl(f"refused malformed URL {redact(url)}")
    if parts.scheme.lower() not in FETCHABLE_SCHEMES:  # alice:pw@host's "alice" is no scheme
        scheme = parts.scheme if redact(url).startswith(f"{parts.scheme}:") else "no scheme"
        raise RefusedUrl(f"refused {scheme} URL (only http and https): {redact(url)}")
    if not parts.hostname:
        raise RefusedUrl(f"refused URL without a host: {redact(url)}")
    try:  # as the lookup encodes it: yarl's IDNA 2008 first (a Python codec's IDNA 2003
        # refuses names it takes, an Arabic one ending in digits), then the system's; a
        # label empty or past 63 characters raised there
        (URL(url).raw_host or "").encode("idna")
    except ValueError as exc:  # UnicodeError is one
        raise RefusedUrl(f"refused malformed URL {redact(url)}") from exc
