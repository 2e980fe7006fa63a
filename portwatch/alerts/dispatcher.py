"""The dispatcher: the alert outbox in the store, and delivery from it.

Owns: ``submit(events)`` (record one pending delivery per (rule, channel, event) a rule
selects, skipping accepted risks; idempotent across restarts and Kafka replays because
the outbox is keyed by (rule, channel, event_id) and a submitted row can never undo a
later state), ``deliver_due()`` (digest per rule window, claim, send, record sent /
retry with exponential backoff / failed) and ``drain()`` (a one-shot scan's bounded wait).

Exactly once per (rule, channel, event) across several workers: before sending attempt
N, a worker inserts a claim row with the insert deduplication token
(rule, channel, event_id, N); ClickHouse keeps exactly one of the competing inserts, and
only the worker whose claim landed sends. A claim whose worker vanished (its process on
this host is gone, or its lease ran out) is superseded by a claim on attempt N+1. The one
window no store can close is a worker killed after the channel accepted a message and
before the store recorded it: that message is sent again after the lease, with the same
``X-Portwatch-Delivery`` id so a receiver can drop it. Every time in the outbox is the
store server's (``StoreClock``): a worker whose host's clock is off neither takes a live
claim for an expired one nor holds its rows back.

Must not touch: scanning. Delivery never raises into a scan: every failure is logged
and kept in the outbox. Queueing raises ``AlertQueueError`` when the store refuses the
events (their caller keeps them: see ``submit``).

Why one file: the outbox's revisions, the claims and the passes (a watcher's tick, a
drain's waits, the Kafka agent's timer) all read and write the same rows under one rule
of who may send what when; split, each part would have to re-state that rule.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from portwatch.alerts.accepted import ActiveAcceptances
from portwatch.alerts.channels import FIELD_CAP, delivery_id, send
from portwatch.alerts.clock import StoreClock
from portwatch.alerts.config import AlertConfig, Rule, mask_urls
from portwatch.alerts.owners import owner_id, owner_is_gone, this_host
from portwatch.alerts.rules import matches, prevalence_bucket
from schemas.records import ChangeEvent, RecordError

OUTBOX_COLUMNS = ("rule", "channel", "event_id", "event_json", "state", "attempts",
                  "last_error", "created_at", "next_attempt_at", "sent_at", "revision",
                  "delivery_id")
CLAIM_COLUMNS = ("rule", "channel", "event_id", "attempt", "owner", "claimed_at")
PENDING, SENT, FAILED = "pending", "sent", "failed"
EPOCH = datetime.fromtimestamp(0, UTC)
TEXT_CAP = 1000  # characters of before/after/service kept from a (hostile) event
MAX_ROWS_PER_PASS = 10_000
# Due rows one (rule, channel) may take of a pass: a broken channel with a deep backlog
# never crowds the others out of the pass (each gets its share, oldest first).
MAX_ROWS_PER_PAIR = 2_000
MAX_BACKOFF_DOUBLINGS = 60
QUEUE_ATTEMPTS = 3  # a store error while queueing is tried again this often
QUEUE_RETRY_SECONDS = 0.5  # then 1 s
# A drain pass that changed nothing while a row looked sendable (a store error, a row
# that came due during the pass): the next look is this much later, never a busy loop.
DRAIN_RECHECK_SECONDS = 1.0
# A channel that failed (no Retry-After) gets no new message for at most this long across
# a dispatcher's passes; its failed rows keep their own backoff.
CHANNEL_HOLD_SECONDS = 300.0

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (rule, channel, event_id)


def _messages(rows: Sequence[PendingRow], limit: int, *, fresh_due: bool
              ) -> list[list[PendingRow]]:
    """The messages of one (rule, channel)'s due rows. A retry goes out as the message it
    retries (its rows carry that message's id, written before its send): the same
    events under the same ``X-Portwatch-Delivery`` id, so a receiver that got it before
    (a worker killed after the send, before the store heard) can drop it by its id.
    Rows never tried are batched anew, ``limit`` a message, when their digest window
    closed (``fresh_due``). (Before, a retry was batched with whatever newer events were
    due, under a new id, and took them out before their window.) Retries recorded
    before messages kept their id (an upgraded store) are batched together, at once."""
    retried: dict[str, list[PendingRow]] = {}
    unnamed: list[PendingRow] = []
    fresh: list[PendingRow] = []
    for row in rows:
        if row.delivery_id:
            retried.setdefault(row.delivery_id, []).append(row)
        else:
            (unnamed if row.attempts else fresh).append(row)
    return [*retried.values(), *_chunks(unnamed, limit),
            *(_chunks(fresh, limit) if fresh_due else ())]


def _outbox_row(row: PendingRow, state: str, attempts: int, error: str, next_at: float,
                sent_at: datetime, revision: int) -> list[Any]:
    event_json = row.event.to_json().decode() if row.event is not None else ""
    return [row.rule, row.channel, row.event_id, event_json, state, attempts, error[:500],
            _dt(row.created_at), _dt(next_at), sent_at, revision, row.delivery_id]


def _chunks(rows: list[PendingRow], limit: int) -> list[list[PendingRow]]:
    return [rows[start:start + limit] for start in range(0, len(rows), limit)]


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _seconds(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def bounded(event: ChangeEvent) -> ChangeEvent:
    """The event with its free-text fields capped (they come from the network)."""
    return replace(event, before=event.before[:TEXT_CAP], after=event.after[:TEXT_CAP],
                   service=event.service[:FIELD_CAP], risk_color=event.risk_color[:16])


@dataclass(frozen=True, slots=True)
class PendingRow:
    rule: str
    channel: str
    event_id: str
    event: ChangeEvent | None
    attempts: int
    created_at: float
    next_attempt_at: float
    delivery_id: str = ""  # the message its last attempt went out in ("" never tried)
    last_error: str = ""

    @property
    def key(self) -> Key:
        return (self.rule, self.channel, self.event_id)


class AlertQueueError(RuntimeError):
    """Change events could not be queued in the outbox (the store failed ``QUEUE_ATTEMPTS``
    times): they are not alerted unless the caller submits them again."""


@dataclass
class DeliveryReport:
    sent: int = 0  # (rule, channel, event) deliveries recorded as sent in this pass
    retrying: int = 0
    # of the rows left queued, those that failed before (a retry waits on each): a drain
    # that ends with some did not deliver them (rows held by another worker's claim, or
    # never tried yet, are not counted)
    failed_before: int = 0
    failed: int = 0
    messages: int = 0  # messages sent, delivered or not
    delivered: int = 0  # of them, those the channel took
    errors: list[str] = field(default_factory=list)
    orphaned: int = 0  # pending for a rule or channel no longer in the file: never sent


class AlertDispatcher:
    """Outbox writer and deliverer over one ``Store`` (thread-safe through its lock)."""

    def __init__(self, store: Any, config: AlertConfig, *,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.config = config
        # The store server's time (``StoreClock``): every worker's rows compare on one
        # clock whatever its host's says (a test injects its own).
        self.clock: Callable[[], float] = StoreClock(store) if clock is None else clock
        self.sleep = sleep
        self.host = this_host()
        self._pass_lock = threading.Lock()
        # channel -> when it may be tried again (the receiver's Retry-After, or a failure's
        # backoff, at most CHANNEL_HOLD_SECONDS): kept across this dispatcher's passes (a
        # watcher's tick, the Kafka agent's timer), so a channel that asked for an hour
        # gets nothing for an hour, not the next message of its queue at every tick
        self._channel_holds: dict[str, float] = {}
        self.rules = {rule.name: rule for rule in config.rules}

    # -- submit -------------------------------------------------------------------------

    def submit(self, events: Iterable[ChangeEvent]) -> int:
        """Queue one pending delivery per (rule, channel, event) the rules select; returns
        how many were new. Accepted risks are skipped. A store error is tried again
        (``QUEUE_ATTEMPTS``, a hiccup passes), then raised as ``AlertQueueError``: the
        events are compared and stored, so no later scan raises them again; the caller
        keeps them and tries later (a second submit of the same events is harmless: the
        outbox key)."""
        events = list(events)
        for attempt in range(1, QUEUE_ATTEMPTS + 1):
            try:
                return self._submit(events)
            except Exception as exc:  # noqa: BLE001 - a store hiccup, or a bug: said, typed
                if attempt == QUEUE_ATTEMPTS:
                    raise AlertQueueError(
                        f"alerts: {len(events)} change event(s) could not be queued: "
                        f"{_one_line(exc)}") from exc
                self.sleep(retry_backoff(QUEUE_RETRY_SECONDS, attempt))
        return 0  # (QUEUE_ATTEMPTS >= 1: not reached)

    def store_answers(self) -> bool:
        """The store answers a plain query (an outage does not; a refused event does)."""
        try:
            self.store.query("SELECT 1")
        except Exception:  # noqa: BLE001 - the drivers raise many types
            return False
        return True

    def _submit(self, events: list[ChangeEvent]) -> int:
        if not events:
            return 0
        now = self.clock()
        acceptances = ActiveAcceptances.load(self.store, now)
        prevalence = self._prevalence({(e.proto.value, e.port) for e in events if e.port})
        wanted: dict[Key, ChangeEvent] = {}
        for event in events:
            if acceptances.covers(event):
                log.info("alerts: %s on %s %s/%s is an accepted risk: not alerted",
                         event.kind.value, event.target.target, event.port, event.proto.value)
                continue
            bucket = prevalence.get((event.proto.value, event.port), "") if event.port else ""
            event_id = event.event_id  # of the event as it was computed, before bounding
            for rule in self.config.rules:
                if matches(rule.match, event, bucket):
                    for channel in rule.notify:
                        wanted[(rule.name, channel, event_id)] = event
        if not wanted:
            return 0
        existing = self._existing_keys(list(wanted))
        created = _dt(now)
        rows = [[rule, channel, event_id, bounded(event).to_json().decode(), PENDING, 0, "",
                 created, created, EPOCH, 0, ""]
                for (rule, channel, event_id), event in wanted.items()
                if (rule, channel, event_id) not in existing]
        self.store.insert_rows("alert_outbox", OUTBOX_COLUMNS, rows)
        return len(rows)

    def _existing_keys(self, keys: Sequence[Key]) -> set[Key]:
        ids = sorted({k[2] for k in keys})
        rows = self.store.query(
            "SELECT DISTINCT rule, channel, event_id FROM alert_outbox "
            "WHERE event_id IN {ids:Array(String)}", {"ids": ids})
        return {(str(r[0]), str(r[1]), str(r[2])) for r in rows}

    def _prevalence(self, pairs: set[tuple[str, int]]) -> dict[tuple[str, int], str]:
        if not pairs or not any(rule.match.prevalence for rule in self.config.rules):
            return {}
        # As the List counts it: the larger of the estate's count and the Internet
        # prior's (off when the store's reader settings say no_prior), so a rule's
        # "rare" is the List's "rare", not every port of a small estate
        rows = self.store.query(
            "SELECT proto, port, greatest(max(estate), "
            "if({no_prior:UInt8} = 1, toUInt64(0), max(internet))) FROM ("
            "SELECT proto, port, toUInt64(uniqExactMerge(instances)) AS estate, "
            "toUInt64(0) AS internet FROM port_prevalence "
            "WHERE port IN {ports:Array(UInt16)} GROUP BY proto, port "
            "UNION ALL SELECT proto, port, toUInt64(0), toUInt64(max(instances)) "
            "FROM internet_prior WHERE port IN {ports:Array(UInt16)} GROUP BY proto, port"
            ") GROUP BY proto, port",
            {"ports": sorted({p for _, p in pairs}), "no_prior": 0})
        found = {(str(r[0]), int(r[1])): int(r[2]) for r in rows}
        return {pair: prevalence_bucket(found.get(pair, 0)) for pair in pairs}

    # -- deliver ------------------------------------------------------------------------

    def deliver_due(self, *, flush: bool = False, deadline: float | None = None,
                    log_failures: bool = True, held: dict[str, float] | None = None,
                    tried: list[PendingRow] | None = None,
                    halt: threading.Event | None = None) -> DeliveryReport:
        """One delivery pass: every (rule, channel) whose digest window closed (all of them
        with ``flush``) and every retry that is due goes out as one message; no message
        starts after ``deadline`` (a clock() time) nor once ``halt`` is set (another
        thread stops the pass: it ends with the send in flight): what is left stays
        queued. A failed send is logged (``log_failures``) and always in the report.
        Never raises."""
        report = DeliveryReport()
        try:
            with self._pass_lock:  # one pass at a time per dispatcher: no self-competition
                self._deliver_due(flush, report, deadline, log_failures, held, tried, halt)
        except Exception as exc:  # noqa: BLE001 - alerting must never fail a scan
            message = f"alerts: delivery pass failed: {_one_line(exc)}"
            if log_failures:  # else its caller says it (report_drain), once
                log.error("%s", message)
            report.errors.append(message)
        return report

    def _routes(self) -> list[str]:
        """The (rule, channel) pairs the file routes, as ``rule\x1fchannel`` (bound as one
        array: what the outbox rows are matched against)."""
        return sorted(f"{rule.name}\x1f{channel}" for rule in self.config.rules
                      for channel in rule.notify if channel in self.config.channels)

    def pending(self, *, due_by: float | None = None) -> list[PendingRow]:
        """Pending rows of the routes the file has (``due_by``: only those due by then),
        oldest first, each route its share of the pass (``MAX_ROWS_PER_PASS`` over the
        routes, at most ``MAX_ROWS_PER_PAIR``): however many routes a dead channel's
        backlog fills, the others still get theirs."""
        routes = self._routes()
        per_route = max(1, min(MAX_ROWS_PER_PAIR, MAX_ROWS_PER_PASS // max(1, len(routes))))
        rows = self.store.query(
            "SELECT rule, channel, event_id, event_json, attempts, created_at, "
            "next_attempt_at, delivery_id, last_error FROM alert_outbox FINAL "
            "WHERE state = 'pending' "
            "AND concat(rule, '\x1f', channel) IN {routes:Array(String)} "
            "AND next_attempt_at <= {due:DateTime64(3, 'UTC')} "
            "ORDER BY created_at, rule, channel, event_id "
            "LIMIT {per:UInt32} BY rule, channel LIMIT {limit:UInt32}",
            {"routes": routes, "per": per_route, "limit": MAX_ROWS_PER_PASS,
             "due": _dt(min(due_by, 9e9) if due_by is not None else 9e9)})
        out = []
        for (rule, channel, event_id, event_json, attempts, created_at, next_at, sent_as,
             error) in rows:
            try:
                event: ChangeEvent | None = ChangeEvent.from_json(str(event_json))
            except RecordError:
                event = None
            out.append(PendingRow(str(rule), str(channel), str(event_id), event, int(attempts),
                                  _seconds(created_at), _seconds(next_at), str(sent_as),
                                  str(error)))
        return out

    def _deliver_due(self, flush: bool, report: DeliveryReport,
                     deadline: float | None = None, log_failures: bool = True,
                     held: dict[str, float] | None = None,
                     tried: list[PendingRow] | None = None,
                     halt: threading.Event | None = None) -> None:
        """The pass. ``held`` (a drain's, across its passes): channel -> retry time; a
        held channel gets nothing before it, and one that fails is held until its retry
        time. Without it, the dispatcher's own holds, kept across its passes, do the
        same. ``tried`` collects the rows the pass tried to send."""
        now = self.clock()
        failing: dict[str, float] = self._channel_holds if held is None else held
        for name, until in list(failing.items()):
            if until <= now:
                del failing[name]  # its retry time came: it is tried again
        groups: dict[tuple[str, str], list[PendingRow]] = defaultdict(list)
        for row in self.pending(due_by=now):  # rows of routes no longer in the file stay:
            if row.channel not in failing:  # `alerts log` shows them
                groups[(row.rule, row.channel)].append(row)
        for (rule_name, channel_name), rows in sorted(groups.items()):
            rule = self.rules[rule_name]
            fresh_due = flush or self._window_closed(rule, rows, now)
            for batch in _messages(rows, self.config.delivery.max_events_per_message,
                                   fresh_due=fresh_due):
                if (deadline is not None and self.clock() >= deadline) or (
                        halt is not None and halt.is_set()):
                    return  # the rest waits for the next pass, in the outbox
                if channel_name in failing:
                    break  # it would fail (or time out) again: its rows wait, unclaimed
                if tried is not None:
                    tried.extend(batch)
                failed = self._send_batch(rule, channel_name, batch, report, log_failures)
                if failed is not None:
                    retry_at, asked = failed
                    if held is None:
                        # across passes, a plain failure holds the channel a few minutes at
                        # most (a receiver back gets fresh alerts soon, not after an hour
                        # of backoff); a receiver's own Retry-After, fully
                        retry_at = max(min(retry_at, now + CHANNEL_HOLD_SECONDS), asked)
                    failing[channel_name] = retry_at

    @staticmethod
    def _window_closed(rule: Rule, rows: Sequence[PendingRow], now: float) -> bool:
        """A digest goes out when its oldest new event waited the rule's window (retries
        go out when their backoff is over: ``pending(due_by=)``)."""
        fresh = [r.created_at for r in rows if not r.attempts and not r.delivery_id]
        return rule.digest_seconds <= 0 or not fresh or min(fresh) + rule.digest_seconds <= now

    def _send_batch(self, rule: Rule, channel_name: str, rows: Sequence[PendingRow],
                    report: DeliveryReport, log_failures: bool = True
                    ) -> tuple[float, float] | None:
        """Claim, send and record one message; when the channel failed it, the time its
        rows are tried again (as recorded: backoff, or the receiver's Retry-After) and the
        time the receiver itself asked for (0 when it asked nothing), else None."""
        owned = self._claim(rows)
        if not owned:
            return None
        undecodable = [r for r in owned if r.event is None]
        sendable = [r for r in owned if r.event is not None]
        self._record_all(undecodable, FAILED, "stored event cannot be decoded", report)
        if not sendable:
            return None
        channel = self.config.channels[channel_name]
        events = [r.event for r in sendable if r.event is not None]
        # The id names exactly these events: a retry of a whole message has its id again
        # (see _messages); a part of one (claims split between workers, a pass's share
        # cut it) is another message, with another id, never dropped as a duplicate.
        ident = delivery_id(rule.name, channel_name, [e.event_id for e in events])
        sending = [replace(r, delivery_id=ident) for r in sendable]
        self._mark_sending(sending)
        result = send(channel, rule.name, events, delivery=ident,
                      timeout=self.config.delivery.send_timeout_seconds)  # signed: wall clock
        report.messages += 1
        report.delivered += result.is_ok
        retry_at = self._record_all(sending, SENT if result.is_ok else None, result.error,
                                    report, retry_after=result.retry_after)
        if result.is_ok:
            return None
        message = f"alerts: rule {rule.name} -> {channel_name}: {result.error}"
        if log_failures:
            log.warning("%s", message)
        report.errors.append(message)
        asked = (self.clock() + min(result.retry_after, self.config.delivery.retry_max_seconds)
                 if result.retry_after > 0 else 0.0)
        return retry_at, asked

    def _claim(self, rows: Sequence[PendingRow]) -> list[PendingRow]:
        """The rows this pass won the right to send now (see module docstring). Every pass
        claims under its own owner id: two passes of one dispatcher (the Faust agent and
        its timer) compete like two workers."""
        now = self.clock()
        my_owner = owner_id(self.host)
        ids = sorted({r.event_id for r in rows})
        latest = self._latest_claims(ids)
        attempts: dict[Key, int] = {}
        for row in rows:
            attempt = row.attempts + 1
            claim = latest.get(row.key)
            if claim is not None and claim[0] >= attempt:
                if self._live_claim_end(row, claim, now) is not None:
                    continue  # another pass (of any worker) is sending this attempt now
                attempt = claim[0] + 1
            attempts[row.key] = attempt
            token = "\x1f".join((*row.key, str(attempt)))
            self.store.insert_rows("alert_claims", CLAIM_COLUMNS,
                                   [[*row.key, attempt, my_owner, _dt(now)]],
                                   dedup_token=token)
        if not attempts:
            return []
        won = {
            (str(r[0]), str(r[1]), str(r[2]), int(r[3]))
            for r in self.store.query(
                "SELECT rule, channel, event_id, attempt FROM alert_claims "
                "WHERE event_id IN {ids:Array(String)} AND owner = {owner:String}",
                {"ids": ids, "owner": my_owner})
        }
        return [replace(row, attempts=attempts[row.key] - 1) for row in rows
                if row.key in attempts and (*row.key, attempts[row.key]) in won]

    def _latest_claims(self, ids: Sequence[str]) -> dict[Key, tuple[int, str, float]]:
        """Per (rule, channel, event) of ``ids``: its latest claim (attempt, owner, when)."""
        latest: dict[Key, tuple[int, str, float]] = {}
        for rule, channel, event_id, attempt, claim_owner, claimed_at in self.store.query(
                "SELECT rule, channel, event_id, attempt, owner, claimed_at FROM alert_claims "
                "WHERE event_id IN {ids:Array(String)}", {"ids": list(ids)}):
            key = (str(rule), str(channel), str(event_id))
            if key not in latest or int(attempt) > latest[key][0]:
                latest[key] = (int(attempt), str(claim_owner), _seconds(claimed_at))
        return latest

    def _live_claim_end(self, row: PendingRow, claim: tuple[int, str, float] | None,
                        now: float) -> float | None:
        """When the live claim of another pass on ``row``'s next attempt runs out (it is
        sending it now); None when there is none (expired, or its owner process is gone)."""
        if claim is None or claim[0] < row.attempts + 1:
            return None
        _attempt, owner, claimed_at = claim
        end = claimed_at + self.config.delivery.claim_lease_seconds
        return end if end > now and not owner_is_gone(owner, self.host) else None

    def _mark_sending(self, rows: Sequence[PendingRow]) -> None:
        """Before the send, each row's message id (revision 4N for attempt N, between
        its last outcome and this attempt's): a worker killed after the channel took the
        message and before ``_record_all`` leaves its rows pending with that id, so the
        next pass sends the same events under the same id, which the receiver drops."""
        self.store.insert_rows("alert_outbox", OUTBOX_COLUMNS, [
            _outbox_row(row, PENDING, row.attempts, row.last_error, row.next_attempt_at,
                        EPOCH, (row.attempts + 1) * 4) for row in rows])

    def _record_all(self, rows: Sequence[PendingRow], state: str | None, error: str,
                    report: DeliveryReport, *, retry_after: float = 0.0) -> float:
        """Write the outcome of each row's attempt ``attempts + 1``, in one insert (one
        message's rows share it; a row per insert made a 10,000-row pass take minutes).
        ``state`` None: the attempt failed (retry with backoff, or give up; not before the
        receiver's ``retry_after``, kept to ``retry_max``). Returns the latest retry time
        of the failed rows (for a row given up, when it would have been retried)."""
        options = self.config.delivery
        now = self.clock()
        out = []
        latest_retry = now
        for row in rows:
            attempt = row.attempts + 1
            outcome, next_at = state, now
            if outcome is None:
                backoff = retry_backoff(options.retry_base_seconds, attempt)
                retry_at = now + min(options.retry_max_seconds, max(backoff, retry_after))
                latest_retry = max(latest_retry, retry_at)
                if attempt >= options.max_attempts:
                    outcome = FAILED
                else:
                    outcome, next_at = PENDING, retry_at
            rank = {PENDING: 1, FAILED: 2, SENT: 3}[outcome]
            out.append(_outbox_row(row, outcome, attempt, error, next_at,
                                   _dt(now) if outcome == SENT else EPOCH, attempt * 4 + rank))
            if outcome == SENT:
                report.sent += 1
            elif outcome == FAILED:
                report.failed += 1
            else:
                report.retrying += 1
        if out:
            self.store.insert_rows("alert_outbox", OUTBOX_COLUMNS, out)
        return latest_retry

    # -- one-shot -----------------------------------------------------------------------

    def drain(self, wait_seconds: float | None = None, *,
              bound_first: bool = False,
              halt: threading.Event | None = None) -> DeliveryReport:
        """Deliver everything queued, retrying within ``wait_seconds`` (default: the file's
        ``delivery: wait``); what is left stays queued for the next run. Never raises.
        The first pass sends everything due whatever the wait (a one-shot scan's alerts
        go out); with ``bound_first`` (a process stopping on a signal) it too starts no
        message past the wait.

        A channel that failed is not sent again before its retry time (``held``), in any
        pass of the drain. After a pass that changed nothing (its rows are held by another
        live worker's claim, or wait for their retry or their channel's), it sleeps until
        the earliest moment that can change; when that is past the wait, it returns.
        ``halt`` (set by a signal handler) ends it at once: the send in flight finishes
        (bounded by its timeout), nothing else starts, what is left stays queued."""
        budget = self.config.delivery.wait_seconds if wait_seconds is None else wait_seconds
        deadline = self.clock() + max(0.0, budget)
        total = DeliveryReport()
        held: dict[str, float] = {}  # channel -> its retry time: nothing is sent to it before
        first = True
        while True:
            # The first pass sends everything due even with no wait at all; a retry pass
            # starts no message past the deadline (each send is bounded by its timeout)
            # its caller reports the errors once (report_drain): not logged as they happen
            tried: list[PendingRow] = []  # the rows the pass tried to send
            started = self.clock()  # when its due rows were read
            report = self.deliver_due(flush=True,
                                      deadline=None if first and not bound_first else deadline,
                                      log_failures=False, held=held, tried=tried, halt=halt)
            first = False
            total.sent += report.sent
            total.failed += report.failed
            total.messages += report.messages
            total.delivered += report.delivered
            total.errors += report.errors
            total.retrying = report.retrying
            try:
                waiting, orphaned, channels, failed_before = self._waiting(started)
                total.failed_before = failed_before
                total.orphaned = orphaned
                if not waiting:
                    return total
                now = self.clock()
                if now >= deadline or (halt is not None and halt.is_set()):
                    total.retrying = waiting
                    return total
                if report.messages or report.sent or report.failed or report.retrying:
                    continue  # something changed: look again at once
                wake = self._next_change(now, held, channels, tried)
            except Exception as exc:  # noqa: BLE001 - never raise into a scan
                total.errors.append(f"alerts: {_one_line(exc)}")
                return total
            if wake >= deadline:  # nothing can be sent within the wait
                total.retrying = waiting
                return total
            nap = wake - now if wake > now else DRAIN_RECHECK_SECONDS
            if halt is None:
                self.sleep(nap)
            elif halt.wait(nap):  # a signal during the wait: what is left stays queued
                total.retrying = waiting
                return total

    def _waiting(self, due: float
                 ) -> tuple[int, int, dict[str, tuple[bool, float | None]], int]:
        """(pending rows of the file's routes, pending rows of routes the file no longer
        has: no run sends those, per channel of the file's routes: whether it has rows
        due by ``due`` and the earliest next attempt of its rows not due by then, and how
        many of the file's pending rows failed before)."""
        rows = self.store.query(
            "SELECT channel, routed, count(), countIf(next_attempt_at > {due:DateTime64(3, "
            "'UTC')}), minIf(next_attempt_at, next_attempt_at > {due:DateTime64(3, 'UTC')}), "
            "countIf(attempts > 0) "
            "FROM (SELECT channel, next_attempt_at, attempts, concat(rule, '\x1f', channel) "
            "IN {routes:Array(String)} AS routed FROM alert_outbox FINAL "
            "WHERE state = 'pending') GROUP BY channel, routed",
            {"routes": self._routes(), "due": _dt(min(due, 9e9))})
        waiting = orphaned = failed = 0
        channels: dict[str, tuple[bool, float | None]] = {}
        for channel, routed, count, later, next_at, failed_before in rows:
            if not routed:
                orphaned += int(count)
                continue
            waiting += int(count)
            failed += int(failed_before)
            channels[str(channel)] = (int(count) > int(later),
                                      _seconds(next_at) if int(later) else None)
        return waiting, orphaned, channels, failed

    def _next_change(self, now: float, held: dict[str, float],
                     channels: dict[str, tuple[bool, float | None]],
                     tried: Sequence[PendingRow]) -> float:
        """After a pass that changed nothing: the earliest time a pass can send something.
        A row not due is sendable at its next attempt, a row of a held channel at the
        channel's retry time, a row another live worker claimed when the lease of that
        claim ends (its owner may also send it before: then there is nothing to do)."""
        times: list[float] = []
        for channel, (has_due, later) in channels.items():
            hold = held.get(channel)
            if later is not None:
                times.append(later if hold is None else max(later, hold))
            if has_due and hold is not None:
                times.append(hold)
        times.extend(self._lease_ends(tried, now))
        return min(times, default=now)

    def _lease_ends(self, rows: Sequence[PendingRow], now: float) -> list[float]:
        """For each row a pass tried and did not send: when the live claim on its next
        attempt (as ``_claim`` judges it) runs out; ``now`` for a row with none."""
        if not rows:
            return []
        latest = self._latest_claims(sorted({r.event_id for r in rows}))
        ends = [self._live_claim_end(row, latest.get(row.key), now) for row in rows]
        return [now if end is None else end for end in ends]

    def sendable_count(self) -> int:
        """Pending deliveries of the file's routes: what a drain may still send (rows of
        rules or channels the file no longer has are kept, never sent)."""
        return self._waiting(self.clock())[0]

    def queued_count(self) -> int:
        rows = self.store.query("SELECT count() FROM alert_outbox FINAL WHERE state = 'pending'")
        return int(rows[0][0]) if rows else 0


def retry_backoff(base: float, attempt: int) -> float:
    """The wait after failed attempt ``attempt``: ``base`` doubled per attempt. The
    exponent is capped (2**60 s outlasts any retry_max): ``max_attempts`` may be 10,000,
    and from attempt 1,025 on the float overflowed, which aborted every delivery pass."""
    return base * 2.0 ** min(attempt - 1, MAX_BACKOFF_DOUBLINGS)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return mask_urls(f"{type(exc).__name__}: {text[0] if text else ''}")[:300]


def decode_event_json(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def alert_after_scan(store: Any, config: AlertConfig, events: Sequence[ChangeEvent], *,
                     wait_seconds: float | None = None) -> DeliveryReport:
    """What a one-shot ``scan --alerts FILE`` (or one ``process`` batch) calls after its
    findings are stored: queue the events, then deliver everything queued (digest windows
    closed early) within the bounded wait (default: the file's ``delivery: wait``, 30 s).
    What is not delivered stays queued for the next run. Raises ``AlertQueueError`` when
    the events could not be queued (after delivering what was queued before)."""
    dispatcher = AlertDispatcher(store, config)
    try:
        dispatcher.submit(events)
    except AlertQueueError:
        dispatcher.drain(wait_seconds)
        raise
    return dispatcher.drain(wait_seconds)
