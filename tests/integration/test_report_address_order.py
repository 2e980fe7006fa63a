"""Addresses sort as numbers in every report (real chdb store, the report SQL).

Before, the reports sorted ``target, ip`` as text: 127.0.0.10 came before 127.0.0.9 in
the Summary, the List, Ciphers, the change log and the per-target page, while the scan's
end screen (scan_cli._riskiest_first) sorted them as numbers (a review, 2026-12-05).
Names sort alphabetically, after addresses (schemas._ADDRESS_ORDER).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import history_sql
from schemas.records import (
    Finding,
    HostScan,
    OpenPort,
    ProbeStatus,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)

T0 = datetime(2026, 3, 1, 10, tzinfo=UTC)
ADDRESSES = ["127.0.0.100", "127.0.0.9", "127.0.0.10", "::1", "127.0.0.2"]
NUMERIC = ["127.0.0.2", "127.0.0.9", "127.0.0.10", "127.0.0.100", "::1"]
# A name with two addresses (its rows together, the addresses in numeric order)
WEB = [Target(ip=ip, target="web.example.test") for ip in ("127.0.0.30", "127.0.0.4")]


def _store_hosts(store: Any) -> None:
    targets = [Target(ip=ip, target=ip) for ip in ADDRESSES] + WEB
    tls = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",), grade="strong")
    store.insert_findings([
        Finding(port=OpenPort(scan_id="s1", target=t, port=443, observed_at=T0),
                service=ServiceInfo(service="https", product="nginx", version="1.24.0"),
                risk_color=RiskColor.GREEN, tls=tls)  # one green port each: equal scores
        for t in targets])
    store.insert_host_scans([HostScan("s1", t, T0, T0 + timedelta(minutes=5), 65535, 1)
                             for t in targets])


EXPECTED = [*((ip, ip) for ip in NUMERIC),
            ("web.example.test", "127.0.0.4"), ("web.example.test", "127.0.0.30")]


def test_summary_and_list_sort_addresses_as_numbers_then_names(store: Any) -> None:
    _store_hosts(store)
    summary = [(r["target"], r["ip"]) for r in store.report("summary").dicts()]
    listed = [(r["target"], r["ip"]) for r in store.report("list").dicts()]
    ciphers = [(r["target"], r["ip"]) for r in store.report("ciphers").dicts()]
    assert summary == EXPECTED
    assert listed == EXPECTED
    assert ciphers == EXPECTED
    # A page of two, then the next: the page's own order (phase 1) is numeric too
    assert [r["ip"] for r in store.report("summary", limit=2, offset=1).dicts()] == \
        ["127.0.0.9", "127.0.0.10"]
    assert [r["ip"] for r in store.report("list", limit=2, offset=4).dicts()] == \
        ["::1", "127.0.0.4"]


def test_list_sorted_by_target_either_way_keeps_the_numeric_order(store: Any) -> None:
    _store_hosts(store)
    up = [(r["target"], r["ip"]) for r in store.report(
        "list", {"sort": "target", "direction": "asc"}).dicts()]
    down = [r["target"] for r in store.report(
        "list", {"sort": "target", "direction": "desc"}).dicts()]
    assert up == EXPECTED
    assert down == ["web.example.test", "web.example.test", *reversed(NUMERIC)]


def test_the_target_page_lists_a_names_addresses_in_numeric_order(store: Any) -> None:
    _store_hosts(store)
    ports = store.select("ports", history_sql("target_ports"),
                         {"target": "web.example.test", "ip": ""}).dicts()
    assert [r["ip"] for r in ports] == ["127.0.0.4", "127.0.0.30"]
