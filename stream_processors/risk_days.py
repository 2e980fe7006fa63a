"""The risk chart's rows: per host scan, and per day and organization.

Owns: ``refresh_risk_days`` (the host scans ``risk_dirty`` noted since the last refresh
-- its views note a scan for each host-scan record, observation or carried port stored --
-> their rows of ``scan_scores`` -> the ``risk_days`` rows of the days those scans lie on,
now or before -> the noted rows forgotten) and ``migrate_risk_days``, the same over every
stored host scan, a month at a time (layout 17).

Why: the Summary page's 90-day chart computed every address's score of every day from the
raw observations at each view: 0.9 s at 100,000 hosts x 3 days, 2.6 s at 10,000 x 90 and
growing with the history (BENCHMARKS.md). Its rows are now computed once, for the scans
stored since the last refresh; the chart reads one row per day and organization
(``web/risk_days.sql``) or, filtered by target, the target's scans (``web/risk_history.sql``).

Called where a scan's rows are all in (``Store.compact_page_indexes``: the embedded
runner's end, the sink when its hold empties; not after Ctrl-C) and when the web app
starts (what a stopped scan or another tool left). A refresh is idempotent, and refreshes
are one at a time in a process. It reads the days it rewrites once (every day a shard of
its scans ended on, by host_scans' key), and the day rows it writes come from that list,
never from the notes another refresh may have forgotten meanwhile. Known limit, two
processes on one ClickHouse server (a sink and a web app): a note made by a slow insert
that becomes visible after a refresh read its cut-off, for a scan it also computes, is
forgotten with it; the scan is computed again when its next row is stored.

Must not touch: the raw tables (it only reads them), the reports.
"""

from __future__ import annotations

import logging
import threading
from datetime import date, datetime, timedelta
from typing import Any

from schemas import history_sql

log = logging.getLogger(__name__)

SCAN_SCORE_COLUMNS = ("target", "ip", "scan_id", "day", "finished_at", "organization",
                      "hostname", "asset", "raw_score", "computed_at")
_T = "{t:DateTime64(3, 'UTC')}"
_AT = "{at:DateTime64(3, 'UTC')}"
_NOTED = f"(SELECT target, ip, scan_id FROM risk_dirty WHERE noted_at <= {_T})"
# Every day a shard of a noted scan ended on: the days its row may lie on now or lay on
# before (a later shard moves a scan to its day), read by host_scans' key.
_DAYS = ("SELECT DISTINCT toDate(finished_at, 'UTC') FROM host_scans "
         f"WHERE (target, ip, scan_id) IN {_NOTED}")
# A noted scan's row on a day before its last shard's: deleted (the scan moved on).
_MOVED = ("INSERT INTO scan_scores (target, ip, scan_id, day, finished_at, organization, "
          "hostname, asset, raw_score, computed_at, is_deleted) "
          f"SELECT target, ip, scan_id, day, last, '', '', '', 0, {_AT}, 1 FROM ("
          "SELECT target, ip, scan_id, max(finished_at) AS last, "
          "groupUniqArray(toDate(finished_at, 'UTC')) AS days FROM host_scans "
          f"WHERE (target, ip, scan_id) IN {_NOTED} GROUP BY target, ip, scan_id) "
          "ARRAY JOIN days AS day WHERE day != toDate(last, 'UTC')")
# A day's rows again, per organization: first every organization the day had, at zero (one
# whose addresses all moved to another would otherwise keep its old row), then the day's
# own, a millisecond later (the version that wins). Both take the days as read once.
_ZERO_DAYS = ("INSERT INTO risk_days (day, organization, addresses, score_sum, score_max, "
              f"refreshed_at) SELECT day, organization, 0, 0, 0, {_AT} "
              "FROM risk_days FINAL WHERE day IN {days:Array(Date)}")
_DAY_ROWS = ("INSERT INTO risk_days (day, organization, addresses, score_sum, score_max, "
             f"refreshed_at) SELECT day, organization, count(), sum(score), max(score), "
             f"{_AT} + toIntervalMillisecond(1) FROM ("
             # each address's last scan of the day: its organization then, and its score
             # (FINAL: a scan computed again replaces its row; a moved one is deleted)
             "SELECT day, target, ip, argMax(organization, finished_at) AS organization, "
             "round(100 * (1 - exp(-argMax(raw_score, finished_at) / 40)), 1) AS score "
             "FROM scan_scores FINAL WHERE day IN {days:Array(Date)} "
             "GROUP BY day, target, ip) GROUP BY day, organization")
# The notes of the scans this refresh computed (those with a host-scan record), and
# notes a day old whose scan has none (findings of a host whose record never came; its
# record, when it comes, notes it again).
_FORGET = (f"ALTER TABLE risk_dirty DELETE WHERE noted_at <= {_T} AND ("
           f"(target, ip, scan_id) IN (SELECT target, ip, scan_id FROM host_scans "
           f"WHERE (target, ip, scan_id) IN {_NOTED}) OR noted_at < {_T} - toIntervalDay(1))")


# Whether a noted scan completed no shard: its ports scan's ports are then computed into
# the temporary table risk_scores.sql reads (history/risk_cut_ports.sql). FINAL: a shard
# row written "running" at its start and "completed" at its end is completed.
_CUT_NOTED = ("SELECT count() > 0 FROM (SELECT target, ip, scan_id FROM host_scans FINAL "
              f"WHERE (target, ip, scan_id) IN {_NOTED} GROUP BY target, ip, scan_id "
              "HAVING countIf(status = 'completed') = 0)")
# Per session (chdb's, or the server's session of this client): two processes refreshing
# one server's store each have their own; dropped after each refresh.
_CUT_TABLE = ("CREATE TEMPORARY TABLE IF NOT EXISTS risk_cut_ports (target String, ip String, "
              "scan_id String, proto String, port UInt16) ENGINE = Memory")


def _scores_sql() -> str:
    """The noted scans' rows (history/risk_scores.sql), versioned by the refresh."""
    return (f"INSERT INTO scan_scores ({', '.join(SCAN_SCORE_COLUMNS)}) "
            f"SELECT *, {_AT} FROM ({history_sql('risk_scores')})")


_REFRESHING = threading.Lock()  # one refresh at a time in a process (the sink, the web)


def refresh_risk_days(store: Any) -> bool:
    """Bring ``scan_scores`` and ``risk_days`` up to the host scans stored so far; False
    when there was nothing to do (one cheap read). ``store``: anything with ``query`` and
    ``command`` taking bound parameters (a ``Store``)."""
    with _REFRESHING:
        (noted, upto), = store.query("SELECT count(), max(noted_at) FROM risk_dirty")
        if not noted:
            return False
        # Everything noted up to the latest note seen now; notes made meanwhile wait for
        # the next refresh. ``at`` versions this refresh's rows: after any note it reads.
        now: datetime = store.query("SELECT now64(3, 'UTC')")[0][0]
        params: dict[str, Any] = {"t": upto, "at": max(now, upto + timedelta(milliseconds=1))}
        days: list[date] = sorted(r[0] for r in store.query(_DAYS, params))
        store.command(_CUT_TABLE)
        try:
            store.command("TRUNCATE TABLE risk_cut_ports")
            if store.query(_CUT_NOTED, params)[0][0]:
                store.command(history_sql("risk_cut_ports"), params)
            store.command(_scores_sql(), params)
        finally:
            store.command("DROP TEMPORARY TABLE IF EXISTS risk_cut_ports")
        store.command(_MOVED, params)
        if days:
            by_day = {**params, "days": days}
            store.command(_ZERO_DAYS, by_day)
            store.command(_DAY_ROWS, by_day)
        store.mutate("risk_dirty", _FORGET, params)
        return True


def migrate_risk_days(store: Any) -> None:
    """Layout 16 -> 17: every stored host scan noted and refreshed, a month of scans at a
    time (a year of 100,000 daily hosts is never one statement's working set). The notes
    the upgrade's earlier steps made (layout 16's backfill of carried_history) go first:
    every scan is noted again, with its month."""
    store.command("TRUNCATE TABLE risk_dirty")
    months = [r[0] for r in store.query(
        "SELECT DISTINCT toStartOfMonth(finished_at) AS month FROM host_scans ORDER BY month")]
    if months:  # seconds per month of a large estate: said, once
        log.warning("upgrading the store: computing the risk chart's history once, "
                    "%d month(s) of scans", len(months))
    for month in months:
        store.command("INSERT INTO risk_dirty (target, ip, scan_id, noted_at) "
                      "SELECT DISTINCT target, ip, scan_id, now64(3, 'UTC') FROM host_scans "
                      "WHERE toStartOfMonth(finished_at) = {month:Date}", {"month": month})
        refresh_risk_days(store)
