"""--shard auto: K/N from a Kubernetes Indexed Job or an AWS Batch array job."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import run_fetch
from tests.standin import StandIn
from tune_archiver.cli.scale import shard_from_env
from tune_archiver.errors import ConfigError

RUNNER_VARIABLES = ("JOB_COMPLETION_INDEX", "TUNE_ARCHIVER_SHARDS",
                    "AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE")


@pytest.fixture(autouse=True)
def no_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RUNNER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("env", "shard"),
    [
        ({"JOB_COMPLETION_INDEX": "0", "TUNE_ARCHIVER_SHARDS": "3"}, (1, 3)),
        ({"JOB_COMPLETION_INDEX": "2", "TUNE_ARCHIVER_SHARDS": "3"}, (3, 3)),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "4"}, (1, 4)),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "3", "AWS_BATCH_JOB_ARRAY_SIZE": "4"}, (4, 4)),
    ],
)
def test_each_runners_variables_give_the_shard(env: dict[str, str], shard: tuple[int, int]
                                               ) -> None:
    """A 0-based index and a count become shard K/N with K from 1."""
    assert shard_from_env(env) == shard


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no job runner's index found"),
        ({"JOB_COMPLETION_INDEX": "0"}, "TUNE_ARCHIVER_SHARDS is not"),
        ({"JOB_COMPLETION_INDEX": "x", "TUNE_ARCHIVER_SHARDS": "3"}, "whole numbers"),
        ({"JOB_COMPLETION_INDEX": "3", "TUNE_ARCHIVER_SHARDS": "3"}, "less than"),
        ({"JOB_COMPLETION_INDEX": "0", "TUNE_ARCHIVER_SHARDS": "0"}, "less than"),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "1"}, "AWS_BATCH_JOB_ARRAY_SIZE is not"),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "-1", "AWS_BATCH_JOB_ARRAY_SIZE": "4"}, "whole numbers"),
        # Past int()'s 4,300 digits (a ValueError's traceback), or not 0-9 ('\u0663' was 3).
        ({"JOB_COMPLETION_INDEX": "0", "TUNE_ARCHIVER_SHARDS": "9" * 5000}, "whole numbers"),
        ({"JOB_COMPLETION_INDEX": "\u0663", "TUNE_ARCHIVER_SHARDS": "4"}, "whole numbers"),
    ],
)
def test_a_missing_or_malformed_variable_is_a_configuration_error(
    env: dict[str, str], message: str
) -> None:
    """Each missing, malformed or out-of-range variable raises ConfigError saying which."""
    with pytest.raises(ConfigError, match=message):
        shard_from_env(env)


def add_tunes(standin: StandIn, count: int) -> None:
    for tune_id in range(1, count + 1):
        ckpt = standin.add_file(f"ckpt-{tune_id}.safetensors", os.urandom(3_000 + tune_id))
        standin.add_tune(tune_id, [ckpt], [])


def manifests(archive: Path) -> set[int]:
    return {int(p.stem) for p in (archive / "manifests").glob("*.json")}


def test_an_indexed_job_pod_fetches_its_shard(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pod 1 of 3 (JOB_COMPLETION_INDEX=1) archives the tunes whose id modulo 3 is 1."""
    add_tunes(standin, 7)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("TUNE_ARCHIVER_SHARDS", "3")
    assert run_fetch(standin, tmp_path / "a", "--all", "--shard", "auto") == 0
    assert manifests(tmp_path / "a") == {1, 4, 7}


def test_an_aws_batch_child_fetches_its_shard(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Child 0 of an array of 2 archives the even ids."""
    add_tunes(standin, 6)
    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", "0")
    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_SIZE", "2")
    assert run_fetch(standin, tmp_path / "a", "--all", "--shard", "auto") == 0
    assert manifests(tmp_path / "a") == {2, 4, 6}


def test_auto_without_a_runner_is_exit_2(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--shard auto outside a job runner: exit 2, one line naming the variables, nothing fetched."""
    add_tunes(standin, 2)
    assert run_fetch(standin, tmp_path / "a", "--all", "--shard", "auto") == 2
    assert "JOB_COMPLETION_INDEX" in capsys.readouterr().err
    assert not manifests(tmp_path / "a")


def test_auto_from_the_environment_option(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TUNE_ARCHIVER_SHARD=auto works as --shard auto does."""
    add_tunes(standin, 4)
    monkeypatch.setenv("TUNE_ARCHIVER_SHARD", "auto")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    monkeypatch.setenv("TUNE_ARCHIVER_SHARDS", "2")
    assert run_fetch(standin, tmp_path / "a", "--all") == 0
    assert manifests(tmp_path / "a") == {2, 4}


def test_a_shard_with_no_tune_never_says_the_account_lists_none(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tunes 2 and 4 are all in shard 1/2: shard 2/2's run selects none, exit 0, and says
    so, not that the account lists none (which sends its operator after the key or the
    workspace)."""
    for tune_id in (2, 4):
        standin.add_tune(tune_id, [standin.add_file(f"ckpt-{tune_id}", b"weights")], [])
    assert run_fetch(standin, tmp_path / "a", "--all", "--shard", "2/2") == 0
    err = capsys.readouterr().err
    assert "--all selected no tunes in shard 2/2" in err
    assert "the account lists none" not in err
    assert not manifests(tmp_path / "a")
