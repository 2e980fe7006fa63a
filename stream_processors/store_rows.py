"""Rows of the raw tables: the one place per table where a record becomes a row.

Every value is bounded for its column (schemas/bounded.py): strings capped, integers
saturated, arrays capped, times clamped, so a hostile server cannot fail an insert
(issue 11, defect 1). The enums are str subclasses: ``text`` passes them through as they
are. ``changes.snapshot_of`` bounds what it keeps the same way, so change recovery
rebuilds equal snapshots from these rows.

Owns: the column lists of port_observations, host_scans, tls_probes, tls_ciphers and
certificates, and their row builders. Must not touch: the client (``store.py`` inserts).
"""

from __future__ import annotations

from typing import Any

from probers.tls.starttls import route_for
from schemas.bounded import (
    ARRAY_CAP,
    BANNER_CAP,
    JARM_CAP,
    flag,
    i32,
    text,
    texts,
    timestamp,
    u8,
    u16,
    u32,
)
from schemas.records import Finding, HostScan, ProbeStatus

PIVOT_CAP = 512  # characters of an HTTP title/redirect/header kept (the prober caps at 256)
OBSERVATION_COLUMNS = (
    "scan_id", "target", "hostname", "organization", "asset", "ip", "proto", "port", "state",
    "engine", "service", "product", "version", "extra_info", "cpe", "banner", "method",
    "confidence", "is_tls", "tls_status", "tls_grade", "tls_via", "cert_not_after",
    "cdn_provider", "cdn_source",
    "is_cdn_expected", "risk_color", "risk_reason", "observed_at",
    "http_title", "http_redirect", "http_server", "http_powered_by", "favicon_mmh3", "jarm",
    "tls_reachable",
)
HOST_SCAN_COLUMNS = (
    "scan_id", "shard_id", "target", "hostname", "organization", "asset", "ip", "started_at",
    "finished_at", "ports_scanned", "open_ports", "status", "is_tarpit", "note", "proto",
    "cover_first", "cover_last",
)
TLS_PROBE_COLUMNS = (
    "scan_id", "target", "ip", "port", "status", "error", "versions", "grade", "grade_reason",
    "reached_via", "is_upgrade_offered", "upgrade_note", "leaf_sha256", "is_chain_trusted",
    "trust_error", "days_to_expiry", "certificate_warnings", "profile", "profile_version",
    "profile_reasons", "observed_at",
)
TLS_CIPHER_COLUMNS = (
    "scan_id", "target", "ip", "port", "tls_version", "iana_name", "openssl_name", "strength",
    "reason", "kex_group", "kex_bits", "preference", "observed_at",
)
CERTIFICATE_COLUMNS = (
    "scan_id", "target", "ip", "port", "chain_position", "subject", "sans", "issuer",
    "not_before", "not_after", "key_type", "key_bits", "signature_algorithm", "is_self_signed",
    "is_expired", "is_hostname_match", "sha256", "name_check", "days_to_expiry",
    "expiry_warning", "weak_key", "weak_signature", "observed_at",
)


def observation_row(f: Finding) -> list[Any]:
    p, t, s, tls, cdn = f.port, f.port.target, f.service, f.tls, f.cdn
    leaf_not_after = tls.certificates[0].not_after if tls.certificates else ""
    return [
        text(p.scan_id), text(t.target), text(t.hostname), text(t.organization),
        text(t.asset), text(t.ip), text(p.proto), u16(p.port), text(p.state), text(p.engine),
        text(s.service), text(s.product), text(s.version), text(s.extra_info), text(s.cpe),
        text(s.banner, BANNER_CAP), text(s.method), u8(s.confidence), flag(s.is_tls),
        text(tls.status), text(tls.grade), text(tls.reached_via), text(leaf_not_after),
        text(cdn.provider), text(cdn.source), flag(cdn.is_expected_port), text(f.risk_color),
        text(f.risk_reason), timestamp(p.observed_at),
        text(s.http_title, PIVOT_CAP), text(s.http_redirect, PIVOT_CAP),
        text(s.http_server, PIVOT_CAP), text(s.http_powered_by, PIVOT_CAP),
        None if s.favicon_mmh3 is None else i32(s.favicon_mmh3), text(s.jarm, JARM_CAP),
        flag(tls_reachable(f)),
    ]


def tls_reachable(f: Finding) -> bool:
    """Can the port reach TLS, as identified now: probed this time, or a route the TLS
    stage would take (TLS itself, a STARTTLS upgrade; probed or not: --no-tls). False =
    plain text: the Ciphers report no longer shows a probe from when it spoke TLS."""
    return (f.tls.status is not ProbeStatus.NOT_SCHEDULED
            or route_for(f.service.service, f.service.is_tls) is not None)


def _tls_base(f: Finding) -> list[Any]:
    p = f.port
    return [text(p.scan_id), text(p.target.target), text(p.target.ip), u16(p.port)]


def tls_probe_row(f: Finding) -> list[Any]:
    tls = f.tls
    return [*_tls_base(f), text(tls.status), text(tls.error), texts(tls.versions),
            text(tls.grade), text(tls.grade_reason), text(tls.reached_via),
            flag(tls.is_upgrade_offered), text(tls.upgrade_note), text(tls.leaf_sha256),
            flag(tls.is_chain_trusted), text(tls.trust_error), i32(tls.days_to_expiry),
            texts(tls.certificate_warnings), text(tls.profile), text(tls.profile_version),
            texts(tls.profile_reasons), timestamp(f.port.observed_at)]


def tls_cipher_rows(f: Finding) -> list[list[Any]]:
    base, seen = _tls_base(f), timestamp(f.port.observed_at)
    return [[*base, text(c.tls_version), text(c.iana_name), text(c.openssl_name),
             text(c.strength), text(c.reason), text(c.kex_group), u16(c.kex_bits),
             u16(c.preference), seen] for c in f.tls.suites]


def certificate_rows(f: Finding) -> list[list[Any]]:
    base, seen = _tls_base(f), timestamp(f.port.observed_at)
    return [[*base, u8(c.chain_position), text(c.subject), texts(c.sans), text(c.issuer),
             text(c.not_before), text(c.not_after), text(c.key_type), u16(c.key_bits),
             text(c.signature_algorithm), flag(c.is_self_signed), flag(c.is_expired),
             flag(c.is_hostname_match), text(c.sha256), text(c.name_check),
             i32(c.days_to_expiry), text(c.expiry_warning), text(c.weak_key),
             text(c.weak_signature), seen] for c in f.tls.certificates]


def host_scan_row(h: HostScan) -> list[Any]:
    t = h.target
    return [text(h.scan_id), text(h.shard_id), text(t.target), text(t.hostname),
            text(t.organization), text(t.asset), text(t.ip), timestamp(h.started_at),
            timestamp(h.finished_at), u32(h.ports_scanned), u32(h.open_ports), text(h.status),
            flag(h.is_tarpit), text(h.note), text(h.proto),
            [u16(r.first) for r in h.ports[:ARRAY_CAP]],
            [u16(r.last) for r in h.ports[:ARRAY_CAP]]]


