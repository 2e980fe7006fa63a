"""UDP identification beyond discovery's reply: SNMP engine discovery and sysDescr, and
a second look at a port silent to discovery (``second_look``).

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


# Seconds a silent (open|filtered) port is given to answer any of our own requests
SECOND_LOOK_WAIT = 1.0


async def second_look(ip: str, port: int, *, timeout: float = SECOND_LOOK_WAIT,
                      allow_public_community: bool = False
                      ) -> tuple[bytes, ServiceInfo | None] | None:
    """A port silent to discovery's datagram (open|filtered), asked again in every
    protocol portwatch speaks (DNS version.bind, NTP, NetBIOS-NS, SNMPv3 engine
    discovery, SSDP, memcached: ``udp_payloads.OWN_PAYLOADS``), one request each, all
    at once, each from its own socket, for ``timeout`` seconds, as nmap -sV sends its UDP
    probes to an open|filtered port: a DNS server or an SNMP agent moved off its port
    answers only a request it can parse. The first answer's bytes and, when one is its
    protocol's answer, the service it names; our own request sent back is "echo".
    None: every request met silence (or a port unreachable). At most six datagrams."""
    from probers.discovery.udp_payloads import OWN_PAYLOADS, own_reply_service

    requests = [(usual, payloads[0].data) for usual, payloads in OWN_PAYLOADS.items()]
    answers = await asyncio.gather(*(exchange_datagram(ip, port, data, timeout)
                                     for _, data in requests), return_exceptions=True)
    replies = [(usual, data, answer) for (usual, data), answer in zip(requests, answers,
                                                                      strict=True)
               if isinstance(answer, bytes) and answer]
    for usual, _data, reply in replies:
        if usual == 161:
            snmp = parse_snmp(reply)
            if snmp is not None and allow_public_community:
                snmp = await identify_snmp(ip, port, allow_public_community=True,
                                           timeout=timeout) or snmp
            if snmp is not None:
                return reply, snmp
        elif service := own_reply_service(usual, reply):
            return reply, ServiceInfo(service=service, method="udp:second-look",
                                      confidence=8)
    for _usual, data, reply in replies:
        if reply == data:
            return reply, ServiceInfo(service="echo", method="udp:second-look",
                                      extra_info="our request sent back", confidence=8)
    return (replies[0][2], None) if replies else None


__all__ = ["SECOND_LOOK_WAIT", "exchange_datagram", "identify_snmp", "second_look"]
