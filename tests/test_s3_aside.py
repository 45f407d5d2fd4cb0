"""What verify --repair sets aside in a bucket's tmp/damaged/ is kept, each copy of it."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.helpers import Sleeps
from tests.s3server import (  # noqa: F401  (fixtures)
    aws_env_fixture,
    moto_s3_fixture,
)
from tests.standin import StandIn
from tests.test_s3_archive import (
    S3Archive,
    archived_then_rotted,
    s3_fixture,  # noqa: F401  (the fixture)
    tune_archiver,
)


def test_two_damaged_copies_set_aside_in_one_second_are_both_kept(
    standin: StandIn, s3: S3Archive
) -> None:
    """Two repairs within one second (a cron's and one by hand) each set a damaged copy
    of one checkpoint aside: both took tmp/damaged/<sha256>-<stamp>, so the second
    copy overwrote the first, bytes a user may want back lost. Each keeps its own name."""
    served, checkpoint, first = archived_then_rotted(standin, s3)
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps(), clock=lambda: now) == 0
    second = bytearray(s3.get(checkpoint["path"]))
    second[2000] ^= 0xFF
    s3.put(checkpoint["path"], bytes(second))
    assert tune_archiver(s3, "verify", "--repair", "--api-url", standin.api_url,
                         sleep=Sleeps(), clock=lambda: now) == 0
    kept = sorted(s3.get(key.split("/", 1)[1]) for key in s3.keys("tmp/damaged/"))
    assert kept == sorted([first, bytes(second)])
    assert s3.get(checkpoint["path"]) == served[checkpoint["url"]]
