"""`retrain`: a new tune from an archived tune's training images (POST /tunes).

FaceID and Flux LoRA weights are never downloadable: for them the training images
are the only way back. A dry run by default; `--yes` sends the images, each read
from its blob and checked against its sha256 first, so nothing damaged is sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from tune_archiver import manifest
from tune_archiver.astria.client import AstriaClient
from tune_archiver.commands.names import extension
from tune_archiver.commands.nulls import photo_key, standing_in
from tune_archiver.commands.retrain_marks import marking, refusal, settled, unmark
from tune_archiver.commands.workspaces import ALL
from tune_archiver.config import Settings
from tune_archiver.download.staging import RETRAIN_COPY_PREFIX, Staging, staging_for
from tune_archiver.errors import (
    ArchiverError,
    AuthError,
    ConfigError,
    ConnectError,
    DataError,
    IntegrityError,
    NetworkError,
    StatusError,
    storage_error,
)
from tune_archiver.manifest import Entry, Manifest
from tune_archiver.models import parse_tune
from tune_archiver.net.session import new_session
from tune_archiver.store import Store, blob_sizes
from tune_archiver.threads import in_thread

log = logging.getLogger(__name__)

# The tune's own fields sent again (when the archived tune has them as plain values).
KEPT_FIELDS = ("name", "token", "branch", "base_tune_id", "model_type", "face_crop", "preset")


@dataclass(frozen=True)
class RetrainPlan:
    """What a retrain sends: the tune[...] fields and the training images' entries."""

    tune_id: int
    fields: tuple[tuple[str, str], ...]
    images: tuple[Entry, ...]
    missing: tuple[str, ...]  # training images not archived: they cannot be sent


@dataclass
class RetrainResult:
    """A plan, and whether it was sent, with the tune the API created (or returned)."""

    plan: RetrainPlan
    sent: bool = False
    created: dict[str, Any] = field(default_factory=dict)
    # A dry run's photos whose blob the archive no longer holds whole: --yes would
    # refuse at the first, nothing sent; one line each.
    lost: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """What `retrain` prints (without --json)."""
        plan = self.plan
        lines = [f"tune {plan.tune_id}: {len(plan.images)} training images, fields "
                 + ", ".join(f"{name}={value}" for name, value in plan.fields)]
        lines += [f"tune {plan.tune_id}: {gap}" for gap in plan.missing]
        if self.sent:
            lines.append(f"created tune {self.created.get('id')} (POST /tunes)")
        elif self.lost:
            lines.append("dry run: nothing sent; --yes would send nothing while a photo's "
                         "blob is lost (run verify --repair)")
        else:
            lines.append("dry run: nothing sent; add --yes to create the tune")
        return lines

    def errors(self) -> list[str]:
        """What a dry run says on stderr (with -q too): each photo whose blob is lost."""
        return [f"tune {self.plan.tune_id}: {gap}" for gap in self.lost]

    def as_json(self) -> dict[str, Any]:
        return {
            "tune_id": self.plan.tune_id, "sent": self.sent,
            "fields": dict(self.plan.fields), "images": len(self.plan.images),
            "missing": list(self.plan.missing), "lost": list(self.lost),
            "created": self.created or None,
        }


def default_title(found: Manifest, today: date) -> str:
    """"<title> (restored YYYY-MM-DD)": a second --yes the same day finds the title in
    the manifest's retrained and sends nothing (and Astria's idempotency, when on,
    would return the tune the first created)."""
    return f"{found.title or f'tune {found.tune_id}'} (restored {today.isoformat()})"


def retrain_plan(found: Manifest, title: str) -> RetrainPlan:
    """The POST /tunes for an archived tune, under `title`; pure."""
    fields = [("tune[title]", title)]
    for name in KEPT_FIELDS:
        value = found.tune.get(name)
        if isinstance(value, bool):
            fields.append((f"tune[{name}]", "true" if value else "false"))
        elif isinstance(value, int | float | str) and value != "":
            fields.append((f"tune[{name}]", str(value)))
    training = [entry for entry in found.entries if entry.kind == "training_image"]
    try:  # orig_images as the API gave it: a null in it is a photo with no entry
        unread = parse_tune({**found.tune, "id": found.tune_id,
                             "orig_images": _unaccounted(found, training)}).field_errors
    except DataError:
        unread = ()
    # Each photo once: an older fetch's entry kept for a photo since moved to another
    # URL holds the blob the new one does.
    photos = {entry.blob.sha256: entry for entry in reversed(training) if entry.blob is not None}
    return RetrainPlan(
        found.tune_id, tuple(fields),
        tuple(entry for entry in training if entry.blob is not None
              and photos[entry.blob.sha256] is entry),
        tuple(f"training_image {entry.index}: not archived ({entry.error or entry.status})"
              for entry in training if entry.blob is None)
        + tuple(error for kind, error in unread if kind == "training_image"),
    )


def _unaccounted(found: Manifest, training: list[Entry]) -> Any:
    """orig_images less a null for each archived photo it no longer names: an older
    fetch's entry, kept, may be the photo the API now lists as null (said missing,
    it was a photo the plan sends). One holding the bytes of a photo it names (the
    photo moved to another URL), or of another such entry, stands for no null."""
    listed = found.tune.get("orig_images")
    if not isinstance(listed, list):
        return listed
    named = {photo_key(item) for item in listed if isinstance(item, str)}
    kept = standing_in((photo_key(entry.url) in named, entry.blob.sha256) for entry in training
                       if entry.blob is not None)
    unnamed = [i for i, item in enumerate(listed) if not isinstance(item, str)][:kept]
    return [item for i, item in enumerate(listed) if i not in unnamed]


async def retrain(
    settings: Settings, store: Store, tune_id: int, yes: bool, now: datetime,
    title: str | None = None, staging: Staging | None = None,
    answered: list[dict[str, Any]] | None = None,
) -> RetrainResult:
    """Plan the retrain of an archived tune (titled `title`, else default_title); with
    `yes`, send it and record the new tune in the archived tune's manifest. Each photo
    is read back through a copy in the archive's `staging` (its tmp/, or an S3
    archive's own folder), never in the system's temp folder.

    Raises ArchiverError when the tune is not archived, has no training image or was
    retrained under that title already (nothing is sent), ConfigError for `--workspace
    all` when the manifest does not say the tune's workspace,
    IntegrityError when a blob does not match its sha256 (nothing is sent), what the
    client raises for a POST that made no tune (sent once, never retried), and
    ArchiverError saying so for one that may have made it (sent, then no answer).
    The API's answer is put in `answered` as it comes: the caller's to say if stopped.
    """
    found = await manifest.read(store, tune_id)
    if found is None:
        raise ArchiverError(f"tune {tune_id} is not in the archive {store}")
    if settings.workspace == ALL:
        # X-Workspace-Id: all spans every workspace for a listing; a tune is created in
        # one. The archived tune's own, as its manifest records it, is the one meant.
        if found.workspace is None:
            raise ConfigError(f"tune {tune_id}: --workspace all names no workspace to create "
                              "the tune in, and its manifest does not say its own: give "
                              "--workspace ID (or personal)")
        settings = replace(settings, workspace=found.workspace)
    plan = retrain_plan(found, title or default_title(found, now.astimezone(UTC).date()))
    if not plan.images:
        raise ArchiverError(f"tune {tune_id}: no training image is archived; nothing to "
                            "retrain from")
    # A second --yes under a title already retrained would train (and bill) again on an
    # account without Astria's idempotency, and with it record the same tune twice. A
    # dry run says so too: "add --yes" would invite a --yes that refuses.
    sent_title = dict(plan.fields)["tune[title]"]
    if refused := refusal(found, sent_title, chosen=title is not None):
        raise refused
    lost = await _lost(store, plan)
    if not yes:  # said as --yes would find it, each lost photo not counted as sent
        return RetrainResult(replace(plan, images=tuple(
            entry for entry in plan.images if entry.blob and entry.blob.sha256 not in lost)),
            lost=tuple(lost.values()))
    if lost:
        raise IntegrityError(f"{next(iter(lost.values()))}; nothing was sent (run verify "
                             "--repair)")
    # Checked as a fetch checks it, before the first write: root's retrain of a user's
    # archive (its tmp/ removed) would leave a tmp/ and a manifest its owner cannot use.
    await store.prepare()
    staging = staging or staging_for(settings.archive)
    await staging.prepare()
    images = [(f"{entry.index:03d}{extension(entry.content_type, entry.url)}",
               await _verified(store, entry, staging.directory)) for entry in plan.images]
    # Said and recorded whatever stops the run once the answer came: a stop while the
    # session closes (a proxy slow to hang up) lost the id of a tune made and billed.
    created: dict[str, Any] | None = None  # an answer of {} is one, naming no tune
    try:
        async with new_session(settings, decompress=True) as session:
            api = AstriaClient(session, settings, asyncio.Semaphore(1))
            await _title_free(api, tune_id, sent_title)
            # Marked sent first, under the manifest's lock: a run killed once the API has
            # it (the tune made and billed, nothing recorded), run again, or a second run
            # meanwhile, finds the title and sends nothing.
            await store.update_manifest(tune_id, marking(tune_id, sent_title, now,
                                                         chosen=title is not None))
            try:
                created = await api.create_tune(plan.fields, images)
                if answered is not None:
                    answered.append(created)
            except (NetworkError, StatusError, DataError, AuthError) as exc:
                if isinstance(exc, ConnectError | AuthError) or (
                        isinstance(exc, StatusError) and 400 <= exc.status < 500):
                    await unmark(store, tune_id, sent_title, now)
                    raise  # never sent, or refused: no tune was made (a 202 or a 303 to
                    # the tune may have made it)
                if isinstance(exc, NetworkError) and _cut_short(images):
                    # The API (or a proxy's limit on a body's size) hung up before the
                    # last photo went: a form never whole makes no tune, and "may have
                    # created" kept the title from a run once the limit is mended.
                    await unmark(store, tune_id, sent_title, now)
                    raise NetworkError(f"{exc}; the connection closed before every photo "
                                       "was sent: no tune was made (the API's or a "
                                       "proxy's limit on a request's size?)") from exc
                # Sent, and then no answer (a timeout, a cut, a 504 from a front proxy) or a
                # 2xx one not to be read: the tune may exist and be billed; exit 4 would say
                # "nothing done", and invite sending it again.
                raise ArchiverError(f"{exc}; the API may have created the tune all the same: "
                                    "look for it before sending again") from exc
            except asyncio.CancelledError:
                if _cut_short(images):  # before the last photo went (a slow uplink): the
                    await unmark(store, tune_id, sent_title, now)  # title free again
                    log.error("tune %d: stopped before every photo of POST /tunes was "
                              "sent: no tune was made", tune_id)
                    raise
                # Stopped (a Ctrl-C, a cron's timeout) with the POST on its way or sent: the
                # tune may exist and be billed, and "stopped by SIGTERM" alone invites sending
                # it again. An error line, so that -q says it too.
                log.error("tune %d: stopped while POST /tunes was sent: the API may have "
                          "created the tune all the same: look for it before sending again",
                          tune_id)
                raise
    except asyncio.CancelledError:
        if created is not None:  # the stop waits for the record (a second stop cuts it)
            try:
                await _recorded(store, tune_id, sent_title, now, created)
            except ArchiverError as exc:
                log.error("%s", exc)  # each says what became of the tune
            else:
                log.error("tune %d: stopped once the API answered: created tune %s, "
                          "recorded in its manifest", tune_id, created["id"])
        raise
    await _recorded(store, tune_id, sent_title, now, created)
    if plan.missing:  # a tune billed on fewer photos than it had: said with -q too
        log.error("tune %d: created tune %d from %d training images; not sent: %s", tune_id,
                  created["id"], len(plan.images), "; ".join(plan.missing))
    return RetrainResult(plan, sent=True, created=created)


async def _recorded(
    store: Store, tune_id: int, sent_title: str, now: datetime, created: dict[str, Any]
) -> None:
    """Record the tune a POST under `sent_title` created in the manifest of `tune_id`;
    raises ArchiverError, saying the tune may exist, for an answer naming none."""
    new_id = created.get("id")
    if not isinstance(new_id, int) or isinstance(new_id, bool):
        # A 2xx without a tune id: "created tune None" and exit 0, with nothing recorded,
        # would invite sending (and billing) it again.
        raise ArchiverError("creating the tune: the API answered without a tune id; the "
                            "API may have created the tune all the same: look for it "
                            "before sending again")
    if new_id == tune_id:
        # Astria's idempotency answers a title already used with that tune: here the
        # archived one itself. Nothing was trained; "created tune 5" would be untrue.
        await unmark(store, tune_id, sent_title, now)
        raise ArchiverError(
            f"tune {tune_id}: the API answered with tune {tune_id} itself, whose title is "
            "the one sent: nothing was created (choose another --title)")
    try:
        await store.update_manifest(tune_id, settled(tune_id, sent_title, now, created))
    except ArchiverError as exc:  # the tune exists and is billed: said, or sent again
        raise ArchiverError(f"created tune {new_id}, but the manifest of tune {tune_id} "
                            f"could not record it: {exc}") from exc
    except asyncio.CancelledError:  # stopped while recording it: the same, said as well
        log.error("created tune %d, but stopped before the manifest of tune %d surely "
                  "recorded it: do not send it again", new_id, tune_id)
        raise


async def _title_free(api: AstriaClient, tune_id: int, title: str) -> None:
    """Raises ArchiverError when a tune of the account has `title`: Astria's idempotency
    answers a POST under it with that tune, nothing trained ("created tune N" would be
    untrue, and recorded), and without it a second tune is trained and billed (another
    copy of the archive retrained it today). Of every workspace too: the idempotency
    answers with a tune of another one, unseen by a listing of the scope the POST goes
    to; a key refused that listing (or a 5xx) has the scope's alone. One throttled (429,
    408) the key may list: the lookup is not done, and it stops, unsent."""
    found = await api.list_tunes(query={"title": title})  # a failure stops it, unsent
    try:
        found += await api.list_tunes(ALL, query={"title": title})
    except (AuthError, StatusError) as exc:
        if isinstance(exc, StatusError) and exc.status in (408, 429):
            raise
    for listed in found:
        if listed.get("title") == title:
            raise ArchiverError(
                f"tune {tune_id}: the account already has tune {listed.get('id')} titled "
                f"{title!r}: the API would answer with it, nothing trained (or train and "
                "bill it again): nothing was sent (choose another --title)")


async def _verified(store: Store, entry: Entry, scratch: Path) -> io.BytesIO:
    """The bytes of the entry's blob, checked against its sha256, copied through a
    folder of its own in `scratch`: a stream that alone holds them (aiohttp copies the
    bytes of one made of bytes held elsewhere, each photo twice in memory as sent)."""
    blob = entry.blob
    assert blob is not None  # the plan holds archived entries only
    try:  # out of inodes, a tmp/ made read-only: said on one line, nothing sent
        copy = tempfile.TemporaryDirectory(prefix=RETRAIN_COPY_PREFIX, dir=scratch)
    except OSError as exc:
        raise storage_error(exc, scratch, "copy a photo out of the archive") from exc
    with copy as folder:
        # 0700; one a killed retrain leaves is swept by gc a day later
        target = Path(folder) / "blob"
        try:  # the store checks the bytes it copies out too: said as ours
            await store.save_blob_as(blob.sha256, target, hard_link=False, size=blob.size)
        except IntegrityError as exc:
            raise _damaged(entry) from exc
        photo = io.BytesIO(await in_thread(target.read_bytes))
    with photo.getbuffer() as data:
        if hashlib.sha256(data).hexdigest() != blob.sha256:
            raise _damaged(entry)
    return photo


async def _lost(store: Store, plan: RetrainPlan) -> dict[str, str]:
    """Each photo's sha256 whose blob the archive no longer holds whole, and why:
    --yes stops at the first, and a dry run that counted it among those sent said exit 0
    for a retrain that would not be made."""
    sizes = await blob_sizes(store, {entry.blob.sha256 for entry in plan.images
                                     if entry.blob is not None})
    lost = {}
    for entry in plan.images:
        assert entry.blob is not None  # the plan holds archived entries only
        size = sizes.get(entry.blob.sha256)
        if size != entry.blob.size:
            lost[entry.blob.sha256] = (f"training_image {entry.index}: its blob is "
                                 + ("missing from the archive" if size is None else
                                    f"{size} bytes, not the {entry.blob.size} archived"))
        # Its bytes too (a few MB a photo): one rotted at its size, counted as sent, made
        # a dry run say 'add --yes', exit 0, of a --yes that refuses at it.
        elif await store.hash_blob(entry.blob.sha256, lambda _: None) != (
                size, entry.blob.sha256):
            lost[entry.blob.sha256] = (f"training_image {entry.index}: its blob does not "
                                       "match its sha256")
    return lost


def _cut_short(images: list[tuple[str, io.BytesIO]]) -> bool:
    """Whether a photo of a POST that failed was never read to its end into the body."""
    for _, photo in images:
        with photo.getbuffer() as view:
            if photo.tell() < view.nbytes:
                return True
    return False


def _damaged(entry: Entry) -> IntegrityError:
    return IntegrityError(f"training_image {entry.index}: its blob "
                          "does not match its sha256; nothing was sent (run verify)")
