"""What an S3 archive takes before it opens: its bucket and prefix from the URL, and
botocore's config (retries, timeouts, checksums, addressing) from our defaults and the
environment; and how to install the [s3] extra when it is missing."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tune_archiver import __version__
from tune_archiver.digits import whole_number
from tune_archiver.errors import ConfigError

if TYPE_CHECKING:
    from aiobotocore.config import AioConfig

ATTEMPTS = 5  # tries of each request, the first included (botocore's standard retries)
INSTALL_HINT = "pip install 'tune-archiver[s3]'"


PACKAGE_DIR = Path(__file__).resolve().parents[2]  # tune_archiver/


def _attempts_of(env: Mapping[str, str]) -> int:
    """AWS_MAX_ATTEMPTS (botocore's own variable, which our config would override), else
    ATTEMPTS; ConfigError for one that is no whole number of at least 1."""
    text = env.get("AWS_MAX_ATTEMPTS", "").strip()
    if not text:
        return ATTEMPTS
    attempts = whole_number(text)
    if attempts is None or attempts < 1:
        raise ConfigError(f"AWS_MAX_ATTEMPTS must be a whole number of at least 1, not {text!r}")
    return attempts


def install_hint(package_dir: Path = PACKAGE_DIR) -> str:
    """How to add the [s3] extra to this install: from a checkout (an editable install,
    pyproject.toml beside the package) the checkout's own path; else the package's name,
    with the checkout form for an install made from one."""
    root = package_dir.parent
    if (root / "pyproject.toml").is_file():
        return f"pip install '{root}[s3]'"
    return f"{INSTALL_HINT} (or, in the folder of a checkout: pip install '.[s3]')"


def client_config(endpoint_url: str | None, attempts: int | None) -> AioConfig:
    """botocore's config for the store's client; `attempts` when given, else
    AWS_MAX_ATTEMPTS, else ATTEMPTS."""
    from aiobotocore.config import AioConfig

    # A custom endpoint (MinIO, R2, B2, moto) is addressed path-style: it may have
    # no wildcard DNS for bucket.host names.
    custom = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
    custom = custom or os.environ.get("AWS_ENDPOINT_URL")
    return AioConfig(
        retries={"mode": "standard",
                 "total_max_attempts": attempts or _attempts_of(os.environ)},
        connect_timeout=30,
        read_timeout=60,
        user_agent_extra=f"tune-archiver/{__version__}",
        # We send SHA-256 checksums ourselves; botocore's default CRC32 on every
        # request trips up some S3-compatible stores.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Every body we send carries its x-amz-checksum-sha256, a signed header the
        # store checks; botocore would hash each 8 MiB part again, on the event
        # loop, to sign it, whenever the endpoint is plain http.
        s3={"payload_signing_enabled": False,
            **({"addressing_style": "path"} if custom else {})},
    )


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without slashes) of s3://bucket[/prefix]; ConfigError otherwise."""
    parts = urlsplit(url)
    segments = [segment for segment in parts.path.split("/") if segment]
    if (
        parts.scheme != "s3"
        or not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]", parts.netloc)
        or parts.query
        or parts.fragment
        or any(segment in (".", "..") for segment in segments)
    ):
        raise ConfigError(f"not an S3 archive URL (s3://bucket or s3://bucket/prefix): {url!r}")
    return parts.netloc, "/".join(segments)
