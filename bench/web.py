"""Benchmark of the web reports (``make bench-web``): time to serve each page and API call.

Fills an embedded store with synthetic findings (no network: ``Store.insert_findings`` on
made-up records whose addresses are derived from TEST-NET-free loopback space), starts
``portwatch serve`` as its own process (chdb: the server owns the store), then times
repeated requests from this second process and prints a Markdown table of medians.

Owns: the synthetic data generator for the bench and the timing loop. Touches no
network beyond loopback HTTP to the server it started.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas.records import (
    CdnVerdict,
    Certificate,
    CipherSuite,
    Finding,
    HostScan,
    OpenPort,
    ProbeStatus,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)

# (port, service, product, version, colour, is_tls)
CATALOGUE: tuple[tuple[int, str, str, str, RiskColor, bool], ...] = (
    (22, "ssh", "OpenSSH", "9.2p1", RiskColor.GREEN, False),
    (22, "ssh", "OpenSSH", "8.4p1", RiskColor.GREEN, False),
    (25, "smtp", "Postfix smtpd", "", RiskColor.GREEN, False),
    (80, "http", "nginx", "1.22.1", RiskColor.GREEN, False),
    (80, "http", "Apache httpd", "2.4.57", RiskColor.GREEN, False),
    (443, "https", "nginx", "1.22.1", RiskColor.GREEN, True),
    (443, "https", "Apache httpd", "2.4.57", RiskColor.GREEN, True),
    (21, "ftp", "vsftpd", "3.0.3", RiskColor.RED, False),
    (3306, "mysql", "MariaDB", "10.11.6", RiskColor.RED, False),
    (5432, "postgresql", "PostgreSQL DB", "15.5", RiskColor.RED, False),
    (6379, "redis", "Redis key-value store", "7.0.15", RiskColor.RED, False),
    (3389, "ms-wbt-server", "", "", RiskColor.RED, False),
    (8080, "http-proxy", "Jetty", "9.4.51", RiskColor.GREEN, False),
    (8443, "https-alt", "", "", RiskColor.YELLOW, True),
    (9000, "", "", "", RiskColor.YELLOW, False),
)
ORGANIZATIONS = ("Example Corp", "Acme Ltd", "Globex", "Initech", "Umbrella")


def synthetic_hosts(count: int) -> list[Target]:
    """Loopback addresses 127.1.0.0 upwards: never scanned, only stored."""
    base = int(ipaddress.IPv4Address("127.1.0.0"))
    out = []
    for i in range(count):
        ip = str(ipaddress.IPv4Address(base + i))
        out.append(Target(ip=ip, target=ip, hostname=f"host-{i}.example.test",
                          organization=ORGANIZATIONS[i % len(ORGANIZATIONS)],
                          asset=f"asset-{i:05d}"))
    return out


def synthetic_findings(findings: int = 100_000, ports_per_host: int = 20, days: int = 14,
                       seed: int = 7) -> tuple[list[Finding], list[HostScan]]:
    """``findings`` current open ports over ``findings / ports_per_host`` hosts, each host
    scanned once a day for ``days`` days (only the last scan holds every port, so the
    risk-over-time chart has a slope). Deterministic for a seed."""
    rng = random.Random(seed)
    hosts = synthetic_hosts(max(1, findings // ports_per_host))
    now = datetime.now(UTC).replace(microsecond=0)
    out: list[Finding] = []
    scans: list[HostScan] = []
    for host_index, target in enumerate(hosts):
        ports = rng.sample(range(1024, 65000), ports_per_host - 4) + [22, 80, 443, 3306]
        for day in range(days):
            when = now - timedelta(days=days - 1 - day, minutes=host_index % 60)
            scan_id = f"bench-{day:02d}"
            # history: earlier scans saw fewer ports; only the last one is complete
            seen = ports if day == days - 1 else ports[: max(1, len(ports) * (day + 1) // days)]
            if day != days - 1 and day % 3:
                continue  # keep the bulk small: a scan every third day, plus the last
            for port in seen:
                entry = CATALOGUE[(port * 7 + host_index) % len(CATALOGUE)]
                out.append(_finding(scan_id, target, port, entry, when))
            scans.append(HostScan(scan_id=scan_id, target=target, started_at=when,
                                  finished_at=when, ports_scanned=65535, open_ports=len(seen)))
    return out, scans


def _finding(scan_id: str, target: Target, port: int,
             entry: tuple[int, str, str, str, RiskColor, bool], when: datetime) -> Finding:
    _, service, product, version, color, is_tls = entry
    tls = TlsResult()
    if is_tls:
        tls = TlsResult(
            status=ProbeStatus.COMPLETED, versions=("TLSv1.2", "TLSv1.3"), grade="strong",
            suites=(CipherSuite("TLSv1.3", "TLS_AES_256_GCM_SHA384", strength="strong"),
                    CipherSuite("TLSv1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                                strength="strong")),
            certificates=(Certificate(subject=f"CN={target.hostname}", issuer="CN=Test CA",
                                      not_after="2030-01-01", key_type="EC", key_bits=256),))
    return Finding(
        port=OpenPort(scan_id=scan_id, target=target, port=port, observed_at=when),
        service=ServiceInfo(service=service, product=product, version=version, is_tls=is_tls,
                            banner=f"{product} {version}".strip(), method="bench",
                            confidence=10 if product else 0),
        tls=tls, cdn=CdnVerdict(), risk_color=color,
        risk_reason="synthetic")


def fill(store_url: str, findings: int) -> int:
    from stream_processors.store import Store

    rows, scans = synthetic_findings(findings)
    with Store.from_url(store_url) as db:
        for start in range(0, len(rows), 20_000):
            db.insert_findings(rows[start:start + 20_000])
        db.insert_host_scans(scans)
        current = db.query("SELECT count() FROM (SELECT target, ip, proto, port FROM findings "
                           "GROUP BY target, ip, proto, port)")[0][0]
    return int(current)


REPO = Path(__file__).resolve().parent.parent
TARGET_MS = 300.0
URLS = (
    ("Summary page", "/"),
    ("Summary page, org filter", "/?org=Globex"),
    ("List page", "/list"),
    ("List page, sorted by risk", "/list?sort=risk&direction=desc"),
    ("List page 1000 (offset 49,950)", "/list?page=1000"),
    ("List page, product drill-down", "/list?product=nginx&version=1.22.1"),
    ("Products page", "/products"),
    ("Ciphers page", "/ciphers"),
    ("API summary", "/api/v1/summary"),
    ("API list", "/api/v1/list?per_page=100"),
    ("API list, colour + sort", "/api/v1/list?color=red&sort=port&direction=desc"),
    ("API products", "/api/v1/products"),
    ("API ciphers", "/api/v1/ciphers"),
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def served(store_url: str, *extra: str) -> Iterator[str]:
    """``portwatch serve`` in its own process (it owns the chdb store while it runs)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "portwatch", "serve", "--store", store_url,
                             "--port", str(port), *extra], cwd=REPO,
                            env={**os.environ, "PORTWATCH_WEB_TOKEN": ""},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError("portwatch serve exited")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(base + "/healthz", timeout=2):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("portwatch serve did not start")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def fetch_ms(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
    return (time.perf_counter() - start) * 1000


def measure(base: str, repeats: int) -> dict[str, tuple[float, float]]:
    """Per URL: (first request, median of the next ``repeats``) in milliseconds."""
    out = {}
    for label, path in URLS:
        first = fetch_ms(base + path)
        out[label] = (first, statistics.median(fetch_ms(base + path) for _ in range(repeats)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--findings", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--store", default="", help="reuse this chdb:/// store (filled once)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="portwatch-bench-web-") as tmp:
        store_url = args.store or f"chdb://{Path(tmp) / 'store'}"
        start = time.perf_counter()
        current = fill(store_url, args.findings) if not args.store else args.findings
        print(f"store: {current:,} current findings "
              f"(filled in {time.perf_counter() - start:.1f}s); {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        with served(store_url, "--no-cache") as base:
            cold = measure(base, args.repeats)
        with served(store_url) as base:
            warm = measure(base, args.repeats)
    print()
    print("| request | no cache: median ms | cached: first ms | cached: median ms | "
          f"under {TARGET_MS:.0f} ms |")
    print("| --- | ---: | ---: | ---: | --- |")
    for label, _ in URLS:
        ok = "yes" if cold[label][1] < TARGET_MS else "no"  # judged uncached: the worst case
        print(f"| {label} | {cold[label][1]:.0f} | {warm[label][0]:.0f} | "
              f"{warm[label][1]:.1f} | {ok} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
