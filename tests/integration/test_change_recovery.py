"""Change recovery: a transport that died between storing a host's scan and computing its
changes (a sink crash while the host was held, a kill -9 at a shard's end) loses no event.
The store is the journal: the next recorder finds the completed host scans newer than
their host's state, rebuilds their snapshots from the stored rows and computes the events
the dead one would have. Real chdb store; re-probes go to loopback ports where nothing
listens (the kernel refuses them)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.records import (
    CdnVerdict,
    Certificate,
    ChangeEvent,
    ChangeKind,
    CipherSuite,
    Finding,
    HostScan,
    OpenPort,
    PortRange,
    PortState,
    ProbeStatus,
    Proto,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)
from stream_processors.change_hold import ChangeStage
from stream_processors.changes import fingerprint, snapshot_of
from stream_processors.history import (
    ChangeRecorder,
    ReprobeOptions,
    pending_host_scans,
    stored_snapshots,
)
from stream_processors.sink import StoreSink
from tests.servers import free_port, free_ports

T = Target(ip="127.0.0.1", target="127.0.0.1", organization="Org", asset="a-1")
DAY1 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
DAY2 = DAY1 + timedelta(days=1)
LATER = DAY2 + timedelta(hours=1)  # "now" for the recovery: after both scans


def _finding(scan_id: str, port: int, when: datetime, version: str = "1.0",
             color: RiskColor = RiskColor.GREEN, target: Target = T) -> Finding:
    return Finding(port=OpenPort(scan_id=scan_id, target=target, port=port, observed_at=when),
                   service=ServiceInfo(service="http", product="nginx", version=version,
                                       method="banner:http"),
                   risk_color=color)


def _host_scan(scan_id: str, when: datetime, open_ports: int, ports: list[int], *,
               status: str = "completed", target: Target = T) -> HostScan:
    return HostScan(scan_id, target, when - timedelta(minutes=1), when, len(ports), open_ports,
                    status=status, shard_id=f"{scan_id}:0",
                    ports=tuple(PortRange(p, p) for p in sorted(ports)))


def _store_scan(store, findings: list[Finding], scans: list[HostScan]) -> None:  # type: ignore[no-untyped-def]
    """What a sink or the embedded runner writes before it computes changes."""
    store.insert_findings(findings)
    store.insert_host_scans(scans)


def test_a_scan_stored_but_never_compared_gets_its_events_from_the_next_recorder(store) -> None:  # type: ignore[no-untyped-def]
    kept, bumped, gone, new = free_ports(4)
    ports = [kept, bumped, gone, new]
    # Given day 1 stored and compared: three ports open
    day1 = [_finding("s1", p, DAY1) for p in (kept, bumped, gone)]
    _store_scan(store, day1, [_host_scan("s1", DAY1, 3, ports)])
    first = ChangeRecorder(store)
    first.add_findings(day1)
    assert len(asyncio.run(first.finish([_host_scan("s1", DAY1, 3, ports)]))) == 3
    # And day 2 stored by a transport that died before comparing it: one version
    # bumped, one port gone (nothing listens there: its re-probe is refused), one new red
    day2 = [_finding("s2", kept, DAY2), _finding("s2", bumped, DAY2, version="1.1"),
            _finding("s2", new, DAY2, color=RiskColor.RED)]
    _store_scan(store, day2, [_host_scan("s2", DAY2, 3, ports)])
    assert [h.scan_id for h in pending_host_scans(store, finished_before=LATER)] == ["s2"]
    # When a new recorder recovers what was never compared
    events = asyncio.run(ChangeRecorder(store).recover(finished_before=LATER))
    # Then it emits exactly day 2's events, against day 1, at day 2's time
    assert sorted((e.kind, e.port, e.before, e.after) for e in events) == sorted([
        (ChangeKind.VERSION_CHANGED, bumped, "1.0", "1.1"),
        (ChangeKind.CLOSED, gone, "http nginx 1.0 (green)", "closed"),
        (ChangeKind.OPENED, new, "", "http nginx 1.0 (red)"),
    ])
    assert {(e.scan_id, e.previous_scan_id, e.observed_at) for e in events} == {
        ("s2", "s1", DAY2)}
    # And nothing is pending any more: a second recovery adds no event and no row
    assert pending_host_scans(store, finished_before=LATER) == []
    assert asyncio.run(ChangeRecorder(store).recover(finished_before=LATER)) == []
    assert store.query("SELECT count() FROM changes FINAL WHERE scan_id = 's2'") == [(3,)]


def test_a_replayed_batch_of_hosts_reads_its_events_back_in_one_query_per_batch(
        store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import stream_processors.history as history

    port = free_port()
    hosts = [Target(ip=f"127.0.8.{i}", target=f"127.0.8.{i}") for i in range(1, 6)]
    # Given two days of five hosts compared: opened on day 1, a version bump on day 2
    day_events = []
    for scan_id, when, version in (("s1", DAY1, "1.0"), ("s2", DAY2, "1.1")):
        found = [_finding(scan_id, port, when, version=version, target=t) for t in hosts]
        scans = [_host_scan(scan_id, when, 1, [port], target=t) for t in hosts]
        _store_scan(store, found, scans)
        recorder = ChangeRecorder(store)
        recorder.add_findings(found)
        day_events.append(asyncio.run(recorder.finish(scans)))
    assert [len(e) for e in day_events] == [5, 5]
    # When day 2's records come back for every host (a replayed partition), read two
    # hosts per query
    monkeypatch.setattr(history, "HOST_BATCH", 2)
    replay_queries = []
    real_query = store.query

    def counting(sql, parameters=None):  # type: ignore[no-untyped-def]
        if "FROM changes WHERE" in sql:
            replay_queries.append(sql)
        return real_query(sql, parameters)

    monkeypatch.setattr(store, "query", counting)
    again = asyncio.run(ChangeRecorder(store).finish(
        [_host_scan("s2", DAY2, 1, [port], target=t) for t in reversed(hosts)]))
    # Then the same events come back, same ids, and the log holds each once
    assert sorted(e.event_id for e in again) == sorted(e.event_id for e in day_events[1])
    assert {(e.kind, e.before, e.after) for e in again} == {
        (ChangeKind.VERSION_CHANGED, "1.0", "1.1")}
    assert [e.target.ip for e in again] == [t.ip for t in reversed(hosts)]
    assert len(replay_queries) == 3  # ceil(5 / 2), not one per host
    assert real_query("SELECT count() FROM changes FINAL") == [(10,)]


def test_a_later_shard_of_the_stored_scan_is_compared_not_replayed(store) -> None:  # type: ignore[no-untyped-def]
    from stream_processors.history import load_states

    first_port, second_port = free_ports(2)
    # Given shard 0 of scan s1 compared: one port opened
    one = [_finding("s1", first_port, DAY2)]
    shard0 = _host_scan("s1", DAY2, 1, [first_port])
    _store_scan(store, one, [shard0])
    recorder = ChangeRecorder(store)
    recorder.add_findings(one)
    assert [e.port for e in asyncio.run(recorder.finish([shard0]))] == [first_port]
    # When shard 1 of the same scan (other ports, finished later) arrives on its own
    two = [_finding("s1", second_port, DAY2 + timedelta(minutes=1))]
    shard1 = replace(_host_scan("s1", DAY2 + timedelta(minutes=1), 1, [second_port]),
                     shard_id="s1:1")
    _store_scan(store, two, [shard1])
    recorder.add_findings(two)
    events = asyncio.run(recorder.finish([shard1]))
    # Then it is compared (its port opened, shard 0's left alone), not read back as a
    # replay, and the host's state keeps both shards' ports
    assert [(e.kind, e.port) for e in events] == [(ChangeKind.OPENED, second_port)]
    state = load_states(store, [T])[(T.target, T.ip)]
    assert sorted(p for (_proto, p), s in state.ports.items() if s.is_open) == sorted(
        [first_port, second_port])
    # (and its fingerprint is of both: the next unchanged scan takes the fast path)
    assert store.query("SELECT fingerprint FROM host_state FINAL") == [
        (fingerprint(state.open_ports),)]


def _compared(store, found: list[Finding], scans: list[HostScan]) -> None:  # type: ignore[no-untyped-def]
    """A scan stored and compared, as a live transport does."""
    _store_scan(store, found, scans)
    recorder = ChangeRecorder(store)
    recorder.add_findings(found)
    asyncio.run(recorder.finish(scans))


def test_two_scans_a_dead_sink_left_are_each_compared_with_the_one_before(store) -> None:  # type: ignore[no-untyped-def]
    kept, brief = free_ports(2)
    ports = [kept, brief]
    s0_at, s1_at, s2_at = DAY1, DAY1 + timedelta(hours=12), DAY2
    # Given scan s0 compared (one port), then s1 and s2 stored by a sink that died
    # holding s1 while s2 ran: s1 saw a port open briefly and a version bump, s2 saw
    # the port gone again (nothing listens: its re-probe is refused) and the bump undone
    _compared(store, [_finding("s0", kept, s0_at)], [_host_scan("s0", s0_at, 1, ports)])
    _store_scan(store, [_finding("s1", kept, s1_at, version="1.1"),
                        _finding("s1", brief, s1_at, color=RiskColor.RED)],
                [_host_scan("s1", s1_at, 2, ports)])
    _store_scan(store, [_finding("s2", kept, s2_at)], [_host_scan("s2", s2_at, 1, ports)])
    assert [h.scan_id for h in pending_host_scans(store, finished_before=LATER)] == [
        "s1", "s2"]
    # When a new recorder recovers what was never compared
    events = asyncio.run(ChangeRecorder(store).recover(finished_before=LATER))
    # Then each scan's events are against the scan before it (before: s2 was compared
    # with s0 alone, and the red port that opened and closed left no trace)
    assert sorted((e.scan_id, e.previous_scan_id, e.kind, e.port, e.after)
                  for e in events) == sorted([
        ("s1", "s0", ChangeKind.VERSION_CHANGED, kept, "1.1"),
        ("s1", "s0", ChangeKind.OPENED, brief, "http nginx 1.0 (red)"),
        ("s2", "s1", ChangeKind.VERSION_CHANGED, kept, "1.0"),
        ("s2", "s1", ChangeKind.CLOSED, brief, "closed"),
    ])
    assert pending_host_scans(store, finished_before=LATER) == []
    assert store.query("SELECT scan_id FROM host_state FINAL") == [("s2",)]


def test_a_scan_after_one_the_caller_holds_waits_for_it(store) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    s1_at, s2_at = DAY1 + timedelta(hours=12), DAY2
    # Given a host's s1 and s2 stored, never compared, and s1 held by the caller
    _store_scan(store, [_finding("s1", port, s1_at)], [_host_scan("s1", s1_at, 1, [port])])
    _store_scan(store, [_finding("s2", port, s2_at, version="1.1")],
                [_host_scan("s2", s2_at, 1, [port])])
    held = {("s1", T.target, T.ip)}
    # When recovery sweeps, then it leaves both: s2 compared first would make s1, when
    # its hold releases it, "older than the state", and its events would never be made
    recorder = ChangeRecorder(store)
    assert asyncio.run(recorder.recover(finished_before=LATER, held=held)) == []
    assert store.query("SELECT count() FROM host_state") == [(0,)]
    # And once s1 is no longer held, both come out in order
    events = asyncio.run(recorder.recover(finished_before=LATER))
    assert [(e.scan_id, e.kind) for e in events] == [
        ("s1", ChangeKind.OPENED), ("s2", ChangeKind.VERSION_CHANGED)]


def test_what_is_not_finished_is_never_recovered(store) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    hosts = [Target(ip=f"127.0.9.{i}", target=f"127.0.9.{i}") for i in range(1, 5)]
    interrupted, missing, recent, done = hosts
    # an interrupted scan changes nothing
    _store_scan(store, [_finding("s1", port, DAY2, target=interrupted)],
                [_host_scan("s1", DAY2, 1, [port], status="interrupted", target=interrupted)])
    # a host whose announced findings are not all stored yet (still in the pipeline)
    _store_scan(store, [_finding("s1", port, DAY2, target=missing)],
                [_host_scan("s1", DAY2, 2, [port, port + 1], target=missing)])
    # a host scanned after the cutoff (a live sink may still hold it)
    _store_scan(store, [_finding("s1", port, LATER, target=recent)],
                [_host_scan("s1", LATER, 1, [port], target=recent)])
    # and one that is complete and old enough
    _store_scan(store, [_finding("s1", port, DAY2, target=done)],
                [_host_scan("s1", DAY2, 1, [port], target=done)])
    pending = pending_host_scans(store, finished_before=LATER)
    assert [h.target.ip for h in pending] == [done.ip]
    # its coverage comes back whole: it closes only what it looked at
    assert pending[0].ports == (PortRange(port, port),) and pending[0].proto is Proto.TCP


def test_a_restarted_sink_computes_the_changes_its_predecessor_held(store) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    scans = [_host_scan("s1", DAY2, 1, [port])]
    found = [_finding("s1", port, DAY2, color=RiskColor.RED)]
    # Given a sink that started (its first flush sweeps: nothing to recover yet), stored
    # a host's records and held it, then died
    dead = ChangeStage(store, settle=600, max_hold=600)
    assert asyncio.run(dead.flush()) == []
    _store_scan(store, found, scans)
    asyncio.run(dead.on_stored(found, scans))
    assert asyncio.run(dead.flush()) == []  # still held when it died
    # When its successor starts (its first flush sweeps for what was never compared)
    successor = ChangeStage(store, settle=0, max_hold=60)
    events = asyncio.run(successor.flush())
    # Then the held host's events come out of it, once
    assert [(e.kind, e.port, e.scan_id) for e in events] == [(ChangeKind.OPENED, port, "s1")]
    assert asyncio.run(successor.flush()) == []


def test_the_sweep_leaves_a_backlog_the_sink_holds_to_its_hold(store) -> None:  # type: ignore[no-untyped-def]
    # Given a predecessor's host, stored and never compared (what the sweep is for), and a
    # backlog host of the same age this sink has just stored whole and holds while it
    # settles (the sink's first flush raced its first batches: CI saw it once)
    orphan = Target(ip="127.0.0.2", target="127.0.0.2")
    a, b, c = free_ports(3)
    _store_scan(store, [_finding("s1", c, DAY2, target=orphan)],
                [_host_scan("s1", DAY2, 1, [c], target=orphan)])
    stage = ChangeStage(store, settle=5, max_hold=600)
    scans = [_host_scan("s1", DAY2, 2, [a, b])]
    found = [_finding("s1", a, DAY2, color=RiskColor.RED), _finding("s1", b, DAY2)]
    _store_scan(store, found, scans)
    asyncio.run(stage.on_stored(found, scans))
    # When the sweep runs before the held host has settled
    swept = asyncio.run(stage.flush())
    # Then it computes the predecessor's host only
    assert [(e.target.ip, e.kind, e.port) for e in swept] == [
        ("127.0.0.2", ChangeKind.OPENED, c)]
    # And once settled, the hold releases its host: both ports, once
    released = asyncio.run(stage.flush(time.monotonic() + 6))
    assert sorted((e.target.ip, e.kind, e.port) for e in released) == sorted(
        [("127.0.0.1", ChangeKind.OPENED, a), ("127.0.0.1", ChangeKind.OPENED, b)])
    assert asyncio.run(stage.flush(time.monotonic() + 12)) == []


def test_the_sweep_leaves_a_batch_the_sink_is_storing_to_its_hold(store) -> None:  # type: ignore[no-untyped-def]
    # Given a sink storing a backlog host: its rows are in the store, and the sink has
    # not yet handed them to its hold (the sweep ran in that window: CI saw it again)
    stage = ChangeStage(store, settle=5, max_hold=600)
    a = free_port()
    scans = [_host_scan("s1", DAY2, 1, [a])]
    found = [_finding("s1", a, DAY2)]
    with stage.storing(found, scans):
        _store_scan(store, found, scans)
        # When the sweep runs
        swept = asyncio.run(stage.flush())
        asyncio.run(stage.on_stored(found, scans))
    # Then it leaves the host alone, and the hold releases it once settled, once
    assert swept == []
    released = asyncio.run(stage.flush(time.monotonic() + 6))
    assert [(e.target.ip, e.kind, e.port) for e in released] == [
        ("127.0.0.1", ChangeKind.OPENED, a)]
    assert ("s1", "127.0.0.1", "127.0.0.1") not in stage.hold  # no claim left behind


def test_the_sink_claims_a_batch_from_before_its_insert_to_after_its_hold_has_it(store) -> None:  # type: ignore[no-untyped-def]
    key = ("s1", "127.0.0.1", "127.0.0.1")
    seen: list[tuple[int, bool]] = []  # (host-scan rows stored, the hold has the host)

    class Watched(ChangeStage):
        @contextlib.contextmanager
        def storing(self, findings: Sequence[Finding], scans: Sequence[HostScan]
                    ) -> Iterator[None]:
            with super().storing(findings, scans):
                seen.append((store.query("SELECT count() FROM host_scans")[0][0],
                             key in self.hold))
                yield
                seen.append((store.query("SELECT count() FROM host_scans")[0][0],
                             len(self.hold) == 1))

    sink = StoreSink(store, changes=Watched(store, settle=5, max_hold=600))
    a = free_port()
    asyncio.run(sink.write([_finding("s1", a, DAY2)], [_host_scan("s1", DAY2, 1, [a])]))
    # The claim began before the insert (nothing stored, the host already claimed) and
    # ended after the hold had it
    assert seen == [(0, True), (1, True)]


# -- the rebuilt snapshot is the one the findings give -----------------------------------------

_texts = st.text(max_size=40) | st.sampled_from(["", "x" * 5000, "caf\u00e9", "\ud800bad",
                                                   "a\x00b", "interrupted during identification"])
_suites = st.lists(st.tuples(st.sampled_from(["TLSv1.0", "TLSv1.2", "TLSv1.3"]),
                             st.sampled_from(["TLS_RSA_WITH_RC4_128_SHA", "TLS_AES_128_GCM_SHA256",
                                              "TLS_RSA_WITH_3DES_EDE_CBC_SHA", "X" * 2000]),
                             st.sampled_from(["weak", "medium", "strong", ""])),
                   max_size=6, unique_by=lambda s: (s[0], s[1]))
_certs = st.lists(st.tuples(_texts | st.sampled_from(["ab" * 32]),
                            st.sampled_from(["", "2031-01-01T00:00:00+00:00", "not a date",
                                             "2026-12-05T10:00:00Z", "9999-12-31T23:59:59"])),
                  max_size=3)
_ids = itertools.count(1)


@st.composite
def findings(draw: st.DrawFn) -> Finding:
    n = next(_ids)
    target = Target(ip=f"127.1.{n // 250}.{n % 250 + 1}", target=f"h{n}.example.test")
    proto = draw(st.sampled_from([Proto.TCP, Proto.UDP]))
    status = draw(st.sampled_from(list(ProbeStatus)))
    tls = TlsResult(
        status=status, versions=tuple(draw(st.lists(st.sampled_from(
            ["TLSv1.0", "TLSv1.2", "TLSv1.3", "SSLv3"]), max_size=4))),
        suites=tuple(CipherSuite(v, name, strength=s) for v, name, s in draw(_suites)),
        certificates=tuple(Certificate(sha256=sha, not_after=na, chain_position=i)
                           for i, (sha, na) in enumerate(draw(_certs))),
        grade=draw(st.sampled_from(["", "strong", "medium", "weak"])),
        # a probe cut part-way ("partial: ...") is not compared: rebuilt the same
        error=draw(st.sampled_from(["", "partial: TLSv1.2: timed out", "refused"])),
    ) if proto is Proto.TCP else TlsResult()
    return Finding(
        port=OpenPort(scan_id=f"p{n}", target=target, port=draw(st.integers(1, 65535)),
                      proto=proto, observed_at=DAY1,
                      state=draw(st.sampled_from(list(PortState))) if proto is Proto.UDP
                      else PortState.OPEN),
        service=ServiceInfo(
            service=draw(_texts), product=draw(_texts), version=draw(_texts),
            extra_info=draw(_texts), method=draw(st.sampled_from(["unidentified", "banner:ssh"])),
            favicon_mmh3=draw(st.none() | st.integers(-2**31, 2**31 - 1)),
            jarm=draw(st.sampled_from(["", "0" * 62, "2ad2ad16d2ad2ad22c42d42d00042d" + "a" * 32,
                                       "f" * 100]))),
        tls=tls,
        cdn=CdnVerdict(is_expected_port=draw(st.booleans())),
        risk_color=draw(st.sampled_from(list(RiskColor))),
    )


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(finding=findings())
def test_the_snapshot_rebuilt_from_the_store_is_the_findings_snapshot(  # type: ignore[no-untyped-def]
        store, finding: Finding) -> None:
    store.insert_findings([finding])
    key = (finding.port.scan_id, finding.port.target.target, finding.port.target.ip)
    assert stored_snapshots(store, [key]) == {key: [snapshot_of(finding)]}


def test_recovery_with_reprobes_off_closes_nothing(store) -> None:  # type: ignore[no-untyped-def]
    # A recorder with re-probes off (as configured) closes nothing on recovery either
    port = free_port()
    day1 = [_finding("s1", port, DAY1)]
    _store_scan(store, day1, [_host_scan("s1", DAY1, 1, [port])])
    first = ChangeRecorder(store)
    first.add_findings(day1)
    asyncio.run(first.finish([_host_scan("s1", DAY1, 1, [port])]))
    _store_scan(store, [], [_host_scan("s2", DAY2, 0, [port])])
    quiet = ChangeRecorder(store, ReprobeOptions(enabled=False))
    assert asyncio.run(quiet.recover(finished_before=LATER)) == []


@pytest.mark.parametrize("dead_ago", [timedelta(days=1), timedelta(minutes=1)],
                         ids=["a-day-ago", "a-minute-ago"])
def test_an_embedded_scan_delivers_what_a_dead_run_left_then_compares_with_it(
        store, dead_ago: timedelta) -> None:  # type: ignore[no-untyped-def]
    from probers.discovery.connect import ConnectEngine
    from producers.shards import ScanPlan, new_scan_id
    from stream_processors.stages import make_context
    from stream_processors.transports.embedded import EmbeddedRunner
    from tests.servers import start_redis

    with start_redis() as redis:
        port = redis.port
        # Given a state two days old, and a later scan a dead run stored but never compared
        # (a minute ago too: an embedded store is the run's alone, so nothing else can be
        # holding it; it waited ten minutes, and a run made at once lost its events)
        dead_at = datetime.now(UTC).replace(microsecond=0) - dead_ago
        s0 = [_finding("s0", port, DAY1, version="0.0.0")]
        _store_scan(store, s0, [_host_scan("s0", DAY1, 1, [port])])
        first = ChangeRecorder(store)
        first.add_findings(s0)
        asyncio.run(first.finish([_host_scan("s0", DAY1, 1, [port])]))
        _store_scan(store, [_finding("dead", port, dead_at, version="0.0.1")],
                    [_host_scan("dead", dead_at, 1, [port])])
        # When a real embedded scan of the host runs
        ctx = make_context(banner_wait=1.0, identify_budget=6, use_nmap_probes=False,
                           tls_enumeration=False)
        runner = EmbeddedRunner(store, lambda _shard: ConnectEngine(), ctx,
                                identify_workers=4, batch_seconds=0.2)
        plan = ScanPlan.build(new_scan_id(), 0, [T], (PortRange(port, port),), ())
        stats = asyncio.run(runner.run(plan))
    # Then its events start with the dead run's (once), and its own compare with that run
    dead = [e for e in stats.change_events if e.scan_id == "dead"]
    assert [(e.kind, e.before, e.after, e.previous_scan_id) for e in dead] == [
        (ChangeKind.VERSION_CHANGED, "0.0.0", "0.0.1", "s0")]
    own = [e for e in stats.change_events if e.scan_id == plan.scan_id]
    assert own and {e.previous_scan_id for e in own} == {"dead"}
    assert len(stats.change_events) == len(dead) + len(own)
    assert [(e.kind, e.port) for e in own if e.kind is ChangeKind.PRODUCT_CHANGED] == [
        (ChangeKind.PRODUCT_CHANGED, port)]  # nginx (stored) -> Redis (found)


def _web(scan_id: str, port: int, when: datetime, product: str, favicon: int, jarm: str,
         sha: str = "", not_after: str = "") -> Finding:
    return Finding(
        port=OpenPort(scan_id=scan_id, target=T, port=port, observed_at=when),
        service=ServiceInfo(service="https", product=product, version="1.0",
                            method="banner:http", favicon_mmh3=favicon, jarm=jarm),
        tls=TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",), grade="strong",
                      certificates=(Certificate(sha256=sha, not_after=not_after,
                                                chain_position=0),) if sha else ()),
        risk_color=RiskColor.GREEN)


def test_a_port_whose_product_favicon_and_jarm_all_changed_keeps_its_one_event(store) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    jarm_a, jarm_b = "2ad2ad" + "0" * 56, "3fd3fd" + "1" * 56
    _compared(store, [_web("s1", port, DAY1, "nginx", 111, jarm_a)],
              [_host_scan("s1", DAY1, 1, [port])])
    # When the next scan finds another product, favicon and TLS stack on the port
    found = [_web("s2", port, DAY2, "Apache httpd", 222, jarm_b)]
    scans = [_host_scan("s2", DAY2, 1, [port])]
    _store_scan(store, found, scans)
    recorder = ChangeRecorder(store)
    recorder.add_findings(found)
    events = asyncio.run(recorder.finish(scans))
    # Then one product_changed says all three, and it is what the store keeps and a replay
    # reads back (before: three events published, one row kept, the replay disagreed)
    assert [(e.kind, e.before, e.after) for e in events] == [(
        ChangeKind.PRODUCT_CHANGED, f"nginx 1.0; favicon 111; JARM {jarm_a}",
        f"Apache httpd 1.0; favicon 222; JARM {jarm_b}")]
    assert store.query("SELECT count() FROM changes WHERE scan_id = 's2'") == [(1,)]
    again = asyncio.run(ChangeRecorder(store).finish(scans))
    assert [e.event_id for e in again] == [e.event_id for e in events]


def test_a_threshold_crossed_behind_a_narrow_scan_is_said_through_the_store(store) -> None:  # type: ignore[no-untyped-def]
    web, ssh = free_ports(2)
    day0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=12)
    expires = (day0 + timedelta(days=35)).isoformat()
    _compared(store, [_finding("d0", ssh, day0), _web("d0", web, day0, "nginx", 1, "",
                                                       "a" * 64, expires)],
              [_host_scan("d0", day0, 2, [ssh, web])])
    # a scan of the ssh port only, on day 10 (the web port not looked at)
    _compared(store, [_finding("d10", ssh, day0 + timedelta(days=10))],
              [_host_scan("d10", day0 + timedelta(days=10), 1, [ssh])])
    # When the full scan of day 11 sees the certificate 24 days from expiry
    day11 = day0 + timedelta(days=11)
    found = [_finding("d11", ssh, day11), _web("d11", web, day11, "nginx", 1, "", "a" * 64,
                                               expires)]
    scans = [_host_scan("d11", day11, 2, [ssh, web])]
    _store_scan(store, found, scans)
    recorder = ChangeRecorder(store)
    recorder.add_findings(found)
    events = asyncio.run(recorder.finish(scans))
    # Then the 30-day threshold is said, judged from when the certificate was last seen
    assert [(e.kind, e.port, e.after) for e in events] == [
        (ChangeKind.CERT_EXPIRING, web, "30d")]


def test_a_host_scan_dated_in_the_future_is_not_compared(store) -> None:  # type: ignore[no-untyped-def]
    port, other = free_ports(2)
    # Given a record dated 2250 (a clock far ahead, or forged on the host-scans topic)
    far = datetime(2250, 1, 1, tzinfo=UTC)
    forged = [_finding("forged", port, far)]
    forged_scans = [_host_scan("forged", far, 1, [port])]
    _store_scan(store, forged, forged_scans)
    recorder = ChangeRecorder(store)
    recorder.add_findings(forged)
    # When it reaches the recorder, then it changes nothing
    assert asyncio.run(recorder.finish(forged_scans)) == []
    assert store.query("SELECT count() FROM host_state") == [(0,)]
    # And the real scans after it are compared (before: the forged one became the state,
    # and they were all "older than the state": a red port opened, nothing said)
    real = [_finding("s1", other, DAY2, color=RiskColor.RED)]
    real_scans = [_host_scan("s1", DAY2, 1, [other])]
    _store_scan(store, real, real_scans)
    recorder.add_findings(real)
    assert [(e.kind, e.port) for e in asyncio.run(recorder.finish(real_scans))] == [
        (ChangeKind.OPENED, other)]


def test_a_kept_certificate_is_judged_once_through_the_store(store) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    a_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=9)
    expires = (a_at + timedelta(days=5)).isoformat()
    # Given a certificate 5 days from expiry, its 7-day threshold said
    a = [_web("a", port, a_at, "nginx", 1, "", "e" * 64, expires)]
    _compared(store, a, [_host_scan("a", a_at, 1, [port])])
    # And 7 days later a scan where the version moved and the TLS probe errored
    b_at = a_at + timedelta(days=7)
    errored = Finding(port=OpenPort(scan_id="b", target=T, port=port, observed_at=b_at),
                      service=ServiceInfo(service="https", product="nginx", version="1.1",
                                          method="banner:http", favicon_mmh3=1),
                      tls=TlsResult(status=ProbeStatus.ERROR), risk_color=RiskColor.GREEN)
    said: list[ChangeEvent] = []
    for scan_id, at, found in (("b", b_at, [errored]),
                               ("c", b_at + timedelta(days=1),
                                [_web("c", port, b_at + timedelta(days=1), "nginx", 1, "",
                                      "e" * 64, expires)])):
        scans = [_host_scan(scan_id, at, 1, [port])]
        _store_scan(store, found, scans)
        recorder = ChangeRecorder(store)  # each scan a new recorder: states from the store
        recorder.add_findings(found)
        said += asyncio.run(recorder.finish(scans))
    # Then the expiry is said once, at b (a review: through port_state the kept
    # certificate read "judged at b", and it was never said)
    assert [(e.scan_id, e.kind) for e in said if e.kind.value.startswith("cert")] == [
        ("b", ChangeKind.CERT_EXPIRED)]


def test_a_run_killed_before_comparing_and_resumed_at_once_says_each_event_once(
        store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from probers.discovery.connect import ConnectEngine
    from producers.shards import Checkpoint, ScanPlan
    from stream_processors.stages import make_context
    from stream_processors.transports.embedded import EmbeddedRunner
    from tests import loopback

    class Killed(Exception):
        pass

    class KilledBeforeComparing(EmbeddedRunner):
        """A FAKE of kill -9 at one moment: the run's host records are stored, its
        changes not yet compared (the rest of the run is real)."""

        async def _record_hosts(self, *_args: Any, **_kwargs: Any) -> None:
            rows = [r for o in self._outcomes for r in o.host_scans()]
            await asyncio.to_thread(self.store.insert_host_scans, rows)
            raise Killed

    def runner(cls: type[EmbeddedRunner] = EmbeddedRunner) -> EmbeddedRunner:
        ctx = make_context(banner_wait=0.5, identify_budget=2, use_nmap_probes=False,
                           tls_enumeration=False)
        return cls(store, lambda _s: ConnectEngine(), ctx, identify_workers=4,
                   shard_ports=1000, batch_seconds=0.2)

    with loopback.listen(loopback.banner(b"hello\r\n")) as listener:
        plan = ScanPlan.build("killed-at-end", 1, [T], (PortRange(listener.port, listener.port),),
                              (), ports_per_shard=1000)
        checkpoint = tmp_path / "resume.checkpoint"
        # Given a run killed after storing its host records, before comparing them
        with pytest.raises(Killed):
            asyncio.run(runner(KilledBeforeComparing).run(plan, checkpoint_path=str(checkpoint)))
        saved = Checkpoint.load(checkpoint)
        # When it is resumed at once with its checkpoint
        stats = asyncio.run(runner().run(plan, start=plan.start(saved),
                                         checkpoint_path=str(checkpoint)))
    # Then its one event is said once (before: recovered at start, then read back as a
    # replay of the resumed scan: twice, with one event id)
    assert [(e.kind, e.port, e.scan_id) for e in stats.change_events] == [
        (ChangeKind.OPENED, listener.port, "killed-at-end")]
    assert store.query("SELECT count() FROM changes FINAL") == [(1,)]


def test_a_first_identification_cut_short_is_replaced_by_the_next_run_without_events(
        store) -> None:  # type: ignore[no-untyped-def]
    from stream_processors.stages import unidentified

    # Given a port whose first scan opened it with its identification cut short (a
    # double Ctrl-C), compared and stored by one run
    port = free_port()
    cut = unidentified(OpenPort(scan_id="c1", target=T, port=port, observed_at=DAY1),
                       "interrupted during identification")
    _compared(store, [cut], [_host_scan("c1", DAY1, 1, [port])])
    assert store.query("SELECT kind, after FROM changes FINAL") == [
        ("opened", "unidentified (yellow)")]
    # When the next run (a new recorder: its state read from the store) compares a scan
    # that identified it
    found = [_finding("c2", port, DAY2)]
    scans = [_host_scan("c2", DAY2, 1, [port])]
    _store_scan(store, found, scans)
    recorder = ChangeRecorder(store)
    recorder.add_findings(found)
    events = asyncio.run(recorder.finish(scans))
    # Then nothing is said (port_state did not keep "incomplete": service '' -> http,
    # product '' -> nginx and risk_lowered were said across runs: a review)
    assert events == []
    assert store.query("SELECT service, is_incomplete FROM port_state FINAL") == [
        ("http", 0)]
