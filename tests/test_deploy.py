"""deploy/ and the Dockerfile stay true: every tune-archiver command line in them parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
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
