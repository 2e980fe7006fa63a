"""Rule matching (a table of events against criteria) and schedule semantics with an
injected clock: due, missed (one catch-up), overlapping entries run one after another."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from portwatch.alerts.config import Match, PortSpan
from portwatch.alerts.rules import matches, prevalence_bucket
from portwatch.alerts.scanning import ScanOutcome
from portwatch.alerts.schedule import ScheduleEntry, decide, last_slots, plan, record_run
from portwatch.alerts.watch import Watcher
from schemas.records import ChangeEvent, ChangeKind, Proto, Severity, Target


def ev(kind: ChangeKind = ChangeKind.OPENED, *, port: int = 6379, ip: str = "10.1.2.3",
       target: str = "", org: str = "Example Corp", color: str = "red",
       severity: Severity = Severity.HIGH, proto: Proto = Proto.TCP,
       hostname: str = "") -> ChangeEvent:
    return ChangeEvent(kind=kind, severity=severity,
                       target=Target(ip=ip, target=target or ip, organization=org,
                                     hostname=hostname),
                       scan_id="s2", port=port, proto=proto, risk_color=color)


CASES: list[tuple[Match, ChangeEvent, str, bool]] = [
    (Match(), ev(), "", True),
    (Match(kinds=frozenset({ChangeKind.OPENED})), ev(ChangeKind.CLOSED), "", False),
    (Match(severity_min=Severity.HIGH), ev(severity=Severity.CRITICAL), "", True),
    (Match(severity_min=Severity.HIGH), ev(severity=Severity.MEDIUM), "", False),
    (Match(severities=frozenset({Severity.LOW})), ev(severity=Severity.HIGH), "", False),
    (Match(colors=frozenset({"red"})), ev(color="RED"), "", True),
    (Match(colors=frozenset({"red"})), ev(color="yellow"), "", False),
    (Match(organizations=frozenset({"example corp"})), ev(org="EXAMPLE Corp "), "", True),
    (Match(organizations=frozenset({"example corp"})), ev(org="Other"), "", False),
    (Match(target_names=frozenset({"db.example.org"})),
     ev(target="DB.example.org"), "", True),
    (Match(target_names=frozenset({"db.example.org"})),
     ev(hostname="db.example.org"), "", True),
    (Match(target_networks=(__import__("ipaddress").ip_network("10.0.0.0/8"),)),
     ev(ip="10.200.0.1"), "", True),
    (Match(target_networks=(__import__("ipaddress").ip_network("10.0.0.0/8"),)),
     ev(ip="192.0.2.1"), "", False),
    (Match(target_networks=(__import__("ipaddress").ip_network("10.0.0.0/8"),)),
     ev(ip="::1"), "", False),
    (Match(ports=(PortSpan(8000, 8100),)), ev(port=8080), "", True),
    (Match(ports=(PortSpan(8000, 8100),)), ev(port=8101), "", False),
    (Match(protos=frozenset({"udp"})), ev(proto=Proto.TCP), "", False),
    (Match(prevalence=frozenset({"rare"})), ev(), "rare", True),
    (Match(prevalence=frozenset({"rare"})), ev(), "very common", False),
    (Match(prevalence=frozenset({"rare"})), ev(ChangeKind.HOST_UNREACHABLE, port=0), "",
     False),
]


@pytest.mark.parametrize(("match", "event", "bucket", "expected"), CASES)
def test_rule_matching(match: Match, event: ChangeEvent, bucket: str, expected: bool) -> None:
    assert matches(match, event, bucket) is expected


def test_prevalence_buckets_follow_the_list_report() -> None:
    assert [prevalence_bucket(n) for n in (0, 49, 50, 499, 500, 3000, 3001)] == [
        "rare", "rare", "less common", "less common", "somewhat common", "somewhat common",
        "very common"]


# -- schedule semantics ---------------------------------------------------------------------

HOURLY = ScheduleEntry("hourly", "0 * * * *", targets=("127.0.0.1",))
NIGHTLY = ScheduleEntry("nightly", "30 2 * * *", targets=("127.0.0.1",))
T = datetime(2026, 12, 1, 10, 15, tzinfo=UTC)


def test_an_entry_that_never_ran_is_due_at_once() -> None:
    d = decide(HOURLY, None, T)
    assert d.is_due and d.slot == T and d.missed == 0


def test_not_due_until_the_next_slot() -> None:
    d = decide(HOURLY, datetime(2026, 12, 1, 10, 0, tzinfo=UTC), T)
    assert not d.is_due
    assert d.next_run == datetime(2026, 12, 1, 11, 0, tzinfo=UTC)


def test_due_exactly_at_the_slot() -> None:
    d = decide(HOURLY, datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
               datetime(2026, 12, 1, 11, 0, tzinfo=UTC))
    assert d.is_due and d.slot == datetime(2026, 12, 1, 11, 0, tzinfo=UTC) and d.missed == 0


def test_missed_slots_give_one_catch_up_and_are_counted() -> None:
    # last ran at 03:00; down until 10:15: slots 04..09 were missed, 10:00 runs now
    d = decide(HOURLY, datetime(2026, 12, 1, 3, 0, tzinfo=UTC), T)
    assert d.is_due and d.slot == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert d.missed == 6
    # and after that run is recorded, nothing more is due until 11:00
    assert not decide(HOURLY, d.slot, T + timedelta(minutes=30)).is_due


def test_plan_is_in_name_order() -> None:
    decisions = plan([NIGHTLY, HOURLY], {}, T)
    assert [d.entry.name for d in decisions] == ["hourly", "nightly"]


def ran_before(store: Any, entry: str, slot: datetime) -> None:
    """A completed run of ``entry`` for ``slot`` in the real ledger (watch_runs, chdb)."""
    record_run(store, entry, slot, slot, slot, f"before-{entry}", "completed")


@dataclass
class Stats:
    scan_id: str
    interrupted: bool = False


def test_overlapping_entries_never_scan_the_same_target_at_once(store: Any) -> None:
    # Given two entries on the same target, both due at 11:00, and a clock that moves
    # while a scan runs (each scan "takes" 20 minutes of the injected clock)
    now = [datetime(2026, 12, 1, 11, 0, tzinfo=UTC)]
    active: set[str] = set()
    timeline: list[tuple[str, str, datetime]] = []
    ran_before(store, "hourly", datetime(2026, 12, 1, 10, 0, tzinfo=UTC))
    ran_before(store, "every-20", datetime(2026, 12, 1, 10, 40, tzinfo=UTC))
    every20 = ScheduleEntry("every-20", "*/20 * * * *", targets=("127.0.0.1",))

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        overlapping = set(entry.targets) & {t for name in active for t in
                                            {"hourly": HOURLY, "every-20": every20}[name].targets}
        assert not overlapping, f"{entry.name} overlaps {active}"
        active.add(entry.name)
        timeline.append(("start", entry.name, now[0]))
        await asyncio.sleep(0)
        now[0] += timedelta(minutes=20)
        timeline.append(("end", entry.name, now[0]))
        active.discard(entry.name)
        return ScanOutcome(Stats(f"scan-{entry.name}"), [])

    lines: list[str] = []
    watcher = Watcher(store, [HOURLY, every20], scan, None, clock=lambda: now[0],
                      say=lines.append)
    # When the watcher runs what is due
    records = asyncio.run(watcher.run_once())
    # Then they ran one after another, in name order, each for its own slot
    assert [(r.entry, r.slot.strftime("%H:%M")) for r in records] == [
        ("every-20", "11:00"), ("hourly", "11:00")]
    assert [t[:2] for t in timeline] == [("start", "every-20"), ("end", "every-20"),
                                         ("start", "hourly"), ("end", "hourly")]
    # And a second pass at 11:40: every-20's 11:20 slot passed during the runs -> one
    # catch-up run for 11:40 (11:20 counted as missed, while the watcher was busy);
    # hourly, decided when its turn comes (12:00, after that run), runs for 12:00
    records = asyncio.run(watcher.run_once())
    assert [(r.entry, r.slot.strftime("%H:%M"), r.missed) for r in records] == [
        ("every-20", "11:40", 1), ("hourly", "12:00", 0)]
    assert "watch: every-20 missed 1 run(s) while other entries were scanning; catching " \
        "up with one run now" in lines


def catch_up_lines(store: Any, entries: list[ScheduleEntry], start: datetime,
                   minutes: dict[str, int], jump: datetime | None = None,
                   passes: int = 2) -> list[str]:
    """The catch-up lines of a real ``Watcher`` over ``entries``, on an injected clock
    from ``start``: each scan takes its entry's ``minutes`` (1 by default); ``passes`` of
    what is due, with the clock set to ``jump`` before the second when given."""
    now = [start]

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        now[0] += timedelta(minutes=minutes.get(entry.name, 1))
        return ScanOutcome(Stats(f"scan-{entry.name}"), [])

    lines: list[str] = []
    watcher = Watcher(store, entries, scan, None, clock=lambda: now[0], say=lines.append)
    for done in range(passes):
        if done and jump is not None:
            now[0] = jump
        asyncio.run(watcher.run_once())
    return [line for line in lines if "missed" in line]


EVERY_20 = ScheduleEntry("every-20", "*/20 * * * *", targets=("127.0.0.1",))


@pytest.mark.parametrize(("minutes", "hourly_minutes", "why"), [
    (45, 5, "while its previous run was still scanning"),
    (25, 40, "while its previous run was still scanning, then other entries were scanning"),
], ids=["own-run", "own-run-then-others"])
def test_the_catch_up_line_says_whose_scan_took_the_missed_slots(
        store: Any, minutes: int, hourly_minutes: int, why: str) -> None:
    # Given an every-20 entry whose own scan takes ``minutes`` of the injected clock, and
    # an hourly one that takes ``hourly_minutes`` (both due at 11:00; every-20 first)
    ran_before(store, "hourly", datetime(2026, 12, 1, 10, 0, tzinfo=UTC))
    ran_before(store, "every-20", datetime(2026, 12, 1, 10, 40, tzinfo=UTC))
    hourly = ScheduleEntry("hourly", "0 * * * *", targets=("127.0.0.2",))
    # When every-20 comes round again with slots missed during the runs
    said = catch_up_lines(store, [hourly, EVERY_20], datetime(2026, 12, 1, 11, 0, tzinfo=UTC),
                          {"every-20": minutes, "hourly": hourly_minutes})
    # Then the line blames its own long run (alone: 11:20 and 11:40 passed while it
    # scanned to 11:45), or its run and then hourly's (11:20 while it scanned to 11:25,
    # 11:40 while hourly did), never other entries alone (a review)
    assert len(said) == 1 and f" {why}; catching up with one run now" in said[0], said


@pytest.mark.parametrize(("minutes", "others", "why"), [
    (1, False, "while this watcher could not run it"),
    (25, False, "while its previous run was still scanning, then this watcher could not "
                "run it"),
    (1, True, "while this watcher could not run it"),
], ids=["asleep", "own-run-then-asleep", "asleep-beside-an-entry-not-due"])
def test_a_catch_up_line_blames_no_entry_that_did_not_run(
        store: Any, minutes: int, others: bool, why: str) -> None:
    # Given an every-20 entry that ran at 11:00 in this watcher (``minutes`` long), maybe
    # beside a daily entry not due, then a clock that jumps to 13:05 (a machine asleep)
    ran_before(store, "lone", datetime(2026, 12, 1, 10, 40, tzinfo=UTC))
    ran_before(store, "daily", datetime(2026, 12, 1, 3, 0, tzinfo=UTC))
    lone = ScheduleEntry("lone", "*/20 * * * *", targets=("127.0.0.1",))
    daily = ScheduleEntry("daily", "0 3 * * *", targets=("127.0.0.2",))
    said = catch_up_lines(store, [lone, daily] if others else [lone],
                          datetime(2026, 12, 1, 11, 0, tzinfo=UTC), {"lone": minutes},
                          jump=datetime(2026, 12, 1, 13, 5, tzinfo=UTC))
    # Then the line blames what each missed slot fell into: no other entry ran (it said
    # "other entries were scanning" with none, or none running: reviews)
    assert said == [f"watch: lone missed 5 run(s) {why}; catching up with one run now"]


def test_a_catch_up_line_names_downtime_then_other_entries_and_judges_every_slot(
        store: Any) -> None:
    # Given b (every 20) last run at 10:40 and a (hourly) at 10:00, a watcher that starts
    # at 11:05 and runs a for 65 minutes first; and m (every minute) beside an hourly one,
    # both run at 00:00, then a jump to 17:00 (asleep) and the hourly's 30-minute run
    ran_before(store, "a", datetime(2026, 12, 1, 10, 0, tzinfo=UTC))
    ran_before(store, "b", datetime(2026, 12, 1, 10, 40, tzinfo=UTC))
    first = catch_up_lines(store, [ScheduleEntry("a", "0 * * * *", targets=("127.0.0.1",)),
                                   ScheduleEntry("b", "*/20 * * * *", targets=("127.0.0.2",))],
                           datetime(2026, 12, 1, 11, 5, tzinfo=UTC), {"a": 65}, passes=1)
    ran_before(store, "m", datetime(2026, 12, 2, 0, 0, tzinfo=UTC))
    ran_before(store, "h", datetime(2026, 12, 2, 0, 0, tzinfo=UTC))
    second = catch_up_lines(store, [ScheduleEntry("h", "0 * * * *", targets=("127.0.0.3",)),
                                    ScheduleEntry("m", "* * * * *", targets=("127.0.0.4",))],
                            datetime(2026, 12, 2, 0, 0, 30, tzinfo=UTC), {"h": 30},
                            jump=datetime(2026, 12, 2, 17, 0, tzinfo=UTC))
    # Then b's 11:00 fell before the start, 11:20 and 11:40 into a's run (the line said
    # "not running" for all: a review)
    assert first == ["watch: b missed 3 run(s) while portwatch was not running, then other "
                     "entries were scanning; catching up with one run now"]
    # And m's 1,000-odd sleeping slots do not hide the last ones, in h's run (a review)
    assert second == [
        "watch: h missed 16 run(s) while this watcher could not run it; catching up with "
        "one run now",
        "watch: m missed 1049 run(s) while this watcher could not run it, then other "
        "entries were scanning; catching up with one run now"]


def test_an_interrupted_run_stops_the_watcher_and_is_run_again_next_time(store: Any) -> None:
    now = [datetime(2026, 12, 1, 11, 0, tzinfo=UTC)]
    calls: list[str] = []

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        calls.append(entry.name)
        return ScanOutcome(Stats("s", interrupted=len(calls) == 1), [])

    watcher = Watcher(store, [HOURLY, NIGHTLY], scan, None, clock=lambda: now[0],
                      say=lambda _line: None)
    records = asyncio.run(watcher.run_once())
    assert [r.status for r in records] == ["interrupted"] and watcher.is_stopping
    # the ledger keeps the interrupted run, and last_slots does not count it as run
    assert store.query("SELECT entry, status FROM watch_runs FINAL") == [
        ("hourly", "interrupted")]
    assert last_slots(store) == {}
    restarted = Watcher(store, [HOURLY, NIGHTLY], scan, None, clock=lambda: now[0],
                        say=lambda _line: None)
    assert [r.entry for r in asyncio.run(restarted.run_once())] == ["hourly", "nightly"]


def test_run_forever_waits_for_the_next_slot_with_the_injected_sleep(store: Any) -> None:
    now = [datetime(2026, 12, 1, 10, 59, tzinfo=UTC)]
    ran_before(store, "hourly", datetime(2026, 12, 1, 10, 0, tzinfo=UTC))
    ran: list[datetime] = []
    stop = asyncio.Event()

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        ran.append(now[0])
        if len(ran) == 2:
            stop.set()
        return ScanOutcome(Stats("s"), [])

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += timedelta(seconds=seconds)

    watcher = Watcher(store, [HOURLY], scan, None, clock=lambda: now[0],
                      say=lambda _line: None)
    asyncio.run(watcher.run_forever(stop, sleep=sleep))
    assert ran == [datetime(2026, 12, 1, 11, 0, tzinfo=UTC),
                   datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]
    # (the hour is waited in minutes: each wait ends with a look at the wall clock)
    assert waits == [60.0] * 61


def test_the_status_line_is_said_once_until_it_changes(store: Any) -> None:
    # Given an hourly entry that ran at 11:00, a watcher started at 11:10 (the CLI says
    # its status before the loop), then the loop with nothing due until 12:00
    now = [datetime(2026, 12, 1, 11, 10, tzinfo=UTC)]
    ran_before(store, "hourly", datetime(2026, 12, 1, 11, 0, tzinfo=UTC))
    lines: list[str] = []
    stop = asyncio.Event()

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        stop.set()
        return ScanOutcome(Stats("s"), [])

    async def sleep(seconds: float) -> None:
        now[0] += timedelta(seconds=seconds)

    watcher = Watcher(store, [HOURLY], scan, None, clock=lambda: now[0], say=lines.append)
    watcher.say_status()
    asyncio.run(watcher.run_forever(stop, sleep=sleep))
    # Then the status is said once before the 12:00 run (printed twice before: the CLI's
    # line, then the loop's same line), and the run's own lines follow
    status = [line for line in lines if line.startswith("watch: next run:")]
    assert status == ["watch: next run: hourly 2026-12-01 12:00 UTC"], lines


def until_the_first_scan(store: Any, now: list[datetime],
                         waited: Callable[[int, float], timedelta],
                         say: Callable[[str], None] = lambda _line: None,
                         ) -> tuple[list[datetime], list[float]]:
    """``run_forever`` of an hourly entry with an injected sleep, until its first scan:
    (when it scanned, each wait). ``waited(n, seconds)``: how far the clock moved during
    the n-th wait (may do something to the store first)."""
    ran: list[datetime] = []
    stop = asyncio.Event()

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        ran.append(now[0])
        stop.set()
        return ScanOutcome(Stats("s"), [])

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += waited(len(waits), seconds)

    watcher = Watcher(store, [HOURLY], scan, None, clock=lambda: now[0], say=say)
    asyncio.run(watcher.run_forever(stop, sleep=sleep))
    return ran, waits


def test_a_clock_jump_during_the_wait_runs_the_due_slot_within_a_minute(store: Any) -> None:
    # Given an hourly entry that just ran at 10:00, and a machine that sleeps (or whose
    # clock is stepped) 3 hours during the watcher's first wait: the wait's monotonic
    # timer does not see it
    now = [datetime(2026, 12, 1, 10, 0, 30, tzinfo=UTC)]
    ran_before(store, "hourly", datetime(2026, 12, 1, 10, 0, tzinfo=UTC))
    ran, waits = until_the_first_scan(
        store, now, lambda n, seconds: timedelta(hours=3) if n == 1 else
        timedelta(seconds=seconds))
    # Then the overdue slot runs after that one wait of at most a minute, not 59 minutes
    # of the old timer later
    assert waits == [60.0]
    assert ran == [datetime(2026, 12, 1, 13, 0, 30, tzinfo=UTC)]


def test_the_previous_slot_is_never_after_now() -> None:
    from portwatch.alerts.schedule import previous_slot

    # a fraction of a second before the hour, the slot is the hour before, not the next
    assert previous_slot(HOURLY, datetime(2026, 12, 1, 10, 59, 59, 400_000, tzinfo=UTC)) == \
        datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert previous_slot(HOURLY, datetime(2026, 12, 1, 11, 0, tzinfo=UTC)) == \
        datetime(2026, 12, 1, 11, 0, tzinfo=UTC)


def test_a_run_that_ends_just_before_the_hour_is_not_run_again_at_once(store: Any) -> None:
    # Given an hourly entry due at 10:59:59.4 (its 10:00 slot not run yet), whose scan
    # ends within that second
    now = [datetime(2026, 12, 1, 10, 59, 59, 400_000, tzinfo=UTC)]
    ran_before(store, "hourly", datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    ran: list[datetime] = []

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        ran.append(now[0])
        now[0] += timedelta(milliseconds=100)
        return ScanOutcome(Stats(f"s{len(ran)}"), [])

    watcher = Watcher(store, [HOURLY], scan, None, clock=lambda: now[0],
                      say=lambda _line: None)
    records = asyncio.run(watcher.run_once())
    # Then it ran once, for 10:00, and is not due again before 11:00 (before: recorded
    # for 11:00, "from the future", and run again at once, a dozen times a second)
    assert [r.slot for r in records] == [datetime(2026, 12, 1, 10, 0, tzinfo=UTC)]
    assert asyncio.run(watcher.run_once()) == []
    assert len(ran) == 1


def test_a_stop_between_entries_starts_no_further_entry(store: Any) -> None:
    # Given two due entries, and Ctrl-C/SIGTERM arriving while the first one's run ends
    now = [datetime(2026, 12, 1, 11, 0, tzinfo=UTC)]
    stop = asyncio.Event()
    ran: list[str] = []

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        ran.append(entry.name)
        stop.set()  # the CLI's signal handler, once the scan's own are removed
        return ScanOutcome(Stats("s"), [])

    watcher = Watcher(store, [HOURLY, NIGHTLY], scan, None, clock=lambda: now[0],
                      say=lambda _line: None, stop=stop)
    # When the watcher runs what is due; then the second entry never starts
    assert [r.entry for r in asyncio.run(watcher.run_once())] == ["hourly"]
    assert ran == ["hourly"]


def test_a_store_error_reading_the_ledger_does_not_end_the_watcher(store: Any) -> None:
    # Given a running watcher whose ledger table becomes unreadable (a real store error:
    # the table is renamed away; a ClickHouse server restarting reads alike)
    now = [datetime(2026, 12, 1, 10, 30, tzinfo=UTC)]
    ran_before(store, "hourly", datetime(2026, 12, 1, 10, 0, tzinfo=UTC))
    store.command("RENAME TABLE watch_runs TO watch_runs_away")
    lines: list[str] = []

    def waited(n: int, seconds: float) -> timedelta:
        if n == 2:  # the store is back
            store.command("RENAME TABLE watch_runs_away TO watch_runs")
        return timedelta(seconds=seconds)

    ran, waits = until_the_first_scan(store, now, waited, lines.append)
    # Then each failed read is one line and a wait of 30 s, and once the store is back
    # the watcher schedules as before: the 11:00 slot runs
    failed = [line for line in lines if "could not be read" in line]
    assert len(failed) == 2 and failed[0].startswith(
        "watch: the schedule's ledger could not be read: ")
    assert failed[0].endswith("; trying again in 30s") and "\n" not in failed[0]
    assert waits[:2] == [30.0, 30.0] and set(waits[2:]) == {60.0}
    assert ran == [datetime(2026, 12, 1, 11, 0, tzinfo=UTC)]


def _errors() -> list[tuple[Exception, str]]:
    """Errors a real scan raises, each with the text the run's line and ledger note show:
    the CLI's typed errors as their message (an engine's DiscoveryError too), others (a
    bug) with their type."""
    from portwatch.console import PortwatchError
    from probers.discovery.base import DiscoveryError, EngineUnavailable
    from probers.nmapdata import NmapDataError
    from producers.targets import TargetError
    from stream_processors.store import StoreBusy, StoreError

    return [
        (PortwatchError("--engine masscan: cannot open a raw socket"),
         "--engine masscan: cannot open a raw socket"),
        (EngineUnavailable("masscan cannot scan loopback (127.0.0.1)"),
         "masscan cannot scan loopback (127.0.0.1)"),
        (DiscoveryError("the engine stopped"), "the engine stopped"),
        (StoreError("insert failed: disk full"), "insert failed: disk full"),
        (StoreBusy("store in use"), "store in use"),
        (NmapDataError("nmap-services", 12, "bad line"), "nmap-services:12: bad line"),
        (TargetError("bad target 'x'"), "bad target 'x'"),
        (RuntimeError("a bug\nsecond line"), "RuntimeError: a bug"),
    ]


@pytest.mark.parametrize(("error", "shown"), _errors(),
                         ids=[type(e).__name__ for e, _ in _errors()])
def test_any_error_of_one_entrys_run_is_recorded_as_failed_and_the_next_runs(
        store: Any, error: Exception, shown: str) -> None:
    """The scan function is a fake that raises each error a real scan raises: the real
    ones need a broken engine, store or nmap data (the e2e test has a real one)."""
    now = [datetime(2026, 12, 1, 11, 0, tzinfo=UTC)]
    lines: list[str] = []

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        if entry.name == "hourly":
            raise error
        return ScanOutcome(Stats("s-nightly"), [])

    watcher = Watcher(store, [HOURLY, NIGHTLY], scan, None, clock=lambda: now[0],
                      say=lines.append)
    records = asyncio.run(watcher.run_once())
    assert [(r.entry, r.status) for r in records] == [("hourly", "failed"),
                                                      ("nightly", "completed")]
    assert [line for line in lines if "failed" in line] == [
        f"watch: hourly: scan failed: {shown}"]
    assert store.query("SELECT entry, status, note FROM watch_runs FINAL ORDER BY entry") == [
        ("hourly", "failed", shown), ("nightly", "completed", "")]
    # the failed slot is not retried in a loop: it counts as run, in the ledger
    assert asyncio.run(watcher.run_once()) == []
    assert last_slots(store) == {"hourly": now[0], "nightly": now[0]}


def test_an_entry_decided_before_a_long_scan_runs_once_for_its_latest_slot(store: Any) -> None:
    # Given a daily entry whose scan takes 150 minutes and an hourly one, both due at 10:00
    now = [datetime(2026, 12, 1, 10, 0, tzinfo=UTC)]
    ran_before(store, "a-daily", datetime(2026, 11, 30, 10, 0, tzinfo=UTC))
    ran_before(store, "b-hourly", datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    daily = ScheduleEntry("a-daily", "0 10 * * *", targets=("127.0.0.1",))
    hourly = ScheduleEntry("b-hourly", "0 * * * *", targets=("127.0.0.2",))
    lines: list[str] = []

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        now[0] += timedelta(minutes=150 if entry.name == "a-daily" else 1)
        return ScanOutcome(Stats(f"scan-{entry.name}"), [])

    watcher = Watcher(store, [daily, hourly], scan, None, clock=lambda: now[0],
                      say=lines.append)
    # When the watcher runs what is due, then looks again right after
    first = asyncio.run(watcher.run_once())
    second = asyncio.run(watcher.run_once())
    # Then b-hourly ran once, at 12:30, for the 12:00 slot (10:00 and 11:00 missed while
    # a-daily scanned), not for the stale 10:00 slot and at once again for 12:00
    assert [(r.entry, r.slot.strftime("%H:%M"), r.started.strftime("%H:%M"), r.missed)
            for r in first] == [("a-daily", "10:00", "10:00", 0),
                                ("b-hourly", "12:00", "12:30", 2)]
    assert second == []
    assert "watch: b-hourly missed 2 run(s) while other entries were scanning; catching up " \
        "with one run now" in lines


def test_a_slot_recorded_by_a_clock_that_ran_ahead_does_not_hold_the_entry(
        store: Any) -> None:
    # Given an hourly entry whose last run was recorded a year ahead (the clock was wrong
    # then, NTP set it back since)
    ahead = datetime(2027, 12, 1, 10, 0, tzinfo=UTC)
    assert decide(HOURLY, ahead, T).is_due  # the plan (`watch --list`) too
    ran_before(store, "hourly", ahead)
    lines: list[str] = []
    ran: list[str] = []

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        ran.append(entry.name)
        return ScanOutcome(Stats("scan-1"), [])

    now = [T]
    watcher = Watcher(store, [HOURLY], scan, None, clock=lambda: now[0], say=lines.append)
    # When the watcher looks: it runs the entry now, saying why once (before: not for a
    # year)
    records = asyncio.run(watcher.run_once())
    assert ran == ["hourly"] and [r.slot for r in records] == [T]
    assert lines[0] == ("watch: hourly: its last run is recorded for 2027-12-01 10:00 UTC, "
                        "after now: the clock was ahead then; scheduling from now")
    # And then keeps its schedule from that run: not again at once, again at 11:00
    now[0] = T + timedelta(minutes=10)
    assert asyncio.run(watcher.run_once()) == []
    now[0] = datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
    assert [r.slot for r in asyncio.run(watcher.run_once())] == [now[0]]
    assert ran == ["hourly", "hourly"]
    assert sum("after now" in line for line in lines) == 1
    # (as the plan of `watch --list` sees it: the ledger's slots up to now)
    assert last_slots(store, now[0]) == {"hourly": now[0]}


def test_unknown_organizations_are_those_no_known_one_spells_in_any_case() -> None:
    from portwatch.alerts.config import AlertConfig, Match, Rule
    from portwatch.alerts.rules import unknown_organizations

    config = AlertConfig("a.yaml", {}, (
        Rule("b", Match(organizations=frozenset({"acme", "acme corp"})), ("h",), 0),
        Rule("a", Match(organizations=frozenset({"globex"})), ("h",), 0),
        Rule("c", Match(), ("h",), 0)))
    assert unknown_organizations(config, [" ACME ", "Initech"]) == [
        ("a", "globex"), ("b", "acme corp")]
    assert unknown_organizations(config, ["Acme Corp", "acme", "GLOBEX"]) == []


def test_an_entry_with_targets_and_an_inventory_scans_both_under_its_organization(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from portwatch.alerts.cli import _prepare
    from portwatch.alerts.schedule import load_schedules

    monkeypatch.setenv("PORTWATCH_SCOPE_ALLOW", "127.0.0.0/8")
    # Given an entry with its own target and asset, an inventory, and an organization
    (tmp_path / "inv.yaml").write_text("Inv: [127.0.0.17]\nOther: [127.0.0.18]\n")
    (tmp_path / "s.yaml").write_text(
        "schedules:\n  - {name: both, cron: '@hourly', targets: [127.0.0.16], "
        f"inventory: {tmp_path / 'inv.yaml'}, organization: Inv, asset: web, ports: '22', "
        "udp: none}\n")
    (entry,) = load_schedules(tmp_path / "s.yaml")
    # When watch prepares its scan
    prepared = _prepare(entry, f"chdb://{tmp_path / 'store'}", str(tmp_path / "s.yaml"))
    # Then the entry's target is scanned, labelled, beside its organization's part of the
    # inventory (the organization narrowed every target, and the entry's own, unlabelled,
    # was dropped without a word: a review)
    assert sorted((t.ip, t.organization, t.asset) for t in prepared.targets) == [
        ("127.0.0.16", "Inv", "web"), ("127.0.0.17", "Inv", "")]
