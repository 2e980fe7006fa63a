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
HOST_SCANS = Topic("portwatch.host-scans", 4, "HostScan records (per-target scan summary)")
DEAD_LETTER = Topic("portwatch.dead-letter", 1, "poison messages with the reason")

ALL_TOPICS: tuple[Topic, ...] = (SHARDS, OPEN_PORTS, FINDINGS, HOST_SCANS, DEAD_LETTER)
