"""Asset hosts that misbehave as real CDNs do: answers that once slipped past the checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import check_manifest
from tests.helpers import blob_file, run_fetch, sha256
from tests.standin import StandIn, Status


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def test_a_206_of_the_whole_file_unasked_is_the_file(standin: StandIn, archive: Path) -> None:
    """A host that answers every GET 206 with the whole file and its strong ETag, though
    no Range was asked: the body is the file, as a 200's would be. It failed on every
    attempt as 'the file changed on the server', a file that never changed."""
    data = bytes(range(256)) * 20
    whole = {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}", "ETag": '"v1"'}
    url = standin.add_file("model", data)
    standin.add_tune(1, [url], [])
    standin.faults["model"] = [Status(206, whole, data)] * 6
    assert run_fetch(standin, archive, "1") == 0
    entry = check_manifest(archive / "manifests" / "1.json")["assets"][0]
    assert (entry["status"], entry["sha256"]) == ("ok", sha256(data))
    assert blob_file(archive, data).read_bytes() == data
    assert [r.headers.get("Range") for r in standin.seen("cdn")] == [None]
