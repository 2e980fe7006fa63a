"""The harness's socket fence: a test or benchmark process connects to, and sends
datagrams to, loopback only, or to a 198.18.0.0/15 address that the kernel routes to a
network namespace a test or benchmark made (a route more specific than the default).

Why: ``PORTWATCH_SCOPE_ALLOW`` fences the targets a scan is *given*; it does not see a
packet a stage sends on its own. A benchmark once fed the stages synthetic open ports of
198.18.x.y hosts that no namespace held, and the SNMP identification stage sent its
request to each of them through the default route (bench/pipeline.py, fixed on
2026-12-02). This fence stops any such packet before the system call, in this process
and in every Python process it starts.

How: ``sys.addaudithook``. CPython raises the audit events ``socket.connect``,
``socket.sendto`` and ``socket.sendmsg`` (asyncio's transports included) before the call;
the hook raises ``PermissionError`` for an address outside the fence, so nothing is sent.
``install`` also puts ``tests/netfence_site`` first on ``PYTHONPATH``: its
``sitecustomize`` installs the same hook in every Python child (``portwatch process``
workers, ``python -m bench``).
Native programs (masscan, nmap, daemons) are not covered: the scope setting and the
tests' own targets fence those.

Used by ``tests/conftest.py`` and ``bench/__init__.py``. Must not touch: the product (a
scanner's users connect wherever their scope says; this is the harness's rule).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

NAMESPACE_RANGE = ipaddress.ip_network("198.18.0.0/15")
SITE_DIR = Path(__file__).resolve().parent / "netfence_site"
_ROUTE_TTL = 0.5  # seconds a read of the routing table is reused (namespaces come and go)
_routes: tuple[float, list[tuple[int, int]]] = (0.0, [])


class FenceError(PermissionError):
    """A socket call to an address outside the harness's fence."""


def _ipv4_routes(*, fresh: bool = False) -> list[tuple[int, int]]:
    """(network, mask) of every IPv4 route, as integers, from /proc/net/route (the last
    read, if under ``_ROUTE_TTL`` old and not ``fresh``)."""
    global _routes
    read_at, routes = _routes
    now = time.monotonic()
    if not fresh and now - read_at < _ROUTE_TTL:
        return routes
    routes = []
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 8:
            # little-endian hex, as the kernel prints them
            routes.append((int.from_bytes(bytes.fromhex(fields[1]), "little"),
                           int.from_bytes(bytes.fromhex(fields[7]), "little")))
    _routes = (now, routes)
    return routes


def _routed_to_a_namespace(address: ipaddress.IPv4Address) -> bool:
    """True when the most specific route for ``address`` is not the default route: the
    connected route of a veth pair a test or benchmark set up. A "no" is read again from
    the kernel before it is given (a namespace made a moment ago must not be refused);
    a "yes" may come from a read up to ``_ROUTE_TTL`` old."""
    value = int(address)
    for fresh in (False, True):
        masks = [mask for network, mask in _ipv4_routes(fresh=fresh) if value & mask == network]
        if masks and max(masks) != 0:
            return True
    return False


def is_allowed(host: str) -> bool:
    """May this process send to ``host`` (an address, or a name resolved here)?"""
    if host.startswith("127.") or host == "::1":
        return True  # the common case, without parsing (a full sweep connects 65,535 times)
    try:
        addresses = [ipaddress.ip_address(host.split("%", 1)[0])]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return True  # unresolvable: the call itself fails, nothing is sent
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                     for info in infos]
    return all(_allowed_address(a) for a in addresses)


def _allowed_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback or address.is_unspecified:
        return True  # the unspecified address reaches this host only
    return (isinstance(address, ipaddress.IPv4Address) and address in NAMESPACE_RANGE
            and _routed_to_a_namespace(address))


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event not in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        return
    sock, address = args[0], args[1]
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return  # Unix sockets, netlink: not the network
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return
    if not is_allowed(address[0]):
        _tell(event, address[0])
        raise FenceError(f"netfence: {event} to {address[0]} refused: tests and benchmarks "
                         "reach loopback and their own namespace hosts only (tests/netfence.py)")


_told: set[tuple[str, str]] = set()
_TELL_CAP = 20  # lines per process


def _tell(event: str, host: str) -> None:
    """One stderr line per refused (call, address), the first ``_TELL_CAP``: the caller
    may swallow the error (``PermissionError`` is an ``OSError``, which probers treat as
    "no answer"), and the attempt must still show."""
    if (event, host) in _told or len(_told) >= _TELL_CAP:
        return
    _told.add((event, host))
    sys.stderr.write(f"netfence: refused {event} to {host}; nothing was sent "
                     "(tests/netfence.py)\n")


_installed = False


def install() -> None:
    """Install the hook in this process (once) and in its Python children."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(SITE_DIR) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(SITE_DIR), *paths])


__all__ = ["FenceError", "NAMESPACE_RANGE", "install", "is_allowed"]
