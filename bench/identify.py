"""Benchmark: portwatch's identification stage against ``nmap -sV`` on the same real daemons.

Owns: the ``python -m bench.identify [--runs N] [--json]`` command. It starts
Debian's own daemons on loopback with ``tests/servers.py`` (sshd, nginx plain
and TLS, redis, PostgreSQL, MariaDB, vsftpd, ``openssl s_server -www``): once on
127.0.0.1 with free (non-standard) ports, once on a second loopback address of
its own with each service's standard port, so that both the port-hinted path
and the blind path are measured. Then, ``--runs`` times, alternating which goes
first:

- portwatch: every open port through ``stream_processors.stages.process`` with
  ``make_context(...)`` defaults, all ports at once as the embedded runner does
  (the per-host connection limit applies); TLS cipher enumeration is off, since
  ``nmap -sV`` does not enumerate ciphers either;
- ``nmap -sV -n -Pn -p <ports> <addresses> -oX -``.

It prints per port both answers and whether they agree, both wall times and
their ratio, a summary against the targets, and a markdown table for
BENCHMARKS.md.

Agreement, for a port where nmap names a product: the same product (case-folded;
nmap's "MySQL" whose version says MariaDB is MariaDB) and, where nmap has a
version, the same version key (the leading version token, after MariaDB's
"5.5.5-" compatibility prefix: nmap's "9.2p1 Debian 2+deb12u10" and portwatch's
"9.2p1" agree). The service names must match too, with nmap's ``ssl/http`` and
portwatch's ``https`` (service ``http`` or ``https`` with ``is_tls``) the same.

Must not touch: any address but the loopback addresses it binds itself; the
repository's files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas.records import Finding, OpenPort, PortState, Proto, Target
from stream_processors.stages import make_context, process
from tests import daemons, servers, tls_servers

NMAP_TIMEOUT = 300.0
PORTWATCH_TIMEOUT = 120.0

Factory = Callable[[str, int | None], AbstractContextManager[servers.Server]]


def _nginx_tls(host: str, port: int | None) -> AbstractContextManager[servers.Server]:
    return servers.start_nginx(host, port, tls=True)


def _s_server(host: str, port: int | None) -> AbstractContextManager[servers.Server]:
    return servers.start_openssl_s_server(("-www",), host, port)


@contextlib.contextmanager
def _gnutls(host: str, port: int | None) -> Iterator[servers.Server]:
    """gnutls-serv binds the wildcard of a free port: only its free-port run is measured
    (only loopback is ever dialled)."""
    if port is not None:
        raise servers.ServerUnavailable("gnutls-serv: free port only (it binds the wildcard)")
    with tempfile.TemporaryDirectory(prefix="portwatch-gnutls-") as tmp:
        certs = tls_servers.make_cert(Path(tmp))
        with tls_servers.gnutls_server(certs, "NORMAL") as bound:
            yield servers.Server("127.0.0.1", bound, None, Path(tmp), Path(tmp))  # type: ignore[arg-type]


def _smbd(host: str, port: int | None) -> AbstractContextManager[servers.Server]:
    # smbd binds interface addresses only: its standard port goes on 127.0.0.1
    return daemons.start_smbd("127.0.0.1", port)


def _dovecot(protocol: str, tls: bool) -> Factory:
    def start(host: str, port: int | None) -> AbstractContextManager[servers.Server]:
        return daemons.start_dovecot(host, port, protocol=protocol, tls=tls)
    return start


# name, launcher, standard port (used on the second address; on the third for the ones
# whose standard port another service already holds there)
SERVICES: tuple[tuple[str, Factory, int], ...] = (
    ("sshd", servers.start_sshd, 22),
    ("nginx", servers.start_nginx, 80),
    ("nginx-tls", _nginx_tls, 443),
    ("redis", servers.start_redis, 6379),
    ("postgres", servers.start_postgres, 5432),
    ("mariadb", servers.start_mariadb, 3306),
    ("vsftpd", servers.start_vsftpd, 21),
    ("s_server", _s_server, 4433),
    # issue 15: every other Debian daemon the Makefile installs that nmap names
    ("gnutls-serv", _gnutls, 0),
    ("xrdp", daemons.start_xrdp, 3389),
    ("mosquitto", daemons.start_mosquitto, 1883),
    ("rabbitmq", daemons.start_rabbitmq, 5672),
    ("smbd", _smbd, 445),
    ("memcached", daemons.start_memcached, 11211),
    ("lighttpd", daemons.start_lighttpd, 80),
    ("epmd", daemons.start_epmd, 4369),
    ("slapd", daemons.start_slapd, 389),
    ("dovecot-imap", _dovecot("imap", False), 143),
    ("dovecot-pop3", _dovecot("pop3", False), 110),
    ("dovecot-imaps", _dovecot("imap", True), 993),
    ("prosody", daemons.start_prosody, 5222),
    ("python-http", daemons.start_python_http, 8000),
    ("tinyproxy", daemons.start_tinyproxy, 8888),
)


@dataclass
class Answer:
    service: str = ""
    product: str = ""
    version: str = ""
    extra: str = ""
    method: str = ""
    confidence: int = 0

    def text(self) -> str:
        words = " ".join(w for w in (self.service or "unknown", self.product, self.version) if w)
        return words


@dataclass
class PortResult:
    name: str
    host: str
    port: int
    portwatch: Answer
    nmap: Answer
    agrees: bool | None  # None: nmap names no product, not scored
    why: str = ""


@dataclass
class Run:
    portwatch_seconds: float
    nmap_seconds: float
    ports: list[PortResult] = field(default_factory=list)


# -- agreement ---------------------------------------------------------------------------

_VERSION_TOKEN = re.compile(r"\d+(?:\.\d+)*[a-z0-9]*", re.I)


def version_key(version: str) -> str:
    text = version.strip()
    if text.startswith("5.5.5-") and "mariadb" in text.lower():
        text = text[len("5.5.5-"):]
    m = _VERSION_TOKEN.match(text)
    return m.group(0).lower() if m else text.lower()


def product_key(product: str, version: str) -> str:
    if product.lower() == "mysql" and "mariadb" in version.lower():
        return "mariadb"
    if "net-snmp" in product.lower():
        # nmap joins its two SNMP answers: "SNMPv1 server; net-snmp SNMPv3 server"
        return "net-snmp"
    return product.strip().lower()


def service_key(service: str) -> str:
    s = service.lower()
    return {"ssl/http": "https", "ssl/https": "https", "ssl/https?": "https"}.get(s, s)


def compare(pw: Answer, nm: Answer) -> tuple[bool | None, str]:
    if nm.method == "table" or nm.service in ("", "unknown", "ssl/unknown"):
        # nmap's services-table guess from the port number (conf 3) is not an
        # identification: nmap's probes named nothing there
        return None, "nmap names nothing (port-table guess at most; not scored)"
    if not nm.product:
        if nm.service and not pw.service:
            return False, "nmap names a service, portwatch says unknown"
        return None, "nmap names no product (not scored)"
    if not pw.service:
        return False, "portwatch says unknown where nmap names a product"
    if service_key(pw.service) != service_key(nm.service):
        return False, f"service {pw.service!r} vs {nm.service!r}"
    if product_key(pw.product, pw.version) != product_key(nm.product, nm.version):
        return False, f"product {pw.product!r} vs {nm.product!r}"
    if nm.version and version_key(pw.version) != version_key(nm.version):
        return False, f"version {pw.version!r} vs {nm.version!r}"
    return True, "same product" + (" and version" if nm.version else "")


# -- the two tools -----------------------------------------------------------------------


def portwatch_answer(finding: Finding) -> Answer:
    s = finding.service
    service = s.service
    if s.is_tls and service == "http":
        service = "https"
    return Answer(service, s.product, s.version, s.extra_info, s.method, s.confidence)


async def run_portwatch(endpoints: list[tuple[str, int]]) -> tuple[float, dict[tuple[str, int],
                                                                              Answer]]:
    ctx = make_context(tls_enumeration=False)
    targets = {host: Target(ip=host, target=host) for host, _ in endpoints}
    ports = [OpenPort(scan_id="bench-identify", target=targets[h], port=p) for h, p in endpoints]
    started = time.perf_counter()
    findings = await asyncio.wait_for(asyncio.gather(*(process(p, ctx) for p in ports)),
                                      PORTWATCH_TIMEOUT)
    elapsed = time.perf_counter() - started
    return elapsed, {(f.port.target.ip, f.port.port): portwatch_answer(f) for f in findings}


async def run_portwatch_udp(endpoints: list[tuple[str, int]]) -> tuple[
        float, dict[tuple[str, int], Answer]]:
    """UDP ports as discovery hands them over (open: the agent answered)."""
    ctx = make_context(tls_enumeration=False)
    ports = [OpenPort(scan_id="bench-identify", target=Target(ip=h, target=h), port=p,
                      proto=Proto.UDP, state=PortState.OPEN) for h, p in endpoints]
    started = time.perf_counter()
    findings = await asyncio.wait_for(asyncio.gather(*(process(p, ctx) for p in ports)),
                                      PORTWATCH_TIMEOUT)
    elapsed = time.perf_counter() - started
    return elapsed, {(f.port.target.ip, f.port.port): portwatch_answer(f) for f in findings}


def run_nmap(endpoints: list[tuple[str, int]], *, udp: bool = False,
             ) -> tuple[float, dict[tuple[str, int], Answer]]:
    nmap = shutil.which("nmap")
    if nmap is None:
        raise SystemExit("nmap is not installed")
    if not endpoints:
        return 0.0, {}
    hosts = sorted({h for h, _ in endpoints})
    ports = ",".join(str(p) for p in sorted({p for _, p in endpoints}))
    argv = [nmap, "-sV", "-n", "-Pn", "-p", ports, *hosts, "-oX", "-"]
    if udp:
        argv.insert(1, "-sU")
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, timeout=NMAP_TIMEOUT, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"nmap failed: {proc.stderr.decode(errors='replace')}")
    return elapsed, parse_nmap_xml(proc.stdout)


_MQTT_SCRIPT_NAME = re.compile(r"^(mosquitto) version (\S+)$", re.I)


def parse_nmap_xml(xml: bytes) -> dict[tuple[str, int], Answer]:
    out: dict[tuple[str, int], Answer] = {}
    root = ET.fromstring(xml)
    for host in root.iter("host"):
        address = host.find("address")
        if address is None:
            continue
        ip = address.get("addr", "")
        for port in host.iter("port"):
            state = port.find("state")
            if state is None or state.get("state") != "open":
                continue
            svc = port.find("service")
            answer = Answer()
            if svc is not None:
                name = svc.get("name", "")
                product, version = svc.get("product", ""), svc.get("version", "")
                broker = _MQTT_SCRIPT_NAME.match(name)
                if broker and not product:
                    # nmap's mqtt-subscribe (a version script) writes the broker's
                    # $SYS/broker/version text into the service name
                    name, product, version = "mqtt", broker.group(1), broker.group(2)
                if svc.get("tunnel") == "ssl" and name:
                    name = f"ssl/{name}"
                answer = Answer(
                    service=name,
                    product=product,
                    version=version,
                    extra=svc.get("extrainfo", ""),
                    method=svc.get("method", ""),
                    confidence=int(svc.get("conf", "0")),
                )
            out[(ip, int(port.get("portid", "0")))] = answer
    return out


# -- orchestration -----------------------------------------------------------------------


@contextlib.contextmanager
def start_all(second_host: str | None) -> Iterator[tuple[dict[tuple[str, int], str], list[str]]]:
    """Start every daemon; yield {(host, port): name} and the ones that could not start."""
    names: dict[tuple[str, int], str] = {}
    skipped: list[str] = []
    with contextlib.ExitStack() as stack:
        plans: list[tuple[str, str, int | None]] = [("127.0.0.1", n, None) for n, _, _ in SERVICES]
        if second_host:
            third_host = second_host.rsplit(".", 1)[0] + "." + str(
                (int(second_host.rsplit(".", 1)[1]) % 250) + 2)
            taken: set[int] = set()
            for n, _, std in SERVICES:
                if not std:
                    continue
                plans.append((second_host if std not in taken else third_host, n, std))
                taken.add(std)
        factories = {n: f for n, f, _ in SERVICES}
        for host, name, port in plans:
            try:
                server = stack.enter_context(factories[name](host, port))
            except servers.ServerUnavailable as exc:
                skipped.append(f"{name}@{host}: {str(exc).splitlines()[0][:120]}")
                continue
            names[(server.host, server.port)] = name
        yield names, skipped


def bench(runs: int) -> tuple[list[Run], list[str]]:
    second = f"127.0.0.{random.randint(2, 250)}" if servers.is_root() else None
    results: list[Run] = []
    with start_all(second) as (names, skipped), contextlib.ExitStack() as udp_stack:
        endpoints = sorted(names)
        # UDP: snmpd on its standard port (portwatch asks SNMP where the port says snmp)
        udp_names: dict[tuple[str, int], str] = {}
        if second:
            try:
                agent = udp_stack.enter_context(daemons.start_snmpd(second, 161))
                udp_names[(agent.host, agent.port)] = "snmpd (udp)"
            except servers.ServerUnavailable as exc:
                skipped.append(f"snmpd@{second}: {str(exc).splitlines()[0][:120]}")
        udp_endpoints = sorted(udp_names)
        for index in range(runs):
            if index % 2 == 0:
                pw_time, pw = asyncio.run(run_portwatch(endpoints))
                nm_time, nm = run_nmap(endpoints)
            else:
                nm_time, nm = run_nmap(endpoints)
                pw_time, pw = asyncio.run(run_portwatch(endpoints))
            pw_udp_time, pw_udp = asyncio.run(run_portwatch_udp(udp_endpoints))
            nm_udp_time, nm_udp = run_nmap(udp_endpoints, udp=True)
            run = Run(pw_time + pw_udp_time, nm_time + nm_udp_time)
            for key in endpoints:
                p, n = pw.get(key, Answer()), nm.get(key, Answer(service="(not open)"))
                agrees, why = compare(p, n)
                run.ports.append(PortResult(names[key], key[0], key[1], p, n, agrees, why))
            for key in udp_endpoints:
                p, n = pw_udp.get(key, Answer()), nm_udp.get(key, Answer(service="(not open)"))
                agrees, why = compare(p, n)
                run.ports.append(PortResult(udp_names[key], key[0], key[1], p, n, agrees, why))
            results.append(run)
    return results, skipped


def summarize(results: list[Run]) -> dict[str, Any]:
    last = results[-1]
    scored = [r for run in results for r in run.ports if r.agrees is not None]
    agreed = [r for r in scored if r.agrees]
    unknown = [r for run in results for r in run.ports
               if r.nmap.product and not r.portwatch.service]
    pw_median = statistics.median(r.portwatch_seconds for r in results)
    nm_median = statistics.median(r.nmap_seconds for r in results)
    return {
        "ports": len(last.ports),
        "runs": len(results),
        "agreement": len(agreed) / len(scored) if scored else 1.0,
        "scored": len(scored),
        "agreed": len(agreed),
        "unknown_where_nmap_names": len(unknown),
        "portwatch_seconds": [round(r.portwatch_seconds, 3) for r in results],
        "nmap_seconds": [round(r.nmap_seconds, 3) for r in results],
        "portwatch_median": pw_median,
        "nmap_median": nm_median,
        "ratio": pw_median / nm_median if nm_median else float("inf"),
    }


def print_report(results: list[Run], skipped: list[str]) -> None:
    for number, run in enumerate(results, 1):
        print(f"\nrun {number}: portwatch {run.portwatch_seconds:.2f} s, "
              f"nmap -sV {run.nmap_seconds:.2f} s, "
              f"ratio {run.portwatch_seconds / run.nmap_seconds:.3f}")
        for r in run.ports:
            mark = {True: "agree", False: "DISAGREE", None: "-"}[r.agrees]
            print(f"  {r.name:<10} {r.host}:{r.port:<5}  portwatch: {r.portwatch.text():<45} "
                  f"[{r.portwatch.method}, conf {r.portwatch.confidence}]")
            print(f"  {'':<10} {'':<15}  nmap:      {r.nmap.text():<45} "
                  f"[{r.nmap.method}, conf {r.nmap.confidence}]  {mark}: {r.why}")
    summary = summarize(results)
    print("\nsummary:")
    print(f"  agreement {summary['agreed']}/{summary['scored']} = {summary['agreement']:.1%} "
          f"of the ports nmap names (target >= 95 %)")
    print(f"  ports where nmap names a product and portwatch says unknown: "
          f"{summary['unknown_where_nmap_names']} (target 0)")
    print(f"  wall time median: portwatch {summary['portwatch_median']:.2f} s, nmap -sV "
          f"{summary['nmap_median']:.2f} s, ratio {summary['ratio']:.3f} (target <= 0.200)")
    if skipped:
        print("  not started: " + "; ".join(skipped))
    print("\nmarkdown (last run):\n")
    print("| service | address:port | portwatch | nmap -sV | agree |")
    print("| --- | --- | --- | --- | --- |")
    for r in results[-1].ports:
        mark = {True: "yes", False: "**no**", None: "n/a"}[r.agrees]
        print(f"| {r.name} | {r.host}:{r.port} | {r.portwatch.text()} | {r.nmap.text()} "
              f"| {mark} |")
    print()
    print("| tool | median wall time | all runs |")
    print("| --- | --- | --- |")
    print(f"| portwatch identify (process per port, make_context defaults) | "
          f"{summary['portwatch_median']:.2f} s | "
          f"{', '.join(f'{t:.2f}' for t in summary['portwatch_seconds'])} |")
    print(f"| nmap -sV -n -Pn | {summary['nmap_median']:.2f} s | "
          f"{', '.join(f'{t:.2f}' for t in summary['nmap_seconds'])} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.identify", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    results, skipped = bench(args.runs)
    if args.json:
        print(json.dumps({"summary": summarize(results), "skipped": skipped,
                          "runs": [asdict(r) for r in results]}, indent=2))
    else:
        print_report(results, skipped)
    summary = summarize(results)
    met = (summary["agreement"] >= 0.95 and summary["unknown_where_nmap_names"] == 0
           and summary["ratio"] <= 0.2)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
