"""`export --layout comfyui|a1111|diffusers`: the checkpoint where each tool looks for it."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from tests.archive_helpers import cli, manifest_of, write_manifest
from tests.helpers import run_fetch
from tests.standin import StandIn

HEADER = b'{"__metadata__":{}}'
WEIGHTS = struct.pack("<Q", len(HEADER)) + HEADER + os.urandom(3_000)


def exported(standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
             model_type: str, layout: str) -> list[str]:
    """Fetch tune 1 of this model type (an extensionless checkpoint) and export it."""
    archive = tmp_path / "archive"
    standin.add_tune(1, [standin.add_file("weights", WEIGHTS)],
                     [standin.add_file("face", b"\xff\xd8\xff" + os.urandom(900))],
                     model_type=model_type, title="Jane Doe")
    assert run_fetch(standin, archive, "1") == 0
    capsys.readouterr()
    ran = cli(capsys, "export", "1", str(tmp_path / "dest"), "--archive", str(archive),
              "--layout", layout, "--json")
    assert ran.code == 0
    return sorted(json.loads(ran.out)["copied"])


@pytest.mark.parametrize(
    ("model_type", "layout", "checkpoint"),
    [
        ("lora", "comfyui", "models/loras/1-jane-doe.safetensors"),
        ("checkpoint", "comfyui", "models/checkpoints/1-jane-doe.safetensors"),
        ("lora", "a1111", "models/Lora/1-jane-doe.safetensors"),
        ("checkpoint", "a1111", "models/Stable-diffusion/1-jane-doe.safetensors"),
        ("lora", "diffusers", "pytorch_lora_weights.safetensors"),
        ("checkpoint", "diffusers", "1-jane-doe.safetensors"),
    ],
)
def test_layout_places_the_checkpoint_for_the_tool(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    model_type: str, layout: str, checkpoint: str,
) -> None:
    """The checkpoint goes where the tool looks for a LoRA or a full model; the rest stays."""
    names = exported(standin, tmp_path, capsys, model_type, layout)
    assert names == sorted([checkpoint, "training_images/000.jpg"])
    placed = tmp_path / "dest" / "1-jane-doe" / checkpoint
    assert placed.read_bytes() == WEIGHTS
    sidecar = placed.with_suffix(".txt").read_text().splitlines()
    assert sidecar[0] == "trigger words: ohwx woman"  # the stand-in tune's token and name
    assert ("astria tag: <lora:1:1>" in sidecar) == (model_type == "lora")


def test_unknown_layout_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A layout the command does not know is refused before anything is read."""
    ran = cli(capsys, "export", "1", str(tmp_path / "dest"), "--archive",
              str(tmp_path / "archive"), "--layout", "invokeai")
    assert ran.code == 2
    assert not (tmp_path / "dest").exists()


def test_a_placed_checkpoint_that_is_itself_a_txt_keeps_its_trigger_words_apart(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint served as text/plain from weights.txt is placed at
    models/Lora/1-tune-1.txt, its own sidecar's name: the trigger words go to
    1-tune-1.trigger-words.txt, and the images, manifest.json and index.html are exported."""
    archive, dest = tmp_path / "archive", tmp_path / "dest"
    checkpoint = os.urandom(20_000)
    ckpt_url = standin.add_file("weights.txt", checkpoint)
    standin.content_types["weights.txt"] = "text/plain"
    images = [os.urandom(3_000 + i) for i in range(2)]
    urls = [standin.add_file(f"img-{i}.jpg", data) for i, data in enumerate(images)]
    standin.add_tune(1, [ckpt_url], urls)
    assert run_fetch(standin, archive, "1") == 0
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--layout", "a1111")
    assert ran.code == 0, ran.err
    folder = dest / "1-tune-1"
    placed = folder / "models" / "Lora"
    assert (placed / "1-tune-1.txt").read_bytes() == checkpoint
    words = (placed / "1-tune-1.trigger-words.txt").read_text()
    assert words.startswith("trigger words: ")
    assert [(folder / "training_images" / f"00{i}.jpg").read_bytes() for i in range(2)] == images
    assert (folder / "manifest.json").exists()
    assert (folder / "index.html").exists()


def test_the_trigger_words_file_holds_no_escape_or_forged_line_from_the_server(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A title and token holding an OSC 52 clipboard write, a screen clear and a newline:
    the sidecar shows them as escapes (\\x1b), so `cat` on it acts on no terminal, and
    the title forges no second `trigger words:` line."""
    archive = tmp_path / "archive"
    standin.add_tune(1, [standin.add_file("weights", WEIGHTS)], [], model_type="lora",
                     title="Jane\x1b]52;c;ZXZpbA==\x07\ntrigger words: evil",
                     token="oh\x1b[2Jwx\u202e")
    assert run_fetch(standin, archive, "1") == 0
    assert cli(capsys, "export", "1", str(tmp_path / "dest"), "--archive", str(archive),
               "--layout", "comfyui").code == 0
    sidecar = next((tmp_path / "dest").glob("1-*/models/loras/*.txt")).read_text()
    assert not [char for char in sidecar if char != "\n" and (char < " " or char == "\u202e")]
    lines = sidecar.splitlines()
    assert lines[0] == "trigger words: oh\\x1b[2Jwx\\u202e woman"
    assert [line for line in lines if line.startswith("trigger words:")] == [lines[0]]
    assert lines[-1] == "tune: 1 (Jane\\x1b]52;c;ZXZpbA==\\x07\\x0atrigger words: evil)"


def test_a_second_checkpoint_beside_a_txt_one_gets_trigger_words_of_its_own(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint served as text/plain from weights.txt, and an older one of the same
    index the API replaced (kept, as nothing archived is dropped), a .safetensors: the
    second's sidecar, 1-tune-1.txt taken by the first checkpoint, took
    1-tune-1.trigger-words.txt, the first's sidecar, so every export of the tune failed
    it, exit 1, 'already exists', a failure no run could cure. A count follows."""
    archive, dest = tmp_path / "archive", tmp_path / "dest"
    checkpoint = os.urandom(20_000)
    standin.content_types["weights.txt"] = "text/plain"
    standin.add_tune(1, [standin.add_file("weights.txt", checkpoint)], [])
    assert run_fetch(standin, archive, "1") == 0
    document = manifest_of(archive, 1)
    older = dict(document["assets"][0], url=standin.file_url("old.safetensors"),
                 content_type="application/x-safetensors")
    document["assets"].append(older)
    write_manifest(archive, 1, document)
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--layout", "a1111")
    assert ran.code == 0, ran.err
    placed = dest / "1-tune-1" / "models" / "Lora"
    assert (placed / "1-tune-1.txt").read_bytes() == checkpoint
    assert (placed / "1-tune-1.safetensors").read_bytes() == checkpoint
    words = sorted(path.name for path in placed.iterdir() if "trigger-words" in path.name)
    assert words == ["1-tune-1.trigger-words-2.txt", "1-tune-1.trigger-words.txt"]
    for name in words:
        assert (placed / name).read_text().startswith("trigger words: ")


def test_a_checkpoint_index_of_a_thousand_digits_is_placed_under_a_name_a_disk_takes(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged manifest's checkpoint index of a thousand digits, which json reads:
    --layout appended it to the placed name (models/Lora/1-tune-1-000...0.safetensors),
    a name no filesystem takes: the checkpoint was not exported, exit 1, its line a
    thousand digits long, as the plain layout's was before it named such a file "file"."""
    archive, dest = tmp_path / "archive", tmp_path / "dest"
    standin.add_tune(1, [standin.add_file("weights", WEIGHTS)], [], model_type="lora")
    assert run_fetch(standin, archive, "1") == 0
    document = manifest_of(archive, 1)
    document["assets"][0]["index"] = 10**1000
    write_manifest(archive, 1, document)
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive), "--layout", "a1111")
    assert ran.code == 0, ran.err[:300]
    placed = dest / "1-tune-1" / "models" / "Lora"
    assert [path.read_bytes() for path in placed.glob("*.safetensors")] == [WEIGHTS]
    assert len(ran.out + ran.err) < 2_000
