"""Frozen settings for a run: defaults, environment overrides and the API key."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePath
from typing import BinaryIO, Literal
from urllib.parse import urlsplit

from tune_archiver import __version__
from tune_archiver.errors import ConfigError
from tune_archiver.selection import TuneFilter
from tune_archiver.text import has_control

DEFAULT_API_URL = "https://api.astria.ai"
DEFAULT_ARCHIVE = "./tune-archive"
DEFAULT_CONCURRENCY = 16  # enough small files at once to hide a CDN's latency (W4)
# A run starts 2 tune workers per slot before its first request: 10**20 never started.
MAX_CONCURRENCY = 1000
DEFAULT_RETRIES = 5
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_SPLIT = 8
MAX_SPLIT = 16
DEFAULT_SPLIT_THRESHOLD = 64 * 2**20
DEFAULT_MIN_RATE = 1024.0  # bytes per second, averaged over DEFAULT_STALL_WINDOW
DEFAULT_STALL_WINDOW = 300.0
USER_AGENT = f"tune-archiver/{__version__}"
log = logging.getLogger(__name__)

# An Astria key is some 40 characters; a longer "key" is the wrong file (read whole,
# /dev/zero never ends) and no server takes it as a header.
MAX_KEY_LENGTH = 4096
ENV_API_KEY = "ASTRIA_API_KEY"
# Names a key is set under by mistake (a guess, another tool's): said when no key is found.
MISNAMED_KEYS = ("ASTRIA_KEY", "ASTRIA_TOKEN", "ASTRIA_API_TOKEN", "ASTRIA_APIKEY")
ENV_API_URL = "ASTRIA_API_URL"
ENV_ARCHIVE = "TUNE_ARCHIVE"
ENV_PING_URL = "TUNE_ARCHIVER_PING_URL"

Only = Literal["checkpoints", "images"]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one request: bounded in attempts and in time."""

    retries: int = DEFAULT_RETRIES
    initial_wait: float = 1.0  # first backoff, doubled each time
    max_wait: float = 60.0  # cap on one backoff
    jitter: float = 1.0  # up to this many random seconds added to each wait
    max_total: float = 30 * 60.0  # no new attempt starts after this long
    retry_after_cap: float = 300.0  # a longer Retry-After is cut to this
    # How a wait is spent; tests inject one that records the wait and returns at once.
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass(frozen=True)
class StallRule:
    """A download slower than min_rate bytes/s over `window` seconds is cut and retried,
    so a host that drips a byte now and then cannot hold a run forever."""

    min_rate: float = DEFAULT_MIN_RATE
    window: float = DEFAULT_STALL_WINDOW


@dataclass(frozen=True)
class Settings:
    """Everything a fetch needs to know, fixed before it starts."""

    archive: str | Path  # a directory, or s3://bucket/prefix
    api_key: str = field(repr=False)  # never shown: not in repr, logs or errors
    api_url: str = DEFAULT_API_URL
    workspace: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    only: Only | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    force: bool = False  # download even when the known sizes exceed the free space
    prompts: bool = False  # also archive the images generated from the tune's prompts
    split: int = DEFAULT_SPLIT  # ranges fetched at once for one large file (1: never split)
    split_threshold: int = DEFAULT_SPLIT_THRESHOLD  # the smallest file worth splitting
    s3_endpoint_url: str | None = None  # an S3-compatible store other than AWS
    stall: StallRule | None = field(default_factory=StallRule)  # None: no rate rule
    limit_rate: float | None = None  # --limit-rate: bytes a second for the whole run
    # Follow redirects into private addresses (loopback, link-local, private networks):
    # when the API itself is on one, or --allow-private-redirects. Else they are refused.
    private_redirects: bool = False

    @property
    def lists_prompts(self) -> bool:
        """True when a fetch lists the tunes' prompts: --prompts, unless --only
        checkpoints leaves all their files out (API calls for nothing)."""
        return self.prompts and self.only != "checkpoints"


@dataclass(frozen=True)
class AllTunes:
    """fetch --all: every tune of the account, or those expiring within a window."""

    expiring_within: timedelta | None = None
    shard: tuple[int, int] | None = None  # (K, N): only tunes whose id % N == K - 1
    filters: TuneFilter = field(default_factory=TuneFilter)


_S3_LIKE = re.compile(r"s3[:/]", re.IGNORECASE)
_S3_URL = re.compile(r"s3://[^/]", re.IGNORECASE)


def archive_dir(option: str | None, env: Mapping[str, str]) -> str:
    """The archive (a directory or s3://bucket/prefix): the option, else $TUNE_ARCHIVE,
    else ./tune-archive.

    A leading ~ is the home folder, as the shell would have read it: quoted, or in a
    cron line's TUNE_ARCHIVE, "~/astria" made a folder named "~" wherever the run
    stood and archived there, the real ~/astria left as it was.

    Raises ConfigError for an empty option (a cron line's --archive "$DEST", DEST unset:
    the run archived into ./tune-archive wherever cron stood, exit 0), and for what
    looks like a mistyped S3 URL (s3:/bucket, s3:bucket, s3///bucket): taken as a
    folder, it would quietly become one named "s3:".
    """
    if option is not None and not option.strip():  # --archive "$DEST", DEST unset
        raise ConfigError("--archive is empty: name the archive's folder or s3://bucket/prefix "
                          "(a variable it names may be unset)")
    location = home_path(option or env.get(ENV_ARCHIVE) or DEFAULT_ARCHIVE, env)
    if _S3_LIKE.match(location) and not _S3_URL.match(location):
        raise ConfigError(
            f"not an archive location: {location!r} looks like a mistyped S3 URL; "
            "write s3://bucket/prefix (or ./s3... for a local folder)"
        )
    # --archive "$DEST " in a cron line, a .env's TUNE_ARCHIVE with a space left at its
    # end: a folder 'c4 ' was made beside the archive c4, and the run went there, exit 0.
    # A folder that exists is used (named so on purpose); one to be made is refused. A
    # newline is no typo (a "$(printf ...)" name): taken as written.
    if not _S3_LIKE.match(location) and _stray_space(location):
        raise ConfigError(
            f"no archive at {location!r}, whose name has a space or tab at the start or end "
            "of a folder's name: a stray space (a variable's, a cron line's)? Write it "
            "without (or make the folder first if the name is meant)")
    return location


def _stray_space(location: str) -> bool:
    """True when a folder of `location` still to be made has a space or tab at the start
    or end of its name (one that exists, the archive's parent say, was named so)."""
    path = PurePath(location)
    made = [path, *path.parents]
    return any(padded(part.name) and not os.path.lexists(part) for part in made)


def padded(name: str) -> bool:
    """True when a folder's name has a space or tab at its start or end: a stray one."""
    return name != name.strip(" \t")


def home_path(path: str, env: Mapping[str, str]) -> str:
    """`path` with a leading ~ or ~/ read as the home folder, as the shell reads it
    where it is not quoted. ConfigError when there is no home to read it in."""
    if path != "~" and not path.startswith("~/"):
        return path
    try:
        home = env.get("HOME") or str(Path.home())
    except RuntimeError:
        raise ConfigError(f"no home folder to read {path!r} in: set HOME or give the "
                          "full path") from None
    return home.rstrip("/") + path[1:] if home != "/" else path[1:] or "/"


def api_url(option: str | None, env: Mapping[str, str]) -> str:
    """The API's base URL without a trailing slash: the option, else $ASTRIA_API_URL."""
    url = (option or env.get(ENV_API_URL) or DEFAULT_API_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        shown = url if "@" not in url else "...@" + url.rsplit("@", 1)[1]  # a password
        raise ConfigError(f"the API URL must start with http:// or https://, not {shown!r}")
    # Each raised from deep inside the run (a traceback, or exit 1 as if a tune failed):
    # a bracket left open ("http://[::1"), a port out of range or not a number, a host
    # with an empty or too long label ("api..astria.ai"), which no resolver takes.
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018
        (parts.hostname or "").encode("idna")
    except ValueError as exc:  # UnicodeError, the IDNA codec's, is one too
        raise ConfigError(f"the API URL is malformed: {exc}") from None
    # aiohttp refuses a user:password beside the key's Authorization (a ValueError deep
    # in the run); the key alone authenticates us.
    if "@" in parts.netloc:
        raise ConfigError("the API URL holds a user name or password; the API key goes in "
                          f"{ENV_API_KEY} or --api-key-file")
    return url


def load_api_key(
    key_file: str | None, env: Mapping[str, str], fallback: tuple[str, str] | None = None
) -> str:
    """The API key from --api-key-file, else $ASTRIA_API_KEY, without surrounding
    whitespace.

    Raises ConfigError when there is none, the file cannot be read, or the key holds
    a newline or another control character (never a valid key, and a header
    injected). A key file that others may read, or that another user owns, is
    used, with one warning, as ssh does.
    """
    if key_file is not None:
        try:
            with open(key_file, "rb") as file:
                info = os.fstat(file.fileno())
                key = bare_key(secret_text(file, f"the API key file {key_file}", "the API key"))
        except FileNotFoundError as exc:  # a bare word no file has may be the key itself
            # Not chained: -v's traceback would quote the word, the OSError's filename.
            named = key_file if os.sep in key_file else "named on the command line"
            raise ConfigError(f"cannot read the API key file {named}: {exc.strerror} (it "
                              "takes the path of a file holding the key)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the API key file {key_file}: {exc}") from exc
        if not key:
            raise ConfigError(f"the API key file {key_file} is empty")
        _check_key(key, f"the API key file {key_file}")
        for warning in secret_file_warnings(f"the API key file {key_file}", info, os.geteuid()):
            log.warning("%s", warning)
        log.debug("the API key comes from --api-key-file %s", key_file)
        return key
    key = bare_key(env.get(ENV_API_KEY, "").strip())
    source = ENV_API_KEY
    if not key and fallback is not None:  # (key, where it came from): the Astria CLI's
        key, source = bare_key(fallback[0]), fallback[1]
    if not key:  # a key set under another name is named (never shown): ASTRIA_TOKEN=...
        misnamed = next((name for name in MISNAMED_KEYS if env.get(name, "").strip()), None)
        hint = f" ({misnamed} is set, but the key is read from {ENV_API_KEY})" if misnamed else ""
        raise ConfigError(f"no API key: set {ENV_API_KEY} or pass --api-key-file PATH{hint}")
    _check_key(key, source)
    log.debug("the API key comes from %s", source)
    return key


# "Bearer sk-..." or "Authorization: Bearer sk-..." pasted whole from the API's docs or a
# curl line: sent as it was, the header read "Bearer Bearer sk-...", and the key was
# rejected (exit 3) with nothing to say why. No key holds a space.
_BEARER = re.compile(r"(?:authorization:\s*)?bearer\s+(?=\S)", re.IGNORECASE | re.ASCII)


def bare_key(key: str) -> str:
    """The key without a pasted "Bearer " (or "Authorization: Bearer ") before it."""
    return _BEARER.sub("", key, count=1) if _BEARER.match(key) else key


def _check_key(key: str, source: str) -> None:
    """ConfigError when the key holds a line break or a control character; the message
    never shows the key."""
    if len(key) > MAX_KEY_LENGTH:
        raise ConfigError(f"{source} is longer than {MAX_KEY_LENGTH} characters; it must hold "
                          "the API key alone")
    if "\n" in key or "\r" in key:
        raise ConfigError(f"{source} holds more than one line; it must hold the API key alone")
    if has_control(key):
        raise ConfigError(f"{source} holds a control character; it must hold the API key alone")


def secret_text(file: BinaryIO, what: str, secret: str) -> str:
    """The text of a file holding `secret` alone, stripped: read no further than
    MAX_KEY_LENGTH (a larger one, the wrong file or /dev/zero, is ConfigError), without
    Notepad's byte order mark (sent with the key, it was rejected as a wrong key)."""
    data = file.read(MAX_KEY_LENGTH + 1)
    if len(data) > MAX_KEY_LENGTH:
        raise ConfigError(f"{what} is larger than 4 KiB; it must hold {secret} alone")
    return data.decode("utf-8-sig").strip()


def secret_file_warnings(what: str, info: os.stat_result, uid: int) -> list[str]:
    """What is unsafe about a regular file holding a secret (`what`: "the API key file
    PATH"), one line each: open to group or others, or owned by another user than `uid`
    (pure: the caller gives the file's stat)."""
    if not stat.S_ISREG(info.st_mode):
        return []  # a pipe from a secret manager (/dev/fd/N), a terminal: not a file to fix
    warnings = []
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        warnings.append(f"warning: {what} can be read or changed by "
                        f"group or others (mode {mode:04o}); chmod 600 it")
    if info.st_uid != uid:
        warnings.append(f"warning: {what} is owned by uid "
                        f"{info.st_uid}, not by you (uid {uid})")
    return warnings
