"""net.session: how many connections one asset host gets, and what the API's session is."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tune_archiver.config import Settings
from tune_archiver.net.session import new_session


def settings(**options: object) -> Settings:
    return Settings(archive=Path("a"), api_key="k", api_url="https://api.example", **options)


@pytest.mark.parametrize("private_redirects", [False, True])
@pytest.mark.parametrize(
    ("concurrency", "split", "per_host"), [(16, 8, 16), (4, 16, 16), (2, 1, 2)]
)
async def test_one_asset_host_gets_at_most_the_larger_of_concurrency_and_split(
    concurrency: int, split: int, per_host: int, private_redirects: bool
) -> None:
    """Files at once and connections per file multiply across hosts, but one CDN is
    never opened more connections than either option alone asks for."""
    options = settings(concurrency=concurrency, split=split, private_redirects=private_redirects)
    async with new_session(options, decompress=False) as session:
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector.limit_per_host == per_host
        assert connector.limit == 0


async def test_the_api_session_is_limited_by_its_callers_alone() -> None:
    async with new_session(settings(concurrency=16, split=8), decompress=True) as session:
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector.limit_per_host == 0
