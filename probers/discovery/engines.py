"""The discovery engines in one explicit table, and the ``--engine auto`` rule beside it.

Owns: ``EngineName`` (every engine portwatch has), ``ENGINES`` (name -> how it is
built from its typed options; a test checks that every name has an entry, as
sslyze checks its scan-command table), ``EngineOptions`` (the narrow options of each
engine, filled by the composition root from the settings) and ``choose_engine``: the
engine for a shard, with a one-line note when ``auto`` fell back.

The auto rule (TCP): masscan when it can run for these targets (binary, privilege,
an Ethernet-like path; ``masscan_path.resolve_path``) *and* this process can count
its answers (CAP_NET_RAW for the answer tap: masscan's own capture loses answers,
tap.py), else the connect engine, saying why. UDP shards always take the UDP engine.

Must not touch: settings (it receives options), Kafka, storage, scope decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from probers.discovery.base import DiscoveryEngine, EngineUnavailable
from probers.discovery.connect import ConnectEngine
from probers.discovery.masscan import MasscanEngine
from probers.discovery.masscan_path import DEFAULT_BINARY, has_cap_net_raw
from probers.discovery.masscan_run import DEFAULT_NMAP_PAYLOADS
from probers.discovery.udp import UdpEngine, UdpOptions
from schemas.records import Proto, Target


class EngineName(StrEnum):
    CONNECT = "connect"  # TCP connect() sweep: no privilege, loopback and IPv6 included
    MASSCAN = "masscan"  # raw SYN through masscan, answers counted by our tap
    UDP = "udp"  # protocol payloads over connected UDP sockets


AUTO = "auto"
TCP_CHOICES: tuple[str, ...] = (AUTO, EngineName.MASSCAN.value, EngineName.CONNECT.value)
"""What ``--engine`` accepts (TCP discovery)."""


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    concurrency: int = 2000
    timeout: float = 1.0
    retries: int = 1
    deadline: float | None = None  # seconds per shard (None: as long as the sweep takes)


@dataclass(frozen=True, slots=True)
class MasscanOptions:
    rate: int = 10_000
    passes: int = 2
    binary: str = DEFAULT_BINARY
    adapter: str = ""
    adapter_ip: str = ""
    router_mac: str = ""
    nmap_payloads: str = DEFAULT_NMAP_PAYLOADS
    confirm_timeout: float = 1.0
    deadline: float | None = None  # seconds per shard (None: the sum of its passes' own)


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Each engine's narrow options (the composition root fills them from Settings)."""

    connect: ConnectOptions = field(default_factory=ConnectOptions)
    masscan: MasscanOptions = field(default_factory=MasscanOptions)
    udp: UdpOptions = field(default_factory=UdpOptions)


def _connect(o: EngineOptions) -> DiscoveryEngine:
    c = o.connect
    return ConnectEngine(concurrency=c.concurrency, timeout=c.timeout, retries=c.retries,
                         deadline=c.deadline)


def _masscan(o: EngineOptions) -> DiscoveryEngine:
    m = o.masscan
    return MasscanEngine(rate=m.rate, passes=m.passes, binary=m.binary, adapter=m.adapter,
                         adapter_ip=m.adapter_ip, router_mac=m.router_mac,
                         nmap_payloads=m.nmap_payloads, confirm_timeout=m.confirm_timeout,
                         deadline=m.deadline)


def _udp(o: EngineOptions) -> DiscoveryEngine:
    return UdpEngine(o.udp)


ENGINES: Mapping[EngineName, Callable[[EngineOptions], DiscoveryEngine]] = MappingProxyType({
    EngineName.CONNECT: _connect,
    EngineName.MASSCAN: _masscan,
    EngineName.UDP: _udp,
})


def build_engine(name: EngineName, options: EngineOptions | None = None) -> DiscoveryEngine:
    return ENGINES[name](options or EngineOptions())


def choose_engine(requested: str, proto: Proto, targets: Iterable[Target],
                  options: EngineOptions | None = None) -> tuple[DiscoveryEngine, str]:
    """The engine for a shard of ``proto`` over ``targets``, and a one-line note when
    ``auto`` fell back (empty otherwise). ``masscan`` that cannot run raises
    EngineUnavailable (one line); an unknown name raises ValueError."""
    options = options or EngineOptions()
    requested = requested.lower().strip()
    if requested not in TCP_CHOICES:
        raise ValueError(f"--engine must be {', '.join(TCP_CHOICES)}, not {requested!r}")
    if proto is Proto.UDP:
        return build_engine(EngineName.UDP, options), ""
    if requested == EngineName.CONNECT:
        return build_engine(EngineName.CONNECT, options), ""
    masscan = build_engine(EngineName.MASSCAN, options)
    assert isinstance(masscan, MasscanEngine)
    try:
        masscan.check_usable(list(targets))
    except EngineUnavailable as exc:
        if requested == EngineName.MASSCAN:
            raise
        return build_engine(EngineName.CONNECT, options), (
            f"masscan unavailable: {_one_line(exc)}; using the connect engine")
    if requested == AUTO and not has_cap_net_raw():
        # masscan may run (file capabilities) but this process cannot open the answer
        # tap, and masscan's own capture loses answers under load (tap.py).
        return build_engine(EngineName.CONNECT, options), (
            "masscan not used: this process lacks CAP_NET_RAW to count its answers; "
            "using the connect engine")
    return masscan, ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = [
    "AUTO",
    "ENGINES",
    "TCP_CHOICES",
    "ConnectOptions",
    "EngineName",
    "EngineOptions",
    "MasscanOptions",
    "build_engine",
    "choose_engine",
]
