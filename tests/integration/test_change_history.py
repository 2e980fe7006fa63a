"""Change history on real scans: real services on loopback started, stopped and swapped
between scans by the real embedded runner into a real chdb store; exact events expected.
Plus: an interrupted scan closes nothing, a lost SYN (nft on a namespace host) closes
nothing, and recomputing a host scan (a replayed record) stores no duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from probers.discovery.connect import ConnectEngine
from producers.shards import ScanPlan, new_scan_id
from schemas.records import ChangeKind, PortRange, Severity, Target
from stream_processors.change_log import changes_report
from stream_processors.history import ChangeRecorder
from stream_processors.stages import make_context
from stream_processors.store import PAGE_INDEXES
from stream_processors.transports.embedded import EmbeddedRunner, ScanStats
from tests import netns, servers
from tests.tls_servers import CertFiles, openssl_server

LOCAL = Target(ip="127.0.0.1", target="127.0.0.1", organization="Example", asset="web-1")


def _cert(directory: Path, name: str, days: float) -> CertFiles:
    """A self-signed leaf for localhost valid for ``days`` from now."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    files = CertFiles(directory / f"{name}.pem", directory / f"{name}.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


def _runner(store, engine: ConnectEngine | None = None) -> EmbeddedRunner:  # type: ignore[no-untyped-def]
    ctx = make_context(banner_wait=1.0, identify_budget=6, use_nmap_probes=False,
                       tls_enumeration=True, tls_timeout=3, tls_budget=20)
    return EmbeddedRunner(store, lambda _shard: engine or ConnectEngine(), ctx,
                          identify_workers=8, batch_seconds=0.2)


def _scan(store, target: Target, ports: list[int], *,  # type: ignore[no-untyped-def]
          engine: ConnectEngine | None = None, interrupted: bool = False) -> ScanStats:
    runner = _runner(store, engine)
    if interrupted:
        runner.interrupt()  # Ctrl-C before discovery reaches any shard
    spans = tuple(PortRange(p, p) for p in sorted(ports))
    return asyncio.run(runner.run(ScanPlan.build(new_scan_id(), 0, [target], spans, ())))


def _events(stats: ScanStats) -> set[tuple[str, int, str, str]]:
    return {(e.kind.value, e.port, e.before, e.after) for e in stats.change_events}


def _stored(store) -> list[tuple[str, int, str]]:  # type: ignore[no-untyped-def]
    return sorted(store.query("SELECT kind, port, scan_id FROM changes FINAL"))


@pytest.fixture
def five_ports() -> list[int]:
    return [servers.free_port() for _ in range(5)]


def test_services_started_stopped_and_swapped_give_exact_events(
        store, tmp_path: Path, five_ports: list[int]) -> None:  # type: ignore[no-untyped-def]
    p_ssh, p_http, p_tls, p_redis, p_soon = five_ports
    covered = list(five_ports)
    cert1, cert2 = _cert(tmp_path, "one", 90), _cert(tmp_path, "two", 90)
    soon = _cert(tmp_path, "soon", 5)
    # Given sshd, nginx (version shown) and an openssl s_server, When the first scan runs
    with contextlib.ExitStack() as phase:
        try:
            phase.enter_context(servers.start_sshd(port=p_ssh))
        except servers.ServerUnavailable as exc:
            pytest.skip(str(exc))
        phase.enter_context(servers.start_nginx(port=p_http, server_tokens=True))
        phase.enter_context(openssl_server(cert1, port=p_tls))
        first = _scan(store, LOCAL, covered)
    # Then each port is opened, nothing else (their certificates are far from expiry)
    assert {(k, p) for k, p, _b, _a in _events(first)} == {
        ("opened", p_ssh), ("opened", p_http), ("opened", p_tls)}
    opened_http = next(e for e in first.change_events if e.port == p_http)
    assert opened_http.after.startswith("http nginx ") and opened_http.severity is Severity.LOW
    nginx_version = opened_http.after.split()[2]

    # When sshd is gone, nginx hides its version, the TLS server has a new certificate,
    # redis starts, and a TLS server with a certificate expiring in 5 days starts
    with contextlib.ExitStack() as phase:
        phase.enter_context(servers.start_nginx(port=p_http, server_tokens=False))
        phase.enter_context(openssl_server(cert2, port=p_tls))
        phase.enter_context(servers.start_redis(port=p_redis))
        phase.enter_context(openssl_server(soon, port=p_soon))
        second = _scan(store, LOCAL, covered)
    # Then exactly these events
    assert {(k, p) for k, p, _b, _a in _events(second)} == {
        ("closed", p_ssh), ("version_changed", p_http), ("cert_changed", p_tls),
        ("opened", p_redis), ("opened", p_soon), ("cert_expiring", p_soon)}
    by_kind = {(e.kind, e.port): e for e in second.change_events}
    assert by_kind[(ChangeKind.VERSION_CHANGED, p_http)].before == nginx_version
    assert by_kind[(ChangeKind.VERSION_CHANGED, p_http)].after == ""
    assert by_kind[(ChangeKind.CERT_EXPIRING, p_soon)].after == "7d"
    assert by_kind[(ChangeKind.OPENED, p_redis)].severity is Severity.HIGH
    assert by_kind[(ChangeKind.OPENED, p_redis)].risk_color == "red"
    assert by_kind[(ChangeKind.CLOSED, p_ssh)].after == "closed"
    assert all(e.previous_scan_id == first.scan_id for e in second.change_events)

    # And the report reads back the same rows, newest first, filters applying
    rows = changes_report(store, kinds=["closed", "opened"]).dicts()
    assert [(r["kind"], r["port"]) for r in rows[:3]] == sorted(
        [("closed", p_ssh), ("opened", p_redis), ("opened", p_soon)], key=lambda kp: kp[1])
    assert len(rows) == 6  # 3 opened by the first scan + 3 of the second
    assert {r["kind"] for r in changes_report(store, severity="high").dicts()} == {
        "opened", "cert_expiring"}
    assert [r["kind"] for r in changes_report(store, port=p_ssh).dicts()] == [
        "closed", "opened"]

    # And the List with --history marks the closed sshd port closed, with when
    listed = {r["port"]: r for r in store.report("list", {"history": 1}).dicts()}
    assert listed[p_ssh]["is_current"] == 0
    assert str(listed[p_ssh]["status"]).startswith("closed 20")
    assert listed[p_http]["status"] == "open"
    # (its state is its state now, not the one it was last seen in)
    assert (listed[p_ssh]["state"], listed[p_http]["state"]) == ("closed", "open")
    # And the scans' ends left each page index in one part (two scans stored several)
    assert store.active_parts(PAGE_INDEXES) == {
        "host_latest": 1, "port_latest": 1, "tls_latest": 1}

    # When a third scan is interrupted (redis and the rest are stopped by now)
    before = _stored(store)
    third = _scan(store, LOCAL, covered, interrupted=True)
    # Then it closes nothing and stores nothing
    assert third.interrupted and third.change_events == [] and _stored(store) == before
    # and it stops without merging the page indexes (its "interrupted" rows are a part)
    assert store.active_parts(["host_latest"]) == {"host_latest": 2}


def test_recomputing_a_host_scan_stores_no_duplicate_and_returns_the_same_events(
        store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = servers.free_port()
    with servers.start_redis(port=port):
        first = _scan(store, LOCAL, [port])
    assert _events(first) == {("opened", port, "", first.change_events[0].after)}
    rows = store.query("SELECT scan_id, shard_id FROM host_scans FINAL")
    assert len(rows) == 1
    # Given the host-scan records of that scan, When the recorder sees them again (a
    # replayed Kafka record, a restarted sink), with its findings again too
    host_scans = _host_scans(store, first.scan_id)
    recorder = ChangeRecorder(store)
    again = asyncio.run(recorder.finish(host_scans))
    # Then the same events come back (same ids) and the table holds each once
    assert [e.event_id for e in again] == [e.event_id for e in first.change_events]
    assert store.query("SELECT count() FROM changes FINAL") == [(1,)]
    assert store.query("SELECT count() FROM changes") == [(1,)]


def _host_scans(store, scan_id: str):  # type: ignore[no-untyped-def]
    from schemas.records import HostScan

    rows = store.query(
        "SELECT shard_id, started_at, finished_at, ports_scanned, open_ports, status "
        "FROM host_scans FINAL WHERE scan_id = {s:String}", {"s": scan_id})
    return [HostScan(scan_id, LOCAL, started.replace(tzinfo=dt.UTC),
                     finished.replace(tzinfo=dt.UTC), scanned, opened, status,
                     shard_id=shard_id)
            for shard_id, started, finished, scanned, opened, status in rows]


NETNS_INDEX = 116  # 198.18.116.0/24, unused by the other netns tests


def test_a_lost_syn_does_not_close_the_port(store) -> None:  # type: ignore[no-untyped-def]
    if not netns.is_root():
        pytest.skip("namespace test hosts need root")
    port = 2222
    with netns.test_host(NETNS_INDEX, tcp_banners={port: b"SSH-2.0-OpenSSH_9.2p1\r\n"},
                         first_syn_lost=[port]) as host:
        target = Target(ip=host.address, target=host.address)
        # Given a first scan that found the port (the connect engine retried the lost SYN)
        first = _scan(store, target, [port])
        assert [(e.kind, e.port) for e in first.change_events] == [(ChangeKind.OPENED, port)]
        # When the path loses the first SYN again and discovery does not retry
        subprocess.run(["ip", "netns", "exec", host.namespace, "nft", "flush", "set", "ip",
                        "pwtest", "firstsyn"], check=True, timeout=15)
        second = _scan(store, target, [port], engine=ConnectEngine(timeout=0.5, retries=0))
        # Then discovery missed it, the re-probe found it, and nothing is closed
        assert second.open_found == 0
        assert second.change_events == []
        assert store.query("SELECT kind FROM changes FINAL") == [("opened",)]


def test_prune_keeps_first_seen_the_change_log_and_the_latest_state(store) -> None:  # type: ignore[no-untyped-def]
    from schemas.records import Finding, HostScan, OpenPort, RiskColor, ServiceInfo
    from stream_processors.change_log import prune

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    old, recent = now - dt.timedelta(days=120), now - dt.timedelta(days=1)

    def finding(scan: str, when: dt.datetime) -> Finding:
        return Finding(port=OpenPort(scan_id=scan, target=LOCAL, port=8080, observed_at=when),
                       service=ServiceInfo(service="http", product="nginx"),
                       risk_color=RiskColor.GREEN)

    # Given a port seen 120 days ago and yesterday, with its change log
    recorder = ChangeRecorder(store)
    for scan, when in (("old", old), ("new", recent)):
        found = [finding(scan, when)]
        shard = HostScan(scan, LOCAL, when, when, 1, 1, shard_id=f"{scan}:0",
                         ports=(PortRange(8080, 8080),))
        store.insert_findings(found)
        store.insert_host_scans([shard])
        recorder.add_findings(found)
        asyncio.run(recorder.finish([shard]))
    # When observations older than 90 days are pruned
    pruned = prune(store, dt.timedelta(days=90), now=now)
    # Then the old raw rows are gone (one scan, said), the recent ones stay
    assert pruned == (now - dt.timedelta(days=90), 1)
    # (and again: nothing left to prune, none counted; the host's latest scan is kept)
    assert prune(store, dt.timedelta(days=0, seconds=1), now=now).scans == 0
    assert store.query("SELECT scan_id FROM port_observations FINAL") == [("new",)]
    assert store.query("SELECT scan_id FROM host_scans FINAL") == [("new",)]
    # And first_seen, the change log and the List are untouched
    listed = store.report("list", {}).dicts()
    assert [(r["port"], r["first_seen"].replace(tzinfo=dt.UTC)) for r in listed] == [(8080, old)]
    assert store.query("SELECT kind, scan_id FROM changes FINAL") == [("opened", "old")]



def test_prune_leaves_every_report_as_it_was(store) -> None:  # type: ignore[no-untyped-def]
    """What the reports show now never depends on the raw rows prune deletes: a host
    not scanned for months keeps its latest scan and its TLS port's latest probe, a
    scan the cutoff falls inside is kept whole, and a port closed long ago stays closed
    in the Products report."""
    from schemas import web_sql
    from schemas.records import (
        Certificate,
        CipherSuite,
        Finding,
        HostScan,
        OpenPort,
        ProbeStatus,
        RiskColor,
        ServiceInfo,
        TlsResult,
    )
    from stream_processors.change_log import prune

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cutoff = now - dt.timedelta(days=90)
    quiet = Target(ip="127.0.0.2", target="127.0.0.2", organization="Globex", asset="vault")
    recorder = ChangeRecorder(store)

    def scan(target: Target, scan_id: str, observed: dt.datetime, finished: dt.datetime,
             ports: dict[int, str], *, compare: bool = True) -> None:
        found = []
        for port, product in ports.items():
            tls = TlsResult()
            if port == 443:
                tls = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.2",),
                                grade="weak", suites=(CipherSuite(
                                    "TLSv1.2", "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
                                    strength="weak", reason="3DES"),),
                                certificates=(Certificate(subject="CN=vault",
                                                          sha256="ab" * 32,
                                                          not_after="2031-01-01T00:00:00"),))
            found.append(Finding(
                port=OpenPort(scan_id=scan_id, target=target, port=port, observed_at=observed),
                service=ServiceInfo(service="https" if port == 443 else "http",
                                    product=product, version="1.0", is_tls=port == 443),
                tls=tls, risk_color=RiskColor.GREEN))
        shard = HostScan(scan_id, target, observed, finished, 65535, len(found),
                         shard_id=f"{scan_id}:0", ports=(PortRange(1, 65535),))
        store.insert_findings(found)
        store.insert_host_scans([shard])
        if compare:
            recorder.add_findings(found)
            asyncio.run(recorder.finish([shard]))

    # Given a host whose port 80 closed 150 days ago and which was not scanned since, with
    # a weak suite on its TLS port
    old = now - dt.timedelta(days=200)
    scan(quiet, "q1", old, old, {80: "nginx", 443: "nginx"})
    gone = now - dt.timedelta(days=150)
    scan(quiet, "q2", gone, gone, {443: "nginx"})
    # and a host scanned long ago, then by a scan the cutoff falls inside (its port seen
    # before the cutoff, the scan ending after it)
    scan(LOCAL, "l1", old, old, {8080: "jetty"})
    scan(LOCAL, "l2", cutoff - dt.timedelta(minutes=1), cutoff + dt.timedelta(minutes=1),
         {8080: "jetty", 9090: "prometheus"})
    # and a host whose last scan, 120 days ago, was stored but never compared (its
    # transport died): change recovery's work
    lost = Target(ip="127.0.0.3", target="127.0.0.3", organization="Initech")
    scan(lost, "r1", old, old, {22: "openssh"})
    stored = now - dt.timedelta(days=120)
    scan(lost, "r2", stored, stored, {22: "openssh", 6379: "redis"}, compare=False)

    def reports() -> dict[str, object]:
        return {**{name: store.report(name, {}).dicts()
                   for name in ("summary", "list", "products", "ciphers")},
                "organizations": store.query(web_sql("organizations"))}

    before = reports()
    # When the scans that ended more than 90 days ago are pruned
    prune(store, dt.timedelta(days=90), now=now)
    # Then every report reads as it did
    after = reports()
    for name in before:
        assert after[name] == before[name], name
    assert [r["weak_suites"] for r in after["ciphers"]] == [1]  # type: ignore[index]
    assert {(r["product"], r["instances"]) for r in after["products"]} == {  # type: ignore[union-attr]
        ("nginx", 1), ("jetty", 1), ("prometheus", 1), ("openssh", 1), ("redis", 1)}
    # And only the raw rows of old scans nobody reads any more are gone
    assert sorted(store.query("SELECT DISTINCT scan_id FROM host_scans")) == [
        ("l2",), ("q2",), ("r2",)]
    assert sorted(store.query("SELECT DISTINCT scan_id, port FROM port_observations")) == [
        ("l2", 8080), ("l2", 9090), ("q2", 443), ("r2", 22), ("r2", 6379)]
    assert store.query("SELECT DISTINCT scan_id FROM tls_ciphers") == [("q2",)]
    # And the scan never compared still gets its events from change recovery
    recovered = asyncio.run(ChangeRecorder(store).recover(finished_before=now))
    assert [(e.kind, e.port, e.scan_id, e.previous_scan_id) for e in recovered] == [
        (ChangeKind.OPENED, 6379, "r2", "r1")]

@pytest.mark.parametrize("between", ["other", "closed"])
def test_a_certificate_that_comes_back_is_not_alerted_again_for_its_expiry(
        store, tmp_path: Path, between: str) -> None:  # type: ignore[no-untyped-def]
    # Given a port whose certificate expires in 5 days, then another certificate (a second
    # backend behind the address) or nothing (the service restarting), then the first
    # again, one real scan each
    port = servers.free_port()
    soon, other = _cert(tmp_path, "soon", 5), _cert(tmp_path, "other", 90)
    scans = []
    for cert in (soon, other if between == "other" else None, soon):
        if cert is None:
            scans.append(_scan(store, LOCAL, [port]))
            continue
        with openssl_server(cert, port=port):
            scans.append(_scan(store, LOCAL, [port]))
    # Then the expiry is said once; each change of certificate, or the port's closing and
    # reopening, is said (before: the 7-day alert went out again each time the first
    # certificate came back, after another or after the port was closed)
    middle, last = (("cert_changed", "cert_changed") if between == "other"
                    else ("closed", "reopened"))
    assert [sorted(k for k, _p, _b, _a in _events(s)) for s in scans] == [
        ["cert_expiring", "opened"], [middle], [last]]
    assert [(r[0], r[1]) for r in store.query(
        "SELECT kind, after FROM changes FINAL WHERE kind = 'cert_expiring'")] == [
        ("cert_expiring", "7d")]


@contextlib.contextmanager
def _dropping_syns(port: int):  # type: ignore[no-untyped-def]
    """A port whose SYNs are dropped, as a firewall filtering it would: a listener that
    never accepts, its one-slot queue filled by connections of our own (Linux drops a
    SYN to a full accept queue)."""
    import socket

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_a_narrow_scan_of_a_now_filtered_port_keeps_the_host_and_its_other_ports(
        store) -> None:  # type: ignore[no-untyped-def]
    """A review: a completed scan of two ports, the one open before now filtered, the
    other closed (RST), made the host unreachable, and the reports hid its redis, which
    still answered on a port that scan did not cover."""
    import socket

    p_redis, p_filtered, p_closed = servers.free_ports(3)
    try:
        redis = servers.start_redis(port=p_redis)
        redis.__enter__()
    except servers.ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        # Given a first scan that found redis and a listener
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", p_filtered))
        listener.listen(16)
        with listener:
            first = _scan(store, LOCAL, [p_redis, p_filtered])
        assert {(k, p) for k, p, _b, _a in _events(first)} == {
            ("opened", p_redis), ("opened", p_filtered)}
        # When a scan of only the listener's port and a closed one runs, the listener's
        # SYNs now dropped
        with _dropping_syns(p_filtered):
            second = _scan(store, LOCAL, [p_filtered, p_closed])
        # Then the host still answered (redis, asked beside the re-probe): the filtered
        # port is closed, the host is not unreachable, and redis is still listed, red
        assert second.open_found == 0
        assert {(k, p) for k, p, _b, _a in _events(second)} == {("closed", p_filtered)}
        assert store.query("SELECT is_reachable FROM host_state FINAL") == [(1,)]
        listed = store.report("list", {"color": "red"}).dicts()
        assert [(r["port"], r["service"]) for r in listed] == [(p_redis, "redis")]
    finally:
        redis.__exit__(None, None, None)
