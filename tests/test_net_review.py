"""A hostile API and asset hosts: answers that once slipped past the checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_fetch
from tests.standin import StandIn, Status

DEEP = b"[" * 100_000  # well-formed JSON's nesting, deeper than Python's recursion limit
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.mark.parametrize("answer", [Status(200, JSON, DEEP), Status(422, JSON, DEEP)])
def test_a_deeply_nested_tune_answer_is_malformed_json_not_an_internal_error(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], answer: Status
) -> None:
    """A tune (or an API error) nested deeper than the JSON decoder recurses is a bad
    answer, said as one, for that tune only: the other tune is archived."""
    standin.add_tune(5, [], [standin.add_file("a", b"a" * 2000)])
    standin.add_tune(6, [], [standin.add_file("b", b"b" * 2000)])
    standin.api_faults[5] = [answer]
    assert run_fetch(standin, archive, "5", "6", "--retries", "0") == 1
    printed = capsys.readouterr()
    assert "tune 6 (Tune 6): 1 file" in printed.out
    assert "tune 5" in printed.err
    assert "internal error" not in printed.err
    assert "Recursion" not in printed.out + printed.err


@pytest.mark.parametrize("extra", [(), ("--dry-run",)])
def test_a_deeply_nested_listing_is_one_line_not_a_traceback(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
) -> None:
    """A page of the listing nested too deeply ends the run with one line naming the
    listing (it escaped main as a RecursionError, with a traceback)."""
    standin.add_tune(6, [], [standin.add_file("b", b"b" * 2000)])
    standin.page_faults = [Status(200, JSON, DEEP)]
    assert run_fetch(standin, archive, "--all", "--retries", "0", *extra) == 1
    printed = capsys.readouterr()
    assert "the list of tunes: the API returned malformed JSON" in printed.err
