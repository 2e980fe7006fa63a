"""Where masscan's packets go: adapter, source address and next hop per target.

Owns: ``resolve_path`` (from the kernel's routing and neighbour tables), the
privilege checks (``find_binary``: root, CAP_NET_RAW or file capabilities) and
``MasscanPath``. Must not touch: masscan itself (masscan_run.py), Kafka, storage.

How masscan finds its way to a target (``resolve_path``). masscan does not use
the kernel's routing table for anything but its default route: left alone it
would pick the default-route interface and the default gateway's MAC, which for
a test host on a veth pair means sending out of the wrong interface. So the
engine always passes ``--adapter``, ``--adapter-ip`` and a next hop, derived per
target from ``ip -j route get <target>``:
- adapter = the route's ``dev``; it must be an Ethernet-like link
  (``/sys/class/net/<dev>/type`` == 1), else ``EngineUnavailable``;
- adapter IP = the route's ``prefsrc`` (the kernel's own address: the kernel then
  RSTs each SYN-ACK, harmless for discovery) unless ``adapter_ip`` is given; on a
  namespace test host pass the helper's unused ``scanner_ip`` instead;
- next hop = the route's ``gateway`` or, for an on-link target, the target
  itself; its MAC comes from the neighbour table (``ip -j neigh``). An unresolved
  on-link next hop is resolved by the kernel first (one empty UDP datagram to the
  discard port of that target, then the neighbour table is read again); if it is
  still unknown the target is down (``unreachable``: as nmap, no ARP answer, no
  host); a gateway's MAC the same way (the datagram to the target makes the kernel ARP
  for it), and a gateway that answers none makes its targets unreachable.
Targets whose paths differ are scanned by separate masscan runs.
Routes of type local/loopback are refused: masscan cannot scan loopback or the
machine's own addresses.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probers.discovery.base import EngineUnavailable

DEFAULT_BINARY = "masscan"
CAP_NET_RAW = 13
ARPHRD_ETHER = 1
_RESOLVED_NUD = {"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"}


@dataclass(frozen=True, slots=True)
class MasscanPath:
    """Where masscan sends packets for a group of targets."""

    adapter: str
    adapter_ip: str
    router_mac: str = ""  # known next-hop MAC (--router-mac) ...
    router_ip: str = ""  # ... or the next hop masscan must ARP for (--router-ip)
    # adapter_ip is one of this machine's own addresses: the kernel RSTs the
    # SYN-ACKs it receives there, so masscan is told --noreset (see the engine)
    local_source: bool = False
    # a target (or its gateway) that answered no ARP request: down, never given to masscan
    # (1.3.2 ARPs for its --router-ip forever and sends nothing: the whole shard failed
    # at its deadline on every attempt, live hosts of it included: a review)
    unreachable: bool = False

    def argv(self) -> list[str]:
        out = ["--adapter", self.adapter, "--adapter-ip", self.adapter_ip]
        if self.router_mac:
            out += ["--router-mac", self.router_mac]
        else:
            out += ["--router-ip", self.router_ip]
        return out


def _ip_json(args: Sequence[str]) -> Any:
    try:
        proc = subprocess.run(
            ["ip", "-j", *args], capture_output=True, text=True, timeout=5.0, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineUnavailable(f"masscan: cannot run `ip {' '.join(args)}`: {exc}") from exc
    if proc.returncode != 0:
        raise EngineUnavailable(
            f"masscan: `ip {' '.join(args)}` failed: {proc.stderr.strip() or proc.returncode}"
        )
    return json.loads(proc.stdout) if proc.stdout.strip() else []


def has_cap_net_raw() -> bool:
    """CAP_NET_RAW in this process's effective set (root can run without it)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_RAW & 1)
    return False


def _binary_has_file_caps(path: str) -> bool:
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def find_binary(binary: str = DEFAULT_BINARY) -> str:
    """Absolute path of the masscan binary, or EngineUnavailable saying why."""
    found = shutil.which(binary)
    if found is None:
        raise EngineUnavailable(f"masscan not found ({binary!r} is not on PATH)")
    if not (has_cap_net_raw() or _binary_has_file_caps(found)):
        raise EngineUnavailable(
            "masscan needs root or CAP_NET_RAW (this process has neither and "
            f"{found} has no file capabilities)"
        )
    return found


def _neighbour_mac(ip: str, dev: str) -> str:
    for entry in _ip_json(["neigh", "show", ip, "dev", dev]):
        states = set(entry.get("state", []))
        if entry.get("lladdr") and states & _RESOLVED_NUD:
            return str(entry["lladdr"])
    return ""


def _nudge_neighbour(ip: str) -> None:
    """Let the kernel ARP for an on-link target: one empty datagram to its discard port."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"", (ip, 9))


def resolve_path(
    ip: str, *, adapter: str = "", adapter_ip: str = "", router_mac: str = ""
) -> MasscanPath:
    """The adapter, source address and next hop masscan must use for ``ip``.

    Raises EngineUnavailable (one line) for loopback/local targets, IPv6, and
    adapters without an Ethernet-like link.
    """
    addr = ipaddress.ip_address(ip)
    if addr.is_loopback:
        raise EngineUnavailable(f"masscan cannot scan loopback ({ip})")
    if addr.version != 4:
        raise EngineUnavailable(f"masscan engine scans IPv4 only here ({ip})")
    routes = _ip_json(["route", "get", ip])
    if not routes:
        raise EngineUnavailable(f"masscan: no route to {ip}")
    route = routes[0]
    dev = adapter or str(route.get("dev", ""))
    if route.get("type") in ("local", "broadcast") or route.get("dev") == "lo":
        raise EngineUnavailable(
            f"masscan cannot scan loopback or this machine's own addresses ({ip} is local)"
        )
    try:
        link_type = int(Path(f"/sys/class/net/{dev}/type").read_text().strip())
    except (OSError, ValueError) as exc:
        raise EngineUnavailable(f"masscan: adapter {dev!r} not found") from exc
    if link_type != ARPHRD_ETHER:
        raise EngineUnavailable(
            f"masscan: adapter {dev} has no Ethernet-like link (type {link_type}); "
            "masscan needs one"
        )
    src = adapter_ip or str(route.get("prefsrc", ""))
    if not src:
        raise EngineUnavailable(f"masscan: no source address for {ip} on {dev}")
    local = not adapter_ip or src == route.get("prefsrc") or _is_local_address(src)
    if router_mac:
        return MasscanPath(dev, src, router_mac=router_mac, local_source=local)
    next_hop = str(route.get("gateway") or ip)
    mac = _neighbour_mac(next_hop, dev)
    if not mac:
        # the kernel resolves the next hop (the target, or its gateway) for a datagram
        # to the target: nothing is sent to an address that is not a target
        _nudge_neighbour(ip)
        for _ in range(20):
            time.sleep(0.05)
            mac = _neighbour_mac(next_hop, dev)
            if mac:
                break
    if mac:
        return MasscanPath(dev, src, router_mac=mac, local_source=local)
    # no ARP answer from the target, or from its gateway (masscan would ARP for it
    # forever: a dead gateway failed the shard, the live on-link hosts with it: a review)
    return MasscanPath(dev, src, router_ip=next_hop, local_source=local, unreachable=True)


def _is_local_address(ip: str) -> bool:
    with contextlib.suppress(EngineUnavailable, ValueError):
        routes = _ip_json(["route", "get", ip])
        return bool(routes) and routes[0].get("type") == "local"
    return False


__all__ = ["DEFAULT_BINARY", "MasscanPath", "find_binary", "has_cap_net_raw", "resolve_path"]
