"""HTML pages of an archived tune and of the archive (pure): no I/O, no JavaScript.

The export's index.html and `serve` render the same page; the caller says where each
file is (a relative path in an export, a blob URL in `serve`). Every text from the
tune, a prompt or a URL is escaped with html.escape(quote=True), its control and
format characters shown as escapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from html import escape
from typing import Any

from tune_archiver.commands.names import extension
from tune_archiver.manifest import Entry, Manifest
from tune_archiver.models import PROMPT_KINDS
from tune_archiver.selection import model_type_of
from tune_archiver.text import human_bytes, time_left, visible
from tune_archiver.urls import redact_text

Href = Callable[[Entry], "str | None"]

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:1rem;
color:#222;background:#fafafa}
h1{font-size:1.4rem;word-break:break-word}h2{font-size:1.1rem;margin-top:2rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dt{font-weight:600}
dd{margin:0;word-break:break-word}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(9rem,1fr));gap:.5rem}
.grid img,.grid video,.grid audio{width:100%;height:auto;border-radius:4px;background:#ddd}
.prompt{margin:1.5rem 0}.prompt p{white-space:pre-wrap;word-break:break-word}
table{border-collapse:collapse;width:100%}td,th{padding:.3rem;border-bottom:1px solid #ccc;
text-align:left;word-break:break-all}code{font-size:.8rem}
.failed{color:#a00}.ok{color:#070}
"""


_LINE_BREAK = re.compile(r"\r\n?|\n")


def e(value: Any, *, prompt: bool = False) -> str:
    """Any value as escaped HTML text (None as an empty string), shown as every line is:
    each URL in it redacted (an older version's manifest may hold a signature redacted
    now), its control and format characters as escapes (\\x1b, \\u202e), as on a
    terminal: the page is text that `grep -r`, `cat` and `curl` print too, where an
    escape sequence would act (OSC 52 writes the clipboard). Line breaks stay line
    breaks (a prompt's lines): CR, LF and CRLF alone, not all str.splitlines takes
    (U+2028, NEL, VT...), escapes on every line printed, which forged a line here. A
    `prompt`'s own words (`key=light`) are kept, as its manifest keeps them."""
    if value is None:
        return ""
    lines = _LINE_BREAK.split(redact_text(str(value), prompt=prompt))
    if len(lines) > 1 and not lines[-1]:
        lines.pop()  # a final line break, dropped as splitlines dropped it
    return escape("\n".join(visible(line) for line in lines), quote=True)


def attr(link: str) -> str:
    """A link of our making as an attribute's value: escaped, and whole (serve's carry
    the ?token= a redaction would cut)."""
    return escape(link, quote=True)


def page(title: str, body: str) -> str:
    """A whole document: viewport meta, the inline style, no script and nothing remote."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
        "</body></html>\n"
    )


def tune_page(found: Manifest, href: Href, extra: str = "") -> str:
    """One tune: its facts, checkpoints, training images, prompts' outputs and inputs.

    `href` gives each archived entry's link (None: no link); `extra` is trusted HTML
    placed after the facts (serve's verify form)."""
    tune = found.tune
    title = found.title or f"tune {found.tune_id}"
    facts = [("id", found.tune_id), ("branch", tune.get("branch")),
             ("model type", model_type_of(tune)), ("created", tune.get("created_at")),
             ("trained", tune.get("trained_at")), ("expires", tune.get("expires_at")),
             ("archived", found.archived_at), ("workspace", found.workspace),
             ("complete", _complete(found, href))]
    parts = [f"<h1>{e(title)}</h1>", "<dl>" + "".join(
        f"<dt>{e(name)}</dt><dd>{e(value)}</dd>" for name, value in facts if value is not None
    ) + "</dl>", extra]
    parts.append(_checkpoints(found, [x for x in found.entries
                                      if x.kind == "checkpoint"], href))
    for kind, heading in (("training_image", "Training images"),
                          ("face_swap_image", "Face-swap images")):
        chosen = [x for x in found.entries if x.kind == kind]
        if chosen:
            parts.append(f"<h2>{heading} ({len(chosen)})</h2>{_grid(chosen, href)}")
    parts.append(_prompts(found.entries, href))
    return page(title, "\n".join(part for part in parts if part))


def _complete(found: Manifest, href: Href) -> str:
    """Whether the tune is complete; never "yes" on a page that lacks an archived file
    (export's index.html of a folder a missing blob kept a file from, which the user
    opens from the stick later believing it whole)."""
    missing = sum(1 for entry in found.entries if entry.blob and href(entry) is None)
    if not missing:
        return "yes" if found.complete else "no"
    return (f"no: {missing} archived file{'s' if missing > 1 else ''} not exported"
            + (" (complete in the archive)" if found.complete else ""))


def _checkpoints(found: Manifest, entries: Sequence[Entry], href: Href) -> str:
    from tune_archiver.commands.listing import checkpoint_state  # list's: not at startup

    tune_id = found.tune_id
    if not entries:  # the tune recorded may list one all the same (--only images): as list
        return "<h2>Checkpoints</h2>" + (
            "<p class=\"failed\">listed by the API, not archived (--only images leaves it out)"
            "</p>" if checkpoint_state(found) == "failed" else "<p>none listed</p>")
    rows = []
    for entry in entries:
        link = href(entry) if entry.blob else None
        # Saved under a name with its extension: serve's link ends in the sha256, which a
        # browser took for the file's name (no .safetensors, so no tool listed it). No
        # title in it: an older manifest's may hold the key, which a slug would hide.
        saved = f"{tune_id}-checkpoint-{entry.index:03d}{extension(entry.content_type, entry.url)}"
        name = f"<a href=\"{attr(link)}\" download=\"{attr(saved)}\">download</a>" if link else (
            f"<span class=\"failed\">{e(': '.join(filter(None, [_unlinked(entry), entry.error])))}"
            "</span>")
        size = human_bytes(entry.size) if entry.size is not None else ""
        rows.append(f"<tr><td>{entry.index}</td><td>{e(size)}</td>"
                    f"<td><code>{e(entry.sha256)}</code></td><td>{name}</td></tr>")
    return ("<h2>Checkpoints</h2><table><tr><th>#</th><th>size</th><th>sha256</th>"
            "<th></th></tr>" + "".join(rows) + "</table>")


def _grid(entries: Iterable[Entry], href: Href) -> str:
    cells = []
    for entry in entries:
        link = href(entry) if entry.blob else None
        if link is None:
            cells.append(f"<div class=\"failed\">{e(entry.kind)} {entry.index}: "
                         f"{e(_unlinked(entry))}</div>")
        elif (entry.content_type or "").startswith("video/"):
            cells.append(f"<video controls preload=\"metadata\" src=\"{attr(link)}\"></video>")
        elif (entry.content_type or "").startswith("audio/"):  # a prompt's audio_reference
            cells.append(f"<audio controls preload=\"metadata\" src=\"{attr(link)}\"></audio>")
        else:
            cells.append(f"<a href=\"{attr(link)}\"><img src=\"{attr(link)}\" loading=\"lazy\" "
                         f"alt=\"{e(entry.kind)} {entry.index}\"></a>")
    return "<div class=\"grid\">" + "".join(cells) + "</div>"


def _unlinked(entry: Entry) -> str:
    """What a file without a link is: failed or gone, as archived; or archived, but not
    in the folder (export could not copy it: its blob missing, say), never "ok"."""
    return "not exported" if entry.blob else str(entry.status)


def _prompts(entries: Sequence[Entry], href: Href) -> str:
    groups: dict[int | None, list[Entry]] = {}
    for entry in entries:
        if entry.kind in PROMPT_KINDS:
            groups.setdefault(entry.prompt_id, []).append(entry)
    if not groups:
        return ""
    parts = [f"<h2>Prompts ({len(groups)})</h2>"]
    for prompt_id, chosen in groups.items():
        text = next((x.prompt_text for x in chosen if x.prompt_text), "")
        parts.append(f"<section class=\"prompt\"><h3>prompt {e(prompt_id)}</h3>"
                     f"<p>{e(text, prompt=True)}</p>{_grid(chosen, href)}</section>")
    return "\n".join(parts)


def tunes_page(rows: Sequence[dict[str, Any]], link: Callable[[int], str]) -> str:
    """The archive's tunes (rows as `list` makes them), newest first, each linked."""
    body = ["<h1>Archived tunes</h1><table><tr><th>id</th><th>title</th><th>status</th>"
            "<th>checkpoint</th><th>expires in</th><th>workspace</th></tr>"]
    for row in rows:
        tune_id = row["tune_id"]
        if "error" in row:
            body.append(f"<tr><td>{e(tune_id)}</td><td class=\"failed\" colspan=\"5\">"
                        f"{e(row['error'])}</td></tr>")
            continue
        status = ("<span class=\"ok\">complete</span>" if row.get("complete") else
                  f"<span class=\"failed\">{e(', '.join(notes(row)) or 'not complete')}</span>")
        body.append(
            f"<tr><td>{e(tune_id)}</td><td><a href=\"{attr(link(tune_id))}\">"
            f"{e(row.get('title') or f'tune {tune_id}')}</a></td><td>{status}</td>"
            f"<td>{e(row.get('checkpoint'))}</td><td>{e(countdown(row.get('seconds_left')))}"
            f"</td><td>{e(row.get('workspace'))}</td></tr>")
    body.append("</table>")
    return page("Archived tunes", "".join(body))


def notes(row: dict[str, Any]) -> list[str]:
    """What keeps a tune from complete, as `list` says it: "2 failed", "1 gone upstream",
    "still training", "none listed" (a file gone upstream, or a tune that lists none,
    is not one that failed), "prompts not read" (by the --prompts run that asked),
    "training_image list unread" (the API sent the field malformed: a null in it)."""
    said = [f"{row['failed']} failed"] if row.get("failed") else []
    said += [f"{row['gone']} gone upstream"] if row.get("gone") else []
    said += ["still training"] if row.get("state") == "training" else []
    said += ["prompts not read"] if row.get("prompts_unread") else []
    said += [f"{kind} list unread" for kind in row.get("unread") or []]
    return said + (["none listed"] if row.get("state") == "no_files_listed" else [])


def countdown(seconds: int | None) -> str:
    """Time left before expiry, as `list` says it ('12d 3h', 'expired'); '' when unknown."""
    return "" if seconds is None else time_left(seconds)
