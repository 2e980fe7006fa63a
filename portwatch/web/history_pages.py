"""Web pages of the change history: the Changes timeline and the per-target page.

Owns: ``/changes`` (events grouped by day and kind, with filters, each event linking into
the List), ``/api/v1/changes`` (the same events as JSON) and ``/target`` (one target's
ports now, its events, and its risk score after every scan), their query-string
validation (a bad value is a 400 with the reason) and their routes. The SQL is
``stream_processors/change_log.py`` and ``schemas/history/*.sql``.

Must not write to the store or reach any network. Values from the network are escaped by
the shared Jinja environment (autoescape on).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import BaseRoute, Route

from schemas import bounded
from schemas.bounded import is_digits
from schemas.filters import filter_text, is_ip_address, normalize_target
from schemas.records import ChangeKind, Severity, normalize_ip

if TYPE_CHECKING:
    from portwatch.web.app import WebApp
    from stream_processors.store import Store

KINDS = tuple(k.value for k in ChangeKind)
SEVERITIES = tuple(s.value for s in Severity)
MAX_EVENTS = 1000  # rows a page shows (and the API by default); the CLI has no such cap
API_LIMIT = 10_000  # rows one /api/v1/changes answer holds at most
PAGE_FILTERS = ("since", "kind", "severity", "target", "org", "port")  # /changes
API_FILTERS = ("since", "from", "to", "kind", "severity", "target", "org", "port")
TEXT_CAP = bounded.TEXT_CAP  # a filter value may be as long as any stored value


class BadParam(ValueError):
    pass


def _one(params: Mapping[str, list[str]], name: str) -> str:
    values = params.get(name, [])
    if len(values) > 1:
        raise BadParam(f"{name}: give it once")
    if not values or not values[0].strip():
        return ""  # a blank form field: no filter, as the reports' API reads it
    try:  # tabs and line breaks folded, other controls refused, as every filter
        return filter_text(name, values[0], TEXT_CAP)
    except ValueError:
        raise BadParam(f"{name}: not a valid value") from None


def parse_changes_query(items: list[tuple[str, str]]) -> dict[str, Any]:
    """Query string of /changes -> validated filters (BadParam says what is wrong)."""
    from stream_processors.change_log import parse_duration

    params: dict[str, list[str]] = {}
    for key, value in items:
        params.setdefault(key, []).append(value)
    unknown = set(params) - set(PAGE_FILTERS)
    if unknown:
        raise BadParam(f"unknown filter {_names(unknown)}")
    since = _one(params, "since") or "7d"
    try:
        period = parse_duration(since)
    except ValueError as exc:
        raise BadParam(f"since: {exc}") from exc
    # named as the CLI takes them: whatever the case (README: filters ignore case)
    kinds = [k.strip().lower() for k in params.get("kind", []) if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise BadParam(f"kind: {bad[0][:40]!r} is not one of {', '.join(KINDS)}")
    severity = _one(params, "severity").lower()
    if severity and severity not in SEVERITIES:
        raise BadParam(f"severity: choose one of {', '.join(SEVERITIES)}")
    port_text = _one(params, "port")
    if port_text and (not is_digits(port_text) or not 0 <= int(port_text) < 65536):
        # 0 is any, as the CLI's --port 0 and the filters this API answers with say
        raise BadParam("port: a number from 1 to 65535 (0: any)")
    target_text = _one(params, "target")  # its own BadParam names it: not twice
    try:
        target = normalize_target(target_text)
    except ValueError as exc:  # its message names the target already
        raise BadParam(str(exc)) from None
    return {"since": since, "period": period, "kinds": kinds, "severity": severity,
            "target": target, "org": _one(params, "org"), "port": int(port_text or 0)}


Row = dict[str, Any]


def _names(names: set[str]) -> str:
    """Unknown parameter names for an error, bounded: a hostile URL can carry thousands,
    each as long as the URL (the error must not grow with them)."""
    shown = [repr(n[:40]) for n in sorted(names)[:5]]
    return ", ".join(shown) + (f" and {len(names) - 5:,} more" if len(names) > 5 else "")


def timeline(rows: list[Row]) -> list[tuple[date, list[tuple[str, list[Row]]]]]:
    """Events grouped by day (newest first), then by kind in the order of ChangeKind."""
    days: dict[date, dict[str, list[Row]]] = {}
    for r in rows:
        at = r["observed_at"]
        day = (at if at.tzinfo else at.replace(tzinfo=UTC)).date()
        days.setdefault(day, {}).setdefault(r["kind"], []).append(r)
    return [(day, [(k, kinds[k]) for k in KINDS if k in kinds])
            for day, kinds in sorted(days.items(), reverse=True)]


def _when(name: str, text: str) -> datetime:
    """An ISO date or time of the query string (``change_log.parse_when``)."""
    from stream_processors.change_log import parse_when

    try:
        return parse_when(text)
    except ValueError as exc:
        raise BadParam(f"{name}: {exc}") from None


def parse_changes_api_query(items: list[tuple[str, str]]) -> tuple[dict[str, Any], int]:
    """Query string of /api/v1/changes -> the page's filters, plus ``from``/``to`` (ISO
    times; ``from`` instead of ``since``) and ``limit`` (rows at most, 1 to
    ``API_LIMIT``; ``MAX_EVENTS`` when absent). BadParam says what is wrong."""
    from stream_processors.change_log import iso_moment, same_moment

    own = {"limit", *set(API_FILTERS) - set(PAGE_FILTERS)}
    params: dict[str, list[str]] = {}
    for key, value in items:
        if key in own:
            params.setdefault(key, []).append(value)
    f = parse_changes_query([(key, value) for key, value in items if key not in own])
    text = _one(params, "limit")
    if text and (not is_digits(text) or not 0 < int(text) <= API_LIMIT):
        raise BadParam(f"limit: a number from 1 to {API_LIMIT:,}")
    start, end = _one(params, "from"), _one(params, "to")
    if start and any(key == "since" and value.strip() for key, value in items):
        raise BadParam("give since or from, not both")
    if start:
        f["start"] = _when("from", start)
    if end:
        f["end"] = _when("to", end)
    # Compared as given, before both are kept to the store's years (9999 and 5000 both
    # become 2299: an inverted window would read as an empty one)
    if start and end and iso_moment(start) > iso_moment(end):
        raise BadParam("from is after to: no event can match")
    if start and end and iso_moment(start) == iso_moment(end):
        raise BadParam(same_moment("from", "to", "to=", iso_moment(end)))
    if end and not start and datetime.now(UTC) - f["period"] > iso_moment(end):
        raise BadParam(f"since ({f['since']}, counted back from now) starts after to: "
                       "no event can match; give from instead")
    return f, int(text or MAX_EVENTS)


def _events(store: Store, f: Mapping[str, Any], limit: int) -> list[Row]:
    """The events the filters select, newest first: the Changes page's and the API's."""
    from stream_processors.change_log import changes_report

    since = f.get("start") or datetime.now(UTC) - f["period"]
    return changes_report(store, since=since, until=f.get("end"), kinds=f["kinds"],
                          severity=f["severity"], target=f["target"], org=f["org"],
                          port=f["port"], limit=limit).dicts()


def _window_organizations(store: Store, f: Mapping[str, Any], current: list[str]
                          ) -> list[str]:
    """The Changes page's organizations to choose from: the estate's now and those of
    the events in the page's window (a host moved to another organization, or no longer
    scanned, left its events' one out of the list: a review). The change log is
    partitioned by month: the window's months are read, not the whole log."""
    since = f.get("start") or datetime.now(UTC) - f["period"]
    rows = store.query(
        "SELECT DISTINCT toString(organization) FROM changes "
        "WHERE observed_at >= {since:DateTime64(3, 'UTC')} "
        "AND observed_at < {until:DateTime64(3, 'UTC')} AND organization != '' "
        "ORDER BY 1 LIMIT 1000",
        {"since": since, "until": f.get("end") or datetime(2200, 1, 1, tzinfo=UTC)})
    chosen = {o.casefold(): o for o in current}
    for (organization,) in rows:
        chosen.setdefault(str(organization).casefold(), str(organization))
    return sorted(chosen.values(), key=str.casefold)


def api_route(web: WebApp) -> Route:
    """``/api/v1/changes``: the Changes page's events as JSON (the keys of ``portwatch
    report changes -f json``), for what polls portwatch (a SIEM, a script). Ahead of the
    reports' ``/api/v1/{report}`` in the app's routes."""
    store = web.service.store

    def api_changes(request: Request) -> JSONResponse:
        from portwatch.render import jsonable
        from stream_processors.change_log import CHANGES_REPORT_COLUMNS

        try:
            f, limit = parse_changes_api_query(request.query_params.multi_items())
        except BadParam as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        rows = _events(store, f, limit + 1)  # one more: tells a capped answer
        return JSONResponse({
            "report": "changes",
            "filters": {"since": "" if "start" in f else f["since"],
                        "from": jsonable("", f.get("start")) or "",
                        "to": jsonable("", f.get("end")) or "", "kind": f["kinds"],
                        "severity": f["severity"], "target": f["target"], "org": f["org"],
                        "port": f["port"]},
            "limit": limit, "capped": len(rows) > limit, "count": min(len(rows), limit),
            "columns": list(CHANGES_REPORT_COLUMNS),
            "rows": [{c: jsonable(c, row[c]) for c in CHANGES_REPORT_COLUMNS}
                     for row in rows[:limit]],
        })

    return Route("/api/v1/changes", api_changes, methods=["GET", "HEAD"])


def routes(web: WebApp) -> list[BaseRoute]:
    from stream_processors.change_log import changes_report

    store = web.service.store

    def changes(request: Request) -> HTMLResponse:
        try:
            f = parse_changes_query(request.query_params.multi_items())
        except BadParam as exc:
            return web.error_page(400, str(exc), "changes")
        rows = _events(store, f, MAX_EVENTS + 1)  # one more: are there more than shown?
        capped = len(rows) > MAX_EVENTS
        rows = rows[:MAX_EVENTS]
        return web.render("changes.html", active="changes", page_title="Changes", f=f,
                          groups=timeline(rows), total=len(rows), capped=capped,
                          kinds=KINDS, severities=SEVERITIES,
                          organizations=_window_organizations(
                              store, f, web.service.organizations()))

    def target(request: Request) -> HTMLResponse:
        from schemas import history_sql

        try:
            params: dict[str, list[str]] = {}
            for key, value in request.query_params.multi_items():
                params.setdefault(key, []).append(value)
            unknown = set(params) - {"target", "ip"}
            if unknown:
                raise BadParam(f"unknown parameter {_names(unknown)}: the target page "
                               "takes target and ip")
            name, ip = _one(params, "target"), _one(params, "ip")
            if ip and not is_ip_address(ip):
                raise BadParam(f"ip: {ip[:40]!r} is not an IP address")
            if ip:  # as stored and as the List reads it: ::ffff:127.0.0.1 is 127.0.0.1
                ip = normalize_ip(ip)  # ("Never scanned" for the mapped form: a review)
        except BadParam as exc:
            return web.error_page(400, str(exc), "summary")
        if not name:
            return web.error_page(400, "target: which target? (open it from the Summary)",
                                  "summary")
        ports = store.select("ports", history_sql("target_ports"),
                             {"target": name, "ip": ip}).dicts()
        # each port's acceptance, as the List shows it (it showed none here: a review)
        from portwatch.alerts.accepted import ActiveAcceptances

        active = ActiveAcceptances.recorded(store, datetime.now(UTC).timestamp())
        for row in ports:
            row["accepted"] = active.of_port(
                row["target"], row["ip"], row["proto"], row["port"],
                (row["service"], row["product"], row["version"])) if active.risks else None
        # one more than shown: 1,000 of 1,100 events read "Changes (1000)" (a review)
        events = changes_report(store, host=name, host_ip=ip, limit=MAX_EVENTS + 1).dicts()
        capped = len(events) > MAX_EVENTS
        events = events[:MAX_EVENTS]
        scores = store.select("scores", history_sql("target_scores"),
                              {"target": name, "ip": ip}).dicts()
        if not (ports or events or scores):
            # nothing of it stored: a mistyped or stale link, not a clean host (it was a
            # page saying "No open port in its latest scan" above "Never scanned": a
            # review)
            shown = f"{name} ({ip})" if ip and ip != name else name
            return web.error_page(404, f"no target {shown[:120]} in the store: never "
                                  "scanned, or scanned under another name (open it from "
                                  "the Summary)", "summary")
        return web.render("target.html", active="summary", page_title=f"Target {name}",
                          name=name, ip=ip, ports=ports, events=events, scores=scores,
                          capped=capped)

    return [Route("/changes", changes, methods=["GET", "HEAD"]),
            Route("/target", target, methods=["GET", "HEAD"])]
