"""A hostile API and asset hosts: answers that once slipped past the checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import check_manifest
from tests.helpers import run_fetch, sha256
from tests.standin import Drip, StandIn, Status
from tune_archiver.errors import ReadTimeout, RefusedUrl
from tune_archiver.net.transport import get

DEEP = b"[" * 100_000  # well-formed JSON's nesting, deeper than Python's recursion limit
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.mark.parametrize("answer", [Status(200, JSON, DEEP), Status(422, JSON, DEEP)])
def test_a_deeply_nested_tune_answer_is_malformed_json_not_an_internal_error(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str], answer: Status
) -> None:
    """A tune (or an API error) nested deeper than the JSON decoder recurses is a bad
    answer, said as one, for that tune only: the other tune is archived."""
    standin.add_tune(5, [], [standin.add_file("a", b"a" * 2000)])
    standin.add_tune(6, [], [standin.add_file("b", b"b" * 2000)])
    standin.api_faults[5] = [answer]
    assert run_fetch(standin, archive, "5", "6", "--retries", "0") == 1
    printed = capsys.readouterr()
    assert "tune 6 (Tune 6): 1 file" in printed.out
    assert "tune 5" in printed.err
    assert "internal error" not in printed.err
    assert "Recursion" not in printed.out + printed.err


def nested(depth: int) -> object:
    """A JSON value of lists `depth` deep: within what the decoder takes, past what the
    walks of decoded JSON (redaction, the surrogates' mending) can recurse."""
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def test_a_tune_with_a_field_nested_hundreds_deep_is_said_as_such_not_an_internal_error(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A field 600 lists deep decodes (the decoder's limit is near 1,000) but would end
    the redaction of the tune for its manifest in a RecursionError, "internal error":
    it is the API's bad answer, said as one, for that tune only."""
    standin.add_tune(5, [], [standin.add_file("a", b"a" * 2000)], odd=nested(600))
    standin.add_tune(6, [], [standin.add_file("b", b"b" * 2000)])
    assert run_fetch(standin, archive, "5", "6", "--retries", "0") == 1
    printed = capsys.readouterr()
    assert "tune 6 (Tune 6): 1 file" in printed.out
    assert "tune 5: the API returned JSON nested too deeply" in printed.err
    assert "internal error" not in printed.err


@pytest.mark.parametrize("extra", [(), ("--dry-run",)])
def test_a_deeply_nested_listing_is_one_line_not_a_traceback(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
) -> None:
    """A page of the listing nested too deeply ends the run with one line naming the
    listing (it escaped main as a RecursionError, with a traceback)."""
    standin.add_tune(6, [], [standin.add_file("b", b"b" * 2000)])
    standin.page_faults = [Status(200, JSON, DEEP)]
    assert run_fetch(standin, archive, "--all", "--retries", "0", *extra) == 1
    printed = capsys.readouterr()
    assert "the list of tunes: the API returned malformed JSON" in printed.err


def renewed_as_another(standin: StandIn, archive: Path, queries: list[str],
                       renewed: list[str]) -> None:
    """Two images of one path told apart by their query (`queries`, each signed), the
    first refused with a 403 and tune 1 renewed listing `renewed`: image 0's fresh URL
    names the other file, so it fails, saying why, and image 1 keeps its own bytes."""
    images = [os.urandom(3000) for _ in queries]
    for query, data in zip(queries, images, strict=True):
        standin.files[f"img?{query}"] = data
    urls = [standin.file_url("img", query=f"{q}&X-Amz-Signature=old{i}")
            for i, q in enumerate(queries)]
    fresh = [standin.file_url("img", query=f"{q}&X-Amz-Signature=new{i}")
             for i, q in enumerate(renewed)]
    standin.api_versions[1] = [dict(standin.add_tune(1, [], urls))]
    standin.add_tune(1, [], fresh)  # what the renewal sees
    standin.faults[f"img?{queries[0]}"] = [Status(403)]
    assert run_fetch(standin, archive, "1") == 1
    image0, image1 = check_manifest(archive / "manifests" / "1.json")["assets"]
    assert image0["status"] == "failed"
    assert "the renewed tune lists another file as training_image 0" in str(image0["error"])
    assert image1["sha256"] == sha256(images[1])


@pytest.mark.parametrize("renewed_ids", [(2, 1), (2,)], ids=["reordered", "alone"])
def test_a_renewed_url_naming_another_file_by_its_query_is_not_taken(
    standin: StandIn, archive: Path, renewed_ids: tuple[int, ...]
) -> None:
    """/img?id=1 and /img?id=2 are two images (same path). Renewed after a 403 in another
    order, or with /img?id=2 listed alone (its path is then listed once, but it named
    two files when the run began), image 0's fresh URL is image 1's: it fails, saying
    why, and image 1's bytes are never recorded as image 0 (a later run would trust
    them for good)."""
    renewed_as_another(standin, archive, ["id=1", "id=2"], [f"id={i}" for i in renewed_ids])


def test_a_renewed_url_naming_another_file_by_a_secret_looking_parameter_is_not_taken(
    standin: StandIn, archive: Path
) -> None:
    """/img?key=a and /img?key=b are two images (one url_key: key= looks secret, so it
    is left out of it, not out of download_key). Renewed after a 403 in another order,
    image 0's fresh URL is image 1's: it fails, and image 1's bytes are never recorded
    as image 0, 'ok', exit 0."""
    renewed_as_another(standin, archive, ["key=a", "key=b"], ["key=b", "key=a"])


def test_a_renewed_url_signed_with_a_cdns_own_parameters_is_taken(
    standin: StandIn, archive: Path
) -> None:
    """A CDN that signs with parameters of its own (exp, s: kept by url_key): the renewed
    URL of the only file at its path names that file still, and is taken after a 403."""
    data = os.urandom(3000)
    standin.files["img"] = data
    old = standin.file_url("img", query="exp=1&s=old")
    standin.api_versions[1] = [dict(standin.add_tune(1, [], [old]))]
    standin.add_tune(1, [], [standin.file_url("img", query="exp=2&s=new")])
    standin.faults["img"] = [Status(403)]
    assert run_fetch(standin, archive, "1") == 0
    [image] = check_manifest(archive / "manifests" / "1.json")["assets"]
    assert image["sha256"] == sha256(data)
    assert "s=new" in standin.seen("cdn", "/files/img")[-1].path


@pytest.mark.parametrize("query", ["token={}", "exp=1&s={}"], ids=["token", "cdn"])
def test_a_renewed_url_of_a_file_listed_twice_is_taken(
    standin: StandIn, archive: Path, query: str
) -> None:
    """One photo listed as training and face-swap image (as a reference image two
    prompts share): two entries, one file, one download_key. Re-signed after a 403 with
    a new ?token= (url_key's) or a CDN's own exp/s (the path's), it is renewed: its name
    was shared by no other file (the renewal failed both, exit 1, since 5109686)."""
    data = os.urandom(3000)
    standin.files["ref"] = data
    old, new = (standin.file_url("ref", query=query.format(s)) for s in ("old", "new"))
    standin.api_versions[1] = [dict(standin.add_tune(1, [], [old], face_swap_images=[old]))]
    standin.add_tune(1, [], [new], face_swap_images=[new])  # what the renewal sees
    standin.faults["ref"] = [Status(403)]
    assert run_fetch(standin, archive, "1") == 0
    assets = check_manifest(archive / "manifests" / "1.json")["assets"]
    assert [a["sha256"] for a in assets] == [sha256(data)] * 2


def test_an_api_answer_dripped_a_byte_at_a_time_is_cut_by_the_stall_rule(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune's JSON sent a byte every 20 ms is never silent for --read-timeout: --min-rate
    cuts it as it cuts a file (the API's answers had no stall rule, so an API dripping
    16 MB held a cron run for days); the other tune is archived."""
    standin.add_tune(1, [], [standin.add_file("a", b"a" * 2000)], notes="n" * 2000)
    standin.add_tune(2, [], [standin.add_file("b", b"b" * 2000)])
    standin.api_faults[1] = [Drip(0.02)]
    assert run_fetch(standin, archive, "1", "2", "--retries", "0", "--min-rate", "1M",
                     "--stall-window", "0.3") == 1
    printed = capsys.readouterr()
    assert "tune 1: slower than 1048576 bytes/s" in printed.err
    assert "tune 2 (Tune 2): 1 file" in printed.out


class HeaderDrip:
    """A host that sends a header a byte every 50 ms: never silent for a read timeout of
    0.5 s, done only after 20 s (one line of 400 bytes: no header limit of aiohttp's ends
    it either). It stops, and closes its connections, when told to."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.handlers: list[asyncio.Task[None]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.append(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nX-Padding: ")
            for _ in range(400):
                if self.stop.is_set():
                    return
                await asyncio.sleep(0.05)  # the host's pace, not a test waiting
                writer.write(b"a")
                await writer.drain()
            writer.write(b"\r\nContent-Length: 0\r\n\r\n")
        except ConnectionError:
            return  # the client hung up
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_headers_sent_a_byte_at_a_time_are_cut() -> None:
    """Status and headers must come within the connect and read timeouts together: a host
    dripping its headers is cut with ReadTimeout (the read timeout never fired on it, and
    the stall rule sees bodies only: a run waited on it for as long as it dripped)."""
    host = HeaderDrip()
    server = await asyncio.start_server(host.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    timeout = aiohttp.ClientTimeout(total=None, connect=0.2, sock_read=0.5)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with pytest.raises(ReadTimeout, match=r"no whole status and headers within 0\.7 s"):
                async with get(session, f"http://127.0.0.1:{port}/x?sig=s", {},
                               read_timeout=0.5):
                    pass
    finally:
        host.stop.set()
        server.close()
        await asyncio.gather(*host.handlers)
        await server.wait_closed()


def test_a_refusal_where_the_api_redirected_is_no_rejected_key(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API redirects one tune to another host, which answers 403: the key was never
    sent there, so that tune fails, saying where, and the run goes on (it stopped the run
    with exit 3, "API key rejected")."""
    standin.add_tune(5, [], [standin.add_file("a", b"a" * 2000)])
    standin.add_tune(6, [], [standin.add_file("b", b"b" * 2000)])
    standin.faults["elsewhere"] = [Status(403, body=b"<Error>AccessDenied</Error>")]
    standin.api_faults[5] = [Status(302, {"Location": standin.file_url("elsewhere")})]
    assert run_fetch(standin, archive, "5", "6", "--retries", "0") == 1
    printed = capsys.readouterr()
    assert "tune 5: HTTP 403 from " in printed.err
    assert "API key rejected" not in printed.err
    assert "tune 6 (Tune 6): 1 file" in printed.out
    assert [r.headers.get("Authorization") for r in standin.seen("cdn")] == [None, None]


@pytest.mark.parametrize("url", ["https://h:+1/x", "https://h:port/x", "http://h:99999/x"])
async def test_a_malformed_port_is_a_refused_url_before_any_request(url: str) -> None:
    """get() checks the URL before it reads its origin, which raised ValueError on such a
    port: a dry run probing that file ended with a traceback."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RefusedUrl):
            async with get(session, url, {}):
                pass


def test_a_dry_run_over_a_url_with_a_malformed_port_ends_with_its_lines(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch --dry-run of a tune listing a URL with a malformed port says what it would
    do, as a fetch says what it did, with no traceback."""
    standin.add_tune(5, [], [standin.add_file("a", b"a" * 2000), "https://h:+1/x"])
    run_fetch(standin, archive, "5", "--retries", "0", "--dry-run")
    assert "tune 5 (Tune 5): would download" in capsys.readouterr().out


def test_an_api_redirect_to_a_url_with_a_password_is_refused(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A redirect to the API's own origin with a user:password in it is refused, one line
    for the tune (aiohttp raised ValueError on it beside our Authorization: an "internal
    error"), and for the listing (a traceback)."""
    standin.add_tune(5, [], [standin.add_file("a", b"a" * 2000)])
    standin.add_tune(6, [], [standin.add_file("b", b"b" * 2000)])
    with_password = standin.api_url.replace("http://", "http://u:pw@")
    standin.api_faults[5] = [Status(302, {"Location": with_password + "/tunes/5"})]
    assert run_fetch(standin, archive, "5", "6", "--retries", "0") == 1
    printed = capsys.readouterr()
    assert "tune 5: refused a redirect to a URL with a user name or password" in printed.err
    assert "tune 6 (Tune 6): 1 file" in printed.out
    standin.page_faults = [Status(302, {"Location": with_password + "/tunes"})]
    assert run_fetch(standin, archive, "--all", "--retries", "0") == 1
    assert "refused a redirect to a URL with a user name or password" in capsys.readouterr().err


def test_a_tune_the_api_answers_at_the_deepest_nesting_taken_is_archived_again(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune answer nested as deep as the client takes it (its field 99 lists deep) is
    archived; its manifest, which holds the tune one level down, is read back the next
    run, not set aside as damaged: the tool never refuses a manifest it wrote itself."""
    standin.add_tune(5, [], [standin.add_file("a", b"a" * 2000)], odd=nested(99))
    assert run_fetch(standin, archive, "5") == 0
    assert run_fetch(standin, archive, "5") == 0
    printed = capsys.readouterr()
    assert "nested too deeply" not in printed.err
    assert not (archive / "manifests" / "damaged").exists()


def test_one_listed_tune_nested_too_deeply_never_stops_the_others(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch --all: a tune with a field nested past what the client takes, listed on a
    page beside others, fails alone, said as the API's bad answer; the tunes beside it
    are archived (the page was refused whole: not one tune of the account was)."""
    standin.add_tune(5, [], [standin.add_file("a", b"a" * 2000)], odd=nested(150))
    standin.add_tune(6, [], [standin.add_file("b", b"b" * 2000)])
    assert run_fetch(standin, archive, "--all", "--retries", "0") == 1
    printed = capsys.readouterr()
    assert "tune 6 (Tune 6): 1 file" in printed.out
    assert "tune 5: the API returned JSON nested too deeply" in printed.err


def test_a_prompt_nested_too_deeply_never_stops_the_prompts_of_other_tunes(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt with an unknown field nested past what the client takes, in the listings
    of prompts (its tune's, the account's): the prompts of every tune are archived, its
    own images too (its deep field is never kept), not 'nested too deeply' for all."""
    standin.add_tune(5, [], [standin.add_file("a", b"a" * 2000)])
    standin.add_tune(6, [], [standin.add_file("b", b"b" * 2000)])
    standin.add_prompt(5, 51, "deep", [standin.add_file("p5", b"5" * 2000)], odd=nested(150))
    standin.add_prompt(6, 61, "plain", [standin.add_file("p6", b"6" * 2000)])
    assert run_fetch(standin, archive, "5", "6", "--prompts", "--retries", "0") == 0
    for tune_id in (5, 6):
        kinds = [e["kind"] for e in check_manifest(archive / "manifests" / f"{tune_id}.json")
                 ["assets"] if e["status"] == "ok"]
        assert kinds == ["training_image", "prompt_image"]
