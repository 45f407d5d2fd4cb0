"""A journal line a full disk cut short (write() stores part of it): the blob it names,
and its file's entry rebuilt when the cut came after its sha256, or inside it past its
16th digit: the one stored blob whose sha256 starts so (64 bits: no other's by chance).

An entry's fields are written kind, index, url, its prompt's, status, sha256, then size,
path and content_type (manifest.entry_dict): a line holding its sha256 whole holds every
field that says which file it is. The size is the held blob's, whose name is its sha256:
its bytes are that file's, as the line's were to say; the content type is lost (null).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence

from tune_archiver.errors import ArchiverError, UnreadableManifest
from tune_archiver.manifest import Entry, parse_entry
from tune_archiver.models import StoredBlob

SHA256 = re.compile(rb'"sha256":"([0-9a-f]{64})"')  # a key: a string's quotes are escaped
CUT_SHA256 = re.compile(rb'"sha256":"([0-9a-f]{16,63})\Z')  # the line cut inside it
Listed = Callable[[], Awaitable[Sequence[StoredBlob]]]  # the store's blobs (Store.blobs)


def cut_blobs(cut: list[bytes]) -> set[str]:
    """The sha256 that lines cut short name, as far as each was written."""
    return {found[1].decode() for line in cut if (found := SHA256.search(line))}


def cut_prefixes(cut: list[bytes]) -> set[str]:
    """The first 16 to 63 digits of the sha256 the `cut` lines were cut inside: each names
    the one stored blob whose sha256 starts so, which a fetch rebuilds the line from."""
    return {found[1].decode() for line in cut if (found := CUT_SHA256.search(line))}


async def rebuilt(line: bytes, held: Callable[[str], Awaitable[int | None]],
                  listed: Listed | None = None) -> Entry | None:
    """The ok entry the cut `line` was, its blob `held` (the store's size of a blob); None
    when its sha256 was not written whole (nor its first 16 digits, one blob `listed`
    starting so), its blob is not held, or it is no entry."""
    try:
        if listed is not None and (cut := CUT_SHA256.search(line)):
            named = [blob.sha256 for blob in await listed() if blob.sha256.startswith(
                cut[1].decode())]
            line = line[:cut.start(1)] + named[0].encode() + b'"' if len(named) == 1 else line
        found = SHA256.search(line)
        value = json.loads(line[:found.end()] + b"}") if found else None
        if not isinstance(value, dict) or value.get("status") != "ok":
            return None
        size = await held(found[1].decode()) if found else None
        if size is None:
            return None
        value.update(size=size, content_type=None)
        return parse_entry(value, "a journal line cut short", not_an_entry)
    except (ValueError, RecursionError, UnreadableManifest, ArchiverError):
        return None


def not_an_entry(reason: str) -> UnreadableManifest:
    """parse_entry's error for a journal line that is no entry (the journal's too)."""
    return UnreadableManifest(0, reason, b"")
