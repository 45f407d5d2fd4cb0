"""A usage error said: its one line, the hint to the command's --help, --json's
document, and for a command that takes --ping-url the monitor's fail ping. A cron line
that no longer parses (an option mistyped or renamed, a TUNE_ARCHIVER_<OPTION> set
wrong) fails every night: the monitor is told at once, as of any other exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tune_archiver.cli import report
from tune_archiver.cli.envopts import switched_on
from tune_archiver.cli.exits import Exit
from tune_archiver.cli.printing import print_error, print_json
from tune_archiver.cli.running import ping_url_of, send_ping
from tune_archiver.errors import ConfigError

PINGED = ("fetch", "verify", "retrain")  # the commands that take --ping-url


def said_usage_error(message: str, words: Sequence[str], command: str | None) -> int:
    """Say the usage error `message` of `command` (None when no command was named), tell
    the monitor; exit 2."""
    print_error(message, [])
    hint = f"see tune-archiver {command + ' ' if command else ''}--help"
    print(hint, file=sys.stderr)  # noqa: T201 (a hint, not an error line)
    if "--json" in words or switched_on(os.environ, "--json"):
        print_json({"ok": False, "error": message}, [])
    if command in PINGED:
        try:  # --ping-url as given, else TUNE_ARCHIVER_PING_URL
            url = ping_url_of(argparse.Namespace(ping_url=_given(words, "--ping-url")))
        except ConfigError:  # a ping URL that is no URL: none to tell
            return Exit.USAGE
        if url:
            send_ping(url, "fail", report.ping_summary(command, Exit.USAGE, None))
    return Exit.USAGE


def _given(words: Sequence[str], option: str) -> str | None:
    """The value the command line gives `option` (`--ping-url URL`, `--ping-url=URL`)."""
    for at, word in enumerate(words):
        if word == option and at + 1 < len(words):
            return words[at + 1]
        if word.startswith(option + "="):
            return word.partition("=")[2]
    return None
