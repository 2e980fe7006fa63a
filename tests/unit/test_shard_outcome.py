"""A shard's host-scan records (``stages.ShardOutcome.host_scans``): what each says of
the ports scanned. A completed shard scanned its ports; an interrupted one only those it
got to, and one an interrupt never reached none (the Summary of an interrupted /16 said
every unreached host had its 102 ports scanned: a review)."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.records import PortRange, Shard, Target
from stream_processors.stages import ShardOutcome

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SHARD = Shard(scan_id="s", shard_id="s:tcp:0", ports=(PortRange(1, 100),),
              targets=(Target(ip="127.0.0.1", target="127.0.0.1"),
                       Target(ip="127.0.0.2", target="127.0.0.2")))


def scanned(outcome: ShardOutcome, status: str = "") -> list[tuple[str, int]]:
    return [(h.status, h.ports_scanned) for h in outcome.host_scans(status)]


def test_a_completed_shard_scanned_its_ports() -> None:
    assert scanned(ShardOutcome(SHARD, NOW, NOW, probed_per_host=3)) == [("completed", 100)] * 2


def test_an_interrupted_shard_scanned_only_what_it_got_to() -> None:
    cut = ShardOutcome(SHARD, NOW, NOW, is_interrupted=True, probed_per_host=40)
    assert scanned(cut) == [("interrupted", 40)] * 2
    never = ShardOutcome(SHARD, NOW, NOW, probed_per_host=0)
    assert scanned(never, "interrupted") == [("interrupted", 0)] * 2
    # (more than the shard holds is never said; unknown says the shard's count)
    assert scanned(ShardOutcome(SHARD, NOW, NOW, is_interrupted=True, probed_per_host=900)
                   ) == [("interrupted", 100)] * 2
    assert scanned(ShardOutcome(SHARD, NOW, NOW, is_interrupted=True)) == [("interrupted",
                                                                            100)] * 2


def test_a_running_shard_says_its_plan() -> None:
    assert scanned(ShardOutcome(SHARD, NOW), "running") == [("running", 100)] * 2
