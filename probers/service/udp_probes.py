"""UDP identification beyond discovery's reply: SNMP engine discovery and sysDescr.

Owns: one bounded datagram exchange per request, and the SNMP identification of an open
UDP port: an SNMPv3 engine-discovery request first (RFC 3414 4: no community, no user;
the agent's engine ID names its implementation, as nmap's SNMPv3GetRequest probe does),
then, only when the user allowed it (``allow_public_community``, default off), an SNMPv2c
``GET sysDescr.0`` with the conventional read community "public" (what nmap's snmp
scripts send). Must not touch: Kafka, storage, other protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

from probers.service.app_protocols import parse_snmp, snmp_v2c_get_sysdescr, snmp_v3_discovery
from schemas.records import ServiceInfo

DATAGRAM_CAP = 4096  # bytes kept of an answer
PUBLIC_COMMUNITY = b"public"


async def exchange_datagram(ip: str, port: int, payload: bytes, timeout: float) -> bytes:
    """Send one datagram on a connected socket; the first answer within ``timeout``, or
    b"" (silence, or ICMP port unreachable)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    class _Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if not answer.done():
                answer.set_result(data[:DATAGRAM_CAP])

        def error_received(self, exc: Exception) -> None:
            if not answer.done():
                answer.set_result(b"")

    transport, _ = await loop.create_datagram_endpoint(_Receiver, remote_addr=(ip, port))
    try:
        transport.sendto(payload)
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(answer, timeout)
        return b""
    finally:
        transport.close()


async def identify_snmp(ip: str, port: int, *, allow_public_community: bool = False,
                        timeout: float = 2.0) -> ServiceInfo | None:
    """The agent's implementation (engine ID) and, when allowed, its sysDescr."""
    try:
        v3 = parse_snmp(await exchange_datagram(ip, port, snmp_v3_discovery(), timeout))
    except OSError:
        v3 = None
    if not allow_public_community:
        return v3
    try:
        v2c = parse_snmp(await exchange_datagram(
            ip, port, snmp_v2c_get_sysdescr(PUBLIC_COMMUNITY), timeout))
    except OSError:
        v2c = None
    if v3 is None or v2c is None:
        return v3 or v2c
    extra = "; ".join(x for x in (v3.extra_info, v2c.extra_info,
                                  'read community "public" accepted') if x)
    return replace(v3, extra_info=extra[:400])


__all__ = ["exchange_datagram", "identify_snmp"]
