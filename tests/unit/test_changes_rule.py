"""The change rule (stream_processors/changes.py) on hand-built states: exact events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import (
    ChangeKind,
    Finding,
    HostScan,
    PortRange,
    Proto,
    ServiceInfo,
    Severity,
    Target,
)
from stream_processors.changes import (
    SEVERITY_RULES,
    HostScanView,
    HostState,
    PortSnapshot,
    ProbeAnswer,
    closure_candidates,
    detect_changes,
    fingerprint,
    liveness_candidates,
    severity_of,
)

T = Target("127.0.0.1", "web", organization="Org", asset="a1")
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
T1 = T0 + timedelta(days=1)


def snap(port: int, **kw: object) -> PortSnapshot:
    base: dict[str, object] = {"proto": Proto.TCP, "port": port, "service": "ssh",
                               "product": "OpenSSH", "version": "9.2p1", "risk_color": "green",
                               "scan_id": "s0"}
    base.update(kw)
    return PortSnapshot(**base)  # type: ignore[arg-type]


def view(ports: list[PortSnapshot], *, covered: tuple[tuple[int, int], ...] = ((1, 65535),),
         status: str = "completed", scan_id: str = "s1") -> HostScanView:
    shard = HostScan(scan_id, T, T1 - timedelta(minutes=1), T1, 65535, len(ports), status,
                     shard_id="x", proto=Proto.TCP,
                     ports=tuple(PortRange(a, b) for a, b in covered))
    return HostScanView(T, scan_id, (shard,), {p.key: p for p in ports})


def state(ports: list[PortSnapshot], *, reachable: bool = True) -> HostState:
    return HostState(T, "s0", T0, reachable, {p.key: p for p in ports})


def kinds(outcome) -> list[tuple[str, int, str, str]]:  # type: ignore[no-untyped-def]
    return [(e.kind.value, e.port, e.before, e.after) for e in outcome.events]


def test_first_scan_opens_every_port_with_severity_by_colour() -> None:
    # Given no previous state, When a scan finds ssh (green) and redis (red)
    out = detect_changes(None, view([snap(22), snap(6379, service="redis", product="Redis",
                                                     version="7.0", risk_color="red")]), {})
    # Then two opened events, red one high, green one low; state holds both open
    assert [(e.kind, e.port, e.severity) for e in out.events] == [
        (ChangeKind.OPENED, 22, Severity.LOW), (ChangeKind.OPENED, 6379, Severity.HIGH)]
    assert out.state is not None and set(out.state.open_ports) == {(Proto.TCP, 22),
                                                                   (Proto.TCP, 6379)}
    assert all(e.observed_at == T1 and e.previous_scan_id == "" for e in out.events)


def test_closed_only_when_covered_completed_and_reprobe_failed() -> None:
    prev = state([snap(22), snap(80, service="http", product="nginx"), snap(443), snap(8080)])
    scan = view([snap(22)], covered=((22, 22), (80, 80), (8080, 8080)))
    # 443 not covered: not even a candidate
    assert closure_candidates(prev, scan) == [(Proto.TCP, 80), (Proto.TCP, 8080)]
    out = detect_changes(prev, scan, {(Proto.TCP, 80): ProbeAnswer.REFUSED,
                                      (Proto.TCP, 8080): ProbeAnswer.OPEN})
    assert kinds(out) == [("closed", 80, "http nginx 9.2p1 (green)", "closed")]
    assert out.events[0].severity is Severity.INFO
    assert out.state is not None
    assert not out.state.ports[(Proto.TCP, 80)].is_open
    assert out.state.ports[(Proto.TCP, 443)].is_open  # uncovered: kept open
    assert out.state.ports[(Proto.TCP, 8080)].is_open  # the re-probe saw it


def test_interrupted_scan_closes_nothing_and_keeps_state() -> None:
    prev = state([snap(22)])
    out = detect_changes(prev, view([], status="interrupted"), {})
    assert out.events == [] and out.state is None


def test_unprobed_candidate_is_not_closed() -> None:
    out = detect_changes(state([snap(22), snap(23)]), view([snap(22)]), {})
    assert kinds(out) == []


def test_udp_silence_never_closes_icmp_does() -> None:
    dns = snap(53, proto=Proto.UDP, service="domain")
    ntp = snap(123, proto=Proto.UDP, service="ntp")
    shard = HostScan("s1", T, T1, T1, 2, 0, shard_id="u", proto=Proto.UDP,
                     ports=(PortRange(53, 53), PortRange(123, 123)))
    scan = HostScanView(T, "s1", (shard,), {})
    out = detect_changes(state([dns, ntp]), scan, {(Proto.UDP, 53): ProbeAnswer.SILENT,
                                                   (Proto.UDP, 123): ProbeAnswer.REFUSED})
    assert kinds(out) == [("closed", 123, "ntp OpenSSH 9.2p1 (green)", "closed")]


def test_host_silent_everywhere_is_unreachable_then_back_without_closures() -> None:
    prev = state([snap(22), snap(80)])
    gone = detect_changes(prev, view([]), {(Proto.TCP, 22): ProbeAnswer.SILENT,
                                           (Proto.TCP, 80): ProbeAnswer.SILENT})
    assert kinds(gone) == [("host_unreachable", 0, "reachable", "unreachable")]
    assert gone.state is not None and not gone.state.is_reachable
    assert all(p.is_open for p in gone.state.ports.values())
    # Still silent: no second event
    silent = {(Proto.TCP, 22): ProbeAnswer.SILENT, (Proto.TCP, 80): ProbeAnswer.SILENT}
    again = detect_changes(gone.state, view([], scan_id="s2"), silent)
    assert kinds(again) == []
    # Back with 22 only, 80 refused: host_back, then 80 closed
    back = detect_changes(again.state, view([snap(22)], scan_id="s3"),
                          {(Proto.TCP, 80): ProbeAnswer.REFUSED})
    assert [k[0] for k in kinds(back)] == ["host_back", "closed"]


def test_reopened_and_attribute_changes() -> None:
    closed = snap(22, is_open=False, changed_at=T0)
    prev = state([closed, snap(80, service="http", product="nginx", version="1.22.1"),
                  snap(3306, service="mysql", product="MariaDB", version="10.11.6",
                       risk_color="red")])
    now = view([snap(22), snap(80, service="http", product="nginx", version=""),
                snap(3306, service="http", product="Apache httpd", version="2.4",
                     risk_color="green")])
    out = detect_changes(prev, now, {})
    assert kinds(out) == [
        ("reopened", 22, f"closed {T0:%Y-%m-%d %H:%M:%S}", "ssh OpenSSH 9.2p1 (green)"),
        ("version_changed", 80, "1.22.1", ""),
        ("service_changed", 3306, "mysql", "http"),
        ("product_changed", 3306, "MariaDB 10.11.6", "Apache httpd 2.4"),
        ("risk_lowered", 3306, "red", "green"),
    ]


def test_a_port_reopened_with_another_version_or_service_says_what_changed_too() -> None:
    # Given ports closed while on nginx 1.22.1 and on a green http, reopened on nginx
    # 1.24.0 and on a red redis (a rule on version_changed missed the upgrade: a review)
    prev = state([snap(80, service="http", product="nginx", version="1.22.1", is_open=False,
                       changed_at=T0),
                  snap(81, service="http", product="nginx", version="1.22.1", is_open=False,
                       changed_at=T0)])
    now = view([snap(80, service="http", product="nginx", version="1.24.0"),
                snap(81, service="redis", product="Redis", version="7.2.4", risk_color="red")])
    out = detect_changes(prev, now, {})
    closed = f"closed {T0:%Y-%m-%d %H:%M:%S}"
    assert kinds(out) == [
        ("reopened", 80, closed, "http nginx 1.24.0 (green)"),
        ("version_changed", 80, "1.22.1", "1.24.0"),
        ("reopened", 81, closed, "redis Redis 7.2.4 (red)"),
        ("service_changed", 81, "http", "redis"),
        ("product_changed", 81, "nginx 1.22.1", "Redis 7.2.4"),
        ("risk_raised", 81, "green", "red"),
    ]
    # And a port reopened as it was says only that
    same = detect_changes(state([snap(22, is_open=False, changed_at=T0)]), view([snap(22)]), {})
    assert [e.kind for e in same.events] == [ChangeKind.REOPENED]


def test_tls_and_certificate_changes() -> None:
    tls = {"tls_status": "completed", "tls_versions": ("TLSv1.2", "TLSv1.3"),
           "tls_grade": "strong", "cert_sha256": "a" * 64,
           "cert_not_after": T1 + timedelta(days=90)}
    prev = state([snap(443, **tls)])
    now = view([snap(443, **{**tls, "tls_versions": ("TLSv1.0", "TLSv1.2"),
                             "weak_suites": ("TLS_RSA_WITH_RC4_128_SHA",), "tls_grade": "weak",
                             "cert_sha256": "b" * 64,
                             "cert_not_after": T1 + timedelta(days=5)})])
    out = detect_changes(prev, now, {})
    assert kinds(out) == [
        ("tls_changed", 443, "TLSv1.2 TLSv1.3; grade strong",
         "+TLSv1.0 -TLSv1.3; weak +TLS_RSA_WITH_RC4_128_SHA; grade strong->weak"),
        ("cert_changed", 443, "a" * 64, "b" * 64),
        ("cert_expiring", 443, (T1 + timedelta(days=5)).isoformat(), "7d"),
    ]
    assert [e.severity for e in out.events] == [Severity.MEDIUM, Severity.LOW, Severity.HIGH]


def test_cert_expiring_once_per_threshold_and_expired_once() -> None:
    cert = {"tls_status": "completed", "cert_sha256": "c" * 64,
            "cert_not_after": T1 + timedelta(days=10)}
    first = detect_changes(None, view([snap(443, **cert)]), {})
    assert [k[3] for k in kinds(first) if k[0] == "cert_expiring"] == ["14d"]
    assert first.state is not None
    # the next day: still within 14, not yet 7: nothing
    day2 = HostScanView(T, "s2", (HostScan("s2", T, T1, T1 + timedelta(days=1), 1, 1,
                                           shard_id="x", ports=(PortRange(1, 65535),)),),
                        {(Proto.TCP, 443): snap(443, **cert)})
    assert kinds(detect_changes(first.state, day2, {})) == []
    # eleven days later: expired, once
    late = T1 + timedelta(days=11)
    day11 = HostScanView(T, "s3", (HostScan("s3", T, late, late, 1, 1, shard_id="x",
                                            ports=(PortRange(1, 65535),)),),
                         {(Proto.TCP, 443): snap(443, **cert)})
    out = detect_changes(first.state, day11, {})
    assert [k[0] for k in kinds(out)] == ["cert_expired"]
    assert out.state is not None
    later = late + timedelta(days=1)
    day12 = HostScanView(T, "s4", (HostScan("s4", T, later, later, 1, 1, shard_id="x",
                                            ports=(PortRange(1, 65535),)),),
                         {(Proto.TCP, 443): snap(443, **cert)})
    assert kinds(detect_changes(out.state, day12, {})) == []


def test_a_certificate_back_after_another_is_not_alerted_again_for_what_was_said() -> None:
    # Given a port whose previous scan showed another certificate (two backends), and a
    # change log that already said this one's 7-day threshold
    c1 = {"tls_status": "completed", "cert_sha256": "1" * 64,
          "cert_not_after": T1 + timedelta(days=5)}
    c2 = {"tls_status": "completed", "cert_sha256": "2" * 64,
          "cert_not_after": T1 + timedelta(days=300)}
    said = {(Proto.TCP, 443, "cert_expiring", (T1 + timedelta(days=5)).isoformat(), 7)}
    back = detect_changes(state([snap(443, **c2)]), view([snap(443, **c1)]), {}, said)
    # Then the change of certificate is said, the expiry not again
    assert [k[0] for k in kinds(back)] == ["cert_changed"]
    # But a threshold not said yet (a looser one said only) is
    looser = {(Proto.TCP, 443, "cert_expiring", (T1 + timedelta(days=5)).isoformat(), 14)}
    out = detect_changes(state([snap(443, **c2)]), view([snap(443, **c1)]), {}, looser)
    assert [k[3] for k in kinds(out) if k[0] == "cert_expiring"] == ["7d"]
    # And an expired one said before is not said again when it comes back
    gone = {"tls_status": "completed", "cert_sha256": "1" * 64,
            "cert_not_after": T1 - timedelta(days=2)}
    expired = {(Proto.TCP, 443, "cert_expired", (T1 - timedelta(days=2)).isoformat(), 0)}
    assert [k[0] for k in kinds(detect_changes(
        state([snap(443, **c2)]), view([snap(443, **gone)]), {}, expired))] == ["cert_changed"]


def test_every_kind_has_a_default_severity_and_cdn_opening_is_info() -> None:
    assert {k for k, colour in SEVERITY_RULES if colour == ""} == set(ChangeKind)
    assert severity_of(ChangeKind.OPENED, "red", is_cdn_expected=True) is Severity.INFO


ports_strategy = st.dictionaries(st.integers(1, 2000), st.sampled_from(["green", "yellow", "red"]),
                                 max_size=12)


@settings(max_examples=200, deadline=None)
@given(before=ports_strategy, after=ports_strategy, covered_to=st.integers(1, 2000),
       answers=st.dictionaries(st.integers(1, 2000), st.sampled_from(list(ProbeAnswer))))
def test_rule_properties(before: dict[int, str], after: dict[int, str], covered_to: int,
                         answers: dict[int, ProbeAnswer]) -> None:
    prev = state([snap(p, risk_color=c) for p, c in before.items()])
    scan = view([snap(p, risk_color=c) for p, c in after.items()], covered=((1, covered_to),))
    reprobes = {(Proto.TCP, p): a for p, a in answers.items()}
    out = detect_changes(prev, scan, reprobes)
    # deterministic (replay-safe): the same inputs give the same event ids
    assert [e.event_id for e in out.events] == [
        e.event_id for e in detect_changes(prev, scan, reprobes).events]
    for e in out.events:
        if e.kind is ChangeKind.CLOSED:
            # never an uncovered port, never one seen now, never without a failed re-probe
            assert e.port <= covered_to and e.port not in after
            assert reprobes.get((Proto.TCP, e.port)) in (ProbeAnswer.REFUSED, ProbeAnswer.SILENT)
        if e.kind is ChangeKind.OPENED:
            assert e.port not in before
    # a port open now is open in the next state
    assert out.state is not None
    assert {p for (_proto, p), s in out.state.ports.items() if s.is_open} >= set(after)


port_fields = st.fixed_dictionaries({
    "service": st.sampled_from(["ssh", "http", ""]),
    "version": st.sampled_from(["1", "2"]),
    "risk_color": st.sampled_from(["green", "red"]),
    "tls_status": st.sampled_from(["completed", "error", "not_scheduled"]),
    "tls_grade": st.sampled_from(["", "strong", "weak"]),
    "cert_sha256": st.sampled_from(["", "a", "b"]),
})


@settings(max_examples=300, deadline=None)
@given(before=st.dictionaries(st.integers(1, 30), port_fields, max_size=5),
       after=st.dictionaries(st.integers(1, 30), port_fields, max_size=5))
def test_equal_fingerprints_mean_no_event(before: dict[int, dict[str, str]],
                                          after: dict[int, dict[str, str]]) -> None:
    # The recorder's fast path skips the rule when the fingerprints agree: then the rule
    # itself must have nothing to say
    from stream_processors.changes import fingerprint

    prev = state([snap(p, **f) for p, f in before.items()])
    scan = view([snap(p, **f) for p, f in after.items()])
    out = detect_changes(prev, scan, {})
    if fingerprint(prev.ports) == fingerprint(scan.ports):
        assert out.events == []
    else:
        assert before != after


def test_the_fingerprint_covers_each_compared_field_and_the_protocol() -> None:
    # The fast path hides whatever the fingerprint leaves out: each field the rule
    # compares changes it (the protocol too: tcp/53 and udp/53 are two ports), and what
    # the rule does not compare (when, which scan, the certificate's end: is_near_expiry
    # sends those hosts down the full path) leaves it alone
    from stream_processors.changes import fingerprint

    base = snap(53, tls_status="completed", tls_versions=("TLSv1.2",), tls_grade="strong",
                cert_sha256="a" * 64, favicon="1", jarm="2" * 62)
    digest = fingerprint({base.key: base})
    compared = {"service": "dns", "product": "BIND", "version": "9", "risk_color": "red",
                "tls_status": "error", "tls_versions": ("TLSv1.3",),
                "weak_suites": ("TLS_RSA_WITH_RC4_128_SHA",), "tls_grade": "weak",
                "cert_sha256": "b" * 64, "is_incomplete": True, "favicon": "2",
                "jarm": "3" * 62, "port": 54, "proto": Proto.UDP}
    for name, value in compared.items():
        changed = base._replace(**{name: value})
        assert fingerprint({changed.key: changed}) != digest, name
    later = datetime(2030, 1, 1, tzinfo=UTC)
    for name, value in {"scan_id": "other", "changed_at": later, "first_seen": later,
                        "seen_at": later, "cert_not_after": later,
                        "is_cdn_expected": True}.items():
        same = base._replace(**{name: value})
        assert fingerprint({same.key: same}) == digest, name
    # closed ports are not fingerprinted; the order ports come in is not either
    other = snap(22)
    assert fingerprint({base.key: base, (Proto.TCP, 99): snap(99, is_open=False)}) == digest
    assert (fingerprint({base.key: base, other.key: other})
            == fingerprint({other.key: other, base.key: base}))


def test_a_port_whose_identification_did_not_finish_changes_nothing() -> None:
    # Given ssh identified before, When this scan's identification was cut short (Ctrl-C)
    prev = state([snap(22)])
    cut = snap(22, service="", product="", version="", risk_color="yellow", is_incomplete=True)
    out = detect_changes(prev, view([cut]), {})
    # Then no service/risk change is invented, and the identified snapshot stays
    assert kinds(out) == []
    assert out.state is not None and out.state.ports[(Proto.TCP, 22)].service == "ssh"


def test_a_first_identification_cut_short_is_replaced_by_the_next_without_events() -> None:
    # Given a port whose first scan opened it but whose identification was cut short
    cut = snap(22, service="", product="", version="", risk_color="yellow", is_incomplete=True)
    first = detect_changes(None, view([cut], scan_id="s0"), {})
    assert kinds(first) == [("opened", 22, "", "unidentified (yellow)")]
    assert first.state is not None
    # When the next scan identifies it (ssh, green)
    out = detect_changes(first.state, view([snap(22)]), {})
    # Then nothing is said (service '' -> ssh, product, yellow -> green were invented: a
    # review), and the identified snapshot is the state, first seen as before
    assert kinds(out) == []
    assert out.state is not None
    now = out.state.ports[(Proto.TCP, 22)]
    assert (now.service, now.product, now.is_incomplete) == ("ssh", "OpenSSH", False)
    assert now.first_seen == first.state.ports[(Proto.TCP, 22)].first_seen
    # But a port that turns out red says so: its colour raised is news
    red = detect_changes(first.state, view([snap(22, service="redis", product="Redis",
                                                 risk_color="red")]), {})
    assert kinds(red) == [("risk_raised", 22, "yellow", "red")]
    assert [e.severity for e in red.events] == [Severity.HIGH]
    # And a port reopened after a cut-short identification says only that it reopened
    closed = first.state.ports[(Proto.TCP, 22)]._replace(is_open=False, changed_at=T0)
    back = detect_changes(state([closed]), view([snap(22)]), {})
    assert [k[0] for k in kinds(back)] == ["reopened"]


def test_a_port_reopened_with_its_identification_cut_short_keeps_what_it_was() -> None:
    # Given OpenSSH 7.4 that closed
    old = snap(22, version="7.4", is_open=False, changed_at=T0)
    # When it reopens with its identification cut short, then a full scan finds 9.6
    cut = snap(22, service="", product="", version="", risk_color="yellow", is_incomplete=True)
    reopened = detect_changes(state([old]), view([cut]), {})
    assert [k[0] for k in kinds(reopened)] == ["reopened"]
    assert reopened.state is not None
    kept = reopened.state.ports[(Proto.TCP, 22)]
    assert (kept.is_open, kept.service, kept.version, kept.is_incomplete) == (
        True, "ssh", "7.4", False)
    later = detect_changes(reopened.state, view([snap(22, version="9.6")], scan_id="s2"), {})
    # Then the upgrade made while it was down is said (the cut-short snapshot was the
    # state, and the full scan read as a first identification: silence; a review)
    assert kinds(later) == [("version_changed", 22, "7.4", "9.6")]


def test_a_red_port_reopened_cut_short_is_said_as_red() -> None:
    # Given redis (red) that closed, When it reopens with its identification cut short
    old = snap(6379, service="redis", product="Redis", version="7.2", risk_color="red",
               is_open=False, changed_at=T0)
    cut = snap(6379, service="", product="", version="", risk_color="yellow",
               is_incomplete=True)
    out = detect_changes(state([old]), view([cut]), {})
    # Then its reopening is high, named as last identified (a medium "unidentified
    # (yellow)", and no risk_raised after: a review)
    assert [(e.kind, e.severity, e.after) for e in out.events] == [(
        ChangeKind.REOPENED, Severity.HIGH,
        "redis Redis 7.2 (red), as last identified (its identification was cut short)")]


def test_a_threshold_crossed_while_a_port_was_down_is_said_after_a_cut_short_reopening(
        ) -> None:
    # Given a TLS port last judged at T0 (35 days left), closed, then reopened cut short
    # at T0 + 5 days (30 days left: the 30-day threshold crossed while it was down)
    not_after = T0 + timedelta(days=35)
    old = tls_port("c" * 64, not_after, is_open=False, changed_at=T0, seen_at=T0)
    cut = snap(443, service="", product="", version="", risk_color="yellow",
               is_incomplete=True)
    back = detect_changes(state([old]), view_at([cut], T0 + timedelta(days=5), "r"), {})
    assert [e.kind for e in back.events] == [ChangeKind.REOPENED]
    # When the next full scan sees the same certificate
    assert back.state is not None
    full = detect_changes(back.state, view_at([tls_port("c" * 64, not_after)],
                                              T0 + timedelta(days=6), "f"), {})
    # Then the crossing is said (it was judged from the reopening: never said; a review)
    assert [(k[0], k[3]) for k in kinds(full)] == [("cert_expiring", "30d")]


def test_snapshot_marks_interrupted_identification() -> None:
    from schemas.records import OpenPort
    from stream_processors.changes import snapshot_of
    from stream_processors.stages import unidentified

    port = OpenPort(scan_id="s", target=T, port=22)
    assert snapshot_of(unidentified(port, "interrupted during identification")).is_incomplete
    assert snapshot_of(unidentified(port, "identification error: OSError")).is_incomplete
    # and an identified port (or one that was simply not recognised) is not incomplete
    identified = Finding(port=port, service=ServiceInfo(service="ssh", product="OpenSSH"))
    assert not snapshot_of(identified).is_incomplete
    assert not snapshot_of(Finding(port=port)).is_incomplete


def test_a_new_favicon_or_tls_stack_is_a_product_change() -> None:
    # Given a web port whose favicon and JARM were known
    jarm_a, jarm_b = "2ad2ad" + "0" * 56, "3fd3fd" + "1" * 56
    prev = state([snap(443, service="https", product="nginx", version="1.22",
                       favicon="-1234", jarm=jarm_a)])
    # When the next scan sees another favicon and another TLS fingerprint
    out = detect_changes(prev, view([snap(443, service="https", product="nginx",
                                          version="1.22", favicon="5678", jarm=jarm_b)]), {})
    # Then one product_changed says both (the changes table keeps one row per port, kind
    # and scan: two events of one kind kept only the last, and a replay disagreed)
    assert kinds(out) == [("product_changed", 443, f"favicon -1234; JARM {jarm_a}",
                           f"favicon 5678; JARM {jarm_b}")]
    # And neither a favicon nor a JARM missing this time is an event (a fetch that failed
    # looks like none: a flaky fetch alerted "gone", then "back"), nor one appearing
    gone = detect_changes(prev, view([snap(443, service="https", product="nginx",
                                           version="1.22", favicon="", jarm="")]), {})
    assert kinds(gone) == []
    back = detect_changes(gone.state, view([snap(443, service="https", product="nginx",
                                                 version="1.22", favicon="-1234")]), {})
    assert kinds(back) == []


# -- a review of the rule (2026-12-06): thresholds behind narrow scans, kept baselines ------

def view_at(ports: list[PortSnapshot], at: datetime, scan_id: str, *,
            covered: tuple[tuple[int, int], ...] = ((1, 65535),),
            proto: Proto = Proto.TCP) -> HostScanView:
    shard = HostScan(scan_id, T, at - timedelta(minutes=1), at, 65535, len(ports), "completed",
                     shard_id=f"{scan_id}:{proto.value}", proto=proto,
                     ports=tuple(PortRange(a, b) for a, b in covered))
    return HostScanView(T, scan_id, (shard,), {p.key: p for p in ports})


def tls_port(sha: str, not_after: datetime, **kw: object) -> PortSnapshot:
    fields: dict[str, object] = {"service": "https", "product": "nginx", "version": "1.0",
                                 "tls_status": "completed",
                                 "tls_versions": ("TLSv1.2", "TLSv1.3"), "tls_grade": "strong",
                                 "cert_sha256": sha, "cert_not_after": not_after}
    fields.update(kw)
    return snap(443, **fields)


def test_a_threshold_crossed_behind_a_narrow_scan_is_still_said_once() -> None:
    expires = T0 + timedelta(days=35)
    day = [T0 + timedelta(days=n) for n in range(13)]
    first = detect_changes(None, view_at([snap(22), tls_port("a" * 64, expires)], day[0], "d0"),
                           {})
    # a --ports 22 scan at day 10 (443 not covered: nothing said about it)
    narrow = detect_changes(first.state, view_at([snap(22)], day[10], "d10",
                                                 covered=((22, 22),)), {})
    assert kinds(narrow) == []
    # When the full scan of day 11 sees the certificate 24 days from expiry
    full = detect_changes(narrow.state, view_at([snap(22), tls_port("a" * 64, expires)],
                                                day[11], "d11"), {})
    # Then the 30-day threshold is said (before: judged from day 10, when 443 was not
    # looked at, it was "already inside"), and the next day it is not said again
    assert kinds(full) == [("cert_expiring", 443, expires.isoformat(), "30d")]
    again = detect_changes(full.state, view_at([snap(22), tls_port("a" * 64, expires)],
                                               day[12], "d12"), {})
    assert kinds(again) == []


def test_a_certificate_that_expired_while_the_host_was_down_is_said_when_it_is_back() -> None:
    expires = T0 + timedelta(days=20)
    opened = detect_changes(None, view_at([snap(22), tls_port("b" * 64, expires)], T0, "d0"),
                            {})
    down = detect_changes(opened.state, view_at([], T0 + timedelta(days=15), "d15"),
                          {(Proto.TCP, 22): ProbeAnswer.SILENT,
                           (Proto.TCP, 443): ProbeAnswer.SILENT})
    assert [e.kind for e in down.events] == [ChangeKind.HOST_UNREACHABLE]
    # still down on day 21, after the certificate expired on day 20
    still = detect_changes(down.state, view_at([], T0 + timedelta(days=21), "d21"),
                           {(Proto.TCP, 22): ProbeAnswer.SILENT,
                            (Proto.TCP, 443): ProbeAnswer.SILENT})
    assert kinds(still) == []
    # When it is back on day 22, then its expiry is said (before: judged from day 21,
    # the certificate read "already expired", and nothing was said)
    back = detect_changes(still.state, view_at([snap(22), tls_port("b" * 64, expires)],
                                               T0 + timedelta(days=22), "d22"), {})
    assert [e.kind for e in back.events] == [ChangeKind.HOST_BACK, ChangeKind.CERT_EXPIRED]


def test_a_tls_error_alongside_a_change_keeps_the_last_tls_result_to_compare() -> None:
    far = T0 + timedelta(days=300)
    day0 = detect_changes(None, view_at([tls_port("a" * 64, far)], T0, "d0"), {})
    # a version bump the same day the TLS probe errored
    errored = tls_port("", datetime(1970, 1, 1, tzinfo=UTC), version="1.1", tls_status="error",
                       tls_versions=(), tls_grade="")
    day1 = detect_changes(day0.state, view_at([errored], T0 + timedelta(days=1), "d1"), {})
    assert kinds(day1) == [("version_changed", 443, "1.0", "1.1")]
    # When the next scan sees another certificate and TLS 1.0 added
    rotated = tls_port("c" * 64, far, version="1.1",
                       tls_versions=("TLSv1", "TLSv1.2", "TLSv1.3"))
    day2 = detect_changes(day1.state, view_at([rotated], T0 + timedelta(days=2), "d2"), {})
    # Then both are said (before: the error became the state, and neither TLS nor the
    # certificate of that port was compared again)
    assert [e.kind for e in day2.events] == [ChangeKind.TLS_CHANGED, ChangeKind.CERT_CHANGED]


def test_udp_silence_never_makes_a_live_host_unreachable() -> None:
    # Given a host with ssh and a DNS server, and its UDP shard compared on its own (a
    # late shard): DNS does not answer the re-probe's empty datagram
    dns = snap(53, proto=Proto.UDP, service="domain", product="")
    prev = state([snap(22), dns])
    udp_only = view_at([], T1, "s1", covered=((53, 53),), proto=Proto.UDP)
    out = detect_changes(prev, udp_only, {(Proto.UDP, 53): ProbeAnswer.SILENT})
    # Then nothing is said, the host stays reachable and its ports stay (before:
    # host_unreachable, and the reports showed it with no port)
    assert kinds(out) == []
    assert out.state is not None and out.state.is_reachable
    assert set(out.state.open_ports) == {(Proto.TCP, 22), (Proto.UDP, 53)}


def test_a_certificate_kept_through_a_changed_scan_is_judged_then() -> None:
    # Given a certificate 5 days from expiry (its 7-day threshold said)
    expires = T0 + timedelta(days=5)
    a = detect_changes(None, view_at([tls_port("e" * 64, expires)], T0, "a"), {})
    assert ("cert_expiring", 443, expires.isoformat(), "7d") in kinds(a)
    # When a scan 7 days later sees the version moved and the TLS probe errored (no
    # certificate seen): the port's row is written now, with the certificate it keeps
    errored = tls_port("", datetime(1970, 1, 1, tzinfo=UTC), version="1.1", tls_status="error",
                       tls_versions=(), tls_grade="")
    b = detect_changes(a.state, view_at([errored], T0 + timedelta(days=7), "b"), {})
    # Then that certificate's expiry is said now, from its known end (a review: the kept
    # certificate was marked judged at b and its expiry was never said), and only once
    assert kinds(b) == [("version_changed", 443, "1.0", "1.1"),
                        ("cert_expired", 443, "", expires.isoformat())]
    c = detect_changes(b.state, view_at([tls_port("e" * 64, expires, version="1.1")],
                                        T0 + timedelta(days=8), "c"), {})
    assert kinds(c) == []


def test_a_scan_without_tls_probing_keeps_the_tls_baseline() -> None:
    # Given a TLS port, then a --no-tls scan (probe not run) in which the version moved
    far = T0 + timedelta(days=300)
    a = detect_changes(None, view_at([tls_port("a" * 64, far)], T0, "a"), {})
    unprobed = tls_port("", datetime(1970, 1, 1, tzinfo=UTC), version="1.1",
                        tls_status="not_scheduled", tls_versions=(), tls_grade="")
    b = detect_changes(a.state, view_at([unprobed], T0 + timedelta(days=1), "b"), {})
    assert kinds(b) == [("version_changed", 443, "1.0", "1.1")]
    # When the next probed scan sees TLS 1.0 added, then it is said (a review: the
    # --no-tls scan had dropped the baseline, and the weakening went unsaid)
    weaker = tls_port("a" * 64, far, version="1.1", tls_versions=("TLSv1", "TLSv1.2",
                                                                  "TLSv1.3"))
    c = detect_changes(b.state, view_at([weaker], T0 + timedelta(days=2), "c"), {})
    assert [e.kind for e in c.events] == [ChangeKind.TLS_CHANGED]


def test_an_unreachable_host_with_no_tcp_evidence_stays_unreachable() -> None:
    prev = state([snap(22), snap(53, proto=Proto.UDP, service="domain")], reachable=False)
    # every TCP re-probe cut by the budget: no answer either way
    cut = detect_changes(prev, view([]), {})
    assert kinds(cut) == [] and cut.state is not None and not cut.state.is_reachable
    # only its UDP shard looked at, DNS silent
    udp = detect_changes(prev, view_at([], T1, "u", covered=((53, 53),), proto=Proto.UDP),
                         {(Proto.UDP, 53): ProbeAnswer.SILENT})
    assert kinds(udp) == [] and udp.state is not None and not udp.state.is_reachable


def test_a_long_expired_certificate_does_not_rewrite_its_port_at_every_scan() -> None:
    expired = T0 - timedelta(days=800)
    first = detect_changes(None, view_at([tls_port("f" * 64, expired)], T0, "a"), {})
    assert ChangeKind.CERT_EXPIRED in [e.kind for e in first.events]
    second = detect_changes(first.state, view_at([tls_port("f" * 64, expired)],
                                                 T0 + timedelta(days=1), "b"), {})
    assert kinds(second) == []
    assert first.state is not None and second.state is not None
    key = (Proto.TCP, 443)
    assert second.state.ports[key] is first.state.ports[key]  # the same row: not written


def test_re_probes_the_budget_did_not_reach_do_not_turn_an_outage_into_closures() -> None:
    # Given a host with two ports that now answers nothing: one re-probe silent, the
    # other cut by the batch's deadline (no answer)
    prev = state([snap(22), snap(80, service="http", product="nginx")])
    out = detect_changes(prev, view([]), {(Proto.TCP, 22): ProbeAnswer.SILENT})
    # Then it is unreachable, nothing closed (a review: the cut one made 22 'closed')
    assert [e.kind for e in out.events] == [ChangeKind.HOST_UNREACHABLE]


def test_a_port_that_stopped_speaking_tls_does_not_keep_its_old_tls() -> None:
    far = T0 + timedelta(days=300)
    a = detect_changes(None, view_at([tls_port("a" * 64, far)], T0, "a"), {})
    plain = snap(443, service="http", product="nginx", version="1.0")
    b = detect_changes(a.state, view_at([plain], T0 + timedelta(days=1), "b"), {})
    assert b.state is not None
    kept = b.state.ports[(Proto.TCP, 443)]
    assert (kept.tls_status, kept.cert_sha256) == (plain.tls_status, "")


def test_a_tls_probe_that_could_not_test_lowers_no_colour() -> None:
    # Given a TLS port yellow for what its last completed probe saw (a weak suite)
    far = T0 + timedelta(days=300)
    day0 = detect_changes(None, view_at([tls_port("a" * 64, far, risk_color="yellow")], T0,
                                        "d0"), {})
    # When a scan's probe errors, and without its facts the risk stage said green
    errored = tls_port("", datetime(1970, 1, 1, tzinfo=UTC), tls_status="error",
                       tls_versions=(), tls_grade="", risk_color="green")
    day1 = detect_changes(day0.state, view_at([errored], T0 + timedelta(days=1), "d1"), {})
    # Then nothing is said (before: risk_lowered, then risk_raised at the next scan: a
    # medium alert per flaky probe), and the next completed probe finds nothing changed
    assert kinds(day1) == []
    again = tls_port("a" * 64, far, risk_color="yellow")
    day2 = detect_changes(day1.state if day1.state else day0.state,
                          view_at([again], T0 + timedelta(days=2), "d2"), {})
    assert kinds(day2) == []
    # And what the errored scan did see still counts: a raise is said
    red = tls_port("", datetime(1970, 1, 1, tzinfo=UTC), tls_status="error", tls_versions=(),
                   tls_grade="", risk_color="red", product="Redis")
    day3 = detect_changes(day0.state, view_at([red], T0 + timedelta(days=3), "d3"), {})
    assert ("risk_raised", 443, "yellow", "red") in kinds(day3)
    # And a lowering this scan saw the reason for (another product) is said (review)
    other = tls_port("", datetime(1970, 1, 1, tzinfo=UTC), tls_status="error",
                     tls_versions=(), tls_grade="", risk_color="green", product="Caddy")
    day4 = detect_changes(day0.state, view_at([other], T0 + timedelta(days=4), "d4"), {})
    assert ("risk_lowered", 443, "yellow", "green") in kinds(day4)


def test_a_narrow_scan_of_a_now_filtered_port_does_not_make_a_live_host_unreachable() -> None:
    # Given a host with ssh and a red redis, and a completed scan of 22-23 only, in which
    # 22 no longer answers (filtered) and nothing is open (a review: the host became
    # host_unreachable and the reports hid redis, though it still answered)
    prev = state([snap(22), snap(6379, service="redis", product="Redis", risk_color="red")])
    narrow = view([], covered=((22, 23),))
    assert liveness_candidates(prev, narrow) == [(Proto.TCP, 6379), (Proto.TCP, 23)]
    # When redis, not covered, answers the liveness re-probe
    out = detect_changes(prev, narrow, {(Proto.TCP, 22): ProbeAnswer.SILENT,
                                        (Proto.TCP, 6379): ProbeAnswer.OPEN})
    # Then 22 is closed, the host stays reachable, and redis stays open (not compared)
    assert kinds(out) == [("closed", 22, "ssh OpenSSH 9.2p1 (green)", "closed")]
    assert out.state is not None and out.state.is_reachable
    assert set(out.state.open_ports) == {(Proto.TCP, 6379)}
    # And with only the covered closed port answering RST, the same: the host answers
    alone = state([snap(22)])
    rst = detect_changes(alone, narrow, {(Proto.TCP, 22): ProbeAnswer.SILENT,
                                         (Proto.TCP, 23): ProbeAnswer.REFUSED})
    assert [e.kind for e in rst.events] == [ChangeKind.CLOSED]
    assert rst.state is not None and rst.state.is_reachable
    # But with every one silent, it is unreachable, as before, and its ports are kept
    dark = detect_changes(prev, narrow, {(Proto.TCP, p): ProbeAnswer.SILENT
                                         for p in (22, 23, 6379)})
    assert [e.kind for e in dark.events] == [ChangeKind.HOST_UNREACHABLE]
    assert dark.state is not None and set(dark.state.open_ports) == {
        (Proto.TCP, 22), (Proto.TCP, 6379)}


def test_an_unreachable_host_answering_on_a_port_the_scan_did_not_cover_is_back() -> None:
    prev = state([snap(22), snap(443, service="https")], reachable=False)
    out = detect_changes(prev, view([], covered=((22, 22),)),
                         {(Proto.TCP, 22): ProbeAnswer.SILENT, (Proto.TCP, 443): ProbeAnswer.OPEN})
    assert [e.kind for e in out.events] == [ChangeKind.HOST_BACK, ChangeKind.CLOSED]
    assert out.state is not None and out.state.is_reachable


def test_liveness_candidates_are_few_and_only_for_a_host_the_scan_heard_nothing_from() -> None:
    many = state([snap(p) for p in (22, 25, 80, 443, 8080)]
                 + [snap(53, proto=Proto.UDP, service="domain")])
    # at most three uncovered open TCP ports (the UDP one is no evidence), one closed one
    assert liveness_candidates(many, view([], covered=((20, 22),))) == [
        (Proto.TCP, 25), (Proto.TCP, 80), (Proto.TCP, 443), (Proto.TCP, 20)]
    # a scan that saw a port open heard the host: nothing to ask
    assert liveness_candidates(many, view([snap(22)], covered=((20, 22),))) == []
    # no previous state, an interrupted scan, or a state with no TCP port open: nothing
    assert liveness_candidates(None, view([])) == []
    assert liveness_candidates(many, view([], status="interrupted")) == []
    assert liveness_candidates(state([snap(53, proto=Proto.UDP)]), view([])) == []
    # every covered port once open: no closed port to ask
    assert liveness_candidates(state([snap(22)]), view([], covered=((22, 22),))) == []


MAIL_TLS = {"service": "pop3", "product": "Dovecot", "version": "", "risk_color": "yellow",
            "tls_status": "completed", "tls_versions": ("TLSv1.2",), "tls_grade": "medium"}
NO_UPGRADE = {**MAIL_TLS, "tls_versions": (), "tls_grade": ""}  # "no STARTTLS offered"


def test_a_port_that_stops_offering_tls_weakened_and_getting_it_back_did_not() -> None:
    # Given a POP3 port offering STLS, When the next scan finds no upgrade offered
    lost = detect_changes(state([snap(110, **MAIL_TLS)]), view([snap(110, **NO_UPGRADE)]), {})
    # Then a medium tls_changed that names it (the empty grade ranked as "strong": low)
    assert kinds(lost) == [("tls_changed", 110, "TLSv1.2; grade medium",
                            "TLS no longer offered; -TLSv1.2; grade medium->-")]
    assert [e.severity for e in lost.events] == [Severity.MEDIUM]
    # And the upgrade coming back, even with a legacy version, is low, not a weakening
    assert lost.state is not None
    back = detect_changes(lost.state, view([snap(110, **{**MAIL_TLS, "tls_versions": (
        "TLSv1.0", "TLSv1.2")})], scan_id="s2"), {})
    assert kinds(back) == [("tls_changed", 110, "TLS not offered",
                            "+TLSv1.0 +TLSv1.2; grade -->medium")]
    assert [e.severity for e in back.events] == [Severity.LOW]
    # and so is coming back with a weak suite: plaintext before, anything is better
    rc4 = detect_changes(lost.state, view([snap(110, **{
        **MAIL_TLS, "tls_grade": "weak", "weak_suites": ("TLS_RSA_WITH_RC4_128_SHA",)})],
        scan_id="s2"), {})
    assert [(e.after, e.severity) for e in rc4.events] == [
        ("+TLSv1.2; weak +TLS_RSA_WITH_RC4_128_SHA; grade -->weak", Severity.LOW)]


def test_weak_suites_removed_are_said_and_their_return_is_said_again() -> None:
    rc4 = ("TLS_RSA_WITH_RC4_128_SHA",)
    weak = {"tls_status": "completed", "tls_versions": ("TLSv1.0",), "tls_grade": "weak"}
    # Given a TLS 1.0 port (weak for that alone) that also offered RC4
    first = state([snap(443, **weak, weak_suites=rc4)])
    # When RC4 is removed (the grade stays weak), Then that is said, low
    fixed = detect_changes(first, view([snap(443, **weak)]), {})
    assert kinds(fixed) == [("tls_changed", 443,
                             "TLSv1.0; weak TLS_RSA_WITH_RC4_128_SHA; grade weak",
                             "weak -TLS_RSA_WITH_RC4_128_SHA")]
    assert [e.severity for e in fixed.events] == [Severity.LOW]
    # And the state moved: RC4 enabled again is a medium tls_changed (it was compared with
    # the stale state, which still had RC4, and said nothing)
    assert fixed.state is not None
    again = detect_changes(fixed.state, view([snap(443, **weak, weak_suites=rc4)],
                                             scan_id="s2"), {})
    assert kinds(again) == [("tls_changed", 443, "TLSv1.0; grade weak",
                             "weak +TLS_RSA_WITH_RC4_128_SHA")]
    assert [e.severity for e in again.events] == [Severity.MEDIUM]


def test_a_compared_field_that_moved_without_an_event_moves_the_state() -> None:
    from stream_processors.changes import fingerprint

    # Given a web port whose favicon was never fetched, When a scan first gets one
    prev = state([snap(80, service="http", product="nginx")])
    now = view([snap(80, service="http", product="nginx", favicon="-1234")])
    out = detect_changes(prev, now, {})
    # Then no event (there was nothing to compare with), but the state has the favicon:
    # the next identical scan matches it and takes the fast path
    assert kinds(out) == []
    assert out.state is not None
    assert out.state.ports[(Proto.TCP, 80)].favicon == "-1234"
    assert fingerprint(out.state.ports) == fingerprint(now.ports)


def test_a_partly_completed_tls_probe_is_not_compared() -> None:
    from schemas.records import CipherSuite, OpenPort, ProbeStatus, TlsResult
    from stream_processors.changes import snapshot_of

    # Given a full result (TLS 1.2, two anonymous suites: weak)
    full = {"tls_status": "completed", "tls_versions": ("TLSv1.2",), "tls_grade": "weak",
            "weak_suites": ("TLS_ECDH_anon_WITH_AES_128_CBC_SHA",), "risk_color": "red",
            "service": "https", "product": "", "version": ""}
    prev = state([snap(443, **full)])
    # When the server stopped answering part-way through the next enumeration: the probe
    # completed with what it found ("partial: ..."), one strong suite
    port = OpenPort(scan_id="s1", target=T, port=443)
    cut = Finding(port=port, service=ServiceInfo(service="https", is_tls=True),
                  tls=TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.2",),
                                suites=(CipherSuite("TLSv1.2", "TLS_AES_128_GCM_SHA256",
                                                    strength="strong"),),
                                grade="strong", error="partial: TLSv1.2: timed out"))
    partial = snapshot_of(cut)._replace(risk_color="green")
    assert partial.tls_status == "partial"
    out = detect_changes(prev, view([partial]), {})
    # Then nothing is said (no "grade weak->strong", no risk_lowered), the full result stays
    assert kinds(out) == []
    assert out.state is not None and out.state.ports[(Proto.TCP, 443)].weak_suites == (
        "TLS_ECDH_anon_WITH_AES_128_CBC_SHA",)
    # And the next full result, the same as the first, says nothing either
    assert kinds(detect_changes(out.state, view([snap(443, **full)], scan_id="s2"), {})) == []


def test_a_udp_port_that_never_answered_opens_as_info_and_says_so() -> None:
    from schemas.records import OpenPort, PortState
    from stream_processors.changes import snapshot_of

    # Given a UDP port with no reply (open|filtered) and one that answered, both yellow
    silent = snapshot_of(Finding(port=OpenPort(scan_id="s1", target=T, port=20161,
                                               proto=Proto.UDP, state=PortState.OPEN_FILTERED)))
    answered = snapshot_of(Finding(port=OpenPort(scan_id="s1", target=T, port=20053,
                                                 proto=Proto.UDP)))
    assert silent.is_unconfirmed and not answered.is_unconfirmed
    out = detect_changes(None, view([silent, answered]), {})
    # Then the silent one's opening is info and its text says it is unconfirmed (the
    # Summary scores it nothing; a medium "opened" fired ">= medium" alert rules)
    assert [(e.port, e.severity, e.after) for e in out.events] == [
        (20053, Severity.MEDIUM, "unidentified (yellow)"),
        (20161, Severity.INFO, "unidentified (yellow), open|filtered: no UDP reply")]
    # And the state keeps each one's word (port_state.udp_reply), for the next scan
    assert out.state is not None
    assert {k[1]: s.is_unconfirmed for k, s in out.state.ports.items()} == {
        20053: False, 20161: True}


def udp(port: int, *, silent: bool, **kw: object) -> PortSnapshot:
    fields: dict[str, object] = {"proto": Proto.UDP, "service": "", "product": "",
                                 "version": "", "risk_color": "yellow",
                                 "is_unconfirmed": silent}
    fields.update(kw)
    return snap(port, **fields)


def test_a_udp_port_that_starts_answering_or_stops_raises_or_lowers_its_risk() -> None:
    udp_view = partial(view_at, proto=Proto.UDP)
    # Given a UDP port that sent nothing back (open|filtered: the Summary scores it
    # nothing) and one that answered, both yellow
    prev = state([udp(20161, silent=True), udp(20053, silent=False)])
    # When the next scan hears the first and not the second
    out = detect_changes(prev, udp_view([udp(20161, silent=False), udp(20053, silent=True)],
                                        T1, "s1"), {})
    # Then the first's risk is raised (it scores now: medium, as a yellow raise) and the
    # second's lowered (info), each saying why; nothing else
    assert [(k, p, b, a) for k, p, b, a in kinds(out)] == [
        ("risk_lowered", 20053, "yellow, answers", "yellow, open|filtered: no UDP reply"),
        ("risk_raised", 20161, "yellow, open|filtered: no UDP reply", "yellow, answers")]
    assert [e.severity for e in out.events] == [Severity.INFO, Severity.MEDIUM]
    # and the state has each one's new word, so the same scan again says nothing
    assert out.state is not None
    again = detect_changes(out.state, udp_view([udp(20161, silent=False),
                                                udp(20053, silent=True)],
                                               T1 + timedelta(days=1), "s2"), {})
    assert kinds(again) == []
    # and the fast path sees the move too: the digests differ, then match again
    assert fingerprint(prev.ports) != fingerprint(out.state.ports)
    assert fingerprint(out.state.ports) == fingerprint(
        {p.key: p for p in (udp(20161, silent=False), udp(20053, silent=True))})


def test_a_udp_port_whose_last_word_is_unknown_says_nothing_of_it() -> None:
    # Given a state row written before port_state kept a UDP port's word (layout 21)
    prev = state([udp(20161, silent=False, is_reply_unknown=True)])
    # When the port is silent now
    out = detect_changes(prev, view_at([udp(20161, silent=True)], T1, "s1", proto=Proto.UDP),
                         {})
    # Then nothing is said (an upgrade raises no event), and its word is written
    assert kinds(out) == []
    assert out.state is not None
    kept = out.state.ports[(Proto.UDP, 20161)]
    assert kept.is_unconfirmed and not kept.is_reply_unknown


def test_a_udp_colour_change_with_its_reply_is_one_risk_event() -> None:
    # Given a silent UDP port (yellow), When it answers as SNMP (red)
    prev = state([udp(20161, silent=True)])
    out = detect_changes(prev, view_at([udp(20161, silent=False, service="snmp",
                                            risk_color="red")], T1, "s1", proto=Proto.UDP), {})
    # Then one risk_raised, saying the colours and the reply (the service change is said
    # too), not a second one
    assert kinds(out) == [("service_changed", 20161, "", "snmp"),
                          ("risk_raised", 20161, "yellow, open|filtered: no UDP reply",
                           "red, answers")]
    assert out.events[1].severity is Severity.HIGH


def test_a_green_udp_service_falling_silent_is_lowered_and_keeps_its_name() -> None:
    # Given a DNS server that answered (green, named), When it falls silent (yellow)
    dns = udp(20053, silent=False, service="domain", product="BIND", version="9.18",
              risk_color="green")
    out = detect_changes(state([dns]), view_at([udp(20053, silent=True)], T1, "s1",
                                               proto=Proto.UDP), {})
    # Then its risk is lowered (it scores nothing now), not "raised green -> yellow", and
    # nothing says its service changed: unknown now, kept in the state
    assert kinds(out) == [("risk_lowered", 20053, "green, answers",
                           "yellow, open|filtered: no UDP reply")]
    assert out.events[0].severity is Severity.INFO
    assert out.state is not None
    kept = out.state.ports[(Proto.UDP, 20053)]
    assert (kept.service, kept.product, kept.version, kept.is_unconfirmed) == (
        "domain", "BIND", "9.18", True)
    # And the next silent scan says nothing either (it said service 'domain' -> '' a
    # scan late: a review)
    still = detect_changes(out.state, view_at([udp(20053, silent=True)],
                                              T1 + timedelta(hours=12), "s1b",
                                              proto=Proto.UDP), {})
    assert kinds(still) == []
    assert still.state is not None and still.state.ports[(Proto.UDP, 20053)].service == "domain"
    # And when it answers again as before, its risk is raised, and nothing else is said
    back = detect_changes(still.state, view_at([dns], T1 + timedelta(days=1), "s2",
                                               proto=Proto.UDP), {})
    assert kinds(back) == [("risk_raised", 20053, "yellow, open|filtered: no UDP reply",
                            "green, answers")]
    assert back.events[0].severity is Severity.MEDIUM


def test_ports_a_stopped_scan_saw_open_where_this_scan_did_not_look() -> None:
    redis = snap(6379, service="redis", product="Redis", version="7.0", risk_color="red",
                 scan_id="cut", changed_at=T0, first_seen=T0)
    closed = snap(8080, service="http", product="nginx", version="1.2", is_open=False,
                  changed_at=T0)
    prev = state([snap(22), closed])
    sighted = {redis.key: redis, closed.key: closed._replace(is_open=True, scan_id="cut"),
               (Proto.TCP, 22): snap(22, version="9.9", scan_id="cut"),
               (Proto.TCP, 443): snap(443, scan_id="cut")}
    # Given a stopped scan that saw redis (never seen), 8080 (closed in the state), 22
    # (open there) and 443; When a completed scan of 22 and 443 only saw 22
    out = detect_changes(prev, view([snap(22)], covered=((22, 22), (443, 443))), {}, (),
                         sighted)
    # Then redis opens and 8080 reopens, both naming that scan; 22 stays this scan's, and
    # 443, which this scan looked at and found closed, is not opened
    assert kinds(out) == [
        ("opened", 6379, "", "redis Redis 7.0 (red), seen by scan cut, which did not complete"),
        ("reopened", 8080, f"closed {T0:%Y-%m-%d %H:%M:%S}",
         "http nginx 1.2 (green), seen by scan cut, which did not complete")]
    assert [e.severity for e in out.events] == [Severity.HIGH, Severity.LOW]
    assert out.state is not None
    assert {k[1]: (s.is_open, s.version) for k, s in out.state.ports.items()} == {
        22: (True, "9.2p1"), 6379: (True, "7.0"), 8080: (True, "1.2")}


def test_a_stopped_scans_sighting_reopens_by_the_usual_rules() -> None:
    redis = {"service": "redis", "product": "Redis", "version": "7.0", "risk_color": "red"}
    prev = state([snap(22), snap(6379, **redis, is_open=False, changed_at=T0)])
    note = ", seen by scan cut, which did not complete"
    # Given redis closed in the state; When a stopped scan saw it with its
    # identification cut short, Then it reopens as last identified (red, high)
    cut = snap(6379, service="", product="", version="", risk_color="yellow",
               is_incomplete=True, scan_id="cut")
    out = detect_changes(prev, view([snap(22)], covered=((22, 22),)), {}, (), {cut.key: cut})
    assert kinds(out) == [("reopened", 6379, f"closed {T0:%Y-%m-%d %H:%M:%S}",
                           "redis Redis 7.0 (red), as last identified (its identification "
                           f"was cut short){note}")]
    assert [e.severity for e in out.events] == [Severity.HIGH]
    # And when it saw it upgraded, the upgrade is said too
    newer = snap(6379, **{**redis, "version": "7.2"}, scan_id="cut")
    out = detect_changes(prev, view([snap(22)], covered=((22, 22),)), {}, (),
                         {newer.key: newer})
    assert kinds(out) == [
        ("reopened", 6379, f"closed {T0:%Y-%m-%d %H:%M:%S}", f"redis Redis 7.2 (red){note}"),
        ("version_changed", 6379, "7.0", "7.2")]


def test_a_stopped_scans_sighting_is_opened_when_the_host_stops_answering() -> None:
    # Given a host with 22 open, and a stopped scan that saw 8080 since
    web = snap(8080, service="http", product="nginx", version="1.2", scan_id="cut")
    # When a completed scan of 22 hears nothing, and the re-probe neither
    prev = state([snap(22)])
    out = detect_changes(prev, view([], covered=((22, 22),)),
                         {(Proto.TCP, 22): ProbeAnswer.SILENT}, (), {web.key: web})
    # Then the host is unreachable, and 8080 is opened all the same (the state moves
    # past the stopped scan: it was lost for good)
    assert [(e.kind.value, e.port) for e in out.events] == [("host_unreachable", 0),
                                                            ("opened", 8080)]
    assert out.state is not None and not out.state.is_reachable
    assert {k[1]: p.is_open for k, p in out.state.ports.items()} == {22: True, 8080: True}
    # And its change state is written for 8080 only (a down host's ports stay as they
    # were; without the row, the next call read a state without 8080)
    from stream_processors.history import _Rows

    rows = _Rows()
    rows.add(view([], covered=((22, 22),)), prev, out.events, out.state)
    assert [(r[2], r[3]) for r in rows.ports] == [("tcp", 8080)]


def test_a_port_a_stopped_scan_saw_is_asked_whether_the_host_answers() -> None:
    web = snap(20080, service="http", product="nginx", version="1.2", scan_id="cut")
    narrow = view([], covered=((59000, 59000),))
    for prev in (state([snap(59000)]), state([snap(59000)], reachable=False)):
        # Given a host whose one port 59000 went silent, and a stopped scan that saw
        # 20080 since; When a completed scan of 59000 only hears nothing, Then 20080 is
        # re-probed first to tell whether the host answers
        assert liveness_candidates(prev, narrow, {web.key: web})[0] == web.key
        # and, answering, it is opened on a host that answers (not "unreachable", which
        # hid the port beside its "opened" event: a review)
        out = detect_changes(prev, narrow, {web.key: ProbeAnswer.OPEN,
                                            (Proto.TCP, 59000): ProbeAnswer.SILENT},
                             (), {web.key: web})
        back = [] if prev.is_reachable else [("host_back", 0)]
        assert [(e.kind.value, e.port) for e in out.events] == [
            *back, ("closed", 59000), ("opened", 20080)]
        assert out.state is not None and out.state.is_reachable


def test_ports_a_stopped_scan_saw_are_asked_beside_the_states_never_instead() -> None:
    # Given a host with 20080 open (not looked at by the next scan) and 59000, and a
    # stopped scan that saw three more ports since
    prev = state([snap(20080), snap(59000)])
    sighted = {(Proto.TCP, p): snap(p, scan_id="cut") for p in (59001, 59002, 59003)}
    # When a completed scan of 59000 only hears nothing, Then 20080 is asked too (three
    # silent sightings took every place, and a live host went "unreachable": a review)
    asked = liveness_candidates(prev, view([], covered=((59000, 59000),)), sighted)
    assert asked == [(Proto.TCP, 20080), (Proto.TCP, 59001), (Proto.TCP, 59002),
                     (Proto.TCP, 59003)]


def test_every_port_a_stopped_scan_saw_is_asked_not_the_lowest_three() -> None:
    # Given a host whose one port 59000 went silent, and a stopped scan that saw four
    # ports since, of which only the highest still answers
    prev = state([snap(59000)])
    sighted = {(Proto.TCP, p): snap(p, scan_id="cut") for p in (59001, 59002, 59003, 59100)}
    narrow = view([], covered=((59000, 59000),))
    assert liveness_candidates(prev, narrow, sighted) == sorted(sighted)
    # When a completed scan of 59000 only hears nothing, Then the host answers (59100),
    # and is not "unreachable" (only the lowest three were asked: a review)
    answers = {k: ProbeAnswer.SILENT for k in [(Proto.TCP, 59000), *sorted(sighted)[:3]]}
    out = detect_changes(prev, narrow, {**answers, (Proto.TCP, 59100): ProbeAnswer.OPEN},
                         (), sighted)
    assert "host_unreachable" not in [e.kind.value for e in out.events]
    assert out.state is not None and out.state.is_reachable


def test_a_tls_change_of_many_weak_suites_keeps_its_grade_in_the_cap() -> None:
    from stream_processors.changes import TEXT_CAP

    # Given a TLS port, medium, then the same with forty weak suites offered, graded weak
    suites = tuple(f"TLS_ECDH_anon_WITH_CIPHER_NUMBER_{n:02d}_SHA" for n in range(40))
    before = snap(443, service="https", tls_status="completed",
                  tls_versions=("TLSv1.2", "TLSv1.3"), tls_grade="medium")
    after = before._replace(weak_suites=suites, tls_grade="weak")
    out = detect_changes(state([before]), view([after]), {})
    [tls] = [e for e in out.events if e.kind is ChangeKind.TLS_CHANGED]
    # Then the grade change is said, within the cap, after as many suites as fit and a
    # count of the rest (cut at the cap, the grade was lost; a review)
    assert tls.after.endswith("; grade medium->weak") and len(tls.after) <= TEXT_CAP
    listed = tls.after.split("; ")[0].split()
    more = int(listed[-2])
    assert listed[:2] == ["weak", f"+{suites[0]}"] and listed[-3:] == ["and", str(more), "more"]
    assert len(listed) - 4 + more == 40
    assert tls.severity is Severity.MEDIUM
    # And back: before (what it offered) keeps its grade too
    back = detect_changes(out.state, view([before], scan_id="s2"), {})
    [tls] = [e for e in back.events if e.kind is ChangeKind.TLS_CHANGED]
    assert tls.before.endswith("; grade weak") and len(tls.before) <= TEXT_CAP
    assert tls.after.endswith("; grade weak->medium") and len(tls.after) <= TEXT_CAP
    # And a short change reads as it always did
    few = detect_changes(state([before]), view([before._replace(weak_suites=suites[:2])]), {})
    assert [e.after for e in few.events if e.kind is ChangeKind.TLS_CHANGED] == [
        f"weak +{suites[0]} +{suites[1]}"]


def test_a_udp_port_that_reopens_silent_keeps_what_it_was_identified_as() -> None:
    # Given a DNS server that closed (the kernel refused its port), When it reopens silent
    dns = udp(20053, silent=False, service="domain", product="BIND", risk_color="green")
    closed = dns._replace(is_open=False, changed_at=T0)
    out = detect_changes(state([closed]), view_at([udp(20053, silent=True)], T1, "s1",
                                                  proto=Proto.UDP), {})
    # Then it is reopened, as what it was, silent; no service change is said
    assert [k for k, *_ in kinds(out)] == ["reopened"]
    assert out.events[0].after == "domain BIND (yellow), open|filtered: no UDP reply"
