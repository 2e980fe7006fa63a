"""Change history in the store: reading previous host states, writing events and states.

Owns: ``ChangeRecorder`` (what both transports use: fed findings as they are stored and
host-scan records as hosts complete, it loads the previous states, re-probes closure
candidates, calls the one rule ``changes.detect_changes`` and writes events and next
states), the rows of the ``changes`` / ``host_state`` / ``port_state`` /
``carried_history`` tables, and change recovery. Reading the log (the What-changed query)
and ``prune``: ``change_log.py``.

Must not touch: the change rule itself (``changes.py``), Kafka, the network except through
``probers.reprobe``.

Replays: a host scan whose scan is already the host's stored state is a replay; its events
are read back from ``changes`` (identical rows and ids), nothing is recomputed against the
state it produced. A scan older than the stored state (a late, out-of-order record) changes
nothing and yields no events: history is computed forward only.

Why one file: the reads of the previous states, the waves that chain several scans of a
host, the writes and their order (what a crash between two of them replays) and recovery
all share one notion of "this host's stored state"; split, each part would re-derive it.
The rule and the snapshots it compares live in ``changes.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

from probers.reprobe import reprobe
from producers.targets import Scope
from schemas.records import (
    ChangeEvent,
    ChangeKind,
    Finding,
    HostScan,
    PortRange,
    PortState,
    ProbeStatus,
    Proto,
    RecordError,
    Severity,
    Target,
)
from stream_processors.acceptances import judge_acceptances
from stream_processors.changes import (
    EPOCH,
    INCOMPLETE,
    PARTIAL_PREFIX,
    TEXT_CAP,
    TLS_PARTIAL,
    HostScanView,
    HostState,
    PortKey,
    PortSnapshot,
    ProbeAnswer,
    certificate_came_back,
    closure_candidates,
    detect_changes,
    fingerprint,
    host_views,
    is_near_expiry,
    liveness_candidates,
    parse_not_after,
    snapshot_of,
    to_millis,
    to_open,
)
from stream_processors.collector import collector_paused
from stream_processors.store import Store

log = logging.getLogger(__name__)

CHANGE_COLUMNS = (
    "event_id", "kind", "severity", "target", "hostname", "organization", "asset", "ip",
    "proto", "port", "before", "after", "risk_color", "service", "scan_id",
    "previous_scan_id", "observed_at",
)
HOST_STATE_COLUMNS = ("target", "ip", "scan_id", "finished_at", "is_reachable", "fingerprint")
CARRIED_COLUMNS = ("target", "ip", "proto", "port", "scan_id", "finished_at")
PORT_STATE_COLUMNS = (
    "target", "ip", "proto", "port", "is_open", "service", "product", "version", "risk_color",
    "is_cdn_expected", "tls_status", "tls_versions", "weak_suites", "tls_grade", "cert_sha256",
    "cert_not_after", "scan_id", "changed_at", "first_seen", "updated_at", "favicon", "jarm",
    "is_incomplete", "udp_reply",
)
HOST_BATCH = 2_000  # hosts per state query binding their names: bounded parameter size
DENSE_BATCH = 50_000  # hosts per key-range query (two bound values whatever its size)
RECOVER_BATCH = 2_000  # host scans recovered per round: bounded memory and parameters
# A completed host scan this old and still not compared was left by a transport that died:
# a live one compares within seconds of storing it (the distributed hold within max_hold).
RECOVER_AFTER = timedelta(minutes=10)

HostKey = tuple[str, str]  # (target, ip)
ScanHostKey = tuple[str, str, str]  # (scan_id, target, ip), as the recorder keys snapshots


@dataclass(frozen=True, slots=True)
class ReprobeOptions:
    """Bounds of the closure re-probe (count, concurrency, time)."""

    timeout: float = 3.0  # > 1 s: the kernel retransmits a lost SYN after ~1 s
    concurrency: int = 256
    max_probes: int = 10_000
    deadline: float = 60.0
    enabled: bool = True
    # The addresses this process may connect to (the sink's: the hosts come from a
    # topic); one outside it is not re-probed, so none of its ports is closed.
    scope: Scope | None = None


# -- state rows ------------------------------------------------------------------------------


def _event_row(e: ChangeEvent) -> list[Any]:
    t = e.target
    return [e.event_id, e.kind.value, e.severity.value, t.target, t.hostname, t.organization,
            t.asset, t.ip, e.proto.value, e.port, e.before[:TEXT_CAP], e.after[:TEXT_CAP],
            e.risk_color, e.service, e.scan_id, e.previous_scan_id, e.observed_at]


def _port_row(target: Target, s: PortSnapshot, updated_at: datetime) -> list[Any]:
    return [target.target, target.ip, s.proto.value, s.port, int(s.is_open), s.service,
            s.product, s.version, s.risk_color, int(s.is_cdn_expected), s.tls_status,
            list(s.tls_versions), list(s.weak_suites), s.tls_grade, s.cert_sha256,
            s.cert_not_after, s.scan_id, s.changed_at, s.first_seen, updated_at,
            s.favicon[:16], s.jarm[:62], int(s.is_incomplete), udp_reply(s)]


def udp_reply(s: PortSnapshot) -> int:
    """port_state.udp_reply of a snapshot: 0 TCP or unknown, 1 answered, 2 no reply."""
    if s.proto is not Proto.UDP or s.is_reply_unknown:
        return 0
    return 2 if s.is_unconfirmed else 1


_AWARE: dict[datetime, datetime] = {}  # naive time read back -> the same time in UTC
_AWARE_MAX = 65_536


def _utc(value: datetime) -> datetime:
    """A time the driver read back (naive, in UTC) as an aware one. Remembered: a day's
    state rows share few distinct times (a scan's hosts end together), and a replace costs
    ~0.8 us, the largest part of reading a host's state row."""
    if value.tzinfo:
        return value
    aware = _AWARE.get(value)
    if aware is None:
        if len(_AWARE) >= _AWARE_MAX:
            _AWARE.clear()
        aware = _AWARE[value] = value.replace(tzinfo=UTC)
    return aware


_PROTO = {p.value: p for p in Proto}  # Proto(value) costs ~15 us a row on this path
RANGE_QUERY_MIN = 64  # hosts per batch from which a key-range read beats bound arrays


def _reads_range(chunk: Sequence[HostKey], *, dense: bool) -> bool:
    return dense and len(chunk) >= RANGE_QUERY_MIN


def _state_filter(chunk: Sequence[HostKey], *, dense: bool) -> tuple[str, dict[str, Any]]:
    """WHERE clause reading one sorted batch of hosts. A dense batch (every host of a
    day's scan) reads the contiguous key range [first, last] of the sorting key and the
    caller drops the rows of other hosts: sorted batches are disjoint ranges, so a whole
    day's estate is read once, never once per batch. A sparse one (the few hosts whose
    scan changed) binds its names: the index reads only their granules, where the range
    would read and decode every neighbour in between (1.0 s of 3.1 s at 20,000 hosts)."""
    if _reads_range(chunk, dense=dense):
        return ("target >= {lo:String} AND target <= {hi:String}",
                {"lo": chunk[0][0], "hi": chunk[-1][0]})
    return ("target IN {targets:Array(String)} AND ip IN {ips:Array(String)}",
            {"targets": sorted({k[0] for k in chunk}), "ips": sorted({k[1] for k in chunk})})


class HostRow(NamedTuple):
    """A host's row of ``host_state``: enough to tell a replay and an unchanged host. (A
    NamedTuple: one is built for every host of every scan, at a third of a frozen
    dataclass's cost.)"""

    scan_id: str
    finished_at: datetime
    is_reachable: bool
    fingerprint: str


def load_host_rows(store: Store, keys: Sequence[HostKey]) -> dict[HostKey, HostRow]:
    wanted = set(keys)
    out: dict[HostKey, HostRow] = {}
    ordered = sorted(wanted)
    for start in range(0, len(ordered), DENSE_BATCH):
        where, params = _state_filter(ordered[start:start + DENSE_BATCH], dense=True)
        for target, ip, scan_id, finished_at, is_reachable, digest in store.query(
                "SELECT target, ip, scan_id, finished_at, is_reachable, fingerprint "
                f"FROM host_state FINAL WHERE {where}", params):
            if (target, ip) in wanted:
                out[(target, ip)] = HostRow(scan_id, _utc(finished_at), bool(is_reachable),
                                            digest)
    return out


def _port_state_sql(where: str, *, ranged: bool) -> str:
    """The latest row of each port matching ``where``. A key-range read merges its parts
    with FINAL. A read of bound names (the few hosts whose scan changed) keeps each port's
    newest row itself: FINAL would merge every granule those names touch, in every part,
    which is most of the table (at 100,000 hosts x 90 days, 175-350 hosts: 98-103 ms
    with FINAL, 44-57 ms so, the same rows; BENCHMARKS.md). Rows of one port with equal
    ``updated_at`` come from one scan's state, written again by a recomputation: equal."""
    columns = ", ".join(PORT_STATE_COLUMNS)
    if ranged:
        return f"SELECT {columns} FROM port_state FINAL WHERE {where}"
    return (f"SELECT {columns} FROM port_state WHERE {where} "
            "ORDER BY updated_at DESC LIMIT 1 BY target, ip, proto, port")


def load_ports(store: Store, keys: Sequence[HostKey], *, dense: bool = True
               ) -> dict[HostKey, dict[PortKey, PortSnapshot]]:
    """Every port state of ``keys``; ``dense``: the keys are most hosts of their key
    range (see ``_state_filter``)."""
    wanted = set(keys)
    ports: dict[HostKey, dict[PortKey, PortSnapshot]] = {}
    ordered = sorted(wanted)
    step = DENSE_BATCH if dense else HOST_BATCH
    for start in range(0, len(ordered), step):
        chunk = ordered[start:start + step]
        where, params = _state_filter(chunk, dense=dense)
        for row in store.query(_port_state_sql(where, ranged=_reads_range(chunk, dense=dense)),
                               params):
            (target, ip, proto_text, port, is_open, service, product, version, color, cdn,
             tls_status, versions, weak, grade, sha, not_after, scan_id, changed_at,
             first_seen, updated, favicon, jarm, incomplete, reply) = row
            key = (target, ip)
            if key not in wanted:
                continue  # a neighbour inside the key range, not asked for
            proto = _PROTO[proto_text]
            ports.setdefault(key, {})[(proto, port)] = PortSnapshot(
                proto, port, bool(is_open), service, product, version, color, bool(cdn),
                tls_status, tuple(versions), tuple(weak), grade, sha, _utc(not_after),
                scan_id, _utc(changed_at), _utc(first_seen), bool(incomplete),
                favicon=favicon, jarm=jarm, seen_at=_utc(updated), is_unconfirmed=reply == 2,
                is_reply_unknown=reply == 0 and proto is Proto.UDP)
    return ports


def load_states(store: Store, targets: Sequence[Target]) -> dict[HostKey, HostState]:
    """The stored state of each host (absent: never completed a scan)."""
    by_key = {(t.target, t.ip): t for t in targets}
    rows = load_host_rows(store, list(by_key))
    ports = load_ports(store, list(rows))
    return {key: HostState(by_key[key], row.scan_id, row.finished_at, row.is_reachable,
                           ports.get(key, {}))
            for key, row in rows.items()}


_EVENT_KEY = "target, ip, proto, port, kind, scan_id"  # the changes table's sorting key


def stored_events(store: Store, views: Sequence[HostScanView]) -> list[ChangeEvent]:
    """The events already stored for these host scans (a replay reads them back), in
    ``views`` order, each host's by (proto, port, kind). One query per ``HOST_BATCH``
    hosts, not one per host: a replayed Kafka partition or a re-run recovery brings back
    thousands of host scans at once (one query each took ~15 ms a host)."""
    targets = {(v.scan_id, v.target.target, v.target.ip): v.target for v in views}
    found: dict[ScanHostKey, list[ChangeEvent]] = {}
    hosts = sorted({(k[1], k[2]) for k in targets})
    scans = sorted({k[0] for k in targets})
    for start in range(0, len(hosts), HOST_BATCH):
        where, params = _state_filter(hosts[start:start + HOST_BATCH], dense=False)
        for (scan_id, t, ip, k, sev, proto, port, before, after, color, service, prev,
             at) in store.query(
                "SELECT scan_id, target, ip, kind, severity, proto, port, before, after, "
                "risk_color, service, previous_scan_id, observed_at FROM changes "
                f"WHERE {where} AND scan_id IN {{scans:Array(String)}} "
                # Each event once, without FINAL: the rows of one key are one event
                # written again (same scan, same observed_at, same text). FINAL merged every
                # part's granules the bound names touch: at 100,000 hosts x 90 days, 2,000
                # hosts took 151-170 ms with it, 28 ms so (BENCHMARKS.md).
                f"ORDER BY {_EVENT_KEY} LIMIT 1 BY {_EVENT_KEY}", {**params, "scans": scans}):
            target = targets.get((scan_id, t, ip))
            if target is None:
                continue  # another host scan matching the bound names
            found.setdefault((scan_id, t, ip), []).append(ChangeEvent(
                kind=ChangeKind(k), severity=Severity(sev), target=target, scan_id=scan_id,
                previous_scan_id=prev, proto=Proto(proto), port=int(port), before=before,
                after=after, risk_color=color, service=service, observed_at=_utc(at)))
    return [e for key in targets for e in found.get(key, ())]


@dataclass
class _Rows:
    changes: list[list[Any]] = field(default_factory=list)
    hosts: list[list[Any]] = field(default_factory=list)
    ports: list[list[Any]] = field(default_factory=list)
    carried: list[list[Any]] = field(default_factory=list)
    # (target, ip, proto, port, scan_id) a scan no longer carries: it carried them when
    # part of it was handled earlier, and its later part closed them (see ``add``)
    uncarried: list[tuple[str, str, str, int, str]] = field(default_factory=list)
    # The completed scans this call compared: what they named judges the acceptances of
    # their ports (acceptances.py)
    compared: list[HostScanView] = field(default_factory=list)

    def add(self, view: HostScanView, previous: HostState | None,
            events: Sequence[ChangeEvent], state: HostState | None,
            reprobes: Mapping[PortKey, ProbeAnswer] | None = None) -> None:
        self.changes.extend(_event_row(e) for e in events)
        if state is None:
            self._carry_past_a_partly_completed_scan(view, previous)
            return
        finished_at = view.finished_at
        self.compared.append(view)
        self.hosts.append([state.target.target, state.target.ip, view.scan_id, finished_at,
                           int(state.is_reachable), fingerprint(state.open_ports)])
        if not state.is_reachable:
            # its ports are kept as they were (the reports show none: it is down), but
            # for those a stopped scan saw, opened now (detect_changes)
            self._port_rows(state, previous, finished_at)
            return
        # Open in the state, not seen by this scan, and either not covered by it or
        # answering the re-probe: the reports still count them while this scan is the
        # host's ports scan, and its score point counts them (ddl.sql carried_history).
        # A covered port the re-probe did not confirm (a silent UDP port, one past the
        # re-probe budget) is not: the change log does not close it on a guess, and the
        # reports do not show it on one either.
        answers = reprobes or {}
        carried = self._carry(
            state, view, finished_at,
            lambda k: not view.covers(k) or answers.get(k) is ProbeAnswer.OPEN)
        if previous is not None and (previous.scan_id == view.scan_id or len(view.shards) > 1):
            # Part of this scan was handled before (a shard the distributed hold compared
            # on its own, a cut scan's completed part that carried every port): what that
            # part carried and this comparison no longer does (it closed it, or left it
            # unconfirmed) must stop counting as the host's, in the reports and in this
            # scan's score (the first part's row kept a closed port open: a review)
            self.uncarried.extend(
                (state.target.target, state.target.ip, k[0].value, k[1], view.scan_id)
                for k, s in previous.ports.items()
                if s.is_open and k not in view.ports and k not in carried)
        self._port_rows(state, previous, finished_at)

    def _port_rows(self, state: HostState, previous: HostState | None,
                   finished_at: datetime) -> None:
        """Only the ports whose snapshot this scan replaced (opened, closed, changed): an
        unchanged port keeps its row, so port_state grows with churn, not with scans."""
        if previous is None:
            self.ports.extend(_port_row(state.target, s, finished_at)
                              for s in state.ports.values())
            return
        self.ports.extend(_port_row(state.target, s, finished_at)
                          for k, s in state.ports.items() if previous.ports.get(k) is not s)


    def _carry_past_a_partly_completed_scan(self, view: HostScanView,
                                            previous: HostState | None) -> None:
        """A scan not compared (not every shard completed) closes nothing; but if one of
        its shards completed, it is the host's ports scan (ddl.sql latest_host_scans), so
        every port the change log holds open that it did not see is carried: it hides
        none, the ones its completed part covered included (no re-probe has confirmed
        their silence, and the change log closes nothing until a scan completes whole: a
        Ctrl-C in the UDP part, after the TCP part completed, hid a TCP port that had
        closed, with no event; a review). A scan with no completed shard writes nothing:
        its newer rows would displace the ports scan's. The rows' version is when its
        completed part ended, the time that makes it the ports scan (not its interrupted
        part's end): the row a merge keeps for a port is then the one of the scan that
        sorts last there, and it counts only while that scan is the ports scan. One whose
        completed part ended before the stored state's scan is not the ports scan:
        nothing to write. (Not recovered after a crash, nor backfilled by layout 15: such
        a host shows what the scan saw until its next scan.)"""
        done = [h for h in view.shards if h.status == "completed"]
        if previous is None or not previous.is_reachable or view.is_completed or not done:
            return
        became = _utc(to_millis(max(h.finished_at for h in done)))
        if (became, view.scan_id) <= (previous.finished_at, previous.scan_id):
            return
        self._carry(previous, view, became, lambda _key: True)

    def _carry(self, state: HostState, view: HostScanView, at: datetime,
               keep: Callable[[PortKey], bool]) -> set[PortKey]:
        """The ports ``state`` holds open that ``view`` did not see and ``keep`` keeps, as
        ``carried_history`` rows of ``view``'s scan, versioned ``at`` (its view keeps
        each port's latest in ``ports_carried``, what the reports read); returned."""
        kept = {k for k, s in state.ports.items()
                if s.is_open and k not in view.ports and keep(k)}
        self.carried.extend([state.target.target, state.target.ip, k[0].value, k[1],
                             view.scan_id, at] for k in kept)
        return kept

    def add_unchanged(self, fast: Sequence[tuple[HostScanView, HostRow]]) -> None:
        """Hosts whose scan matches their stored fingerprint: only their scan moves."""
        self.compared.extend(view for view, _ in fast)
        self.hosts.extend([view.target.target, view.target.ip, view.scan_id,
                           view.finished_at, 1, row.fingerprint] for view, row in fast)


def write_rows(store: Store, rows: _Rows) -> None:
    """Events and carried ports first, then the states: a crash in between recomputes the
    same rows against the old states on replay, and the tables' keys merge them (once the
    host's state names this scan, a replay reads its events back and computes nothing).
    Before all, what the compared scans named does to their ports' acceptances: judged
    again after a crash, the same scans write the same verdicts."""
    judge_acceptances(store, rows.compared, datetime.now(UTC))
    store.insert_rows("changes", CHANGE_COLUMNS, rows.changes)
    if rows.uncarried:
        gone = set(rows.uncarried)  # carried by an earlier wave of this call: not written
        rows.carried = [r for r in rows.carried if (r[0], r[1], r[2], r[3], r[4]) not in gone]
        uncarry(store, rows.uncarried)  # (by an earlier call: withdrawn)
    store.insert_rows("carried_history", CARRIED_COLUMNS, rows.carried)  # none: no insert
    store.insert_rows("host_state", HOST_STATE_COLUMNS, rows.hosts)
    store.insert_rows("port_state", PORT_STATE_COLUMNS, rows.ports)


_UNCARRY = ("WHERE (target, ip, proto, port, scan_id) IN "
            "{keys:Array(Tuple(String, String, String, UInt16, String))}")


def uncarry(store: Store, keys: Sequence[tuple[str, str, str, int, str]]) -> None:
    """Withdraw ports their scan carried (``_Rows.uncarried``) from ``carried_history``
    and ``ports_carried`` (lightweight deletes: a row a scan carried has no newer
    version that could say "no longer"), and note their scans for the risk chart's rows
    (risk_days: its point counted them). Most such keys were never carried (a scan of
    TCP and UDP closing a port is a candidate): they are looked up first, one read, and
    the deletes (a first one costs a process ~250 ms) run only for rows there are."""
    keys = [tuple(row) for row in store.query(
        "SELECT DISTINCT target, ip, proto, port, scan_id FROM carried_history " + _UNCARRY,
        {"keys": list(keys)})]
    if not keys:
        return
    for table in ("carried_history", "ports_carried"):
        store.command(f"DELETE FROM {table} " + _UNCARRY, {"keys": list(keys)})
    scans = sorted({(t, ip, scan_id) for t, ip, _proto, _port, scan_id in keys})
    now = datetime.now(UTC)
    store.insert_rows("risk_dirty", ("target", "ip", "scan_id", "noted_at"),
                      [[t, ip, scan_id, now] for t, ip, scan_id in scans])


# -- certificate expiry already said ----------------------------------------------------------

ExpiryEntry = tuple[Proto, int, str, str, int]  # changes.ExpiryAlerts' members
_EXPIRY_ALERTS_SQL = (
    "SELECT target, ip, proto, port, kind, before, after FROM changes "
    "WHERE target IN {targets:Array(String)} AND ip IN {ips:Array(String)} "
    "AND kind IN ('cert_expiring', 'cert_expired') "
    "AND observed_at >= {since:DateTime64(3, 'UTC')}")
EXPIRY_HOSTS_PER_READ = 2_000


def _expiry_entries(proto: str, port: int, kind: str, before: str, after: str
                    ) -> list[ExpiryEntry]:
    """An expiry event's entry: (proto, port, kind, notAfter, threshold days; 0 for
    expired). An event row no writer of ours makes gives none."""
    try:
        if kind == ChangeKind.CERT_EXPIRED.value:
            return [(Proto(proto), int(port), kind, after, 0)]
        days = after.removesuffix("d")
        return [(Proto(proto), int(port), kind, before, int(days))] if days.isdigit() else []
    except ValueError:
        return []


def expiry_alerts(store: Store, views: Sequence[HostScanView]
                  ) -> dict[HostKey, set[ExpiryEntry]]:
    """The certificate expiry events the change log holds for ``views``' hosts, from
    31 days before the earliest of their near-expiry certificates' ends (a threshold is
    crossed at most 30 days before, "expired" after)."""
    since = min((s.cert_not_after for v in views for s in v.ports.values()
                 if s.cert_sha256 and s.cert_not_after > EPOCH), default=EPOCH
                ) - timedelta(days=31)
    keys = sorted({(v.target.target, v.target.ip) for v in views})
    out: dict[HostKey, set[ExpiryEntry]] = {}
    for start in range(0, len(keys), EXPIRY_HOSTS_PER_READ):
        chunk = keys[start:start + EXPIRY_HOSTS_PER_READ]
        wanted = set(chunk)
        for target, ip, proto, port, kind, before, after in store.query(_EXPIRY_ALERTS_SQL, {
                "targets": sorted({k[0] for k in chunk}), "ips": sorted({k[1] for k in chunk}),
                "since": since}):
            if (target, ip) in wanted:
                out.setdefault((target, ip), set()).update(
                    _expiry_entries(str(proto), int(port), str(kind), str(before), str(after)))
    return out


# -- ports only stopped scans saw -------------------------------------------------------------

# How long before one of its shards another shard of the same scan may have started
SCAN_SPAN = timedelta(days=7)

# Other scans' observations of the hosts since their states: most calls find none. The
# call's own scans are left out by the engine, unless one of them did not complete on
# some host (its observations there may be another view's sightings: the caller drops
# only its compared (scan, host) pairs; left out by scan id alone, a scan that completed
# one host and was stopped on another hid what it saw there: a review). ``began``: the
# earliest shard start of the call's own scans, less SCAN_SPAN.
_SINCE_SQL = (
    "SELECT target, ip, scan_id, max(observed_at) FROM port_observations WHERE {where} "
    "AND observed_at > {since:DateTime64(3, 'UTC')} "
    "AND (scan_id NOT IN {own:Array(String)} OR scan_id IN ("
    "SELECT DISTINCT scan_id FROM host_scans WHERE scan_id IN {own:Array(String)} "
    "AND status != 'completed' AND finished_at >= {began:DateTime64(3, 'UTC')})) "
    "GROUP BY target, ip, scan_id")


def stopped_sightings(store: Store, views: Sequence[HostScanView],
                      host_rows: Mapping[HostKey, HostRow]
                      ) -> dict[ScanHostKey, dict[PortKey, PortSnapshot]]:
    """For each completed view the rule will compare, the open ports that scans of its
    host which did not complete there (stopped during discovery or part-way, killed,
    still running) saw after the host's previous state (its stored one, or the call's
    earlier view of it) and up to the view's end, and that no completed shard of such a
    scan looked at later without seeing; the latest sighting of each. The Summary showed
    them after those scans (what a scan sees is open, even one cut short); the view's
    rule opens those it did not look at itself (``detect_changes``'s ``sighted``), where
    a narrower completed scan made them vanish with no event (a review). Judged by when
    each port was seen, as the reports do (a killed scan's only record is dated its
    shard's start). One read of the hosts' observations by other scans since their
    states (most calls find none: nothing more is read)."""
    windows: list[tuple[HostScanView, datetime]] = []
    last: dict[HostKey, datetime] = {}
    for v in sorted((v for v in views if v.is_completed),
                    key=lambda v: (v.target.target, v.target.ip, v.finished_at)):
        host = (v.target.target, v.target.ip)
        row = host_rows.get(host)
        since = last.get(host, row.finished_at if row is not None else EPOCH)
        if v.finished_at <= since:
            continue  # older than the state (or a replay): the rule does not compare it
        windows.append((v, since))
        last[host] = v.finished_at
    if not windows:
        return {}
    own = sorted({v.scan_id for v, _ in windows})
    compared = {(v.scan_id, v.target.target, v.target.ip) for v, _ in windows}
    began = min((h.started_at for v, _ in windows for h in v.shards),
                default=EPOCH + SCAN_SPAN) - SCAN_SPAN
    firsts: dict[HostKey, datetime] = {}  # each host's first window starts earliest
    for v, since in windows:
        firsts.setdefault((v.target.target, v.target.ip), since)
    hosts = sorted(firsts)
    earliest = min(firsts.values())
    keys: set[ScanHostKey] = set()
    for start in range(0, len(hosts), DENSE_BATCH):
        chunk = hosts[start:start + DENSE_BATCH]
        where, params = _state_filter(chunk, dense=True)
        for target, ip, scan_id, seen_at in store.query(
                _SINCE_SQL.replace("{where}", where),
                {**params, "since": earliest, "own": own, "began": began}):
            host = (str(target), str(ip))
            key = (str(scan_id), *host)
            if host in firsts and _utc(seen_at) > firsts[host] and key not in compared:
                keys.add(key)
    if not keys:
        return {}
    # which of those scans did not complete there, and what their completed shards
    # looked at, and when
    records: dict[ScanHostKey, list[HostScan]] = {}
    for h in stored_host_scans(store, keys):
        records.setdefault((h.scan_id, h.target.target, h.target.ip), []).append(h)
    stopped = {k for k in keys
               if not records.get(k) or any(h.status != "completed" for h in records[k])}
    if not stopped:
        return {}
    snapshots = stored_snapshots(store, stopped)
    by_host: dict[HostKey, list[ScanHostKey]] = {}
    for scan_key in stopped:
        by_host.setdefault((scan_key[1], scan_key[2]), []).append(scan_key)
    out: dict[ScanHostKey, dict[PortKey, PortSnapshot]] = {}
    for v, since in windows:
        host = (v.target.target, v.target.ip)
        # (time, 0, sighting) and (time, 1, a completed shard's look), in time order
        steps: list[tuple[datetime, int, Any]] = []
        for scan_key in by_host.get(host, ()):
            found = snapshots.get(scan_key, [])
            saw = {(p.proto, p.port) for p in found}
            steps.extend((p.changed_at, 0, p) for p in found)
            steps.extend((h.finished_at, 1, (h, saw)) for h in records.get(scan_key, ())
                         if h.status == "completed")
        seen: dict[PortKey, PortSnapshot] = {}
        for at, kind, item in sorted(steps, key=lambda step: (step[0], step[1])):
            if not since < at <= v.finished_at:
                continue
            if kind == 0:
                seen[(item.proto, item.port)] = item  # the later sighting wins
            else:
                shard, saw = item
                for gone in [k for k in seen if k not in saw and shard.covers(k[0], k[1])]:
                    del seen[gone]  # a later look that did not find it
        seen = to_open(None, v, seen)  # (the state is the rule's to hold against them)
        if seen:
            out[(v.scan_id, *host)] = seen
    return out


# -- the recorder both transports use ---------------------------------------------------------


@dataclass
class ChangeRecorder:
    """Collects this scan's open ports (as compact snapshots) and, when hosts complete,
    computes and stores their changes. One per embedded scan or per sink."""

    store: Store
    reprobe_options: ReprobeOptions = field(default_factory=ReprobeOptions)
    # Called with a call's events before the host states move past their scans (the
    # sink publishes them, acknowledged): a failure leaves the states as they were, so
    # the hosts are compared again, and nothing the store says was compared is unsent.
    publish: Callable[[list[ChangeEvent]], Awaitable[None]] | None = None
    _snapshots: dict[tuple[str, str, str], list[PortSnapshot]] = field(default_factory=dict)

    def add_findings(self, findings: Iterable[Finding]) -> None:
        with collector_paused():
            self._add_findings(findings)

    def _add_findings(self, findings: Iterable[Finding]) -> None:
        snapshots = self._snapshots
        for f in findings:
            p = f.port
            t = p.target
            key = (p.scan_id, t.target, t.ip)
            found = snapshots.get(key)
            if found is None:
                snapshots[key] = found = []
            found.append(snapshot_of(f))

    def add_snapshots(self, key: ScanHostKey, found: Iterable[PortSnapshot]) -> None:
        """Ports of a (scan, target, ip) rebuilt from the store (``stored_snapshots``):
        those an earlier run of a resumed scan stored, in shards this run did not scan."""
        self._snapshots.setdefault(key, []).extend(found)

    def forget(self, scan_id: str, target: Target) -> None:
        self._snapshots.pop((scan_id, target.target, target.ip), None)

    def forget_key(self, key: ScanHostKey) -> None:
        """Let go of a (scan, target, ip)'s ports whose host scan never came."""
        self._snapshots.pop(key, None)

    def _forget_taken(self, taken: Mapping[ScanHostKey, int]) -> None:
        """Forget the snapshots a call compared (the first ``n`` of each host's): ports
        of the same host scan added while the call awaited the store or its re-probes (a
        later shard's) stay for the call that gets that shard's record."""
        snapshots = self._snapshots
        for key, n in taken.items():
            found = snapshots.get(key)
            if found is None:
                continue
            if len(found) <= n:
                del snapshots[key]
            else:
                del found[:n]

    async def finish(self, host_scans: Sequence[HostScan]) -> list[ChangeEvent]:
        """Compute, store and return the changes of the hosts of ``host_scans`` (every
        shard record of each host in this scan must be in it)."""
        with collector_paused():
            return await self._finish(host_scans)

    async def _finish(self, host_scans: Sequence[HostScan]) -> list[ChangeEvent]:
        snapshots = self._snapshots
        views = sorted(host_views(host_scans, snapshots), key=lambda v: v.finished_at)
        taken = {key: len(snapshots.get(key, ()))
                 for key in [(v.scan_id, v.target.target, v.target.ip) for v in views]}
        views = _not_from_the_future(views)
        keys = [(v.target.target, v.target.ip) for v in views]
        host_rows = await asyncio.to_thread(load_host_rows, self.store, keys)
        sighted = await asyncio.to_thread(stopped_sightings, self.store, views, host_rows)
        repeated = {k for k, n in _counts(keys).items() if n > 1}
        # The fast path: a host whose new scan has the fingerprint of its stored state, and
        # no certificate near expiry, gets no event from the rule; only its scan moves.
        fast: list[tuple[HostScanView, HostRow]] = []
        slow: list[HostScanView] = []
        for view, key in zip(views, keys, strict=True):
            row = host_rows.get(key)
            if (row is not None and key not in repeated and row.is_reachable
                    and view.is_completed and view.finished_at > row.finished_at
                    and (view.scan_id, *key) not in sighted
                    and row.fingerprint == fingerprint(view.ports)
                    and not is_near_expiry(view.ports, view.finished_at)):
                fast.append((view, row))
            else:
                slow.append(view)
        # One write for the whole call (events first, then the states: see write_rows):
        # an insert costs ~20 ms whatever its size, so rows are not written per wave.
        rows = _Rows()
        rows.add_unchanged(fast)
        slow_keys = [(v.target.target, v.target.ip) for v in slow]
        # A replay (the stored state is this very scan; see _wave) reads its events back
        # and never compares its ports: they are not read (a replayed 10,000-host
        # partition spent a third of its time reading them).
        replays = {key for view, key in zip(slow, slow_keys, strict=True)
                   if key in host_rows and key not in repeated
                   and _is_replay(host_rows[key].scan_id, host_rows[key].finished_at, view)}
        known = [k for k in slow_keys if k in host_rows and k not in replays]
        ports = await asyncio.to_thread(partial(
            load_ports, self.store, known, dense=2 * len(known) > len(keys)))
        states = {key: HostState(view.target, host_rows[key].scan_id,
                                 host_rows[key].finished_at, host_rows[key].is_reachable,
                                 ports.get(key, {}))
                  for view, key in zip(slow, slow_keys, strict=True) if key in host_rows}
        events: list[ChangeEvent] = []
        # Waves: a host appears at most once per wave, oldest scan first, so several scans
        # of one host in one call (a backlog, a replayed partition) chain correctly.
        pending = slow
        expiry_said: dict[HostKey, set[ExpiryEntry]] = {}
        while pending:
            wave: list[HostScanView] = []
            later: list[HostScanView] = []
            seen: set[HostKey] = set()
            for view in pending:
                key = (view.target.target, view.target.ip)
                (later if key in seen else wave).append(view)
                seen.add(key)
            events.extend(await self._wave(wave, states, rows, expiry_said, sighted))
            pending = later
        if self.publish is not None and events:
            await self.publish(events)
        await asyncio.to_thread(write_rows, self.store, rows)
        self._forget_taken(taken)
        return events

    async def recover(self, *, finished_before: datetime, batch: int = RECOVER_BATCH,
                      held: Container[ScanHostKey] = (),
                      hosts: Collection[HostKey] | None = None) -> list[ChangeEvent]:
        """Compute the changes of every host scan stored but never compared (see
        "recovery" below), ``batch`` hosts at a time; their events, as ``finish`` gives.

        ``held``: the (scan, target, ip) the caller itself has claimed (a live view, asked
        after each page is read: the caller may store and claim more meanwhile). A
        backlog of old scans reads as "never compared" until the caller's hold releases
        it; it is left to the hold, never computed early from what has arrived so far.
        (A page of held hosts comes back unchanged, which ends the sweep; the next sweep,
        after the hold has released them, reaches what lies beyond.) ``hosts``: only
        these hosts' scans (a caller about to compare their next ones)."""
        events: list[ChangeEvent] = []
        done: set[ScanHostKey] = set()
        while True:
            fetched = await asyncio.to_thread(partial(
                pending_host_scans, self.store, finished_before=finished_before, limit=batch,
                hosts=hosts))
            page = {(h.scan_id, h.target.target, h.target.ip) for h in fetched}
            if not page or page <= done:
                return events  # nothing left, or nothing this round could move: never spin
            done |= page
            keys = _not_held(fetched, held)
            if keys:
                snapshots = await asyncio.to_thread(stored_snapshots, self.store, keys)
                for key, found in snapshots.items():
                    self._snapshots[key] = found
                before = len(events)
                events.extend(await self.finish(
                    [h for h in fetched if (h.scan_id, h.target.target, h.target.ip) in keys]))
                log.info("change recovery: %d host scans stored but never compared, "
                         "%d events", len(keys), len(events) - before)
            if len(page) < batch:
                return events

    async def _wave(self, views: Sequence[HostScanView], states: dict[HostKey, HostState],
                    rows: _Rows, expiry_said: dict[HostKey, set[ExpiryEntry]],
                    sighted: Mapping[ScanHostKey, Mapping[PortKey, PortSnapshot]]
                    ) -> list[ChangeEvent]:
        """One wave's events; its rows are added to ``rows`` (the caller writes them). A
        replay in a wave reads events stored by an earlier call: one call never holds the
        same scan of a host twice (host_views groups by scan). ``expiry_said``: the
        certificate expiry events of the call's earlier waves (not stored yet), added to.
        ``sighted``: ``stopped_sightings`` of the call's views."""
        todo: list[tuple[HostScanView, HostState | None]] = []
        replays: list[HostScanView] = []
        for view in views:
            previous = states.get((view.target.target, view.target.ip))
            if previous is not None and previous.finished_at >= view.finished_at:
                if _is_replay(previous.scan_id, previous.finished_at, view):
                    replays.append(view)  # the same rows back
                continue  # else a late, older scan: history is computed forward only
            todo.append((view, previous))
        events = (await asyncio.to_thread(stored_events, self.store, replays)
                  if replays else [])
        answers = await self._reprobe(todo, sighted)
        per_ip: dict[str, dict[PortKey, ProbeAnswer]] = {}
        for (a_ip, proto, port), answer in answers.items():
            per_ip.setdefault(a_ip, {})[(proto, port)] = answer
        recalled = [view for view, previous in todo if certificate_came_back(previous, view)]
        alerted = (await asyncio.to_thread(expiry_alerts, self.store, recalled)
                   if recalled else {})
        for view, previous in todo:
            host_answers = per_ip.get(view.target.ip, {})
            key = (view.target.target, view.target.ip)
            said = alerted.get(key, set()) | expiry_said.get(key, set())
            outcome = detect_changes(previous, view, host_answers, said,
                                     sighted.get((view.scan_id, *key)))
            for e in outcome.events:  # a later wave of this call (a backlog) knows them
                if e.kind in (ChangeKind.CERT_EXPIRING, ChangeKind.CERT_EXPIRED):
                    expiry_said.setdefault(key, set()).update(_expiry_entries(
                        e.proto.value, e.port, e.kind.value, e.before, e.after))
            rows.add(view, previous, outcome.events, outcome.state, host_answers)
            if outcome.state is not None:
                states[(view.target.target, view.target.ip)] = outcome.state
            events.extend(outcome.events)
        return events

    async def _reprobe(self, todo: Sequence[tuple[HostScanView, HostState | None]],
                       sighted: Mapping[ScanHostKey, Mapping[PortKey, PortSnapshot]]
                       ) -> Mapping[tuple[str, Proto, int], ProbeAnswer]:
        if not self.reprobe_options.enabled:
            return {}
        scope = self.reprobe_options.scope
        wanted = [(view.target.ip, proto, port) for view, previous in todo
                  if scope is None or scope.permits(view.target.ip)
                  for proto, port in [*closure_candidates(previous, view),
                                      *liveness_candidates(previous, view, sighted.get(
                                          (view.scan_id, view.target.target,
                                           view.target.ip)))]]
        if not wanted:
            return {}
        o = self.reprobe_options
        return await reprobe(wanted, timeout=o.timeout, concurrency=o.concurrency,
                             max_probes=o.max_probes, deadline=o.deadline)


# A host scan that says it finished later than this is from a clock far ahead, or forged
# by whoever can write the host-scans topic: compared, it would become the host's state,
# and every real scan after it "older than the state", never compared (one record dated
# 2250 silenced a host's alerts for good). Not compared; stored, and said.
FUTURE_SKEW = timedelta(hours=1)


def _not_from_the_future(views: list[HostScanView]) -> list[HostScanView]:
    limit = datetime.now(UTC) + FUTURE_SKEW
    kept = [v for v in views if v.finished_at <= limit]
    if len(kept) < len(views):
        late = next(v for v in views if v.finished_at > limit)
        log.warning("change detection: %d host scan(s) dated in the future not compared "
                    "(e.g. %s of %s, finished %s)", len(views) - len(kept), late.scan_id,
                    late.target.ip, late.finished_at.isoformat())
    return kept


def _not_held(fetched: Sequence[HostScan], held: Container[ScanHostKey]) -> set[ScanHostKey]:
    """The (scan, target, ip) of ``fetched`` to recover: a host's scans up to the first
    one its caller holds (that one is compared when the hold releases it; a later scan
    compared first would leave it "older than the state", never compared)."""
    ends: dict[ScanHostKey, datetime] = {}
    for h in fetched:
        key = (h.scan_id, h.target.target, h.target.ip)
        ends[key] = max(ends.get(key, h.finished_at), h.finished_at)
    blocked: dict[HostKey, tuple[datetime, str]] = {}
    for key, end in ends.items():
        if key in held:
            host = (key[1], key[2])
            blocked[host] = min(blocked.get(host, (end, key[0])), (end, key[0]))
    return {key for key, end in ends.items()
            if (key[1], key[2]) not in blocked or (end, key[0]) < blocked[(key[1], key[2])]}


def _is_replay(state_scan_id: str, state_finished_at: datetime, view: HostScanView) -> bool:
    """The host's stored state is this very scan (module docstring, "Replays"): its
    events are read back, its ports never compared."""
    return state_scan_id == view.scan_id and state_finished_at >= view.finished_at


def _counts(keys: Sequence[HostKey]) -> dict[HostKey, int]:
    counts: dict[HostKey, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return counts


# -- recovery: host scans stored but never compared ------------------------------------------
#
# A transport that dies between storing a host's scan and computing its changes (a sink
# crash while the host is held, a kill -9 of an embedded scan at a shard's end) leaves a
# completed host scan newer than the host's state. The store is the journal: the scan's
# rows are all there, so its snapshots are rebuilt from them (``snapshot_of`` bounds
# every value as the row builders do, so both give equal snapshots; a property test
# checks it) and the ordinary ``finish`` computes its events, as it would have.

_PENDING_SQL = """
WITH behind AS (
    -- Hosts whose latest *completed* shard is newer than their state (one row per host:
    -- bounded by the estate). A host whose newer rows are all running or interrupted is
    -- not behind: during a scan that is every host, whose history would be read at every
    -- sweep. ``since``: the state's time, the epoch for a host never compared.
    SELECT l.target AS target, l.ip AS ip, s.finished_at AS since, s.target != '' AS known
    FROM (SELECT target, ip, tupleElement(last_complete, 1) AS done_at
          FROM host_latest FINAL) AS l
    LEFT JOIN (SELECT target, ip, finished_at FROM host_state FINAL) AS s
        ON s.target = l.target AND s.ip = l.ip
    WHERE l.done_at > toDateTime64(0, 3, 'UTC')
      AND (s.target = '' OR s.finished_at < l.done_at)
      -- (only these hosts, when asked: a superset of their names, which is safe)
      AND ({any_host:UInt8} = 1
           OR (l.target IN {targets:Array(String)} AND l.ip IN {ips:Array(String)}))
),
rows AS (
    -- Their shard rows since their state: every scan in between is compared in turn (a
    -- sink that died holding S1 while S2 ran left both; S2 alone would fold S1's events
    -- into its own). A host with a state reads only the partitions since the oldest
    -- such state; one never compared has only the scans it has.
    SELECT target, ip, scan_id, status, open_ports, is_tarpit, finished_at
    FROM host_scans FINAL
    WHERE (target, ip) IN (SELECT target, ip FROM behind WHERE known)
      AND finished_at > (SELECT min(since) FROM behind WHERE known)
    UNION ALL
    SELECT target, ip, scan_id, status, open_ports, is_tarpit, finished_at
    FROM host_scans FINAL
    WHERE (target, ip) IN (SELECT target, ip FROM behind WHERE NOT known)
),
shards AS (
    SELECT r.target AS target, r.ip AS ip, r.scan_id AS scan_id,
           countIf(r.status != 'completed') AS unfinished, sum(r.open_ports) AS announced,
           max(r.is_tarpit) AS is_tarpit, max(r.finished_at) AS finished_at
    FROM rows AS r
    INNER JOIN behind AS b ON b.target = r.target AND b.ip = r.ip
    GROUP BY r.target, r.ip, r.scan_id
    HAVING finished_at > any(b.since) AND finished_at < {before:DateTime64(3, 'UTC')}
),
stored AS (
    SELECT target, ip, scan_id, count() AS found
    FROM port_observations FINAL
    WHERE (target, ip, scan_id) IN (SELECT target, ip, scan_id FROM shards)
    GROUP BY target, ip, scan_id
)
-- As the distributed hold: only once its findings are all stored (a tarpit host's
-- candidates that named nothing are dropped, so it never reaches what it announced).
SELECT h.target, h.ip, h.scan_id
FROM shards AS h
LEFT JOIN stored AS f ON f.target = h.target AND f.ip = h.ip AND f.scan_id = h.scan_id
WHERE h.unfinished = 0 AND (h.is_tarpit = 1 OR f.found >= h.announced)
ORDER BY h.target, h.ip, h.finished_at, h.scan_id
LIMIT {limit:UInt64}
"""
_KEYS_FILTER = ("scan_id IN {scans:Array(String)} AND target IN {targets:Array(String)} "
                "AND ip IN {ips:Array(String)}")
_HOST_SCAN_SQL = (
    "SELECT scan_id, shard_id, target, hostname, organization, asset, ip, started_at, "
    "finished_at, ports_scanned, open_ports, status, is_tarpit, note, proto, cover_first, "
    f"cover_last FROM host_scans FINAL WHERE {_KEYS_FILTER}")
_SNAPSHOT_SQL = f"""
SELECT o.scan_id, o.target, o.ip, o.proto, o.port, o.service, o.product, o.version,
       o.risk_color, o.is_cdn_expected, o.tls_status, o.tls_grade, o.method, o.extra_info,
       o.favicon_mmh3, o.jarm, o.observed_at, o.state,
       -- TLS is probed on TCP only; the TLS tables carry no protocol
       if(o.proto = 'tcp', p.versions, []) AS versions,
       if(o.proto = 'tcp', c.sha256, '') AS leaf_sha256,
       if(o.proto = 'tcp', c.not_after, '') AS leaf_not_after,
       if(o.proto = 'tcp', w.weak, []) AS weak,
       if(o.proto = 'tcp', p.error, '') AS tls_error
FROM (SELECT * FROM port_observations FINAL WHERE {_KEYS_FILTER}) AS o
LEFT JOIN (SELECT scan_id, target, ip, port, versions, error FROM tls_probes FINAL
           WHERE {_KEYS_FILTER}) AS p
    ON p.scan_id = o.scan_id AND p.target = o.target AND p.ip = o.ip AND p.port = o.port
LEFT JOIN (SELECT scan_id, target, ip, port, sha256, not_after FROM certificates FINAL
           WHERE {_KEYS_FILTER} AND chain_position = 0) AS c
    ON c.scan_id = o.scan_id AND c.target = o.target AND c.ip = o.ip AND c.port = o.port
LEFT JOIN (SELECT scan_id, target, ip, port, groupUniqArray(iana_name) AS weak
           FROM tls_ciphers FINAL WHERE {_KEYS_FILTER} AND strength = 'weak'
           GROUP BY scan_id, target, ip, port) AS w
    ON w.scan_id = o.scan_id AND w.target = o.target AND w.ip = o.ip AND w.port = o.port
"""



def _keys_params(keys: Iterable[ScanHostKey]) -> dict[str, Any]:
    keys = list(keys)
    return {"scans": sorted({k[0] for k in keys}), "targets": sorted({k[1] for k in keys}),
            "ips": sorted({k[2] for k in keys})}


def pending_host_scans(store: Store, *, finished_before: datetime,
                       limit: int = RECOVER_BATCH,
                       hosts: Collection[HostKey] | None = None) -> list[HostScan]:
    """The shard records of host scans whose changes were never computed: each scan of a
    host newer than its state, finished before ``finished_before``, every shard of it
    completed and every finding it announced stored (of ``hosts`` only, when given).
    (An interrupted scan is never pending: it changes nothing.)"""
    keys = {(scan_id, target, ip) for target, ip, scan_id in store.query(
        _PENDING_SQL, {"before": finished_before, "limit": limit,
                       "any_host": int(hosts is None),
                       "targets": sorted({h[0] for h in hosts or ()}),
                       "ips": sorted({h[1] for h in hosts or ()})})}
    return stored_host_scans(store, keys)


def _since_began(store: Store, began: Mapping[HostKey, datetime], sql: str,
                 parameters: Mapping[str, Any]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql`` (target, ip, ..., a time last), read a batch of ``began``'s
    hosts at a time (``{where}`` binds their names), whose time is at or after their
    host's in ``began``."""
    hosts = sorted(began)
    for start in range(0, len(hosts), HOST_BATCH):
        where, params = _state_filter(hosts[start:start + HOST_BATCH], dense=False)
        for row in store.query(sql.replace("{where}", where), {**params, **parameters}):
            at = began.get((row[0], row[1]))
            if at is not None and _utc(row[-1]) >= at:
                yield row


def covered_since(store: Store, began: Mapping[HostKey, datetime], scan_id: str,
                  wanted: Mapping[Proto, Sequence[PortRange]]
                  ) -> tuple[set[HostKey], set[HostKey]]:
    """(covered, touched): the hosts of ``began`` that another scan completed at or after
    the host's time in ``began`` *over every port of* ``wanted`` (per protocol: one scan
    whose completed shards together covered them all), and the others another scan
    looked at since: one whose completed shards covered some of ``wanted``'s ports only
    (``--ports 22``, TCP only), or one with a shard not completed there that saw a port
    (a scan stopped during its discovery or part-way: what it saw is the host's now, in
    the Summary, and the resumed scan's end would hide it; a review). A scan that
    completed there over none of ``wanted``'s ports touched nothing of this scan's (it
    refused such a resume before)."""
    # the hosts another scan completed a shard of since, or saw a port of since
    done = {(str(r[0]), str(r[1])) for r in _since_began(
        store, began, "SELECT target, ip, tupleElement(max(last_complete), 2) AS done, "
        "tupleElement(max(last_complete), 1) FROM host_latest WHERE {where} "
        "GROUP BY target, ip HAVING done != '' AND done != {scan:String}",
        {"scan": scan_id})}
    saw = {(str(r[2]), str(r[0]), str(r[1])) for r in _since_began(
        store, began, "SELECT target, ip, scan_id, max(observed_at) FROM port_observations "
        "WHERE {where} AND scan_id != {scan:String} AND observed_at >= {since:DateTime64(3)} "
        "GROUP BY target, ip, scan_id",
        {"scan": scan_id, "since": min(began.values(), default=EPOCH)})}
    hosts = done | {(target, ip) for _, target, ip in saw}
    if not hosts:
        return set(), set()
    # every other scan of them since, and what each one's shards covered there
    keys = {(str(other), str(target), str(ip)) for target, ip, other, _ in _since_began(
        store, {h: began[h] for h in hosts},
        "SELECT target, ip, scan_id, max(finished_at) FROM host_scans WHERE {where} "
        "AND scan_id != {scan:String} GROUP BY target, ip, scan_id", {"scan": scan_id})}
    covered: dict[tuple[ScanHostKey, Proto], list[PortRange]] = {}
    unfinished: set[ScanHostKey] = set(saw - keys)  # seen, with no record of it yet
    # a record whose coverage the store kept only in part (its first ARRAY_CAP ranges:
    # `--udp top2000`, a long --ports list): what else it covered is unknown, so it may
    # have looked at this scan's ports of that protocol (a review: read as "other ports
    # only", the resume went ahead and showed open a port that scan had found closed)
    cut: set[tuple[ScanHostKey, Proto]] = set()
    for row in stored_host_scans(store, keys):
        key = (row.scan_id, row.target.target, row.target.ip)
        if row.status == "completed":
            covered.setdefault((key, row.proto), []).extend(row.ports)
            if sum(r.last - r.first + 1 for r in row.ports) < row.ports_scanned:
                cut.add((key, row.proto))
        else:
            unfinished.add(key)
    whole: set[HostKey] = set()
    touched: set[HostKey] = set()
    for key in keys | unfinished:
        host = (key[1], key[2])
        have = {proto: covered.get((key, proto), []) for proto in wanted}
        if all(_within(ranges, have[proto]) for proto, ranges in wanted.items()):
            whole.add(host)
        elif (key in unfinished and key in saw) or any(
                (key, proto) in cut or _overlaps(ranges, have[proto])
                for proto, ranges in wanted.items()):
            touched.add(host)
    return whole, touched - whole


def _overlaps(wanted: Sequence[PortRange], have: Sequence[PortRange]) -> bool:
    """Some port of ``wanted`` is in some range of ``have``."""
    return any(a.first <= b.last and b.first <= a.last for a in wanted for b in have)


def _within(wanted: Sequence[PortRange], have: Sequence[PortRange]) -> bool:
    """Every port of ``wanted`` is in some range of ``have``."""
    merged: list[list[int]] = []
    for r in sorted(have, key=lambda r: r.first):
        if merged and r.first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], r.last)
        else:
            merged.append([r.first, r.last])
    return all(any(lo <= r.first and r.last <= hi for lo, hi in merged) for r in wanted)


def stored_host_scans(store: Store, keys: Iterable[ScanHostKey]) -> list[HostScan]:
    """Every stored shard record of each (scan, target, ip), in host and time order."""
    keys = set(keys)
    if not keys:
        return []
    out: list[HostScan] = []
    for (scan_id, shard_id, target, hostname, organization, asset, ip, started_at,
         finished_at, ports_scanned, open_ports, status, is_tarpit, note, proto, first,
         last) in store.query(_HOST_SCAN_SQL, _keys_params(keys)):
        if (scan_id, target, ip) not in keys:
            continue  # a neighbour matching the bound names, not asked for
        try:
            out.append(HostScan(
                scan_id=scan_id, shard_id=shard_id,
                target=Target(ip=ip, target=target, hostname=hostname,
                              organization=organization, asset=asset),
                started_at=_utc(started_at), finished_at=_utc(finished_at),
                ports_scanned=int(ports_scanned), open_ports=int(open_ports), status=status,
                is_tarpit=bool(is_tarpit), note=note, proto=_PROTO.get(proto, Proto.TCP),
                # an unknown protocol covers nothing, so it closes nothing
                ports=tuple(PortRange(a, b) for a, b in zip(first, last, strict=False)
                            if 0 < a <= b) if proto in _PROTO else ()))
        except RecordError as e:  # a row no writer of ours makes: skip it, say so
            log.warning("change history: skipping the host-scan row of %s in %s: %s",
                        ip, scan_id, e)
    return sorted(out, key=lambda h: (h.target.target, h.target.ip, h.finished_at, h.scan_id,
                                      h.shard_id))


def stored_snapshots(store: Store, keys: Iterable[ScanHostKey]
                     ) -> dict[ScanHostKey, list[PortSnapshot]]:
    """The open ports of each (scan, target, ip) as stored, as ``snapshot_of`` would have
    built them from the findings."""
    keys = set(keys)
    out: dict[ScanHostKey, list[PortSnapshot]] = {}
    if not keys:
        return out
    for (scan_id, target, ip, proto, port, service, product, version, color, cdn, tls_status,
         grade, method, extra_info, favicon, jarm, observed_at, state, versions, sha,
         not_after, weak, tls_error) in store.query(_SNAPSHOT_SQL, _keys_params(keys)):
        key = (scan_id, target, ip)
        if key not in keys or proto not in _PROTO:
            continue
        seen = _utc(observed_at)
        if tls_status == ProbeStatus.COMPLETED.value and tls_error.startswith(PARTIAL_PREFIX):
            tls_status = TLS_PARTIAL  # as snapshot_of says it
        out.setdefault(key, []).append(PortSnapshot(
            _PROTO[proto], int(port), True, service, product, version, color, bool(cdn),
            tls_status, tuple(sorted(set(versions))), tuple(sorted(weak)), grade, sha,
            parse_not_after(not_after), scan_id, seen, seen,
            method == "unidentified" and extra_info.startswith(INCOMPLETE),
            "" if favicon is None else str(favicon), jarm if jarm.strip("0") else "",
            EPOCH, state == PortState.OPEN_FILTERED.value))
    return out
