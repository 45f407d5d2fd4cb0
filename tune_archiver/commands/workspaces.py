"""Which workspace each tune of a run belongs to, for its manifest (`--workspace`).

The tune's own `workspace_id` field says it when the API sends one; else the
workspace asked for; with `--workspace all`, the workspaces of GET /workspaces.json
are listed one by one, and a tune in none of them is in the personal scope.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from tune_archiver.astria.client import PERSONAL, AstriaClient
from tune_archiver.errors import ArchiverError, ConfigError

log = logging.getLogger(__name__)

ALL = "all"  # X-Workspace-Id: all spans every workspace


def checked_workspace(value: str | None) -> str | None:
    """The workspace id to send as X-Workspace-Id, as given. Raises ConfigError, not
    naming it, for one with a control character (a header line of its own, an escape
    for the manifests) or bytes that are not UTF-8, which no request can carry."""
    if value is not None and not value.isprintable():
        raise ConfigError("the workspace id (--workspace, ASTRIA_WORKSPACE_ID or the Astria "
                          "CLI's config) holds a control character or bytes that are not "
                          "UTF-8")
    return value


def workspace_of(raw: Mapping[str, Any], asked: str | None,
                 listed: Mapping[int, str] | None) -> str | None:
    """The tune's workspace as a manifest records it; None when it cannot be told. Pure."""
    if "workspace_id" in raw:
        value = raw["workspace_id"]
        if value is None:
            return PERSONAL
        if isinstance(value, int | str) and not isinstance(value, bool) and str(value):
            return str(value)
    if asked and asked != ALL:
        return asked
    if asked == ALL and listed is not None:
        tune_id = raw.get("id")
        return listed.get(tune_id, PERSONAL) if isinstance(tune_id, int) else None
    return None


class Workspaces:
    """tune -> workspace for the tunes of one run, one at a time as they come: the
    workspaces are listed at most once, by the first tune that needs them (only with
    `all`, for a tune that does not say it itself)."""

    def __init__(self, api: AstriaClient, asked: str | None) -> None:
        self._api = api
        self._asked = asked
        self._lock = asyncio.Lock()
        self._tried = False
        self._listed: dict[int, str] | None = None

    async def of(self, tune: Mapping[str, Any]) -> str | None:
        """The tune's workspace; None when it cannot be told. Raises ConfigError."""
        if self._asked == ALL and "workspace_id" not in tune:
            async with self._lock:
                if not self._tried:
                    self._tried = True
                    try:
                        self._listed = await _listed(self._api)
                    except ConfigError:
                        raise
                    except ArchiverError as exc:  # the files matter more than the label
                        log.warning("cannot tell the workspaces of the tunes: %s", exc)
        return workspace_of(tune, self._asked, self._listed)


async def _listed(api: AstriaClient) -> dict[int, str]:
    """tune id -> the first workspace whose listing holds it. Only the ids are kept, a
    page at a time: a workspace's whole listing (every tune's JSON) is never held."""
    listed: dict[int, str] = {}
    for workspace in await api.list_workspaces():
        async for page in api.tune_pages(workspace):
            for item in page:
                listed.setdefault(item["id"], workspace)
    return listed
