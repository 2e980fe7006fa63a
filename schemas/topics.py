"""Kafka topic names and partition counts: the one place they are defined.

Keys: every event is keyed by the host address (``record.key``) so that all events
of one host land on one partition (ordering per host, one worker per host).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    partitions: int
    doc: str


SHARDS = Topic("portwatch.shards", 8, "discovery work: Shard records, keyed by shard_id")
OPEN_PORTS = Topic("portwatch.open-ports", 8, "OpenPort events, keyed by host address")
FINDINGS = Topic("portwatch.findings", 8, "Finding records ready for the sink, keyed by host")
# Co-partitioned with FINDINGS (same count, same key: the host's address): Faust's assignor
# gives partition n of both to one sink, so each sink gets a host's findings with its host
# scans. With 4 against 8, two sinks split hosts' records between them (a review): the
# sink holding the host scan never had its findings.
HOST_SCANS = Topic("portwatch.host-scans", 8, "HostScan records (per-target scan summary), "
                   "co-partitioned with findings")
DEAD_LETTER = Topic("portwatch.dead-letter", 1, "poison messages with the reason")
CHANGES = Topic("portwatch.changes", 4, "ChangeEvent records (what changed), keyed by host")

ALL_TOPICS: tuple[Topic, ...] = (SHARDS, OPEN_PORTS, FINDINGS, HOST_SCANS, DEAD_LETTER,
                                 CHANGES)

# -- per-deployment prefix -----------------------------------------------------------

TOPIC_PREFIX_ENV = "PORTWATCH_TOPIC_PREFIX"


@dataclass(frozen=True, slots=True)
class TopicSet:
    """The topics of one deployment (or one test): the names above behind a prefix.

    A prefix lets two pipelines (two test runs, staging and production) share one
    broker without seeing each other's events. Partition counts never change with it.
    """

    prefix: str
    shards: Topic
    open_ports: Topic
    findings: Topic
    host_scans: Topic
    dead_letter: Topic
    changes: Topic

    @property
    def all(self) -> tuple[Topic, ...]:
        return (self.shards, self.open_ports, self.findings, self.host_scans, self.dead_letter,
                self.changes)


def topic_names(prefix: str = "") -> TopicSet:
    """The topics with ``prefix`` put before each name (``""``: the names above)."""

    def named(topic: Topic) -> Topic:
        return Topic(f"{prefix}{topic.name}", topic.partitions, topic.doc)

    return TopicSet(prefix, named(SHARDS), named(OPEN_PORTS), named(FINDINGS),
                    named(HOST_SCANS), named(DEAD_LETTER), named(CHANGES))
