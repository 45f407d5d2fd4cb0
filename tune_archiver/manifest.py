"""The manifest: built (pure) from a tune and its results, encoded, and read back typed.

`parse` is the one reader of a manifest: bytes in, a Manifest out, or
UnreadableManifest saying what is wrong. Moving the bytes is the store's job;
this module never touches the disk or the network itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from tune_archiver.errors import NewerManifest, UnreadableManifest
from tune_archiver.layout import blob_key, is_sha256, named_blob
from tune_archiver.models import ASSET_KINDS, Asset, AssetKind, AssetResult, Blob, Tune
from tune_archiver.text import json_escaped
from tune_archiver.urls import identity, nested_too_deeply, redact, redact_json, redact_text

SCHEMA_VERSION = 1

Status = Literal["ok", "failed", "gone"]
STATUSES: tuple[Status, ...] = ("ok", "failed", "gone")
# What the API listed for the tune when the manifest was written.
State = Literal["files_listed", "training", "no_files_listed"]
STATES: tuple[State, ...] = ("files_listed", "training", "no_files_listed")


@dataclass(frozen=True)
class Entry:
    """One file of a manifest: where it came from, and its blob or why it failed.

    An ok entry always has `sha256` and `size`; `path` is as recorded (verify checks
    it against the sha256). `extra` holds the fields this version does not know, so
    rewriting the entry drops nothing.
    """

    kind: AssetKind
    index: int
    url: str
    status: Status
    sha256: str | None = None
    size: int | None = None
    path: str | None = None
    content_type: str | None = None
    error: str | None = None
    prompt_id: int | None = None
    prompt_text: str | None = None
    # urls.identity of the URL it was fetched from: the stored URL is redacted
    source: str | None = None
    prompt_tune_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False)  # a dict cannot be hashed

    @property
    def identity(self) -> str:
        """What knows this file again next run (older manifests have no `source`: their
        stored URL kept every value that names the file)."""
        return self.source or identity(self.url)

    @property
    def asset(self) -> Asset:
        return Asset(self.kind, self.index, self.url, self.prompt_id, self.prompt_text,
                     self.prompt_tune_id)

    @property
    def blob(self) -> Blob | None:
        """The archived blob of an ok entry; None for a failed one."""
        if self.status != "ok" or self.sha256 is None or self.size is None:
            return None
        return Blob(self.sha256, self.size, self.content_type)


@dataclass(frozen=True)
class Manifest:
    """One tune's manifest as read back: the tune object as archived, and every file."""

    tune_id: int
    archived_at: str
    complete: bool  # never of no file, which versions before ea3f71b wrote as complete
    tune: dict[str, Any] = field(hash=False)  # as the API returned it, URLs redacted
    entries: tuple[Entry, ...]
    state: State | None = None  # absent in manifests of earlier versions
    workspace: str | None = None  # the tune's workspace, when it could be told
    # The tunes `retrain --yes` created from this one: {"tune_id", "title", "at"} each.
    retrained: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    prompts_unread: str | None = None  # why --prompts could not read them: never complete
    extra: dict[str, Any] = field(default_factory=dict, hash=False)  # fields we do not know

    @property
    def title(self) -> str | None:
        title = self.tune.get("title")
        return title if isinstance(title, str) else None


@dataclass(frozen=True)
class CarriedOver(AssetResult):
    """An archived file the tune no longer lists, with its entry, so a rewrite keeps it all."""

    entry: Entry = field(kw_only=True, hash=False)


class ManifestSource(Protocol):
    """What `read` needs of a store."""

    async def read_manifest(self, tune_id: int) -> bytes | None: ...


# -- building ------------------------------------------------------------------------


def build_manifest(
    tune: Tune,
    results: Sequence[AssetResult],
    archived_at: datetime,
    complete: bool,
    state: State = "files_listed",
    workspace: str | None = None,
    retrained: Sequence[dict[str, Any]] = (),
    prompts_unread: str | None = None,
) -> dict[str, Any]:
    """The manifest for one tune, with every URL redacted.

    `complete` is true only when every file of the tune is archived; the caller
    decides it, since only it knows what was left out (a tune still training, its
    checkpoint yet to come; prompts not read, `prompts_unread`). No file: never complete.
    """
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tune_id": tune.id,
        "archived_at": format_time(archived_at),
        "complete": complete and bool(results) and all(result.ok for result in results),
        "state": state,
        **({"prompts_unread": prompts_unread} if prompts_unread is not None else {}),
    }
    if workspace is not None:
        document["workspace"] = workspace
    if retrained:
        document["retrained"] = redact_json(list(retrained))  # a --title's URL too
    document["tune"] = redact_json(tune.raw)
    document["assets"] = [asset_entry(result) for result in results]
    return document


def asset_entry(result: AssetResult) -> dict[str, Any]:
    """One asset of the manifest: where it came from and its blob, or why it failed.

    A file carried over from the previous manifest keeps its entry's extra fields
    (their URLs redacted, as everywhere in a manifest: in an error's text too).
    """
    asset, blob = result.asset, result.blob
    known = result.entry if isinstance(result, CarriedOver) else None
    entry = Entry(
        asset.kind, asset.index, redact(asset.url), "gone" if result.gone else "failed",
        error=redact_text(result.error) if result.error else "unknown error",
        prompt_id=asset.prompt_id,
        prompt_text=redact_text(asset.prompt_text, prompt=True) if asset.prompt_text
        else asset.prompt_text,
        prompt_tune_id=asset.prompt_tune_id, path=known.path if known else None,
        source=known.identity if known else identity(asset.url),
        extra=redact_json(known.extra) if known else {},
    )
    if blob is not None:
        entry = replace(entry, status="ok", sha256=blob.sha256, size=blob.size,
                        content_type=blob.content_type, error=None)
    return entry_dict(entry)


def entry_dict(entry: Entry) -> dict[str, Any]:
    """The entry as a manifest holds it: every known field, then every extra one.

    An ok entry's path names its sha256's blob, or another the recorded path names (gc keeps it).
    Raises ValueError for an ok entry without a valid sha256 and size.
    """
    written: dict[str, Any] = {"kind": entry.kind, "index": entry.index, "url": entry.url}
    if entry.source is not None:
        written["source"] = entry.source
    if entry.prompt_id is not None:
        written["prompt_id"] = entry.prompt_id
        written["prompt_text"] = entry.prompt_text
        if entry.prompt_tune_id is not None:
            written["prompt_tune_id"] = entry.prompt_tune_id
    written["status"] = entry.status
    blob = entry.blob
    if entry.status != "ok":
        written["error"] = entry.error or "unknown error"
    elif blob is None:
        raise ValueError(f"{entry.kind} {entry.index}: an ok entry needs a sha256 and a size")
    else:
        written["sha256"] = blob.sha256
        written["size"] = blob.size
        written["path"] = blob_key(named_blob(entry.path) or blob.sha256)
        written["content_type"] = blob.content_type
    for name, value in entry.extra.items():
        written.setdefault(name, value)  # a known field is never overridden by an extra one
    return written


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode(manifest: dict[str, Any]) -> bytes:
    """The manifest as the bytes written to disk, hidden characters escaped (`cat`-safe)."""
    return (json_escaped(json.dumps(manifest, indent=2, ensure_ascii=False)) + "\n").encode()


# -- reading -------------------------------------------------------------------------


async def read(store: ManifestSource, tune_id: int) -> Manifest | None:
    """The tune's manifest from the store; None when the store has none.

    Raises UnreadableManifest as `parse` does (and whatever the store raises).
    """
    data = await store.read_manifest(tune_id)
    return None if data is None else parse(data, tune_id)


def parse(data: bytes, tune_id: int) -> Manifest:
    """The manifest of `tune_id`, from the bytes of its file.

    Raises UnreadableManifest naming the tune and the first thing wrong when the
    bytes are not UTF-8 JSON of a version 1 manifest of this tune (NewerManifest for
    one of a later schema_version), as manifests/tune-manifest.schema.json has it: a
    known field with the wrong type, a required one missing. Unknown fields are allowed
    (the manifest and an entry keep them in `extra`), and so is an ok entry whose path
    does not match its sha256: verify reports that one as wrong_path.
    """

    def bad(reason: str) -> UnreadableManifest:
        return UnreadableManifest(tune_id, reason, data)

    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise bad("it is not UTF-8 text") from exc
    except ValueError as exc:
        raise bad(f"it is not JSON ({exc})") from exc
    except RecursionError as exc:
        raise bad("its JSON is nested too deeply") from exc
    # The tune, as deep as the client takes it, is one level down: read back, not refused.
    if nested_too_deeply(data, document, wrapping=1):
        raise bad("its JSON is nested too deeply")
    if not isinstance(document, dict):
        raise bad(f"it holds {_shown(document)}, not a JSON object")
    if _is_int(version := document.get("schema_version", 0)) and version > SCHEMA_VERSION:
        raise NewerManifest(tune_id, version, SCHEMA_VERSION, data)
    _field(document, "schema_version", _is_version, str(SCHEMA_VERSION), bad)
    found = _field(document, "tune_id", _is_int, "an integer", bad)
    if found != tune_id:
        raise bad(f"it is the manifest of tune {found}")
    archived_at = _field(document, "archived_at", _is_str, "a string", bad)
    complete = _field(document, "complete", _is(bool), "true or false", bad)
    tune = _field(document, "tune", _is(dict), "a JSON object", bad)
    assets = _field(document, "assets", _is(list), "a list", bad)
    entries = tuple(parse_entry(item, f"assets[{i}]", bad) for i, item in enumerate(assets))
    state = document.get("state")
    if state is not None and state not in STATES:
        raise bad(f"its state is {_shown(state)}, not one of {', '.join(STATES)}")
    workspace = _field(document, "workspace", _is_str, "a string", bad, required=False)
    retrained = _field(document, "retrained", _is_retrained, "a list of tunes", bad,
                       required=False)
    unread = _field(document, "prompts_unread", _is_str, "a string", bad, required=False)
    # Written complete before e014af3: a tune not trained yet, its checkpoint to come.
    training = complete and "trained_at" in tune and tune["trained_at"] is None and all(
        entry.kind != "checkpoint" for entry in entries)
    return Manifest(tune_id, archived_at, complete and bool(entries) and unread is None
                    and not training, tune, entries, "training" if training else state,
                    workspace, tuple(retrained or ()), unread,
                    {k: v for k, v in document.items() if k not in _TOP})


_TOP = frozenset({"schema_version", "tune_id", "archived_at", "complete", "state", "workspace",
                  "retrained", "prompts_unread", "tune", "assets"})
_KNOWN = frozenset({"kind", "index", "url", "source", "status", "sha256", "size", "path",
                    "content_type", "error", "prompt_id", "prompt_text", "prompt_tune_id"})
Bad = Callable[[str], UnreadableManifest]


def parse_entry(item: Any, where: str, bad: Bad) -> Entry:
    """One entry of "assets", checked; `where` names it in the message."""
    if not isinstance(item, dict):
        raise bad(f"{where} is {_shown(item)}, not a JSON object")
    kind = _field(item, "kind", _is_kind, f"one of {', '.join(ASSET_KINDS)}", bad, where)
    index = _field(item, "index", _is_index, "a non-negative integer", bad, f"{where} ({kind})")
    where = f"{where} ({kind} {index})"
    url = _field(item, "url", _is_str, "a string", bad, where)
    status = _field(item, "status", _is_status, "ok, failed or gone", bad, where)
    ok = status == "ok"
    return Entry(
        kind=kind,
        index=index,
        url=url,
        status=status,
        sha256=_field(item, "sha256", is_sha256, "64 lower-case hex digits", bad, where,
                      required=ok),
        size=_field(item, "size", _is_size, "a non-negative integer below 2^63", bad, where,
                    required=ok),
        path=_field(item, "path", _is_str, "a string", bad, where, required=False),
        content_type=_field(item, "content_type", _is_str, "a string or null", bad, where,
                            required=False),
        error=_field(item, "error", _is_str, "a string", bad, where, required=False),
        prompt_id=_field(item, "prompt_id", _is_id, "a positive integer", bad, where,
                         required=False),
        prompt_text=_field(item, "prompt_text", _is_str, "a string or null", bad, where,
                           required=False),
        source=_field(item, "source", _is_source, "32 lower-case hex digits", bad, where,
                      required=False),
        prompt_tune_id=_field(item, "prompt_tune_id", _is_id, "a positive integer", bad,
                              where, required=False),
        extra={name: value for name, value in item.items() if name not in _KNOWN},
    )


def _field(
    found: dict[str, Any],
    name: str,
    check: Callable[[Any], bool],
    should_be: str,
    bad: Bad,
    where: str | None = None,
    required: bool = True,
) -> Any:
    """found[name] if it passes `check`; an optional field may also be absent or null."""
    value = found.get(name)
    if value is None and not required:
        return None
    if not check(value):
        shown = "missing" if name not in found else _shown(value)
        raise bad(f"{where + ': ' if where else ''}{name} is {shown}, not {should_be}")
    return value


def _is_retrained(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, dict) and _is_id(item.get("tune_id")) for item in value
    )


def _is_source(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 32 and is_sha256(value * 2)


def _is_kind(value: Any) -> bool:
    return isinstance(value, str) and value in ASSET_KINDS


def _is_status(value: Any) -> bool:
    return isinstance(value, str) and value in STATUSES


def _is_version(value: Any) -> bool:
    return _is_int(value) and value == SCHEMA_VERSION


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python


def _is_index(value: Any) -> bool:
    return _is_int(value) and value >= 0


# No file is larger (off_t; an S3 object stops at 5 TiB). A size past it, as json reads
# up to 4,300 digits, would overflow every float the commands show sizes with.
MAX_SIZE = 2**63 - 1


def _is_size(value: Any) -> bool:
    return _is_index(value) and value <= MAX_SIZE


def _is_id(value: Any) -> bool:
    return _is_int(value) and value >= 1


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is(kind: type) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, kind)


def _shown(value: Any) -> str:
    """A value as a message shows it: short scalars as they are, anything else by its type."""
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a list"
    scalar = value is None or isinstance(value, bool | int | float | str)
    text = json.dumps(value, ensure_ascii=False) if scalar else ""
    if text and len(text) <= 70:  # room for a sha256
        return text  # null, true, 5, "a string" (quoted, newlines escaped: one line)
    return "a long string" if isinstance(value, str) else "a long number"
