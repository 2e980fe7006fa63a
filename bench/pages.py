"""Benchmark of the report pages at estate scale (``python -m bench.pages``).

Builds (or reuses, ``--store``) a synthetic store of ``--hosts`` hosts x ``--days`` daily
scans through the real store API and change recorder (``bench.history.record_day``: the
findings, host scans, TLS tables, ``host_state`` / ``port_state``), plus the Internet prior
from the user's nmap-services and a few accepted risks, so every join of the report SQL
has rows to join. Then times each page's SQL uncached at the store (median of
``--repeats``), the current SQL of ``schemas/reports/`` against the SQL of ``--baseline``
(a git revision) interleaved, so the machine's load hits both alike, and checks that
both return the same rows.

Owns: the page list and the timing. Touches no network except the recorder's bounded
closure re-probes of the synthetic loopback addresses (127.2.0.0 upwards).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PageQuery:
    label: str
    report: str
    filters: Mapping[str, Any]
    limit: int = 50
    offset: int = 0
    web_summary: bool = False  # the web's Summary page: rows + window totals, one query


PAGES = (
    PageQuery("Summary (top 50 by risk)", "summary", {}),
    PageQuery("Summary, web page with totals", "summary", {}, web_summary=True),
    PageQuery("Summary, org filter", "summary", {"org": "Globex"}),
    PageQuery("List (first 50)", "list", {}),
    PageQuery("List, red ports (first 50)", "list", {"color": "red"}),
    PageQuery("List, sorted by risk desc", "list", {"sort": "risk", "direction": "desc"}),
    PageQuery("List, sorted by prevalence", "list", {"sort": "prevalence"}),
    PageQuery("List, page 1000 (offset 49,950)", "list", {}, offset=49_950),
    PageQuery("List, product drill-down", "list", {"product": "nginx", "version": "1.24.0"}),
    PageQuery("List, history", "list", {"history": 1}),
    # --target by a host's address, by its asset (its name now: a set of hosts), a prefix
    PageQuery("List, --target an address", "list", {"target": "127.2.0.77"}),
    PageQuery("List, --target an asset", "list", {"target": "a000077"}),
    PageQuery("List, --target a prefix", "list", {"target": "127.2."}),
    PageQuery("Products, --target a prefix", "products", {"target": "127.2."}),
    PageQuery("Ciphers (first 50)", "ciphers", {}),
    PageQuery("Ciphers, org filter", "ciphers", {"org": "Acme Ltd"}),
)


def build(url: str, hosts: int, days: int, seed: int) -> None:
    """The synthetic store: ``days`` daily scans of ``hosts`` hosts (bench.history's
    generator and the real recorder), the Internet prior, and some accepted risks."""
    from bench.history import evolve, record_day, synthetic_hosts
    from portwatch.alerts.accepted import accept
    from stream_processors.store import Store

    rng = random.Random(seed)
    lives = synthetic_hosts(hosts)
    now = datetime.now(UTC).replace(microsecond=0, second=0, minute=0)
    begin = time.perf_counter()
    with Store.from_url(url) as db:
        for day in range(days):
            evolve(lives, rng, 3, first=day == 0)
            record_day(db, lives, f"day-{day:03d}", now - timedelta(days=days - 1 - day))
            print(f"  built day {day + 1}/{days} ({time.perf_counter() - begin:.0f}s)",
                  file=sys.stderr, flush=True)
        try:
            from stream_processors.prevalence_prior import prior_rows

            db.load_internet_prior(*prior_rows())
        except Exception as exc:  # noqa: BLE001 - the bench runs without nmap-services too
            print(f"  no Internet prior: {exc}", file=sys.stderr)
        # accepted risks: every 500th host's first port, every 2,000th host whole
        for i, life in enumerate(lives):
            if i % 500 == 0 and life.ports:
                accept(db, life.target.ip, "tcp", min(life.ports), note="bench", by="bench",
                       until=None, now=now)
            if i % 2000 == 1:
                accept(db, life.target.ip, "tcp", 0, note="bench host", by="bench",
                       until=None, now=now)
    print(f"  store built in {time.perf_counter() - begin:.0f}s", file=sys.stderr)


def baseline_sql(revision: str, report: str) -> str:
    """A report's SQL as ``revision`` had it, expanded as schemas expands the current one."""
    from schemas import expand_macros

    text = subprocess.run(["git", "show", f"{revision}:schemas/reports/{report}.sql"],
                          cwd=REPO, check=True, capture_output=True, text=True).stdout
    return expand_macros(text)


SUMMARY_TOTALS = ("count()", "sum(open_ports)", "sum(red)", "sum(yellow)", "sum(green)",
                  "sum(cdn_expected)")


def runner(db: Any, page: PageQuery, sql: str, *, baseline: bool = False
           ) -> Callable[[], list[tuple[Any, ...]]]:
    """The page's query (or queries) as a callable returning comparable rows. The web's
    Summary page: before, the Summary SQL with no limit wrapped in window aggregates
    (rows and totals in one query); now, the page and its totals from the first phase
    (portwatch/web/service.py summary_page)."""
    from schemas import bind_parameters, report_page_sql

    if not page.web_summary:
        params = bind_parameters(sql, page.filters, limit=page.limit, offset=page.offset)
        return lambda: db.query(sql, params)
    totals = ", ".join(f"{agg} OVER ()" for agg in SUMMARY_TOTALS)
    if baseline:
        wrapped = (f"SELECT *, {totals} FROM ({sql}) ORDER BY risk_score DESC, target, ip "
                   "LIMIT {page_limit:UInt64} OFFSET {page_offset:UInt64}")
        params = bind_parameters(sql, page.filters)
        params.update(page_limit=page.limit, page_offset=page.offset)
        return lambda: db.query(wrapped, params)
    sums = report_page_sql("summary", f"SELECT {', '.join(SUMMARY_TOTALS)} FROM page")
    assert sums is not None
    rows_params = bind_parameters(sql, page.filters, limit=page.limit, offset=page.offset)
    sums_params = bind_parameters(sums, page.filters)

    def both() -> list[tuple[Any, ...]]:
        rows = db.query(sql, rows_params)
        total = db.query(sums, sums_params)[0]
        return [(*r, *total) for r in rows]

    return both


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--store", default="", help="a directory: built once, then reused")
    parser.add_argument("--baseline", default="main",
                        help="git revision whose report SQL is the 'before' ('' = none)")
    parser.add_argument("--only", default="", help="time only pages whose label has this")
    args = parser.parse_args(argv)
    from schemas import report_sql
    from stream_processors.store import Store

    path = Path(args.store or tempfile.mkdtemp(prefix="portwatch-bench-pages-"))
    url = f"chdb://{path}"
    if not (path / "built").exists():
        build(url, args.hosts, args.days, args.seed)
        (path / "built").write_text(f"{args.hosts} hosts x {args.days} days\n")
    with Store.from_url(url) as db:
        current = db.query("SELECT count() FROM current_findings")[0][0]
        hosts = db.query("SELECT count() FROM latest_host_scans")[0][0]
        print(f"store {path}: {hosts:,} hosts, {current:,} current findings; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        print("\n| page query (uncached, at the store) | before ms | after ms | ratio "
              "| rows equal | under 500 ms |")
        print("| --- | ---: | ---: | ---: | --- | --- |")
        for page in PAGES:
            if args.only and args.only.lower() not in page.label.lower():
                continue
            new = runner(db, page, report_sql(page.report))
            old = runner(db, page, baseline_sql(args.baseline, page.report), baseline=True) \
                if args.baseline else None
            before, after = [], []
            new_rows = new()
            old_rows = old() if old else new_rows
            same = "yes" if old_rows == new_rows else "NO"
            if same == "NO" and old and page.offset:
                # the old List SQL's deep pages disagree with its own unlimited result
                # (ClickHouse's plan of its joins before ORDER BY ... LIMIT OFFSET): judge
                # the page against that result's slice
                whole = runner(db, replace(page, limit=0, offset=0),
                               baseline_sql(args.baseline, page.report), baseline=True)()
                if new_rows == whole[page.offset:page.offset + page.limit]:
                    same = "yes (old page wrong)"
            for _ in range(args.repeats):
                for fn, samples in ((old, before), (new, after)):
                    if fn is None:
                        continue
                    begin = time.perf_counter()
                    fn()
                    samples.append((time.perf_counter() - begin) * 1000)
            a = statistics.median(after)
            b = statistics.median(before) if before else float("nan")
            print(f"| {page.label} | {b:.0f} | {a:.0f} | {b / a:.1f}x | "
                  f"{same} ({len(new_rows)}) | "
                  f"{'yes' if a < 500 else 'no'} |", flush=True)
        print(f"\nload average at the end {os.getloadavg()[0]:.1f} "
              f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
