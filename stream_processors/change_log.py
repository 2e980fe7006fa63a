"""The change log read and kept: the What-changed report's query, durations like ``7d``,
and ``prune`` (raw observations older than a cutoff; never the log nor the states).

Owns: reading ``changes`` for reports (the CLI, the web's Changes and per-target pages)
and pruning the raw tables. Writing events and states is ``history.py``'s.

Must not touch: the change rule, Kafka, the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from stream_processors.changes import EPOCH
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
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_when(text: str) -> datetime:
    """``iso_moment``, kept inside the store's time range (years 1900 to 2299)."""
    from schemas.bounded import timestamp

    return timestamp(iso_moment(text))


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


def prune(store: Store, older_than: timedelta, *, now: datetime | None = None) -> datetime:
    """Delete raw observations (ports, TLS, certificates, host scans) older than the
    cutoff. Never touches ``findings`` (first_seen), ``changes`` (the log), ``host_latest``,
    ``port_latest``, ``tls_latest``, ``host_state``/``port_state`` or prevalence: those are
    kept by views or the writer and do not depend on the raw rows once written. Returns the
    cutoff."""
    cutoff = (now or datetime.now(UTC)) - older_than
    if cutoff <= EPOCH:
        # Nothing is observed before 1970 (observations carry our clock), and the engine
        # takes no DateTime64 parameter at or before it: nothing to delete.
        return cutoff
    for table, column in (("port_observations", "observed_at"), ("tls_probes", "observed_at"),
                          ("tls_ciphers", "observed_at"), ("certificates", "observed_at"),
                          ("host_scans", "finished_at")):
        # A mutation: ClickHouse drops whole monthly partitions it fully covers and
        # rewrites only the boundary month; synchronous so the command's exit means done.
        store.command(f"ALTER TABLE {table} DELETE WHERE {column} < {{cutoff:DateTime64(3)}} "
                      "SETTINGS mutations_sync = 1", {"cutoff": cutoff})
    return cutoff
