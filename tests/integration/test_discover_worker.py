"""The distributed discovery worker (stream_processors/transports/discover_worker.py)
in-process against the real Kafka broker and real loopback listeners:

* a shard whose first engine run fails is retried, and the ports the failed attempt
  found are published even when the retry no longer sees them (the rule the embedded
  transport applies: ``stages.discover_with_retries``);
* the shard's hosts are published as "running" before the engine starts;
* a shard outside the worker's own scope is dead-lettered, never scanned;
* a shard that outlasts the consumer's max.poll.interval (the broker evicts the worker
  from its group, so its commit really fails) is scanned again and finally committed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from probers.discovery.base import DiscoveryError, Progress
from probers.discovery.connect import ConnectEngine
from producers.kafka_io import (
    admin_client,
    ensure_topics,
    make_consumer,
    make_producer,
    publish,
)
from producers.publish import decode_records
from producers.targets import Scope
from schemas.records import HostScan, OpenPort, PortRange, Shard, Target
from schemas.topics import topic_names
from stream_processors.transports.discover_worker import DiscoveryWorker, WorkerOptions
from tests import loopback
from tests.kafka_fixtures import consume

pytestmark = pytest.mark.kafka


class DiesAtItsEnd:
    """Named fake for a fault that cannot be caused on demand with a real engine: an
    engine that reports every open port it found, then dies before finishing (as a
    killed masscan does). ``on_death`` runs when it dies."""

    name = "dies-at-its-end"

    def __init__(self, on_death: Callable[[], None]) -> None:
        self.inner = ConnectEngine()
        self.on_death = on_death

    async def scan(self, shard: Shard, progress: Progress) -> AsyncIterator[OpenPort]:
        async for port in self.inner.scan(shard, progress):
            yield port
        self.on_death()
        raise DiscoveryError("engine died before the end of the shard (injected)")


class TakesItsTime:
    """Named fake for a long shard (a masscan sweep of many hosts takes minutes; here
    seconds): the real connect engine, after ``delay`` seconds of nothing."""

    name = "takes-its-time"

    def __init__(self, delay: float) -> None:
        self.inner = ConnectEngine()
        self.delay = delay

    async def scan(self, shard: Shard, progress: Progress) -> AsyncIterator[OpenPort]:
        await asyncio.sleep(self.delay)
        async for port in self.inner.scan(shard, progress):
            yield port


def publish_shard(bootstrap: str, topics: Any, shard: Shard) -> None:
    """The topics made (those that exist are left as they are), then ``shard`` on its."""
    ensure_topics(bootstrap, topics.all, timeout=30)
    producer = make_producer(bootstrap)
    try:
        publish(producer, topics.shards.name, [shard])
    finally:
        producer.close(timeout=10)


def run_worker(bootstrap: str, prefix: str, shard: Shard, engine_for: Any,
               scope: Scope | None = None) -> tuple[Any, list[bytes], list[bytes], list[bytes]]:
    """Publish one shard, run a worker until it handled it; return its stats and the
    open-port, host-scan and dead-letter messages it published."""
    topics = topic_names(prefix)
    publish_shard(bootstrap, topics, shard)
    options = WorkerOptions(bootstrap, topics, f"{prefix}discover", max_shards=1,
                            idle_exit=20, scope=scope or Scope())
    stats = DiscoveryWorker(options, engine_for).run()

    def read(topic: str, count: int) -> list[bytes]:
        consumer = make_consumer(bootstrap, topic, f"{prefix}reader-{topic}")
        try:
            return [r.value for r in consume(consumer, count, timeout=20)]
        finally:
            consumer.close()

    ports = read(topics.open_ports.name, 1) if stats.open_ports else []
    scans = read(topics.host_scans.name, 2) if stats.host_scans else []
    dead = (read(topics.dead_letter.name, 1) if stats.poison or stats.out_of_scope
            else [])
    return stats, ports, scans, dead


def test_a_retried_shard_keeps_the_ports_its_failed_attempt_found(
        kafka_bootstrap: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}."
    with loopback.listen(loopback.banner(b"a\r\n")) as a, \
            loopback.listen(loopback.banner(b"b\r\n")) as b:
        # Given a shard over two listeners, and an engine whose first run finds both and
        # then dies, after which listener A goes away (the retry cannot see it)
        shard = Shard("scan-r", "scan-r:tcp:0", (Target("127.0.0.1", "127.0.0.1"),),
                      tuple(PortRange(p, p) for p in sorted((a.port, b.port))))
        attempts: list[str] = []

        def engine_for(_shard: Shard) -> Any:
            attempts.append("run")
            return DiesAtItsEnd(a.close) if len(attempts) == 1 else ConnectEngine()

        # When a distributed discover worker handles the shard
        stats, ports, scans, _ = run_worker(kafka_bootstrap, prefix, shard, engine_for)
    # Then it ran the engine twice and published both ports, A from the failed attempt
    assert attempts == ["run", "run"]
    assert (stats.shards, stats.retried, stats.failed) == (1, 1, 0)
    published = [p for value in ports for p in decode_records(OpenPort, value)[0]]
    assert sorted(p.port for p in published) == sorted((a.port, b.port))
    # And the host was published as running first, then completed
    states = [h.status for value in scans for h in decode_records(HostScan, value)[0]]
    assert states == ["running", "completed"]


def test_a_shard_outside_the_workers_scope_is_dead_lettered_not_scanned(
        kafka_bootstrap: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}."
    accepted: list[int] = []

    def counting(conn: Any) -> None:
        accepted.append(1)

    # (an address of its own: other tests may sweep 127.0.0.1 meanwhile)
    with loopback.listen(counting, ("127.83.0.7",)) as target:
        # Given a worker whose scope excludes 127.83.0.7, and a shard naming it
        shard = Shard("scan-x", "scan-x:tcp:0", (Target("127.0.0.1", "127.0.0.1"),
                                                 Target("127.83.0.7", "127.83.0.7")),
                      (PortRange(target.port, target.port),))
        built: list[Shard] = []

        def engine_for(s: Shard) -> Any:
            built.append(s)
            return ConnectEngine()

        scope = Scope.build(["127.83.0.7/32"], allow=["127.0.0.0/8"])
        # When the worker takes the shard
        stats, ports, _scans, dead = run_worker(kafka_bootstrap, prefix, shard, engine_for,
                                                scope)
    # Then nothing was scanned (no engine, no connection), and the dead letter says why
    assert built == [] and accepted == []
    assert (stats.shards, stats.out_of_scope, stats.open_ports) == (0, 1, 0)
    assert ports == []
    (envelope,) = [json.loads(v) for v in dead]
    assert envelope["stage"] == "discover"
    assert envelope["reason"] == ("shard scan-x:tcp:0 is outside this worker's scope: "
                                  "127.83.0.7 (not scanned)")


class AnswersWithAMountain:
    """Named fake for a fault no real engine here produces: an open port whose recorded
    answer is larger than any Kafka message (engines cap it; this one does not)."""

    name = "answers-with-a-mountain"

    def __init__(self, port: int, normal_port: int) -> None:
        self.port, self.normal_port = port, normal_port

    async def scan(self, shard: Shard, progress: Progress) -> AsyncIterator[OpenPort]:
        target = shard.targets[0]
        yield OpenPort(shard.scan_id, target, self.port, response="x" * 2_000_000)
        yield OpenPort(shard.scan_id, target, self.normal_port)


def test_a_record_too_large_for_kafka_is_dead_lettered_and_the_shard_done(
        kafka_bootstrap: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}."
    shard = Shard("scan-m", "scan-m:tcp:0", (Target("127.0.0.1", "127.0.0.1"),),
                  (PortRange(1000, 1001),))
    # Given an engine reporting one normal port and one whose record exceeds the broker's
    # message size, when the worker publishes the shard
    stats, ports, scans, dead = run_worker(kafka_bootstrap, prefix, shard,
                                           lambda _s: AnswersWithAMountain(1000, 1001))
    # Then the normal port and the host scans are published, the shard is done (not
    # retried for ever), and the oversized record is in the dead-letter topic with why
    assert (stats.shards, stats.poison) == (1, 1)
    published = [p.port for value in ports for p in decode_records(OpenPort, value)[0]]
    assert published == [1001]
    assert [h.status for v in scans for h in decode_records(HostScan, v)[0]] == [
        "running", "completed"]
    (envelope,) = [json.loads(v) for v in dead]
    assert envelope["reason"].startswith("record of 2,000,")
    assert envelope["reason"].endswith("bytes exceeds the 900,000-byte message limit")
    assert envelope["is_truncated"] is True


def test_a_broker_that_never_acknowledges_ends_the_worker_with_its_reason(
        kafka_bootstrap: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    prefix = f"t-{uuid.uuid4().hex[:8]}."
    topics = topic_names(prefix)
    # Given a host-scans topic whose broker refuses every write (a real fault: a topic
    # configured to take no message over 64 bytes)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topics.host_scans.name, topics.host_scans.partitions, 1,
                                      topic_configs={"max.message.bytes": "64"})])
    finally:
        admin.close()
    publish_shard(kafka_bootstrap, topics, Shard(
        "scan-k", "scan-k:tcp:0", (Target("127.0.0.1", "127.0.0.1"),), (PortRange(1, 1),)))
    options = WorkerOptions(kafka_bootstrap, topics, f"{prefix}discover", max_shards=1,
                            idle_exit=30, publish_retry_seconds=3, publish_attempt_seconds=1)
    # When a worker takes the shard and cannot publish its hosts for 3 s
    stats = DiscoveryWorker(options, lambda _shard: ConnectEngine()).run()
    # Then it stops on its own, the shard not done (not committed: scanned again), and
    # says why in one line (`portwatch discover` exits 1 with it)
    assert stats.shards == 0
    assert stats.gave_up.startswith(f"the broker did not acknowledge {topics.host_scans.name} "
                                    "for 3s (")
    assert stats.gave_up.endswith("the shard is not committed and will be scanned again")
    assert "\n" not in stats.gave_up
    consumer = make_consumer(kafka_bootstrap, topics.shards.name, f"{prefix}discover")
    try:
        again = consume(consumer, 1, timeout=20)  # the same group gets the shard back
    finally:
        consumer.close()
    assert [decode_records(Shard, r.value)[0][0].shard_id for r in again] == ["scan-k:tcp:0"]


def test_a_shard_longer_than_the_poll_interval_is_scanned_again_then_committed(
        kafka_bootstrap: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}."
    topics = topic_names(prefix)
    group = f"{prefix}discover"
    with loopback.listen(loopback.banner(b"slow\r\n")) as listener:
        # Given a worker whose consumer may spend 7 s between polls, and a shard whose
        # first scan takes 12 s (the next one is quick)
        shard = Shard("scan-long", "scan-long:tcp:0", (Target("127.0.0.1", "127.0.0.1"),),
                      (PortRange(listener.port, listener.port),))
        publish_shard(kafka_bootstrap, topics, shard)
        runs: list[str] = []

        def engine_for(_shard: Shard) -> Any:
            runs.append(_shard.shard_id)
            return TakesItsTime(12.0) if len(runs) == 1 else ConnectEngine()

        worker = DiscoveryWorker(
            WorkerOptions(kafka_bootstrap, topics, group, idle_exit=5,
                          session_timeout_ms=6_000, max_poll_interval_ms=7_000),
            engine_for)
        # When it runs until it is idle and the group has committed every shard
        stats = worker.run()
    # Then the broker evicted it during the long scan, so that scan's commit failed for
    # real; the shard came back to it, was scanned again and committed (at least once)
    assert stats.commit_failures == 1
    assert runs == ["scan-long:tcp:0", "scan-long:tcp:0"]
    assert (stats.shards, stats.open_ports, stats.failed, stats.gave_up) == (2, 2, 0, "")
    with admin_client(kafka_bootstrap) as admin:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    assert sum(meta.offset for meta in offsets.values() if meta.offset > 0) == 1
