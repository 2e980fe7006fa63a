"""UDP identification against real UDP services on loopback: a reply names a service
only when it is recognised (nmap's UDP match lines on discovery's reply, then nmap's UDP
probes), never from the port number alone; a tarpit's candidates get no probes.

Each service answers on its own loopback address (127.0.0.61), so a test never meets
another's listener.
"""

from __future__ import annotations

import asyncio
import struct

from probers.discovery.base import Progress
from probers.discovery.udp import UdpEngine, encode_response
from schemas.records import (
    Finding,
    OpenPort,
    PortRange,
    PortState,
    Proto,
    RiskColor,
    Shard,
    Target,
)
from stream_processors.stages import TARPIT_REASON, make_context, process
from tests import loopback

HOST = "127.0.0.61"
BIND_VERSION = b"9.18.28-1~deb12u2-Debian"


def _version_bind(query: bytes) -> bytes:
    """What BIND answers to a query: the question echoed, and a TXT record (CHAOS
    class) holding its version, as to ``version.bind``."""
    if len(query) < 12:
        return b""
    record = (b"\xc0\x0c" + struct.pack("!HHIH", 16, 3, 0, len(BIND_VERSION) + 1)
              + bytes([len(BIND_VERSION)]) + BIND_VERSION)
    return query[:2] + b"\x84\x00" + struct.pack("!HHHH", 1, 1, 0, 0) + query[12:] + record


def _open(port: int, response: bytes, *, reason: str = "udp-response") -> OpenPort:
    return OpenPort(scan_id="t", target=Target(ip=HOST, target=HOST), port=port,
                    proto=Proto.UDP, state=PortState.OPEN, engine="udp", reason=reason,
                    response=encode_response(response))


def _finding(port: OpenPort) -> Finding:
    return asyncio.run(process(port, make_context(tls_enumeration=False)))


def test_a_junk_reply_on_the_sql_server_port_names_nothing_and_is_not_red() -> None:
    # Given a UDP service on 1433 (nmap-services: ms-sql-s, red in the catalogue) that
    # answers everything with junk
    with loopback.udp_responder(HOST, 1433, lambda _: b"junk\x00\x01") as port:
        finding = _finding(_open(port, b"junk\x00\x01"))
    # Then the port is open and unidentified: its colour is not the port number's
    assert finding.service.service == ""
    assert finding.risk_color is RiskColor.YELLOW
    assert finding.risk_reason == "service not identified"
    # and the port's usual service is said, as a note only
    assert "UDP reply not recognised; usually ms-sql-s on this port" in (
        finding.service.extra_info)


def test_a_dns_server_is_named_with_its_product_from_nmaps_udp_lines() -> None:
    # Given a DNS server answering version.bind, found by the real UDP discovery
    with loopback.udp_responder(HOST, 0, _version_bind) as port:
        shard = Shard("t", "t:udp:0", (Target(HOST, HOST),), (PortRange(port, port),),
                      Proto.UDP)

        async def scan() -> list[OpenPort]:
            return [p async for p in UdpEngine(timeout=1.0, deadline=30).scan(
                shard, Progress())]

        (found,) = asyncio.run(scan())
        finding = _finding(found)
    # Then nmap's lines name it, with product and version, as nmap -sV does
    info = finding.service
    assert (info.service, info.product, info.version) == (
        "domain", "ISC BIND", "9.18.28-1~deb12u2")
    assert info.method.startswith("nmap:")
    assert finding.risk_color is RiskColor.GREEN


def test_a_tarpits_udp_candidate_gets_no_probe() -> None:
    # Given a tarpit's candidate port on 3389 (ms-wbt-server, red) answering junk
    received: list[bytes] = []

    def junk(datagram: bytes) -> bytes:
        received.append(datagram)
        return b"junk"

    with loopback.udp_responder(HOST, 3389, junk) as port:
        finding = _finding(_open(port, b"junk", reason=TARPIT_REASON))
    # Then its reply is matched, no probe is sent, and nothing is named
    assert received == []
    assert finding.service.service == ""
    assert finding.risk_color is RiskColor.YELLOW
