"""Every line a command prints: stdout's lines and --json's document, stderr's errors.

Each goes through terminal.py (escaped, scrubbed of secrets, its URLs redacted); an
error line goes to --log-file too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from tune_archiver.cli import eventlog, terminal
from tune_archiver.cli.eventlog import event
from tune_archiver.cli.running import stdout_failed, stream_gone

log = logging.getLogger("tune_archiver")
# --json's one document is out: a stop after it (cron's timeout while the log's last
# line is written, say) prints no second one, here or in start.py.
_document_printed = False


def new_run() -> None:
    """A run begins with no document printed (the tests run several in one process)."""
    global _document_printed
    _document_printed = False


def document_printed() -> bool:
    return _document_printed


def said_skipping_hashes(skipping: bool) -> None:
    """The bench-only switch that skips hashing (digest.SKIP_HASH), said even with -q:
    left in a cron's environment, fetch's and verify --repair's "ok" would hold nothing."""
    if skipping:
        log.error("TUNE_ARCHIVER_BENCH_SKIP_HASH is set: blobs are named by their size, "
                  "not their sha256; it is for benchmarks only, unset it")


def emit(
    args: argparse.Namespace, secrets: list[str], errors: Sequence[str], as_json: Any,
    lines: Sequence[str], stopped: BaseException | None = None,
) -> None:
    """A command's output: error lines on stderr (the error that `stopped` it last, with
    -v its traceback), then --json or the lines (unless -q).

    Each line is escaped on its own: a CR or LF inside one is shown, never obeyed."""
    for line in errors:
        print_error(line, secrets)
    if stopped is not None:
        print_error(str(stopped), secrets, getattr(args, "verbose", False), stopped)
    if args.json:
        print_json(as_json, secrets)
    elif not args.quiet:
        for line in lines:
            print_out(terminal.shown(line, secrets))


def print_json(value: Any, secrets: list[str], flush: bool = False) -> None:
    text = terminal.json_text(value, secrets)
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except UnicodeEncodeError:  # stdout's backslashreplace ('\\xe9') is no JSON escape
        text = terminal.json_text(value, secrets, ascii_only=True)
    global _document_printed
    print_out(text, flush)
    _document_printed = True


def print_out(text: str, flush: bool = False) -> None:
    """One line on stdout. A reader that has gone (`list | head`, a log pipe that died)
    or a full disk under `>> run.log` costs the rest of the output, never the run: a
    tune's summary line raising BrokenPipeError (or ENOSPC) stopped the backup. stdout
    then goes to /dev/null."""
    try:
        print(text, flush=flush)
    except OSError as error:
        stdout_failed(error)


def print_error(message: str, secrets: list[str], verbose: bool = False,
                error: BaseException | None = None) -> None:
    """One error line on stderr; with -v, the traceback of `error` (else of the one being
    handled), redacted, scrubbed and escaped as every other line. --log-file records it too;
    --log-file - records it in place of the line. A stderr that cannot be written
    costs the line, never the run."""
    if log.handlers:  # configured: before, Python's last-resort handler would print it
        log.error("%s", message, extra=event("failure"))
    if any(isinstance(h, eventlog.JsonLines) and h.stream is sys.stderr for h in log.handlers):
        return
    try:
        error = error if error is not None else sys.exc_info()[1]
        if verbose and error is not None:
            print(terminal.traceback_text("".join(traceback.format_exception(error)), secrets),
                  file=sys.stderr)
        print(f"tune-archiver: error: {terminal.shown(message, secrets)}", file=sys.stderr)
    except OSError:  # its reader gone (EPIPE), a terminal hung up (EIO): as print_out's,
        stream_gone(sys.stderr)  # the line is lost, never the run (it stopped every tune)
