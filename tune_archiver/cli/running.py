"""What the command line's shell runs on: settings from options, the archive opened,
signals turned into Interrupted, and where log lines go. Nothing here prints."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import resource
import signal
import stat
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit

from tune_archiver.addresses import is_private_host
from tune_archiver.astria.cli_config import api_for_key, astria_keys, read_astria_cli
from tune_archiver.astria.client import API_CONCURRENCY, PERSONAL
from tune_archiver.cli import eventlog, terminal
from tune_archiver.cli.exits import STOP_SIGNALS
from tune_archiver.commands.workspaces import ALL, checked_workspace
from tune_archiver.config import (
    DEFAULT_MIN_RATE,
    DEFAULT_STALL_WINDOW,
    ENV_API_KEY,
    ENV_API_URL,
    ENV_PING_URL,
    RetryPolicy,
    Settings,
    StallRule,
    archive_dir,
    load_api_key,
    secret_text,
)
from tune_archiver.errors import ConfigError
from tune_archiver.layout import MANIFESTS
from tune_archiver.net.ping import check_ping_url, ping
from tune_archiver.net.proxy import proxy_for
from tune_archiver.progress import above_bar
from tune_archiver.store import Store
from tune_archiver.store.location import is_remote, open_store
from tune_archiver.text import shell_word

T = TypeVar("T")
log = logging.getLogger("tune_archiver")


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP stopped the run; the exit code is 128 + the signal's number.

    A BaseException, as KeyboardInterrupt is: start.py's SIGTERM handler raises it at
    any line outside an event loop, and an `except Exception` there (a log handler's)
    must not swallow the stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.done: dict[str, Any] = {}  # what --json says was done before the stop
        self.said = False  # the command has said what the stop left undone


def known_keys(args: argparse.Namespace, env: Mapping[str, str]) -> list[str]:
    """Every key the user has given, for any command to scrub from what it prints and
    writes, one that needs no key too (verify, list, export, serve, gc): an archive an
    older version wrote may hold a key from any source. Each is read without a word and
    is none where it cannot be; a key file only when a regular file (a pipe read here
    would be empty for the command that uses it, a FIFO block)."""
    quiet = astria_keys(getattr(args, "profile", None), env)
    path = getattr(args, "api_key_file", None)
    with contextlib.suppress(OSError, UnicodeDecodeError, ConfigError):
        if path is not None and stat.S_ISREG(os.stat(path).st_mode):
            with open(path, "rb") as file:
                quiet.append(secret_text(file, path, "the API key"))
    # One read unasked is scrubbed only when long enough to be a key: a damaged config's
    # "a" would have every a of every line replaced.
    keys = [env.get(ENV_API_KEY, "").strip(), *(key for key in quiet if len(key) >= MIN_KEY)]
    return [key for key in dict.fromkeys(keys) if key]


MIN_KEY = 8  # characters; Astria's keys are far longer


def settings_of(
    args: argparse.Namespace, secrets: list[str], *, downloads: bool = True
) -> Settings:
    """The settings of a command that talks to the API (fetch, verify --repair, retrain);
    options a command does not have keep their defaults. Those of a command that
    `downloads` are fitted to the limit on open files: not retrain's (one request), nor
    verify --repair's until it has found something to fetch again."""
    env = os.environ
    ours = ("--api-key-file" if args.api_key_file is not None else
            ENV_API_KEY if env.get(ENV_API_KEY, "").strip() else None)
    astria = read_astria_cli(args.profile, env, key=ours is not None,
                             url=bool(args.api_url or env.get(ENV_API_URL)),
                             workspace=bool(args.workspace))
    fallback = (astria.api_key, astria.key_source) if astria.api_key else None
    key = load_api_key(args.api_key_file, env, fallback)
    secrets.append(key)
    retry = RetryPolicy(retries=args.retries)
    if args.sleep is not None:
        retry = replace(retry, sleep=args.sleep)
    fetch_only = {
        name: getattr(args, name) for name in (
            "only", "force", "prompts", "split", "split_threshold", "limit_rate"
        ) if hasattr(args, name)
    }
    min_rate = getattr(args, "min_rate", DEFAULT_MIN_RATE)
    window = getattr(args, "stall_window", DEFAULT_STALL_WINDOW)
    api = api_for_key(ours or astria.key_source, args.api_url, env, astria)
    host = urlsplit(api).hostname or ""
    if api.startswith("http://") and not is_private_host(host):  # a mistyped https, often
        via = proxy_for(api).url  # the proxy reads the key as well, as with curl
        log.warning("warning: the API URL is plain http: the API key goes unencrypted to %s%s; "
                    "use https://", host, f" through the proxy {via.host}" if via else "")
    workspace = checked_workspace(args.workspace or astria.workspace)  # said only checked
    if getattr(args, "all", False) and not args.workspace and astria.workspace not in (
            None, PERSONAL, ALL):  # without one --all covers the personal scope; all, each
        # The CLI's setting, made for its own use, must not narrow a cron's backup unsaid:
        # the tunes of the personal scope and of other workspaces would expire unarchived.
        log.warning("warning: --all covers workspace %s alone, set by %s: tunes of the "
                    "personal scope and of other workspaces are not fetched; --workspace "
                    "all spans every workspace (--workspace %s says this one)",
                    astria.workspace, astria.workspace_source, astria.workspace)
    settings = Settings(
        archive=archive_dir(args.archive, env),
        api_key=key,
        api_url=api,
        workspace=workspace,
        concurrency=args.concurrency,
        retry=retry,
        read_timeout=args.read_timeout,
        s3_endpoint_url=args.s3_endpoint_url,
        stall=StallRule(min_rate, window) if min_rate else None,
        **fetch_only,
        # An API on a private network serves files from one: its redirects may go there.
        private_redirects=getattr(args, "allow_private_redirects", False)
        or is_private_host(host),
    )
    # fetch --dry-run downloads nothing: fitted for its probes alone (a download's
    # needs refused it at a hard limit of 40, where it runs)
    return fit_open_files(settings, probing=getattr(args, "dry_run", False)) if downloads \
        else settings


def archive_option(args: argparse.Namespace) -> str:
    """` --archive LOCATION` for a command a line tells the user to run, the default
    ./tune-archive too (a cron line's is in its working folder): run without it (from a
    shell that is not the cron line's, or from another folder), `fetch ID` made an archive
    of its own and archived the tune there, exit 0, not in this one. A bucket's
    --s3-endpoint-url too: without it, s3://bucket is a bucket of AWS."""
    location = archive_dir(args.archive, os.environ)
    where = location if is_remote(location) else os.path.abspath(location)
    # "$(printf ...)" loses a path's last newlines (another archive): a '/' keeps them
    word = shell_word(where + "/" if where.endswith("\n") else where)
    endpoint = args.s3_endpoint_url if is_remote(location) else None
    return f" --archive {word}" + (
        f" --s3-endpoint-url {shell_word(endpoint)}" if endpoint else "")


def in_archive(args: argparse.Namespace, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run `work` on the archive the command names, which must exist (else ConfigError)."""
    location = archive_dir(args.archive, os.environ)

    async def run() -> T:
        async with open_store(location, args.s3_endpoint_url) as store:
            if not await store.exists():
                what = "nothing under manifests/ or objects/" if is_remote(location) else (
                    f"it has no {MANIFESTS}/ folder")
                raise ConfigError(f"no archive at {location} ({what})")
            return await work(store)

    return asyncio.run(until_signal(run()))


def waiting_for(other: str, location: str) -> Callable[[], None]:
    def waiting() -> None:
        log.warning("waiting: a %s is running on the archive %s", other, location)

    return waiting


async def until_signal(work: Coroutine[Any, Any, T]) -> T:
    """Await `work`; a stop signal cancels it (its cleanup runs) and raises Interrupted."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()

    # asyncio's remove_signal_handler leaves SIG_DFL behind, not the handler it found:
    # start.py's (a stop between two loops) is put back. A SIGHUP nohup ignores is left.
    previous = {s: h for s in STOP_SIGNALS if (h := signal.getsignal(s)) is not signal.SIG_IGN}
    for signum in previous:
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await task
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[0]) from None
        raise
    finally:
        for signum in previous:
            loop.remove_signal_handler(signum)
            if previous[signum] is not None:
                signal.signal(signum, previous[signum])


class _AboveBar(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines printed above the progress bar, never into it."""

    def emit(self, record: logging.LogRecord) -> None:
        with above_bar():
            super().emit(record)


OPEN_FILES = 4096  # room for --concurrency 64 with --split 16, the API and the archive


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files towards the hard one, as Go's runtime does: a
    soft limit the machine lets us raise (256 on macOS, less from a wrapper) failed
    downloads with 'Too many open files'. Left as it is when it cannot be raised."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# Descriptors a run holds whatever its --concurrency: the standard streams, the event
# loop's, the log file, the archive's locks and staging folder, the API's 4 connections
# and the tunes in flight past the downloads' slots (a manifest lock each), a bucket's
# pool of 10; and 1 a worker thread (a folder opened to be fsynced, say).
OPEN_FILES_FIXED = 28
OPEN_FILES_PER_THREAD = 1


def fit_open_files(settings: Settings, *, probing: bool = False) -> Settings:
    """`settings` with --concurrency (then --split) lowered to what the hard limit on
    open files holds, said once: at a hard limit of 64, the default 16 failed files with
    "Too many open files". Each slot holds its partials, a split file's connections,
    one kept-alive connection, its tunes' manifest locks and the journal a commit holds
    till its store is done (journal.Noting); one `probing` (fetch --dry-run, which asks
    sizes and downloads nothing) its connection and its tunes' manifests alone. Raises
    ConfigError when even one slot of one connection does not fit."""
    from tune_archiver.commands.fetch import TUNES_PER_SLOT
    from tune_archiver.download.engine import OPEN_PER_SLOT

    limit, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limit == resource.RLIM_INFINITY:
        return settings
    threads = min(32, (os.cpu_count() or 1) + 4)  # asyncio.to_thread's executor
    per_slot = (0 if probing else OPEN_PER_SLOT + 1) + TUNES_PER_SLOT + 1

    def needed(concurrency: int, split: int) -> int:
        # A worker thread holds a file only for a task: the slots' and the tunes past
        # them keep so many busy at most (11 of the 32 on 28 cores, at one slot).
        busy = min(threads, API_CONCURRENCY + concurrency * per_slot)
        return (OPEN_FILES_FIXED + OPEN_FILES_PER_THREAD * busy
                + concurrency * (per_slot + (0 if probing else split)))

    # Past OPEN_FILES (--concurrency 1000), the soft limit is raised as far as is needed,
    # or to the hard one when that holds less: what is lowered is lowered to fit it.
    if limit < (wanted := needed(settings.concurrency, settings.split)):
        wanted = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            limit = wanted
    concurrency, split = settings.concurrency, settings.split
    while concurrency > 1 and needed(concurrency, split) > limit:
        concurrency -= 1
    while split > 1 and needed(concurrency, split) > limit:  # one slot: fewer connections
        split -= 1
    if needed(concurrency, split) > limit:
        raise ConfigError(f"the limit on open files is {limit}, and a run needs at least "
                          f"{needed(1, 1)} here: raise it (ulimit -n)")
    if (concurrency, split) == (settings.concurrency, settings.split):
        return settings
    # Only what was lowered is said, and --split by what it counts: verify --repair has
    # no such option to raise again.
    lowered = [f"{name} from {before} to {after}" for name, before, after in (
        ("--concurrency", settings.concurrency, concurrency),
        ("the connections per large file", settings.split, split)) if before != after]
    log.warning("warning: the limit on open files is %d (ulimit -n): lowered %s to fit it",
                limit, " and ".join(lowered))
    return replace(settings, concurrency=concurrency, split=split)


def configure_logging(args: argparse.Namespace, secrets: list[str]) -> None:
    """Our log lines on stderr: retries with -v, warnings otherwise, errors only with -q;
    and --log-file's JSON lines, to a file or (with -) to stderr in their place.

    They are scrubbed of `secrets` (which grows once the key is read) and escaped.
    Raises ConfigError when the log file cannot be opened."""
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.DEBUG)
    opened = None if args.log_file is None else eventlog.open_log(args.log_file, secrets)
    if opened is not None:
        log.addHandler(opened)
    if args.log_file == "-":
        return
    handler = _AboveBar(sys.stderr)
    handler.setFormatter(terminal.SafeFormatter("tune-archiver: %(message)s", secrets))
    handler.addFilter(eventlog.HumanOnly())
    handler.setLevel(
        logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    )
    log.addHandler(handler)
    # No record below what some handler takes is made at all: a run of 20,000 tunes
    # logs several debug events per tune that nobody would be shown without -v.
    log.setLevel(min(h.level for h in log.handlers))
    if opened is not None and eventlog.readable_by_all(opened):
        # It names tunes, files and the archive. Its owner chose its mode (a group's
        # read may be meant): left as it is, and said on every run until made private.
        log.warning(eventlog.READABLE, args.log_file)


def ping_url_of(args: argparse.Namespace) -> str | None:
    """--ping-url, else $TUNE_ARCHIVER_PING_URL, for the commands that take it; None
    when there is none. Raises ConfigError for a URL that is not http(s)."""
    if not hasattr(args, "ping_url"):
        return None
    url = args.ping_url or os.environ.get(ENV_PING_URL, "").strip()
    return check_ping_url(url) if url else None


def send_ping(url: str, what: str, summary: str | None = None) -> int | None:
    """Ping the monitor (`what`: start, success or fail); a failed ping is one warning,
    never the run's failure. The URL is not shown: it may hold the monitor's token.
    Returns the signal (SIGINT or SIGTERM) that stopped it, else None: the caller stops."""
    suffix = "" if what == "success" else f"/{what}"
    stopped: int | None = None
    try:
        reason = asyncio.run(until_signal(ping(url, suffix, summary)))
    except Interrupted as stop:  # cron's timeout while the monitor is slow: no kill
        reason, stopped = f"stopped by {stop}", stop.signum
    except KeyboardInterrupt:  # Ctrl-C before the loop took the signal: no traceback
        reason, stopped = "interrupted", signal.SIGINT
    if reason is not None:
        log.warning("warning: the %s ping to --ping-url failed (%s)%s", what, reason,
                    "" if stopped else "; the run is not affected",
                    extra={"event": "ping_failed", "ping": what})
    return stopped


def stdout_failed(error: OSError) -> None:
    """stdout cannot be written: its reader gone (EPIPE: `list | head`), or a full disk
    under a cron line's `>> run.log`, said once (the log's warning when there is one).
    The rest of its output is lost, never the run: stdout goes to /dev/null."""
    if not isinstance(error, BrokenPipeError):
        reason = error.strerror or error
        if log.handlers:
            log.warning("warning: cannot write to stdout: %s; the run goes on without it",
                        reason)
        else:  # the run has ended: its last flush
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"tune-archiver: warning: cannot write to stdout: {reason}\n")
    stream_gone(sys.stdout)


def stream_gone(stream: TextIO) -> None:
    """`stream`'s reader has gone (stdout: `list | head`; stderr: a log pipe that died,
    journald restarted): later writes, and the flush at exit, go to /dev/null quietly,
    as Python's documentation advises for SIGPIPE."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # no descriptor of its own (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def with_streams(program: Callable[[], int]) -> int:
    """Run `program` with a closed stderr (`2>&-`) as /dev/null: print(file=None) would
    write the error lines to stdout, into --json's document, and the next file opened
    would be fd 2. stdout is flushed at its end, not at exit, where a reader gone is
    "Exception ignored"; what its encoding cannot write is escaped."""
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # open till the process ends
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A locale that cannot write a title's letters (ISO-8859-1 for CJK) shows them as
        # escapes, as stderr does: a summary line raising UnicodeEncodeError stopped the run.
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        return program()
    finally:
        try:
            if sys.stdout is not None:  # None: closed (`>&-`), nothing was printed
                sys.stdout.flush()
        except OSError as error:
            stdout_failed(error)
