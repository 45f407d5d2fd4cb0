"""A training image Astria lists twice: each place its own entry, its index its place."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import check_manifest
from tests.helpers import run_fetch, sha256
from tests.standin import StandIn


def listed(standin: StandIn) -> tuple[list[str], dict[str, bytes]]:
    """Three images, the first listed again third: orig_images [a, b, a, c]."""
    data = {name: os.urandom(5_000 + i) for i, name in enumerate("abc")}
    urls = {name: standin.add_file(name, body) for name, body in data.items()}
    return [urls["a"], urls["b"], urls["a"], urls["c"]], {urls[n]: data[n] for n in data}


def places(archive: Path) -> list[tuple[int, str, str]]:
    document = check_manifest(archive / "manifests" / "1.json")
    assert document["complete"] is True
    return [(e["index"], e["url"], e["sha256"]) for e in document["assets"]]


def test_each_place_is_its_index_in_orig_images(standin: StandIn, tmp_path: Path) -> None:
    """Every image after a duplicate keeps its index in orig_images (what a manifest,
    --only and export name it by), and the duplicate's bytes are downloaded once."""
    images, data = listed(standin)
    standin.add_tune(1, [], images)
    assert run_fetch(standin, tmp_path, "1") == 0
    assert places(tmp_path) == [(i, url, sha256(data[url])) for i, url in enumerate(images)]
    assert len(standin.seen("cdn", "/files/a")) == 1


def test_a_manifest_that_recorded_it_once_is_paired(standin: StandIn, tmp_path: Path) -> None:
    """A manifest of an older version (the duplicate recorded once, the image after it
    at index 2) is taken up whole: nothing downloaded again, nothing dropped."""
    images, data = listed(standin)
    standin.add_tune(1, [], [images[0], images[1], images[3]])  # as older versions listed it
    assert run_fetch(standin, tmp_path, "1") == 0
    asked = len(standin.seen("cdn"))
    standin.add_tune(1, [], images)
    assert run_fetch(standin, tmp_path, "1") == 0
    assert len(standin.seen("cdn")) == asked
    assert places(tmp_path) == [(i, url, sha256(data[url])) for i, url in enumerate(images)]
