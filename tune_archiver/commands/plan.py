"""Pure planning: which assets a tune has, and which of them are already archived.

The caller passes in what it observed (the previous manifest as manifest.read gave
it, which blobs exist); nothing here touches the network or the disk.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from tune_archiver.config import Only
from tune_archiver.errors import DataError
from tune_archiver.manifest import CarriedOver, Entry, Manifest, State
from tune_archiver.models import (
    PROMPT_KINDS,
    Asset,
    AssetKind,
    AssetResult,
    Blob,
    Prompt,
    Tune,
    parse_tune,
)
from tune_archiver.selection import parse_moment
from tune_archiver.urls import identity

KINDS_OF: dict[Only, tuple[AssetKind, ...]] = {
    "checkpoints": ("checkpoint",),
    "images": ("training_image", "prompt_image", "prompt_input", "face_swap_image"),
}


# kind, prompt id (None but for a prompt's files), index, urls.identity of the URL: two
# prompts may list one URL (a reference image), each its own file of the manifest.
AssetKey = tuple[str, int | None, int, str]


def assets_of(tune: Tune) -> list[Asset]:
    """Every file of the tune: its checkpoints, training images, face-swap images, and
    its prompts' outputs (images and videos) and inputs."""
    return [
        *(Asset("checkpoint", i, url) for i, url in enumerate(tune.checkpoint_urls)),
        *(Asset("training_image", i, url) for i, url in enumerate(tune.image_urls)),
        *(Asset("face_swap_image", i, url) for i, url in enumerate(tune.face_swap_urls)),
        *(
            Asset(kind, i, url, prompt.id, prompt.text, prompt.tune_id)
            for prompt in tune.prompts
            for kind, urls in _prompt_files(prompt)
            for i, url in enumerate(urls)
        ),
    ]


def _prompt_files(prompt: Prompt) -> tuple[tuple[AssetKind, tuple[str, ...]], ...]:
    return (("prompt_image", prompt.image_urls), ("prompt_input", prompt.input_urls))


def asset_key(asset: Asset) -> AssetKey:
    """What identifies an asset across runs, whatever its URL's signature."""
    return (asset.kind, asset.prompt_id, asset.index, identity(asset.url))


def result_key(result: AssetResult) -> AssetKey:
    """The key of a result: its entry's, for a file known from the last manifest."""
    return entry_key(result.entry) if isinstance(result, CarriedOver) else asset_key(result.asset)


def entry_key(entry: Entry) -> AssetKey:
    """The key of a manifest's entry: its recorded source, its URL being redacted."""
    return (entry.kind, entry.prompt_id, entry.index, entry.identity)


def archived_entries(manifest: Manifest | None) -> Iterator[tuple[Entry, Blob]]:
    """Each entry a manifest records as archived, with its blob."""
    for entry in manifest.entries if manifest is not None else ():
        blob = entry.blob
        if blob is not None:
            yield entry, blob


def archived_blobs(manifest: Manifest | None) -> dict[AssetKey, Blob]:
    """The blobs a previous manifest recorded as archived, by their AssetKey."""
    return {entry_key(entry): blob for entry, blob in archived_entries(manifest)}


def known_entries(manifest: Manifest | None) -> dict[AssetKey, Entry]:
    """The entries worth knowing next time, by key: archived ones and ones gone upstream
    (a failed one is simply tried again)."""
    entries = manifest.entries if manifest is not None else ()
    return {entry_key(entry): entry for entry in entries if entry.status in ("ok", "gone")}


def archived_twice(manifest: Manifest) -> str | None:
    """What is wrong when two entries archived (or gone) record one file; else None.
    The plan keeps one entry a file (known_entries): the other would be dropped, and gc
    would then remove its blob."""
    seen: dict[AssetKey, int] = {}
    for i, entry in enumerate(manifest.entries):
        key = entry_key(entry)
        if entry.status != "failed" and seen.setdefault(key, i) != i:
            return (f"assets[{seen[key]}] and assets[{i}] both record {entry.kind} "
                    f"{entry.index} as archived, from one URL")
    return None


def stored_key(entry: Entry) -> AssetKey:
    """An entry's key by its stored URL (redacted: `?id=REDACTED` names no live URL)."""
    return (entry.kind, entry.prompt_id, entry.index, identity(entry.url))


def paired(wanted: Sequence[AssetKey], entries: Iterable[Entry]) -> dict[AssetKey, Entry]:
    """The entry each wanted key stands for: the one of that key; else, the list having
    been reordered, one of the same kind, prompt and URL whose own key is wanted by
    none. An entry is paired once, the lower index first."""
    by_key = {entry_key(entry): entry for entry in entries}
    found = {key: by_key[key] for key in wanted if key in by_key}
    # An entry an older version keyed by a token since dropped from url_key (Akamai's
    # hdnts): its stored URL, redacted, names what the URL listed now does.
    renamed = {stored_key(entry): key for key, entry in by_key.items() if key not in found}
    for key in wanted:
        if key not in found and renamed.get(key) is not None:
            found[key] = by_key[renamed[key]]
    taken = {entry_key(entry) for entry in found.values()}
    spare: dict[tuple[str, int | None, str], list[Entry]] = {}
    for key, entry in sorted(by_key.items(), key=lambda item: item[0][2]):
        if key not in taken:
            spare.setdefault(_moved(key), []).append(entry)
    for key in wanted:
        moved = spare.get(_moved(key))
        if key not in found and moved:
            found[key] = moved.pop(0)
    return found


NO_LONGER_LISTED = "the API no longer lists it, and it was never archived"
LOST_BLOB = "archived, but its blob is missing from the archive"


def _moved(key: AssetKey) -> tuple[str, int | None, str]:
    """What a file keeps when its list is reordered: all of its key but its index."""
    kind, prompt_id, _, source = key
    return kind, prompt_id, source


def carried_over(
    manifest: Manifest | None, current: Sequence[Asset], present: Mapping[str, int],
    prompts_listed: bool = True, prompts_unread: bool = False,
    unread_kinds: Collection[str] = (),
) -> list[AssetResult]:
    """Files the last manifest knows that the tune no longer lists (expired, or prompts
    not asked for this time).

    They stay in the new manifest, every field of their entries kept, so their blobs
    stay referenced and are never lost; one whose blob has gone missing is recorded
    as failed, saying so; one gone upstream stays gone. One that failed, never
    archived, and that the listing now leaves out (deleted upstream) is gone: said
    once, then kept as gone (dropped, the tune would look complete). Prompts' files
    count as left out only when the prompts were listed (`prompts_listed`); with
    `prompts_unread` (asked for, not all read) one that failed stays failed, as it was:
    dropped, a run finding its prompt deleted would know nothing of it. So does a file
    of a kind whose field in the tune was not all read (`unread_kinds`), or of a tune
    listing no file at all.
    """
    known = known_entries(manifest)
    keys = [asset_key(asset) for asset in current]
    listed = {entry_key(entry) for entry in paired(keys, known.values()).values()}
    sources = {_moved(key) for key in keys}
    left_out = [entry for entry in (manifest.entries if manifest is not None else ())
                if entry.status == "failed" and _moved(entry_key(entry)) not in sources
                and _moved(stored_key(entry)) not in sources]
    # None of the tune's own files listed (a glitch, its prompts' alone): none gone, failed.
    bare = not any(asset.kind not in PROMPT_KINDS for asset in current)
    unread_fields = [entry for entry in left_out if entry.kind in unread_kinds or (
        bare and (not current or entry.kind not in PROMPT_KINDS))]
    unlisted = [entry for entry in left_out if entry not in unread_fields
                and (prompts_listed or entry.kind not in PROMPT_KINDS)]
    unread = [entry for entry in left_out if prompts_unread and entry.kind in PROMPT_KINDS
              and entry not in unread_fields]
    return [_known(entry, present) for key, entry in known.items() if key not in listed] + [
        CarriedOver(entry.asset, error=f"{NO_LONGER_LISTED} (its last error: {entry.error})",
                    gone=True, entry=entry) for entry in unlisted] + [
        CarriedOver(entry.asset, error=_unread(entry.error), entry=entry) for entry in unread] + [
        CarriedOver(entry.asset, error=entry.error, entry=entry) for entry in unread_fields]


NOT_READ = "not asked for again: its prompt could not be read (its last error: "


def _unread(error: str | None) -> str:
    """The error of a failed file whose prompt was not read: its last one, said once."""
    last = error or "unknown error"
    return last if last.startswith(NOT_READ) else f"{NOT_READ}{last})"


def _known(entry: Entry, present: Mapping[str, int]) -> AssetResult:
    """What an entry of the last manifest stands for now, nothing downloaded."""
    blob = entry.blob
    if entry.status == "gone":
        return CarriedOver(entry.asset, error=entry.error, reused=True, gone=True, entry=entry)
    if blob is not None and present.get(blob.sha256) == blob.size:
        return CarriedOver(entry.asset, blob, reused=True, entry=entry)
    return CarriedOver(entry.asset, error="no longer listed by the API, and its blob is "
                       "missing from the archive", entry=entry)


def merged(
    ours: Sequence[AssetResult], current: Manifest | None, missing: Collection[str] = ()
) -> tuple[list[AssetResult], list[AssetResult]]:
    """What the manifest records, and what the run reports: our results, with what
    another run archived meanwhile (the manifest as it is now). An entry it archived
    that we did not replaces our failure or joins the list, so no file either run
    archived is dropped from the manifest.

    An entry another run archived also stays over the other version of that file we
    downloaded meanwhile (it changed upstream): as when runs follow each other, the
    version archived first is the one kept.

    The two differ only where the manifest names a blob we found `missing` (by its
    sha256) and we did not fetch that file again (it failed, it is no longer listed, or
    --only left it out): the entry stays (what was archived; verify names its blob
    missing), and the run reports the failure, or nothing for a file left out.
    """
    recorded, reported = list(ours), list(ours)
    place = {result_key(result): i for i, result in enumerate(recorded)}
    ours_of = {entry_key(entry): key for key, entry in
               paired(list(place), (entry for entry, _ in archived_entries(current))).items()}
    for entry, blob in archived_entries(current):
        key = ours_of.get(entry_key(entry), entry_key(entry))
        if key in place and recorded[place[key]].ok and (
            blob.sha256 in missing or recorded[place[key]].blob == blob
        ):
            continue  # ours replaces what we found missing; or it is the same blob
        # In our place, theirs takes our asset: the index the list gives it now.
        asset = recorded[place[key]].asset if key in place else entry.asset
        theirs = CarriedOver(asset, blob, reused=True, entry=entry)
        if key not in place:
            place[key] = len(recorded)
            recorded.append(theirs)
            if blob.sha256 not in missing:  # one left out by --only: ok only if there
                reported.append(theirs)
            continue
        recorded[place[key]] = theirs
        if blob.sha256 not in missing:  # another run archived it meanwhile
            reported[place[key]] = theirs
        elif (found := reported[place[key]]).gone:
            # Archived once, its blob lost since: not "gone upstream, never archived",
            # nor left unasked by later runs (they fetch it while its blob is missing).
            reported[place[key]] = replace(
                found, gone=False, error=f"{LOST_BLOB}; it cannot be fetched again: {found.error}")
    return recorded, reported


def not_asked_failures(
    current: Manifest | None, written: Sequence[AssetResult]
) -> list[AssetResult]:
    """The prompt files the manifest as it is now records as failed or gone upstream,
    for a run that did not list prompts (no --prompts), or not all of them, to keep: not
    asked for, they are neither retried nor known gone by this run, and dropped, the tune
    would read complete for files never archived. A --prompts run may have written either
    since this run planned (one found gone then was failed when we read the manifest)."""
    held = {_moved(result_key(result)) for result in written}  # its index may have moved
    return [CarriedOver(entry.asset, error=entry.error, reused=True, gone=True, entry=entry)
            if entry.status == "gone" else
            CarriedOver(entry.asset, error=entry.error, entry=entry)
            for entry in (current.entries if current is not None else ())
            if entry.status in ("failed", "gone") and entry.kind in PROMPT_KINDS
            and _moved(entry_key(entry)) not in held]


def left_out_now(
    left_out: Sequence[Asset], current: Manifest | None, missing: Collection[str] = ()
) -> list[Asset]:
    """The files --only left out that the manifest as it is now does not hold archived:
    another run may have archived them since we planned (merged keeps its entries, as
    it keeps those whose blob we did not find `missing`)."""
    held = [entry for entry, blob in archived_entries(current) if blob.sha256 not in missing]
    found = paired([asset_key(asset) for asset in left_out], held)
    return [asset for asset in left_out if asset_key(asset) not in found]


def is_unchanged(
    manifest: Manifest | None, updated_at: Any, present: Mapping[str, int]
) -> bool:
    """True when a complete manifest holds the tune as last updated, with every blob present."""
    if manifest is None or not manifest.complete or updated_at is None:
        return False
    if manifest.tune.get("updated_at") != updated_at:
        return False
    return all(present.get(blob.sha256) == blob.size for _, blob in archived_entries(manifest))


def archives_listed(manifest: Manifest, listed: Mapping[str, Any]) -> bool:
    """True when every file the listing names for the tune (checkpoints, training and
    face-swap images) has an entry archived or gone in the manifest: updated_at alone
    is not trusted to move when Astria adds a file (a checkpoint once training ends)."""
    try:
        tune = parse_tune(listed)
    except DataError:  # a listing the GET may read better: not known unchanged
        return False
    if tune.field_errors:  # a file it names unread: the GET reads it, or says so
        return False
    keys = [asset_key(asset) for asset in assets_of(tune)]
    return len(paired(keys, known_entries(manifest).values())) == len(keys)


@dataclass(frozen=True)
class Expiry:
    """What --expiring-within decides for one listed tune."""

    keep: bool
    unreadable: bool = False  # expires_at is there but unreadable: kept, for the caller to say


def expiring(listed: Mapping[str, Any], now: datetime, within: timedelta,
             host: datetime | None = None) -> Expiry:
    """Keep the tune when its expires_at is no further than `within`, and still ahead, by
    our clock or the API's (`host`, its Date), whichever says it is nearer its end: ours
    hours ahead dropped a tune still served, ours behind one the API deletes in the window.

    An absent or null expires_at never expires (not kept). One present but unreadable is
    kept, `unreadable` set: a needless backup costs a download, one left out the tune."""
    value = listed.get("expires_at")
    if value is None:
        return Expiry(keep=False)
    expires = parse_moment(value)
    if expires is None:
        return Expiry(keep=True, unreadable=True)
    clocks = [c for c in (now, host) if c]  # expires - c: a Date of 9999 plus 7d overflows
    return Expiry(keep=any(expires - c <= within for c in clocks) and expires > min(clocks))


@dataclass
class TunePlan:
    """What to do for one tune."""

    reuse: dict[Asset, AssetResult] = field(default_factory=dict)  # known: no download
    download: list[Asset] = field(default_factory=list)
    left_out: list[Asset] = field(default_factory=list)  # not archived, excluded by --only
    # The blobs of archived entries found missing (listed files among them are
    # downloaded again): see merged.
    missing: set[str] = field(default_factory=set)


def plan_tune(
    tune: Tune,
    only: Only | None,
    previous: Mapping[AssetKey, Entry],
    present: Mapping[str, int],
) -> TunePlan:
    """Sort the tune's assets into reuse, download and left out.

    An asset is reused when the previous manifest has it (same kind, prompt, index and
    URL key, or the same but its index: see paired) and its blob is present with the
    recorded size, or has it as gone upstream
    (never asked for again). `present` maps the sha256 of each blob found in the
    store to its size.
    """
    wanted = KINDS_OF[only] if only else None
    plan = TunePlan()
    plan.missing = {entry.blob.sha256 for entry in previous.values() if entry.blob is not None
                    and present.get(entry.blob.sha256) != entry.blob.size}
    assets = assets_of(tune)
    entries = paired([asset_key(asset) for asset in assets], previous.values())
    # One URL listed twice, an entry for one place only (older versions recorded it
    # once): the other place is that file too, known without a download.
    same = {_moved(key): entry for key, entry in entries.items()}
    for asset in assets:
        entry = entries.get(asset_key(asset))
        if entry is None and (twin := same.get(_moved(asset_key(asset)))) is not None:
            entry = replace(twin, index=asset.index)
        known = _known(entry, present) if entry is not None else None
        if known is not None and (known.ok or known.gone):
            plan.reuse[asset] = replace(known, asset=asset)
        elif wanted is None or asset.kind in wanted:
            plan.download.append(asset)
        else:
            plan.left_out.append(asset)
    return plan


def listing_state(tune: Tune) -> State:
    """What the API listed for the tune: files, none yet (training), or none at all; a
    field it sent unread lists files too. Not trained yet (trained_at null, not just
    absent, when photos are listed) and no checkpoint listed is training (a FaceID
    tune, never a checkpoint, has trained_at from its creation)."""
    kinds = {asset.kind for asset in assets_of(tune)} | {k for k, _ in tune.field_errors}
    untrained = tune.raw.get("trained_at") is None and ("trained_at" in tune.raw or not kinds)
    if untrained and "checkpoint" not in kinds:
        return "training"
    return "files_listed" if kinds else "no_files_listed"


def has_expired(tune: Tune, now: datetime) -> bool:
    """True when the tune's expires_at is readable and has passed: its files may be gone."""
    expires = parse_moment(tune.raw.get("expires_at"))
    return expires is not None and expires <= now
