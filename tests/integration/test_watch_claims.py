"""Two watchers on one store never both run an entry's slot (real chdb store).

Before, two `watch --once` on one ClickHouse server (two CronJobs that overlap, a
second machine) both found the slot due in the ledger and both scanned it: twice the
load, and the same changes alerted twice (a review, 2026-12-05). Each watcher now claims
the slot first (ddl.sql watch_claims, schedule.claim_slot). Scan functions are
injected (they return what a scan would); nothing scans.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from portwatch.alerts.owners import owner_id
from portwatch.alerts.scanning import ScanOutcome
from portwatch.alerts.schedule import CLAIM_COLUMNS, ScheduleEntry, claim_slot
from portwatch.alerts.watch import Watcher

HOURLY = ScheduleEntry("hourly", "0 * * * *", targets=("127.0.0.1",))
NOW = datetime(2026, 12, 1, 11, 5, tzinfo=UTC)
SLOT = datetime(2026, 12, 1, 11, 0, tzinfo=UTC)


@dataclass
class Stats:
    scan_id: str
    interrupted: bool = False


def gone_owner() -> str:
    """The owner id of a process of this host that has ended (as a watcher killed, or
    one whose process was restarted, left its claims)."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return f"{socket.gethostname()}:{gone.stdout.strip()}:0123456789ab"


def _watcher(store: Any, scan: Any, lines: list[str]) -> Watcher:
    return Watcher(store, [HOURLY], scan, clock=lambda: NOW, say=lines.append)


def test_a_second_watcher_skips_the_slot_the_first_is_running(store: Any) -> None:
    # Given two watchers of one store, the second started while the first scans
    lines: list[str] = []
    scanned: list[str] = []
    second_ran: list[Any] = []

    async def second_scan(entry: ScheduleEntry) -> ScanOutcome:
        scanned.append("second")
        return ScanOutcome(Stats("scan-b"), [])

    second = _watcher(store, second_scan, lines)

    async def first_scan(entry: ScheduleEntry) -> ScanOutcome:
        scanned.append("first")
        second_ran.extend(await second.run_once())  # while the first one's scan runs
        return ScanOutcome(Stats("scan-a"), [])

    first = _watcher(store, first_scan, lines)
    # When both run the due entry
    records = asyncio.run(first.run_once())
    # Then only the first scanned it; the second said so in one line and ran nothing
    assert scanned == ["first"] and second_ran == []
    assert [(r.entry, r.scan_id, r.status) for r in records] == [
        ("hourly", "scan-a", "completed")]
    assert lines.count(f"watch: hourly: its 2026-12-01 11:00 UTC run is running in another "
                       f"watcher ({first.owner}); skipped here") == 1
    # And the second does not try that slot again (no loop of claims), while a third,
    # started after the run was recorded, finds it done in the ledger
    assert asyncio.run(second.run_once()) == []
    third = _watcher(store, second_scan, lines)
    assert asyncio.run(third.run_once()) == [] and scanned == ["first"]


def test_a_slot_whose_run_was_interrupted_is_claimed_again(store: Any) -> None:
    # Given a watcher whose run of the slot was interrupted (Ctrl-C: recorded so)
    lines: list[str] = []

    async def interrupted(entry: ScheduleEntry) -> ScanOutcome:
        return ScanOutcome(Stats("scan-a", interrupted=True), [])

    assert [r.status for r in asyncio.run(_watcher(store, interrupted, lines).run_once())] \
        == ["interrupted"]

    # When another watcher starts
    async def completed(entry: ScheduleEntry) -> ScanOutcome:
        return ScanOutcome(Stats("scan-b"), [])

    records = asyncio.run(_watcher(store, completed, lines).run_once())
    # Then it claims the slot's next attempt and runs it
    assert [(r.scan_id, r.status) for r in records] == [("scan-b", "completed")]
    assert store.query("SELECT attempt FROM watch_claims ORDER BY attempt") == [(1,), (2,)]


def test_the_claim_of_a_process_gone_from_this_host_is_void(store: Any) -> None:
    # Given a claim on the slot by a process of this host that no longer exists (killed
    # before it recorded its run)
    assert claim_slot(store, "hourly", SLOT, gone_owner(), NOW).won
    # And one by a process of another host (whether it lives is not knowable here)
    assert claim_slot(store, "daily", SLOT, "other-host:1:0123456789ab", NOW).won
    # When a watcher of this host claims each
    mine = owner_id()
    # Then the first is claimed again (attempt 2); the second is held by its owner
    assert claim_slot(store, "hourly", SLOT, mine, NOW).won
    held = claim_slot(store, "daily", SLOT, mine, NOW)
    assert (held.won, held.holder) == (False, "other-host:1:0123456789ab")


def test_watchers_racing_for_slots_win_each_exactly_once(store: Any) -> None:
    # Given two watchers that claim the same 20 slots at the same time, from two threads
    slots = [SLOT - timedelta(hours=h) for h in range(20)]
    owners = [owner_id(), owner_id()]
    wins: dict[str, list[datetime]] = {o: [] for o in owners}
    start = threading.Barrier(2)

    def claim_all(owner: str) -> None:
        start.wait()
        for slot in slots:
            if claim_slot(store, "hourly", slot, owner, NOW).won:
                wins[owner].append(slot)

    threads = [threading.Thread(target=claim_all, args=(o,)) for o in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # Then every slot has exactly one winner
    assert sorted(wins[owners[0]] + wins[owners[1]]) == sorted(slots)
    # And a claim inserted for an attempt already claimed (a watcher that read the
    # ledger before the first claim landed) does not land: its token was taken
    store.insert_rows("watch_claims", CLAIM_COLUMNS, [["hourly", SLOT, 1, "late:1:x", NOW]],
                      dedup_token=f"hourly\x1f{SLOT.isoformat()}\x1f1")
    assert store.query("SELECT count() FROM watch_claims WHERE slot = {s:DateTime64(3, 'UTC')}",
                       {"s": SLOT}) == [(1,)]
