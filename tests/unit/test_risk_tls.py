"""Issue 13's risk rule: certificate posture and mail without STARTTLS raise a port's
colour the way weak TLS does, never lower red, and say why (table test)."""

from __future__ import annotations

import pytest

from schemas.records import (
    Certificate,
    Finding,
    OpenPort,
    ProbeStatus,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)
from stream_processors.risk import color_for, tls_concerns

TRUSTED = TlsResult(status=ProbeStatus.COMPLETED, grade="strong", leaf_sha256="ab" * 32,
                    is_chain_trusted=True, days_to_expiry=200,
                    certificates=(Certificate(name_check="no name to check"),))  # fmt: skip


def _finding(service: str, tls: TlsResult, *, is_tls: bool = False) -> Finding:
    return Finding(
        port=OpenPort(scan_id="s", target=Target("127.0.0.1", "127.0.0.1"), port=2525),
        service=ServiceInfo(service=service, is_tls=is_tls),
        tls=tls,
    )


def _with(**changes: object) -> TlsResult:
    from dataclasses import replace

    return replace(TRUSTED, **changes)  # type: ignore[arg-type]


CASES = [
    # (service, tls, expected colour, expected concern or "")
    ("smtp", TRUSTED, RiskColor.GREEN, ""),
    ("smtp", _with(days_to_expiry=40), RiskColor.GREEN, ""),  # 30-day warning: shown only
    ("smtp", _with(days_to_expiry=29), RiskColor.GREEN, ""),
    ("smtp", _with(days_to_expiry=13), RiskColor.YELLOW, "certificate expires in 13 days"),
    ("smtp", _with(days_to_expiry=-3, is_chain_trusted=False, trust_error="expired"),
     RiskColor.YELLOW, "certificate expired"),
    ("smtp", _with(is_chain_trusted=False, trust_error="self-signed"), RiskColor.YELLOW,
     "untrusted certificate: self-signed"),
    ("smtp", _with(certificates=(Certificate(name_check="mismatch"),)), RiskColor.YELLOW,
     "certificate name mismatch"),
    ("smtp", _with(certificates=(Certificate(weak_key="RSA 1024"),)), RiskColor.YELLOW,
     "weak certificate key: RSA 1024"),
    ("smtp", _with(certificates=(Certificate(weak_signature="sha1WithRSAEncryption"),)),
     RiskColor.YELLOW, "weak certificate signature: sha1WithRSAEncryption"),
    ("smtp", _with(grade="weak", grade_reason="TLSv1.0 enabled (deprecated, RFC 8996)"),
     RiskColor.YELLOW, "weak TLS: TLSv1.0 enabled (deprecated, RFC 8996)"),
    ("smtp", TlsResult(status=ProbeStatus.COMPLETED, is_upgrade_offered=False,
                       reached_via="starttls-smtp"),
     RiskColor.YELLOW, "no STARTTLS offered: smtp in clear text"),
    # red stays red, whatever TLS says; and the reason names the concern whatever the
    # colour (a POP3 port without STLS, yellow already, did not say so: a review)
    ("mysql", _with(is_chain_trusted=False, trust_error="self-signed"), RiskColor.RED,
     "untrusted certificate: self-signed"),
    ("pop3", TlsResult(status=ProbeStatus.COMPLETED, is_upgrade_offered=False,
                       reached_via="starttls-pop3"),
     RiskColor.YELLOW, "no STARTTLS offered: pop3 in clear text"),
    ("", _with(grade="weak", grade_reason="EC group under 224 bits: secp192r1 accepted"),
     RiskColor.YELLOW, "weak TLS: EC group under 224 bits: secp192r1 accepted"),
    # "could not test" raises nothing: it is not a finding about the certificate
    ("smtp", TlsResult(status=ProbeStatus.ERROR, error="could not test: timeout"),
     RiskColor.GREEN, ""),
]  # fmt: skip


@pytest.mark.parametrize(("service", "tls", "color", "concern"), CASES)
def test_tls_concerns_raise_green_to_yellow(service: str, tls: TlsResult, color: RiskColor,
                                            concern: str) -> None:  # fmt: skip
    got, reason = color_for(_finding(service, tls))
    assert got is color
    if concern:
        assert reason.endswith(concern)
        assert concern in tls_concerns(tls, service)
    elif color is RiskColor.GREEN:
        assert tls_concerns(tls, service) == []
