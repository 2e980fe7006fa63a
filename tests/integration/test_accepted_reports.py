"""Accepted risks in the List and Summary reports and on the web pages (real chdb store,
real uvicorn on loopback): accepted ports show their note, who and until; an acceptance
ends when the port's version changes; a whole-host acceptance covers every port."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from portwatch.alerts import accepted as acc
from schemas.records import (
    CdnVerdict,
    Finding,
    HostScan,
    OpenPort,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)
from tests.integration.test_web_api import serve

NOW = datetime.now(UTC).replace(microsecond=0)
CACHE = Target(ip="127.0.0.1", target="127.0.0.1", organization="Example Corp", asset="cache")
TRAP = Target(ip="127.0.0.9", target="127.0.0.9", organization="Example Corp", asset="trap")


def finding(t: Target, port: int, service: str, product: str, version: str, scan_id: str,
            when: datetime) -> Finding:
    return Finding(port=OpenPort(scan_id=scan_id, target=t, port=port, observed_at=when),
                   service=ServiceInfo(service=service, product=product, version=version),
                   tls=TlsResult(), cdn=CdnVerdict(), risk_color=RiskColor.RED,
                   risk_reason="test")


def scan(store: Any, scan_id: str, when: datetime, redis_version: str) -> None:
    store.insert_findings([
        finding(CACHE, 6379, "redis", "Redis key-value store", redis_version, scan_id, when),
        finding(CACHE, 5432, "postgresql", "PostgreSQL DB", "15.5", scan_id, when),
        finding(TRAP, 23, "telnet", "", "", scan_id, when)])
    store.insert_host_scans([HostScan(scan_id=scan_id, target=t, started_at=when,
                                      finished_at=when, ports_scanned=65535, open_ports=n)
                             for t, n in ((CACHE, 2), (TRAP, 1))])


def list_rows(store: Any) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["ip"], r["port"]): r for r in store.report("list", {}).dicts()}


def test_accepted_ports_show_in_list_summary_and_web_until_the_version_changes(
        store: Any) -> None:
    # Given a scan, 6379 accepted until a date and the trap host accepted as a whole
    scan(store, "s1", NOW - timedelta(hours=2), "7.0.15")
    until = NOW + timedelta(days=30)
    acc.accept(store, "127.0.0.1", "tcp", 6379, note="cache, firewalled upstream",
               by="alice", until=until, now=NOW)
    acc.accept(store, "127.0.0.9", "tcp", 0, note="honeypot", by="bob", until=None, now=NOW)
    # When the List report runs
    rows = list_rows(store)
    # Then the accepted ports say so, with note, who and until; the others do not
    redis = rows[("127.0.0.1", 6379)]
    assert (redis["is_accepted"], redis["accepted_note"], redis["accepted_by"]) == (
        1, "cache, firewalled upstream", "alice")
    assert redis["accepted_until"].replace(tzinfo=UTC) == until
    assert rows[("127.0.0.1", 5432)]["is_accepted"] == 0
    assert rows[("127.0.0.1", 5432)]["accepted_until"] is None
    assert (rows[("127.0.0.9", 23)]["is_accepted"], rows[("127.0.0.9", 23)]["accepted_note"]) \
        == (1, "honeypot")
    # And an acceptance with no expiry has no until (not "until 1970")
    assert rows[("127.0.0.9", 23)]["accepted_until"] is None
    # And the Summary counts and names them per host
    summary = {r["ip"]: r for r in store.report("summary", {}).dicts()}
    assert summary["127.0.0.1"]["accepted"] == 1
    assert summary["127.0.0.1"]["accepted_notes"] == [
        "6379/tcp: cache, firewalled upstream (by alice)"]
    assert summary["127.0.0.9"]["accepted_notes"] == ["all ports: honeypot (by bob)"]
    # And the web pages show them
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService

    with serve(create_app(ReportService(store))) as web:
        status, _, page = web.get("/list?target=127.0.0.1")
        assert status == 200
        assert "accepted" in page and "cache, firewalled upstream — alice" in page
        status, _, page = web.get("/")
        assert status == 200 and "1 accepted" in page and "honeypot (by bob)" in page
    # When a rescan finds another Redis version on 6379
    scan(store, "s2", NOW - timedelta(hours=1), "7.2.4")
    # Then its acceptance no longer applies
    rows = list_rows(store)
    assert rows[("127.0.0.1", 6379)]["is_accepted"] == 0
    assert rows[("127.0.0.9", 23)]["is_accepted"] == 1
    assert [r.port for r in acc.list_active(store, NOW)] == [0]


def test_a_port_accepted_under_both_spellings_shows_the_one_that_holds(store: Any) -> None:
    named = Target(ip="127.0.0.1", target="Cache.Example", organization="Example Corp")

    def seen(version: str, scan_id: str, when: datetime) -> None:
        store.insert_findings([finding(named, 6379, "redis", "Redis key-value store",
                                       version, scan_id, when)])
        store.insert_host_scans([HostScan(scan_id=scan_id, target=named, started_at=when,
                                          finished_at=when, ports_scanned=65535,
                                          open_ports=1)])

    # Given 7.0.15 accepted by address, and 7.2.4 seen since (stored, never compared:
    # a stopped scan's sighting ends nothing) and accepted by the target's name
    seen("7.0.15", "s1", NOW - timedelta(hours=2))
    acc.accept(store, "127.0.0.1", "tcp", 6379, note="by address", by="alice", until=None,
               now=NOW - timedelta(hours=1))
    seen("7.2.4", "s2", NOW - timedelta(minutes=30))
    acc.accept(store, "cache.example", "tcp", 6379, note="by name", by="bob", until=None,
               now=NOW)
    # Then the List and the Summary show the acceptance that holds (one join over both
    # spellings took either: the stale one said "not accepted")
    [row] = [r for r in store.report("list", {}).dicts() if r["port"] == 6379]
    assert (row["is_accepted"], row["accepted_note"], row["accepted_by"]) == (
        1, "by name", "bob")
    [host] = store.report("summary", {}).dicts()
    assert (host["accepted"], host["accepted_notes"]) == (1, ["6379/tcp: by name (by bob)"])
    # And so does the per-target page's reading of it
    found = acc.ActiveAcceptances.recorded(store, NOW.timestamp()).of_port(
        "Cache.Example", "127.0.0.1", "tcp", 6379, ("redis", "Redis key-value store", "7.2.4"))
    assert found is not None and found.note == "by name"
