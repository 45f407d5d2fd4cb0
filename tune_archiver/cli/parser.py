"""The command line's grammar: every command, its options and their types."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NoReturn

from tune_archiver import __version__
from tune_archiver.cli.envopts import command_of, name_in_help, set_by
from tune_archiver.cli.scale import (
    add_filters,
    add_forget,
    add_limit_rate,
    check_scale,
    not_blank,
    shard_or_auto,
)
from tune_archiver.commands.layouts import LAYOUTS
from tune_archiver.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MIN_RATE,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_SPLIT,
    DEFAULT_SPLIT_THRESHOLD,
    DEFAULT_STALL_WINDOW,
    ENV_API_KEY,
    ENV_API_URL,
    ENV_ARCHIVE,
    ENV_PING_URL,
    MAX_CONCURRENCY,
    MAX_SPLIT,
)
from tune_archiver.digits import whole_number
from tune_archiver.selection import MAX_ID_DIGITS, id_text

_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)([wdhm])", re.ASCII)  # 0-9 alone
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}
LONGEST_WINDOW = timedelta(days=36500)
# Options that would put the key on the command line, where ps and shell history see it.
KEY_OPTIONS = ("--api-key", "--token", "--key")
KEY_REFUSED = "the key is never an argument: pass the key in ASTRIA_API_KEY or --api-key-file"
TOKEN_REFUSED = "serve's token is never an argument: put it in a file named by --token-file"


class UsageError(Exception):
    """A command line the grammar refuses; str() is one line, naming no argument's value."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog  # "tune-archiver fetch": where --help explains


class Parser(argparse.ArgumentParser):
    """argparse with its errors raised as one UsageError line, never exiting or printing,
    and with no abbreviated options (--arch is not --archive)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        for word in args or ():
            if word.split("=", 1)[0] in KEY_OPTIONS:  # serve needs no key: its own token
                self.error(TOKEN_REFUSED if self._command(args or []) == "serve" else KEY_REFUSED)
        return super().parse_known_args(args, namespace)

    def _command(self, args: Sequence[str]) -> str | None:
        """The command run, or ours: see command_of."""
        return command_of(self, args) if self._subparsers else self.prog.split()[-1]

    def error(self, message: str) -> NoReturn:
        raise UsageError(_without_values(message), self.prog)
_SIZE = re.compile(r"(\d+)([KMG]?)i?B?", re.IGNORECASE | re.ASCII)
_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command; each sets `command` to its name.

    The options every command has are accepted before the command too
    (`tune-archiver -q list` as `tune-archiver list -q`).
    """
    parser = Parser(
        prog="tune-archiver",
        description="Make a complete, verifiable copy of Astria fine-tunes before they expire.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(parser, None)
    common = Parser(add_help=False)
    _add_common(common, argparse.SUPPRESS)
    api = Parser(add_help=False)
    _add_api(api)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=Parser)
    _add_fetch(commands, common, api)
    _add_others(commands, common, api)
    name_in_help(parser)
    return parser


def _add_common(parser: argparse.ArgumentParser, default: Any) -> None:
    """--archive, --json, -q, -v ...; `default` is SUPPRESS for the commands, so that a
    command's default never overwrites what was given before the command (argparse
    copies every value the command's parser holds over the top parser's)."""
    parser.add_argument("--archive", metavar="DIR", default=default,
                        help=f"the archive: a directory or s3://bucket/prefix (env "
                        f"{ENV_ARCHIVE}; default ./tune-archive)")
    parser.add_argument("--s3-endpoint-url", metavar="URL", default=default,
                        help="the endpoint of an S3-compatible store other than AWS: MinIO, "
                        "R2, B2 (or env AWS_ENDPOINT_URL)")
    parser.add_argument("--log-file", metavar="PATH", default=default,
                        help="append what the run does to PATH as JSON lines (UTC times, no "
                        "secrets); - writes them to stderr in place of the usual lines")
    flag: Any = default or False
    parser.add_argument("--json", action="store_true", default=flag,
                        help="print one JSON result on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", default=flag,
                        help="print only errors")
    parser.add_argument("-v", "--verbose", action="store_true", default=flag,
                        help="log each request and retry; tracebacks")


def _add_api(api: argparse.ArgumentParser) -> None:
    """What a command that talks to the API needs: fetch, and verify --repair."""
    api.add_argument("--api-url", metavar="URL",
                     help=f"the API's base URL (env {ENV_API_URL}; default https://api.astria.ai)")
    api.add_argument("--ping-url", metavar="URL",
                     help=f"a health-check URL: GET URL/start when the run begins, URL on "
                     f"success, POST URL/fail with a short summary otherwise (env "
                     f"{ENV_PING_URL})")
    api.add_argument("--api-key-file", metavar="PATH",
                     help=f"read the API key from this file instead of {ENV_API_KEY}")
    api.add_argument("--workspace", metavar="ID|all", type=not_blank,
                     help="send X-Workspace-Id: ID to the API; all spans every workspace "
                     "(else ASTRIA_WORKSPACE_ID, or the Astria CLI's config)")
    api.add_argument("--profile", metavar="NAME",
                     help="read the Astria CLI's ~/.astria/config.NAME.json (else "
                     "ASTRIA_PROFILE; without one, config.json) for a key, base URL and "
                     "workspace when ours are not set")
    api.add_argument("--allow-private-redirects", action="store_true",
                     help="follow an asset host's redirect into a private address (loopback, "
                     "link-local, the local network); refused unless the API is on one")
    api.add_argument("--concurrency", metavar="N", type=concurrency,
                     default=DEFAULT_CONCURRENCY,
                     help=f"downloads at once, at most, 1 to {MAX_CONCURRENCY} (default "
                     f"{DEFAULT_CONCURRENCY}); "
                     "the API has 4 requests of its own")
    api.add_argument("--retries", metavar="N", type=non_negative_int, default=DEFAULT_RETRIES,
                     help=f"retries of a failed request (default {DEFAULT_RETRIES})")
    api.add_argument("--read-timeout", metavar="SECONDS", type=positive_float,
                     default=DEFAULT_READ_TIMEOUT,
                     help="give up on a server silent this long (default "
                     f"{DEFAULT_READ_TIMEOUT:g})")


def _add_others(
    commands: argparse._SubParsersAction[Parser],
    common: Parser,
    api: Parser,
) -> None:
    verify = commands.add_parser(
        "verify", parents=[common, api],
        help="re-read every archived blob and check its sha256; --repair mends what it finds",
        description="Re-hash every blob the chosen manifests reference (all when no id is "
        "given) and report each missing or corrupt file. Exit 0 when all is intact, 1 if not. "
        "With --repair, damaged blobs are moved to tmp/damaged/ and their tunes fetched again "
        "(the API key is needed then).",
    )
    verify.add_argument("--repair", action="store_true",
                        help="move damaged blobs aside and fetch their tunes again")
    verify.add_argument("--strict", action="store_true",
                        help="files gone upstream (never archived) make the exit code 1 too")
    verify.add_argument("tune_ids", metavar="TUNE_ID", nargs="*", type=tune_id,
                        help="a tune to verify (default: every archived tune)")

    commands.add_parser(
        "list", parents=[common], help="a table of the archived tunes",
        description="One line per archived tune: id, title, branch, model type, files, size, "
        "whether it is complete, when it was archived, when it expires and the time left.",
    )

    export = commands.add_parser(
        "export", parents=[common], help="copy a tune out of the archive as a plain folder",
        description="Write DEST/<id>-<title>/ with checkpoints/, training_images/, "
        "prompt_images/ and manifest.json, private to you (0700, files 0600). Copies of "
        "the blobs (a reflink where the filesystem can), or hard links with --link. Never "
        "overwrites anything.",
    )
    export.add_argument("tune_id", metavar="TUNE_ID", type=tune_id, help="the tune to export")
    export.add_argument("dest", metavar="DEST", help="the folder to export into")
    export.add_argument("--link", action="store_true",
                        help="hard-link the archive's blobs instead of copying them (no space "
                        "used; the files are the archive's own, read-only)")
    export.add_argument("--copy", action="store_true",
                        help="copy the blobs (the default; kept for older scripts)")
    export.add_argument("--layout", choices=LAYOUTS,
                        help="put the checkpoint where ComfyUI (models/loras, "
                        "models/checkpoints), AUTOMATIC1111 (models/Lora, "
                        "models/Stable-diffusion) or diffusers (pytorch_lora_weights."
                        "safetensors, or one file for from_single_file) looks for it")

    retrain = commands.add_parser(
        "retrain", parents=[common, api],
        help="create a new tune from an archived tune's training images",
        description="Show the POST /tunes that would re-train the tune from its archived "
        "training images (title '<title> (restored YYYY-MM-DD)'); with --yes, send it, each image "
        "checked against its sha256 first.",
    )
    retrain.add_argument("tune_id", metavar="TUNE_ID", type=tune_id,
                         help="the archived tune to re-train")
    retrain.add_argument("--title", metavar="TITLE", dest="new_title", type=title,
                         help="the new tune's title (default: '<title> (restored YYYY-MM-DD)')")
    retrain.add_argument("--yes", action="store_true",
                         help="send it: this creates (and bills) a new tune")

    serve = commands.add_parser(
        "serve", parents=[common], help="a read-only web view of the archive",
        description="Serve the archive's tunes as web pages: the tunes (newest first), one "
        "page per tune with its checkpoints, images and prompts, the files themselves (Range "
        "supported) and a 'verify this tune' button. Never writes to the archive. Only "
        "loopback unless --bind says otherwise, and then --token-file is required.",
    )
    serve.add_argument("--bind", metavar="HOST:PORT", default="127.0.0.1:8765",
                       help="where to listen (default 127.0.0.1:8765)")
    serve.add_argument("--token-file", metavar="PATH",
                       help="a file holding a token every request must carry (?token= or "
                       "Authorization: Bearer); required off loopback")

    gc = commands.add_parser(
        "gc", parents=[common], help="remove unreferenced blobs and stale partial downloads",
        description="Remove blobs that no manifest references and partial downloads untouched "
        "for a day. Waits while a fetch runs on the same archive.",
    )
    gc.add_argument("--dry-run", action="store_true",
                    help="list what would be removed and the bytes freed; remove nothing")
    add_forget(commands, common, tune_id, duration)


def _add_fetch(
    commands: argparse._SubParsersAction[Parser],
    common: Parser,
    api: Parser,
) -> None:
    fetch = commands.add_parser(
        "fetch", parents=[common, api], help="archive tunes: checkpoints, images and a manifest",
        description="Download each tune's checkpoints and training images into the archive "
        "and write its manifest. The API key comes from " + ENV_API_KEY + " or --api-key-file.",
    )
    fetch.add_argument("tune_ids", metavar="TUNE_ID", nargs="*", type=tune_id,
                       help="id of a tune to archive")
    fetch.add_argument("--all", action="store_true",
                       help="archive every tune of the account (skipping unchanged ones)")
    fetch.add_argument("--expiring-within", metavar="DURATION", type=duration,
                       help="with --all: only tunes that expire within this time, e.g. 1w, "
                       "7d, 1.5d, 36h, 90m")
    fetch.add_argument("--shard", metavar="K/N|auto", type=shard_or_auto,
                       help="with --all: only tunes whose id modulo N is K-1, so N machines "
                       "can share an account; auto reads K and N from a Kubernetes "
                       "Indexed Job or an AWS Batch array job")
    add_filters(fetch)
    add_limit_rate(fetch)
    fetch.add_argument("--prompts", action="store_true",
                       help="also archive the images generated from each tune's prompts")
    fetch.add_argument("--dry-run", action="store_true",
                       help="say what would be downloaded, with sizes; write nothing")
    fetch.add_argument("--split", metavar="N", type=split_count, default=DEFAULT_SPLIT,
                       help=f"ranges fetched at once for one large file, 1 to {MAX_SPLIT} "
                       f"(default {DEFAULT_SPLIT}; 1 never splits)")
    fetch.add_argument("--split-threshold", metavar="SIZE", type=size,
                       default=DEFAULT_SPLIT_THRESHOLD,
                       help="split files of at least this size, e.g. 64M, 1G (default 64M)")
    fetch.add_argument("--min-rate", metavar="RATE", type=rate, default=DEFAULT_MIN_RATE,
                       help="a download slower than this (bytes/s, e.g. 1K, 50K) over "
                       "--stall-window is cut and retried; 0 never cuts (default 1K)")
    fetch.add_argument("--stall-window", metavar="SECONDS", type=positive_float,
                       default=DEFAULT_STALL_WINDOW,
                       help=f"the window --min-rate is averaged over (default "
                       f"{DEFAULT_STALL_WINDOW:g})")
    fetch.add_argument("--force", action="store_true",
                       help="download even when a file is larger than the free space")
    fetch.add_argument("--only", choices=("checkpoints", "images"),
                       help="archive only this kind of file")


def check_fetch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage rules argparse cannot say: ids or --all, and --expiring-within with --all."""
    if args.all and args.tune_ids:
        parser.error(f"fetch: give tune ids or --all, not both{set_by(parser, args, '--all')}")
    if not args.all and not args.tune_ids:
        parser.error("fetch: give at least one TUNE_ID, or --all")
    if args.expiring_within is not None and not args.all:
        said = set_by(parser, args, "--expiring-within")
        parser.error(f"fetch: --expiring-within works with --all{said}")
    if args.shard is not None and not args.all:
        parser.error(f"fetch: --shard works with --all{set_by(parser, args, '--shard')}")
    check_scale(parser, args)


def tune_id(text: str) -> int:
    """A tune id: a positive integer, or the tune's Astria URL that holds it."""
    value = whole_number(id_text(text))
    if value is None or not 0 < value < 10**MAX_ID_DIGITS:  # as --ids-from takes them
        raise argparse.ArgumentTypeError("not a tune id (a positive integer)")
    return value


def title(text: str) -> str:
    """retrain's --title: a blank one was taken for none, the default title sent."""
    if not text.strip():
        raise argparse.ArgumentTypeError("not a title (it is blank)")
    return text


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError("not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = whole_number(text)
    if value is None:
        raise argparse.ArgumentTypeError("not a whole number")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("not a positive number")
    return value


def concurrency(text: str) -> int:
    value = positive_int(text)
    if value > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"at most {MAX_CONCURRENCY} at once")
    return value


def split_count(text: str) -> int:
    value = positive_int(text)
    if value > MAX_SPLIT:
        raise argparse.ArgumentTypeError(f"at most {MAX_SPLIT} ranges")
    return value


def size(text: str) -> int:
    """A size in bytes, with an optional K, M or G (powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError("not a size (e.g. 64M, 1G, 1048576)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def rate(text: str) -> float:
    """Bytes per second, with an optional K, M or G; 0 turns the rule off."""
    if text.strip() == "0":
        return 0.0
    try:
        return float(size(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError("not a rate (e.g. 1K, 50K, 0)") from None


def duration(text: str) -> timedelta:
    """A window such as 1w, 7d, 1.5d, 36h or 90m."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or float(match.group(1)) == 0:
        raise argparse.ArgumentTypeError("not a duration (a number of w, d, h or m, e.g. 7d)")
    window = timedelta(**{_UNITS[match.group(2)]: min(float(match.group(1)), 1e7)})
    if window > LONGEST_WINDOW:  # now + a longer one leaves the calendar (year 9999)
        raise argparse.ArgumentTypeError("too long a duration (at most 36500d)")
    return window


def _without_values(message: str) -> str:
    """argparse's message with the arguments it quotes left out: a key pasted in the
    wrong place must not be printed back (nor land in a log)."""
    message = re.sub(r"(invalid \S+ value): '.*'$", r"\1", message)
    message = re.sub(r"(invalid choice): '.*?'", r"\1", message)
    if message.startswith("unrecognized arguments: "):
        words = message.removeprefix("unrecognized arguments: ").split(" ")
        named = sorted({w.split("=", 1)[0] for w in words if w.startswith("-")})
        return "unrecognized arguments" + (": " + " ".join(named) if named else "")
    return message
