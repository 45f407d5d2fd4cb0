"""Untrusted text made safe to show: control characters become visible escapes."""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls: ESC and CSI start terminal sequences, CR and LF
# can forge a line, and OSC 52 writes the clipboard.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """The text with every control character shown as \\xNN, so it cannot act on a
    terminal or start a line of its own."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def has_control(text: str) -> bool:
    """True when the text holds a control character (a newline, an escape, ...)."""
    return _CONTROL.search(text) is not None


def human_bytes(count: float) -> str:
    """A size in binary units, as the bar and every summary show it: "512 B", "2.0 GiB"."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def counted(count: int, noun: str) -> str:
    """"1 file", "2 files"."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def time_left(seconds: int | None) -> str:
    """"12d 3h", "5h 10m", "expired", or "-" when the tune has no expiry."""
    if seconds is None:
        return "-"
    if seconds <= 0:
        return "expired"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m"
