"""The watcher: run due schedule entries one after another, then deliver alerts.

Owns: the loop of ``portwatch watch`` (``run_once`` for ``--once`` and for each tick of
``run_forever``), the catch-up log line, the status line (next run per entry) and the
hand-off of each scan's change events to the dispatcher. The clock and the sleep are
injected, so tests drive time without sleeping.

Two entries never scan the same target at once because entries run strictly one after
another in this one task. A scan interrupted by Ctrl-C keeps what it found (the
runner's own interrupt handling) and stops the watcher; its slot is not recorded, so
the next start runs it again.

Must not touch: the scan internals (``portwatch.alerts.scanning`` is the one call) and
the outbox tables (the dispatcher's).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from portwatch.alerts.dispatcher import AlertDispatcher
from portwatch.alerts.scanning import ScanOutcome
from portwatch.alerts.schedule import Decision, ScheduleEntry, last_slots, plan, record_run
from portwatch.console import PortwatchError

log = logging.getLogger(__name__)

ScanFunction = Callable[[ScheduleEntry], Awaitable[ScanOutcome]]
Clock = Callable[[], datetime]
DELIVERY_TICK_SECONDS = 5.0  # how often a running watcher looks for due deliveries


@dataclass
class RunRecord:
    entry: str
    slot: datetime
    started: datetime
    finished: datetime
    scan_id: str
    status: str
    missed: int = 0
    events: int = 0


@dataclass
class Watcher:
    store: object
    entries: Sequence[ScheduleEntry]
    scan: ScanFunction
    dispatcher: AlertDispatcher | None = None
    clock: Clock = field(default=lambda: datetime.now(UTC))
    say: Callable[[str], None] = field(default=lambda line: log.warning("%s", line))
    is_stopping: bool = False

    def decisions(self) -> list[Decision]:
        return plan(self.entries, last_slots(self.store), self.clock())

    def status_line(self) -> str:
        parts = []
        for d in self.decisions():
            when = "now" if d.is_due else d.next_run.strftime("%Y-%m-%d %H:%M UTC")
            parts.append(f"{d.entry.name} {when}")
        return "next run: " + ", ".join(parts)

    async def run_once(self) -> list[RunRecord]:
        """Run every due entry once (name order, one after another)."""
        records: list[RunRecord] = []
        for decision in self.decisions():
            if self.is_stopping:
                break
            if not decision.is_due:
                continue
            if decision.missed:
                self.say(f"watch: {decision.entry.name} missed {decision.missed} run(s) "
                         f"while portwatch was not running; catching up with one run now")
            records.append(await self._run(decision))
        return records

    async def _run(self, decision: Decision) -> RunRecord:
        entry = decision.entry
        started = self.clock()
        self.say(f"watch: {entry.name}: scanning ({entry.cron})")
        note = f"catch-up after {decision.missed} missed" if decision.missed else ""
        try:
            outcome = await self.scan(entry)
        except PortwatchError as exc:
            # A failed run (engine unavailable, store error) is logged and its slot kept as
            # failed: the watcher goes on with the other entries instead of dying.
            finished = self.clock()
            record_run(self.store, entry.name, decision.slot, started, finished, "", "failed",
                       str(exc))
            self.say(f"watch: {entry.name}: scan failed: {exc}")
            return RunRecord(entry.name, decision.slot, started, finished, "", "failed",
                             decision.missed)
        finished = self.clock()
        status = "interrupted" if outcome.is_interrupted else "completed"
        record_run(self.store, entry.name, decision.slot, started, finished, outcome.scan_id,
                   status, note)
        queued = 0
        if self.dispatcher is not None and outcome.events:
            queued = self.dispatcher.submit(outcome.events)
        self.say(f"watch: {entry.name}: scan {outcome.scan_id or '-'} {status}, "
                 f"{len(outcome.events)} change(s), {queued} alert(s) queued")
        if outcome.is_interrupted:
            self.is_stopping = True
        return RunRecord(entry.name, decision.slot, started, finished, outcome.scan_id, status,
                         decision.missed, len(outcome.events))

    def seconds_until_next(self) -> float:
        now = self.clock()
        upcoming = [(d.next_run - now).total_seconds() for d in self.decisions()]
        return max(0.0, min(upcoming)) if upcoming else DELIVERY_TICK_SECONDS

    async def run_forever(self, stop: asyncio.Event,
                          sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        """Until ``stop`` is set: run what is due, deliver, print the status, wait."""

        async def wait(seconds: float) -> None:
            if sleep is not None:
                await sleep(seconds)
                return
            try:
                await asyncio.wait_for(stop.wait(), timeout=seconds)
            except TimeoutError:
                pass

        last_status = ""
        while not stop.is_set() and not self.is_stopping:
            await self.run_once()
            if self.is_stopping or stop.is_set():
                break
            if self.dispatcher is not None:
                await asyncio.to_thread(self.dispatcher.deliver_due)
            status = self.status_line()
            if status != last_status:
                self.say(f"watch: {status}")
                last_status = status
            await wait(min(self.seconds_until_next(), DELIVERY_TICK_SECONDS)
                       if self.dispatcher is not None else self.seconds_until_next())
