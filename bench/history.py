"""Benchmark of change history at scale (``python -m bench.history``).

Builds a synthetic store of ``--hosts`` hosts x ``--days`` daily scans through the real
store API (``Store.insert_findings`` / ``insert_host_scans``) and the real change recorder
(``ChangeRecorder.finish``, so ``changes``, ``host_state`` and ``port_state`` are what a
year of monitoring leaves), with churn: ~0.5 % of ports close and as many open per day,
version bumps, certificate rotations. Then, in one run, it measures:

* the change computation for the last day's scan of every host (load previous states,
  re-probe closure candidates, the rule, write events and states);
* merging the pages' indexes at the scan's end (``Store.compact_page_indexes``, as the
  embedded runner does);
* the report queries behind the Summary, List, Changes and per-target pages, uncached
  (the SQL the pages run, timed at the store: no web cache in between);
* a replay of the anchor hosts' last day (their records delivered again: the events are
  read back, not recomputed);
* disk bytes per million observations;
* the anchor: Debian's ``ndiff`` on two nmap XML files of the last two days for
  ``--anchor-hosts`` hosts (as ``nmap -sV`` writes them, and again with each TLS port's
  ``ssl-cert`` output, the certificates portwatch compares too) vs portwatch computing the
  same hosts' changes, as ratios,
  and where portwatch's call spent its time (``PHASES``: snapshots, grouping, the state
  reads, re-probes, writes, and the rest).

Owns: the synthetic history generator and the timing. Touches no network except the
bounded closure re-probes of the recorder, which go to the synthetic loopback addresses
(127.2.0.0 upwards; nothing listens there, the kernel answers RST).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import ipaddress
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from schemas.records import (
    Certificate,
    Finding,
    HostScan,
    OpenPort,
    PortRange,
    ProbeStatus,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)

# (port, service, product, versions to bump through, colour, is_tls)
CATALOGUE = (
    (22, "ssh", "OpenSSH", ("8.4p1", "9.2p1", "9.6p1"), RiskColor.GREEN, False),
    (80, "http", "nginx", ("1.22.1", "1.24.0", "1.26.2"), RiskColor.GREEN, False),
    (443, "https", "nginx", ("1.22.1", "1.24.0", "1.26.2"), RiskColor.GREEN, True),
    (3306, "mysql", "MariaDB", ("10.11.6", "10.11.9"), RiskColor.RED, False),
    (6379, "redis", "Redis key-value store", ("7.0.15", "7.2.4"), RiskColor.RED, False),
    (8080, "http-proxy", "Jetty", ("9.4.51", "9.4.54"), RiskColor.GREEN, False),
    (8443, "https-alt", "", ("",), RiskColor.YELLOW, True),
)
ORGS = ("Example Corp", "Acme Ltd", "Globex", "Initech", "Umbrella")
SCAN_PORTS = (PortRange(1, 65535),)


@dataclass
class PortLife:
    entry: int  # index in CATALOGUE
    version: int = 0
    cert: int = 0


@dataclass
class HostLife:
    target: Target
    ports: dict[int, PortLife] = field(default_factory=dict)


def synthetic_hosts(count: int) -> list[HostLife]:
    base = int(ipaddress.IPv4Address("127.2.0.0"))
    out = []
    for i in range(count):
        ip = str(ipaddress.IPv4Address(base + i))
        out.append(HostLife(Target(ip=ip, target=ip, hostname=f"h{i}.example.test",
                                   organization=ORGS[i % len(ORGS)], asset=f"a{i:06d}")))
    return out


def evolve(hosts: list[HostLife], rng: random.Random, ports_per_host: int,
           first: bool) -> None:
    """One day of churn: ~0.5 % of ports close, as many open; version bumps; cert
    rotations."""
    for h in hosts:
        if first:
            for entry in rng.sample(range(len(CATALOGUE)), ports_per_host):
                h.ports[CATALOGUE[entry][0]] = PortLife(entry)
            continue
        for port in list(h.ports):
            if rng.random() < 0.005:
                del h.ports[port]
        if rng.random() < 0.005 * ports_per_host:
            entry = rng.randrange(len(CATALOGUE))
            h.ports.setdefault(CATALOGUE[entry][0], PortLife(entry))
        for life in h.ports.values():
            if rng.random() < 0.002:
                life.version = min(life.version + 1, len(CATALOGUE[life.entry][3]) - 1)
            if CATALOGUE[life.entry][5] and rng.random() < 0.01:
                life.cert += 1


def freeze_model() -> None:
    """Move the synthetic estate (``--hosts`` HostLife objects, their ports and the
    previous day's copy) out of the cyclic collector's sight: it is this harness's model,
    not portwatch's data, and each full collection the recorder's allocations trigger
    would otherwise walk it (at 40,000 hosts, 20 % of the sink-shaped day: 3.6-3.9 s
    against 2.7-3.2 s frozen). Objects made afterwards, the day's findings included,
    are collected as usual."""
    gc.collect()
    gc.freeze()


def findings_of(h: HostLife, scan_id: str, when: datetime) -> list[Finding]:
    out = []
    for port, life in h.ports.items():
        _, service, product, versions, colour, is_tls = CATALOGUE[life.entry]
        tls = TlsResult()
        if is_tls:
            tls = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.2", "TLSv1.3"),
                            grade="strong", certificates=(Certificate(
                                subject=f"CN={h.target.hostname}", sha256=f"{life.cert:064x}",
                                not_after="2031-01-01T00:00:00+00:00"),))
        out.append(Finding(port=OpenPort(scan_id=scan_id, target=h.target, port=port,
                                         observed_at=when),
                           service=ServiceInfo(service=service, product=product,
                                               version=versions[life.version], is_tls=is_tls),
                           tls=tls, risk_color=colour))
    return out


def host_scan(h: HostLife, scan_id: str, when: datetime) -> HostScan:
    return HostScan(scan_id=scan_id, target=h.target, started_at=when - timedelta(minutes=5),
                    finished_at=when, ports_scanned=65535, open_ports=len(h.ports),
                    shard_id=f"{scan_id}:0", ports=SCAN_PORTS)


def record_day(db, hosts: list[HostLife], scan_id: str, when: datetime,  # type: ignore[no-untyped-def]
               batch: int = 5_000, *, one_call: bool = False,
               phases: dict[str, float] | None = None) -> tuple[float, int]:
    """Store one day's scan of ``hosts`` (``batch`` hosts per insert) and compute its
    changes: one ``finish`` per batch (the sink's shape: it releases what is ready), or
    with ``one_call`` one for the whole scan (the embedded runner's shape: it compares a
    scan's hosts when the scan ends). (Seconds in the change computation, events.) With
    ``phases``, the seconds spent in each step of ``PHASES`` are added to it, and those
    in ``add_findings`` under "snapshots"."""
    from stream_processors.history import ChangeRecorder

    spent, events = 0.0, 0
    all_scans: list[HostScan] = []
    recorder = ChangeRecorder(db)
    for start in range(0, len(hosts), batch):
        chunk = hosts[start:start + batch]
        found = [f for h in chunk for f in findings_of(h, scan_id, when)]
        scans = [host_scan(h, scan_id, when) for h in chunk]
        db.insert_findings(found)
        db.insert_host_scans(scans)
        all_scans += scans
        # Each stored batch is handed to the recorder and then let go, as both transports
        # do (the runner's sink, the sink's on_stored): the findings are not kept alive
        begin = time.perf_counter()
        recorder.add_findings(found)
        if phases is not None:
            phases["snapshots"] = phases.get("snapshots", 0.0) + time.perf_counter() - begin
        if not one_call:
            events += len(asyncio.run(recorder.finish(scans)))
            recorder = ChangeRecorder(db)
        spent += time.perf_counter() - begin
        del found
    if one_call:
        with timed_phases(phases) if phases is not None else nullcontext():
            begin = time.perf_counter()
            events += len(asyncio.run(recorder.finish(all_scans)))
            spent += time.perf_counter() - begin
    return spent, events


# The recorder's steps that run once per call (or once per wave), each timed as a whole:
# wrapping them costs nothing measurable, unlike wrapping the per-host functions. What
# is left of a call (fingerprints, the fast-path screen, the rule, the orchestration) is
# its total minus these.
PHASES = (
    ("snapshots", "snapshots of the findings (add_findings)"),
    ("host_views", "grouping the host-scan records"),
    ("load_host_rows", "host_state read"),
    ("load_ports", "port_state read (hosts not screened out)"),
    ("_reprobe", "closure re-probes"),
    ("write_rows", "writes (changes, host_state, port_state)"),
)


@contextmanager
def timed_phases(spent: dict[str, float]) -> Iterator[None]:
    """Wrap the steps of ``PHASES`` where the recorder looks them up (the module globals
    of ``stream_processors.history``, ``ChangeRecorder._reprobe``) so each adds its wall
    seconds to ``spent``; put back after."""
    from stream_processors import history

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                begin = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    spent[name] = spent.get(name, 0.0) + time.perf_counter() - begin
            return run_async

        def run(*args: Any, **kwargs: Any) -> Any:
            begin = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - begin
        return run

    owners = {name: history.ChangeRecorder if name == "_reprobe" else history
              for name, _ in PHASES if name != "snapshots"}
    saved = {name: getattr(owner, name) for name, owner in owners.items()}
    try:
        for name, owner in owners.items():
            setattr(owner, name, timed(name, saved[name]))
        yield
    finally:
        for name, owner in owners.items():
            setattr(owner, name, saved[name])


def print_phases(total_s: float, spent: dict[str, float]) -> None:
    parts = [f"{label} {spent.get(name, 0.0) * 1000:.0f}" for name, label in PHASES]
    rest = total_s - sum(spent.get(name, 0.0) for name, _ in PHASES)
    print(f"  the anchor's call, ms: {'; '.join(parts)}; the rest (fingerprints, the "
          f"fast-path screen, the rule, orchestration) {rest * 1000:.0f}")


def replay_day(db, hosts: list[HostLife], scan_id: str,  # type: ignore[no-untyped-def]
               when: datetime) -> tuple[float, int]:
    """The host-scan records of a day already compared, given to a new recorder again
    (a replayed Kafka partition, a restarted sink): every host reads its stored events
    back. (Seconds, events.)"""
    from stream_processors.history import ChangeRecorder

    scans = [host_scan(h, scan_id, when) for h in hosts]
    begin = time.perf_counter()
    events = len(asyncio.run(ChangeRecorder(db).finish(scans)))
    return time.perf_counter() - begin, events


def nmap_xml(path: Path, hosts: list[HostLife], when: datetime, *,
             certificates: bool = False) -> None:
    """The hosts as ``nmap -sV`` would write them. With ``certificates``, each TLS port
    also carries what ``--script ssl-cert`` prints of its leaf (subject, notAfter,
    fingerprint): the certificate part of what portwatch compares, which ndiff then
    compares too. (Not ssl-enum-ciphers: Debian's ndiff 7.93 fails on a port with two
    script results, ``'<' not supported between instances of 'ScriptResult'``.)"""
    stamp = int(when.timestamp())
    with path.open("w", encoding="utf-8") as out:
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n<nmaprun scanner="nmap" '
                  f'args="nmap -sV" start="{stamp}" version="7.93" xmloutputversion="1.05">\n')
        for h in hosts:
            out.write(f'<host starttime="{stamp}" endtime="{stamp}"><status state="up" '
                      'reason="syn-ack"/>'
                      f'<address addr="{h.target.ip}" addrtype="ipv4"/><hostnames>'
                      f'<hostname name={quoteattr(h.target.hostname)} type="user"/>'
                      '</hostnames><ports>')
            for port, life in sorted(h.ports.items()):
                _, service, product, versions, _c, is_tls = CATALOGUE[life.entry]
                version = quoteattr(versions[life.version])
                out.write(f'<port protocol="tcp" portid="{port}"><state state="open" '
                          'reason="syn-ack" reason_ttl="64"/>'
                          f'<service name={quoteattr(service or "unknown")} '
                          f'product={quoteattr(product)} version={version} '
                          'method="probed" conf="10"/>')
                if certificates and is_tls:
                    cert = (f"Subject: commonName={h.target.hostname}\n"
                            f"Not valid after:  2031-01-01T00:00:00\n"
                            f"SHA-256: {life.cert:064x}")
                    out.write(f'<script id="ssl-cert" output={quoteattr(cert)}/>')
                out.write('</port>')
            out.write('</ports></host>\n')
        out.write(f'<runstats><finished time="{stamp}" elapsed="1"/><hosts up="{len(hosts)}" '
                  f'down="0" total="{len(hosts)}"/></runstats></nmaprun>\n')


def time_ndiff(*args: str) -> float:
    """Seconds of one ``ndiff`` run (nan: not installed). Exit 0 (same) and 1 (differ)
    are answers; anything else is ndiff failing, and is said, not timed as a result."""
    if not shutil.which("ndiff"):
        return float("nan")
    begin = time.perf_counter()
    done = subprocess.run(["ndiff", *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False, timeout=3600)
    spent = time.perf_counter() - begin
    if done.returncode not in (0, 1):
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        print(f"ndiff {' '.join(args)} failed ({done.returncode}): {last}", file=sys.stderr)
        return float("nan")
    return spent


def page_timings(db, now: datetime, one: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Median ms of the SQL behind each page, uncached (timed at the store)."""
    from portwatch.web.service import ReportService
    from stream_processors.change_log import changes_report

    web = ReportService(db, use_cache=False)
    (org,), = db.query("SELECT any(organization) FROM host_scans")
    pages = {
        "Summary (top 50 by risk)": lambda: db.report("summary", {}, limit=50),
        "List (first 50)": lambda: db.report("list", {}, limit=50),
        "List, red ports (first 50)": lambda: db.report("list", {"color": "red"}, limit=50),
        "Ciphers (first 50)": lambda: db.report("ciphers", {}, limit=50),
        "Changes, last 7 days (first 200)": lambda: changes_report(
            db, since=now - timedelta(days=7), limit=200),
        "Per-target: ports now": lambda: db.select(
            "ports", _history_sql("target_ports"), {"target": one, "ip": one}),
        "Per-target: its events": lambda: changes_report(db, host=one, host_ip=one),
        "Per-target: score after every scan": lambda: db.select(
            "history", _history_sql("target_scores"), {"target": one, "ip": one}),
        # the Summary page's chart (the web service's own call, as the page makes it)
        "Summary page: risk chart, 90 days": lambda: web.risk_history({}, days=90),
        "Summary page: risk chart, one organization": lambda: web.risk_history(
            {"org": org}, days=90),
        "Summary page: risk chart, one target": lambda: web.risk_history(
            {"target": one}, days=90),
    }
    return {label: time_ms(fn) for label, fn in pages.items()}


def print_pages(page_ms: dict[str, float]) -> None:
    print("\n| page query (uncached, at the store) | median ms | under 500 ms |")
    print("| --- | ---: | --- |")
    for label, ms in page_ms.items():
        print(f"| {label} | {ms:.0f} | {'yes' if ms < 500 else 'no'} |")


def pages_only(path: Path) -> int:
    """Time the pages of a store kept by an earlier ``--keep`` run (e.g. after the report
    SQL changed): the same queries, the same host, no rebuild."""
    from stream_processors.store import Store

    db = Store.from_url(f"chdb://{path / 'store'}", create=False)
    try:
        (now,), = db.query("SELECT max(finished_at) FROM host_state")
        (hosts,), = db.query("SELECT count() FROM host_state FINAL")
        (one,), = db.query("SELECT target FROM host_state FINAL ORDER BY target "
                           "LIMIT 1 OFFSET {n:UInt64}", {"n": hosts // 2})
        (observations,), = db.query("SELECT count() FROM port_observations")
        page_ms = page_timings(db, now.replace(tzinfo=UTC), one)
    finally:
        db.close()
    print(f"bench/history --pages-only: {hosts:,} hosts, {observations:,} observations; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print_pages(page_ms)
    return 0


def time_ms(fn, repeats: int = 5) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - begin) * 1000)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--ports-per-host", type=int, default=3)
    parser.add_argument("--anchor-hosts", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build the store in DIR and keep it (for --pages-only)")
    parser.add_argument("--pages-only", type=Path, metavar="DIR",
                        help="only time the pages of the store an earlier --keep left in DIR")
    args = parser.parse_args(argv)
    if args.pages_only:
        return pages_only(args.pages_only)
    from stream_processors.risk_days import refresh_risk_days
    from stream_processors.store import Store

    rng = random.Random(args.seed)
    hosts = synthetic_hosts(args.hosts)
    anchor = hosts[:min(args.anchor_hosts, len(hosts))]
    rest = hosts[len(anchor):]
    now = datetime.now(UTC).replace(microsecond=0, second=0, minute=0)
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="portwatch-bench-history-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        db = Store.from_url(f"chdb://{tmp / 'store'}")
        build_start = time.perf_counter()
        batched_s, batched_events = 0.0, 0
        for day in range(args.days - 1):
            evolve(hosts, rng, args.ports_per_host, first=day == 0)
            freeze_model()
            when = now - timedelta(days=args.days - 1 - day)
            batched_s, batched_events = record_day(db, hosts, f"day-{day:03d}", when)
            refresh_risk_days(db)  # each day's scan end does (not timed: built history)
            if day % 10 == 0:
                print(f"  built day {day + 1}/{args.days} "
                      f"({time.perf_counter() - build_start:.0f}s)", file=sys.stderr, flush=True)
        previous_day = {h.target.ip: HostLife(h.target, {p: PortLife(v.entry, v.version, v.cert)
                                                         for p, v in h.ports.items()})
                        for h in anchor}
        evolve(hosts, rng, args.ports_per_host, first=False)
        freeze_model()
        last = f"day-{args.days - 1:03d}"
        # The anchor first: these hosts' changes for the last day, through the real path
        phases: dict[str, float] = {}
        anchor_s, anchor_events = record_day(db, anchor, last, now, one_call=True,
                                             phases=phases)
        rest_s, rest_events = record_day(db, rest, last, now, one_call=True)
        build_s = time.perf_counter() - build_start
        # As the embedded runner does at a scan's end (the sink when its hold empties),
        # the risk chart's rows of the last day included
        begin = time.perf_counter()
        compacted = db.compact_page_indexes()
        compact_s = time.perf_counter() - begin
        replay_s, replay_events = replay_day(db, anchor, last, now)
        observations = db.query("SELECT count() FROM port_observations")[0][0]
        disk = db.query("SELECT sum(bytes_on_disk) FROM system.parts WHERE active "
                        "AND database = currentDatabase() AND table = 'port_observations'")[0][0]
        total_disk = db.query("SELECT sum(bytes_on_disk) FROM system.parts WHERE active "
                              "AND database = currentDatabase()")[0][0]
        page_ms = page_timings(db, now, hosts[len(hosts) // 2].target.ip)
        # ndiff on the same anchor hosts' last two days: as nmap -sV writes them, and with
        # each TLS port's certificate (ssl-cert), which portwatch compares as well. Text
        # output for the first; --xml for the second: Debian's ndiff 7.93 fails in text
        # mode on a port whose script output changed ("'>' not supported between
        # instances of 'list' and 'int'"), i.e. on every rotated certificate.
        xml_files: dict[str, tuple[str, str]] = {}
        for kind, certs in (("plain", False), ("certs", True)):
            old_xml, new_xml = tmp / f"day-a-{kind}.xml", tmp / f"day-b-{kind}.xml"
            nmap_xml(old_xml, list(previous_day.values()), now - timedelta(days=1),
                     certificates=certs)
            nmap_xml(new_xml, anchor, now, certificates=certs)
            xml_files[kind] = (str(old_xml), str(new_xml))
        rule_s = _rule_only(previous_day, anchor, now)
        ndiff_s = time_ndiff(*xml_files["plain"])
        ndiff_certs_s = time_ndiff("--xml", *xml_files["certs"])
        db.close()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    per_million = disk / max(observations, 1) * 1e6
    print(f"\nbench/history: {args.hosts:,} hosts x {args.days} days x "
          f"~{args.ports_per_host} ports = {observations:,} observations "
          f"(built in {build_s:.0f}s); {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"changes of the last day's scan of all {args.hosts:,} hosts: "
          f"{anchor_s + rest_s:.2f}s ({anchor_events + rest_events} events; one recorder "
          f"call for the anchor hosts and one for the rest, as the embedded runner does at "
          f"a scan's end); the day before, in calls of 5,000 hosts as a sink releases them: "
          f"{batched_s:.2f}s ({batched_events} events)")
    print(f"the risk chart's rows of the last day refreshed and the page indexes merged "
          f"at the scan's end ({', '.join(compacted) or 'none'}): {compact_s:.2f}s")
    print(f"a replay of the last day's records of the {len(anchor):,} anchor hosts (a "
          f"re-delivered partition): {replay_s:.2f}s ({replay_events} events read back)")
    print(f"disk: port_observations {per_million / 2**20:.1f} MiB per million observations; "
          f"whole store {total_disk / 2**20:.0f} MiB")
    print_pages(page_ms)
    print(f"\nanchor, {len(anchor):,} hosts, last two days: portwatch {anchor_s:.2f}s "
          f"({anchor_events} events, store read + rule + write); ndiff {ndiff_s:.2f}s "
          f"(ports and services): portwatch {ndiff_s / anchor_s:.1f}x faster; ndiff with "
          f"the certificates too (ssl-cert, --xml) {ndiff_certs_s:.2f}s: "
          f"{ndiff_certs_s / anchor_s:.1f}x; the rule alone (in memory, as ndiff compares "
          f"two files it holds) {rule_s:.3f}s: {ndiff_s / rule_s:.0f}x / "
          f"{ndiff_certs_s / rule_s:.0f}x")
    print_phases(anchor_s, phases)
    return 0


def _rule_only(previous_day: dict[str, HostLife], today: list[HostLife],
               now: datetime) -> float:
    """Seconds for ``detect_changes`` over the anchor hosts, states built in memory."""
    from stream_processors.changes import (
        HostScanView,
        HostState,
        detect_changes,
        snapshot_of,
    )

    before = now - timedelta(days=1)
    states = {}
    for ip, h in previous_day.items():
        snaps = [snapshot_of(f) for f in findings_of(h, "prev", before)]
        states[ip] = HostState(h.target, "prev", before, True, {s.key: s for s in snaps})
    views = []
    for h in today:
        snaps = [snapshot_of(f) for f in findings_of(h, "last", now)]
        views.append(HostScanView(h.target, "last", (host_scan(h, "last", now),),
                                  {s.key: s for s in snaps}))
    begin = time.perf_counter()
    for view in views:
        # closure candidates are answered "refused", as the re-probe of a loopback port
        detect_changes(states.get(view.target.ip), view, _refused(states.get(view.target.ip),
                                                                   view))
    return time.perf_counter() - begin


def _refused(state, view):  # type: ignore[no-untyped-def]
    from probers.reprobe import Answer
    from stream_processors.changes import closure_candidates

    return {k: Answer.REFUSED for k in closure_candidates(state, view)}


def _history_sql(name: str) -> str:
    from schemas import history_sql

    return history_sql(name)


if __name__ == "__main__":
    sys.exit(main())
