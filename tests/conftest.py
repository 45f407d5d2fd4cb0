"""Shared fixtures: an isolated environment, the stand-in servers, and manifest checks."""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.standin import StandIn

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "manifests" / "tune-manifest.schema.json").read_text())


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than the cores. Many tests wait (on a child process,
    a socket, a browser), and a third worker on two cores keeps both busy: the suite
    took 94-109 s where two workers took 104-114 s, run in turns."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) + 1


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the user's key, API URL or archive, the Astria CLI's settings or a
    TUNE_ARCHIVER_<OPTION>, and each runs in its own folder."""
    for name in ("ASTRIA_API_KEY", "ASTRIA_API_URL", "TUNE_ARCHIVE", "ASTRIA_AUTH_TOKEN",
                 "ASTRIA_BASE_URL", "ASTRIA_WORKSPACE_ID", "ASTRIA_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in [name for name in os.environ if name.startswith("TUNE_ARCHIVER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(tmp_path / "no-astria-config"))
    monkeypatch.chdir(tmp_path)
    # A CLI run before, in this worker, left our logger at its level (ERROR with -q)
    # and not propagating: caplog, on the root logger, saw nothing, by the order tests
    # ran in. Each test starts with it as Python makes it.
    logger = logging.getLogger("tune_archiver")
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


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


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collecting imported (moto, botocore, aiohttp, playwright, every test module)
    lives as long as the worker: frozen, as the tool's entry() freezes its imports, no
    collection of the oldest generation walks it again."""
    gc.collect()
    gc.freeze()
