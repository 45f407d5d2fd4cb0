"""The resume record beside a partial download (its sidecar .json): read back and
checked, so a damaged or planted one is ignored and the file simply starts over."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune_archiver.safefs import open_own

MAX_SIDECAR = 2**20  # a sidecar is a few hundred bytes; more is not one we wrote
MAX_VALIDATOR = 1024  # an ETag or Last-Modified longer than this is no header we sent
# Set in every record: its validator passed transport.validator_of, so a Last-Modified
# in it was settled against its answer's Date. A record without it is an earlier
# version's, whose Last-Modified may be of the very second the file changed.
SETTLED = "settled"
Span = list[int]  # [start, pos, end]: bytes [start, pos) are on disk, [pos, end) are to come


def boot_id() -> str:
    """This boot's id: a partial written in another boot may have lost unsynced bytes."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""

def is_usable(state: dict[str, Any], key: str) -> bool:
    """True when a sidecar is one this code wrote for `key`: a damaged one (wrong types,
    a validator that could not be sent as a header) is ignored and the file starts over.
    So is one whose validator is not a quoted ETag and was recorded before Last-Modified
    had to be SETTLED (an earlier version took any date: a file changed twice within
    its second shows one date for both, and If-Range would splice the two). A record
    without a validator is usable only for a file received whole (see resumable)."""
    validator, total, synced = state.get("validator"), state.get("total"), state.get("synced", 0)
    return (
        state.get("url") == key
        and ((validator is None and _count(total)) or _header_value(validator))
        and (validator is None or str(validator).startswith('"') or state.get(SETTLED) is True)
        and (total is None or _count(total))
        and _count(synced)
    )

def _header_value(value: Any) -> bool:
    """True for a string that could have come in a response header."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_VALIDATOR and value.isascii()
            and value.isprintable())

def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0

def valid_spans(value: Any, total: Any, length: int) -> list[Span] | None:
    """Spans from a sidecar, if they tile [0, total) and claim no byte past the file's end."""
    if not isinstance(value, list) or not value or not isinstance(total, int):
        return None
    spans, expected = [], 0
    for span in value:
        if not (isinstance(span, list) and len(span) == 3 and all(
                isinstance(n, int) and not isinstance(n, bool) for n in span)):
            return None
        start, pos, end = span
        if start != expected or not start <= pos <= end or (pos > start and pos > length):
            return None
        spans.append([start, pos, end])
        expected = end
    return spans if expected == total else None

def read_record(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        fd = open_own(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO never blocks us
        with os.fdopen(fd, "rb") as file:
            value = json.loads(file.read(MAX_SIDECAR))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Resumable:
    """What an earlier run's record vouches for: the bytes on disk, how to ask for the rest."""

    size: int  # bytes usable, from the first (or in the spans)
    validator: str | None  # None only for a file received whole: nothing is asked for
    total: int | None
    spans: list[Span] | None
    content_type: str | None = None  # as served, recorded for a file kept whole
    # (n, sha256 of bytes [0, n)) as the run that kept them hashed them, when recorded:
    # bytes a damaged disk changed since are never taken for those received.
    prefix: tuple[int, str] | None = None


def resumable(path: Path, key: str, length: int) -> Resumable | None:
    """What the sidecar at `path` vouches for in a partial of `length` bytes; None when
    nothing (the file starts over). After a reboot only fsynced bytes count."""
    state = read_record(path)
    if state is None or not is_usable(state, key):
        return None
    this_boot = boot_id()  # unknown (no /proc): as if another boot, only fsynced bytes count
    same_boot = bool(this_boot) and state.get("boot_id") == this_boot
    spans = valid_spans(state.get("spans" if same_boot else "synced_spans"),
                        state.get("total"), length)
    if spans is not None:
        usable = sum(pos - start for start, pos, _ in spans)
    elif "spans" in state:
        return None  # a split file has holes: its length proves nothing
    else:
        trusted = length if same_boot else state.get("synced", 0)
        usable = trusted if isinstance(trusted, int) and 0 < trusted <= length else 0
    if not usable or (state["validator"] is None and usable != state["total"]):
        return None  # without a validator, nothing may be asked for the rest of a file
    served = state.get("content_type")
    content_type = served if _header_value(served) else None  # else sniffed at the commit
    return Resumable(usable, state["validator"], state.get("total"), spans, content_type,
                     _prefix(state.get("prefix"), prefix_end(spans) if spans else usable))


def _prefix(value: Any, contiguous: int) -> tuple[int, str] | None:
    """A recorded [n, sha256] of bytes still on disk; None when none or past them (a
    reboot keeps only the fsynced bytes: what is left is not the bytes it hashed)."""
    if not (isinstance(value, list) and len(value) == 2 and _count(value[0])
            and 0 < value[0] <= contiguous and isinstance(value[1], str)):
        return None
    return value[0], value[1]


def record(key: str, validator: str | None, total: int | None, synced: int,
           spans: list[Span] | None, synced_spans: list[Span] | None,
           content_type: str | None = None, prefix: tuple[int, str] | None = None) -> bytes:
    """A sidecar's bytes: what resuming needs, as resumable reads it back."""
    state: dict[str, Any] = {
        "url": key, "validator": validator, "total": total, "synced": synced,
        "boot_id": boot_id(), SETTLED: True,
    }
    if content_type is not None:
        state["content_type"] = content_type
    if prefix is not None:
        state["prefix"] = list(prefix)
    if spans is not None:
        state["spans"] = spans
        state["synced_spans"] = synced_spans
    return json.dumps(state).encode()


def prefix_end(spans: list[Span]) -> int:
    """Where the bytes on disk stop being contiguous from the first."""
    end = 0
    for _, pos, stop in spans:
        end = pos
        if pos < stop:
            break
    return end
