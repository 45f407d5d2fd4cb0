"""The tool run as another user (uid NOBODY), as root's cron archive meets a monitoring
account: setpriv gives the run that user's ids, and the kernel its permissions."""

from __future__ import annotations

import atexit
import functools
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

import tune_archiver
from tests.helpers import NOBODY

# The tool's runtime dependencies, read from its metadata (markers of this machine).
TOOL = "tune-archiver"


def as_nobody_argv(*caps: str) -> list[str]:
    """setpriv's argv prefix that runs what follows as NOBODY, with `caps` (capabilities)."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *caps]


@functools.cache
def tool_for_nobody() -> tuple[list[str], dict[str, str]] | None:
    """How NOBODY runs `python -m tune_archiver` here: the argv before `-m` and the
    environment; None where it cannot. A clone in a private folder (mktemp -d makes one,
    as CI's does) holds the package and its virtualenv where NOBODY may not look: then
    it runs a copy of both, the same files in a folder others may read."""
    installed: tuple[list[str], dict[str, str]] = ([sys.executable], {})
    if _imports(*installed):
        return installed
    copy = Path(tempfile.mkdtemp(prefix="tune-archiver-for-nobody-"))
    atexit.register(shutil.rmtree, copy, True)
    copy.chmod(0o755)
    try:
        sources = _runtime_files()
    except importlib.metadata.PackageNotFoundError:
        return None  # run from a folder, not installed: its dependencies are unknown
    for source in sources:
        copied = copy / source.name
        if source.is_dir():
            shutil.copytree(source, copied)  # with its bytecode: NOBODY cannot write it there
        else:
            shutil.copy2(source, copied)
    # -S: no site-packages of the virtualenv (NOBODY cannot read its pyvenv.cfg).
    shared = ([sys.executable, "-S"], {"PYTHONPATH": str(copy)})
    return shared if _imports(*shared) else None


def _imports(python: list[str], env: dict[str, str]) -> bool:
    return subprocess.run(
        [*as_nobody_argv(), *python, "-c", "import tune_archiver.cli.main"],
        cwd="/", env={**os.environ, **env}, capture_output=True, timeout=60,
        check=False).returncode == 0


def _runtime_files() -> set[Path]:
    """The package's folder and each top-level module or package of its runtime
    dependencies, followed through theirs (extras left out)."""
    found = {Path(tune_archiver.__file__).parent}
    seen: set[str] = set()
    wanted = [TOOL]
    while wanted:
        name = wanted.pop()
        dist = importlib.metadata.distribution(name)
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        wanted += [req.name for req in map(Requirement, dist.requires or [])
                   if req.marker is None or req.marker.evaluate({"extra": ""})]
        if name != TOOL:
            tops = {file.parts[0] for file in dist.files or []
                    if file.parts[0] not in ("..", "__pycache__")
                    and not file.parts[0].endswith(".dist-info")}
            found |= {Path(str(dist.locate_file(top))) for top in tops}
    return found
