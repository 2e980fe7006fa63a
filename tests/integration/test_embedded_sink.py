"""The embedded runner's sink: every finding reaches the store, in inserts of at most
``batch_size``, whether findings trickle in or a burst waits in its queue (it takes what is
already queued without waiting per finding). Real chdb store; the discovery engine is a
stand-in that reports UDP replies it was handed (no packet is sent: an unknown UDP port's
reply is identified from the event itself)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest

from probers.discovery.base import Progress
from producers.shards import ScanPlan
from schemas.records import Finding, OpenPort, PortRange, Proto, Shard, Target
from stream_processors.stages import make_context
from stream_processors.transports.embedded import EmbeddedRunner

TARGETS = [Target(ip=f"127.21.0.{i}", target=f"127.21.0.{i}") for i in range(1, 4)]
PER_HOST = 400


class RepliesEngine:
    """A FAKE discovery engine (named as such): ``PER_HOST`` UDP ports with a reply on
    every shard host, at once. What is under test is the embedded sink's batching and
    memory under a flood of findings; 1,200 real UDP responders would test the UDP engine
    instead (tests/unit/test_udp_engine.py and tests/integration/test_udp_netns.py do, on
    real sockets)."""

    name = "replies"

    async def scan(self, shard: Shard, progress: Progress) -> AsyncIterator[OpenPort]:
        now = datetime.now(UTC)
        for t in shard.targets:
            for j in range(PER_HOST):
                progress.open_found += 1
                yield OpenPort(scan_id=shard.scan_id, target=t, port=20000 + j,
                               proto=Proto.UDP, engine=self.name, reason="udp-response",
                               observed_at=now, response=f"reply {j}")
            await asyncio.sleep(0)


@pytest.mark.parametrize(("batch_size", "batch_seconds"), [(50, 30.0), (5_000, 0.05)])
def test_every_finding_is_stored_in_inserts_no_larger_than_the_batch(
        store, batch_size: int, batch_seconds: float) -> None:  # type: ignore[no-untyped-def]
    sizes: list[int] = []
    insert = store.insert_findings

    def counted(findings: Sequence[Finding]) -> int:
        sizes.append(len(findings))
        return insert(findings)

    store.insert_findings = counted
    engine = RepliesEngine()
    ctx = make_context(use_nmap_probes=False, tls_enumeration=False)
    runner = EmbeddedRunner(store, lambda _shard: engine, ctx, batch_size=batch_size,
                            batch_seconds=batch_seconds, tarpit_threshold=PER_HOST + 1)
    plan = ScanPlan.build("sink-1", 0, TARGETS, (), (PortRange(1, 65535),))
    stats = asyncio.run(runner.run(plan))
    total = len(TARGETS) * PER_HOST
    assert stats.stored == total and not stats.errors
    assert sum(sizes) == total
    assert max(sizes) <= batch_size
    if batch_size == 50:  # a long batch_seconds: the size alone cut the batches
        assert sizes.count(50) == total // 50
    stored = store.query("SELECT count(), uniqExact(ip, port) FROM port_observations "
                         "WHERE scan_id = 'sink-1'")[0]
    assert tuple(stored) == (total, total)
