"""Publishing the distributed shape's events: framing, shards with a checkpoint, lag.

Owns:

* the message framing every portwatch topic uses: a Kafka message carries one or
  more records of ONE key (one host, or one shard), one record's JSON per line
  (JSON Lines). A single-record message is just that record's JSON. Carrying the
  open ports of one host from one shard in one message is what lets a Python stream
  processor move 10,000+ findings/s: Faust costs ~150 us per message, JSON ~10 us
  per record. A bad line is a poison record of its own (dead-lettered with its
  reason); its neighbours are still processed;
* ``produce_shards``: walking a ``ScanPlan`` onto the shards topic in acknowledged
  batches, saving the resume checkpoint (the format ``portwatch scan`` uses) only
  after a batch is acknowledged (a crash republishes at most one batch; the discovery
  workers' and the sink's idempotence absorb it);
* dead-letter envelopes (what failed, where it came from, why);
* consumer-group lag (per topic), which tells when a pipeline has drained.

Must not touch: record contents (``schemas.records``), scanning, storage, Faust.
Kafka clients come from ``producers.kafka_io``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from producers.kafka_io import KeyFunc, PublishError, admin_client, default_key, publish
from producers.shards import Checkpoint, ScanPlan
from schemas.records import Record, RecordError, Shard

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)

LINE = b"\n"
MAX_RECORDS_PER_MESSAGE = 500
# Below the broker's default message.max.bytes (1 MiB) with room for headers.
MAX_MESSAGE_BYTES = 900_000
DEAD_LETTER_VALUE_CAP = 64 * 1024  # bytes of a poison value kept in its envelope


# -- framing ----------------------------------------------------------------------------


def encode_records(records: Iterable[Record]) -> bytes:
    """Records -> one message value: their JSON, one per line."""
    return LINE.join(r.to_json() for r in records)


@dataclass(frozen=True, slots=True)
class Poison:
    """One undecodable record of a message: its line number, why, and its bytes."""

    line: int
    reason: str
    raw: bytes


def decode_records(cls: type[R], value: bytes | None) -> tuple[list[R], list[Poison]]:
    """A message value -> (records, poison lines). Never raises on bad input."""
    if value is None:
        return [], [Poison(0, "empty message (no value)", b"")]
    if not isinstance(value, bytes | bytearray):
        return [], [Poison(0, f"value is {type(value).__name__}, not bytes", b"")]
    records: list[R] = []
    poison: list[Poison] = []
    for number, line in enumerate(bytes(value).split(LINE)):
        if not line.strip():
            continue
        try:
            records.append(cls.from_json(line))
        except RecordError as exc:
            poison.append(Poison(number, str(exc), line))
    if not records and not poison:
        poison.append(Poison(0, "empty message", b""))
    return records, poison


class OversizedRecords(PublishError):
    """Records too large for any message (a broker refuses them: retrying cannot help).
    Everything else was published; these go to the dead-letter topic."""

    def __init__(self, lines: list[bytes], limit: int) -> None:
        super().__init__(f"{len(lines)} record(s) larger than {limit:,} bytes")
        self.lines = lines
        self.limit = limit


def frame_by_key(
    records: Iterable[R],
    *,
    key: KeyFunc = default_key,
    max_records: int = MAX_RECORDS_PER_MESSAGE,
    max_bytes: int = MAX_MESSAGE_BYTES,
    oversized: list[bytes] | None = None,
) -> list[tuple[bytes | None, bytes, int]]:
    """Group records by key (first-seen key order, record order kept within a key)
    into (key, value, record count) messages of bounded size. A record larger than
    ``max_bytes`` on its own goes to ``oversized`` when it is given (the caller
    dead-letters it) instead of into a message the broker would refuse."""
    groups: dict[bytes | None, list[bytes]] = {}
    for record in records:
        line = record.to_json()
        if oversized is not None and len(line) + 1 > max_bytes:
            oversized.append(line)
            continue
        k = key(record)
        kb = k.encode() if isinstance(k, str) else k
        groups.setdefault(kb, []).append(line)
    messages: list[tuple[bytes | None, bytes, int]] = []
    for kb, lines in groups.items():
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and (len(chunk) >= max_records or size + len(line) + 1 > max_bytes):
                messages.append((kb, LINE.join(chunk), len(chunk)))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        if chunk:
            messages.append((kb, LINE.join(chunk), len(chunk)))
    return messages


def publish_framed(producer: Any, topic: str, records: Iterable[Record], *,
                   key: KeyFunc = default_key, timeout: float = 60.0,
                   max_records: int = MAX_RECORDS_PER_MESSAGE) -> int:
    """Publish records framed per key; wait for every acknowledgement.

    Returns the number of records published; raises ``kafka_io.PublishError`` when a
    message was not acknowledged (the caller retries: consumers are idempotent), and
    ``OversizedRecords`` after publishing the rest when some record cannot fit in any
    message (the caller dead-letters those: retrying cannot help).
    """
    from kafka.errors import KafkaError  # after kafka_io: it imports kafka quietly

    oversized: list[bytes] = []
    messages = frame_by_key(records, key=key, max_records=max_records, oversized=oversized)
    if not messages:
        if oversized:
            raise OversizedRecords(oversized, MAX_MESSAGE_BYTES)
        return 0
    deadline = time.monotonic() + timeout
    futures = []
    reasons: list[str] = []
    for k, value, _n in messages:
        try:
            futures.append(producer.send(topic, key=k, value=value))
        except KafkaError as exc:  # e.g. metadata never arrived, message too large
            reasons.append(f"{type(exc).__name__}: {exc}")
    try:
        producer.flush(timeout=timeout)
    except KafkaError as exc:  # the per-future results below say which failed
        log.debug("flush to %s failed: %s", topic, exc)
    acked = 0
    for future in futures:
        try:
            future.get(timeout=max(0.1, deadline - time.monotonic()))
            acked += 1
        except KafkaError as exc:
            reasons.append(f"{type(exc).__name__}: {exc}")
    if acked != len(messages):
        raise PublishError(f"{len(messages) - acked} of {len(messages)} messages to {topic} "
                           f"were not acknowledged: {reasons[0] if reasons else 'unknown'}")
    if oversized:
        raise OversizedRecords(oversized, MAX_MESSAGE_BYTES)
    return sum(n for _k, _v, n in messages)


# -- dead letters -----------------------------------------------------------------------


def dead_letter(source_topic: str, partition: int, offset: int, reason: str,
                value: bytes, *, stage: str, line: int = 0) -> bytes:
    """The dead-letter envelope: where the poison came from, which stage refused it
    and why, and the value itself (text when it is UTF-8, else base64), capped."""
    capped = value[:DEAD_LETTER_VALUE_CAP]
    envelope: dict[str, Any] = {
        "v": 1, "stage": stage, "source_topic": source_topic, "partition": partition,
        "offset": offset, "line": line, "reason": reason[:2000],
        "value_bytes": len(value), "is_truncated": len(value) > len(capped),
    }
    try:
        envelope["value"] = capped.decode("utf-8")
    except UnicodeDecodeError:
        envelope["value_base64"] = base64.b64encode(capped).decode("ascii")
    return json.dumps(envelope, separators=(",", ":")).encode()


# -- shards -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProduceResult:
    scan_id: str
    seed: int
    total: int  # shards in the plan (TCP and UDP)
    first_index: int  # shards a checkpoint said were already published
    published: int  # shards this run published

    @property
    def is_complete(self) -> bool:
        return self.first_index + self.published >= self.total


def produce_shards(producer: Any, topic: str, plan: ScanPlan, *,
                   start: Checkpoint | None = None,
                   checkpoint_path: str | os.PathLike[str] | None = None,
                   batch_size: int = 64, timeout: float = 60.0,
                   on_batch: Callable[[int, int], None] | None = None) -> ProduceResult:
    """Publish the plan's shards (TCP, then UDP) from ``start`` on, in acknowledged
    batches.

    After each acknowledged batch the checkpoint moves past it (atomically, the format
    of ``portwatch scan``), so an interrupted run resumes at the first shard not
    acknowledged. ``on_batch`` gets (shards done, total) after each batch.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    position = start or plan.start(None)
    total = sum(len(p) for p in plan.plans)
    first = sum(min(position.index(p.proto), len(p)) for p in plan.plans)
    published = 0
    batch: list[Shard] = []

    def flush() -> None:
        nonlocal published, position
        if not batch:
            return
        publish(producer, topic, batch, timeout=timeout)
        published += len(batch)
        position = position.advanced(batch[-1].proto, batch[-1].index + 1)
        batch.clear()
        if checkpoint_path is not None:
            position.save(checkpoint_path)
        if on_batch is not None:
            on_batch(first + published, total)

    for shard_plan in plan.plans:
        for shard in shard_plan.shards(position.index(shard_plan.proto)):
            batch.append(shard)
            if len(batch) >= batch_size:
                flush()
        flush()
    if checkpoint_path is not None and published == 0:
        position.save(checkpoint_path)
    return ProduceResult(plan.scan_id, plan.seed, total, first, published)


# -- lag --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupLag:
    """How far one consumer group is behind on some topics (messages, not records)."""

    group_id: str
    end: int  # sum of the topics' end offsets
    committed: int  # sum of the group's committed offsets (0 where none yet)

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)

    @property
    def is_drained(self) -> bool:
        return self.end > 0 and self.lag == 0


def group_lag(bootstrap: str, group_id: str, topics: Sequence[str],
              timeout: float = 10.0) -> GroupLag:
    """Committed offsets of ``group_id`` against the end offsets of ``topics``.

    A partition the group never committed counts from its log start (its whole
    backlog is lag).
    """
    from kafka.structs import TopicPartition

    with admin_client(bootstrap, timeout) as admin:
        described = admin.describe_topics(list(topics))
        partitions = [TopicPartition(t["name"], p["partition_index"]) for t in described
                      for p in (t.get("partitions") or ())]
        committed_map = _group_offsets(admin, group_id, timeout)
        ends = _offsets(admin, partitions, "latest")
        starts = _offsets(admin, partitions, "earliest")
    end = sum(ends.values())
    committed = 0
    for tp in partitions:
        meta = committed_map.get(tp)
        offset = getattr(meta, "offset", -1) if meta is not None else -1
        committed += offset if offset is not None and offset >= 0 else starts.get(tp, 0)
    return GroupLag(group_id, end, committed)


def _group_offsets(admin: Any, group_id: str, timeout: float) -> dict[Any, Any]:
    """The group's committed offsets, waiting out a group coordinator that is not
    ready yet (a broker that just started is still creating __consumer_offsets)."""
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    while True:
        try:
            answer: dict[Any, Any] = admin.list_group_offsets({group_id: None}).get(group_id, {})
            return answer
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _offsets(admin: Any, partitions: list[Any], which: str) -> dict[Any, int]:
    from kafka.admin import OffsetSpec

    spec = OffsetSpec.LATEST if which == "latest" else OffsetSpec.EARLIEST
    answer = admin.list_partition_offsets({tp: spec for tp in partitions})
    return {tp: int(getattr(info, "offset", info)) for tp, info in answer.items()}


__all__ = [
    "GroupLag",
    "MAX_RECORDS_PER_MESSAGE",
    "Poison",
    "ProduceResult",
    "dead_letter",
    "decode_records",
    "encode_records",
    "frame_by_key",
    "group_lag",
    "produce_shards",
    "OversizedRecords",
    "publish_framed",
]
