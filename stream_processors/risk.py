"""Risk: a colour per open port and a bounded, monotonic score per target.

Owns: loading the risk catalogue (schemas/data/risk_catalogue.yaml), the colour
of one finding, the score formula and the letter grade. The Summary report's SQL
(schemas/reports/summary.sql) computes the same score in ClickHouse; a test
proves both agree. Must not touch the network or the store.

Formula (documented in README and ARCHITECTURE.md):
    raw   = 10 * red + 3 * yellow + 1 * green    (CDN-expected ports and UDP
            open|filtered ports count zero)
    score = round(100 * (1 - exp(-raw / 40)), 1)   in [0, 100]: bounded (100.0 from raw 305)
    grade = A < 10 <= B < 25 <= C < 50 <= D < 75 <= F
One more open port never lowers raw, and score is increasing in raw: monotonic.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from schemas import data_path
from schemas.records import CdnVerdict, Finding, PortState, RiskColor, ServiceInfo, TlsResult

log = logging.getLogger(__name__)

WEIGHTS: dict[RiskColor, int] = {RiskColor.RED: 10, RiskColor.YELLOW: 3, RiskColor.GREEN: 1}
SCALE = 40.0
GRADES: tuple[tuple[float, str], ...] = ((10, "A"), (25, "B"), (50, "C"), (75, "D"))


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    color: RiskColor
    reason: str


@cache
def load_catalogue(path: str | None = None) -> dict[str, CatalogueEntry]:
    file = path or data_path("risk_catalogue.yaml")
    try:
        with open(file, encoding="utf-8") as fh:
            data: dict[str, Any] = yaml.safe_load(fh)
    except OSError as exc:
        log.warning("risk catalogue %s unreadable (%s): every port will be yellow; "
                    "reinstall portwatch to restore schemas/data", file, exc.strerror)
        return {}
    return {
        name.lower(): CatalogueEntry(RiskColor(entry["color"]), str(entry["reason"]))
        for name, entry in (data.get("services") or {}).items()
    }


@cache
def load_product_services(path: str | None = None) -> tuple[tuple[re.Pattern[str], str], ...]:
    """The catalogue's ``products`` (a product prefix -> the service whose colour it
    takes; "" keeps the port's own), longest prefix first."""
    file = path or data_path("risk_catalogue.yaml")
    try:
        with open(file, encoding="utf-8") as fh:
            data: dict[str, Any] = yaml.safe_load(fh)
    except OSError:
        return ()  # said once by load_catalogue
    pairs = sorted(((str(k).lower(), str(v or "").lower())
                    for k, v in (data.get("products") or {}).items()),
                   key=lambda kv: -len(kv[0]))
    return tuple((re.compile(rf"{re.escape(prefix)}\b", re.I), service)
                 for prefix, service in pairs)


def _product_service(product: str) -> str:
    """The catalogue service a product stands for ("" none); spacing as the catalogue
    writes it (one space between words), so "Elasticsearch  Kibana" is Kibana too."""
    product = " ".join(product.split())
    for pattern, service in load_product_services():
        if pattern.match(product):
            return service
    return ""


def _base_service(service: str) -> str:
    """``ssl/http`` -> ``http``; ``http-proxy`` stays; nmap's ``?`` suffix dropped."""
    name = service.lower().rstrip("?")
    return name.split("/", 1)[1] if name.startswith(("ssl/", "tls/")) else name


def color_for(finding: Finding, cdn: CdnVerdict | None = None) -> tuple[RiskColor, str]:
    """Colour of one port from its identified service, never from the port number.

    ``cdn``: the CDN verdict when it is not on the finding yet (the stages' hot path).
    """
    verdict = cdn or finding.cdn
    if verdict.is_expected_port:
        color, reason = _service_color(finding)
        if color is RiskColor.RED:
            # what answers on the edge's port is a database or a control plane behind
            # it: exposed through the CDN, not the CDN's own (it read green, no risk)
            return color, f"{reason}; reached through the {verdict.provider} edge"
        return RiskColor.GREEN, f"expected open on {verdict.provider} edge; no risk"
    return _service_color(finding)


def judge(finding: Finding, verdict: CdnVerdict) -> tuple[CdnVerdict, RiskColor, str]:
    """The CDN verdict as the score reads it, the colour and its reason. A red service
    on a port the CDN's edge is expected to leave open (an Elasticsearch or Docker API
    proxied through Cloudflare: a review, 2026-12-06) is not discounted: the provider
    stays tagged, the port is scored."""
    color, reason = color_for(finding, verdict)
    if color is RiskColor.RED and verdict.is_expected_port:
        verdict = CdnVerdict(verdict.provider, verdict.source, is_expected_port=False)
    return verdict, color, reason


def _service_color(finding: Finding) -> tuple[RiskColor, str]:
    """The colour of what answers, with no CDN discount. Weak TLS and a bad certificate
    raise it (issues: "weak suites raise the port's colour"; 13: certificate posture and
    mail without STARTTLS do too), a raise never lowers red, and the reason names them
    whatever the colour (a POP3 port without STLS, yellow already, read only "mail
    access in clear text unless STLS is enforced": a review)."""
    if finding.port.state is PortState.OPEN_FILTERED:
        return RiskColor.YELLOW, "no UDP reply: open|filtered, unconfirmed"
    color, reason, name = _catalogued(finding.service)
    concerns = tls_concerns(finding.tls, name)
    if not concerns:
        return color, reason
    raised = RiskColor.YELLOW if color is RiskColor.GREEN else color
    return raised, f"{reason}; {'; '.join(concerns)}"


def _catalogued(service: ServiceInfo) -> tuple[RiskColor, str, str]:
    """The catalogue's colour and reason for what answers, and the service's name."""
    if not service.service:
        return RiskColor.YELLOW, "service not identified", ""
    name = _base_service(service.service)
    catalogue = load_catalogue()
    # An HTTP API that is a database or a control plane is coloured as what it is (an
    # open Elasticsearch or Docker API read green, like a web page: a review, 2026-12-06)
    product_service = _product_service(service.product) if service.product else ""
    entry = catalogue.get(product_service) if product_service else None
    if entry is not None:
        name = product_service
    else:
        entry = catalogue.get(name)
    if entry is None and service.is_tls and name in ("http", "www"):
        entry = catalogue.get("https")
    elif entry is not None and service.service.lower().startswith(("ssl/", "tls/")):
        # implicit TLS (nmap's tunnel prefix): the catalogue's TLS form of the service,
        # where it has one (ssl/imap read "mail access in clear text unless STARTTLS is
        # enforced", yellow, on a port that speaks nothing but TLS: a review)
        tls_name = f"{name}s"
        if tls_name in catalogue:
            name, entry = tls_name, catalogue[tls_name]
    if entry is None:
        return RiskColor.YELLOW, f"service {name!r} not catalogued", name
    return entry.color, entry.reason, name


# Services whose clients send credentials or mail: offering no STARTTLS leaves them in
# clear text, which is a finding (issue 13), not a test failure.
CLEARTEXT_CONCERN_SERVICES = frozenset({"smtp", "submission", "imap", "pop3", "ftp", "sieve",
                                        "nntp", "xmpp-client", "ldap"})
EXPIRY_RAISE_DAYS = 14  # the 30-day warning is shown; 14 days or fewer raises the colour


def tls_concerns(tls: TlsResult, service: str = "") -> list[str]:
    """What about a port's TLS raises its colour, in words (empty = nothing).

    The rule (README, "Risk"): a weak grade (a weak suite, or any protocol below TLS 1.2);
    a leaf that is expired or expires within 14 days; an untrusted chain (self-signed,
    unknown issuer, incomplete, expired intermediate); a name mismatch when the target
    has a name; a weak key (RSA/DSA < 2048, EC < 224 bits) or signature (MD5, SHA-1); a
    mail/credentials service that offers no STARTTLS.
    """
    found: list[str] = []
    if tls.grade == "weak":
        found.append(f"weak TLS: {tls.grade_reason}")
    if not tls.is_upgrade_offered and service in CLEARTEXT_CONCERN_SERVICES:
        found.append(f"no STARTTLS offered: {service} in clear text")
    leaf = tls.certificates[0] if tls.certificates else None
    if tls.leaf_sha256:
        if tls.days_to_expiry < 0 or (leaf is not None and leaf.is_expired):
            found.append("certificate expired")
        elif tls.days_to_expiry < EXPIRY_RAISE_DAYS:
            found.append(f"certificate expires in {tls.days_to_expiry} days")
        if not tls.is_chain_trusted and tls.trust_error != "expired":
            found.append(f"untrusted certificate: {tls.trust_error}")
    if leaf is not None:
        if leaf.name_check == "mismatch":
            found.append("certificate name mismatch")
        if leaf.weak_key:
            found.append(f"weak certificate key: {leaf.weak_key}")
        if leaf.weak_signature:
            found.append(f"weak certificate signature: {leaf.weak_signature}")
    return found


def assess(finding: Finding) -> Finding:
    """Risk stage: set the finding's colour and reason."""
    verdict, color, reason = judge(finding, finding.cdn)
    return finding.with_(cdn=verdict, risk_color=color, risk_reason=reason)


@dataclass(frozen=True, slots=True)
class Score:
    red: int
    yellow: int
    green: int
    raw: int
    score: float
    grade: str

    @property
    def parts(self) -> str:
        return (f"10x{self.red} red + 3x{self.yellow} yellow + 1x{self.green} green = "
                f"{self.raw} -> {self.score}")


def score_counts(red: int, yellow: int, green: int) -> Score:
    if min(red, yellow, green) < 0:
        raise ValueError("counts cannot be negative")
    raw = (WEIGHTS[RiskColor.RED] * red + WEIGHTS[RiskColor.YELLOW] * yellow
           + WEIGHTS[RiskColor.GREEN] * green)
    value = round(100 * (1 - math.exp(-raw / SCALE)), 1)
    return Score(red, yellow, green, raw, value, grade_for(value))


def grade_for(score: float) -> str:
    return next((letter for limit, letter in GRADES if score < limit), "F")


def is_scored(finding: Finding) -> bool:
    return not finding.cdn.is_expected_port and finding.port.state is PortState.OPEN


def score_findings(findings: Iterable[Finding]) -> Score:
    counts = dict.fromkeys(RiskColor, 0)
    for f in findings:
        if is_scored(f):
            counts[f.risk_color] += 1
    return score_counts(counts[RiskColor.RED], counts[RiskColor.YELLOW], counts[RiskColor.GREEN])
