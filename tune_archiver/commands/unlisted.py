"""A prompt's failed file that the run's prompts no longer list: gone upstream for good,
or failed still, asked for again (GET /prompts lists one scope alone)."""

from __future__ import annotations

from collections.abc import Collection

from tune_archiver.astria.client import AstriaClient
from tune_archiver.commands.plan import NO_LONGER_LISTED
from tune_archiver.commands.workspaces import ALL
from tune_archiver.errors import ArchiverError, NetworkError, StatusError
from tune_archiver.manifest import CarriedOver
from tune_archiver.models import AssetResult


async def unlisted(api: AstriaClient, tune_id: int, result: AssetResult,
                    asked: dict[tuple[int, int], ArchiverError | None],
                    listed: Collection[int] = ()) -> AssetResult:
    """A prompt's failed file that the run's prompts no longer list is gone upstream (never
    asked for again) only if its prompt is: GET /prompts lists one scope alone (the
    personal one without --workspace), so a prompt made in workspace 42 that a run of
    another scope does not list is asked for alone, in every workspace. Had, the file
    stays failed, saying why; so it does when the API could not tell (a 503, a 429, the
    network: gone is for good); a 404 (or a key refused every workspace, as before)
    keeps it gone. `asked` holds each prompt's answer: its other files ask no more. A
    file of a prompt the run `listed` is gone without asking: its prompt, read, no longer
    names it (asked, it was said to be in another workspace, failed for good)."""
    entry = result.entry if isinstance(result, CarriedOver) else None
    if (entry is None or entry.prompt_id is None or entry.prompt_id in listed
            or not result.gone or result.reused
            or not (result.error or "").startswith(NO_LONGER_LISTED)):
        return result
    key = (entry.prompt_tune_id or tune_id, entry.prompt_id)
    if key not in asked:
        try:
            await api.get_prompt(*key, ALL)
            asked[key] = None
        except ArchiverError as exc:
            asked[key] = exc
    error = asked[key]
    if isinstance(error, NetworkError | StatusError) and not (
            isinstance(error, StatusError) and error.status < 500
            and error.status not in (408, 429)):
        return CarriedOver(result.asset, entry=entry, error=(
            f"cannot tell whether prompt {entry.prompt_id} was deleted upstream ({error}): "
            f"{_THEN[0]}{_last(entry.error)})"))
    if error is not None:  # deleted upstream (404, 410), or not to be told (a key refused
        return result  # every workspace, a bad answer)
    return CarriedOver(result.asset, entry=entry, error=(
        f"its prompt {entry.prompt_id} is not listed in the scope this run asks in, though "
        f"Astria has it (in another workspace): {fetch_all(tune_id)}{_THEN[1]}"
        f"{_last(entry.error)})"))


def fetch_all(tune_id: int, also: str = "") -> str:
    """The command unlisted's line says to run, before its --workspace all: `also` (the
    run's archive and API options) is added where the line is printed (report.
    fetch_errors), never in the manifest; --workspace all after them wins."""
    return f"run tune-archiver fetch {tune_id} --prompts{also} "


# How unlisted's lines end before the file's own last error: said once, never nested.
_THEN = ("asked for again next run (its last error: ", "--workspace all (its last error: ")


def _last(error: str | None) -> str:
    """The file's own last error, out of a line unlisted wrote of it the run before (a
    run each day must not wrap it once more); the last 'then' is unlisted's own."""
    last = error or "unknown error"
    ends = [last.rfind(then) + len(then) for then in _THEN if then in last]
    return last[max(ends):-1] if ends and last.startswith(
        ("its prompt ", "cannot tell whether prompt ")) else last
