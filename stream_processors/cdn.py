"""CDN: is this address or answer a CDN edge, and is this port one it leaves open?

Owns: loading schemas/data/cdn.yaml (ranges, header signatures, expected ports,
each with source and date), the verdict for one finding, and the one small
policy predicate ``is_cdn_expected`` (naabu's ``canIScanIfCDN`` pattern). A
verdict is a tag with its source; nothing is ever dropped. Must not touch the
network or the store.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from schemas import data_path
from schemas.records import NO_CDN, CdnVerdict, Finding, Proto

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HeaderSignature:
    name: str  # lower case
    value: str = ""  # lower-case substring; empty = presence of the header is enough


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    source: str
    date: str
    expected_tcp: frozenset[int]
    expected_udp: frozenset[int]
    headers: tuple[HeaderSignature, ...]
    ranges: tuple[str, ...]


class CdnCatalogue:
    """Ranges indexed for O(log n) lookups, per address family."""

    def __init__(self, providers: Iterable[Provider]) -> None:
        self.providers = {p.name: p for p in providers}
        spans: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}
        for p in self.providers.values():
            for cidr in p.ranges:
                net = ipaddress.ip_network(cidr, strict=False)
                spans[net.version].append(
                    (int(net.network_address), int(net.broadcast_address), p.name))
        # Equal starts: the wider range first, so that the walk back from the right
        # meets the most specific (innermost) range first: longest-prefix match.
        self._spans = {v: sorted(s, key=lambda t: (t[0], -t[1], t[2]))
                       for v, s in spans.items()}
        self._starts = {v: [s[0] for s in spans_] for v, spans_ in self._spans.items()}
        # Running maximum of range ends: lets a lookup walk back over nested ranges
        # and stop as soon as no earlier range can still cover the address.
        self._reach: dict[int, list[int]] = {}
        for v, spans_ in self._spans.items():
            reach, best = [], -1
            for _start, end, _name in spans_:
                best = max(best, end)
                reach.append(best)
            self._reach[v] = reach
        # Hosts repeat (one finding per open port): remember each address's answer.
        self._by_ip: dict[str, str] = {}

    def provider_for_ip(self, ip: str) -> str:
        cached = self._by_ip.get(ip)
        if cached is None:
            if len(self._by_ip) >= 65_536:  # bounded: a plain dict, cleared when full
                self._by_ip.clear()
            cached = self._by_ip[ip] = self._lookup(ip)
        return cached

    def _lookup(self, ip: str) -> str:
        addr = ipaddress.ip_address(ip)
        spans, reach = self._spans[addr.version], self._reach[addr.version]
        value = int(addr)
        i = bisect.bisect_right(self._starts[addr.version], value) - 1
        while i >= 0 and reach[i] >= value:
            if spans[i][1] >= value:
                return spans[i][2]
            i -= 1
        return ""

    def provider_for_headers(self, headers: Iterable[tuple[str, str]]) -> tuple[str, str]:
        lowered = [(k.lower(), v.lower()) for k, v in headers]
        if not lowered:
            return "", ""  # most ports (every UDP one, every non-HTTP one): no headers
        for p in self.providers.values():
            for sig in p.headers:
                for name, value in lowered:
                    if name == sig.name and sig.value in value:
                        return p.name, f"header:{name}" + (f"={sig.value}" if sig.value else "")
        return "", ""


@cache
def load_catalogue(path: str | None = None) -> CdnCatalogue:
    file = path or data_path("cdn.yaml")
    try:
        with open(file, encoding="utf-8") as fh:
            data: dict[str, Any] = yaml.safe_load(fh)
    except OSError as exc:
        log.warning("CDN data %s unreadable (%s): no CDN verdicts; reinstall portwatch "
                    "to restore schemas/data", file, exc.strerror)
        return CdnCatalogue(())
    providers = []
    for name, p in (data.get("providers") or {}).items():
        ports = p.get("expected_ports") or {}
        providers.append(Provider(
            name=name, source=str(p.get("source", "")), date=str(p.get("date", "")),
            expected_tcp=frozenset(ports.get("tcp", ())),
            expected_udp=frozenset(ports.get("udp", ())),
            headers=tuple(HeaderSignature(h["name"].lower(), str(h.get("value", "")).lower())
                          for h in p.get("headers", ())),
            ranges=tuple(p.get("ranges", ())),
        ))
    return CdnCatalogue(providers)


def is_cdn_expected(provider: Provider | None, proto: Proto, port: int) -> bool:
    """The policy: a port is CDN-expected iff the address is a known CDN's and the
    provider is known to leave that port open on its edge."""
    if provider is None:
        return False
    return port in (provider.expected_tcp if proto is Proto.TCP else provider.expected_udp)


def verdict_for(finding: Finding, catalogue: CdnCatalogue | None = None) -> CdnVerdict:
    cat = catalogue or load_catalogue()
    name = cat.provider_for_ip(finding.port.target.ip)
    source = ""
    if name:
        p = cat.providers[name]
        source = f"range:{name} ({p.date})"
    else:
        name, source = cat.provider_for_headers(finding.service.headers)
    if not name:
        return NO_CDN
    provider = cat.providers[name]
    return CdnVerdict(provider=name, source=source,
                      is_expected_port=is_cdn_expected(provider, finding.port.proto,
                                                       finding.port.port))


def classify(finding: Finding) -> Finding:
    """CDN stage: tag the finding with its verdict (never drop it)."""
    return finding.with_(cdn=verdict_for(finding))
