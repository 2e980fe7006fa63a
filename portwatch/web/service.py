"""Report service for the web: pages of the four reports, their totals, chart data.

Owns: running the report SQL through the store (``Store.report``, the same SQL as the
CLI), counting a report's rows from that same SQL (its ``page`` of keys, or wrapped:
``SELECT count() FROM (...)``; the filters can never drift), the Summary page with its
colour totals from the Summary SQL's first phase, the risk-over-time query
(schemas/web/risk_history.sql), and a small result cache.

The cache: an answer is reused only while the store's data fingerprint (row counts and
newest timestamps of the tables the reports read, a few milliseconds to read) is
unchanged, so a scan written by another process through a ClickHouse server shows up
on the next request. An embedded (chdb) store is owned by the serving process, so there
nothing else can write.

Must not write to the store: every statement here is a SELECT with bound parameters.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

from portwatch.web.query import ReportQuery
from schemas import bind_parameters, report_page_sql, report_sql, web_sql
from stream_processors.store import Report, Store

T = TypeVar("T")
CACHE_ENTRIES = 512
FINGERPRINT_SECONDS = 1.0  # re-read the fingerprint at most this often

FINGERPRINT_SQL = """
SELECT (SELECT count() FROM port_observations), (SELECT max(observed_at) FROM port_observations),
       (SELECT count() FROM host_scans), (SELECT max(finished_at) FROM host_scans),
       (SELECT count() FROM tls_probes), (SELECT max(observed_at) FROM tls_probes),
       (SELECT max(refreshed_at) FROM risk_days),
       -- an acceptance given or withdrawn (by another process too), or one lapsing now
       (SELECT (count(), max(revision), countIf(until > now64(3))) FROM accepted_risks)
"""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of one report, with the total row count for pagination."""

    query: ReportQuery
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.query.per_page))

    @property
    def first_row(self) -> int:
        return self.query.offset + 1 if self.rows else 0

    @property
    def last_row(self) -> int:
        return self.query.offset + len(self.rows)


@dataclass(frozen=True, slots=True)
class ColourTotals:
    targets: int
    open_ports: int
    red: int
    yellow: int
    green: int
    cdn_expected: int

    @property
    def unconfirmed(self) -> int:
        """UDP ports never answered (open|filtered): open, not coloured into the score."""
        return max(0, self.open_ports - self.red - self.yellow - self.green - self.cdn_expected)


@dataclass(frozen=True, slots=True)
class RiskPoint:
    day: date
    average: float
    worst: float
    targets: int


class ReportService:
    """The reports the web serves, over one store (thread-safe: the store serializes)."""

    def __init__(self, store: Store, *, use_cache: bool = True) -> None:
        self.store = store
        self.use_cache = use_cache
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._fingerprint: tuple[Any, ...] = ()
        self._fingerprint_at = 0.0

    # -- cache --------------------------------------------------------------------------

    def _current_fingerprint(self) -> tuple[Any, ...]:
        now = time.monotonic()
        if now - self._fingerprint_at >= FINGERPRINT_SECONDS or not self._fingerprint:
            rows = self.store.query(FINGERPRINT_SQL)
            fingerprint = tuple(rows[0]) if rows else ()
            with self._lock:
                if fingerprint != self._fingerprint:
                    self._cache.clear()
                self._fingerprint, self._fingerprint_at = fingerprint, now
        return self._fingerprint

    def _cached(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        if not self.use_cache:
            return compute()
        self._current_fingerprint()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]  # type: ignore[no-any-return]
        value = compute()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return value

    # -- reports ------------------------------------------------------------------------

    def page(self, query: ReportQuery) -> Page:
        if query.report == "summary":
            return self.summary_page(query)[0]

        def compute() -> Page:
            report: Report = self.store.report(
                query.report, query.store_filters(), limit=query.per_page, offset=query.offset)
            if 0 < len(report.rows) < query.per_page or (not report.rows and query.page == 1):
                total = query.offset + len(report.rows)  # the last page: no count needed
            else:
                total = self.count(query)
            return Page(query, report.columns, report.dicts(), total)

        return self._cached(("page", *query.key()), compute)

    def summary_page(self, query: ReportQuery) -> tuple[Page, ColourTotals]:
        """A Summary page and the colour totals over every target its filters keep.

        The Summary SQL is two-phase (schemas/reports/summary.sql): it ranks every host
        from a few columns, then reads the page's hosts' ports, accepted risks and scan
        totals. The page runs it with its LIMIT/OFFSET; the totals are sums over its first
        phase with no limit (``colour_totals``), never over its second phase for every
        host (as window aggregates around the report with no limit: 2 s at 100,000 hosts).
        """
        def compute() -> tuple[Page, ColourTotals]:
            report = self.store.report("summary", query.store_filters(),
                                       limit=query.per_page, offset=query.offset)
            totals = self.colour_totals(query.filters)
            return Page(query, report.columns, report.dicts(), totals.targets), totals

        return self._cached(("summary_page", *query.key()), compute)

    def count(self, query: ReportQuery) -> int:
        """Rows the report would return without paging: the report's own SQL, wrapped
        (a two-phase report counts its ``page`` of keys: one row each)."""
        def compute() -> int:
            name = query.report
            sql = (report_page_sql(name, "SELECT count() FROM page")
                   or f"SELECT count() FROM ({report_sql(name)})")
            rows = self.store.query(sql, bind_parameters(sql, query.store_filters()))
            return int(rows[0][0])

        return self._cached(("count", *query.key()[:2]), compute)

    def colour_totals(self, filters: Mapping[str, Any]) -> ColourTotals:
        """Open ports by colour over the targets the Summary shows for these filters:
        sums over the Summary's ranked hosts (its ``page`` with no limit)."""
        def compute() -> ColourTotals:
            sql = report_page_sql("summary", "SELECT count(), sum(open_ports), sum(red), "
                                  "sum(yellow), sum(green), sum(cdn_expected) FROM page")
            if sql is None:  # pragma: no cover - summary.sql always has its page
                raise RuntimeError("schemas/reports/summary.sql lost its page CTE")
            row = self.store.query(sql, bind_parameters(sql, filters))[0]
            return ColourTotals(*(int(v or 0) for v in row))

        return self._cached(("colours", tuple(sorted(filters.items()))), compute)

    def risk_history(self, filters: Mapping[str, Any], days: int = 0) -> list[RiskPoint]:
        """Average and worst risk score per day over the targets the Summary shows."""
        def compute() -> list[RiskPoint]:
            history, summary = web_sql("risk_history"), report_sql("summary")
            # The history SQL filters by target and organization itself; only the
            # Summary's other filters (port, colour, product) need its target set.
            narrowed = any(filters.get(k) for k in ("port", "color", "product"))
            if not narrowed and not filters.get("target"):
                # the whole estate or one organization: one row per day and organization
                sql = web_sql("risk_days")
            else:
                where = (f"WHERE (h.target, h.ip) IN (SELECT target, ip FROM ({summary})) "
                         if narrowed else "")
                sql = (f"SELECT day, round(avg(risk_score), 1), max(risk_score), count() "
                       f"FROM ({history}) AS h {where}"
                       f"GROUP BY day ORDER BY day")
            params = bind_parameters(sql, {**filters, "days": days})
            return [RiskPoint(r[0], float(r[1]), float(r[2]), int(r[3]))
                    for r in self.store.query(sql, params)]

        return self._cached(("history", tuple(sorted(filters.items())), days), compute)

    def organizations(self) -> list[str]:
        def compute() -> list[str]:
            return [str(r[0]) for r in self.store.query(web_sql("organizations"))]

        return self._cached(("organizations",), compute)
