"""Which secret-named name=value in a prompt's own words holds a credential.

A prompt is the user's text, archived to retrain from: `key=light`, `signature=bold`,
`sig=123` there are words, not secrets. The net of urls.redact_text (any value of a
secret's name) stays for what is shown and logged; a prompt keeps such a value unless
it sits in a query (after `?`, `&`, `;`, `/`, `~`, `#` or an escape of one: a URL no
rule saw around it) or looks like a credential (an API key pasted, a signature).
"""

from __future__ import annotations

import re

# Words that hold a secret's part ("auth") but name none, as a title or a prompt writes
# them ("by author=Greg Rutkowski"): the net leaves their values, in any text. (In a
# URL's query every value but a harmless one is redacted anyway.)
ORDINARY_NAMES = frozenset({"author", "authors", "authored", "authorship", "authority",
                            "authentic", "authenticity"})
# What a name=value written as a query's is found after, at its name's start.
_IN_A_QUERY = re.compile(r"(?:[?&;/~#]|%(?:25)?[0-9A-Fa-f]{2})\Z")
# A credential's shape: a run of 16 letters, digits, '_', '-', '+' and '/' holding a
# digit (a hash, a key, a signature), or of 20 without '_' and '-' (a token of letters
# alone), which no prompt's word is; `light-and-shadow-contrast` is words joined.
_RUN = re.compile(r"[\w+/-]{16,}")
_LETTERS = re.compile(r"[A-Za-z0-9+/]{20}")
# What no prompt's word holds, a credential's value may: a percent-escape (a URL's
# signature in base64, `sig=mN%2Bq...%3D`, its runs cut short by each escape).
_ESCAPED = re.compile(r"%[0-9A-Fa-f]{2}")
# A query's next parameter after the value (`sig=...&se=...`, an Azure SAS pasted
# without its URL): the pair is a query's first, not words.
_QUERY_GOES_ON = re.compile(r"&[\w.\-]+=")
# Names that only ever name a secret: `password=hunter2` is one however short, shaped as
# no credential; `key=light` and `token=abc` may be words.
_ONLY_SECRETS = ("password", "secret", "credential")


def words(text: str, at: int, end: int, equals: str, value: str) -> bool:
    """True when a secret-named pair of a prompt's text (from `at` to `end`) is the
    user's words: written with a plain '=', not in a query (after what starts one, or
    followed by its next parameter), its name not only a secret's, and its value not
    shaped as a credential."""
    name = text[at:end].partition(equals)[0].lower()
    return (equals == "=" and not _IN_A_QUERY.search(text[max(at - 5, 0):at])
            and not _QUERY_GOES_ON.match(text, end)
            and not any(part in name for part in _ONLY_SECRETS)
            and not any(re.search(r"\d", run) for run in _RUN.findall(value))
            and not _LETTERS.search(value) and not _ESCAPED.search(value))
