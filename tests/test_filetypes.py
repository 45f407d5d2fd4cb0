"""File types from the bytes: the pure sniffing table, and fetch plus export using it."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from tests.archive_helpers import cli
from tests.conftest import check_manifest
from tests.helpers import run_fetch
from tests.standin import Body, StandIn
from tune_archiver.filetypes import content_type_of, error_page, sniff

HEADER = b'{"__metadata__":{"format":"pt"}}'
SAFETENSORS = struct.pack("<Q", len(HEADER)) + HEADER + os.urandom(2_000)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + os.urandom(1_000)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(1_000)
WEBP = b"RIFF\x10\x27\x00\x00WEBPVP8 " + os.urandom(1_000)
MP4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00" + os.urandom(1_000)
TORCH_ZIP = b"PK\x03\x04\x00\x00\x08\x00\x00\x00archive/data.pkl" + os.urandom(1_000)
PICKLE = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19." + os.urandom(1_000)
UNKNOWN = b"\x01\x02not a known format at all" + os.urandom(2_000)
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + os.urandom(1_000)  # an iPhone's
AVIF = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + os.urandom(1_000)
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + os.urandom(1_000)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (SAFETENSORS, "application/x-safetensors"),
        (JPEG, "image/jpeg"),
        (PNG, "image/png"),
        (WEBP, "image/webp"),
        (MP4, "video/mp4"),
        (HEIC, "image/heic"),
        (AVIF, "image/avif"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "image/heif"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom", "video/mp4"),
        (GIF, "image/gif"),
        (b"GIF87a\x01\x00", "image/gif"),
        (b"II*\x00\x08\x00\x00\x00", "image/tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "image/tiff"),
        (b"BM\x36\x00\x0c\x00\x00\x00\x00\x00\x36\x00\x00\x00", "image/bmp"),
        (b"BMW notes, not a bitmap", None),  # two letters alone are no signature
        (TORCH_ZIP, "application/x-pytorch"),
        (PICKLE, "application/x-pytorch"),
        (b"PK\x03\x04plain zip", "application/zip"),
        (UNKNOWN, None),
        (b"", None),
        (struct.pack("<Q", 2**40) + b"{", None),  # a header length no file has
        (b"RIFF\x00\x00\x00\x00WAVE", "audio/wav"),  # no WebP
    ],
)
def test_sniff_reads_the_signature(head: bytes, expected: str | None) -> None:
    """Each known signature gives its type; anything else gives None."""
    assert sniff(head[:64]) == expected


@pytest.mark.parametrize(
    ("served", "head", "expected"),
    [
        ("image/png", JPEG, "image/png"),  # the server said something: kept
        ("application/octet-stream", JPEG, "image/jpeg"),
        ("binary/octet-stream; charset=x", SAFETENSORS, "application/x-safetensors"),
        (None, PNG, "image/png"),
        (None, UNKNOWN, "application/octet-stream"),
    ],
)
def test_content_type_of_keeps_a_telling_type(
    served: str | None, head: bytes, expected: str
) -> None:
    """The server's type wins unless it is generic; octet-stream only when nothing matches."""
    assert content_type_of(served, head[:64]) == expected


@pytest.mark.parametrize(("served", "head", "expected"), [
    (None, b"<!doctype HTML><html>", "text/html"),
    ("binary/octet-stream", b"\r\n<HTML><HEAD>", "text/html"),
    (None, b"<Error><Code>NoSuchKey</Code>", "application/xml"),
    (None, b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg">', None),
    ("image/svg+xml", b"<html>", None),  # a telling type is the server's word
    (None, JPEG, None),
    (None, b"", None),
])
def test_error_page_reads_a_page_under_a_type_that_says_nothing(
    served: str | None, head: bytes, expected: str | None
) -> None:
    assert error_page(served, head) == expected


def test_files_without_extension_are_typed_and_named_from_their_bytes(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Extensionless octet-stream files get their type from the bytes in the manifest and
    in export names: a checkpoint exports as 000.safetensors, not 000.bin."""
    archive = tmp_path / "archive"
    images = [JPEG, PNG, WEBP, UNKNOWN]
    standin.add_tune(1, [standin.add_file("ckpt", SAFETENSORS + os.urandom(2_000))],
                     [standin.add_file(f"img{i}", data) for i, data in enumerate(images)])
    standin.add_prompt(1, 9, "ohwx", [standin.add_file("video", MP4)])
    standin.faults["img0"] = [Body(JPEG, "application/octet-stream")]
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    assert [entry["content_type"] for entry in document["assets"]] == [
        "application/x-safetensors", "image/jpeg", "image/png", "image/webp",
        "application/octet-stream", "video/mp4"]
    ran = cli(capsys, "export", "1", str(tmp_path / "dest"), "--archive", str(archive),
              "--json")
    assert ran.code == 0
    names = sorted(json.loads(ran.out)["copied"])
    assert names == ["checkpoints/000.safetensors", "prompt_images/9-000.mp4",
                     "training_images/000.jpg", "training_images/001.png",
                     "training_images/002.webp", "training_images/003.bin"]


def test_a_heic_photo_served_as_octet_stream_is_an_image_not_a_video(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An iPhone's HEIC training photo, an AVIF and a GIF from hosts that say only
    octet-stream: each is recorded as the image it is, exported under its own
    extension, and shown in the export's page as an image, never as a video."""
    archive = tmp_path / "archive"
    photos = [standin.add_file(f"img{i}", data) for i, data in enumerate([HEIC, AVIF, GIF])]
    standin.add_tune(1, [standin.add_file("ckpt", SAFETENSORS)], photos)
    assert run_fetch(standin, archive, "1") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    assert [entry["content_type"] for entry in document["assets"][1:]] == [
        "image/heic", "image/avif", "image/gif"]
    dest = tmp_path / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--json")
    assert ran.code == 0
    assert sorted(json.loads(ran.out)["copied"])[1:] == [
        "training_images/000.heic", "training_images/001.avif", "training_images/002.gif"]
    page = next(dest.rglob("index.html")).read_text()
    assert "<video" not in page
    assert page.count("<img") == 3


@pytest.mark.parametrize("served", ["image/png\x1b[2J", "image/png; name=\x07", "image png",
                                    "image/", "image/pñg"])
def test_a_type_that_is_no_media_type_says_nothing(served: str) -> None:
    """A host's type holding a control character (an escape sequence), a space or no
    subtype is no media type: the bytes tell, as for octet-stream."""
    assert content_type_of(served, PNG) == "image/png"
    assert error_page(served, b"<html>") == "text/html"


M4A = b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + os.urandom(1_000)  # a voice memo
MOV = b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  " + os.urandom(1_000)  # an iPhone's video
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00" + os.urandom(1_000)
WAV = b"RIFF\x24\x27\x00\x00WAVEfmt \x10\x00\x00\x00" + os.urandom(1_000)


@pytest.mark.parametrize(("head", "expected"), [
    (M4A, "audio/mp4"), (MOV, "video/quicktime"), (MP3, "audio/mpeg"), (WAV, "audio/wav"),
    (b"\xff\xfb\x90\x64" + bytes(60), "audio/mpeg"), (b"fLaC\x00\x00\x00\x22", "audio/flac"),
    (b"OggS\x00\x02\x00\x00", "audio/ogg"),
    # A checkpoint's header of 130,047 bytes: its length begins as an MP3 frame does.
    (struct.pack("<Q", 0x1FBFF) + b'{"' + bytes(54), "application/x-safetensors"),
], ids=["m4a", "mov", "mp3-id3", "wav", "mp3-frame", "flac", "ogg", "safetensors"])
def test_sniff_reads_a_prompts_audio_and_quicktime_inputs(head: bytes, expected: str) -> None:
    """A Seedance 2 prompt's audio_reference (MP3, WAV, an iPhone's M4A) and a motion
    control's input_video from an iPhone (QuickTime) are what they are."""
    assert sniff(head[:64]) == expected


def test_a_prompts_audio_reference_is_recorded_exported_and_shown_as_audio(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Astria's docs (features/video.md) make a video prompt with an input_video and an
    audio_reference; served as octet-stream, an M4A was recorded video/mp4 (its ISO
    'ftyp' box), exported as .mp4 and shown as a video, an MP3 as 'octet-stream',
    exported as .bin and shown as a broken image. Each is recorded, exported and shown
    as the audio (or QuickTime video) it is."""
    archive = tmp_path / "archive"
    standin.add_tune(1, [standin.add_file("ckpt", SAFETENSORS)], [standin.add_file("i", JPEG)])
    standin.add_prompt(1, 9, "ohwx", [standin.add_file("video", MP4)],
                       input_video=standin.add_file("mov", MOV),
                       audio_reference=standin.add_file("m4a", M4A))
    standin.add_prompt(1, 8, "ohwx", [standin.add_file("video2", MP4)],
                       audio_reference=standin.add_file("mp3", MP3))
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    inputs = {(e["prompt_id"], e["index"]): e["content_type"] for e in document["assets"]
              if e["kind"] == "prompt_input"}
    assert inputs == {(9, 0): "video/quicktime", (9, 1): "audio/mp4", (8, 0): "audio/mpeg"}
    dest = tmp_path / "dest"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--json")
    assert ran.code == 0
    assert sorted(name for name in json.loads(ran.out)["copied"]
                  if name.startswith("prompt_inputs/")) == [
        "prompt_inputs/8-000.mp3", "prompt_inputs/9-000.mov", "prompt_inputs/9-001.m4a"]
    page = next(dest.rglob("index.html")).read_text()
    assert page.count("<audio") == 2
    assert page.count("<video") == 3  # the two videos made, and the QuickTime input
    assert page.count("<img") == 1  # the training photo
