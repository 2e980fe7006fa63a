"""TLS scan commands: the explicit table, their implementations, and the one fold.

Owns: ``ScanCommand`` (every test the TLS prober runs), ``IMPLEMENTATIONS`` (the table
mapping each command to the plugin that runs it), ``ScanSession`` (the only way a plugin
reaches the network: one job = one blocking function = at most one connection, run in a
worker thread under the per-host concurrency limit, the per-attempt timeout and the
overall budget) and ``fold`` (every command's result -> one frozen ``TlsResult``).

Shape follows sslyze's plugins (STYLE.md): a command plans jobs, a job uses at most one
connection, one function folds. Enumeration is adaptive (the next offer depends on the
last pick), so a plugin plans its next job from its state machine in ``enumeration.py``.

Versions are not a command of their own: a version is supported when its suites command
found at least one suite. The server's preference order is measured by each suites
command for its version (``ServerOrderProbe``).

Must not touch: Kafka, storage, identification; records are only built in ``fold``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from probers.tls.certs import describe_chain
from probers.tls.enumeration import ServerOrderProbe, SuiteEnumeration
from probers.tls.grading import Grade, Strength, SuiteFacts, grade_port, grade_suite
from probers.tls.handshake import HandshakeSpec, full_handshake, tls13_spec
from probers.tls.hello import (
    WEAK_EC_GROUPS,
    HelloOutcome,
    HelloSpec,
    OutcomeKind,
    exchange_hello,
)
from probers.tls.mozilla import AcceptedFacts, assess_profile
from probers.tls.posture import CertificatePosture, assess_chain
from probers.tls.starttls import Upgrade
from probers.tls.suites import SuiteInfo, TlsVersion, describe, offer_list
from schemas.records import Certificate, CipherSuite, ProbeStatus, TlsResult

log = logging.getLogger(__name__)

# A job is one blocking attempt: given the seconds it may take, it opens at most one
# connection and returns what happened. Never raises for network trouble.
Job = Callable[[float], HelloOutcome]

# Attempts run on a pool of their own: on asyncio's default one (CPU count + 4 threads,
# 6 on two cores) attempts stalled by hostile peers queued one another past their
# ports' budgets and held up everything else the process runs in threads (store
# inserts, nmap's matching). Each port runs at most ``max_parallel`` attempts at once.
MAX_TLS_THREADS = 64
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _attempt_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_TLS_THREADS, thread_name_prefix="portwatch-tls")
        return _pool


class ScanCommand(StrEnum):
    SSL_3_0_SUITES = "ssl_3_0_suites"
    TLS_1_0_SUITES = "tls_1_0_suites"
    TLS_1_1_SUITES = "tls_1_1_suites"
    TLS_1_2_SUITES = "tls_1_2_suites"
    TLS_1_3_SUITES = "tls_1_3_suites"
    CERTIFICATE = "certificate"


@dataclass(frozen=True, slots=True)
class TlsTarget:
    ip: str
    port: int
    server_name: str | None = None
    upgrade: Upgrade = Upgrade.DIRECT  # the plaintext preamble replayed on every connection
    trust_store: str | None = None  # PEM bundle of trust anchors; None = the system's

    @property
    def name_to_match(self) -> str | None:
        """What the certificate must cover: the name the target was given as. A bare IP
        target has no name to check (never "mismatch")."""
        return self.server_name or None


class ScanSession:
    """Runs jobs for one (ip, port): concurrency limit, per-attempt timeout, budget."""

    def __init__(
        self, target: TlsTarget, *, timeout: float, budget: float, max_parallel: int = 2
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.budget = budget
        self._deadline = time.monotonic() + budget
        self._slots = asyncio.Semaphore(max_parallel)
        self._counting = threading.Lock()  # attempts run in several threads
        self.connections = 0

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    async def run(self, job: Job) -> HelloOutcome:
        async with self._slots:
            if self.remaining() <= 0.05:
                return self._exhausted()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(_attempt_pool(), self._attempt, job)

    def _exhausted(self) -> HelloOutcome:
        return HelloOutcome(OutcomeKind.TIMEOUT, f"scan budget of {self.budget:g}s exhausted")

    def _attempt(self, job: Job) -> HelloOutcome:
        """In the worker thread: the attempt's time is what is left of the budget when it
        starts, not when it was queued (the budget bounds the whole probe)."""
        allowance = min(self.timeout, self.remaining())
        if allowance <= 0.05:
            return self._exhausted()
        with self._counting:
            self.connections += 1
        try:
            return job(allowance)
        except Exception as exc:  # noqa: BLE001 - a parser a peer's bytes broke: its answer
            # (jobs return what happened; an exception here is a gap in one of them, so
            # it is logged, and the port's other results are kept)
            log.warning("TLS attempt on %s:%d failed unexpectedly: %s: %s", self.target.ip,
                        self.target.port, type(exc).__name__, exc)
            return HelloOutcome(OutcomeKind.PROTOCOL_ERROR,
                                f"unreadable answer ({type(exc).__name__})",
                                is_tls_answer=True)

    def raw_hello(self, spec: HelloSpec) -> Job:
        ip, port, upgrade = self.target.ip, self.target.port, self.target.upgrade
        return lambda allowance: exchange_hello(ip, port, spec, allowance, upgrade)

    def handshake(self, spec: HandshakeSpec) -> Job:
        ip, port, upgrade = self.target.ip, self.target.port, self.target.upgrade
        return lambda allowance: full_handshake(ip, port, spec, allowance, upgrade)


@dataclass(frozen=True, slots=True)
class AcceptedSuite:
    code: int
    kex_group: str = ""
    kex_bits: int = 0
    preference: int = 0  # 1 = server's first choice; 0 = the server has no order of its own
    openssl_name: str = ""  # as the handshake reported it, when the catalogue has none


@dataclass(frozen=True, slots=True)
class SuitesResult:
    command: ScanCommand
    version: TlsVersion
    status: ProbeStatus
    error: str = ""  # set when the enumeration could not finish (suites may be partial)
    suites: tuple[AcceptedSuite, ...] = ()
    is_server_order: bool | None = None
    chain: tuple[bytes, ...] = ()  # certificates seen on the way (fallback for CERTIFICATE)
    # An EC group under 224 bits the server took when offered only such groups (with its
    # accepted ECDHE suites): a group it accepts but never picks when offered modern ones
    weak_group: AcceptedSuite | None = None


@dataclass(frozen=True, slots=True)
class CertificateResult:
    command: ScanCommand
    status: ProbeStatus
    error: str = ""
    chain: tuple[bytes, ...] = ()


CommandResult = SuitesResult | CertificateResult


class ScanCommandImplementation(ABC):
    """A plugin: plans its jobs, runs each through the session, returns one result."""

    command: ScanCommand

    @abstractmethod
    async def execute(self, session: ScanSession) -> CommandResult: ...


@dataclass(frozen=True, slots=True)
class SuitesPlugin(ScanCommandImplementation):
    """Suites of one version: raw ClientHellos below TLS 1.3, pyOpenSSL for TLS 1.3."""

    command: ScanCommand
    version: TlsVersion

    def _job(self, session: ScanSession, offered: tuple[int, ...]) -> Job:
        name = session.target.server_name
        if self.version is TlsVersion.TLS_1_3:
            # A TLS 1.3 ServerHello is followed by encrypted records only: a full handshake
            # is what tells us the group and shows the certificate.
            return session.handshake(tls13_spec(name, offered))
        return session.raw_hello(HelloSpec(self.version, offered, name))

    async def execute(self, session: ScanSession) -> CommandResult:
        enumeration = SuiteEnumeration(offer_list(self.version))
        while (offer := enumeration.next_offer()) is not None:
            enumeration.record(offer, await session.run(self._job(session, offer)))
        order = ServerOrderProbe(enumeration)
        while (offer := order.next_offer()) is not None:
            order.record(offer, await session.run(self._job(session, offer)))
        if enumeration.failure and not enumeration.picks:
            return SuitesResult(self.command, self.version, ProbeStatus.ERROR, enumeration.failure)
        rank = {code: i + 1 for i, code in enumerate(order.order)}
        has_order = order.is_server_order is True or len(enumeration.picks) == 1
        suites = tuple(
            AcceptedSuite(
                pick.code,
                pick.outcome.kex_group,
                pick.outcome.kex_bits,
                rank.get(pick.code, 0) if has_order else 0,
                pick.outcome.detail,
            )
            for pick in enumeration.picks
        )
        if has_order:
            suites = tuple(sorted(suites, key=lambda s: s.preference or 1 << 16))
        weak_group = await self._weak_group(session, suites)
        chain = next(
            (p.outcome.certificates for p in enumeration.picks if p.outcome.certificates), ()
        )
        return SuitesResult(
            self.command,
            self.version,
            ProbeStatus.COMPLETED,
            # Picks made before a failure are real; the list may miss some: say so.
            error=f"incomplete: {enumeration.failure}" if enumeration.failure else "",
            suites=suites,
            is_server_order=order.is_server_order,
            chain=chain,
            weak_group=weak_group,
        )

    async def _weak_group(self, session: ScanSession, suites: tuple[AcceptedSuite, ...]
                          ) -> AcceptedSuite | None:
        """One more hello, with the accepted ECDHE suites and only the curves under 224
        bits (as sslscan lists every group a server takes, where the enumeration offers
        modern groups first and sees the one the server picks). Below TLS 1.3 only: TLS
        1.3 defines no such group. Not asked when a pick already used one."""
        if self.version is TlsVersion.TLS_1_3:
            return None
        ecdhe = tuple(s.code for s in suites if describe(s.code).ephemeral_kind == "EC")
        if not ecdhe or any(0 < s.kex_bits < 224 for s in suites if s.code in ecdhe):
            return None
        spec = HelloSpec(self.version, ecdhe, session.target.server_name,
                         groups=WEAK_EC_GROUPS)
        outcome = await session.run(session.raw_hello(spec))
        if (outcome.kind is OutcomeKind.ACCEPTED and outcome.suite in ecdhe
                and 0 < outcome.kex_bits < 224):
            return AcceptedSuite(outcome.suite, outcome.kex_group, outcome.kex_bits)
        return None  # refused (the usual answer), or a server that ignored the offer


@dataclass(frozen=True, slots=True)
class CertificatePlugin(ScanCommandImplementation):
    """The served chain, from one full pyOpenSSL handshake with the name asked for."""

    command: ScanCommand = ScanCommand.CERTIFICATE

    async def execute(self, session: ScanSession) -> CommandResult:
        outcome = await session.run(session.handshake(HandshakeSpec(session.target.server_name)))
        if outcome.kind is OutcomeKind.ACCEPTED and outcome.certificates:
            return CertificateResult(
                self.command, ProbeStatus.COMPLETED, chain=outcome.certificates
            )
        if outcome.kind is OutcomeKind.ACCEPTED:
            # (a handshake cut short after the pick: its detail is the suite's name)
            detail = outcome.cut_short or "no certificate sent"
        else:
            detail = outcome.detail or "no certificate sent"
        return CertificateResult(self.command, ProbeStatus.ERROR, detail)


IMPLEMENTATIONS: Mapping[ScanCommand, ScanCommandImplementation] = {
    ScanCommand.SSL_3_0_SUITES: SuitesPlugin(ScanCommand.SSL_3_0_SUITES, TlsVersion.SSL_3_0),
    ScanCommand.TLS_1_0_SUITES: SuitesPlugin(ScanCommand.TLS_1_0_SUITES, TlsVersion.TLS_1_0),
    ScanCommand.TLS_1_1_SUITES: SuitesPlugin(ScanCommand.TLS_1_1_SUITES, TlsVersion.TLS_1_1),
    ScanCommand.TLS_1_2_SUITES: SuitesPlugin(ScanCommand.TLS_1_2_SUITES, TlsVersion.TLS_1_2),
    ScanCommand.TLS_1_3_SUITES: SuitesPlugin(ScanCommand.TLS_1_3_SUITES, TlsVersion.TLS_1_3),
    ScanCommand.CERTIFICATE: CertificatePlugin(),
}


def _cipher_suite_record(
    version: TlsVersion, accepted: AcceptedSuite
) -> tuple[CipherSuite, tuple[TlsVersion, SuiteInfo, Grade]]:
    info = describe(accepted.code)
    grade = grade_suite(SuiteFacts(version, info, accepted.kex_bits))
    record = CipherSuite(
        tls_version=version.label,
        iana_name=info.iana_name,
        openssl_name=info.openssl_name or accepted.openssl_name,
        strength=grade.strength.value,
        reason=grade.reason,
        kex_group=accepted.kex_group,
        kex_bits=accepted.kex_bits,
        preference=accepted.preference,
    )
    return record, (version, info, grade)


def fold(
    target: TlsTarget, results: Mapping[ScanCommand, CommandResult], now: datetime
) -> TlsResult:
    """Every command's result -> the port's ``TlsResult``.

    - No suite accepted at any version is never reported as "no ciphers": it is ERROR
      "could not test: ..." with the reasons.
    - Suites found while some command failed: COMPLETED, with ``error`` starting
      "partial:" and naming what could not be tested.
    - Certificates: the CERTIFICATE command's chain; if its handshake failed (e.g. a server
      speaking only suites the local OpenSSL lacks), the chain a raw hello saw.
    """
    suite_results = [r for r in results.values() if isinstance(r, SuitesResult)]
    suite_results.sort(key=lambda r: list(TlsVersion).index(r.version))
    problems = [f"{r.version.label}: {r.error}" for r in suite_results if r.error]
    graded: list[tuple[TlsVersion, SuiteInfo, Grade]] = []
    records: list[CipherSuite] = []
    versions: list[TlsVersion] = []
    for result in suite_results:
        if result.suites:
            versions.append(result.version)
        for accepted in result.suites:
            record, grading = _cipher_suite_record(result.version, accepted)
            records.append(record)
            graded.append(grading)
    cert_result = results.get(ScanCommand.CERTIFICATE)
    chain: tuple[bytes, ...] = ()
    if isinstance(cert_result, CertificateResult):
        chain = cert_result.chain
        if cert_result.status is ProbeStatus.ERROR and not any(r.chain for r in suite_results):
            problems.append(f"certificate: {cert_result.error}")
    if not chain:
        chain = next((r.chain for r in suite_results if r.chain), ())
    certificates = describe_chain(chain, hostname=target.name_to_match, now=now)
    posture = assess_chain(
        chain, name=target.name_to_match, now=now, trust_store=target.trust_store
    )
    leaf = certificates[0] if certificates else None
    if not records:
        reason = "; ".join(problems) or "the server refused every suite offered at every version"
        failed = TlsResult(
            status=ProbeStatus.ERROR,
            error=f"could not test: {reason}",
            certificates=certificates,
            reached_via=target.upgrade.value,
        )
        return _with_posture(failed, posture, leaf)
    weak_groups = [
        (result.version, describe(g.code), Grade(
            Strength.WEAK, f"EC group under 224 bits: {g.kex_group} accepted when offered"))
        for result in suite_results if (g := result.weak_group) is not None
    ]  # fmt: skip
    # The suite a small group was accepted with is weak as a suite too, so the suites'
    # weak count (the Ciphers report, "weak +suite" changes) agrees with the grade (it
    # read "strong", 0 weak, under a weak grade: a review)
    weakened = {(version.label, info.iana_name): grade for version, info, grade in weak_groups}
    records = [replace(r, strength=weak.strength.value, reason=weak.reason)
               if (weak := weakened.get((r.tls_version, r.iana_name))) is not None else r
               for r in records]
    port_grade = grade_port(versions, graded + weak_groups)
    accepted_facts = [
        AcceptedFacts(version, info.iana_name,
                      record.kex_bits if info.ephemeral_kind == "DH" else 0,
                      record.kex_group)
        for record, (version, info, _grade) in zip(records, graded, strict=True)
    ] + [  # a small EC group taken when offered alone is a group it accepts
        AcceptedFacts(result.version, describe(g.code).iana_name, 0, g.kex_group)
        for result in suite_results if (g := result.weak_group) is not None
    ]  # fmt: skip
    verdict = assess_profile(
        versions, accepted_facts, (leaf.key_type, leaf.key_bits) if leaf and leaf.key_type else None
    )
    completed = TlsResult(
        status=ProbeStatus.COMPLETED,
        error=f"partial: {'; '.join(problems)}" if problems else "",
        versions=tuple(v.label for v in versions),
        suites=tuple(records),
        certificates=certificates,
        grade=port_grade.strength.value if port_grade else "",
        grade_reason=port_grade.reason if port_grade else "",
        profile=verdict.profile if verdict else "",
        profile_version=verdict.version if verdict else "",
        profile_reasons=verdict.reasons if verdict else (),
        reached_via=target.upgrade.value,
    )
    return _with_posture(completed, posture, leaf)


def _with_posture(
    result: TlsResult, posture: CertificatePosture | None, leaf: Certificate | None
) -> TlsResult:
    """The leaf's posture on the port's record: what risk and change detection read."""
    if posture is None or leaf is None:
        return result
    return replace(
        result,
        leaf_sha256=leaf.sha256,
        is_chain_trusted=posture.is_trusted,
        trust_error=posture.trust_error,
        days_to_expiry=posture.days_to_expiry,
        certificate_warnings=posture.warnings,
    )


__all__ = [
    "IMPLEMENTATIONS",
    "AcceptedSuite",
    "CertificatePlugin",
    "CertificateResult",
    "CommandResult",
    "Job",
    "ScanCommand",
    "ScanCommandImplementation",
    "ScanSession",
    "SuitesPlugin",
    "SuitesResult",
    "TlsTarget",
    "fold",
]
