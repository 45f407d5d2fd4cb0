"""Fresh URLs for a tune's files when a host refuses one as expired: the tune is asked
for once more, and a fresh URL is taken only if it names the same file."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import urlsplit

from tune_archiver.astria.client import AstriaClient
from tune_archiver.commands.choose import load_tune
from tune_archiver.commands.plan import assets_of
from tune_archiver.download.engine import Refresh
from tune_archiver.errors import ArchiverError, DataError
from tune_archiver.models import Asset, Tune
from tune_archiver.urls import download_key, redact, url_key


class FreshUrls:
    """Renewed URLs for a tune's assets, from one more request for the tune (another only
    for an asset whose renewed URL expired in turn)."""

    def __init__(self, api: AstriaClient, tune_id: int, prompts: bool,
                 listed: Sequence[Asset]) -> None:
        self._api = api
        self._listed = listed  # the tune's files as the run began: whose paths are shared
        self._tune_id = tune_id
        self._prompts = prompts
        self._tune: asyncio.Task[Tune] | None = None
        # Prompts made on another (base) tune are not listed with this one: each is
        # asked for again on its own, once (prompt id -> the request).
        self._prompts_elsewhere: dict[int, asyncio.Task[Tune]] = {}

    def refresh(self, asset: Asset) -> Refresh:
        """A callable that returns the asset's fresh URL, or None when the tune cannot be
        had again. The fresh URL must name the same file: same kind, index, URL path and
        query less its signature (a renewed listing may come in another order); else it
        raises DataError."""

        given: list[asyncio.Future[Tune]] = []  # the renewal this asset's last URL came from

        async def fresh_url() -> str | None:
            renewal = self._renewed(asset, given[0] if given else None)
            given[:] = [renewal]
            try:
                tune = await renewal
            except ArchiverError:
                return None
            place = (asset.kind, asset.prompt_id, asset.index)
            listed = assets_of(tune)
            for candidate in listed:
                if (candidate.kind, candidate.prompt_id, candidate.index) == place:
                    if _same_file(candidate.url, asset.url, listed, self._listed):
                        return candidate.url
                    raise DataError(
                        f"the renewed tune lists another file as {asset.kind} {asset.index} "
                        f"({redact(candidate.url)}); not renewed"
                    )
            raise DataError(f"the renewed tune no longer lists {asset.kind} {asset.index}")

        return fresh_url

    def _renewed(self, asset: Asset, spent: asyncio.Future[Tune] | None) -> asyncio.Future[Tune]:
        """The tune asked for again; for a file of a prompt made on another tune, that
        prompt alone, asked for again on the tune it was made on. Asked for once and
        shared, but anew for an asset whose URL from it (`spent`) has expired too."""
        made_on, prompt_id = asset.prompt_tune_id, asset.prompt_id
        if made_on is not None and prompt_id is not None and made_on != self._tune_id:
            if self._prompts_elsewhere.get(prompt_id) in (None, spent):
                self._prompts_elsewhere[prompt_id] = asyncio.ensure_future(
                    self._prompt_alone(made_on, prompt_id))
            return self._prompts_elsewhere[prompt_id]
        if self._tune is None or self._tune is spent:
            self._tune = asyncio.ensure_future(load_tune(self._api, self._tune_id, self._prompts))
        return self._tune

    async def _prompt_alone(self, made_on: int, prompt_id: int) -> Tune:
        """A tune holding only the prompt, fresh: enough for assets_of to find its files."""
        prompt = await self._api.get_prompt(made_on, prompt_id)
        return Tune(self._tune_id, {"id": self._tune_id}, (), (), prompts=(prompt,))


def _same_file(fresh: str, old: str, listed: Sequence[Asset], before: Sequence[Asset]) -> bool:
    """True when the fresh URL names the old one's file: the same URL less its signature
    (download_key); or the same url_key, or path alone, when no other file has it, in
    the renewed listing nor in the one the run began with (`before`): a CDN may sign
    with parameters of its own, `exp`, `s`, `hdnts`, `token`, while /img?id=2 (or
    ?key=b, which url_key drops) listed alone now was another file than /img?id=1 (or
    ?key=a) when both were listed."""
    if download_key(fresh) == download_key(old):
        return True
    # url_key drops what only looks secret (?key=a, ?key=b: two files), and the path
    # alone what a CDN signs with: either, then, only for a file alone in having it. A
    # file listed twice (a photo both training and face-swap image, a reference image
    # two prompts share) is one download_key, still one file.
    return any(name(fresh) == name(old) and all(
        len({download_key(a.url) for a in files if name(a.url) == name(fresh)}) == 1
        for files in (listed, before))
        for name in (url_key, _path))


def _path(url: str) -> str:
    """A URL's path: /img?id=1 and /img?id=2 are two files, their path alone one."""
    try:
        return urlsplit(url_key(url)).path
    except ValueError:
        return url
