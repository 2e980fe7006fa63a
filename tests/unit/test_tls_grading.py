"""The grading tables: one row per rule, then the port rules."""

from __future__ import annotations

import pytest

from probers.tls.grading import (
    STRONG_REASON,
    SUITE_RULES,
    Grade,
    Strength,
    SuiteFacts,
    grade_port,
    grade_suite,
)
from probers.tls.suites import SUITES, TlsVersion, describe

V = TlsVersion

# (version, suite code, kex bits, expected strength, expected first reason)
SUITE_CASES = [
    (V.TLS_1_2, 0xC02F, 253, Strength.STRONG, STRONG_REASON),  # ECDHE-RSA-AES128-GCM
    (V.TLS_1_3, 0x1301, 253, Strength.STRONG, STRONG_REASON),
    (V.TLS_1_2, 0xC013, 256, Strength.STRONG, STRONG_REASON),  # ECDHE CBC under 1.2
    (V.TLS_1_2, 0x0002, 0, Strength.WEAK, "NULL cipher"),
    (V.TLS_1_2, 0x00A6, 2048, Strength.WEAK, "anonymous key exchange"),
    (V.TLS_1_0, 0x0003, 0, Strength.WEAK, "EXPORT-grade"),
    (V.TLS_1_0, 0x0006, 0, Strength.WEAK, "EXPORT-grade cipher; RC2; MD5 MAC"),
    (V.TLS_1_2, 0xC011, 256, Strength.WEAK, "RC4"),
    (V.TLS_1_0, 0x0009, 0, Strength.WEAK, "single DES"),
    (V.TLS_1_0, 0x000A, 0, Strength.WEAK, "3DES"),
    (V.TLS_1_2, 0x0007, 0, Strength.WEAK, "IDEA"),
    (V.TLS_1_0, 0x0004, 0, Strength.WEAK, "RC4"),  # RC4-MD5: RC4 and MD5
    (V.SSL_3_0, 0xC013, 256, Strength.WEAK, "SSLv3"),
    (V.TLS_1_2, 0x009E, 768, Strength.WEAK, "DH group under 1024 bits"),
    (V.TLS_1_2, 0xC02F, 192, Strength.WEAK, "EC group under 224 bits"),
    (V.TLS_1_2, 0x009C, 0, Strength.MEDIUM, "no forward secrecy"),
    (V.TLS_1_0, 0xC013, 256, Strength.MEDIUM, "CBC in TLS 1.0"),
    (V.TLS_1_2, 0x009E, 1024, Strength.MEDIUM, "DH group under 2048 bits"),
    (V.TLS_1_2, 0xFFFE, 0, Strength.MEDIUM, "suite unknown"),
]


@pytest.mark.parametrize(("version", "code", "bits", "strength", "reason"), SUITE_CASES)
def test_grade_suite_table(
    version: TlsVersion, code: int, bits: int, strength: Strength, reason: str
) -> None:
    grade = grade_suite(SuiteFacts(version, describe(code), bits))
    assert grade.strength is strength
    assert grade.reason.startswith(reason)


def test_every_rule_is_exercised_by_the_table() -> None:
    reasons_seen = {
        r
        for version, code, bits, _, _ in SUITE_CASES
        for r in grade_suite(SuiteFacts(version, describe(code), bits)).reason.split("; ")
    }
    assert {rule.reason for rule in SUITE_RULES} <= reasons_seen


def test_reasons_list_every_match_worst_first() -> None:
    grade = grade_suite(SuiteFacts(V.TLS_1_0, SUITES[0x000A], 0))
    assert grade == Grade(
        Strength.WEAK, "3DES: 64-bit block (Sweet32); no forward secrecy; CBC in TLS 1.0 (BEAST)"
    )


STRONG = Grade(Strength.STRONG, STRONG_REASON)
WEAK_3DES = Grade(Strength.WEAK, "3DES: 64-bit block (Sweet32)")

PORT_CASES = [
    # (versions, [(version, code, grade)], expected strength, expected reason start)
    ([V.TLS_1_2], [(V.TLS_1_2, 0xC02F, STRONG)], Strength.STRONG, "every accepted suite"),
    # Issue 13: below TLS 1.2 is weak, whatever the suites (a TLS 1.0-only server must
    # not grade like a modern TLS 1.2/1.3 one).
    ([V.TLS_1_0, V.TLS_1_2], [(V.TLS_1_2, 0xC02F, STRONG)], Strength.WEAK, "TLSv1.0 enabled"),
    ([V.TLS_1_1], [(V.TLS_1_1, 0xC013, STRONG)], Strength.WEAK, "TLSv1.1 enabled"),
    ([V.TLS_1_0], [(V.TLS_1_0, 0xC013, STRONG)], Strength.WEAK, "TLSv1.0 enabled"),
    ([V.SSL_3_0, V.TLS_1_2], [(V.TLS_1_2, 0xC02F, STRONG)], Strength.WEAK, "SSLv3 enabled"),
    (
        [V.TLS_1_2],
        [(V.TLS_1_2, 0xC02F, STRONG), (V.TLS_1_2, 0x000A, WEAK_3DES)],
        Strength.WEAK,
        "TLSv1.2 TLS_RSA_WITH_3DES_EDE_CBC_SHA (3DES",
    ),
]


@pytest.mark.parametrize(("versions", "suites", "strength", "reason"), PORT_CASES)
def test_grade_port_table(
    versions: list[TlsVersion],
    suites: list[tuple[TlsVersion, int, Grade]],
    strength: Strength,
    reason: str,
) -> None:
    grade = grade_port(versions, [(v, SUITES[c], g) for v, c, g in suites])
    assert grade is not None
    assert grade.strength is strength
    assert grade.reason.startswith(reason)


def test_grade_port_without_suites_is_no_grade() -> None:
    assert grade_port([V.TLS_1_2], []) is None


def test_grade_port_caps_the_reason_list() -> None:
    weak = [(V.TLS_1_2, SUITES[c], WEAK_3DES) for c in (0x000A, 0xC012, 0x0016, 0xC008, 0x0013)]
    grade = grade_port([V.TLS_1_2], weak)
    assert grade is not None and grade.reason.endswith("; and 2 more")
