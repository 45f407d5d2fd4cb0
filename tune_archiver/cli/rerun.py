"""The options a command a line tells the user to run needs to repeat this run's: the
archive (running.archive_option), and what reached the API. Pasted by hand, from a
shell that is not the cron line's, `fetch 1 --archive A` had no key ("no API key") or
asked in the personal scope, where a workspace's tune is not listed."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat

from tune_archiver.astria.cli_config import ENV_PROFILE, ENV_WORKSPACE
from tune_archiver.cli.running import archive_option
from tune_archiver.config import ENV_API_URL
from tune_archiver.text import shell_word


def rerun_options(args: argparse.Namespace) -> str:
    """` --archive A --api-key-file F --profile P --workspace W --api-url U
    --allow-private-redirects`, each one the run was given (an option, its
    TUNE_ARCHIVER_<OPTION>, or ASTRIA_API_URL, ASTRIA_WORKSPACE_ID, ASTRIA_PROFILE),
    quoted for the shell. Never the key: the key
    file's absolute path names it; ASTRIA_API_KEY stays in the environment."""
    env = os.environ
    given = {
        "--api-key-file": _key_file(args),
        "--profile": getattr(args, "profile", None) or env.get(ENV_PROFILE, "").strip(),
        "--workspace": getattr(args, "workspace", None) or env.get(ENV_WORKSPACE, "").strip(),
        "--api-url": getattr(args, "api_url", None) or env.get(ENV_API_URL, "").strip(),
    }
    # A run that followed a redirect into a private address: pasted without it, refused.
    allow = " --allow-private-redirects" if getattr(args, "allow_private_redirects", False) else ""
    return archive_option(args) + "".join(
        f" {option} {shell_word(value)}" for option, value in given.items() if value) + allow


def _key_file(args: argparse.Namespace) -> str | None:
    """The key file's absolute path when it is a regular file: a pipe's (`<(pass show
    astria)`, /dev/stdin) is no file of the shell the command is pasted into ("cannot
    read the API key file /dev/fd/63", exit 2, though ASTRIA_API_KEY was set there)."""
    path: str | None = getattr(args, "api_key_file", None)
    with contextlib.suppress(OSError, ValueError):
        if path is not None and stat.S_ISREG(os.stat(path).st_mode):
            return os.path.abspath(path)
    return None
