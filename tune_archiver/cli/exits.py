"""The exit codes, kept in one place: what each means, and which error gives which.

    0    everything asked for is archived (verify: all intact)
    1    some file or tune failed; what was done is kept and the failures named
    2    usage or configuration: a bad option, an archive that cannot be one, no key
    3    the API rejected the key (401 or 403 from the API itself)
    4    the API or the storage could not be reached after every retry: nothing done
    129  stopped by SIGHUP (a terminal or ssh session closed); 130 interrupted by SIGINT
         (Ctrl-C); 143 stopped by SIGTERM (128 + the signal)
"""

from __future__ import annotations

import signal
from enum import IntEnum

from tune_archiver.errors import (
    ArchiverError,
    AuthError,
    ConfigError,
    ConnectError,
    ReadTimeout,
    Unreachable,
)


class Exit(IntEnum):
    """An exit code of tune-archiver; README's table lists the same."""

    OK = 0
    FAILED = 1
    USAGE = 2
    AUTH = 3
    UNREACHABLE = 4
    HUNG_UP = 128 + signal.SIGHUP
    INTERRUPTED = 128 + signal.SIGINT
    TERMINATED = 128 + signal.SIGTERM


def for_error(exc: ArchiverError) -> Exit:
    """The exit code for an error that stopped the whole run."""
    if isinstance(exc, ConfigError):
        return Exit.USAGE
    if isinstance(exc, AuthError):
        return Exit.AUTH
    if isinstance(exc, ConnectError | ReadTimeout | Unreachable):
        return Exit.UNREACHABLE
    return Exit.FAILED


# Each stops a run, said, at any moment. SIGHUP too (a terminal or an ssh session closed
# under a run by hand, systemd's SendSIGHUP): it killed the run without a word, no fail
# ping, no run_end. Unless ignored as the program starts (nohup): then it stays ignored.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def for_signal(signum: int) -> int:
    """128 + the signal's number, as a shell reports a process a signal stopped."""
    return 128 + signum
