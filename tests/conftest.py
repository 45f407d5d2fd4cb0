"""Shared fixtures: an isolated environment, the stand-in servers, and manifest checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.standin import StandIn

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "manifests" / "tune-manifest.schema.json").read_text())


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the user's key, API URL or archive, and each runs in its own folder."""
    for name in ("ASTRIA_API_KEY", "ASTRIA_API_URL", "TUNE_ARCHIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn().start()
    try:
        yield server
    finally:
        server.close()


def check_manifest(path: Path) -> dict[str, Any]:
    """The manifest at `path`, after checking it against the JSON Schema."""
    document: dict[str, Any] = json.loads(path.read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(document)
    return document
