"""Helpers for the tests of index.html and `serve`: real PNGs, an archived tune with
prompts and a hostile title, and `serve`'s app run in a thread for a sync browser."""

from __future__ import annotations

import asyncio
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.helpers import run_fetch
from tests.standin import StandIn
from tune_archiver.store.local import LocalStore
from tune_archiver.web.server import start

NOW = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
HOSTILE_TITLE = "Jane <script>document.title='pwned';window.pwned=1</script> & co"
PROMPTS = {11: "a photo of ohwx woman in Paris, golden hour",
           12: 'ohwx woman as an astronaut, "cinematic" <lighting>'}


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid PNG of one colour, built with zlib and struct."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))


def safetensors(size: int) -> bytes:
    """Bytes that look like a .safetensors file: an 8-byte length, a JSON header, data."""
    header = b'{"__metadata__":{"format":"pt"}}'
    return struct.pack("<Q", len(header)) + header + bytes(range(256)) * (size // 256)


@dataclass
class Gallery:
    """What the archived tune holds."""

    tune_id: int
    checkpoint: bytes
    training: list[bytes]
    generated: dict[int, list[bytes]]


def archived_gallery(standin: StandIn, archive: Path, title: str = HOSTILE_TITLE) -> Gallery:
    """Tune 5 archived with --prompts: a checkpoint, 4 training PNGs, two prompts' PNGs;
    and tune 4, an older plain one."""
    colours = [(200, 60, 60), (60, 160, 80), (60, 90, 200), (220, 180, 40), (120, 60, 160),
               (40, 170, 170), (240, 120, 30)]
    checkpoint = safetensors(40_000)
    training = [png(48, 64, colours[i]) for i in range(4)]
    generated = {11: [png(64, 64, colours[4]), png(64, 64, colours[5])],
                 12: [png(64, 48, colours[6])]}
    images = [standin.add_file(f"train-{i}.png", data) for i, data in enumerate(training)]
    standin.add_tune(5, [standin.add_file("model.safetensors", checkpoint)], images,
                     title=title, branch="flux1", expires_at="2026-12-20T12:00:00Z")
    for prompt_id, outputs in generated.items():
        urls = [standin.add_file(f"gen-{prompt_id}-{i}.png", d) for i, d in enumerate(outputs)]
        standin.add_prompt(5, prompt_id, PROMPTS[prompt_id], urls)
    standin.add_tune(4, [standin.add_file("old.safetensors", safetensors(3_000))],
                     [standin.add_file("old.png", png(8, 8, (0, 0, 0)))], title="Older tune")
    assert run_fetch(standin, archive, "4", "5", "--prompts") == 0
    return Gallery(5, checkpoint, training, generated)


@contextmanager
def serving(archive: Path, token: str | None = None) -> Iterator[str]:
    """`serve`'s app on 127.0.0.1, an unused port, in a thread of its own; yields its URL."""
    ready = threading.Event()
    found: dict[str, object] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()

        async def main() -> None:
            runner, url = await start(LocalStore(archive), "127.0.0.1", 0, token, lambda: NOW)
            found["url"], found["stop"] = url, (loop, stop)
            ready.set()
            try:
                await stop.wait()
            finally:
                await runner.cleanup()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "serve did not start"
    try:
        yield str(found["url"])
    finally:
        loop, stop = found["stop"]  # type: ignore[misc]
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
