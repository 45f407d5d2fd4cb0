"""deploy/ and the Dockerfile stay true: every tune-archiver command line in them parses."""

from __future__ import annotations

import os
import re
import shlex
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.helpers import run_fetch
from tests.standin import StandIn
from tune_archiver.cli.main import main
from tune_archiver.cli.parser import build_parser, check_fetch
from tune_archiver.cli.scale import check_forget

DEPLOY = ROOT / "deploy"


def _containers(document: Any) -> list[dict[str, Any]]:
    """Every container of a Kubernetes object, however deep its pod template sits."""
    found: list[dict[str, Any]] = []
    if isinstance(document, dict):
        for key, value in document.items():
            if key == "containers" and isinstance(value, list):
                found.extend(value)
            else:
                found.extend(_containers(value))
    elif isinstance(document, list):
        for value in document:
            found.extend(_containers(value))
    return found


def command_lines() -> list[tuple[str, list[str]]]:
    """(file, words) of each tune-archiver command: systemd ExecStart= lines, and the
    command (plus args) of each Kubernetes container."""
    found: list[tuple[str, list[str]]] = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix in (".service", ".timer"):
            for line in path.read_text().splitlines():
                if re.match(r"Exec\w+=", line) and "tune-archiver" in line:
                    found.append((path.name, shlex.split(line.split("=", 1)[1])))
        elif path.suffix in (".yaml", ".yml"):
            for document in yaml.safe_load_all(path.read_text()):
                for container in _containers(document):
                    words = [*container.get("command", []), *container.get("args", [])]
                    found.append((path.name, [str(word) for word in words]))
    return found


COMMANDS = command_lines()


def parses(words: list[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(words)
    if args.command == "fetch":
        check_fetch(parser, args)
    if args.command == "forget":
        check_forget(parser, args)


@pytest.mark.parametrize(("name", "words"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_deploy_command_parses(name: str, words: list[str]) -> None:
    """Each command line in deploy/ runs tune-archiver with arguments the parser accepts."""
    assert Path(words[0]).name == "tune-archiver", name
    parses(words[1:])


def test_each_way_to_run_it_is_there() -> None:
    """The systemd service, the CronJob and the Indexed Job with --shard auto are found."""
    names = {name for name, _ in COMMANDS}
    assert names == {"tune-archiver.service", "cronjob.yaml", "indexed-job.yaml"}
    [indexed] = [words for name, words in COMMANDS if name == "indexed-job.yaml"]
    assert indexed[indexed.index("--shard") + 1] == "auto"
    assert indexed[indexed.index("--archive") + 1].startswith("s3://")


def test_the_indexed_job_tells_its_pods_the_shard_count() -> None:
    """TUNE_ARCHIVER_SHARDS equals completions, so --shard auto covers every tune once."""
    job = yaml.safe_load((DEPLOY / "kubernetes" / "indexed-job.yaml").read_text())
    assert job["spec"]["completionMode"] == "Indexed"
    [container] = _containers(job)
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert int(env["TUNE_ARCHIVER_SHARDS"]) == job["spec"]["completions"]


def test_the_dockerfile_runs_the_command_as_a_user_with_s3() -> None:
    """python:3.11-slim, the [s3] extra, a non-root USER and the command as ENTRYPOINT."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert 'pip install ".[s3]"' in dockerfile
    [user] = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert user.split(":")[0] not in ("root", "0")
    assert 'ENTRYPOINT ["tune-archiver"]' in dockerfile


def archive_folder_modes() -> list[tuple[str, int]]:
    """The mode of the archive folder each deployment makes: systemd's StateDirectory=
    with its StateDirectoryMode= (0755 when unset, systemd.exec(5); set again at every
    start, so a chmod by hand does not last), and the image's /archive, which a named
    or anonymous volume starts as (mkdir under the build's umask 022: 0755)."""
    unit = (DEPLOY / "systemd" / "tune-archiver.service").read_text()
    assert re.search(r"^StateDirectory=tune-archiver$", unit, re.MULTILINE)
    state = re.search(r"^StateDirectoryMode=(\d+)$", unit, re.MULTILINE)
    dockerfile = (ROOT / "Dockerfile").read_text()
    image = re.search(r"install -d -m (\d+) .*/archive\b", dockerfile)
    assert image or "mkdir -p /archive" in dockerfile
    return [("tune-archiver.service", int(state.group(1) if state else "755", 8)),
            ("Dockerfile", int(image.group(1) if image else "755", 8))]


@pytest.mark.parametrize(("name", "mode"), archive_folder_modes(),
                         ids=[name for name, _ in archive_folder_modes()])
def test_the_archive_folder_a_deployment_makes_is_private(
    name: str, mode: int, standin: StandIn, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The folder a deployment makes for the archive is its user's alone: each nightly
    run into systemd's default 0755 StateDirectory (or the image's 0755 /archive, a
    volume's first contents) warned that others may read the archive (in the log, with
    -q), a warning no chmod could end: systemd sets the mode again at each start."""
    archive = tmp_path / "archive"
    archive.mkdir()
    archive.chmod(mode)
    standin.add_tune(1, [], [standin.add_file("img", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 0
    assert capsys.readouterr().err == "", name


def unit_setting(name: str, default: str) -> str:
    """The service's `name=` setting (its last one), else systemd's default."""
    unit = (DEPLOY / "systemd" / "tune-archiver.service").read_text()
    found = re.findall(rf"^{name}=(.*)$", unit, re.MULTILINE)
    return found[-1].strip() if found else default


def test_the_service_runs_in_the_home_its_sandbox_leaves_it(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service's command, run as systemd runs it: HOME is the service user's
    /home/tune-archiver (useradd's default, never made), and ProtectHome=yes makes /home
    inaccessible (a folder of mode 000, systemd.exec(5)), so the Astria CLI's
    config, read for the workspace the command does not give, could not be opened:
    every nightly run ended 'cannot read the Astria CLI's config', exit 2, nothing
    archived. ProtectHome=tmpfs leaves /home empty: no config, as on a machine
    without the CLI."""
    home = tmp_path / "home"
    home.mkdir()
    protect = unit_setting("ProtectHome", "no").lower()
    if protect in ("yes", "true", "on", "1"):
        real_open = open

        def inaccessible(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path).startswith(f"{home}/"):  # root too: only a mount hides it
                raise PermissionError(13, os.strerror(13), str(path))
            return real_open(path, *args, **kwargs)

        home.chmod(0)
        monkeypatch.setattr("builtins.open", inaccessible)
    monkeypatch.setenv("HOME", str(home / "tune-archiver"))
    monkeypatch.delenv("ASTRIA_CONFIG_DIR")
    [words] = [words for name, words in COMMANDS if name == "tune-archiver.service"]
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    key = tmp_path / "astria.key"
    key.write_text(standin.api_key)
    key.chmod(0o600)
    given = {"--archive": str(state / "archive"), "--api-key-file": str(key),
             "--log-file": str(tmp_path / "runs.jsonl")}
    argv = [given.get(before, word) for before, word in pairwise(words)]
    expiring = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    standin.add_tune(1, [], [standin.add_file("img", os.urandom(3000))], expires_at=expiring)
    try:
        code = main([*argv, "--api-url", standin.api_url])
    finally:
        home.chmod(0o700)
    assert code == 0
    assert (state / "archive" / "manifests" / "1.json").is_file()


def test_the_readme_gives_the_service_its_ping_url_privately() -> None:
    """The README's systemd lines are the shipped unit's: they put the ping URL in an
    Environment= line, which systemd shows every user of the machine (`systemctl show`,
    and the unit file is 0644), and its --archive /backups/astria and --log-file
    /var/log/tune-archiver.jsonl, put in the shipped unit, lay outside what its
    ProtectSystem=strict leaves writable: each run refused, exit 2. The URL goes in a
    file only root reads (EnvironmentFile=), which the unit names."""
    readme = (ROOT / "README.md").read_text()
    unit = (DEPLOY / "systemd" / "tune-archiver.service").read_text().splitlines()
    blocks = re.findall(r"```ini\n(.*?)```", readme, flags=re.DOTALL)
    shown = [line for block in blocks if "[Service]" in block
             for line in block.splitlines() if "=" in line]
    assert any(line.startswith("EnvironmentFile=") for line in shown)
    for line in shown:
        assert not line.startswith("Environment="), line
        assert line in unit, line


def test_the_cronjobs_staging_folder_outlives_its_pod() -> None:
    """An S3 archive's staging folder holds a stopped run's partials and, above all, the
    journals of the files it put in the bucket before its tune's manifest: the next run
    records them from there when the tune expired meanwhile. The CronJob's was an
    emptyDir, gone with the pod: a pod stopped (a drain, a spot node taken back) after
    its images were uploaded left them to the next pod as 'gone upstream, never
    archived', their blobs for gc. A claim keeps it; its ownership fitted at the first
    mount only (OnRootMismatch: Always gives each 0700 folder the tool made g+rwx at
    every mount, and the tool refuses a staging folder others may write in)."""
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "cronjob.yaml").read_text()))
    claims = {doc["metadata"]["name"] for doc in documents
              if doc["kind"] == "PersistentVolumeClaim"}
    [cronjob] = [doc for doc in documents if doc["kind"] == "CronJob"]
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    home = re.search(r"--home-dir (\S+)", (ROOT / "Dockerfile").read_text())
    assert home
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    staging = Path(env.get("TUNE_ARCHIVER_STAGING")
                   or env.get("XDG_CACHE_HOME") or f"{home.group(1)}/.cache")
    [mount] = [m for m in container["volumeMounts"]
               if staging.is_relative_to(m["mountPath"])]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume.get("persistentVolumeClaim", {}).get("claimName") in claims, volume
    context = pod.get("securityContext", {})
    if "fsGroup" in context:
        assert context.get("fsGroupChangePolicy") == "OnRootMismatch"


def test_the_service_gives_an_s3_archives_staging_a_folder_it_may_write() -> None:
    """An S3 archive stages its downloads and the journals of the files it put in the
    bucket in a local folder, ~/.cache unless TUNE_ARCHIVER_STAGING names one: under the
    service's ProtectHome=tmpfs (and ProtectSystem=strict), /home is empty and read-only,
    so the shipped unit pointed at s3://... refused every run, exit 2 ('cannot create the
    staging folder'). It names a folder systemd makes writable, its own CacheDirectory."""
    unit = (DEPLOY / "systemd" / "tune-archiver.service").read_text()
    env = dict(line.split("=", 1) for line in
               re.findall(r"^Environment=(\S+=\S*)$", unit, re.MULTILINE))
    staging = Path(env.get("TUNE_ARCHIVER_STAGING") or env.get("XDG_CACHE_HOME")
                   or "/home/tune-archiver/.cache")
    writable = [Path(p) for p in unit_setting("ReadWritePaths", "").split()]
    writable += [Path(root) / unit_setting(setting, "")
                 for root, setting in (("/var/lib", "StateDirectory"),
                                       ("/var/cache", "CacheDirectory"),
                                       ("/var/log", "LogsDirectory"))
                 if unit_setting(setting, "")]
    assert any(staging.is_relative_to(folder) for folder in writable), (staging, writable)

