"""portwatch's own service probes: the explicit table, the plan, and the parsers of
the answers the newer probes read (recorded bytes; the network side is exercised in
tests/integration/test_identify_real_servers.py)."""

from __future__ import annotations

import inspect

import pytest

from probers.service import engine
from probers.service.banners import (
    is_tls_record,
    parse_foreign_reply,
    parse_http,
    parse_postgres_error_fields,
    parse_postgres_version_error,
    parse_rdp_confirm,
)
from probers.service.engine import DEFAULT_ORDER, FOLLOW_UP, PROBES, ProbeKind, plan
from schemas.records import ServiceInfo

# -- the table ---------------------------------------------------------------------------


def test_every_probe_kind_has_an_implementation() -> None:
    # Given the ProbeKind enum, then each member maps to one async probe function
    assert set(PROBES) == set(ProbeKind)
    for kind, impl in PROBES.items():
        assert inspect.iscoroutinefunction(impl), kind
        assert list(inspect.signature(impl).parameters) == ["ep", "s", "port_hint"], kind


def test_every_probe_kind_can_be_reached_by_the_plan() -> None:
    # By the default order, by a port hint, by an answer asking for it (follow-ups,
    # Kubernetes' Status answer), or after nmap named the service without a product
    hinted = {plan(p)[0] for p in (80, 443, 3389, 5432, 6379, 1883, 8883, 5672, 445, 9092,
                                   11211)}
    # (a hinted probe's twin, sent second: plaintext MQTT after TLS, Kafka's TLS after plain)
    twins = set(engine.TWIN_AFTER.values())
    reachable = (set(DEFAULT_ORDER) | hinted | twins | set(FOLLOW_UP.values())
                 | set(engine.AFTER_NMAP.values()) | set(engine.VERSION_AFTER_NMAP.values())
                 | {ProbeKind.K8S_VERSION})
    assert reachable == set(ProbeKind)
    assert {plan(1883)[0], plan(8883)[0], plan(5672)[0], plan(445)[0], plan(9092)[0]} == {
        ProbeKind.MQTT, ProbeKind.MQTT_TLS, ProbeKind.AMQP, ProbeKind.SMB, ProbeKind.KAFKA}
    assert plan(6443)[0] is ProbeKind.TLS  # Kubernetes' API port: TLS, then /version
    assert plan(9093)[:3] == (ProbeKind.KAFKA, ProbeKind.KAFKA_TLS, ProbeKind.NULL)
    assert plan(8883)[:3] == (ProbeKind.MQTT_TLS, ProbeKind.MQTT, ProbeKind.NULL)


@pytest.mark.parametrize(
    ("port", "first"),
    [
        (22, ProbeKind.NULL),
        (21, ProbeKind.NULL),
        (80, ProbeKind.HTTP_GET),
        (8080, ProbeKind.HTTP_GET),
        (443, ProbeKind.TLS),
        (8443, ProbeKind.TLS),
        (6379, ProbeKind.REDIS_INFO),
        (5432, ProbeKind.POSTGRES_SSL),
        (3389, ProbeKind.RDP),
        (8883, ProbeKind.MQTT_TLS),
        (9092, ProbeKind.KAFKA),
        (9093, ProbeKind.KAFKA),
        (29092, ProbeKind.KAFKA),
        (40000, ProbeKind.NULL),
    ],
)
def test_plan_puts_the_likely_probe_first_and_keeps_every_other(port: int,
                                                                first: ProbeKind) -> None:
    order = plan(port)
    assert order[0] is first
    assert len(order) == len(set(order))
    assert set(DEFAULT_ORDER) <= set(order)


@pytest.mark.parametrize(
    ("service", "product", "port_tls", "info_tls", "expected"),
    [
        ("mqtt", "", False, False, ProbeKind.MQTT),
        ("mqtt", "", True, False, ProbeKind.MQTT_TLS),  # the port spoke TLS
        ("mqtt", "", False, True, ProbeKind.MQTT_TLS),  # nmap found it inside TLS
        ("mqtt", "Mosquitto", True, True, None),  # named already: nothing to ask
        ("amqp", "", True, True, ProbeKind.AMQP),  # no TLS variant: the plain probe
        ("microsoft-ds", "", False, False, ProbeKind.SMB),
        ("ssh", "", False, False, None),  # no probe of ours names more than nmap's
    ],
)
def test_after_nmap_asks_the_probe_that_can_name_the_product(
        service: str, product: str, port_tls: bool, info_tls: bool,
        expected: ProbeKind | None) -> None:
    info = ServiceInfo(service=service, product=product, is_tls=info_tls)
    assert engine.after_nmap(info, is_tls=port_tls) is expected
    assert engine.after_nmap(None, is_tls=port_tls) is None


def test_the_secure_mqtt_port_asks_in_tls_then_in_clear() -> None:
    assert plan(8883)[:2] == (ProbeKind.MQTT_TLS, ProbeKind.MQTT)
    assert plan(1883)[:2] == (ProbeKind.MQTT, ProbeKind.NULL)  # the plain port: no TLS guess


def test_http_get_is_not_repeated_on_a_blind_port() -> None:
    # NULL sends GET / itself when the port is silent: a separate GET would be a repeat
    assert ProbeKind.HTTP_GET not in plan(40000)


# -- answers to GET / from services that are not HTTP -------------------------------------

NGINX_PLAIN_ON_TLS = (
    b"HTTP/1.1 400 Bad Request\r\nServer: nginx/1.22.1\r\nContent-Type: text/html\r\n"
    b"Connection: close\r\n\r\n<html>\r\n<head><title>400 The plain HTTP request was sent to "
    b"HTTPS port</title></head>\r\n</html>\r\n"
)


def test_plain_request_on_a_tls_port_is_tentative_https() -> None:
    # Given nginx's answer to plain HTTP on its TLS port
    info = parse_http(NGINX_PLAIN_ON_TLS)
    # Then it names https (the port speaks TLS) below the stop confidence, so TLS follows
    assert info is not None
    assert (info.service, info.product, info.version, info.is_tls) == (
        "https", "nginx", "1.22.1", True)
    assert info.method == "http:plain-on-tls"
    assert info.confidence < engine.STOP_CONFIDENCE
    assert FOLLOW_UP[info.service] is ProbeKind.TLS


def test_the_same_page_inside_tls_is_final() -> None:
    info = parse_http(NGINX_PLAIN_ON_TLS, is_tls=True)
    assert info is not None
    assert (info.service, info.method, info.confidence) == ("https", "http:server-header", 10)


def test_body_signature_names_a_server_without_a_server_header() -> None:
    answer = (b"HTTP/1.0 200 ok\r\nContent-type: text/html\r\n\r\n<HTML><BODY BGCOLOR=\"#ffffff\">"
              b"\n<pre>\n\ns_server -accept 127.0.0.1:4433 -cert cert.pem -quiet -www \n")
    info = parse_http(answer, is_tls=True)
    assert info is not None
    assert (info.service, info.product, info.method, info.confidence) == (
        "https", "OpenSSL s_server -www httpd", "http:body-signature", 9)
    bare = parse_http(b"HTTP/1.0 200 ok\r\nContent-type: text/html\r\n\r\n<pre>hello</pre>")
    assert bare is not None and bare.product == "" and bare.confidence == 6


@pytest.mark.parametrize(
    ("data", "service", "follow"),
    [
        (b"\x15\x03\x01\x00\x02\x02\x46", "ssl", ProbeKind.TLS),
        (b"\x16\x03\x03\x00\x2a\x02\x00\x00\x26", "ssl", ProbeKind.TLS),
        (b"-ERR wrong number of arguments for 'get' command\r\n", "redis", ProbeKind.REDIS_INFO),
        (b"-NOAUTH Authentication required.\r\n", "redis", ProbeKind.REDIS_INFO),
        (b"E\x00\x00\x00\x3aSFATAL\x00VFATAL\x00C08P01\x00Minvalid length of startup packet"
         b"\x00\x00", "postgresql", ProbeKind.POSTGRES_SSL),
    ],
)
def test_foreign_replies_name_the_protocol_to_ask_next(data: bytes, service: str,
                                                      follow: ProbeKind) -> None:
    info = parse_foreign_reply(data)
    assert info is not None
    assert info.service == service
    assert info.confidence < engine.STOP_CONFIDENCE
    assert FOLLOW_UP[service] is follow


@pytest.mark.parametrize("data", [b"", b"hello\r\n", b"\x16\x02", b"+OK\r\n", b"E"])
def test_foreign_reply_refuses_what_it_does_not_know(data: bytes) -> None:
    assert parse_foreign_reply(data) is None
    assert not is_tls_record(data)


# -- PostgreSQL: the startup packet that dates the server -------------------------------

PG15_REFUSAL = (
    b"E\x00\x00\x00\x8bSFATAL\x00VFATAL\x00C0A000\x00Munsupported frontend protocol 65535.0: "
    b"server supports 3.0 to 3.0\x00Fpostmaster.c\x00L2222\x00RProcessStartupPacket\x00\x00"
)


def test_postgres_error_fields_are_read() -> None:
    fields = parse_postgres_error_fields(PG15_REFUSAL)
    assert fields["S"] == fields["V"] == "FATAL"
    assert fields["C"] == "0A000"
    assert fields["L"] == "2222"


def test_postgres_refusal_with_the_v_field_is_9_6_or_later() -> None:
    info = parse_postgres_version_error(PG15_REFUSAL)
    assert info is not None
    assert (info.service, info.product, info.version, info.confidence) == (
        "postgresql", "PostgreSQL DB", "9.6.0 or later", 10)
    assert "14 or later" in info.extra_info
    assert info.method == "probe:postgres-startup-version"


def test_postgres_refusal_without_the_v_field_names_no_version() -> None:
    old = (b"E\x00\x00\x00\x60SFATAL\x00C0A000\x00Munsupported frontend protocol 65535.0: "
           b"server supports 1.0 to 3.0\x00Fpostmaster.c\x00L1497\x00\x00")
    info = parse_postgres_version_error(old)
    assert info is not None
    assert (info.version, info.confidence) == ("", 9)
    assert "14 or later" not in info.extra_info


@pytest.mark.parametrize("data", [b"", b"N", b"EFATAL:  unsupported\n\x00", b"R\x00\x00\x00\x08"])
def test_postgres_version_parser_refuses_other_answers(data: bytes) -> None:
    assert parse_postgres_version_error(data) is None


# -- RDP ---------------------------------------------------------------------------------


def test_rdp_connection_confirm_with_selected_protocol() -> None:
    # X.224 Connection Confirm + RDP_NEG_RSP selecting CredSSP ([MS-RDPBCGR] 4.1.2)
    confirm = bytes.fromhex("030000130ed000001234000200080002000000")
    info = parse_rdp_confirm(confirm)
    assert info is not None
    assert (info.service, info.method, info.confidence) == (
        "ms-wbt-server", "probe:rdp-negotiation", 8)
    assert info.extra_info == "selected protocol: CredSSP (NLA)"


def test_rdp_negotiation_failure_is_still_rdp() -> None:
    failure = bytes.fromhex("030000130ed000001234000300080005000000")
    info = parse_rdp_confirm(failure)
    assert info is not None
    assert info.extra_info == "negotiation failure: hybrid (CredSSP) required by server"


def test_rdp_confirm_without_negotiation_data() -> None:
    info = parse_rdp_confirm(bytes.fromhex("0300000b06d00000123400"))
    assert info is not None and info.extra_info == ""


@pytest.mark.parametrize("data", [b"", b"\x03\x00\x00\x0b\x06\xe0\x00\x00\x00\x00\x00",
                                  b"HTTP/1.1 400\r\n", b"\x03\x00"])
def test_rdp_parser_refuses_other_answers(data: bytes) -> None:
    assert parse_rdp_confirm(data) is None
