"""The topics' partition counts: what co-partitioning needs.

A sink computes a host's changes from the host's findings and its host-scan records, so
both must reach the same sink. Both topics are keyed by the host's address; Faust's
assignor gives partition n of every topic with the same count to one worker. With 4
host-scan partitions against 8 finding partitions, two sinks split hosts between them
(a review, reproduced with Faust's own assignor below).
"""

from __future__ import annotations

from datetime import UTC, datetime

from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor

from producers.kafka_io import default_key
from schemas.records import Finding, HostScan, OpenPort, Target
from schemas.topics import FINDINGS, HOST_SCANS

T = Target(ip="198.18.0.7", target="198.18.0.7")


def test_host_scans_are_co_partitioned_with_findings() -> None:
    # same count, same key (as published): the host's address
    assert HOST_SCANS.partitions == FINDINGS.partitions
    now = datetime.now(UTC)
    finding = Finding(port=OpenPort(scan_id="s", target=T, port=22))
    assert default_key(finding) == default_key(HostScan("s", T, now, now, 1, 1)) == T.ip


def test_faust_gives_both_topics_partitions_to_the_same_sink() -> None:
    # Given three sinks sharing the two topics (one co-partitioned group: equal counts)
    workers = {f"sink{i}": CopartitionedAssignment() for i in range(3)}
    assignor = CopartitionedAssignor({FINDINGS.name, HOST_SCANS.name}, workers,
                                     num_partitions=FINDINGS.partitions, replicas=0)
    # Then every partition goes to exactly one sink, for both topics at once
    owned = [set(a.actives) for a in assignor.get_assignment().values()]
    assert sorted(p for parts in owned for p in parts) == list(range(FINDINGS.partitions))
    assert all(parts for parts in owned)
