""".ci/audit: a known vulnerability fails CI, an unreachable service is one line and CI goes
on; run against a stand-in pip-audit, since the real service is out of reach here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "audit"
FAKE = """#!{python}
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
requirements = Path(args[args.index("-r") + 1]).read_text()
Path(os.environ["SEEN"]).write_text(json.dumps({{"args": args, "requirements": requirements}}))
if os.environ["REPORT"]:
    Path(args[args.index("-o") + 1]).write_text(os.environ["REPORT"])
sys.stderr.write(os.environ["OUTPUT"])
sys.exit(int(os.environ["CODE"]))
"""
VULN = {"name": "aiohttp", "version": "3.13.2",
        "vulns": [{"id": "GHSA-6mq8-rvhq-8wgg", "fix_versions": ["3.13.3"]}]}
CLEAN = {"name": "tqdm", "version": "4.70.1", "vulns": []}
SKIPPED = {"name": "yarl", "skip_reason": "Dependency not found on PyPI and could not be audited"}
REFUSED = ("requests.exceptions.ProxyError: HTTPSConnectionPool(host='pypi.org', port=443): "
           "Max retries exceeded with url: /pypi/aiohttp/3.13.2/json\n")


def audit(tmp_path: Path, code: int, report: dict | None, output: str = "") -> tuple[int, str]:
    """Run .ci/audit on this venv with a pip-audit that exits `code` having written `report`
    and printed `output`; its exit code and what it printed."""
    fake = tmp_path / "pip-audit"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(0o755)
    env = {**os.environ, "PIP_AUDIT": str(fake), "SEEN": str(tmp_path / "seen.json"),
           "REPORT": json.dumps(report) if report is not None else "", "OUTPUT": output,
           "CODE": str(code)}
    ran = subprocess.run([sys.executable, str(SCRIPT), sys.executable], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    return ran.returncode, ran.stdout + ran.stderr


def test_a_known_vulnerability_fails_and_is_named(tmp_path: Path) -> None:
    """A vulnerability in the report is named with its fix, and the audit exits 1."""
    code, printed = audit(tmp_path, 1, {"dependencies": [VULN, CLEAN], "fixes": []})
    assert code == 1
    assert printed.splitlines() == [
        "pip-audit: aiohttp 3.13.2: GHSA-6mq8-rvhq-8wgg (fixed in 3.13.3)",
        "pip-audit: 1 known vulnerabilities in 1 packages",
    ]


def test_the_frozen_environment_is_audited_as_it_is(tmp_path: Path) -> None:
    """pip-audit is given this venv's frozen packages, without resolving or pip."""
    audit(tmp_path, 0, {"dependencies": [CLEAN], "fixes": []})
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert {"--no-deps", "--disable-pip", "-f", "json"} <= set(seen["args"])
    assert "aiohttp==" in seen["requirements"]
    assert "tune-archiver" not in seen["requirements"]  # editable: not on PyPI


@pytest.mark.parametrize(
    ("code", "report", "output"),
    [(1, None, REFUSED),
     (1, None, "ERROR:pip_audit._cli:Could not connect to PyPI's vulnerability feed\n"),
     (0, {"dependencies": [SKIPPED, dict(SKIPPED, name="aiohttp")], "fixes": []}, "")],
    ids=["proxy-refused", "timeout", "all-skipped"],
)
def test_an_unreachable_service_is_one_line_and_ci_goes_on(
    tmp_path: Path, code: int, report: dict | None, output: str
) -> None:
    """A connection error, or a service that answers "not found" for every package (the
    PyPI JSON API blocked), is one line saying nothing was audited, and exit 0."""
    exit_code, printed = audit(tmp_path, code, report, output)
    assert exit_code == 0
    [line] = printed.splitlines()
    assert line.startswith("pip-audit: the vulnerability service could not be reached")
    assert line.endswith("dependencies not audited")


def test_a_clean_audit_says_how_many_packages_and_which_were_skipped(tmp_path: Path) -> None:
    """No vulnerability: exit 0, one line counting the packages audited and naming skips."""
    code, printed = audit(tmp_path, 0, {"dependencies": [CLEAN, SKIPPED], "fixes": []})
    assert (code, printed) == (0, "pip-audit: no known vulnerabilities in 1 packages; 1 could "
                                  "not be audited: yarl\n")


def test_any_other_failure_fails(tmp_path: Path) -> None:
    """pip-audit failing for another reason (a bad requirement, a bug) fails the audit."""
    code, printed = audit(tmp_path, 1, None, "ERROR:pip_audit._cli:invalid requirement\n")
    assert code == 2
    assert printed.splitlines()[-1] == "pip-audit: failed (exit 1) without a report"
