"""export's index.html: written by every layout, every link relative and to a file there."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.archive_helpers import manifest_of, write_manifest
from tests.gallery_helpers import PROMPTS, Gallery, archived_gallery, safetensors
from tests.helpers import blob_file, run_fetch
from tests.standin import StandIn
from tests.test_gallery import tags_of
from tune_archiver.cli.main import main


@pytest.fixture
def gallery(standin: StandIn, tmp_path: Path) -> Gallery:
    return archived_gallery(standin, tmp_path / "archive")


@pytest.mark.parametrize("layout", [None, "comfyui", "a1111", "diffusers"])
def test_every_link_is_relative_and_found(
    gallery: Gallery, tmp_path: Path, layout: str | None
) -> None:
    """Each href and src of index.html is a relative path to a file of the folder, the
    checkpoint's where the layout put it; the prompts' texts are on the page."""
    words = ["export", "5", str(tmp_path / "out"), "--archive", str(tmp_path / "archive"), "-q"]
    assert main([*words, *(["--layout", layout] if layout else [])]) == 0
    folder = next((tmp_path / "out").glob("5-*"))
    html = (folder / "index.html").read_text()
    links = [value for _, attrs in tags_of(html) for name, value in attrs.items()
             if name in ("href", "src") and value]
    assert len(links) == 1 + 2 * 7  # the checkpoint's download, and each image linked twice
    for link in links:
        parts = urlsplit(link)
        assert not parts.scheme
        assert not parts.netloc
        assert not link.startswith("/")
        assert (folder / unquote(parts.path)).is_file()
    download = next(attrs["href"] for tag, attrs in tags_of(html) if "download" in attrs)
    assert (folder / unquote(download or "")).read_bytes() == gallery.checkpoint
    assert all(text.replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;") in html
               for text in PROMPTS.values())


@pytest.mark.parametrize(("name", "content_type"), [
    ("gen.html", "application/octet-stream"),
    ("gen.svg", "image/svg+xml"),
    ("gen.xhtml", "application/xhtml+xml"),
    ("gen.url", "application/octet-stream"),  # Explorer fetches its icon on listing
    ("gen.webarchive", "application/octet-stream"),  # Safari opens it as a page
    ("gen.theme", "application/octet-stream"),  # Explorer fetches its images on listing
    ("gen.themepack", "application/octet-stream"),
])
def test_a_file_a_browser_would_run_is_never_linked_as_a_page(
    standin: StandIn, tmp_path: Path, name: str, content_type: str
) -> None:
    """A generated image that is a page with a script (a URL ending .html or .svg, the
    type no image's): exported under .bin, so the link index.html gives it opens no page
    that runs its script or loads from the network; its bytes are kept."""
    archive = tmp_path / "archive"
    hostile = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"
    url = standin.add_file(name, hostile)
    standin.content_types[name] = content_type
    standin.add_tune(6, [standin.add_file("m.safetensors", safetensors(3_000))], [])
    standin.add_prompt(6, 21, "a prompt", [url])
    assert run_fetch(standin, archive, "6", "--prompts") == 0
    words = ["export", "6", str(tmp_path / "out"), "--archive", str(archive), "-q"]
    assert main(words) == 0
    folder = next((tmp_path / "out").glob("6-*"))
    assert [p.name for p in (folder / "prompt_images").iterdir()] == ["21-000.bin"]
    assert (folder / "prompt_images" / "21-000.bin").read_bytes() == hostile
    assert 'href="prompt_images/21-000.bin"' in (folder / "index.html").read_text()


def test_two_files_of_one_place_each_link_their_own_file(
    standin: StandIn, tmp_path: Path
) -> None:
    """A training photo the API replaced keeps its entry, at the same kind and index as
    the new one: index.html shows each of the two photos, linking its own file, never
    the one exported last in both places (the other photo then on no page at all)."""
    old = b"\xff\xd8\xff" + b"old photo" * 300
    new = b"\xff\xd8\xff" + b"new photo" * 300
    checkpoint = standin.add_file("ckpt.safetensors", safetensors(20_000))
    standin.add_tune(7, [checkpoint], [standin.add_file("old.jpg", old)])
    archive = tmp_path / "archive"
    assert run_fetch(standin, archive, "7") == 0
    standin.add_tune(7, [checkpoint], [standin.add_file("new.jpg", new)],
                     updated_at="2026-11-03T00:00:00Z")
    assert run_fetch(standin, archive, "7") == 0
    assert main(["export", "7", str(tmp_path / "out"), "--archive", str(archive), "-q"]) == 0
    folder = next((tmp_path / "out").glob("7-*"))
    shown = [(folder / unquote(attrs["src"] or "")).read_bytes()
             for tag, attrs in tags_of((folder / "index.html").read_text()) if tag == "img"]
    assert sorted(shown) == sorted([old, new])


def test_three_files_of_one_place_two_with_the_same_bytes_are_each_exported(
    standin: StandIn, tmp_path: Path
) -> None:
    """A training photo moved to another URL with its bytes, then replaced: three
    entries of one kind and index, the two older ones sharing a sha256. Each has its
    own file and index.html links each: the third was named as the second (the digest's
    first 8 hex digits the same), so every export of the tune failed it, exit 1,
    saying it 'already exists', a failure no run could cure."""
    moved = b"\xff\xd8\xff" + b"moved photo" * 300
    new = b"\xff\xd8\xff" + b"new photo" * 300
    checkpoint = standin.add_file("ckpt.safetensors", safetensors(20_000))
    archive = tmp_path / "archive"
    for day, name, data in ((2, "a.jpg", moved), (3, "b.jpg", moved), (4, "c.jpg", new)):
        standin.add_tune(7, [checkpoint], [standin.add_file(name, data)],
                         updated_at=f"2026-11-0{day}T00:00:00Z")
        assert run_fetch(standin, archive, "7") == 0
    assert main(["export", "7", str(tmp_path / "out"), "--archive", str(archive), "-q"]) == 0
    folder = next((tmp_path / "out").glob("7-*"))
    photos = sorted((folder / "training_images").iterdir())
    assert len(photos) == 3
    assert sorted(path.read_bytes() for path in photos) == sorted([moved, moved, new])
    shown = [unquote(attrs["src"] or "")
             for tag, attrs in tags_of((folder / "index.html").read_text()) if tag == "img"]
    assert sorted(shown) == [str(path.relative_to(folder)) for path in photos]


def test_no_escape_sequence_from_a_title_or_prompt_reaches_the_page(
    standin: StandIn, tmp_path: Path
) -> None:
    """index.html is text a person greps, cats or pages through too: a title writing the
    clipboard (OSC 52), a prompt clearing the screen (CSI, as ESC [ and as the C1 byte)
    or reversing a line (U+202E) is on the page as escapes, as on a terminal; the
    prompt's lines stay lines."""
    html = exported_page(standin, tmp_path, "Jane\x1b]52;c;cm0gLXJmIH4=\x07 \u202eenaJ",
                         "ohwx woman\r\nin Paris\x1b[2J\x9b31m")
    assert not [char for char in html if char in "\x1b\x07\x9b\r\u202e"]
    assert "<h1>Jane\\x1b]52;c;cm0gLXJmIH4=\\x07 \\u202eenaJ</h1>" in html
    assert "<p>ohwx woman\nin Paris\\x1b[2J\\x9b31m</p>" in html


def test_a_line_separator_in_a_title_or_prompt_is_an_escape_not_a_line_break(
    standin: StandIn, tmp_path: Path
) -> None:
    """U+2028, U+2029, NEL (U+0085), VT, FF and the C0 separators are escapes in every
    line the tool prints, but e() split a page's text with str.splitlines, which takes
    each for a line break: a title "Jane<U+2028>tune 7 ..." read as two lines to grep,
    cat and a pager (a line forged), and the escape was lost. Only CR, LF and CRLF, a
    prompt's own lines, stay line breaks."""
    html = exported_page(standin, tmp_path, "Jane\u2028tune 7\u2029x\x85y\x0bz\x0cw\x1cv",
                         "ohwx woman\r\nin Paris\u2028forged")
    assert not [char for char in html if char in "\u2028\u2029\x85\x0b\x0c\x1c"]
    assert "<h1>Jane\\u2028tune 7\\u2029x\\x85y\\x0bz\\x0cw\\x1cv</h1>" in html
    assert "<p>ohwx woman\nin Paris\\u2028forged</p>" in html


def test_a_file_that_could_not_be_exported_is_never_said_ok_on_the_page(
    gallery: Gallery, tmp_path: Path
) -> None:
    """A checkpoint and a photo whose blobs are gone from the archive are not exported
    (exit 1): index.html says so of each, where it said 'ok:' and 'training_image 1: ok'
    in red, of files that are not in the folder; and its facts never say the tune
    complete, 'yes', above a folder that lacks two of its files."""
    archive = tmp_path / "archive"
    blob_file(archive, gallery.checkpoint).unlink()
    blob_file(archive, gallery.training[1]).unlink()
    assert main(["export", "5", str(tmp_path / "out"), "--archive", str(archive), "-q"]) == 1
    html = next((tmp_path / "out").glob("5-*")).joinpath("index.html").read_text()
    assert '<span class="failed">not exported</span>' in html
    assert '<div class="failed">training_image 1: not exported</div>' in html
    assert ": ok" not in html
    assert "ok:" not in html
    assert ("<dt>complete</dt><dd>no: 2 archived files not exported (complete in the "
            "archive)</dd>") in html


SIGNED = ("https://cdn.example/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2lnbmF0dXJlMDEyMzQ1"
          "/downloads/default.mp4?X-Amz-Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f0")


def test_a_signed_url_an_older_manifest_holds_is_redacted_in_the_exported_manifest(
    gallery: Gallery, tmp_path: Path
) -> None:
    """A manifest written before a signer's redaction was known (a Cloudflare Stream JWT
    in the path) holds the signed URL in its title, a failed file's error and an entry's
    url: the export's manifest.json, handed on beside index.html, holds each redacted,
    as the page does, and so does --layout's trigger words file naming the title (each
    was written with the key scrubbed alone, the URLs whole). The failed file makes it
    exit 1."""
    archive = tmp_path / "archive"
    document = manifest_of(archive, 5)
    entries = [item for item in document["assets"] if item["kind"] == "training_image"]
    for name in ("sha256", "size", "path", "content_type"):
        entries[0].pop(name, None)
    entries[0].update(status="failed", error=f"HTTP 403 from {SIGNED}")
    entries[1]["url"] = SIGNED
    document["tune"]["title"] = f"Jane {SIGNED}"
    write_manifest(archive, 5, document)
    words = ["export", "5", str(tmp_path / "out"), "--archive", str(archive), "--layout",
             "comfyui", "-q"]
    assert main(words) == 1
    folder = next((tmp_path / "out").glob("5-*"))
    assert "eyj" not in folder.name  # its slug of the title, printed as the path too
    [sidecar] = (folder / "models").glob("*/*.txt")  # the trigger words name the title
    for name in ("manifest.json", "index.html", str(sidecar)):
        text = (folder / name).read_text()
        assert "https://cdn.example/REDACTED/downloads/default.mp4" in text, name
        assert "eyJ" not in text, name
        assert "0f1e2d3c4b5a" not in text, name


def test_an_older_manifests_hidden_characters_are_escaped_in_the_exported_copy(
    gallery: Gallery, tmp_path: Path
) -> None:
    """A manifest written before hidden characters were escaped on disk holds a title's
    U+202E raw, with nothing to scrub or redact: its copy was handed on byte for byte,
    and `grep -r` of the stick printed it. The copy escapes it, and reads back the same."""
    archive = tmp_path / "archive"
    document = manifest_of(archive, 5)
    document["tune"]["title"] = "Jane \u202eevil \u009b2J"
    (archive / "manifests" / "5.json").write_text(json.dumps(document, ensure_ascii=False))
    assert main(["export", "5", str(tmp_path / "out"), "--archive", str(archive), "-q"]) == 0
    [copy] = (tmp_path / "out").glob("5-*/manifest.json")
    text = copy.read_text()
    assert "\u202e" not in text
    assert "\u009b" not in text
    assert json.loads(text)["tune"]["title"] == "Jane \u202eevil \u009b2J"


def exported_page(standin: StandIn, tmp_path: Path, title: str, prompt: str) -> str:
    """index.html of tune 6, titled `title`, with one prompt `prompt`, as export writes it."""
    archive = tmp_path / "archive"
    standin.add_tune(6, [standin.add_file("m.safetensors", safetensors(3_000))], [],
                     title=title)
    standin.add_prompt(6, 21, prompt, [standin.add_file("g.png", b"\x89PNG\r\n\x1a\n")])
    assert run_fetch(standin, archive, "6", "--prompts") == 0
    words = ["export", "6", str(tmp_path / "out"), "--archive", str(archive), "-q"]
    assert main(words) == 0
    return next((tmp_path / "out").glob("6-*")).joinpath("index.html").read_text()
