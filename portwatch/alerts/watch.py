"""The watcher: run due schedule entries one after another, deliver alerts meanwhile.

Owns: the loop of ``portwatch watch`` (``run_once`` for ``--once`` and for each tick of
``run_forever``), the catch-up log line, the status line (next run per entry), the
hand-off of each scan's change events to the dispatcher and the background delivery
that runs while the scans do (``delivering``). The clock and the sleep are injected, so
tests drive time without sleeping.

Two entries never scan the same target at once because entries run strictly one after
another in this one task; two watchers on one ClickHouse server never both run one
entry's slot: each claims it first (``schedule.claim_slot``). Alerts go out from a task
of their own every ``delivery_tick`` seconds, so a long scan of one entry does not hold
another's alerts.
A scan interrupted by Ctrl-C keeps what it found (the runner's own interrupt handling)
and stops the watcher; its slot is not recorded, so the next start runs it again. Any
other error of one entry's run (engine unavailable, store error, bad nmap data...) is
one line, recorded as a failed run, and the next entry runs.

Must not touch: the scan internals (``portwatch.alerts.scanning`` is the one call) and
the outbox tables (the dispatcher's).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from portwatch.alerts.dispatcher import AlertDispatcher, AlertQueueError
from portwatch.alerts.owners import owner_id
from portwatch.alerts.scanning import ScanOutcome
from portwatch.alerts.schedule import (
    HEARTBEAT_SECONDS,
    MAX_MISSED_COUNTED,
    Decision,
    ScheduleEntry,
    claim_slot,
    decide,
    future_slots,
    is_from_the_future,
    last_slots,
    next_slot,
    plan,
    previous_slot,
    record_run,
    renew_claim,
)
from portwatch.console import exit_code_for, one_line
from schemas.records import ChangeEvent

log = logging.getLogger(__name__)

ScanFunction = Callable[[ScheduleEntry], Awaitable[ScanOutcome]]
CATCH_UP_SPANS_KEPT = 512  # runs remembered for the catch-up line's reason
Clock = Callable[[], datetime]
DELIVERY_TICK_SECONDS = 5.0  # how often a running watcher looks for due deliveries
# The longest single wait between two looks at the wall clock. The wait runs on the
# monotonic clock, which stands still while the machine sleeps (a suspended laptop, a
# paused VM) and ignores a clock step: a slot due meanwhile runs within this, not when
# the old timer ends.
MAX_WAIT_SECONDS = 60.0
STORE_RETRY_SECONDS = 30.0  # after a store error between runs, the next try
MAX_UNQUEUED = 100_000  # change events kept in memory for alerting while the store fails


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


def error_text(exc: Exception) -> str:
    """One line for an error of a run: a component's typed error (the ones the CLI
    reports as one line) as its message; anything else (a bug) with its type, and its
    traceback in the debug log."""
    if exit_code_for(exc) is not None:
        return one_line(exc)
    log.debug("scheduled run failed", exc_info=exc)
    return f"{type(exc).__name__}: {one_line(exc)}"


@dataclass
class Watcher:
    store: object
    entries: Sequence[ScheduleEntry]
    scan: ScanFunction
    dispatcher: AlertDispatcher | None = None
    clock: Clock = field(default=lambda: datetime.now(UTC))
    say: Callable[[str], None] = field(default=lambda line: log.warning("%s", line))
    is_stopping: bool = False
    delivery_tick: float = DELIVERY_TICK_SECONDS
    # set by the CLI's Ctrl-C/SIGTERM handler: no further entry starts
    stop: asyncio.Event | None = None
    # slots this watcher ran (completed or failed), whatever the ledger says: a run whose
    # ledger row could not be written is not run again by this process at once
    _ran: dict[str, datetime] = field(default_factory=dict, repr=False)
    # (entry, started, ended) of this process's latest runs: what the catch-up line blames
    _spans: collections.deque[tuple[str, datetime, datetime]] = field(
        default_factory=lambda: collections.deque(maxlen=CATCH_UP_SPANS_KEPT), repr=False)
    _started: datetime | None = field(default=None, repr=False)
    _warned_future: set[str] = field(default_factory=set, repr=False)
    # this watcher's id on the slots it claims (ddl.sql watch_claims)
    owner: str = field(default_factory=owner_id)
    heartbeat: float = HEARTBEAT_SECONDS  # how often a running slot's claim is renewed
    held_recheck: float = MAX_WAIT_SECONDS  # how often a slot another watcher holds is
    # looked at again (its holder may be interrupted or die)
    # entry -> (the due slot another watcher's claim held, when to look again)
    _held: dict[str, tuple[datetime, datetime]] = field(default_factory=dict, repr=False)
    # change events the outbox refused (a store error): queued again before the next run
    _unqueued: list[ChangeEvent] = field(default_factory=list, repr=False)
    _said_status: str = field(default="", repr=False)  # the status line said last

    @property
    def unqueued(self) -> int:
        """Change events not queued for alerting yet (a store error)."""
        return len(self._unqueued)

    @property
    def should_stop(self) -> bool:
        return self.is_stopping or (self.stop is not None and self.stop.is_set())

    def last_slots(self) -> dict[str, datetime]:
        now = self.clock()
        slots = last_slots(self.store, now)
        for name, slot in self._ran.items():
            if not is_from_the_future(slot, now):
                slots[name] = max(slot, slots.get(name, slot))
        for name, slot in future_slots(self.store, now).items():
            if name not in self._warned_future:  # said once per entry
                self._warned_future.add(name)
                self.say(f"watch: {name}: its last run is recorded for "
                         f"{slot:%Y-%m-%d %H:%M} UTC, after now: the clock was ahead then; "
                         "scheduling from now")
        return slots

    def decisions(self) -> list[Decision]:
        return plan(self.entries, self.last_slots(), self.clock())

    def status_line(self) -> str:
        parts = []
        for d in self.decisions():
            when = ("running in another watcher" if d.is_due and self._is_held(d) else
                    "now" if d.is_due else d.next_run.strftime("%Y-%m-%d %H:%M UTC"))
            parts.append(f"{d.entry.name} {when}")
        return "next run: " + ", ".join(parts)

    def say_status(self, status: str | None = None) -> None:
        """Say the status line (``status``, or the current one) unless it is the line
        said last: the CLI says it before the first run, and the loop after each run."""
        status = self.status_line() if status is None else status
        if status and status != self._said_status:
            self.say(f"watch: {status}")
            self._said_status = status

    async def run_once(self) -> list[RunRecord]:
        """Run every due entry once (name order, one after another). Each entry is
        decided just before it runs: decided before another entry's long scan, it would
        run for a slot gone stale, then again at once for the slot that came meanwhile."""
        if self._started is None:
            self._started = self.clock()
        records: list[RunRecord] = []
        self.queue_alerts([])  # what a store error kept from alerting, first
        for entry in sorted(self.entries, key=lambda e: e.name):
            if self.should_stop:
                break
            last = self.last_slots().get(entry.name)
            decision = decide(entry, last, self.clock())
            if not decision.is_due or self._is_held(decision):
                continue
            won = self._claimed(decision)
            if won is None:
                continue
            if decision.missed and last is not None:
                self.say(self.catch_up_line(decision, last))
            records.append(await self._run(decision, won))
        return records

    def _is_held(self, decision: Decision) -> bool:
        """Another watcher's live claim held this slot when last looked at, and it is
        not time to look again (``held_recheck`` later)."""
        held = self._held.get(decision.entry.name)
        return held is not None and held[0] == decision.slot and self.clock() < held[1]

    def _claimed(self, decision: Decision) -> tuple[datetime, int] | None:
        """Claim the slot before running it (schedule.claim_slot): the claim (its slot
        and attempt, renewed while the scan runs), or None, said in one line, when
        another watcher on the same store holds the entry or just ran the slot. A held
        slot is looked at again every ``held_recheck`` seconds (the holder may be
        interrupted, or die); one just run is done here too."""
        entry = decision.entry
        # The cron slot the run stands for: an entry's first run (its baseline) is due
        # "now", an instant two watchers never share; they share its cron slot
        key = previous_slot(entry, decision.slot)
        claim = claim_slot(self.store, entry.name, key, self.owner)
        if claim.won:
            self._held.pop(entry.name, None)
            return key, claim.attempt
        if not claim.holder:
            self._ran[entry.name] = decision.slot  # recorded: not due here before its next
            self.say(f"watch: {entry.name}: its {key:%Y-%m-%d %H:%M} UTC run was just made "
                     "by another watcher; skipped here")
            return None
        known = self._held.get(entry.name)
        self._held[entry.name] = (decision.slot,
                                  self.clock() + timedelta(seconds=self.held_recheck))
        if known is None or known[0] != decision.slot:  # said once per slot
            held = claim.slot or key
            self.say(f"watch: {entry.name}: another watcher ({claim.holder}) is running its "
                     f"{held:%Y-%m-%d %H:%M} UTC run; not run here while it does")
        return None

    def catch_up_line(self, decision: Decision, last: datetime) -> str:
        """Says why slots were missed: what each missed slot fell into, in order: before
        this watcher started (portwatch was not running), the entry's own previous run,
        other entries' runs, or no run at all (the watcher was held: a machine asleep, a
        store that did not answer). It blamed "other entries" for a lone entry's own long
        scan and for a sleep, and downtime for slots missed after the start (reviews)."""
        entry = decision.entry
        started = self._started or self.clock()
        said = {"down": "portwatch was not running",
                "own": "its previous run was still scanning",
                "other": "other entries were scanning",
                "idle": "this watcher could not run it"}
        spans = sorted(self._spans, key=lambda span: span[1])  # one at a time: no overlap
        causes: list[str] = []
        at = 0  # the first span that may still cover a slot (slots come in order)
        slot = next_slot(entry, last)
        for _ in range(MAX_MISSED_COUNTED):
            if slot >= decision.slot:
                break
            while at < len(spans) and spans[at][2] <= slot:
                at += 1
            covering = spans[at] if at < len(spans) and spans[at][1] <= slot else None
            cause = ("down" if slot < started else "idle" if covering is None else
                     "own" if covering[0] == entry.name else "other")
            if cause not in causes:
                causes.append(cause)
            slot = next_slot(entry, slot)
        why = "while " + ", then ".join(said[c] for c in causes or ["idle"])
        return (f"watch: {decision.entry.name} missed {decision.missed} run(s) {why}; "
                "catching up with one run now")

    async def _run(self, decision: Decision, claim: tuple[datetime, int]) -> RunRecord:
        entry = decision.entry
        started = self.clock()
        self.say(f"watch: {entry.name}: scanning ({entry.cron})")
        renewing = asyncio.create_task(self._renew(entry.name, *claim))
        try:
            outcome = await self.scan(entry)
        except Exception as exc:  # noqa: BLE001 - one entry's failure never stops the rest
            # recorded as failed (not run again in a loop), logged, and the watcher goes
            # on with the other entries instead of dying
            text = error_text(exc)
            self.say(f"watch: {entry.name}: scan failed: {text}")
            record = RunRecord(entry.name, decision.slot, started, self.clock(), "", "failed",
                               decision.missed)
            self._record(record, text)
            return record
        finally:
            renewing.cancel()
        # A shard whose discovery failed leaves the run incomplete: failed, so a one-shot
        # run (a CronJob) exits 1 and says so, its changes still queued below
        status = ("interrupted" if outcome.is_interrupted else
                  "failed" if outcome.failed_shards else "completed")
        record = RunRecord(entry.name, decision.slot, started, self.clock(), outcome.scan_id,
                           status, decision.missed, len(outcome.events))
        # Before the ledger: once the run is recorded, no later run alerts on these
        # changes (they are compared), so a failed ledger write must not lose them
        queued = self.queue_alerts(outcome.events)
        self.say(f"watch: {entry.name}: scan {outcome.scan_id or '-'} {status}, "
                 f"{len(outcome.events)} change(s), {queued} alert(s) queued")
        if not self._record(record, f"catch-up after {decision.missed} missed"
                            if decision.missed else ""):
            record.status = "failed"
        if outcome.is_interrupted:
            self.is_stopping = True
        return record

    def queue_alerts(self, events: Sequence[ChangeEvent]) -> int:
        """Queue ``events`` and those a store error kept before; how many deliveries are
        new. When the outbox refuses them (the dispatcher tried again already), they are
        kept in memory (at most ``MAX_UNQUEUED``, the oldest dropped, said) and queued
        before the next run: the changes are compared, no later scan raises them again."""
        if self.dispatcher is None:
            return 0
        pending = [*self._unqueued, *events]
        if not pending:
            return 0
        try:
            queued = self.dispatcher.submit(pending)
        except AlertQueueError as exc:
            dropped = max(0, len(pending) - MAX_UNQUEUED)
            self._unqueued = pending[dropped:]
            self.say(f"watch: {exc}; kept, queued again before the next run"
                     + (f" ({dropped} oldest dropped: more than {MAX_UNQUEUED:,} kept)"
                        if dropped else ""))
            return 0
        self._unqueued = []
        return queued

    async def _renew(self, entry: str, slot: datetime, attempt: int) -> None:
        """While the scan runs: its claim is renewed every ``heartbeat`` seconds, so
        another watcher holds off (a store error is one line; the next renewal tries
        again, and a claim expires only after CLAIM_LEASE_SECONDS)."""
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await asyncio.to_thread(renew_claim, self.store, entry, slot, attempt,
                                        self.owner)
            except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop the scan
                self.say(f"watch: {entry}: its claim could not be renewed: {error_text(exc)}")

    def _record(self, record: RunRecord, note: str) -> bool:
        """The run in the ledger; False (said in one line) when the store refused it."""
        if record.status != "interrupted":
            self._ran[record.entry] = record.slot
        self._spans.append((record.entry, record.started, record.finished))
        try:
            record_run(self.store, record.entry, record.slot, record.started, record.finished,
                       record.scan_id, record.status, note, self.owner)
        except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop the watcher
            self.say(f"watch: {record.entry}: the run could not be recorded: "
                     f"{error_text(exc)}")
            return False
        return True

    @contextlib.asynccontextmanager
    async def delivering(self) -> AsyncIterator[None]:
        """While the body runs (the scans), deliver what is due every ``delivery_tick``
        seconds from a task of its own: alerts no longer wait for every due scan to end
        (``digest: 0`` is at once, a retry at its time). Each pass runs in a thread (it
        waits on channels); on exit the pass in flight starts no further message and ends
        with the send in flight (bounded by its timeout: before, a pass of a large backlog
        held the exit for every message of it), no other starts, and the caller's final
        drain never races it; what it did not send stays queued."""
        if self.dispatcher is None:
            yield
            return
        done, halt = asyncio.Event(), threading.Event()
        task = asyncio.create_task(self._deliver_until(done, halt, self.dispatcher))
        try:
            yield
        finally:
            halt.set()
            done.set()
            await task

    async def _deliver_until(self, done: asyncio.Event, halt: threading.Event,
                             dispatcher: AlertDispatcher) -> None:
        while not done.is_set():
            await asyncio.to_thread(partial(dispatcher.deliver_due, halt=halt))  # never raises
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=self.delivery_tick)

    def seconds_until_next(self) -> float:
        now = self.clock()
        upcoming = [((self._held[d.entry.name][1] if d.is_due and self._is_held(d)
                      else d.next_run) - now).total_seconds() for d in self.decisions()]
        return max(0.0, min(upcoming)) if upcoming else DELIVERY_TICK_SECONDS

    async def run_forever(self, stop: asyncio.Event,
                          sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        """Until ``stop`` is set: run what is due, print the status, wait; alerts are
        delivered meanwhile (``delivering``)."""

        async def wait(seconds: float) -> None:
            if sleep is not None:
                await sleep(seconds)
                return
            try:
                await asyncio.wait_for(stop.wait(), timeout=seconds)
            except TimeoutError:
                pass

        async with self.delivering():
            while not stop.is_set() and not self.is_stopping:
                try:
                    await self.run_once()
                    if self.is_stopping or stop.is_set():
                        break
                    status = self.status_line()
                    pause = min(self.seconds_until_next(), MAX_WAIT_SECONDS)
                except Exception as exc:  # noqa: BLE001 - the ledger's store failed: retry
                    # (one entry's own failure is recorded by _run; this is the store read
                    # that decides what is due, e.g. a ClickHouse server restarting)
                    self.say(f"watch: the schedule's ledger could not be read: "
                             f"{error_text(exc)}; trying again in {STORE_RETRY_SECONDS:g}s")
                    status, pause = "", STORE_RETRY_SECONDS
                self.say_status(status)
                await wait(pause)
            self.queue_alerts([])  # a last try for what a store error kept
