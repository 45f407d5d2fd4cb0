"""Which listed tunes fetch --all keeps (pure): --title, --model-type, --branch,
--created-after/--created-before and --ids-from, combined with AND."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tune_archiver.digits import whole_number
from tune_archiver.errors import ConfigError

MODEL_TYPES = ("lora", "pti", "faceid", "checkpoint")
# Astria's model_type of a full checkpoint tune is null, not "checkpoint" (astria-docs
# docs/api/0-tune/1-create.md: "Enum: lora, pti, faceid, null for checkpoint").
CHECKPOINT = "checkpoint"
MAX_ID_DIGITS = 18  # as a prompt's <lora:ID:...> tag (models.py): no tune id is longer


@dataclass(frozen=True)
class TuneFilter:
    """The filters of fetch --all; a field left None does not filter."""

    title: str | None = None  # a glob, matched case-insensitively
    model_type: str | None = None
    branch: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    ids: frozenset[int] | None = None

    def api_query(self) -> dict[str, str]:
        """The filters the API's GET /tunes takes itself; the local ones apply anyway."""
        # The API matches branch exactly, and Astria's branches are lower case: sent as
        # given, FLUX1 listed none of the flux1 tunes the local filter keeps.
        branch = self.branch.lower() if self.branch is not None else None
        # No model_type names a checkpoint tune to the API: that one is filtered here only.
        sent_type = self.model_type if self.model_type != CHECKPOINT else None
        query = {"model_type": sent_type, "branch": branch}
        # A glob is not the API's title search: only a title without wildcards is sent.
        if self.title is not None and not any(c in self.title for c in "*?["):
            query["title"] = self.title
        return {name: value for name, value in query.items() if value is not None}

    def keeps(self, listed: Mapping[str, Any]) -> bool:
        """True when the listed tune passes every filter; a field the listing lacks
        (or cannot be read) fails the filter that needs it."""
        if self.ids is not None and listed.get("id") not in self.ids:
            return False
        if self.title is not None and not _text_matches(listed.get("title"), self.title):
            return False
        if self.model_type is not None and not _is_type(listed, self.model_type):
            return False
        if self.branch is not None and not _equal(listed.get("branch"), self.branch):
            return False
        if self.created_after is None and self.created_before is None:
            return True
        created = parse_moment(listed.get("created_at"))
        if created is None:
            return False
        # At or after: --created-before X and --created-after X split an account whole.
        after_ok = self.created_after is None or created >= self.created_after
        return after_ok and (self.created_before is None or created < self.created_before)


def _text_matches(value: Any, glob: str) -> bool:
    return isinstance(value, str) and fnmatch.fnmatchcase(value.casefold(), glob.casefold())


def _is_type(listed: Mapping[str, Any], wanted: str) -> bool:
    """True when the listed tune is of model type `wanted`: a checkpoint's is null."""
    return _equal(model_type_of(listed), wanted)


def model_type_of(tune: Mapping[str, Any]) -> str | None:
    """The tune's model type as said to a user: `checkpoint` for the null Astria sends
    for a full checkpoint; None when it sends none (or not a string)."""
    if "model_type" in tune and tune["model_type"] is None:
        return CHECKPOINT
    value = tune.get("model_type")
    return value if isinstance(value, str) else None


def _equal(value: Any, wanted: str) -> bool:
    return isinstance(value, str) and value.casefold() == wanted.casefold()


def parse_moment(value: Any) -> datetime | None:
    """An ISO 8601 date or time (an API timestamp, or one given on the command line) as
    an aware datetime in UTC; None when absent or unreadable.

    With or without a fraction of a second, with Z or an offset; a time without an
    offset is taken as UTC, and a bare date as midnight UTC.
    """
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # an offset that moves year 1 or 9999 out of range
        return None


# A tune's page pasted from the browser's address bar, or its API url (the tune's own
# "url" field): https://www.astria.ai/tunes/788416, .json, /prompts, ?query or #anchor.
_TUNE_PAGE = re.compile(r"https?://(?:www\.)?astria\.ai/tunes/(\d+)(?:\.json)?(?:[/?#]\S*)?",
                        re.IGNORECASE | re.ASCII)


def id_text(text: str) -> str:
    """The tune id a user gave: the text, or the digits of the tune's Astria URL when
    that was pasted in its place (refused, exit 2, with nothing said of the URL)."""
    page = _TUNE_PAGE.fullmatch(text)
    return page.group(1) if page else text


def ids_from_lines(lines: Iterable[str], source: str) -> frozenset[int]:
    """The tune ids of --ids-from: one a line, blank lines and # comments ignored.

    Raises ConfigError naming the first bad line's number, never its text (a key
    pasted into the file must not be printed back).
    """
    ids: set[int] = set()
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        tune_id = whole_number(text, MAX_ID_DIGITS)
        if tune_id is None or tune_id <= 0:
            raise ConfigError(f"--ids-from {source}: line {number} is not a tune id "
                              "(a positive integer)")
        ids.add(tune_id)
    return frozenset(ids)


def in_shard(tune_id: int, shard: tuple[int, int] | None) -> bool:
    """True when the tune falls in shard K of N (K from 1): its id modulo N is K - 1."""
    return shard is None or tune_id % shard[1] == shard[0] - 1
