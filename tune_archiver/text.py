"""Untrusted text made safe to show: control and format characters become visible escapes."""

from __future__ import annotations

import re
import shlex
import unicodedata

# C0 controls, DEL and C1 controls: ESC and CSI start terminal sequences, CR and LF
# can forge a line, and OSC 52 writes the clipboard.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# What may be hidden (see `hidden`): every character but those known not to be, the
# printable ASCII and U+00A0 to U+05FF less the soft hyphen (U+00AD), checked one by one.
MAYBE_HIDDEN = re.compile(r"[^\x20-\x7e\xa0-\xac\xae-\u05ff]")
# Format characters that ordinary text needs: the joiners of emoji sequences (ZWJ) and
# of Persian and Indic words (ZWNJ), and the tags of subdivision flags.
_JOINERS = frozenset("\u200c\u200d")
_TAGS = range(0xE0020, 0xE0080)


def hidden(char: str) -> bool:
    """True for a character that acts on a terminal or on how a line reads, instead of
    showing itself: C0, DEL and C1 controls; format characters (Unicode category Cf:
    the bidirectional controls U+202A-U+202E and U+2066-U+2069 that reorder a line,
    the marks U+200E, U+200F and U+061C, zero-width spaces, U+FEFF) but those ordinary
    text needs; line and paragraph separators; and lone surrogates, which no terminal
    encoding can print."""
    if _CONTROL.match(char):
        return True
    category = unicodedata.category(char)
    if category == "Cf":
        return char not in _JOINERS and ord(char) not in _TAGS
    return category in ("Zl", "Zp", "Cs")


def escape(char: str) -> str:
    """A character as a visible escape: \\xNN, \\uNNNN or \\UNNNNNNNN."""
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def json_escaped(text: str) -> str:
    """A JSON text with every hidden character json.dumps leaves raw (ensure_ascii=False)
    written as a \\uXXXX escape: DEL and C1 controls (CSI U+009B starts a terminal
    sequence as ESC [ does), bidirectional and other format characters. A parser reads
    the same text back."""
    return MAYBE_HIDDEN.sub(lambda found: _json_escape(found.group()), text)


def _json_escape(char: str) -> str:
    """A hidden character as \\uXXXX (beyond U+FFFF, the two escapes of its UTF-16
    pair); any other as it is. C0 is left alone: in the document's strings json.dumps
    escaped it already, and the newlines between its lines are its own."""
    if char < " " or not hidden(char):
        return char
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def visible(text: str) -> str:
    """The text with every hidden character (see `hidden`) shown as an escape (\\x1b,
    \\u202e), so it can neither act on a terminal, start a line of its own, nor
    reorder what a line shows. Accented letters, CJK and emoji are kept as they are."""
    return MAYBE_HIDDEN.sub(
        lambda found: escape(found.group()) if hidden(found.group()) else found.group(), text
    )


def shell_word(text: str) -> str:
    """The text as one word of a command a line says to run, which a line shows whole:
    shlex's quoting, or for text a line shows escaped (a tab, an ESC, U+202E) printf's
    octal escapes of its bytes, "$(printf -- '\\011')": bash's $'...' is no word of
    cron's /bin/sh (dash reads '$' and the escapes, another path), '...' neither."""
    if visible(text) == text:
        return shlex.quote(text)
    escaped = text.replace("\\", "\\\\").replace("%", "%%").replace("'", "'\\''")
    return "\"$(printf -- '" + MAYBE_HIDDEN.sub(lambda found: "".join(
        f"\\{byte:03o}" for byte in found.group().encode("utf-8", "surrogateescape")
    ) if hidden(found.group()) else found.group(), escaped) + "')\""


def columns(text: str) -> int:
    """The columns a terminal gives the text: two for a wide character (CJK, most
    emoji), none for a combining mark, a joiner or a variation selector, else one."""
    return sum(_columns(char) for char in text)


def _columns(char: str) -> int:
    if (unicodedata.combining(char) or char in _JOINERS or ord(char) in _TAGS
            or "\ufe00" <= char <= "\ufe0f"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def clipped(text: str, width: int) -> str:
    """The text in at most `width` columns: cut, with "…" at its end, when it is wider."""
    if columns(text) <= width:
        return text
    kept, used = [], 0
    for char in text:
        used += _columns(char)
        if used > width - 1:
            break
        kept.append(char)
    return "".join(kept) + "…"


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
    """"12d 3h", "5h 10m", "under a minute" (not "0h 0m", read as none left), "expired",
    or "-" when the tune has no expiry."""
    if seconds is None:
        return "-"
    if seconds <= 0:
        return "expired"
    if seconds < 60:
        return "under a minute"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m"
