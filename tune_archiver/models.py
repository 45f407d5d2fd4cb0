"""The data tune-archiver works with, and `parse_tune`, which checks the API's JSON.

Pure: nothing here touches the network, the disk or the clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, get_args

from tune_archiver.errors import DataError
from tune_archiver.urls import download_key

AssetKind = Literal[
    "checkpoint", "training_image", "prompt_image", "prompt_input", "face_swap_image"
]
PROMPT_KINDS: frozenset[str] = frozenset({"prompt_image", "prompt_input"})  # a prompt's files
# Fewer bytes than this is an error page or a glitch, never the file: retried, not archived.
SMALLEST: dict[str, int] = {"checkpoint": 1024}
ASSET_KINDS: tuple[AssetKind, ...] = get_args(AssetKind)


def with_prompts(kinds: Iterable[str | None]) -> str:
    """` --prompts` when a file to fetch again is a prompt's: a fetch without it never
    asks for one again, and would exit 0 with the file still failed."""
    return " --prompts" if any(kind in PROMPT_KINDS for kind in kinds) else ""


def see_verify(tune_id: int, also: str = "") -> str:
    """How a tune's error ends that verify explains: `also` (the archive, said where the
    error is printed: report.fetch_errors) is added there, else pasted it verified
    ./tune-archive."""
    return f"(see tune-archiver verify {tune_id}{also})"


# The other inputs a prompt may name (the API documents them as request fields): after
# input_image, image_references[] and input_video, so the indices of those never move.
MORE_INPUTS = ("mask_image", "video_first_frame", "video_last_frame", "audio_reference")


@dataclass(frozen=True)
class Prompt:
    """A prompt of a tune and the images generated from it, which expire with the tune."""

    id: int
    text: str | None  # its video_prompt when it has no text (text-to-video)
    image_urls: tuple[str, ...]  # what it generated: images, and videos
    tune_id: int | None = None  # the tune it was created on (the base tune, for a LoRA)
    input_urls: tuple[str, ...] = ()  # the user's own: input_image, image_references, input_video
    # Why its files could not all be read (a field malformed: the URLs it holds are
    # listed), or are not all known yet (still generating: its images to come).
    error: str | None = None
    # The tunes its text or video_prompt names with <lora:ID:..> or <faceid:ID:..>: a
    # Seedance 2 reference video names them in video_prompt alone, often with no text.
    names: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Tune:
    """A tune as the API returned it; `raw` keeps every field, known or not."""

    id: int
    raw: dict[str, Any]
    checkpoint_urls: tuple[str, ...]  # ckpt_urls plus ckpt_url, deduplicated, in order
    image_urls: tuple[str, ...]  # orig_images
    face_swap_urls: tuple[str, ...] = ()  # face_swap_images (LoRA and FaceID tunes)
    # A file field not (all) read, and why: one malformed field, or one null among its
    # URLs, must not cost the files of the others; the tune is then not complete.
    field_errors: tuple[tuple[AssetKind, str], ...] = ()
    prompts: tuple[Prompt, ...] = ()  # only when asked for (fetch --prompts)
    # What of its prompts could not be read (a listing, or one prompt): their files are
    # not known, so the tune is not complete; its other files are archived still.
    prompt_errors: tuple[str, ...] = ()

    @property
    def title(self) -> str | None:
        title = self.raw.get("title")
        return title if isinstance(title, str) else None

    @property
    def unread_kinds(self) -> frozenset[str]:
        """The kinds of file whose field was not all read (see field_errors)."""
        return frozenset(kind for kind, _ in self.field_errors)


@dataclass(frozen=True, slots=True)  # thousands are kept: results
class Asset:
    """One file of a tune: which list it came from, its place there, and its URL."""

    kind: AssetKind
    index: int  # place in its list: ckpt_urls, orig_images, or the prompt's images
    url: str
    prompt_id: int | None = None  # prompt images and inputs only
    prompt_text: str | None = None
    prompt_tune_id: int | None = None  # the tune the prompt was created on, when known


def file_said(asset: Asset) -> str:
    """What a line calls a file: its kind and index, and a prompt's file its prompt's id
    too (fifty prompts each have a prompt_image 0); never its text, which may be anything."""
    of = f" of prompt {asset.prompt_id}" if asset.prompt_id is not None else ""
    return f"{asset.kind} {asset.index}{of}"


@dataclass(frozen=True, slots=True)  # thousands are kept: results
class Blob:
    """A verified blob in the archive."""

    sha256: str
    size: int
    content_type: str | None = None


@dataclass(frozen=True)
class StoredBlob:
    """A blob found in the store by a walk (gc, verify)."""

    sha256: str
    size: int
    modified: datetime


@dataclass(frozen=True, slots=True)  # thousands are kept: results
class AssetResult:
    """What became of one asset: a blob (new or already archived) or an error."""

    asset: Asset
    blob: Blob | None = None
    error: str | None = None
    reused: bool = False  # known from the last manifest: nothing was downloaded
    # Refused upstream (403/404/410) after the tune expired: lost for good, not failed.
    gone: bool = False

    @property
    def ok(self) -> bool:
        return self.blob is not None

    @property
    def failed(self) -> bool:
        """Not archived, and worth trying again."""
        return self.blob is None and not self.gone

    @property
    def newly_gone(self) -> bool:
        """Found gone upstream by this run: said once, then never asked for again."""
        return self.gone and not self.reused


@dataclass(frozen=True, slots=True)  # thousands are kept: results
class TuneResult:
    """The outcome for one tune: its assets, or why it could not be archived at all."""

    tune_id: int
    assets: tuple[AssetResult, ...] = ()
    title: str | None = None
    error: str | None = None  # the tune itself failed (not found, bad data, ...)
    seconds: float = 0.0
    manifest: str | None = None  # path of the manifest written, relative to the archive
    skipped: bool = False  # archived before, complete and unchanged: nothing was done
    state: str | None = None  # what the API listed: files_listed, training, no_files_listed
    expires_in: float | None = None  # seconds to its expires_at when done; None: none read
    prompts_unread: bool = False  # its prompts, asked for, not all read: none of their files known
    # Why its prompts never read are gone upstream, found so by this run (said once).
    prompts_gone: str | None = None

    @property
    def ok(self) -> bool:
        """True when nothing failed and nothing was first found gone by this run."""
        return (self.error is None and not self.failed and not self.gone
                and self.prompts_gone is None)

    @property
    def failed(self) -> list[AssetResult]:
        return [result for result in self.assets if result.failed]

    @property
    def gone(self) -> list[AssetResult]:
        """Files this run found gone upstream (those known gone before are not listed)."""
        return [result for result in self.assets if result.newly_gone]


def parse_tune(data: Any, requested_id: int | None = None) -> Tune:
    """Check a decoded Tune object and pick out what we download.

    Raises DataError naming the tune when the object is unusable: not an object, no
    positive integer `id`. A file field that is malformed (ckpt_urls, ckpt_url,
    orig_images, face_swap_images), or holds something that is not a URL string, is
    one of the tune's field_errors: the URLs it does hold are kept, and the other
    fields' files are archived. Unknown fields are kept in `raw`.
    """
    what = f"tune {requested_id}" if requested_id is not None else "a tune"
    if not isinstance(data, dict):
        raise DataError(f"{what}: the API returned {type(data).__name__}, not a JSON object")
    tune_id = data.get("id")
    if isinstance(tune_id, bool) or not isinstance(tune_id, int) or tune_id <= 0:
        raise DataError(f"{what}: the API's tune object has no valid 'id'")
    if requested_id is not None and tune_id != requested_id:
        raise DataError(f"{what}: the API returned tune {tune_id} instead")
    errors: list[tuple[AssetKind, str]] = []

    def urls(kind: AssetKind, *names: str) -> tuple[str, ...]:
        found: list[str] = []
        for name in names:
            taken, error = _tune_urls(data, name)
            found += taken
            if error is not None:
                some = "some " if taken else ""
                errors.append((kind, f"{some}{_SAID[kind]} not archived: {error}"))
        # A file's index is its place in Astria's list (a manifest, --only and export
        # name it so): one URL listed twice keeps both places, its bytes downloaded once.
        return tuple(found)

    listed = urls("checkpoint", "ckpt_urls")
    # ckpt_url is ckpt_urls[0] as a rule, but signed on its own: one file, never two
    # entries (each exported) for one checkpoint.
    keys = {download_key(url) for url in listed}
    single = [url for url in urls("checkpoint", "ckpt_url") if download_key(url) not in keys]
    return Tune(
        id=tune_id,
        raw=data,
        checkpoint_urls=(*listed, *single),
        image_urls=urls("training_image", "orig_images"),
        face_swap_urls=urls("face_swap_image", "face_swap_images"),
        field_errors=tuple(errors),
    )


_SAID = {"checkpoint": "checkpoints", "training_image": "training images",
         "face_swap_image": "face-swap images"}


def _tune_urls(data: dict[str, Any], name: str) -> tuple[list[str], str | None]:
    """The URLs of one of a tune's file fields (ckpt_url holds one, the others a list),
    and what is wrong with it, if anything: a list's strings are kept whatever else it
    holds."""
    value = data.get(name)
    if value is None:
        return [], None
    if name == "ckpt_url":  # one URL, not a list
        if isinstance(value, str):
            return [value] if value else [], None
        return [], f"'ckpt_url' is {_a(value)}, not a URL"
    if not isinstance(value, list):
        return [], f"'{name}' is {_a(value)}, not a list of URLs"
    found = [item for item in value if isinstance(item, str)]
    wrong = len(value) - len(found)
    if wrong == 0:
        return found, None
    return found, f"'{name}' holds {wrong} item{'s' if wrong > 1 else ''} that " \
                  f"{'are' if wrong > 1 else 'is'} not a URL"


def _a(value: Any) -> str:
    """What a JSON value is, briefly: "a JSON object", "a string"."""
    kinds = {dict: "a JSON object", list: "a list", str: "a string", bool: "true or false"}
    return kinds.get(type(value), "a number")


def parse_prompts(data: Any, what: str, tune_id: int | None = None) -> list[Prompt]:
    """Check one listing of prompts; raises DataError naming the listing (`what`) when
    it is not a list of objects with ids.

    A prompt's tune is its own `tune_id` field, else `tune_id` (the tune listed). A
    prompt whose file fields are malformed is kept with its `error` and the URLs they do
    hold: it fails alone, not every tune whose listing holds it.
    """
    if not isinstance(data, list):
        raise DataError(f"{what}: the API returned {type(data).__name__}, not a JSON list")
    prompts = []
    for item in data:
        prompt_id = listed_id(item, what)
        text, video_prompt = item.get("text"), item.get("video_prompt")
        text = text if isinstance(text, str) else None
        video_prompt = video_prompt if isinstance(video_prompt, str) else None
        names = named_tunes(text) | named_tunes(video_prompt)
        # A text-to-video prompt (Seedance 2's) has no text: its video_prompt made it.
        said = text if text and text.strip() else video_prompt or text
        created_on = item.get("tune_id")
        prompt = Prompt(id=prompt_id, text=said, image_urls=(), names=frozenset(names),
                        tune_id=created_on if _is_id(created_on) else tune_id)
        prompt = _with_files(prompt, item, f"{what}: prompt {prompt_id}")
        waiting = _generating(prompt, item, what) if prompt.error is None else None
        prompts.append(replace(prompt, error=waiting) if waiting else prompt)
    return prompts


def _generating(prompt: Prompt, item: dict[str, Any], what: str) -> str | None:
    """Why a prompt's images are not known yet: it is still generating (`trained_at` sent
    null, no image, no `user_error`; Astria's CLI takes a prompt as settled once it has
    images or a user_error). None when it is settled: its images are all it will have."""
    if prompt.image_urls or item.get("user_error") or "trained_at" not in item or (
            item["trained_at"] is not None):
        return None
    return (f"{what}: prompt {prompt.id} is still generating, no image yet: fetch again "
            "with --prompts once it is done")


def _with_files(prompt: Prompt, item: dict[str, Any], where: str) -> Prompt:
    """The prompt with its outputs and inputs. A field malformed, or an item of a list
    that is not a URL, is its error (not complete): the URLs it and the other fields do
    hold are kept, as a tune's are (one null image must not cost the other three)."""
    errors: list[str] = []

    def one(name: str) -> list[str]:
        value = item.get(name)
        if value is None or value == "":
            return []
        if isinstance(value, str):
            return [value]
        errors.append(f"{where}: '{name}' is not a URL string")
        return []

    def many(name: str) -> list[str]:
        value = item.get(name)
        if value is None:  # missing or null: none, a normal result
            return []
        if not isinstance(value, list):
            errors.append(f"{where}: '{name}' is not a list")
            return []
        found = [url for url in value if isinstance(url, str)]
        if len(found) < len(value):
            errors.append(f"{where}: '{name}' holds something that is not a URL string")
        return found

    inputs = [*one("input_image"), *many("image_references"), *one("input_video"),
              *(url for name in MORE_INPUTS for url in one(name))]
    return replace(prompt, image_urls=tuple(many("images")),
                   input_urls=tuple(dict.fromkeys(inputs)), error="; ".join(errors) or None)


# <lora:ID:weight> and <faceid:ID:weight>: a prompt on a base tune that uses tune ID. The
# weight may be left out: Astria's own motion-control example names `<faceid:123>`.
_NAMED = re.compile(r"<(?:lora|faceid):([0-9]{1,18})(?::[^<>]*)?>", re.IGNORECASE)


def named_tunes(text: str | None) -> set[int]:
    """The tunes a prompt's text (or video_prompt) names with <lora:ID:...> or <faceid:ID:...>."""
    return {int(found) for found in _NAMED.findall(text or "")}


def prompts_of(
    tune_id: int, own: Sequence[Prompt], account: Sequence[Prompt]
) -> tuple[Prompt, ...]:
    """The tune's prompts: its own, then every account prompt that names it (once each)."""
    seen = {prompt.id for prompt in own}
    return (*own, *(prompt for prompt in account
                    if prompt.id not in seen and tune_id in prompt.names))


def listed_id(item: Any, what: str) -> int:
    """The id of one item of a listing page; raises DataError when it has none."""
    item_id = item.get("id") if isinstance(item, dict) else None
    if isinstance(item_id, bool) or not isinstance(item_id, int) or item_id <= 0:
        raise DataError(f"{what}: the API listed an item without a valid 'id'")
    return item_id


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
