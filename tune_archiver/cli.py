"""The command line: parsing, the one place that prints errors, picks exit codes and
calls asyncio.run."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from tune_archiver import __version__, archive
from tune_archiver.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRIES,
    ENV_API_KEY,
    ENV_API_URL,
    ENV_ARCHIVE,
    RetryPolicy,
    Settings,
    api_url,
    archive_dir,
    load_api_key,
)
from tune_archiver.errors import ArchiverError, ConfigError
from tune_archiver.models import TuneResult
from tune_archiver.progress import progress_for
from tune_archiver.urls import REDACTED, redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")
log = logging.getLogger("tune_archiver")


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run; the exit code is 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--archive", metavar="DIR",
        help=f"the archive directory (env {ENV_ARCHIVE}; default ./tune-archive)",
    )
    common.add_argument("--json", action="store_true", help="print one JSON result on stdout")
    common.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    common.add_argument(
        "-v", "--verbose", action="store_true", help="log each request and retry; tracebacks"
    )

    parser = argparse.ArgumentParser(
        prog="tune-archiver",
        description="Make a complete, verifiable copy of Astria fine-tunes before they expire.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fetch = commands.add_parser(
        "fetch", parents=[common], help="archive tunes: checkpoints, images and a manifest",
        description="Download each tune's checkpoints and training images into the archive "
        "and write its manifest. The API key comes from " + ENV_API_KEY + " or --api-key-file.",
    )
    fetch.add_argument("tune_ids", metavar="TUNE_ID", nargs="+", type=tune_id,
                       help="id of a tune to archive")
    fetch.add_argument("--api-url", metavar="URL",
                       help=f"the API's base URL (env {ENV_API_URL}; default https://api.astria.ai)")
    fetch.add_argument("--api-key-file", metavar="PATH",
                       help=f"read the API key from this file instead of {ENV_API_KEY}")
    fetch.add_argument("--workspace", metavar="ID", help="send X-Workspace-Id: ID to the API")
    fetch.add_argument("--concurrency", metavar="N", type=positive_int,
                       default=DEFAULT_CONCURRENCY,
                       help=f"requests at once, at most (default {DEFAULT_CONCURRENCY})")
    fetch.add_argument("--retries", metavar="N", type=non_negative_int, default=DEFAULT_RETRIES,
                       help=f"retries of a failed request (default {DEFAULT_RETRIES})")
    fetch.add_argument("--read-timeout", metavar="SECONDS", type=positive_float,
                       default=DEFAULT_READ_TIMEOUT,
                       help="give up on a server silent this long (default "
                       f"{DEFAULT_READ_TIMEOUT:g})")
    fetch.add_argument("--force", action="store_true",
                       help="download even when a file is larger than the free space")
    fetch.add_argument("--only", choices=("checkpoints", "images"),
                       help="archive only this kind of file")
    fetch.set_defaults(handler=run_fetch)
    return parser


def tune_id(text: str) -> int:
    """A tune id: a positive integer."""
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a tune id (a positive integer): {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


def main(argv: Sequence[str] | None = None, *, sleep: Sleep | None = None) -> int:
    """Run one command and return its exit code.

    `sleep` replaces the wait between retries (tests inject one that does not wait).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error or the help
        return EXIT_USAGE if exc.code else EXIT_OK
    _configure_logging(args.verbose, args.quiet)
    args.sleep = sleep
    secrets: list[str] = []
    try:
        code: int = args.handler(args, secrets)
        return code
    except ConfigError as exc:
        _error(str(exc), secrets, args.verbose)
        return EXIT_USAGE
    except ArchiverError as exc:
        _error(str(exc), secrets, args.verbose)
        return EXIT_FAILED
    except Interrupted as stop:
        return 128 + stop.signum
    except KeyboardInterrupt:  # a Ctrl-C outside the event loop
        _error("interrupted", secrets)
        return 128 + signal.SIGINT


def run_fetch(args: argparse.Namespace, secrets: list[str]) -> int:
    env = os.environ
    key = load_api_key(args.api_key_file, env)
    secrets.append(key)
    retry = RetryPolicy(retries=args.retries)
    if args.sleep is not None:
        retry = replace(retry, sleep=args.sleep)
    settings = Settings(
        archive=archive_dir(args.archive, env),
        api_key=key,
        api_url=api_url(args.api_url, env),
        workspace=args.workspace,
        concurrency=args.concurrency,
        retry=retry,
        only=args.only,
        read_timeout=args.read_timeout,
        force=args.force,
    )
    progress = progress_for(args.quiet)
    finished: list[TuneResult] = []
    tune_ids = list(dict.fromkeys(args.tune_ids))
    try:
        results = asyncio.run(
            until_signal(archive.fetch(settings, tune_ids, progress, finished=finished))
        )
    except Interrupted as stop:
        progress.close()  # the bar goes before the message
        _report_undone(stop, tune_ids, finished, settings, secrets)
        raise
    finally:
        progress.close()
    if args.json:
        _print_json({"ok": all(r.ok for r in results), "tunes": [tune_json(r) for r in results]},
                    secrets)
    for result in results:
        _report(result, args.quiet or args.json, secrets)
    return EXIT_OK if all(result.ok for result in results) else EXIT_FAILED


async def until_signal(work: Coroutine[Any, Any, T]) -> T:
    """Await `work`; SIGINT or SIGTERM cancels it (its cleanup runs) and raises Interrupted."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await task
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[0]) from None
        raise
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def _report_undone(
    stop: Interrupted,
    tune_ids: list[int],
    finished: list[TuneResult],
    settings: Settings,
    secrets: list[str],
) -> None:
    """One line saying what an interrupted fetch left undone, and where its partials are."""
    done = {result.tune_id for result in finished}
    undone = [str(i) for i in tune_ids if i not in done]
    _error(
        f"stopped by {stop}: {len(done)} of {len(tune_ids)} tunes done; "
        f"not finished: {', '.join(undone) or 'none'}; partial downloads are kept in "
        f"{settings.archive / 'tmp'} for the next run",
        secrets,
    )


def tune_json(result: TuneResult) -> dict[str, Any]:
    """The --json shape of one tune's result (documented in the README)."""
    return {
        "tune_id": result.tune_id,
        "title": result.title,
        "ok": result.ok,
        "error": result.error,
        "manifest": result.manifest,
        "files": len(result.assets),
        "new": sum(1 for r in result.assets if r.ok and not r.reused),
        "already_archived": sum(1 for r in result.assets if r.reused),
        "failed": len(result.failed),
        "bytes": sum(r.blob.size for r in result.assets if r.blob),
        "new_bytes": sum(r.blob.size for r in result.assets if r.blob and not r.reused),
        "seconds": round(result.seconds, 3),
        "failures": [
            {"kind": r.asset.kind, "index": r.asset.index, "url": redact(r.asset.url),
             "error": r.error}
            for r in result.failed
        ],
    }


def _report(result: TuneResult, quiet: bool, secrets: list[str]) -> None:
    """The summary line on stdout (unless quiet) and one error line per failure on stderr."""
    name = f"tune {result.tune_id}" + (f" ({result.title})" if result.title else "")
    if result.error is not None:
        named = result.error.startswith(f"tune {result.tune_id}")  # API errors name it already
        _error(result.error if named else f"{name}: {result.error}", secrets)
    for failure in result.failed:
        _error(f"{name}: {failure.asset.kind} {failure.asset.index}: {failure.error}", secrets)
    if quiet or result.error is not None:
        return
    summary = tune_json(result)
    print(
        f"{name}: {summary['files']} files, {human_bytes(summary['bytes'])} "
        f"({summary['new']} new, {summary['already_archived']} already archived, "
        f"{summary['failed']} failed) in {result.seconds:.1f} s"
    )


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _print_json(value: Any, secrets: list[str]) -> None:
    print(_scrub(json.dumps(value, indent=2, ensure_ascii=False), secrets))


def _error(message: str, secrets: list[str], verbose: bool = False) -> None:
    """One error line on stderr; with -v, the traceback of the error being handled."""
    if verbose and sys.exc_info()[0] is not None:
        traceback.print_exc(file=sys.stderr)
    print(f"tune-archiver: error: {_scrub(message, secrets)}", file=sys.stderr)


def _scrub(text: str, secrets: list[str]) -> str:
    """A last guard: no secret survives into what we print, whatever produced the text."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def _configure_logging(verbose: bool, quiet: bool) -> None:
    """Our log lines on stderr: retries with -v, warnings otherwise, errors only with -q."""
    log.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tune-archiver: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)
    log.propagate = False
