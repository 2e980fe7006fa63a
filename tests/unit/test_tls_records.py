"""Issue 13's record fields: they round-trip through the wire form (msgspec and the
strict decoder), and a record written before them still decodes, with defaults that
mean "direct TLS, upgrade not in question, no posture known"."""

from __future__ import annotations

import json

from schemas.records import Certificate, CipherSuite, ProbeStatus, TlsResult

FULL = TlsResult(
    status=ProbeStatus.COMPLETED,
    versions=("TLSv1.2",),
    suites=(CipherSuite("TLSv1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", strength="strong"),),
    certificates=(Certificate(subject="CN=mx", name_check="no name to check", days_to_expiry=5,
                              expiry_warning="expires within 7 days", weak_key="RSA 1024",
                              weak_signature="sha1WithRSAEncryption", sha256="ab" * 32),),
    grade="strong",
    reached_via="starttls-smtp",
    is_upgrade_offered=True,
    leaf_sha256="ab" * 32,
    is_chain_trusted=False,
    trust_error="self-signed",
    days_to_expiry=5,
    certificate_warnings=("certificate expires within 7 days (5 days left)",),
    profile="intermediate",
    profile_version="5.7",
    profile_reasons=("not modern: TLSv1.2 enabled",),
)  # fmt: skip


def test_new_fields_round_trip() -> None:
    assert TlsResult.from_json(FULL.to_json()) == FULL
    assert TlsResult.from_dict(json.loads(FULL.to_json())) == FULL


def test_a_record_from_before_issue_13_still_decodes() -> None:
    old = {"status": "completed", "versions": ["TLSv1.3"], "grade": "strong",
           "certificates": [{"subject": "CN=old", "is_hostname_match": True}]}
    decoded = TlsResult.from_json(json.dumps(old))
    assert decoded.reached_via == ""
    assert decoded.is_upgrade_offered is True
    assert decoded.certificate_warnings == ()
    assert decoded.certificates[0].name_check == ""
    assert decoded == TlsResult.from_dict(old)


def test_no_starttls_finding_round_trips() -> None:
    finding = TlsResult(status=ProbeStatus.COMPLETED, reached_via="starttls-imap",
                        is_upgrade_offered=False, upgrade_note="no STARTTLS offered (CAPABILITY)")
    assert TlsResult.from_json(finding.to_json()) == finding
