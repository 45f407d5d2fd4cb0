"""Redirects into private addresses (metadata services, loopback, the local network) are
refused before any connection, unless the API is private itself or they are allowed.

Every test here runs with connections off this machine refused and recorded, so none
can reach 169.254.169.254 even if the guard under test were broken.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import check_manifest
from tests.helpers import Sleeps
from tests.standin import StandIn
from tune_archiver.addresses import is_private_host, literal, private_kind
from tune_archiver.cli.main import main
from tune_archiver.commands import fetch as archive_module
from tune_archiver.commands.dry_run import dry_run
from tune_archiver.commands.fetch import fetch
from tune_archiver.config import RetryPolicy, Settings
from tune_archiver.progress import NullProgress

METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


@pytest.fixture(autouse=True)
def off_machine(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Refuse (and record) every socket connection to an address that is not loopback."""
    attempts: list[Any] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple):
            host = ipaddress.ip_address(str(address[0]).partition("%")[0])
            if not host.is_loopback:
                attempts.append(address)
                raise ConnectionRefusedError(111, "the test refuses addresses off this machine")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def strict(standin: StandIn, archive: Path) -> Settings:
    """Settings as for an API on a public address: redirects into private ones refused."""
    return Settings(archive=archive, api_key=standin.api_key, api_url=standin.api_url,
                    retry=RetryPolicy(sleep=Sleeps()))


def redirecting(standin: StandIn, target: str) -> bytes:
    """Tune 1: image 0 redirects to `target` (the mirror serves "moved" there, if reached);
    image 1 is served as it is."""
    moved = os.urandom(3000)
    standin.files["moved"] = moved
    standin.redirects["start"] = target
    standin.add_tune(1, [], [standin.file_url("start"), standin.add_file("plain", b"p" * 2000)])
    return moved


def archive_errors(settings: Settings, archive: Path) -> list[Any]:
    [result] = asyncio.run(fetch(settings, [1], NullProgress()))
    assert [entry["status"] for entry in check_manifest(archive / "manifests" / "1.json")
            ["assets"]] == (["ok", "ok"] if result.ok else ["failed", "ok"])
    return [failure.error for failure in result.failed]


def test_a_redirect_to_the_metadata_service_is_refused_before_connecting(
    standin: StandIn, archive: Path, off_machine: list[Any]
) -> None:
    """A redirect to 169.254.169.254 fails that file naming the address; no connection to
    it is even attempted, and the other file is archived."""
    redirecting(standin, METADATA)
    errors = archive_errors(strict(standin, archive), archive)
    assert errors == [
        f"refused a redirect to 169.254.169.254, a link-local address, from "
        f"{standin.file_url('start')} (--allow-private-redirects follows it)"
    ]
    assert off_machine == []


def test_a_dry_run_calls_a_redirect_into_a_private_address_not_downloadable(
    standin: StandIn, archive: Path, off_machine: list[Any]
) -> None:
    """The dry run probes as a fetch downloads: the redirect it would refuse makes the file
    not downloadable, with the fetch's reason, and no connection is attempted."""
    redirecting(standin, METADATA)
    [preview] = asyncio.run(dry_run(strict(standin, archive), [1]))
    [(asset, probe)] = preview.not_downloadable
    assert (asset.index, probe.status) == (0, None)
    assert probe.refused is not None
    assert probe.refused.startswith("refused a redirect to 169.254.169.254")
    assert off_machine == []


@pytest.mark.parametrize(
    ("host", "says"),
    [("127.0.0.1", "redirect to 127.0.0.1, a loopback address"),
     ("localhost", "redirect to localhost, which resolves to "),
     ("[::ffff:127.0.0.1]", "redirect to ::ffff:7f00:1, a loopback address"),
     ("2130706433", "2130706433"),
     ("0.0.0.0", "redirect to 0.0.0.0, an unspecified address"),
     ("127.0.0.1.", "redirect to 127.0.0.1., a loopback address")],
    ids=["literal", "name", "mapped", "decimal", "unspecified", "final dot"],
)
def test_a_redirect_to_this_machine_is_refused_before_any_request(
    standin: StandIn, archive: Path, host: str, says: str
) -> None:
    """A redirect to the mirror on 127.0.0.1, by address, by name or in another notation,
    is refused: the mirror never sees a request."""
    port = standin.urls["mirror"].rpartition(":")[2]
    redirecting(standin, f"http://{host}:{port}/files/moved")
    [error] = archive_errors(strict(standin, archive), archive)
    assert error.startswith("refused")
    assert says in error, error
    assert standin.seen("mirror") == []


def test_allowed_private_redirects_are_followed(standin: StandIn, archive: Path) -> None:
    """With private redirects allowed, the redirect to the mirror on 127.0.0.1 is followed."""
    moved = redirecting(standin, standin.file_url("moved", host="mirror"))
    settings = replace(strict(standin, archive), private_redirects=True)
    assert archive_errors(settings, archive) == []
    assert len(standin.seen("mirror", "/files/moved")) == 1
    assert check_manifest(archive / "manifests" / "1.json")["assets"][0]["size"] == len(moved)


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Replace the fetch by one that records its settings and archives nothing."""
    started: list[Settings] = []

    async def recorded(settings: Settings, *args: Any, **kwargs: Any) -> list[Any]:
        started.append(settings)
        return []

    monkeypatch.setattr(archive_module, "fetch", recorded)
    return started


@pytest.mark.parametrize(
    ("api", "option", "allowed"),
    [("https://api.astria.ai", [], False),
     ("https://api.astria.ai", ["--allow-private-redirects"], True),
     ("http://127.0.0.1:8080", [], True),
     ("http://[::1]:8080", [], True),
     ("http://localhost:3000", [], True),
     ("http://10.0.0.5", [], True),
     ("https://8.8.8.8", [], False)],
)
def test_private_redirects_are_allowed_for_a_private_api_or_when_asked(
    api: str, option: list[str], allowed: bool, fetches: list[Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fetch follows redirects into private addresses only when the API's own address is
    private (or localhost), or with --allow-private-redirects."""
    monkeypatch.setenv("ASTRIA_API_KEY", "k" * 20)
    assert main(["fetch", "1", "--api-url", api, *option]) == 0
    assert [settings.private_redirects for settings in fetches] == [allowed]


@pytest.mark.parametrize(
    ("address", "kind"),
    [("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
     ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
     ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
     ("192.168.1.1", "private"), ("fc00::1", "private"), ("fd00:ec2::254", "private"),
     ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("100.100.100.200", "shared"),
     ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),
     ("64:ff9b::a9fe:a9fe", "link-local"), ("2002:7f00:1::", "loopback"),
     ("fec0::1", "site-local"),
     ("8.8.8.8", None), ("1.1.1.1", None), ("172.32.0.1", None), ("192.169.0.1", None),
     ("100.128.0.1", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None)],
)
def test_private_kind(address: str, kind: str | None) -> None:
    """Loopback, link-local, private, shared, site-local and unspecified networks are
    private, IPv4 inside IPv6 judged as itself; public addresses are not."""
    parsed = literal(address)
    assert parsed is not None
    assert private_kind(parsed) == kind


@pytest.mark.parametrize(
    ("host", "private"),
    [("127.0.0.1", True), ("[::1]", True), ("localhost", True), ("LocalHost.", True),
     ("api.localhost", True), ("10.0.0.5", True), ("[fe80::1%eth0]", True),
     ("api.astria.ai", False), ("8.8.8.8", False), ("localhost.example.com", False),
     ("", False)],
)
def test_is_private_host_never_resolves(host: str, private: bool) -> None:
    """An API host is private when it is a private address or localhost, told without DNS."""
    assert is_private_host(host) is private
