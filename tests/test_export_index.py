"""export's index.html: written by every layout, every link relative and to a file there."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.gallery_helpers import PROMPTS, Gallery, archived_gallery
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
