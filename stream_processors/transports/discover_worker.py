"""The discovery worker of the distributed shape: shards in, open ports and host scans out.

Owns: one kafka-python consumer-group member on the shards topic that takes one
shard at a time, re-checks it against its own scope (defence in depth: whoever can
write to the shards topic must not choose what is scanned), runs the shared shard
rule on it (``stages.discover_with_retries``: engine, retries keeping every port
any attempt found, tarpit holding), publishes the shard's open ports (framed per
host, keyed by host) and its host scans, waits until the broker acknowledged all of
them, and only then commits the shard's offset.

Guarantees, and how:

* at-least-once: the commit follows the acknowledgements. A worker that dies
  mid-shard never committed it; after its session times out the group hands its
  partitions to another member, which runs the shard again;
* a failed engine run is retried (``shard_attempts``), and the ports a failed attempt
  found are kept; a shard still failing is recorded, never silently dropped: its host
  scans say ``error`` with the reason;
* the shard's hosts are published as "running" before the engine starts, so a worker
  killed mid-shard leaves a trace the Summary shows as not finished;
* a shard outside this worker's scope (allow-list, exclusions) is dead-lettered with
  the reason and never scanned;
* idempotence downstream: a re-run shard publishes the same (scan, ip, proto, port)
  keys with new ``observed_at``; the store keeps min/max per key (first_seen does not
  move) and its reports group by key (no duplicate rows);
* poison shards (undecodable) go to the dead-letter topic with the reason, and are
  committed: retrying them cannot help;
* a broker outage is waited out: publishing retries until acknowledged, a
  commit that fails is logged (the shard will be replayed: harmless), and
  ``idle_exit`` counts only while the broker says every shard is committed.

Stopping (SIGTERM/SIGINT through ``stop()``): the current shard's engine is
stopped, nothing of it is published or committed (another worker redoes it), the
consumer leaves the group at once so the partitions move without waiting for the
session timeout.

Must not touch: the store (the sink owns it), Faust.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from producers.kafka_io import KafkaUnavailable, PublishError, make_consumer, make_producer
from producers.publish import OversizedRecords, dead_letter, publish_framed
from producers.targets import Scope
from schemas.records import RecordError, Shard, utcnow
from schemas.topics import TopicSet
from stream_processors.stages import EngineFactory, ShardOutcome, discover_with_retries

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    bootstrap: str
    topics: TopicSet
    group_id: str = "portwatch-discover"
    tarpit_threshold: int = 1000
    shard_attempts: int = 2  # engine runs per shard before it is recorded as failed
    max_shards: int = 0  # stop after this many shards (0: never)
    idle_exit: float = 0.0  # stop after this many seconds without a shard (0: never)
    session_timeout_ms: int = 10_000  # a dead worker's shards move after this long
    # A shard must end (engine deadlines are fitted under it) before Kafka evicts us.
    max_poll_interval_ms: int = 600_000
    publish_retry_seconds: float = 600.0  # give up publishing a shard's events after this
    # One publish attempt (metadata, send, acknowledgement): short, so that a stop while
    # the broker is away waits for one attempt, not for the client's default minute.
    publish_attempt_seconds: float = 10.0
    poll_timeout_ms: int = 500
    scope: Scope = field(default_factory=Scope)  # re-checked on every shard


@dataclass
class WorkerStats:
    shards: int = 0
    out_of_scope: int = 0
    retried: int = 0
    failed: int = 0
    open_ports: int = 0
    host_scans: int = 0
    poison: int = 0
    commit_failures: int = 0
    last_shard: str = ""
    errors: list[str] = field(default_factory=list)
    gave_up: str = ""  # why the worker stopped on its own before its work was done


class DiscoveryWorker:
    def __init__(self, options: WorkerOptions, engine_for: EngineFactory,
                 on_shard: Callable[[str, Shard], None] | None = None) -> None:
        self.options = options
        self.engine_for = engine_for
        self.on_shard = on_shard  # ("started" | "done", shard): progress lines, tests
        self.stats = WorkerStats()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_shard: asyncio.Event | None = None
        self._last_idle_note = ""
        self._uncommitted: dict[Any, int] = {}  # partition -> offset whose commit failed

    def stop(self) -> None:
        """Signal-safe: end the current shard (unpublished, uncommitted) and exit."""
        self._stopping.set()
        loop, event = self._loop, self._stop_shard
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    @property
    def is_stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> WorkerStats:
        """Consume shards until stopped (or ``max_shards`` / ``idle_exit``)."""
        o = self.options
        producer = make_producer(o.bootstrap, client_id="portwatch-discover",
                                 max_block_ms=int(o.publish_attempt_seconds * 1000))
        consumer = None
        try:
            consumer = make_consumer(
                o.bootstrap, o.topics.shards.name, o.group_id,
                client_id="portwatch-discover", max_poll_records=1,
                max_poll_interval_ms=o.max_poll_interval_ms,
                session_timeout_ms=o.session_timeout_ms,
                heartbeat_interval_ms=max(500, o.session_timeout_ms // 4))
            with asyncio.Runner() as runner:
                self._loop = runner.get_loop()
                self._consume(consumer, producer, runner)
        finally:
            self._loop = None
            if consumer is not None:
                consumer.close(autocommit=False)  # leaves the group: partitions move now
            producer.close(timeout=10)
        return self.stats

    def _consume(self, consumer: Any, producer: Any, runner: asyncio.Runner) -> None:
        o = self.options
        idle_since = time.monotonic()
        broker_away = False
        while not self.is_stopping:
            if o.max_shards and self.stats.shards >= o.max_shards:
                return
            # kafka-python's poll never raises for a broker away: it logs and returns
            # nothing, as when there is nothing to do (hence _drained below)
            batch = consumer.poll(timeout_ms=o.poll_timeout_ms, max_records=1)
            records = [r for rs in batch.values() for r in rs]
            if not records:
                if o.idle_exit and time.monotonic() - idle_since >= o.idle_exit:
                    self._retry_commits(consumer)
                    drained = self._drained(consumer)
                    if drained is None or broker_away:
                        # An outage is not idleness: the idle time counts again from the
                        # first answer after it, when held-back shards arrive
                        broker_away = drained is None
                        idle_since = time.monotonic()
                    elif drained:
                        return
                continue
            for record in records:
                if self.is_stopping:
                    return
                if not self._handle(record, producer, runner):
                    return  # stopped mid-shard: not committed
                self._commit(consumer, record)
            idle_since = time.monotonic()

    def _drained(self, consumer: Any) -> bool | None:
        """What ``idle_exit`` waits for besides the quiet: the group has committed every
        shard of the topic (its siblings' too: one that dies mid-shard hands it to this
        worker). None: the broker does not answer, so an outage is never taken for the
        end of the work (before, a worker with ``--idle-exit`` exited 0 a few seconds
        into an outage, shards still waiting)."""
        from kafka.structs import TopicPartition

        topic = self.options.topics.shards.name
        wait_ms = int(self.options.publish_attempt_seconds * 1000)
        try:
            partitions = [TopicPartition(topic, p)
                          for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not partitions:
                return None  # no metadata for the topic: nothing is known
            ends = consumer.end_offsets(partitions, timeout_ms=wait_ms)
            starts = consumer.beginning_offsets(partitions, timeout_ms=wait_ms)
            done = {tp: consumer.committed(tp, timeout_ms=wait_ms) for tp in partitions}
        except Exception as exc:  # noqa: BLE001 - KafkaTimeoutError, a broker gone
            self._idle_note(f"idle, but the broker does not answer ({type(exc).__name__}):"
                            " waiting for it, not exiting")
            return None
        # A partition never committed (or whose commit the retention outlived) has left
        # what it still holds, not everything it ever held
        left = sum(max(0, ends[tp] - max(done[tp] or 0, starts[tp])) for tp in partitions)
        self._idle_note(f"idle, but {left} shard(s) of the group are not committed yet: "
                        "waiting" if left else "")
        return not left

    def _idle_note(self, note: str) -> None:
        """Say why an idle worker does not exit, once per reason (it asks twice a second)."""
        if note and note != self._last_idle_note:
            log.info("%s", note)
        self._last_idle_note = note

    def _handle(self, record: Any, producer: Any, runner: asyncio.Runner) -> bool:
        """Process one shards-topic record; False when stopped before it was done."""
        o = self.options
        try:
            shard = Shard.from_json(record.value) if record.value is not None else None
            if shard is None:
                raise RecordError("empty message (no value)")
        except RecordError as exc:
            self.stats.poison += 1
            return self._dead_letter(producer, record, str(exc))
        refused = [t.ip for t in shard.targets if not o.scope.permits(t.ip)]
        if refused:
            self.stats.out_of_scope += 1
            shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more"
                                               if len(refused) > 5 else "")
            return self._dead_letter(
                producer, record, f"shard {shard.shard_id} is outside this worker's scope: "
                f"{shown} (not scanned)")
        if self.on_shard is not None:
            self.on_shard("started", shard)
        running = ShardOutcome(shard, utcnow()).host_scans("running")
        if not self._publish_until_acked(producer, o.topics.host_scans.name, running):
            return False
        outcome = self._discover(shard, runner)
        if outcome is None:
            return False
        scans = outcome.host_scans()
        if not self._publish_until_acked(producer, o.topics.open_ports.name, outcome.ports):
            return False
        if not self._publish_until_acked(producer, o.topics.host_scans.name, scans):
            return False
        self.stats.shards += 1
        self.stats.open_ports += len(outcome.ports)
        self.stats.host_scans += len(scans)
        self.stats.last_shard = shard.shard_id
        if self.on_shard is not None:
            self.on_shard("done", shard)
        return True

    def _dead_letter(self, producer: Any, record: Any, reason: str) -> bool:
        envelope = dead_letter(record.topic, record.partition, record.offset, reason,
                               record.value or b"", stage="discover")
        log.warning("dead letter: shard at %s[%d]@%d: %s", record.topic, record.partition,
                    record.offset, reason)
        return self._publish_until_acked(producer, self.options.topics.dead_letter.name,
                                         [_Raw(envelope)])

    def _discover(self, shard: Shard, runner: asyncio.Runner) -> ShardOutcome | None:
        """The shard rule (``discover_with_retries``); None when stopped mid-shard."""
        o = self.options
        self._stop_shard = asyncio.Event()
        if self.is_stopping:
            return None
        outcome = runner.run(discover_with_retries(
            shard, self.engine_for, attempts=o.shard_attempts,
            tarpit_threshold=o.tarpit_threshold, stop=self._stop_shard))
        if outcome.is_interrupted or self.is_stopping:
            return None
        self.stats.retried += outcome.attempts - 1
        if outcome.error:
            self.stats.failed += 1
            self.stats.errors.append(f"{shard.shard_id}: {outcome.error}")
        return outcome  # an error is published as status "error": recorded, not hidden

    def _publish_until_acked(self, producer: Any, topic: str, records: Any) -> bool:
        deadline = time.monotonic() + self.options.publish_retry_seconds
        delay = 0.5
        while True:
            try:
                attempt = self.options.publish_attempt_seconds
                if records and isinstance(records[0], _Raw):
                    for r in records:
                        producer.send(topic, value=r.value).get(timeout=attempt)
                else:
                    publish_framed(producer, topic, records, timeout=attempt)
                return True
            except OversizedRecords as exc:  # the rest is published; retrying cannot help
                self.stats.poison += len(exc.lines)
                envelopes = [_Raw(dead_letter(topic, -1, -1, f"record of {len(line):,} bytes "
                                              f"exceeds the {exc.limit:,}-byte message limit",
                                              line, stage="discover"))
                             for line in exc.lines]
                log.warning("dead letter: %d record(s) for %s too large to publish",
                            len(envelopes), topic)
                return self._publish_until_acked(producer, self.options.topics.dead_letter.name,
                                                 envelopes)
            except (PublishError, KafkaUnavailable, Exception) as exc:  # noqa: BLE001
                if self.is_stopping:
                    log.info("stopped before %s was published: the shard is not committed "
                             "and will be scanned again", topic)
                    return False
                if time.monotonic() >= deadline:
                    self.stats.gave_up = (
                        f"the broker did not acknowledge {topic} for "
                        f"{self.options.publish_retry_seconds:g}s ({_first_line(exc)}); "
                        "the shard is not committed and will be scanned again")
                    log.error("giving up publishing to %s: %s", topic, _first_line(exc))
                    return False
                log.warning("publishing to %s failed (%s); retrying in %.1fs", topic, exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def _commit(self, consumer: Any, record: Any) -> None:
        from kafka.structs import TopicPartition

        tp = TopicPartition(record.topic, record.partition)
        for attempt in range(3):
            if self._commit_once(consumer, tp, record.offset + 1):
                return
            if attempt == 2 or self.is_stopping:
                self.stats.commit_failures += 1
                # kept: an idle worker commits it again before it asks whether the work
                # is done (else its own failed commit would keep it waiting for ever)
                self._uncommitted[tp] = max(record.offset + 1, self._uncommitted.get(tp, 0))
                log.warning("commit of %s@%d failed: the shard will be replayed unless a "
                            "later commit succeeds, which is harmless", tp, record.offset)
                return
            self._stopping.wait(1.0)

    def _commit_once(self, consumer: Any, tp: Any, offset: int) -> bool:
        from kafka.structs import OffsetAndMetadata

        try:
            consumer.commit({tp: OffsetAndMetadata(offset, "", -1)})
        except Exception as exc:  # noqa: BLE001 - CommitFailed, broker gone: replay later
            log.info("commit of %s up to %d failed: %s", tp, offset, _first_line(exc))
            return False
        if self._uncommitted.get(tp, offset + 1) <= offset:
            del self._uncommitted[tp]  # this commit covers the one that failed
        return True

    def _retry_commits(self, consumer: Any) -> None:
        for tp, offset in sorted(self._uncommitted.items()):
            self._commit_once(consumer, tp, offset)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


@dataclass(frozen=True, slots=True)
class _Raw:
    value: bytes


__all__ = ["DiscoveryWorker", "EngineFactory", "WorkerOptions", "WorkerStats"]
