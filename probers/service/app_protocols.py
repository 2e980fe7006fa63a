"""Requests and answer parsers for the services nmap names through version scripts.

Owns: the bytes portwatch sends to, and the pure parsers of what comes back from, an MQTT
broker (CONNECT + SUBSCRIBE ``$SYS/broker/version``), an AMQP 0-9-1 broker (protocol
header -> ``Connection.Start`` server-properties), SMB2 (NEGOTIATE -> dialect, and the
NTLMSSP challenge's target info and OS version when the server sends it), SNMP (v3
engine discovery, which needs no community; v2c ``GET sysDescr.0`` with the conventional
read community only when the user allows it), and the JSON version documents of
Elasticsearch/OpenSearch (``/``) and Kubernetes (``/version``); and, where nmap knows
nothing, a Kafka broker's ApiVersions answer and memcached's ``version`` (nmap's lines
name Memcached without one).

Every answer is hostile: lengths are checked against what arrived, counts and nesting
are capped, text is sanitized before it reaches a record, and no parser raises on any
input (hypothesis tests in tests/unit/test_app_protocols.py). Each identification
carries a CPE (lowercased and escaped as nmap writes them).

Why one file: each protocol here is a request builder and one pure parser, and they share
the same hostile-input rules and helpers (bounded reads of lengths and counts, ``_clean``,
``_cpe``); one module keeps those rules in one place and lets one hypothesis test feed
every parser the same junk.

Must not touch: sockets (probers/service/engine.py and udp_probes.py send and read),
portwatch's own Kafka pipeline (the Kafka here is a scanned service), storage.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

from probers.service.banners import cpe_part, sanitize
from schemas.records import ServiceInfo

MAX_PACKETS = 16  # MQTT packets walked in one answer
MAX_FIELDS = 64  # AMQP field-table entries read (nested tables included)
MAX_DEPTH = 3  # AMQP nested field tables
JSON_CAP = 65_536  # bytes of a JSON body parsed
TEXT_CAP = 128  # characters of a product, version or name kept


def _cpe(vendor: str, product: str, version: str = "") -> str:
    cpe = f"cpe:/a:{cpe_part(vendor)}:{cpe_part(product)}"
    return f"{cpe}:{cpe_part(version)}" if version else cpe


def _clean(text: str, cap: int = TEXT_CAP) -> str:
    return sanitize(text.encode("utf-8", "replace"), cap)


# -- MQTT 3.1.1 (OASIS mqtt-v3.1.1, section 3) --------------------------------------------

MQTT_VERSION_TOPIC = b"$SYS/broker/version"


def _mqtt_string(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


def _mqtt_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_request(client_id: bytes = b"portwatch") -> bytes:
    """CONNECT (clean session, keep-alive 10 s) then SUBSCRIBE to the broker's version
    topic, back to back: a client may send before CONNACK (3.1.4), so one round trip."""
    connect_body = _mqtt_string(b"MQTT") + b"\x04\x02\x00\x0a" + _mqtt_string(client_id)
    connect = b"\x10" + _mqtt_length(len(connect_body)) + connect_body
    subscribe_body = b"\x00\x01" + _mqtt_string(MQTT_VERSION_TOPIC) + b"\x00"
    subscribe = b"\x82" + _mqtt_length(len(subscribe_body)) + subscribe_body
    return connect + subscribe


MQTT_DISCONNECT = b"\xe0\x00"


def mqtt_packets(data: bytes) -> list[tuple[int, bytes]]:
    """(first byte: type << 4 | flags, body) of every whole packet at the start of
    ``data``; a cut or malformed packet ends the list."""
    packets: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data) and len(packets) < MAX_PACKETS:
        length, shift, i = 0, 0, pos + 1
        while True:
            if i >= len(data) or shift > 21:  # the length field is at most 4 bytes
                return packets
            byte = data[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        if i + length > len(data):
            return packets
        packets.append((data[pos], data[i:i + length]))
        pos = i + length
    return packets


_CONNACK_REFUSED = {1: "unacceptable protocol version", 2: "client identifier rejected",
                    3: "server unavailable", 4: "bad user name or password",
                    5: "not authorized"}
_MOSQUITTO = re.compile(r"^mosquitto version (\d[\w.\-]*)", re.I)
_BROKERS: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
    (_MOSQUITTO, "Mosquitto", "eclipse", "mosquitto"),
    (re.compile(r"^VerneMQ[/ ]v?(\d[\w.\-]*)", re.I), "VerneMQ", "octavolabs", "vernemq"),
    (re.compile(r"^(?:EMQX?|emqx)[/ ]v?(\d[\w.\-]*)", re.I), "EMQX", "emqx", "emqx"),
)


def parse_mqtt(data: bytes) -> ServiceInfo | None:
    """CONNACK, then (when accepted) the retained PUBLISH of ``$SYS/broker/version``."""
    packets = mqtt_packets(data)
    if not packets or packets[0][0] != 0x20 or len(packets[0][1]) != 2:  # CONNACK
        return None
    code = packets[0][1][1]
    if code in _CONNACK_REFUSED:
        return ServiceInfo(service="mqtt", extra_info=f"connection refused: "
                           f"{_CONNACK_REFUSED[code]}", method="probe:mqtt", confidence=9)
    if code != 0:
        return None
    for first, body in packets[1:]:
        if first >> 4 != 3 or len(body) < 2:  # PUBLISH
            continue
        topic_len = int.from_bytes(body[:2], "big")
        topic = body[2:2 + topic_len]
        qos = (first >> 1) & 0x3
        payload = body[2 + topic_len + (2 if qos else 0):]
        if topic != MQTT_VERSION_TOPIC:
            continue
        text = _clean(payload.decode("utf-8", "replace").strip())
        for pattern, product, vendor, cpe_name in _BROKERS:
            m = pattern.match(text)
            if m:
                return ServiceInfo(service="mqtt", product=product, version=m.group(1),
                                   extra_info=f"$SYS/broker/version: {text}",
                                   cpe=_cpe(vendor, cpe_name, m.group(1)),
                                   method="probe:mqtt-sys-version", confidence=10)
        return ServiceInfo(service="mqtt", extra_info=f"$SYS/broker/version: {text}",
                           method="probe:mqtt-sys-version", confidence=9)
    return ServiceInfo(service="mqtt", extra_info="connection accepted",
                       method="probe:mqtt", confidence=9)


# -- AMQP 0-9-1 (amqp0-9-1.pdf, 4.2.3 and 4.2.5.3 field tables) -----------------------------

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_FIELD_SIZES = {b"t": 1, b"b": 1, b"B": 1, b"s": 2, b"u": 2, b"I": 4, b"i": 4, b"l": 8,
                b"L": 8, b"f": 4, b"d": 8, b"D": 5, b"T": 8, b"V": 0}


class _Malformed(Exception):
    pass


def _take(data: bytes, pos: int, size: int) -> tuple[bytes, int]:
    if size < 0 or pos + size > len(data):
        raise _Malformed
    return data[pos:pos + size], pos + size


def _field_table(data: bytes, depth: int, budget: list[int]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    pos = 0
    while pos < len(data):
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise _Malformed
        raw_len, pos = _take(data, pos, 1)
        name, pos = _take(data, pos, raw_len[0])
        kind, pos = _take(data, pos, 1)
        value: Any
        if kind == b"S":
            raw, pos = _take(data, pos, 4)
            value, pos = _take(data, pos, int.from_bytes(raw, "big"))
        elif kind == b"F":
            raw, pos = _take(data, pos, 4)
            inner, pos = _take(data, pos, int.from_bytes(raw, "big"))
            value = _field_table(inner, depth + 1, budget)
        elif kind == b"A":
            raw, pos = _take(data, pos, 4)
            value, pos = _take(data, pos, int.from_bytes(raw, "big"))  # kept raw, unused
        elif kind in _FIELD_SIZES:
            value, pos = _take(data, pos, _FIELD_SIZES[kind])
        else:
            raise _Malformed
        table[name.decode("latin-1")] = value
    return table


def parse_amqp(data: bytes) -> ServiceInfo | None:
    """``Connection.Start`` (method frame, class 10 method 10): protocol version and the
    server-properties ``product``/``version``/``platform``; or the header a broker sends
    back when it wants another protocol version."""
    if data.startswith(b"AMQP") and len(data) >= 8:
        wanted = ".".join(str(b) for b in data[5:8])
        return ServiceInfo(service="amqp", extra_info=f"wants AMQP {wanted}",
                           method="probe:amqp", confidence=8)
    if len(data) < 7 + 4 + 2 or data[0] != 1:
        return None
    size = int.from_bytes(data[3:7], "big")
    payload = data[7:7 + size]
    if len(payload) < max(size, 6) or payload[:4] != b"\x00\x0a\x00\x0a":
        return None  # (a frame too short for its version bytes is no Connection.Start)
    major, minor = payload[4], payload[5]
    try:
        raw, pos = _take(payload, 6, 4)
        props_raw, _ = _take(payload, pos, int.from_bytes(raw, "big"))
        props = _field_table(props_raw, 0, [MAX_FIELDS])
    except _Malformed:
        return ServiceInfo(service="amqp", extra_info=f"AMQP {major}-{minor}",
                           method="probe:amqp-connection-start", confidence=9)

    def text(key: str) -> str:
        value = props.get(key)
        return _clean(value.decode("utf-8", "replace")) if isinstance(value, bytes) else ""

    product, version, platform = text("product"), text("version"), text("platform")
    extra = "; ".join(x for x in (f"AMQP {major}-{minor}", platform) if x)
    cpe = ""
    if product.lower() == "rabbitmq":
        cpe = _cpe("vmware", "rabbitmq", version)
    elif product:
        cpe = _cpe(product, product, version)
    return ServiceInfo(service="amqp", product=product, version=version, extra_info=extra,
                       cpe=cpe, method="probe:amqp-connection-start",
                       confidence=10 if product else 9)


# -- Elasticsearch / OpenSearch and Kubernetes JSON version documents --------------------


def _json_body(body: bytes) -> dict[str, Any] | None:
    text = body[:JSON_CAP].strip()
    if not text.startswith(b"{"):
        return None
    try:
        value = json.loads(text.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


_VERSION_TEXT = re.compile(r"^v?(\d+(?:\.\d+){0,3}[\w.\-+]*)$")


def _version_text(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    m = _VERSION_TEXT.match(value.strip()[:TEXT_CAP])
    return _clean(m.group(1)) if m else ""


def parse_search_root(body: bytes, *, is_tls: bool = False) -> ServiceInfo | None:
    """Elasticsearch's (or OpenSearch's) answer to ``GET /``: the cluster's version."""
    doc = _json_body(body)
    if doc is None:
        return None
    version_doc = doc.get("version")
    if not isinstance(version_doc, dict):
        return None
    tagline = doc.get("tagline")
    is_opensearch = version_doc.get("distribution") == "opensearch"
    if not is_opensearch and tagline != "You Know, for Search":
        return None
    version = _version_text(version_doc.get("number"))
    product, vendor, name = (("OpenSearch", "amazon", "opensearch") if is_opensearch
                             else ("Elasticsearch", "elastic", "elasticsearch"))
    cluster = doc.get("cluster_name")
    extra = f"cluster: {_clean(cluster)}" if isinstance(cluster, str) else ""
    return ServiceInfo(service="https" if is_tls else "http", product=product,
                       version=version, extra_info=extra, cpe=_cpe(vendor, name, version),
                       is_tls=is_tls, method="http:json-version", confidence=10)


def parse_search_refusal(body: bytes, *, is_tls: bool = False) -> ServiceInfo | None:
    """Elasticsearch with security on (the 8.x default) refuses an anonymous ``GET /``
    with a ``security_exception``: the product is named, its version is not sent."""
    doc = _json_body(body)
    error = doc.get("error") if doc is not None else None
    causes = error.get("root_cause") if isinstance(error, dict) else None
    first = causes[0] if isinstance(causes, list) and causes else None
    if not isinstance(first, dict) or first.get("type") != "security_exception":
        return None
    reason = first.get("reason")
    if not isinstance(reason, str) or "REST request" not in reason:
        return None
    return ServiceInfo(service="https" if is_tls else "http", product="Elasticsearch",
                       extra_info="authentication required",
                       cpe=_cpe("elastic", "elasticsearch"), is_tls=is_tls,
                       method="http:json-refusal", confidence=9)


def is_kubernetes_status(body: bytes) -> bool:
    """The API server's refusal of an anonymous ``GET /`` (a ``Status`` object): worth
    asking ``/version``, which is readable anonymously by default."""
    doc = _json_body(body)
    return doc is not None and doc.get("kind") == "Status" and doc.get("apiVersion") == "v1"


def parse_kubernetes_version(body: bytes, *, is_tls: bool = True) -> ServiceInfo | None:
    """``GET /version``: ``gitVersion`` (v1.28.2), and the platform."""
    doc = _json_body(body)
    if doc is None or not isinstance(doc.get("gitVersion"), str) or "major" not in doc:
        return None
    version = _version_text(doc.get("gitVersion"))
    platform = doc.get("platform")
    extra = f"platform: {_clean(platform)}" if isinstance(platform, str) else ""
    return ServiceInfo(service="https" if is_tls else "http", product="Kubernetes API server",
                       version=version, extra_info=extra,
                       cpe=_cpe("kubernetes", "kubernetes", version), is_tls=is_tls,
                       method="http:kubernetes-version", confidence=10)


# -- SMB2 NEGOTIATE ([MS-SMB2] 2.2.3 / 2.2.4) and the NTLMSSP challenge ([MS-NLMP] 2.2.1.2) -

SMB2_DIALECTS = (0x0202, 0x0210, 0x0300, 0x0302, 0x0311)
_DIALECT_NAMES = {0x0202: "2.0.2", 0x0210: "2.1", 0x0300: "3.0", 0x0302: "3.0.2",
                  0x0311: "3.1.1", 0x02FF: "2.???"}


def smb2_negotiate_request() -> bytes:
    """SMB2 NEGOTIATE offering 2.0.2 to 3.0.2 in a NetBIOS session message. 3.1.1 needs
    negotiate contexts (preauth integrity); without them a server picks 3.0.2 or lower,
    which is enough to know that it speaks SMB2/3 and how far."""
    dialects = (0x0202, 0x0210, 0x0300, 0x0302)
    header = (b"\xfeSMB" + struct.pack("<H", 64) + b"\x00\x00" + b"\x00" * 4
              + struct.pack("<HH", 0, 1) + struct.pack("<II", 0, 0) + struct.pack("<Q", 0)
              + struct.pack("<I", 0) + struct.pack("<I", 0) + struct.pack("<Q", 0)
              + b"\x00" * 16)
    body = struct.pack("<HHHHI", 36, len(dialects), 1, 0, 0x7F) + b"portwatch-probe!"
    body += struct.pack("<IHH", 0, 0, 0) + b"".join(struct.pack("<H", d) for d in dialects)
    message = header + body
    return b"\x00" + len(message).to_bytes(3, "big") + message


def parse_smb2_negotiate(data: bytes) -> ServiceInfo | None:
    """Dialect, signing requirement and server GUID from an SMB2 NEGOTIATE response; an
    SMB1 answer (\\xffSMB) says the server speaks only SMB1."""
    if len(data) < 4 or data[0] != 0:
        return None
    message = data[4:4 + int.from_bytes(data[1:4], "big")]
    if message[:4] == b"\xffSMB":
        return ServiceInfo(service="microsoft-ds", extra_info="SMB1 only",
                           method="probe:smb2-negotiate", confidence=8)
    if message[:4] != b"\xfeSMB" or len(message) < 64 + 64:
        return None
    status = int.from_bytes(message[8:12], "little")
    command = int.from_bytes(message[12:14], "little")
    if command != 0:
        return None
    if status != 0:
        return ServiceInfo(service="microsoft-ds", extra_info=f"negotiate refused: "
                           f"0x{status:08x}", method="probe:smb2-negotiate", confidence=8)
    body = message[64:]
    security_mode = int.from_bytes(body[2:4], "little")
    dialect = int.from_bytes(body[4:6], "little")
    guid = body[8:24].hex()
    name = _DIALECT_NAMES.get(dialect, f"0x{dialect:04x}")
    signing = "signing required" if security_mode & 0x2 else "signing enabled, not required"
    return ServiceInfo(service="microsoft-ds", extra_info=f"SMB dialect {name}; {signing}; "
                       f"server GUID {guid}", method="probe:smb2-negotiate", confidence=8)


def _smb2_header(command: int, message_id: int) -> bytes:
    header = (b"\xfeSMB" + struct.pack("<HH", 64, 0) + b"\x00" * 4
              + struct.pack("<HH", command, 1) + struct.pack("<II", 0, 0)
              + struct.pack("<Q", message_id) + struct.pack("<II", 0, 0)
              + struct.pack("<Q", 0) + b"\x00" * 16)
    return header


# NTLMSSP NEGOTIATE ([MS-NLMP] 2.2.1.1): flags UNICODE | OEM | REQUEST_TARGET | NTLM |
# ALWAYS_SIGN | EXTENDED_SESSIONSECURITY | VERSION | 128 | 56, no domain or workstation.
_NTLM_NEGOTIATE = (b"NTLMSSP\x00" + struct.pack("<I", 1) + struct.pack("<I", 0xA2088207)
                   + b"\x00" * 16 + b"\x06\x01\xb1\x1d\x00\x00\x00\x0f")


def _der(tag: int, content: bytes) -> bytes:
    return _ber(tag, content)


def smb2_session_setup_request(message_id: int = 1) -> bytes:
    """SMB2 SESSION_SETUP carrying SPNEGO(NTLMSSP NEGOTIATE): the server's CHALLENGE
    names it (NetBIOS and DNS names, OS version) before any credential is sent."""
    mech = _der(0x30, _der(0x06, bytes.fromhex("2b06010401823702020a")))  # NTLMSSP OID
    init = _der(0x30, _der(0xA0, mech) + _der(0xA2, _der(0x04, _NTLM_NEGOTIATE)))
    token = _der(0x60, _der(0x06, bytes.fromhex("2b0601050502")) + _der(0xA0, init))
    body = struct.pack("<HBBIIHHQ", 25, 0, 1, 0, 0, 64 + 24, len(token), 0) + token
    message = _smb2_header(1, message_id) + body
    return b"\x00" + len(message).to_bytes(3, "big") + message


_AV_NAMES = {1: "NetBIOS name", 2: "NetBIOS domain", 3: "DNS name", 4: "DNS domain",
             5: "DNS forest"}


def parse_ntlm_challenge(data: bytes) -> str:
    """'NetBIOS name ...; DNS domain ...; OS version 10.0 build 20348' from the NTLMSSP
    CHALLENGE inside any answer ([MS-NLMP] 2.2.1.2, 2.2.2.1, 2.2.2.10), or ""."""
    at = data.find(b"NTLMSSP\x00\x02\x00\x00\x00")
    if at < 0:
        return ""
    msg = data[at:]
    if len(msg) < 56:
        return ""
    info_len, info_offset = struct.unpack("<HxxI", msg[40:48])
    parts: list[str] = []
    info = msg[info_offset:info_offset + info_len] if info_offset >= 48 else b""
    pos = 0
    while pos + 4 <= len(info) and len(parts) < 8:
        av_id, av_len = struct.unpack("<HH", info[pos:pos + 4])
        if av_id == 0:
            break
        value = info[pos + 4:pos + 4 + av_len]
        pos += 4 + av_len
        if av_id in _AV_NAMES and value:
            parts.append(f"{_AV_NAMES[av_id]} "
                         f"{_clean(value.decode('utf-16-le', 'replace'), 64)}")
    flags = int.from_bytes(msg[20:24], "little")
    if flags & 0x02000000:  # NEGOTIATE_VERSION: 8 bytes after the fixed fields
        major, minor, build = msg[48], msg[49], int.from_bytes(msg[50:52], "little")
        parts.append(f"OS version {major}.{minor} build {build}")
    return "; ".join(parts)


# -- SNMP (RFC 3416 PDUs in BER; RFC 3414 engine discovery) -------------------------------

SYS_DESCR_OID = bytes.fromhex("2b06010201010100")  # 1.3.6.1.2.1.1.1.0


def _ber(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def snmp_v2c_get_sysdescr(community: bytes, request_id: int = 0x5057) -> bytes:
    varbind = _ber(0x30, _ber(0x06, SYS_DESCR_OID) + b"\x05\x00")
    pdu = _ber(0xA0, _ber(0x02, request_id.to_bytes(2, "big")) + b"\x02\x01\x00\x02\x01\x00"
               + _ber(0x30, varbind))
    return _ber(0x30, b"\x02\x01\x01" + _ber(0x04, community) + pdu)


def snmp_v3_discovery(message_id: int = 0x5057) -> bytes:
    """An SNMPv3 GetRequest with an empty engine ID and no user (RFC 3414 4): an agent
    answers with a Report carrying its engine ID. No community, no credentials."""
    global_data = _ber(0x30, _ber(0x02, message_id.to_bytes(2, "big"))
                       + _ber(0x02, (65507).to_bytes(3, "big")) + _ber(0x04, b"\x04")
                       + b"\x02\x01\x03")
    usm = _ber(0x04, _ber(0x30, _ber(0x04, b"") + b"\x02\x01\x00\x02\x01\x00"
                          + _ber(0x04, b"") + _ber(0x04, b"") + _ber(0x04, b"")))
    pdu = _ber(0xA0, b"\x02\x02" + message_id.to_bytes(2, "big") + b"\x02\x01\x00\x02\x01\x00"
               + _ber(0x30, b""))
    scoped = _ber(0x30, _ber(0x04, b"") + _ber(0x04, b"") + pdu)
    return _ber(0x30, b"\x02\x01\x03" + global_data + usm + scoped)


def _ber_header(data: bytes, at: int, *, max_size: int = 8) -> tuple[int, int, int] | None:
    """(tag, length, start of the value) of the BER element at ``at``; None when cut, or
    its length takes more than ``max_size`` bytes."""
    if at + 2 > len(data):
        return None
    tag, first = data[at], data[at + 1]
    if first < 0x80:
        return tag, first, at + 2
    size = first & 0x7F
    if not 1 <= size <= max_size or at + 2 + size > len(data):
        return None
    return tag, int.from_bytes(data[at + 2:at + 2 + size], "big"), at + 2 + size


def carries_snmp_community(payload: bytes) -> bool:
    """An SNMPv1/v2c message with a community (``SEQUENCE { INTEGER version 0|1,
    OCTET STRING community, ... }``): a credential guess, sent only when the user allows
    it (nmap-payloads' "SNMP PUBLIC WALK" on 161, 260 and 3401, and nmap's SNMPv1public
    probe, asked "public" on a default scan: a review). Read from the header on, as an
    agent reads it: a message longer or shorter than its outer length says, lengths in
    long form, a version in more bytes than it needs (net-snmp answers all of them)."""
    outer = _ber_header(payload, 0)
    if outer is None or outer[0] != 0x30:
        return False
    version = _ber_header(payload, outer[2])
    if version is None or version[0] != 0x02 or not 1 <= version[1] <= 8:
        return False
    end = version[2] + version[1]
    if end > len(payload) or int.from_bytes(payload[version[2]:end], "big") not in (0, 1):
        return False
    community = _ber_header(payload, end)
    return community is not None and community[0] == 0x04 and community[1] > 0


def _ber_items(data: bytes) -> list[tuple[int, bytes]]:
    """The TLV items directly inside ``data``; stops at the first malformed one."""
    items: list[tuple[int, bytes]] = []
    pos = 0
    while len(items) < 32:
        header = _ber_header(data, pos, max_size=3)
        if header is None:
            break
        tag, length, start = header
        if start + length > len(data):
            break
        items.append((tag, data[start:start + length]))
        pos = start + length
    return items


# Private enterprise numbers (IANA) seen in engine IDs, and what they name.
_ENTERPRISES: dict[int, tuple[str, str, str]] = {
    8072: ("net-snmp", "net-snmp", "net-snmp"),  # spelled as nmap spells it
    2021: ("net-snmp (UCD)", "net-snmp", "net-snmp"),
    9: ("Cisco SNMP service", "cisco", "ios"),
    311: ("Microsoft SNMP service", "microsoft", "windows"),
    4526: ("Netgear SNMP service", "netgear", "netgear"),
    2636: ("Juniper SNMP service", "juniper", "junos"),
}


def parse_snmp(data: bytes) -> ServiceInfo | None:
    """A v1/v2c GetResponse (sysDescr.0 text) or a v3 Report (engine ID -> enterprise)."""
    outer = _ber_items(data)
    if not outer or outer[0][0] != 0x30:
        return None
    fields = _ber_items(outer[0][1])
    if len(fields) < 3 or fields[0][0] != 0x02:
        return None
    version = int.from_bytes(fields[0][1][:2], "big")
    if version in (0, 1) and fields[2][0] == 0xA2:  # GetResponse
        pdu = _ber_items(fields[2][1])
        if len(pdu) < 4:
            return ServiceInfo(service="snmp", method="probe:snmp-get", confidence=8)
        binds = _ber_items(pdu[3][1])
        for _, bind in binds:
            parts = _ber_items(bind)
            if len(parts) == 2 and parts[0] == (0x06, SYS_DESCR_OID) and parts[1][0] == 0x04:
                descr = _clean(parts[1][1].decode("utf-8", "replace"), 256)
                return ServiceInfo(service="snmp", extra_info=f"sysDescr: {descr}",
                                   method="probe:snmp-sysdescr", confidence=9)
        return ServiceInfo(service="snmp", method="probe:snmp-get", confidence=8)
    if version == 3 and len(fields) >= 4 and fields[2][0] == 0x04:
        # An agent answers with a Report (or a Response) in the scoped PDU; our own
        # discovery request echoed back (a GetRequest) is neither: an echo service on
        # 161 read as a red SNMP agent (a review, 2026-12-06; nmap says "echo")
        scoped = _ber_items(fields[3][1]) if fields[3][0] == 0x30 else []
        if len(scoped) < 3 or scoped[2][0] not in (0xA2, 0xA8):
            return None
        usm = _ber_items(fields[2][1])
        params = _ber_items(usm[0][1]) if usm and usm[0][0] == 0x30 else []
        engine_id = params[0][1] if params and params[0][0] == 0x04 else b""
        if len(engine_id) < 5:
            return ServiceInfo(service="snmp", extra_info="SNMPv3", method="probe:snmp-v3",
                               confidence=8)
        enterprise = int.from_bytes(engine_id[:4], "big") & 0x7FFFFFFF
        boots = int.from_bytes(params[1][1][:4], "big") if len(params) > 2 else 0
        uptime = int.from_bytes(params[2][1][:4], "big") if len(params) > 2 else 0
        extra = (f"SNMPv3; engine ID {engine_id[:32].hex()}; enterprise {enterprise}; "
                 f"engine boots {boots}; engine time {uptime} s")
        known = _ENTERPRISES.get(enterprise)
        if known is None:
            return ServiceInfo(service="snmp", extra_info=extra, method="probe:snmp-v3",
                               confidence=9)
        product, vendor, name = known
        return ServiceInfo(service="snmp", product=product, extra_info=extra,
                           cpe=_cpe(vendor, name), method="probe:snmp-v3", confidence=10)
    return None


# -- Kafka: ApiVersions ------------------------------------------------------------------
#
# nmap does not know the Kafka protocol (its services file calls 9092 "XmlIpcRegSvc").
# Version 0 of ApiVersions is the one request every broker answers, whatever it
# supports: a broker that does not know a request's version answers UNSUPPORTED_VERSION
# in version 0's format, listing its own range (KIP-35, KIP-511). The answer names the
# protocol, not the implementation (Apache Kafka, Redpanda and others all speak it), so
# no product is claimed.

KAFKA_API_VERSIONS = 18
KAFKA_CORRELATION_ID = 0x70770001  # "pw" and 1: an answer must echo it
KAFKA_MAX_APIS = 1_000  # api keys read from one answer (Kafka 3.9 lists 61)
KAFKA_FRAME_CAP = 16_384  # bytes an ApiVersions answer may take
_KAFKA_ROLES = ((0, "broker"), (52, "KRaft controller"))  # Produce; Vote
_KAFKA_ERRORS = {35: "UNSUPPORTED_VERSION"}  # others are shown by number


def kafka_api_versions_request(correlation_id: int = KAFKA_CORRELATION_ID,
                               client_id: bytes = b"portwatch") -> bytes:
    """An ApiVersions request, version 0: size, api key 18, version 0, correlation id,
    client id; no body."""
    body = (struct.pack(">hhih", KAFKA_API_VERSIONS, 0, correlation_id, len(client_id))
            + client_id)
    return struct.pack(">i", len(body)) + body


def is_whole_kafka_frame(data: bytes) -> bool:
    """A size-prefixed Kafka frame is all here (or claims more than any answer takes)."""
    if len(data) < 4:
        return False
    size = int.from_bytes(data[:4], "big")
    return size > KAFKA_FRAME_CAP or len(data) >= 4 + size


def parse_kafka_api_versions(data: bytes, correlation_id: int = KAFKA_CORRELATION_ID
                             ) -> ServiceInfo | None:
    """A version 0 ApiVersions answer: size, the correlation id we sent, error code, then
    (api key, min version, max version) per API, ApiVersions itself among them. Anything
    else (another id, a count the frame cannot hold, a negative range) is not Kafka."""
    if len(data) < 14:
        return None
    size, echoed, error, count = struct.unpack_from(">iihi", data)
    if (echoed != correlation_id or not 10 <= size <= KAFKA_FRAME_CAP
            or len(data) < 4 + size or not 1 <= count <= KAFKA_MAX_APIS
            or 14 + 6 * count > 4 + size):
        return None
    apis: dict[int, tuple[int, int]] = {}
    for key, low, high in struct.iter_unpack(">hhh", data[14:14 + 6 * count]):
        if key < 0 or low < 0 or high < low or key in apis:
            return None
        apis[key] = (low, high)
    if KAFKA_API_VERSIONS not in apis:
        return None
    roles = [name for key, name in _KAFKA_ROLES if key in apis]
    low, high = apis[KAFKA_API_VERSIONS]
    parts = [f"Kafka protocol, {len(apis)} APIs", *roles, f"ApiVersions v{low}-v{high}"]
    if 1 in apis:
        parts.append(f"Fetch v{apis[1][0]}-v{apis[1][1]}")
    if error:
        parts.append(f"error {_KAFKA_ERRORS.get(error, error)}")
    return ServiceInfo(service="kafka", extra_info="; ".join(parts),
                       method="probe:kafka-apiversions", confidence=10)


# -- memcached ------------------------------------------------------------------------------

# The text protocol's ``version`` command (memcached protocol.txt, "General-purpose
# commands"): "VERSION <version>\r\n", on a server that asks no authentication. A
# SASL-only server answers ERROR-class lines: named by nmap's probes, without a version.
MEMCACHED_VERSION_REQUEST = b"version\r\n"
_MEMCACHED_VERSION = re.compile(rb"VERSION (\d{1,4}(?:\.\d{1,6}){1,3}[0-9A-Za-z.+~-]{0,24})\r\n")


def parse_memcached_version(data: bytes) -> ServiceInfo | None:
    """memcached's answer to ``version``; None for anything else."""
    found = _MEMCACHED_VERSION.match(data)
    if found is None:
        return None
    version = found.group(1).decode("ascii")
    return ServiceInfo(service="memcached", product="Memcached", version=version,
                       cpe=_cpe("memcached", "memcached", version),
                       method="probe:memcached-version", confidence=10)


__all__ = ["AMQP_HEADER", "MEMCACHED_VERSION_REQUEST", "MQTT_DISCONNECT",
           "is_kubernetes_status", "is_whole_kafka_frame", "kafka_api_versions_request",
           "mqtt_packets", "mqtt_request", "parse_amqp", "parse_kafka_api_versions",
           "parse_kubernetes_version", "parse_memcached_version", "parse_mqtt",
           "parse_ntlm_challenge", "parse_search_refusal", "parse_search_root",
           "parse_smb2_negotiate", "parse_snmp", "smb2_negotiate_request",
           "smb2_session_setup_request", "snmp_v2c_get_sysdescr", "snmp_v3_discovery"]
