"""The grammar for archives at scale: fetch --all's filters, --shard auto, --limit-rate,
and the forget command; and turning those options into what the commands take."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from tune_archiver.cli.envopts import set_by
from tune_archiver.digits import whole_number
from tune_archiver.errors import ConfigError
from tune_archiver.selection import (
    MAX_ID_DIGITS,
    MODEL_TYPES,
    TuneFilter,
    ids_from_lines,
    parse_moment,
)

AUTO = "auto"
# --ids-from: a million ids take 8 MiB; a larger file is the wrong one (a checkpoint,
# /dev/zero), refused once this much is read rather than read whole into memory.
MAX_IDS_BYTES = 16 * 2**20


def add_filters(fetch: argparse.ArgumentParser) -> None:
    """fetch --all's filters (combined with AND, and with --expiring-within and --shard)."""
    fetch.add_argument("--title", metavar="GLOB", type=filter_text,
                       help="with --all: only tunes whose title matches GLOB (fnmatch, "
                       "any case), e.g. 'client-*'")
    fetch.add_argument("--model-type", choices=MODEL_TYPES,
                       help="with --all: only tunes of this model type")
    fetch.add_argument("--branch", metavar="NAME", type=filter_text,
                       help="with --all: only tunes of this base model branch, e.g. flux1")
    fetch.add_argument("--created-after", metavar="DATE", type=moment,
                       help="with --all: only tunes created at or after DATE (ISO 8601, "
                       "UTC unless it says otherwise)")
    fetch.add_argument("--created-before", metavar="DATE", type=moment,
                       help="with --all: only tunes created before DATE")
    fetch.add_argument("--ids-from", metavar="FILE",
                       help="with --all: only the tune ids listed in FILE, one a line "
                       "(- reads stdin; blank lines and # comments ignored)")


def add_limit_rate(fetch: argparse.ArgumentParser) -> None:
    """--limit-rate: one budget for every download of the run."""
    fetch.add_argument("--limit-rate", metavar="RATE", type=byte_rate,
                       help="download at most RATE bytes a second in all, every connection "
                       "and range together, e.g. 500K, 20M (powers of 1024)")


def byte_rate(text: str) -> float:
    """Bytes a second: a positive number with an optional K, M or G (powers of 1024)."""
    match = _RATE.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError("not a rate (e.g. 500K, 20M)")
    return float(match.group(1)) * float(1024 ** "_KMG".index((match.group(2) or "_").upper()))


_RATE = re.compile(r"(\d+(?:\.\d+)?)([KMGkmg]?)(?:i?B)?(?:/s)?", re.ASCII)  # 0-9 alone
FILTER_OPTIONS = ("title", "model_type", "branch", "created_after", "created_before",
                  "ids_from")


def utf8_text(text: str) -> str:
    """Text that can be sent to the API: bytes that are not UTF-8 in an argument (a
    Latin-1 terminal's) come as lone surrogates, which no request can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("not text (bytes that are not UTF-8)") from None
    return text


def filter_text(text: str) -> str:
    """--title and --branch: UTF-8 text, not blank."""
    return not_blank(utf8_text(text))


def not_blank(text: str) -> str:
    """A blank --title, --branch or --workspace (`--title "$CLIENT"`, the variable unset in
    cron) was a filter no tune passed, or no workspace: --all selected none, or the personal
    scope alone, exit 0, a success ping, the tunes left to expire unarchived."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is blank (a variable it names may be unset)")
    return text


def moment(text: str) -> Any:
    """A date or time, ISO 8601 (2026-11-01, 2026-11-01T12:00Z)."""
    value = parse_moment(text.strip())
    if value is None:
        raise argparse.ArgumentTypeError("not a date (ISO 8601, e.g. 2026-11-01)")
    return value


def shard_or_auto(text: str) -> tuple[int, int] | str:
    """K/N with 1 <= K <= N, or auto (from the job runner's environment); spaces around
    either (a cron line's quoting: " 1/2") are no part of it, as auto's are not."""
    if text.strip().lower() == AUTO:
        return AUTO
    k, _, n = text.strip().partition("/")
    shard, shards = whole_number(k, MAX_ID_DIGITS), whole_number(n, MAX_ID_DIGITS)
    if shard is None or shards is None or not 1 <= shard <= shards:
        raise argparse.ArgumentTypeError("not a shard K/N with 1 <= K <= N, nor auto")
    return shard, shards


def shard_from_env(env: Mapping[str, str]) -> tuple[int, int]:
    """--shard auto: (K, N) from a Kubernetes Indexed Job (JOB_COMPLETION_INDEX, from 0,
    with N in TUNE_ARCHIVER_SHARDS) or an AWS Batch array job (AWS_BATCH_JOB_ARRAY_INDEX,
    AWS_BATCH_JOB_ARRAY_SIZE). Raises ConfigError when neither is there, or is malformed."""
    if "JOB_COMPLETION_INDEX" in env:
        pair = ("JOB_COMPLETION_INDEX", "TUNE_ARCHIVER_SHARDS")
    elif "AWS_BATCH_JOB_ARRAY_INDEX" in env:
        pair = ("AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE")
    else:
        raise ConfigError("--shard auto: no job runner's index found (JOB_COMPLETION_INDEX "
                          "with TUNE_ARCHIVER_SHARDS, or AWS_BATCH_JOB_ARRAY_INDEX)")
    index_name, count_name = pair
    index, count = env.get(index_name, "").strip(), env.get(count_name, "").strip()
    if not count:
        raise ConfigError(f"--shard auto: {index_name} is set but {count_name} is not")
    first, shards = whole_number(index, MAX_ID_DIGITS), whole_number(count, MAX_ID_DIGITS)
    if first is None or shards is None:
        raise ConfigError(f"--shard auto: {index_name} and {count_name} must be whole numbers")
    if not first < shards:
        raise ConfigError(f"--shard auto: {index_name} must be less than {count_name}")
    return first + 1, shards


def filters_of(args: argparse.Namespace) -> TuneFilter:
    """fetch's filters from its options; --ids-from read here (- is stdin).

    Raises ConfigError for a file that cannot be read or holds a line that is not an id."""
    ids = None if args.ids_from is None else ids_in(args.ids_from)
    return TuneFilter(args.title, args.model_type, args.branch, args.created_after,
                      args.created_before, ids)


def ids_in(name: str) -> frozenset[int]:
    """The ids of --ids-from NAME (- is stdin), read as bytes: a stdin that decodes
    strictly (a UTF-8 locale's) would raise on bytes that are not UTF-8, where a bad
    line is a usage error naming its number. A UTF-8 byte order mark (Notepad's, Excel's)
    is skipped. Raises ConfigError."""
    source = "stdin" if name == "-" else "file"
    try:
        if name == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            if stdin is None:  # closed (`<&-`): sys.stdin is None
                raise ConfigError("--ids-from -: there is no stdin to read (it is closed)")
            data = stdin.read(MAX_IDS_BYTES + 1)
        else:
            with open(name, "rb") as file:
                data = file.read(MAX_IDS_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"--ids-from: cannot read the {source} ({exc.strerror})") from None
    if len(data) > MAX_IDS_BYTES:
        raise ConfigError(f"--ids-from {source}: larger than {MAX_IDS_BYTES} bytes, "
                          "not a list of tune ids")
    return ids_from_lines(data.decode("utf-8-sig", errors="replace").splitlines(), source)


def check_scale(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The filters work with --all only."""
    for name in FILTER_OPTIONS:
        if getattr(args, name) is not None and not args.all:
            option = f"--{name.replace('_', '-')}"
            parser.error(f"fetch: {option} works with --all{set_by(parser, args, option)}")


def add_forget(
    commands: Any, common: argparse.ArgumentParser, tune_id: Callable[[str], int],
    duration: Callable[[str], timedelta],
) -> None:
    """The forget command: manifests removed, so that gc frees the blobs (`tune_id` and
    `duration` are the parser's types)."""
    forget = commands.add_parser(
        "forget", parents=[common], help="remove tunes' manifests, so gc frees their blobs",
        description="Remove the manifest of each tune named (or, with --keep-within, of "
        "every tune whose expires_at passed longer ago than that); its blobs go at the next "
        "gc unless another tune uses them. Waits while a fetch or gc runs on the archive.",
    )
    forget.add_argument("tune_ids", metavar="TUNE_ID", nargs="*", type=tune_id,
                        help="a tune to forget")
    forget.add_argument("--keep-within", metavar="DURATION", type=duration,
                        help="forget every tune that expired longer ago than this, e.g. 90d")
    forget.add_argument("--dry-run", action="store_true",
                        help="say what would be removed; remove nothing")


def check_forget(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """forget: tune ids or --keep-within, one of them."""
    if bool(args.tune_ids) == (args.keep_within is not None):
        said = set_by(parser, args, "--keep-within") if args.tune_ids else ""
        parser.error(f"forget: give tune ids or --keep-within, one of them{said}")
