"""Exit codes an operator can act on, each through main([...]), and --json after a stop."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers import run_fetch, tmpfs
from tests.standin import StandIn, Status
from tests.test_fetch import make_tune
from tune_archiver.cli.exits import Exit
from tune_archiver.cli.main import main

KEY = "test-key-exits-0123"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nobody listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_readme_table_lists_every_exit_code() -> None:
    """README's exit-code table has one row per code in cli/exits.py, and no other."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    codes = {int(code) for code in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)}
    assert codes == {int(code) for code in Exit}


def test_everything_archived_exits_0(standin: StandIn, archive: Path) -> None:
    """A fetch that archives every tune asked for exits 0."""
    make_tune(standin, 1)
    assert run_fetch(standin, archive, "1") == Exit.OK


def test_one_tune_failing_exits_1(standin: StandIn, archive: Path) -> None:
    """A tune the API does not know, beside one archived, exits 1."""
    make_tune(standin, 1)
    assert run_fetch(standin, archive, "1", "2") == Exit.FAILED


@pytest.mark.parametrize("status", [401, 403])
def test_key_rejected_by_the_api_exits_3(
    standin: StandIn, archive: Path, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 401 or 403 from the API itself exits 3, saying what to check."""
    make_tune(standin, 1)
    standin.api_faults[1] = [Status(status)]
    assert run_fetch(standin, archive, "1") == Exit.AUTH
    err = capsys.readouterr().err
    assert "API key rejected: check ASTRIA_API_KEY (or --api-key-file) and --workspace" in err
    assert not archive.exists()


@pytest.mark.parametrize("tunes", [["1", "2"], ["--all"], ["1", "2", "--prompts"]])
def test_api_unreachable_for_everything_exits_4(
    tmp_path: Path, tunes: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Connection refused for every tune, or for the listing, exits 4 with nothing written
    (with --prompts too: the account's prompts failing alone fail only the prompts)."""
    os.environ["ASTRIA_API_KEY"] = KEY
    archive = tmp_path / "archive"
    code = main(["fetch", *tunes, "--retries", "0", "--archive", str(archive),
                 "--api-url", closed_port_url()])
    assert code == Exit.UNREACHABLE
    assert not (archive / "manifests").exists()


def test_usage_error_exits_2_in_one_line_and_a_pointer_to_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad option is one error line and "see tune-archiver fetch --help", exit 2."""
    assert main(["fetch", "1", "--no-such-option"]) == Exit.USAGE
    err = capsys.readouterr().err.splitlines()
    assert err == ["tune-archiver: error: unrecognized arguments: --no-such-option",
                   "see tune-archiver fetch --help"]


@pytest.mark.parametrize("option", ["--api-key", "--token", "--key", "--api-key=sk-SECRET"])
@pytest.mark.parametrize("fetch", [["fetch", "1"], ["fetch", "--all", "--title", "serve"],
                                   ["--archive", "serve", "fetch", "1"],
                                   ["--log-file", "serve", "fetch", "1"]])
def test_a_key_on_the_command_line_is_refused_and_never_echoed(
    option: str, fetch: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    """--api-key, --token and --key are refused with where the key goes, the value unshown;
    serve's hint only for serve, not for a fetch of the tunes titled "serve"."""
    words = [option] if "=" in option else [option, "sk-SECRET"]
    assert main([*fetch, *words]) == Exit.USAGE
    err = capsys.readouterr().err
    assert "pass the key in ASTRIA_API_KEY or --api-key-file" in err
    assert "see tune-archiver fetch --help" in err  # a folder named serve is no command
    assert "sk-SECRET" not in err


@pytest.mark.parametrize("words", [["serve", "--token", "sk-SECRET"],
                                   ["--token=sk-SECRET", "serve"],
                                   ["--archive", "/a", "serve", "--token", "sk-SECRET"],
                                   ["--archive", "fetch", "serve", "--token", "sk-SECRET"]])
def test_serves_token_on_the_command_line_is_refused_pointing_to_its_file(
    words: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    """`serve --token X` was told to pass an API key in ASTRIA_API_KEY, which serve never
    needs: its token goes in --token-file. The value is unshown."""
    assert main(words) == Exit.USAGE
    err = capsys.readouterr().err
    assert "put it in a file named by --token-file" in err
    assert "ASTRIA_API_KEY" not in err
    assert "sk-SECRET" not in err


def test_an_unknown_option_with_a_value_is_named_without_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unrecognized --opt=VALUE names the option only; a stray positional is not echoed."""
    assert main(["list", "--secret=sk-SECRET", "sk-OTHER"]) == Exit.USAGE
    err = capsys.readouterr().err
    assert "--secret" in err
    assert "sk-SECRET" not in err
    assert "sk-OTHER" not in err


def test_abbreviated_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--arch is not taken for --archive: it is an unrecognized argument."""
    assert main(["list", "--arch", "somewhere"]) == Exit.USAGE
    assert "unrecognized arguments: --arch" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_go_before_or_after_the_command(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """-q, --json and --archive are accepted before the command as after it."""
    archive = tmp_path / "archive"
    (archive / "manifests").mkdir(parents=True)
    options = ["-q", "--json", "--archive", str(archive)]
    argv = [*options, "list"] if where == "before" else ["list", *options]
    assert main(argv) == Exit.OK
    assert json.loads(capsys.readouterr().out) == {"tunes": []}


@pytest.mark.parametrize("typo", ["s3:/bucket", "s3:bucket", "S3:/bucket/p", "s3///bucket",
                                  "s3://", "s3:///bucket"])
def test_an_s3_near_miss_is_a_usage_error_never_a_folder(
    typo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """--archive s3:/bucket and its near misses exit 2; no folder named s3: is made."""
    os.environ["ASTRIA_API_KEY"] = KEY
    code = main(["fetch", "1", "--archive", typo, "--api-url", closed_port_url()])
    assert code == Exit.USAGE
    assert "s3://bucket/prefix" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_archive_that_is_a_file_exits_2(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--archive naming a regular file is a configuration error, before any download."""
    make_tune(standin, 1)
    archive = tmp_path / "a-file"
    archive.write_text("not an archive")
    assert run_fetch(standin, archive, "1") == Exit.USAGE
    assert "not a folder" in capsys.readouterr().err
    assert standin.seen("cdn") == []


def test_an_archive_that_cannot_be_created_exits_2(
    standin: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    """--archive where no folder may be made (sysfs refuses even root) exits 2, before
    any download."""
    make_tune(standin, 1)
    assert run_fetch(standin, Path("/sys/tune-archive-test"), "1") == Exit.USAGE
    assert "cannot create the archive in /sys/tune-archive-test" in capsys.readouterr().err
    assert standin.seen("cdn") == []


@pytest.mark.parametrize("where", ["tmp", "objects/sha256", "manifests"])
def test_a_file_where_an_archive_folder_must_be_exits_2(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str,
) -> None:
    """A file planted (or left by a bad copy) where the archive keeps a folder: 'cannot
    create the archive ...: Not a directory' was exit 1, a failed run, as a disk failing
    mid-run is; a folder planted at `lock` was exit 2. The operator's to mend, before
    anything is done: exit 2, the archived files untouched."""
    make_tune(standin, 1)
    archive = tmp_path / "archive"
    assert run_fetch(standin, archive, "1") == 0
    kept = sorted(p.relative_to(archive) for p in (archive / "objects").rglob("*"))
    planted = archive / where
    shutil.rmtree(planted)
    planted.write_text("not a folder")
    make_tune(standin, 2)
    capsys.readouterr()
    assert run_fetch(standin, archive, "2") == Exit.USAGE
    assert f"cannot create the archive in {archive}" in capsys.readouterr().err
    if where != "objects/sha256":
        assert sorted(p.relative_to(archive) for p in (archive / "objects").rglob("*")) == kept


@pytest.mark.parametrize("refusal", [errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP])
def test_an_archive_on_a_filesystem_without_modes_exits_2(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, refusal: int,
) -> None:
    """--archive on a filesystem that refuses the folders' 0700 (kernel FAT says EPERM,
    fusefat ENOSYS, some FUSE ones ENOTSUP) cannot be made private: a configuration error,
    exit 2, before any download. ENOSYS and ENOTSUP were 'cannot create', exit 1, as if
    a disk had failed mid-run, where EPERM was exit 2."""
    def no_modes(*args: object) -> None:
        raise OSError(refusal, os.strerror(refusal))

    make_tune(standin, 1)
    monkeypatch.setattr(os, "fchmod", no_modes)
    assert run_fetch(standin, tmp_path / "stick" / "archive", "1") == Exit.USAGE
    assert "cannot create the archive in " in capsys.readouterr().err
    assert standin.seen("cdn") == []


@pytest.mark.parametrize("command", [["list"], ["gc"], ["verify"], ["export", "1", "out"]])
def test_only_fetch_creates_an_archive(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Commands other than fetch say "no archive at PATH" (exit 2) and create nothing."""
    archive = tmp_path / "missing"
    assert main([*command, "--archive", str(archive)]) == Exit.USAGE
    assert f"no archive at {archive}" in capsys.readouterr().err
    assert not archive.exists()


def test_json_after_a_configuration_error_is_one_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json with no key still prints one document: ok false and the error."""
    code = main(["fetch", "1", "--json", "--archive", str(tmp_path / "a")])
    assert code == Exit.USAGE
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False
    assert "ASTRIA_API_KEY" in document["error"]


def test_json_after_a_rejected_key_is_one_document(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json when the API rejects the key: one document, ok false, the error, exit 3."""
    make_tune(standin, 1)
    assert run_fetch(standin, archive, "1", "--json", key="wrong") == Exit.AUTH
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False
    assert document["error"].startswith("API key rejected")
    assert "wrong" not in json.dumps(document)


def test_a_key_rejected_mid_run_still_names_the_tunes_archived_before(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch --all: tunes 3 and 2 are archived and unchanged; the API then rejects the key
    for tune 1 (rotated mid-run). Exit 3 with the error, and --json still lists the tunes
    done before it: the document held the error alone, as if nothing was archived."""
    for tune_id in (1, 2, 3):
        make_tune(standin, tune_id, images=1)
    assert run_fetch(standin, archive, "2", "3") == 0
    standin.api_faults[1] = [Status(401)]
    capsys.readouterr()
    assert run_fetch(standin, archive, "--all", "--json") == Exit.AUTH
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False
    assert document["error"].startswith("API key rejected")
    assert [(t["tune_id"], t["skipped"]) for t in document["tunes"]] == [(3, True), (2, True)]


@pytest.mark.parametrize("command", [["list"], ["gc"], ["verify"], ["export", "1", "out"]])
def test_json_after_no_archive_is_one_document(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command taking --json prints one document when it cannot start."""
    assert main([*command, "--json", "--archive", str(tmp_path / "no")]) == Exit.USAGE
    document = json.loads(capsys.readouterr().out)
    assert document == {"ok": False, "error": document["error"]}
    assert document["error"].startswith("no archive at")


def test_json_after_a_usage_error_is_one_document(capsys: pytest.CaptureFixture[str]) -> None:
    """--json with a bad option prints one document too, the error line still on stderr."""
    assert main(["fetch", "--json", "nope"]) == Exit.USAGE
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is False
    assert "not a tune id" in captured.err


def test_all_that_selects_nothing_says_so(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch --all --expiring-within 1d with nothing expiring says no tune was selected."""
    make_tune(standin, 1)
    standin.tunes[1]["expires_at"] = "2099-01-01T00:00:00Z"
    assert run_fetch(standin, archive, "--all", "--expiring-within", "1.5d") == Exit.OK
    assert "--all selected no tunes: none expires within 36 h" in capsys.readouterr().err


def test_a_bucket_that_cannot_be_reached_exits_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """list on an s3:// archive whose endpoint refuses connections exits 4, one line.
    (One attempt, by botocore's own AWS_MAX_ATTEMPTS: five wait out their backoff.)"""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-test-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code = main(["list", "--archive", "s3://bkt/p", "--s3-endpoint-url", closed_port_url()])
    assert code == Exit.UNREACHABLE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("tune-archiver: error: cannot reach the bucket in s3://bkt/p")


@pytest.mark.parametrize("command", ["fetch", "gc", "forget"])
def test_an_archive_on_a_read_only_disk_is_the_operators_to_fix_exit_2(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """A disk remounted read-only (errors=remount-ro after a fault): each command that
    takes the archive's lock says so on one line, exit 2 as a refused archive is, not
    exit 1 as if a tune had failed."""
    make_tune(standin, 1, images=1)
    with tmpfs(tmp_path / "disk", "4m") as disk:
        archive = disk / "archive"
        assert run_fetch(standin, archive, "1") == 0
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        capsys.readouterr()
        if command == "fetch":
            code = run_fetch(standin, archive, "1")
        else:
            code = main([command, *(["1"] if command == "forget" else []),
                         "--archive", str(archive)])
        err = capsys.readouterr().err.splitlines()
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    assert code == Exit.USAGE, err
    assert len(err) == 1
    assert "Read-only file system" in err[0]


@contextlib.contextmanager
def bound_at(source: Path, target: Path) -> Iterator[None]:
    """`source` bind-mounted at `target` for the block (the test skipped where it cannot)."""
    done = subprocess.run(["mount", "--bind", str(source), str(target)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], check=True)


def fetch_refused_apart(standin: StandIn, archive: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    """A fetch of tune 2 into the archive is refused on one line, exit 2, having written
    nothing and downloaded nothing."""
    asked = len(standin.requests)
    capsys.readouterr()
    code = run_fetch(standin, archive, "2")
    err = capsys.readouterr().err.splitlines()
    assert code == Exit.USAGE, err
    assert err == [f"tune-archiver: error: cannot use the archive {archive}: its "
                   "objects/sha256/, manifests/, tmp/ are not all on one filesystem "
                   "(blobs and manifests are renamed into place from tmp/)"]
    assert not [r for r in standin.requests[asked:] if r.host != "api"]
    assert not (archive / "manifests" / "2.json").exists()


def test_an_archive_whose_tmp_is_another_filesystem_is_refused_before_any_download(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tmp/ mounted apart (a fast disk for downloads): every blob and manifest is renamed
    into place from there, which fails across filesystems (EXDEV). Each night's fetch
    downloaded every new file, then failed each tune with 'cannot write a manifest ...:
    Invalid cross-device link' (exit 1), and verify --repair could set nothing aside.
    The archive is refused on one line, exit 2, before any download."""
    make_tune(standin, 1, images=1)
    archive = tmp_path / "archive"
    assert run_fetch(standin, archive, "1") == 0
    make_tune(standin, 2, images=1)
    before = (archive / "manifests" / "1.json").read_bytes()
    with tmpfs(tmp_path / "fast", "4m") as disk:
        disk.chmod(0o700)
        with bound_at(disk, archive / "tmp"):
            fetch_refused_apart(standin, archive, capsys)
    assert (archive / "manifests" / "1.json").read_bytes() == before


def test_an_archive_whose_tmp_is_bind_mounted_from_the_same_disk_is_refused(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tmp/ bind-mounted from a folder of the same disk (a Docker volume: `-v
    /srv/astria-tmp:/archive/tmp`) has the device of objects/ and manifests/, yet is
    another mount, and rename refuses to cross mounts (EXDEV) as it refuses to cross
    filesystems: the one-device check let it by, and each fetch failed each tune with
    'cannot write a manifest ...: Invalid cross-device link', exit 1."""
    make_tune(standin, 1, images=1)
    archive = tmp_path / "archive"
    assert run_fetch(standin, archive, "1") == 0
    make_tune(standin, 2, images=1)
    apart = tmp_path / "apart"
    apart.mkdir(mode=0o700)
    with bound_at(apart, archive / "tmp"):
        fetch_refused_apart(standin, archive, capsys)
