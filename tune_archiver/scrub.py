"""The API key scrubbed out of text and JSON: what is written or printed never holds it.

The API may echo the key back, in a tune's text, a URL (`?api_key=...`) or an error
body; every string on its way to a manifest, a result or a terminal passes here.
`cleaned` and `cleaned_json` also redact every URL in the text: what every line shown
(terminal, --json) and every log line (--log-file) is made of.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from tune_archiver.models import AssetResult, TuneResult
from tune_archiver.urls import REDACTED, redact_json, redact_text


def scrub(text: str, secrets: Sequence[str]) -> str:
    """The text with every secret replaced by REDACTED (the longest first, so a secret
    inside another leaves nothing of the longer one)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def scrub_json(value: Any, secrets: Sequence[str]) -> Any:
    """A copy of a JSON value with every secret scrubbed from its strings and keys."""
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, list | tuple):
        return [scrub_json(item, secrets) for item in value]
    if isinstance(value, dict):
        return {scrub(str(key), secrets): scrub_json(item, secrets)
                for key, item in value.items()}
    return value


def cleaned(text: str, secrets: Sequence[str]) -> str:
    """Free text fit to show or log: secrets scrubbed, then every URL in it redacted
    (a server's error text may quote a presigned URL whole)."""
    return redact_text(scrub(text, secrets))


def cleaned_json(value: Any, secrets: Sequence[str]) -> Any:
    """A copy of a JSON value fit to show or log: `cleaned` applied to every string."""
    return redact_json(scrub_json(value, secrets))


def scrub_result(result: TuneResult, secrets: Sequence[str]) -> TuneResult:
    """A tune's result with its title, its error and each file's error scrubbed."""

    def text(value: str | None) -> str | None:
        return None if value is None else scrub(value, secrets)

    def asset(item: AssetResult) -> AssetResult:
        return item if item.error is None else replace(item, error=text(item.error))

    return replace(result, title=text(result.title), error=text(result.error),
                   assets=tuple(asset(item) for item in result.assets))
