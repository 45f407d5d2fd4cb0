"""What the commands print: summary lines, tables and the --json shapes (see README).
Pure: each function turns results into text or JSON-ready values; main.py prints them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tune_archiver.astria.client import PERSONAL
from tune_archiver.commands.unlisted import fetch_all
from tune_archiver.commands.verify import BLOB_PROBLEMS, SET_ASIDE, Problem, VerifyReport
from tune_archiver.config import AllTunes
from tune_archiver.errors import NEWER
from tune_archiver.models import TuneResult, file_said, see_verify, with_prompts
from tune_archiver.selection import TuneFilter
from tune_archiver.text import counted, human_bytes, time_left
from tune_archiver.urls import redact

if TYPE_CHECKING:  # their commands' modules are imported when those commands run
    from tune_archiver.commands.repair import RepairReport


EXPIRES_SOON = 3 * 86400  # a failed tune deleted this soon is said so: a run or two left


def tune_name(tune_id: int, title: str | None) -> str:
    return f"tune {tune_id}" + (f" ({title})" if title else "")


# -- fetch -------------------------------------------------------------------------


def scope_of(workspace: str | None, tunes: object) -> str | None:
    """The workspace fetch --all's listing covers, for --json (fetch's and its dry
    run's): an id, all, or personal (none sent); None for tunes named."""
    return (workspace or PERSONAL) if isinstance(tunes, AllTunes) else None


def fetch_json(results: Sequence[TuneResult], broke: Exception | None,
               scope: str | None) -> dict[str, Any]:
    """fetch's --json document; `scope` is the workspace --all's listing covered (an id,
    all, or personal: none sent), None for tunes named."""
    return {"ok": broke is None and all(r.ok for r in results),
            **({"error": str(broke)} if broke else {}),
            **({"workspace": scope} if scope else {}),
            "tunes": [tune_json(r) for r in results]}


def fetch_stopped_json(finished: Sequence[TuneResult], scope: str | None,
                       tunes: bool = True) -> dict[str, Any]:
    """What a stopped fetch's --json document says of its run, as fetch_json would: the
    workspace --all's listing covered, and (with `tunes`) the tunes `finished` before."""
    return {**({"workspace": scope} if scope else {}),
            **({"tunes": [tune_json(r) for r in finished]} if tunes else {})}


def tune_json(result: TuneResult) -> dict[str, Any]:
    """The --json shape of one tune's fetch result."""
    return {
        "tune_id": result.tune_id,
        "title": result.title,
        "ok": result.ok,
        "skipped": result.skipped,
        "error": result.error,
        "manifest": result.manifest,
        "files": len(result.assets),
        "new": sum(1 for r in result.assets if r.ok and not r.reused),
        # not a file carried over as gone by an earlier run: it was never archived
        "already_archived": sum(1 for r in result.assets if r.reused and r.ok),
        "failed": len(result.failed),
        "gone": sum(1 for r in result.assets if r.gone),  # as the summary line counts
        "prompts_gone": result.prompts_gone,  # prompts never read, purged: said once
        "state": result.state,
        "bytes": sum(r.blob.size for r in result.assets if r.blob),
        "new_bytes": sum(r.blob.size for r in result.assets if r.blob and not r.reused),
        "seconds": round(result.seconds, 3),
        "expires_in": None if result.expires_in is None else round(result.expires_in),
        "failures": [
            {"kind": r.asset.kind, "index": r.asset.index,
             **({"prompt_id": r.asset.prompt_id} if r.asset.prompt_id is not None else {}),
             "url": redact(r.asset.url), "error": r.error}
            for r in [*result.failed, *result.gone]
        ],
    }


def _here(text: str, tune_id: int, also: str) -> str:
    """`text` with the command unlisted.py names in it run on this archive (`also`)."""
    return text.replace(fetch_all(tune_id), fetch_all(tune_id, also), 1)


def fetch_errors(result: TuneResult, also: str = "") -> list[str]:
    """One line per failure of the tune: the tune's own, then each file's (`also` ends a
    command said: running.archive_option)."""
    name = tune_name(result.tune_id, result.title)
    lines = []
    if result.error is not None:
        error = result.error
        if error.endswith(see_verify(result.tune_id)):  # on this archive, as said here
            error = error.removesuffix(see_verify(result.tune_id)) + see_verify(
                result.tune_id, also)
        named = error.startswith(f"tune {result.tune_id}")  # API errors name it already
        lines.append(error if named else f"{name}: {error}")
    for failure in result.failed:
        lines.append(f"{name}: {file_said(failure.asset)}: "
                     f"{_here(str(failure.error), result.tune_id, also)}")
    for lost in result.gone:
        lines.append(f"{name}: {file_said(lost.asset)}: gone upstream, never "
                     f"archived (it will not be asked for again): {lost.error}")
    if result.prompts_gone is not None:
        lines.append(f"{name}: prompt files gone upstream, never archived: the prompts "
                     f"could not be read: {result.prompts_gone}")
    # Only what a run could still get: a file gone upstream is never asked for again, so
    # "run fetch again" would end in exit 0 with it never archived.
    left = result.expires_in
    again = result.error is not None or bool(result.failed)
    if again and left is not None and left <= EXPIRES_SOON:
        # Prompts not read: a run without --prompts would not ask for them, and exit 0.
        kinds = [*(f.asset.kind for f in result.failed),
                 *(["prompt_image"] if result.prompts_unread else [])]
        # Past it by our clock, still served (a clock ahead, a deletion not done yet):
        # the most urgent of all, never left unsaid
        when = (f"Astria deletes it in {time_left(math.ceil(left))}" if left > 0 else
                "its expires_at has passed by this machine's clock: Astria may delete it "
                "at any moment")
        lines.append(f"{name}: not archived whole, and {when}: run tune-archiver fetch "
                     f"{result.tune_id}{with_prompts(kinds)}{also} again "
                     f"{'before then' if left > 0 else 'now'}")
    return lines


def fetch_warnings(result: TuneResult) -> list[str]:
    """What a tune's result says plainly without being a failure: nothing listed."""
    name = tune_name(result.tune_id, result.title)
    if result.state == "training" and result.assets:
        return [f"{name}: still training, no checkpoint listed yet: not complete; the next "
                "fetch archives it once trained"]
    if result.state == "training":
        return [f"{name}: the API lists no files yet (still training): nothing to archive"]
    if result.state == "no_files_listed":
        return [f"{name}: the API lists no files (expired and deleted upstream?): "
                "nothing new to archive"]
    return []


def tune_counts(results: Sequence[TuneResult], stopped: str | None = None) -> str:
    """Counts and failed tune ids for a fail ping: no error text (it may name URLs)."""
    failed = [str(result.tune_id) for result in results if not result.ok]
    text = f"{counted(len(results), 'tune')} done, {len(failed)} failed"
    if failed:
        text += ": " + " ".join(failed)
    return f"{stopped}; {text}" if stopped else text


def undone(signal: str, asked: Sequence[int] | None, finished: Sequence[TuneResult],
           staging: str) -> str:
    """What a fetch stopped by `signal` left undone (`asked`: None for --all), and where
    its partial downloads wait."""
    done = {result.tune_id for result in finished}
    if asked is None:
        said = f"{counted(len(done), 'tune')} done"
    else:
        left = ", ".join(str(i) for i in asked if i not in done) or "none"
        said = f"{len(done)} of {len(asked)} tunes done; not finished: {left}"
    return (f"stopped by {signal}: {said}; partial downloads are kept in {staging} "
            "for the next run")


def ping_summary(command: str, code: int, summary: str | None) -> str:
    """The body of a fail ping: the command, its exit code, and the counts if known."""
    return f"tune-archiver {command}: exit {int(code)}" + (f"; {summary}" if summary else "") + "\n"


def nothing_selected(tunes: AllTunes, scope: str | None) -> str:
    """The line for a fetch --all that found no tune to archive; `scope` is what its
    listing covered (scope_of): the personal scope, or one workspace, is not the account."""
    where = "" if tunes.shard is None else f" in shard {tunes.shard[0]}/{tunes.shard[1]}"
    if tunes.filters != TuneFilter():
        where += " passing the filters"
    # A shard, as a filter, leaves out tunes the account lists: none in it is not none.
    if tunes.expiring_within is None and (tunes.filters != TuneFilter() or where):
        return f"--all selected no tunes{where}"
    if tunes.expiring_within is None:
        return f"--all selected no tunes{where}: {_lists_none(scope)}"
    hours = tunes.expiring_within.total_seconds() / 3600
    return f"--all selected no tunes{where}: none expires within {hours:g} h"


def _lists_none(scope: str | None) -> str:
    if scope in (None, PERSONAL):  # the API answers for the personal scope alone
        return ("the personal scope lists none (a workspace's tunes are listed only with "
                "--workspace ID or all)")
    return "the account lists none" if scope == "all" else f"workspace {scope} lists none"


def fetch_summary(result: TuneResult) -> str | None:
    """The summary line of one tune; None for a tune that failed as a whole (no manifest
    written: one whose prompts could not all be read is archived still)."""
    if result.error is not None and result.manifest is None:
        return None
    name = tune_name(result.tune_id, result.title)
    if result.skipped:
        return f"{name}: unchanged since archived, skipped"
    summary = tune_json(result)
    gone = sum(1 for r in result.assets if r.gone)
    return (
        f"{name}: {counted(summary['files'], 'file')}, {human_bytes(summary['bytes'])} "
        f"({summary['new']} new, {summary['already_archived']} already archived, "
        f"{summary['failed']} failed" + (f", {gone} gone upstream" if gone else "")
        + f") in {result.seconds:.1f} s"
    )


# -- verify ------------------------------------------------------------------------


def verify_json(report: VerifyReport) -> dict[str, Any]:
    """The --json shape of `verify`."""
    return {
        "ok": report.ok,
        "tunes": report.tunes,
        "blobs": report.blobs,
        "bytes": report.bytes,
        "problems": [_problem_json(p) for p in report.problems],
        "gone": [_problem_json(p) for p in report.gone],
    }


def _problem_json(p: Problem) -> dict[str, Any]:
    return {"tune_id": p.tune_id, "kind": p.kind, "index": p.index,
            **({"prompt_id": p.prompt_id} if p.prompt_id is not None else {}),
            "problem": p.problem, "detail": p.detail}


def verify_problems(report: VerifyReport, strict: bool = False, also: str = "") -> list[str]:
    """One line per problem, naming the tune, kind and index, and ending with the command
    that mends it; with `strict`, one per file gone upstream too (it fails the run)."""
    lines = [f"{_where(p)}: {p.problem.replace('_', ' ')}: {_here(p.detail, p.tune_id, also)} "
             f"({_mend(p, also + _everywhere(report, p.tune_id))})" for p in report.problems]
    if strict:
        lines += [f"{_where(p)}: gone upstream, never archived (--strict): {p.detail}"
                  for p in report.gone]
    return lines


def verify_counts(tunes: int, left: VerifyReport, strict: bool = False,
                  failed: Sequence[int] = ()) -> str:
    """Counts and damaged tune ids for a fail ping: the problems `left` (after a repair:
    those it did not mend, and `failed`, the tunes it could not fetch). No detail text,
    which names paths and URLs."""
    found = left.problems + (left.gone if strict else [])
    ids = sorted({p.tune_id for p in found} | set(failed))
    text = f"{counted(tunes, 'tune')} verified, {counted(len(found), 'problem')}"
    return text + (": " + " ".join(map(str, ids)) if ids else "")


def _where(p: Problem) -> str:
    index = f" {p.index}" if p.index is not None else ""  # a field: no file of it known
    of = f" of prompt {p.prompt_id}" if p.prompt_id is not None else ""
    return f"tune {p.tune_id}" + (f": {p.kind}{index}{of}" if p.kind is not None else "")


def _everywhere(report: VerifyReport, tune_id: int) -> str:
    """` --workspace all` for a tune of a workspace, after the run's own: it wins."""
    return " --workspace all" if tune_id in report.in_workspace else ""


def _mend(p: Problem, also: str) -> str:
    if p.closed:  # a repair as this user would be refused, or move what may be whole
        return ("maybe whole, only closed to this user: nothing to repair; verify as the "
                "user it belongs to, or let this user read it")
    if p.problem in BLOB_PROBLEMS:
        return f"repair: tune-archiver verify --repair {p.tune_id}{also}"
    if p.problem in ("failed", "no_manifest"):
        return f"retry: tune-archiver fetch {p.tune_id}{with_prompts([p.kind])}{also}"
    # Never "remove it" alone: the blobs only it names would go with the next gc.
    if p.detail.startswith(SET_ASIDE):
        return "look at it, then remove it: gc keeps every blob until then"
    if p.set_aside_by_hand:  # "fetch sets it aside" would send them round: it fails on it
        return (f"a fetch cannot set it aside: move it to manifests/damaged/{p.tune_id}-0.json"
                " in the archive (gc keeps every blob while it is there), then tune-archiver "
                f"fetch {p.tune_id}{also} archives the tune anew")
    if p.detail.startswith(NEWER):  # fetch leaves it as it is
        return "upgrade tune-archiver to check it; this version's fetch leaves it as it is"
    # A tune gone upstream is no fetch's: "fetch" alone sent them round, gc stuck for good.
    return (f"tune-archiver fetch {p.tune_id}{also} sets it aside, and the fetch after it "
            "archives the tune anew; of a tune gone upstream, which no fetch finds, move it "
            f"to manifests/damaged/{p.tune_id}-0.json in the archive: gc keeps every blob "
            "while it is there")


def verify_summary(report: VerifyReport, strict: bool = False) -> str:
    """The verdict line; with `strict` a file gone upstream is a problem, so the line
    never says "all intact" for a run that exits 1."""
    failing = len(report.problems) + (len(report.gone) if strict else 0)
    state = counted(failing, "problem") if failing else "all intact"
    gone = (f"; {counted(len(report.gone), 'file')} gone upstream, never archived"
            + (" (a problem with --strict)" if strict else "") if report.gone else "")
    # Intact, not complete: as list and fetch say it (no problem: nothing failed).
    gone += (f"; {counted(len(report.training), 'tune')} still training, not complete"
             if report.training else "")
    gone += (f"; {counted(len(report.partial), 'tune')} archived in part, not "
             "complete" if report.partial else "")
    return (f"verified {counted(report.tunes, 'tune')}, {counted(report.blobs, 'blob')}, "
            f"{human_bytes(report.bytes)}: {state}{gone}")


# -- verify --repair -----------------------------------------------------------------


def repair_errors(mended: RepairReport, strict: bool = False, also: str = "") -> list[str]:
    """What a repair could not mend: the problems left (with `strict`, files gone
    upstream too), and the files it could not fetch."""
    lines = [f"not repaired: {line}" for line in mended.refused + mended.replaced]
    lines += [f"not repaired: {line}" for line in verify_problems(mended.after, strict, also)]
    for result in mended.fetched if not mended.ok else ():  # else said in repair_lines
        lines += [f"not repaired: {line}" for line in fetch_errors(result, also)]
    return lines


def repair_lines(found: VerifyReport, mended: RepairReport, strict: bool = False) -> list[str]:
    """What was found, moved aside and fetched again, and the verdict (with `strict`, a
    file gone upstream leaves the archive not whole)."""
    lines = [verify_summary(found, strict)]
    lines += [f"mended the manifest of {line}" for line in mended.mended]
    lines += [f"put back {line}" for line in mended.put_back]
    lines += [f"moved aside {key}" for key in mended.moved]
    lines += [summary for result in mended.fetched if (summary := fetch_summary(result))]
    if mended.ok:  # a tune gone upstream whose blobs another tune's fetch made whole
        lines += [f"not fetched again, its files whole in the archive: {line}"
                  for result in mended.fetched for line in fetch_errors(result)]
    whole = mended.ok and not (strict and mended.after.gone)
    verdict = "the archive is whole" if whole else "the archive is NOT whole"
    entries = f"{counted(len(mended.mended), 'manifest field')} mended, " if mended.mended else ""
    back = f"{counted(len(mended.put_back), 'blob')} put back, " if mended.put_back else ""
    lines.append(f"repair: {entries}{back}{counted(len(mended.fetched), 'tune')} fetched again, "
                 f"{counted(len(mended.moved), 'damaged file')} moved aside: {verdict}")
    return lines


def repair_cut_short(found: VerifyReport, mended: RepairReport, also: str = "") -> list[str]:
    """What a repair a signal stopped had done, and the command that finishes it."""
    lines = [f"before the stop: mended the manifest of {line}" for line in mended.mended]
    lines += [f"before the stop: put back {line}" for line in mended.put_back]
    lines += [f"before the stop: moved aside {key} (kept there)" for key in mended.moved]
    tunes = "".join(f" {tune_id}" for tune_id in sorted({p.tune_id for p in found.problems}))
    lines.append(f"the repair is not finished: run tune-archiver verify --repair{tunes}{also} "
                 "to fetch again what was moved aside")
    return lines


def repair_json(found: VerifyReport, mended: RepairReport) -> dict[str, Any]:
    """The --json shape of `verify --repair`: what verify found, what the repair did."""
    return {
        **verify_json(found),
        "ok": mended.ok,
        "repair": {
            "mended": mended.mended,
            "moved": mended.moved,
            "put_back": mended.put_back,
            "refused": mended.refused,
            "replaced": mended.replaced,
            "fetched": [tune_json(result) for result in mended.fetched],
            "after": verify_json(mended.after),
        },
    }
