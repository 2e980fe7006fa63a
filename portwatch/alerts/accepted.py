"""Accepted risks: a person's decision that a finding is known and tolerated.

Owns: the ``accepted_risks`` table (add, remove, list), parsing ``TARGET[:PORT/PROTO]``,
and the one rule of when an acceptance is active: not removed, not past its ``until``,
and (for one port) the port's service/product/version still what they were when it was
accepted. Whole-target acceptances (no port) end only by expiry or removal.
``ActiveAcceptances.covers(event)`` is what the dispatcher asks before alerting.

Must not touch: delivery, the network. Report SQL reads the same table through
``ACTIVE_ACCEPTED_SQL``; the row layout, the rule a port's identity is judged by
(``is_in_force``) and the ends the change recorder writes when a scan renames a port
are ``stream_processors/acceptances.py``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from producers.targets import looks_like_hostname
from schemas.bounded import TIME_MAX
from schemas.filters import is_ip_address
from schemas.records import ChangeEvent, canonical_address
from stream_processors.acceptances import (
    COLUMNS,
    EPOCH,
    end_row,
    is_in_force,
    merge_ended,
    revision,
)

NOTE_CAP = 500

# Active acceptances with the current identification of their port (empty when the port
# is not in the current findings); the caller (or a report) compares the two.
ACTIVE_ACCEPTED_SQL = """
SELECT a.target, a.proto, a.port, a.note, a.accepted_by, a.accepted_at, a.until,
       a.service, a.product, a.version
FROM accepted_risks AS a FINAL
WHERE a.is_removed = 0
  AND (a.until = toDateTime64(0, 3, 'UTC') OR a.until > {now:DateTime64(3, 'UTC')})
"""


class AcceptError(ValueError):
    """Bad ``accept`` input; one line for the user."""


@dataclass(frozen=True, slots=True)
class AcceptedRisk:
    target: str
    proto: str
    port: int  # 0 = every port of the target
    note: str
    accepted_by: str
    accepted_at: datetime
    until: datetime | None
    service: str = ""
    product: str = ""
    version: str = ""

    @property
    def where(self) -> str:
        if not self.port:
            return self.target
        host = f"[{self.target}]" if ":" in self.target else self.target
        return f"{host}:{self.port}/{self.proto}"


def parse_target_port(text: str) -> tuple[str, str, int]:
    """``TARGET``, ``TARGET:PORT``, ``TARGET:PORT/PROTO``, ``[v6]:PORT/PROTO`` ->
    (target, proto, port); port 0 means the whole target."""
    raw = text.strip()
    if not raw or len(raw) > 300 or any(ch.isspace() for ch in raw):
        raise AcceptError(f"bad target {text[:80]!r}: use TARGET or TARGET:PORT/PROTO")
    if is_ip_address(raw):
        return str(canonical_address(raw)), "tcp", 0
    # re.ASCII: \d took '٢٠٢٨١' and fullwidth digits as a port (a review)
    found = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5})(?:/(tcp|udp))?)?", raw,
                         re.I | re.ASCII) or \
        re.fullmatch(r"([^\[\]:/]+)(?::(\d{1,5})(?:/(tcp|udp))?)?", raw, re.I | re.ASCII)
    if not found:
        raise AcceptError(f"bad target {text[:80]!r}: use TARGET, TARGET:PORT/PROTO or "
                          "[IPv6]:PORT/PROTO")
    host, port_text, proto = found.group(1), found.group(2), (found.group(3) or "tcp").lower()
    if is_ip_address(host):
        host = str(canonical_address(host))
    elif raw.startswith("["):
        raise AcceptError(f"bad IPv6 address in {text[:80]!r}")
    elif not looks_like_hostname(host):
        raise AcceptError(f"bad target {text[:80]!r}: not an address or a hostname")
    port = int(port_text) if port_text else 0
    if port_text and not 1 <= port <= 65535:
        raise AcceptError(f"port out of range in {text[:80]!r}")
    return host.lower(), proto, port


def _day_of(text: str) -> date | None:
    """The day ``text`` names when it is a date alone (2027-01-31 or 20270131)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def parse_until(text: str, now: datetime) -> datetime:
    """``2027-01-31`` (through that day, UTC) or an ISO date-time; must be in the future."""
    try:
        if "W" in text.upper():
            # an ISO week (2027-W05, 2027-W05T10:00): read as its Monday by Python, and
            # "until week 5" is no one day (a review)
            raise ValueError(text)
        day = _day_of(text.strip())
        if day is not None:
            # Through that day (9999-12-31 has no next day; past the column's end anyway),
            # however ISO writes it: 20270131 ended at its start, a day early (datetime
            # reads a date as its midnight: a review)
            moment = (TIME_MAX + timedelta(seconds=1) if day >= TIME_MAX.date() else
                      datetime.combine(day, datetime.min.time(), UTC) + timedelta(days=1))
        else:
            moment = datetime.fromisoformat(text.strip())
            # UTC, as every time portwatch prints: 00:00+05:00 read "00:00 UTC"
            moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError:
        raise AcceptError(f"bad --until {text[:40]!r}: use a date like 2027-01-31 or an ISO "
                          "date-time") from None
    if moment <= now:
        raise AcceptError(f"--until {text[:40]!r} is in the past")
    if moment > TIME_MAX:  # once clamped to 2299 in silence: said instead
        raise AcceptError(f"--until {text[:40]!r} is later than the store keeps (up to "
                          f"{TIME_MAX:%Y-%m-%d %H:%M:%S} UTC); leave --until out to accept "
                          "for good")
    return moment


def accept(store: Any, target: str, proto: str, port: int, *, note: str, by: str,
           until: datetime | None, now: datetime) -> AcceptedRisk:
    """Record an acceptance, with the port's identification as shown now: its latest
    row, its own spelling's first (in any case, as everything else matches a target); a
    row no scan could name (an interrupted scan's) gives way to the change state's, the
    name its last completed scan gave (closed since, too: a port that reopened in an
    interrupted scan noted nothing, a review). Noted empty (never named), the first completed
    scan that names the port notes it."""
    service = product = version = ""
    if port:
        where = ("(lowerUTF8(target) = {t:String} OR ip = {t:String}) "
                 "AND proto = {proto:String} AND port = {port:UInt16}")
        params = {"t": target, "proto": proto, "port": port}
        # (an inventory's `Web-1` read no row, so nothing was noted and the next
        # version was taken as the accepted one, unalerted: a review)
        rows = store.query(
            f"SELECT service, product, version FROM current_findings WHERE {where} "
            "ORDER BY lowerUTF8(target) = {t:String} DESC, last_seen DESC LIMIT 1", params)
        if not rows or not any(rows[0]):
            rows = store.query(
                f"SELECT service, product, version FROM port_state FINAL WHERE {where} "
                "AND is_incomplete = 0 AND (service != '' OR product != '' "
                "OR version != '') ORDER BY lowerUTF8(target) = {t:String} DESC, "
                "updated_at DESC LIMIT 1", params) or rows  # (closed since: its last name)
        if rows:
            service, product, version = (str(v) for v in rows[0])
    risk = AcceptedRisk(target, proto, port, note[:NOTE_CAP], by[:100], now, until,
                        service, product, version)
    store.insert_rows("accepted_risks", COLUMNS, [[
        target, proto, port, risk.note, risk.accepted_by, now, until or EPOCH, service, product,
        version, 0, revision(now)]])
    return risk


def matches_a_port(store: Any, target: str, proto: str, port: int) -> bool:
    """Is a port stored that an acceptance of (target, proto, port) covers (port 0: any
    port of the target), as ActiveAcceptances matches them: the address, or the target as
    written in any case?"""
    rows = store.query(
        "SELECT count() > 0 FROM current_findings "
        "WHERE (ip = {t:String} OR lowerUTF8(target) = {t:String}) "
        "AND ({port:UInt16} = 0 OR (proto = {proto:String} AND port = {port:UInt16}))",
        {"t": target, "proto": proto, "port": port})
    return bool(rows and rows[0][0])


def remove(store: Any, target: str, proto: str, port: int, now: datetime) -> bool:
    """Withdraw an acceptance; False when there was none."""
    rows = store.query(
        "SELECT count() FROM accepted_risks FINAL WHERE target = {t:String} AND "
        "proto = {proto:String} AND port = {port:UInt16} AND is_removed = 0",
        {"t": target, "proto": proto, "port": port})
    if not rows or not int(rows[0][0]):
        return False
    store.insert_rows("accepted_risks", COLUMNS, [end_row(target, proto, port, now, now)])
    merge_ended(store)
    return True


def list_active(store: Any, now: datetime) -> list[AcceptedRisk]:
    return ActiveAcceptances.load(store, now.timestamp()).risks


@dataclass
class ActiveAcceptances:
    risks: list[AcceptedRisk]
    # What each port of the acceptances' hosts shows now, by (target in lower case,
    # address, proto, port): a port acceptance is judged on the row of the port an event
    # is about, as the reports judge each row (list.sql: once per spelling)
    shown: dict[tuple[str, str, str, int], tuple[str, str, str]] = field(
        default_factory=dict)

    @classmethod
    def load(cls, store: Any, now: float) -> ActiveAcceptances:
        """The acceptances in force at ``now``: recorded, not ended, not expired, and for
        a port, in force on one of its rows at least (``is_in_force``: a port named
        otherwise since its last completed scan, which the recorder ends at the next
        one, shows as not accepted meanwhile). Judging only: the ends are written by the
        change recorder (stream_processors/acceptances.py) after completed scans; this
        path once ended them on an interrupted scan's rows (a review)."""
        recorded = cls.recorded(store, now).risks
        names = sorted({a.target for a in recorded if a.port})
        shown: dict[tuple[str, str, str, int], tuple[str, str, str]] = {}
        if names:
            for target, ip, proto, port, service, product, version in store.query(
                    "SELECT target, ip, proto, port, service, product, version "
                    "FROM current_findings WHERE lowerUTF8(target) IN {names:Array(String)} "
                    "OR ip IN {names:Array(String)} ORDER BY last_seen", {"names": names}):
                shown[(str(target).lower(), str(ip), str(proto), int(port))] = (
                    str(service), str(product), str(version))  # the newest row last
        found = cls([], shown)
        found.risks = [r for r in recorded if not r.port or found._holds_somewhere(r)]
        return found

    def _holds_somewhere(self, risk: AcceptedRisk) -> bool:
        noted = (risk.service, risk.product, risk.version)
        rows = [identity for (target, ip, proto, port), identity in self.shown.items()
                if risk.target in (target, ip) and (proto, port) == (risk.proto, risk.port)]
        return not rows or any(is_in_force(noted, identity) for identity in rows)

    @classmethod
    def recorded(cls, store: Any, now: float) -> ActiveAcceptances:
        """The acceptances recorded and not ended at ``now``, not judged against what the
        ports show now (``of_port`` compares a port's identity itself): a page reads
        these, one target's rows, never every port of the estate as ``load`` does."""
        moment = datetime.fromtimestamp(now, UTC)
        return cls([
            AcceptedRisk(str(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]),
                         _utc(r[5]), None if _utc(r[6]) == EPOCH else _utc(r[6]),
                         str(r[7]), str(r[8]), str(r[9]))
            for r in store.query(ACTIVE_ACCEPTED_SQL, {"now": moment})])

    def of_port(self, target: str, ip: str, proto: str, port: int,
                identity: tuple[str, str, str]) -> AcceptedRisk | None:
        """The acceptance a port shows under, as the List reads it (list.sql): one of the
        port still in force for ``identity`` (``is_in_force``), by the target's name
        before its address, else one of its whole host; None: not accepted."""
        names = (target.lower(), ip)
        by_port: dict[str, AcceptedRisk] = {}
        host_wide: dict[str, AcceptedRisk] = {}
        for risk in self.risks:
            if risk.target not in names:
                continue
            if risk.port == 0:
                host_wide.setdefault(risk.target, risk)
            elif risk.port == port and risk.proto == proto and is_in_force(
                    (risk.service, risk.product, risk.version), identity):
                by_port[risk.target] = risk
        return next((found[name] for found in (by_port, host_wide) for name in names
                     if name in found), None)

    def covers(self, event: ChangeEvent) -> bool:
        """Is ``event``'s port (or host) accepted, judged on the row it is about?"""
        target, ip = event.target.target.lower(), event.target.ip
        for risk in self.risks:
            if risk.target not in (target, ip):
                continue
            if risk.port == 0:
                return True
            if (risk.port, risk.proto) == (event.port, event.proto.value):
                shown = self.shown.get((target, ip, risk.proto, risk.port))
                if shown is None or is_in_force((risk.service, risk.product, risk.version),
                                                shown):
                    return True
        return False


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return EPOCH
