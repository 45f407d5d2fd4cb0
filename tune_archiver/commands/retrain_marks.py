"""The manifest's marks of a retrain: a POST /tunes marked sent before it goes, the
tune it created recorded after, and the refusal of a title either records."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Any

from tune_archiver import manifest
from tune_archiver.errors import ArchiverError
from tune_archiver.manifest import Manifest
from tune_archiver.store import Change, Store
from tune_archiver.urls import redact_json

# The manifest's titles whose POST /tunes was sent and its answer not (yet) recorded,
# {"title", "at"} each: a run killed after sending it, or one running now.
SENT = "retraining"


def refusal(found: Manifest, title: str, chosen: bool = True) -> ArchiverError | None:
    """Why a retrain under `title` sends nothing: the manifest records a tune retrained,
    or a POST sent, under that title; None when it records neither. A default title (not
    `chosen`) names its day: a POST sent under any title and never answered refuses it,
    or the same command run again after midnight sent (and billed) a second tune."""
    for earlier in found.retrained:
        if _same_title(earlier.get("title"), title):
            named, again = _as_recorded(earlier.get("title"), title)
            return ArchiverError(
                f"tune {found.tune_id}: already retrained as tune {earlier.get('tune_id')} "
                f"under the title {named}: nothing was sent (choose {again} to train it "
                "again)")
    sent = found.extra.get(SENT)
    for earlier in sent if isinstance(sent, list) else []:
        if not isinstance(earlier, dict):
            continue
        if _same_title(earlier.get("title"), title):
            named, again = _as_recorded(earlier.get("title"), title)
        elif chosen:
            continue
        else:  # the default title of another day
            named, again = repr(earlier.get("title")), "a --title"
        return ArchiverError(
            f"tune {found.tune_id}: a retrain under the title {named} was sent at "
            f"{earlier.get('at')} and its answer never recorded (a run stopped, or one "
            "still running): the API may have created the tune all the same: look for "
            f"it; nothing was sent (choose {again} to train it again)")
    return None


def _same_title(recorded: Any, title: str) -> bool:
    """A title the manifest records: as sent, or as a fetch rewriting the manifest since
    stored it, redacted ('Jane token=x' reads 'Jane token=REDACTED'; else sent again)."""
    return recorded in (title, redact_json(title))


def _as_recorded(recorded: Any, title: str) -> tuple[str, str]:
    """The title a refusal names, and the --title it asks for: one matched redacted may
    be another that reads the same ('Jane token=a' for 'Jane token=b'), and any such is
    refused alike: said so, not 'under the title you gave, choose another'."""
    if recorded == title:
        return repr(title), "another --title"
    return (f"{recorded!r} (as the manifest records it, redacted: this title or another "
            "that reads the same)", "a --title that reads otherwise once redacted")


def marking(tune_id: int, title: str, now: datetime, chosen: bool = True) -> Change:
    """The manifest change that marks a POST under `title` sent; refused (raises) when
    the manifest, as it is now, records one under it (see refusal for `chosen`)."""

    async def change(current: bytes | None) -> bytes:
        if current is None:
            raise ArchiverError(f"tune {tune_id} left the archive while it was retrained")
        if refused := refusal(manifest.parse(current, tune_id), title, chosen):
            raise refused
        document = json.loads(current)
        sent = document.get(SENT)
        # Stored redacted, as a fetch rewriting it would (its match is _same_title's):
        # a --title holding a presigned URL or a token=... keeps no secret at rest.
        document[SENT] = [*(sent if isinstance(sent, list) else []),
                          {"title": redact_json(title), "at": manifest.format_time(now)}]
        return manifest.encode(document)

    return change


def settled(
    tune_id: int, title: str, now: datetime, created: dict[str, Any] | None = None
) -> Change:
    """The manifest change that takes the mark of `title` off, and records the tune a
    retrain `created`, if any."""

    async def change(current: bytes | None) -> bytes:
        if current is None:
            raise ArchiverError(f"tune {tune_id} left the archive while it was retrained"
                                + (f" (as tune {created['id']})" if created else ""))
        manifest.parse(current, tune_id)  # a damaged one is never rewritten
        document = json.loads(current)
        sent = document.get(SENT)
        if isinstance(sent, list):
            sent = [item for item in sent
                    if not (isinstance(item, dict) and _same_title(item.get("title"), title))]
            if sent:
                document[SENT] = sent
            else:
                del document[SENT]
        if created:
            # A null "retrained" reads as none yet (parse takes an absent field's null).
            document["retrained"] = [*(document.get("retrained") or []), {
                "tune_id": created["id"], "title": redact_json(title),
                "at": manifest.format_time(now),
            }]
        return manifest.encode(document)

    return change


async def unmark(store: Store, tune_id: int, title: str, now: datetime) -> None:
    """Take the mark off a POST that made no tune; one that cannot be stays, and a
    retry under the title is refused, said as a tune that may exist (never a second)."""
    with contextlib.suppress(ArchiverError):
        await store.update_manifest(tune_id, settled(tune_id, title, now))
