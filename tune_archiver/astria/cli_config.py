"""The Astria CLI's own settings, so one login serves both tools: ASTRIA_AUTH_TOKEN,
ASTRIA_BASE_URL, ASTRIA_WORKSPACE_ID, and ~/.astria/config.json (config.<profile>.json
with ASTRIA_PROFILE or --profile; the folder from ASTRIA_CONFIG_DIR), whose keys are
api_key, base_url and workspace_id.

Ours come first: --api-key-file, ASTRIA_API_KEY, --api-url, ASTRIA_API_URL and
--workspace win over these.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tune_archiver.config import secret_file_warnings
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
    workspace: str | None = None
    workspace_source: str = ""  # where the workspace came from, for --all's warning


def config_path(profile: str | None, env: Mapping[str, str]) -> Path:
    """~/.astria/config.json, or config.<profile>.json; the folder from ASTRIA_CONFIG_DIR."""
    folder = Path(env.get(ENV_CONFIG_DIR) or Path(env.get("HOME") or Path.home()) / ".astria")
    return folder / (f"config.{profile}.json" if profile else "config.json")


def read_astria_cli(profile: str | None, env: Mapping[str, str]) -> AstriaCli:
    """The Astria CLI's settings from the environment, then its config file.

    Raises ConfigError for a profile whose file is missing, a file that is not a JSON
    object of strings, or one that cannot be read. A file others may read is used,
    with one warning, as a key file is.
    """
    profile = profile or env.get(ENV_PROFILE) or None
    if profile is not None and (not profile.replace("-", "").replace("_", "").isalnum()):
        raise ConfigError("a profile name is letters, digits, - and _")
    path = config_path(profile, env)
    found = _read(path, required=profile is not None)
    token = env.get(ENV_TOKEN, "").strip()
    key = token or found.get("api_key")
    source = ENV_TOKEN if token else f"the Astria CLI's config {path}" if key else ""
    set_here = env.get(ENV_WORKSPACE, "").strip()
    workspace = set_here or found.get("workspace_id") or None
    return AstriaCli(
        api_key=key or None,
        key_source=source,
        base_url=env.get(ENV_BASE_URL, "").strip() or found.get("base_url") or None,
        workspace=workspace,
        workspace_source=ENV_WORKSPACE if set_here else
        f"the Astria CLI's config {path}" if workspace else "",
    )


# The CLI writes a few short fields; a larger file is the wrong one (/dev/zero through a
# link would be read until memory ran out), refused unread.
MAX_CONFIG_BYTES = 2**20


def _read(path: Path, required: bool) -> dict[str, str]:
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
    for warning in secret_file_warnings(f"the Astria CLI's config {path}", info, os.geteuid()):
        log.warning("%s", warning)
    wanted = ("api_key", "base_url", "workspace_id")
    values = {name: data[name] for name in wanted if data.get(name) is not None}
    for name, value in values.items():
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ConfigError(f"the Astria CLI's config {path}: {name} is not a string")
    return {name: str(value).strip() for name, value in values.items()}
