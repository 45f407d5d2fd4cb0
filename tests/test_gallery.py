"""gallery.py: the tune page and the tunes page as HTML, every untrusted text escaped."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from tune_archiver.gallery import countdown, tune_page, tunes_page
from tune_archiver.manifest import Entry, Manifest

HOSTILE = '<script>window.pwned=1</script>"><img src=x onerror=alert(1)>'


class Tags(HTMLParser):
    """Every start tag of a document with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags_of(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(html)
    return parser.tags


def a_manifest(title: str = "Jane", prompt: str = "a photo of ohwx woman") -> Manifest:
    """A manifest with a checkpoint, a training image, a failed one, an image and a video."""
    sha = "ab" * 32
    return Manifest(
        tune_id=7, archived_at="2026-11-29T10:00:00Z", complete=False,
        tune={"title": title, "branch": "flux1", "model_type": "lora",
              "expires_at": "2026-12-29T10:00:00Z"},
        entries=(
            Entry("checkpoint", 0, "https://x/c", "ok", sha, 2048, None,
                  "application/x-safetensors"),
            Entry("training_image", 0, "https://x/i", "ok", sha, 10, None, "image/jpeg"),
            Entry("training_image", 1, "https://x/j", "failed", error="HTTP 404"),
            Entry("prompt_image", 0, "https://x/p", "ok", sha, 10, None, "image/png",
                  prompt_id=3, prompt_text=prompt),
            Entry("prompt_image", 1, "https://x/v", "ok", sha, 10, None, "video/mp4",
                  prompt_id=3, prompt_text=prompt),
        ),
    )


def test_tune_page_shows_facts_files_and_prompts() -> None:
    """The page names the tune's facts, links its checkpoint, grids images, plays the video."""
    html = tune_page(a_manifest(), lambda entry: f"files/{entry.kind}-{entry.index}")
    tags = tags_of(html)
    assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) in tags
    assert "flux1" in html
    assert "lora" in html
    assert "2026-12-29T10:00:00Z" in html
    assert ("a", {"href": "files/checkpoint-0",
                  "download": "7-checkpoint-000.safetensors"}) in tags
    assert "2.0 KiB" in html
    assert "ab" * 32 in html
    images = [attrs for tag, attrs in tags if tag == "img"]
    assert [(i["src"], i["loading"]) for i in images] == [
        ("files/training_image-0", "lazy"), ("files/prompt_image-0", "lazy")]
    assert ("video", {"controls": None, "preload": "metadata",
                      "src": "files/prompt_image-1"}) in tags
    assert "a photo of ohwx woman" in html
    assert "HTTP 404" not in html
    assert "failed" in html
    assert not [tag for tag, _ in tags if tag in ("script", "link", "iframe")]


@pytest.mark.parametrize("where", ["title", "prompt", "href"])
def test_hostile_text_is_escaped(where: str) -> None:
    """A title, prompt or link holding markup stays text: no script, no injected tag."""
    found = a_manifest(title=HOSTILE if where == "title" else "T",
                       prompt=HOSTILE if where == "prompt" else "p")
    html = tune_page(found, lambda entry: HOSTILE if where == "href" else "x.png")
    tags = tags_of(html)
    assert "script" not in [tag for tag, _ in tags]
    assert all("onerror" not in attrs for _, attrs in tags)
    assert "&lt;script&gt;" in html or "&quot;&gt;&lt;img" in html


def test_tunes_page_links_each_tune_with_its_status() -> None:
    """Each row links its tune, says complete or failed and the time left; errors are rows."""
    rows = [{"tune_id": 2, "title": HOSTILE, "complete": True, "checkpoint": "yes",
             "seconds_left": 90_000, "workspace": "personal"},
            {"tune_id": 1, "error": "the manifest is unreadable: <bad>"}]
    html = tunes_page(rows, lambda tune_id: f"/tunes/{tune_id}")
    assert ("a", {"href": "/tunes/2"}) in tags_of(html)
    assert "complete" in html
    assert "1d 1h" in html
    assert "personal" in html
    assert "&lt;bad&gt;" in html
    assert "script" not in [t for t, _ in tags_of(html)]


@pytest.mark.parametrize(("seconds", "shown"), [
    (None, ""), (0, "expired"), (59, "under a minute"), (60, "0h 1m"), (3_660, "1h 1m"),
    (86_400 * 3 + 7_200, "3d 2h"),
])
def test_countdown(seconds: int | None, shown: str) -> None:
    """The expiry countdown in days and hours, or hours and minutes, or 'expired'."""
    assert countdown(seconds) == shown
