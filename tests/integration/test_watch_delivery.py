"""The watcher hands alerts to the real dispatcher, real store (chdb) and a real signed
webhook receiver on loopback: a change a completed scan found is queued even when the
store refuses the run's ledger row, and is sent once; alerts go out while another
entry's long scan still runs. Scan functions are injected (they return the events a scan
would); nothing scans.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from portwatch.alerts import AlertDispatcher
from portwatch.alerts.scanning import ScanOutcome
from portwatch.alerts.schedule import ScheduleEntry
from portwatch.alerts.watch import Watcher
from tests.alert_receivers import webhook_receiver
from tests.integration.test_alert_delivery import SECRET, Clock, event, hook_config, outbox_states

HOURLY = ScheduleEntry("hourly", "0 * * * *", targets=("127.0.0.1",))


@dataclass
class Stats:
    scan_id: str
    interrupted: bool = False


def test_a_run_the_ledger_refuses_still_queues_its_alerts_and_sends_them_once(
        store: Any, tmp_path: Path) -> None:
    # Given a store that refuses the ledger row of entry "hourly" (a real CHECK
    # constraint: ClickHouse refuses the insert) and a scan that found a change
    store.command("ALTER TABLE watch_runs ADD CONSTRAINT refuse_hourly CHECK entry != 'hourly'")
    opened = event()
    now = [datetime(2026, 12, 1, 11, 0, tzinfo=UTC)]

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        return ScanOutcome(Stats("scan-2"), [opened])

    with webhook_receiver(SECRET) as receiver:
        dispatcher = AlertDispatcher(store, hook_config(tmp_path, receiver.url), clock=Clock())
        lines: list[str] = []
        watcher = Watcher(store, [HOURLY], scan, dispatcher, clock=lambda: now[0],
                          say=lines.append)
        # When the watcher runs it
        records = asyncio.run(watcher.run_once())
        # Then the run counts as failed, said in one line, and its alert is queued
        assert [(r.entry, r.status) for r in records] == [("hourly", "failed")]
        refused = [line for line in lines if "could not be recorded" in line]
        assert len(refused) == 1 and refused[0].startswith(
            "watch: hourly: the run could not be recorded: DatabaseError: ")
        assert outbox_states(store) == {("risky-opened", "soc-hook", opened.event_id):
                                        ("pending", 0)}
        # And this watcher does not run the slot again at once
        assert asyncio.run(watcher.run_once()) == []
        # And the alert goes out once, even when a restarted watcher (the slot is not in
        # the ledger) runs it again and its scan reports the same change
        assert dispatcher.deliver_due().sent == 1
        restarted = Watcher(store, [HOURLY], scan, dispatcher, clock=lambda: now[0],
                            say=lines.append)
        assert [r.entry for r in asyncio.run(restarted.run_once())] == ["hourly"]
        assert dispatcher.deliver_due().sent == 0
    assert [e["port"] for e in receiver.events()] == [6379]
    assert receiver.rejected == []


def test_alerts_go_out_while_another_entry_still_scans(store: Any, tmp_path: Path) -> None:
    # Given a quick entry that finds a change (digest 0: alert at once) and a long one
    # after it, whose scan goes on until the alert arrived (or 30 s)
    seen_while_scanning: list[list[int]] = []
    stop = asyncio.Event()
    quick = ScheduleEntry("a-quick", "*/5 * * * *", targets=("127.0.0.1",))
    full = ScheduleEntry("b-full", "0 * * * *", targets=("127.0.0.2",))

    with webhook_receiver(SECRET) as receiver:

        async def scan(entry: ScheduleEntry) -> ScanOutcome:
            if entry.name == "a-quick":
                return ScanOutcome(Stats("scan-2"), [event()])
            for _ in range(300):
                if receiver.accepted:
                    break
                await asyncio.sleep(0.1)
            seen_while_scanning.append([e["port"] for e in receiver.events()])
            stop.set()
            return ScanOutcome(Stats("scan-3"), [])

        dispatcher = AlertDispatcher(store, hook_config(tmp_path, receiver.url))
        watcher = Watcher(store, [quick, full], scan, dispatcher, say=lambda _line: None,
                          delivery_tick=0.1)
        # When the watcher runs both
        asyncio.run(watcher.run_forever(stop))
    # Then the alert arrived while b-full was still scanning, and only once
    assert seen_while_scanning == [[6379]]
    assert len(receiver.accepted) == 1 and receiver.rejected == []
