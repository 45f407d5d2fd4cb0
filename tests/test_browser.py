"""index.html and `serve` in a real browser: headless Chromium driven by Playwright.

Skipped, saying why, where Playwright or Chromium is missing. Each test writes a
screenshot of each page under its temp folder; GALLERY_SCREENSHOT=PATH also writes the
served tune page there (docs/make-screenshot regenerates the README's picture with it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gallery_helpers import PROMPTS, Gallery, archived_gallery, serving
from tests.helpers import run_fetch, sha256
from tests.standin import StandIn
from tune_archiver.cli.main import main

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
)
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip("chromium is not installed (apt-get install chromium): browser tests skipped",
                allow_module_level=True)

ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
EVERY_IMAGE_DECODED = "[...document.images].every(i => i.complete && i.naturalWidth > 0)"


@pytest.fixture
def browser(gallery: Gallery, exported: Path) -> Iterator[Any]:
    """A headless Chromium (Debian's, never a downloaded one), started after the archive
    and the export are made: Playwright's sync API keeps a loop running in this thread,
    where main's asyncio.run could not start."""
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page that fails the test on any request leaving 127.0.0.1 or the disk."""
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    outside: list[str] = []

    def only_local(route: Any) -> None:
        url = route.request.url
        if url.startswith(("file://", "http://127.0.0.1:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    context.route("**/*", only_local)
    try:
        yield context.new_page()
    finally:
        context.close()
    assert outside == []


@pytest.fixture
def gallery(standin: StandIn, tmp_path: Path) -> Gallery:
    return archived_gallery(standin, tmp_path / "archive")


@pytest.fixture
def exported(gallery: Gallery, tmp_path: Path) -> Path:
    """The tune exported to DEST/usb; the folder's index.html."""
    dest = tmp_path / "usb"
    assert main(["export", "5", str(dest), "--archive", str(tmp_path / "archive"), "-q"]) == 0
    return next(dest.glob("5-*")) / "index.html"


def images_decoded(page: Any) -> int:
    """Scroll every <img> into view (they load lazily), wait until each has decoded, and
    return how many there are."""
    images = page.locator("img")
    for index in range(images.count()):
        images.nth(index).scroll_into_view_if_needed()
    page.wait_for_function(EVERY_IMAGE_DECODED, timeout=15_000)
    count: int = page.evaluate("document.images.length")
    return count


def assert_script_did_not_run(page: Any) -> None:
    """The hostile title's script would set window.pwned and the title: neither happened."""
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.title() != "pwned"
    assert page.locator("script").count() == 0


def test_exported_index_html_works_offline(
    page: Any, gallery: Gallery, exported: Path, tmp_path: Path
) -> None:
    """The export's index.html, opened from disk, decodes every image, shows each prompt,
    escapes the hostile title and fits a phone's width."""
    index = exported
    page.goto(index.as_uri())
    assert images_decoded(page) == 7
    body = page.inner_text("body")
    assert all(text in body for text in PROMPTS.values())
    assert "<script>document.title='pwned'" in page.inner_text("h1")
    assert_script_did_not_run(page)
    checkpoint = page.locator("a[download]").get_attribute("href")
    assert (index.parent / checkpoint).read_bytes() == gallery.checkpoint
    page.screenshot(path=str(tmp_path / "export-index.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(tmp_path / "export-index-phone.png"), full_page=True)


def test_served_pages_in_a_browser(page: Any, gallery: Gallery, tmp_path: Path) -> None:
    """serve's tunes page leads to the tune page, whose images decode, whose script does
    not run, whose verify button says intact; a Range on the checkpoint is 206."""
    with serving(tmp_path / "archive") as url:
        page.goto(url)
        assert page.locator("tr").count() == 3
        page.screenshot(path=str(tmp_path / "serve-tunes.png"), full_page=True)
        page.click("a[href='/tunes/5']")
        page.wait_for_url(f"{url}tunes/5")
        assert images_decoded(page) == 7
        body = page.inner_text("body")
        assert all(text in body for text in PROMPTS.values())
        assert_script_did_not_run(page)
        shot = tmp_path / "serve-tune.png"
        page.screenshot(path=str(shot), full_page=True)
        if target := os.environ.get("GALLERY_SCREENSHOT"):
            page.screenshot(path=target, full_page=True)
        blob = f"{url}blobs/{sha256(gallery.checkpoint)}"
        ranged = page.request.get(blob, headers={"Range": "bytes=1000-4999"})
        assert ranged.status == 206
        assert ranged.headers["content-range"] == f"bytes 1000-4999/{len(gallery.checkpoint)}"
        assert ranged.body() == gallery.checkpoint[1000:5000]
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}tunes/5/verify")
        assert page.inner_text("#verdict").startswith("intact: 8 blobs")
        page.screenshot(path=str(tmp_path / "serve-verified.png"), full_page=True)
    assert all((tmp_path / name).stat().st_size > 1000 for name in
               ("serve-tunes.png", "serve-tune.png", "serve-verified.png"))


def test_a_checkpoint_downloaded_from_serve_is_saved_with_its_extension(
    page: Any, gallery: Gallery, tmp_path: Path
) -> None:
    """serve's checkpoint link ends in its sha256, which Chromium took for the file's
    name: saved as 64 hex digits, no .safetensors, so ComfyUI or A1111 listed nothing.
    The link's download attribute names it, its bytes the checkpoint's."""
    with serving(tmp_path / "archive") as url:
        page.goto(f"{url}tunes/5")
        with page.expect_download() as started:
            page.click("a[download]")
        saved = started.value
        assert saved.suggested_filename == "5-checkpoint-000.safetensors"
        assert Path(saved.path()).read_bytes() == gallery.checkpoint


# A page in every form a browser opening a file by its name may take it: HTML, and XML
# whose XHTML <script> runs (a host serving it as octet-stream, so it is archived).
ACTIVE_PAGE = (b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><body>'
               b"<script>window.pwned=1</script></body></html>")
ACTIVE_SUFFIXES = ["html", "shtm", "xhtm", "ehtml", "xml", "svg", "rss", "atom", "xsd", "xbl",
                   "rng"]


@pytest.fixture
def active_export(standin: StandIn, tmp_path: Path) -> Path:
    """Tune 6, whose training photos' URLs end in suffixes a browser runs, exported; its
    index.html. Made before the browser starts (main's asyncio.run needs the thread)."""
    photos = [standin.add_file(f"photo-{i}.{suffix}", ACTIVE_PAGE)
              for i, suffix in enumerate(ACTIVE_SUFFIXES)]
    standin.add_tune(6, [], photos, title="Pages for photos")
    archive, dest = tmp_path / "archive6", tmp_path / "usb6"
    assert run_fetch(standin, archive, "6") == 0
    assert main(["export", "6", str(dest), "--archive", str(archive), "-q"]) == 0
    return next(dest.glob("6-*")) / "index.html"


def test_no_exported_file_a_link_opens_runs_a_script(active_export: Path, page: Any) -> None:
    """A photo whose URL ends in .rss, .xhtm, .shtm (...) is exported as .bin: each link
    of index.html, opened from disk, runs no script."""
    page.goto(active_export.as_uri())
    links = page.eval_on_selector_all("a", "all => all.map(a => a.href)")
    assert len(links) == len(ACTIVE_SUFFIXES)
    for link in links:
        if link.endswith(".bin"):  # downloaded, never opened as a page
            continue
        page.goto(link)
        assert page.evaluate("typeof window.pwned") == "undefined", link
