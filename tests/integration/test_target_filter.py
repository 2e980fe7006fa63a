"""`--target` and the text filters: one predicate, the same answer in every report.

Given a real chdb store with four hosts (a named one, a second loopback address, an IPv6
one and one in 198.18.0.0/15), one change event each, two organizations written in mixed
case, when each report (the What-changed report too) is asked with a target given as
written, as hostname, asset name, address, address prefix or CIDR block, in any case,
then every report keeps exactly the expected hosts; any text at all is safe for the SQL;
a malformed CIDR is refused with its reason (CLI exit 2, API and page 400) before it
reaches the store.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatch.web.history_pages import BadParam, parse_changes_query
from portwatch.web.query import BadRequest, parse_query
from portwatch.web.service import ReportService
from schemas import REPORTS, history_sql, report_sql
from schemas.filters import host_target_predicate, normalize_target, target_predicate
from schemas.records import (
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
from stream_processors.change_log import changes_report
from stream_processors.history import CHANGE_COLUMNS, _event_row
from tests.conftest import run_cli, scratch_store

NOW = datetime.now(UTC).replace(microsecond=0)
HOSTS = {
    "web": Target(ip="127.0.0.1", target="web-1.example.test", hostname="web-1.example.test",
                  organization="Example Corp", asset="Web-1"),
    "db": Target(ip="127.0.0.10", target="127.0.0.10", organization="Other Org",
                 asset="db-1"),
    "v6": Target(ip="::1", target="::1", organization="example corp", asset="v6-box"),
    "mail": Target(ip="198.18.0.9", target="Mail.Example.Test", hostname="mail.example.test",
                   organization="Other Org", asset="mail"),
    # an asset name with a "/" and an organization beyond ASCII; its TLS port runs a
    # product beyond ASCII that gave no version
    "eu": Target(ip="127.0.0.20", target="127.0.0.20", organization="Société Générale",
                 asset="web/1"),
}
SQL_FILES = {"schemas/reports/list.sql": "f", "schemas/reports/products.sql": "f",
             "schemas/reports/summary.sql": "scans", "schemas/reports/ciphers.sql": "owners",
             "schemas/web/risk_history.sql": "h", "schemas/history/changes.sql": "c"}
# the risk chart picks hosts by their names now (h) and counts each day's organization
ORG_ALIAS = {"schemas/web/risk_history.sql": "scans"}
# a host's organization is its latest scan's (a review, 2026-12-06); a port whose host
# has no scan stored (a List row under --history, a lagging host-scan record): its own
ORG_EXPRESSION = {
    "schemas/reports/list.sql":
        "if(page_scan.target = '', f.organization, page_scan.organization)",
    "schemas/reports/products.sql":
        "if(latest_scan.target = '', f.organization, latest_scan.organization)"}
# a port's hostname and asset are its host's now, as its organization (a review: an asset
# renamed in the inventory hid the ports a narrower rescan did not see again)
BY_HOST = {"schemas/reports/list.sql", "schemas/reports/products.sql"}
# the change log: by the event's own names (as they were then) or by its host's now (a
# host an inventory named since was found by the List, not by the change log: a review)
BY_BOTH = {"schemas/history/changes.sql"}
REPO = Path(__file__).resolve().parents[2]


def _rows() -> tuple[list[Finding], list[HostScan]]:
    findings, scans = [], []
    for name, target in HOSTS.items():
        when = NOW - timedelta(hours=1)
        for port in (22, 443):
            tls = (TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",),
                             grade="strong") if port == 443 else TlsResult())
            product, version = (("nginx", "1.22.1") if port == 443 else ("OpenSSH", "9.2p1"))
            if name == "eu" and port == 443:
                product, version = "École", ""
            findings.append(Finding(
                port=OpenPort(scan_id=f"s-{name}", target=target, port=port, observed_at=when),
                service=ServiceInfo(service="https" if port == 443 else "ssh",
                                    product=product, version=version),
                tls=tls, risk_color=RiskColor.GREEN, risk_reason="public service"))
        scans.append(HostScan(scan_id=f"s-{name}", target=target, started_at=when,
                              finished_at=when, ports_scanned=2, open_ports=2))
    return findings, scans


@pytest.fixture(scope="module")
def db(shared_chdb_path: Path):  # type: ignore[no-untyped-def]
    with scratch_store(shared_chdb_path, "tf") as store:
        findings, scans = _rows()
        store.insert_findings(findings)
        store.insert_host_scans(scans)
        store.insert_rows("changes", CHANGE_COLUMNS, [_event_row(e) for e in _events()])
        store.compact_page_indexes()  # as a scan's end does (the risk chart's rows too)
        yield store


def _events() -> list[ChangeEvent]:
    return [ChangeEvent(kind=ChangeKind.OPENED, severity=Severity.LOW, target=target,
                        scan_id=f"s-{name}", port=22, after="ssh OpenSSH 9.2p1 (green)",
                        risk_color="green", service="ssh",
                        observed_at=NOW - timedelta(hours=1))
            for name, target in HOSTS.items()]


def hosts_in(db: Any, report: str, **filters: Any) -> set[str]:
    """Which of HOSTS a report's rows are about (by address)."""
    by_ip = {t.ip: name for name, t in HOSTS.items()}
    if report == "changes":  # the What-changed report: its own query, the same filters
        return {by_ip[r["ip"]] for r in changes_report(db, **filters).dicts()}
    if report == "products":  # no address column: count OpenSSH's targets (every host's)
        rows = db.report(report, {"product": "OpenSSH", **filters}).dicts()
        return {f"{r['targets']} targets" for r in rows}
    return {by_ip[r["ip"]] for r in db.report(report, filters).dicts()}


# -- one shape --------------------------------------------------------------------------------


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize(("path", "alias"), sorted(SQL_FILES.items()))
def test_every_report_sql_carries_the_one_target_predicate(path: str, alias: str) -> None:
    from schemas import web_sql

    # Given the SQL file: it names the predicate once, and reads it expanded
    raw = (REPO / path).read_text(encoding="utf-8")
    by_host = (f"HOST_TARGET_MATCHES({alias})", host_target_predicate(alias))
    own = (f"TARGET_MATCHES({alias})", target_predicate(alias))
    macros = ([by_host] if path in BY_HOST else [own, by_host] if path in BY_BOTH
              else [own])
    assert raw.count("TARGET_MATCHES(") == len(macros)
    name = Path(path).stem
    sql = (report_sql(name) if "/reports/" in path else
           history_sql(name) if "/history/" in path else web_sql(name))
    for macro, predicate in macros:
        assert f" {macro}" in raw or f"({macro}" in raw, macro
        assert _squash(predicate) in _squash(sql)
    # And the organization filter ignores case, in any script, the same way
    org = ORG_EXPRESSION.get(path, f"{ORG_ALIAS.get(path, alias)}.organization")
    assert f"lowerUTF8({org}) = lowerUTF8({{org:String}})" in _squash(sql)


def test_every_report_with_a_target_filter_is_covered() -> None:
    covered = {Path(p).stem for p in SQL_FILES if "/reports/" in p}
    assert covered == {name for name in REPORTS if "{target:String}" in report_sql(name)}


# -- what a target matches ---------------------------------------------------------------------


@pytest.mark.parametrize(("target", "expected"), [
    ("", {"web", "db", "v6", "mail", "eu"}),
    ("web-1.example.test", {"web"}),          # as written (and hostname)
    ("WEB-1.Example.TEST", {"web"}),          # any case
    ("mail.example.test", {"mail"}),          # hostname, target written in another case
    ("web-1", {"web"}),                       # asset name
    ("DB-1", {"db"}),                         # asset name, any case
    ("127.0.0.1", {"web"}),                   # an address: exactly it, not 127.0.0.10
    ("127.0.0.", {"web", "db", "eu"}),        # address prefix
    ("127.0.0", {"web", "db", "eu"}),         # prefix on an octet boundary
    ("127.0.0.1/32", {"web"}),                # CIDR
    ("127.0.0.0/8", {"web", "db", "eu"}),
    ("WEB/1", {"eu"}),                        # a "/" after a name: an asset name
    ("198.18.0.0/15", {"mail"}),
    ("::1", {"v6"}),
    ("::", set()),                            # an address (unspecified): itself, not ::1
    ("::/0", {"v6"}),                         # IPv6 CIDR holds no IPv4 address
    ("198.19", set()),
    ("nobody.example.test", set()),
])
def test_target_matches_name_hostname_asset_address_prefix_and_cidr(
        db: Any, target: str, expected: set[str]) -> None:
    for report in ("list", "summary", "ciphers", "changes"):
        assert hosts_in(db, report, target=target) == expected, report
    products = hosts_in(db, "products", target=target)
    assert products == ({f"{len(expected)} targets"} if expected else set())


def test_risk_history_uses_the_same_target_rule(db: Any) -> None:
    service = ReportService(db, use_cache=False)
    points = service.risk_history({"target": "127.0.0.0/8"}, days=0)
    assert [p.targets for p in points] == [3]
    points = service.risk_history({"target": "v6-BOX", "org": "EXAMPLE CORP"}, days=0)
    assert [p.targets for p in points] == [1]


@pytest.mark.parametrize("org", ["Example Corp", "example corp", "EXAMPLE CORP"])
def test_org_filter_ignores_case(db: Any, org: str) -> None:
    # "Example Corp" and "example corp" were written by two inventories: one organization
    for report in ("list", "summary", "ciphers", "changes"):
        assert hosts_in(db, report, org=org) == {"web", "v6"}, report


@pytest.mark.parametrize("org", ["SOCIÉTÉ GÉNÉRALE", "société générale", "Société Générale"])
def test_org_filter_ignores_case_in_any_script(db: Any, org: str) -> None:
    for report in ("list", "summary", "ciphers", "changes"):
        assert hosts_in(db, report, org=org) == {"eu"}, report


def test_version_filter_ignores_case(db: Any) -> None:
    assert hosts_in(db, "list", product="OPENSSH", version="9.2P1") == {"web", "db", "v6",
                                                                         "mail", "eu"}


@pytest.mark.parametrize("product", ["école", "ÉCOLE", "École"])
def test_a_product_without_a_version_is_found_by_its_dash(db: Any, product: str) -> None:
    # Given "École" stored with no version: its Products row
    [row] = [r for r in db.report("products", {}).dicts() if r["product"] == "École"]
    assert (row["version"], row["instances"]) == ("", 1)
    # Then its drill-down ("-": no version) finds exactly its port, in any case
    rows = db.report("list", {"product": product, "version": "-"}).dicts()
    assert [(r["ip"], r["port"]) for r in rows] == [("127.0.0.20", 443)]
    assert hosts_in(db, "list", product="nginx", version="-") == set()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=40))
def test_any_target_text_is_safe_for_every_report(db: Any, text: str) -> None:
    # Given any text as the target, bound as a parameter (as Grafana's variable would be)
    for report in REPORTS:
        # Then the SQL answers (an invalid CIDR matches nothing rather than raising)
        db.report(report, {"target": text}, limit=5)
    changes_report(db, target=text, limit=5)


# -- refused before the store -----------------------------------------------------------------


@pytest.mark.parametrize(("text", "normal"), [("198.18.0.9/15", "198.18.0.0/15"),
                                              (" 127.0.0.1 ", "127.0.0.1"),
                                              ("2001:DB8::1/32", "2001:db8::/32"),
                                              ("2001:db8:0::5", "2001:db8::5"),
                                              ("2001:DB8::5", "2001:db8::5"),
                                              # mapped and compatible forms: stored folded
                                              ("::ffff:127.0.0.1", "127.0.0.1"),
                                              ("::127.0.0.1", "127.0.0.1"),
                                              # a mapped block is the IPv4 block (it
                                              # matched nothing: a review)
                                              ("::ffff:127.0.0.0/104", "127.0.0.0/8"),
                                              ("::FFFF:127.0.0.9/128", "127.0.0.9/32"),
                                              ("::ffff:127.0.0.0/90", "::ffc0:0:0/90"),
                                              ("Web-1", "Web-1"), ("web/1", "web/1"),
                                              ("/", "/")])
def test_normalize_target(text: str, normal: str) -> None:
    assert normalize_target(text) == normal


@pytest.mark.parametrize("bad", ["10.0.0.0/99", "1.2.3.4/abc", "::1/129", "10.0.0/8",
                                 "2001:db8:/32"])
def test_malformed_cidr_is_refused_by_the_api_and_the_cli(bad: str, tmp_path: Path) -> None:
    message = f"target {bad!r} is not a CIDR block (for example 198.18.0.0/15 or 2001:db8::/32)"
    with pytest.raises(BadRequest) as refused:
        parse_query("list", [("target", bad)], is_api=True)
    assert str(refused.value) == message
    with pytest.raises(BadParam) as refused_page:
        parse_changes_query([("target", bad)])
    assert str(refused_page.value) == message  # as the List's, "target" said once
    for report in ("list", "changes"):
        result = run_cli("report", report, "--target", bad,
                         "--store", f"chdb://{tmp_path / 's'}")
        assert result.code == 2
        assert result.stderr.strip().splitlines()[-1] == (
            f"portwatch: error: Invalid value for '--target': {message}")


def test_the_change_log_finds_a_host_by_the_names_an_inventory_gave_it_since(
        shared_chdb_path: Path) -> None:
    # Given a host whose port opened when it had no names, then a later scan of it from
    # an inventory that names it (asset web-9, organization Acme Corp)
    bare = Target(ip="127.0.0.90", target="127.0.0.90")
    named = Target(ip="127.0.0.90", target="127.0.0.90", organization="Acme Corp",
                   asset="web-9")
    opened = ChangeEvent(kind=ChangeKind.OPENED, severity=Severity.LOW, target=bare,
                         scan_id="s-1", port=22, observed_at=NOW - timedelta(hours=2))
    with scratch_store(shared_chdb_path, "tf_renamed") as store:
        store.insert_rows("changes", CHANGE_COLUMNS, [_event_row(opened)])
        store.insert_host_scans([HostScan(scan_id="s-2", target=named,
                                          started_at=NOW - timedelta(hours=1),
                                          finished_at=NOW - timedelta(hours=1),
                                          ports_scanned=1, open_ports=1)])
        store.compact_page_indexes()

        def found(**filters: Any) -> list[tuple[str, int]]:
            return [(r["kind"], r["port"]) for r in changes_report(store, **filters).dicts()]

        # Then the change log finds its event by those names too, as the List and the
        # Summary find the host (it found nothing: a review), and still by its address
        assert found(target="web-9") == [("opened", 22)]
        assert found(org="acme corp") == [("opened", 22)]
        assert found(target="127.0.0.90") == [("opened", 22)]
        # And a name nobody has finds nothing
        assert found(target="web-10") == [] and found(org="Acme") == []
