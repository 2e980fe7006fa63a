"""A shard whose first discovery attempt dies before its host is found to answer on
every port, on a real tarpit (a namespace host whose every port SYN-ACKs) with the real
connect engine: the retry flags the host, and the ports the dead attempt found are held
to the tarpit rule too (only well-known candidates go to identification, marked)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from probers.discovery.base import DiscoveryError, Progress
from probers.discovery.connect import ConnectEngine
from producers.shards import ScanPlan
from schemas.records import OpenPort, PortRange, Shard, Target
from stream_processors.stages import TARPIT_CANDIDATES, TARPIT_REASON, discover_with_retries
from tests import netns

pytestmark = pytest.mark.netns
INDEX = 67  # 198.18.67.0/24, unused by the other netns tests
THRESHOLD = 500


class DiesEarly:
    """The real connect engine, killed (the fault, injected) after ``after`` open ports:
    a masscan that dies mid-shard."""

    name = "dies-early"

    def __init__(self, after: int, skip: set[int] | None = None) -> None:
        self.inner = ConnectEngine()
        self.after = after
        self.yielded: set[int] = set()
        self.skip = skip if skip is not None else set()  # ports another attempt found

    async def scan(self, shard: Shard, progress: Progress) -> AsyncIterator[OpenPort]:
        seen = 0
        async for port in self.inner.scan(shard, progress):
            if port.port in self.skip:
                continue
            self.yielded.add(port.port)
            yield port
            seen += 1
            if seen >= self.after:
                raise DiscoveryError("engine died mid-shard (injected)")


def _on_a_tarpit(scan_id: str, engines: list[object], *, last_port: int = 3000,
                 index: int = INDEX, threshold: int = THRESHOLD) -> tuple[Target, Any]:
    """discover_with_retries of one shard (ports 1..last_port) of a namespace host whose
    every port SYN-ACKs (its port 22 speaks SSH), one engine per attempt."""
    with netns.test_host(index, tcp_banners={22: b"SSH-2.0-OpenSSH_9.2p1\r\n"},
                         syn_ack_all=True) as host:
        target = Target(ip=host.addresses[0], target=host.addresses[0])
        plan = ScanPlan.build(scan_id, 0, [target], (PortRange(1, last_port),), ())
        shard = next(plan.plans[0].shards())
        attempts = iter(engines)
        return target, asyncio.run(discover_with_retries(
            shard, lambda _s: next(attempts), attempts=len(engines),  # type: ignore[arg-type,return-value]
            tarpit_threshold=threshold))


def test_a_dead_first_attempt_does_not_let_a_tarpits_ports_through() -> None:
    # Given a first attempt that dies after 400 open ports (under the threshold) and a
    # retry that sees the host answer on all 3,000
    target, outcome = _on_a_tarpit("s-tarpit", [DiesEarly(after=THRESHOLD - 100),
                                                ConnectEngine()])
    # Then the host is a tarpit, and only its well-known candidates go on, marked
    assert outcome.attempts == 2 and not outcome.error
    assert target.ip in outcome.tarpit_notes
    assert outcome.ports, "the candidates (22 among them) go to identification"
    assert {p.port for p in outcome.ports} <= TARPIT_CANDIDATES
    assert {p.reason for p in outcome.ports} == {TARPIT_REASON}
    assert 22 in {p.port for p in outcome.ports}
    [scan] = outcome.host_scans()
    assert scan.is_tarpit and scan.open_ports == len(outcome.ports) < 100


def test_a_host_answering_on_every_port_of_a_narrow_range_is_a_tarpit() -> None:
    # Given a namespace host whose every port SYN-ACKs, scanned over 1,000 ports with the
    # default threshold of 1,000 (it could never pass it: 1,000 fake ports went to
    # identification, and a junk-answering UDP host stored 1,000 findings)
    target, outcome = _on_a_tarpit("s-narrow", [ConnectEngine()], last_port=1000,
                                   index=INDEX + 1, threshold=1000)
    # Then it is flagged (more than 9 in 10 of what was scanned answered), and only its
    # well-known candidates go on
    assert target.ip in outcome.tarpit_notes
    assert {p.port for p in outcome.ports} <= TARPIT_CANDIDATES and 22 in {
        p.port for p in outcome.ports}


@pytest.mark.parametrize(("threshold", "ports", "expected"), [
    (1000, 65_535, 1000), (1000, 1000, 900), (1000, 200, 180), (1000, 100, 128),
    (1000, 3, 128), (50, 1000, 50), (5000, 65_535, 5000),
    # 65,535 turns the rule off, the share too (300 real services in 300 ports: a review)
    (65_535, 300, 65_535), (65_535, 65_535, 65_535)])
def test_the_threshold_for_a_shard(threshold: int, ports: int, expected: int) -> None:
    from stream_processors.stages import tarpit_threshold_for

    assert tarpit_threshold_for(threshold, ports) == expected


def test_two_dead_attempts_under_the_threshold_are_judged_on_their_union() -> None:
    # Given two attempts that each die after 400 open ports (under the threshold of 500)
    # of a host answering on every port, having found different ports
    first = DiesEarly(after=THRESHOLD - 100)
    target, outcome = _on_a_tarpit("s-union", [first, DiesEarly(THRESHOLD - 100,
                                                                skip=first.yielded)])
    # Then their 800 ports make it a tarpit (a review: each attempt alone was under, and
    # every fake port went to identification)
    assert outcome.attempts == 2 and outcome.error
    assert target.ip in outcome.tarpit_notes
    assert {p.port for p in outcome.ports} <= TARPIT_CANDIDATES
    assert outcome.open_seen[target.ip] == 2 * (THRESHOLD - 100)
