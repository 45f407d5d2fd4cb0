"""--workspace ID|all: fetch --all across every workspace, each manifest naming the
tune's workspace, and `list` showing it."""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from tests.archive_helpers import cli
from tests.conftest import check_manifest
from tests.helpers import run_fetch
from tests.standin import StandIn, Status
from tune_archiver.astria.client import AstriaClient
from tune_archiver.commands.workspaces import Workspaces, workspace_of


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def add_tune(standin: StandIn, tune_id: int, workspace: str | None = None, **fields: object
             ) -> None:
    ckpt = standin.add_file(f"ckpt-{tune_id}", os.urandom(3_000 + tune_id))
    standin.add_tune(tune_id, [ckpt], [], **fields)
    if workspace is not None:
        standin.tune_workspaces[tune_id] = workspace


def workspace_in(archive: Path, tune_id: int) -> str | None:
    document = check_manifest(archive / "manifests" / f"{tune_id}.json")
    return document.get("workspace")


def test_all_workspaces_are_fetched_and_each_manifest_names_its_own(
    standin: StandIn, archive: Path
) -> None:
    """--all --workspace all archives the tunes of every workspace and the personal scope;
    tunes without workspace_id are placed by listing each workspace of /workspaces.json."""
    add_tune(standin, 1)
    add_tune(standin, 2, "41")
    add_tune(standin, 3, "42")
    assert run_fetch(standin, archive, "--all", "--workspace", "all") == 0
    assert {t: workspace_in(archive, t) for t in (1, 2, 3)} == {
        1: "personal", 2: "41", 3: "42"}
    scoped = [r.headers.get("X-Workspace-Id") for r in standin.seen("api", "/tunes?")]
    assert scoped[0] == "all"
    assert set(scoped) == {"all", "41", "42"}
    assert len(standin.seen("api", "/workspaces.json")) == 1


@pytest.mark.parametrize("source", ["option", "env"])
@pytest.mark.parametrize(("workspace", "listing"), [
    ("41\r\nX-Other: 1", True),  # a header line of its own: aiohttp's ValueError
    ("41\x1b[2J", True),  # an escape sequence, sent and then written to each manifest
    ("w\udcff", False),  # bytes not UTF-8: the manifest could not be encoded
], ids=["crlf", "escape", "not-utf8"])
def test_a_workspace_id_that_no_header_can_carry_is_a_usage_error(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, workspace: str, listing: bool, source: str,
) -> None:
    """A workspace id with a control character or bytes that are not UTF-8 (from
    --workspace or ASTRIA_WORKSPACE_ID) is exit 2, one line that does not print it,
    before any request: it was a traceback, or the tunes were downloaded and then
    failed, or the escape went into the manifests."""
    add_tune(standin, 1)
    given = ["--workspace", workspace] if source == "option" else []
    if source == "env":
        monkeypatch.setenv("ASTRIA_WORKSPACE_ID", workspace)
    assert run_fetch(standin, archive, *(["--all"] if listing else ["1"]), *given) == 2
    err = capsys.readouterr().err
    assert err.startswith("tune-archiver: error: the workspace id")
    assert workspace not in err
    assert standin.seen("api") == []
    assert not archive.exists()


def test_a_tune_naming_its_workspace_needs_no_workspace_listing(
    standin: StandIn, archive: Path
) -> None:
    """When every tune carries workspace_id, that is recorded and no workspace is listed."""
    add_tune(standin, 1, workspace_id=None)
    add_tune(standin, 2, "41", workspace_id=41)
    assert run_fetch(standin, archive, "--all", "--workspace", "all") == 0
    assert (workspace_in(archive, 1), workspace_in(archive, 2)) == ("personal", "41")
    assert standin.seen("api", "/workspaces.json") == []


def test_without_all_only_the_personal_scope_is_listed(standin: StandIn, archive: Path) -> None:
    """Without --workspace, --all covers the personal scope only and records no workspace."""
    add_tune(standin, 1)
    add_tune(standin, 2, "41")
    assert run_fetch(standin, archive, "--all") == 0
    assert sorted(p.stem for p in (archive / "manifests").glob("*.json")) == ["1"]
    assert workspace_in(archive, 1) is None


def test_a_tune_named_that_lives_in_another_workspace_is_said_to_be_there(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch ID of a tune of workspace 41, without --workspace: the API answers 404 in the
    personal scope, and 'tune 2 not found' sent its owner to think it deleted while it
    was there to be saved. The line says where it is and how to fetch it; a tune in no
    workspace is 'not found' as before."""
    standin.scoped_gets = True
    add_tune(standin, 2, "41", workspace_id=41)
    assert run_fetch(standin, archive, "2", "999") == 1
    err = capsys.readouterr().err
    assert "tune 2 is not in the scope this run asks in" in err
    assert "but in workspace 41: fetch it with --workspace 41 (or --workspace all)" in err
    assert "tune 999 not found" in err
    assert "tune 999 is not" not in err
    assert run_fetch(standin, archive, "2", "--workspace", "41") == 0
    add_tune(standin, 3, workspace_id=None)  # personal, asked for in workspace 41
    assert run_fetch(standin, archive, "3", "--workspace", "41") == 1
    assert ("tune 3 is not in the scope this run asks in (the personal one unless "
            "--workspace says another), but in the personal scope: fetch it with "
            "--workspace personal (or --workspace all)") in capsys.readouterr().err


@pytest.mark.parametrize(("args", "said"), [
    ([], "the personal scope lists none (a workspace's tunes are listed only with "
         "--workspace ID or all)"),
    (["--workspace", "42"], "workspace 42 lists none"),
])
def test_all_of_a_scope_that_lists_nothing_names_the_scope_not_the_account(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], args: list[str],
    said: str,
) -> None:
    """--all without --workspace lists the personal scope only: one listing nothing said
    'the account lists none' while workspace 41 held a tune, so an owner whose tunes are
    all in a team's workspace read that the account had none, and nothing was saved."""
    add_tune(standin, 2, "41")
    assert run_fetch(standin, archive, "--all", *args) == 0
    err = capsys.readouterr().err
    assert f"--all selected no tunes: {said}" in err
    assert "the account lists none" not in err
    assert run_fetch(standin, archive, "--all", "--workspace", "all") == 0
    assert "selected no tunes" not in capsys.readouterr().err


@pytest.mark.parametrize("hostile", ["41; rm -rf ~", "4" * 200_000, "41 --dest /tmp/x", "-v"],
                         ids=["shell", "huge", "option", "dash"])
def test_a_workspace_id_no_option_could_be_is_not_given_as_one(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], hostile: str
) -> None:
    """The tune's workspace_id from the API was put whole in the command the line gives,
    any printable text: '--workspace 41; rm -rf ~' to paste, or a line of 200 000
    characters. One that is not an id (letters, digits, '-' and '_', not past 80) is 'a
    workspace', to be fetched with --workspace all; one starting with '-' is an option."""
    standin.scoped_gets = True
    add_tune(standin, 2, "41", workspace_id=hostile)
    assert run_fetch(standin, archive, "2") == 1
    err = capsys.readouterr().err
    assert "but in a workspace: fetch it with --workspace all" in err
    assert hostile not in err
    assert len(err) < 2_000


def test_a_later_run_that_cannot_tell_keeps_the_workspace(
    standin: StandIn, archive: Path
) -> None:
    """A fetch by id without --workspace keeps the workspace an earlier --workspace all
    run recorded, rather than drop it."""
    add_tune(standin, 2, "41")
    assert run_fetch(standin, archive, "--all", "--workspace", "all") == 0
    assert run_fetch(standin, archive, "2") == 0
    assert workspace_in(archive, 2) == "41"


def test_workspaces_that_cannot_be_listed_are_a_warning_not_a_failure(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """When /workspaces.json fails, the tunes are archived all the same, without a
    workspace they do not say themselves, and one warning says why."""
    add_tune(standin, 1)
    add_tune(standin, 2, "41", workspace_id=41)
    standin.workspaces_fault = Status(422, body=b'{"error": "no workspaces for this key"}')
    assert run_fetch(standin, archive, "--all", "--workspace", "all") == 0
    assert (workspace_in(archive, 1), workspace_in(archive, 2)) == (None, "41")
    [warning] = [line for line in capsys.readouterr().err.splitlines() if "workspace" in line]
    assert "cannot tell the workspaces of the tunes" in warning
    assert "no workspaces for this key" in warning


def test_list_shows_the_workspace(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`list` has a workspace column (and --json a workspace field) for workspace archives."""
    add_tune(standin, 1)
    add_tune(standin, 2, "41")
    assert run_fetch(standin, archive, "--all", "--workspace", "all") == 0
    capsys.readouterr()
    table = cli(capsys, "list", "--archive", str(archive)).out.splitlines()
    assert table[0].split()[-1] == "workspace"
    assert [line.split()[-1] for line in table[1:]] == ["41", "personal"]
    rows = json.loads(cli(capsys, "list", "--archive", str(archive), "--json").out)["tunes"]
    assert [row["workspace"] for row in rows] == ["41", "personal"]


@pytest.mark.parametrize(
    ("raw", "asked", "listed", "expected"),
    [
        ({"id": 1, "workspace_id": 7}, "all", None, "7"),
        ({"id": 1, "workspace_id": None}, "all", None, "personal"),
        ({"id": 1}, "9", None, "9"),
        ({"id": 1}, "all", {1: "8"}, "8"),
        ({"id": 1}, "all", {}, "personal"),
        ({"id": 1}, "all", None, None),  # the workspaces could not be listed
        ({"id": 1}, None, None, None),
        ({"id": 1, "workspace_id": True}, None, None, None),
    ],
)
def test_workspace_of(raw: dict[str, object], asked: str | None,
                      listed: dict[int, str] | None, expected: str | None) -> None:
    """The tune's own field first, then the workspace asked for, then the listings."""
    assert workspace_of(raw, asked, listed) == expected


class _ManyTunes:
    """An API of one workspace listing PAGES pages of 1,000 tunes, each with a 1 KB title,
    made as each page is asked for (as they arrive from the API)."""

    PAGES = 30

    async def list_workspaces(self) -> list[str]:
        return ["41"]

    async def tune_pages(self, workspace: str | None = None) -> AsyncIterator[list[dict[str, Any]]]:
        for page in range(self.PAGES):
            yield [{"id": page * 1000 + n, "title": f"{n:04d}" * 256} for n in range(1000)]

    async def list_tunes(self, workspace: str | None = None) -> list[dict[str, Any]]:
        return [item async for page in self.tune_pages(workspace) for item in page]


async def test_placing_tunes_in_workspaces_never_holds_a_whole_listing() -> None:
    """--workspace all lists each workspace's tunes to place those that do not say their
    own: only the ids are kept, a page at a time, so 30,000 tunes with 1 KB of JSON
    each (some 40 MB together) cost the run a page and the ids, not the listing."""
    workspaces = Workspaces(cast(AstriaClient, _ManyTunes()), "all")
    tracemalloc.start()
    try:
        placed = await workspaces.of({"id": 29_999})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert placed == "41"
    assert peak < 10 * 2**20


def test_a_tune_not_found_in_every_workspace_is_asked_for_once(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch ID --workspace all of a tune the API answers 404 for: the look whether
    another workspace holds it asked again in every workspace, which learns nothing
    the first answer did not (one more request a tune, fifty for a list of deleted
    ones); it is asked for once, and said not found."""
    assert run_fetch(standin, archive, "999", "--workspace", "all") == 1
    assert "tune 999 not found" in capsys.readouterr().err
    assert len(standin.seen("api", "/tunes/999")) == 1


@pytest.mark.parametrize("blank", ["", " "])
def test_a_blank_workspace_is_a_usage_error(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], blank: str,
) -> None:
    """`--workspace "$WS"` with the variable unset in cron was taken for no --workspace:
    --all archived the personal scope alone, exit 0, and the workspace's tunes were left
    to expire. It is exit 2 naming the option, nothing asked of the API."""
    add_tune(standin, 1)
    add_tune(standin, 2, "41")
    assert run_fetch(standin, archive, "--all", "--workspace", blank) == 2
    assert capsys.readouterr().err.startswith(
        "tune-archiver: error: argument --workspace: is blank")
    assert standin.seen("api") == []
