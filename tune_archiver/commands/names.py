"""Pure naming for `export`: safe folder and file names from titles, URLs and types.

Every name is built from a small alphabet, so none can climb out of the export
folder, whatever a tune's title or a URL holds.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit

from tune_archiver.manifest import Entry
from tune_archiver.models import PROMPT_KINDS

MAX_SLUG = 60
MAX_NUMBER = 10**20  # an index or prompt id in a name: past any real one, far below NAME_MAX
# Content types whose extension we know; others come from the URL's path.
EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/tiff": ".tiff",
    "image/bmp": ".bmp",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "audio/mp4": ".m4a",
    "audio/mpeg": ".mp3",
    "audio/wav": ".wav",
    "audio/flac": ".flac",
    "audio/ogg": ".ogg",
    "application/x-safetensors": ".safetensors",
    "application/x-pytorch": ".ckpt",
    "application/zip": ".zip",
}
FOLDERS = {"checkpoint": "checkpoints", "training_image": "training_images",
           "prompt_image": "prompt_images", "prompt_input": "prompt_inputs",
           "face_swap_image": "face_swap_images"}
_SUFFIX = re.compile(r"\.[a-z0-9]{1,12}")
# Suffixes a browser opens as a page that runs scripts and loads from the network (a
# file the URL named so is one index.html would link as a page, not an image), and
# those Windows Explorer acts on when it merely lists the folder (a .url's or .scf's
# icon, a .theme's images, fetched from a share, sending the login's credentials):
# .bin instead. Safari opens a .webarchive as a page. Chromium also opens .shtm, .xhtm
# and .ehtml as HTML, and .rss, .atom, .xsd, .xbl and .rng as XML, whose XHTML <script>
# runs; Firefox's own table of types has .ehtml as HTML, .mml, .rdf and .xul as XML.
ACTIVE = frozenset({".html", ".htm", ".shtml", ".shtm", ".ehtml", ".xhtml", ".xht", ".xhtm",
                    ".xml", ".xsl", ".xslt", ".xsd", ".xbl", ".rng", ".rss", ".atom",
                    ".mml", ".rdf", ".xul",
                    ".svg", ".svgz", ".mht", ".mhtml", ".js", ".mjs", ".hta", ".webarchive",
                    ".url", ".scf", ".lnk", ".desktop", ".theme", ".themepack"})


def slug(title: Any) -> str:
    """Lower-case ASCII letters, digits and single dashes; "tune" when nothing is left."""
    text = unicodedata.normalize("NFKD", title if isinstance(title, str) else "")
    text = text.encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return text[:MAX_SLUG].rstrip("-") or "tune"


def folder_name(tune_id: int, title: Any) -> str:
    """The export folder of a tune: <id>-<slug>."""
    return f"{tune_id}-{slug(title)}"


def extension(content_type: Any, url: Any) -> str:
    """The file extension: from a known content type, else the URL's path (unless a
    browser would run it), else .bin."""
    if isinstance(content_type, str):
        known = EXTENSIONS.get(content_type.split(";")[0].strip().lower())
        if known:
            return known
    try:
        path = urlsplit(url).path if isinstance(url, str) else ""
    except ValueError:  # "http://[x/a": any string passes the manifest's reader
        path = ""
    name = path.rsplit("/", 1)[-1].lower()
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    return suffix if _SUFFIX.fullmatch(suffix) and suffix not in ACTIVE else ".bin"


def _fits(number: Any) -> bool:
    """A number a file name can hold: a damaged manifest's index of a thousand digits
    (json reads up to 4,300) would make a name too long for any filesystem."""
    return isinstance(number, int) and 0 <= number < MAX_NUMBER


def export_path(entry: Entry, taken: set[str]) -> str:
    """The path of one archived file inside the export folder, unique among `taken`.

    checkpoints/000.safetensors, training_images/003.jpg, prompt_images/<prompt>-001.png.
    Two files with the same place (one the API no longer lists) get the sha256's
    first 8 hex digits appended, and a count after them when that is taken too (two
    older entries of the place holding the same bytes under two URLs). The entry's
    fields are checked again here, so even one the reader would refuse cannot name a
    path outside the folder.
    """
    kind, index = entry.kind, entry.index
    folder = FOLDERS.get(kind if isinstance(kind, str) else "", "other")
    stem = f"{index:03d}" if _fits(index) else "file"
    prompt_id = entry.prompt_id
    if kind in PROMPT_KINDS and _fits(prompt_id):
        stem = f"{prompt_id}-{stem}"
    suffix = extension(entry.content_type, entry.url)
    path = f"{folder}/{stem}{suffix}"
    if path in taken:
        stem = f"{stem}-{str(entry.sha256)[:8]}"
        path, count = f"{folder}/{stem}{suffix}", 1
        while path in taken:
            count += 1
            path = f"{folder}/{stem}-{count}{suffix}"
    taken.add(path)
    return path
