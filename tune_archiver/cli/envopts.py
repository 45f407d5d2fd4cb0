"""Every option from the environment too: TUNE_ARCHIVER_<OPTION> (--read-timeout is
TUNE_ARCHIVER_READ_TIMEOUT), named in --help; an option on the command line wins.

A cron line or a container spec can then set what it always wants once, in the
environment, and keep the command short.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

PREFIX = "TUNE_ARCHIVER_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
# retrain's --title (dest new_title) is the new tune's own, one a run: TUNE_ARCHIVER_TITLE
# is fetch --all's filter, a glob a retrain in that environment would title (and bill) a
# tune with.
_SKIP = frozenset({"help", "version", "new_title"})


def env_name(action: argparse.Action) -> str | None:
    """TUNE_ARCHIVER_<OPTION> for an option that takes one, else None."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    if not longs or action.dest in _SKIP:
        return None
    return PREFIX + longs[0][2:].replace("-", "_").upper()


def _options(
    parser: argparse.ArgumentParser, command: str | None = None, every: bool = True
) -> Iterator[argparse.Action]:
    """The options of the parser and of its commands (every one, or `command`'s)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if every or name == command:
                    yield from _options(sub)
        elif env_name(action) is not None:
            yield action


def switched_on(env: Mapping[str, str], option: str) -> bool:
    """Whether TUNE_ARCHIVER_<OPTION> in `env` turns the switch `option` (`--json`) on:
    for a usage error, which comes before the options are known."""
    return env.get(PREFIX + option[2:].replace("-", "_").upper(), "").strip().lower() in _TRUE


def set_by(parser: argparse.ArgumentParser, args: argparse.Namespace, option: str) -> str:
    """` (TUNE_ARCHIVER_X is set)` when the environment gives the command's `option`
    (`--all`): a usage error about an option the command line never named says where it
    came from. Not when the command line gave it (its value is not apply_env's default),
    or the variable turned a switch off."""
    for action in _options(parser, args.command, every=False):
        name = env_name(action)
        if option in action.option_strings and name and os.environ.get(name, "").strip():
            taken = action.default is not False and getattr(args, action.dest) == action.default
            return f" ({name} is set)" if taken else ""
    return ""


def name_in_help(parser: argparse.ArgumentParser) -> None:
    """Add "(env TUNE_ARCHIVER_X)" to the help of each option."""
    for action in _options(parser):
        name = env_name(action)
        if action.help and name and name not in action.help:
            action.help = f"{action.help} (env {name})"


def apply_env(
    parser: argparse.ArgumentParser, env: Mapping[str, str], command: str | None
) -> None:
    """Make each TUNE_ARCHIVER_<OPTION> set in `env` that option's default, for the
    options every command has and those of `command` (a variable another command
    takes is not this one's concern).

    Options every command shares default to SUPPRESS on the commands (the top
    parser holds their defaults), so only a real default is replaced. A blank value is
    an option not given, as a blank switch is off (and ASTRIA_WORKSPACE_ID unset). Raises the
    parser's usage error, naming the variable but not its value, for a value the
    option would refuse.
    """
    for action in _options(parser, command, every=False):
        name = env_name(action)
        if name is None or name not in env or action.default is argparse.SUPPRESS:
            continue
        if not env[name].strip() and action.nargs != 0:  # a switch takes no value
            continue  # blank: not given (an empty --title would match only empty titles)
        action.default = _value(parser, action, name, env[name])


def _value(parser: argparse.ArgumentParser, action: argparse.Action, name: str,
           text: str) -> object:
    if isinstance(action, argparse._StoreTrueAction):
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        parser.error(f"{name}: not a yes or no (1, true, yes, 0, false, no)")
    if action.choices is not None and text not in action.choices:
        parser.error(f"{name}: not one of {', '.join(map(str, action.choices))}")
    if action.type is None or not callable(action.type):
        return text
    try:
        return action.type(text)
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        reason = str(exc) if isinstance(exc, argparse.ArgumentTypeError) else "not valid"
        parser.error(f"{name}: {reason}")


def command_of(parser: argparse.ArgumentParser, args: Sequence[str]) -> str | None:
    """The command `args` run: the first word naming one that is no option's value
    (`fetch --title serve`, `--archive serve fetch`: fetch), None when none does."""
    names: Any = next((a.choices for a in parser._actions
                       if isinstance(a, argparse._SubParsersAction)), {})
    valued = {option for a in parser._actions if a.nargs != 0 for option in a.option_strings}
    value = False  # the word is the value of the option before it
    for word in args:
        if not value and word in names:
            return word
        value = not value and word in valued
    return None
