"""Which tunes a run fetches, and what each one lacks: reads the API and the archive,
writes nothing (fetch and its dry run share it)."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from tune_archiver import manifest
from tune_archiver.astria.client import AstriaClient
from tune_archiver.commands.plan import (
    AssetKey,
    TunePlan,
    archived_blobs,
    archived_entries,
    archived_twice,
    archives_listed,
    assets_of,
    carried_over,
    entry_key,
    expiring,
    is_unchanged,
    known_entries,
    plan_tune,
    result_key,
)
from tune_archiver.commands.unlisted import unlisted
from tune_archiver.commands.workspaces import ALL
from tune_archiver.config import AllTunes, Settings
from tune_archiver.errors import (
    ArchiverError,
    AuthError,
    ConfigError,
    Denied,
    StorageError,
    TuneElsewhere,
    TuneNotFound,
    UnreadableManifest,
)
from tune_archiver.layout import manifest_key
from tune_archiver.manifest import Entry, Manifest
from tune_archiver.models import AssetResult, Prompt, Tune, TuneResult, prompts_of, see_verify
from tune_archiver.selection import in_shard
from tune_archiver.store import Store, blob_sizes, read_manifests
from tune_archiver.urls import redact_text

log = logging.getLogger(__name__)


async def chosen(
    api: AstriaClient,
    store: Store,
    tunes: Sequence[int] | AllTunes,
    prompts: bool,
    now: datetime,
    journaled: Collection[int] = (),
) -> AsyncIterator[list[int | TuneResult]]:
    """The tunes a run takes up, a batch (a page of the listing, for --all) at a time
    as the listing arrives: the id of each to fetch, a skipped result for each archived
    and unchanged, in the order asked (each id once), or the listing's (newest first).

    A listed tune is skipped when its manifest is complete, records the same
    updated_at, holds every file the listing names and all its blobs are present.
    With --prompts nothing is skipped: new images can be generated without the tune
    changing; nor is a tune `journaled` (files a stopped run committed that its manifest
    does not name yet: skipped, they would be swept with the journal). One journaled
    that the listing, unfiltered by the API, no longer shows (deleted upstream since)
    is taken up last, for its journal to be recorded. A tune whose expires_at
    cannot be read is kept by --expiring-within, with one warning. The listing's ids
    are strictly decreasing (client.checked_ids), so none is taken up twice.
    """
    if not isinstance(tunes, AllTunes):
        yield list(dict.fromkeys(tunes))
        return
    unchanged = UnchangedCheck(store, journaled)
    # An id of --ids-from that the listing never shows is a tune asked for and not had:
    # named as failed, not dropped. The API's own filters would hide one the local
    # filters leave out anyway, so with --ids-from none is sent.
    wanted = tunes.filters.ids
    listed: set[int] = set()
    shown: set[int] = set()  # of the journaled
    query = tunes.filters.api_query() if wanted is None else {}
    async for page in api.tune_pages(query=query):
        if wanted is not None:
            listed.update(item["id"] for item in page if item["id"] in wanted)
        shown.update(item["id"] for item in page if item["id"] in journaled)
        kept = [item for item in page
                if _keeps(item, tunes, (now, api.date), item["id"] in journaled)]
        same = [False] * len(kept) if prompts else await unchanged.of_page(kept)
        yield [_skipped(item) if skip else item["id"]
               for item, skip in zip(kept, same, strict=True)]
    # One an API filter hides is not known deleted; one of --ids-from is asked for anyway.
    deleted = sorted((i for i in set(journaled) - shown if in_shard(i, tunes.shard)
                      and (i in wanted if wanted is not None else not query)), reverse=True)
    if deleted:
        yield list(deleted)
    if wanted is not None:
        unlisted = sorted((i for i in wanted - listed - set(deleted)
                           if in_shard(i, tunes.shard)), reverse=True)  # newest first
        if unlisted:
            yield [await _not_listed(api, store, i) for i in unlisted]


NOT_LISTED = ("not listed by the API (no such tune in this account or workspace?), "
              "though --ids-from names it")


async def _not_listed(api: AstriaClient, store: Store, tune_id: int) -> TuneResult:
    """An id of --ids-from the listing never shows: a failed tune, unless the archive
    holds it complete and the API says it is gone (404). That one was archived, then
    deleted upstream (its expires_at passed): the backup did its job, and a daily run
    failing for it, each day, would teach its operator to ignore the fail mail. Said
    once a run, skipped. One the API still has (a tune of a workspace the run does not
    list) may gain files: it is the failed tune it was."""
    try:
        data = await store.read_manifest(tune_id)
        found = None if data is None else manifest.parse(data, tune_id)
        # Whole as a tune skipped unchanged is: a blob since lost is a tune not saved.
        present = await blobs_present(store, found)
    except (StorageError, Denied, UnreadableManifest):  # its fetch would fail: so does it
        found = None
    if found is None or not found.complete:
        return TuneResult(tune_id, error=f"tune {tune_id}: {NOT_LISTED}")
    lost = sum(1 for _, blob in archived_entries(found) if present.get(blob.sha256) != blob.size)
    if lost:  # never had again from the API: verify names them
        return TuneResult(tune_id, error=f"tune {tune_id}: {NOT_LISTED}, and the archive "
                          f"lacks {lost} of its files {see_verify(tune_id)}")
    try:
        # had: not deleted (a workspace the run does not list, asked in every one: the
        # API answers for the personal scope only without X-Workspace-Id)
        await api.get_tune(tune_id, ALL)
    except TuneNotFound:  # deleted upstream
        log.warning("tune %d: no longer listed by the API (deleted upstream?), though "
                    "--ids-from names it: its archive, complete, is kept as it is", tune_id)
        return TuneResult(tune_id, title=found.title, skipped=True,
                          manifest=manifest_key(tune_id))
    except ArchiverError:  # not known deleted: it may have files the archive lacks
        pass
    return TuneResult(tune_id, error=f"tune {tune_id}: {NOT_LISTED}")


def _keeps(item: dict[str, Any], tunes: AllTunes, clocks: tuple[datetime, datetime | None],
           journaled: bool) -> bool:
    """True when --all's shard, filters and --expiring-within (by our clock and the API's:
    `clocks`) keep the listed tune; a `journaled` one whatever its expiry, as one deleted
    since is: past its expires_at, still listed, its journal may hold the only copy."""
    # The API may ignore a filter it was sent: each is applied here too.
    if not in_shard(item["id"], tunes.shard) or not tunes.filters.keeps(item):
        return False
    window = tunes.expiring_within
    if window is None or journaled:
        return True
    expiry = expiring(item, clocks[0], window, clocks[1])
    if expiry.unreadable:
        log.warning("tune %d: cannot read its expires_at %s; backing it up in case "
                    "it expires soon", item["id"], _quoted(item["expires_at"]))
    return expiry.keep


# The longest server value quoted whole in a line; a longer one is only measured.
MAX_QUOTED = 80


def _quoted(value: object) -> str:
    """A server's value for a line: its repr (the text may hold escapes), whole or not at
    all: cut short (reprlib) in the middle of an echoed API key, its two ends were shown,
    which the scrub, knowing only the whole key, left."""
    shown = repr(value)
    if len(shown) <= MAX_QUOTED:
        return shown
    return f"(a text of {len(value)} characters)" if isinstance(value, str) else (
        f"(a {type(value).__name__})")


def _skipped(item: dict[str, Any]) -> TuneResult:
    title = item.get("title")
    return TuneResult(item["id"], title=title if isinstance(title, str) else None, skipped=True,
                      manifest=manifest_key(item["id"]))  # archived: --json names it


class UnchangedCheck:
    """Which listed tunes are archived and unchanged, a page at a time: the page's
    manifests read together, and each blob looked up once per run (the same images
    are named by thousands of tunes). A blob once found stays: the fetch's shared
    archive lock keeps gc, the only remover, away."""

    def __init__(self, store: Store, journaled: Collection[int] = ()) -> None:
        self._store = store
        self._journaled = journaled
        self._sizes: dict[str, int] = {}  # sha256 -> size of blobs found present

    async def of_page(self, items: Sequence[dict[str, Any]]) -> list[bool]:
        ids = [item["id"] for item in items]
        # A manifest the disk will not read, or the bucket refuses (Denied: a policy on
        # that key alone): that tune is fetched, and fails.
        try:
            found = await read_manifests(self._store, ids)
        except (StorageError, Denied):
            found = [await self._readable(tune_id) for tune_id in ids]
        previous: list[Manifest | None] = []
        for tune_id, data in zip(ids, found, strict=True):
            try:
                previous.append(None if data is None else manifest.parse(data, tune_id))
            except UnreadableManifest:
                previous.append(None)  # the fetch of the tune says so, and sets it aside
        # Not difference_update(self._sizes): that walks every blob the run has seen.
        wanted = {blob.sha256 for found in previous for _, blob in archived_entries(found)
                  if blob.sha256 not in self._sizes}
        if wanted:
            try:
                self._sizes.update(await blob_sizes(self._store, wanted))
            except (StorageError, Denied):  # one blob not looked up: its tune is fetched,
                self._sizes.update(await self._present(wanted))  # and fails, alone
        return [is_unchanged(found, item.get("updated_at"), self._sizes)
                and found is not None and archives_listed(found, item)
                and item["id"] not in self._journaled
                for found, item in zip(previous, items, strict=True)]

    async def _present(self, sha256s: set[str]) -> dict[str, int]:
        """sha256 -> size of those blobs found, one at a time; one not looked up is left out."""
        found: dict[str, int] = {}
        for sha256 in sha256s:
            try:
                size = await self._store.blob_size(sha256)
            except (StorageError, Denied):
                continue
            if size is not None:
                found[sha256] = size
        return found

    async def _readable(self, tune_id: int) -> bytes | None:
        """The tune's manifest, or None (not known unchanged) when it cannot be read."""
        try:
            return await self._store.read_manifest(tune_id)
        except (StorageError, Denied):
            return None


async def load_tune(
    api: AstriaClient, tune_id: int, prompts: bool, account: Sequence[Prompt] = (),
    account_error: str | None = None,
) -> Tune:
    """The tune; with `prompts`, its own prompts plus those of `account` naming it.

    Prompts that cannot be read (its listing; `account_error`, the account's; one
    malformed prompt) are the tune's prompt_errors, not its failure: a glitch in
    the prompts must not cost the checkpoints and photos. Raises as get_tune does,
    and AuthError or ConfigError from the listing.
    """
    try:
        tune = await api.get_tune(tune_id)
    except TuneNotFound as exc:  # asked in every workspace already: no other to look in
        raise (None if api.workspace == ALL else await _elsewhere(api, tune_id)) or exc from None
    if not prompts:
        return tune
    errors = [] if account_error is None else [account_error]
    try:
        own = await api.get_prompts(tune_id)
    except (AuthError, ConfigError):
        raise
    except ArchiverError as exc:
        own, errors = [], [str(exc), *errors]
    listed = prompts_of(tune_id, own, account)
    errors += [prompt.error for prompt in listed if prompt.error is not None]
    return replace(tune, prompts=listed, prompt_errors=tuple(errors))


WORKSPACE_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_QUOTED - 1}}}")  # one to name


async def _elsewhere(api: AstriaClient, tune_id: int) -> TuneElsewhere | None:
    """The error for a tune the run's scope answers 404 for that another workspace holds
    (the API answers for the personal scope only without X-Workspace-Id): 'not found'
    alone sent its owner to think it deleted. None when no workspace has it either."""
    try:
        found = await api.get_tune(tune_id, ALL)
    except ArchiverError:  # not there either, or the key may not ask every workspace
        return None
    where = found.raw.get("workspace_id", "")
    # Named in a command to paste only when it is an id: not '41; rm -rf ~', nor 200 000
    # characters (any printable text passed before).
    known = isinstance(where, int | str) and not isinstance(where, bool) and bool(
        WORKSPACE_ID.fullmatch(str(where)))
    said, option = (f"workspace {where}", f"{where} (or --workspace all)") if known else (
        "a workspace", "all")
    if where is None:  # the tune says it: the personal scope (a run of --workspace 41)
        said, option = "the personal scope", "personal (or --workspace all)"
    return TuneElsewhere(f"tune {tune_id} is not in the scope this run asks in (the personal "
                        f"one unless --workspace says another), but in {said}: fetch it "
                        f"with --workspace {option}", 404)


async def read_previous(store: Store, tune_id: int) -> Manifest | None:
    """The tune's manifest as last written, or None when it has none.

    Raises UnreadableManifest for a damaged one: nothing it references may be
    forgotten, so the caller never takes it for "no manifest". So is one recording a
    file as archived twice: rewritten, it would keep one of the two.
    """
    data = await store.read_manifest(tune_id)
    if data is None:
        return None
    previous = manifest.parse(data, tune_id)
    twice = archived_twice(previous)
    if twice is not None:
        raise UnreadableManifest(tune_id, twice, data)
    return previous


async def blobs_present(store: Store, previous: Manifest | None) -> dict[str, int]:
    """sha256 -> size of each blob the manifest names that is in the store."""
    present: dict[str, int] = {}
    for blob in archived_blobs(previous).values():
        size = await store.blob_size(blob.sha256)
        if size is not None:
            present[blob.sha256] = size
    return present


async def plan_for(
    store: Store, tune: Tune, settings: Settings, api: AstriaClient,
    journaled: Sequence[Entry] = (),
) -> tuple[TunePlan, list[AssetResult]]:
    """What to download for the tune, and the archived files it no longer lists (a
    prompt's failed file taken for deleted only once its prompt is: unlisted.py); the
    files a stopped run `journaled` (journal.py) are archived as its manifest's are."""
    previous = await read_previous(store, tune.id)
    present = await blobs_present(store, with_journaled(tune.id, previous, journaled))
    previous = with_journaled(tune.id, previous, journaled, present)
    plan = plan_tune(tune, settings.only, known_entries(previous), present)
    # Prompts not all read prove no prompt's file gone upstream, nor that one that
    # failed need not be asked for again.
    unread = settings.lists_prompts and bool(tune.prompt_errors)
    listed = settings.lists_prompts and not tune.prompt_errors
    carried = carried_over(previous, assets_of(tune), present, listed, unread,
                           tune.unread_kinds)
    asked: dict[tuple[int, int], ArchiverError | None] = {}  # a prompt's files ask once
    read = {prompt.id for prompt in tune.prompts if prompt.error is None}
    return plan, [await unlisted(api, tune.id, result, asked, read) for result in carried]


def with_journaled(tune_id: int, previous: Manifest | None, journaled: Sequence[Entry],
                   present: Mapping[str, int] | None = None) -> Manifest | None:
    """The manifest with each file a journal records that it does not hold archived
    (the first line for a file; with `present`, only one whose blob is held with its
    size: a line whose blob is gone vouches for nothing). One it says gone upstream, never
    archived, is the journal's: a run that did not read the journal (made after it listed
    the staging folder, by a run stopped since) said so of a file that run had kept."""
    held = archived_blobs(previous)
    fresh: dict[AssetKey, Entry] = {}
    for entry in journaled:
        blob = entry.blob
        if entry_key(entry) not in held and blob is not None and (
                present is None or present.get(blob.sha256) == blob.size):
            fresh.setdefault(entry_key(entry), entry)
    if not fresh:
        return previous
    if previous is None:
        return Manifest(tune_id, "", False, {}, tuple(fresh.values()))
    # One recorded failed or gone by the manifest is the journal's: both, said twice.
    kept = tuple(e for e in previous.entries if entry_key(e) not in fresh)
    return replace(previous, entries=kept + tuple(fresh.values()))


def superseded(journaled: Sequence[Entry], written: Sequence[AssetResult],
               missing: Collection[str]) -> set[str]:
    """The blobs of journal lines whose file `written` (a manifest's) holds archived as
    other bytes, stored (not `missing`): its entry outranks such a line (with_journaled),
    which vouches for nothing, yet kept the journal, and its blob, for good (two runs
    archived two versions: each fetch --all took the tune up and marked the journal used)."""
    archived = {result_key(result): result.blob.sha256 for result in written
                if result.blob is not None and result.blob.sha256 not in missing}
    return {entry.sha256 for entry in journaled if entry.sha256
            and archived.get(entry_key(entry), entry.sha256) != entry.sha256}


def unexpected(exc: Exception, doing: str) -> str:
    """The one line for a bug met while `doing` something; its traceback goes to -v."""
    log.debug("unexpected error while %s", doing, exc_info=exc)
    return f"internal error while {doing}: {type(exc).__name__}: {redact_text(str(exc))}"
