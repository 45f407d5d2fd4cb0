"""names.py: export names are safe whatever the title or URL, and say what the file is."""

from __future__ import annotations

from typing import Any

import pytest

from tune_archiver.commands.names import export_path, extension, folder_name, slug

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
    ],
)
def test_extension_from_type_else_url(content_type: Any, url: str, expected: str) -> None:
    """A known image type decides; else the URL path's suffix if it is plain; else .bin."""
    assert extension(content_type, url) == expected


def entry(kind: str, index: int, **more: Any) -> dict[str, Any]:
    return {"kind": kind, "index": index, "url": "https://x/f.jpg", "sha256": SHA,
            "content_type": "image/jpeg", **more}


def test_export_paths_by_kind() -> None:
    """Checkpoints, training images and prompt images each get their folder and number."""
    taken: set[str] = set()
    assert export_path(entry("checkpoint", 0, url="https://x/m.safetensors",
                             content_type=None), taken) == "checkpoints/000.safetensors"
    assert export_path(entry("training_image", 12), taken) == "training_images/012.jpg"
    assert export_path(entry("prompt_image", 1, prompt_id=900), taken) == \
        "prompt_images/900-001.jpg"


def test_export_path_clash_gets_the_hash() -> None:
    """A second file at the same place (one the API no longer lists) is told apart by its hash."""
    taken: set[str] = set()
    assert export_path(entry("training_image", 0), taken) == "training_images/000.jpg"
    assert export_path(entry("training_image", 0), taken) == f"training_images/000-{SHA[:8]}.jpg"


@pytest.mark.parametrize("bad", [{"kind": "../x", "index": 0}, {"kind": 5, "index": -1},
                                 {"kind": "checkpoint", "index": "../../x"}])
def test_export_path_of_a_hostile_entry_stays_inside(bad: dict[str, Any]) -> None:
    """Whatever a damaged manifest holds, the path is two plain names."""
    path = export_path({**bad, "url": "https://x/y", "sha256": SHA}, set())
    assert ".." not in path
    assert not path.startswith("/")
    assert path.count("/") == 1
