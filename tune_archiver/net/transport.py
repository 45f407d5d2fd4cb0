"""HTTP exchanges shared by the API client and the downloads: redirects, error translation.

aiohttp's exceptions are turned into ours here, in one place; nothing past api.py
and download.py sees an aiohttp type.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from tune_archiver.config import StallRule
from tune_archiver.errors import (
    ArchiverError,
    BodyError,
    ConnectError,
    DataError,
    ExpiredUrl,
    NetworkError,
    ReadTimeout,
    RefusedUrl,
    StatusError,
)
from tune_archiver.net.guard import redirected_from
from tune_archiver.net.proxy import asks_credentials, proxied, proxy_for
from tune_archiver.net.retry import retry_after_of
from tune_archiver.net.throttle import TokenBucket
from tune_archiver.text import visible
from tune_archiver.urls import check_fetchable, origin, redact, redact_text

CHUNK_BYTES = 2**20  # bytes gathered before one thread hop that writes (and hashes) them
ERROR_BODY_BYTES = 4096
MAX_REDIRECTS = 10
# A byte position or size: ASCII digits, few enough for int() (\d takes any script's
# digits, str.isdigit a superscript, and int() refuses more than 4,300 digits).
_POSITION = r"[0-9]{1,20}"
_CONTENT_RANGE = re.compile(rf"bytes ({_POSITION})-({_POSITION})/({_POSITION})")
# What aiohttp refuses in a request header's value (http_writer._safe_header).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_UNSATISFIED_RANGE = re.compile(rf"bytes \*/({_POSITION})")  # a 416's: the file's length
# A Last-Modified is a strong validator only this long before the answer's Date (RFC 9110
# 8.8.2.2): a file changed twice within its second would show the same date for both.
SETTLED_SECONDS = 60
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Headers that carry the caller's identity: sent only to the origin they were meant for.
PRIVATE_HEADERS = frozenset({"authorization", "x-workspace-id"})
# Asset answers that refuse the file, not the moment: a dry run, whose URLs are fresh
# from the API, calls such a file not downloadable.
NOT_DOWNLOADABLE = frozenset({401, 403, 404, 410})

log = logging.getLogger(__name__)


@contextmanager
def translated(url: str, read_timeout: float | None = None) -> Iterator[None]:
    """Turn aiohttp's and the socket's exceptions into ours, naming the URL redacted."""
    shown = redact(url)
    try:
        with proxied(url):  # first: the proxy's errors are aiohttp's of any host
            yield
    except aiohttp.ClientConnectorCertificateError as exc:  # before its base
        said = getattr(exc.certificate_error, "verify_message", "") or str(exc.certificate_error)
        raise ConnectError(f"the certificate of {exc.host}:{exc.port} is not trusted ({said}); "
                           "a network that presents its own names its CA in SSL_CERT_FILE"
                           ) from exc
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        raise ConnectError(f"cannot connect to {exc.host}:{exc.port} ({reason})") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise BodyError(f"the server closed the connection early: {shown}") from exc
    except aiohttp.ClientPayloadError as exc:
        raise BodyError(f"the response body broke off: {shown}") from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise ConnectError(f"timed out connecting to the server of {shown}") from exc
    except aiohttp.InvalidURL as exc:
        raise RefusedUrl(f"refused malformed URL {shown}") from exc
    except TimeoutError as exc:
        waited = f" for {read_timeout:g} s" if read_timeout else ""
        raise ReadTimeout(f"no data{waited} from {shown}") from exc
    except aiohttp.ClientResponseError as exc:
        # aiohttp's parse error quotes the raw line, a presigned Location and all, on
        # lines of its own under the reason, with a line pointing at the fault: one line.
        said = " ".join(part.strip() for part in exc.message.splitlines()
                        if part.strip() not in ("", "^"))
        raise BodyError(f"malformed response ({redact_text(said)}) from {shown}") from exc
    except aiohttp.ClientOSError as exc:
        reason = errno.errorcode.get(exc.errno or 0) or exc.strerror or "connection error"
        raise NetworkError(f"connection failed ({reason}): {shown}") from exc
    except aiohttp.ClientError as exc:
        raise NetworkError(f"{type(exc).__name__}: {shown}") from exc


@asynccontextmanager
async def get(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    *,
    read_timeout: float | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET `url`, following up to MAX_REDIRECTS redirects ourselves.

    Each hop must be http(s); PRIVATE_HEADERS go only to the first URL's origin.
    Each request after a redirect is marked as one (guard.redirected_from), so a
    guarded session refuses it, with RefusedUrl, if it goes to a private address.
    Errors raised while the caller reads the body are translated too.
    """
    check_fetchable(url)  # first: origin() raises ValueError on a malformed port
    first_origin = origin(url)
    sent = dict(headers)
    source: str | None = None  # the URL that redirected to `url`
    # The status and headers come within connecting plus one read timeout: the read
    # timeout alone never ends headers sent a line now and then (the stall rule sees
    # bodies only), and a run would wait on them for ever.
    within = None if read_timeout is None else (session.timeout.connect or 0) + read_timeout
    for _hop in range(MAX_REDIRECTS + 1):
        check_fetchable(url)
        with translated(url, read_timeout):
            deadline = asyncio.timeout(within)
            try:
                async with deadline:
                    proxy = proxy_for(url)
                    # the guard may refuse a private target
                    with redirected_from(source, proxied=proxy.url is not None):
                        response = await session.get(
                            URL(url, encoded=True), allow_redirects=False, **proxy.sent(sent))
            except TimeoutError as exc:
                if deadline.expired():
                    raise ReadTimeout(f"no whole status and headers within {within:g} s from "
                                      f"{redact(url)}") from exc
                raise
            if log.isEnabledFor(logging.DEBUG):  # -v: each request, its URL redacted
                ranged = f" ({sent['Range']})" if "Range" in sent else ""
                log.debug("GET %s%s: HTTP %d", redact(url), ranged, response.status)
            try:
                if response.status == 407 and proxy.url is not None:  # the proxy's, not the host's
                    raise asks_credentials(url)
                location = response.headers.get("Location")
                if response.status not in REDIRECT_STATUSES or not location:
                    yield response
                    return
                base = response.url
            finally:
                response.release()
        source, url = url, _resolve(base, location)
        if origin(url) != first_origin:
            sent = {k: v for k, v in sent.items() if k.lower() not in PRIVATE_HEADERS}
    raise RefusedUrl(f"more than {MAX_REDIRECTS} redirects from {redact(url)}")


def _resolve(base: URL, location: str) -> str:
    """The absolute URL a Location header points to; refused if malformed as sent (the
    join would tidy a port such as "+1" into one that looks fine), or if it carries a
    user name or password."""
    try:
        if urlsplit(location).netloc:
            check_fetchable(location if "://" in location else f"{base.scheme}:{location}")
        resolved = str(base.join(URL(location, encoded=True)))
        userinfo = "@" in urlsplit(resolved).netloc
    except ValueError as exc:
        raise RefusedUrl(f"refused malformed redirect from {redact(str(base))}") from exc
    # Credentials a host slips into a redirect are none of ours to send; with the API's
    # Authorization, aiohttp would raise ValueError (a traceback) rather than send both.
    if userinfo:
        raise RefusedUrl(f"refused a redirect to a URL with a user name or password, from "
                         f"{redact(str(base))}")
    return resolved


class Pace:
    """A body's pace against a StallRule: ReadTimeout when it comes slower than the rule
    allows over its window (a host that drips a byte now and then is never silent long
    enough for the read timeout)."""

    def __init__(self, stall: StallRule | None, response: aiohttp.ClientResponse) -> None:
        self._stall = stall
        self._response = response
        self._clock = asyncio.get_running_loop().time
        self._start, self._bytes = self._clock(), 0

    def waited(self, seconds: float) -> None:
        """Time spent waiting on our side (--limit-rate), not the host's slowness."""
        self._start += seconds

    def received(self, count: int) -> None:
        """Count bytes received; raises ReadTimeout when the window is too slow."""
        stall = self._stall
        if stall is None:
            return
        self._bytes += count
        elapsed = self._clock() - self._start
        if elapsed >= stall.window:
            if self._bytes < stall.min_rate * elapsed:
                raise ReadTimeout(
                    f"slower than {stall.min_rate:.0f} bytes/s for {elapsed:.1f} s: "
                    f"{redact(str(self._response.url))}"
                )
            self._start, self._bytes = self._clock(), 0


async def read_capped(
    response: aiohttp.ClientResponse, cap: int, stall: StallRule | None = None
) -> bytes:
    """The body, or its first `cap` bytes when it is longer; ReadTimeout when it comes
    slower than `stall` allows (an API answer dripped for hours would hold a run)."""
    parts: list[bytes] = []
    size = 0
    pace = Pace(stall, response)
    async for chunk in response.content.iter_any():
        parts.append(chunk)
        size += len(chunk)
        if size >= cap:
            break
        pace.received(len(chunk))
    return b"".join(parts)[:cap]


@dataclass(frozen=True)
class Probe:
    """What one one-byte request says of a file: its size, or that it cannot be had."""

    size: int | None = None  # None when the host will not say
    refused: str | None = None  # why no fetch could download it: "HTTP 404", a URL refused
    status: int | None = None  # the HTTP status, when one of NOT_DOWNLOADABLE


async def probe_size(
    session: aiohttp.ClientSession, url: str, read_timeout: float | None = None
) -> Probe:
    """The size of the file at `url`, asking for its first byte only.

    A one-byte GET rather than HEAD: presigned URLs are often signed for GET alone.
    A status of NOT_DOWNLOADABLE, or a URL or redirect we refuse to follow, says the
    file cannot be had (`refused`); anything else that gives no size (a connection
    error, a 5xx, which a fetch would retry) leaves the size unknown. Never raises
    ArchiverError.
    """
    try:
        async with get(session, url, {"Range": "bytes=0-0"}, read_timeout=read_timeout) as resp:
            if resp.status in NOT_DOWNLOADABLE:
                return Probe(refused=f"HTTP {resp.status}", status=resp.status)
            if resp.status in (206, 416):  # 416: an empty file has no byte 0, but a size
                total = resp.headers.get("Content-Range", "").rpartition("/")[2]
                return Probe(int(total) if re.fullmatch(_POSITION, total) else None)
            return Probe(resp.content_length if resp.status == 200 else None)
    except RefusedUrl as exc:  # as a fetch would refuse it, for good
        return Probe(refused=str(exc))
    except ArchiverError:
        return Probe()


async def pump(
    response: aiohttp.ClientResponse,
    sink: Callable[[list[bytes]], Awaitable[None]],
    stall: StallRule | None = None,
    throttle: TokenBucket | None = None,
    batch: int = CHUNK_BYTES,
) -> list[bytes]:
    """Hand the body to `sink` as lists of pieces of about `batch` bytes in all.

    The pieces are the buffers as they were received, never joined: the event loop
    copies nothing, and the writer thread hands them to pwritev as they are. One
    batch is written (and hashed) while the next is received: the sink's calls never
    overlap one another, so bytes reach it in order. When the body ends, the last
    pieces (less than `batch`) are returned unwritten, so a small file costs one
    thread hop in all. Bytes that arrived before the body broke are handed to `sink`
    before the error goes on: they are good, and a resume starts after them. A body
    slower than `stall` allows raises ReadTimeout: a host that drips a byte now and
    then is never silent long enough for the read timeout. With `throttle`
    (--limit-rate), each piece's bytes are taken from it before the piece is handed
    on; the time spent waiting there is not the host's slowness.
    """
    pending: list[bytes] = []
    held = 0
    writing: asyncio.Future[None] | None = None  # the batch being written meanwhile
    pace = Pace(stall, response)
    try:
        async for piece, _ in response.content.iter_chunks():
            if throttle is not None:
                pace.waited(await throttle.take(len(piece)))
            pending.append(piece)
            held += len(piece)
            if held >= batch:
                pieces, pending, held = pending, [], 0
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(sink(pieces))
            pace.received(len(piece))
        if writing is not None:
            await writing
    except BaseException:
        if writing is not None and not writing.done():
            await asyncio.wait([writing])  # a write left running would race the next
        # The rest follows only a batch that went in: never after a failed one.
        wrote = writing is None or (not writing.cancelled() and writing.exception() is None)
        if held and wrote:
            await sink(pending)
        raise
    return pending


async def asset_status_error(
    response: aiohttp.ClientResponse, shown: str, stall: StallRule | None = None
) -> StatusError:
    """The error for an asset answer other than 200/206; an expired URL has its own."""
    status, date = response.status, response.headers.get("Date")
    body = await read_capped(response, ERROR_BODY_BYTES, stall)
    if status == 403 or (status in (400, 410) and b"expired" in body.lower()):
        return ExpiredUrl(f"HTTP {status} (URL expired or access denied) from {shown}", status,
                          sent=sent_at(date))
    return StatusError(f"HTTP {status} from {shown}", status,
                       retry_after_of(response.headers.get("Retry-After"), date), sent_at(date))


def sent_at(date: str | None) -> datetime | None:
    """The answer's Date, aware; None when absent or unreadable. Whether a refused tune
    has expired is read by the host's clock, not ours: a machine hours ahead took a
    404 of a tune not yet expired for one gone upstream for good."""
    try:
        sent = parsedate_to_datetime(date or "")
    except (TypeError, ValueError, OverflowError):  # a zone of 20 digits overflows
        return None
    return sent if sent.tzinfo is not None else None


def refuse_encoded(response: aiohttp.ClientResponse, shown: str) -> None:
    """Raise DataError for a body sent encoded (gzip, br...) though asked for as it is
    (Accept-Encoding: identity): its bytes are not the file's, nor its ranges the file's.
    A transfer coding but chunked is refused as well: we send no TE offering one, and
    aiohttp takes off the chunking alone (Transfer-Encoding: gzip, chunked)."""
    codings = [coding.strip().lower() for name in ("Content-Encoding", "Transfer-Encoding")
               for header in response.headers.getall(name, ()) for coding in header.split(",")]
    coding = next((coding for coding in codings
                   if coding not in ("", "identity", "chunked")), None)
    if coding is not None:
        raise DataError(f"the server sent the file encoded ({visible(coding[:20])}), not as "
                        f"it is: {shown}")


def validator_of(headers: CIMultiDictProxy[str]) -> str | None:
    """What If-Range can carry: a strong ETag, else a Last-Modified that is strong. Without
    one, bytes are never resumed nor fetched in ranges: two versions could be spliced.
    A value that cannot be sent back (a control character) is none."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/") and _sendable(etag):
        return etag
    modified = headers.get("Last-Modified")
    return (modified if modified and _sendable(modified)
            and _settled(modified, headers.get("Date")) else None)


def _sendable(value: str) -> bool:
    """Whether a validator can go back in If-Range: aiohttp refuses a request header
    with a control character but tab (ValueError, as if we injected one)."""
    return _CONTROL.search(value) is None


def _settled(modified: str, date: str | None) -> bool:
    """Whether the file had gone unchanged SETTLED_SECONDS when the host sent this Date."""
    try:
        age = parsedate_to_datetime(date or "") - parsedate_to_datetime(modified)
    except (TypeError, ValueError, OverflowError):  # no Date, a malformed or naive one
        return False
    return age.total_seconds() >= SETTLED_SECONDS


def content_range(response: aiohttp.ClientResponse) -> tuple[int, int, int] | None:
    """(first byte, last byte, total) from a 206's Content-Range; None when malformed."""
    return parse_content_range(response.headers.get("Content-Range", ""))


def unsatisfied_length(response: aiohttp.ClientResponse) -> int | None:
    """The file's length a 416 says (`Content-Range: bytes */N`); None when it does not."""
    match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    return int(match.group(1)) if match else None


def parse_content_range(text: str) -> tuple[int, int, int] | None:
    """(first byte, last byte, total) of a Content-Range header; None when malformed."""
    match = _CONTENT_RANGE.fullmatch(text.strip())
    if match is None:
        return None
    first, last, total = (int(group) for group in match.groups())
    return first, last, total
