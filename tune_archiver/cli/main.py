"""The command line's shell: the one place that prints, picks exit codes and calls
asyncio.run. The grammar is in parser.py; what is printed is shaped in report.py
(upkeep.py for gc, export and forget)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tune_archiver.cli import printing, report, table, terminal, upkeep
from tune_archiver.cli.envopts import apply_env, command_of
from tune_archiver.cli.eventlog import event
from tune_archiver.cli.exits import Exit, for_error, for_signal
from tune_archiver.cli.parser import UsageError, build_parser, check_fetch
from tune_archiver.cli.printing import emit, print_error, print_json, print_out
from tune_archiver.cli.rerun import rerun_options
from tune_archiver.cli.retraining import run_retrain
from tune_archiver.cli.running import (
    Interrupted,
    configure_logging,
    fit_open_files,
    in_archive,
    known_keys,
    ping_url_of,
    raise_open_files_limit,
    send_ping,
    settings_of,
    until_signal,
    waiting_for,
    with_streams,
)
from tune_archiver.cli.scale import AUTO, check_forget, filters_of, shard_from_env
from tune_archiver.cli.usage import said_usage_error
from tune_archiver.cli.verdict import said_if_stopped, said_repaired, said_verified
from tune_archiver.commands import fetch as archive
from tune_archiver.commands.fetch import Clock, utc_now
from tune_archiver.config import AllTunes, Settings, archive_dir, home_path
from tune_archiver.digest import SKIP_HASH
from tune_archiver.download.staging import staging_for
from tune_archiver.errors import ArchiverError, ConfigError, ListingBrokeOff
from tune_archiver.models import TuneResult
from tune_archiver.progress import above_bar, progress_for
from tune_archiver.store import Store

# The other commands' modules (and aiohttp's server) are imported when their command
# runs: a fetch from cron need not load them, and startup is much of a small run.
if TYPE_CHECKING:
    from tune_archiver.commands.repair import RepairReport
    from tune_archiver.commands.verify import VerifyReport

__all__ = ["Interrupted", "main", "settings_of", "until_signal"]
EXIT_OK, EXIT_FAILED, EXIT_USAGE = Exit.OK, Exit.FAILED, Exit.USAGE
Sleep = Callable[[float], Awaitable[None]]
log = logging.getLogger("tune_archiver")


def entry() -> int:
    """The program: the tune-archiver script and `python -m tune_archiver`."""
    # What the imports made lives as long as the process: frozen, no collection walks it
    # again; the young generation collected every 10,000 allocations, not 700: a run of
    # small downloads allocates in bursts that refcounting frees.
    gc.freeze()
    gc.set_threshold(10_000)
    raise_open_files_limit()
    return with_streams(main)


def main(
    argv: Sequence[str] | None = None, *, sleep: Sleep | None = None, clock: Clock = utc_now
) -> int:
    """Run one command and return its exit code.

    `sleep` replaces the wait between retries (tests inject one that does not wait);
    `clock` gives "now" for --expiring-within and list (tests inject a fixed one).
    """
    printing.new_run()  # no --json document printed yet: a stop prints one
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        apply_env(parser, os.environ, command_of(parser, words))
        args = parser.parse_args(words)
        if args.command == "fetch":
            check_fetch(parser, args)
        if args.command == "forget":
            check_forget(parser, args)
    except UsageError as exc:
        named = command_of(parser, words)
        return said_usage_error(str(exc), words, named)
    except SystemExit as exc:  # argparse has printed the help or the version
        return Exit.USAGE if exc.code else Exit.OK
    # Every command scrubs the keys it can see: an older version's manifest may hold one.
    secrets = known_keys(args, os.environ)
    args.sleep, args.clock = sleep, clock
    try:
        configure_logging(args, secrets)
    except ConfigError as exc:  # no log to record it in; the monitor is told all the same
        code = _refused(args, exc, secrets)
        try:
            ping_url = ping_url_of(args)
        except ConfigError:  # a ping URL that is no URL: none to tell
            return code
        return _ended(args, secrets, ping_url, code, None) if ping_url else code
    log.debug("%s started", args.command, extra=event("run_start", command=args.command))
    code = _pinged(args, secrets)
    log.debug("%s ended: exit %d", args.command, code,
              extra=event("run_end", command=args.command, exit=int(code)))
    for handler in log.handlers:
        handler.close()
    log.handlers.clear()
    return code


def _pinged(args: argparse.Namespace, secrets: list[str]) -> int:
    """The command, with --ping-url's start, success and fail pings around it."""
    try:
        ping_url = ping_url_of(args)
    except ConfigError as exc:  # after run_start: the log's run_end says exit 2 too
        return _refused(args, exc, secrets)
    stopped = send_ping(ping_url, "start") if ping_url else None
    if ping_url and stopped:  # the run never began: said, --json's, run_end; and /fail
        code = _interrupted(args, stop := Interrupted(stopped), secrets)
        return _ended(args, secrets, ping_url, code, f"stopped by {stop}")
    args.summary = None  # what a fail ping says: set by the command, counts and ids only
    code = _run(args, secrets)
    return _ended(args, secrets, ping_url, code, args.summary) if ping_url else code


def _ended(args: argparse.Namespace, secrets: list[str], ping_url: str, code: int,
           summary: str | None) -> int:
    """The run's exit code, once --ping-url is told it: success, or fail with `summary`.
    A stop before the ping's loop took the signal is said as any stop is (143)."""
    try:
        if code == Exit.OK:
            send_ping(ping_url, "success")
        else:
            send_ping(ping_url, "fail", report.ping_summary(args.command, code, summary))
    except Interrupted as stop:
        return _interrupted(args, stop, secrets)
    return code


def _refused(args: argparse.Namespace, exc: ArchiverError, secrets: list[str],
             code: int = Exit.USAGE, verbose: bool = False,
             done: dict[str, object] | None = None) -> int:
    """An error that ended the run: one line (with -v its traceback), --json's document
    (with what was `done` before it: fetch's tunes finished, its --all's workspace)."""
    print_error(str(exc), secrets, verbose)
    if args.json and not printing.document_printed():
        print_json({"ok": False, "error": str(exc), **(done or {})}, secrets)
    return code


def _run(args: argparse.Namespace, secrets: list[str]) -> int:
    """The command, its errors turned into one line (and --json's one document)."""
    try:
        return HANDLERS[args.command](args, secrets)
    except ArchiverError as exc:
        return _refused(args, exc, secrets, for_error(exc), args.verbose)
    except Interrupted as stop:
        return _interrupted(args, stop, secrets)
    except KeyboardInterrupt:  # a Ctrl-C outside the event loop
        return _interrupted(args, Interrupted(signal.SIGINT), secrets)


def _interrupted(args: argparse.Namespace, stop: Interrupted, secrets: list[str]) -> int:
    """A run stopped by SIGINT or SIGTERM: its line, --json's document, 130 or 143."""
    if not stop.said and args.command != "serve":  # serve ends so; a cron timeout is said
        print_error(f"stopped by {stop}", secrets)
    if args.json and not printing.document_printed():  # serve's, say, is printed as it starts
        print_json({"ok": False, "interrupted": True, "signal": str(stop), **stop.done},
                   secrets)
    return for_signal(stop.signum)


# -- fetch ---------------------------------------------------------------------------


def run_fetch(args: argparse.Namespace, secrets: list[str]) -> int:
    settings = settings_of(args, secrets)
    shard = shard_from_env(os.environ) if args.shard == AUTO else args.shard
    tunes: list[int] | AllTunes = (
        AllTunes(args.expiring_within, shard, filters_of(args)) if args.all
        else list(dict.fromkeys(args.tune_ids))
    )
    if args.dry_run:
        return _run_dry(args, settings, tunes, secrets)
    printing.said_skipping_hashes(SKIP_HASH)
    progress = progress_for(args.quiet)
    finished: list[TuneResult] = []
    scope = report.scope_of(settings.workspace, tunes)  # each --all document names it

    def announce(result: TuneResult) -> None:
        """Say how a tune went the moment it is done, so a stopped run has said it."""
        log.debug("tune %d: done", result.tune_id, extra=event(
            "tune_end", tune_id=result.tune_id, ok=result.ok, error=result.error,
            files=len(result.assets), failed=len(result.failed), skipped=result.skipped))
        with above_bar():
            _tune_lines(args, result, secrets)

    broke: ListingBrokeOff | None = None
    try:
        results = asyncio.run(until_signal(archive.fetch(
            settings, tunes, progress, clock=args.clock, finished=finished,
            waiting=waiting_for("gc, forget or verify --repair", str(settings.archive)),
            announce=announce,
        )))
    except ListingBrokeOff as exc:  # the tunes taken up were archived: said, and exit 1
        broke, results = exc, exc.results
        progress.close()
        print_error(str(exc), secrets, args.verbose)
    except ArchiverError as exc:  # a key rejected, the API out of reach: the run stops, and
        progress.close()  # the tunes archived before are said, in --json and the ping too
        args.summary = report.tune_counts(finished, "the run stopped") if finished else None
        return _refused(args, exc, secrets, for_error(exc), args.verbose,
                        report.fetch_stopped_json(finished, scope, bool(finished)))
    except Interrupted as stop:
        progress.close()  # the bar goes before the message
        asked = None if isinstance(tunes, AllTunes) else tunes
        print_error(report.undone(str(stop), asked, finished,
                                  str(staging_for(settings.archive))), secrets)
        stop.said = True
        stop.done = report.fetch_stopped_json(finished, scope)
        args.summary = report.tune_counts(finished, f"stopped by {stop}")
        raise
    finally:
        progress.close()
    if args.json:
        print_json(report.fetch_json(results, broke, scope), secrets)
    args.summary = report.tune_counts(results, "the listing broke off" if broke else None)
    if isinstance(tunes, AllTunes) and not results:
        log.warning("%s", report.nothing_selected(tunes, scope))
    return EXIT_OK if broke is None and all(r.ok for r in results) else EXIT_FAILED


def _tune_lines(args: argparse.Namespace, result: TuneResult, secrets: list[str]) -> None:
    """A finished tune's error and warning lines (stderr) and its summary (stdout), flushed."""
    # The options are looked up (a stat of the key file) only for a tune with a failure.
    also = rerun_options(args) if result.error is not None or result.failed else ""
    for line in report.fetch_errors(result, also):
        print_error(line, secrets)
    for line in report.fetch_warnings(result):
        log.warning("warning: %s", line)
    summary = report.fetch_summary(result)
    if summary and not (args.quiet or args.json):
        print_out(terminal.shown(summary, secrets), flush=True)


def _run_dry(
    args: argparse.Namespace, settings: Settings, tunes: list[int] | AllTunes,
    secrets: list[str],
) -> int:
    from tune_archiver.cli import preview
    from tune_archiver.commands.dry_run import dry_run

    previews = asyncio.run(until_signal(dry_run(settings, tunes, args.clock)))
    scope = report.scope_of(settings.workspace, tunes)  # --all's, as fetch's says
    emit(args, secrets, preview.errors(previews), preview.as_json(previews, scope),
         preview.lines(previews))
    if isinstance(tunes, AllTunes) and not previews:  # as the fetch it previews says it
        log.warning("%s", report.nothing_selected(tunes, scope))
    return EXIT_OK if all(p.ok for p in previews) else EXIT_FAILED


# -- verify, list, export, gc ----------------------------------------------------------


def run_verify(args: argparse.Namespace, secrets: list[str]) -> int:
    from tune_archiver.commands.repair import RepairReport, fetches, repair
    from tune_archiver.commands.verify import verify

    printing.said_skipping_hashes(SKIP_HASH and args.repair)  # a repair fetches as fetch does
    progress = progress_for(args.quiet or args.json, items="blobs")
    seen: list[VerifyReport] = []  # what verify found: said if a stop cuts the repair short
    doing = RepairReport()  # what the repair did so far: said then too

    async def work(store: Store) -> tuple[VerifyReport, RepairReport | ArchiverError | None]:
        seen.append(found := await verify(store, args.tune_ids, progress))
        if not args.repair:
            return found, None
        fit, stopped = None, None  # no key nor API asked for till a tune is to be fetched
        try:  # again (said then)
            fit = settings_of(args, secrets, downloads=False)
            fit = fit_open_files(fit) if fetches(found) else fit  # it downloads
        except ConfigError as exc:  # what downloads nothing is still mended, put back, set
            stopped = exc  # aside; said after what verify and the repair found
        where = archive_dir(args.archive, os.environ)
        try:  # a key rejected, the API out of reach: said after what verify found
            return found, await repair(store, found, fit, staging_for(where), progress, args.clock,
                                       waiting_for("fetch, gc or forget", where), stopped,
                                       doing)
        except ArchiverError as exc:
            return found, exc

    with said_if_stopped(args, secrets, progress, seen, doing):
        found, mended = in_archive(args, work)
    if mended is None or isinstance(mended, ArchiverError):
        return said_verified(args, secrets, found, mended)
    return said_repaired(args, secrets, found, mended)


def run_list(args: argparse.Namespace, secrets: list[str]) -> int:
    from tune_archiver.commands.listing import archived_tunes

    rows = in_archive(args, lambda store: archived_tunes(store, args.clock()))
    errors = [f"tune {row['tune_id']}: {row['error']}" for row in rows if "error" in row]
    emit(args, secrets, errors, {"tunes": rows}, table.list_table(rows, secrets))
    return EXIT_FAILED if errors else EXIT_OK


def run_export(args: argparse.Namespace, secrets: list[str]) -> int:
    from tune_archiver.commands.export import export_tune

    dest = Path(home_path(args.dest, os.environ))  # "~/astria-export" quoted in a cron line
    result = in_archive(
        args, lambda store: export_tune(store, args.tune_id, dest, args.link, args.layout, secrets)
    )
    errors = [f"tune {args.tune_id}: {line}" for line in result.failed]
    gone = [f"tune {args.tune_id}: {line}" for line in result.gone]
    emit(args, secrets, errors, upkeep.export_json(result),
         [*gone, upkeep.export_summary(result)])
    return EXIT_OK if result.ok else EXIT_FAILED


def run_serve(args: argparse.Namespace, secrets: list[str]) -> int:
    from tune_archiver.web.access import parse_bind, token_for
    from tune_archiver.web.server import serve

    host, port = parse_bind(args.bind)
    token = token_for(host, args.token_file)
    # Scrubbed from every line as the key is (aiohttp's errors quote a request's
    # Authorization line); said once, at the start, to whoever ran us.
    said = list(secrets)
    secrets.append(token)

    def started(url: str) -> None:
        # The token opens the archive: it is said only to whoever ran us. --json's one
        # document is this (a Ctrl-C, serve's usual end, adds none), the token apart: a
        # URL in a document is redacted.
        if args.json:
            print_json({"ok": True, "serving": url,
                        "token": None if args.token_file else token}, said, flush=True)
        elif not args.quiet or not args.token_file:  # a fresh token is said even with -q:
            link = url if args.token_file else f"{url}?token={token}"  # else none knows it
            print_out(f"serving {terminal.own_link(link, said)} (read-only; Ctrl-C stops)",
                      flush=True)

    in_archive(args, lambda store: serve(store, host, port, token, args.clock, started, said))
    return EXIT_OK


def run_gc(args: argparse.Namespace, secrets: list[str]) -> int:
    from tune_archiver.cli.verdict import said_if_gc_stopped
    from tune_archiver.commands.gc import GcReport, collect

    location, found = archive_dir(args.archive, os.environ), GcReport()
    with said_if_gc_stopped(args, secrets, found):
        in_archive(args, lambda store: collect(
            store, args.clock(), args.dry_run, staging_for(location),
            waiting=waiting_for("fetch, forget or verify --repair", location), report=found))
    emit(args, secrets, found.failed, upkeep.gc_json(found, args.dry_run),
         upkeep.gc_lines(found, args.dry_run))
    return EXIT_FAILED if found.failed else EXIT_OK


def run_forget(args: argparse.Namespace, secrets: list[str]) -> int:
    from tune_archiver.commands.forget import forget

    location = archive_dir(args.archive, os.environ)
    found = in_archive(args, lambda store: forget(
        store, args.tune_ids, args.keep_within, args.clock(), args.dry_run,
        waiting=waiting_for("fetch, gc or verify --repair", location), archive=location))
    errors = [f"tune {tune_id}: not in the archive" for tune_id in found.unknown]
    errors += [why for _, why in found.failed]
    emit(args, secrets, errors, upkeep.forget_json(found, args.dry_run),
         upkeep.forget_lines(found, args.dry_run))
    return EXIT_OK if found.ok else EXIT_FAILED


HANDLERS: dict[str, Callable[[argparse.Namespace, list[str]], int]] = {
    "fetch": run_fetch, "verify": run_verify, "list": run_list, "export": run_export,
    "retrain": run_retrain, "gc": run_gc, "serve": run_serve, "forget": run_forget,
}
