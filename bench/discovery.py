"""Benchmark: full 65,535-port SYN sweeps of namespace test hosts: portwatch's
MasscanEngine vs ``nmap -sS`` vs plain ``masscan --retries 2``.

Owns: the ``python -m bench.discovery`` command (root only). It builds a
namespace test host with ``tests/netns.py`` (198.18.<index>.0/24 on a veth
pair, route verified, always torn down) with 20 known TCP listeners, then for
one address and for 16 addresses runs, ``--runs`` times in alternation:

- ``MasscanEngine`` (as ``portwatch scan --engine masscan`` runs it: the kernel's
  own address as source, answer tap, up to 2 passes with the retry pass over
  silent ports only, connect confirm pass) at ``--engine-rate`` packets/s;
- ``nmap -sS -p- --min-rate <rate> -n -Pn <hosts> -oX -``;
- ``masscan -p1-65535 --retries 2 --rate <rate> --wait 1 --interactive`` driven by
  the same deadline/kill runner (1.3.2 does not always exit by itself).

``--rate`` (nmap's --min-rate and plain masscan's --rate) is the issue's 50,000;
nmap's is a floor and it sends faster when the host keeps up, so the engine gets
its own ``--engine-rate``; the table prints every tool's achieved packets/s.

It prints wall time, packets sent into the host (the host-side veth tx counter:
one uniform count for all three, confirm connects included), achieved
packets/s, recall against the known listeners and false positives, medians over
the runs and ratios to MasscanEngine.

Must not touch: any address outside the namespace it creates (a benchmark is a
scan too), or the repository's files.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from probers.discovery.base import Progress
from probers.discovery.masscan import MasscanEngine
from probers.discovery.masscan_path import find_binary, resolve_path
from probers.discovery.masscan_run import MasscanRun
from schemas.records import PortRange, Shard, Target
from tests import netns

INDEX = 201  # 198.18.201.0/24
N_OPEN = 20
NMAP_TIMEOUT = 600.0


@dataclass(frozen=True)
class Sample:
    tool: str
    hosts: int
    seconds: float
    packets: int
    found: int
    expected: int
    false_positives: int

    @property
    def recall(self) -> float:
        return self.found / self.expected if self.expected else 1.0


def _known_ports(seed: int = 20240) -> list[int]:
    rng = random.Random(seed)
    common = [22, 25, 80, 443, 3306, 8080]
    rest = rng.sample(range(1025, 65536), N_OPEN - len(common))
    return sorted(common + rest)


def _score(
    found: set[tuple[str, int]], hosts: tuple[str, ...], ports: list[int]
) -> tuple[int, int]:
    expected = {(h, p) for h in hosts for p in ports}
    return len(found & expected), len(found - expected)


def run_engine(ips: tuple[str, ...], rate: int) -> set[tuple[str, int]]:
    engine = MasscanEngine(rate=rate, passes=2)
    shard = Shard(
        scan_id="bench", shard_id="bench",
        targets=tuple(Target(ip=ip, target=ip) for ip in ips), ports=(PortRange(1, 65535),),
    )

    async def go() -> set[tuple[str, int]]:
        return {(o.target.ip, o.port) async for o in engine.scan(shard, Progress())}

    return asyncio.run(go())


def run_nmap(ips: tuple[str, ...], rate: int) -> set[tuple[str, int]]:
    proc = subprocess.run(
        ["nmap", "-sS", "-p-", "--min-rate", str(rate), "-n", "-Pn", "-oX", "-", *ips],
        capture_output=True, text=True, timeout=NMAP_TIMEOUT, check=True,
    )
    found: set[tuple[str, int]] = set()
    for h in ET.fromstring(proc.stdout).iter("host"):
        addr = h.find("address")
        ip = addr.get("addr", "") if addr is not None else ""
        for port in h.iter("port"):
            state = port.find("state")
            if state is not None and state.get("state") == "open":
                found.add((ip, int(port.get("portid", "0"))))
    return found


def run_plain_masscan(
    host: netns.NetnsHost, ips: tuple[str, ...], rate: int
) -> set[tuple[str, int]]:
    path = resolve_path(ips[0], adapter_ip=host.scanner_ip)
    argv = [find_binary(), "--interactive", "-p1-65535", "--retries", "2", "--rate", str(rate),
            "--wait", "1", *path.argv(), *ips]
    probes = 65535 * len(ips) * 3
    run = MasscanRun(argv, deadline=10 + 2.0 * probes / rate, wait=1)

    async def go() -> set[tuple[str, int]]:
        return {(d.ip, d.port) async for d in run.stream()}

    return asyncio.run(go())


def measure(tool: str, host: netns.NetnsHost, ips: tuple[str, ...], ports: list[int],
            rate: int, engine_rate: int) -> Sample:
    before = host.tx_packets()
    started = time.monotonic()
    if tool == "MasscanEngine":
        found = run_engine(ips, engine_rate)
    elif tool == "nmap -sS":
        found = run_nmap(ips, rate)
    else:
        found = run_plain_masscan(host, ips, rate)
    seconds = time.monotonic() - started
    packets = host.tx_packets() - before
    hits, fps = _score(found, ips, ports)
    return Sample(tool, len(ips), seconds, packets, hits, len(ips) * len(ports), fps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.discovery", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=int, default=50_000,
                        help="nmap --min-rate and plain masscan --rate (default 50000)")
    parser.add_argument("--engine-rate", type=int, default=500_000,
                        help="MasscanEngine packets/s (default 500000)")
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args(argv)
    if not netns.is_root():
        print("bench.discovery needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    if shutil.which("nmap") is None or shutil.which("masscan") is None:
        print("bench.discovery needs nmap and masscan installed", file=sys.stderr)
        return 2
    ports = _known_ports()
    tools = ["MasscanEngine", "nmap -sS", "masscan --retries 2"]
    samples: list[Sample] = []
    banners = {p: b"" for p in ports}
    with netns.test_host(INDEX, tcp_banners=banners, n_addresses=max(args.hosts)) as host:
        for n_hosts in args.hosts:
            ips = host.addresses[:n_hosts]
            for run in range(args.runs):
                for tool in tools[run % 3:] + tools[:run % 3]:  # rotate: no order bias
                    s = measure(tool, host, ips, ports, args.rate, args.engine_rate)
                    samples.append(s)
                    print(f"  run {run + 1} {tool:20s} hosts={n_hosts:2d} {s.seconds:7.2f}s "
                          f"packets={s.packets:9d} pps={s.packets / s.seconds:9,.0f} "
                          f"recall={s.recall:.3f} fp={s.false_positives}",
                          flush=True)
    print()
    print(f"nmap/masscan rate {args.rate} pps, engine rate {args.engine_rate} pps, {N_OPEN} "
          f"listeners per address, {args.runs} runs, medians (recall: min over runs)")
    print("| hosts | tool | wall s | packets | achieved pps | recall (min) | false pos "
          "| time x | packets x |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n_hosts in args.hosts:
        base: tuple[float, float] | None = None
        for tool in tools:
            rows = [s for s in samples if s.tool == tool and s.hosts == n_hosts]
            wall = statistics.median(s.seconds for s in rows)
            pkts = statistics.median(s.packets for s in rows)
            if base is None:
                base = (wall, pkts)
            pps = statistics.median(s.packets / s.seconds for s in rows)
            print(f"| {n_hosts} | {tool} | {wall:.2f} | {pkts:,.0f} | {pps:,.0f} | "
                  f"{min(s.recall for s in rows):.3f} | {max(s.false_positives for s in rows)} | "
                  f"{wall / base[0]:.2f} | {pkts / base[1]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
