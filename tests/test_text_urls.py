"""URLs in free text (a server's error, a title, a prompt): redacted wherever they
start, and text holding no URL left exactly as it is, on disk and on every line."""

from __future__ import annotations

import json
import subprocess
import sys
from html import escape
from pathlib import Path

import pytest

from tests.archive_helpers import add_tune, cli, manifest_of
from tests.helpers import run_fetch
from tests.standin import StandIn, Status
from tune_archiver.gallery import tune_page
from tune_archiver.manifest import Entry, Manifest
from tune_archiver.urls import redact, redact_json, redact_text


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


# Ordinary text holding a "//" that starts no URL: a separator in a title or a prompt.
TITLE = "Portrait // studio light"
PROMPT = "photo of sks man, 35mm // cinematic"


@pytest.mark.parametrize("text", [TITLE, PROMPT, "A/B test // v2", "a (//) b", "note: //", "//",
                                  "Portrait /// studio", "moody //#noir look",
                                  "cannot open C://Users/jane", "and//or", "Skills: Java//C#, Go",
                                  "red//blue#2 edit", "tags //#noir?yes", "a (//#x@y) b",
                                  "Portrait //#blackandwhitephotographyinspiration look",
                                  "see the FAQ //#Q&A here", "portrait, width=512 height=768",
                                  "art by author=Greg Rutkowski, authentic=yes",
                                  "a=b, c%3Dd"])
def test_redact_text_keeps_ordinary_text_with_a_lone_double_slash(text: str) -> None:
    """A "//" with no host after it starts no URL: it stays (it was once taken for an
    empty URL, and redacted away)."""
    assert redact_text(text) == text
    assert redact_json({"title": text}) == {"title": text}


def test_a_title_and_a_prompt_with_a_double_slash_are_archived_and_listed_as_they_are(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The manifest keeps the tune as the API returned it (URL signatures redacted) and
    the prompt's text: a " // " in them stays, on disk and in `list`."""
    add_tune(standin, 1, title=TITLE)
    image = standin.add_file("gen-1.jpg", b"\xff\xd8generated")
    standin.add_prompt(1, 101, PROMPT, [image])
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    document = manifest_of(archive, 1)
    assert document["tune"]["title"] == TITLE
    [generated] = [e for e in document["assets"] if e["kind"] == "prompt_image"]
    assert generated["prompt_text"] == PROMPT
    listed = cli(capsys, "list", "--archive", str(archive))
    assert TITLE in listed.out


SECRET = "deadbeefSECRETSIG"
SIGNED = ("https://sdbooth2-production.s3.amazonaws.com/x/model?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          f"&X-Amz-Signature={SECRET}")


@pytest.mark.parametrize("text", [
    f"access denied ...{SIGNED}",  # a server's text cut with "..."
    f"try these:\n1.{SIGNED}",  # a numbered list
    f"retrying --{SIGNED}",
    f"at 10:00:00.{SIGNED}",
    f"(.{SIGNED})",
])
def test_a_url_right_after_punctuation_is_still_redacted(text: str) -> None:
    """A URL glued to punctuation (" ...https://", "1.https://", "--https://") is a URL
    still: its signature is redacted."""
    assert SECRET not in redact_text(text)


def test_an_api_error_with_a_presigned_url_after_an_ellipsis_is_redacted_on_every_line(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API's error text "image rejected ...https://...?X-Amz-Signature=..." reaches the
    tune's error line and --json with the signature redacted."""
    body = json.dumps({"error": f"image rejected ...{SIGNED}"}).encode()
    standin.api_faults[8] = [Status(422, {"Content-Type": "application/json"}, body)]
    assert run_fetch(standin, archive, "8", "--retries", "0") == 1
    printed = capsys.readouterr()
    assert "HTTP 422" in printed.err
    assert SECRET not in printed.out + printed.err
    standin.api_faults[8] = [Status(422, {"Content-Type": "application/json"}, body)]
    assert run_fetch(standin, archive, "8", "--retries", "0", "--json") == 1
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err


@pytest.mark.parametrize("unit", ["a.", "a-", "a+", " //", "a=", "%3D", 'a="'])
def test_a_megabyte_of_hostile_text_is_redacted_without_hanging(unit: str) -> None:
    """1 MB of "a.a.a..." (a title, a prompt, an error body: the API may send 16 MB) is
    gone through once, not scanned again from every letter: it comes back whole, in
    a second or so, where a scan from each place would take hours."""
    code = ("from tune_archiver.urls import redact, redact_json, redact_text\n"
            f"text = {unit!r} * 500_000\n"
            "assert redact_text(text) == text and redact_json([text]) == [text]\n")
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=repo, timeout=60, check=True)


BARE = "QxTrVbNmKjHgFdSaPoIuYtRe"  # a token of letters alone: as much a word as a name is


def test_a_bare_token_of_letters_never_reaches_the_manifest(
    standin: StandIn, archive: Path
) -> None:
    """An asset URL ending in a bare token (?QxTrVb..., no '=') is stored redacted, in the
    asset's entry and in the manifest's copy of the tune."""
    url = standin.add_file("model.safetensors", b"weights" * 500) + f"?{BARE}"
    standin.add_tune(1, [url], [])
    assert run_fetch(standin, archive, "1") == 0
    assert BARE not in (archive / "manifests" / "1.json").read_text()


SIG = "SECRETSIGNATURE0123"


@pytest.mark.parametrize("text", [
    "a" * 40 + f"https://host/x?X-Amz-Signature={SIG}",  # glued to a long run of letters
    "ID1234567890123456789012345678901234" + f"https://host/x?X-Amz-Signature={SIG}",
    f"comexampleapplongdeeplinkschemename://host/cb?token={SIG}",  # a scheme over 32
    "a" * 40 + f".https://host/?X-Amz-Signature={SIG}",
    f"see //#https://host/x?X-Amz-Signature={SIG}",  # a URL inside a hostless one
    f"see ///https://user:{SIG}@host/x",
    f"see //#access_token={SIG}",  # a token in a fragment
    f"https://host/app#access_token={SIG}&state=x",
    f"see https://a.example/#https://u:{SIG}@b.io",  # a URL in a fragment
    f"see https://a.example/#//u:{SIG}@b",
    f"see https://a.example/#//x/?{SIG}",
    f"see https:/host/x?X-Amz-Signature={SIG}",  # one slash: no URL seen, a secret's name
    f"{{\"url\": \"https:\\/\\/host\\/x?X-Amz-Credential=AK\\/{SIG}\"}}",  # JSON's \/
    f"see https://host/x%3FX-Amz-Signature%3D{SIG}%26a%3D1",  # a query encoded in the path
    "a" * 80 + f"token={SIG}",
])
def test_a_secret_glued_or_nested_in_text_is_never_shown(text: str) -> None:
    """A URL glued to a run too long to be a scheme, with a scheme over 32 characters,
    or inside what looks like a hostless URL: its secret is redacted still."""
    assert SIG not in redact_text(text)
    assert SIG not in redact_text(text, prompt=True)
    assert SIG not in str(redact_json({"title": text}))


def test_a_query_encoded_in_a_urls_path_is_redacted() -> None:
    """A URL whose path holds another's query (`/x%3FX-Amz-Signature%3D...`): the value
    of a secret's name is redacted in the URL itself, as stored in a manifest."""
    shown = redact(f"https://host/x%3FX-Amz-Signature%3D{SIG}%26w%3D512?w=512")
    assert SIG not in shown
    assert shown.startswith("https://host/x%3FX-Amz-Signature%3DREDACTED%26w%3D512")


@pytest.mark.parametrize("url", [
    f"https://host/x%3Fsig%3D{SIG}?w=512",  # the name just after an encoded '?'
    f"https://host/x%3Fw%3D512%26sig%3D{SIG}",  # after an encoded '&'
    f"https://host/x%3fkey%3d{SIG}%26w%3d512",  # in lower case
])
def test_a_short_secret_name_after_an_encoded_delimiter_is_redacted(url: str) -> None:
    """`sig` or `key` right after `%3F` or `%26` is a secret's name still: its escape's
    hex digits glued to it ("3Fsig", "26sig") once hid it, in a URL and in text."""
    assert SIG not in redact(url)
    assert SIG not in redact_text(f"see {url} now")
    assert SIG not in str(redact_json({"title": url}))


@pytest.mark.parametrize("url", [
    f"https://host/go/https%253A%252F%252Fcdn%252Fx%253Fsig%253D{SIG}",  # encoded twice
    f"https://host/go/x%253Fw%253D512%2526X-Amz-Signature%253D{SIG}%2526a%253D1",
])
def test_a_secret_of_a_query_encoded_twice_is_redacted(url: str) -> None:
    """A URL in the path of a URL in a path has its query encoded twice (`%253F`,
    `%2526`, `%253D`): its secret is a secret's name=value still, as once encoded."""
    assert SIG not in redact(url)
    assert SIG not in redact_text(f"see {url} now")
    assert SIG not in str(redact_json({"title": url}))
    assert "%253DREDACTED" in redact(url)


@pytest.mark.parametrize("text", [
    f'OAuth oauth_consumer_key="ck", oauth_signature="{SIG}%3D"',  # an OAuth 1 header
    f"upstream refused X-Amz-Signature='{SIG}'",
    f'sig="{SIG}" expired',
])
def test_a_quoted_secret_value_is_redacted(text: str) -> None:
    """name="value" is a name=value: a secret's value in quotes is redacted (only an
    unquoted one was), and its quotes stay."""
    assert SIG not in redact_text(text)
    assert SIG not in str(redact_json({"error": text}))
    assert '="REDACTED"' in redact_text(text) or "='REDACTED'" in redact_text(text)


def test_a_secret_value_in_json_escaped_quotes_is_redacted() -> None:
    """An OAuth header inside a JSON body that an error quotes has its quotes escaped
    (oauth_signature=\\"...\\"): its value is a quoted one all the same."""
    text = "upstream said " + json.dumps({"authorization": f'OAuth oauth_signature="{SIG}"'})
    assert SIG not in redact_text(text)
    assert SIG not in str(redact_json({"error": text}))
    assert 'oauth_signature=\\"REDACTED\\"' in redact_text(text)


def test_an_api_error_quoting_a_json_escaped_presigned_url_is_redacted_on_every_line(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API's error quoting an upstream JSON body, each '/' escaped as '\\/',
    is no URL to find: the signature's name gives it away, on the lines and in --json."""
    upstream = json.dumps({"url": f"https://s3.example/x?X-Amz-Signature={SIG}"})
    body = json.dumps({"error": f"upstream said {upstream.replace('/', chr(92) + '/')}"})
    for extra in ((), ("--json",)):
        standin.api_faults[8] = [Status(422, {"Content-Type": "application/json"},
                                        body.encode())]
        assert run_fetch(standin, archive, "8", "--retries", "0", *extra) == 1
        printed = capsys.readouterr()
        assert "upstream said" in printed.out + printed.err
        assert SIG not in printed.out + printed.err


def test_a_title_glued_to_a_presigned_url_is_stored_redacted(
    standin: StandIn, archive: Path
) -> None:
    """The same end to end: the manifest's copy of the title holds no signature."""
    title = "Backupofmyportraitsessionfromlastweek" + f"https://s3.example/k?X-Amz-Signature={SIG}"
    add_tune(standin, 1, title=title)
    assert run_fetch(standin, archive, "1") == 0
    assert SIG not in (archive / "manifests" / "1.json").read_text()


@pytest.mark.parametrize(("text", "shown"), [
    ("failed (https://h.io/x.png?token=s3cr3t)", "failed (https://h.io/x.png?token=REDACTED)"),
    ("see [https://h.io/x?token=s3cr3t], next", "see [https://h.io/x?token=REDACTED], next"),
    ("at https://h.io/x?token=s3cr3t.", "at https://h.io/x?token=REDACTED."),
    ("<https://h.io/x?token=s3cr3t>", "<https://h.io/x?token=REDACTED>"),
    ("'https://h.io/x?token=s3cr3t', then", "'https://h.io/x?token=REDACTED', then"),
    ('"https://h.io/x?token=s3cr3t"', '"https://h.io/x?token=REDACTED"'),
    ("(https://h.io/x?token=s3%29cr%2C3t%5D)", "(https://h.io/x?token=REDACTED)"),
    ("bad key (token=s3cr3t).", "bad key (token=REDACTED)."),
    ("bad key (token=s3)cr3t%29).", "bad key (token=REDACTED)."),
    ("(https:/h.io/?sig=s3cr3t)", "(https:/h.io/?sig=REDACTED)"),
])
def test_closing_punctuation_after_a_redacted_value_is_kept(text: str, shown: str) -> None:
    """The `)`, `]`, `>` or sentence-ending `.` that closes the text around a secret is
    the text's, not the secret's: it stays after REDACTED (the net for name=value once
    took it into the value, and an error line lost its closing bracket); a value holding
    such characters, percent-encoded or inside it, is still hidden whole."""
    assert redact_text(text) == shown


@pytest.mark.parametrize(("text", "shown"), [
    ('password="hunter2!" was refused', 'password="REDACTED" was refused'),
    ("token='s3cr3t.'", "token='REDACTED'"),
    ('OAuth oauth_signature="tnnArxj06cWHq44gCs1OSKk%2FjLY%3D)"',
     'OAuth oauth_signature="REDACTED"'),
    ('{"h": "token=\\"s3cr3t?\\""}', '{"h": "token=\\"REDACTED\\""}'),
])
def test_a_quoted_value_ending_in_punctuation_is_hidden_whole(text: str, shown: str) -> None:
    """A quoted value (as an OAuth or Digest header writes it) runs to its quote: the
    '!', '.' or ')' before the quote is the secret's last character, not the text's
    closing punctuation, and was shown after REDACTED ('password="REDACTED!"')."""
    assert redact_text(text) == shown


WORDS = "a portrait, key=light, rim light, signature=bold, token=abc, sig=123, session=night"


@pytest.mark.parametrize("text", [
    WORDS, "key=light-and-shadow-contrast", "policy=no text, sign=neon, verify=face",
])
def test_a_prompts_words_that_read_as_secret_names_are_archived_as_written(
    standin: StandIn, archive: Path, text: str
) -> None:
    """`key=light` in a prompt is the user's words, the record to retrain from: the
    manifest keeps it, and the gallery shows it; a log line or an error still hides
    every value of a secret's name (no URL may be seen around it there)."""
    add_tune(standin, 1)
    standin.add_prompt(1, 101, text, [standin.add_file("gen-1.jpg", b"\xff\xd8generated")])
    assert run_fetch(standin, archive, "1", "--prompts") == 0
    [generated] = [e for e in manifest_of(archive, 1)["assets"] if e["kind"] == "prompt_image"]
    assert generated["prompt_text"] == text
    assert redact_text(text) != text
    entry = Entry("prompt_image", 0, "https://x/p", "ok", "ab" * 32, 10, None, "image/png",
                  prompt_id=101, prompt_text=text)
    page = tune_page(Manifest(1, "2026-11-29T10:00:00Z", False, {}, (entry,)), lambda _: "f")
    assert escape(text) in page


KEY_PASTED = "sk-proj-4fQ9xR2mT7vB1nK8pL3w"


@pytest.mark.parametrize("text", [
    f"a photo, api_key={KEY_PASTED}", f"token={SIG} portrait", "key=QxTrVbNmKjHgFdSaPoIu",
    f"see https:/host/x?sig=abc&X-Amz-Signature={SIG}", "see /x%3Fsig%3Dabc", "x;sig=abc",
    "see /x%253Fsig=abc",
    f"a photo eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.{SIG}", f"https://h/x.jpg?sig={SIG}",
])
def test_a_credential_in_a_prompt_is_redacted_still(text: str) -> None:
    """A prompt keeps its words, not a credential: an API key pasted, a signature, a
    token of letters, a JWT, a URL's query seen by its '?', ';' or an escape."""
    kept = redact_text(text, prompt=True)
    assert "REDACTED" in kept
    assert [part for part in (KEY_PASTED, SIG, "QxTrVbNmKjHgFdSaPoIu", "sig=abc",
                              "sig%3Dabc", "eyJzdWIi") if part in kept] == []


@pytest.mark.parametrize(("text", "secret"), [
    ("a photo, sig=mN7q%2BxYz%2FaB3c%3D", "mN7q"),  # a SAS signature, percent-escaped
    ("sig=plainvalue&se=2026-12-01&sp=r", "plainvalue"),  # a SAS query, its ? cut off
    ("portrait, password=hunter2", "hunter2"), ("secret=wJalrXUt.nFEMI.K7MDENG", "wJalrXUt"),
    ("x-amz-credential=AKIA.EXAMPLE", "AKIA"),
])
def test_a_credential_shaped_as_words_in_a_prompt_is_redacted_still(
    text: str, secret: str
) -> None:
    """A prompt kept a signature percent-escaped (its runs cut short by each escape), a
    query's first pair (`sig=...&se=...`, no '?' before it) and a password short or
    dotted: each read as words, and was archived in prompt_text and shown in the gallery.
    Words stay words (key=light, token=abc)."""
    assert secret not in redact_text(text, prompt=True)
    assert secret not in redact_text(text)
    assert redact_text(WORDS, prompt=True) == WORDS


def test_a_user_and_password_before_a_host_without_a_scheme_is_never_shown(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tune listing a file as alice:s3cret@cdn.example/x.jpg (no "//"): redact read
    alice as its scheme and s3cret@... as its path, so the password went whole into the
    error line ('refused alice URL ... alice:s3cret@...'), the manifest's url and its
    error. It is redacted as //alice:s3cret@... is; the file failed, the others archived."""
    standin.add_tune(1, [], [standin.add_file("a", b"a" * 2000),
                             "alice:s3cret@cdn.example/x.jpg?X-Amz-Signature=abc"])
    assert run_fetch(standin, archive, "1") == 1
    err = capsys.readouterr().err
    assert ("training_image 1: refused no scheme URL (only http and https): "
            "REDACTED@cdn.example/x.jpg?X-Amz-Signature=REDACTED") in err, err
    manifest = manifest_of(archive, 1)
    for shown in (err, json.dumps(manifest)):
        assert "s3cret" not in shown
        assert "alice" not in shown
    assert [e["status"] for e in manifest["assets"]] == ["ok", "failed"]
    assert redact("alice:s3cret@cdn.example:8080/x") == "REDACTED@cdn.example:8080/x"
    assert redact("cdn.example/x?email=a@b.c") == "cdn.example/x?email=REDACTED"
    # In free text (an error's, a title) as well; a prompt's words and ordinary text kept.
    assert (redact_text("proxy alice:s3cret@proxy.corp:3128 refused")
            == "proxy REDACTED@proxy.corp:3128 refused")
    for kept in ("16:9@2x.png, at 10:30@home", "write to: me@example.com"):
        assert redact_text(kept) == kept
    assert redact_text("a:b@c.d", prompt=True) == "a:b@c.d"


def test_a_password_holding_an_at_sign_before_a_host_without_a_scheme_is_never_shown(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As above, the password with an '@' of its own, unencoded (alice:p@ss@cdn...., as
    users type it and curl takes it, by the last '@'): the bare rule stopped at the
    first '@', found no host after it ('ss@'), and left the line whole, so the tune
    record in the manifest (every URL in it redacted) kept alice:p@ss@... as the API
    listed it, and an error's text quoting a proxy so was shown whole."""
    standin.add_tune(1, [], [standin.add_file("a", b"a" * 2000), "alice:p@ss@cdn.example/x.jpg"])
    assert run_fetch(standin, archive, "1") == 1
    err = capsys.readouterr().err
    for shown in (err, json.dumps(manifest_of(archive, 1))):
        assert "p@ss" not in shown, shown
        assert "alice" not in shown, shown
    assert (redact_text("proxy alice:p@ss@proxy.corp:3128 refused")
            == "proxy REDACTED@proxy.corp:3128 refused")
    for kept in ("16:9@2x.png, at 10:30@home", "write to: me@example.com"):
        assert redact_text(kept) == kept


def test_a_user_and_password_after_a_scheme_with_one_slash_is_never_stored(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file URL listed as http:/alice:s3cret@cdn.example/x.jpg (one '/' of two): no
    host, its user:password read as the path's, which redact kept: the manifest's url
    held http:///alice:s3cret@... at rest (its error line, said through the bare rule,
    did not). A hostless URL's first segment before an '@' is REDACTED as a user's."""
    standin.add_tune(1, [], [standin.add_file("a", b"a" * 2000),
                             "http:/alice:s3cret@cdn.example/x.jpg"])
    assert run_fetch(standin, archive, "1") == 1
    err = capsys.readouterr().err
    for shown in (err, json.dumps(manifest_of(archive, 1))):
        assert "s3cret" not in shown, shown
    assert redact("http:/alice:s3cret@cdn.example/x") == "http:///REDACTED@cdn.example/x"
    assert redact("/photos/me@2x.png") == "/photos/me@2x.png"
