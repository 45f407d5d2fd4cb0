"""A network whose only way out is the proxy HTTPS_PROXY / HTTP_PROXY name (NO_PROXY
apart): the API, the asset hosts and the ping are reached through it, as by curl, pip
and botocore; ~/.netrc adds nothing; the private-address guard checks the target, not
the proxy."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.archive_helpers import start, stop
from tests.conftest import check_manifest
from tests.helpers import Sleeps, run_fetch, sha256
from tests.proxy_helpers import ForwardProxy
from tests.standin import StandIn
from tests.test_exits import closed_port_url
from tests.test_ping import Monitor, monitor  # noqa: F401  (the fixture)
from tests.test_retrain import archived, retrain, sent  # noqa: F401  (the fixture)
from tune_archiver.cli.main import main
from tune_archiver.errors import ConnectError
from tune_archiver.net.transport import get


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProxy]:
    server = ForwardProxy().start()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
                 "https_proxy", "all_proxy", "no_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def named(standin: StandIn) -> StandIn:
    """The stand-in's hosts by names this machine cannot resolve (only the proxy can),
    as a public API's are on a network whose DNS stops at the proxy."""
    for host, url in standin.urls.items():
        standin.urls[host] = url.replace("127.0.0.1", f"{host}.astria.test")
    return standin


def test_a_fetch_reaches_the_api_and_the_files_through_the_proxy(
    named: StandIn, proxy: ForwardProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = b"x" * 3000
    named.add_tune(1, [], [named.add_file("a", data)])
    assert run_fetch(named, tmp_path / "archive", "1") == 0, capsys.readouterr().err
    [asset] = check_manifest(tmp_path / "archive" / "manifests" / "1.json")["assets"]
    assert (asset["status"], asset["sha256"]) == ("ok", sha256(data))
    assert ("the API key goes unencrypted to api.astria.test through the proxy 127.0.0.1; "
            "use https://") in capsys.readouterr().err
    targets = [seen.target for seen in proxy.seen]
    assert any(target.startswith(named.api_url + "/tunes/1") for target in targets)
    assert named.file_url("a") in targets


@pytest.mark.parametrize("bypass", ["localhost,127.0.0.1", "10.0.0.0/8, 127.0.0.0/8"])
def test_a_host_in_no_proxy_is_reached_directly(
    standin: StandIn, proxy: ForwardProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    bypass: str,
) -> None:
    """NO_PROXY names the host, or (as pip and curl read it) a range its address is in."""
    monkeypatch.setenv("NO_PROXY", bypass)
    standin.add_tune(1, [], [standin.add_file("a", b"a" * 2000)])
    assert run_fetch(standin, tmp_path / "archive", "1") == 0
    assert proxy.seen == []


def test_netrc_sends_no_password_to_an_asset_host_nor_breaks_the_api(
    named: StandIn, proxy: ForwardProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ~/.netrc with a default entry (as for a private package index) gives no host a
    password: the API keeps its key alone, the asset host gets none."""
    netrc = tmp_path / "netrc"
    netrc.write_text("default login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    named.add_tune(1, [], [named.add_file("a", b"a" * 2000)])
    assert run_fetch(named, tmp_path / "archive", "1") == 0
    [api] = [seen for seen in proxy.seen if seen.target.startswith(named.api_url + "/tunes/1")]
    assert api.headers["Authorization"] == f"Bearer {named.api_key}"
    [asset] = [seen for seen in proxy.seen if seen.target == named.file_url("a")]
    assert "Authorization" not in asset.headers


@pytest.mark.parametrize("at", ["127.0.0.1", "localhost"])
def test_a_redirect_through_the_proxy_is_followed_though_the_proxy_is_private(
    named: StandIn, proxy: ForwardProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    at: str,
) -> None:
    """The proxy sits on a private address, given literally or by a name (as
    proxy.corp:3128 resolves to 10.x): connecting to it is no redirect into the local
    network; the target, a public name, is fetched."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("127.0.0.1", at))
    moved = b"m" * 3000
    named.files["moved"] = moved
    named.redirects["start"] = named.file_url("moved", host="mirror")
    named.add_tune(1, [], [named.file_url("start")])
    assert run_fetch(named, tmp_path / "archive", "1") == 0
    [asset] = check_manifest(tmp_path / "archive" / "manifests" / "1.json")["assets"]
    assert (asset["status"], asset["sha256"]) == ("ok", sha256(moved))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.1.", "localhost.",
                                  "metadata.localhost", "%6cocalhost", "%31%32%37.0.0.1"])
def test_a_redirect_into_the_local_network_is_refused_through_the_proxy_too(
    named: StandIn, proxy: ForwardProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    host: str,
) -> None:
    """The target of a redirect is checked, given literally or by a name this machine
    resolves to a private address: the proxy is never asked for it. A loopback name this
    machine does not resolve (localhost., *.localhost) or an address with a final dot is
    the proxy's own loopback: refused too, percent-encoded as well (a proxy that reads
    URLs as browsers do decodes the host)."""
    named.files["moved"] = b"m" * 3000
    mirror = named.file_url("moved", host="mirror")
    named.redirects["start"] = mirror.replace("mirror.astria.test", host)
    named.add_tune(1, [], [named.file_url("start")])
    assert run_fetch(named, tmp_path / "archive", "1", "--retries", "0") == 1
    assert f"refused a redirect to {host}" in capsys.readouterr().err
    assert not [seen for seen in proxy.seen if "/files/moved" in seen.target]


def test_the_ping_goes_through_the_proxy(
    named: StandIn, proxy: ForwardProxy, monitor: Monitor, tmp_path: Path  # noqa: F811
) -> None:
    ping = monitor.url.replace("127.0.0.1", "hc-ping.test")
    named.add_tune(1, [], [named.add_file("a", b"a" * 2000)])
    assert run_fetch(named, tmp_path / "archive", "1", "--ping-url", ping) == 0
    assert [path for _, path, _ in monitor.pings] == ["/ping/abc-uuid/start", "/ping/abc-uuid"]
    assert ping in [seen.target for seen in proxy.seen]


def test_a_proxy_that_cannot_be_reached_is_said_as_the_proxy(
    named: StandIn, proxy: ForwardProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", closed_port_url())
    named.add_tune(1, [], [named.add_file("a", b"a" * 2000)])
    assert run_fetch(named, tmp_path / "archive", "1", "--retries", "0") == 4
    err = capsys.readouterr().err
    assert "cannot connect to the proxy 127.0.0.1:" in err
    assert "Traceback" not in err


def test_a_socks_proxy_is_refused_before_anything_is_asked(
    named: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiohttp speaks no SOCKS: going direct instead would bypass what the operator set."""
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks5://user:secret@127.0.0.1:1080")
    named.add_tune(1, [], [named.add_file("a", b"a" * 2000)])
    assert run_fetch(named, tmp_path / "archive", "1") == 2
    err = capsys.readouterr().err
    assert "only http:// and https:// proxies are supported" in err
    assert "secret" not in err
    assert named.requests == []


@pytest.mark.parametrize("given", ["alice:s3cret@proxy.corp:31x8", "alice:s3cret@proxy.corp:99999",
                                   "http://alice:s3cret@proxy..corp:3128"])
def test_a_proxy_url_that_cannot_be_read_never_shows_its_password(
    named: StandIn, proxy: ForwardProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, given: str,
) -> None:
    """Without a scheme (as curl takes proxy:3128), a mistyped port; a doubled dot in its
    host (no internal error of each tune): refused, exit 2, the password never printed."""
    monkeypatch.setenv("HTTP_PROXY", given)
    named.add_tune(1, [], [named.add_file("a", b"a" * 2000)])
    assert run_fetch(named, tmp_path / "archive", "1") == 2
    err = capsys.readouterr().err
    assert "cannot read the proxy URL http://REDACTED@proxy." in err
    assert "s3cret" not in err
    assert named.requests == []


def test_a_proxy_that_refuses_the_api_is_one_line_naming_the_proxy(
    proxy: ForwardProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An https API is reached by CONNECT, which the proxy refuses: said as the proxy's
    refusal, never as the API rejecting the key; the key never goes to the proxy."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("ASTRIA_API_KEY", "k" * 20)
    proxy.refuse = True
    code = main(["fetch", "1", "--archive", str(tmp_path / "archive"), "--retries", "0",
                 "--api-url", "https://api.astria.test"], sleep=Sleeps())
    err = capsys.readouterr().err
    assert code == 4, err
    assert "the proxy refused to connect to the server of https://api.astria.test" in err
    assert "HTTP 403" in err
    assert [(seen.method, seen.target) for seen in proxy.seen] == [
        ("CONNECT", "api.astria.test:443")]
    assert not [seen for seen in proxy.seen if "k" * 20 in str(seen.headers)]


def test_the_proxys_password_goes_to_the_proxy_alone(
    named: StandIn, proxy: ForwardProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """http://user:password@proxy: a plain-http request carries Proxy-Authorization
    itself (no CONNECT), which the proxy takes off; the password is never printed."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://alice:s3cret@"))
    named.add_tune(1, [], [named.add_file("a", b"a" * 2000)])
    assert run_fetch(named, tmp_path / "archive", "1") == 0
    assert {seen.headers.get("Proxy-Authorization") for seen in proxy.seen} == {
        "Basic YWxpY2U6czNjcmV0"}
    assert len(proxy.seen) == 2
    printed = capsys.readouterr()
    assert "s3cret" not in printed.out + printed.err


def test_retrain_posts_the_tune_through_the_proxy(
    standin: StandIn, archived: tuple[Path, list[bytes]],  # noqa: F811
    proxy: ForwardProxy, capsys: pytest.CaptureFixture[str],
) -> None:
    standin.urls["api"] = standin.urls["api"].replace("127.0.0.1", "api.astria.test")
    code, result = retrain(standin, archived[0], capsys, "--yes")
    assert (code, result["sent"]) == (0, True)
    assert [len(images) for _, images in standin.created] == [len(archived[1])]
    assert ("POST", standin.api_url + "/tunes") in [(s.method, s.target) for s in proxy.seen]


UNRESOLVED = "http://alice:s3cret@no-such-proxy.invalid:3128"
SIGNED = "?X-Amz-Signature=0123456789abcdef"


def fetch_through(standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str], proxy_url: str, through: str) -> str:
    """fetch 1 (two files, http and https) with `proxy_url` for both schemes, the API over
    https or http through it, or direct with the files through it (`through`); checks the
    exit code (4: the API out of reach; 1: its files failed) and that no proxy password,
    URL signature nor key is shown; gives stderr."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy_url)
    standin.add_tune(1, [], [f"http://cdn.astria.test/f{SIGNED}",
                             f"https://cdn.astria.test/g{SIGNED}"])
    api = {"https-api": "https://api.astria.test", "http-api": "http://api.astria.test",
           "assets": standin.api_url}[through]
    if through == "assets":
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the API direct, the files proxied
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    code = main(["fetch", "1", "--archive", str(tmp_path / "archive"), "--retries", "0",
                 "--api-url", api], sleep=Sleeps())
    err = capsys.readouterr().err
    assert code == (1 if through == "assets" else 4), err
    for secret in ("s3cret", "0123456789abcdef", standin.api_key):
        assert secret not in err
    return err


@pytest.mark.parametrize("through", ["https-api", "http-api", "assets"])
def test_a_proxy_whose_name_cannot_be_resolved_is_said_as_the_proxy(
    standin: StandIn, proxy: ForwardProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, through: str,
) -> None:
    """HTTPS_PROXY naming a host that does not resolve (a typo, a VPN down): aiohttp gives
    it as any host's, and the line read as if the API or the asset host could not be
    reached; it names the proxy, never its password nor a URL's signature."""
    err = fetch_through(standin, tmp_path, monkeypatch, capsys, UNRESOLVED, through)
    lines = [line for line in err.splitlines() if "no-such-proxy.invalid:3128" in line]
    assert len(lines) == (2 if through == "assets" else 1), err
    assert all("cannot connect to the proxy no-such-proxy.invalid:3128 (" in line
               for line in lines), err


@pytest.mark.parametrize("user", ["", "alice:s3cret@"])
@pytest.mark.parametrize("through", ["https-api", "http-api", "assets"])
def test_a_proxy_asking_for_credentials_is_said_so(
    standin: StandIn, proxy: ForwardProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, through: str, user: str,
) -> None:
    """A proxy answering 407 Proxy Authentication Required, to a CONNECT or to a plain
    request, for the API or a file: the line names the proxy (never its password) and
    says it asks for a user and password, or refused those given; it read as a CONNECT
    refused, 'the API answered HTTP 407' or a file's 'HTTP 407'."""
    proxy.refuse = True
    proxy.refusal = b'407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="c"\r\n'
    err = fetch_through(standin, tmp_path, monkeypatch, capsys,
                        proxy.url.replace("http://", f"http://{user}"), through)
    said = (f"the proxy {proxy.url} refused the user name and password given (HTTP 407)"
            if user else f"the proxy {proxy.url} asks for a user name and password (HTTP 407)")
    lines = [line for line in err.splitlines() if "407" in line]
    assert len(lines) == (2 if through == "assets" else 1), err
    assert all(said in line for line in lines), err


async def test_a_proxy_silent_on_connect_is_said_as_the_proxy(
    proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy that takes the connection and never answers the CONNECT (hung; one off the
    network, past a VPN gone down, drops the SYN alike): the connect timeout named the
    API's server as the one that never answered; it names the proxy first."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nothing is ever read
        port = silent.getsockname()[1]
        monkeypatch.setenv("HTTPS_PROXY", f"http://alice:s3cret@127.0.0.1:{port}")
        timeout = aiohttp.ClientTimeout(total=None, connect=0.3)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with pytest.raises(ConnectError) as info:
                async with get(session, "https://api.astria.test/tunes/1?sig=abcdef0123", {}):
                    pass
    said = str(info.value)
    assert said.startswith(f"timed out connecting to the proxy 127.0.0.1:{port} or, through "
                           "it, to the server of https://api.astria.test/tunes/1"), said
    assert "s3cret" not in said
    assert "abcdef0123" not in said


PROXY_407 = b'407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="c"\r\n'


def test_retrains_post_refused_407_by_the_proxy_is_said_as_the_proxys(
    standin: StandIn, archived: tuple[Path, list[bytes]],  # noqa: F811
    proxy: ForwardProxy, capsys: pytest.CaptureFixture[str],
) -> None:
    """retrain --yes through a plain-http proxy that lets GETs by and asks credentials
    for the POST (a method ACL): it said 'the API answered HTTP 407', the API's refusal,
    though the API never saw it. The proxy is named, as the GETs name it; nothing sent."""
    standin.urls["api"] = standin.urls["api"].replace("127.0.0.1", "api.astria.test")
    proxy.refusal, proxy.refused_methods = PROXY_407, {"POST"}
    ran = sent(standin, archived[0], capsys)
    assert ran.code == 4  # the API out of reach: nothing sent, no tune made
    assert (f"the proxy {proxy.url} asks for a user name and password (HTTP 407)"
            in "\n".join(ran.errors)), ran.errors
    assert "the API answered HTTP 407" not in "\n".join(ran.errors)
    assert standin.created == []


def test_retrains_post_cut_off_by_a_limit_on_its_size_says_no_tune_was_made(
    standin: StandIn, proxy: ForwardProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A proxy (or the API's front) answering 413 to a POST of a phone's photos and
    hanging up, its body unread: the write failing, the run said the API may have made
    the tune and kept the title marked sent, a run once the limit was raised refused. A
    form cut before its last photo makes no tune: said so, and the run again sends it."""
    archive = tmp_path / "archive"
    images = [b"\xff\xd8\xff" + os.urandom(4 * 2**20) for _ in range(4)]
    urls = [standin.add_file(f"img{i}", data) for i, data in enumerate(images)]
    standin.add_tune(5, [], urls, model_type="faceid", title="Jane")
    assert run_fetch(standin, archive, "5") == 0
    proxy.refusal, proxy.refused_methods = b"413 Payload Too Large\r\n", {"POST"}
    proxy.refused_unread = True
    ran = sent(standin, archive, capsys)
    assert ran.code == 1
    [line] = ran.errors
    # The refusal read (as it comes first at times) or, the write failing first, the cut
    assert ("the connection closed before every photo was sent: no tune was made" in line
            or line.endswith("the API answered HTTP 413")), line
    assert "may have created" not in line
    assert "retraining" not in check_manifest(archive / "manifests" / "5.json")
    proxy.refused_methods = set()  # the limit raised
    assert sent(standin, archive, capsys).code == 0
    [(_, received)] = standin.created
    assert [data for _, data in received] == images


def test_retrain_stopped_before_its_post_sent_every_photo_says_no_tune_was_made(
    standin: StandIn, proxy: ForwardProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C while a slow uplink still sends the photos: the run said the API may have
    made the tune and kept the title marked sent, so that every retrain under a default
    title was refused from then on. A form never sent whole makes no tune: said, the
    title free, and the run again sends it."""
    archive = tmp_path / "archive"
    images = [b"\xff\xd8\xff" + os.urandom(4 * 2**20) for _ in range(4)]
    urls = [standin.add_file(f"img{i}", data) for i, data in enumerate(images)]
    standin.add_tune(5, [], urls, model_type="faceid", title="Jane")
    assert run_fetch(standin, archive, "5") == 0
    proxy.held_methods = {"POST"}
    process = start(archive, "retrain", "5", "--yes", "-q", "--api-url", standin.api_url,
                    env={"ASTRIA_API_KEY": standin.api_key})
    try:
        assert proxy.held.wait(30)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        stop(process)
    assert process.returncode == 130
    assert "stopped before every photo of POST /tunes was sent: no tune was made" in err
    assert "may have created" not in err
    assert "retraining" not in check_manifest(archive / "manifests" / "5.json")
    proxy.held_methods = set()
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    assert main(["retrain", "5", "--yes", "--archive", str(archive),
                 "--api-url", standin.api_url]) == 0
    [(_, received)] = standin.created
    assert [data for _, data in received] == images


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_ping_refused_407_by_the_proxy_is_said_as_the_proxys(
    standin: StandIn, proxy: ForwardProxy, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, scheme: str,
) -> None:
    """A ping through a proxy asking credentials (407 to a plain GET, or to its CONNECT):
    the warning said 'HTTP 407' (the monitor's answer, as read) or 'ClientHttpProxyError';
    it names the proxy now, never the ping URL (its token)."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the API and files direct
    proxy.refuse, proxy.refusal = True, PROXY_407
    ping = f"{scheme}://hc-ping.test:1/ping/abc-uuid"
    standin.add_tune(1, [], [standin.add_file("a", b"a" * 2000)])
    assert run_fetch(standin, tmp_path / "archive", "1", "--ping-url", ping) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "ping" in line]
    assert len(lines) == 2, err
    assert all(f"the proxy {proxy.url} asks for a user name and password (HTTP 407)" in line
               for line in lines), err
    assert "abc-uuid" not in err
