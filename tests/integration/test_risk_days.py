"""The risk chart's rows (scan_scores, risk_days) kept by risk_days.refresh_risk_days
on the real store (chdb): what the chart shows equals the Summary's formula over each
address's last scan of the day, and a refresh only reads what was stored since the last.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import web_sql
from schemas.records import Finding, HostScan, OpenPort, RiskColor, ServiceInfo, Target
from stream_processors.risk_days import refresh_risk_days

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
# A past moment with hours of its own day before it: the tests that scan "2 hours and
# 1 hour before" a day's last scan use it (at NOW, a run between 00:00 and 02:00 UTC put
# those scans on the day before, and the chart had one day less)
MIDDAY = (NOW - DAY).replace(hour=12, minute=0, second=0)
WEB = Target(ip="127.0.0.91", target="web.example.test", organization="Example Corp")
DB = Target(ip="127.0.0.92", target="db.example.test", organization="Example Corp")


def scanned(store: Any, t: Target, scan_id: str, at: datetime,
            colors: tuple[RiskColor, ...]) -> None:
    store.insert_findings([
        Finding(port=OpenPort(scan_id=scan_id, target=t, port=1000 + i, observed_at=at),
                service=ServiceInfo(service="x"), risk_color=color)
        for i, color in enumerate(colors)])
    store.insert_host_scans([HostScan(scan_id, t, at, at, 65535, len(colors))])


def chart(store: Any, org: str = "") -> list[tuple[Any, ...]]:
    """The Summary page's chart of the estate (or one organization): (day, average,
    worst, addresses)."""
    return [tuple(r) for r in store.query(web_sql("risk_days"), {"days": 0, "org": org})]


def test_the_chart_is_each_addresss_last_scan_of_the_day_after_a_refresh(store: Any) -> None:
    # Given yesterday's scans of two addresses (red + green: 24.0; green: 2.5), and today
    # two scans of the web server, the later one finding one green port only
    yesterday, today = MIDDAY - DAY, MIDDAY
    scanned(store, WEB, "d1", yesterday, (RiskColor.RED, RiskColor.GREEN))
    scanned(store, DB, "d1", yesterday, (RiskColor.GREEN,))
    scanned(store, WEB, "d2a", today - timedelta(hours=2), (RiskColor.RED, RiskColor.RED))
    scanned(store, WEB, "d2b", today - timedelta(hours=1), (RiskColor.GREEN,))
    # Then nothing is in the chart before a refresh (the page only reads its rows)
    assert chart(store) == []
    # When the rows are brought up to date (a scan's end does it)
    assert refresh_risk_days(store) is True
    # Then yesterday is the average and the worst of both addresses, and today the web
    # server's last scan only (2.5, not 39.3 from the earlier scan)
    assert chart(store) == [(yesterday.date(), 13.2, 24.0, 2), (today.date(), 2.5, 2.5, 1)]
    # And a second refresh has nothing to do, and changes nothing
    assert store.query("SELECT count() FROM risk_dirty") == [(0,)]
    assert refresh_risk_days(store) is False
    assert chart(store)[-1] == (today.date(), 2.5, 2.5, 1)
    # And a scan stored later the same day enters at the next refresh
    scanned(store, DB, "d2c", today, (RiskColor.YELLOW,))
    refresh_risk_days(store)
    assert chart(store)[-1] == (today.date(), 4.8, 7.2, 2)


def test_an_address_that_moves_to_another_organization_leaves_the_old_ones_chart(
        store: Any) -> None:
    # Given the web server scanned today for Example Corp, and the chart refreshed
    scanned(store, WEB, "s1", MIDDAY - timedelta(hours=2), (RiskColor.RED,))
    refresh_risk_days(store)
    assert chart(store, "example corp") == [(MIDDAY.date(), 22.1, 22.1, 1)]
    # When a later scan today files it under another organization (an edited inventory)
    moved = Target(ip=WEB.ip, target=WEB.target, organization="Globex")
    scanned(store, moved, "s2", MIDDAY - timedelta(hours=1), (RiskColor.RED,))
    refresh_risk_days(store)
    # Then today counts it once, for Globex only
    assert chart(store, "Example Corp") == []
    assert chart(store, "GLOBEX") == [(MIDDAY.date(), 22.1, 22.1, 1)]
    assert chart(store) == [(MIDDAY.date(), 22.1, 22.1, 1)]


def test_the_web_brings_the_rows_up_to_date_before_it_serves(store: Any) -> None:
    from portwatch.web.cli import web_app
    from portwatch.web.service import ReportService

    # Given a scan stored and never refreshed (stopped by Ctrl-C before its end)
    scanned(store, DB, "s1", NOW, (RiskColor.RED, RiskColor.YELLOW))
    # When the web app is made over the store (`serve`, `process --serve`)
    web_app(store, "127.0.0.1", "")
    # Then its chart has the scan's day
    [point] = ReportService(store, use_cache=False).risk_history({}, days=90)
    assert (point.day, point.average, point.worst, point.targets) == (NOW.date(), 27.7, 27.7, 1)


def test_a_finding_stored_after_a_refresh_has_its_scan_computed_again(store: Any) -> None:
    # Given a host's scan record and one of its findings stored and refreshed (the sink
    # stores a host's findings and its record in any order)
    scanned(store, WEB, "s1", NOW, (RiskColor.GREEN,))
    refresh_risk_days(store)
    assert chart(store) == [(NOW.date(), 2.5, 2.5, 1)]
    # When another finding of that scan is stored later
    store.insert_findings([Finding(
        port=OpenPort(scan_id="s1", target=WEB, port=6379, observed_at=NOW),
        service=ServiceInfo(service="redis"), risk_color=RiskColor.RED)])
    # Then the next refresh computes the scan again: both ports
    assert refresh_risk_days(store) is True
    assert chart(store) == [(NOW.date(), 24.0, 24.0, 1)]


def test_a_scan_whose_last_shard_ends_the_next_day_moves_to_that_day(store: Any) -> None:
    # Given a host scanned yesterday with nothing open (0.0), then a scan whose first
    # shard ended yesterday at 23:59 with a red port, refreshed then (the sink's hold
    # emptied), and whose second shard ends today at 00:02 with a green one
    midnight = NOW.replace(hour=0, minute=0, second=0)
    store.insert_host_scans([HostScan("s0", WEB, midnight - timedelta(hours=12),
                                      midnight - timedelta(hours=12), 65535, 0)])
    first, second = midnight - timedelta(minutes=1), midnight + timedelta(minutes=2)

    def shard(n: int, at: datetime, port: int, color: RiskColor) -> None:
        store.insert_findings([Finding(port=OpenPort(scan_id="s1", target=WEB, port=port,
                                                     observed_at=at),
                                       service=ServiceInfo(service="x"), risk_color=color)])
        store.insert_host_scans([HostScan("s1", WEB, at, at, 1, 1, shard_id=f"s1:{n}")])

    shard(0, first, 6379, RiskColor.RED)
    refresh_risk_days(store)
    assert chart(store) == [(first.date(), 22.1, 22.1, 1)]
    shard(1, second, 80, RiskColor.GREEN)
    # When the next refresh runs
    refresh_risk_days(store)
    # Then the scan counts on the day its last shard ended, with both ports, and the day
    # it left is its last scan there again (the old per-view chart's answer)
    assert chart(store) == [(first.date(), 0.0, 0.0, 1), (second.date(), 24.0, 24.0, 1)]


def test_a_port_both_seen_and_carried_by_one_scan_counts_once(store: Any) -> None:
    from schemas import history_sql
    from stream_processors.history import CARRIED_COLUMNS

    # Given a scan that saw a red port, and whose other shard's comparison carried that
    # same port (a host's shards compared one at a time carry each other's ports)
    scanned(store, DB, "s1", NOW, (RiskColor.RED,))
    store.insert_rows("carried_history", CARRIED_COLUMNS,
                      [[DB.target, DB.ip, "tcp", 1000, "s1", NOW]])
    # Then its score counts the port once, in the per-target page and in the chart
    [row] = store.select("scores", history_sql("target_scores"),
                         {"target": DB.target, "ip": DB.ip}).dicts()
    assert (row["open_ports"], row["red"], row["risk_score"]) == (1, 1, 22.1)
    refresh_risk_days(store)
    assert chart(store) == [(NOW.date(), 22.1, 22.1, 1)]


def test_a_refresh_that_read_its_days_before_another_forgot_them_still_writes_them(
        store: Any) -> None:
    """Two refreshes at once on one ClickHouse server (a sink and a web app: two
    processes). R2 read its days, wrote their zero rows; meanwhile R1 computed the same
    day and forgot the notes; then R2 writes the day's rows from the days it read, never
    from the notes R1 forgot (before: nothing, and R2's zero rows hid the day for good)."""
    from stream_processors.risk_days import _DAY_ROWS, _ZERO_DAYS

    scanned(store, WEB, "s1", NOW, (RiskColor.RED,))
    refresh_risk_days(store)  # R1, whole: the notes are forgotten
    later = {"days": [NOW.date()], "at": NOW + timedelta(hours=1)}
    store.command(_ZERO_DAYS, later)  # R2's zero rows, newer than R1's
    assert chart(store) == []
    store.command(_DAY_ROWS, later)  # R2's day rows
    assert chart(store) == [(NOW.date(), 22.1, 22.1, 1)]


def test_a_refresh_that_fails_is_one_warning_and_never_fails_the_scans_end(
        store: Any, caplog: Any) -> None:
    import logging

    # Given a scan stored, and a store that refuses the refresh (its day table renamed
    # away: a real engine error, as a missing grant or a memory limit would be)
    scanned(store, WEB, "s1", NOW, (RiskColor.RED,))
    store.command("RENAME TABLE risk_days TO risk_days_away")
    try:
        # When a scan's end merges the page indexes (which refreshes the chart's rows)
        with caplog.at_level(logging.WARNING, logger="stream_processors.store"):
            store.compact_page_indexes()
        # Then it returns, and says why in one line; the notes wait for the next refresh
        [record] = [r for r in caplog.records if "risk chart" in r.getMessage()]
        assert "\n" not in record.getMessage() and "risk_days" in record.getMessage()
        assert store.query("SELECT count() > 0 FROM risk_dirty") == [(1,)]
    finally:
        store.command("RENAME TABLE risk_days_away TO risk_days")
    # And the next refresh computes it
    store.refresh_risk_rows()
    assert chart(store) == [(NOW.date(), 22.1, 22.1, 1)]


def test_a_scan_that_moves_across_a_month_leaves_no_row_in_the_old_month(store: Any) -> None:
    # Given a scan whose first shard ended on 31 January, refreshed then, and whose second
    # ended on 1 February (the rows' monthly partitions differ: a merge never joins them)
    first = datetime(2026, 1, 31, 23, 59, tzinfo=UTC)
    second = datetime(2026, 2, 1, 0, 2, tzinfo=UTC)
    scanned(store, WEB, "s1", first, (RiskColor.RED,))
    refresh_risk_days(store)
    store.insert_host_scans([HostScan("s1", WEB, second, second, 1, 0, shard_id="s1:1")])
    refresh_risk_days(store)
    store.command("OPTIMIZE TABLE scan_scores FINAL")
    # Then the scan is on 1 February only, in the chart and in the table itself
    assert chart(store) == [(second.date(), 22.1, 22.1, 1)]
    assert store.query("SELECT day FROM scan_scores FINAL") == [(second.date(),)]


def test_a_target_filter_shows_the_whole_history_of_the_hosts_it_names_now(
        store: Any) -> None:
    from portwatch.web.service import ReportService

    # Given a host named old.example.test yesterday and new.example.test today
    before = Target(ip="127.0.0.93", target="127.0.0.93", hostname="old.example.test")
    after = Target(ip="127.0.0.93", target="127.0.0.93", hostname="new.example.test")
    scanned(store, before, "s1", NOW - DAY, (RiskColor.RED,))
    scanned(store, after, "s2", NOW, (RiskColor.GREEN,))
    refresh_risk_days(store)
    service = ReportService(store, use_cache=False)
    # Then its name now finds both days, as the Summary finds the host; the old name none
    assert [(p.day, p.worst) for p in service.risk_history({"target": "new.example.test"})] \
        == [((NOW - DAY).date(), 22.1), (NOW.date(), 2.5)]
    assert service.risk_history({"target": "old.example.test"}) == []


def test_prune_computes_the_score_rows_of_scans_not_refreshed_before_deleting_them(
        store: Any) -> None:
    from schemas import history_sql
    from stream_processors.change_log import prune

    # Given two scans of a host never refreshed (stopped scans: their rows are computed
    # at a later scan's end or a web start), the older one seeing a red port
    older, newer = MIDDAY - 3 * DAY, MIDDAY - 2 * DAY
    scanned(store, WEB, "s1", older, (RiskColor.RED,))
    scanned(store, WEB, "s2", newer, (RiskColor.GREEN,))
    # When the raw rows of scans older than a day are pruned (the newer one is kept: the
    # host's latest)
    prune(store, DAY)
    assert store.query("SELECT DISTINCT scan_id FROM port_observations") == [("s2",)]
    # Then the older scan keeps its point in the host's score after every scan (its raw
    # rows went before its row was computed, and its point was lost: a review)
    scores = store.select("scores", history_sql("target_scores"),
                          {"target": WEB.target, "ip": WEB.ip}).dicts()
    assert [(r["scan_id"], r["risk_score"]) for r in scores] == [("s1", 22.1), ("s2", 2.5)]
    assert chart(store) == [(older.date(), 22.1, 22.1, 1), (newer.date(), 2.5, 2.5, 1)]
