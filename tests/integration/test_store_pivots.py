"""Issue 15's pivots (CPE, HTTP title/redirect/Server/X-Powered-By, favicon hash, JARM)
through the real chdb store, the List and Ciphers reports, the web pages and the JSON API.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.records import (
    CdnVerdict,
    Finding,
    HostScan,
    OpenPort,
    ProbeStatus,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)
from stream_processors.store import Store
from tests.conftest import scratch_store
from tests.integration.test_web_api import serve

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
JARM_A = "2ad2ad0002ad2ad00042d42d00000069d641f34fe76acdc05c40262f8815e5"
JARM_B = "07d14d16d21d21d00042d43d000000aa99ce74e2c6d013c745aa52b5cc042d"
WEB = Target(ip="127.0.0.1", target="web.example.test", organization="Example Corp")


def https_finding(*, scan_id: str, when: datetime, favicon: int | None, jarm: str,
                  title: str = "Grafana") -> Finding:
    service = ServiceInfo(
        service="https", product="nginx", version="1.22.1", cpe="cpe:/a:f5:nginx:1.22.1",
        is_tls=True, method="http:server-header", confidence=10, http_title=title,
        http_redirect="https://web.example.test/login", http_server="nginx/1.22.1",
        http_powered_by="PHP/8.2.26", favicon_mmh3=favicon, jarm=jarm)
    return Finding(port=OpenPort(scan_id=scan_id, target=WEB, port=443, observed_at=when),
                   service=service,
                   tls=TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",),
                                 grade="strong"),
                   cdn=CdnVerdict(), risk_color=RiskColor.GREEN, risk_reason="public")


def store_scan(store: Store, finding: Finding) -> None:
    store.insert_findings([finding])
    store.insert_host_scans([HostScan(
        scan_id=finding.port.scan_id, target=WEB, started_at=finding.port.observed_at,
        finished_at=finding.port.observed_at + timedelta(seconds=5), ports_scanned=1000,
        open_ports=1)])


@pytest.fixture()
def pivots(shared_chdb_path: Path) -> Store:
    with scratch_store(shared_chdb_path, "pivots") as store:
        store_scan(store, https_finding(scan_id="s1", when=T0, favicon=-1, jarm=JARM_A,
                                        title="Old title"))
        # A later scan: new favicon and JARM (what the change detector will call
        # product_changed-class), replayed twice
        for _ in range(2):
            store_scan(store, https_finding(scan_id="s2", when=T0 + timedelta(hours=1),
                                            favicon=116323821, jarm=JARM_B))
        yield store


def test_list_report_carries_the_latest_pivots(pivots: Store) -> None:
    rows = pivots.report("list").dicts()
    assert len(rows) == 1
    row = rows[0]
    assert {k: row[k] for k in ("cpe", "http_title", "http_redirect", "http_server",
                                "http_powered_by", "favicon_mmh3", "jarm")} == {
        "cpe": "cpe:/a:f5:nginx:1.22.1", "http_title": "Grafana",
        "http_redirect": "https://web.example.test/login", "http_server": "nginx/1.22.1",
        "http_powered_by": "PHP/8.2.26", "favicon_mmh3": 116323821, "jarm": JARM_B}


def test_no_favicon_is_null_not_zero(shared_chdb_path: Path) -> None:
    with scratch_store(shared_chdb_path, "pivots") as store:
        store_scan(store, https_finding(scan_id="s1", when=T0, favicon=None, jarm=""))
        row = store.report("list").dicts()[0]
        assert row["favicon_mmh3"] is None and row["jarm"] == ""
        # And a hash of 0 (a valid hash) stays 0
        store_scan(store, https_finding(scan_id="s2", when=T0 + timedelta(hours=1), favicon=0,
                                        jarm=""))
        assert store.report("list").dicts()[0]["favicon_mmh3"] == 0


def test_ciphers_report_shows_the_jarm_of_the_port(pivots: Store) -> None:
    rows = pivots.report("ciphers").dicts()
    assert [(r["port"], r["jarm"]) for r in rows] == [(443, JARM_B)]


def test_web_list_and_ciphers_pages_and_the_api_show_them(pivots: Store) -> None:
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService

    with serve(create_app(ReportService(pivots))) as web:
        data: dict[str, Any] = web.api("/api/v1/list")
        status, _, page = web.get("/list")
        c_status, _, ciphers_page = web.get("/ciphers")
        ciphers: dict[str, Any] = web.api("/api/v1/ciphers")
    api_row = data["rows"][0]
    assert (api_row["http_title"], api_row["favicon_mmh3"], api_row["jarm"],
            api_row["cpe"]) == ("Grafana", 116323821, JARM_B, "cpe:/a:f5:nginx:1.22.1")
    assert status == 200
    for shown in ("cpe:/a:f5:nginx:1.22.1", "“Grafana”", "→ https://web.example.test/login",
                  "X-Powered-By: PHP/8.2.26", "favicon 116323821", f"JARM {JARM_B}"):
        assert shown in page
    assert c_status == 200 and f"JARM {JARM_B}" in ciphers_page
    assert ciphers["rows"][0]["jarm"] == JARM_B
