"""The TLS prober's entry points: ``probe_tls`` (full enumeration) and ``detect_tls``.

Owns: the order of a probe — a connectivity hello first (so a stalled, silent or
non-TLS peer costs one attempt, not one per command), then every scan command of
``commands.IMPLEMENTATIONS`` concurrently under the session's limits, then the fold.

Must not touch: Kafka, storage, identification logic; callers (the tls stage) decide
which ports to probe. Only the addresses callers pass are contacted.
"""

from __future__ import annotations

import asyncio

from probers.tls.commands import IMPLEMENTATIONS, ScanSession, TlsTarget, fold
from probers.tls.hello import HelloSpec, OutcomeKind, detect_spec, exchange_hello
from probers.tls.starttls import Upgrade
from probers.tls.suites import TlsVersion
from schemas.records import ProbeStatus, TlsResult, normalize_ip, utcnow

# At most this many connections to one port at a time: polite, and enough to finish a
# typical server in well under a second on a LAN.
MAX_PARALLEL_CONNECTIONS = 2


async def probe_tls(
    ip: str,
    port: int,
    *,
    server_name: str | None = None,
    timeout: float = 3.0,
    budget: float = 30.0,
    upgrade: Upgrade | str = Upgrade.DIRECT,
    trust_store: str | None = None,
) -> TlsResult:
    """Versions, accepted suites (with server order and key exchange), certificate chain
    and grades of the TLS service at ``ip:port``.

    ``timeout`` bounds every single attempt (connect + hello + answer); ``budget`` bounds
    the whole probe. Failures are data: a peer that stalls, resets or refuses everything
    yields ``status=ERROR`` with ``error`` starting "could not test:"; a peer that is not
    TLS yields ``error`` starting "not TLS". Never raises for network trouble.

    ``upgrade``: the plaintext preamble (``starttls.Upgrade``, e.g. "starttls-smtp")
    replayed on every connection before TLS. A service that offers no upgrade yields
    ``status=COMPLETED``, ``is_upgrade_offered=False`` and no suites: a finding, not an
    error; one that refuses it yields "could not test: STARTTLS refused: <its words>".
    ``trust_store``: PEM trust anchors for chain validation (default: the system's).
    """
    ip = normalize_ip(ip)
    route = Upgrade(upgrade)
    target = TlsTarget(ip, port, server_name, route, trust_store)
    # Each attempt takes what is left of the budget when it starts; this bounds the rest
    # (attempts waiting for a thread when the process probes many ports at once)
    try:
        async with asyncio.timeout(budget + timeout):
            return await _probe(target, timeout=timeout, budget=budget)
    except TimeoutError:
        return TlsResult(status=ProbeStatus.ERROR, reached_via=route.value,
                         error=f"could not test: the probe's budget of {budget:g}s ran out")


async def _probe(target: TlsTarget, *, timeout: float, budget: float) -> TlsResult:
    server_name, route = target.server_name, target.upgrade
    session = ScanSession(
        target, timeout=timeout, budget=budget, max_parallel=MAX_PARALLEL_CONNECTIONS
    )
    first = await session.run(session.raw_hello(detect_spec(server_name)))
    if first.kind is OutcomeKind.UPGRADE_NOT_OFFERED:
        return TlsResult(
            status=ProbeStatus.COMPLETED,
            reached_via=route.value,
            is_upgrade_offered=False,
            upgrade_note=first.detail,
        )
    if first.kind is OutcomeKind.UPGRADE_FAILED:
        return TlsResult(
            status=ProbeStatus.ERROR,
            error=f"could not test: {route.value} refused: {first.detail}",
            reached_via=route.value,
        )
    if first.kind is OutcomeKind.NOT_TLS:
        return TlsResult(
            status=ProbeStatus.ERROR, error=f"not TLS: {first.detail}", reached_via=route.value
        )
    if first.kind in (OutcomeKind.TIMEOUT, OutcomeKind.CONNECT_FAILED):
        return TlsResult(
            status=ProbeStatus.ERROR,
            error=f"could not test: {first.detail}",
            reached_via=route.value,
        )
    # ACCEPTED / ALERT / PROTOCOL_ERROR prove a TLS speaker; CLOSED may be a stack that
    # dislikes TLS 1.3 extensions, so the per-version hellos still get their chance and
    # the fold reports "could not test" if none of them gets an answer either.
    commands = list(IMPLEMENTATIONS.items())
    results = await asyncio.gather(*(impl.execute(session) for _, impl in commands))
    return fold(target, dict(zip((cmd for cmd, _ in commands), results, strict=True)), utcnow())


async def detect_tls(ip: str, port: int, timeout: float = 3.0) -> bool:
    """True when a ClientHello to ``ip:port`` gets a TLS answer (ServerHello or alert).

    At most two connections, each bounded by ``timeout``: a TLS 1.3-capable hello first,
    then, only if the peer closed without a word, a TLS 1.0 hello without the TLS 1.3
    extensions that some old stacks choke on.
    """
    ip = normalize_ip(ip)
    outcome = await asyncio.to_thread(exchange_hello, ip, port, detect_spec(None), timeout)
    if outcome.kind is OutcomeKind.CLOSED:
        suites = tuple(code for code in detect_spec(None).suites if code >> 8 != 0x13)
        legacy = HelloSpec(TlsVersion.TLS_1_0, suites)
        outcome = await asyncio.to_thread(exchange_hello, ip, port, legacy, timeout)
    return outcome.is_tls_answer


__all__ = ["MAX_PARALLEL_CONNECTIONS", "detect_tls", "probe_tls"]
