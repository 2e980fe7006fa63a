"""UDP identification against real UDP services on loopback: a reply names a service
only when it is recognised (nmap's UDP match lines on discovery's reply, then nmap's UDP
probes), never from the port number alone; a tarpit's candidates get no probes.

Each service answers on its own loopback address (127.0.0.61), so a test never meets
another's listener.
"""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

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
from tests import daemons, loopback

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


def _finding(port: OpenPort, *, nmap: bool = True) -> Finding:
    return asyncio.run(process(port, make_context(tls_enumeration=False,
                                                  use_nmap_probes=nmap)))


def _discovered(port: int) -> OpenPort:
    """The real UDP discovery of ``HOST:port`` (our own payload for a table port)."""
    shard = Shard("t", "t:udp:0", (Target(HOST, HOST),), (PortRange(port, port),), Proto.UDP)

    async def scan() -> list[OpenPort]:
        return [p async for p in UdpEngine(timeout=1.0, deadline=30).scan(shard, Progress())]

    (found,) = asyncio.run(scan())
    return found


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


def test_a_real_udp_memcached_is_named_and_red() -> None:
    # Given memcached answering over UDP on its port (nmap's lines need their own request
    # id and a one-datagram answer: it read "not identified" after the change above, a
    # review, 2026-12-06)
    with daemons.start_memcached(HOST, udp_port=11211):
        finding = _finding(_discovered(11211))
    # Then the reply to our own stats request names it, red (a UDP amplifier)
    assert (finding.service.service, finding.service.method) == (
        "memcache", "udp:own-payload-reply")
    assert finding.risk_color is RiskColor.RED


def test_an_ssdp_answer_is_named_upnp() -> None:
    # Given a MiniUPnPd-style answer to M-SEARCH (no UDP line of nmap's knows SSDP)
    answer = (b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: upnp:rootdevice\r\n"
              b"USN: uuid:1234::upnp:rootdevice\r\nSERVER: OpenWRT/21.02 UPnP/1.1 "
              b"MiniUPnPd/2.2.1\r\nLOCATION: http://127.0.0.61:5000/rootDesc.xml\r\n\r\n")
    with loopback.udp_responder(HOST, 1900, lambda _: answer):
        finding = _finding(_discovered(1900))
    assert finding.service.service == "upnp"
    assert finding.risk_color is RiskColor.RED


def test_ntp_is_named_without_nmaps_data() -> None:
    if os.geteuid() != 0:
        pytest.skip("binding UDP 123 needs root (CI runs as root)")
    # Given an NTP server's mode-4 answer, and no nmap data (nmap-common not installed)
    def ntp(request: bytes) -> bytes:
        return bytes([0x24, 2, 6, 0xE9]) + bytes(20) + request[40:48] + bytes(16)

    with loopback.udp_responder(HOST, 123, ntp):
        finding = _finding(_discovered(123), nmap=False)
    # Then portwatch's own payload names it, as README promises without nmap's data
    assert (finding.service.service, finding.service.method) == (
        "ntp", "udp:own-payload-reply")
