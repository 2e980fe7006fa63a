"""Kafka plumbing shared by the target producer, the discovery workers and the tests.

Owns: how portwatch talks to Kafka through kafka-python: the producer settings
(acks=all, idempotent, no compression), publishing records and waiting for their
acknowledgements, the consumer settings (manual commits), the broker readiness
probe and idempotent topic creation from ``schemas.topics``.

Must not touch: record contents (``schemas.records`` owns the wire form), scanning,
storage, or Faust (the stream processors speak to Kafka through aiokafka).

Choices, with the reason:

* ``acks="all"`` + idempotence: a shard or finding acknowledged once is stored once
  even when the client retries after a lost response.
* No compression: records are small JSON documents on a local or LAN link, and
  kafka-python's lz4 codec needs the ``lz4`` C extension (not pure Python), which
  portwatch does not depend on.
* Consumers never auto-commit: a worker commits only after the work for a record is
  done, so a crash replays the record (at-least-once); the sink is idempotent.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from schemas.records import HostScan, Record, Shard
from schemas.topics import HOST_SCANS, Topic

# kafka-python 3.0.x calls importlib.resources.read_text/open_text while defining its
# protocol classes at import time; Python 3.11 flags those as deprecated. The warning
# is about the library's packaging, not about our use of it, so it is silenced for the
# import only (pytest runs with warnings as errors).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import OffsetSpec
    from kafka.errors import KafkaError, NoError, TopicAlreadyExistsError

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

# ApiVersions (api key 18), version 0: the request every Kafka client sends first.
# A broker answers it only once it processes requests, which a bare TCP accept does
# not prove (Kafka binds its listeners before it enables request processing).
_API_VERSIONS_KEY = 18
_PROBE_CORRELATION_ID = 0x0070_7770  # arbitrary; echoed back by the broker
_PROBE_CLIENT_ID = b"portwatch-probe"
_PROBE_MAX_RESPONSE = 64 * 1024  # an ApiVersions v0 answer is ~1 KiB; refuse junk


class KafkaUnavailable(RuntimeError):
    """No Kafka broker answers at the bootstrap address.

    The message is one line meant for the user; ``reason`` says what the last
    attempt saw, for logs.
    """

    def __init__(self, bootstrap: str, reason: str = "") -> None:
        super().__init__(f"no Kafka broker answers at {bootstrap}: check --kafka / "
                         "PORTWATCH_KAFKA (`make kafka-up` starts one on this machine)")
        self.bootstrap = bootstrap
        self.reason = reason


class PublishError(RuntimeError):
    """Some records were not acknowledged by the broker."""


class TopicSetupError(RuntimeError):
    """Topics could not be created or did not become ready."""


KeyFunc = Callable[[Record], str | bytes | None]


def default_key(record: Record) -> str | None:
    """The partition key of a record, per ``schemas.topics``.

    Shards are keyed by ``shard_id`` (spread the work); host events by the host's
    address (all events of one host on one partition, in order).
    """
    if isinstance(record, Shard):
        return record.shard_id
    if isinstance(record, HostScan):
        return record.target.ip
    key = getattr(record, "key", None)
    return key if isinstance(key, str) else None


def split_bootstrap(bootstrap: str) -> tuple[str, int]:
    """``"host:port"`` (first entry of a comma list) -> (host, port); ``[v6]:port`` too."""
    return _host_port(bootstrap.split(",")[0].strip(), bootstrap)


def bootstrap_entries(bootstrap: str) -> list[tuple[str, int]]:
    """Every ``host:port`` of a comma list (blank entries skipped), each checked."""
    return [_host_port(entry.strip(), bootstrap) for entry in bootstrap.split(",")
            if entry.strip()] or [split_bootstrap(bootstrap)]


def _host_port(first: str, bootstrap: str) -> tuple[str, int]:
    host, sep, port_text = first.rpartition(":")
    if not sep:
        host, port_text = first, "9092"
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError as exc:
        raise ValueError(f"bad Kafka bootstrap address {bootstrap!r}: want host:port") from exc
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad Kafka bootstrap address {bootstrap!r}: want host:port")
    return host, port


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def probe_api_versions(bootstrap: str, timeout: float) -> bool:
    """Bounded ApiVersions v0 round trips, one per bootstrap entry in order until one
    answers; True when a Kafka broker did. Every entry is tried: with only the first,
    a list naming three brokers failed every pod while that one was down (a rolling
    restart), though the clients themselves bootstrap from any of them (a review).
    ``timeout`` bounds the whole probe: each entry gets its share of it.

    Uses a plain socket so that a failed attempt leaves nothing behind (a
    kafka-python client that fails to bootstrap in its constructor keeps its I/O
    thread and sockets alive).
    """
    entries = bootstrap_entries(bootstrap)
    share = timeout / len(entries)
    return any(_probe_one(host, port, share) for host, port in entries)


def _probe_one(host: str, port: int, timeout: float) -> bool:
    header = struct.pack(
        ">hhih", _API_VERSIONS_KEY, 0, _PROBE_CORRELATION_ID, len(_PROBE_CLIENT_ID)
    )
    request = header + _PROBE_CLIENT_ID
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            if not 6 <= size <= _PROBE_MAX_RESPONSE:
                return False
            body = _recv_exact(sock, size)
    except (OSError, ConnectionError):
        return False
    correlation_id, error_code = struct.unpack(">ih", body[:6])
    return bool(correlation_id == _PROBE_CORRELATION_ID and error_code == 0)


def wait_for_broker(bootstrap: str = DEFAULT_BOOTSTRAP, timeout: float = 30.0) -> None:
    """Return once a broker at ``bootstrap`` serves metadata; else raise KafkaUnavailable.

    Bounded by ``timeout`` seconds. Each attempt first probes with ApiVersions
    (cheap, leak-free), then asks the cluster for its metadata through the admin
    client, which is what producers and consumers need next.
    """
    deadline = time.monotonic() + max(timeout, 0.0)
    last_reason = "not probed"
    while True:
        remaining = deadline - time.monotonic()
        attempt = max(0.2, min(remaining, 5.0))
        if probe_api_versions(bootstrap, attempt):
            try:
                with _admin(bootstrap, timeout=max(1.0, min(remaining, 10.0))) as admin:
                    admin.describe_cluster()
                return
            except KafkaError as exc:
                last_reason = f"metadata: {exc}"
        else:
            last_reason = "no ApiVersions answer"
        left = deadline - time.monotonic()
        if left <= 0:
            raise KafkaUnavailable(bootstrap, last_reason)
        time.sleep(min(0.5, left))  # then one last attempt at the deadline


@contextlib.contextmanager
def _admin(bootstrap: str, timeout: float = 10.0) -> Iterator[Any]:
    timeout_ms = int(timeout * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="portwatch-admin",
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
    )
    try:
        yield admin
    finally:
        admin.close()


def admin_client(bootstrap: str, timeout: float = 10.0) -> AbstractContextManager[Any]:
    """A context manager yielding a KafkaAdminClient that is closed on exit.

    Probes first: raises KafkaUnavailable (and leaks no client thread) when no
    broker answers.
    """
    if not probe_api_versions(bootstrap, min(timeout, 5.0)):
        raise KafkaUnavailable(bootstrap, "no ApiVersions answer")
    return _admin(bootstrap, timeout)


def start_group_at_end(bootstrap: str, group: str, topic: str,
                       timeout: float = 10.0) -> int | None:
    """Commit ``topic``'s end, on every partition, as consumer group ``group``'s position
    when the group holds none there (it never read the topic, or the broker forgot its
    positions: ``offsets.retention.minutes``, 7 days by default, after its last member
    left), so it reads what comes next. Returns how many records it passes over; None
    when the group had positions (left as they were) or another member joined it
    meanwhile (the broker refuses a reset of an active group: that member started it).
    A broker that cannot say yet (its offsets topic is still being created, on a new
    cluster: "coordinator not available") is asked again until ``timeout``."""
    deadline = time.monotonic() + timeout
    with _admin(bootstrap, timeout) as admin:
        while True:
            try:
                held = admin.list_group_offsets({group: None}).get(group, {})
                break
            except Exception as exc:  # noqa: BLE001 - kafka-python's errors: retriable or not
                if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        if any(tp.topic == topic and meta.offset >= 0 for tp, meta in held.items()):
            return None
        (described,) = admin.describe_topics([topic])
        partitions = [TopicPartition(topic, p["partition_index"])
                      for p in described["partitions"]]
        first = admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in partitions})
        done = admin.reset_group_offsets(group, {tp: OffsetSpec.LATEST for tp in partitions})
    if any(r["error"] is not NoError for r in done.values()):
        return None
    return sum(max(0, int(done[tp]["offset"]) - int(first[tp].offset)) for tp in partitions)


def ensure_topics(
    bootstrap: str,
    topics: Iterable[Topic],
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Idempotent: existing topics are left alone (a partition count that differs
    from ``schemas.topics`` is logged, never changed: adding partitions would move
    keys to other partitions). Returns once every topic has a leader for every
    partition, or raises TopicSetupError.
    """
    wanted = {t.name: t for t in topics}
    if not wanted:
        return []
    timeout_ms = int(timeout * 1000)
    try:
        with admin_client(bootstrap, timeout) as admin:
            existing = set(admin.list_topics())
            missing = {n: t for n, t in wanted.items() if n not in existing}
            if missing:
                spec = {
                    name: {"num_partitions": t.partitions, "replication_factor": replication_factor}
                    for name, t in missing.items()
                }
                try:
                    admin.create_topics(spec, timeout_ms=timeout_ms)
                except TopicAlreadyExistsError:
                    pass  # another process created it between list and create: fine
            admin.wait_for_topics(list(wanted), timeout_ms=timeout_ms)
            for described in admin.describe_topics(list(wanted)):
                name = described.get("name")
                count = len(described.get("partitions") or ())
                if name in wanted and count != wanted[name].partitions:
                    # host-scans: fewer partitions than findings splits a host's
                    # records between two sinks (schemas/topics.py)
                    why = (": with more than one sink, grow it with kafka-topics --alter "
                           f"--partitions {wanted[name].partitions}, or run one sink"
                           if name.endswith(HOST_SCANS.name) else "")
                    log.warning(
                        "topic %s has %d partitions, schemas.topics says %d (left as is%s)",
                        name,
                        count,
                        wanted[name].partitions,
                        why,
                    )
    except KafkaError as exc:
        raise TopicSetupError(
            f"could not set up topics {sorted(wanted)} at {bootstrap}: {exc}"
        ) from exc
    return sorted(missing)


def make_producer(
    bootstrap: str = DEFAULT_BOOTSTRAP,
    *,
    client_id: str = "portwatch-producer",
    linger_ms: int = 5,
    request_timeout_ms: int = 15_000,
    delivery_timeout_ms: int = 60_000,
    max_block_ms: int = 30_000,
) -> KafkaProducer:
    """An idempotent, acks=all producer that sends uncompressed bytes.

    Raises KafkaUnavailable when no broker answers (instead of blocking for the
    client's bootstrap timeout).
    """
    if not probe_api_versions(bootstrap, 5.0):
        raise KafkaUnavailable(bootstrap, "no ApiVersions answer")
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,  # kafka-python >= 2.1 implements KIP-98 idempotence
        compression_type=None,
        linger_ms=linger_ms,
        request_timeout_ms=request_timeout_ms,
        delivery_timeout_ms=max(delivery_timeout_ms, linger_ms + request_timeout_ms),
        max_block_ms=max_block_ms,
        bootstrap_timeout_ms=max_block_ms,
        allow_auto_create_topics=False,
    )


def _key_bytes(key: str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode()


def publish(
    producer: KafkaProducer,
    topic: str,
    records: Iterable[Record],
    *,
    key: KeyFunc = default_key,
    timeout: float = 60.0,
) -> list[tuple[int, int]]:
    """Send ``records`` as JSON, wait for every acknowledgement, return (partition, offset)s.

    Raises PublishError naming the topic, how many records were not acknowledged
    and the first reason. Records sent before the failure may be stored: callers
    that retry rely on the consumers' idempotent handling (dedup by record ids).
    """
    futures: list[Any] = []
    reasons: list[str] = []
    total = 0
    for record in records:
        total += 1
        try:
            futures.append(
                producer.send(topic, value=record.to_json(), key=_key_bytes(key(record)))
            )
        except KafkaError as exc:  # e.g. record too large, metadata never arrived
            reasons.append(f"{type(exc).__name__}: {exc}")
    deadline = time.monotonic() + timeout
    try:
        producer.flush(timeout=timeout)
    except KafkaError as exc:  # the per-future results below say which records failed
        log.debug("flush to %s failed: %s", topic, exc)
    acked: list[tuple[int, int]] = []
    for future in futures:
        try:
            metadata = future.get(timeout=max(0.1, deadline - time.monotonic()))
        except KafkaError as exc:
            reasons.append(f"{type(exc).__name__}: {exc}")
            continue
        acked.append((metadata.partition, metadata.offset))
    if len(acked) != total:
        first = reasons[0] if reasons else "unknown reason"
        raise PublishError(
            f"{total - len(acked)} of {total} records to {topic} were not acknowledged: {first}"
        )
    return acked


def make_consumer(
    bootstrap: str,
    topic: str | Sequence[str],
    group_id: str,
    *,
    client_id: str = "portwatch-consumer",
    auto_offset_reset: str = "earliest",
    max_poll_records: int = 100,
    max_poll_interval_ms: int = 600_000,
    session_timeout_ms: int = 30_000,
    heartbeat_interval_ms: int = 3_000,
    bootstrap_timeout_ms: int = 30_000,
) -> KafkaConsumer:
    """A group consumer that never commits on its own: call ``consumer.commit()``
    after the work for the polled records is done (at-least-once).

    ``max_poll_interval_ms`` defaults to 10 minutes because one discovery shard can
    take minutes; workers processing one shard at a time pass ``max_poll_records=1``.
    Values arrive as bytes: decode them with ``<RecordClass>.from_json``.
    """
    if not probe_api_versions(bootstrap, 5.0):
        raise KafkaUnavailable(bootstrap, "no ApiVersions answer")
    topics = [topic] if isinstance(topic, str) else list(topic)
    return KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        isolation_level="read_committed",
        max_poll_records=max_poll_records,
        max_poll_interval_ms=max_poll_interval_ms,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
        bootstrap_timeout_ms=bootstrap_timeout_ms,
        allow_auto_create_topics=False,
    )


__all__ = [
    "DEFAULT_BOOTSTRAP",
    "KafkaUnavailable",
    "PublishError",
    "TopicSetupError",
    "admin_client",
    "bootstrap_entries",
    "default_key",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "probe_api_versions",
    "publish",
    "split_bootstrap",
    "start_group_at_end",
    "wait_for_broker",
]
