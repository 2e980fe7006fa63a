"""Issue 11, defect 3, against the real broker: poison that used to crash a consumer
(an OverflowError from a 1e20 timestamp, a RecursionError from deep nesting) is a dead
letter with its reason, and the messages after it are processed, for the discovery
worker (shards topic) and the Faust stage and sink agents (open-ports, findings)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from producers.kafka_io import make_producer
from producers.publish import publish_framed
from schemas.records import Finding, OpenPort, PortRange, ServiceInfo, Shard, Target
from tests import loopback
from tests.integration.test_distributed_faults import dead_letters, wait_for
from tests.integration.test_distributed_pipeline import pipeline_of

pytestmark = pytest.mark.kafka

WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEEP = b"[" * 100_000 + b"]" * 100_000


def _overflowing(record: OpenPort | Finding | Shard, *path: str) -> bytes:
    """``record`` with the timestamp at ``path`` set to 1e20 (year ~3e12)."""
    data = json.loads(record.to_json())
    inner = data
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = 1e20
    return json.dumps(data).encode()


def test_poison_from_the_issue_is_dead_lettered_and_the_stream_goes_on(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    ssh = loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
    with loopback.listen(ssh, ("127.0.0.1",)) as listener, \
            pipeline_of(kafka_bootstrap, tmp_path) as pipe:
        target = Target(ip="127.0.0.1", target="127.0.0.1")
        good_port = OpenPort(scan_id="poison", target=target, port=listener.port,
                             observed_at=WHEN)
        good_shard = Shard(scan_id="poison", shard_id="poison:tcp:0", targets=(target,),
                           ports=(PortRange(listener.port, listener.port),))
        stored = Finding(port=OpenPort(scan_id="poison", target=target, port=2,
                                       observed_at=WHEN),
                         service=ServiceInfo(service="x"))
        # (the workers create the topics when they start)
        workers = [pipe.process(), pipe.discover("--engine", "connect")]
        producer = make_producer(kafka_bootstrap)
        try:
            # Given poison first on every topic a worker consumes, then good records
            t = pipe.topics
            for topic, value in (
                    (t.shards.name, _overflowing(good_shard, "created_at")),
                    (t.shards.name, DEEP),
                    (t.open_ports.name, _overflowing(good_port, "observed_at")),
                    (t.open_ports.name, DEEP),
                    (t.findings.name, _overflowing(stored, "port", "observed_at"))):
                producer.send(topic, key=b"127.0.0.1", value=value).get(10)
            publish_framed(producer, t.shards.name, [good_shard])
            publish_framed(producer, t.findings.name, [stored])
        finally:
            producer.close(timeout=5)
        # When the discover worker and the stream processors have consumed them
        wait_for(lambda: all(pipe.lag(r) == 0 for r in ("discover", "stages", "sink"))
                 and all(w.proc.poll() is None for w in workers), 120, "drained", pipe)
        # Then every poison message is a dead letter with its reason, none crashed a worker
        letters = dead_letters(pipe, 5)
        assert sorted((d["stage"], d["source_topic"]) for d in letters) == sorted([
            ("discover", t.shards.name), ("discover", t.shards.name),
            ("process", t.open_ports.name), ("process", t.open_ports.name),
            ("sink", t.findings.name)])
        assert all(w.proc.poll() is None for w in workers), pipe.logs()
        assert any("nested too deeply" in d["reason"] for d in letters)
        for worker in workers:
            pipe.stop(worker)
        # And the good shard was scanned and stored, as was the good finding
        ports = sorted(r["port"] for r in pipe.report("list"))
        assert ports == sorted([2, listener.port])
