"""A captive portal (a hotel's Wi-Fi, a proxy's or a firewall's sign-in) answering every
request with its own 200 HTML page: said as such, one line a tune, nothing archived."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_fetch
from tests.standin import StandIn, Status
from tune_archiver.filetypes import not_json

PAGE = Status(200, {"Content-Type": "text/html"},
              b"\n<!DOCTYPE html><html><body>Sign in to Guest Wi-Fi</body></html>")


def test_a_portals_page_for_the_api_is_said_as_a_page_not_as_bad_json(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for tune in (1, 2):
        standin.add_tune(tune, [], [standin.add_file(f"f{tune}", b"x" * 2000)])
        standin.api_faults[tune] = [PAGE]
    assert run_fetch(standin, tmp_path / "archive", "1", "2", "--retries", "0") == 1
    err = capsys.readouterr().err
    for tune in (1, 2):
        assert (f"tune {tune}: the API returned an HTML page, not JSON (a captive portal's"
                in err)
    assert "malformed JSON" not in err
    assert not (tmp_path / "archive" / "manifests" / "1.json").exists()


@pytest.mark.parametrize("body", [b'{"id": 5, "ckpt_urls": [', b"<error>", b"", b"not json"])
def test_an_answer_that_is_no_page_stays_malformed_json(body: bytes) -> None:
    assert not_json(body) == "malformed JSON"
