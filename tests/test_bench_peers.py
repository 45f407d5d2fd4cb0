"""The benchmark compares tune-archiver with each workload's fastest peer, whichever it is."""

from __future__ import annotations

from pathlib import Path

from bench.bench import best_peers
from bench.workloads import Case


def case(tool: str, *walls: float, peer: bool = True) -> Case:
    def never(out: Path) -> list[str]:
        raise AssertionError("not run")

    def fine(out: Path, first: bool) -> None:
        pass

    return Case(tool, never, fine, walls=list(walls), peer=peer)


def test_the_best_peer_is_the_fastest_other_tool_by_median() -> None:
    workloads = {
        "W1": [case("tune-archiver", 0.5, 0.5, 0.5), case("curl", 1, 9, 1),
               case("aria2c -x16 -s16", 2, 2, 2)],
        "W1-nohash": [case("tune-archiver (SKIP_HASH=1)", 0.4)],
        "W2": [case("tune-archiver", 2), case("aria2c -j8", 2.2), case("curl -Z", 0.7),
               case("curl -Z, then sha256sum and sync", 0.6, peer=False)],
        "W9": [case("tune-archiver", 1)],
    }
    best = {name: peer.tool for name, peer in best_peers(workloads).items()}
    assert best == {"W1": "curl", "W1-nohash": "curl", "W2": "curl -Z"}
