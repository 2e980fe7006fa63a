"""schemas: event records, ClickHouse DDL, report SQL and data files.

Owns: the definitions every other package shares. Imports nothing of ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

REPORTS: tuple[str, ...] = ("summary", "list", "products", "ciphers")


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@cache
def ddl_statements() -> tuple[str, ...]:
    """The DDL of schemas/ddl.sql as single statements, comments removed."""
    text = re.sub(r"--[^\n]*", "", _read("ddl.sql"))
    return tuple(s.strip() for s in text.split(";") if s.strip())


_TARGET_MATCHES = re.compile(r"TARGET_MATCHES\((\w+)\)")
_HOST_TARGET_MATCHES = re.compile(r"HOST_TARGET_MATCHES\((\w+)\)")
_IS_CARRIED = re.compile(r"IS_CARRIED\((\w+)\)")
_IS_CURRENT = re.compile(r"IS_CURRENT\((\w+)\.(\w+), (\w+)\)")
_CARRIED_COUNTS = re.compile(r"CARRIED_COUNTS\((\w+), (\w+)\)")
_CUT_SCAN_CARRIED = re.compile(r"CUT_SCAN_CARRIED\(([\w.]+)\)")
_ACCEPTED_FOR = re.compile(r"ACCEPTED_FOR\((\w+), (\w+)\)")
# ``ACCEPTED_FOR(acceptance, port)``: the port acceptance joined as ``acceptance`` holds
# for ``port``'s identification, as stream_processors/acceptances.is_in_force judges it:
# none was noted when it was accepted, the port is not named now (a scan that could not
# name it judges nothing), or service, product and version are those accepted.
_ACCEPTED_FOR_SQL = (
    "({a}.target != '' AND (({a}.service = '' AND {a}.product = '' AND {a}.version = '') "
    "OR ({p}.service = '' AND {p}.product = '' AND {p}.version = '') "
    "OR ({a}.service = {p}.service AND {a}.product = {p}.product "
    "AND {a}.version = {p}.version)))")
# ``ADDRESS_ORDER(column)``: sort keys putting addresses in numeric order (127.0.0.2
# before 127.0.0.10), IPv4 before IPv6 as the scan's end screen does
# (scan_cli._riskiest_first), names after them (as text sorted them: digits first), in
# alphabetical order; then the text (ties).
_ADDRESS_ORDER = re.compile(r"ADDRESS_ORDER\(([\w.]+)\)")
_ADDRESS_KIND = "multiIf(isIPv4String({c}), 0, isIPv6String({c}), 1, 2)"
# ``ADDRESS_TEXT(column)``: one text sorting the same way (a sort key chosen among texts
# by a bound value): the kind's digit, then the lowercased name or the address's 16
# bytes in hex.
_ADDRESS_TEXT = re.compile(r"ADDRESS_TEXT\(([\w.]+)\)")
# ``CARRIED_COUNTS(rows, seen)``: per (target, ip, scan_id) of ``rows`` (a CTE of
# carried_history's target, ip, scan_id, proto, port; ``seen``, one of the ports those
# scans saw, read by the caller within its bounds), its carried ports' red / yellow /
# green counts and
# their number, as they were last seen (port_latest: as the Summary shows them), scored as
# the Summary scores (CDN-expected and UDP open|filtered count zero). Only the carried
# ports' rows of port_latest are read (none when nothing was carried). The score after
# every scan (history/target_scores.sql) and the risk chart's rows (risk_scores.sql).
_CARRIED_COUNTS_SQL = (
    "SELECT c.target AS target, c.ip AS ip, c.scan_id AS scan_id, "
    "countIf(l.is_scored AND l.risk_color = 'red') AS red, "
    "countIf(l.is_scored AND l.risk_color = 'yellow') AS yellow, "
    "countIf(l.is_scored AND l.risk_color = 'green') AS green, count() AS open_ports "
    # a port a shard of the same scan saw is counted as seen, never carried as well (a
    # host's shards compared one at a time carry each other's ports)
    "FROM (SELECT * FROM {rows} WHERE (target, ip, scan_id, proto, port) NOT IN ("
    "SELECT target, ip, scan_id, proto, port FROM {seen})) AS c "
    "INNER JOIN ("
    "SELECT target, ip, proto, port, toString(risk_color) AS risk_color, "
    "(is_cdn_expected = 0 AND state = 'open') AS is_scored FROM port_latest FINAL "
    "WHERE (target, ip, proto, port) IN (SELECT target, ip, proto, port FROM {rows})"
    ") AS l ON l.target = c.target AND l.ip = c.ip AND l.proto = c.proto AND l.port = c.port "
    "GROUP BY c.target, c.ip, c.scan_id")
# ``CUT_SCAN_CARRIED(cut)``: the ports a scan that completed no shard (interrupted,
# killed while running) leaves as they were, as (target, ip, scan_id, proto, port) rows of
# that scan: those of the host's ports scan when it ended (its latest scan with a
# completed shard before it: the ports that scan saw and those it carried), and those any
# scan of the host saw after that one ended, up to the cut scan's end (what an earlier
# cut scan saw: the Summary's ports_seen_after). Such a scan closes nothing and is not the
# ports scan, so the Summary after it shows them, with what it saw; its point in the score
# after every scan counted only what it saw (a chart that dipped at every interrupted
# scan, as if ports had closed: a review, 2026-12-06), then not what an earlier cut scan
# had seen (a second stopped scan's point fell below the Summary beside it: a review,
# 2026-12-07). ``cut``: a CTE (or table) of the cut scans' target, ip, scan_id,
# finished_at, read by the hosts' keys. Not a scalar array any more: a constant of
# 100,000 such scans cost 45-77 s to refresh the risk chart (BENCHMARKS.md,
# twenty-sixth session). Counted by CARRIED_COUNTS with the ports the scan saw left out.
_CUT_SCAN_CARRIED_SQL = (
    "WITH cut_base AS ("
    "SELECT c.target AS target, c.ip AS ip, c.scan_id AS scan_id, "
    "argMax(h.scan_id, h.finished_at) AS ports_scan_id, "
    "max(h.finished_at) AS ports_finished_at, any(c.finished_at) AS cut_finished_at "
    "FROM {cut} AS c INNER JOIN (SELECT target, ip, scan_id, finished_at FROM host_scans FINAL "
    "WHERE (target, ip) IN (SELECT target, ip FROM {cut}) AND status = 'completed') AS h "
    "ON h.target = c.target AND h.ip = c.ip "
    "WHERE h.finished_at < c.finished_at "
    "GROUP BY c.target, c.ip, c.scan_id) "
    # one pass over the cut hosts' observations (and the ports scans' carried ports): a
    # second join for the ports seen since cost every per-target page ~50 ms more, cut
    # scans or none (chdb's cost per subquery); the cut hosts, the smaller side, on the
    # right (the side a hash join holds)
    "SELECT b.target AS target, b.ip AS ip, b.scan_id AS scan_id, "
    "o.proto AS proto, o.port AS port "
    "FROM (SELECT target, ip, scan_id, proto, port, observed_at FROM port_observations "
    "WHERE (target, ip) IN (SELECT target, ip FROM cut_base) "
    "UNION ALL SELECT target, ip, scan_id, proto, port, toDateTime64(0, 3, 'UTC') "
    "FROM carried_history "
    "WHERE (target, ip, scan_id) IN (SELECT target, ip, ports_scan_id FROM cut_base)) AS o "
    "INNER JOIN cut_base AS b ON o.target = b.target AND o.ip = b.ip "
    "WHERE o.scan_id = b.ports_scan_id "
    "OR (o.observed_at > b.ports_finished_at AND o.observed_at <= b.cut_finished_at)")
# A port of ``alias`` (port_latest or current_findings) that the host's ports scan did not
# see and the change state holds open (ddl.sql ports_carried): only rows whose scan is the
# host's ports scan count. With no row carried (most stores, most days) the first term is
# a constant 0 and no port is looked up: without it the Summary took 22-45 ms more at
# 100,000 hosts (BENCHMARKS.md).
_CARRIED = ("((SELECT count() > 0 FROM ports_carried) AND "
            "({a}.target, {a}.ip, {a}.proto, {a}.port) IN ("
            "SELECT c.target, c.ip, c.proto, c.port FROM ports_carried AS c "
            "WHERE (c.target, c.ip, c.scan_id) IN ("
            "SELECT target, ip, ports_scan_id FROM latest_host_scans "
            "WHERE (target, ip) IN (SELECT target, ip FROM ports_carried))))")
# ``IS_CURRENT(alias.scan_column, host)``: the port is one of its host's ports now. ``host``
# is the port's row of latest_host_scans, joined (ports_scan_id, ports_seen_after; '' when
# the host has no scan record: its ports are all current). Seen in the host's ports scan
# (its latest completed one), seen since that one ended (an interrupted or running scan
# closes nothing, and what it sees is open), or carried (above).
_CURRENT = ("({h}.ports_scan_id = '' OR {a}.{col} = {h}.ports_scan_id "
            "OR {a}.last_seen > {h}.ports_seen_after OR IS_CARRIED({a}))")


def expand_macros(sql: str) -> str:
    """The SQL with each ``TARGET_MATCHES(alias)`` written out as the one target predicate
    (schemas/filters.py; ``HOST_TARGET_MATCHES(alias)`` matches a port by its host's names
    now): every report filters targets alike, written once. Values are
    never formatted in: the predicate binds ``{target:String}`` like the rest. Likewise
    ``IS_CURRENT(alias.scan_column, host)``, which port is its host's port now (see
    _CURRENT), and ``IS_CARRIED(alias)``, open though the host's ports scan did not see it
    (see _CARRIED): every report decides it alike, written once; so is
    ``ACCEPTED_FOR(acceptance, port)`` (see _ACCEPTED_FOR). ``ADDRESS_ORDER(column)``
    and ``ADDRESS_TEXT(column)`` sort addresses as numbers (see _ADDRESS_ORDER)."""
    from schemas.filters import host_target_predicate, target_predicate

    sql = _IS_CURRENT.sub(lambda m: _CURRENT.format(a=m.group(1), col=m.group(2),
                                                    h=m.group(3)), sql)
    sql = _IS_CARRIED.sub(lambda m: _CARRIED.format(a=m.group(1)), sql)
    sql = _ACCEPTED_FOR.sub(lambda m: _ACCEPTED_FOR_SQL.format(a=m.group(1), p=m.group(2)),
                            sql)
    sql = _CUT_SCAN_CARRIED.sub(lambda m: _CUT_SCAN_CARRIED_SQL.format(cut=m.group(1)), sql)
    sql = _CARRIED_COUNTS.sub(
        lambda m: _CARRIED_COUNTS_SQL.format(rows=m.group(1), seen=m.group(2)), sql)
    sql = _ADDRESS_ORDER.sub(lambda m: (f"{_ADDRESS_KIND}, toIPv6OrZero({{c}}), {{c}}"
                                        .format(c=m.group(1))), sql)
    sql = _ADDRESS_TEXT.sub(
        lambda m: (f"concat(toString({_ADDRESS_KIND}), if({_ADDRESS_KIND} = 2, "
                   "lowerUTF8({c}), hex(toIPv6OrZero({c}))))").format(c=m.group(1)), sql)
    sql = _HOST_TARGET_MATCHES.sub(lambda m: host_target_predicate(m.group(1)), sql)
    return _TARGET_MATCHES.sub(lambda m: target_predicate(m.group(1)), sql)


@cache
def report_sql(name: str) -> str:
    """The SQL of one report, run unchanged by the store (parameters bound server-side)."""
    if name not in REPORTS:
        raise KeyError(f"unknown report {name!r}; choose one of {', '.join(REPORTS)}")
    return expand_macros(_read(f"reports/{name}.sql"))


@cache
def web_sql(name: str) -> str:
    """A query of schemas/web/ (charts and filter choices), read once."""
    if not re.fullmatch(r"[a-z_]+", name):
        raise KeyError(f"bad query name {name!r}")
    return expand_macros(_read(f"web/{name}.sql"))


@cache
def history_sql(name: str) -> str:
    """SQL of the change-history queries (schemas/history/*.sql), bound server-side."""
    if not re.fullmatch(r"[a-z_]+", name):
        raise KeyError(f"bad query name {name!r}")
    return expand_macros(_read(f"history/{name}.sql"))


_PARAMETER = re.compile(r"\{(\w+):(\w+)\}")
UNLIMITED = 2**62  # LIMIT for "no limit": ClickHouse has no LIMIT ALL


def sql_parameters(sql: str) -> dict[str, str]:
    """The ``{name:Type}`` parameters a query declares: name -> ClickHouse type."""
    return dict(_PARAMETER.findall(sql))


def report_parameters(name: str) -> frozenset[str]:
    """The names of the ``{name:Type}`` parameters a report's SQL binds."""
    return frozenset(sql_parameters(report_sql(name)))


def bind_parameters(sql: str, filters: Mapping[str, Any], *, limit: int = 0,
                    offset: int = 0) -> dict[str, Any]:
    """A value for every parameter ``sql`` declares, by its declared type; a filter not
    given binds its neutral value ('' or 0), which the SQL reads as "no filter".

    The one binder of the reports (CLI, web, JSON API): the SQL says what it takes.
    """
    params: dict[str, Any] = {}
    for key, kind in sql_parameters(sql).items():
        if key == "limit":
            params[key] = limit if limit > 0 else UNLIMITED
        elif key == "offset":
            params[key] = max(0, offset)
        elif kind.startswith(("UInt", "Int")):
            params[key] = int(filters.get(key) or 0)
        else:
            value = filters.get(key)
            params[key] = "" if value is None else str(value)
    return params


def report_page_sql(name: str, select: str) -> str | None:
    """A report's CTEs (its filters and its ``page`` of keys) followed by ``select`` in
    place of its last SELECT; None for a report without a ``page`` CTE.

    The two-phase reports (list, summary, ciphers) choose their rows in ``page`` and
    return one row per ``page`` row, so what depends only on which rows there are (a
    count, the Summary's colour totals, over ``page`` with no limit) needs no phase 2:
    read from the report's own text, the filters can never drift.
    """
    sql = report_sql(name)
    if "\n    page AS (" not in sql:
        return None
    return f"{sql[:sql.rindex(chr(10) + 'SELECT')]}\n{select}"


def data_path(name: str) -> str:
    return str(resources.files(__name__).joinpath("data", name))
