"""The script's first instant: a stop while the program starts is said as a later one is.

Importing the program takes about half a second (aiohttp above all). Left to Python, a
Ctrl-C in that time prints a traceback and a SIGTERM (cron's timeout) ends the process
saying nothing. Here either ends it with one line on stderr, --json's document and 128
+ the signal's number, as a stop at any later moment does; after the imports a SIGTERM
raises Interrupted (as a Ctrl-C raises KeyboardInterrupt) until an event loop takes it.
"""

from __future__ import annotations

# Only modules the interpreter has loaded already: whatever this module imports comes
# before entry() installs its handlers (the program's modules, argparse and re among
# them, are imported after).
import contextlib
import os
import signal
import sys
from types import FrameType


class _Stopped(BaseException):
    """A stop signal came while the program was being imported."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


# As exits.STOP_SIGNALS (not imported yet), less SIGHUP under nohup, which ignores it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + (
    () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,))


def entry() -> int:
    """The program: the tune-archiver script and `python -m tune_archiver`."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    try:
        from tune_archiver.cli import main
        from tune_archiver.cli.running import Interrupted
    except _Stopped as stopped:
        return _stopped(stopped.signum)
    # From here a stop is the program's: a Ctrl-C raises KeyboardInterrupt and a SIGTERM
    # Interrupted (each command's event loop takes both while it runs), which main says;
    # one that comes where main does not look (parsing the options, say) is said here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in STOP_SIGNALS[1:]:  # SIGTERM and SIGHUP raise Interrupted
        signal.signal(signum, _interrupt)
    try:
        return main.entry()
    except (Interrupted, KeyboardInterrupt) as stop:
        return _stopped(getattr(stop, "signum", signal.SIGINT))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    from tune_archiver.cli.running import Interrupted

    raise Interrupted(signum)


def _stopped(signum: int) -> int:
    """A stop main could not say (in the imports, or before main looks) said here: one
    line, --json's document, 128 + the signal's number."""
    for stop in STOP_SIGNALS:  # a second stop ends it as the first does
        signal.signal(stop, signal.SIG_IGN)
    import json

    from tune_archiver.cli.envopts import switched_on
    from tune_archiver.cli.exits import for_signal

    name = signal.Signals(signum).name
    # stderr closed (2>&-) is None, and print(file=None) would write the line to
    # stdout, into --json's document (as running.with_streams says).
    with contextlib.suppress(OSError, ValueError):  # a stream closed or its reader gone
        if sys.stderr is not None:
            print(f"tune-archiver: error: stopped by {name}", file=sys.stderr, flush=True)
    printing = sys.modules.get("tune_archiver.cli.printing")  # not imported for this
    printed = printing is not None and printing.document_printed()  # the run's is out
    if not printed and ("--json" in sys.argv[1:] or switched_on(os.environ, "--json")):
        with contextlib.suppress(OSError, ValueError):
            print(json.dumps({"ok": False, "interrupted": True, "signal": name}),
                  flush=True)
    return for_signal(signum)
