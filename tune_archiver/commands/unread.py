"""What of a tune could not be read: its file fields, its prompts; pure."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from tune_archiver.commands.plan import has_expired
from tune_archiver.manifest import Manifest
from tune_archiver.models import Tune
from tune_archiver.urls import redact_text

# Ends the prompts_unread of a tune whose prompts can no longer be read: gone upstream.
PURGED = ("; the tune expired before a --prompts run read them: Astria purged its "
          "prompts, their images never archived")


def unread_failure(tune: Tune) -> str | None:
    """The one line for the tune's file fields and prompts that could not be read;
    None when all were."""
    said = [error for _, error in tune.field_errors]
    errors = tune.prompt_errors
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        said.append(f"prompt files not archived: {errors[0]}{more}")
    return "; ".join(said) or None


def prompts_unread(tune: Tune, now: Manifest | None, lists_prompts: bool,
                   clocks: Iterable[datetime | None]) -> str | None:
    """Why the tune's manifest says its prompts are not read (not complete), or None.

    This run's errors, if it read them not all (a mark ending PURGED stays: a listing
    failing since unsays no purge, and a purge said again was counted gone twice); else
    what the manifest said, till a --prompts run reads them before the tune expires.
    Past its expires_at no listing, empty or not, proves the prompts never read all
    there: Astria purges them, the images of those never read never archived: the mark
    then ends with PURGED, gone upstream (no run can read them now). Expired by each of
    `clocks`, ours and the API's Date: ours hours ahead purged a live tune's prompts.
    """
    was = now.prompts_unread if now is not None else None
    if tune.prompt_errors:
        return was if purged(was) else "; ".join(map(redact_text, tune.prompt_errors))
    expired = all(has_expired(tune, when) for when in clocks if when)
    if was is None or (lists_prompts and not expired):
        return None
    return was + PURGED if lists_prompts and not purged(was) else was


def purged(mark: str | None) -> bool:
    """Whether a manifest's prompts_unread is for good: the tune expired, its prompts
    purged before a --prompts run read them (counted gone upstream, not failed)."""
    return mark is not None and mark.endswith(PURGED)
