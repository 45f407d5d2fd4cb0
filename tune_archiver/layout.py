"""The archive's layout (a stable contract): where blobs, manifests and partials live.

    objects/sha256/<first 2 hex>/<64 hex>   immutable blobs, named by their sha256
    manifests/<tune_id>.json                one manifest per tune
    manifests/<tune_id>.lock                held by the one run writing it (local archive)
    manifests/damaged/<tune_id>-<time>.json manifests that could not be read, set aside
    tmp/                                    partial downloads; never referenced
    tmp/damaged/<sha256>-<time>             blobs verify --repair moved aside; never removed
"""

from __future__ import annotations

import re
from typing import TypeGuard

OBJECTS = "objects/sha256"
MANIFESTS = "manifests"
DAMAGED = f"{MANIFESTS}/damaged"
TMP = "tmp"
# The largest manifest read back. One of a tune with every generated image of a busy
# account is a few MiB (about 1 KiB a file); past this it is not one of ours.
MAX_MANIFEST_BYTES = 256 * 2**20
DAMAGED_BLOBS = f"{TMP}/damaged"

_SHA256 = re.compile(r"[0-9a-f]{64}")
# A tune id as it names a file: ASCII digits, no leading zero. str.isdigit() would take
# a superscript two (which int() refuses), and int() reads "01", or an Arabic-Indic
# digit one, as 1: another tune's id.
_TUNE_ID = re.compile(r"[1-9][0-9]*")


def is_sha256(value: object) -> TypeGuard[str]:
    """True for a lower-case hex sha256 digest, the only thing a blob is named by."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def blob_key(sha256: str) -> str:
    """The blob's path relative to the archive; refuses anything that is not a digest."""
    if not is_sha256(sha256):
        raise ValueError(f"not a sha256 digest: {sha256!r}")
    return f"{OBJECTS}/{sha256[:2]}/{sha256}"


def named_blob(path: object) -> str | None:
    """The sha256 a manifest entry's recorded `path` names by its last part (in any case,
    under any folder: an older layout, a hand edit); None when it names no digest."""
    name = path.rsplit("/", 1)[-1].lower() if isinstance(path, str) else None
    return name if is_sha256(name) else None


def tune_id_of(text: str) -> int | None:
    """The tune id `text` spells exactly as manifest_key writes it; None for anything else."""
    return int(text) if _TUNE_ID.fullmatch(text) else None


def manifest_id(name: str) -> int | None:
    """The tune whose manifest a file in manifests/ named `name` is (<id>.json); None
    for any other name, which is no manifest."""
    return tune_id_of(name.removesuffix(".json")) if name.endswith(".json") else None


def manifest_key(tune_id: int) -> str:
    """The manifest's path relative to the archive."""
    if isinstance(tune_id, bool) or not isinstance(tune_id, int) or tune_id <= 0:
        raise ValueError(f"not a tune id: {tune_id!r}")
    return f"{MANIFESTS}/{tune_id}.json"
