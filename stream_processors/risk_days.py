"""The risk chart's rows: per address and day, and per day and organization.

Owns: ``refresh_risk_days`` (the host scans ``risk_dirty`` noted since the last refresh
(its views note a scan for each host-scan record, observation or carried port stored) ->
their rows of ``host_day_scores`` -> the ``risk_days`` rows of the days they touched ->
the noted rows forgotten) and ``RISK_DAYS_MIGRATION``, the same steps over every stored
host scan (layout 17).

Why: the Summary page's 90-day chart computed every address's score of every day from the
raw observations at each view: 0.8 s at 100,000 hosts x 3 days, ~3 s at 10,000 x 90 and
growing with the history (BENCHMARKS.md). Its rows are now computed once, for the scans
stored since the last refresh; the chart reads one row per day and organization
(``web/risk_days.sql``) or, filtered by target, one per address and day
(``web/risk_history.sql``).

Called where a scan's rows are all in (``Store.compact_page_indexes``: the embedded
runner's end, the sink when its hold empties) and before a chart is read (the web
service: what a scan interrupted by Ctrl-C, or rows written by another tool, left). A
refresh is idempotent: the rows are replaced by key, so two at once, or one repeated
after a crash, write the same rows.

Must not touch: the raw tables (it only reads them), the reports.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from schemas import history_sql

HOST_DAY_COLUMNS = ("target", "ip", "day", "finished_at", "scan_id", "organization",
                    "hostname", "asset", "raw_score")
_COLUMNS = ", ".join(HOST_DAY_COLUMNS)
_DAYS_OF = ("SELECT DISTINCT day FROM host_day_scores WHERE (target, ip, scan_id) IN "
            "(SELECT target, ip, scan_id FROM risk_dirty "
            "WHERE noted_at <= {t:DateTime64(3, 'UTC')})")
# A day's rows again, per organization: first every organization the day had at zero
# (one whose addresses all moved to another would otherwise keep its old row), then the
# day's own, a millisecond later (the version that wins).
_ZERO_DAYS = ("INSERT INTO risk_days (day, organization, addresses, score_sum, score_max, "
              "refreshed_at) SELECT day, organization, 0, 0, 0, {at:DateTime64(3, 'UTC')} "
              f"FROM risk_days FINAL WHERE day IN ({_DAYS_OF})")
_DAY_ROWS = ("INSERT INTO risk_days (day, organization, addresses, score_sum, score_max, "
             "refreshed_at) "
             "SELECT day, organization, count(), sum(score), max(score), "
             "{at:DateTime64(3, 'UTC')} + toIntervalMillisecond(1) "
             "FROM (SELECT day, organization, round(100 * (1 - exp(-raw_score / 40)), 1) AS "
             f"score FROM host_day_scores FINAL WHERE day IN ({_DAYS_OF})) "
             "GROUP BY day, organization")
_FORGET = ("ALTER TABLE risk_dirty DELETE WHERE noted_at <= {t:DateTime64(3, 'UTC')} "
           "SETTINGS mutations_sync = 1")


def _statements() -> list[str]:
    return [f"INSERT INTO host_day_scores ({_COLUMNS}) {history_sql('risk_scores')}",
            _ZERO_DAYS, _DAY_ROWS, _FORGET]


def refresh_risk_days(store: Any) -> bool:
    """Bring ``host_day_scores`` and ``risk_days`` up to the host scans stored so far;
    False when there was nothing to do (one cheap read)."""
    (noted, upto), = store.query("SELECT count(), max(noted_at) FROM risk_dirty")
    if not noted:
        return False
    # Everything noted up to the latest row seen now; rows noted meanwhile wait for the
    # next refresh (the forget step spares them: they are later).
    at: datetime = store.query("SELECT now64(3, 'UTC')")[0][0]
    params = {"t": upto, "at": max(at, upto + timedelta(milliseconds=1))}
    for sql in _statements():
        store.command(sql, params)
    return True


# Layout 16 -> 17: every stored host scan noted, then refreshed (the same statements,
# with a cut-off after anything stored).
_ALL = "toDateTime64('2200-01-01 00:00:00', 3, 'UTC')"
RISK_DAYS_MIGRATION: tuple[str, ...] = (
    "INSERT INTO risk_dirty (target, ip, scan_id, noted_at) "
    "SELECT DISTINCT target, ip, scan_id, now64(3, 'UTC') FROM host_scans",
    *(sql.replace("{t:DateTime64(3, 'UTC')}", _ALL)
         .replace("{at:DateTime64(3, 'UTC')}", "now64(3, 'UTC')")
      for sql in _statements()),
)
