"""Integration tests of producers.kafka_io against the real local broker (`make kafka-up`).

Owns: proof that Shard records survive a round trip through Kafka unchanged, that
one key always lands on one partition, that an uncommitted consumer gets its
records again (the at-least-once basis of the discovery workers), and that the
readiness probe is bounded against peers that are not Kafka.

Must not touch: any address but loopback; any topic but the per-test ones.
"""

from __future__ import annotations

import socket
import threading
from collections import defaultdict
from collections.abc import Iterator

import pytest

from producers.kafka_io import (
    KafkaUnavailable,
    PublishError,
    make_consumer,
    make_producer,
    probe_api_versions,
    publish,
    wait_for_broker,
)
from schemas.records import PortRange, Proto, Record, Shard, Target
from schemas.topics import Topic
from tests.kafka_fixtures import consume

# Test hosts come from the benchmarking range 198.18.0.0/15 (RFC 2544): these
# records are only published to Kafka, nothing is ever sent to these addresses.
HOSTS = tuple(f"198.18.0.{n}" for n in range(1, 7))
SHARDS_PER_HOST = 4


def make_shards(scan_id: str) -> list[Shard]:
    shards: list[Shard] = []
    for host_index, ip in enumerate(HOSTS):
        for part in range(SHARDS_PER_HOST):
            first = 1 + part * 1000
            shards.append(
                Shard(
                    scan_id=scan_id,
                    shard_id=f"{scan_id}-{host_index}-{part}",
                    targets=(Target(ip=ip, target=f"{ip}/32", organization="test-org"),),
                    ports=(PortRange(first, first + 999),),
                    proto=Proto.TCP,
                    seed=1234,
                    index=host_index * SHARDS_PER_HOST + part,
                    total=len(HOSTS) * SHARDS_PER_HOST,
                )
            )
    return shards


def key_by_host(record: Record) -> str:
    assert isinstance(record, Shard)
    return record.targets[0].ip


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[object]:
    prod = make_producer(kafka_bootstrap)
    yield prod
    prod.close(timeout=10)


@pytest.mark.kafka
@pytest.mark.parametrize("unique_topic", [4], indirect=True)
def test_shards_round_trip_and_one_key_stays_on_one_partition(
    kafka_bootstrap: str, unique_topic: Topic, unique_group_id: str, producer: object
) -> None:
    # Given 24 shards for 6 hosts, keyed by host, on a 4-partition topic
    shards = make_shards("scan-roundtrip")

    # When they are published (acks=all) and read back by a consumer group
    acks = publish(producer, unique_topic.name, shards, key=key_by_host)
    consumer = make_consumer(kafka_bootstrap, unique_topic.name, unique_group_id)
    try:
        received = consume(consumer, len(shards), timeout=60)
        consumer.commit()
    finally:
        consumer.close()

    # Then every record comes back exactly once and byte-for-byte equal as a record
    assert len(acks) == len(shards)
    decoded = [Shard.from_json(m.value) for m in received]
    assert sorted(decoded, key=lambda s: s.index) == shards
    # ... under the key it was published with, at the partition the broker acknowledged
    ack_by_shard = {s.shard_id: ack for s, ack in zip(shards, acks, strict=True)}
    for message, shard in zip(received, decoded, strict=True):
        assert message.key == shard.targets[0].ip.encode()
        assert (message.partition, message.offset) == ack_by_shard[shard.shard_id]
    # ... every key on exactly one partition, and in publish order within that key
    partitions_by_host: dict[str, set[int]] = defaultdict(set)
    order_by_host: dict[str, list[int]] = defaultdict(list)
    for message, shard in sorted(
        zip(received, decoded, strict=True), key=lambda pair: pair[0].offset
    ):
        partitions_by_host[shard.targets[0].ip].add(message.partition)
        order_by_host[shard.targets[0].ip].append(shard.index)
    assert {ip: len(parts) for ip, parts in partitions_by_host.items()} == {ip: 1 for ip in HOSTS}
    assert all(order == sorted(order) for order in order_by_host.values())


@pytest.mark.kafka
def test_consumer_that_does_not_commit_gets_the_records_again(
    kafka_bootstrap: str, unique_topic: Topic, unique_group_id: str, producer: object
) -> None:
    # Given five shards on the topic
    shards = make_shards("scan-replay")[:5]
    publish(producer, unique_topic.name, shards)

    # When a worker of the group reads them and stops without committing (a crash)
    first = make_consumer(kafka_bootstrap, unique_topic.name, unique_group_id)
    try:
        first_read = consume(first, len(shards), timeout=60)
    finally:
        first.close()
    # ... and a new worker of the same group starts
    second = make_consumer(kafka_bootstrap, unique_topic.name, unique_group_id)
    try:
        second_read = consume(second, len(shards), timeout=60)
        second.commit()
        committed = {tp.partition: second.committed(tp) for tp in second.assignment()}
        ends = second.end_offsets(list(second.assignment()))
    finally:
        second.close()

    # Then the new worker gets the same records again (at-least-once)
    by_index = sorted(shards, key=lambda s: s.index)
    assert sorted((Shard.from_json(m.value) for m in first_read), key=lambda s: s.index) == by_index
    assert sorted((Shard.from_json(m.value) for m in second_read), key=lambda s: s.index) == (
        by_index
    )
    # ... and once it commits, the group's position is the end of every partition
    assert committed == {tp.partition: offset for tp, offset in ends.items()}
    assert sum(committed.values()) == len(shards)


@pytest.mark.kafka
def test_a_bootstrap_list_whose_first_broker_is_down_still_finds_the_next(
        kafka_bootstrap: str) -> None:
    # Given a list naming a loopback port nobody listens on first, then the real broker
    bootstrap = f"127.0.0.1:{_free_loopback_port()},{kafka_bootstrap}"
    # Then the probe every component's start waits on finds the broker (only the first
    # entry was probed: every pod failed while that broker was down). (Not the admin
    # client's metadata step too: kafka-python leaves its socket to the closed port for
    # the collector, a ResourceWarning that fails whichever test it lands in.)
    assert probe_api_versions(bootstrap, timeout=2.0) is True


def test_publish_to_a_missing_topic_fails_with_the_topic_named(kafka_bootstrap: str) -> None:
    # Given a producer that waits at most 2 s for metadata, and a topic nobody created
    prod = make_producer(kafka_bootstrap, max_block_ms=2_000)
    missing = "test.never-created.portwatch"
    try:
        # When a record is published there
        with pytest.raises(PublishError) as raised:
            publish(prod, missing, make_shards("scan-missing")[:1], timeout=10)
    finally:
        prod.close(timeout=5)

    # Then the error says which topic and how many records were lost
    assert "1 of 1 records to test.never-created.portwatch were not acknowledged" in str(
        raised.value
    )


# --- readiness probe against peers that are not Kafka (no broker needed) -------------


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _HostilePeer:
    """A loopback listener that accepts and then stays silent or answers junk."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)
            if self.reply:
                try:
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def __enter__(self) -> _HostilePeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self.sock.close()


def test_wait_for_broker_on_a_closed_port_raises_the_one_line_hint() -> None:
    # Given a loopback port nobody listens on
    bootstrap = f"127.0.0.1:{_free_loopback_port()}"

    # When we wait one second for a broker there
    with pytest.raises(KafkaUnavailable) as raised:
        wait_for_broker(bootstrap, timeout=1.0)

    # Then the error is the one-line hint naming the address
    assert str(raised.value) == (
        f"no Kafka broker answers at {bootstrap}: check --kafka / PORTWATCH_KAFKA "
        "(`make kafka-up` starts one on this machine)"
    )


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b"", id="silent-peer"),
        pytest.param(b"SSH-2.0-OpenSSH_9.2\r\n", id="ssh-banner"),
        pytest.param(b"\x7f\xff\xff\xff" + b"\x00" * 64, id="huge-length-prefix"),
        pytest.param(b"\x00\x00\x00\x06\x00\x00\x00\x01\x00\x00", id="wrong-correlation-id"),
    ],
)
def test_probe_says_no_to_peers_that_are_not_kafka(reply: bytes) -> None:
    # Given a loopback peer that accepts connections but is not a Kafka broker
    with _HostilePeer(reply) as peer:
        # When the readiness probe asks it for its API versions, with a 0.5 s bound
        answered = probe_api_versions(f"127.0.0.1:{peer.port}", timeout=0.5)

    # Then it is not taken for a broker (and the probe returned: pytest-timeout
    # turns a hang into a failure)
    assert answered is False
