"""What of a tune could not be read: its file fields, its prompts; pure."""

from __future__ import annotations

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
                   when: datetime) -> str | None:
    """Why the tune's manifest says its prompts are not read (not complete), or None.

    This run's errors, if it read them not all; else what the manifest said, till a
    --prompts run reads them. An expired tune listing no prompt reads none: Astria
    purges its prompts, and the images of those never read were never archived: the
    mark then ends with PURGED, gone upstream (no run can read them now).
    """
    if tune.prompt_errors:
        return "; ".join(map(redact_text, tune.prompt_errors))
    if now is None or (lists_prompts and (tune.prompts or not has_expired(tune, when))):
        return None
    if lists_prompts and now.prompts_unread is not None and not purged(now.prompts_unread):
        return now.prompts_unread + PURGED
    return now.prompts_unread


def purged(mark: str | None) -> bool:
    """Whether a manifest's prompts_unread is for good: the tune expired, its prompts
    purged before a --prompts run read them (counted gone upstream, not failed)."""
    return mark is not None and mark.endswith(PURGED)
