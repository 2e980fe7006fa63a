"""Accepted risks' rows: the columns of ``accepted_risks``, their versions, the one rule
of when a port's new identification ends its acceptance, and the ends the change
recorder writes.

Owns: the row layout both writers share (``portwatch accept``, in
``portwatch/alerts/accepted.py``, adds, removes and judges acceptances; the change
recorder, ``history.py``, ends one when a compared scan finds another service, product
or version on its port) and ``ends_acceptance``, the rule both apply.

Why here: the recorder runs in both shapes (the embedded scan, the distributed sink),
with or without alerting. An acceptance ended only by the alerting path outlived a
change no alert rule was asked about, and came back in force when the port rolled
back to the version accepted (a review).

Must not touch: delivery, the network, the rest of the change history.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

COLUMNS = ("target", "proto", "port", "note", "accepted_by", "accepted_at", "until",
           "service", "product", "version", "is_removed", "revision")
EPOCH = datetime.fromtimestamp(0, UTC)

Identity = tuple[str, str, str]  # a port's (service, product, version)


class Renamed(NamedTuple):
    """A port whose identification a compared scan changed (named before or not)."""

    target: str
    ip: str
    proto: str
    port: int
    before: Identity
    after: Identity
    at: datetime  # when the scan that found ``after`` finished


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


def ends_acceptance(accepted: Identity, before: Identity, after: Identity) -> bool:
    """Does a port that went from ``before`` to ``after`` end an acceptance recorded
    with ``accepted`` (empty: the port was not named when it was accepted)?

    A port no scan could name (``after`` empty: a busy server that said nothing) is not
    judged: one such scan once ended an acceptance for good. An acceptance recorded
    before its port was named ends at the first change between two names."""
    if not any(after):
        return False
    if any(accepted):
        return after != accepted
    return any(before) and before != after


def is_in_force(accepted: Identity, now: Identity) -> bool:
    """A port acceptance still holds for a port named ``now``: as ``ends_acceptance``
    judges it, the report SQL's ``is_port_accepted`` (list.sql, summary.sql) included."""
    return not any(accepted) or not any(now) or accepted == now


def end_renamed(store: Any, renamed: Sequence[Renamed], now: datetime) -> int:
    """End every acceptance in force that ``renamed`` breaks (``ends_acceptance``), by
    either spelling of its host (the address, the target in lower case), and only by a
    scan that finished after it was accepted; the number ended."""
    if not renamed or not store.query(
            "SELECT count() > 0 FROM accepted_risks WHERE is_removed = 0")[0][0]:
        return 0  # (most stores accept nothing: 0.8 ms, where the read below takes 3.5)
    by_port: dict[tuple[str, str, int], list[Renamed]] = {}
    for r in renamed:
        for name in {r.ip, r.target.lower()}:
            by_port.setdefault((name, r.proto, r.port), []).append(r)
    rows = store.query(
        "SELECT target, proto, port, accepted_at, service, product, version "
        "FROM accepted_risks FINAL WHERE is_removed = 0 AND port > 0 "
        "AND target IN {names:Array(String)}",
        {"names": sorted({name for name, _, _ in by_port})})
    ended = []
    for target, proto, port, accepted_at, service, product, version in rows:
        accepted_at = accepted_at if accepted_at.tzinfo else accepted_at.replace(tzinfo=UTC)
        accepted = (str(service), str(product), str(version))
        if any(r.at > accepted_at and ends_acceptance(accepted, r.before, r.after)
               for r in by_port.get((str(target), str(proto), int(port)), ())):
            ended.append(end_row(str(target), str(proto), int(port), accepted_at, now))
    store.insert_rows("accepted_risks", COLUMNS, ended)
    return len(ended)
