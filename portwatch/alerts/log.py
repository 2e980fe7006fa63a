"""``portwatch alerts log``: what was sent, what failed and why, what is still queued.

Owns: reading the outbox (current state of each delivery) and phrasing it, and pruning
the alerting's bookkeeping (``prune_alert_history``, called by ``portwatch prune``). Must
not touch: delivery itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from portwatch.alerts.channels import describe
from portwatch.alerts.config import mask_urls
from portwatch.render import jsonable
from schemas.records import ChangeEvent, RecordError

EPOCH = datetime.fromtimestamp(0, UTC)


@dataclass(frozen=True, slots=True)
class LogRow:
    rule: str
    channel: str
    event_id: str
    event: str  # one line naming the event
    state: str
    attempts: int
    last_error: str
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None

    @property
    def shown_error(self) -> str:
        """``last_error`` with any URL (any scheme: json://, xml://, ntfy://...) cut to
        ``scheme://host:port/…``: rows written by an earlier portwatch may hold a
        channel's whole URL, token included."""
        return mask_urls(self.last_error)

    @property
    def shown_state(self) -> str:
        """The state as ``--state`` names it: a pending delivery with a failed attempt
        is 'retrying' (it said 'pending' to `alerts log --state retrying`; a review)."""
        return "retrying" if self.state == "pending" and self.attempts else self.state

    def line(self) -> str:
        when = f"{self.created_at:%Y-%m-%d %H:%M:%S}"
        if self.state == "sent" and self.sent_at is not None:
            status = f"sent {self.sent_at:%Y-%m-%d %H:%M:%S} ({self.attempts} attempt(s))"
        elif self.state == "failed":
            status = f"FAILED after {self.attempts} attempt(s): {self.shown_error}"
        elif self.attempts:
            status = (f"retrying: attempt {self.attempts} failed ({self.shown_error}); next "
                      f"try {self.next_attempt_at:%Y-%m-%d %H:%M:%S}")
        else:
            status = "queued: not sent yet (sent by the next delivery pass or run)"
        return f"{when} {self.rule} -> {self.channel}: {self.event} | {status}"

    def as_dict(self) -> dict[str, Any]:
        """As JSON writes it: times as every ``--format json`` does (``...Z``, README),
        where they were ``+00:00`` here alone (a review)."""
        return {
            "rule": self.rule, "channel": self.channel, "event_id": self.event_id,
            "event": self.event, "state": self.shown_state, "attempts": self.attempts,
            "last_error": self.shown_error, "created_at": jsonable("", self.created_at),
            "next_attempt_at": jsonable("", self.next_attempt_at),
            "sent_at": jsonable("", self.sent_at) if self.sent_at else None,
        }


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return EPOCH


def delivery_log(store: Any, *, state: str = "", rule: str = "", limit: int = 100,
                 ) -> list[LogRow]:
    rows = store.query(
        "SELECT rule, channel, event_id, event_json, state, attempts, last_error, created_at, "
        "next_attempt_at, sent_at FROM alert_outbox FINAL "
        # 'retrying': pending with a failed attempt (what a dead receiver's deliveries
        # are until max_attempts: 'failed' alone showed none of them; a review)
        "WHERE ({state:String} = '' OR state = {state:String} "
        "OR ({state:String} = 'retrying' AND state = 'pending' AND attempts > 0)) "
        "AND ({rule:String} = '' OR rule = {rule:String}) "
        "ORDER BY created_at DESC, rule, channel, event_id LIMIT {limit:UInt32}",
        {"state": state, "rule": rule, "limit": limit})
    out = []
    for r in rows:
        try:
            text = describe(ChangeEvent.from_json(str(r[3])))
        except RecordError:
            text = f"event {r[2]} (unreadable)"
        sent_at = _utc(r[9])
        out.append(LogRow(str(r[0]), str(r[1]), str(r[2]), text, str(r[4]), int(r[5]),
                          str(r[6]), _utc(r[7]), _utc(r[8]),
                          None if sent_at == EPOCH else sent_at))
    return out


# ``portwatch prune``: the alerting's own rows would otherwise grow for ever (every event
# a rule selected, every claim, every scheduled run), and the delivery pass reads the
# outbox every few seconds. Mutations, synchronous so the command's exit means done.
_PRUNE_ALERTS = (
    # deliveries that ended (sent, or failed for good) before the cutoff: every revision
    ("alert_outbox", "(rule, channel, event_id) IN (SELECT rule, channel, event_id "
     "FROM alert_outbox FINAL WHERE state IN ('sent', 'failed') "
     "AND greatest(created_at, sent_at, next_attempt_at) < {cutoff:DateTime64(3)})"),
    # claims of attempts made before it, unless their delivery is still pending
    ("alert_claims", "claimed_at < {cutoff:DateTime64(3)} AND (rule, channel, event_id) "
     "NOT IN (SELECT rule, channel, event_id FROM alert_outbox FINAL "
     "WHERE state = 'pending')"),
    # watch slots' claims and renewals made before it (a running watcher renews its
    # claim every minute; a slot claimed again after its token was pruned moves on to
    # the next attempt: schedule.claim_slot)
    ("watch_claims", "claimed_at < {cutoff:DateTime64(3)}"),
    # runs that ended before it, except each entry's latest run, which schedules it
    ("watch_runs", "finished_at < {cutoff:DateTime64(3)} AND (entry, slot) NOT IN "
     "(SELECT entry, maxIf(slot, status != 'interrupted' AND slot <= now64(3)) "
     "FROM watch_runs GROUP BY entry)"),
)


def prune_alert_history(store: Any, cutoff: datetime) -> tuple[int, int]:
    """Delete the deliveries that ended, the claims (of deliveries and of watch slots) and
    the scheduled runs older than ``cutoff``; never a pending delivery, its claims, or
    an entry's latest run. A change event replayed after its delivery was pruned (a
    Kafka topic kept longer than the cutoff) is alerted again. Returns how many
    deliveries and scheduled runs it deleted (the command says so; it said it pruned
    them when there were none: a review)."""
    where = dict(_PRUNE_ALERTS)
    deliveries, runs = (int(store.query(
        f"SELECT uniqExact({key}) FROM {table} FINAL WHERE {where[table]}",
        {"cutoff": cutoff})[0][0]) for table, key in (
            ("alert_outbox", "rule, channel, event_id"), ("watch_runs", "entry, slot")))
    for table, condition in _PRUNE_ALERTS:
        store.command(f"ALTER TABLE {table} DELETE WHERE {condition} "
                      "SETTINGS mutations_sync = 1", {"cutoff": cutoff})
    return deliveries, runs
