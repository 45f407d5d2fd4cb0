"""`retrain` run from the command line: the plan or the tune created said, and a stop
once the API answered said with the tune it made (--json's document too)."""

from __future__ import annotations

import argparse
from typing import Any

from tune_archiver.cli.exits import Exit
from tune_archiver.cli.printing import emit
from tune_archiver.cli.running import Interrupted, in_archive, settings_of


def run_retrain(args: argparse.Namespace, secrets: list[str]) -> int:
    from tune_archiver.commands.retrain import retrain

    settings = settings_of(args, secrets, downloads=False)  # no download: no file limit
    answered: list[dict[str, Any]] = []  # the API's answer, as it comes ({} is one)
    try:
        result = in_archive(args, lambda store: retrain(
            settings, store, args.tune_id, args.yes, args.clock(), args.new_title,
            answered=answered))
    except Interrupted as stop:  # a script reads --json's document: the tune made, named
        if answered:
            stop.done = {"tune_id": args.tune_id, "created": answered[0]}
        raise
    emit(args, secrets, result.errors(), result.as_json(), result.lines())
    return Exit.FAILED if result.lost else Exit.OK
