"""The Astria CLI's own settings, so one login serves both tools: ASTRIA_AUTH_TOKEN,
ASTRIA_BASE_URL, ASTRIA_WORKSPACE_ID, and ~/.astria/config.json (config.<profile>.json
with ASTRIA_PROFILE or --profile; the folder from ASTRIA_CONFIG_DIR), whose keys are
api_key, base_url and workspace_id.

Ours come first: --api-key-file, ASTRIA_API_KEY, --api-url, ASTRIA_API_URL and
--workspace win over these. The key goes only to the API named beside it (api_for_key).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tune_archiver.config import (
    DEFAULT_API_URL,
    ENV_API_KEY,
    ENV_API_URL,
    api_url,
    secret_file_warnings,
)
from tune_archiver.errors import ConfigError

log = logging.getLogger(__name__)

ENV_TOKEN = "ASTRIA_AUTH_TOKEN"
ENV_BASE_URL = "ASTRIA_BASE_URL"
ENV_WORKSPACE = "ASTRIA_WORKSPACE_ID"
ENV_PROFILE = "ASTRIA_PROFILE"
ENV_CONFIG_DIR = "ASTRIA_CONFIG_DIR"


@dataclass(frozen=True)
class AstriaCli:
    """What the Astria CLI's settings say; each value None when they say nothing."""

    api_key: str | None = None
    key_source: str = ""  # where the key came from, for -v: never the key
    base_url: str | None = None
    url_source: str = ""  # where base_url came from: ASTRIA_BASE_URL or the file
    file_url: str | None = None  # the file's base_url, its api_key's own (ASTRIA_BASE_URL or not)
    workspace: str | None = None
    workspace_source: str = ""  # where the workspace came from, for --all's warning


def config_path(profile: str | None, env: Mapping[str, str]) -> Path:
    """~/.astria/config.json, or config.<profile>.json; the folder from ASTRIA_CONFIG_DIR.
    ConfigError when there is no home to look in (no HOME, a uid no passwd names: a
    container's), never pathlib's RuntimeError."""
    folder = env.get(ENV_CONFIG_DIR)
    try:
        folder = folder or str(Path(env.get("HOME") or Path.home()) / ".astria")
    except RuntimeError:
        raise ConfigError("no home folder to find the Astria CLI's config in: set HOME "
                          f"or {ENV_CONFIG_DIR}") from None
    return Path(folder) / (f"config.{profile}.json" if profile else "config.json")


def read_astria_cli(profile: str | None, env: Mapping[str, str], *, key: bool = False,
                    url: bool = False, workspace: bool = False) -> AstriaCli:
    """The Astria CLI's settings from the environment, then its config file; `key`,
    `url`, `workspace`: ours give that value (the file is then not read for it).

    Raises ConfigError for a profile whose file is missing, a file that is not a JSON
    object of strings, or one that cannot be read. A file others may read is used,
    with one warning, as a key file is. ~/.astria/config.json (no profile named) is
    read only when a value may come from it: damaged, it stopped runs given all three.
    """
    profile = profile or env.get(ENV_PROFILE) or None
    if profile is not None and (not profile.replace("-", "").replace("_", "").isalnum()):
        raise ConfigError("a profile name is letters, digits, - and _")
    ours = {ENV_TOKEN: key, ENV_BASE_URL: url, ENV_WORKSPACE: workspace}
    wanted = not all(given or env.get(name, "").strip() for name, given in ours.items())
    try:
        path = config_path(profile, env) if profile is not None or wanted else None
    except ConfigError:
        if profile is not None:
            raise
        path = None  # no home, so no ~/.astria/config.json: as when it does not exist
    found = {} if path is None else _read(path, required=profile is not None)
    token = env.get(ENV_TOKEN, "").strip()
    api_key = token or found.get("api_key")
    in_file = f"the Astria CLI's config {path}"
    source = ENV_TOKEN if token else in_file if api_key else ""
    base_url = env.get(ENV_BASE_URL, "").strip()
    set_here = env.get(ENV_WORKSPACE, "").strip()
    space = set_here or found.get("workspace_id") or None
    return AstriaCli(
        api_key=api_key or None,
        key_source=source,
        base_url=base_url or found.get("base_url") or None,
        url_source=ENV_BASE_URL if base_url else in_file if found.get("base_url") else "",
        file_url=found.get("base_url") or None,
        workspace=space,
        workspace_source=ENV_WORKSPACE if set_here else in_file if space else "",
    )


def astria_keys(profile: str | None, env: Mapping[str, str]) -> list[str]:
    """The Astria CLI's keys (ASTRIA_AUTH_TOKEN, its config's api_key), for a command to
    scrub from what it shows though it uses neither (an older version's manifest may
    hold one): read without a word, and none where the config cannot be read, which is
    not this command's to judge."""
    keys = [env.get(ENV_TOKEN, "").strip()]
    profile = profile or env.get(ENV_PROFILE) or None
    try:  # a regular file only: a FIFO planted there would block every command
        if profile is None or profile.replace("-", "").replace("_", "").isalnum():
            if stat.S_ISREG(os.stat(path := config_path(profile, env)).st_mode):
                keys.append(_read(path, required=False, warn=False).get("api_key", ""))
    except (OSError, ConfigError):
        pass
    return [key for key in keys if key]


def api_for_key(key_source: str, option: str | None, env: Mapping[str, str],
                astria: AstriaCli) -> str:
    """The API URL for a key from `key_source`: --api-url, else ASTRIA_API_URL, else the
    Astria CLI's, else the default, as long as it is the key's own API: the one named
    beside it (ours with ours: --api-url or ASTRIA_API_URL with --api-key-file or
    ASTRIA_API_KEY; ASTRIA_BASE_URL with ASTRIA_AUTH_TOKEN; a config's base_url with
    its api_key), else the default. Chosen apart, a key meant for one host went to the
    host another source named (ASTRIA_API_KEY to a config's base_url, a config's key
    to a cron's ASTRIA_API_URL).

    Raises ConfigError, naming both sources and never the key, when they differ in
    origin."""
    ours = option or env.get(ENV_API_URL)
    named = [(ours, "--api-url" if option else ENV_API_URL)] if ours else []
    if astria.base_url:
        named.append((astria.base_url, astria.url_source))
    default = (DEFAULT_API_URL, "the default")
    chosen, chosen_source = named[0] if named else default
    if key_source in ("--api-key-file", ENV_API_KEY):
        own, own_source = named[0] if ours else default
    else:  # the token's is ASTRIA_BASE_URL; the config's key's, its file's base_url,
        # which ASTRIA_BASE_URL hides from `named` (naming it again is no other API)
        token = key_source == ENV_TOKEN
        mine = astria.base_url if astria.url_source == ENV_BASE_URL else None
        mine = mine if token else astria.file_url
        own, own_source = (mine, ENV_BASE_URL if token else key_source) if mine else default
    url = api_url(chosen, {})
    if _origin(url) != _origin(api_url(own, {})):
        raise ConfigError(
            f"the API key from {key_source} goes only to the API named beside it ({own}, "
            f"{own_source}), not to {chosen} from {chosen_source}: name the key and the API "
            f"together (--api-key-file or {ENV_API_KEY} with --api-url or {ENV_API_URL})")
    return url


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return (parts.scheme.lower(), (parts.hostname or "").lower(),
            parts.port or (443 if parts.scheme.lower() == "https" else 80))


# The CLI writes a few short fields; a larger file is the wrong one (/dev/zero through a
# link would be read until memory ran out), refused unread.
MAX_CONFIG_BYTES = 2**20


def _read(path: Path, required: bool, warn: bool = True) -> dict[str, str]:
    try:
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
            text = file.read(MAX_CONFIG_BYTES + 1)
            if len(text) > MAX_CONFIG_BYTES:
                raise ConfigError(f"the Astria CLI's config {path} is larger than 1 MiB; it "
                                  "is not the CLI's own")
            data = json.loads(text)
    except FileNotFoundError as exc:
        if required:
            raise ConfigError(f"no Astria CLI profile: {path} does not exist") from exc
        return {}
    # RecursionError: arrays nested deeper than the decoder recurses, not JSON for us.
    # The message names the file, never its contents.
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"cannot read the Astria CLI's config {path}: "
                          f"{getattr(exc, 'strerror', None) or 'not JSON'}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the Astria CLI's config {path} is not a JSON object")
    for warning in secret_file_warnings(f"the Astria CLI's config {path}", info,
                                        os.geteuid()) if warn else ():
        log.warning("%s", warning)
    wanted = ("api_key", "base_url", "workspace_id")
    values = {name: data[name] for name in wanted if data.get(name) is not None}
    for name, value in values.items():
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ConfigError(f"the Astria CLI's config {path}: {name} is not a string")
    return {name: str(value).strip() for name, value in values.items()}
