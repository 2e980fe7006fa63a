"""Accepted risks' rows: the columns of ``accepted_risks``, their versions, the one rule
of when a port's identification ends its acceptance, and what the change recorder
writes when a compared scan names an accepted port.

Owns: the row layout both writers share (``portwatch accept``, in
``portwatch/alerts/accepted.py``, adds, removes and judges acceptances; the change
recorder, ``history.py``, hands every completed comparison's ports to
``judge_acceptances``) and the rule both apply (``ends_acceptance``, ``is_in_force``).

The rule: a port acceptance notes the port's service, product and version when it is
made (none when the port was not named yet: the first completed scan that names it
notes them). A completed scan that names the port otherwise ends it, for good: the old
version coming back is not accepted again. A scan that cannot name the port (a busy
server that said nothing) judges nothing; an interrupted scan, or one that did not cover
the port, is not compared, so it judges nothing either.

Why here, in the recorder: it runs in both shapes (the embedded scan, the distributed
sink), alerting or not. Ended by the alerting path alone, an acceptance outlived a
change no alert rule was asked about and came back in force when the port rolled back;
and that path judged by whatever the store showed, an interrupted scan's rows included
(two reviews).

Must not touch: delivery, the network, the rest of the change history.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from schemas.records import Proto
from stream_processors.changes import HostScanView

log = logging.getLogger(__name__)

COLUMNS = ("target", "proto", "port", "note", "accepted_by", "accepted_at", "until",
           "service", "product", "version", "is_removed", "revision")
EPOCH = datetime.fromtimestamp(0, UTC)

Identity = tuple[str, str, str]  # a port's (service, product, version)


def revision(at: datetime) -> int:
    """A row's version: twice the milliseconds, an acceptance even, its end odd (an end
    and an acceptance of the same millisecond: the end is the later)."""
    return int(at.timestamp() * 1000) * 2


def end_row(target: str, proto: str, port: int, accepted_at: datetime,
            now: datetime) -> list[Any]:
    """The row that ends the acceptance of (target, proto, port), after its own
    acceptance whatever the clock."""
    return [target, proto, port, "", "", now, EPOCH, "", "", "", 1,
            revision(max(now, accepted_at)) + 1]


def ends_acceptance(accepted: Identity, named: Identity) -> bool:
    """Does a completed scan that named the port ``named`` end an acceptance that noted
    ``accepted``? (Nothing noted: the scan notes it instead, see ``judge_acceptances``.)"""
    return any(accepted) and any(named) and named != accepted


def is_in_force(accepted: Identity, now: Identity) -> bool:
    """A port acceptance still holds for a port shown as ``now`` (what the store's
    latest row says, an interrupted scan's included): nothing noted, the port not named
    now, or named as noted. The report SQL's ``ACCEPTED_FOR`` (schemas/__init__.py) is
    the same rule."""
    return not any(accepted) or not any(now) or accepted == now


# Port acceptances not removed, not expired: the screen counts them without FINAL (the
# read's cost, 3 ms), so an ended one still counts until merged (``merge_ended``)
_IN_FORCE = ("is_removed = 0 AND port > 0 AND (until = toDateTime64(0, 3, 'UTC') "
             "OR until > {now:DateTime64(3, 'UTC')})")
_ANY_IN_FORCE_SQL = f"SELECT count() > 0 FROM accepted_risks WHERE {_IN_FORCE}"
_ACTIVE_PORTS_SQL = (
    "SELECT target, proto, port, note, accepted_by, accepted_at, until, service, product, "
    f"version, is_removed, revision FROM accepted_risks FINAL WHERE {_IN_FORCE}")  # COLUMNS


def judge_acceptances(store: Any, compared: Sequence[HostScanView], now: datetime) -> int:
    """Judge every port acceptance in force on the ports the completed scans
    ``compared`` named (by either spelling of the host: its address, its target in lower
    case), by a scan that finished after the acceptance: one that noted nothing notes
    the name (a row that replaces it), one named otherwise ends. The number of rows
    written."""
    if not compared or not store.query(_ANY_IN_FORCE_SQL, {"now": now})[0][0]:
        return 0  # (most stores accept nothing in force: one ~1 ms question per call)
    by_name: dict[str, list[tuple[Any, ...]]] = {}
    for row in store.query(_ACTIVE_PORTS_SQL, {"now": now}):
        by_name.setdefault(str(row[0]), []).append(row)
    written: dict[tuple[str, str, int], list[Any]] = {}  # each key's row, as it ends up
    for view in sorted(compared, key=lambda v: v.finished_at):  # a later scan's word last
        for name in {view.target.ip, view.target.target.lower()}:
            for row in by_name.get(name, ()):
                key = (str(row[0]), str(row[1]), int(row[2]))
                latest = written.get(key) or [*key, *row[3:]]  # (this call's, or as read)
                accepted_at = _aware(latest[5])
                named = _named(view, key[1], key[2])
                if latest[10] or named is None or view.finished_at <= accepted_at:
                    continue  # ended by an earlier scan of this call, or nothing to judge
                if not any(latest[7:10]):  # nothing noted: this name is
                    written[key] = [*latest[:6], _aware(latest[6]), *named, 0,
                                    max(revision(now), int(latest[11]) + 2)]
                elif ends_acceptance(tuple(latest[7:10]), named):
                    end = end_row(*key, accepted_at, now)
                    end[11] = max(end[11], int(latest[11]) + 1)
                    written[key] = end
    store.insert_rows("accepted_risks", COLUMNS, list(written.values()))
    if any(row[10] for row in written.values()):
        merge_ended(store)
    return len(written)


def merge_ended(store: Any) -> None:
    """Merge ``accepted_risks`` after an end or a removal: the acceptance's own row goes,
    so the recorder's screen (``_ANY_IN_FORCE_SQL``) no longer counts it (an ended one
    cost every later comparison the full read: a review). A table of human decisions:
    small, and ended seldom. Only speed is at stake: a refusal (merges stopped, no right
    to OPTIMIZE on a server) is said and passed over; it failed the scan before its
    changes were stored (a review)."""
    try:
        store.command("OPTIMIZE TABLE accepted_risks FINAL")
    except Exception as exc:  # noqa: BLE001 - the drivers raise many types
        log.warning("could not merge accepted_risks (acceptances stay correct; comparing "
                    "scans reads them until a merge): %s", str(exc).splitlines()[0][:300])


def _named(view: HostScanView, proto: str, port: int) -> tuple[str, str, str] | None:
    """The port as ``view``'s scan named it; None: not seen open, cut short or unnamed."""
    try:
        seen = view.ports.get((Proto(proto), port))
    except ValueError:
        return None
    if seen is None or not seen.is_open or seen.is_incomplete:
        return None
    named = (seen.service, seen.product, seen.version)
    return named if any(named) else None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
