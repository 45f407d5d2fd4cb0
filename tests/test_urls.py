"""urls.py: redaction of credentials, URL keys, origins and the fetchable-URL check."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tune_archiver.commands.nulls import photo_key
from tune_archiver.errors import RefusedUrl
from tune_archiver.urls import (
    REDACTED,
    check_fetchable,
    download_key,
    origin,
    redact,
    redact_json,
    redact_text,
    url_key,
)

SECRET = "s3cr3tvalue"
BASE = "https://bucket.example.com/ckpt/model.safetensors"


@pytest.mark.parametrize(
    "param",
    [
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "X-Goog-Signature",
        "X-Goog-Credential",
        "Signature",
        "sig",
        "token",
        "x-amz-signature",
        "SIG",
        "api_key",
        "API-Key",
        "x-api-key",
    ],
)
def test_redact_replaces_secret_query_values(param: str) -> None:
    """A credential-carrying query parameter keeps its name but loses its value."""
    shown = redact(f"{BASE}?X-Amz-Expires=3600&{param}={SECRET}")
    assert SECRET not in shown
    assert f"{param}={REDACTED}" in shown
    assert shown.startswith(BASE + "?")


@pytest.mark.parametrize(
    "harmless",
    ["X-Amz-Expires=3600", "X-Amz-Date=20260101T000000Z", "X-Amz-SignedHeaders=host", "w=512",
     "X-Amz-Algorithm=AWS4-HMAC-SHA256", "se=2026-11-29T10:00:00Z",
     "response-content-type=image/jpeg", "versionId=3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"],
)
def test_redact_keeps_harmless_params(harmless: str) -> None:
    """Parameters that are not credentials survive redaction unchanged."""
    shown = redact(f"{BASE}?{harmless}&X-Amz-Signature={SECRET}")
    assert harmless in shown
    assert SECRET not in shown


@pytest.mark.parametrize("query", [SECRET, f"w=512&{SECRET}", f"{SECRET}&h=64", f"{SECRET}%3D",
                                   "c2VjcmV0LXRva2VuLTEyMw==", "c2VjcmV0LXRva2VuLTEyMw="])
def test_redact_hides_a_bare_token_in_the_query(query: str) -> None:
    """A query item that is no name=value (?eyJhbGciOi..., a base64 token and its '='
    padding) is a bare token: never shown, as a name no more than as a value."""
    shown = redact(f"{BASE}?{query}")
    assert SECRET not in shown
    assert "c2VjcmV0LXRva2VuLTEy" not in shown
    assert "REDACTED" in shown


@pytest.mark.parametrize("token", ["QxTrVbNmKjHgFdSaPoIuYtRe", "Zk-Qw_Er-TyUi_OpAs-DfGh"])
def test_redact_hides_a_bare_token_of_letters(token: str) -> None:
    """A bare token of letters alone reads as a word, as a name does: with no value it
    is a token still, never shown."""
    for query in (token, f"w=512&{token}", f"{token}="):
        assert token not in redact(f"{BASE}?{query}")


@pytest.mark.parametrize(
    "query",
    [
        f"w=512;X-Amz-Signature={SECRET}",
        f"w=512%3BX-Amz-Signature%3D{SECRET}",
        f"X-Amz-Date=20261129T000000Z;sig={SECRET}&h=64",
        f"format=webp;{SECRET}",
    ],
)
def test_redact_hides_a_signature_after_a_semicolon_in_a_harmless_value(query: str) -> None:
    """Query strings split on ';' too (older servers, some CDNs): a harmless parameter
    whose value holds one (or an '=') is not shown, so a signature cannot hide there."""
    shown = redact(f"{BASE}?{query}")
    assert SECRET not in shown
    assert shown.startswith(f"{BASE}?")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:password@host.example/a", f"https://{REDACTED}@host.example/a"),
        ("https://token@host.example/a", f"https://{REDACTED}@host.example/a"),
        ("https://host.example/a?w=1#frag-" + SECRET, "https://host.example/a?w=1"),
        ("https://host.example/a", "https://host.example/a"),
    ],
)
def test_redact_userinfo_and_fragment(url: str, expected: str) -> None:
    """User info is replaced, a fragment is dropped, a plain URL is left as it is."""
    assert redact(url) == expected


def test_redact_json_redacts_nested_urls_only() -> None:
    """URL strings at any depth are redacted; other strings, numbers and keys are untouched
    (but for the value of a secret's name=value, test_text_urls)."""
    signed = f"{BASE}?X-Amz-Signature={SECRET}"
    data = {
        "id": 5,
        "title": "size=not-a-url " + SECRET,
        "ckpt_urls": [signed],
        "nested": {"deep": [{"url": "http://h.example/x?token=" + SECRET}], "n": None},
    }
    out = redact_json(data)
    assert out["id"] == 5
    assert out["title"] == data["title"]
    assert out["ckpt_urls"] == [f"{BASE}?X-Amz-Signature={REDACTED}"]
    assert out["nested"]["deep"][0]["url"] == f"http://h.example/x?token={REDACTED}"
    assert out["nested"]["n"] is None
    assert data["ckpt_urls"] == [signed]  # the input is not modified


def test_redact_json_redacts_upper_case_scheme() -> None:
    """A URL whose scheme is upper case (still a fetchable http URL) is redacted too."""
    out = redact_json({"ckpt_url": f"HTTPS://bucket.example.com/x?X-Amz-Signature={SECRET}"})
    assert SECRET not in str(out)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"{BASE}?X-Amz-Signature=abc&X-Amz-Expires=60", BASE),
        (f"{BASE}#fragment", BASE),
        ("https://user:pw@bucket.example.com/ckpt/model.safetensors", BASE),
        ("HTTPS://Bucket.Example.COM/ckpt/model.safetensors", BASE),
        ("https://h.example:8443/Path/Case", "https://h.example:8443/Path/Case"),
        (f"{BASE}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=c&X-Amz-Date=20261129T"
         "000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=s", BASE),
        (f"{BASE}?Expires=1&Signature=s&Key-Pair-Id=k", BASE),
        (f"{BASE}?sv=2024&se=2026&sr=b&sp=r&sig=s", BASE),
        (f"{BASE}?id=1&X-Amz-Signature=s", f"{BASE}?id=1"),
        (f"{BASE}?v=2&size=large", f"{BASE}?v=2&size=large"),
    ],
)
def test_url_key_drops_signing_fragment_and_userinfo(url: str, expected: str) -> None:
    """The key keeps scheme, host, port, path and query less what signing sets anew."""
    assert url_key(url) == expected


def test_urls_that_differ_only_in_their_query_have_different_keys() -> None:
    """`?id=1` and `?id=2` name two files, however they are signed."""
    one = url_key("https://cdn.example/img?id=1&X-Amz-Signature=a&X-Amz-Date=1")
    two = url_key("https://cdn.example/img?id=2&X-Amz-Signature=a&X-Amz-Date=1")
    assert one != two
    assert one == url_key("https://cdn.example/img?id=1&X-Amz-Signature=b&X-Amz-Date=2")


@pytest.mark.parametrize(
    ("signed", "again"),
    [
        (f"{BASE}?X-Amz-Algorithm=A&X-Amz-Credential=c1&X-Amz-Date=1&X-Amz-Expires=60"
         "&X-Amz-SignedHeaders=host&X-Amz-Security-Token=t1&X-Amz-Signature=s1",
         f"{BASE}?X-Amz-Algorithm=A&X-Amz-Credential=c2&X-Amz-Date=2&X-Amz-Expires=60"
         "&X-Amz-SignedHeaders=host&X-Amz-Security-Token=t2&X-Amz-Signature=s2"),
        (f"{BASE}?Expires=1&Signature=s1&Key-Pair-Id=k&Policy=p1",
         f"{BASE}?Expires=2&Signature=s2&Key-Pair-Id=k&Policy=p2"),
        (f"{BASE}?sv=1&se=1&sr=b&sp=r&sig=s1", f"{BASE}?sv=1&se=2&sr=b&sp=r&sig=s2"),
        (f"{BASE}?GoogleAccessId=g&Expires=1&Signature=s1",
         f"{BASE}?GoogleAccessId=g&Expires=2&Signature=s2"),
        (f"{BASE}?hdnts=exp%3D1~acl%3D%2F*~hmac%3Da", f"{BASE}?hdnts=exp%3D2~acl%3D%2F*~hmac%3Db"),
        (f"{BASE}?hdnea=exp%3D1~hmac%3Da", f"{BASE}?hdnea=exp%3D2~hmac%3Db"),
        (f"{BASE}?__token__=exp%3D1~hmac%3Da", f"{BASE}?__token__=exp%3D2~hmac%3Db"),
    ],
    ids=["aws-sigv4", "cloudfront", "azure-sas", "gcs-v2", "akamai-hdnts", "akamai-hdnea",
         "akamai-token"],
)
def test_a_run_shares_one_download_of_a_file_signed_twice(signed: str, again: str) -> None:
    """Two signings of one URL are one download of the run, one file across runs."""
    assert download_key(signed) == download_key(again) == BASE
    assert url_key(signed) == url_key(again)


def test_a_secret_looking_parameter_tells_two_downloads_apart() -> None:
    """`?key=a` and `?key=b`, `?author=a` and `?author=b` share a url_key (their values
    are never stored) but may be two files: never one download of the run."""
    for name in ("key", "author", "token", "access_token"):
        one, two = f"{BASE}?{name}=a&X-Amz-Signature=s", f"{BASE}?{name}=b&X-Amz-Signature=s"
        assert url_key(one) == url_key(two)
        assert download_key(one) != download_key(two)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://H.example/a", ("https", "h.example", 443)),
        ("http://h.example/a", ("http", "h.example", 80)),
        ("https://h.example:443/a", ("https", "h.example", 443)),
        ("http://h.example:8080/a", ("http", "h.example", 8080)),
        ("https://user:pw@h.example/a", ("https", "h.example", 443)),
    ],
)
def test_origin_fills_in_default_ports(url: str, expected: tuple[str, str, int]) -> None:
    """An explicit default port and an omitted one give the same origin."""
    assert origin(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://files.example/a",
        "data:text/plain,hello",
        "javascript:alert(1)",
        "//host.example/no-scheme",
        "http:///no-host",
        "https://:443/no-host",
        "http://host.example:abc/",
        "http://host.example:99999/",
        "http://cdn..example/a",  # no name has an empty label, nor one past 63 characters:
        "https://" + "a" * 64 + ".example/a",  # aiohttp's lookup raised UnicodeError
        "http://a\u3002\u3002b/a",  # the same, with ideographic full stops
    ],
)
def test_check_fetchable_refuses(url: str) -> None:
    """Non-http(s) schemes, missing hosts, hosts no name may be and bad ports raise
    RefusedUrl."""
    with pytest.raises(RefusedUrl):
        check_fetchable(url)


def test_check_fetchable_refusal_is_redacted() -> None:
    """The refusal message does not repeat the URL's signature."""
    with pytest.raises(RefusedUrl) as info:
        check_fetchable(f"ftp://files.example/a?Signature={SECRET}")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://host.example/a",
        "https://host.example/a?X-Amz-Signature=x",
        "HTTPS://HOST.EXAMPLE:8443/a",
        "http://127.0.0.1:8080/tunes/1",
        "https://[::1]/a",
        "https://bücher.example/a",
        "http://host.example./a",
        # IDNA 2008 (yarl's, which the lookup is given) takes it; Python's IDNA 2003
        # codec refused it (its bidi rule 3), a valid name said a malformed URL
        "https://\u0627\u0644\u0639\u0631\u0628\u064a\u0629123.example/a",
    ],
)
def test_check_fetchable_accepts_http_and_https(url: str) -> None:
    """Absolute http and https URLs with a host pass."""
    check_fetchable(url)


@pytest.mark.parametrize("name", ["s", "hmac", "verify", "hdnts", "api_key", "id", "Policy"])
def test_every_query_value_but_harmless_ones_is_redacted(name: str) -> None:
    """A parameter in no list of secrets is still redacted; signing dates and sizes stay."""
    shown = redact(f"https://cdn.example/a?{name}={SECRET}&X-Amz-Date=20261129T000000Z&w=64")
    assert SECRET not in shown
    assert shown.endswith(f"{name}=REDACTED&X-Amz-Date=20261129T000000Z&w=64")


def test_urls_inside_text_and_protocol_relative_ones_are_redacted() -> None:
    """A tune's free text holding URLs, absolute or //host/..., is stored redacted."""
    text = f"see https://a.example/x?k={SECRET} or //b.example/y?hdnts={SECRET} now"
    out = redact_json({"notes": text, "list": [f"//c.example/z?s={SECRET}"]})
    assert SECRET not in json.dumps(out)
    assert out["notes"].startswith("see https://a.example/x?k=REDACTED or //b.example/y")


@pytest.mark.parametrize(
    "text",
    [
        f"could not read https://h.example/jane's.jpg?X-Amz-Signature={SECRET}",
        f"'https://h.example/jane's.jpg?X-Amz-Signature={SECRET}' expired",
        f'<a href="https://h.example/a">x</a><img src="https://h.example/b?sig={SECRET}">',
        f'{{"a":"https://h.example/a","b":"https://h.example/b?sig={SECRET}"}}',
        f"https://h.example/a<b>?sig={SECRET}",
        f"https://h.example/a`b?sig={SECRET}",
        f"Location:https://h.example/a?sig={SECRET}",
        f"s3://bucket/key?X-Amz-Signature={SECRET}",
    ],
)
def test_a_url_in_text_is_redacted_to_the_next_whitespace(text: str) -> None:
    """Quotes, brackets and backquotes may sit inside a URL as a server sent it
    ("jane's.jpg"): a URL in free text runs to the next whitespace, so no part of its
    query is left unredacted."""
    assert SECRET not in redact_text(text)


def test_closing_punctuation_after_a_url_in_text_is_kept() -> None:
    """The quote, bracket or full stop that closes a URL in text stays in the text."""
    text = f"'https://h.example/jane's.jpg?sig={SECRET}' (see https://h.example/x?w=1)."
    assert redact_text(text) == ("'https://h.example/jane's.jpg?sig=REDACTED' "
                                 "(see https://h.example/x?w=1).")


def test_a_url_run_into_another_url_has_its_password_redacted() -> None:
    """A URL inside another's path (JSON without spaces) loses its user:password too."""
    text = f'{{"a":"https://h.example/a","b":"https://me:{SECRET}@o.example/b"}}'
    assert SECRET not in redact_text(text)


def test_a_json_string_that_is_a_url_with_a_space_is_redacted_whole() -> None:
    """A URL string holding a space ("my photo.jpg", never fetched) is still one URL: its
    query is redacted, not shown as the text after a URL."""
    out = redact_json({"orig_images": [f"https://h.example/my photo.jpg?sig={SECRET}"]})
    assert SECRET not in json.dumps(out)


@pytest.mark.parametrize("url", [
    f"https://cdn.example/exp=1700000000~acl=/*~hmac={SECRET}/x.bin",
    f"https://cdn.example/hdnts=exp=1700000000~acl=/*~hmac={SECRET}/x.bin",
    f"https://cdn.example/a/x.bin;jsessionid={SECRET}",
    f"https://cdn.example/a;JSESSIONID={SECRET}/x.bin?w=64",
    f"https://cdn.example/x.bin;phpsessid={SECRET}",
])
def test_a_token_in_a_urls_path_is_redacted(url: str) -> None:
    """Akamai's token in a path (its fields joined by `~`, the first one harmless) and a
    servlet's `;jsessionid=` were shown and stored whole: the net for name=value in a
    path ran the first field's value on over the HMAC, and knew no session's name."""
    assert SECRET not in redact(url)
    assert SECRET not in redact_text(f"could not read {url}: HTTP 403")


@pytest.mark.parametrize("digest", [
    "Ab3dE_fG9hIjK-lMnO1pQr",  # nginx secure_link's md5, in base64url
    "uPHIFQ4R8ZkL-f3fg1fSIg",
    "q1W2e3R4t5Y6u7I8o9P+a0S1d2F3g4H5j6K7l8Z+x0C",  # an HMAC in base64, '+' decoded
    "Ab3dEfG9h/IjKlMnO1pQr/",  # an md5 in base64, its runs cut by '/'
    "q1W2e3R4t5Y6u7/I8o9P+a0S1d2F3g4/H5j6K7l8Z+x0C",
])
def test_a_harmless_parameter_holding_a_base64_hash_is_redacted(digest: str) -> None:
    """11d1832 redacted `?st=<md5>` and `?h=<hmac>` when a run of 20 letters and digits
    showed a hash, but nginx's secure_link writes its md5 in base64url, and about half
    of those hold a '-' or '_' that cut every run short: shown and stored whole. '-',
    '_' and '+' count in the run, and '/' in one holding a digit (a quarter of the
    md5s in base64 were shown so); a date, a size, a MIME type still show."""
    url = (f"https://h.example/v.mp4?st={quote(digest)}&h={quote(digest)}&e=1"
           "&se=2026-12-01T01:00:00.0000000Z&response-content-type=application/octet-stream")
    assert digest not in redact(url)
    assert digest not in redact_text(f"could not read {url}: HTTP 403")
    assert redact(url) == ("https://h.example/v.mp4?st=REDACTED&h=REDACTED&e=REDACTED"
                           "&se=2026-12-01T01:00:00.0000000Z"
                           "&response-content-type=application/octet-stream")


@pytest.mark.parametrize("url", [
    f"https://cdn.example/s;jsessionid={SECRET}/{{}}.jpg?w=64",
    f"https://cdn.example/s;phpsessid={SECRET};v=2/{{}}.jpg",
    f"https://cdn.example/token={SECRET}/{{}}.jpg",
])
def test_a_token_in_a_urls_path_hides_its_segment_alone(url: str) -> None:
    """`/s;jsessionid=X/b.jpg` was shown and stored as `/s;jsessionid=REDACTED`, the
    file's name gone: two photos of one session read as one stored URL (and one photo
    key: nulls counted wrong), and export named a file whose type its bytes do not tell
    `.bin`. The value ends with its segment, in a URL and in text."""
    one, two = url.format("one"), url.format("two")
    assert SECRET not in redact(one)
    assert redact(one).replace(REDACTED, SECRET) == one
    assert redact_text(f"could not read {one}: HTTP 403") == (
        f"could not read {redact(one)}: HTTP 403")
    assert photo_key(one) != photo_key(two)


@pytest.mark.parametrize("url", [
    "https://cdn.example/s;jsessionid={}/a.jpg",
    "https://cdn.example/a.jpg;PHPSESSID={}?w=64",
    "https://cdn.example/f/exp={}~acl=/*~hmac={}0a/a.jpg",
    "https://cdn.example/f/hdnts=st=1~exp={}~acl=/f/*~hmac={}0a/a.jpg",
    "https://z.b-cdn.net/bcdn_token=HS256-{}a0&expires={}&token_path=%2Ff%2F/f/a.jpg",
])
def test_a_token_or_session_in_a_urls_path_names_no_file(url: str) -> None:
    """A session (`;jsessionid=`) or Akamai's (or Bunny's) token in a path, new at each
    listing, was part of url_key: each listing another file. Both keys drop it, from
    the URL as listed and as stored (redacted); the file's own name still tells two
    apart."""
    one, again = url.format(1, 1), url.format(2, 2)
    assert url_key(one) == url_key(again) == url_key(redact(one))
    assert download_key(one) == download_key(again)
    assert url_key(one) != url_key(one.replace("/a.jpg", "/b.jpg"))
    assert "/a.jpg" in url_key(one)
    assert "hmac" not in url_key(one)


@pytest.mark.parametrize("before", ["/w=512", "/v=2;q=80", "/tunes/id=5"])
def test_a_token_in_a_urls_path_takes_no_segment_before_it(before: str) -> None:
    """Akamai's token in a path was dropped from where the first name=value of any
    segment before it started, its value run over every '/': `/w=512/exp=...~hmac=...`
    and `/w=1024/exp=...` read as one file, one download of the run shared by both (one
    rendition's bytes archived under the other) and the other reused as archived."""
    url = f"https://cdn.example/img{before}/exp={{}}~acl=/*~hmac={{}}0a/a.jpg"
    other = url.replace(before, before.replace("=", "=9"))
    assert download_key(url.format(1, 1)) != download_key(other.format(1, 1))
    assert url_key(url.format(1, 1)) != url_key(other.format(2, 2))
    assert url_key(url.format(1, 1)) == url_key(url.format(2, 2)) == url_key(
        redact(url.format(1, 1)))
    assert f"/img{before}/a.jpg" in url_key(url.format(1, 1))


def test_a_harmless_parameter_holding_a_hash_is_redacted() -> None:
    """`st` (Azure's start time) and `h` (a height) are shown as harmless, but nginx's
    secure_link and some CDNs sign with `?st=<md5>` or `?h=<hmac>`: a value with a run
    of 20 letters and digits, which no date or size has, is redacted; dates stay."""
    digest = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    shown = redact(f"https://h.example/x?st={digest}&h={digest}&e=1&w=512"
                   "&X-Amz-Date=20261129T000000Z&sv=2024-11-04&response-content-type=image/jpeg")
    assert digest not in shown
    assert shown == ("https://h.example/x?st=REDACTED&h=REDACTED&e=REDACTED&w=512"
                     "&X-Amz-Date=20261129T000000Z&sv=2024-11-04"
                     "&response-content-type=image/jpeg")
