"""Pure naming for `export --layout`: where a tune's checkpoint goes so that ComfyUI,
AUTOMATIC1111 or diffusers finds it; every other file keeps the plain layout.

Names are built from names.py's safe pieces only, so none leaves the export folder.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal, get_args

from tune_archiver.commands.names import MAX_NUMBER, extension, folder_name
from tune_archiver.manifest import Entry
from tune_archiver.text import visible

Layout = Literal["comfyui", "a1111", "diffusers"]
LAYOUTS: tuple[Layout, ...] = get_args(Layout)
# The folders each tool reads, for a LoRA and for a full checkpoint, under its root.
FOLDERS: dict[Layout, tuple[str, str]] = {
    "comfyui": ("models/loras", "models/checkpoints"),
    "a1111": ("models/Lora", "models/Stable-diffusion"),
}
DIFFUSERS_LORA = "pytorch_lora_weights"  # the weight name load_lora_weights looks for


def is_lora(tune: dict[str, Any]) -> bool:
    """True for a LoRA tune (model_type lora); anything else is a full checkpoint."""
    model_type = tune.get("model_type")
    return isinstance(model_type, str) and model_type.lower() == "lora"


def layout_path(layout: Layout, entry: Entry, tune_id: int, tune: dict[str, Any]) -> str | None:
    """Where the checkpoint `entry` goes in `layout`; None for any other file (it keeps
    the plain layout).

    comfyui and a1111: models/<their folder>/<id>-<slug>.safetensors, the folder
    copied into the tool's root. diffusers: a LoRA as pytorch_lora_weights.safetensors
    at the top (load_lora_weights(folder)); a full checkpoint as one file for
    from_single_file (a multi-folder pipeline would need a conversion). A second
    checkpoint of the tune gets its index appended.
    """
    if entry.kind != "checkpoint":
        return None
    suffix = extension(entry.content_type, entry.url)
    # A damaged manifest's index too long for a name is "file", as export_path names it.
    index = entry.index
    more = "" if index == 0 else f"-{index:03d}" if index < MAX_NUMBER else "-file"
    if layout == "diffusers":
        stem = DIFFUSERS_LORA if is_lora(tune) else folder_name(tune_id, tune.get("title"))
        return f"{stem}{more}{suffix}"
    lora_folder, checkpoint_folder = FOLDERS[layout]
    folder = lora_folder if is_lora(tune) else checkpoint_folder
    return f"{folder}/{folder_name(tune_id, tune.get('title'))}{more}{suffix}"


def sidecar_name(placed: str, taken: set[str]) -> str:
    """The trigger words' file beside the checkpoint placed at `placed`: the same name
    with .txt, else (a checkpoint that is itself a .txt, served as text/plain) the
    name with .trigger-words.txt, a count after it when that is taken too (a second
    checkpoint of the index, one the API replaced, beside one that is a .txt); added to
    `taken`."""
    path = PurePosixPath(placed)
    name = str(path.with_suffix(".txt"))
    if name in taken:
        name, count = str(path.with_suffix(".trigger-words.txt")), 1
        while name in taken:
            count += 1
            name = str(path.with_suffix(f".trigger-words-{count}.txt"))
    taken.add(name)
    return name


def trigger_words(tune_id: int, tune: dict[str, Any]) -> str:
    """The sidecar text beside a placed checkpoint: how to call up the tune in a prompt.

    The tune's token and class name ("ohwx woman"), and for a LoRA the tag Astria's
    own prompts use (<lora:ID:1>). Pure; the title and fields are the archived ones,
    their control and format characters shown as escapes (text.visible), as every
    line we print: a person `cat`s this file, and an escape in it would act on the
    terminal, a newline forge a line of its own.
    """
    words = " ".join(visible(tune[name]) for name in ("token", "name")
                     if isinstance(tune.get(name), str) and tune[name])
    lines = [f"trigger words: {words}" if words else "trigger words: (none recorded)"]
    if is_lora(tune):
        lines.append(f"astria tag: <lora:{tune_id}:1>")
    title = tune.get("title")
    lines.append(f"tune: {tune_id}" + (f" ({visible(title)})" if isinstance(title, str) else ""))
    return "\n".join(lines) + "\n"
