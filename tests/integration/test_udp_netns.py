"""UdpEngine against a test host in a network namespace: a real remote Linux stack.

Loopback is exempt from Linux's per-destination ICMP rate limit, so the one
behaviour that makes UDP scanning of real hosts hard is only real here: the
namespace's kernel answers at most ~6 port-unreachables in a burst, then one a
second (``net.ipv4.icmp_ratelimit`` = 1000 ms, its default). The test host comes
from ``tests/netns.py`` (198.18.0.0/15 on a veth pair, always torn down) and runs
a DNS-style responder that answers any datagram of 12 bytes or more.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from probers.discovery.base import Progress
from probers.discovery.udp import UdpEngine, decode_response
from probers.discovery.udp_payloads import dns_version_query
from schemas.records import OpenPort, PortRange, PortState, Proto, Shard, Target

try:
    from tests.netns import require_root, test_host
except ModuleNotFoundError:  # tests/ is not a package on sys.path: load the helper by path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from netns import require_root, test_host  # type: ignore[no-redef]

pytestmark = pytest.mark.netns

NETNS_INDEX = 57  # 198.18.57.0/24, unused by the other netns tests
CLOSED = PortRange(20000, 20199)  # nothing listens there in the test host


def _scan(
    engine: UdpEngine, ip: str, ports: tuple[PortRange, ...]
) -> tuple[list[OpenPort], Progress]:
    shard = Shard(
        scan_id="scan-udp-netns",
        shard_id="shard-udp-netns",
        targets=(Target(ip=ip, target=ip),),
        ports=ports,
        proto=Proto.UDP,
    )
    progress = Progress()

    async def collect() -> list[OpenPort]:
        return [event async for event in engine.scan(shard, progress)]

    return asyncio.run(collect()), progress


def _set_icmp_ratelimit(namespace: str, millis: int) -> None:
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            namespace,
            "sysctl",
            "-q",
            "-w",
            f"net.ipv4.icmp_ratelimit={millis}",
        ],
        check=True,
        capture_output=True,
        timeout=15,
    )


def test_rate_limited_icmp_leaves_ports_unresolved_not_open_filtered() -> None:
    require_root()
    # Given a test host with DNS on 53, 200 closed ports and Linux's default
    # per-destination ICMP rate limit (about one port-unreachable per second)
    with test_host(NETNS_INDEX, udp_dns_ports=(53,)) as host:
        # When the engine scans at its default pace
        found, progress = _scan(
            UdpEngine(timeout=0.5, deadline=60.0, use_nmap_payloads=False),
            host.address,
            (PortRange(53, 53), CLOSED),
        )
    # Then DNS is open with the reply to our own query, and the ports whose ICMP
    # answers were rate-limited are not passed off as 200 open|filtered rows
    assert [(o.port, o.state) for o in found] == [(53, PortState.OPEN)]
    assert decode_response(found[0].response)[:2] == dns_version_query()[:2]  # same txid
    assert any("rate-limited" in note and "unresolved" in note for note in progress.notes)
    assert progress.retries > len(CLOSED)  # retry rounds ran for the silent ports


def test_without_icmp_rate_limit_closed_ports_are_closed_and_silence_is_open_filtered() -> None:
    require_root()
    # Given the same host with the per-destination limit switched off in its
    # namespace, DNS on 53 and a responder on 40000 that ignores an empty datagram
    with test_host(NETNS_INDEX, udp_dns_ports=(53, 40000)) as host:
        _set_icmp_ratelimit(host.namespace, 0)
        # When scanned (empty datagrams everywhere but 53)
        found, progress = _scan(
            UdpEngine(timeout=0.5, deadline=60.0, use_nmap_payloads=False),
            host.address,
            (PortRange(53, 53), CLOSED, PortRange(40000, 40000)),
        )
    # Then every closed port is classified closed at the first try, 53 is open
    # and the silent 40000 is open|filtered
    assert sorted((o.port, o.state) for o in found) == [
        (53, PortState.OPEN),
        (40000, PortState.OPEN_FILTERED),
    ]
    assert progress.retries == 1  # only 40000 was retried
    assert progress.notes == []


def test_a_deadline_that_cannot_hold_the_extra_rounds_ends_them_not_the_shard() -> None:
    require_root()
    # Given the rate-limited host with DNS on 53 and 400 closed ports, scanned at 100
    # datagrams/s: the first pass and its retry take ~9 s, each extra round ~4.5 s more
    with test_host(NETNS_INDEX, udp_dns_ports=(53,)) as host:
        # When the shard's deadline (12 s) holds the retry but not the extra rounds
        found, progress = _scan(
            UdpEngine(rate=100, timeout=0.5, deadline=12.0, use_nmap_payloads=False),
            host.address,
            (PortRange(53, 53), PortRange(20000, 20399)),
        )
    # Then the shard ends with what it found (it failed at its deadline, and so did every
    # rerun: a review, 2026-12-06), the silent ports unresolved and said so
    assert [(o.port, o.state) for o in found] == [(53, PortState.OPEN)]
    assert any("deadline cut its extra rounds short" in note and "unresolved" in note
               for note in progress.notes), progress.notes
