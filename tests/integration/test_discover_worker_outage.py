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

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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

pytestmark = pytest.mark.kafka

KAFKACTL = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka" / "kafkactl.py"
IDLE_EXIT = 12.0


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held together while chosen: ports picked
    one after another may come back the same)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


@dataclass
class PrivateBroker:
    bootstrap: str
    env: dict[str, str]

    def ctl(self, *args: str) -> None:
        done = subprocess.run([sys.executable, str(KAFKACTL), *args], env=self.env,
                              capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, f"kafkactl {' '.join(args)}: {done.stderr[-2000:]}"

    def _signal(self, sig: signal.Signals) -> None:
        pid = int((Path(self.env["KAFKA_RUN_DIR"]) / "broker.pid").read_text().strip())
        os.kill(pid, sig)

    def freeze(self) -> None:
        """The outage: the broker process stopped (SIGSTOP), as in a long pause of its
        JVM or its machine. Connections stay up and nothing answers on them: requests
        time out. (Not ``kafkactl down``: kafka-python 3.0 never closes the socket of a
        refused connect, and the collector's warnings about them land in later tests.)"""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)


@pytest.fixture
def private_broker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[PrivateBroker]:
    """A broker of this test's own (the shared one must never go down under the other
    tests); ``kafka_bootstrap`` first: the shared one being up means the jars are here."""
    port, controller = _free_ports(2)
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller),
           "KAFKA_DATA_DIR": str(tmp_path / "data"), "KAFKA_RUN_DIR": str(tmp_path / "run")}
    broker = PrivateBroker(f"127.0.0.1:{port}", env)
    broker.ctl("up")
    try:
        yield broker
    finally:
        broker.ctl("down")


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
