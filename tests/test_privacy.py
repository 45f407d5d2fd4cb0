"""Privacy at rest: the archive's folders are 0700 and its files 0600 (blobs 0400) under
the usual umask, and links planted by another local user are never written through."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.archive_helpers import add_tune, archived, cli
from tests.helpers import NOBODY, blob_file, others_link, run_fetch, stored_blobs
from tests.other_user import as_nobody_argv, tool_for_nobody
from tests.standin import Cut, StandIn
from tune_archiver.download.staging import Staging
from tune_archiver.errors import ConfigError
from tune_archiver.urls import identity
from tune_archiver.web.access import read_token

MiB = 2**20


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """Run under umask 022, which leaves new files readable by everyone by default."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def partial_name(url: str) -> str:
    return hashlib.sha256(identity(url).encode()).hexdigest()[:40]


def test_a_new_archive_is_private(standin: StandIn, archive: Path) -> None:
    """Folders 0700, blobs 0400, manifests and the lock 0600, whatever the umask says."""
    data = os.urandom(3000)
    standin.add_tune(1, [], [standin.add_file("img", data)])
    assert run_fetch(standin, archive, "1") == 0
    folders = [archive, *(p for p in archive.rglob("*") if p.is_dir())]
    assert {str(p.relative_to(archive.parent)): mode(p) for p in folders} == {
        str(p.relative_to(archive.parent)): 0o700 for p in folders
    }
    assert mode(blob_file(archive, data)) == 0o400
    assert mode(archive / "manifests" / "1.json") == 0o600
    assert mode(archive / "lock") == 0o600


def test_a_kept_partial_and_its_sidecar_are_private(standin: StandIn, archive: Path) -> None:
    """A download cut short leaves its .part and .json readable by this user alone."""
    standin.add_tune(1, [standin.add_file("model", os.urandom(2 * MiB))], [])
    standin.faults["model"] = [Cut(at=MiB + 10)]
    assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    kept = sorted((archive / "tmp").iterdir())
    assert [p.suffix for p in kept] == [".json", ".part"]
    assert [mode(p) for p in kept] == [0o600, 0o600]


def test_an_archive_others_can_read_gets_one_warning(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing 0755 archive is used, with one line saying how to make it private."""
    archive.mkdir(mode=0o755)
    archive.chmod(0o755)
    standin.add_tune(1, [], [standin.add_file("img", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "readable" in line]
    assert warnings == [f"tune-archiver: warning: the archive {archive} is readable by other users "
                        f"(chmod 700 {archive} to keep it private)"]


@pytest.mark.parametrize("how", ["group-writable", "another user's"])
def test_an_archive_others_may_write_in_is_refused(
    standin: StandIn, archive: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An archive another user owns or may write in is refused (exit 2), nothing written."""
    archive.mkdir()
    if how == "group-writable":
        archive.chmod(0o770)
    else:
        if os.geteuid() != 0:
            pytest.skip("only root can give a folder to another user")
        os.chown(archive, NOBODY, NOBODY)
    standin.add_tune(1, [], [standin.add_file("img", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 2
    assert "refused the archive" in capsys.readouterr().err
    assert list(archive.iterdir()) == []


def test_repair_of_another_users_archive_is_refused_before_it_writes(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify --repair run by root (a second operator) on an archive another user owns
    is refused on one line (exit 2), as fetch is: before, it rewrote a manifest as a
    0600 file of root's, which the archive's owner could then never read or update,
    and moved the owner's damaged blob into a folder of root's."""
    if os.geteuid() != 0:
        pytest.skip("only root can give an archive to another user")
    add_tune(standin, 1)
    archived(standin, archive, 1)
    document = json.loads((archive / "manifests" / "1.json").read_text())
    document["assets"][1]["path"] = "objects/sha256/00/elsewhere"  # an entry-only problem
    (archive / "manifests" / "1.json").write_text(json.dumps(document))
    damaged = archive / document["assets"][0]["path"]
    damaged.chmod(0o600)
    damaged.write_bytes(b"rotten")
    (archive / "manifests" / "1.lock").unlink()  # as after a clean-up
    before = sorted(archive.rglob("*"))
    for path in [archive, *before]:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 2
    *found, line = ran.errors  # what verify found is said first: no repair mends it
    assert "belongs to another user" in line
    assert sorted(said.split(": ")[4] for said in found) == ["corrupt", "wrong path"]
    assert sorted(archive.rglob("*")) == before
    assert {path.lstat().st_uid for path in before} == {NOBODY}
    assert json.loads((archive / "manifests" / "1.json").read_text()) == document


@pytest.mark.parametrize("command", [["gc"], ["forget", "1"]])
def test_gc_and_forget_of_another_users_archive_are_refused_before_they_write(
    standin: StandIn, archive: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """gc or forget run by root on an archive another user owns, its lock file removed
    (as after a clean-up): refused on one line (exit 2), as fetch is. Before, they made
    the archive lock a 0600 file of root's, which every later fetch, gc and forget of
    the archive's owner then refused as planted, and went on to remove its files."""
    if os.geteuid() != 0:
        pytest.skip("only root can give an archive to another user")
    add_tune(standin, 1)
    archived(standin, archive, 1)
    (archive / "lock").unlink()
    before = sorted(archive.rglob("*"))
    for path in [archive, *before]:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    ran = cli(capsys, *command, "--archive", str(archive))
    assert ran.code == 2
    [line] = ran.errors
    assert "belongs to another user" in line
    assert sorted(archive.rglob("*")) == before


def test_a_staging_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    """An S3 archive's staging folder made beforehand by someone else is not used."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a folder to another user")
    folder = tmp_path / "staging"
    folder.mkdir(mode=0o700)
    os.chown(folder, NOBODY, NOBODY)
    staging = Staging(folder)
    with pytest.raises(ConfigError, match="belongs to another user"):
        asyncio.run(staging.prepare())


def test_a_staging_folder_behind_a_link_of_another_user_is_refused(tmp_path: Path) -> None:
    """$TUNE_ARCHIVER_STAGING under a shared folder where another user planted a link (to
    a folder of theirs) on the way: refused, nothing made there. Before, the staging
    folder was made in theirs, and the photos downloaded into it were theirs to move or
    swap (its files are opened by name)."""
    cache, theirs = others_link(tmp_path, "cache")
    staging = Staging(cache / "staging", made=())  # as $TUNE_ARCHIVER_STAGING's
    with pytest.raises(ConfigError, match="symbolic link of another user"):
        asyncio.run(staging.prepare())
    assert list(theirs.iterdir()) == []


def test_a_link_planted_at_a_partial_is_never_written_through(
    standin: StandIn, archive: Path, tmp_path: Path
) -> None:
    """tmp/<name>.part pointing at another file: that file is untouched, the download is
    made in a private file of our own and archived."""
    data = os.urandom(2 * MiB)
    url = standin.add_file("model", data)
    standin.add_tune(1, [url], [])
    (archive / "tmp").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch")
    (archive / "tmp" / f"{partial_name(url)}.part").symlink_to(victim)
    (archive / "tmp" / f".{partial_name(url)}.json.tmp").symlink_to(victim)
    assert run_fetch(standin, archive, "1") == 0
    assert victim.read_bytes() == b"do not touch"
    assert mode(victim) != 0o400
    assert stored_blobs(archive) == [blob_file(archive, data)]
    assert not blob_file(archive, data).is_symlink()


def test_a_link_planted_at_the_sidecars_temporary_name_is_not_followed(
    standin: StandIn, archive: Path, tmp_path: Path
) -> None:
    """The sidecar is written by a new file and a rename: a link at its temporary name is
    removed, never written through."""
    data = os.urandom(2 * MiB)
    url = standin.add_file("model", data)
    standin.add_tune(1, [url], [])
    standin.faults["model"] = [Cut(at=MiB + 10)]
    (archive / "tmp").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch")
    (archive / "tmp" / f".{partial_name(url)}.json.tmp").symlink_to(victim)
    assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    assert victim.read_bytes() == b"do not touch"
    assert (archive / "tmp" / f"{partial_name(url)}.json").is_file()


def test_a_link_planted_at_the_lock_is_refused(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """<archive>/lock pointing elsewhere stops the fetch with one line, exit 2 as a link
    at objects/ does (it was 1, a failed file's, though nothing was tried); the target is
    intact."""
    standin.add_tune(1, [], [standin.add_file("img", os.urandom(3000))])
    archive.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch")
    (archive / "lock").symlink_to(victim)
    assert run_fetch(standin, archive, "1") == 2
    assert "refused the lock" in capsys.readouterr().err
    assert victim.read_bytes() == b"do not touch"
    assert mode(victim) == 0o644


@pytest.mark.parametrize("command", ["fetch", "gc", "forget"])
def test_a_folder_planted_at_the_lock_is_refused_as_the_operators_to_remove(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """A folder at <archive>/lock stopped fetch, gc and forget with 'cannot open the lock
    file lock: Is a directory', exit 1, as if a tune or file had failed: it is refused
    as a planted link is, exit 2, the line saying to remove it."""
    standin.add_tune(1, [], [standin.add_file("img", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 0
    (archive / "lock").unlink()
    (archive / "lock").mkdir()
    argv = {"fetch": ["fetch", "1", "--api-url", standin.api_url], "gc": ["gc"],
            "forget": ["forget", "1"]}[command]
    ran = cli(capsys, *argv, "--archive", str(archive))
    assert (ran.code, ran.errors) == (2, [
        f"tune-archiver: error: refused the lock {archive}/lock in {archive}: it is a folder, "
        "not a lock file (remove it)"])
    assert (archive / "manifests" / "1.json").is_file()


def test_retrain_of_another_users_archive_is_refused_before_it_writes(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """retrain --yes run by root on an archive another user owns, its tmp/ removed (as
    after freeing space): refused on one line (exit 2), nothing sent or written. Before,
    it made tmp/ a folder of root's, which every later fetch of the owner refused, sent
    the photos, and rewrote the manifest as a 0600 file of root's the owner could no
    longer read."""
    if os.geteuid() != 0:
        pytest.skip("only root can give an archive to another user")
    add_tune(standin, 1)
    archived(standin, archive, 1)
    for name in ("tmp", "lock", "manifests/1.lock"):
        path = archive / name
        path.rmdir() if path.is_dir() else path.unlink()
    before = sorted(archive.rglob("*"))
    for path in [archive, *before]:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    ran = cli(capsys, "retrain", "1", "--yes", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 2
    [line] = ran.errors
    assert "belongs to another user" in line
    assert standin.created == []
    assert sorted(archive.rglob("*")) == before
    assert {path.lstat().st_uid for path in before} == {NOBODY}


@pytest.mark.parametrize("where", ["dest", "on the way"])
def test_export_refuses_a_link_another_user_planted_at_dest(
    standin: StandIn, archive: Path, tmp_path: Path, where: str,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """export to a DEST in a shared folder where another user planted a link (to a folder
    of theirs) at DEST, or at a folder on the way to it: refused on one line (exit 2),
    nothing written there. Before, the link was followed and the tune's photos were
    written into the other user's folder, exit 0."""
    exports, theirs = others_link(tmp_path, "exports")
    add_tune(standin, 1)
    archived(standin, archive, 1)
    dest = exports if where == "dest" else exports / "mine"
    ran = cli(capsys, "export", "1", str(dest), "--archive", str(archive))
    assert ran.code == 2
    [line] = ran.errors
    assert "symbolic link of another user" in line
    assert list(theirs.iterdir()) == []


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_token_file_of_another_user_is_refused(tmp_path: Path, kind: str) -> None:
    """serve --token-file naming a file or FIFO another user owns (planted in a shared
    folder): refused (ConfigError), without waiting on the FIFO. Before, their file was
    used with a warning and their FIFO waited for them to write: the token they chose
    then opened every photo of the archive through serve."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    path = tmp_path / "token"
    if kind == "file":
        path.write_text("their-token-0123456789\n")
    else:
        os.mkfifo(path)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="belongs to another user"):
        read_token(str(path))


def test_fetch_refuses_a_link_another_user_planted_on_the_way_to_the_archive(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An archive to be made in a shared folder where another user planted a link (to a
    folder of theirs) on the way to it: refused on one line (exit 2), nothing made
    there, as export refuses one on the way to DEST. Before, the link was followed and
    the archive of the tune's photos was made in the other user's folder, exit 0: theirs
    to move away or swap under later runs."""
    backups, theirs = others_link(tmp_path, "backups")
    standin.add_tune(1, [], [standin.add_file("img", os.urandom(3000))])
    assert run_fetch(standin, backups / "astria", "1") == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "symbolic link of another user" in line
    assert list(theirs.iterdir()) == []


def test_fetch_refuses_another_users_link_met_through_a_link_of_ours(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The archive named through a link of our own (~/astria -> /srv/backups/astria) met
    the other user's link where ours leads: the walk looked at ~/astria alone, and the
    archive was made in their folder, exit 0. Where our link leads is on the way too;
    our own link to a folder of ours is still used."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a link to another user")
    shared, theirs = tmp_path / "shared", tmp_path / "theirs"
    shared.mkdir(mode=0o1777)
    theirs.mkdir(mode=0o777)
    (shared / "backups").symlink_to(theirs)
    os.lchown(shared / "backups", NOBODY, NOBODY)
    (tmp_path / "mine").symlink_to(Path("shared") / "backups")  # relative, as ln -s makes
    standin.add_tune(1, [], [standin.add_file("img", os.urandom(3000))])
    assert run_fetch(standin, tmp_path / "mine" / "astria", "1") == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "symbolic link of another user" in line
    assert list(theirs.iterdir()) == []
    (tmp_path / "ours").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "ours")
    assert run_fetch(standin, tmp_path / "link" / "astria", "1") == 0


def test_fetch_takes_an_archive_through_a_link_of_ours_to_a_deep_folder(
    standin: StandIn, tmp_path: Path
) -> None:
    """Our link to a deep folder (its full path past PATH_MAX, 4096 characters, where
    the path as written is far under it) is followed a folder at a time, as the kernel
    does. The walk wrote out where the link leads as one path, which lstat refused
    (ENAMETOOLONG): 'cannot use the archive', exit 2, for an archive the kernel opens."""
    deep = tmp_path.joinpath(*["d" * 200] * 12)
    deep.mkdir(parents=True)
    (tmp_path / "link").symlink_to(deep)
    archive = Path(tmp_path / "link", *["e" * 200] * 12, "astria")
    assert len(str(archive)) < 4096 < len(str(deep)) + len(str(archive))
    standin.add_tune(1, [], [standin.add_file("img", os.urandom(3000))])
    assert run_fetch(standin, archive, "1") == 0


def as_nobody(standin: StandIn, commands: list[str], prepare: Callable[[Path], object],
              *caps: str) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    """Tune 1 archived by root in a folder others may pass, `prepare`d (its modes set),
    then each command run on it as uid NOBODY, with `caps` given to setpriv (capabilities):
    the archive's path (removed since) and each run; skipped where this is not root or
    setpriv is missing."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("only root can run the tool as another user (with util-linux's setpriv)")
    tool = tool_for_nobody()
    if tool is None:
        pytest.skip("another user can read neither the tool where it is installed nor a "
                    "copy of it here: it cannot be run as one")
    python, env = tool
    shared = Path(tempfile.mkdtemp(prefix="tune-archiver-shared-"))  # others may pass /tmp
    try:
        shared.chmod(0o755)
        archive = shared / "archive"
        add_tune(standin, 1)
        archived(standin, archive, 1)
        prepare(archive)
        return archive, {command: subprocess.run(
            [*as_nobody_argv(*caps), *python, "-m", "tune_archiver", command,
             "--archive", str(archive)],
            cwd=shared, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
            check=False)
            for command in commands}
    finally:
        shutil.rmtree(shared)


@pytest.mark.parametrize("command", ["list", "verify"])
@pytest.mark.parametrize("opened", [False, True])
def test_roots_archive_run_by_another_user_is_a_usage_error_naming_its_owner(
    standin: StandIn, command: str, opened: bool
) -> None:
    """A backup root's cron made, listed or verified by another user (the tool run as a
    real uid, not root): its manifests/ folder 0700 (the archive itself opened to others,
    or not) said 'cannot list the manifests ...: Permission denied', exit 1, as a failed
    tune, and nothing said whose it is. It is an archive this user cannot use: exit 2,
    naming its owner."""
    archive, ran = as_nobody(standin, [command],
                             lambda archive: archive.chmod(0o755) if opened else None)
    assert ran[command].returncode == 2, ran[command].stderr
    [line] = ran[command].stderr.splitlines()
    assert line.startswith(f"tune-archiver: error: cannot read the archive {archive}")
    assert "belongs to root: run it as root (or with sudo)" in line


@pytest.mark.parametrize("command", ["list", "verify"])
def test_an_account_granted_reading_by_a_capability_reads_roots_archive(
    standin: StandIn, command: str
) -> None:
    """A monitoring account given CAP_DAC_READ_SEARCH (systemd's AmbientCapabilities=)
    reads a root cron's archive whatever its modes: access(2) asks as the real uid
    without that capability, so the archive was said closed to it, exit 2, though every
    read would have worked. Asked as the run's reads are (its effective ids)."""
    _, ran = as_nobody(standin, [command], lambda archive: None,
                       "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")
    assert ran[command].returncode == 0, ran[command].stderr


@pytest.mark.parametrize("closed", ["blobs", "manifests"])
def test_roots_files_closed_to_another_user_name_their_owner_not_a_repair(
    standin: StandIn, closed: str
) -> None:
    """Root's archive with its folders opened (755) but its blobs (0400) or manifests
    (0600) closed, verified and listed by another user (a real uid): each blob said
    'unreadable ... (repair: tune-archiver verify --repair ...)', a repair this user would
    be refused and nothing damaged; a manifest, 'move it to manifests/damaged/', and
    list's row 'Permission denied' with no owner. Each now names whose it is."""
    def open_folders(archive: Path) -> None:
        for folder, _, files in os.walk(archive):
            os.chmod(folder, 0o755)
            if closed == "blobs" and Path(folder).name == "manifests":
                for name in files:
                    os.chmod(Path(folder) / name, 0o644)

    _, ran = as_nobody(standin, ["verify", "list"], open_folders)
    lines = ran["verify"].stderr.splitlines()
    assert ran["verify"].returncode == 1
    assert len(lines) == (3 if closed == "blobs" else 1), lines
    for line in lines:
        assert "Permission denied; it belongs to root: run it as root (or with sudo)" in line
        assert "nothing to repair" in line
        assert "--repair" not in line
        assert "manifests/damaged" not in line
    if closed == "manifests":
        assert "Permission denied; it belongs to root" in ran["list"].stdout
    else:
        assert ran["list"].returncode == 0


def test_a_blob_of_this_users_own_refused_it_gets_a_repairs_advice(standin: StandIn) -> None:
    """An archive of this user's own (a real uid, not root), one blob refused it (its
    mode 000, or a FUSE mount saying EACCES for a read it failed): verify said it 'maybe
    whole, only closed to this user: nothing to repair; verify as the user it belongs
    to', a user it belongs to already, and no repair for what may be damage. Only another
    user's blob is said closed; this user's own is unreadable, with a repair's advice."""
    def own_one_closed(archive: Path) -> None:
        for folder, _, files in os.walk(archive):
            for name in [".", *files]:
                os.chown(Path(folder) / name, NOBODY, NOBODY)
        next(p for p in (archive / "objects").rglob("*") if p.is_file()).chmod(0)

    archive, ran = as_nobody(standin, ["verify"], own_one_closed)
    [line] = ran["verify"].stderr.splitlines()
    assert ran["verify"].returncode == 1
    assert "unreadable: cannot read the blob" in line
    assert "Permission denied (repair" in line
    assert f"(repair: tune-archiver verify --repair 1 --archive {archive})" in line
    assert "nothing to repair" not in line
    assert "belongs to" not in line
