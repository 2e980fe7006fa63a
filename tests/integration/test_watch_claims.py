"""Two watchers on one store never both run an entry (real chdb store).

Before, two `watch --once` on one ClickHouse server (two CronJobs that overlap, a
second machine) both found the slot due in the ledger and both scanned it: twice the
load, and the same changes alerted twice (a review, 2026-12-05). Each watcher now claims
the slot first (ddl.sql watch_claims, schedule.claim_slot); a second review's cases are
here too (a reused pid in the same pid namespace, a store error after the claim landed,
a holder interrupted while another watcher waits, a run outlasting its cron period,
clock skew, a holder that died on another host). Scan functions are injected (they return what a
scan would); nothing scans.

One chdb engine serves one process, and the store serialises its calls: the race test
below interleaves two threads' reads and inserts, never two inserts at the same instant
on a server. What makes the claim safe there is ClickHouse's insert deduplication
token, asserted directly at the end of that test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from portwatch.alerts.owners import owner_id, owner_is_gone, this_host
from portwatch.alerts.scanning import ScanOutcome
from portwatch.alerts.schedule import CLAIM_COLUMNS, ScheduleEntry, claim_slot, record_run
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
    return f"{this_host()}:{gone.stdout.strip()}:0123456789ab"


def _watcher(store: Any, scan: Any, lines: list[str], now: list[datetime] | None = None,
             **kw: Any) -> Watcher:
    clock = now or [NOW]
    return Watcher(store, [HOURLY], scan, clock=lambda: clock[0], say=lines.append, **kw)


def _done(scan_id: str) -> Any:
    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        return ScanOutcome(Stats(scan_id), [])
    return scan


def test_a_second_watcher_holds_off_while_the_first_runs_the_slot(store: Any) -> None:
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
        assert second.seconds_until_next() == 60.0  # it looks again in a minute, not at once
        assert second.status_line() == "next run: hourly running in another watcher"
        second_ran.extend(await second.run_once())  # at once again: not asked, not said
        return ScanOutcome(Stats("scan-a"), [])

    first = _watcher(store, first_scan, lines)
    # When both run the due entry (its first run: due "now", claimed as its cron slot)
    records = asyncio.run(first.run_once())
    # Then only the first scanned it; the second said so once and ran nothing
    assert scanned == ["first"] and second_ran == []
    assert [(r.entry, r.scan_id, r.status) for r in records] == [
        ("hourly", "scan-a", "completed")]
    assert lines.count(f"watch: hourly: another watcher ({first.owner}) is running its "
                       "2026-12-01 11:00 UTC run; not run here while it does") == 1
    # And a third, started after the run was recorded, finds it done in the ledger
    third = _watcher(store, second_scan, lines)
    assert asyncio.run(third.run_once()) == [] and scanned == ["first"]


def test_a_slot_whose_run_was_interrupted_is_claimed_again(store: Any) -> None:
    # Given a watcher whose run of the slot was interrupted (Ctrl-C: recorded so)
    lines: list[str] = []

    async def interrupted(entry: ScheduleEntry) -> ScanOutcome:
        return ScanOutcome(Stats("scan-a", interrupted=True), [])

    assert [r.status for r in asyncio.run(_watcher(store, interrupted, lines).run_once())] \
        == ["interrupted"]
    # When another watcher starts, then it claims the slot's next attempt and runs it
    records = asyncio.run(_watcher(store, _done("scan-b"), lines).run_once())
    assert [(r.scan_id, r.status) for r in records] == [("scan-b", "completed")]
    assert store.query("SELECT DISTINCT attempt FROM watch_claims ORDER BY attempt") == [
        (1,), (2,)]


def test_a_waiting_watcher_takes_the_slot_over_once_its_holder_was_interrupted(
        store: Any) -> None:
    # Given a watcher holding off while another runs the slot
    lines: list[str] = []
    now = [NOW]
    waiting = _watcher(store, _done("scan-b"), lines, now)
    holder = _watcher(store, _done("scan-a"), lines, now)
    assert claim_slot(store, "hourly", SLOT, holder.owner).won
    assert asyncio.run(waiting.run_once()) == []
    # When the holder's run is recorded interrupted, and the waiting one looks again
    record_run(store, "hourly", NOW, NOW, NOW, "scan-a", "interrupted", owner=holder.owner)
    now[0] = NOW + timedelta(seconds=61)
    # Then it claims the next attempt and runs the slot (before: it left the slot until
    # the next one, an hour, a day or a week later)
    assert [r.scan_id for r in asyncio.run(waiting.run_once())] == ["scan-b"]


def test_an_entry_whose_run_outlasts_its_period_is_not_run_twice_at_once(store: Any) -> None:
    # Given a watcher still running the entry's 11:00 slot at 12:05
    lines: list[str] = []
    late = [NOW + timedelta(hours=1)]
    first = _watcher(store, _done("scan-a"), lines)
    assert claim_slot(store, "hourly", SLOT, first.owner).won
    record_run(store, "hourly", SLOT - timedelta(hours=1), NOW, NOW, "scan-0", "completed")
    # When another watcher finds the 12:00 slot due
    second = _watcher(store, _done("scan-b"), lines, late)
    # Then it holds off: the entry is being scanned (before: both scanned its targets)
    assert asyncio.run(second.run_once()) == []
    assert lines[-1] == (f"watch: hourly: another watcher ({first.owner}) is running its "
                         "2026-12-01 11:00 UTC run; not run here while it does")
    # And once that run is recorded, the 12:00 slot is claimed and run
    record_run(store, "hourly", SLOT, NOW, late[0], "scan-a", "completed", owner=first.owner)
    late[0] += timedelta(seconds=61)
    assert [r.scan_id for r in asyncio.run(second.run_once())] == ["scan-b"]


def test_claims_of_processes_gone_from_this_host_or_silent_for_the_lease_are_over(
        store: Any) -> None:
    mine = owner_id()
    # A process of this host that has ended (killed before it recorded its run)
    assert claim_slot(store, "a", SLOT, gone_owner(), ).won
    assert claim_slot(store, "a", SLOT, mine).won
    # A process before this one with its pid (a reused pid in this pid namespace)
    restarted = f"{this_host()}:{os.getpid()}:0123456789ab"
    assert claim_slot(store, "b", SLOT, restarted).won
    assert claim_slot(store, "b", SLOT, mine).won
    # A watcher on another host that stopped renewing its claim 6 minutes ago (by the
    # server's clock): over after the 5-minute lease; one renewed a minute ago is not
    store.command("INSERT INTO watch_claims SELECT 'c', {s:DateTime64(3, 'UTC')}, 1, "
                  "'other-host:1:0123456789ab', now64(3) - INTERVAL 6 MINUTE", {"s": SLOT})
    store.command("INSERT INTO watch_claims SELECT 'd', {s:DateTime64(3, 'UTC')}, 1, "
                  "'other-host:1:0123456789ab', now64(3) - INTERVAL 1 MINUTE", {"s": SLOT})
    assert claim_slot(store, "c", SLOT, mine).won
    held = claim_slot(store, "d", SLOT, mine)
    assert (held.won, held.holder) == (False, "other-host:1:0123456789ab")


def test_a_claim_of_a_container_sharing_this_hostname_lasts_its_lease(store: Any) -> None:
    # Given a claim taken by a process in another pid namespace with this hostname (a
    # container run with --network host): a real one, made by util-linux's unshare (root),
    # whose pid is one no process of this namespace has
    free_pid = next(p for p in range(min(30_000, _pid_max() - 1), 300, -1)
                    if not Path(f"/proc/{p}").exists())
    inside = ("import subprocess, sys\n"
              f"open('/proc/sys/kernel/ns_last_pid', 'w').write('{free_pid - 1}')\n"
              "print(subprocess.run([sys.executable, '-c', 'from portwatch.alerts.owners "
              "import owner_id; print(owner_id())'], capture_output=True, text=True, "
              "check=True).stdout.strip())")
    other = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", inside],
        capture_output=True, text=True, check=True, timeout=60,
        cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    host, pid, _nonce = other.rsplit(":", 2)
    assert host.split("/")[0] == this_host().split("/")[0] and host != this_host()
    assert pid == str(free_pid)
    assert claim_slot(store, "e", SLOT, other).won
    # When this process looks at it, then that pid means nothing here: the claim holds
    # (before: no such process on "this host", so the claim was void at once, and two
    # watchers ran the same slot)
    assert not owner_is_gone(other)
    held = claim_slot(store, "e", SLOT, owner_id())
    assert (held.won, held.holder) == (False, other)


def _pid_max() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text())


def test_a_watcher_runs_the_slot_its_own_claim_holds_after_a_store_error(store: Any) -> None:
    # Given a watcher whose claim landed, then the read that follows failed (a store
    # error: run_forever tries again 30 s later)
    lines: list[str] = []
    watcher = _watcher(store, _done("scan-a"), lines)
    assert claim_slot(store, "hourly", SLOT, watcher.owner).won
    # When it tries the slot again, then the claim is its own: it runs (before: it
    # skipped the slot, naming itself as "another watcher", and nobody ran it)
    assert [r.scan_id for r in asyncio.run(watcher.run_once())] == ["scan-a"]


def test_clock_skew_between_watchers_never_lets_a_third_run_a_held_slot(store: Any) -> None:
    # Given a watcher whose clock is 5 minutes ahead, interrupted on the slot
    lines: list[str] = []
    ahead = _watcher(store, _done("-"), lines, [NOW + timedelta(minutes=5)])
    assert claim_slot(store, "hourly", SLOT, ahead.owner).won
    record_run(store, "hourly", NOW, NOW + timedelta(minutes=5), NOW + timedelta(minutes=6),
               "scan-a", "interrupted", owner=ahead.owner)
    # And a second watcher (right clock) that claimed it again and is running it
    running = owner_id()
    assert claim_slot(store, "hourly", SLOT, running).won
    # When a third looks, then it holds off: a run is tied to its claim by its owner,
    # not by comparing two machines' clocks (before: the first one's interrupted run,
    # "started" after the second's claim by its clock, released the slot again)
    held = claim_slot(store, "hourly", SLOT, owner_id())
    assert (held.won, held.holder) == (False, running)


def test_a_running_watcher_renews_its_claim(store: Any) -> None:
    # Given a scan that runs a little longer than the renewal period
    async def slow(entry: ScheduleEntry) -> ScanOutcome:
        await asyncio.sleep(0.5)
        return ScanOutcome(Stats("scan-a"), [])

    watcher = _watcher(store, slow, [], heartbeat=0.1)
    # When it runs, then its claim got rows of the same attempt while it scanned
    assert [r.scan_id for r in asyncio.run(watcher.run_once())] == ["scan-a"]
    (renewals,), = store.query("SELECT count() FROM watch_claims WHERE owner = {o:String} "
                               "AND attempt = 1", {"o": watcher.owner})
    assert renewals >= 3


def test_watchers_racing_for_slots_win_each_exactly_once(store: Any) -> None:
    # Given two watchers that claim the same 20 slots at the same time, from two threads
    slots = [SLOT - timedelta(hours=h) for h in range(20)]
    owners = [owner_id(), owner_id()]
    wins: dict[str, list[datetime]] = {o: [] for o in owners}
    start = threading.Barrier(2)

    def claim_all(owner: str) -> None:
        start.wait()
        for slot in slots:
            if claim_slot(store, "race", slot, owner).won:
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
    store.insert_rows("watch_claims", CLAIM_COLUMNS, [["race", SLOT, 1, "late:1:x", NOW]],
                      dedup_token=f"race\x1f{SLOT.isoformat()}\x1f1")
    assert store.query("SELECT count() FROM watch_claims WHERE entry = 'race' "
                       "AND slot = {s:DateTime64(3, 'UTC')}", {"s": SLOT}) == [(1,)]


def test_a_slot_whose_claim_token_was_used_by_a_pruned_claim_moves_to_the_next_attempt(
        store: Any) -> None:
    # Given attempt 1's token used, and its row since deleted (prune)
    store.insert_rows("watch_claims", CLAIM_COLUMNS, [["hourly", SLOT, 1, "old:1:x", NOW]],
                      dedup_token=f"hourly\x1f{SLOT.isoformat()}\x1f1")
    store.command("ALTER TABLE watch_claims DELETE WHERE 1 SETTINGS mutations_sync = 1")
    # When a watcher claims the slot, then it lands attempt 2
    mine = owner_id()
    claim = claim_slot(store, "hourly", SLOT, mine)
    assert (claim.won, claim.attempt) == (True, 2)


def test_a_run_whose_discovery_failed_on_a_shard_is_recorded_failed(store: Any) -> None:
    from stream_processors.transports.embedded import ScanStats

    # Given a scan whose discovery failed on one shard (what it found is kept)
    async def incomplete(entry: ScheduleEntry) -> ScanOutcome:
        return ScanOutcome(ScanStats("scan-gap", hosts=1, failed_shards=1), [])

    lines: list[str] = []
    records = asyncio.run(_watcher(store, incomplete, lines).run_once())
    # Then the run is failed, not completed: a one-shot watch exits 1 and says so
    assert [r.status for r in records] == ["failed"]
    assert any("scan scan-gap failed" in line for line in lines), lines
    assert store.query("SELECT status FROM watch_runs FINAL") == [("failed",)]
