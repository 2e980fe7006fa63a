"""The full identification stage against Debian's real daemons on loopback.

Each test starts a real server from tests/servers.py (openssh-server, nginx plain
and TLS on standard and non-standard ports, redis-server, PostgreSQL, MariaDB,
vsftpd, ``openssl s_server``), runs the port through
``stream_processors.stages.process`` with ``make_context(...)`` exactly as the
embedded runner does (identify -> TLS -> CDN -> risk), and asserts the exact
service, product and version, derived from the installed Debian packages
(dpkg-query), never hard-coded; plus how it was identified (method, confidence,
what was sent) and the risk colour.

Standard ports are bound on a loopback address of the test's own (127.0.0.x), so
they never collide with a service of the machine. The one fake here is the RDP
listener (no RDP server is packaged for this machine): it answers with a recorded
X.224 Connection Confirm, and is named as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest

from schemas.records import Finding, OpenPort, ProbeStatus, RiskColor, Target
from stream_processors.stages import make_context, process
from tests import loopback, servers

pytestmark = pytest.mark.slow


def _version(*packages: str) -> str:
    for package in packages:
        found = servers.debian_version(package)
        if found:
            return found
    pytest.skip(f"none of {packages} is installed")


def _own_address(port: int) -> str:
    """A loopback address of 127.0.0.0/8 where ``port`` is free (for standard ports)."""
    if port < 1024 and not servers.is_root():
        pytest.skip(f"binding port {port} needs root")
    for _ in range(50):
        host = f"127.0.0.{random.randint(2, 250)}"
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return host
    pytest.skip(f"no loopback address with port {port} free")


@contextlib.contextmanager
def _started(cm: AbstractContextManager[servers.Server]) -> Iterator[servers.Server]:
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(cm)
        except servers.ServerUnavailable as exc:
            pytest.skip(f"server unavailable: {exc}")
        yield server


def _process(host: str, port: int, **options: object) -> Finding:
    """One open port through the whole stage chain, with the runner's context."""
    options.setdefault("tls_enumeration", False)
    ctx = make_context(**options)  # type: ignore[arg-type]
    open_port = OpenPort(scan_id="test-identify", target=Target(ip=host, target=host), port=port)
    return asyncio.run(process(open_port, ctx))


def _nmap_sv(host: str, port: int) -> tuple[str, str, str]:
    """(service, product, version) that ``nmap -sV`` names for one loopback port."""
    nmap = shutil.which("nmap")
    if nmap is None:
        pytest.skip("nmap is not installed")
    proc = subprocess.run([nmap, "-sV", "-n", "-Pn", "-p", str(port), host, "-oX", "-"],
                          capture_output=True, timeout=120, check=True)
    service = ET.fromstring(proc.stdout).find(".//port/service")
    assert service is not None
    return service.get("name", ""), service.get("product", ""), service.get("version", "")


# -- first speakers --------------------------------------------------------------------


def test_openssh_server_on_a_non_standard_port() -> None:
    debian = _version("openssh-server")
    with _started(servers.start_sshd()) as server:
        finding = _process(server.host, server.port)
    info = finding.service
    assert (info.service, info.product, info.version) == (
        "ssh", "OpenSSH", servers.upstream_version(debian))
    assert info.extra_info == f"protocol 2.0; Debian-{servers.debian_revision(debian)}"
    assert info.cpe == f"cpe:/a:openbsd:openssh:{servers.upstream_version(debian)}"
    # one connection, one greeting: the common case costs one round trip
    assert (info.method, info.confidence, info.tried) == ("banner:ssh", 10, ("null",))
    assert finding.risk_color is RiskColor.GREEN


def test_vsftpd_on_its_standard_port() -> None:
    debian = _version("vsftpd")
    host = _own_address(21)
    with _started(servers.start_vsftpd(host, 21)) as server:
        finding = _process(server.host, server.port)
    info = finding.service
    assert (info.service, info.product, info.version) == (
        "ftp", "vsftpd", servers.upstream_version(debian))
    assert (info.method, info.confidence, info.tried) == ("banner:ftp", 10, ("null",))
    assert finding.risk_color is RiskColor.RED


@pytest.mark.parametrize("standard", [False, True], ids=["port-free", "port-3306"])
def test_mariadb(standard: bool) -> None:
    debian = _version("mariadb-server")
    host = _own_address(3306) if standard else "127.0.0.1"
    with _started(servers.start_mariadb(host, 3306 if standard else None)) as server:
        finding = _process(server.host, server.port)
    info = finding.service
    assert (info.service, info.product, info.version) == (
        "mysql", "MariaDB", servers.upstream_version(debian))
    assert info.extra_info == servers.debian_revision(debian)
    assert (info.method, info.confidence, info.tried) == ("banner:mysql-greeting", 10, ("null",))
    assert finding.risk_color is RiskColor.RED


# -- HTTP and TLS ------------------------------------------------------------------------


def test_nginx_on_port_80_costs_one_get() -> None:
    debian = _version("nginx-light", "nginx-core", "nginx")
    host = _own_address(80)
    with _started(servers.start_nginx(host, 80)) as server:
        finding = _process(server.host, server.port)
    info = finding.service
    assert (info.service, info.product, info.version, info.is_tls) == (
        "http", "nginx", servers.upstream_version(debian), False)
    assert (info.method, info.confidence, info.tried) == ("http:server-header", 10, ("http-get",))
    assert info.extra_info == "status 200"
    assert ("server", f"nginx/{servers.upstream_version(debian)}") in info.headers
    assert finding.risk_color is RiskColor.GREEN


def test_nginx_on_a_non_standard_port_is_asked_after_the_greeting_window() -> None:
    debian = _version("nginx-light", "nginx-core", "nginx")
    with _started(servers.start_nginx()) as server:
        finding = _process(server.host, server.port)
    info = finding.service
    assert (info.service, info.product, info.version) == (
        "http", "nginx", servers.upstream_version(debian))
    # silent through the greeting window, then GET / on the same connection
    assert (info.method, info.confidence, info.tried) == (
        "http:server-header", 10, ("null+http-get",))
    assert finding.risk_color is RiskColor.GREEN


def test_nginx_tls_on_a_non_standard_port_is_https_with_cipher_enumeration() -> None:
    # Given nginx serving HTTPS on a port no hint knows, and the TLS stage enabled
    debian = _version("nginx-light", "nginx-core", "nginx")
    with _started(servers.start_nginx(tls=True)) as server:
        finding = _process(server.host, server.port, tls_enumeration=True, tls_budget=20.0)
    info = finding.service
    # Then the plain GET revealed TLS ("plain HTTP request sent to HTTPS port") and the
    # answer inside TLS named nginx: https, the same as on 443
    assert (info.service, info.product, info.version, info.is_tls) == (
        "https", "nginx", servers.upstream_version(debian), True)
    assert (info.method, info.confidence, info.tried) == (
        "http:server-header", 10, ("null+http-get", "tls"))
    assert "certificate CN: localhost" in info.extra_info
    # and the enumeration judged its certificate: the test server's is self-signed, which
    # raises a public web server from green to yellow (README, "Risk")
    assert finding.risk_color is RiskColor.YELLOW
    assert "untrusted certificate: self-signed" in finding.risk_reason
    assert finding.tls.status is ProbeStatus.COMPLETED
    assert finding.tls.versions


def test_nginx_tls_on_port_443_costs_one_handshake() -> None:
    debian = _version("nginx-light", "nginx-core", "nginx")
    host = _own_address(443)
    with _started(servers.start_nginx(host, 443, tls=True)) as server:
        finding = _process(server.host, server.port)
    info = finding.service
    assert (info.service, info.product, info.version, info.is_tls) == (
        "https", "nginx", servers.upstream_version(debian), True)
    assert (info.method, info.tried) == ("http:server-header", ("tls",))
    assert finding.risk_color is RiskColor.GREEN


def test_openssl_s_server_www_is_named_from_its_page() -> None:
    with _started(servers.start_openssl_s_server(("-www",))) as server:
        finding = _process(server.host, server.port)
    info = finding.service
    assert (info.service, info.product, info.version, info.is_tls) == (
        "https", "OpenSSL s_server -www httpd", "", True)
    assert (info.method, info.confidence) == ("http:body-signature", 9)
    assert info.tried == ("null+http-get", "tls")
    assert finding.risk_color is RiskColor.GREEN


def test_a_tls13_server_that_requires_a_client_certificate_is_ssl() -> None:
    # Given s_server asking for a client certificate it requires (TLS 1.3: the client's
    # handshake ends before the server's "certificate required" alert arrives)
    with _started(servers.start_openssl_s_server(("-www", "-Verify", "1"))) as server:
        finding = _process(server.host, server.port)
    # Then the port speaks TLS and says why it stopped (before: reading its certificate
    # raised "handshake not done yet", and nmap's "tcpwrapped" named the port)
    info = finding.service
    assert (info.service, info.is_tls, info.method) == ("ssl", True, "tls:alert")
    assert info.extra_info == "handshake failed: TLSV13_ALERT_CERTIFICATE_REQUIRED"


# -- databases and caches that wait for the client ---------------------------------------


@pytest.mark.parametrize("standard", [False, True], ids=["port-free", "port-6379"])
def test_redis(standard: bool) -> None:
    debian = _version("redis-server")
    host = _own_address(6379) if standard else "127.0.0.1"
    with _started(servers.start_redis(host, 6379 if standard else None)) as server:
        finding = _process(server.host, server.port)
    info = finding.service
    assert (info.service, info.product, info.version) == (
        "redis", "Redis key-value store", servers.upstream_version(debian))
    assert (info.method, info.confidence) == ("probe:redis-info", 10)
    # on 6379 the hinted probe goes first; elsewhere after the silent close and a TLS guess
    expected = ("redis-info",) if standard else ("null+http-get", "tls", "redis-info")
    assert info.tried == expected
    assert finding.risk_color is RiskColor.RED


@pytest.mark.parametrize("standard", [False, True], ids=["port-free", "port-5432"])
def test_postgres_is_dated_like_nmap_dates_it(standard: bool) -> None:
    _version("postgresql-15", "postgresql")
    host = _own_address(5432) if standard else "127.0.0.1"
    with _started(servers.start_postgres(host, 5432 if standard else None)) as server:
        finding = _process(server.host, server.port)
        nmap_says = _nmap_sv(server.host, server.port)
    info = finding.service
    assert (info.service, info.product, info.version) == (
        "postgresql", "PostgreSQL DB", "9.6.0 or later")
    # nmap -sV on the same server says the same
    assert nmap_says == (info.service, info.product, info.version)
    assert "TLS not offered" in info.extra_info and "14 or later" in info.extra_info
    assert (info.method, info.confidence) == ("probe:postgres-startup-version", 10)
    assert info.tried[-1] == "postgres-sslrequest"
    if standard:
        assert info.tried == ("postgres-sslrequest",)
    assert finding.risk_color is RiskColor.RED


# -- RDP (fake) and the unidentified ---------------------------------------------------

# X.224 Connection Confirm + RDP_NEG_RSP selecting CredSSP, as a Windows host sends it.
RECORDED_RDP_CONFIRM = bytes.fromhex("030000130ed000001234000200080002000000")


def _fake_rdp(conn: socket.socket) -> None:
    """FAKE RDP server: answers a well-formed X.224 Connection Request with a recorded
    Connection Confirm, anything else with silence."""
    request = conn.recv(64)
    if request[:2] == b"\x03\x00" and len(request) >= 11 and request[5] == 0xE0:
        conn.sendall(RECORDED_RDP_CONFIRM)
    conn.recv(64)


def test_rdp_negotiation_on_3389() -> None:
    host = _own_address(3389)
    with loopback.listen(_fake_rdp, (host,), 3389):
        finding = _process(host, 3389)
    info = finding.service
    assert (info.service, info.extra_info) == ("ms-wbt-server", "selected protocol: CredSSP (NLA)")
    # nmap's probes that can name an RDP implementation were asked too (issue 15); this
    # recorded Windows answer matches none of their product lines, so ours is kept
    assert (info.method, info.confidence, info.tried) == (
        "probe:rdp-negotiation", 8, ("rdp-negotiation", "nmap-service-probes:ms-wbt-server"))
    assert info.product == ""
    assert finding.risk_color is RiskColor.RED


def test_a_silent_port_says_what_was_tried_within_its_budget() -> None:
    # (a budget for every guess: 1.5 s of it for the TLS handshake's, engine.TLS_GUESS_TIMEOUT)
    with loopback.listen(loopback.silent(hold_seconds=15)) as listener:
        finding = _process("127.0.0.1", listener.port, identify_budget=5.0,
                           use_nmap_probes=False)
    info = finding.service
    assert not info.is_identified
    assert info.method == "unidentified"
    assert info.tried == ("null+http-get", "tls", "redis-info", "postgres-sslrequest",
                          "rdp-negotiation")
    assert "null+http-get: no answer" in info.extra_info
    assert "tls: TimeoutError" in info.extra_info
    assert finding.risk_color is RiskColor.YELLOW
