"""Edges of the pages and the API over a real store and a real server on loopback: an
expired certificate's countdown, the Changes page's cap, the Products counts' links, the
cache after an acceptance, text that looks like a time through the store's holder."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from portwatch.alerts import accepted as acc
from schemas.records import (
    Certificate,
    ChangeEvent,
    ChangeKind,
    Finding,
    HostScan,
    OpenPort,
    ProbeStatus,
    RiskColor,
    ServiceInfo,
    Severity,
    Target,
    TlsResult,
)
from tests.conftest import scratch_store
from tests.integration.test_web_api import Served, serve

NOW = datetime.now(UTC).replace(microsecond=0)
WEB = Target(ip="127.0.0.1", target="127.0.0.1", organization="Example Corp", asset="web")
OTHER = Target(ip="127.0.0.2", target="127.0.0.2", organization="Example Corp", asset="other")


def finding(target: Target, port: int, product: str, *, tls: TlsResult | None = None
            ) -> Finding:
    return Finding(port=OpenPort(scan_id="s1", target=target, port=port, observed_at=NOW),
                   service=ServiceInfo(service="https" if tls else "http", product=product,
                                       version="1.22.1", is_tls=tls is not None),
                   tls=tls or TlsResult(), risk_color=RiskColor.GREEN, risk_reason="test")


def expired_tls() -> TlsResult:
    # a leaf that expired twelve hours ago, on a port scanned two days ago (valid then)
    not_after = (NOW - timedelta(hours=12)).strftime("%Y-%m-%dT%H:%M:%SZ")
    leaf = Certificate(subject="CN=web", issuer="CN=Test CA", not_after=not_after,
                       key_type="EC", key_bits=256, sha256="ab" * 32, days_to_expiry=1,
                       expiry_warning="expires within 7 days")
    return TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",), grade="strong",
                     certificates=(leaf,), leaf_sha256=leaf.sha256, days_to_expiry=1,
                     certificate_warnings=("certificate expires within 7 days (1 days left)",
                                           "untrusted: unknown issuer CN=Test CA"))


@pytest.fixture(scope="module")
def db(shared_chdb_path: Path) -> Iterator[Any]:
    with scratch_store(shared_chdb_path, "edges") as store:
        store.insert_findings([
            finding(WEB, 80, "nginx"), finding(WEB, 443, "nginx", tls=expired_tls()),
            finding(OTHER, 80, "nginx"), finding(OTHER, 8080, "nginx")])
        store.insert_host_scans([HostScan("s1", t, NOW - timedelta(minutes=1), NOW, 65535, n)
                                 for t, n in ((WEB, 2), (OTHER, 2))])
        yield store


@pytest.fixture(scope="module")
def web(db: Any) -> Iterator[Served]:
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService

    with serve(create_app(ReportService(db))) as served:
        yield served


def _page(web: Served, path: str) -> str:
    status, _, body = web.get(path)
    assert status == 200, body[:500]
    return body


def test_a_certificate_expired_hours_ago_reads_expired_not_zero_days_left(web: Served) -> None:
    [row] = [r for r in web.api("/api/v1/list?port=443")["rows"]]
    assert row["cert_days_left"] == -1
    [cipher] = web.api("/api/v1/ciphers")["rows"]
    assert cipher["cert_days_to_expiry"] == -1
    # the flag, the warning and the warnings say it from the same count, not the scan's
    assert (cipher["cert_expired"], cipher["cert_expiry_warning"]) == (1, "expired")
    assert cipher["cert_warnings"] == ["certificate expired",
                                       "untrusted: unknown issuer CN=Test CA"]
    assert "certificate expired" in _page(web, "/list?port=443")
    assert "expires in 0 days" not in _page(web, "/list?port=443")
    page = _page(web, "/ciphers")
    assert "expired 1 day ago" in page and "expires in 0 days" not in page


def test_the_ciphers_report_recounts_only_a_readable_expiry_and_says_a_lapsed_trust(
        shared_chdb_path: Path) -> None:
    # Given a trusted leaf that expired twelve hours ago (trusted when scanned), and a
    # leaf whose notAfter could not be read (an unparseable certificate)
    expired = expired_tls()
    lapsed = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",), grade="strong",
                       certificates=expired.certificates, leaf_sha256=expired.leaf_sha256,
                       days_to_expiry=1, is_chain_trusted=True,
                       certificate_warnings=("certificate expires within 7 days (1 days left)",
                                             "weak key: leaf: RSA 1024", "name mismatch"))
    odd = Certificate(subject="unparseable certificate: bad date", sha256="cd" * 32)
    unreadable = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",), grade="strong",
                           certificates=(odd,), leaf_sha256=odd.sha256,
                           trust_error="unparseable certificate",
                           certificate_warnings=("untrusted: unparseable certificate",))
    with scratch_store(shared_chdb_path, "edges_certs") as store:
        store.insert_findings([finding(WEB, 443, "nginx", tls=lapsed),
                               finding(WEB, 8443, "nginx", tls=unreadable)])
        store.insert_host_scans([HostScan("s1", WEB, NOW - timedelta(minutes=1), NOW, 65535, 2)])
        rows = {r["port"]: r for r in store.report("ciphers").dicts()}
    # Then the expired leaf is expired now, and its chain no longer trusted, as a scan
    # today would say
    now = rows[443]
    assert (now["cert_expired"], now["cert_expiry_warning"]) == (1, "expired")
    assert (now["cert_trusted"], now["cert_trust_error"]) == (0, "expired")
    # (in the scan's order: expiry, weak key, untrusted, name mismatch)
    assert now["cert_warnings"] == ["certificate expired", "weak key: leaf: RSA 1024",
                                    "untrusted: expired", "name mismatch"]
    # And a notAfter that cannot be read invents no expiry: what the scan stored stays
    odd_row = rows[8443]
    assert (odd_row["cert_expired"], odd_row["cert_expiry_warning"]) == (0, "")
    assert odd_row["cert_warnings"] == ["untrusted: unparseable certificate"]
    assert odd_row["cert_trust_error"] == "unparseable certificate"


def test_the_products_counts_open_the_list_with_the_pages_filters(web: Served) -> None:
    page = _page(web, "/products?target=127.0.0.1&color=green")
    links = {href for href in page.split('href="')[1:] for href in [href.split('"')[0]]
             if href.startswith("/list?")}
    instances = "/list?product=nginx&amp;version=1.22.1&amp;target=127.0.0.1&amp;color=green"
    assert instances in links
    # and that List counts what the row counted (2 ports of 127.0.0.1, not 4)
    assert web.api("/api/v1/products?target=127.0.0.1")["rows"][0]["instances"] == 2
    assert web.api("/api/v1/list?product=nginx&version=1.22.1&target=127.0.0.1"
                   "&color=green")["total"] == 2


def _events(n: int) -> list[ChangeEvent]:
    return [ChangeEvent(kind=ChangeKind.OPENED, severity=Severity.LOW, target=WEB,
                        scan_id=f"s{i}", previous_scan_id="", port=1 + i % 60000,
                        after="http open", risk_color="green", service="http",
                        observed_at=NOW - timedelta(seconds=i))
            for i in range(n)]


@pytest.mark.parametrize(("events", "said"), [
    (1000, "1,000 event(s)"), (1001, "More than 1,000 events, the newest 1,000 shown")])
def test_the_changes_page_says_capped_only_when_there_are_more(
        shared_chdb_path: Path, events: int, said: str) -> None:
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService
    from stream_processors.history import CHANGE_COLUMNS, _event_row

    with scratch_store(shared_chdb_path, "cap") as store:
        store.insert_rows("changes", CHANGE_COLUMNS, [_event_row(e) for e in _events(events)])
        with serve(create_app(ReportService(store))) as served:
            page = _page(served, "/changes?since=30d")
    assert said in page
    assert ("More than" in page) is (events > 1000)


def test_a_bad_filter_on_the_changes_page_leads_back_to_changes(web: Served) -> None:
    status, _, body = web.get("/changes?severity=nope")
    assert status == 400
    assert '<a href="/changes">Back to Changes</a>' in body


def test_an_acceptance_shows_on_a_cached_page_without_a_new_scan(db: Any) -> None:
    from portwatch.web.query import parse_query
    from portwatch.web.service import FINGERPRINT_SECONDS, ReportService

    service = ReportService(db)
    query = parse_query("list", [("port", "8080")])

    def accepted() -> list[int]:
        return [r["is_port_accepted"] for r in service.page(query).rows]

    assert accepted() == [0]  # cached from here on
    # When another process accepts the port (the same store, no scan in between)
    acc.accept(db, "127.0.0.2", "tcp", 8080, note="lab", by="test", until=None, now=NOW)
    time.sleep(FINGERPRINT_SECONDS + 0.1)
    # Then the page says so
    assert accepted() == [1]


def test_through_the_holder_a_summarys_ports_come_back_whole() -> None:
    from portwatch.render import cell_text, jsonable
    from portwatch.store_holder import _value

    # Given the Summary's ports as the store gives them: an unconfirmed UDP port among them
    ports = [(22, "tcp", "green", 0, "open"), (443, "tcp", "green", 1, "open"),
             (20053, "udp", "yellow", 0, "open|filtered")]
    # When they travel through the holder's API (JSON objects) and back
    back = _value("ports", jsonable("ports", ports))
    # Then they are the same tuples, and print the same (before: the state was dropped,
    # and the JSON then said the UDP port was "open": a review)
    assert back == ports
    assert cell_text("summary", "ports", back) == cell_text("summary", "ports", ports)


def test_through_the_holder_only_time_columns_become_times(db: Any) -> None:
    from portwatch.store_holder import TIME_COLUMNS, _value
    from schemas import REPORTS, bind_parameters, report_sql
    from stream_processors.change_log import CHANGES_REPORT_COLUMNS

    # A product (or title, or notAfter text) a server wrote like a time stays text
    assert _value("product", "2024-01-01T00:00:00Z") == "2024-01-01T00:00:00Z"
    assert _value("cert_not_after", "2030-01-01T00:00:00Z") == "2030-01-01T00:00:00Z"
    assert _value("last_seen", "2024-01-01T00:00:00Z") == datetime(2024, 1, 1, tzinfo=UTC)
    # And the set is every report's time columns, as the engine types them
    times = set()
    for name in REPORTS:
        sql = report_sql(name)
        described = db.query(f"DESCRIBE TABLE ({sql})",
                             bind_parameters(sql, {}, limit=0, offset=0))
        times |= {str(r[0]) for r in described if "DateTime" in str(r[1])}
    assert times | {"observed_at"} == TIME_COLUMNS
    assert "observed_at" in CHANGES_REPORT_COLUMNS
