"""Stage functions: the per-event logic every transport binds.

Owns: identify (probers/service), TLS (probers/tls, when scheduled), CDN
(stream_processors/cdn) and risk (stream_processors/risk) as plain async
functions over records. The embedded runner binds them to in-process queues;
the Faust agents (stream_processors/transports/) bind the same functions to Kafka
topics. A stage never knows which transport feeds it (DESIGN.md).

Also the discovery stage (shard -> open ports, with tarpit holding), shared by
the embedded runner and the Kafka discovery workers.

Why one file: these are the rules both transports must apply alike (the per-port
chain and its failure rule, the shard rule with its retries and tarpit verdicts, the
stage context both bind); split, a transport could import one half and drift from the
other. Each stage is a plain function, tested alone.

Must not touch storage or Kafka.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from probers.discovery.base import DiscoveryEngine, DiscoveryError, Progress, ShardDeadline
from probers.discovery.tarpit import TarpitDetector
from probers.service.engine import Endpoint, Fallback, identify
from probers.service.engine import Settings as IdentifySettings
from probers.tls.starttls import route_for  # (light: the package loads the prober lazily)
from schemas.records import (
    Finding,
    HostScan,
    OpenPort,
    PortState,
    Proto,
    ServiceInfo,
    Shard,
    TlsResult,
    utcnow,
)
from stream_processors import cdn, risk

log = logging.getLogger(__name__)

TlsProbe = Callable[[str, int, str, str], Awaitable[TlsResult]]  # ip, port, hostname, upgrade


@dataclass
class StageContext:
    """What the stages need, and nothing else (settings validated at start)."""

    identify: IdentifySettings = field(default_factory=IdentifySettings)
    per_host_connections: int = 4  # politeness: probe jobs in flight per address
    fallback: Fallback | None = None  # nmap service probes, when installed
    # nmap's UDP match lines and probes (the same database as ``fallback``), when installed
    nmap_udp: NmapFallback | None = None
    tls_probe: TlsProbe | None = None  # cipher enumeration, when enabled
    # ip -> (its semaphore, the jobs holding or waiting for it): an address's entry lives
    # while a job of it does, so a stage worker that runs for months over a large estate
    # keeps one per address in flight, not one per address it ever saw
    _host_slots: dict[str, tuple[asyncio.Semaphore, int]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def host_slot(self, ip: str) -> AsyncIterator[None]:
        """One of the ``per_host_connections`` probe jobs in flight on ``ip``."""
        slot, users = self._host_slots.get(ip) or (
            asyncio.Semaphore(self.per_host_connections), 0)
        self._host_slots[ip] = (slot, users + 1)
        try:
            async with slot:
                yield
        finally:
            slot, users = self._host_slots[ip]
            if users <= 1:
                del self._host_slots[ip]
            else:
                self._host_slots[ip] = (slot, users - 1)


async def identify_stage(port: OpenPort, ctx: StageContext) -> Finding:
    if port.proto is Proto.UDP:
        named: ServiceInfo | None = None
        if port.state is PortState.OPEN_FILTERED and port.reason != TARPIT_REASON:
            port, named = await _second_look(port, ctx)
        service = await _identify_udp(port, ctx)
        if named is not None and not service.is_identified:
            service = replace(named, banner=port.response)
        return Finding(port=port, service=service)
    endpoint = Endpoint(port.target.ip, port.port, port.target.hostname)
    async with ctx.host_slot(port.target.ip):
        info = await identify(endpoint, ctx.identify, ctx.fallback)
    return Finding(port=port, service=info)


# The probers these stages reach on the hot path, imported on first use (they take
# ~0.15-0.25 s to import, which a process that never meets a UDP port need not
# pay), then looked up from here: an import statement in the per-finding function cost
# a stage worker 6 % of its samples (BENCHMARKS.md, "tenth session").
@functools.cache
def _udp_service_hint() -> Callable[[int], str]:
    from probers.discovery.udp import udp_service_hint
    return udp_service_hint


@functools.cache
def _own_reply_service() -> Callable[[int, bytes], str]:
    from probers.discovery.udp_payloads import own_reply_service
    return own_reply_service


# Seconds of nmap's UDP probes per answering port whose reply to discovery matched no
# line (nmap -sV's next step), within the identify budget; a tarpit's candidates get
# none: the match on what they already said is all they are given.
UDP_PROBE_BUDGET = 3.0


async def _second_look(port: OpenPort, ctx: StageContext
                       ) -> tuple[OpenPort, ServiceInfo | None]:
    """A port silent to discovery's datagram asked in every protocol we speak
    (``udp_probes.second_look``): an answer makes it open, with that answer as its
    reply (then identified as any answering port), and what the answer named when it
    was its protocol's. Silence leaves it open|filtered. Discovery lists at most
    ``max_open_filtered`` silent ports per host (a filter's hundreds never reach here),
    and each costs one wait of at most a second, in one of the host's slots."""
    from probers.discovery.udp import encode_response
    from probers.service.udp_probes import SECOND_LOOK_WAIT, second_look

    async with ctx.host_slot(port.target.ip):
        look = await second_look(
            port.target.ip, port.port,
            timeout=min(SECOND_LOOK_WAIT, ctx.identify.probe_timeout),
            allow_public_community=ctx.identify.snmp_public_community)
    if look is None:
        return port, None
    reply, named = look
    return replace(port, state=PortState.OPEN, reason="udp-response",
                   response=encode_response(reply)), named


async def _identify_udp(port: OpenPort, ctx: StageContext) -> ServiceInfo:
    """UDP: any reply to discovery's request makes the port open; what answered is named
    only when the reply is recognised, as ``nmap -sV`` does: our own SNMP probe, nmap's
    UDP match lines on the reply discovery got, then nmap's UDP probes. A reply nothing
    recognises names no service (yellow, "not identified"): the port's usual service
    (nmap-services) is only said in ``extra_info``, as a colour from it would come from
    the port number (a host answering junk on every UDP port read as 12 red services,
    which the tarpit rule kept as "identified": a review, 2026-12-06)."""
    if port.state is PortState.OPEN_FILTERED:
        return ServiceInfo(method="udp:no-reply")
    try:
        usual = _udp_service_hint()(port.port)
    except (ImportError, LookupError):
        usual = ""
    ip = port.target.ip
    if usual == "snmp":
        from probers.service.udp_probes import identify_snmp

        async with ctx.host_slot(ip):
            snmp = await identify_snmp(
                ip, port.port, timeout=ctx.identify.probe_timeout,
                allow_public_community=ctx.identify.snmp_public_community)
        if snmp is not None and snmp.is_identified:
            return snmp
    reply = _reply_of(port.response)
    # our own payload's protocol answered (DNS, NTP, NetBIOS-NS, memcached, SSDP):
    # nmap's probes are then asked only for what can name that service's product
    own = _own_reply_service()(port.port, reply) if reply else ""
    found: ServiceInfo | None = None
    if ctx.nmap_udp is not None:
        budget = (0.0 if port.reason == TARPIT_REASON
                  else min(UDP_PROBE_BUDGET, ctx.identify.budget))
        async with ctx.host_slot(ip):
            found = await ctx.nmap_udp.udp(
                ip, port.port, reply, budget, only_service=own,
                allow_snmp_community=ctx.identify.snmp_public_community)
    if found is not None and found.is_identified:
        return replace(found, banner=port.response)
    if own:
        # (nmap's lines did not match it: memcached's need their own request id, and
        # no UDP line knows SSDP; without nmap's data, DNS and NTP are named so too)
        return ServiceInfo(service=own, banner=port.response, method="udp:own-payload-reply",
                           confidence=8, tried=found.tried if found is not None else ())
    said = f"; usually {usual} on this port" if usual not in ("", "unknown") else ""
    return ServiceInfo(banner=port.response, method="udp:payload-reply",
                       extra_info=f"UDP reply not recognised{said}",
                       tried=found.tried if found is not None else ())


def _reply_of(response: str) -> bytes | None:
    """The bytes of discovery's reply excerpt (``encode_response``); None when the text
    is not one (a record from another writer)."""
    from probers.discovery.udp import decode_response

    try:
        return decode_response(response) or None
    except (ValueError, IndexError):
        return None


async def tls_stage(finding: Finding, ctx: StageContext) -> Finding:
    if ctx.tls_probe is None:
        return finding
    # the upgrade follows the identified service
    route = route_for(finding.service.service, finding.service.is_tls)
    if route is None:
        return finding
    t = finding.port.target
    async with ctx.host_slot(t.ip):
        result = await ctx.tls_probe(t.ip, finding.port.port, t.hostname, route.value)
    return finding.with_(tls=result)


def unidentified(port: OpenPort, why: str) -> Finding:
    """A port whose identification could not finish: kept, yellow, saying why."""
    return judged(Finding(port=port, service=ServiceInfo(method="unidentified", extra_info=why)))


def judged(finding: Finding) -> Finding:
    """CDN verdict, then risk colour, built in one record: this runs once per finding on
    the hot path (``cdn.classify`` then ``risk.assess`` would copy the record twice)."""
    verdict, color, reason = risk.judge(finding, cdn.verdict_for(finding))
    return Finding(finding.port, finding.service, finding.tls, verdict, color, reason)


async def process(port: OpenPort, ctx: StageContext) -> Finding:
    """The whole per-port chain: identify, TLS, then CDN and risk."""
    finding = await identify_stage(port, ctx)
    finding = await tls_stage(finding, ctx)
    return judged(finding)


async def identify_port(port: OpenPort, ctx: StageContext) -> Finding | None:
    """The per-port rule both transports apply: the chain of ``process``; an exception
    in one port's identification gives an unidentified finding (kept, yellow, saying
    why), never a lost port; a tarpit's candidate that named nothing is not kept
    (None)."""
    try:
        finding = await process(port, ctx)
    except Exception as exc:  # noqa: BLE001 - one bad port must not stop the scan
        log.warning("identification of %s:%s failed: %r", port.target.ip, port.port, exc)
        return unidentified(port, f"identification error: {type(exc).__name__}")
    return finding if keeps(finding) else None



# -- discovery stage (shard -> open ports) -----------------------------------------------

# Ports worth identifying on a host that answers on every port (a SYN proxy or
# tarpit): well-known service ports, where a real service is likely behind the noise.
TARPIT_CANDIDATES: frozenset[int] = frozenset({
    21, 22, 23, 25, 53, 80, 81, 110, 111, 135, 139, 143, 389, 443, 445, 465, 587, 636, 993,
    995, 1080, 1433, 1521, 2049, 2375, 2376, 3000, 3306, 3389, 5000, 5432, 5601, 5900, 5985,
    6379, 6443, 8000, 8008, 8080, 8081, 8443, 8888, 9000, 9090, 9200, 9443, 10250, 11211, 27017,
})
TARPIT_REASON = "tarpit-candidate"


@dataclass
class ShardOutcome:
    """What discovery of one shard produced: the ports to identify, and per host
    the facts a HostScan record needs. Failures are data (``error``)."""

    shard: Shard
    started_at: datetime
    finished_at: datetime | None = None
    ports: list[OpenPort] = field(default_factory=list)
    open_seen: dict[str, int] = field(default_factory=dict)
    tarpit_notes: dict[str, str] = field(default_factory=dict)
    error: str = ""
    is_interrupted: bool = False
    is_cut: bool = False  # the error is the shard's deadline: a retry has no more time
    attempts: int = 1
    # Hosts that refused (RST) a real share of the shard's ports: whatever their count of
    # open ports, they do not answer on every port (``REFUSED_SHARE``)
    refusing: set[str] = field(default_factory=set)
    # Ports per host a shard that did not complete had probed (0: never reached); None:
    # unknown, the shard's count is said. A completed shard says its count.
    probed_per_host: int | None = None

    def host_scans(self, status: str = "") -> list[HostScan]:
        finished = self.finished_at or utcnow()
        kept = collections.Counter(p.target.ip for p in self.ports)
        state = status or ("error" if self.error else
                           "interrupted" if self.is_interrupted else "completed")
        # (an interrupted /16 said every unreached host had its ports scanned: a review)
        scanned = (self.shard.port_count
                   if state in ("completed", "running") or self.probed_per_host is None
                   else min(self.probed_per_host, self.shard.port_count))
        return [
            HostScan(scan_id=self.shard.scan_id, shard_id=self.shard.shard_id, target=t,
                     started_at=self.started_at,
                     finished_at=finished, ports_scanned=scanned,
                     open_ports=kept[t.ip], status=state,
                     is_tarpit=t.ip in self.tarpit_notes,
                     note=self.error or self.tarpit_notes.get(t.ip, ""),
                     proto=self.shard.proto, ports=self.shard.ports)
            for t in self.shard.targets
        ]


# A host answering on more than 9 in 10 of the ports scanned on it, once that is at least
# TARPIT_MIN_OPEN ports, answers on every port too: the absolute threshold alone never
# fired for the UDP top 1,000 or a --ports range of 1,000 or fewer (a junk-answering
# host stored 1,000 findings, 28 of them "high" changes). Not half: 130 real listeners
# in a 200-port range are an ordinary (busy) host.
TARPIT_SHARE = 0.9
TARPIT_MIN_OPEN = 128
TARPIT_OFF = 65_535  # the tarpit threshold that turns the rule off
# A host flagged by the share rule in a narrow range (at most UNFLAG_MAX_PORTS ports) that
# refused at least this share of them (RST, as counted by an engine that sees refusals:
# connect) is not a tarpit: a SYN proxy answers every port and refuses none. 200 real
# listeners in a 221-port range were flagged, and every finding dropped.
REFUSED_SHARE = 0.05
UNFLAG_MAX_PORTS = 4096


def tarpit_threshold_for(threshold: int, ports_per_host: int) -> int:
    """The open-port count beyond which a host of a shard scanning ``ports_per_host``
    ports is flagged: ``threshold``, or 9 in 10 of its ports when that is lower (never
    below TARPIT_MIN_OPEN: ``--ports 22,80,443`` all open is an ordinary host). A
    threshold of ``TARPIT_OFF`` turns the rule off, the share too: a host of 300 real
    services in a 300-port range was flagged whatever the threshold, and its services
    dropped, with no way to keep them (a review)."""
    if threshold >= TARPIT_OFF:
        return TARPIT_OFF  # no host has more TCP ports than that: never flagged
    share = int(ports_per_host * TARPIT_SHARE)
    return max(1, min(threshold, max(TARPIT_MIN_OPEN, share)))


def tarpit_note(seen: str) -> str:
    """A tarpit host's scan note (the Summary shows it), ``seen`` saying what answered."""
    return f"answers on every port ({seen}); only identified services on well-known ports kept"


async def discover_shard(engine: DiscoveryEngine, shard: Shard, progress: Progress, *,
                         tarpit_threshold: int = 1000,
                         stop: asyncio.Event | None = None) -> ShardOutcome:
    """Run one shard through an engine; hold each host's ports until the shard ends.

    Holding until the end is what keeps a SYN proxy's thousands of fake ports out
    of identification: a host flagged by ``TarpitDetector`` keeps only its
    well-known candidate ports, marked so that identify keeps them only when a
    service is named. Engines raise DiscoveryError rather than leave a silent
    gap; that error is recorded on the outcome (the shard is retried upstream).
    ``stop`` (Ctrl-C) ends the engine early and keeps what it had found.
    """
    outcome = ShardOutcome(shard, utcnow())
    detector = TarpitDetector(tarpit_threshold_for(tarpit_threshold, shard.port_count),
                              max_held=0)
    admitted: list[OpenPort] = []
    candidates: list[OpenPort] = []
    # the rest of a flagged host's ports, kept (bounded) in case it proves not a tarpit
    rest: list[OpenPort] = []
    may_unflag = shard.port_count <= UNFLAG_MAX_PORTS
    scan = engine.scan(shard, progress)
    stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        while True:
            step = asyncio.ensure_future(anext(scan))
            if stopped is not None:
                await asyncio.wait({step, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
                    outcome.is_interrupted = True
                    break
            try:
                found = await step
            except StopAsyncIteration:
                break
            if detector.admit(found):
                admitted.append(found)
            elif detector.is_tarpit(found.target.ip) and found.port in TARPIT_CANDIDATES:
                candidates.append(found)
            elif may_unflag and detector.is_tarpit(found.target.ip):
                rest.append(found)
    except DiscoveryError as exc:
        outcome.is_cut = isinstance(exc, ShardDeadline)
        said = str(exc)  # an engine's own message may already name it ("udp: shard ...")
        outcome.error = said if said.startswith(f"{engine.name}:") else f"{engine.name}: {said}"
    finally:
        if stopped is not None:
            stopped.cancel()
        aclose = getattr(scan, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
        outcome.finished_at = utcnow()
    for t in shard.targets:
        outcome.open_seen[t.ip] = detector.open_count(t.ip)
    if may_unflag:
        outcome.refusing = _refusing_hosts(engine, shard.port_count)
    for verdict in detector.flagged_hosts():
        if verdict.ip not in outcome.refusing:
            outcome.tarpit_notes[verdict.ip] = tarpit_note(
                f"{verdict.open_seen} open ports reported")
    for port in admitted + candidates + [p for p in rest if p.target.ip in outcome.refusing]:
        if port.target.ip in outcome.tarpit_notes:
            if port.port in TARPIT_CANDIDATES:
                outcome.ports.append(replace(port, reason=TARPIT_REASON))
        else:
            outcome.ports.append(port)
    return outcome


def _refusing_hosts(engine: DiscoveryEngine, ports: int) -> set[str]:
    """The hosts that refused at least ``REFUSED_SHARE`` of ``ports`` (engines that count
    refusals report them: connect's ``last_report``; others say nothing, none)."""
    report = getattr(engine, "last_report", None)
    hosts = getattr(report, "hosts", ()) or ()
    return {h.ip for h in hosts if h.closed >= max(2, REFUSED_SHARE * ports)}


EngineFactory = Callable[[Shard], DiscoveryEngine]


async def discover_with_retries(
    shard: Shard, engine_for: EngineFactory, *, attempts: int = 2,
    tarpit_threshold: int = 1000, stop: asyncio.Event | None = None,
    progress: Callable[[], contextlib.AbstractContextManager[Progress]] | None = None,
) -> ShardOutcome:
    """The shard rule both transports apply: run the shard through a fresh engine up to
    ``attempts`` times while the engine fails (a crashed masscan is retried, never a
    silent gap), keeping every port *any* attempt found: a port a failed attempt
    reported is as real as one the retry reports, and the retry may miss it.

    ``progress`` makes the Progress of each attempt (the embedded runner's bar counts
    them); the outcome's ``error`` is the last attempt's, empty when one completed.
    """
    found: dict[tuple[str, str, int], OpenPort] = {}
    outcome: ShardOutcome | None = None
    tarpit_notes: dict[str, str] = {}
    open_seen: dict[str, int] = {}
    refusing: set[str] = set()
    probed = 0  # the most probes an attempt got to
    for attempt in range(1, max(1, attempts) + 1):
        scope = progress() if progress is not None else contextlib.nullcontext(Progress())
        with scope as attempt_progress:
            outcome = await discover_shard(engine_for(shard), shard, attempt_progress,
                                           tarpit_threshold=tarpit_threshold, stop=stop)
        probed = max(probed, attempt_progress.probes_done)
        for port in outcome.ports:
            found.setdefault((port.target.ip, port.proto.value, port.port), port)
        tarpit_notes.update(outcome.tarpit_notes)
        refusing |= outcome.refusing
        for ip, count in outcome.open_seen.items():
            open_seen[ip] = max(open_seen.get(ip, 0), count)
        if not outcome.error or outcome.is_interrupted or outcome.is_cut:
            break
        log.warning("shard %s failed (attempt %d of %d): %s", shard.shard_id, attempt,
                    attempts, outcome.error)
    assert outcome is not None
    # An ordinary host's count is the union of what the attempts found (ports 10 and 20
    # found by a dead attempt and 30 by the retry are 3, not the most one attempt saw);
    # and the tarpit rule is judged on that union too: two attempts that each died under
    # the threshold let 1,550 fake ports through
    union = collections.Counter(ip for ip, _proto, _port in found)
    limit = tarpit_threshold_for(tarpit_threshold, shard.port_count)
    for ip in refusing:
        tarpit_notes.pop(ip, None)  # an attempt saw it refuse: no tarpit
    for ip, count in union.items():
        if ip not in tarpit_notes and ip not in refusing and count > limit:
            tarpit_notes[ip] = tarpit_note(f"{count} open ports reported over {attempt} "
                                           "attempts")
    # A host any attempt flagged is a tarpit in the merged outcome: an attempt that died
    # before the threshold kept its (fake) ports unflagged, and they must not reach
    # identification as ports of an ordinary host
    outcome.ports = [
        port if port.target.ip not in tarpit_notes else replace(port, reason=TARPIT_REASON)
        for port in found.values()
        if port.target.ip not in tarpit_notes or port.port in TARPIT_CANDIDATES]
    outcome.tarpit_notes = tarpit_notes
    outcome.refusing = refusing
    outcome.open_seen = {ip: max(count, union[ip]) for ip, count in open_seen.items()}
    outcome.attempts = attempt
    if outcome.error or outcome.is_interrupted:
        # The ports it got to, per host (its probes, shared out): a shard cut by its
        # deadline or stopped said it had scanned every port of its hosts (a review)
        outcome.probed_per_host = probed // max(1, len(shard.targets))
    return outcome


# "Answers then closes" is what every port of a SYN proxy does: nmap calls it
# tcpwrapped, and on a tarpit it identifies nothing (issue 11, defect 5).
NOT_AN_IDENTIFICATION = frozenset({"tcpwrapped"})


def is_really_identified(service: ServiceInfo) -> bool:
    """A real identification: a banner, a probe match or TLS named the service; not an
    empty name, not nmap's "tcpwrapped" (the peer closed before saying anything)."""
    return (service.is_identified and service.service not in NOT_AN_IDENTIFICATION
            and not service.method.startswith("nmap:tcpwrapped"))


def keeps(finding: Finding) -> bool:
    """A tarpit's candidate port is kept only when it was really identified."""
    return finding.port.reason != TARPIT_REASON or is_really_identified(finding.service)


def note_dropped(scans: list[HostScan], dropped: collections.Counter[str]) -> list[HostScan]:
    """Say in each tarpit host's scan note how many of its answering ports were dropped
    for naming no service, so the Summary tells what was left out and why."""
    out = []
    for scan in scans:
        count = dropped.get(scan.target.ip, 0)
        if count:
            extra = f"{count} answering ports dropped: no banner, probe match or TLS"
            scan = replace(scan, note=f"{scan.note}; {extra}" if scan.note else extra)
        out.append(scan)
    return out


# -- building the context ----------------------------------------------------------------


class NmapFallback:
    """The nmap-service-probes engine as identify's fallback, loaded once, lazily.

    The database is the user's nmap installation (Nmap Public Source License:
    read at run time, never shipped). Missing: one warning, own probes only.
    """

    def __init__(self, path: str | None = None, max_rarity: int = 7) -> None:
        self.path = path
        self.max_rarity = max_rarity
        self._db: Any = None
        self._unavailable = False
        self._warm = False
        self._lock = asyncio.Lock()

    async def prepare(self) -> None:
        """Load the database and compile its NULL chain, once per process: the one-time
        cost identify keeps out of a port's budget (``engine.identify``)."""
        db = await self._load()
        if db is None or self._warm:
            return
        async with self._lock:
            if not self._warm:
                await asyncio.to_thread(db.warm)
                self._warm = True

    async def _load(self) -> Any:
        async with self._lock:
            if self._db is None and not self._unavailable:
                from probers.nmapdata import NmapDataError, NmapDataUnavailable
                from probers.nmapdata.service_probes import ProbeDB

                try:
                    self._db = await asyncio.to_thread(ProbeDB.shared, self.path)
                except (NmapDataUnavailable, NmapDataError, OSError) as exc:
                    self._unavailable = True
                    log.warning("nmap service probes unavailable (%s): identifying with "
                                "portwatch's own probes only; install nmap-common for more",
                                str(exc).splitlines()[0])
            return self._db

    async def udp(self, ip: str, port: int, reply: bytes | None, budget: float, *,
                  only_service: str = "", allow_snmp_community: bool = False
                  ) -> ServiceInfo | None:
        """nmap's UDP identification of ``ip:port``: its match lines on ``reply`` (what
        discovery got), then its UDP probes for ``budget`` seconds (0: none sent);
        ``only_service``: the service is known, only the probes that can name it (none:
        nothing is sent); ``allow_snmp_community``: its probes asking with an SNMP
        community too (snmp_public_community)."""
        db = await self._load()
        if db is None:
            return None
        from probers.service.nmap_engine import nmap_identify

        if only_service and not db.can_name("udp", only_service):
            budget = 0.0  # nmap_identify would not even match the reply: match it alone
            only_service = ""
        info: ServiceInfo = await nmap_identify(ip, port, "udp", db, budget=budget,
                                                max_rarity=self.max_rarity,
                                                first_response=reply,
                                                only_service=only_service,
                                                allow_snmp_community=allow_snmp_community)
        return info

    async def prepare_answer(self, probe_name: str, service: str = "") -> None:
        """Load the database and compile TCP probe ``probe_name``'s chain (its lines
        naming ``service`` only, when given), once per process: the one-time cost
        ``engine.identify`` keeps out of a port's budget."""
        db = await self._load()
        if db is None:
            return
        async with self._lock:
            await asyncio.to_thread(db.warm_probe, "tcp", probe_name, service)

    async def match_answer(self, probe_name: str, answer: bytes, is_tls: bool,
                           service: str = "") -> ServiceInfo | None:
        """What nmap's match lines of TCP probe ``probe_name`` (those naming ``service``,
        when given) name in ``answer``, an answer to that probe already read (nothing is
        sent; None: no hard match, or no database)."""
        db = await self._load()
        probe = db.probe("tcp", probe_name) if db is not None else None
        if db is None or probe is None:
            return None
        from probers.service.nmap_engine import info_of_match

        outcome = await asyncio.to_thread(
            db.match_detailed, probe, answer,
            rules=db.service_rules(probe, service) if service else None)
        if outcome.match is None or outcome.match.is_soft:
            return None
        return info_of_match(outcome.match, probe_name, tls=is_tls)

    async def __call__(self, ep: Endpoint, is_tls: bool, first_data: bytes | None,
                       remaining: float, service: str = "") -> ServiceInfo | None:
        db = await self._load()
        if db is None:
            return None
        from probers.service.nmap_engine import nmap_identify

        info: ServiceInfo = await nmap_identify(
            ep.ip, ep.port, "tcp", db, tls=is_tls, budget=remaining,
            max_rarity=self.max_rarity,
            # b"": our NULL probe listened and heard nothing; nmap's need not listen again
            first_response=first_data, only_service=service)
        return info  # unidentified too: its method says why (identify keeps that note)


@dataclass(frozen=True, slots=True)
class TlsEnumeration:
    """The TLS stage's probe (``probers.tls.probe_tls``) with its narrow options."""

    timeout: float = 3.0  # seconds per handshake attempt
    budget: float = 30.0  # seconds per port for the whole enumeration
    trust_store: str = ""  # CA bundle for chain validation ("" = the system's)

    async def __call__(self, ip: str, port: int, hostname: str, upgrade: str) -> TlsResult:
        from probers.tls import probe_tls

        return await probe_tls(ip, port, server_name=hostname or None,
                               timeout=self.timeout, budget=self.budget, upgrade=upgrade,
                               trust_store=self.trust_store or None)


def make_context(*, banner_wait: float = 2.0, identify_budget: float = 10.0,
                 per_host_connections: int = 4, use_nmap_probes: bool = True,
                 nmap_data: str | None = None, tls_enumeration: bool = True,
                 tls_timeout: float = 3.0, tls_budget: float = 30.0,
                 tls_trust_store: str = "", snmp_public_community: bool = False,
                 ) -> StageContext:
    """The stage context both transports use, from the narrow options it needs."""
    tls_probe = (TlsEnumeration(tls_timeout, tls_budget, tls_trust_store) if tls_enumeration
                 else None)
    nmap = NmapFallback(nmap_data or None) if use_nmap_probes else None
    return StageContext(
        identify=IdentifySettings(banner_wait=banner_wait, budget=identify_budget,
                                  snmp_public_community=snmp_public_community),
        per_host_connections=per_host_connections,
        fallback=nmap,
        nmap_udp=nmap,
        tls_probe=tls_probe,
    )
