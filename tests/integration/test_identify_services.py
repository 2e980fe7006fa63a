"""Own probes for what nmap names through version scripts, against Debian's real daemons.

mosquitto (MQTT, its version topic), rabbitmq-server (AMQP Connection.Start, on a port no
hint knows: the AMQP header it answers GET with leads to the AMQP probe), snmpd (UDP:
engine discovery without a community; sysDescr with "public" only when allowed), and
Samba's smbd (our SMB2 negotiate names the dialect, nmap's probes then name Samba), and
the Kafka broker of ``make kafka-up`` (ApiVersions; nmap has no probe for it). Each
result is compared with what ``nmap -sV`` names in the same test where nmap names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from probers.service import engine
from probers.service.engine import Endpoint, Settings, identify
from producers.kafka_io import split_bootstrap
from schemas.records import OpenPort, PortState, Proto, ServiceInfo, Target
from stream_processors.stages import NmapFallback, identify_stage, judged, make_context
from tests import daemons, loopback, servers

pytestmark = pytest.mark.slow


def _identify(host: str, port: int, budget: float = 10.0) -> ServiceInfo:
    return asyncio.run(identify(Endpoint(host, port), Settings(budget=budget),
                                NmapFallback()))


def _nmap_sv(host: str, port: int, *, udp: bool = False) -> tuple[str, str, str]:
    nmap = shutil.which("nmap")
    if nmap is None:
        pytest.skip("nmap is not installed")
    argv = [nmap, "-sV", "-n", "-Pn", "-p", str(port), host, "-oX", "-"]
    if udp:
        argv.insert(1, "-sU")
    proc = subprocess.run(argv, capture_output=True, timeout=180, check=True)
    service = ET.fromstring(proc.stdout).find(".//port/service")
    if service is None:
        return "", "", ""
    return service.get("name", ""), service.get("product", ""), service.get("version", "")


def _upstream(package: str) -> str:
    found = servers.debian_version(package)
    if not found:
        pytest.skip(f"{package} is not installed")
    return servers.upstream_version(found)


@contextlib.contextmanager
def _skip_unavailable() -> Iterator[None]:
    try:
        yield
    except servers.ServerUnavailable as exc:
        pytest.skip(f"server unavailable: {exc}")


def _free_standard(host: str, port: int, kind: int = socket.SOCK_STREAM) -> None:
    if port < 1024 and not servers.is_root():
        pytest.skip(f"binding port {port} needs root")
    with socket.socket(socket.AF_INET, kind) as sock:
        # as the daemons bind: a connection of an earlier test in TIME_WAIT is no owner
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            pytest.skip(f"{host}:{port} is taken")


# -- mosquitto ----------------------------------------------------------------------------


@contextlib.contextmanager
def _mosquitto_on(port: int, *, tls: bool = False) -> Iterator[str]:
    """Debian's mosquitto on 127.0.0.1:``port`` (the test skips when it cannot run
    here); yields the upstream version it should be named with."""
    version = _upstream("mosquitto")
    _free_standard("127.0.0.1", port)
    with _skip_unavailable(), daemons.start_mosquitto("127.0.0.1", port, tls=tls):
        yield version


def test_mosquitto_on_1883_names_product_and_version_from_its_version_topic() -> None:
    host = "127.0.0.1"
    with _mosquitto_on(1883) as version:
        info = _identify(host, 1883)
        nmap_service = _nmap_sv(host, 1883)[0]
    assert (info.service, info.product, info.version, info.cpe, info.method) == (
        "mqtt", "Mosquitto", version, f"cpe:/a:eclipse:mosquitto:{version}",
        "probe:mqtt-sys-version")
    assert info.tried == ("mqtt-sys-version",)  # one connection, one round trip
    # nmap's mqtt-subscribe puts the topic's text in the service name
    assert nmap_service == f"mosquitto version {version}"


def test_mosquitto_over_tls_on_8883_is_named_inside_tls_in_one_connection() -> None:
    # Given Debian's mosquitto with a TLS listener on the secure-mqtt port
    host = "127.0.0.1"
    with _mosquitto_on(8883, tls=True) as version:
        # When it is identified, and nmap -sV looks at it too
        info = _identify(host, 8883)
        nmap_service = _nmap_sv(host, 8883)[0]
    # Then the handshake and the version topic, one connection, name the product
    assert (info.service, info.product, info.version, info.cpe, info.is_tls) == (
        "mqtt", "Mosquitto", version, f"cpe:/a:eclipse:mosquitto:{version}", True)
    assert info.tried == ("mqtt-sys-version-tls",)
    # as nmap's mqtt-subscribe does through its TLS tunnel
    assert nmap_service == f"mosquitto version {version}"


def test_plain_mqtt_on_8883_is_still_named() -> None:
    # Given a plaintext listener on the port the hint says is MQTT over TLS
    host = "127.0.0.1"
    with _mosquitto_on(8883) as version:
        info = _identify(host, 8883)
    # Then the refused handshake sends the same question in clear, which names it: a
    # broker without TLS on the secure port is what a team wants to see, not "unknown"
    assert (info.service, info.product, info.version, info.is_tls) == (
        "mqtt", "Mosquitto", version, False)
    assert info.tried == ("mqtt-sys-version-tls", "mqtt-sys-version")


def _tls_then(context: ssl.SSLContext, after: Callable[[ssl.SSLSocket], None]
              ) -> loopback.Handler:
    def handle(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True) as tls:
            after(tls)
    return handle


def _endless_junk(tls: ssl.SSLSocket) -> None:
    tls.recv(1024)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tls.sendall(b"\x30\xff\xff\xff\x7f" + b"\x00\xff" * 2048)  # PUBLISH, huge length


def _silent(tls: ssl.SSLSocket) -> None:
    tls.recv(1024)
    time.sleep(20)


@pytest.mark.parametrize("after", [_endless_junk, _silent], ids=["endless-junk", "silent"])
def test_hostile_peers_behind_tls_on_8883_end_within_the_probe_timeout(
        tmp_path: Path, after: Callable[[ssl.SSLSocket], None]) -> None:
    # Given a TLS peer on the secure-mqtt port that answers CONNECT with endless junk, or
    # completes the handshake and never speaks
    context = loopback.self_signed(tmp_path)
    _free_standard("127.0.0.1", 8883)
    with loopback.listen(_tls_then(context, after), port=8883):
        # When our MQTT-over-TLS probe asks it
        begin = time.monotonic()
        outcome = asyncio.run(engine.probe_mqtt_tls(
            Endpoint("127.0.0.1", 8883), Settings(probe_timeout=1.5), "secure-mqtt"))
        spent = time.monotonic() - begin
    # Then it returns what arrived, bounded, names nothing, and does not wait for the peer
    assert outcome.info is None
    assert outcome.is_tls
    assert len(outcome.data) <= 4096
    assert spent < 10  # the peer holds on for 20 s


# -- rabbitmq -----------------------------------------------------------------------------


def test_rabbitmq_on_a_non_standard_port_is_named_from_connection_start() -> None:
    version = _upstream("rabbitmq-server")
    port = servers.free_port()
    with _skip_unavailable(), daemons.start_rabbitmq("127.0.0.1", port):
        info = _identify("127.0.0.1", port)
        nmap = _nmap_sv("127.0.0.1", port)
    assert (info.service, info.product, info.version, info.cpe) == (
        "amqp", "RabbitMQ", version, f"cpe:/a:vmware:rabbitmq:{version}")
    # GET / was answered with the AMQP header: the AMQP probe followed
    assert info.tried == ("null+http-get", "amqp-connection-start")
    assert nmap == ("amqp", "RabbitMQ", version)


# -- snmpd --------------------------------------------------------------------------------


def _udp_finding(port: int, *, allow_public: bool) -> ServiceInfo:
    ctx = make_context(use_nmap_probes=False, tls_enumeration=False,
                       snmp_public_community=allow_public)
    open_port = OpenPort(scan_id="t", target=Target(ip="127.0.0.1", target="127.0.0.1"),
                         port=port, proto=Proto.UDP, state=PortState.OPEN)
    return asyncio.run(identify_stage(open_port, ctx)).service


def test_snmpd_is_named_without_a_community_and_described_only_when_allowed() -> None:
    _upstream("snmpd")
    port = 161  # the stage asks SNMP where the port says snmp (hint or discovery's reply)
    _free_standard("127.0.0.1", port, socket.SOCK_DGRAM)
    with _skip_unavailable(), daemons.start_snmpd("127.0.0.1", port):
        quiet = _udp_finding(port, allow_public=False)
        allowed = _udp_finding(port, allow_public=True)
    # Engine discovery alone names the implementation, as nmap's SNMPv3 probe does
    assert (quiet.service, quiet.product, quiet.cpe, quiet.method) == (
        "snmp", "net-snmp", "cpe:/a:net-snmp:net-snmp", "probe:snmp-v3")
    assert "sysDescr" not in quiet.extra_info
    # With the user's leave, the read community "public" adds sysDescr
    assert allowed.product == "net-snmp"
    assert "sysDescr: portwatch test agent" in allowed.extra_info
    assert 'read community "public" accepted' in allowed.extra_info


def test_udp_discovery_finds_snmpd_without_sending_a_community() -> None:
    # Given a real snmpd on 161, and discovery with its defaults (no "public" guess)
    from probers.discovery.base import Progress
    from probers.discovery.udp import UdpEngine, decode_response
    from schemas.records import PortRange, Shard

    _upstream("snmpd")
    _free_standard("127.0.0.1", 161, socket.SOCK_DGRAM)
    shard = Shard("t", "t:udp:0", (Target("127.0.0.1", "127.0.0.1"),), (PortRange(161, 161),),
                  Proto.UDP)

    async def scan() -> list[OpenPort]:
        return [p async for p in UdpEngine(timeout=1.0, deadline=30).scan(shard, Progress())]

    with _skip_unavailable(), daemons.start_snmpd("127.0.0.1", 161):
        found = asyncio.run(scan())
    # Then the SNMPv3 engine discovery alone finds it open: the agent's Report, no sysDescr
    (port,) = found
    assert (port.port, port.state) == (161, PortState.OPEN)
    reply = decode_response(port.response)
    assert reply.startswith(b"\x30") and b"portwatch test agent" not in reply


# -- Samba ----------------------------------------------------------------------------------


def test_samba_on_445_dialect_from_our_probe_product_from_nmaps() -> None:
    _upstream("samba")
    _free_standard("127.0.0.1", 445)
    with _skip_unavailable(), daemons.start_smbd("127.0.0.1", 445):
        info = _identify("127.0.0.1", 445)
        nmap = _nmap_sv("127.0.0.1", 445)
    # Our negotiate named SMB and its dialect; nmap's SMB probes then named Samba
    assert info.tried == ("smb2-negotiate", "nmap-service-probes:microsoft-ds")
    assert "SMB dialect 3." in info.extra_info
    # and the NTLMSSP challenge on the same connection named the server (no credential)
    assert f"NetBIOS name {socket.gethostname().split('.')[0].upper()[:15]}" in info.extra_info
    assert (info.service, info.product, info.version) == nmap
    assert info.product == "Samba smbd" and info.cpe.startswith("cpe:/a:samba:samba")


# -- Kafka (the broker `make kafka-up` runs) ----------------------------------------------


def test_a_kafka_broker_is_named_from_its_api_versions_answer_and_coloured_red(
        kafka_bootstrap: str) -> None:
    # nmap has no probe for Kafka (its services file calls 9092 "XmlIpcRegSvc"); ours
    # asks ApiVersions v0, which every broker answers. Then nmap is not asked for a
    # product: none of its match lines names kafka.
    host, port = split_bootstrap(kafka_bootstrap)
    if port != 9092:
        pytest.skip("the Kafka hint is for 9092; this broker listens elsewhere")
    ctx = make_context()
    finding = judged(asyncio.run(identify_stage(
        OpenPort(scan_id="s", target=Target(ip=host, target=host), port=port), ctx)))
    info = finding.service
    assert (info.service, info.product, info.method, info.confidence) == (
        "kafka", "", "probe:kafka-apiversions", 10)
    assert info.tried == ("kafka-apiversions", "nmap-service-probes:kafka")
    assert info.extra_info.startswith("Kafka protocol, ")
    assert "; broker; ApiVersions v0-v" in info.extra_info
    assert finding.risk_color.value == "red"
    assert "message broker" in finding.risk_reason
    # and its KRaft controller listener (kafkactl's default 9093, also a Kafka hint)
    if os.environ.get("KAFKA_CONTROLLER_PORT", "9093") == "9093":
        controller = _identify(host, 9093)
        assert controller.service == "kafka"
        assert "; KRaft controller; " in controller.extra_info


def _tls_in_front_of(upstream: tuple[str, int], context: ssl.SSLContext) -> loopback.Handler:
    """TLS terminated in front of the real broker, as stunnel or a load balancer puts it
    before a Kafka listener: one request in, the broker's whole answer back."""
    def handle(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls, \
                socket.create_connection(upstream, timeout=5) as broker:
            broker.sendall(tls.recv(4096))
            answer = b""
            while len(answer) < 4 or len(answer) < 4 + int.from_bytes(answer[:4], "big"):
                chunk = broker.recv(65_536)
                if not chunk:
                    break
                answer += chunk
            tls.sendall(answer)
            with contextlib.suppress(OSError):
                tls.recv(1)  # until the prober leaves
    return handle


def test_a_kafka_ssl_listener_is_named_inside_tls(kafka_bootstrap: str, tmp_path: Path) -> None:
    # Given the real broker behind TLS on 29092 (Confluent images' port, a Kafka hint),
    # then our plaintext ApiVersions fails and its TLS twin, sent second, names it
    host, port = split_bootstrap(kafka_bootstrap)
    _free_standard("127.0.0.1", 29092)
    handler = _tls_in_front_of((host, port), loopback.self_signed(tmp_path, "broker.test"))
    with loopback.listen(handler, port=29092):
        info = _identify("127.0.0.1", 29092)
    assert (info.service, info.is_tls, info.method) == ("kafka", True,
                                                         "probe:kafka-apiversions")
    assert info.tried[:2] == ("kafka-apiversions", "kafka-apiversions-tls")
    assert "; broker; ApiVersions v0-v" in info.extra_info


def _kafka_answer_stalling(conn: socket.socket) -> None:
    """Claims a 1,000-byte ApiVersions answer, sends 20 bytes of it, then stalls."""
    conn.recv(1024)
    conn.sendall(struct.pack(">iihi", 1_000, 0x70770001, 0, 160) + b"\x00" * 6)
    time.sleep(20)


def _kafka_answer_for_someone_else(conn: socket.socket) -> None:
    """A whole, well-formed ApiVersions answer to another correlation id."""
    conn.recv(1024)
    body = struct.pack(">ihi", 12345, 0, 1) + struct.pack(">hhh", 18, 0, 4)
    conn.sendall(struct.pack(">i", len(body)) + body)
    time.sleep(5)


@pytest.mark.parametrize("handler", [
    loopback.endless(b"\x7f\xff\xff\xff" + b"\xff" * 4092),  # claims 2 GiB, never stops
    loopback.endless(),  # "AAAA": a 1.09 GB frame claimed
    loopback.silent(hold_seconds=15),
    _kafka_answer_stalling,
    _kafka_answer_for_someone_else,
], ids=["giant-frame", "endless-text", "silent", "stalled-answer", "other-correlation-id"])
def test_hostile_peers_on_a_kafka_port_name_nothing_and_stay_bounded(handler: object) -> None:
    # The probe sent to a Kafka-hinted port, against peers that are not Kafka or lie:
    # it reads at most one capped frame, ends within its timeout, and names nothing
    with loopback.listen(handler) as listener:  # type: ignore[arg-type]
        outcome = asyncio.run(engine.probe_kafka(
            Endpoint("127.0.0.1", listener.port), Settings(probe_timeout=2.0), "kafka"))
    assert outcome.kind is engine.ProbeKind.KAFKA
    assert outcome.info is None
    assert len(outcome.data) <= engine.KAFKA_FRAME_CAP + 4


def _echo(conn: socket.socket) -> None:
    """An echo service (RFC 862): every byte back, until the peer leaves."""
    while data := conn.recv(4096):
        conn.sendall(data)


def test_an_echo_service_is_not_taken_for_tls() -> None:
    # Given a service that sends back what it gets (our ClientHello too: it read "ssl",
    # "handshake failed: UNEXPECTED_MESSAGE", where nmap says echo; a review)
    with loopback.listen(_echo) as listener:
        info = _identify("127.0.0.1", listener.port)
    # Then it is not a TLS port, and it is named as `nmap -sV` names it
    assert not info.is_tls
    assert info.service == "echo"


def test_memcached_on_any_port_is_dated_as_memcached_says() -> None:
    # Given a real memcached on a port no hint knows (nmap's lines named it Memcached
    # with no version: a review)
    truth = subprocess.run([servers.require_binary("memcached", "/usr/bin/memcached"), "-V"],
                           capture_output=True, text=True, check=True).stdout.split()[1]
    with daemons.start_memcached() as server:
        info = _identify("127.0.0.1", server.port, budget=20)
    # Then our version request after nmap's probes dates it, as `memcached -V` says
    assert (info.service, info.product, info.version) == ("memcached", "Memcached", truth)
    assert info.cpe == f"cpe:/a:memcached:memcached:{truth}"
    assert "memcached-version" in info.tried
    # and on its own port the request goes first
    assert engine.plan(11211)[0] is engine.ProbeKind.MEMCACHED
