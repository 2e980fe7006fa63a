"""The TLS scan-command table and the fold: every command has a plugin; failures are data."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

import pytest

from probers.tls.commands import (
    IMPLEMENTATIONS,
    AcceptedSuite,
    CertificateResult,
    CommandResult,
    ScanCommand,
    ScanSession,
    SuitesPlugin,
    SuitesResult,
    TlsTarget,
    fold,
)
from probers.tls.hello import HelloOutcome, OutcomeKind
from probers.tls.suites import TlsVersion
from schemas.records import ProbeStatus

NOW = datetime(2025, 1, 1, tzinfo=UTC)
TARGET = TlsTarget("127.0.0.1", 443)


def test_every_scan_command_has_an_implementation() -> None:
    assert set(IMPLEMENTATIONS) == set(ScanCommand)
    for command, implementation in IMPLEMENTATIONS.items():
        assert implementation.command is command


def test_every_version_has_exactly_one_suites_command() -> None:
    versions = [p.version for p in IMPLEMENTATIONS.values() if isinstance(p, SuitesPlugin)]
    assert sorted(versions, key=list(TlsVersion).index) == list(TlsVersion)


def _suites(version: TlsVersion, *codes: int, error: str = "") -> SuitesResult:
    command = next(c for c, p in IMPLEMENTATIONS.items() if getattr(p, "version", None) is version)
    status = ProbeStatus.ERROR if error and not codes else ProbeStatus.COMPLETED
    return SuitesResult(command, version, status, error, tuple(AcceptedSuite(c) for c in codes))


def test_nothing_accepted_anywhere_is_could_not_test_not_no_ciphers() -> None:
    # Given every version refused and the certificate handshake refused too
    results: dict[ScanCommand, CommandResult] = {r.command: r for r in map(_suites, TlsVersion)}
    results[ScanCommand.CERTIFICATE] = CertificateResult(
        ScanCommand.CERTIFICATE, ProbeStatus.ERROR, "tls alert handshake failure"
    )
    # When folded
    result = fold(TARGET, results, NOW)
    # Then it is an error that says why, not an empty completed list
    assert result.status is ProbeStatus.ERROR
    assert result.error == ("could not test: certificate: tls alert handshake failure")
    assert result.suites == ()


def test_timeouts_everywhere_fold_into_could_not_test_with_the_reasons() -> None:
    results = {
        r.command: r
        for r in (_suites(v, error="handshake stalled: no answer within 3s") for v in TlsVersion)
    }
    result = fold(TARGET, results, NOW)
    assert result.status is ProbeStatus.ERROR
    assert result.error.startswith("could not test: SSLv3: handshake stalled")
    assert "TLSv1.3: handshake stalled" in result.error


def test_some_versions_failing_is_completed_but_partial() -> None:
    # Given TLS 1.2 enumerated and SSLv3 timed out
    results = {
        r.command: r
        for r in (
            _suites(TlsVersion.SSL_3_0, error="handshake stalled: no answer within 3s"),
            _suites(TlsVersion.TLS_1_2, 0xC02F),
        )
    }
    result = fold(TARGET, results, NOW)
    # Then the suites are reported and the gap is named
    assert result.status is ProbeStatus.COMPLETED
    assert result.versions == ("TLSv1.2",)
    assert [s.iana_name for s in result.suites] == ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
    assert result.error == "partial: SSLv3: handshake stalled: no answer within 3s"


def test_fold_grades_suites_and_port() -> None:
    results = {
        r.command: r
        for r in (_suites(TlsVersion.TLS_1_0, 0x000A), _suites(TlsVersion.TLS_1_2, 0xC02F))
    }
    result = fold(TARGET, results, NOW)
    assert [(s.tls_version, s.strength) for s in result.suites] == [
        ("TLSv1.0", "weak"),
        ("TLSv1.2", "strong"),
    ]
    assert result.grade == "weak"
    # Issue 13: a protocol below TLS 1.2 is weak by itself, named first; the weak suite too.
    assert result.grade_reason.startswith(
        "TLSv1.0 enabled (deprecated, RFC 8996); TLSv1.0 TLS_RSA_WITH_3DES_EDE_CBC_SHA (3DES"
    )
    # Mozilla 5.7: TLS 1.0 + 3DES is only "old".
    assert (result.profile, result.profile_version) == ("old", "5.7")
    assert result.profile_reasons[-1] == "not intermediate: TLSv1.0 enabled"


def _session(budget: float) -> ScanSession:
    return ScanSession(TARGET, timeout=2.0, budget=budget)


def test_an_attempt_that_starts_after_the_budget_does_not_run() -> None:
    # Given a session whose budget ran out while an attempt waited for a thread
    session = _session(budget=0.2)
    time.sleep(0.3)
    ran: list[float] = []

    def job(allowance: float) -> HelloOutcome:
        ran.append(allowance)
        return HelloOutcome(OutcomeKind.ACCEPTED)

    # When the attempt starts: it is not made (the budget bounds the whole probe)
    outcome = session._attempt(job)
    assert (ran, outcome.kind, outcome.detail) == (
        [], OutcomeKind.TIMEOUT, "scan budget of 0.2s exhausted")
    assert session.connections == 0


def test_an_attempt_gets_what_is_left_of_the_budget_when_it_starts() -> None:
    session = _session(budget=10.0)
    allowances: list[float] = []
    outcome = asyncio.run(session.run(
        lambda allowance: allowances.append(allowance) or HelloOutcome(OutcomeKind.ACCEPTED)))
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert allowances == [2.0]  # the attempt's timeout: less than the budget left
    assert session.connections == 1


def test_attempts_run_on_the_tls_pool_not_the_default_one() -> None:
    names: list[str] = []

    def job(_allowance: float) -> HelloOutcome:
        names.append(threading.current_thread().name)
        return HelloOutcome(OutcomeKind.ACCEPTED)

    asyncio.run(_session(budget=5.0).run(job))
    assert len(names) == 1 and names[0].startswith("portwatch-tls")


def test_an_attempt_that_raises_is_an_unreadable_answer_not_a_crash(
        caplog: pytest.LogCaptureFixture) -> None:
    # Given an attempt whose parser a peer's bytes broke (the backstop behind every job)
    def job(_allowance: float) -> HelloOutcome:
        raise KeyError("a parser's gap")

    outcome = asyncio.run(_session(budget=5.0).run(job))
    # Then it is a protocol error of that peer, and the gap is logged
    assert (outcome.kind, outcome.detail, outcome.is_tls_answer) == (
        OutcomeKind.PROTOCOL_ERROR, "unreadable answer (KeyError)", True)
    assert "TLS attempt on 127.0.0.1:443 failed unexpectedly: KeyError" in caplog.text
