"""A discovery worker with ``--idle-exit`` through a real broker outage.

Its own single-node KRaft broker (``deploy/local/kafka/kafkactl.py`` on free loopback
ports, data in the test's directory), frozen and thawed again under the worker: the
quiet of an outage must not read as "no more shards" (before, the outage counted as
idle time: the worker exited 0 as soon as a frozen broker was back, or a few seconds
into the outage of a broker that was down, shards still waiting); once the broker is back, the
idle time counts again from there, so a shard published then is taken, and the worker
exits only when the group's shards are all committed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from probers.discovery.connect import ConnectEngine
from producers.kafka_io import admin_client, ensure_topics
from schemas.records import PortRange, Shard, Target
from schemas.topics import topic_names
from stream_processors.transports.discover_worker import (
    DiscoveryWorker,
    WorkerOptions,
    WorkerStats,
)
from tests import loopback
from tests.integration.test_discover_worker import publish_shard
from tests.kafka_fixtures import PrivateBroker

pytestmark = pytest.mark.kafka

IDLE_EXIT = 12.0


@pytest.fixture
def private_broker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[PrivateBroker]:
    """A broker of this test's own (the shared one must never go down under the other
    tests); ``kafka_bootstrap`` first: the shared one being up means the jars are here."""
    broker = PrivateBroker.in_dir(tmp_path)
    broker.up()
    try:
        yield broker
    finally:
        broker.down()


def committed_shards(bootstrap: str, group: str) -> int:
    """How many shards the group has committed (asked of the broker, outside the group)."""
    with admin_client(bootstrap) as admin:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_an_idle_worker_waits_out_a_broker_outage_then_finishes_the_work(
        private_broker: PrivateBroker) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}."
    topics = topic_names(prefix)
    ensure_topics(private_broker.bootstrap, topics.all, timeout=30)
    done: list[str] = []
    result: list[WorkerStats] = []
    with loopback.listen(loopback.banner(b"hello\r\n")) as listener:
        def shard(n: int) -> Shard:
            return Shard(f"scan-{n}", f"scan-{n}:tcp:0", (Target("127.0.0.1", "127.0.0.1"),),
                         (PortRange(listener.port, listener.port),))

        # Given a worker with --idle-exit, which has taken a first shard
        worker = DiscoveryWorker(
            WorkerOptions(private_broker.bootstrap, topics, f"{prefix}discover",
                          idle_exit=IDLE_EXIT, publish_attempt_seconds=2.0,
                          session_timeout_ms=6_000),
            lambda _shard: ConnectEngine(),
            on_shard=lambda what, s: done.append(s.shard_id) if what == "done" else None)
        thread = threading.Thread(target=lambda: result.append(worker.run()), daemon=True)
        publish_shard(private_broker.bootstrap, topics, shard(1))
        thread.start()
        try:
            wait_until(lambda: done == ["scan-1:tcp:0"], 60, "the first shard")
            # (committed: a freeze before its commit would have it replayed, as designed)
            wait_until(lambda: committed_shards(private_broker.bootstrap,
                                                f"{prefix}discover") == 1, 60, "its commit")
            # When its broker stops answering for well past the idle time
            private_broker.freeze()
            time.sleep(IDLE_EXIT * 2)
            # Then the worker is still there, waiting for the broker
            assert thread.is_alive(), f"the worker exited during the outage: {result}"
            # And when the broker is back with another shard half an idle time later
            # (the idle time counts again from the outage's end), it takes that shard and
            # only then exits, once the group has committed every shard
            private_broker.thaw()
            time.sleep(IDLE_EXIT / 2)
            publish_shard(private_broker.bootstrap, topics, shard(2))
            wait_until(lambda: not thread.is_alive(), 120, "the worker to exit")
        finally:
            private_broker.thaw()
            worker.stop()
            thread.join(timeout=30)
    assert done == ["scan-1:tcp:0", "scan-2:tcp:0"]
    (stats,) = result
    assert (stats.shards, stats.open_ports, stats.failed, stats.gave_up) == (2, 2, 0, "")
