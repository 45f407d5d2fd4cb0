"""A captive portal (a hotel's Wi-Fi, a proxy's or a firewall's sign-in) answering every
request with its own 200 HTML page: said as such, one line a tune, nothing archived."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_fetch
from tests.standin import StandIn, Status
from tune_archiver.cli.exits import Exit
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


BLOCKED = b"<!DOCTYPE html><html><body>Blocked by your organisation's web filter</body></html>"


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("tunes", [["1"], ["--all"]])
def test_a_refusal_that_is_no_json_is_not_said_as_the_key_rejected(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], status: int,
    tunes: list[str],
) -> None:
    """A 401/403 page from a TLS-intercepting proxy or a web filter, for a tune or for the
    listing, is said as a page from something between here and the API, exit 4: never
    'API key rejected', exit 3, which sends a user to rotate a good key."""
    standin.add_tune(1, [], [standin.add_file("f", b"x" * 2000)])
    refusal = Status(status, {"Content-Type": "text/html"}, BLOCKED)
    standin.api_faults[1] = [refusal]
    standin.page_faults = [refusal]
    assert run_fetch(standin, tmp_path / "archive", *tunes, "--retries", "0") == Exit.UNREACHABLE
    err = capsys.readouterr().err
    assert f"HTTP {status} from http://" in err
    assert "something between here and the API (a proxy, a web filter" in err
    assert "is an HTML page, not the API's answer" in err
    assert "API key rejected" not in err
    assert standin.api_key not in err
    assert not (tmp_path / "archive" / "manifests" / "1.json").exists()


def refused(standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
            answer: Status, code: Exit) -> str:
    """Tune 1 fetched once (no retry) while the API answers it `answer`: the exit `code`
    checked, stderr returned."""
    standin.add_tune(1, [], [standin.add_file("f", b"x" * 2000)])
    standin.api_faults[1] = [answer]
    assert run_fetch(standin, tmp_path / "archive", "1", "--retries", "0") == code
    return capsys.readouterr().err


CLOUDFLARE = (b"<!DOCTYPE html><html><head><title>Attention Required! | Cloudflare</title>"
              b"</head><body>Sorry, you have been blocked</body></html>")


def test_a_refusal_page_of_the_apis_own_firewall_is_said_as_possibly_that(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 403 page of the firewall in front of the API (Cloudflare's 'you have been
    blocked', for a VPN's or a cloud server's address) is no judgement of the key, exit
    4; but the line named only this network's proxy, web filter or captive portal, and
    a user with none looked for one in vain: it names the API's own firewall too."""
    err = refused(standin, tmp_path, capsys, Status(403, {"Content-Type": "text/html"},
                                                    CLOUDFLARE), Exit.UNREACHABLE)
    assert "the firewall in front of the API refused this machine's address" in err
    assert "API key rejected" not in err


@pytest.mark.parametrize("body", [b"HTTP Token: Access denied.\n", b""])
def test_a_plain_text_or_empty_refusal_is_still_the_keys(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes
) -> None:
    """A 401 in plain text is what a Rails API (Astria's kind) answers a token it does
    not know, as text/plain: that is the key's, exit 3, never a proxy's."""
    err = refused(standin, tmp_path, capsys, Status(401, {"Content-Type": "text/plain"}, body),
                  Exit.AUTH)
    assert "API key rejected: check ASTRIA_API_KEY" in err
    assert "something between here and the API" not in err


def test_the_apis_own_json_refusal_still_says_the_key_was_rejected(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API's own 401 (JSON, as Astria answers a key it does not know) is the key's."""
    standin.add_tune(1, [], [standin.add_file("f", b"x" * 2000)])
    assert run_fetch(standin, tmp_path / "archive", "1", key="sk-not-this-one") == Exit.AUTH
    err = capsys.readouterr().err
    assert "API key rejected: check ASTRIA_API_KEY" in err
    assert "sk-not-this-one" not in err
