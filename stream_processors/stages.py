"""Stage functions: the per-event logic every transport binds.

Owns: identify (probers/service), TLS (probers/tls, when scheduled), CDN
(stream_processors/cdn) and risk (stream_processors/risk) as plain async
functions over records. The embedded runner binds them to in-process queues;
the Faust agents (stream_processors/app.py) bind the same functions to Kafka
topics. A stage never knows which transport feeds it (DESIGN.md).

Must not touch storage or Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from probers.service.engine import Endpoint, Fallback, identify
from probers.service.engine import Settings as IdentifySettings
from schemas.records import Finding, OpenPort, PortState, Proto, ServiceInfo, TlsResult
from stream_processors import cdn, risk

TlsProbe = Callable[[str, int, str], Awaitable[TlsResult]]


@dataclass
class StageContext:
    """What the stages need, and nothing else (settings validated at start)."""

    identify: IdentifySettings = field(default_factory=IdentifySettings)
    per_host_connections: int = 4  # politeness: probe jobs in flight per address
    fallback: Fallback | None = None  # nmap service probes, when installed
    tls_probe: TlsProbe | None = None  # cipher enumeration, when enabled
    _host_slots: dict[str, asyncio.Semaphore] = field(default_factory=dict)

    def host_slot(self, ip: str) -> asyncio.Semaphore:
        slot = self._host_slots.get(ip)
        if slot is None:
            slot = self._host_slots[ip] = asyncio.Semaphore(self.per_host_connections)
        return slot


async def identify_stage(port: OpenPort, ctx: StageContext) -> Finding:
    if port.proto is Proto.UDP:
        return Finding(port=port, service=_udp_service(port))
    endpoint = Endpoint(port.target.ip, port.port, port.target.hostname)
    async with ctx.host_slot(port.target.ip):
        info = await identify(endpoint, ctx.identify, ctx.fallback)
    return Finding(port=port, service=info)


def _udp_service(port: OpenPort) -> ServiceInfo:
    """UDP: discovery already sent the protocol's own request; a reply names it."""
    if port.state is PortState.OPEN_FILTERED:
        return ServiceInfo(method="udp:no-reply")
    try:
        from probers.discovery.udp import udp_service_hint
        name = udp_service_hint(port.port)
    except (ImportError, LookupError):
        name = ""
    return ServiceInfo(service=name, banner=port.response, method="udp:payload-reply",
                       confidence=7 if name else 0)


async def tls_stage(finding: Finding, ctx: StageContext) -> Finding:
    if ctx.tls_probe is None or not finding.service.is_tls:
        return finding
    t = finding.port.target
    async with ctx.host_slot(t.ip):
        result = await ctx.tls_probe(t.ip, finding.port.port, t.hostname)
    return finding.with_(tls=result)


async def process(port: OpenPort, ctx: StageContext) -> Finding:
    """The whole per-port chain, as the embedded runner uses it."""
    finding = await identify_stage(port, ctx)
    finding = await tls_stage(finding, ctx)
    return risk.assess(cdn.classify(finding))

