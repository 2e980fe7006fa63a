"""Strength grades: one rule table per suite, one per port, and nothing else decides.

Owns: ``Strength``, ``SUITE_RULES`` / ``grade_suite`` (weak / medium / strong with the
reasons) and ``VERSION_FLOORS`` / ``grade_port``. Pure functions of what the probe saw.

Policy (documented here, tested in tests/unit/test_tls_grading.py):

- A suite is graded by every rule that matches it; its strength is the worst matching
  rule's, its reason lists every matching reason, worst first. No match = strong.
- weak: NULL encryption, anonymous key exchange, EXPORT, RC4 (RFC 7465), RC2, single
  DES, 64-bit-block ciphers (3DES, IDEA: Sweet32), MD5 MAC, any suite under SSLv3
  (POODLE, RFC 7568), DH groups under 1024 bits (Logjam), EC groups under 224 bits.
- medium: no forward secrecy (static RSA / DH / ECDH key exchange), CBC under TLS 1.0
  (BEAST), DH groups of 1024-2047 bits, a suite portwatch cannot name.
- A port is as weak as its worst suite, and at least as weak as its oldest protocol:
  any protocol below TLS 1.2 enabled makes it weak (SSLv3: POODLE, RFC 7568; TLS 1.0 and
  1.1: deprecated by RFC 8996, and outside Mozilla's intermediate profile), whatever
  suites they carry. Issue 13: a TLS 1.0-only server must not grade like a modern one.

Must not touch: the network, records (callers turn grades into record fields).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from probers.tls.suites import SuiteInfo, TlsVersion


class Strength(StrEnum):
    STRONG = "strong"
    MEDIUM = "medium"
    WEAK = "weak"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Strength.STRONG: 0, Strength.MEDIUM: 1, Strength.WEAK: 2}


@dataclass(frozen=True, slots=True)
class SuiteFacts:
    """What the grade of one accepted suite depends on."""

    version: TlsVersion
    suite: SuiteInfo
    kex_bits: int = 0  # DH prime / EC group size from the key exchange; 0 = unknown


@dataclass(frozen=True, slots=True)
class Rule:
    strength: Strength
    reason: str
    applies: Callable[[SuiteFacts], bool]


def _cipher_has(*parts: str) -> Callable[[SuiteFacts], bool]:
    return lambda f: any(part in f.suite.cipher for part in parts)


SUITE_RULES: tuple[Rule, ...] = (
    Rule(Strength.WEAK, "NULL cipher: no encryption", lambda f: f.suite.cipher == "NULL"),
    Rule(Strength.WEAK, "anonymous key exchange: no server authentication",
         lambda f: f.suite.is_anonymous),
    Rule(Strength.WEAK, "EXPORT-grade cipher", lambda f: f.suite.is_export),
    Rule(Strength.WEAK, "RC4 (prohibited by RFC 7465)", _cipher_has("RC4")),
    Rule(Strength.WEAK, "RC2", _cipher_has("RC2")),
    Rule(Strength.WEAK, "single DES (56-bit key)",
         lambda f: f.suite.cipher.startswith("DES") and "3DES" not in f.suite.cipher),
    Rule(Strength.WEAK, "3DES: 64-bit block (Sweet32)", _cipher_has("3DES")),
    Rule(Strength.WEAK, "IDEA: 64-bit block (Sweet32)", _cipher_has("IDEA")),
    Rule(Strength.WEAK, "MD5 MAC", lambda f: f.suite.mac == "MD5"),
    Rule(Strength.WEAK, "SSLv3 (POODLE, RFC 7568)", lambda f: f.version is TlsVersion.SSL_3_0),
    Rule(Strength.WEAK, "DH group under 1024 bits (Logjam)",
         lambda f: f.suite.ephemeral_kind == "DH" and 0 < f.kex_bits < 1024),
    Rule(Strength.WEAK, "EC group under 224 bits",
         lambda f: f.suite.ephemeral_kind == "EC" and 0 < f.kex_bits < 224),
    Rule(Strength.MEDIUM, "no forward secrecy",
         lambda f: not f.suite.is_forward_secret and not f.suite.is_anonymous
         and f.suite.key_exchange != "unknown"),
    Rule(Strength.MEDIUM, "CBC in TLS 1.0 (BEAST)",
         lambda f: f.suite.is_cbc and f.version is TlsVersion.TLS_1_0),
    Rule(Strength.MEDIUM, "DH group under 2048 bits",
         lambda f: f.suite.ephemeral_kind == "DH" and 1024 <= f.kex_bits < 2048),
    Rule(Strength.MEDIUM, "suite unknown to portwatch",
         lambda f: f.suite.key_exchange == "unknown"),
)  # fmt: skip

STRONG_REASON = "no known weakness"


@dataclass(frozen=True, slots=True)
class Grade:
    strength: Strength
    reason: str


def grade_suite(facts: SuiteFacts) -> Grade:
    """The suite's strength and every reason for it (worst first); strong if none apply."""
    matched = [rule for rule in SUITE_RULES if rule.applies(facts)]
    if not matched:
        return Grade(Strength.STRONG, STRONG_REASON)
    matched.sort(key=lambda rule: -rule.strength.rank)  # stable: table order within a level
    return Grade(matched[0].strength, "; ".join(rule.reason for rule in matched))


# The floor an enabled protocol version puts under the whole port.
VERSION_FLOORS: dict[TlsVersion, Grade] = {
    TlsVersion.SSL_3_0: Grade(Strength.WEAK, "SSLv3 enabled (POODLE, RFC 7568)"),
    TlsVersion.TLS_1_0: Grade(Strength.WEAK, "TLSv1.0 enabled (deprecated, RFC 8996)"),
    TlsVersion.TLS_1_1: Grade(Strength.WEAK, "TLSv1.1 enabled (deprecated, RFC 8996)"),
}

_MAX_LISTED = 3


def grade_port(
    versions: Iterable[TlsVersion], graded_suites: Iterable[tuple[TlsVersion, SuiteInfo, Grade]]
) -> Grade | None:
    """Worst of the suites' grades and the enabled versions' floors; None with no suites.

    The reason names what drags the port down to its grade (at most three items, then a
    count), so a report can show it without listing every suite.
    """
    findings: list[tuple[Strength, str]] = []
    for version in versions:
        floor = VERSION_FLOORS.get(version)
        if floor is not None:
            findings.append((floor.strength, floor.reason))
    any_suite = False
    for version, suite, grade in graded_suites:
        any_suite = True
        if grade.strength is not Strength.STRONG:
            findings.append((grade.strength, f"{version.label} {suite.iana_name} ({grade.reason})"))
    if not any_suite:
        return None
    if not findings:
        return Grade(Strength.STRONG, "every accepted suite is strong")
    worst = max(strength.rank for strength, _ in findings)
    level = [text for strength, text in findings if strength.rank == worst]
    reason = "; ".join(level[:_MAX_LISTED])
    if len(level) > _MAX_LISTED:
        reason += f"; and {len(level) - _MAX_LISTED} more"
    return Grade(next(s for s, _ in findings if s.rank == worst), reason)


__all__ = [
    "SUITE_RULES",
    "STRONG_REASON",
    "VERSION_FLOORS",
    "Grade",
    "Rule",
    "Strength",
    "SuiteFacts",
    "grade_port",
    "grade_suite",
]
