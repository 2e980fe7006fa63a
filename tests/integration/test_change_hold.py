"""Distributed change detection: the sink sees a host scan before its findings; the hold
releases it when they are in (or after a bound), the same rule computes its changes on a
real chdb store, and a replayed host-scan record yields no duplicate."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from schemas.records import (
    ChangeKind,
    Finding,
    HostScan,
    OpenPort,
    PortRange,
    RiskColor,
    ServiceInfo,
    Target,
)
from stream_processors.change_hold import ChangeStage, HostHold

T = Target(ip="127.0.0.1", target="127.0.0.1", organization="Org")
NOW = datetime.now(UTC).replace(microsecond=0)


def scan(scan_id: str, open_ports: int, when: datetime = NOW, shard: str = "0") -> HostScan:
    return HostScan(scan_id, T, when, when, 1000, open_ports, shard_id=f"{scan_id}:{shard}",
                    ports=(PortRange(1, 1000),))


def found(scan_id: str, port: int, when: datetime = NOW, color: RiskColor = RiskColor.RED
          ) -> Finding:
    return Finding(port=OpenPort(scan_id=scan_id, target=T, port=port, observed_at=when),
                   service=ServiceInfo(service="redis"), risk_color=color)


def test_hold_waits_for_findings_and_quiet_then_releases() -> None:
    hold = HostHold(settle=5, max_hold=600)
    hold.add([], [scan("s1", 2)], now=0)
    assert hold.ready(now=100) == []  # 0 of 2 findings
    hold.add([found("s1", 22)], [], now=101)
    assert hold.ready(now=200) == []  # 1 of 2
    hold.add([found("s1", 80)], [], now=201)
    assert hold.ready(now=203) == []  # complete, but not quiet for 5 s yet
    released = hold.ready(now=206.5)
    assert [h.scan_id for h in released] == ["s1"] and len(hold) == 0


def test_hold_releases_a_host_missing_findings_after_max_hold() -> None:
    hold = HostHold(settle=5, max_hold=60)
    hold.add([found("s1", 22)], [scan("s1", 3)], now=0)
    assert hold.ready(now=59) == []
    assert [h.scan_id for h in hold.ready(now=60)] == ["s1"]


def test_hold_keeps_every_shard_of_a_host() -> None:
    hold = HostHold(settle=5)
    hold.add([], [scan("s1", 0, shard="tcp"), scan("s1", 0, shard="udp")], now=0)
    assert sorted(h.shard_id for h in hold.ready(now=10)) == ["s1:tcp", "s1:udp"]


def test_a_shards_running_record_is_not_held_for_change_detection() -> None:
    # Given the record a discover worker publishes when a shard starts (status running)
    hold = HostHold(settle=5)
    running = HostScan("s1", T, NOW, NOW, 1000, 0, "running", shard_id="s1:0")
    hold.add([], [running], now=0)
    # Then nothing is released on its account, however long the shard takes
    assert hold.ready(now=100) == [] and len(hold) == 0
    # And the shard's end record is what change detection gets
    hold.add([found("s1", 22)], [scan("s1", 1)], now=100)
    assert [h.status for h in hold.ready(now=110)] == ["completed"]


def test_a_tarpit_host_is_released_when_settled_and_its_drops_are_noted() -> None:
    # Given a tarpit host whose shard sent 50 candidate ports, of which identification kept 1
    hold = HostHold(settle=5, max_hold=600)
    tarpit = HostScan("s1", T, NOW, NOW, 1000, 50, is_tarpit=True, shard_id="s1:0",
                      note="answers on every port", ports=(PortRange(1, 1000),))
    hold.add([found("s1", 22)], [tarpit], now=0)
    # Then it is released once quiet, not after max_hold (the rest were dropped, not lost)
    assert [h.scan_id for h in hold.ready(now=6)] == ["s1"]
    # And its scan record is written again with the count in its note, as a later version
    (noted,) = hold.renoted
    assert noted.note == ("answers on every port; 49 answering ports dropped: no banner, "
                          "probe match or TLS")
    assert noted.finished_at > tarpit.finished_at


def test_stage_computes_changes_when_findings_follow_and_a_replay_adds_nothing(store) -> None:  # type: ignore[no-untyped-def]
    from tests.servers import free_port

    port = free_port()  # nothing listens there: the re-probe of the last step is refused
    stage = ChangeStage(store, settle=0, max_hold=600)
    # Given the host scan of s1 stored before its finding (the order the sink sees)
    first = [scan("s1", 1)]
    store.insert_host_scans(first)
    asyncio.run(stage.on_stored([], first))
    assert asyncio.run(stage.flush()) == []  # held: its finding is not in yet
    f1 = [found("s1", port)]
    store.insert_findings(f1)
    asyncio.run(stage.on_stored(f1, []))
    events = asyncio.run(stage.flush())
    assert [(e.kind, e.port) for e in events] == [(ChangeKind.OPENED, port)]
    # When the same records are replayed (a restarted sink reads them again)
    asyncio.run(stage.on_stored(f1, first))
    again = asyncio.run(stage.flush())
    # Then the same events (same ids) come back and the table holds one row
    assert [e.event_id for e in again] == [e.event_id for e in events]
    assert store.query("SELECT count() FROM changes") == [(1,)]
    # And a later scan covering that port, without it, closes it after a refused re-probe
    later = NOW + timedelta(hours=1)
    second = [HostScan("s2", T, later, later, 1, 0, shard_id="s2:0",
                       ports=(PortRange(port, port),))]
    store.insert_host_scans(second)
    asyncio.run(stage.on_stored([], second))
    closed = asyncio.run(stage.flush())
    assert [(e.kind, e.port, e.previous_scan_id) for e in closed] == [
        (ChangeKind.CLOSED, port, "s1")]


def test_the_summary_of_a_distributed_tarpit_host_says_how_many_were_dropped(store) -> None:  # type: ignore[no-untyped-def]
    import time

    # Given the sink stored a tarpit host's shard record and the one finding kept
    stage = ChangeStage(store, settle=0.1)
    tarpit = HostScan("s1", T, NOW, NOW, 1000, 50, is_tarpit=True, shard_id="s1:0",
                      note="answers on every port", ports=(PortRange(1, 1000),))
    store.insert_host_scans([tarpit])
    kept = found("s1", 22)
    store.insert_findings([kept])
    asyncio.run(stage.on_stored([kept], [tarpit]))
    # When the hold releases the host
    asyncio.run(stage.flush(now=time.monotonic() + 1))
    # Then the Summary's note counts the ports dropped for naming no service
    (row,) = store.report("summary").dicts()
    assert "49 answering ports dropped: no banner, probe match or TLS" in row["scan_note"]


def _index_parts(store) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return store.active_parts(["port_latest", "host_latest"])  # type: ignore[no-any-return]


def test_the_stage_merges_the_page_indexes_when_its_hold_empties_at_most_every_interval(
        store) -> None:  # type: ignore[no-untyped-def]
    import time

    stage = ChangeStage(store, settle=0, compact_every=300)
    hosts = [Target(ip=f"127.0.7.{i}", target=f"127.0.7.{i}") for i in range(1, 4)]

    def store_host(host: Target) -> None:  # one sink batch: its own part in each index
        f = [Finding(port=OpenPort(scan_id="s1", target=host, port=22, observed_at=NOW),
                     service=ServiceInfo(service="ssh"))]
        h = [HostScan("s1", host, NOW, NOW, 1000, 1, shard_id="s1:0",
                      ports=(PortRange(1, 1000),))]
        store.insert_findings(f)
        store.insert_host_scans(h)
        asyncio.run(stage.on_stored(f, h))

    # Given two hosts stored in two batches: two parts in each page index
    store_host(hosts[0])
    store_host(hosts[1])
    assert _index_parts(store) == {"port_latest": 2, "host_latest": 2}
    # When the stage releases them and its hold is empty
    start = time.monotonic()
    assert len(asyncio.run(stage.flush(start))) == 2
    # Then the indexes are merged, and the pages read the same rows
    assert _index_parts(store) == {"port_latest": 1, "host_latest": 1}
    assert sorted(r["ip"] for r in store.report("summary").dicts()) == [
        hosts[0].ip, hosts[1].ip]
    # When a third host arrives a minute later: released, not merged (too soon)
    store_host(hosts[2])
    assert len(asyncio.run(stage.flush(start + 60))) == 1
    assert _index_parts(store) == {"port_latest": 2, "host_latest": 2}
    # Then merged once the interval has passed, and never again for nothing new
    assert asyncio.run(stage.flush(start + 301)) == []
    assert _index_parts(store) == {"port_latest": 1, "host_latest": 1}
    assert stage._released_since_compaction is False


def test_findings_a_successor_replays_without_their_host_scan_do_not_block_recovery(
        store) -> None:  # type: ignore[no-untyped-def]
    # Given a host scan and its finding stored by a sink that died before comparing them
    # (its host-scans offset committed, its findings' not), twenty minutes ago
    earlier = NOW - timedelta(minutes=20)
    dead = [scan("s1", 1, earlier)]
    f1 = [found("s1", 6379, earlier)]
    store.insert_host_scans(dead)
    store.insert_findings(f1)
    # When its successor gets the replayed finding only, and flushes
    stage = ChangeStage(store, settle=0, max_hold=600)
    asyncio.run(stage.on_stored(f1, []))
    events = asyncio.run(stage.flush())
    # Then recovery computes the host at once (the orphan finding held it back for an
    # hour: a review, 2026-12-06)
    assert [(e.kind, e.port, e.scan_id) for e in events] == [
        (ChangeKind.OPENED, 6379, "s1")]
    # and should the host scan's record still come, its events are read back, not new
    asyncio.run(stage.on_stored([], dead))
    again = asyncio.run(stage.flush())
    assert [e.event_id for e in again] == [e.event_id for e in events]
    assert store.query("SELECT count() FROM changes") == [(1,)]


def test_a_dead_sinks_last_scan_is_compared_before_the_hosts_next_one(
        store) -> None:  # type: ignore[no-untyped-def]
    import socket
    from dataclasses import replace

    # (a port that answers RST for the whole test: bound, never listening)
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        port = closed_port.getsockname()[1]
        # Given a host compared at s0 (SSH), then a scan s1 that found a second port,
        # stored by a sink that died before comparing it, a minute ago
        stage = ChangeStage(store, settle=0, max_hold=600)
        s0 = [scan("s0", 1, NOW - timedelta(hours=2))]
        f0 = [found("s0", 22, NOW - timedelta(hours=2))]
        store.insert_findings(f0)
        store.insert_host_scans(s0)
        asyncio.run(stage.on_stored(f0, s0))
        assert [(e.kind, e.port) for e in asyncio.run(stage.flush())] == [
            (ChangeKind.OPENED, 22)]
        s1 = [scan("s1", 2, NOW - timedelta(minutes=1))]
        store.insert_findings([found("s1", 22, s1[0].finished_at),
                               found("s1", port, s1[0].finished_at)])
        store.insert_host_scans(s1)
        # When its successor gets the host's next scan, s2 (the second port gone), within
        # the sweep's ten minutes
        successor = ChangeStage(store, settle=0, max_hold=600)
        successor._next_recovery = float("inf")  # (its start-up sweep is past: say so)
        f2 = [found("s2", 22)]
        s2 = [replace(scan("s2", 1), ports=(PortRange(1, 65535),))]
        store.insert_findings(f2)
        store.insert_host_scans(s2)
        asyncio.run(successor.on_stored(f2, s2))
        events = asyncio.run(successor.flush())
    # Then s1 is compared first, then s2 against it: the port opened and closed (before:
    # s2 was compared first, and s1, older than the state, never: no event at all)
    assert [(e.kind, e.port, e.scan_id) for e in events] == [
        (ChangeKind.OPENED, port, "s1"), (ChangeKind.CLOSED, port, "s2")]


def test_a_dead_sinks_scan_is_found_in_a_flush_of_thousands(
        store) -> None:  # type: ignore[no-untyped-def]
    import socket
    from dataclasses import replace

    every_port = (PortRange(1, 65535),)
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        port = closed_port.getsockname()[1]
        # Given a host "zz-last" compared at s0, and its s1 (one more port) a dead sink
        # stored a minute ago and never compared
        z = Target(ip="127.0.0.1", target="zz-last", organization="Org")

        def at(t: Target, scan_id: str, n: int, when: datetime) -> HostScan:
            return replace(scan(scan_id, n, when), target=t, ports=every_port)

        def on(t: Target, scan_id: str, p: int, when: datetime) -> Finding:
            f = found(scan_id, p, when)
            return replace(f, port=replace(f.port, target=t))

        stage = ChangeStage(store, settle=0, max_hold=600)
        before = NOW - timedelta(hours=2)
        s0, f0 = [at(z, "s0", 1, before)], [on(z, "s0", 22, before)]
        store.insert_findings(f0)
        store.insert_host_scans(s0)
        asyncio.run(stage.on_stored(f0, s0))
        asyncio.run(stage.flush())
        a_minute_ago = NOW - timedelta(minutes=1)
        store.insert_findings([on(z, "s1", 22, a_minute_ago), on(z, "s1", port, a_minute_ago)])
        store.insert_host_scans([at(z, "s1", 2, a_minute_ago)])
        # When its successor releases the host's s2 with 2,100 other hosts in one flush
        # (all sorting before it: the pending page of 2,000 filled with the released)
        others = [Target(ip=f"127.1.{i // 250}.{i % 250 + 1}", target=f"h{i:05d}")
                  for i in range(2100)]
        s2 = [at(t, "s2", 0, NOW) for t in others] + [at(z, "s2", 1, NOW)]
        f2 = [on(z, "s2", 22, NOW)]
        store.insert_findings(f2)
        store.insert_host_scans(s2)
        successor = ChangeStage(store, settle=0, max_hold=600)
        successor._next_recovery = float("inf")  # (its start-up sweep is past: say so)
        asyncio.run(successor.on_stored(f2, s2))
        events = asyncio.run(successor.flush())
    # Then s1 is still compared first (before: lost past the first page)
    assert [(e.kind, e.port, e.scan_id) for e in events if e.target.target == "zz-last"] == [
        (ChangeKind.OPENED, port, "s1"), (ChangeKind.CLOSED, port, "s2")]
