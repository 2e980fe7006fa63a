"""portwatch's own UDP discovery payloads: one request per well-known service.

Owns: the datagrams the UDP engine (``probers/discovery/udp.py``) sends to the
ports whose services only answer a valid request (DNS, SNMP, NTP, NetBIOS-NS,
memcached, SSDP), built here from the protocol specifications, plus the
generic empty datagram for every other port, and the service-name hint for
those ports.

Why our own: portwatch must find these services without nmap-common
installed, and nmap-payloads may only be read at run time, never copied
(NOTES.md, licence). When nmap-payloads is present the engine adds its payloads for the
ports not listed here.

Must not touch: the network, nmap's files, or any other portwatch module.
Every payload is a constant: the same bytes every run, so a capture of a scan
is reproducible and a test can assert on what was sent.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from probers.service.app_protocols import snmp_v3_discovery

__all__ = [
    "GENERIC_PAYLOAD",
    "OWN_PAYLOADS",
    "UdpPayload",
    "dns_version_query",
    "memcached_stats",
    "netbios_node_status",
    "ntp_client",
    "own_payloads",
    "own_reply_service",
    "own_service_hint",
    "snmp_get_sysdescr",
    "ssdp_msearch",
]

# Transaction ids: constant and recognisable ("pw") so a packet capture of a
# portwatch scan is easy to attribute; servers only echo them back.
_TXID = 0x7077


@dataclass(frozen=True, slots=True)
class UdpPayload:
    """One datagram to send to a port, named for the ``tried`` list and for logs."""

    name: str
    data: bytes


# An empty datagram: elicits an ICMP port-unreachable from a closed port and a
# reply from the (rare) services that answer anything. Better than NULs, which
# some stacks treat as a malformed request and drop silently either way.
GENERIC_PAYLOAD = UdpPayload("generic:empty", b"")


def _dns_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad DNS label {label!r}")
        out += bytes([len(raw)]) + raw
    return bytes(out + b"\x00")


def dns_version_query(txid: int = _TXID) -> bytes:
    """DNS query ``version.bind. CH TXT`` (RFC 1035 §4.1; CHAOS class per BIND).

    Any DNS server answers it, with the version, REFUSED or NOTIMP: all of them
    prove a DNS service. Recursion is not asked for (RD=0): we do not want a
    resolver to go out on our behalf.
    """
    header = struct.pack("!HHHHHH", txid, 0x0000, 1, 0, 0, 0)
    return header + _dns_name("version.bind") + struct.pack("!HH", 16, 3)  # TXT, CH


def ntp_client(version: int) -> bytes:
    """NTP mode 3 (client) request, 48 bytes (RFC 5905 §7.3; v3 is RFC 1305).

    The transmit timestamp is a fixed non-zero value: ntpd drops requests whose
    transmit timestamp is zero as bogus, and the server copies it into the
    origin field of its reply, so a constant keeps the payload reproducible.
    """
    if version not in (3, 4):
        raise ValueError(f"NTP version {version} not supported")
    li_vn_mode = (0 << 6) | (version << 3) | 3
    head = struct.pack("!BBbb", li_vn_mode, 0, 4, -6)  # stratum 0, poll 16 s, precision
    body = bytes(4 + 4 + 4)  # root delay, root dispersion, reference id
    timestamps = bytes(8 * 3) + struct.pack("!II", 0xE9A0_7077, 0x7077_0000)
    return head + body + timestamps


def _ber_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _ber(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _ber_len(len(value)) + value


def _ber_int(n: int) -> bytes:
    raw = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)
    return _ber(0x02, raw)


def _ber_oid(oid: str) -> bytes:
    arcs = [int(a) for a in oid.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _ber(0x06, bytes(out))


SYSDESCR_OID = "1.3.6.1.2.1.1.1.0"


def snmp_get_sysdescr(version: int, community: bytes = b"public") -> bytes:
    """SNMP GetRequest for sysDescr.0 (RFC 1157 v1, RFC 3416 v2c), BER-encoded.

    ``version`` is the wire value: 0 = SNMPv1, 1 = SNMPv2c. An agent with a
    different community stays silent (v1/v2c have no authentication error reply
    by default), so a silent 161 is open|filtered, not closed.
    """
    if version not in (0, 1):
        raise ValueError(f"SNMP wire version {version} not supported (0=v1, 1=v2c)")
    varbind = _ber(0x30, _ber_oid(SYSDESCR_OID) + b"\x05\x00")  # value NULL
    pdu = _ber(
        0xA0,  # GetRequest-PDU
        _ber_int(_TXID) + _ber_int(0) + _ber_int(0) + _ber(0x30, varbind),
    )
    return _ber(0x30, _ber_int(version) + _ber(0x04, community) + pdu)


def _netbios_encode(name: bytes) -> bytes:
    """First-level encoding of a 16-byte NetBIOS name (RFC 1001 §14.1)."""
    padded = name.ljust(16, b"\x00")[:16]
    out = bytearray()
    for byte in padded:
        out += bytes([0x41 + (byte >> 4), 0x41 + (byte & 0x0F)])
    return bytes([32]) + bytes(out) + b"\x00"


def netbios_node_status(txid: int = _TXID) -> bytes:
    """NetBIOS-NS NODE STATUS REQUEST for the wildcard name ``*`` (RFC 1002 §4.2.17)."""
    header = struct.pack("!HHHHHH", txid, 0x0000, 1, 0, 0, 0)
    return header + _netbios_encode(b"*") + struct.pack("!HH", 0x0021, 0x0001)  # NBSTAT, IN


def memcached_stats(request_id: int = _TXID) -> bytes:
    """memcached ``stats`` over UDP: 8-byte frame header then the text command.

    Frame header (memcached protocol.txt, "UDP protocol"): request id, sequence
    number 0, total datagrams 1, reserved 0. Without it memcached drops the
    datagram. (An exposed UDP memcached is a DDoS amplifier: worth finding.)
    """
    return struct.pack("!HHHH", request_id, 0, 1, 0) + b"stats\r\n"


def ssdp_msearch() -> bytes:
    """SSDP M-SEARCH for all devices (UPnP Device Architecture 1.1 §1.3.2).

    The HOST header carries the SSDP multicast group because that is what
    devices expect; it is a header value only: the datagram goes unicast to
    the scanned target, never to that group.
    """
    return (
        b"M-SEARCH * HTTP/1.1\r\n"
        b"HOST: 239.255.255.250:1900\r\n"
        b'MAN: "ssdp:discover"\r\n'
        b"MX: 1\r\n"
        b"ST: ssdp:all\r\n"
        b"\r\n"
    )


# Well-known port -> (nmap-services service name, payloads in send order).
# The names follow nmap-services so the identify stage and the reports speak
# one vocabulary.
_TABLE: dict[int, tuple[str, tuple[UdpPayload, ...]]] = {
    53: ("domain", (UdpPayload("dns:version.bind", dns_version_query()),)),
    123: (
        "ntp",
        (UdpPayload("ntp:v4-client", ntp_client(4)), UdpPayload("ntp:v3-client", ntp_client(3))),
    ),
    137: ("netbios-ns", (UdpPayload("netbios-ns:node-status", netbios_node_status()),)),
    # SNMPv3 engine discovery (RFC 3414 4): no community, no user, and every v3 agent
    # answers it. The v2c/v1 gets with the "public" community are a credential guess:
    # sent only when the user allows it (own_payloads(..., snmp_public_community=True)).
    161: ("snmp", (UdpPayload("snmp:v3-engine-discovery", snmp_v3_discovery()),)),
    1900: ("upnp", (UdpPayload("ssdp:m-search", ssdp_msearch()),)),
    11211: ("memcache", (UdpPayload("memcached:stats", memcached_stats()),)),
}

OWN_PAYLOADS: dict[int, tuple[UdpPayload, ...]] = {port: p for port, (_, p) in _TABLE.items()}


SNMP_PUBLIC_PAYLOADS = (
    UdpPayload("snmp:v2c-get-sysdescr", snmp_get_sysdescr(1)),
    UdpPayload("snmp:v1-get-sysdescr", snmp_get_sysdescr(0)),
)


def own_payloads(port: int, *, snmp_public_community: bool = False) -> tuple[UdpPayload, ...]:
    """portwatch's payloads for ``port``; empty when we have none of our own. On 161 the
    "public" community is tried only when ``snmp_public_community`` allows it."""
    if port == 161 and snmp_public_community:
        return SNMP_PUBLIC_PAYLOADS
    return OWN_PAYLOADS.get(port, ())


_TXID_BYTES = struct.pack("!H", _TXID)
_SSDP_FIELD = re.compile(rb"\r?\n(?:st|usn)\s*:", re.IGNORECASE)


def _answers_our_query(reply: bytes) -> bool:
    """A DNS-style answer (DNS, NetBIOS-NS): our transaction id echoed, the QR bit set."""
    return len(reply) >= 12 and reply[:2] == _TXID_BYTES and bool(reply[2] & 0x80)


# What a reply to our own payload on its port looks like when the protocol answered it
# (not a tarpit's junk, which answers anything with anything): the identify stage names
# the table's service only then (stages._identify_udp).
_RECOGNISED: dict[int, Callable[[bytes], bool]] = {
    53: _answers_our_query,
    137: _answers_our_query,
    # a server (4) or broadcast (5) packet, whole
    123: lambda reply: len(reply) >= 48 and reply[0] & 0x07 in (4, 5),
    # the frame header with our request id, then the stats text
    11211: lambda reply: reply[:2] == _TXID_BYTES and reply[8:13] == b"STAT ",
    1900: lambda reply: reply.startswith(b"HTTP/1.1 200")
    and _SSDP_FIELD.search(reply[:1024]) is not None,
}


def own_reply_service(port: int, reply: bytes) -> str:
    """The table's service on ``port`` when ``reply`` is its protocol's answer to our
    own payload, else "" (SNMP is identified by its own probe: probers/service)."""
    recognised = _RECOGNISED.get(port)
    return _TABLE[port][0] if recognised is not None and recognised(reply) else ""


def own_service_hint(port: int) -> str:
    """The service our own table expects on ``port`` (nmap-services naming), or ""."""
    entry = _TABLE.get(port)
    return entry[0] if entry else ""
