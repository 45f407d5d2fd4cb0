"""The Astria CLI's settings: ASTRIA_AUTH_TOKEN, ASTRIA_BASE_URL, ASTRIA_WORKSPACE_ID and
~/.astria/config[.<profile>].json serve when ours are not set; -v says where the key
came from, never the key."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.standin import StandIn
from tests.test_fetch import make_tune
from tune_archiver.astria.cli_config import api_for_key, read_astria_cli
from tune_archiver.cli.main import main
from tune_archiver.config import DEFAULT_API_URL
from tune_archiver.errors import ConfigError


def fetch(archive: Path, *args: str) -> int:
    return main(["fetch", "1", "--archive", str(archive), *args])


def write_config(folder: Path, name: str, values: dict[str, object], mode: int = 0o600) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(values))
    path.chmod(mode)
    return path


def test_astria_auth_token_and_base_url_serve_when_ours_are_unset(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ASTRIA_AUTH_TOKEN is the key and ASTRIA_BASE_URL the API; -v names the variable."""
    make_tune(standin, 1, images=1)
    monkeypatch.setenv("ASTRIA_AUTH_TOKEN", standin.api_key)
    monkeypatch.setenv("ASTRIA_BASE_URL", standin.api_url)
    monkeypatch.setenv("ASTRIA_WORKSPACE_ID", "77")
    assert fetch(tmp_path / "a", "-v") == 0
    err = capsys.readouterr().err
    assert "the API key comes from ASTRIA_AUTH_TOKEN" in err
    assert standin.api_key not in err
    assert standin.seen("api")[0].headers["X-Workspace-Id"] == "77"


def test_the_astria_config_file_serves_and_ours_win(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """config.json's api_key, base_url and workspace_id are used; ASTRIA_API_KEY and
    --workspace win over them."""
    make_tune(standin, 1, images=1)
    folder = tmp_path / "astria"
    path = write_config(folder, "config.json", {
        "api_key": standin.api_key, "base_url": standin.api_url, "workspace_id": 5})
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    assert fetch(tmp_path / "a", "-v") == 0
    assert f"the API key comes from the Astria CLI's config {path}" in capsys.readouterr().err
    assert standin.seen("api")[0].headers["X-Workspace-Id"] == "5"
    write_config(folder, "config.json", {"api_key": "wrong-key-000", "base_url": standin.api_url})
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    monkeypatch.setenv("ASTRIA_API_URL", standin.api_url)
    assert fetch(tmp_path / "b", "-v", "--workspace", "9") == 0
    assert "the API key comes from ASTRIA_API_KEY" in capsys.readouterr().err
    assert standin.seen("api")[-1].headers["X-Workspace-Id"] == "9"


@pytest.mark.parametrize("how", ["option", "env"])
def test_a_profile_picks_its_own_file(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """--profile work (or ASTRIA_PROFILE=work) reads config.work.json, not config.json."""
    make_tune(standin, 1, images=1)
    folder = tmp_path / "astria"
    write_config(folder, "config.json", {"api_key": "wrong-key-000", "base_url": standin.api_url})
    write_config(folder, "config.work.json",
                 {"api_key": standin.api_key, "base_url": standin.api_url})
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    if how == "env":
        monkeypatch.setenv("ASTRIA_PROFILE", "work")
    assert fetch(tmp_path / "a", *(["--profile", "work"] if how == "option" else [])) == 0


def test_a_missing_profile_or_a_damaged_file_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A profile without its file, or a config that is not JSON, exits 2 without its text."""
    folder = tmp_path / "astria"
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    assert fetch(tmp_path / "a", "--profile", "nope") == 2
    assert "config.nope.json does not exist" in capsys.readouterr().err
    folder.mkdir()
    (folder / "config.json").write_text('{"api_key": "sk-SECRET"')
    (folder / "config.json").chmod(0o600)
    assert fetch(tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "cannot read the Astria CLI's config" in err
    assert "sk-SECRET" not in err


def test_a_damaged_config_stops_only_a_run_that_needs_a_value_from_it(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run given the key, the API and the workspace by ours takes nothing from
    ~/.astria/config.json: damaged (the CLI stopped while writing it), it stopped that
    run all the same, exit 2, every cron line with it. Now it stops only a run that may
    take a value from it (here the workspace)."""
    make_tune(standin, 1, images=1)
    folder = tmp_path / "astria"
    folder.mkdir()
    (folder / "config.json").write_text('{"api_key": "sk-SECRET"')
    (folder / "config.json").chmod(0o600)
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    ours = ["--api-url", standin.api_url]
    assert fetch(tmp_path / "a", *ours, "--workspace", "personal") == 0
    monkeypatch.setenv("ASTRIA_WORKSPACE_ID", "7")
    assert fetch(tmp_path / "b", *ours) == 0
    assert standin.seen("api")[-1].headers["X-Workspace-Id"] == "7"
    monkeypatch.delenv("ASTRIA_WORKSPACE_ID")
    capsys.readouterr()
    assert fetch(tmp_path / "c", *ours) == 2
    assert "cannot read the Astria CLI's config" in capsys.readouterr().err


def test_a_config_nested_too_deep_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config of arrays nested deeper than the JSON decoder recurses (a damaged or
    hostile file) exits 2 on one line, not with a RecursionError traceback."""
    folder = tmp_path / "astria"
    folder.mkdir()
    (folder / "config.json").write_text("[" * 100_000)
    (folder / "config.json").chmod(0o600)
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    assert fetch(tmp_path / "a") == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == (f"tune-archiver: error: cannot read the Astria CLI's config "
                    f"{folder / 'config.json'}: not JSON")


def test_a_config_larger_than_any_the_cli_writes_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config.json of 2 MiB (the wrong file; /dev/zero through a link never ends) is
    one line, exit 2: it was read whole, into memory, before anything was said."""
    folder = tmp_path / "astria"
    folder.mkdir()
    (folder / "config.json").write_text(" " * 2**21 + "{}")
    (folder / "config.json").chmod(0o600)
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    assert fetch(tmp_path / "a") == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == (f"tune-archiver: error: the Astria CLI's config {folder / 'config.json'} "
                    "is larger than 1 MiB; it is not the CLI's own")


def test_a_config_others_can_read_is_used_with_a_warning(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 0644 config file works, with one warning to chmod 600 it (as a key file)."""
    make_tune(standin, 1, images=1)
    folder = tmp_path / "astria"
    write_config(folder, "config.json",
                 {"api_key": standin.api_key, "base_url": standin.api_url}, mode=0o644)
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    assert fetch(tmp_path / "a") == 0
    [warning] = [x for x in capsys.readouterr().err.splitlines() if "chmod 600" in x]
    assert "the Astria CLI's config" in warning
    assert os.stat(folder / "config.json").st_mode & 0o777 == 0o644


def test_the_personal_workspace_sends_no_workspace_header(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workspace `personal` (`astria config set workspace personal`, ASTRIA_WORKSPACE_ID,
    or --workspace) is the personal scope: the Astria CLI sends no X-Workspace-Id for it
    (its resolve_workspace), so neither do we; ASTRIA_WORKSPACE_ID=personal wins over
    the config's workspace, as there. The manifest records `personal`."""
    make_tune(standin, 1, images=1)
    folder = tmp_path / "astria"
    write_config(folder, "config.json", {
        "api_key": standin.api_key, "base_url": standin.api_url, "workspace_id": "personal"})
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    assert main(["fetch", "--all", "--archive", str(tmp_path / "a")]) == 0
    document = json.loads((tmp_path / "a" / "manifests" / "1.json").read_text())
    assert document["workspace"] == "personal"
    write_config(folder, "config.json", {
        "api_key": standin.api_key, "base_url": standin.api_url, "workspace_id": 5})
    monkeypatch.setenv("ASTRIA_WORKSPACE_ID", "personal")
    assert fetch(tmp_path / "b") == 0
    monkeypatch.delenv("ASTRIA_WORKSPACE_ID")
    assert main(["fetch", "--all", "--workspace", "personal", "--archive",
                 str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "manifests" / "1.json").exists()
    assert [r.path for r in standin.seen("api") if "X-Workspace-Id" in r.headers] == []


@pytest.mark.parametrize("where", ["config", "env"])
def test_all_narrowed_to_the_astria_cli_workspace_says_so(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], where: str,
) -> None:
    """A workspace set for the Astria CLI (`astria config set workspace 5`, or
    ASTRIA_WORKSPACE_ID) narrowed a cron's `fetch --all` to that workspace without a
    word: the personal tunes were never listed, never archived, and Astria deleted
    them, while every run said ok. The run still covers that workspace alone (the
    contract), and says so: a warning line naming where it came from, and --json's
    `workspace`; one given as ours (--workspace) is the user's own choice, unsaid."""
    make_tune(standin, 1, images=1)
    standin.tune_workspaces[1] = "5"
    make_tune(standin, 2, images=1)  # personal: not listed with X-Workspace-Id: 5
    folder = tmp_path / "astria"
    write_config(folder, "config.json", {"api_key": standin.api_key, "base_url": standin.api_url,
                                         **({"workspace_id": 5} if where == "config" else {})})
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    if where == "env":
        monkeypatch.setenv("ASTRIA_WORKSPACE_ID", "5")
    assert main(["fetch", "--all", "--json", "--archive", str(tmp_path / "a")]) == 0
    ran = capsys.readouterr()
    document = json.loads(ran.out)
    assert [t["tune_id"] for t in document["tunes"]] == [1]
    assert document["workspace"] == "5"
    [line] = ran.err.splitlines()
    said = ASTRIA_CONFIG_ORIGIN if where == "config" else "ASTRIA_WORKSPACE_ID"
    assert line.startswith("tune-archiver: warning: --all covers workspace 5 alone, set by ")
    assert said in line
    assert "--workspace all" in line
    assert main(["fetch", "--all", "--json", "--workspace", "5",
                 "--archive", str(tmp_path / "b")]) == 0
    ran = capsys.readouterr()
    assert json.loads(ran.out)["workspace"] == "5"
    assert not ran.err
    assert main(["fetch", "--all", "--json", "--workspace", "all",
                 "--archive", str(tmp_path / "c")]) == 0
    ran = capsys.readouterr()
    assert [t["tune_id"] for t in json.loads(ran.out)["tunes"]] == [2, 1]
    assert json.loads(ran.out)["workspace"] == "all"


ASTRIA_CONFIG_ORIGIN = "the Astria CLI's config"


@pytest.fixture
def other() -> Iterator[StandIn]:
    """A second API on 127.0.0.1, another host's, with its own key."""
    server = StandIn(api_key="other-key-0123456789").start()
    try:
        yield server
    finally:
        server.close()


def keys_seen(server: StandIn) -> list[str]:
    return [r.headers.get("Authorization", "") for r in server.seen("api")]


@pytest.mark.parametrize("case", ["our key, the CLI's URL", "the CLI's key, our URL",
                                  "the CLI's token, its file's URL", "the file's key, "
                                  "ASTRIA_BASE_URL", "the file's key, --api-url"])
def test_a_key_never_goes_to_an_api_another_source_named(
    standin: StandIn, other: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], case: str,
) -> None:
    """The key and the API URL were chosen apart: ASTRIA_API_KEY went to the base_url of
    a config written for another host, and a config's key to a cron's ASTRIA_API_URL.
    Each such pair is one line, exit 2, naming both sources, never the key; nothing is
    sent to either API."""
    make_tune(standin, 1, images=1)
    folder = tmp_path / "astria"
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    args: list[str] = []
    if case == "our key, the CLI's URL":
        monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
        write_config(folder, "config.json", {"base_url": other.api_url})
    elif case == "the CLI's key, our URL":
        write_config(folder, "config.json",
                     {"api_key": other.api_key, "base_url": other.api_url})
        monkeypatch.setenv("ASTRIA_API_URL", standin.api_url)
    elif case == "the CLI's token, its file's URL":
        monkeypatch.setenv("ASTRIA_AUTH_TOKEN", standin.api_key)
        write_config(folder, "config.json", {"base_url": other.api_url})
    else:
        write_config(folder, "config.json", {"api_key": other.api_key})
        if case.endswith("ASTRIA_BASE_URL"):
            monkeypatch.setenv("ASTRIA_BASE_URL", standin.api_url)
        else:
            args = ["--api-url", standin.api_url]
    assert fetch(tmp_path / "a", *args) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "goes only to the API named beside it" in line
    assert standin.api_key not in line
    assert other.api_key not in line
    assert keys_seen(standin) == []
    assert keys_seen(other) == []


def test_a_key_goes_to_the_api_named_beside_it(
    standin: StandIn, other: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ours with ours, the config's with its own base_url, whatever else is set: each key
    reaches its own API alone."""
    make_tune(standin, 1, images=1)
    make_tune(other, 1, images=1)
    folder = tmp_path / "astria"
    write_config(folder, "config.json", {"api_key": other.api_key, "base_url": other.api_url})
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    assert fetch(tmp_path / "a", "--api-url", standin.api_url) == 0
    monkeypatch.delenv("ASTRIA_API_KEY")
    assert fetch(tmp_path / "b") == 0
    assert set(keys_seen(standin)) == {f"Bearer {standin.api_key}"}
    assert set(keys_seen(other)) == {f"Bearer {other.api_key}"}


def cli_workspace(standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  workspace: str) -> None:
    """Tune 1 in workspace 5, tune 2 personal; ours give the key and the API, and the
    Astria CLI's ASTRIA_WORKSPACE_ID the workspace."""
    make_tune(standin, 1, images=1)
    standin.tune_workspaces[1] = "5"
    make_tune(standin, 2, images=1)
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    monkeypatch.setenv("ASTRIA_API_URL", standin.api_url)
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(tmp_path / "astria"))
    monkeypatch.setenv("ASTRIA_WORKSPACE_ID", workspace)


def test_the_astria_cli_workspace_all_is_no_narrowing(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ASTRIA_WORKSPACE_ID=all spans every workspace, as --workspace all does: every
    run warned that --all covered workspace 'all' alone, the personal tunes and other
    workspaces' not fetched, and to give --workspace all, the very scope it had."""
    cli_workspace(standin, tmp_path, monkeypatch, "all")
    assert main(["fetch", "--all", "--json", "--archive", str(tmp_path / "a")]) == 0
    ran = capsys.readouterr()
    document = json.loads(ran.out)
    assert [t["tune_id"] for t in document["tunes"]] == [2, 1]
    assert document["workspace"] == "all"
    assert not ran.err


def test_a_dry_run_of_all_says_the_workspace_it_covers(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`fetch --all --dry-run --json`, the way to see what a cron's --all would cover
    before setting it up, left out --json's `workspace`, which fetch's document says:
    a workspace taken from the Astria CLI narrowed the scope and the dry run's document
    did not say so. It says the scope as fetch does; none for tunes named."""
    cli_workspace(standin, tmp_path, monkeypatch, "5")
    archive = str(tmp_path / "a")
    assert main(["fetch", "--all", "--dry-run", "--json", "--archive", archive]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [t["tune_id"] for t in document["tunes"]] == [1]
    assert document["workspace"] == "5"
    monkeypatch.delenv("ASTRIA_WORKSPACE_ID")
    assert main(["fetch", "--all", "--dry-run", "--json", "--archive", archive]) == 0
    assert json.loads(capsys.readouterr().out)["workspace"] == "personal"
    assert main(["fetch", "1", "--dry-run", "--json", "--archive", archive]) == 0
    assert "workspace" not in json.loads(capsys.readouterr().out)


def test_the_config_key_goes_to_its_own_base_url_named_again_in_astria_base_url(
    standin: StandIn, other: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A config's api_key with its base_url, the same API named in ASTRIA_BASE_URL too
    (the CLI's users of another API set both): ASTRIA_BASE_URL hid the file's base_url,
    so the key was taken for one with no API beside it, and refused, exit 2, though it
    goes to the very API its file names. ASTRIA_BASE_URL of another host is refused."""
    make_tune(standin, 1, images=1)
    folder = tmp_path / "astria"
    write_config(folder, "config.json",
                 {"api_key": standin.api_key, "base_url": standin.api_url + "/"})
    monkeypatch.setenv("ASTRIA_CONFIG_DIR", str(folder))
    monkeypatch.setenv("ASTRIA_BASE_URL", standin.api_url)
    assert fetch(tmp_path / "a") == 0
    assert set(keys_seen(standin)) == {f"Bearer {standin.api_key}"}
    monkeypatch.setenv("ASTRIA_BASE_URL", other.api_url)
    capsys.readouterr()
    assert fetch(tmp_path / "b") == 2
    assert "goes only to the API named beside it" in capsys.readouterr().err
    assert keys_seen(other) == []


def test_a_config_key_for_another_api_is_not_sent_to_the_default_astria_base_url_names(
    tmp_path: Path,
) -> None:
    """ASTRIA_BASE_URL at the default hid a config's base_url of another host: its key,
    written for that host, went to the default unsaid. Pure: nothing is sent."""
    folder = tmp_path / "astria"
    write_config(folder, "config.json",
                 {"api_key": "staging-key-0123456789", "base_url": "https://staging.example"})
    env = {"ASTRIA_CONFIG_DIR": str(folder), "ASTRIA_BASE_URL": DEFAULT_API_URL}
    astria = read_astria_cli(None, env)
    with pytest.raises(ConfigError, match="goes only to the API named beside it"):
        api_for_key(astria.key_source, None, env, astria)
    env["ASTRIA_BASE_URL"] = "https://staging.example/"
    assert api_for_key(astria.key_source, None, env, read_astria_cli(None, env)) == (
        "https://staging.example")
