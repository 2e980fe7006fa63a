"""Own probes for what nmap names through version scripts, against Debian's real daemons.

mosquitto (MQTT, its version topic), rabbitmq-server (AMQP Connection.Start, on a port no
hint knows: the AMQP header it answers GET with leads to the AMQP probe), snmpd (UDP:
engine discovery without a community; sysDescr with "public" only when allowed), and
Samba's smbd (our SMB2 negotiate names the dialect, nmap's probes then name Samba). Each
result is compared with what ``nmap -sV`` names in the same test where nmap names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from probers.service.engine import Endpoint, Settings, identify
from probers.service.udp_probes import identify_snmp
from schemas.records import OpenPort, PortState, Proto, ServiceInfo, Target
from stream_processors.stages import NmapFallback, identify_stage, make_context
from tests import servers

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
        try:
            sock.bind((host, port))
        except OSError:
            pytest.skip(f"{host}:{port} is taken")


# -- mosquitto ----------------------------------------------------------------------------


@contextlib.contextmanager
def start_mosquitto(host: str, port: int) -> Iterator[servers.Server]:
    binary = servers.require_binary("mosquitto", "/usr/sbin/mosquitto")
    with servers._workdir("mosquitto") as work:
        config = work / "mosquitto.conf"
        config.write_text(f"listener {port} {host}\nallow_anonymous true\npersistence false\n"
                          "log_dest stdout\n")
        with servers.run_server([binary, "-c", str(config)], host, port, work,
                                name="mosquitto") as server:
            yield server


def test_mosquitto_on_1883_names_product_and_version_from_its_version_topic() -> None:
    version = _upstream("mosquitto")
    host = "127.0.0.1"
    _free_standard(host, 1883)
    with _skip_unavailable(), start_mosquitto(host, 1883):
        info = _identify(host, 1883)
        nmap_service = _nmap_sv(host, 1883)[0]
    assert (info.service, info.product, info.version, info.cpe, info.method) == (
        "mqtt", "Mosquitto", version, f"cpe:/a:eclipse:mosquitto:{version}",
        "probe:mqtt-sys-version")
    assert info.tried == ("mqtt-sys-version",)  # one connection, one round trip
    # nmap's mqtt-subscribe puts the topic's text in the service name
    assert nmap_service == f"mosquitto version {version}"


# -- rabbitmq -----------------------------------------------------------------------------


@contextlib.contextmanager
def start_rabbitmq(port: int) -> Iterator[servers.Server]:
    # The broker itself, run as its user by us (the /usr/sbin wrapper would su into a new
    # session whose Erlang VM we could not stop by its process group).
    binary = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    if not os.access(binary, os.X_OK) or not servers.is_root():
        raise servers.ServerUnavailable("rabbitmq-server is not installed (or not root)")
    try:
        pwd.getpwnam("rabbitmq")
    except KeyError as exc:
        raise servers.ServerUnavailable("no rabbitmq user") from exc
    with servers._workdir("rabbitmq") as work:
        (work / "enabled_plugins").write_text("[].\n")
        (work / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n")
        dist_port, epmd_port = servers.free_port(), servers.free_port()
        env = dict(os.environ, HOME=str(work), RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                   RABBITMQ_NODE_PORT=str(port), RABBITMQ_DIST_PORT=str(dist_port),
                   RABBITMQ_NODENAME=f"pw{port}@localhost",
                   RABBITMQ_MNESIA_BASE=str(work / "mnesia"),
                   RABBITMQ_LOG_BASE=str(work / "log"),
                   RABBITMQ_CONFIG_FILE=str(work / "rabbitmq"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(work / "enabled_plugins"),
                   RABBITMQ_FEATURE_FLAGS_FILE=str(work / "feature_flags"),
                   RABBITMQ_ADVANCED_CONFIG_FILE=str(work / "advanced.config"),
                   RABBITMQ_PID_FILE=str(work / "pid"),
                   ERL_EPMD_ADDRESS="127.0.0.1", ERL_EPMD_PORT=str(epmd_port))
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(work)], check=True)
        # Our own epmd in the foreground (the broker would start a daemon we could not
        # stop by its id): the broker finds it on ERL_EPMD_PORT.
        epmd = subprocess.Popen([servers.require_binary("epmd", "/usr/bin/epmd"), "-port",
                                 str(epmd_port), "-address", "127.0.0.1"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        process = subprocess.Popen([binary], env=env, cwd=work, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True,
                                   user="rabbitmq", group="rabbitmq")
        try:
            deadline = time.monotonic() + 60  # the Erlang VM boots in ~10 s on 2 cores
            while not servers.port_accepts("127.0.0.1", port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise servers.ServerUnavailable("rabbitmq-server did not start")
                time.sleep(0.2)
            yield servers.Server("127.0.0.1", port, process, work, work / "log")
        finally:
            servers._stop(process)
            servers._stop(epmd)


def test_rabbitmq_on_a_non_standard_port_is_named_from_connection_start() -> None:
    version = _upstream("rabbitmq-server")
    port = servers.free_port()
    with _skip_unavailable(), start_rabbitmq(port):
        info = _identify("127.0.0.1", port)
        nmap = _nmap_sv("127.0.0.1", port)
    assert (info.service, info.product, info.version, info.cpe) == (
        "amqp", "RabbitMQ", version, f"cpe:/a:vmware:rabbitmq:{version}")
    # GET / was answered with the AMQP header: the AMQP probe followed
    assert info.tried == ("null+http-get", "amqp-connection-start")
    assert nmap == ("amqp", "RabbitMQ", version)


# -- snmpd --------------------------------------------------------------------------------


@contextlib.contextmanager
def start_snmpd(port: int) -> Iterator[Path]:
    binary = servers.require_binary("snmpd", "/usr/sbin/snmpd")
    with servers._workdir("snmpd") as work:
        (work / "snmpd.conf").write_text("rocommunity public 127.0.0.1\n"
                                         "sysDescr portwatch test agent\n")
        with servers.run_server(
                [binary, "-f", "-Lo", "-C", "-c", str(work / "snmpd.conf"), "-p",
                 str(work / "pid"), f"--persistentDir={work}", f"udp:127.0.0.1:{port}"],
                "127.0.0.1", port, work, name="snmpd", ready=False):
            deadline = time.monotonic() + 10
            while asyncio.run(identify_snmp("127.0.0.1", port, timeout=0.3)) is None:
                if time.monotonic() > deadline:
                    raise servers.ServerUnavailable("snmpd did not answer")
            yield work


def _udp_finding(port: int, *, allow_public: bool) -> ServiceInfo:
    ctx = make_context(use_nmap_probes=False, tls_enumeration=False)
    ctx.identify = Settings(snmp_public_community=allow_public)
    open_port = OpenPort(scan_id="t", target=Target(ip="127.0.0.1", target="127.0.0.1"),
                         port=port, proto=Proto.UDP, state=PortState.OPEN)
    return asyncio.run(identify_stage(open_port, ctx)).service


def test_snmpd_is_named_without_a_community_and_described_only_when_allowed() -> None:
    _upstream("snmpd")
    port = 161  # the stage asks SNMP where the port says snmp (hint or discovery's reply)
    _free_standard("127.0.0.1", port, socket.SOCK_DGRAM)
    with _skip_unavailable(), start_snmpd(port):
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


# -- Samba ----------------------------------------------------------------------------------


@contextlib.contextmanager
def start_smbd(port: int) -> Iterator[servers.Server]:
    binary = servers.require_binary("smbd", "/usr/sbin/smbd")
    with servers._workdir("smbd") as work:
        dirs = {name: work / name for name in ("pid", "lock", "state", "cache", "private",
                                                "log")}
        for path in dirs.values():
            path.mkdir()
        (work / "smb.conf").write_text(
            "[global]\n  workgroup = PWTEST\n  server string = portwatch test\n"
            f"  smb ports = {port}\n  interfaces = 127.0.0.1\n  bind interfaces only = yes\n"
            + "".join(f"  {key} directory = {dirs[key]}\n" for key in ("pid", "lock",
                                                                         "state", "cache"))
            + f"  private dir = {dirs['private']}\n  ncalrpc dir = {dirs['state']}/ncalrpc\n"
            f"  log file = {dirs['log']}/log.%m\n  disable netbios = yes\n"
            "  load printers = no\n  printing = bsd\n  printcap name = /dev/null\n"
            "  disable spoolss = yes\n")
        with servers.run_server([binary, "--foreground", "--no-process-group", "-s",
                                 str(work / "smb.conf")], "127.0.0.1", port, work,
                                name="smbd") as server:
            yield server


def test_samba_on_445_dialect_from_our_probe_product_from_nmaps() -> None:
    _upstream("samba")
    _free_standard("127.0.0.1", 445)
    with _skip_unavailable(), start_smbd(445):
        info = _identify("127.0.0.1", 445)
        nmap = _nmap_sv("127.0.0.1", 445)
    # Our negotiate named SMB and its dialect; nmap's SMB probes then named Samba
    assert info.tried == ("smb2-negotiate", "nmap-service-probes:microsoft-ds")
    assert "SMB dialect 3." in info.extra_info
    assert (info.service, info.product, info.version) == nmap
    assert info.product == "Samba smbd" and info.cpe.startswith("cpe:/a:samba:samba")
