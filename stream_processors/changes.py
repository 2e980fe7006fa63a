"""Change detection: the ONE rule that turns two completed scans of a host into events.

Owns: the compact per-port snapshot both transports build from ``Finding`` records
(``snapshot_of``), the host states compared (``HostState``, ``HostScanView``), the pure
function ``detect_changes`` (previous completed state + this scan + the ports it covered +
re-probe answers -> ``ChangeEvent`` list and the next state) and the severity rule
(``SEVERITY_RULES``). Both transports call ``detect_changes``; they only move records.

Must not touch: the network (re-probes live in ``probers/reprobe.py``, and their answers
come in as data), storage (``stream_processors/history.py`` reads and writes states),
Kafka.

The rule, in words (ARCHITECTURE.md "Change history" has the why):

* Only a *completed* scan of a host (every shard of it completed) produces events or moves
  the host's state; an interrupted or errored scan closes nothing and opens nothing.
* ``opened``: open now, never seen on this (target, ip, proto, port) before;
  ``reopened``: seen before, closed since.
* ``closed``: open in the previous state, absent now, covered by one of this scan's shards,
  and a direct re-probe at the end of the scan also failed (TCP: refused or silent; UDP:
  only an ICMP port-unreachable, never silence). A port with no re-probe answer (budget
  spent, probe not run) is not closed: it stays open in the state.
* A host that had open ports and now shows none, with every re-probe silent (no RST, no
  ICMP), is ``host_unreachable``: no closure for its ports, its state is kept. The
  re-probes then include the host's other ports (``liveness_candidates``: open ones the
  scan did not cover, one covered port never open): a narrow scan whose one port is now
  filtered does not make a host that still answers elsewhere unreachable. The next
  scan in which it answers emits ``host_back`` and is compared with the kept state.
* For a port open in both: ``service_changed``, ``product_changed``, ``version_changed``
  (only when the product stayed), ``risk_raised`` / ``risk_lowered``, ``tls_changed``
  (versions added/removed, weak suites offered or no longer offered, grade change, TLS
  no longer offered at all, medium when it weakened; only when both TLS probes completed
  in full: a probe cut part-way keeps the last full result), ``cert_changed`` (leaf
  sha256). A compared field that moved with no event (a first favicon) still moves the
  port's state.
* ``cert_expiring``: the leaf's days left crossed into a tighter bucket of
  ``EXPIRY_THRESHOLDS`` (30/14/7/1) since the previous scan of the same certificate (a new
  certificate starts with no bucket); one event names the tightest threshold crossed, so a
  certificate seen at 40 days then at 5 days gives one event "7d", not three.
  ``cert_expired``: expired now, and not already expired at the previous scan of the same
  certificate.

Every event's ``observed_at`` is the scan's own finish time, so recomputing a scan's
changes gives identical rows and identical ``event_id`` values.

Why one file: the snapshot, the rule and the fingerprint of the fast path must compare
the same fields the same way (a field compared by the rule but not fingerprinted is a
change the fast path hides); one file keeps them side by side.
"""

from __future__ import annotations

import hashlib
import marshal
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, NamedTuple

from probers.reprobe import Answer as ProbeAnswer  # OPEN / REFUSED (host answered) / SILENT
from schemas.bounded import JARM_CAP, text, texts
from schemas.records import (
    ChangeEvent,
    ChangeKind,
    Finding,
    HostScan,
    PortState,
    ProbeStatus,
    Proto,
    RiskColor,
    Severity,
    Target,
)

PortKey = tuple[Proto, int]

EXPIRY_THRESHOLDS: tuple[int, ...] = (30, 14, 7, 1)  # days, loosest first
LEGACY_TLS_VERSIONS = frozenset({"SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"})
_COLOR_RANK = {RiskColor.GREEN.value: 0, RiskColor.YELLOW.value: 1, RiskColor.RED.value: 2}
_GRADE_RANK = {"strong": 0, "medium": 1, "weak": 2}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TEXT_CAP = 512  # before/after text kept per event (hostile banners never grow a row)


def to_millis(at: datetime) -> datetime:
    """``at`` in milliseconds, as the store keeps times: a time computed again from stored
    records compares equal to the one written."""
    sub_milli = at.microsecond % 1000
    # most times are whole milliseconds already (read back from the store, or written
    # from one): returned as they are, ~20x cheaper than a replace for each of a day's
    # host scans
    return at - timedelta(microseconds=sub_milli) if sub_milli else at
_LOOSEST = timedelta(days=max(EXPIRY_THRESHOLDS))
# A TLS probe that completed only partly (the server stopped answering part-way through
# the enumeration: a per-address connection limit): its suites and grade are a subset,
# so it is not compared, as one that could not test (a cut enumeration alerted "grade
# weak->strong", then "weak +..." at the next full one: a review). Its snapshot's status.
PARTIAL_PREFIX = "partial:"  # probers.tls.commands: the error of such a probe
TLS_PARTIAL = "partial"
# stages.unidentified() reasons that mean "not finished", not "nothing answered"
INCOMPLETE = ("interrupted", "identification error")


class PortSnapshot(NamedTuple):
    """What change detection compares about one port: small, built once per finding.

    A NamedTuple, not a frozen dataclass: as immutable, and built in a tenth of the time
    (0.3 us against 2.9 us with 21 fields), which is most of what recording a day's changes
    of 100,000 hosts costs per port (BENCHMARKS.md, "Change history at scale")."""

    proto: Proto
    port: int
    is_open: bool = True
    service: str = ""
    product: str = ""
    version: str = ""
    risk_color: str = RiskColor.YELLOW.value
    is_cdn_expected: bool = False
    tls_status: str = ProbeStatus.NOT_SCHEDULED.value
    tls_versions: tuple[str, ...] = ()
    weak_suites: tuple[str, ...] = ()
    tls_grade: str = ""
    cert_sha256: str = ""
    cert_not_after: datetime = EPOCH  # EPOCH: no certificate known
    scan_id: str = ""  # the last scan that saw it open
    changed_at: datetime = EPOCH  # when it last opened or closed
    first_seen: datetime = EPOCH
    # Identification did not finish (Ctrl-C, an error): open, but its attributes are
    # unknown this time, so they are not compared (as a TLS probe that could not test).
    is_incomplete: bool = False
    # What analysts pivot on (issue 15): the favicon hash (Shodan's, as text; "" none) and
    # the JARM TLS fingerprint ("" not tested). A change is a product_changed-class event.
    favicon: str = ""
    jarm: str = ""
    # When this snapshot was last written to the state (port_state.updated_at): the time
    # its certificate was last judged, for "crossed a threshold since" (EPOCH: not yet)
    seen_at: datetime = EPOCH
    # A UDP port that sent nothing back (open|filtered): its opening is info and says so
    # (the Summary scores it nothing; a medium "opened" fired ">= medium" rules on it: a
    # review). Kept in the state (port_state.udp_reply): a port that starts answering,
    # or stops, moves the score, and says so (``_reply_event``).
    is_unconfirmed: bool = False
    # A UDP port's state row written before layout 22, which did not keep its last word:
    # whether it answered is unknown, so its next scan says nothing of it and writes it.
    is_reply_unknown: bool = False

    @property
    def key(self) -> PortKey:
        return (self.proto, self.port)

    def describe(self) -> str:
        words = " ".join(w for w in (self.service, self.product, self.version) if w)
        said = f"{words or 'unidentified'} ({self.risk_color})"
        return f"{said}, open|filtered: no UDP reply" if self.is_unconfirmed else said


def parse_not_after(value: str) -> datetime:
    """Certificate notAfter as stored by the TLS prober (ISO 8601); EPOCH when unreadable."""
    if not value:
        return EPOCH
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return EPOCH  # hostile or odd text never reaches a typed column
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def snapshot_of(finding: Finding) -> PortSnapshot:
    """The compact state of one finding (what both transports feed ``detect_changes``).

    Every text is bounded as the store's row builders bound it, so the snapshot equals
    the one ``history.stored_snapshots`` rebuilds from the stored rows (change recovery)
    and a hostile banner never grows ``port_state``. Called once per stored finding, so it
    is written for speed: no work for the empty TLS fields most ports have."""
    p, s, tls = finding.port, finding.service, finding.tls
    sha, not_after = "", EPOCH
    # A port whose TLS was never probed stores no TLS rows: nothing of it is compared
    probed = tls.status is not ProbeStatus.NOT_SCHEDULED
    for c in tls.certificates if probed else ():
        if c.chain_position == 0:  # the leaf
            sha, not_after = text(c.sha256), parse_not_after(text(c.not_after))
            break
    status = tls.status._value_  # ``_value_``: the same str, without the enum property
    if tls.status is ProbeStatus.COMPLETED and tls.error.startswith(PARTIAL_PREFIX):
        status = TLS_PARTIAL
    versions = tls.versions if probed else ()
    suites = tls.suites if probed else ()
    jarm = text(s.jarm, JARM_CAP)
    return PortSnapshot(
        p.proto, p.port, True, text(s.service), text(s.product), text(s.version),
        # ``_value_``, not ``value``: the same str, without the enum property (0.2 us)
        finding.risk_color._value_, finding.cdn.is_expected_port, status,
        tuple(sorted(set(texts(versions)))) if versions else (),
        tuple(sorted({text(c.iana_name) for c in suites if text(c.strength) == "weak"}))
        if suites else (),
        text(tls.grade), sha, not_after,
        p.scan_id, p.observed_at, p.observed_at,
        s.method == "unidentified" and s.extra_info.startswith(INCOMPLETE),
        "" if s.favicon_mmh3 is None else str(s.favicon_mmh3),
        # all zeros: no TLS answer to any of the ten hellos, i.e. nothing to compare
        jarm if jarm.strip("0") else "",
        EPOCH, p.state is PortState.OPEN_FILTERED,
    )


@dataclass(frozen=True, slots=True)
class HostState:
    """A host as its last completed scan left it: every port ever seen on it (closed ones
    with ``is_open`` False, so a port coming back is ``reopened``)."""

    target: Target
    scan_id: str
    finished_at: datetime
    is_reachable: bool = True
    ports: Mapping[PortKey, PortSnapshot] = field(default_factory=dict)

    @property
    def open_ports(self) -> dict[PortKey, PortSnapshot]:
        return {k: v for k, v in self.ports.items() if v.is_open}


@dataclass(frozen=True, slots=True)
class HostScanView:
    """One host in one scan: its shard records (coverage, status) and what was open."""

    target: Target
    scan_id: str
    shards: tuple[HostScan, ...]
    ports: Mapping[PortKey, PortSnapshot]
    _finished_at: datetime = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Milliseconds, as the store keeps them: a replayed record compares equal to the
        # state it wrote, and events computed twice carry the same observed_at. Computed
        # once: the recorder asks for it several times per host.
        shards = self.shards
        latest = (shards[0].finished_at if len(shards) == 1
                  else max((h.finished_at for h in shards), default=EPOCH))
        object.__setattr__(self, "_finished_at", to_millis(latest))

    @property
    def is_completed(self) -> bool:
        shards = self.shards
        if len(shards) == 1:  # most hosts: asked for each of them, at every scan
            return shards[0].status == "completed"
        return bool(shards) and all(h.status == "completed" for h in shards)

    @property
    def finished_at(self) -> datetime:
        return self._finished_at

    def covers(self, key: PortKey) -> bool:
        return any(h.covers(key[0], key[1]) for h in self.shards)


@dataclass(frozen=True, slots=True)
class ChangeOutcome:
    events: list[ChangeEvent]
    state: HostState | None  # the host's next state; None: leave the stored one as it is


# -- severity -------------------------------------------------------------------------------

# (kind, risk colour of the port or "" for any) -> severity. The documented rule; a test
# checks that every ChangeKind has an entry for "".
SEVERITY_RULES: dict[tuple[ChangeKind, str], Severity] = {
    (ChangeKind.OPENED, "red"): Severity.HIGH,
    (ChangeKind.OPENED, "yellow"): Severity.MEDIUM,
    (ChangeKind.OPENED, ""): Severity.LOW,
    (ChangeKind.REOPENED, "red"): Severity.HIGH,
    (ChangeKind.REOPENED, "yellow"): Severity.MEDIUM,
    (ChangeKind.REOPENED, ""): Severity.LOW,
    (ChangeKind.CLOSED, "red"): Severity.LOW,  # good news, but someone should know
    (ChangeKind.CLOSED, ""): Severity.INFO,
    (ChangeKind.SERVICE_CHANGED, ""): Severity.MEDIUM,
    (ChangeKind.PRODUCT_CHANGED, ""): Severity.LOW,
    (ChangeKind.VERSION_CHANGED, ""): Severity.INFO,
    (ChangeKind.RISK_RAISED, "red"): Severity.HIGH,
    (ChangeKind.RISK_RAISED, ""): Severity.MEDIUM,
    (ChangeKind.RISK_LOWERED, ""): Severity.INFO,
    (ChangeKind.TLS_CHANGED, ""): Severity.LOW,  # MEDIUM when it weakened, see below
    (ChangeKind.CERT_CHANGED, ""): Severity.LOW,
    (ChangeKind.CERT_EXPIRING, ""): Severity.MEDIUM,  # by threshold, see EXPIRY_SEVERITY
    (ChangeKind.CERT_EXPIRED, ""): Severity.HIGH,
    (ChangeKind.HOST_UNREACHABLE, ""): Severity.MEDIUM,
    (ChangeKind.HOST_BACK, ""): Severity.INFO,
}
EXPIRY_SEVERITY = {30: Severity.LOW, 14: Severity.MEDIUM, 7: Severity.HIGH, 1: Severity.HIGH}


def severity_of(kind: ChangeKind, color: str = "", *, is_cdn_expected: bool = False,
                is_unconfirmed: bool = False) -> Severity:
    """The severity rule: by kind, refined by the port's colour; a CDN-expected port is
    listed but carries no risk (DESIGN.md "CDN"), so its opening is info, as is the
    opening of a UDP port that never answered (open|filtered: scored nothing)."""
    if is_cdn_expected and kind in (ChangeKind.OPENED, ChangeKind.REOPENED, ChangeKind.CLOSED):
        return Severity.INFO
    if is_unconfirmed and kind in (ChangeKind.OPENED, ChangeKind.REOPENED):
        return Severity.INFO
    return SEVERITY_RULES.get((kind, color), SEVERITY_RULES[(kind, "")])


# -- the rule -------------------------------------------------------------------------------


def _expiry_bucket(not_after: datetime, at: datetime) -> int | None:
    """The tightest threshold the certificate is within at ``at``; None when above all."""
    if not_after == EPOCH or not_after <= at:
        return None
    days_left = (not_after - at).total_seconds() / 86400
    inside = [t for t in EXPIRY_THRESHOLDS if days_left <= t]
    return min(inside) if inside else None


def _tls_delta(before: PortSnapshot, after: PortSnapshot) -> tuple[str, bool] | None:
    """Text of what changed in TLS and whether it weakened; None: nothing comparable.

    A weak suite no longer offered is said as one newly offered is (else the state kept
    it, and its return was no change: a review). A port that stops offering TLS at all
    (a mail server no longer offering STARTTLS: completed, nothing offered) weakened; one
    that offers it again did not, whatever grade it comes back with (the empty grade of
    "nothing offered" ranked as "strong", so losing STARTTLS was low and getting it back
    medium: a review)."""
    done = ProbeStatus.COMPLETED.value
    if before.tls_status != done or after.tls_status != done:
        return None  # "could not test" (or only partly) is not a change of the server
    parts: list[str] = []
    weakened = False
    added = sorted(set(after.tls_versions) - set(before.tls_versions))
    removed = sorted(set(before.tls_versions) - set(after.tls_versions))
    gone = bool(before.tls_versions) and not after.tls_versions
    if gone:
        parts.append("TLS no longer offered")
        weakened = True
    if added or removed:
        parts.append(" ".join([*(f"+{v}" for v in added), *(f"-{v}" for v in removed)]))
        # legacy versions (or weak suites, below) added to a port that offered TLS
        # before; a port offering TLS again after plaintext only is better off, not
        # weaker, whatever it offers
        weakened |= bool(before.tls_versions) and any(v in LEGACY_TLS_VERSIONS for v in added)
    new_weak = sorted(set(after.weak_suites) - set(before.weak_suites))
    old_weak = sorted(set(before.weak_suites) - set(after.weak_suites))
    weak = [*(f"+{w}" for w in new_weak), *(f"-{w}" for w in old_weak)]
    weakened |= bool(before.tls_versions) and bool(new_weak)
    grade: list[str] = []
    if before.tls_grade != after.tls_grade:
        grade.append(f"grade {before.tls_grade or '-'}->{after.tls_grade or '-'}")
        if before.tls_grade and after.tls_grade:  # "" is nothing offered, not a grade
            weakened |= _GRADE_RANK.get(after.tls_grade, 0) > _GRADE_RANK.get(
                before.tls_grade, 0)
    return (_with_weak(parts, weak, grade), weakened) if parts or weak or grade else None


def _with_weak(head: list[str], weak: Sequence[str], tail: list[str]) -> str:
    """``head``, the weak suites, ``tail``, joined by "; ", in TEXT_CAP characters: the
    suites are listed while they fit, the rest counted ("and 12 more"). Cut at the cap,
    an enumeration of 40 weak suites lost the grade change after them (a review)."""
    if not weak:
        return "; ".join([*head, *tail])
    room = TEXT_CAP - len("; ".join([*head, "", *tail]))
    said = "weak"
    for i, word in enumerate(weak):
        left = len(weak) - i - 1
        if len(said) + 1 + len(word) + (len(f" and {left} more") if left else 0) > room:
            said = f"{said} and {len(weak) - i} more"
            break
        said += f" {word}"
    return "; ".join([*head, said, *tail])


def _tls_summary(s: PortSnapshot) -> str:
    """What a port offered in TLS, as a tls_changed event's ``before`` (its ``after`` is
    what changed, ``_tls_delta``): versions, weak suites if any, grade."""
    if not s.tls_versions:
        return "TLS not offered"
    return _with_weak([" ".join(s.tls_versions)], s.weak_suites, [f"grade {s.tls_grade or '-'}"])


def _port_events(before: PortSnapshot, after: PortSnapshot,
                 event: _EventFactory) -> list[ChangeEvent]:
    out: list[ChangeEvent] = []
    if before.service != after.service:
        out.append(event(ChangeKind.SERVICE_CHANGED, after, before.service, after.service))
    # One product_changed per port and scan (the changes table keeps one row per kind):
    # the product, a new favicon and a new TLS stack are its parts, said together
    faces: list[tuple[str, str]] = []
    if before.product != after.product:
        faces.append((f"{before.product} {before.version}".strip(),
                      f"{after.product} {after.version}".strip()))
    elif before.version != after.version:
        out.append(event(ChangeKind.VERSION_CHANGED, after, before.version, after.version))
    # The same software answering with another face: a new favicon or another TLS stack,
    # each compared only when both scans have one. A favicon that is not there this time
    # is no event: a fetch that timed out, was reset or ran out of budget looks the same
    # as a site without one, and a flaky fetch alerted twice (gone, then back).
    if before.favicon and after.favicon and before.favicon != after.favicon:
        faces.append((f"favicon {before.favicon}", f"favicon {after.favicon}"))
    if before.jarm and after.jarm and before.jarm != after.jarm:
        faces.append((f"JARM {before.jarm}", f"JARM {after.jarm}"))
    if faces:
        out.append(event(ChangeKind.PRODUCT_CHANGED, after, "; ".join(b for b, _ in faces),
                         "; ".join(a for _, a in faces)))
    rank_before = _COLOR_RANK.get(before.risk_color, 1)
    rank_after = _COLOR_RANK.get(after.risk_color, 1)
    if rank_after != rank_before:
        kind = ChangeKind.RISK_RAISED if rank_after > rank_before else ChangeKind.RISK_LOWERED
        out.append(event(kind, after, before.risk_color, after.risk_color))
    tls = _tls_delta(before, after)
    if tls is not None:
        text, weakened = tls
        out.append(event(ChangeKind.TLS_CHANGED, after, _tls_summary(before), text,
                         severity=Severity.MEDIUM if weakened else None))
    if before.cert_sha256 and after.cert_sha256 and before.cert_sha256 != after.cert_sha256:
        out.append(event(ChangeKind.CERT_CHANGED, after, before.cert_sha256, after.cert_sha256))
    return out


_RISK_KINDS = (ChangeKind.RISK_RAISED, ChangeKind.RISK_LOWERED)


def _is_silent_udp(port: PortSnapshot) -> bool:
    return port.proto is Proto.UDP and port.is_unconfirmed


def _reply_moved(before: PortSnapshot, after: PortSnapshot) -> bool:
    """A UDP port that started answering or stopped, its last word known."""
    return (after.proto is Proto.UDP and not before.is_reply_unknown
            and before.is_unconfirmed != after.is_unconfirmed)


def _reply_event(before: PortSnapshot, after: PortSnapshot,
                 event: _EventFactory) -> ChangeEvent:
    """The event of a port whose reply moved (``_reply_moved``): risk_raised when it
    answers (it scores now), risk_lowered when it stopped (open|filtered scores nothing);
    its colours said with it (a silent port is yellow: the colours alone may point the
    other way)."""
    kind = ChangeKind.RISK_LOWERED if after.is_unconfirmed else ChangeKind.RISK_RAISED
    return event(kind, after, _reply_said(before), _reply_said(after))


def _reply_said(port: PortSnapshot) -> str:
    return (f"{port.risk_color}, open|filtered: no UDP reply" if port.is_unconfirmed
            else f"{port.risk_color}, answers")


_NOT_LEARNT = (ProbeStatus.ERROR.value, TLS_PARTIAL)


def _keep_known(old: PortSnapshot, new: PortSnapshot) -> PortSnapshot:
    """``new`` as the port's next state, keeping what this scan could not learn: the last
    completed TLS result (a probe that errored alongside a version bump made the error the
    state, and TLS and certificate changes were never compared again), the favicon and
    the JARM fingerprint when this scan has none."""
    done = ProbeStatus.COMPLETED.value
    # A probe that failed, or one not run on a port still named as before (a --no-tls
    # scan): kept. Not run on a port whose service changed (https -> http): it no longer
    # speaks TLS, and keeping its last result would keep the host off the fast path
    not_run = (new.tls_status == ProbeStatus.NOT_SCHEDULED.value
               and new.service == old.service)
    if (new.tls_status in _NOT_LEARNT or not_run) and old.tls_status == done:
        new = new._replace(tls_status=old.tls_status, tls_versions=old.tls_versions,
                           weak_suites=old.weak_suites, tls_grade=old.tls_grade,
                           cert_sha256=new.cert_sha256 or old.cert_sha256,
                           cert_not_after=(new.cert_not_after if new.cert_sha256
                                           else old.cert_not_after))
        # Nor the colour those facts gave: a port yellow for its expired certificate is
        # not green because this scan could not look (that was a risk_lowered, and a
        # risk_raised at the next scan that could: a medium alert per flaky probe). Only
        # when nothing else this scan saw could lower it: a new product or CDN verdict
        # lowers it as ever, and a colour raised by what this scan saw stays raised.
        same_face = ((new.service, new.product, new.version, new.is_cdn_expected)
                     == (old.service, old.product, old.version, old.is_cdn_expected))
        if same_face and _COLOR_RANK.get(new.risk_color, 1) < _COLOR_RANK.get(
                old.risk_color, 1):
            new = new._replace(risk_color=old.risk_color)
    if not new.favicon and old.favicon:
        new = new._replace(favicon=old.favicon)
    if not new.jarm and old.jarm:
        new = new._replace(jarm=old.jarm)
    return new


def _is_near_expiry(s: PortSnapshot, now: datetime) -> bool:
    """Its certificate is within the loosest expiry threshold (or expired)."""
    return s.cert_not_after != EPOCH and s.cert_not_after - now <= _LOOSEST


# What a port's certificates were already alerted for (the change log, as
# ``history.expiry_alerts`` reads it): (proto, port, kind, notAfter as the event says it,
# threshold in days; 0 for cert_expired). A certificate that comes back after another
# (two backends behind one address) is not the previous scan's, so the previous snapshot
# alone could not say it was alerted: it was alerted again each time it came back.
ExpiryAlerts = Container[tuple[Proto, int, str, str, int]]


def _cert_events(before: PortSnapshot | None, after: PortSnapshot, previous_at: datetime | None,
                 now: datetime, event: _EventFactory,
                 alerted: ExpiryAlerts = frozenset()) -> list[ChangeEvent]:
    if not after.cert_sha256 or after.cert_not_after == EPOCH:
        return []
    if after.cert_not_after - now > _LOOSEST:
        return []  # the common case: far from expiry
    same_cert = (before is not None and previous_at is not None
                 and before.cert_sha256 == after.cert_sha256)
    not_after = after.cert_not_after.isoformat()
    key = (after.proto, after.port)
    if after.cert_not_after <= now:
        was_expired = same_cert and previous_at is not None and after.cert_not_after <= previous_at
        if was_expired or (*key, ChangeKind.CERT_EXPIRED.value, not_after, 0) in alerted:
            return []
        return [event(ChangeKind.CERT_EXPIRED, after, "", not_after)]
    bucket_now = _expiry_bucket(after.cert_not_after, now)
    if bucket_now is None:
        return []
    bucket_before = (_expiry_bucket(after.cert_not_after, previous_at)
                     if same_cert and previous_at is not None else None)
    if bucket_before is not None and bucket_before <= bucket_now:
        return []  # already inside this threshold at the previous scan: once per threshold
    if any((*key, ChangeKind.CERT_EXPIRING.value, not_after, days) in alerted
           for days in EXPIRY_THRESHOLDS if days <= bucket_now):
        return []  # this certificate was said at this threshold (or a tighter) before
    return [event(ChangeKind.CERT_EXPIRING, after, not_after, f"{bucket_now}d",
                  severity=EXPIRY_SEVERITY[bucket_now])]


class _EventFactory:
    """Builds events of one host scan (same target, scan ids, time for all)."""

    def __init__(self, target: Target, scan_id: str, previous_scan_id: str,
                 observed_at: datetime) -> None:
        self.target, self.scan_id = target, scan_id
        self.previous_scan_id, self.observed_at = previous_scan_id, observed_at

    def __call__(self, kind: ChangeKind, port: PortSnapshot | None, before: str, after: str,
                 *, severity: Severity | None = None) -> ChangeEvent:
        color = port.risk_color if port is not None else ""
        return ChangeEvent(
            kind=kind,
            severity=severity or severity_of(
                kind, color, is_cdn_expected=port.is_cdn_expected if port else False,
                is_unconfirmed=port.is_unconfirmed if port else False),
            target=self.target, scan_id=self.scan_id, previous_scan_id=self.previous_scan_id,
            proto=port.proto if port is not None else Proto.TCP,
            port=port.port if port is not None else 0,
            # bounded here, before the event's id is taken from its text: the event
            # published, stored and read back on a replay is this one (same id)
            before=before[:TEXT_CAP], after=after[:TEXT_CAP], risk_color=color,
            service=port.service if port is not None else "",
            observed_at=self.observed_at,
        )


def closure_candidates(previous: HostState | None, scan: HostScanView) -> list[PortKey]:
    """Ports open in the previous state, not seen now, and covered by this scan: the only
    ports a re-probe is spent on."""
    if previous is None or not scan.is_completed:
        return []
    return sorted(k for k, s in previous.ports.items()
                  if s.is_open and k not in scan.ports and scan.covers(k))


# A host a completed scan saw nothing open on: how many of its other ports are asked
# whether it still answers (``liveness_candidates``).
LIVENESS_OPEN_PORTS = 3
# And how many of the TCP ports a stopped scan saw open since: all of them, within
# reason (the one that still answers may be any: the three lowest, silent, made a host
# whose fourth answered "unreachable": a review). The re-probe's own budget bounds a call.
LIVENESS_SIGHTED = 64


def to_open(previous: HostState | None, scan: HostScanView,
            sighted: Mapping[PortKey, PortSnapshot] | None) -> dict[PortKey, PortSnapshot]:
    """The ports of ``sighted`` (seen open since the state by scans that did not
    complete) that ``scan`` opens: neither seen nor looked at by it, not open in the
    state."""
    held = previous.ports if previous is not None else {}
    return {k: p for k, p in (sighted or {}).items()
            if k not in scan.ports and not scan.covers(k)
            and not (k in held and held[k].is_open)}


def liveness_candidates(previous: HostState | None, scan: HostScanView,
                        sighted: Mapping[PortKey, PortSnapshot] | None = None
                        ) -> list[PortKey]:
    """When a completed scan saw nothing open on a host whose state has TCP ports, the
    ports that tell whether the host still answers, re-probed beside the closure
    candidates: up to ``LIVENESS_OPEN_PORTS`` of its open TCP ports this scan did not
    cover, and one covered TCP port it never had open (a closed port answers RST).

    Why: a scan of ``--ports 22,23`` whose one open port is now filtered heard nothing
    from the host, and its silence made the host unreachable, which hid every other port
    of it from the reports, red ones too, though they still answered (a review). Any
    answer here (open, or refused) is the host answering. None of these ports' states
    changes: the uncovered ones are not compared, the closed one was not open."""
    if previous is None or not scan.is_completed or scan.ports:
        return []
    # And as many of the TCP ports a stopped scan saw open since, which the scan is
    # about to open (``to_open``): the latest word that the host answered (left out, a
    # host whose only answering port a stopped scan had seen went "unreachable", and the
    # port vanished beside its "opened" event: a review); beside the state's, never
    # instead of them (three silent sightings crowded out a port that answered: a
    # review), up to LIVENESS_SIGHTED
    seen = sorted(k for k in to_open(previous, scan, sighted) if k[0] is Proto.TCP)
    opened = sorted(k for k, s in previous.ports.items()
                    if s.is_open and k[0] is Proto.TCP and not scan.covers(k))
    out = [*opened[:LIVENESS_OPEN_PORTS], *seen[:LIVENESS_SIGHTED]]
    if seen or any(s.is_open and k[0] is Proto.TCP for k, s in previous.ports.items()):
        closed = _a_closed_port(previous, scan)
        if closed is not None:
            out.append(closed)
    return out


def _a_closed_port(previous: HostState, scan: HostScanView) -> PortKey | None:
    """The lowest TCP port this scan covered that the host never had open (the first few
    of each range looked at: a host's state holds few ports)."""
    for shard in scan.shards:
        if shard.proto is not Proto.TCP:
            continue
        for r in shard.ports:
            for port in range(r.first, min(r.last, r.first + 64) + 1):
                if (Proto.TCP, port) not in previous.ports:
                    return (Proto.TCP, port)
    return None


def _is_closed(key: PortKey, answer: ProbeAnswer | None) -> bool:
    if answer is None or answer is ProbeAnswer.OPEN:
        return False  # not re-probed (budget) or still open: never closed on a guess
    if key[0] is Proto.UDP:
        return answer is ProbeAnswer.REFUSED  # UDP silence is open|filtered, not closed
    return True


def detect_changes(previous: HostState | None, scan: HostScanView,
                   reprobes: Mapping[PortKey, ProbeAnswer],
                   alerted: ExpiryAlerts = frozenset(),
                   sighted: Mapping[PortKey, PortSnapshot] | None = None) -> ChangeOutcome:
    """Compare this scan of a host with its previous completed state (module docstring).
    ``alerted``: the expiry events already said for its certificates (``ExpiryAlerts``).
    ``sighted``: ports that scans of the host which did not complete saw open since that
    state (the recorder's ``stopped_sightings``)."""
    if not scan.is_completed:
        return ChangeOutcome([], None)  # an interrupted scan closes nothing, opens nothing
    now = scan.finished_at  # computed once: a property over the shards
    event = _EventFactory(scan.target, scan.scan_id, previous.scan_id if previous else "", now)
    before_ports: dict[PortKey, PortSnapshot] = dict(previous.ports) if previous else {}
    candidates = closure_candidates(previous, scan)
    events: list[ChangeEvent] = []
    host_at = previous.finished_at if previous else None
    next_ports = dict(before_ports)
    # Open ports only a scan that did not complete saw since the state, which this scan
    # neither saw nor looked at, and the state does not hold open: this scan opens them,
    # as if it had seen them, saying which scan did (the Summary showed them after that
    # scan; dropped, they vanished from it at a narrower completed scan, with no event:
    # a review). What this scan looked at is its own to say: it had the last look.
    extra = to_open(previous, scan, sighted)

    def compare(key: PortKey, new: PortSnapshot, note: str = "") -> None:
        """One port this scan (or, with ``note``, a stopped scan) saw open, against the
        state: its events, and its next snapshot in ``next_ports``."""
        old_port = before_ports.get(key)
        if old_port is not None and _is_silent_udp(new) and not old_port.is_incomplete:
            # What answers is unknown now, not changed: the last identification stays,
            # while it is silent and when it reopens silent (a DNS server falling silent
            # said service 'domain' -> '', medium; kept only at the first silent scan,
            # the second said it a scan late: reviews)
            new = new._replace(service=old_port.service, product=old_port.product,
                               version=old_port.version)
        if old_port is None:
            events.append(event(ChangeKind.OPENED, new, "", new.describe() + note))
            next_ports[key] = new._replace(changed_at=now, first_seen=new.first_seen,
                                           seen_at=now)
        elif not old_port.is_open:
            closed_at = f"closed {old_port.changed_at:%Y-%m-%d %H:%M:%S}"
            if new.is_incomplete and not old_port.is_incomplete:
                # Reopened with its identification cut short: what it was last identified
                # as stays the state, open again, and the event says so, coloured as it
                # (the cut-short snapshot replaced it: a red port's reopening was a
                # medium "unidentified", and the next full scan a first identification
                # that hid an upgrade made while it was down; a review). Its certificate
                # is judged from when it last was, not from now (a threshold crossed
                # while it was down was never said)
                kept = old_port._replace(is_open=True, scan_id=new.scan_id, changed_at=now)
                events.append(event(ChangeKind.REOPENED, kept, closed_at,
                                    f"{kept.describe()}, as last identified (its "
                                    f"identification was cut short){note}"))
                next_ports[key] = kept
                return
            # when, as the List's --history says it (UTC, to the second; an ISO text with
            # microseconds and +00:00 stood beside the reports' times: a review)
            events.append(event(ChangeKind.REOPENED, new, closed_at, new.describe() + note))
            # and what changed since it closed, as for a port that stayed open: a rule on
            # version_changed missed an upgrade made while the port was down (a review)
            if not new.is_incomplete and not old_port.is_incomplete:
                moved = _port_events(old_port, new, event)
                if _reply_moved(old_port, new):
                    # a UDP port back with the other word: its colour moved with the
                    # word (silent is yellow), which the reopened text says already
                    moved = [e for e in moved if e.kind not in _RISK_KINDS]
                events.extend(moved)
            next_ports[key] = new._replace(changed_at=now, first_seen=old_port.first_seen,
                                           seen_at=now)
        elif new.is_incomplete:
            return  # attributes unknown this time: the stored snapshot stays
        elif old_port.is_incomplete:
            # The baseline never learnt what answers (the first scan's identification
            # was cut short): the first complete one replaces it, and only a colour
            # raised is news (a port opened "unidentified" is redis, red). Compared, it
            # said service '' -> ssh, product '' -> OpenSSH, yellow -> green (a review).
            if _COLOR_RANK.get(new.risk_color, 1) > _COLOR_RANK.get(old_port.risk_color, 1):
                events.append(event(ChangeKind.RISK_RAISED, new, old_port.risk_color,
                                    new.risk_color))
            next_ports[key] = new._replace(
                changed_at=old_port.changed_at, first_seen=old_port.first_seen,
                seen_at=now)
            new = next_ports[key]
        else:
            new = _keep_known(old_port, new)  # what this scan could not learn, as before
            changed = _port_events(old_port, new, event)
            if _reply_moved(old_port, new):
                # the direction is the reply's, whatever the colours: a silent port is
                # yellow, and a green DNS server falling silent read as risk_raised
                # green -> yellow (a review)
                changed = [e for e in changed if e.kind not in _RISK_KINDS]
                changed.append(_reply_event(old_port, new, event))
            events.extend(changed)
            # Written when something compared moved, said or not (a weak suite removed
            # and back, a favicon first seen, a UDP port's first known word): a state
            # left behind compared the next scan with the past, and kept the host off
            # the fast path for good
            if (changed or _FINGERPRINTED(new) != _FINGERPRINTED(old_port)
                    or old_port.is_reply_unknown):
                next_ports[key] = new._replace(
                    changed_at=old_port.changed_at, first_seen=old_port.first_seen,
                    seen_at=now)
                # The row is written now (port_state's version is the scan's time): a
                # certificate kept from before is judged now too, from its known expiry,
                # or a threshold crossed since it was last judged would never be said
                new = next_ports[key]
            # else: the stored snapshot stays (nothing compared changed; a TLS probe that
            # could not test, or only partly, keeps the last completed result)
        # A certificate's thresholds are judged against when *this port's* certificate
        # was last judged, not the host's last scan: a --ports 22 scan, or days
        # unreachable, in between hid the crossing (no cert_expiring, no cert_expired)
        judged = old_port if old_port is not None and old_port.is_open else None
        judged_at = judged.seen_at if judged is not None and judged.seen_at > EPOCH else host_at
        cert_events = _cert_events(judged, new, judged_at, now, event, alerted)
        events.extend(cert_events)
        if cert_events or (new.cert_sha256 and now < new.cert_not_after
                           and _is_near_expiry(new, now)):
            # written again, so the next scan judges from now (once per threshold); not
            # once expired and said (an appliance's long-expired certificate would
            # rewrite its row at every scan: port_state grows with change, not scans)
            next_ports[key] = next_ports[key]._replace(seen_at=now)

    def compare_sighted() -> None:
        for key in sorted(extra):
            seen = extra[key]
            compare(key, seen, f", seen by scan {seen.scan_id}, which did not complete")

    host_answered = bool(scan.ports) or any(
        reprobes.get(k) in (ProbeAnswer.OPEN, ProbeAnswer.REFUSED)
        for k in [*candidates, *liveness_candidates(previous, scan, extra)])
    # Unreachable only on evidence: every TCP candidate was re-probed and none answered.
    # UDP silence is none (DNS, NTP and SNMP never answer the empty datagram): a late
    # UDP shard compared alone took a live host for unreachable and hid its ports.
    # A candidate the re-probe did not answer for (its budget ran out) is no evidence
    # either way: it neither makes nor unmakes the outage.
    answered = [reprobes[k] for k in candidates if k[0] is Proto.TCP and k in reprobes]
    is_silent = bool(answered) and all(a is ProbeAnswer.SILENT for a in answered)
    if previous is not None and is_silent and not host_answered:
        if previous.is_reachable:
            events.append(event(ChangeKind.HOST_UNREACHABLE, None, "reachable", "unreachable"))
        # Its ports are kept as they were: no closure while it does not answer. What a
        # stopped scan saw before is opened all the same (the state moves past it: it
        # was lost for good, with no event; a review)
        compare_sighted()
        return ChangeOutcome(events, replace(previous, scan_id=scan.scan_id, finished_at=now,
                                             is_reachable=False, ports=next_ports))
    if previous is not None and not previous.is_reachable and not host_answered:
        # Still nothing answered, and no TCP evidence either way (every re-probe cut by
        # the budget, or only UDP looked at): it stays unreachable, saying nothing (it
        # used to turn reachable silently, and the next silent scan alerted again)
        compare_sighted()
        return ChangeOutcome(events, replace(previous, scan_id=scan.scan_id, finished_at=now,
                                             ports=next_ports))
    if previous is not None and not previous.is_reachable and host_answered:
        events.append(event(ChangeKind.HOST_BACK, None, "unreachable", "reachable"))

    for key in candidates:
        old = before_ports[key]
        if _is_closed(key, reprobes.get(key)):
            events.append(event(ChangeKind.CLOSED, old, old.describe(), "closed"))
            next_ports[key] = old._replace(is_open=False, changed_at=now)
    for key in sorted(scan.ports):  # (Proto, port): Proto is a str enum, so this sorts
        compare(key, scan.ports[key])
    compare_sighted()
    state = HostState(scan.target, scan.scan_id, now, True, next_ports)
    return ChangeOutcome(events, state)


# The fields of a PortSnapshot the rule compares, by position (the proto apart: an enum,
# which marshal refuses; the ports are hashed in one list per protocol instead). A test
# changes each compared field in turn and checks the digest moves.
_FINGERPRINTED = itemgetter(1, 3, 4, 5, 6, 8, 9, 10, 11, 12, 17, 18, 19)


def fingerprint(ports: Mapping[PortKey, PortSnapshot]) -> str:
    """Digest of every field the rule compares, over the open ports. Equal digests of a
    host's stored state and of its new scan mean the rule would emit nothing for the
    ports (same open set, same attributes) except certificate expiry, which
    ``is_near_expiry`` covers: the recorder's fast path for the many hosts that did not
    change skips reading their port states. One hash per host (not one update per port):
    it is computed for every host of every scan, so its rows are cut by position (one C
    call a port). The bytes hashed are marshal format 2: by value only (format 3 adds
    back-references that depend on object identity), and about twice as fast as repr.
    Should a Python release (or this function) change the bytes, each host takes the
    full path once, then matches again."""
    tcp: list[tuple[Any, ...]] = []
    udp: list[tuple[Any, ...]] = []
    for s in ports.values():
        if s.is_open:
            if s.proto == "tcp":
                tcp.append(_FINGERPRINTED(s))
            else:
                # whether it answered: a host with UDP ports leaves the fast path once
                # after layout 22, and its ports' word is written (with the flag only
                # when silent, a host whose UDP ports all answered kept its digest, its
                # word unknown for good, and its first silence went unsaid: a review)
                udp.append((*_FINGERPRINTED(s), s.is_unconfirmed))
    tcp.sort()
    udp.sort()
    return hashlib.blake2b(marshal.dumps((tcp, udp), 2), digest_size=16).hexdigest()


def certificate_came_back(previous: HostState | None, scan: HostScanView) -> bool:
    """Does this scan show, near expiry, a certificate its port did not have open in the
    previous state (one that may come back after another, or with its port reopening:
    then the change log, not the previous snapshot, says whether it was alerted;
    ``ExpiryAlerts``)? The same ports as ``detect_changes`` judges with no baseline."""
    now = scan.finished_at
    for key, new in scan.ports.items():
        if new.cert_sha256 and _is_near_expiry(new, now):
            old = previous.ports.get(key) if previous is not None else None
            if old is None or not old.is_open or old.cert_sha256 != new.cert_sha256:
                return True
    return False


def is_near_expiry(ports: Mapping[PortKey, PortSnapshot], now: datetime) -> bool:
    """True when some certificate is within the loosest expiry threshold (or expired).
    (A loop, not any() over a generator: asked for every host of every scan.)"""
    for s in ports.values():
        if s.cert_not_after != EPOCH and s.cert_not_after - now <= _LOOSEST:
            return True
    return False


def host_views(host_scans: Iterable[HostScan],
               snapshots: Mapping[tuple[str, str, str], Sequence[PortSnapshot]]
               ) -> list[HostScanView]:
    """Group shard records per (scan, target, ip) and attach that host's open ports
    (``snapshots`` keyed the same way)."""
    grouped: dict[tuple[str, str, str], list[HostScan]] = {}
    for h in host_scans:
        key = (h.scan_id, h.target.target, h.target.ip)
        rows = grouped.get(key)
        if rows is None:
            grouped[key] = [h]
            continue
        # a retried shard replaces its own row, as in the store
        rows[:] = [r for r in rows if r.shard_id != h.shard_id or not h.shard_id]
        rows.append(h)
    return [
        HostScanView(rows[-1].target, key[0], tuple(rows),
                     {(s.proto, s.port): s for s in snapshots.get(key, ())})
        for key, rows in grouped.items()
    ]


__all__ = [
    "EXPIRY_THRESHOLDS",
    "SEVERITY_RULES",
    "ChangeOutcome",
    "HostScanView",
    "HostState",
    "PortSnapshot",
    "ProbeAnswer",
    "closure_candidates",
    "detect_changes",
    "fingerprint",
    "host_views",
    "is_near_expiry",
    "liveness_candidates",
    "parse_not_after",
    "severity_of",
    "snapshot_of",
    "to_open",
]
