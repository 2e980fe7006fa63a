"""Every Grafana panel's SQL runs on chdb against the real DDL, with sample data.

Given a store built from schemas/ddl.sql holding two organizations' findings over three
days, when each panel query and each variable query of deploy/grafana/dashboards is run
with the Grafana macros and variables substituted (for "All" and for one value), then
it runs and returns the expected rows: a dashboard can never ship a broken query.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deploy.grafana import build_dashboards
from schemas.records import Finding, HostScan, OpenPort, RiskColor, ServiceInfo, Target
from stream_processors.risk import score_counts
from tests.conftest import scratch_store

DASHBOARDS = Path(build_dashboards.__file__).resolve().parent / "dashboards"
NOW = datetime.now(UTC).replace(microsecond=0)
A = Target(ip="127.0.0.1", target="127.0.0.1", organization="Example Corp", asset="web-1")
B = Target(ip="127.0.0.2", target="127.0.0.2", organization="Other Org", asset="web-2")


def _finding(scan: str, t: Target, port: int, color: RiskColor, when: datetime,
             product: str = "nginx") -> Finding:
    return Finding(port=OpenPort(scan_id=scan, target=t, port=port, observed_at=when),
                   service=ServiceInfo(service="http", product=product, version="1.22.1"),
                   risk_color=color)


@pytest.fixture(scope="module")
def db(shared_chdb_path: Path):  # type: ignore[no-untyped-def]
    with scratch_store(shared_chdb_path, "graf") as store:
        findings, scans = [], []
        for day in range(3):  # one more open port each day on A
            when = NOW - timedelta(days=2 - day)
            scan = f"s{day}"
            for i, port in enumerate((80, 3306, 9000)[: day + 1]):
                color = (RiskColor.GREEN, RiskColor.RED, RiskColor.YELLOW)[i]
                findings.append(_finding(scan, A, port, color, when))
            scans.append(HostScan(scan_id=scan, target=A, started_at=when, finished_at=when,
                                  ports_scanned=100, open_ports=day + 1))
        findings.append(_finding("s9", B, 22, RiskColor.GREEN, NOW, product="OpenSSH"))
        scans.append(HostScan(scan_id="s9", target=B, started_at=NOW, finished_at=NOW,
                              ports_scanned=100, open_ports=1))
        store.insert_findings(findings)
        store.insert_host_scans(scans)
        # The change log of those scans, computed by the real recorder (no coverage in these
        # records, so nothing can close and nothing is re-probed)
        import asyncio

        from stream_processors.history import ChangeRecorder

        recorder = ChangeRecorder(store)
        recorder.add_findings(findings)
        asyncio.run(recorder.finish(scans))
        store.compact_page_indexes()  # as the scan's end (the sink's hold) does
        yield store


def substitute(sql: str, org: str, target: str) -> str:
    """What Grafana's ClickHouse plugin sends: macros and variables expanded."""
    start = int((NOW - timedelta(days=30)).timestamp())
    end = int((NOW + timedelta(hours=1)).timestamp())
    sql = re.sub(r"\$__timeFilter\(([^()]*(?:\([^()]*\))?[^()]*)\)",
                 lambda m: f"{m.group(1)} >= toDateTime({start}) AND "
                           f"{m.group(1)} <= toDateTime({end})", sql)
    # "All" is the custom all value '' (the report SQL's "no filter"); a value is quoted.
    def quoted(value: str) -> str:
        return "''" if not value else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    sql = sql.replace("${org:sqlstring}", quoted(org)).replace("${target:sqlstring}",
                                                               quoted(target))
    assert "$" not in sql, f"unsubstituted Grafana macro or variable in: {sql[:200]}"
    return sql


def dashboards() -> list[dict[str, Any]]:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, "no dashboards"
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]


def panel_queries() -> list[tuple[str, str]]:
    return [(p["title"], t["rawSql"]) for d in dashboards() for p in d["panels"]
            for t in p["targets"]]


def test_dashboard_file_is_what_the_builder_writes() -> None:
    assert (DASHBOARDS / "portwatch.json").read_text(encoding="utf-8") == \
        build_dashboards.render()


def test_dashboard_has_the_four_reports_charts_and_variables() -> None:
    board = dashboards()[0]
    titles = {p["title"] for p in board["panels"]}
    assert titles == {"Summary", "Open ports (List)", "Products", "TLS ciphers",
                      "Risk score over time", "New open ports per day",
                      "Changes over time by kind", "New red ports"}
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "web_url", "org",
                                                               "target"]
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "grafana-clickhouse-datasource",
                                       "uid": "${datasource}"}
        assert [t["datasource"]["uid"] for t in panel["targets"]] == ["${datasource}"]


def test_datasource_is_a_variable_of_the_clickhouse_plugin() -> None:
    # Given the dashboard / When its datasource variable is read
    variable = dashboards()[0]["templating"]["list"][0]
    # Then it lists datasources of the ClickHouse plugin only (any uid an install has)
    assert (variable["type"], variable["query"]) == ("datasource",
                                                     "grafana-clickhouse-datasource")


def test_target_cells_link_to_the_web_list_and_the_filtered_dashboard() -> None:
    # Given the Summary and List panels
    panels = {p["title"]: p for p in dashboards()[0]["panels"]}
    for title in ("Summary", "Open ports (List)"):
        overrides = panels[title]["fieldConfig"]["overrides"]
        # When the override on the target column is read
        links = next(o["properties"][0]["value"] for o in overrides
                     if o["matcher"] == {"id": "byName", "options": "target"})
        # Then one link opens the web List for that target, the other this dashboard
        assert [link["url"] for link in links] == [
            "${web_url}/list?target=${__value.raw}",
            "/d/portwatch-reports?var-datasource=${datasource}&var-org=$__all"
            "&var-target=${__value.raw}&${__url_time_range}"]
    web_url = dashboards()[0]["templating"]["list"][1]
    assert web_url["query"] == build_dashboards.WEB_URL_DEFAULT == "http://127.0.0.1:8765"


def test_chart_ships_the_same_dashboard() -> None:
    assert build_dashboards.CHART_DASHBOARD.read_text(encoding="utf-8") == \
        build_dashboards.render()


@pytest.mark.parametrize(("title", "sql"), panel_queries())
@pytest.mark.parametrize(("org", "target"), [("", ""), ("Example Corp", ""),
                                             ("", "127.0.0.1"), ("O'Hara & Co", "")])
def test_every_panel_query_runs_on_the_real_schema(db: Any, title: str, sql: str, org: str,
                                                   target: str) -> None:
    rows = db.query(substitute(sql, org, target))
    if org == "O'Hara & Co":
        assert rows == []  # a quote in a variable cannot break the SQL
    elif title != "TLS ciphers":
        assert rows, f"{title} returned nothing for org={org!r} target={target!r}"


def test_panels_return_the_expected_values(db: Any) -> None:
    queries = dict(panel_queries())
    history = db.query(substitute(queries["Risk score over time"], "Example Corp", ""))
    expected = [score_counts(red=0, yellow=0, green=1).score,
                score_counts(red=1, yellow=0, green=1).score,
                score_counts(red=1, yellow=1, green=1).score]
    assert [r[1] for r in history] == expected == [2.5, 24.0, 29.5]
    new_ports = db.query(substitute(queries["New open ports per day"], "", ""))
    assert [r[1] for r in new_ports] == [1, 1, 2]  # 80 | 3306 | 9000 and B's 22
    summary = db.query(substitute(queries["Summary"], "", "127.0.0.2"))
    assert [(r[1], r[4]) for r in summary] == [("127.0.0.2", "Other Org")]
    products = db.query(substitute(queries["Products"], "Example Corp", ""))
    assert [(r[0], r[3]) for r in products] == [("nginx", 3)]
    # one port opened per day on A (80, then 3306, then 9000), and B's 22 on the last day
    by_kind = db.query(substitute(queries["Changes over time by kind"], "", ""))
    assert [(r[1], r[2]) for r in by_kind] == [("opened", 1), ("opened", 1), ("opened", 2)]
    red = db.query(substitute(queries["New red ports"], "", ""))
    assert [(r[2], r[3], r[5]) for r in red] == [("127.0.0.1", 3306, "opened")]
    assert db.query(substitute(queries["New red ports"], "Other Org", "")) == []
    # the change panels filter targets and organizations as the reports do (any case, asset
    # names, prefixes, CIDR blocks): A is web-1 in 127.0.0.0/31, B is 127.0.0.2
    for org, target in (("example corp", ""), ("", "WEB-1"), ("", "127.0.0.0/31"),
                        ("", "127.0.0.1")):
        by_kind = db.query(substitute(queries["Changes over time by kind"], org, target))
        assert [(r[1], r[2]) for r in by_kind] == [("opened", 1)] * 3, (org, target)
    by_kind = db.query(substitute(queries["Changes over time by kind"], "", "127.0."))
    assert [r[2] for r in by_kind] == [1, 1, 2]


@pytest.mark.parametrize("org", ["", "Example Corp"])
def test_variable_queries_run(db: Any, org: str) -> None:
    variables = {v["name"]: v for v in dashboards()[0]["templating"]["list"]}
    orgs = db.query(substitute(variables["org"]["query"], org, ""))
    assert [r[0] for r in orgs] == ["Example Corp", "Other Org"]
    targets = db.query(substitute(variables["target"]["query"], org, ""))
    assert [r[0] for r in targets] == (["127.0.0.1"] if org else ["127.0.0.1", "127.0.0.2"])


def test_provisioning_points_at_the_plugin() -> None:
    provisioning = DASHBOARDS.parent / "provisioning"
    assert "type: grafana-clickhouse-datasource" in \
        (provisioning / "datasources.yaml").read_text()
    assert "type: file" in (provisioning / "dashboards.yaml").read_text()


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Asia/Tokyo"])
def test_panels_do_not_depend_on_the_servers_timezone(db: Any, zone: str) -> None:
    # A ClickHouse server west of UTC put each day of "Risk score over time" at its local
    # midnight, hours after the UTC one: $__timeFilter, ending now, left today's point out
    # until then (the test failed with TZ=America/New_York early in a UTC day)
    for title, sql in panel_queries():
        text = substitute(sql, "", "").rstrip().rstrip(";")
        assert db.query(f"{text} SETTINGS session_timezone = '{zone}'") == db.query(text), title
