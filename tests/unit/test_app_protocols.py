"""Parsers of what brokers, SMB, SNMP and JSON version endpoints answer: recorded samples,
and hostile bytes (hypothesis): any input gives None or a bounded identification."""

from __future__ import annotations

import json
import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from probers.service.app_protocols import (
    AMQP_HEADER,
    KAFKA_CORRELATION_ID,
    is_kubernetes_status,
    is_whole_kafka_frame,
    kafka_api_versions_request,
    mqtt_packets,
    mqtt_request,
    parse_amqp,
    parse_kafka_api_versions,
    parse_kubernetes_version,
    parse_memcached_version,
    parse_mqtt,
    parse_ntlm_challenge,
    parse_search_refusal,
    parse_search_root,
    parse_smb2_negotiate,
    parse_snmp,
    smb2_negotiate_request,
    smb2_session_setup_request,
    snmp_v2c_get_sysdescr,
    snmp_v3_discovery,
)
from probers.service.banners import parse_foreign_reply

# Recorded from Debian 12's mosquitto 2.0.11 (allow_anonymous true): CONNACK, SUBACK,
# then the retained PUBLISH of $SYS/broker/version.
MOSQUITTO = bytes.fromhex(
    "200200009003000100312d0013245359532f62726f6b65722f76657273696f6e6d6f7371756974746f20"
    "76657273696f6e20322e302e3131")
# Recorded from Debian 12's rabbitmq-server 3.10.8: Connection.Start.
RABBITMQ = bytes.fromhex(
    "010000000001f0000a000a0009000001cb0c6361706162696c697469657346000000c7127075626c6973"
    "6865725f636f6e6669726d7374011a65786368616e67655f65786368616e67655f62696e64696e677374"
    "010a62617369632e6e61636b740116636f6e73756d65725f63616e63656c5f6e6f74696679740112636f"
    "6e6e656374696f6e2e626c6f636b6564740113636f6e73756d65725f7072696f72697469657374011c61"
    "757468656e7469636174696f6e5f6661696c7572655f636c6f73657401107065725f636f6e73756d6572"
    "5f716f7374010f6469726563745f7265706c795f746f74010c636c75737465725f6e616d655300000009"
    "70777465737440766d09636f707972696768745300000037436f70797269676874202863292032303037"
    "2d3230323220564d776172652c20496e632e206f722069747320616666696c69617465732e0b696e666f"
    "726d6174696f6e53000000394c6963656e73656420756e64657220746865204d504c20322e302e205765"
    "62736974653a2068747470733a2f2f7261626269746d712e636f6d08706c6174666f726d530000001145"
    "726c616e672f4f54502032352e322e330770726f6475637453000000085261626269744d510776657273"
    "696f6e5300000006332e31302e380000000e414d51504c41494e20504c41494e00000005656e5f5553ce")
# Recorded from Apache Kafka 3.9.1 (KRaft, `make kafka-up`): the ApiVersions v0 answers
# of its broker listener (9092) and of its controller listener (9093).
KAFKA_BROKER = bytes.fromhex(
    "000001787077000100000000003d00000000000b00010000001100020000000900030000000c00080000"
    "0009000900000009000a00000006000b00000009000c00000004000d00000005000e00000005000f0000"
    "000500100000000500110000000100120000000400130000000700140000000600150000000200160000"
    "0005001700000004001800000005001900000004001a00000004001b00000001001c00000004001d0000"
    "0003001e00000003001f0000000300200000000400210000000200220000000200230000000400240000"
    "0002002500000003002600000003002700000002002800000002002900000003002a00000002002b0000"
    "0002002c00000001002d00000000002e00000000002f0000000000300000000100310000000100320000"
    "0000003300000000003700000002003900000001003c00000001003d0000000000400000000000410000"
    "0000004200000001004400000000004500000000004a00000000004b0000000000500000000000510000"
    "0000")
KAFKA_CONTROLLER = bytes.fromhex(
    "000001067077000100000000002a00010000001100070000000300110000000100120000000400130000"
    "0007001400000006001d00000003001e00000003001f0000000300200000000400210000000200240000"
    "0002002500000003002600000003002700000002002800000002002900000003002b00000002002c0000"
    "0001002d00000000002e0000000000310000000100320000000000330000000000340000000100350000"
    "0001003600000001003700000002003800000003003900000001003a00000000003b00000001003c0000"
    "0001003e00000004003f0000000100400000000000430000000000460000000000490000000000500000"
    "0000005100000000005200000000")
# Recorded from Debian 12's snmpd 5.9.3: the Report to an engine-discovery request, and
# the GetResponse to GET sysDescr.0 with community "public".
NET_SNMP_REPORT = bytes.fromhex(
    "306d020103300f02025057020300ffe30401000201030421301f041180001f88802a0cff2ad9430f6b00"
    "0000000201010201020400040004003034041180001f88802a0cff2ad9430f6b000000000400a81d0202"
    "50570201000201003011300f060a2b060106030f01010400410101")
NET_SNMP_SYSDESCR = bytes.fromhex(
    "303b02010104067075626c6963a22e020250570201000201003022302006082b06010201010100041470"
    "6f727477617463682074657374206167656e74")
# Elasticsearch 8.11's answer to GET / (as its reference documentation shows it).
ELASTICSEARCH_ROOT = json.dumps({
    "name": "node-1", "cluster_name": "docker-cluster", "cluster_uuid": "Qw3Uv2TgSs2l",
    "version": {"number": "8.11.1", "build_flavor": "default", "build_type": "docker",
                "lucene_version": "9.8.0"},
    "tagline": "You Know, for Search"}).encode()
OPENSEARCH_ROOT = json.dumps({
    "name": "os-1", "cluster_name": "opensearch",
    "version": {"distribution": "opensearch", "number": "2.11.0"},
    "tagline": "The OpenSearch Project: https://opensearch.org/"}).encode()
K8S_VERSION = json.dumps({
    "major": "1", "minor": "28", "gitVersion": "v1.28.2", "gitCommit": "89a4ea3e",
    "gitTreeState": "clean", "buildDate": "2023-09-13T09:29:07Z", "goVersion": "go1.20.8",
    "compiler": "gc", "platform": "linux/amd64"}).encode()
K8S_FORBIDDEN = json.dumps({
    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
    "message": 'forbidden: User "system:anonymous" cannot get path "/"', "reason": "Forbidden",
    "details": {}, "code": 403}).encode()


def _info_tuple(info: object) -> tuple[str, str, str, str, str]:
    assert info is not None
    return (info.service, info.product, info.version, info.cpe,  # type: ignore[attr-defined]
            info.method)  # type: ignore[attr-defined]


def test_mosquitto_names_itself_on_its_version_topic() -> None:
    assert _info_tuple(parse_mqtt(MOSQUITTO)) == (
        "mqtt", "Mosquitto", "2.0.11", "cpe:/a:eclipse:mosquitto:2.0.11",
        "probe:mqtt-sys-version")


def test_mqtt_refused_and_accepted_without_version() -> None:
    refused = parse_mqtt(b"\x20\x02\x00\x05")
    assert refused is not None and refused.service == "mqtt"
    assert refused.extra_info == "connection refused: not authorized" and not refused.product
    accepted = parse_mqtt(b"\x20\x02\x00\x00\x90\x03\x00\x01\x80")
    assert accepted is not None and accepted.extra_info == "connection accepted"
    assert parse_mqtt(b"HTTP/1.1 400 Bad Request\r\n") is None


def test_mqtt_request_is_connect_then_subscribe() -> None:
    packets = mqtt_packets(mqtt_request())
    assert [first for first, _ in packets] == [0x10, 0x82]
    assert packets[0][1][:7] == b"\x00\x04MQTT\x04"
    assert packets[1][1].endswith(b"$SYS/broker/version\x00")


def test_rabbitmq_connection_start() -> None:
    info = parse_amqp(RABBITMQ)
    assert _info_tuple(info) == ("amqp", "RabbitMQ", "3.10.8",
                                 "cpe:/a:vmware:rabbitmq:3.10.8",
                                 "probe:amqp-connection-start")
    assert info is not None and info.extra_info == "AMQP 0-9; Erlang/OTP 25.2.3"


def test_amqp_header_reply_is_tentative_and_names_what_it_wants() -> None:
    # A broker's answer to GET / (its header, then close) puts the AMQP probe next
    reply = parse_foreign_reply(AMQP_HEADER)
    assert reply is not None and (reply.service, reply.confidence) == ("amqp", 6)
    wants = parse_amqp(b"AMQP\x00\x00\x09\x01")
    assert wants is not None and wants.extra_info == "wants AMQP 0.9.1"


def test_amqp_cut_or_malformed_properties_keep_the_service_only() -> None:
    cut = RABBITMQ[:200]
    assert parse_amqp(cut) is None  # the frame is not whole
    # A whole frame whose table has an unknown field type
    table = b"\x07productX\x00"
    payload = b"\x00\x0a\x00\x0a\x00\x09" + struct.pack(">I", len(table)) + table
    frame = b"\x01\x00\x00" + struct.pack(">I", len(payload)) + payload + b"\xce"
    info = parse_amqp(frame)
    assert info is not None and (info.service, info.product) == ("amqp", "")


def test_net_snmp_engine_discovery_and_sysdescr() -> None:
    info = parse_snmp(NET_SNMP_REPORT)
    assert _info_tuple(info) == ("snmp", "net-snmp", "", "cpe:/a:net-snmp:net-snmp",
                                 "probe:snmp-v3")
    assert info is not None and "enterprise 8072" in info.extra_info
    descr = parse_snmp(NET_SNMP_SYSDESCR)
    assert descr is not None and descr.extra_info == "sysDescr: portwatch test agent"


def test_our_own_snmp_requests_echoed_back_are_not_an_agent() -> None:
    # an echo service on 161 answers our request with itself: nmap says "echo", not an
    # SNMP agent (a review read it red "snmp")
    assert parse_snmp(snmp_v3_discovery()) is None
    assert parse_snmp(snmp_v2c_get_sysdescr(b"public")) is None


def test_snmp_requests_are_well_formed_ber() -> None:
    v3 = snmp_v3_discovery()
    assert v3[0] == 0x30 and v3[1] == len(v3) - 2 and v3[2:5] == b"\x02\x01\x03"
    v2c = snmp_v2c_get_sysdescr(b"public")
    assert v2c[0] == 0x30 and v2c[1] == len(v2c) - 2
    assert b"\x04\x06public\xa0" in v2c


def test_elasticsearch_and_opensearch_roots() -> None:
    assert _info_tuple(parse_search_root(ELASTICSEARCH_ROOT)) == (
        "http", "Elasticsearch", "8.11.1", "cpe:/a:elastic:elasticsearch:8.11.1",
        "http:json-version")
    assert _info_tuple(parse_search_root(OPENSEARCH_ROOT, is_tls=True)) == (
        "https", "OpenSearch", "2.11.0", "cpe:/a:amazon:opensearch:2.11.0",
        "http:json-version")
    assert parse_search_root(b'{"version": {"number": "1.0"}}') is None  # not a search node


def test_elasticsearch_with_security_on_is_named_without_version() -> None:
    # Elasticsearch 8's answer to an anonymous GET / (its documented 401 body)
    refusal = json.dumps({"error": {"root_cause": [{
        "type": "security_exception",
        "reason": "missing authentication credentials for REST request [/]",
        "header": {"WWW-Authenticate": ["Basic realm=\"security\" charset=\"UTF-8\"",
                                        "ApiKey"]}}],
        "type": "security_exception",
        "reason": "missing authentication credentials for REST request [/]"},
        "status": 401}).encode()
    info = parse_search_refusal(refusal, is_tls=True)
    assert _info_tuple(info) == ("https", "Elasticsearch", "", "cpe:/a:elastic:elasticsearch",
                                 "http:json-refusal")
    assert parse_search_refusal(K8S_FORBIDDEN) is None


def test_kubernetes_status_then_version() -> None:
    assert is_kubernetes_status(K8S_FORBIDDEN)
    assert not is_kubernetes_status(ELASTICSEARCH_ROOT)
    info = parse_kubernetes_version(K8S_VERSION)
    assert _info_tuple(info) == ("https", "Kubernetes API server", "1.28.2",
                                 "cpe:/a:kubernetes:kubernetes:1.28.2",
                                 "http:kubernetes-version")
    assert info is not None and info.extra_info == "platform: linux/amd64"


def test_smb2_negotiate_request_layout_and_a_response() -> None:
    request = smb2_negotiate_request()
    assert request[0] == 0 and int.from_bytes(request[1:4], "big") == len(request) - 4
    assert request[4:8] == b"\xfeSMB" and request[4 + 64:4 + 66] == b"\x24\x00"
    # A negotiate response choosing 3.0.2 with signing required (built from [MS-SMB2])
    header = b"\xfeSMB" + struct.pack("<HH", 64, 0) + b"\x00" * 4 + struct.pack("<HH", 0, 1)
    header += b"\x00" * (64 - len(header))
    body = struct.pack("<HHHH", 65, 0x3, 0x0302, 0) + bytes(range(16)) + b"\x00" * 40
    message = header + body
    info = parse_smb2_negotiate(b"\x00" + len(message).to_bytes(3, "big") + message)
    assert info is not None and info.service == "microsoft-ds"
    assert info.extra_info == ("SMB dialect 3.0.2; signing required; server GUID "
                               "000102030405060708090a0b0c0d0e0f")


# -- hostile bytes ---------------------------------------------------------------------

# Recorded from Debian 12's Samba 4.17 (host "vm"): SESSION_SETUP answered with
# STATUS_MORE_PROCESSING_REQUIRED and SPNEGO(NTLMSSP CHALLENGE).
SAMBA_CHALLENGE = bytes.fromhex(
    "000000ccfe534d4240000000160000c0010001000100000000000000010000000000000000000000000000"
    "009782078700000000000000000000000000000000000000000900000048008400a18181307fa0030a0101"
    "a10c060a2b06010401823702020aa26a04684e544c4d5353500002000000040004003800000005828aa2c2"
    "9c90323edd518500000000000000002c002c003c000000060100000000000f56004d000200040056004d00"
    "0100040056004d00040000000300040076006d0007000800e6079418e681dd0100000000")


def test_the_ntlm_challenge_names_the_smb_server() -> None:
    assert parse_ntlm_challenge(SAMBA_CHALLENGE) == (
        "NetBIOS domain VM; NetBIOS name VM; DNS name vm; OS version 6.1 build 0")
    assert parse_ntlm_challenge(b"no challenge here") == ""
    request = smb2_session_setup_request()
    assert request[4 + 12:4 + 14] == b"\x01\x00"  # command SESSION_SETUP
    assert b"NTLMSSP\x00\x01\x00\x00\x00" in request


_PARSERS = (parse_mqtt, parse_amqp, parse_snmp, parse_smb2_negotiate, parse_search_root,
            parse_search_refusal, parse_kubernetes_version, parse_kafka_api_versions,
            parse_memcached_version)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=600),
                 st.binary(max_size=300).map(lambda b: b"NTLMSSP\x00\x02\x00\x00\x00" + b),
                 st.integers(0, len(SAMBA_CHALLENGE) - 1).map(
                     lambda n: SAMBA_CHALLENGE[:n] + bytes([SAMBA_CHALLENGE[n] ^ 0x5A])
                     + SAMBA_CHALLENGE[n + 1:])))
def test_ntlm_challenge_parser_never_raises(data: bytes) -> None:
    text = parse_ntlm_challenge(data)
    assert text.isascii() and text.isprintable() and len(text) <= 600


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=300).map(lambda b: MOSQUITTO[:8] + b),
    st.binary(max_size=600).map(lambda b: RABBITMQ[:40] + b),
    st.binary(max_size=600).map(lambda b: KAFKA_BROKER[:14] + b),
    st.binary(max_size=80).map(lambda b: b"VERSION 1." + b),
    st.integers(0, len(KAFKA_BROKER) - 1).map(
        lambda n: KAFKA_BROKER[:n] + bytes([KAFKA_BROKER[n] ^ 0x80]) + KAFKA_BROKER[n + 1:]),
    st.integers(0, len(RABBITMQ)).map(lambda n: RABBITMQ[:n] + RABBITMQ[n + 1:]),
    st.integers(0, len(NET_SNMP_REPORT) - 1).map(
        lambda n: NET_SNMP_REPORT[:n] + bytes([NET_SNMP_REPORT[n] ^ 0xFF])
        + NET_SNMP_REPORT[n + 1:]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.sampled_from(["version", "number", "tagline",
                                                    "gitVersion", "major", "kind"]),
                                   inner, max_size=4),
                 max_leaves=20).map(lambda v: json.dumps(v).encode()),
    # a frame that starts like AMQP's Connection.Start, cut anywhere (it raised before)
    st.binary(max_size=8).map(lambda b: b"\x01\x00\x00\x00\x00\x00" + b),
))
@example(b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x0a\xce\x08")  # (found by a review)
def test_no_parser_raises_and_every_field_is_bounded_and_printable(data: bytes) -> None:
    for parser in _PARSERS:
        info = parser(data)
        if info is None:
            continue
        for value in (info.service, info.product, info.version, info.extra_info, info.cpe):
            assert value.isascii() and value.isprintable()
            assert len(value) <= 512
        if info.cpe:
            assert info.cpe.startswith("cpe:/a:") and " " not in info.cpe


def test_a_forward_proxys_own_answer_names_http_proxy() -> None:
    # Recorded from Debian 12's tinyproxy 1.11.1 answering GET / (not an absolute URL)
    from probers.service.banners import parse_http

    answer = (b"HTTP/1.0 400 Bad Request\r\nServer: tinyproxy/1.11.1\r\n"
              b"Content-Type: text/html\r\nConnection: close\r\n\r\n<html>Bad Request</html>")
    info = parse_http(answer)
    assert info is not None
    assert (info.service, info.product, info.version, info.cpe) == (
        "http-proxy", "tinyproxy", "1.11.1", "cpe:/a:tinyproxy_project:tinyproxy:1.11.1")


def test_a_kafka_brokers_api_versions_answer_names_kafka_and_its_role() -> None:
    info = parse_kafka_api_versions(KAFKA_BROKER)
    assert info is not None
    assert (info.service, info.product, info.version, info.method, info.confidence) == (
        "kafka", "", "", "probe:kafka-apiversions", 10)
    assert info.extra_info == ("Kafka protocol, 61 APIs; broker; ApiVersions v0-v4; "
                               "Fetch v0-v17")
    controller = parse_kafka_api_versions(KAFKA_CONTROLLER)
    assert controller is not None and controller.service == "kafka"
    assert controller.extra_info == ("Kafka protocol, 42 APIs; KRaft controller; "
                                     "ApiVersions v0-v4; Fetch v0-v17")


def test_kafka_answers_that_are_not_kafka_are_refused() -> None:
    # another correlation id (not an answer to us), cut short, a count the frame cannot
    # hold, an inverted range, a repeated key, no ApiVersions entry: not Kafka
    assert parse_kafka_api_versions(KAFKA_BROKER, correlation_id=7) is None
    assert parse_kafka_api_versions(KAFKA_BROKER[:-1]) is None
    assert parse_kafka_api_versions(KAFKA_BROKER[:10] + struct.pack(">i", 9999)
                                    + KAFKA_BROKER[14:]) is None
    inverted = KAFKA_BROKER[:14] + struct.pack(">hhh", 0, 5, 4) + KAFKA_BROKER[20:]
    assert parse_kafka_api_versions(inverted) is None
    repeated = KAFKA_BROKER[:20] + KAFKA_BROKER[14:20] + KAFKA_BROKER[26:]
    assert parse_kafka_api_versions(repeated) is None

    def answer(*apis: tuple[int, int, int], error: int = 0) -> bytes:
        body = struct.pack(">ihi", KAFKA_CORRELATION_ID, error, len(apis)) + b"".join(
            struct.pack(">hhh", *a) for a in apis)
        return struct.pack(">i", len(body)) + body

    assert parse_kafka_api_versions(answer((0, 0, 11), (1, 0, 17))) is None
    # a broker refusing the request's version still lists its range: still Kafka
    refused = parse_kafka_api_versions(answer((18, 0, 4), error=35))
    assert refused is not None and refused.extra_info == (
        "Kafka protocol, 1 APIs; ApiVersions v0-v4; error UNSUPPORTED_VERSION")


def test_the_kafka_request_is_api_versions_v0_with_our_correlation_id() -> None:
    request = kafka_api_versions_request()
    size, key, version, correlation, name_len = struct.unpack_from(">ihhih", request)
    assert (size, key, version, correlation) == (len(request) - 4, 18, 0, KAFKA_CORRELATION_ID)
    assert request[14:] == b"portwatch" and name_len == 9
    assert is_whole_kafka_frame(KAFKA_BROKER) and not is_whole_kafka_frame(KAFKA_BROKER[:-1])
    # a size no answer takes ends the read at once (the parser then refuses it)
    assert is_whole_kafka_frame(struct.pack(">i", 2**31 - 1))


def test_memcached_dates_itself_on_version() -> None:
    info = parse_memcached_version(b"VERSION 1.6.18\r\n")
    assert info is not None
    assert (info.service, info.product, info.version, info.cpe, info.confidence) == (
        "memcached", "Memcached", "1.6.18", "cpe:/a:memcached:memcached:1.6.18", 10)
    # a SASL-only server's refusal, an unfinished line, a version that is not one
    for answer in (b"ERROR\r\n", b"CLIENT_ERROR unauthenticated\r\n", b"VERSION 1.6.18",
                   b"VERSION <script>\r\n", b"VERSION 1.6.18\x1b[31m\r\n"):
        assert parse_memcached_version(answer) is None, answer


def test_an_snmp_message_with_a_community_is_known_as_one() -> None:
    from probers.discovery.udp_payloads import snmp_get_sysdescr
    from probers.service.app_protocols import (
        carries_snmp_community,
        snmp_v2c_get_sysdescr,
        snmp_v3_discovery,
    )

    # v1 and v2c ask with a community ("public", or any other): a credential guess
    assert carries_snmp_community(snmp_get_sysdescr(0))
    assert carries_snmp_community(snmp_get_sysdescr(1, b"private"))
    assert carries_snmp_community(snmp_v2c_get_sysdescr(b"public"))
    # nmap-payloads' "SNMP PUBLIC WALK" as its file spells it (a long-form length)
    assert carries_snmp_community(b"0\x82\x00/\x02\x01\x00\x04\x06public\xa1\x82\x00\x20")
    # and as an agent reads it: a version in more bytes than it needs, lengths in long
    # form up to eight bytes (net-snmp answers each: a review)
    pdu = snmp_get_sysdescr(1)[5 + 2 + 6:]  # after SEQUENCE, version and community
    for version in (b"\x02\x02\x00\x01", b"\x02\x04\x00\x00\x00\x01", b"\x02\x81\x02\x00\x01"):
        body = version + b"\x04\x06public" + pdu
        for outer in (bytes([0x30, len(body)]), b"\x30\x85" + len(body).to_bytes(5, "big")):
            assert carries_snmp_community(outer + body), (outer + body)[:16]
    # v3 engine discovery asks with none; an empty community is none; not SNMP at all
    assert not carries_snmp_community(snmp_v3_discovery())
    assert not carries_snmp_community(b"0\x0b\x02\x01\x01\x04\x00\xa0\x04\x02\x02\x00\x00")
    for other in (b"", b"\x00", b"GET / HTTP/1.0\r\n\r\n", b"0", b"0\x85", b"0\x03\x02\x01"):
        assert not carries_snmp_community(other)


@given(st.binary(max_size=64))
@example(b"0\x84\xff\xff\xff\xff\x02\x01\x00\x04\x84\xff\xff\xff\xff")
def test_the_community_check_reads_any_bytes(data: bytes) -> None:
    from probers.service.app_protocols import carries_snmp_community

    assert carries_snmp_community(data) in (True, False)
    # and says yes only where an INTEGER and an OCTET STRING follow a SEQUENCE
    if carries_snmp_community(data):
        assert data[0] == 0x30 and b"\x02" in data[1:] and b"\x04" in data[3:]
