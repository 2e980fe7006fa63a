"""Tarpit detection: hosts that "answer on every port".

Owns: ``TarpitDetector``, which watches the stream of open ports a discovery
engine yields, counts distinct open ports per host, flags a host once it crosses
``threshold`` and from then on *holds back* that host's further open ports
instead of flooding identification, TLS and the store with tens of thousands of
fake services. Held ports are kept (bounded by ``max_held`` per host; the excess
is counted, never silently lost) so the runner can identify them and keep only
those where identification names a real service.

Must not touch: the network, engines, Kafka or storage. It is pure bookkeeping,
fed by whoever consumes the engine's stream; it is not thread-safe (use one per
consumer task).

Runner protocol:
    detector = TarpitDetector(settings.tarpit_threshold)
    async for port in engine.scan(shard, progress):
        if detector.admit(port):
            forward(port)                       # the normal path
    for verdict in detector.flagged_hosts():    # after the shard (or periodically)
        for port in detector.take_held(verdict.ip):
            info = await identify(port)         # keep only if a service is named
            if info.is_identified: forward(port, info)
        # HostScan(is_tarpit=True, note=verdict.note()) for the Summary
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.records import OpenPort, Proto

DEFAULT_THRESHOLD = 1000
DEFAULT_MAX_HELD = 2000


@dataclass(frozen=True, slots=True)
class TarpitVerdict:
    """What the detector concluded about one flagged host."""

    ip: str
    open_seen: int  # distinct open ports reported for the host
    admitted: int  # passed downstream before the host was flagged
    held: int  # held back, waiting for identification
    dropped: int  # beyond max_held: counted only

    def note(self) -> str:
        text = (
            f"{self.ip} answers on every port: {self.open_seen} open ports reported, "
            f"{self.admitted} passed before it was flagged, {self.held} held for "
            "identification"
        )
        if self.dropped:
            text += f", {self.dropped} more not kept (held-port bound reached)"
        return text


@dataclass(slots=True)
class _Host:
    seen: set[tuple[Proto, int]] = field(default_factory=set)
    admitted: int = 0
    held: list[OpenPort] = field(default_factory=list)
    taken: int = 0
    dropped: int = 0
    is_flagged: bool = False


class TarpitDetector:
    """Counts open ports per host as they stream; flags and holds back tarpits.

    threshold: distinct open ports on one host beyond which it is flagged
    ("answers on every port"); the first ``threshold`` ports pass. max_held:
    ports held per flagged host for the runner's identification; the rest are
    counted as dropped.
    """

    def __init__(self, threshold: int = DEFAULT_THRESHOLD, *, max_held: int = DEFAULT_MAX_HELD):
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        if max_held < 0:
            raise ValueError(f"max_held must be >= 0, got {max_held}")
        self.threshold = threshold
        self.max_held = max_held
        self._hosts: dict[str, _Host] = {}

    def admit(self, port: OpenPort) -> bool:
        """Record ``port``; True when it should go downstream now.

        A duplicate (same host, proto, port) returns False and changes nothing:
        that port was already decided (passed, held or dropped).
        """
        host = self._hosts.setdefault(port.target.ip, _Host())
        key = (port.proto, port.port)
        if key in host.seen:
            return False
        host.seen.add(key)
        if not host.is_flagged and len(host.seen) > self.threshold:
            host.is_flagged = True
        if not host.is_flagged:
            host.admitted += 1
            return True
        if len(host.held) + host.taken < self.max_held:
            host.held.append(port)
        else:
            host.dropped += 1
        return False

    def is_tarpit(self, ip: str) -> bool:
        host = self._hosts.get(ip)
        return host is not None and host.is_flagged

    def open_count(self, ip: str) -> int:
        host = self._hosts.get(ip)
        return len(host.seen) if host else 0

    def held(self, ip: str) -> tuple[OpenPort, ...]:
        """Ports of ``ip`` held back so far (not removed; see ``take_held``)."""
        host = self._hosts.get(ip)
        return tuple(host.held) if host else ()

    def take_held(self, ip: str) -> list[OpenPort]:
        """Remove and return the held ports of ``ip`` (for identification)."""
        host = self._hosts.get(ip)
        if host is None:
            return []
        out, host.held = host.held, []
        host.taken += len(out)
        return out

    def verdict(self, ip: str) -> TarpitVerdict | None:
        host = self._hosts.get(ip)
        if host is None or not host.is_flagged:
            return None
        return TarpitVerdict(
            ip=ip,
            open_seen=len(host.seen),
            admitted=host.admitted,
            held=len(host.held) + host.taken,
            dropped=host.dropped,
        )

    def flagged_hosts(self) -> list[TarpitVerdict]:
        """Every flagged host, in the order they were first seen."""
        return [v for ip in self._hosts if (v := self.verdict(ip)) is not None]

    def forget(self, ip: str) -> None:
        """Drop all state for ``ip`` (the runner is done with that host)."""
        self._hosts.pop(ip, None)
