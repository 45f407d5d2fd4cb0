"""File types from a file's first bytes, for when the server's Content-Type says nothing.

Pure: the caller reads the bytes (HEAD_BYTES of them are enough) and passes them in.
Asset URLs are usually plain keys without an extension, served as
application/octet-stream, so the bytes are the only witness of what a file is.
"""

from __future__ import annotations

import re

HEAD_BYTES = 64  # enough for every signature below
OCTET_STREAM = "application/octet-stream"
SAFETENSORS = "application/x-safetensors"  # no registered type; the format's own name
PYTORCH = "application/x-pytorch"  # a torch .ckpt/.pt: a zip holding data.pkl, or a pickle
# Types that say nothing about the bytes: the server did not know either.
GENERIC = frozenset({
    OCTET_STREAM, "binary/octet-stream", "application/binary", "application/x-binary",
    "application/unknown", "application/x-download", "application/download",
})
# A safetensors header is JSON of this many bytes at most (the format's own limit).
MAX_SAFETENSORS_HEADER = 100_000_000


def sniff(head: bytes) -> str | None:
    """The type the first bytes show, or None when no known signature matches."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head[:2] == b"BM" and len(head) >= 14 and head[6:10] == b"\0\0\0\0":
        return "image/bmp"  # its reserved bytes are zero: two letters alone say little
    if head[4:8] == b"ftyp":
        # An iPhone's HEIC photo and an AVIF are ISO media files as an MP4 is: the brand
        # tells them apart, else a photo is recorded, shown and exported as a video.
        return _ISO_BRANDS.get(head[8:12], "video/mp4")
    if head.startswith(b"PK\x03\x04"):
        return PYTORCH if b"data.pkl" in head or b"/data/" in head else "application/zip"
    if _is_pickle(head):
        return PYTORCH
    if len(head) >= 9 and head[8:9] == b"{":
        length = int.from_bytes(head[:8], "little")
        if 2 <= length <= MAX_SAFETENSORS_HEADER:
            return SAFETENSORS
    # A prompt's audio_reference (Seedance 2): MP3, with its ID3 tag or from its first
    # frame (MPEG audio, layer III), FLAC, Ogg. After safetensors: a header 130,047
    # bytes long begins \xff\xfb as a frame does.
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    return None


# The major brands of ISO media files that are no MP4 video: a still image (HEIF,
# AVIF), audio alone (an iPhone's voice memo, M4A), a QuickTime movie (an iPhone's
# video), each a prompt's input as Astria's docs make them (audio_reference, input_video).
_ISO_BRANDS = {b"avif": "image/avif", b"avis": "image/avif",
               b"heic": "image/heic", b"heix": "image/heic", b"heim": "image/heic",
               b"heis": "image/heic", b"mif1": "image/heif", b"msf1": "image/heif",
               b"M4A ": "audio/mp4", b"M4B ": "audio/mp4", b"qt  ": "video/quicktime"}
# What a RIFF file holds, by its form type.
_RIFF = {b"WEBP": "image/webp", b"WAVE": "audio/wav"}


# What follows PROTO in a torch pickle: FRAME (protocol 4+), the legacy magic number
# (LONG1), or the start of the saved object (dict, list, mark, global).
_PICKLE_STARTS = frozenset(b"\x95\x8a}](c")


def _is_pickle(head: bytes) -> bool:
    """A pickle of protocol 2 to 5 (torch.save's legacy format), by its first opcodes."""
    return len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2] in _PICKLE_STARTS


# A media type (RFC 9110 8.3.1: token "/" token).
_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+")


def is_generic(content_type: str | None) -> bool:
    """True when a Content-Type tells nothing of the bytes: absent, octet-stream-like, or
    no media type at all (a host's escape sequence or control character in it would be
    recorded as the blob's type, and an S3 archive's upload refuses such a header)."""
    if not content_type:
        return True
    main, _, parameters = content_type.partition(";")
    main = main.strip().lower()
    return main in GENERIC or not _MEDIA_TYPE.fullmatch(main) or not parameters.isprintable()


# What a server's page begins with (after a byte order mark and blank space), sent where
# a file should be under a type that says nothing: a proxy's sign-in page, a bucket's
# error. XML only as an error: an SVG may open with the same prolog.
_PAGES = ((b"<!doctype html", "text/html"), (b"<html", "text/html"),
          (b"<?xml", "application/xml"), (b"<error", "application/xml"))


def error_page(served: str | None, head: bytes) -> str | None:
    """The type of page the first bytes show ("text/html", "application/xml") when the
    server's type says nothing of them; None for a file."""
    if not is_generic(served):
        return None
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    kind = next((kind for mark, kind in _PAGES if start.startswith(mark)), None)
    return None if kind == "application/xml" and b"<error" not in start else kind


def not_json(body: bytes) -> str:
    """What an API answer that is no JSON is: a network that answers every request with
    its own page (a captive portal, a proxy's or a firewall's sign-in) is named so."""
    if error_page(None, body[:1024]) == "text/html":
        return ("an HTML page, not JSON (a captive portal's, a proxy's or a firewall's "
                "sign-in page?)")
    return "malformed JSON"


def not_the_apis(body: bytes) -> str | None:
    """"an HTML page" when a refusal's body is one, which the API does not send: a
    TLS-intercepting proxy's or a web filter's page; None for anything else. Plain text
    stays the API's: a Rails API's own refusal of a token is "HTTP Token: Access denied."
    """
    return "an HTML page" if error_page(None, body[:1024]) == "text/html" else None


def content_type_of(served: str | None, head: bytes) -> str:
    """The type to record: the server's unless it is generic, then what the bytes show,
    and application/octet-stream only when nothing matches."""
    if served and not is_generic(served):
        return served
    return sniff(head) or OCTET_STREAM
