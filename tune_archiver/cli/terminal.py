"""What reaches the terminal: every line made safe to show, whoever wrote its text.

Titles, URLs and error texts come from servers. Printed raw, an escape sequence
could clear the screen or write the clipboard (OSC 52), and a CR or LF could forge
a line of its own ("0 failed"), a bidirectional control could reorder one to read
so; an error text may quote a presigned URL. So every line is scrubbed of secrets,
every URL in it is redacted (as --log-file's lines are), and its control and format
characters are shown as escapes (text.visible); main.py prints nothing that has not
come through here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from tune_archiver.scrub import cleaned, cleaned_json, scrub
from tune_archiver.text import json_escaped, visible


def shown(text: str, secrets: Sequence[str]) -> str:
    """One printable line: secrets scrubbed, every URL in it redacted, control and
    format characters (CR, LF, U+202E included) shown as escapes, so it can neither act
    on a terminal, start a line of its own, nor be reordered."""
    return visible(cleaned(text, secrets))


def own_link(link: str, secrets: Sequence[str]) -> str:
    """A link of our own making that is meant to be used whole (serve's `?token=`, said
    only to whoever ran us): escaped and scrubbed as any line, but not redacted."""
    return visible(scrub(link, secrets))


def traceback_text(text: str, secrets: Sequence[str]) -> str:
    """A traceback (-v) made as safe as any line: URLs in it redacted (chained aiohttp
    errors name presigned URLs whole), secrets scrubbed, each of its lines escaped.
    The newlines between its lines are kept; any other control character is shown."""
    return "\n".join(
        visible(cleaned(line, secrets)) for line in text.rstrip("\n").split("\n")
    )


def json_text(value: Any, secrets: Sequence[str], ascii_only: bool = False) -> str:
    """The --json document: secrets scrubbed and URLs redacted in every string, and every
    hidden character json.dumps leaves raw (ensure_ascii=False) written as a \\uXXXX
    escape: DEL and C1 controls (CSI U+009B starts a terminal sequence as ESC [ does),
    bidirectional and other format characters. A parser reads the same text back.
    `ascii_only`: every other non-ASCII character too (for a stdout that cannot write it)."""
    return json_escaped(json.dumps(cleaned_json(value, secrets), indent=2,
                                   ensure_ascii=ascii_only))


class SafeFormatter(logging.Formatter):
    """Log lines as every other line: scrubbed of the secrets known so far (the list is
    shared with main and grows once the key is read) and escaped; tracebacks as
    traceback_text makes them."""

    def __init__(self, fmt: str, secrets: Sequence[str]) -> None:
        super().__init__(fmt)
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        text = shown(self.formatMessage(record), self._secrets)
        if record.exc_info:
            text += "\n" + traceback_text(self.formatException(record.exc_info), self._secrets)
        if record.stack_info:
            text += "\n" + traceback_text(self.formatStack(record.stack_info), self._secrets)
        return text
