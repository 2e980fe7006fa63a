"""The change log read and kept: the What-changed report's query, durations like ``7d``,
and ``prune`` (raw observations older than a cutoff; never the log nor the states).

Owns: reading ``changes`` for reports (the CLI, the web's Changes and per-target pages)
and pruning the raw tables. Writing events and states is ``history.py``'s.

Must not touch: the change rule, Kafka, the network.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

from stream_processors.changes import EPOCH
from stream_processors.risk_days import refresh_risk_days
from stream_processors.store import Report, Store

MAX_DURATION = timedelta(days=36_500)  # 100 years, whatever the unit


def parse_duration(text: str) -> timedelta:
    """A look-back ('90d', '12h', '30m', '2w', '1.5d'; schemas/durations.py, the grammar
    every command shares) -> timedelta, from 1 second to 100 years; ValueError with a
    one-line message otherwise."""
    from schemas.durations import parse_seconds

    return timedelta(seconds=parse_seconds(text, least=1,
                                           most=MAX_DURATION.total_seconds()))


def iso_moment(text: str) -> datetime:
    """An ISO date or date-time -> aware datetime (UTC when no zone is given), as given:
    what a window's two ends are compared as; ValueError with a clear message otherwise."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("use an ISO date or time, e.g. 2026-12-01 or 2026-12-01T08:00"
                         ) from None
    # digits past the microsecond (`date -Ins` writes nine) are dropped by fromisoformat:
    # a moment after .291 read as .291 itself (a review); it is the next microsecond
    finer = _BEYOND_MICROSECONDS.search(text)
    if finer and finer.group(1).strip("0") and parsed < datetime.max.replace(
            tzinfo=parsed.tzinfo):
        parsed += timedelta(microseconds=1)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_BEYOND_MICROSECONDS = re.compile(r"[.,]\d{6}(\d+)")


def same_moment(start_flag: str, end_flag: str, to_flag: str, moment: datetime) -> str:
    """What to say of a window whose two ends are the same ``moment``: the end is
    exclusive, so a date alone as both ends (``--from D --to D``) holds nothing; the
    next day's midnight is the end to give (``to_flag``: "--to " or "to=")."""
    day = moment.date()
    hint = (f": {to_flag}{day + timedelta(days=1)} ends with {day}"
            if day < date.max else "")
    return (f"{start_flag} and {end_flag} are the same moment: no event can match "
            f"({end_flag} is exclusive, a date alone its midnight{hint})")


def parse_when(text: str) -> datetime:
    """``iso_moment``, kept inside the store's time range (years 1900 to 2299), and
    raised to the store's next millisecond when it falls between two: a window is
    [from, to), compared in milliseconds, and its ends were cut to the millisecond
    before them (an event 0.4 ms before --from was listed, one 0.4 ms before --to was
    not: a review)."""
    from schemas.bounded import timestamp

    moment = timestamp(iso_moment(text))  # (clamped first: year 9999 has no next ms)
    if moment.microsecond % 1000:
        moment += timedelta(microseconds=1000 - moment.microsecond % 1000)
    return moment


CHANGES_REPORT_COLUMNS = (
    "kind", "severity", "target", "ip", "proto", "port", "before", "after", "scan_id",
    "previous_scan_id", "observed_at", "organization", "asset",
)


def changes_report(store: Store, *, since: datetime | None = None,
                   until: datetime | None = None, kinds: Sequence[str] = (),
                   severity: str = "", target: str = "", org: str = "", port: int = 0,
                   host: str = "", host_ip: str = "", limit: int = 0) -> Report:
    """The What-changed report: newest first; ``severity`` is a minimum; ``target`` what
    every report's --target matches (schemas/filters.py); ``host`` (and ``host_ip``): one
    host's events exactly, read by the table's key (the per-target page)."""
    from schemas import history_sql

    params = {
        "since": since or EPOCH, "until": until or datetime(2200, 1, 1, tzinfo=UTC),
        "kinds": list(kinds), "min_severity": severity, "target": target, "org": org,
        "port": port, "host": host, "host_ip": host_ip,
        "limit": limit if limit > 0 else 2**62,
    }
    return store.select("changes", history_sql("changes"), params)


# What a report still reads of the raw tables, whatever its age: each host's latest
# scan (the Summary's scan status and coverage, the per-target page's last score, a scan
# stored but never compared, which change recovery still needs) and its latest completed
# one (whose ports the reports show), and each TLS port's latest probe (the Ciphers
# report's suites and certificate).
_KEEP_HOST_SCAN = ("(target, ip, scan_id) NOT IN "
                   "(SELECT target, ip, scan_id FROM latest_host_scans) "
                   "AND (target, ip, scan_id) NOT IN "
                   "(SELECT target, ip, ports_scan_id FROM latest_host_scans)")
_KEEP_TLS_PROBE = ("(target, ip, port, scan_id) NOT IN "
                   "(SELECT target, ip, port, scan_id FROM latest_tls_probes)")
_PRUNED = (("port_observations", "observed_at", _KEEP_HOST_SCAN),
           ("tls_probes", "observed_at", _KEEP_TLS_PROBE),
           ("tls_ciphers", "observed_at", _KEEP_TLS_PROBE),
           ("certificates", "observed_at", _KEEP_TLS_PROBE),
           ("host_scans", "finished_at", _KEEP_HOST_SCAN),
           ("carried_history", "finished_at", _KEEP_HOST_SCAN))


class Pruned(NamedTuple):
    """What ``prune`` did: its cutoff, and how many scans' raw rows it deleted."""

    cutoff: datetime
    scans: int


def prune(store: Store, older_than: timedelta, *, now: datetime | None = None) -> Pruned:
    """Delete the raw rows (ports, TLS, certificates, host scans, the ports each scan
    carried) of the scans that ended before the cutoff: whole scans, never a scan cut in
    two (its ports are observed before it ends), and never the rows the reports still
    read (``_KEEP_HOST_SCAN``, ``_KEEP_TLS_PROBE``). Never touches ``findings``
    (first_seen), ``changes`` (the log), ``host_latest``, ``port_latest``, ``tls_latest``,
    ``host_state``/``port_state``, ``ports_carried`` or prevalence: those are kept by
    views or the writer and do not depend on the raw rows once written. Returns the
    cutoff and the number of scans whose rows it deleted (the command says it: a
    review)."""
    cutoff = (now or datetime.now(UTC)) - older_than
    if cutoff <= EPOCH:
        # Nothing is observed before 1970 (observations carry our clock), and the engine
        # takes no DateTime64 parameter at or before it: nothing to delete.
        return Pruned(cutoff, 0)
    ended = [str(r[0]) for r in store.query(
        "SELECT scan_id FROM host_scans GROUP BY scan_id "
        "HAVING max(finished_at) < {cutoff:DateTime64(3)}", {"cutoff": cutoff})]
    if not ended:
        return Pruned(cutoff, 0)
    # The score rows of every scan first (a stopped scan's are computed only at a later
    # scan's end or a web start: pruned before that, its point in the history was lost
    # for good, the change log still naming what it saw: a review). An error here stops
    # the prune before anything is deleted.
    refresh_risk_days(store)
    # the scans of which something goes: a scan the reports still read (each host's
    # latest one, and its latest completed one) is kept whole, and not counted (every
    # scan that ended was, so a prune that deleted nothing said it pruned: a review)
    pruned = int(store.query(
        "SELECT uniqExact(scan_id) FROM host_scans WHERE finished_at < "
        "{cutoff:DateTime64(3)} AND scan_id IN {ended:Array(String)} AND "
        f"{_KEEP_HOST_SCAN}", {"cutoff": cutoff, "ended": ended})[0][0])
    for table, column, keep in _PRUNED:
        # A mutation, waited for so the command's exit means done (or failed, said). The
        # time bound holds for every row of these scans; it spares the parts (monthly
        # partitions) of later data the rewriting.
        store.mutate(table, f"ALTER TABLE {table} DELETE WHERE {column} < "
                     f"{{cutoff:DateTime64(3)}} AND scan_id IN {{ended:Array(String)}} "
                     f"AND {keep}", {"cutoff": cutoff, "ended": ended})
    return Pruned(cutoff, pruned)
