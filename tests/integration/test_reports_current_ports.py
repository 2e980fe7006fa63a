"""Which ports the reports call a host's ports now (real chdb store, the report SQL).

A host's ports now are those of its latest *completed* scan: an interrupted or still
running rescan closes nothing (DESIGN.md; the change log agrees), so it must not empty
the host in the Summary, the List, Products or the per-target page either. Before, the
reports read the latest scan of any status: a rescan stopped with Ctrl-C reset every
host it had not reached to no port and grade A (a helper session's audit, 2026-12-05).
The Summary still says when the host was last scanned and that it was interrupted.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import history_sql
from schemas.records import (
    ChangeEvent,
    CipherSuite,
    Finding,
    HostScan,
    OpenPort,
    PortRange,
    ProbeStatus,
    Proto,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)

T0 = datetime(2026, 3, 1, 10, tzinfo=UTC)
DB = Target(ip="127.0.0.7", target="db.example.test", organization="Example Corp")
NEW = Target(ip="127.0.0.8", target="127.0.0.8", organization="Example Corp")


def found(t: Target, scan_id: str, at: datetime, port: int, product: str, version: str,
          color: RiskColor) -> Finding:
    return Finding(port=OpenPort(scan_id=scan_id, target=t, port=port, observed_at=at),
                   service=ServiceInfo(service="x", product=product, version=version),
                   risk_color=color)


def scanned(store: Any, t: Target, scan_id: str, at: datetime, status: str,
            findings: list[Finding]) -> None:
    store.insert_findings(findings)
    store.insert_host_scans([HostScan(scan_id, t, at, at + timedelta(minutes=5),
                                      65535 if status == "completed" else 120,
                                      len(findings), status=status)])


def reports(store: Any) -> tuple[dict[str, Any], dict[str, list[int]], dict[str, int]]:
    summary = {r["ip"]: r for r in store.report("summary").dicts()}
    ports: dict[str, list[int]] = {}
    for row in store.report("list").dicts():
        ports.setdefault(row["ip"], []).append(row["port"])
    products = {f"{r['product']} {r['version']}": r["instances"]
                for r in store.report("products").dicts()}
    return summary, {ip: sorted(p) for ip, p in ports.items()}, products


def test_an_interrupted_rescan_keeps_the_ports_of_the_last_completed_scan(store: Any) -> None:
    # Given a host whose completed scan found a red MySQL and a green SSH
    scanned(store, DB, "s1", T0, "completed", [
        found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
        found(DB, "s1", T0, 3306, "MySQL", "8.0.36", RiskColor.RED)])
    # And a rescan interrupted before it reached the host (nothing seen)
    scanned(store, DB, "s2", T0 + timedelta(days=1), "interrupted", [])
    # And a host whose only scan so far was interrupted, after finding one port
    scanned(store, NEW, "s2", T0 + timedelta(days=1), "interrupted", [
        found(NEW, "s2", T0 + timedelta(days=1), 8080, "Jetty", "9.4", RiskColor.YELLOW)])
    # When the reports run
    summary, ports, products = reports(store)
    # Then the first host keeps its ports, score and grade, and says its latest scan
    # (the time it was last looked at) was interrupted
    db = summary["127.0.0.7"]
    assert (db["open_ports"], db["red"], db["green"], db["risk_score"], db["grade"]) == (
        2, 1, 1, 24.0, "B")
    assert (db["scan_status"], db["ports_scanned"]) == ("interrupted", 120)
    assert db["last_scanned"].replace(tzinfo=UTC) == T0 + timedelta(days=1, minutes=5)
    assert ports["127.0.0.7"] == [22, 3306]
    assert products == {"OpenSSH 9.6p1": 1, "MySQL 8.0.36": 1, "Jetty 9.4": 1}
    # And the host never scanned to the end shows what its scan found
    assert (summary["127.0.0.8"]["open_ports"], ports["127.0.0.8"]) == (1, [8080])
    # And the per-target page's "ports now" agrees
    now = store.query(history_sql("target_ports"), {"target": DB.target, "ip": ""})
    assert sorted(row[3] for row in now) == [22, 3306]


def test_the_next_completed_scan_is_the_hosts_ports_now(store: Any) -> None:
    # Given the history above, then a completed scan that found SSH only
    scanned(store, DB, "s1", T0, "completed", [
        found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
        found(DB, "s1", T0, 3306, "MySQL", "8.0.36", RiskColor.RED)])
    scanned(store, DB, "s2", T0 + timedelta(days=1), "interrupted", [])
    scanned(store, DB, "s3", T0 + timedelta(days=2), "completed", [
        found(DB, "s3", T0 + timedelta(days=2), 22, "OpenSSH", "9.6p1", RiskColor.GREEN)])
    # Then its ports now are that scan's
    summary, ports, products = reports(store)
    assert (summary["127.0.0.7"]["open_ports"], summary["127.0.0.7"]["scan_status"]) == (
        1, "completed")
    assert ports == {"127.0.0.7": [22]}
    assert products == {"OpenSSH 9.6p1": 1}


def test_prune_keeps_the_scan_whose_ports_the_reports_show(store: Any) -> None:
    from stream_processors.change_log import prune

    # Given a completed scan, then an interrupted one, both older than the cutoff
    scanned(store, DB, "s1", T0, "completed", [
        found(DB, "s1", T0, 3306, "MySQL", "8.0.36", RiskColor.RED)])
    scanned(store, DB, "s2", T0 + timedelta(days=1), "interrupted", [])
    before = reports(store)
    # When the raw rows of old scans are pruned
    prune(store, timedelta(days=1), now=T0 + timedelta(days=30))
    # Then neither scan's rows went (the latest, and the one whose ports are shown)
    assert sorted(r[0] for r in store.query("SELECT DISTINCT scan_id FROM host_scans")) == [
        "s1", "s2"]
    assert store.query("SELECT port FROM port_observations") == [(3306,)]
    assert reports(store) == before


def _tls(t: Target, scan_id: str, at: datetime, port: int) -> Finding:
    return Finding(port=OpenPort(scan_id=scan_id, target=t, port=port, observed_at=at),
                   service=ServiceInfo(service="https", is_tls=True), risk_color=RiskColor.GREEN,
                   tls=TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",),
                                 suites=(CipherSuite("TLSv1.3", "TLS_AES_128_GCM_SHA256"),),
                                 grade="strong", reached_via="direct"))


def test_ciphers_keeps_a_starttls_port_a_scan_without_tls_probes_still_names(
        store: Any) -> None:
    # Given SMTP's STARTTLS probed on 25, then a --no-tls scan that names it smtp again
    mail = Finding(port=OpenPort(scan_id="s1", target=DB, port=25, observed_at=T0),
                   service=ServiceInfo(service="smtp"), risk_color=RiskColor.GREEN,
                   tls=TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",),
                                 grade="strong", reached_via="starttls-smtp"))
    scanned(store, DB, "s1", T0, "completed", [mail])
    later = T0 + timedelta(days=1)
    scanned(store, DB, "s2", later, "completed", [
        Finding(port=OpenPort(scan_id="s2", target=DB, port=25, observed_at=later),
                service=ServiceInfo(service="smtp"), risk_color=RiskColor.GREEN)])
    # Then its last probe stays in the report (it can still reach TLS)
    assert [(r["port"], r["reached_via"]) for r in store.report("ciphers").dicts()] == [
        (25, "starttls-smtp")]


def test_ciphers_drops_a_port_that_speaks_plain_text_now_and_keeps_tls_not_retested(
        store: Any) -> None:
    # Given three TLS ports probed in s1; then, in s2, 443 answers plain HTTP, 8443 is TLS
    # again (a --no-tls scan: not probed), and 9443 is TLS again and probed
    scanned(store, DB, "s1", T0, "completed",
            [_tls(DB, "s1", T0, port) for port in (443, 8443, 9443)])
    later = T0 + timedelta(days=1)

    def seen(port: int, service: ServiceInfo) -> Finding:
        return Finding(port=OpenPort(scan_id="s2", target=DB, port=port, observed_at=later),
                       service=service, risk_color=RiskColor.GREEN)

    scanned(store, DB, "s2", later, "completed", [
        seen(443, ServiceInfo(service="http", product="nginx")),
        seen(8443, ServiceInfo(service="https", is_tls=True)),
        _tls(DB, "s2", later, 9443)])
    # Then the Ciphers report lists 8443 (its last probe) and 9443, not 443: its suites
    # are of a service no longer there (before: shown as current)
    assert [(r["port"], r["tested_at"].replace(tzinfo=UTC))
            for r in store.report("ciphers").dicts()] == [(8443, T0), (9443, later)]
    # And the List still shows 443, as the plain HTTP it is
    assert [(r["port"], r["service"]) for r in store.report("list").dicts()] == [
        (443, "http"), (8443, "https"), (9443, "https")]
    # And when 443 speaks TLS again, its new probe is listed
    again = T0 + timedelta(days=2)
    scanned(store, DB, "s3", again, "completed",
            [_tls(DB, "s3", again, port) for port in (443, 8443, 9443)])
    assert [r["port"] for r in store.report("ciphers").dicts()] == [443, 8443, 9443]


def test_ciphers_lists_the_tls_ports_open_now(store: Any) -> None:
    # Given a host whose TLS ports 443 and 8443 were probed, then a completed scan that
    # found 443 only (8443 closed), then an interrupted one
    scanned(store, DB, "s1", T0, "completed", [_tls(DB, "s1", T0, 443), _tls(DB, "s1", T0, 8443)])
    scanned(store, DB, "s2", T0 + timedelta(days=1), "completed",
            [_tls(DB, "s2", T0 + timedelta(days=1), 443)])
    scanned(store, DB, "s3", T0 + timedelta(days=2), "interrupted", [])
    # Then the Ciphers report lists 443 (before: 8443 too, with its last probe, for ever)
    assert [(r["port"], r["grade"]) for r in store.report("ciphers").dicts()] == [
        (443, "strong")]


def test_what_an_interrupted_rescan_saw_again_or_anew_is_open(store: Any) -> None:
    # Given a completed scan that found SSH and MySQL, then a rescan interrupted after it
    # saw SSH again and found a new Redis (before it reached MySQL)
    scanned(store, DB, "s1", T0, "completed", [
        found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
        found(DB, "s1", T0, 3306, "MySQL", "8.0.36", RiskColor.RED)])
    later = T0 + timedelta(days=1)
    scanned(store, DB, "s2", later, "interrupted", [
        found(DB, "s2", later, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
        found(DB, "s2", later, 6379, "Redis", "7.0.15", RiskColor.RED)])
    # Then all three are its ports now: what the rescan saw is open, what it did not
    # reach is not closed (before this fix: only MySQL; before the last one: SSH, Redis)
    summary, ports, products = reports(store)
    db = summary["127.0.0.7"]
    assert (db["open_ports"], db["red"], db["green"], db["scan_status"]) == (
        3, 2, 1, "interrupted")
    assert ports == {"127.0.0.7": [22, 3306, 6379]}
    assert products == {"OpenSSH 9.6p1": 1, "MySQL 8.0.36": 1, "Redis 7.0.15": 1}
    now = store.query(history_sql("target_ports"), {"target": DB.target, "ip": ""})
    assert sorted(row[3] for row in now) == [22, 3306, 6379]
    # And the List's --history marks them current
    history = store.report("list", {"history": 1}).dicts()
    assert sorted((r["port"], r["is_current"]) for r in history) == [
        (22, 1), (3306, 1), (6379, 1)]


# -- a narrower scan (ddl.sql ports_carried) -------------------------------------------------


def recorded(store: Any, t: Target, scan_id: str, at: datetime, findings: list[Finding],
             covered: tuple[PortRange, ...] = (PortRange(1, 65535),),
             udp: tuple[PortRange, ...] = ()) -> list[ChangeEvent]:
    """A completed scan of ``covered`` (TCP) and ``udp``, stored and compared by the real
    change recorder (its closure re-probes go to the host's loopback address for real)."""
    import asyncio

    from stream_processors.history import ChangeRecorder

    end = at + timedelta(minutes=5)
    shards = [HostScan(scan_id, t, at, end, sum(r.last - r.first + 1 for r in ranges),
                       len(findings), shard_id=f"{scan_id}:{proto.value}", proto=proto,
                       ports=ranges)
              for proto, ranges in ((Proto.TCP, covered), (Proto.UDP, udp)) if ranges]
    store.insert_findings(findings)
    store.insert_host_scans(shards)
    recorder = ChangeRecorder(store)
    recorder.add_findings(findings)
    return asyncio.run(recorder.finish(shards))


def target_ports(store: Any, t: Target) -> list[int]:
    return [r[3] for r in store.query(history_sql("target_ports"),
                                      {"target": t.target, "ip": t.ip})]


def scores(store: Any, t: Target) -> list[tuple[str, int, float]]:
    """The per-target page's score after every scan: (scan, open ports, score)."""
    return [(r["scan_id"], r["open_ports"], r["risk_score"]) for r in store.select(
        "scores", history_sql("target_scores"), {"target": t.target, "ip": t.ip}).dicts()]


def risk_history(store: Any, t: Target) -> list[float]:
    """The Summary page's chart: the address's score per day."""
    from schemas import web_sql
    from stream_processors.risk_days import refresh_risk_days

    refresh_risk_days(store)  # (a scan's end does it: Store.compact_page_indexes)
    return [r["risk_score"] for r in store.select(
        "risk", web_sql("risk_history"), {"target": t.ip, "org": "", "days": 0}).dicts()]


def test_a_narrower_scans_point_keeps_the_colour_its_carried_ports_had_then(
        store: Any) -> None:
    # Given a host with SSH and a red MySQL, then a scan of port 22 only (MySQL carried:
    # its point counts it red)
    day = timedelta(days=1)
    recorded(store, DB, "s1", T0, [found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
                                   found(DB, "s1", T0, 3306, "MySQL", "8.0.36", RiskColor.RED)])
    recorded(store, DB, "s2", T0 + day,
             [found(DB, "s2", T0 + day, 22, "OpenSSH", "9.6p1", RiskColor.GREEN)],
             covered=(PortRange(22, 22),))
    before = scores(store, DB)
    assert before == [("s1", 2, 24.0), ("s2", 2, 24.0)]
    # When a full scan later finds port 3306 serving something green
    recorded(store, DB, "s3", T0 + 2 * day,
             [found(DB, "s3", T0 + 2 * day, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
              found(DB, "s3", T0 + 2 * day, 3306, "nginx", "1.24.0", RiskColor.GREEN)])
    # Then the earlier points stay as they were (before: the narrower scan's point was
    # recomputed with 3306's colour now, green, and fell to 4.9: a review)
    after = scores(store, DB)
    assert after[:2] == before
    assert after[2] == ("s3", 2, 4.9)


def test_a_scan_of_fewer_ports_hides_none_of_the_others(store: Any) -> None:
    # Given a host whose full scan found SSH, nginx on 443 and a red MySQL (nothing listens
    # on 127.0.0.7: the recorder's re-probes of a missing port fail for real)
    day = timedelta(days=1)
    recorded(store, DB, "s1", T0, [found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
                                   found(DB, "s1", T0, 443, "nginx", "1.24.0", RiskColor.GREEN),
                                   found(DB, "s1", T0, 3306, "MySQL", "8.0.36", RiskColor.RED)])
    # When a completed scan of ports 22 and 3306 only finds SSH
    events = recorded(store, DB, "s2", T0 + day,
                      [found(DB, "s2", T0 + day, 22, "OpenSSH", "9.6p1", RiskColor.GREEN)],
                      covered=(PortRange(22, 22), PortRange(3306, 3306)))
    # Then the change log closes MySQL only, and every report agrees: 443, which that scan
    # did not cover, is still open (with what was last seen on it); MySQL is not
    assert [(e.kind.value, e.port) for e in events] == [("closed", 3306)]
    summary, ports, products = reports(store)
    assert ports == {"127.0.0.7": [22, 443]}
    db = summary["127.0.0.7"]
    assert (db["open_ports"], db["red"], db["green"], db["ports_scanned"]) == (2, 0, 2, 2)
    assert products == {"OpenSSH 9.6p1": 1, "nginx 1.24.0": 1}
    assert target_ports(store, DB) == [22, 443]
    # And the score after every scan counts 443 at the narrower scan: its point is the
    # Summary's score (before: that of SSH alone, 2.5), in both charts
    assert scores(store, DB) == [("s1", 3, 25.9), ("s2", 2, db["risk_score"])]
    assert db["risk_score"] == 4.9
    assert risk_history(store, DB) == [25.9, 4.9]
    listed = {r["port"]: r for r in store.report("list", {"history": 1}).dicts()}
    assert {p: (r["is_current"], r["state"]) for p, r in listed.items()} == {
        22: (1, "open"), 443: (1, "open"), 3306: (0, "closed")}
    # And pruning the first scan's raw rows changes none of it
    from stream_processors.change_log import prune

    before = reports(store)
    prune(store, timedelta(hours=1), now=T0 + day + timedelta(hours=2))
    assert store.query("SELECT DISTINCT scan_id FROM port_observations") == [("s2",)]
    assert reports(store) == before
    # (the pruned scan keeps its point from the risk chart's rows, its ports unknown now;
    # it was dropped, and the per-target page and the chart disagreed on the past: a
    # review)
    assert scores(store, DB) == [("s1", None, 25.9), ("s2", 2, 4.9)]
    assert [r["status"] for r in store.select("scores", history_sql("target_scores"), {
        "target": DB.target, "ip": DB.ip}).dicts()] == ["pruned", "completed"]
    # And when a full scan then finds SSH only, 443 is closed and no longer counted
    events = recorded(store, DB, "s3", T0 + 2 * day,
                      [found(DB, "s3", T0 + 2 * day, 22, "OpenSSH", "9.6p1", RiskColor.GREEN)])
    assert [(e.kind.value, e.port) for e in events] == [("closed", 443)]
    summary, ports, products = reports(store)
    assert ports == {"127.0.0.7": [22]} and summary["127.0.0.7"]["open_ports"] == 1
    assert products == {"OpenSSH 9.6p1": 1}
    assert target_ports(store, DB) == [22]
    assert scores(store, DB) == [("s1", None, 25.9), ("s2", 2, 4.9), ("s3", 1, 2.5)]
    # And a prune past the narrower scan takes the ports it carried with its other rows
    prune(store, timedelta(hours=1), now=T0 + 2 * day + timedelta(hours=2))
    assert store.query("SELECT count() FROM carried_history") == [(0,)]
    assert scores(store, DB) == [("s1", None, 25.9), ("s2", None, 4.9), ("s3", 1, 2.5)]


def test_a_renamed_asset_finds_every_port_of_its_host_in_every_report(store: Any) -> None:
    # Given a host scanned as asset "web-1" with SSH and a red MySQL
    from dataclasses import replace

    day = timedelta(days=1)
    old = replace(DB, asset="web-1", hostname="web-1.example.test")
    recorded(store, old, "s1", T0, [found(old, "s1", T0, 22, "OpenSSH", "9.6p1",
                                          RiskColor.GREEN),
                                    found(old, "s1", T0, 3306, "MySQL", "8.0.36",
                                          RiskColor.RED)])
    # When the inventory renames it "web-01" and a scan of port 22 only sees SSH (MySQL,
    # not covered, is still open, last seen under the old name)
    new = replace(DB, asset="web-01", hostname="web-01.example.test")
    recorded(store, new, "s2", T0 + day, [found(new, "s2", T0 + day, 22, "OpenSSH", "9.6p1",
                                                RiskColor.GREEN)],
             covered=(PortRange(22, 22),))
    # Then --target web-01 finds both ports in the List and Products, as in the Summary
    # (before: the List and Products matched each port's own asset, and hid MySQL)
    for name in ("web-01", "WEB-01.example.test"):
        summary = store.report("summary", {"target": name}).dicts()
        assert [(r["asset"], r["open_ports"], r["red"]) for r in summary] == [("web-01", 2, 1)]
        listed = store.report("list", {"target": name}).dicts()
        assert [(r["port"], r["asset"], r["hostname"]) for r in listed] == [
            (22, "web-01", "web-01.example.test"), (3306, "web-01", "web-01.example.test")]
        products = store.report("products", {"target": name}).dicts()
        assert sorted(r["product"] for r in products) == ["MySQL", "OpenSSH"]
    # And the old name finds nothing in any of them
    for report in ("summary", "list", "products"):
        assert store.report(report, {"target": "web-1"}).dicts() == []


def test_the_summary_says_which_listed_port_scores_nothing_for_want_of_an_answer(
        store: Any) -> None:
    # Given a host with SSH and a UDP port that never answered (open|filtered)
    from dataclasses import replace

    from portwatch.render import cell_text, jsonable
    from schemas.records import PortState

    silent = found(DB, "s1", T0, 20054, "", "", RiskColor.YELLOW)
    silent = replace(silent, port=replace(silent.port, proto=Proto.UDP,
                                          state=PortState.OPEN_FILTERED))
    scanned(store, DB, "s1", T0, "completed",
            [found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN), silent])
    # When the Summary is read
    (row,) = store.report("summary").dicts()
    # Then both ports are listed, only SSH is scored, and each port says its state, so a
    # reader can tell the listed yellow port from the counted ones (before: a yellow
    # port listed and not counted, with nothing to say why)
    assert (row["open_ports"], row["yellow"], row["green"]) == (2, 0, 1)
    assert [p["state"] for p in jsonable("ports", row["ports"])] == ["open", "open|filtered"]
    assert cell_text("summary", "ports", row["ports"]) == (
        "22/tcp:green 20054/udp:yellow,unconfirmed")


def _shard(scan_id: str, at: datetime, minutes: int, first: int, last: int, seen: int,
           status: str = "completed") -> HostScan:
    return HostScan(scan_id, DB, at, at + timedelta(minutes=minutes), last - first + 1, seen,
                    status=status, shard_id=f"{scan_id}:tcp:{first}",
                    ports=(PortRange(first, last),))


def test_a_port_a_late_shard_closes_is_no_longer_carried_by_its_scan(store: Any) -> None:
    import asyncio

    from stream_processors.history import ChangeRecorder

    # Given a host whose full scan found SSH and nginx on 443 (nothing listens on
    # 127.0.0.7: the re-probe of a missing port fails for real)
    recorded(store, DB, "s1", T0, [found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
                                   found(DB, "s1", T0, 443, "nginx", "1.24.0", RiskColor.GREEN)])
    # When a rescan's shards reach the change recorder apart (the distributed sink's
    # hold settles between them, or a killed worker's shard comes back late): first the
    # one of ports 1-100, seeing SSH (443 not covered yet: carried, still shown) ...
    at = T0 + timedelta(days=1)
    first = _shard("s2", at, 5, 1, 100, 1)
    ssh = found(DB, "s2", at, 22, "OpenSSH", "9.6p1", RiskColor.GREEN)
    store.insert_findings([ssh])
    store.insert_host_scans([first])
    recorder = ChangeRecorder(store)
    recorder.add_findings([ssh])
    assert asyncio.run(recorder.finish([first])) == []
    assert reports(store)[1] == {"127.0.0.7": [22, 443]}
    # ... then the late one of ports 101-65535, which sees nothing
    late = _shard("s2", at, 9, 101, 65535, 0)
    store.insert_host_scans([late])
    events = asyncio.run(ChangeRecorder(store).finish([late]))
    # Then 443 is closed, and every report agrees: it is no longer the host's (before,
    # the first part's carried row kept it open in the Summary, the List, Products and
    # the score after the scan: a review of the distributed shape)
    assert [(e.kind.value, e.port) for e in events] == [("closed", 443)]
    summary, ports, products = reports(store)
    assert ports == {"127.0.0.7": [22]} and summary["127.0.0.7"]["open_ports"] == 1
    assert products == {"OpenSSH 9.6p1": 1}
    assert target_ports(store, DB) == [22]
    assert scores(store, DB) == [("s1", 2, 4.9), ("s2", 1, 2.5)]
    assert risk_history(store, DB) == [4.9, 2.5]
    # (the late part carries SSH, which the first part saw: counted once, as seen)
    assert store.query("SELECT port FROM carried_history") == [(22,)]


def test_a_resumed_scan_that_closes_a_port_it_carried_when_cut_carries_it_no_more(
        store: Any) -> None:
    import asyncio

    from stream_processors.history import ChangeRecorder

    # Given a host whose full scan found SSH and nginx on 443
    recorded(store, DB, "s1", T0, [found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
                                   found(DB, "s1", T0, 443, "nginx", "1.24.0", RiskColor.GREEN)])
    # And a rescan cut after its first shard (SSH seen; 443 carried: it hides nothing)
    at = T0 + timedelta(days=1)
    ssh = found(DB, "s2", at, 22, "OpenSSH", "9.6p1", RiskColor.GREEN)
    first = _shard("s2", at, 5, 1, 100, 1)
    cut = _shard("s2", at, 6, 101, 65535, 0, status="interrupted")
    store.insert_findings([ssh])
    store.insert_host_scans([first, cut])
    recorder = ChangeRecorder(store)
    recorder.add_findings([ssh])
    assert asyncio.run(recorder.finish([first, cut])) == []
    assert reports(store)[1] == {"127.0.0.7": [22, 443]}
    # When the same scan is resumed and its second shard completes seeing nothing
    done = _shard("s2", at, 30, 101, 65535, 0)
    store.insert_host_scans([done])
    recorder = ChangeRecorder(store)
    recorder.add_findings([ssh])
    events = asyncio.run(recorder.finish([first, done]))
    # Then 443 is closed, and shown closed everywhere
    assert [(e.kind.value, e.port) for e in events] == [("closed", 443)]
    summary, ports, _products = reports(store)
    assert ports == {"127.0.0.7": [22]} and summary["127.0.0.7"]["open_ports"] == 1
    assert scores(store, DB) == [("s1", 2, 4.9), ("s2", 1, 2.5)]


def test_a_scan_that_sees_every_open_port_carries_none(store: Any) -> None:
    # Given two full scans of a host that find the same ports
    for n in range(2):
        at = T0 + timedelta(days=n)
        recorded(store, DB, f"s{n}", at, [found(DB, f"s{n}", at, 22, "OpenSSH", "9.6p1",
                                                RiskColor.GREEN)])
    # Then nothing is carried (no row: most scans cost the reports nothing more)
    assert store.query("SELECT count() FROM ports_carried") == [(0,)]
    assert reports(store)[1] == {"127.0.0.7": [22]}


def test_a_covered_port_is_carried_only_if_the_re_probe_finds_it_open(store: Any) -> None:
    import socket

    from tests import loopback

    # Given a host (127.0.0.7) with SSH, a real listener whose SYN the next scan will
    # "lose", and a UDP port that answered once and is silent now (bound, never replying)
    with loopback.listen(loopback.banner(b"SSH-2.0-x\r\n"), ("127.0.0.7",)) as lost, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:
        quiet.bind(("127.0.0.7", 0))
        udp_port = quiet.getsockname()[1]
        udp = Finding(port=OpenPort(scan_id="s1", target=DB, port=udp_port, proto=Proto.UDP,
                                    observed_at=T0),
                      service=ServiceInfo(service="snmp"), risk_color=RiskColor.YELLOW)
        recorded(store, DB, "s1", T0, [
            found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
            found(DB, "s1", T0, lost.port, "x", "1", RiskColor.YELLOW), udp],
            udp=(PortRange(udp_port, udp_port),))
        # When a full scan (TCP and that UDP port) sees SSH only
        at = T0 + timedelta(days=1)
        events = recorded(store, DB, "s2", at,
                          [found(DB, "s2", at, 22, "OpenSSH", "9.6p1", RiskColor.GREEN)],
                          udp=(PortRange(udp_port, udp_port),))
    # Then nothing closes (the re-probe reached the listener; UDP silence proves nothing),
    # the listener the re-probe found open is carried and shown, the silent UDP port is
    # not: the reports show no port on a guess
    assert events == []
    assert store.query("SELECT proto, port FROM ports_carried") == [("tcp", lost.port)]
    assert reports(store)[1] == {"127.0.0.7": sorted([22, lost.port])}


def test_an_interrupted_tcp_part_behind_a_completed_udp_part_hides_no_tcp_port(
        store: Any) -> None:
    import asyncio

    from stream_processors.history import ChangeRecorder

    # Given a host whose full scan found SSH and nginx, and SNMP on UDP 161
    snmp = Finding(port=OpenPort(scan_id="s1", target=DB, port=161, proto=Proto.UDP,
                                 observed_at=T0),
                   service=ServiceInfo(service="snmp"), risk_color=RiskColor.RED)
    recorded(store, DB, "s1", T0, [found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
                                   found(DB, "s1", T0, 443, "nginx", "1.24.0", RiskColor.GREEN),
                                   snmp], udp=(PortRange(161, 161),))

    def partly(scan_id: str, at: datetime, udp_status: str) -> list[ChangeEvent]:
        shards = [HostScan(scan_id, DB, at, at + timedelta(minutes=5), 120, 0,
                           status="interrupted", shard_id=f"{scan_id}:tcp",
                           ports=(PortRange(1, 65535),)),
                  HostScan(scan_id, DB, at, at + timedelta(minutes=6), 1, 0,
                           status=udp_status, shard_id=f"{scan_id}:udp", proto=Proto.UDP,
                           ports=(PortRange(161, 161),))]
        store.insert_host_scans(shards)
        return asyncio.run(ChangeRecorder(store).finish(shards))

    # When a rescan's TCP part is interrupted before it saw anything and its UDP part
    # completes without a reply from 161 (so that scan is the host's latest completed one)
    assert partly("s2", T0 + timedelta(days=1), "completed") == []
    # Then the TCP ports the change log holds open are still the host's ports, and so is
    # 161, which the completed part covered and did not see: nothing re-probed it and
    # nothing closed it (the scan did not complete whole), so nothing hides it
    summary, ports, products = reports(store)
    assert ports == {"127.0.0.7": [22, 161, 443]} and summary["127.0.0.7"]["open_ports"] == 3
    assert products == {"OpenSSH 9.6p1": 1, "nginx 1.24.0": 1}
    # And a later scan interrupted in both parts changes none of it (it carries nothing,
    # which would displace what the completed part's scan carries)
    assert partly("s3", T0 + timedelta(days=2), "interrupted") == []
    assert reports(store)[1] == {"127.0.0.7": [22, 161, 443]}


def test_an_interrupted_udp_part_behind_a_completed_tcp_part_hides_no_port(
        store: Any) -> None:
    import asyncio

    from stream_processors.history import ChangeRecorder

    # Given a host whose full scan found SSH and nginx
    recorded(store, DB, "s1", T0, [found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
                                   found(DB, "s1", T0, 443, "nginx", "1.24.0", RiskColor.GREEN)])
    # When a rescan's TCP part completes seeing SSH only and its UDP part is interrupted
    # (Ctrl-C during the UDP top 1,000, which runs after TCP: a review)
    at = T0 + timedelta(days=1)
    store.insert_findings([found(DB, "s2", at, 22, "OpenSSH", "9.6p1", RiskColor.GREEN)])
    shards = [HostScan("s2", DB, at, at + timedelta(minutes=5), 65535, 1,
                       shard_id="s2:tcp", ports=(PortRange(1, 65535),)),
              HostScan("s2", DB, at, at + timedelta(minutes=6), 1000, 0,
                       status="interrupted", shard_id="s2:udp", proto=Proto.UDP,
                       ports=(PortRange(1, 1000),))]
    store.insert_host_scans(shards)
    # Then nothing closes, and 443 is still shown: the change log and the reports agree
    assert asyncio.run(ChangeRecorder(store).finish(shards)) == []
    summary, ports, _products = reports(store)
    assert ports == {"127.0.0.7": [22, 443]} and summary["127.0.0.7"]["open_ports"] == 2


def test_an_overlapping_partly_completed_scan_never_displaces_the_ports_scans_rows(
        store: Any) -> None:
    import asyncio

    from stream_processors.history import ChangeRecorder

    # Given a full scan (SSH, nginx), then a completed scan of 22 only ending at +1d 5m
    # (443 carried)
    day = T0 + timedelta(days=1)
    recorded(store, DB, "s0", T0, [found(DB, "s0", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
                                   found(DB, "s0", T0, 443, "nginx", "1.24.0", RiskColor.GREEN)])
    recorded(store, DB, "s1", day, [found(DB, "s1", day, 22, "OpenSSH", "9.6p1",
                                          RiskColor.GREEN)], covered=(PortRange(22, 22),))
    # And an overlapping scan whose UDP part completed earlier (+1d 2m) and whose TCP
    # part failed later (+1d 10m): s1 stays the ports scan
    shards = [HostScan("s2", DB, day, day + timedelta(minutes=2), 1, 0, shard_id="s2:udp",
                       proto=Proto.UDP, ports=(PortRange(161, 161),)),
              HostScan("s2", DB, day, day + timedelta(minutes=10), 9, 0, status="error",
                       shard_id="s2:tcp", ports=(PortRange(1, 65535),))]
    store.insert_host_scans(shards)
    assert asyncio.run(ChangeRecorder(store).finish(shards)) == []
    # When the carried rows merge
    store.command("OPTIMIZE TABLE ports_carried FINAL")
    # Then 443 is still carried by the ports scan, and shown
    assert store.query("SELECT port, scan_id FROM ports_carried") == [(443, "s1")]
    assert reports(store)[1] == {"127.0.0.7": [22, 443]}


def test_ciphers_lists_a_tls_port_a_narrower_scan_did_not_cover(store: Any) -> None:
    # Given TLS on 443 and 8443, then a completed scan of 8443 only that found it closed
    recorded(store, DB, "s1", T0, [_tls(DB, "s1", T0, 443), _tls(DB, "s1", T0, 8443)])
    recorded(store, DB, "s2", T0 + timedelta(days=1), [], covered=(PortRange(8443, 8443),))
    # Then 443 is still a finding of the Ciphers report, with its last probe; 8443 is not
    assert [(r["port"], r["grade"]) for r in store.report("ciphers").dicts()] == [
        (443, "strong")]


def test_a_store_upgraded_from_layout_14_carries_the_ports_of_its_stored_states(
        store: Any) -> None:
    from stream_processors.store import SCHEMA_VERSION, Store
    from tests import loopback

    # Given a host whose latest scan (of 22 and a listener it missed, which the re-probe
    # found open) left 443, which it did not cover, open in its change state
    with loopback.listen(loopback.banner(b"x\r\n"), ("127.0.0.7",)) as missed:
        recorded(store, DB, "s1", T0, [
            found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
            found(DB, "s1", T0, 443, "nginx", "1.24.0", RiskColor.GREEN),
            found(DB, "s1", T0, missed.port, "x", "1", RiskColor.YELLOW)])
        at = T0 + timedelta(days=1)
        recorded(store, DB, "s2", at,
                 [found(DB, "s2", at, 22, "OpenSSH", "9.6p1", RiskColor.GREEN)],
                 covered=(PortRange(22, 22), PortRange(missed.port, missed.port)))
    assert len(store.query("SELECT port FROM ports_carried")) == 2
    # And the store as layout 14 left it: no carried ports
    assert SCHEMA_VERSION == 22
    store.command("TRUNCATE TABLE ports_carried")
    store.command("TRUNCATE TABLE carried_history")
    store.command("TRUNCATE TABLE schema_version")
    store.command("INSERT INTO schema_version VALUES (14)")
    assert reports(store)[1] == {"127.0.0.7": [22]}
    # When this portwatch opens it, then the upgrade fills them from the stored state and
    # the scans' coverage: 443; not the covered port (the re-probe's answer is not stored)
    url = f"chdb://{store.location.path}?database={store.location.database}"
    with Store.from_url(url) as upgraded:
        assert upgraded.query("SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION,)]
        assert upgraded.query("SELECT ip, proto, port, scan_id FROM ports_carried FINAL") == [
            ("127.0.0.7", "tcp", 443, "s2")]
        assert reports(upgraded)[1] == {"127.0.0.7": [22, 443]}
        # and (15 -> 16) the score after every scan counts it at the scan that carried it
        assert upgraded.query("SELECT ip, scan_id, proto, port FROM carried_history") == [
            ("127.0.0.7", "s2", "tcp", 443)]
        assert scores(upgraded, DB)[-1] == (
            "s2", 2, upgraded.report("summary").dicts()[0]["risk_score"])


def test_overlapping_scans_split_port_by_port_in_the_summary_as_in_the_list(
        store: Any) -> None:
    # Given a completed scan s1 (ended at T0+1h) that saw 22, and an interrupted scan s2
    # that overlapped it: 443 seen at T0+30m (before s1 ended, which did not see it: not
    # open now) and 6379 at T0+90m (after: open now)
    host = Target(ip="127.0.0.9", target="127.0.0.9", organization="Example Corp")
    store.insert_findings([
        found(host, "s1", T0, 22, "OpenSSH", "9.2p1", RiskColor.GREEN),
        found(host, "s2", T0 + timedelta(minutes=30), 443, "nginx", "1.22.1", RiskColor.GREEN),
        found(host, "s2", T0 + timedelta(minutes=90), 6379, "Redis", "7.0.15", RiskColor.RED)])
    store.insert_host_scans([
        HostScan("s1", host, T0 - timedelta(minutes=1), T0 + timedelta(hours=1), 65535, 1),
        HostScan("s2", host, T0, T0 + timedelta(hours=2), 100, 2, status="interrupted")])
    summary, ports, _products = reports(store)
    # Then the Summary counts and scores the ports the List shows, no more, no less
    assert ports["127.0.0.9"] == [22, 6379]
    row = summary["127.0.0.9"]
    assert (row["open_ports"], row["red"], row["green"]) == (2, 1, 1)
    assert [p[0] for p in row["ports"]] == [22, 6379]
    assert row["risk_score"] == round(100 * (1 - math.exp(-11 / 40)), 1)
    # And its filters see them too
    assert [r["ip"] for r in store.report("summary", {"color": "red"}).dicts()] == ["127.0.0.9"]
    assert [r["ip"] for r in store.report("summary", {"port": 6379}).dicts()] == ["127.0.0.9"]
    assert store.report("summary", {"port": 443}).rows == []


def test_products_count_the_hosts_of_a_block_each_and_an_address_once(store: Any) -> None:
    # Given two hosts of one CIDR target, each with nginx on two ports
    block = [Target(ip=f"127.0.2.{n}", target="127.0.2.0/30") for n in (1, 2)]
    for t in block:
        scanned(store, t, "s1", T0, "completed",
                [found(t, "s1", T0, p, "nginx", "1.24.0", RiskColor.GREEN) for p in (80, 443)])
    # Then Products counts the ports, and the addresses (before: the target spellings,
    # one per block whatever its hosts)
    [row] = store.report("products").dicts()
    assert (row["product"], row["instances"], row["targets"]) == ("nginx", 4, 2)
    # And one of those addresses scanned again under its own spelling is still one host,
    # and its port one instance (counted under each target, one socket was two: a review)
    alone = Target(ip="127.0.2.1", target="127.0.2.1")
    scanned(store, alone, "s2", T0, "completed",
            [found(alone, "s2", T0, 80, "nginx", "1.24.0", RiskColor.GREEN)])
    [row] = store.report("products").dicts()
    assert (row["instances"], row["targets"]) == (4, 2)


def test_a_scan_cut_short_scores_what_the_summary_shows_after_it(store: Any) -> None:
    # Given a completed scan that found SSH, nginx and a red MySQL
    day = timedelta(days=1)
    recorded(store, DB, "s1", T0, [found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
                                   found(DB, "s1", T0, 443, "nginx", "1.24.0", RiskColor.GREEN),
                                   found(DB, "s1", T0, 3306, "MySQL", "8.0.36", RiskColor.RED)])
    # And, a day later, a scan killed while it ran (its shard still "running", never
    # compared) that saw SSH again and a new Jetty before it died
    at = T0 + day
    store.insert_findings([found(DB, "s2", at, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
                           found(DB, "s2", at, 8080, "Jetty", "9.4", RiskColor.YELLOW)])
    store.insert_host_scans([HostScan("s2", DB, at, at, 0, 0, status="running")])
    # Then the Summary shows the four ports, and the score after that scan is its score
    # (before: SSH and Jetty alone, a dip as if nginx and MySQL had closed), in both charts
    summary, ports, _products = reports(store)
    db = summary["127.0.0.7"]
    assert ports["127.0.0.7"] == [22, 443, 3306, 8080] and db["open_ports"] == 4
    assert scores(store, DB) == [("s1", 3, 25.9), ("s2", 4, db["risk_score"])]
    assert db["risk_score"] == 31.3
    assert risk_history(store, DB) == [25.9, 31.3]
    # And a later completed scan is scored on what it found, as ever
    later = T0 + 2 * day
    recorded(store, DB, "s3", later,
             [found(DB, "s3", later, 22, "OpenSSH", "9.6p1", RiskColor.GREEN)])
    assert scores(store, DB)[-1] == ("s3", 1, reports(store)[0]["127.0.0.7"]["risk_score"])


def test_a_second_scan_cut_short_scores_what_the_first_one_saw_too(store: Any) -> None:
    # Given a completed scan that found SSH, nginx and a red MySQL
    day = timedelta(days=1)
    recorded(store, DB, "s1", T0, [found(DB, "s1", T0, 22, "OpenSSH", "9.6p1", RiskColor.GREEN),
                                   found(DB, "s1", T0, 443, "nginx", "1.24.0", RiskColor.GREEN),
                                   found(DB, "s1", T0, 3306, "MySQL", "8.0.36", RiskColor.RED)])
    # And a day later a scan killed while it ran, which saw a new Jetty, then another a
    # day after that, killed before it reached Jetty's port (it saw SSH alone)
    for scan_id, at, jetty in (("s2", T0 + day, True), ("s3", T0 + 2 * day, False)):
        seen = [found(DB, scan_id, at, 22, "OpenSSH", "9.6p1", RiskColor.GREEN)]
        if jetty:
            seen.append(found(DB, scan_id, at, 8080, "Jetty", "9.4", RiskColor.YELLOW))
        store.insert_findings(seen)
        began = at - timedelta(minutes=1)  # (a "running" row is written as a shard starts)
        store.insert_host_scans([HostScan(scan_id, DB, began, began, 0, 0, status="running")])
    # Then the Summary shows the four ports (Jetty: seen since the completed scan), and
    # the second stopped scan's point is that score too, in both charts (before: Jetty
    # left out, a dip as if it had closed, beside the Summary's 31.3)
    summary, ports, _products = reports(store)
    db = summary["127.0.0.7"]
    assert ports["127.0.0.7"] == [22, 443, 3306, 8080] and db["open_ports"] == 4
    assert db["risk_score"] == 31.3
    assert scores(store, DB) == [("s1", 3, 25.9), ("s2", 4, 31.3), ("s3", 4, 31.3)]
    assert risk_history(store, DB) == [25.9, 31.3, 31.3]
