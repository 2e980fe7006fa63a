"""Build the Grafana dashboard from the report SQL: ``python -m deploy.grafana.build_dashboards``.

The panels of deploy/grafana/dashboards/portwatch.json are generated, never hand-edited:
each report panel runs the report's own SQL (schemas/reports/*.sql, the SQL the CLI and
the web pages run), with its ``{org:String}`` and ``{target:String}`` parameters bound to
the dashboard variables ``${org:sqlstring}`` / ``${target:sqlstring}`` (their "All"
value is ``''``, which the SQL reads as "no filter") and every other parameter at its
neutral value. tests/integration/test_grafana_sql.py runs every panel on chdb against
the real DDL and checks this file is what the builder writes.

Datasource: the ClickHouse plugin ``grafana-clickhouse-datasource``, chosen by the
dashboard variable ``datasource`` (a Grafana "datasource" variable restricted to that
plugin), so one dashboard file works against whichever ClickHouse datasource an
installation has: provisioning/datasources.yaml's (uid ``portwatch``) or a Helm-managed
Grafana's. The variable ``web_url`` is the portwatch web reports' base URL: the Summary's
and List's target cells link to ``${web_url}/list?target=<target>`` (the web List for that
target) and to this dashboard filtered to it. The Helm chart replaces ``WEB_URL_DEFAULT``
with its Ingress URL when it ships the dashboard as a ConfigMap.

Owns: the dashboard JSON. Touches no network.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from schemas import expand_macros, report_sql
from schemas.filters import target_predicate

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "dashboards" / "portwatch.json"
# The Helm chart can read only files inside itself: the same file, written there too.
CHART_DASHBOARD = HERE.parent / "helm" / "portwatch" / "dashboards" / "portwatch.json"
OUTPUTS = (DASHBOARD, CHART_DASHBOARD)
PLUGIN = "grafana-clickhouse-datasource"
DATASOURCE = {"type": PLUGIN, "uid": "${datasource}"}
# What `portwatch serve` prints by default; the chart substitutes its Ingress URL for it.
WEB_URL_DEFAULT = "http://127.0.0.1:8765"
DASHBOARD_UID = "portwatch-reports"
ROW_LIMIT = 1000
# Grafana variables: an "All" that means "no filter" to the report SQL.
VARIABLE_FOR = {"org": "${org:sqlstring}", "target": "${target:sqlstring}"}
NEUTRAL = {"String": "''", "UInt8": "0", "UInt16": "0", "UInt32": "0"}
FORMAT_TIMESERIES, FORMAT_TABLE = 0, 1


def grafana_sql(sql: str) -> str:
    """Report SQL -> panel SQL: filters become dashboard variables, the rest neutral."""
    def bind(match: re.Match[str]) -> str:
        name, kind = match.group(1), match.group(2)
        if name in VARIABLE_FOR:
            return VARIABLE_FOR[name]
        if name == "limit":
            return str(ROW_LIMIT)
        if name == "offset":
            return "0"
        return NEUTRAL[kind]

    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return re.sub(r"\{(\w+):(\w+)\}", bind, body).strip()


def _web_sql(name: str) -> str:
    from schemas import web_sql

    return web_sql(name)


RISK_OVER_TIME = """SELECT toDateTime(day, 'UTC') AS time,
       round(avg(risk_score), 1) AS `average score`,
       max(risk_score) AS `worst score`
FROM (
{history}
)
WHERE $__timeFilter(time)
GROUP BY time
ORDER BY time"""

NEW_PORTS_PER_DAY = grafana_sql("""
SELECT toStartOfDay(first_seen) AS time, count() AS `new open ports`
FROM (
    SELECT target, ip, first_seen, organization, hostname, asset
    FROM current_findings
) AS f
WHERE $__timeFilter(first_seen)
  AND ({org:String} = '' OR lowerUTF8(f.organization) = lowerUTF8({org:String}))
  AND """ + target_predicate("f") + """
GROUP BY time
ORDER BY time""")

# Change history (stream_processors/changes.py): the changes table is one row per event
# (FINAL merges a replayed scan's rows), so these read the change log, not the raw scans.
# The same target and organization filters as every report (schemas/filters.py), and as
# the change log's (schemas/history/changes.sql): an event's own organization, or its
# host's now (an inventory that named a host since).
CHANGE_FILTERS = """$__timeFilter(observed_at)
  AND (${org:sqlstring} = '' OR lowerUTF8(c.organization) = lowerUTF8(${org:sqlstring})
       OR (c.target, c.ip) IN (SELECT target, ip FROM latest_host_scans
                               WHERE ${org:sqlstring} != ''
                                 AND lowerUTF8(organization) = lowerUTF8(${org:sqlstring})))
  AND """ + grafana_sql(target_predicate("c"))

CHANGES_BY_KIND = """SELECT toStartOfDay(observed_at) AS time, toString(kind) AS kind,
       count() AS events
FROM changes AS c FINAL
WHERE """ + CHANGE_FILTERS + """
GROUP BY time, kind
ORDER BY time, kind"""

NEW_RED_PORTS = expand_macros("""SELECT observed_at, target, ip, port, toString(proto) AS proto,
       toString(kind) AS kind, toString(service) AS service, after,
       toString(organization) AS organization, asset
FROM changes AS c FINAL
WHERE kind IN ('opened', 'reopened') AND risk_color = 'red'
  AND """ + CHANGE_FILTERS + """
ORDER BY observed_at DESC, ADDRESS_ORDER(target), ADDRESS_ORDER(ip), port
LIMIT 1000""")

# One row per host (latest_host_scans), not every scan ever: as the reports
ORG_VARIABLE = ("SELECT DISTINCT toString(organization) FROM latest_host_scans "
                "WHERE organization != '' ORDER BY 1")
# addresses in numeric order, as the reports (and the variable keeps the query's order)
TARGET_VARIABLE = expand_macros(
    "SELECT DISTINCT ip FROM latest_host_scans "
    "WHERE (${org:sqlstring} = '' OR organization = ${org:sqlstring}) ORDER BY ADDRESS_ORDER(ip)")


def _target(sql: str, fmt: int) -> dict[str, Any]:
    return {"refId": "A", "datasource": DATASOURCE, "editorType": "sql", "format": fmt,
            "queryType": "timeseries" if fmt == FORMAT_TIMESERIES else "table",
            "rawSql": sql}


def _panel(pid: int, title: str, kind: str, sql: str, grid: tuple[int, int, int, int],
           description: str, fmt: int = FORMAT_TABLE, **extra: Any) -> dict[str, Any]:
    x, y, w, h = grid
    return {"id": pid, "type": kind, "title": title, "description": description,
            "datasource": DATASOURCE, "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "targets": [_target(sql, fmt)], **extra}


def _colour_overrides() -> dict[str, Any]:
    """Risk colour column: coloured text, and the word itself stays (never colour alone)."""
    mapping = {"red": "red", "yellow": "yellow", "green": "green"}
    return {"defaults": {}, "overrides": [{
        "matcher": {"id": "byName", "options": "risk_color"},
        "properties": [
            {"id": "mappings", "value": [{"type": "value", "options": {
                word: {"text": word, "color": colour, "index": i}
                for i, (word, colour) in enumerate(mapping.items())}}]},
            {"id": "custom.cellOptions", "value": {"type": "color-text"}}]},
        _target_link_override()]}


def _variable(name: str, label: str, query: str, sort: int = 1) -> dict[str, Any]:
    """A dashboard variable; ``sort`` 1: Grafana sorts the values alphabetically, 0: in
    the query's order (addresses: 127.0.0.9 before 127.0.0.10)."""
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": query, "definition": query, "refresh": 2, "includeAll": True,
            "allValue": "''", "multi": False, "sort": sort,
            "current": {"selected": True, "text": "All", "value": "$__all"}}


def _datasource_variable() -> dict[str, Any]:
    """Which ClickHouse datasource the panels query: any of the plugin's type."""
    return {"name": "datasource", "label": "ClickHouse", "type": "datasource",
            "query": PLUGIN, "regex": "", "refresh": 1, "hide": 0, "includeAll": False,
            "multi": False, "current": {}}


def _web_url_variable() -> dict[str, Any]:
    return {"name": "web_url", "label": "portwatch web", "type": "textbox",
            "query": WEB_URL_DEFAULT, "hide": 0,
            "current": {"selected": False, "text": WEB_URL_DEFAULT, "value": WEB_URL_DEFAULT},
            "options": [{"selected": True, "text": WEB_URL_DEFAULT, "value": WEB_URL_DEFAULT}]}


def target_links() -> list[dict[str, Any]]:
    """Data links on a target cell: the web List for that target, and this dashboard
    filtered to it. Grafana percent-encodes ``${__value.raw}`` in a data link URL."""
    return [
        {"title": "List view of ${__value.raw} (portwatch web)",
         "url": "${web_url}/list?target=${__value.raw}", "targetBlank": True},
        {"title": "This dashboard for ${__value.raw}",
         "url": f"/d/{DASHBOARD_UID}?var-datasource=${{datasource}}&var-org=$__all"
                "&var-target=${__value.raw}&${__url_time_range}"},
    ]


def _target_link_override(field: str = "target") -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": field},
            "properties": [{"id": "links", "value": target_links()}]}


def dashboard() -> dict[str, Any]:
    history = grafana_sql(_web_sql("risk_history"))
    panels = [
        _panel(1, "Risk score over time", "timeseries",
               RISK_OVER_TIME.format(history=history), (0, 0, 12, 8),
               "Average and worst score of the selected targets, per day (same formula as "
               "the Summary report).", FORMAT_TIMESERIES,
               fieldConfig={"defaults": {"min": 0, "max": 100, "unit": "none"},
                            "overrides": []}),
        _panel(2, "New open ports per day", "barchart", NEW_PORTS_PER_DAY, (12, 0, 12, 8),
               "Open ports by the day they were first detected.", FORMAT_TABLE,
               options={"xTickLabelRotation": -45, "showValue": "auto"}),
        _panel(3, "Summary", "table", grafana_sql(report_sql("summary")), (0, 8, 24, 10),
               "One row per target: open ports by colour, risk score, grade and its parts. "
               "A target links to its List view.",
               fieldConfig={"defaults": {}, "overrides": [_target_link_override()]}),
        _panel(4, "Open ports (List)", "table", grafana_sql(report_sql("list")),
               (0, 18, 24, 12),
               "Every open port: service, product, version, risk colour, prevalence, CDN "
               "verdict, first detected, last seen.", fieldConfig=_colour_overrides()),
        _panel(5, "Products", "table", grafana_sql(report_sql("products")), (0, 30, 12, 10),
               "Product and version with instance and target counts."),
        _panel(6, "TLS ciphers", "table", grafana_sql(report_sql("ciphers")), (12, 30, 12, 10),
               "TLS ports: status, versions, grade, suites, certificate facts."),
        _panel(7, "Changes over time by kind", "barchart", CHANGES_BY_KIND, (0, 40, 12, 9),
               "Change events per day and kind (opened, closed, version changed...).",
               FORMAT_TIMESERIES, options={"stacking": "normal", "xTickLabelRotation": -45}),
        _panel(8, "New red ports", "table", NEW_RED_PORTS, (12, 40, 12, 9),
               "Ports opened or reopened with a red (risky) service, newest first."),
    ]
    return {
        "uid": DASHBOARD_UID, "title": "portwatch: exposed ports and risk",
        "tags": ["portwatch", "security"], "timezone": "utc", "schemaVersion": 39,
        "version": 1, "editable": True, "refresh": "5m",
        "time": {"from": "now-30d", "to": "now"},
        "templating": {"list": [_datasource_variable(), _web_url_variable(),
                                _variable("org", "Organization", ORG_VARIABLE),
                                _variable("target", "Target", TARGET_VARIABLE, sort=0)]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        stale = [path for path in OUTPUTS
                 if not path.is_file() or path.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"{path} is out of date: run python -m deploy.grafana.build_dashboards",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
