"""names.py: export names are safe whatever the title or URL, and say what the file is."""

from __future__ import annotations

from typing import Any

import pytest

from tune_archiver.commands.names import export_path, extension, folder_name, slug
from tune_archiver.manifest import Entry

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Jane Doe (v2)", "jane-doe-v2"),
        ("../../etc/passwd", "etc-passwd"),
        ("/abs/path", "abs-path"),
        ("..\\windows", "windows"),
        ("Zoë Ångström", "zoe-angstrom"),
        ("«»—…", "tune"),
        ("", "tune"),
        (None, "tune"),
        (42, "tune"),
        ("a" * 100, "a" * 60),
    ],
)
def test_slug_keeps_only_a_safe_alphabet(title: Any, expected: str) -> None:
    """A slug is lower-case letters, digits and dashes, at most 60 long, never empty."""
    assert slug(title) == expected


def test_folder_name_starts_with_the_id() -> None:
    """Two tunes with one title still get two folders."""
    assert folder_name(7, "My Tune") == "7-my-tune"


@pytest.mark.parametrize(
    ("content_type", "url", "expected"),
    [
        ("image/jpeg", "https://x/a.jpeg", ".jpg"),
        ("image/png; charset=binary", "https://x/a", ".png"),
        ("application/octet-stream", "https://x/m/model.SafeTensors?sig=1", ".safetensors"),
        (None, "https://x/m/model.ckpt", ".ckpt"),
        (None, "https://x/m/model", ".bin"),
        (None, "https://x/m/evil.../", ".bin"),
        (None, "https://x/a.b/c", ".bin"),
        ("text/plain", "https://x/a.tar.gz", ".gz"),
        (None, "https://x/a.%2F..%2Fx", ".bin"),
        (None, "http://[x/ckpt", ".bin"),  # urlsplit raises ValueError
        (None, "https://x/p/feed.rss", ".bin"),  # Chromium opens these as pages
        ("application/xhtml+xml", "https://x/p/a.XHTM", ".bin"),
        (None, "https://x/p/a.shtm", ".bin"),
        (None, "https://x/p/a.ehtml", ".bin"),  # Chromium and Firefox: HTML
        (None, "https://x/p/a.rdf", ".bin"),  # Firefox: XML, as .mml and .xul
    ],
)
def test_extension_from_type_else_url(content_type: Any, url: str, expected: str) -> None:
    """A known image type decides; else the URL path's suffix if it is plain; else .bin."""
    assert extension(content_type, url) == expected


def entry(kind: Any, index: Any, **more: Any) -> Entry:
    """An ok entry; built by hand, so it may hold what the reader would refuse."""
    fields: dict[str, Any] = {"url": "https://x/f.jpg", "sha256": SHA, "size": 1,
                              "content_type": "image/jpeg", **more}
    return Entry(kind, index, status="ok", **fields)


def test_export_paths_by_kind() -> None:
    """Checkpoints, training images and prompt images each get their folder and number."""
    taken: set[str] = set()
    assert export_path(entry("checkpoint", 0, url="https://x/m.safetensors",
                             content_type=None), taken) == "checkpoints/000.safetensors"
    assert export_path(entry("training_image", 12), taken) == "training_images/012.jpg"
    assert export_path(entry("prompt_image", 1, prompt_id=900), taken) == \
        "prompt_images/900-001.jpg"


def test_export_paths_of_the_new_kinds() -> None:
    """Prompt inputs and face-swap images get their folders; a video its .mp4."""
    taken: set[str] = set()
    assert export_path(entry("prompt_input", 2, prompt_id=900), taken) == \
        "prompt_inputs/900-002.jpg"
    assert export_path(entry("face_swap_image", 0), taken) == "face_swap_images/000.jpg"
    assert export_path(entry("prompt_image", 0, prompt_id=901, url="https://x/v",
                             content_type="video/mp4"), taken) == "prompt_images/901-000.mp4"


def test_export_path_clash_gets_the_hash() -> None:
    """A second file at the same place (one the API no longer lists) is told apart by its hash."""
    taken: set[str] = set()
    assert export_path(entry("training_image", 0), taken) == "training_images/000.jpg"
    assert export_path(entry("training_image", 0), taken) == f"training_images/000-{SHA[:8]}.jpg"


@pytest.mark.parametrize(("kind", "index"), [("../x", 0), (5, -1), ("checkpoint", "../../x")])
def test_export_path_of_a_hostile_entry_stays_inside(kind: Any, index: Any) -> None:
    """Even for an entry the reader would refuse, the path is two plain names."""
    path = export_path(entry(kind, index, url="https://x/y"), set())
    assert ".." not in path
    assert not path.startswith("/")
    assert path.count("/") == 1
