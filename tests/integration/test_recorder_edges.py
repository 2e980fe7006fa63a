"""The change recorder's edges, on the real store (chdb): what a replay, a late shard and
a record that never completes do to the events and to the recorder's memory."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.records import (
    ChangeKind,
    Finding,
    HostScan,
    OpenPort,
    PortRange,
    Proto,
    RiskColor,
    ServiceInfo,
    Target,
)
from stream_processors.changes import TEXT_CAP
from stream_processors.history import ChangeRecorder

T = Target(ip="127.0.0.1", target="127.0.0.1", organization="Org")
NOW = datetime.now(UTC).replace(microsecond=0)


def host_scan(scan_id: str, open_ports: int, when: datetime, *, shard: str = "tcp",
              proto: Proto = Proto.TCP) -> HostScan:
    return HostScan(scan_id, T, when - timedelta(seconds=5), when, 65535, open_ports,
                    shard_id=f"{scan_id}:{shard}", proto=proto, ports=(PortRange(1, 65535),))


def found(scan_id: str, port: int, when: datetime, *, version: str = "1.0",
          proto: Proto = Proto.TCP) -> Finding:
    return Finding(port=OpenPort(scan_id=scan_id, target=T, port=port, proto=proto,
                                 observed_at=when),
                   service=ServiceInfo(service="http", product="nginx", version=version),
                   risk_color=RiskColor.GREEN)


def record(store: Any, findings: list[Finding], scans: list[HostScan]) -> list[Any]:
    store.insert_findings(findings)
    store.insert_host_scans(scans)
    recorder = ChangeRecorder(store)
    recorder.add_findings(findings)
    return asyncio.run(recorder.finish(scans))


def test_a_replayed_event_with_a_long_text_keeps_its_id(store: Any) -> None:
    first = NOW - timedelta(hours=2)
    record(store, [found("s1", 8080, first)], [host_scan("s1", 1, first)])
    # Given a version longer than an event keeps (a hostile banner's)
    later = NOW - timedelta(hours=1)
    long_version = "9." + "x" * 900
    findings, scans = [found("s2", 8080, later, version=long_version)], [host_scan("s2", 1, later)]
    events = record(store, findings, scans)
    [changed] = [e for e in events if e.kind is ChangeKind.VERSION_CHANGED]
    assert len(changed.after) <= TEXT_CAP
    # When the same host scan is recorded again (a replayed Kafka record)
    again = record(store, findings, scans)
    # Then the events read back carry the same ids as the ones published first
    assert sorted(e.event_id for e in again) == sorted(e.event_id for e in events)
    assert store.query("SELECT event_id FROM changes FINAL WHERE kind = 'version_changed'") == [
        (changed.event_id,)]


def test_a_shards_findings_stored_while_another_shard_is_compared_are_kept(
        store: Any) -> None:
    when = NOW - timedelta(minutes=30)
    tcp = [found("s1", 8080, when)]
    udp = [found("s1", 53, when, proto=Proto.UDP)]
    store.insert_findings(tcp + udp)
    recorder = ChangeRecorder(store)
    recorder.add_findings(tcp)

    async def udp_arrives(events: list[Any]) -> None:
        # the UDP shard's findings reach the recorder while the TCP shard is compared
        recorder.add_findings(udp)

    recorder.publish = udp_arrives
    tcp_scan = host_scan("s1", 1, when)
    udp_scan = host_scan("s1", 1, when + timedelta(seconds=10), shard="udp", proto=Proto.UDP)
    store.insert_host_scans([tcp_scan, udp_scan])
    first = asyncio.run(recorder.finish([tcp_scan]))
    recorder.publish = None
    # When the UDP shard's record comes in its turn
    second = asyncio.run(recorder.finish([udp_scan]))
    # Then its port opened, as it would have without the overlap
    assert [(e.kind, e.proto, e.port) for e in first] == [(ChangeKind.OPENED, Proto.TCP, 8080)]
    assert [(e.kind, e.proto, e.port) for e in second] == [(ChangeKind.OPENED, Proto.UDP, 53)]
    assert sorted(store.query("SELECT proto, port FROM port_state FINAL WHERE is_open")) == [
        ("tcp", 8080), ("udp", 53)]


def test_findings_whose_host_scan_never_comes_are_let_go_by_the_recorder_too(
        store: Any) -> None:
    from stream_processors.change_hold import ChangeStage

    stage = ChangeStage(store, max_hold=60)
    # Given findings of 20 hosts whose host-scan records never arrive (forged, lost)
    orphans = [Finding(port=OpenPort(scan_id="ghost", port=p, observed_at=NOW,
                                     target=Target(ip=f"127.0.9.{i}", target=f"127.0.9.{i}")),
                       service=ServiceInfo(service="http"), risk_color=RiskColor.GREEN)
               for i in range(1, 21) for p in range(1000, 1050)]
    asyncio.run(stage.on_stored(orphans, []))
    assert len(stage.recorder._snapshots) == 20 and len(stage.hold) == 20
    # When the hold lets them go after max_hold
    asyncio.run(stage.flush(now=float("inf")))
    # Then the recorder holds none of their 1,000 ports either
    assert len(stage.hold) == 0 and stage.recorder._snapshots == {}


def _stage_with_one_host(store: Any) -> tuple[Any, float]:
    from stream_processors.change_hold import ChangeStage

    stage = ChangeStage(store, settle=0, max_hold=600)
    when = NOW - timedelta(minutes=5)
    findings, scans = [found("s1", 8080, when)], [host_scan("s1", 1, when)]
    store.insert_findings(findings)
    store.insert_host_scans(scans)
    asyncio.run(stage.on_stored(findings, scans))  # held at time.monotonic()
    return stage, time.monotonic() + 1


def test_a_store_failing_the_change_step_holds_the_hosts_again_and_the_sink_lives(
        store: Any, caplog: Any) -> None:
    from stream_processors.change_hold import RETRY_SECONDS

    stage, now = _stage_with_one_host(store)
    # Given the store failing the step for real (a table it writes is detached)
    store._client.command("DETACH TABLE changes")
    try:
        # When the timer flushes: no exception escapes (Faust would crash the sink)
        assert asyncio.run(stage.flush(now=now)) == []
    finally:
        store._client.command("ATTACH TABLE changes")
    # Then it said so in one line, and holds the host again
    [warning] = [r.getMessage() for r in caplog.records if "failed, tried again" in r.getMessage()]
    assert "change detection of 1 host scan(s) failed" in warning and "\n" not in warning
    assert len(stage.hold) == 1
    assert asyncio.run(stage.flush(now=now + 1)) == []  # not before its retry time
    # And the next try computes its changes once
    events = asyncio.run(stage.flush(now=now + RETRY_SECONDS))
    assert [(e.kind, e.port) for e in events] == [(ChangeKind.OPENED, 8080)]
    assert len(stage.hold) == 0
    assert store.query("SELECT count() FROM changes") == [(1,)]


def test_events_are_published_before_the_hosts_states_move(store: Any) -> None:
    from stream_processors.change_hold import RETRY_SECONDS

    stage, now = _stage_with_one_host(store)
    published: list[str] = []
    tries = [0]

    async def broker_away_once(events: list[Any]) -> None:
        # The fault, faked: a broker that does not acknowledge (the first time)
        tries[0] += 1
        if tries[0] == 1:
            raise TimeoutError("the broker did not acknowledge the change events")
        published.extend(e.event_id for e in events)

    stage.recorder.publish = broker_away_once
    # When publishing fails, the host's state has not moved: nothing is taken for sent
    assert asyncio.run(stage.flush(now=now)) == []
    assert store.query("SELECT count() FROM host_state") == [(0,)]
    # Then the retry publishes the event, and only then is the host compared for good
    events = asyncio.run(stage.flush(now=now + RETRY_SECONDS))
    assert published == [e.event_id for e in events] and len(events) == 1
    assert store.query("SELECT scan_id FROM host_state FINAL") == [("s1",)]


def test_the_closure_reprobe_stays_inside_the_scope(store: Any) -> None:
    from producers.targets import Scope
    from stream_processors.history import ReprobeOptions
    from tests.loopback import free_port

    gone = free_port()  # nothing listens there: a re-probe is refused, the port closes
    keep = 1  # still seen open in every scan: the host answers (no "unreachable")
    first, later = NOW - timedelta(hours=2), NOW - timedelta(hours=1)
    record(store, [found("s1", keep, first), found("s1", gone, first)],
           [host_scan("s1", 2, first)])

    def rescan(recorder: ChangeRecorder, scan_id: str, when: datetime) -> list[Any]:
        seen = [found(scan_id, keep, when)]
        store.insert_findings(seen)
        store.insert_host_scans([host_scan(scan_id, 1, when)])
        recorder.add_findings(seen)
        return asyncio.run(recorder.finish([host_scan(scan_id, 1, when)]))

    # Given a sink fenced to the test network, and a host outside it (its address came
    # from a topic) whose port was open and is not seen now
    fenced = ChangeRecorder(store, ReprobeOptions(scope=Scope.build(allow=["198.18.0.0/15"])))
    # Then it is not re-probed, so not closed (a closure needs a failed re-probe)
    assert [e.kind for e in rescan(fenced, "s2", later) if e.port == gone] == []
    # While inside the scope, the same comparison re-probes it and closes it
    inside = ChangeRecorder(store, ReprobeOptions(scope=Scope.build(allow=["127.0.0.0/8"])))
    assert [(e.kind, e.port) for e in rescan(inside, "s3", NOW)] == [(ChangeKind.CLOSED, gone)]


def test_a_tarpits_noted_host_scan_is_compared_once_and_never_recovered(store: Any) -> None:
    from stream_processors.change_hold import ChangeStage
    from stream_processors.history import pending_host_scans

    stage = ChangeStage(store, settle=0, max_hold=600)
    first, later = NOW - timedelta(hours=2), NOW - timedelta(hours=1)

    def feed(findings: list[Finding], scans: list[HostScan]) -> list[Any]:
        with stage.storing(findings, scans):
            store.insert_findings(findings)
            store.insert_host_scans(scans)
            asyncio.run(stage.on_stored(findings, scans))
        return asyncio.run(stage.flush(now=time.monotonic() + 1))

    feed([found("s1", 22, first), found("s1", 80, first)], [host_scan("s1", 2, first)])
    # Given a tarpit host whose shard announced 3 ports and kept 1 (2 candidates named
    # nothing and were dropped): its host-scan rows are stored again, with the note
    tarpit = replace(host_scan("s2", 3, later), is_tarpit=True)
    feed([found("s2", 22, later), found("s2", 80, later)], [tarpit])
    [noted] = store.query("SELECT note FROM host_scans FINAL WHERE scan_id = 's2' "
                          "ORDER BY finished_at DESC LIMIT 1")
    assert "1 answering ports dropped" in str(noted[0])
    # Then the host's state names the rows the store holds: nothing is left uncompared,
    # so no recovery sweep computes (and re-probes) that scan again
    assert pending_host_scans(store, finished_before=datetime.now(UTC)) == []
    stage._next_recovery = float("-inf")  # the next sweep, now
    assert asyncio.run(stage.flush(now=time.monotonic() + 2)) == []


def _current(store: Any) -> set[int]:
    return {r["port"] for r in store.report("list", {}).dicts()}


def test_a_port_only_a_stopped_scan_saw_outlives_a_narrower_completed_scan(
        store: Any) -> None:
    a, b, c, d = (NOW - timedelta(hours=h) for h in (4, 3, 2, 1))
    narrow = {"ports": (PortRange(20022, 20022),), "ports_scanned": 1}
    # Given a completed scan that saw 20022, then a scan stopped part-way that also saw
    # 20080 (the Summary shows it: what a scan cut short sees is open)
    record(store, [found("a", 20022, a)], [host_scan("a", 1, a)])
    assert record(store, [found("b", 20022, b), found("b", 20080, b)],
                  [replace(host_scan("b", 2, b), status="interrupted")]) == []
    assert _current(store) == {20022, 20080}
    # When a completed scan of 20022 only follows
    events = record(store, [found("c", 20022, c)], [replace(host_scan("c", 1, c), **narrow)])
    # Then 20080 is opened by it, saying which scan saw it, and stays shown (it vanished
    # with no event: the narrower scan became the host's ports scan, and nothing
    # carried a port the change log had never held)
    assert [(e.kind, e.port, e.after, e.scan_id, e.previous_scan_id) for e in events] == [
        (ChangeKind.OPENED, 20080,
         "http nginx 1.0 (green), seen by scan b, which did not complete", "c", "a")]
    assert _current(store) == {20022, 20080}
    # And another narrow scan keeps it, saying nothing again
    assert record(store, [found("d", 20022, d)],
                  [replace(host_scan("d", 1, d), **narrow)]) == []
    assert _current(store) == {20022, 20080}
    (summary,) = store.report("summary", {}).dicts()
    assert summary["open_ports"] == 2


def test_a_completed_scan_that_looked_at_a_stopped_scans_port_has_the_last_word(
        store: Any) -> None:
    a, b, c = (NOW - timedelta(hours=h) for h in (3, 2, 1))
    record(store, [found("a", 20022, a)], [host_scan("a", 1, a)])
    record(store, [found("b", 20080, b)], [replace(host_scan("b", 1, b), status="interrupted")])
    # When a completed scan that covered 20080 did not see it
    events = record(store, [found("c", 20022, c)], [host_scan("c", 1, c)])
    # Then nothing opened, and it is not shown: the later look wins
    assert events == []
    assert _current(store) == {20022}


def _narrow(scan_id: str, when: datetime, *ports: int) -> HostScan:
    return replace(host_scan(scan_id, len(ports), when),
                   ports=tuple(PortRange(p, p) for p in ports), ports_scanned=len(ports))


def test_a_stopped_scans_later_completed_shard_that_did_not_find_the_port_wins(
        store: Any) -> None:
    a, s1, p2, c = (NOW - timedelta(hours=h) for h in (4, 3, 2, 1))
    record(store, [found("a", 20022, a)], [host_scan("a", 1, a)])
    record(store, [found("s1", 20080, s1)], [replace(host_scan("s1", 1, s1),
                                                     status="interrupted")])
    # Given a later scan whose TCP shard completed over 20080 without finding it, and
    # whose UDP shard was interrupted (the scan did not complete)
    record(store, [found("p2", 20022, p2)],
           [host_scan("p2", 1, p2),
            replace(host_scan("p2", 0, p2, shard="udp", proto=Proto.UDP), status="interrupted",
                    ports=(PortRange(53, 53),), ports_scanned=1)])
    assert _current(store) == {20022}
    # When a narrow completed scan follows, Then 20080 is not opened: the later look wins
    assert record(store, [found("c", 20022, c)], [_narrow("c", c, 20022)]) == []
    assert _current(store) == {20022}


def test_a_killed_scans_sighting_counts_by_when_it_was_seen(store: Any) -> None:
    k, a, c = (NOW - timedelta(hours=h) for h in (5, 4, 1))
    # Given a scan killed while running (its only record, "running", dated its shard's
    # start, before the completed scan below ended), which saw 20080 after that scan
    record(store, [found("a", 20022, a)], [host_scan("a", 1, a)])
    seen = a + timedelta(minutes=30)
    record(store, [found("k", 20080, seen)], [replace(host_scan("k", 1, k), status="running")])
    assert _current(store) == {20022, 20080}
    # When a narrow completed scan follows, Then it opens 20080
    events = record(store, [found("c", 20022, c)], [_narrow("c", c, 20022)])
    assert [(e.kind, e.port) for e in events] == [(ChangeKind.OPENED, 20080)]
    assert _current(store) == {20022, 20080}


def test_a_stopped_scan_compared_in_the_same_call_still_counts(store: Any) -> None:
    a, s, c = (NOW - timedelta(hours=h) for h in (3, 2, 1))
    record(store, [found("a", 20022, a)], [host_scan("a", 1, a)])
    # Given a stopped scan and a narrow completed one reaching the recorder together
    # (one flush of the sink)
    events = record(store, [found("s", 20080, s), found("c", 20022, c)],
                    [replace(host_scan("s", 1, s), status="interrupted"),
                     _narrow("c", c, 20022)])
    # Then the stopped scan's port is opened by the completed one
    assert [(e.kind, e.port, e.scan_id) for e in events] == [(ChangeKind.OPENED, 20080, "c")]
    assert _current(store) == {20022, 20080}


def test_a_late_older_record_in_the_call_does_not_widen_the_window(store: Any) -> None:
    old, a, s, c1, c2 = (NOW - timedelta(hours=h) for h in (6, 5, 3, 2, 1))
    record(store, [found("a", 20022, a)], [host_scan("a", 1, a)])
    record(store, [found("s", 20080, s)], [replace(host_scan("s", 1, s), status="interrupted")])
    # Given a wide completed scan that looked at 20080 after the stopped scan saw it
    record(store, [found("c1", 20022, c1)], [host_scan("c1", 1, c1)])
    # When a late record older than the state and a narrow completed scan come together
    events = record(store, [found("old", 20022, old), found("c2", 20022, c2)],
                    [host_scan("old", 1, old), _narrow("c2", c2, 20022)])
    # Then nothing opens: the stopped scan's sighting is older than the state
    assert events == []
    assert _current(store) == {20022}


def test_a_scan_that_completed_one_host_and_stopped_on_another_still_counts_there(
        store: Any) -> None:
    other = Target(ip="127.0.0.3", target="127.0.0.3", organization="Org")
    a, x, y = (NOW - timedelta(hours=h) for h in (3, 2, 1))

    def on(target: Target, f: Finding) -> Finding:
        return replace(f, port=replace(f.port, target=target))

    record(store, [found("a", 20022, a), on(other, found("a", 20022, a))],
           [host_scan("a", 1, a), replace(host_scan("a", 1, a), target=other)])
    # Given a scan that completed the first host and was stopped on the second, where it
    # saw 20080, and a narrow completed scan of the second, reaching the recorder together
    events = record(
        store, [found("x", 20022, x), on(other, found("x", 20080, x)),
                on(other, found("y", 20022, y))],
        [host_scan("x", 1, x), replace(host_scan("x", 1, x), target=other, status="interrupted"),
         replace(_narrow("y", y, 20022), target=other)])
    # Then the narrow scan opens 20080 on the second host
    assert [(e.kind, e.target.ip, e.port, e.scan_id) for e in events] == [
        (ChangeKind.OPENED, "127.0.0.3", 20080, "y")]
    assert {(r["ip"], r["port"]) for r in store.report("list", {}).dicts()} == {
        ("127.0.0.1", 20022), ("127.0.0.3", 20022), ("127.0.0.3", 20080)}
