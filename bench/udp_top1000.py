"""Benchmark: the top-1,000 UDP ports of one namespace test host, portwatch's
UdpEngine vs ``nmap -sU --top-ports 1000``.

Owns: the ``python -m bench.udp_top1000 [--runs N] [--json]`` command (root
only). It builds one namespace test host with ``tests/netns.py``
(198.18.71.0/24 on a veth pair, route verified, always torn down) whose UDP
responders listen on top-1,000 ports:

- *answering* listeners (``ANSWERING``): ports where both tools send a payload
  of 12 bytes or more (nmap-payloads, or portwatch's own for DNS, SNMP, NTP,
  NetBIOS-NS, SSDP), which the test host's responder answers: a reply, so
  ``open``;
- one *silent* listener (``SILENT``, 631/ipp): both tools send an empty
  datagram there and the responder ignores it, the way a real service ignores
  a request it cannot parse; it can only ever be ``open|filtered``.

Every other top-1,000 port is closed: the namespace's kernel answers with ICMP
port-unreachable, rate-limited by Linux per destination
(``net.ipv4.icmp_ratelimit``, 1000 ms: a burst of 6, then about one a second),
for both tools alike. Then, ``--runs`` times, alternating which goes first:

- ``UdpEngine`` with its default options on ``udp_top_ports(1000)``;
- ``nmap -sU --top-ports 1000 -n -Pn <host> -oX -``.

It reports per tool: median wall time and every run, packets sent into the
host (host-side veth tx counter), recall of the answering listeners as
``open`` (min over runs), how the silent listener was reported, extra ports
reported ``open`` or ``open|filtered`` that have no listener (max over runs),
how many silent ports UdpEngine left unresolved (named in its note, not listed:
it cannot tell closed from open|filtered at its pace), the time ratio to
UdpEngine, and a markdown table for BENCHMARKS.md (``--json`` for machines;
progress then goes to stderr).

Must not touch: any address outside the namespace it creates (a benchmark is a
scan too), or the repository's files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from probers.discovery.base import Progress
from probers.discovery.udp import UdpEngine, udp_top_ports
from probers.nmapdata.payloads import udp_payloads
from schemas.records import OpenPort, PortRange, PortState, Proto, Shard, Target
from tests import netns

INDEX = 71  # 198.18.71.0/24, unused by the tests and the other benchmarks
TOP = 1000
# Answered by the test host's responder (a probe of >= 12 bytes from both tools).
ANSWERING = (53, 69, 111, 123, 137, 161, 500, 1900, 5353, 49152)
SILENT = 631  # both tools send an empty datagram: the responder stays silent
NMAP_TIMEOUT = 1800.0  # nmap paces to the ICMP limit: ~1 port/s, about 17 minutes
RESPONDER_MIN = 12  # the responder ignores datagrams shorter than a DNS header
TOOLS = ("UdpEngine", "nmap -sU")
_UNRESOLVED = re.compile(r"(\d+) ports unresolved")


@dataclass(frozen=True)
class Sample:
    tool: str
    run: int
    seconds: float
    packets: int
    open: tuple[int, ...]
    open_filtered: tuple[int, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def recall(self) -> float:
        return len(set(self.open) & set(ANSWERING)) / len(ANSWERING)

    @property
    def extra_open(self) -> tuple[int, ...]:
        return tuple(p for p in self.open if p not in ANSWERING and p != SILENT)

    @property
    def extra_open_filtered(self) -> tuple[int, ...]:
        return tuple(p for p in self.open_filtered if p not in ANSWERING and p != SILENT)

    @property
    def unresolved(self) -> int:
        """Silent ports UdpEngine left unclassified and only named in a note (nmap: none)."""
        return sum(int(m.group(1)) for n in self.notes for m in _UNRESOLVED.finditer(n))

    @property
    def silent_as(self) -> str:
        if SILENT in self.open:
            return "open"
        return "open|filtered" if SILENT in self.open_filtered else "not listed"


def check_listener_ports(ports: list[int]) -> None:
    """Refuse to run unless the listener choice means what the docstring says."""
    top = set(ports)
    missing = [p for p in (*ANSWERING, SILENT) if p not in top]
    if missing:
        raise SystemExit(f"listener ports {missing} are not in the top {TOP} UDP ports")
    engine, nmap_table = UdpEngine(), udp_payloads()
    for p in ANSWERING:
        ours = [len(x.data) for x in engine.payloads_for(p)]
        theirs = [len(d) for d in nmap_table.get(p, [])]
        if max(ours) < RESPONDER_MIN or max(theirs, default=0) < RESPONDER_MIN:
            raise SystemExit(f"port {p}: a tool sends no answerable probe ({ours}, {theirs})")
    if any(x.data for x in engine.payloads_for(SILENT)) or nmap_table.get(SILENT):
        raise SystemExit(f"port {SILENT}: expected empty probes from both tools")


def run_engine(ip: str, ports: list[int]) -> tuple[list[OpenPort], list[str]]:
    shard = Shard(
        scan_id="bench-udp", shard_id="bench-udp",
        targets=(Target(ip=ip, target=ip),),
        ports=tuple(PortRange(p, p) for p in ports), proto=Proto.UDP,
    )
    progress = Progress()

    async def go() -> list[OpenPort]:
        return [o async for o in UdpEngine().scan(shard, progress)]

    return asyncio.run(go()), list(progress.notes)


def run_nmap(ip: str) -> dict[int, str]:
    """Port -> nmap state for every port nmap lists individually (not its "extraports")."""
    proc = subprocess.run(
        ["nmap", "-sU", "--top-ports", str(TOP), "-n", "-Pn", ip, "-oX", "-"],
        capture_output=True, text=True, timeout=NMAP_TIMEOUT, check=True,
    )
    states: dict[int, str] = {}
    for h in ET.fromstring(proc.stdout).iter("host"):
        for port in h.iter("port"):
            state = port.find("state")
            if port.get("protocol") == "udp" and state is not None:
                states[int(port.get("portid", "0"))] = state.get("state", "")
    return states


def measure(tool: str, run: int, host: netns.NetnsHost, ports: list[int]) -> Sample:
    ip = host.address
    before = host.tx_packets()
    started = time.monotonic()
    notes: list[str] = []
    if tool == "UdpEngine":
        found, notes = run_engine(ip, ports)
        open_ = sorted(o.port for o in found if o.state is PortState.OPEN)
        of = sorted(o.port for o in found if o.state is PortState.OPEN_FILTERED)
    else:
        states = run_nmap(ip)
        open_ = sorted(p for p, s in states.items() if s == "open")
        of = sorted(p for p, s in states.items() if s == "open|filtered")
    seconds = time.monotonic() - started
    return Sample(tool, run, seconds, host.tx_packets() - before, tuple(open_), tuple(of),
                  tuple(notes))


def summarize(samples: list[Sample]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    base: float | None = None
    for tool in TOOLS:
        mine = [s for s in samples if s.tool == tool]
        if not mine:
            continue
        wall = statistics.median(s.seconds for s in mine)
        base = wall if base is None else base
        rows.append({
            "tool": tool,
            "runs": len(mine),
            "wall_median_s": round(wall, 2),
            "wall_all_s": [round(s.seconds, 2) for s in mine],
            "packets_median": statistics.median(s.packets for s in mine),
            "recall_open_min": min(s.recall for s in mine),
            "silent_listener_as": sorted({s.silent_as for s in mine}),
            "extra_open_max": max(len(s.extra_open) for s in mine),
            "extra_open_filtered_max": max(len(s.extra_open_filtered) for s in mine),
            "unresolved_median": statistics.median(s.unresolved for s in mine),
            "time_ratio": round(wall / base, 2),
        })
    return rows


def markdown(rows: list[dict[str, Any]], runs: int) -> str:
    lines = [
        f"top {TOP} UDP ports of one namespace host, {len(ANSWERING)} answering listeners "
        f"({', '.join(map(str, ANSWERING))}), 1 silent listener ({SILENT}), the rest closed "
        f"(Linux ICMP rate limit); {runs} runs, medians (recall: min; extras: max over runs)",
        "",
        "| tool | wall s (median) | wall s (all runs) | packets | recall open (min) | "
        f"silent {SILENT} reported as | extra open | extra open\\|filtered | "
        "unresolved, noted not listed | time x |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        silent = " / ".join(r["silent_listener_as"]).replace("|", "\\|")  # a table cell
        lines.append(
            f"| {r['tool']} | {r['wall_median_s']:.2f} | "
            f"{', '.join(f'{s:.1f}' for s in r['wall_all_s'])} | {r['packets_median']:,.0f} | "
            f"{r['recall_open_min']:.3f} | {silent} | {r['extra_open_max']} | "
            f"{r['extra_open_filtered_max']} | {r['unresolved_median']:.0f} | "
            f"{r['time_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.udp_top1000", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if not netns.is_root():
        print("bench.udp_top1000 needs root (network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("nmap") is None:
        print("bench.udp_top1000 needs nmap installed", file=sys.stderr)
        return 2
    ports = udp_top_ports(TOP)
    check_listener_ports(ports)
    log: TextIO = sys.stderr if args.json else sys.stdout
    samples: list[Sample] = []
    with netns.test_host(INDEX, udp_dns_ports=[*ANSWERING, SILENT]) as host:
        for run in range(args.runs):
            order = TOOLS if run % 2 == 0 else TOOLS[::-1]  # alternate: no order bias
            for tool in order:
                s = measure(tool, run + 1, host, ports)
                samples.append(s)
                print(f"  run {run + 1} {tool:10s} {s.seconds:8.2f}s packets={s.packets:6d} "
                      f"recall={s.recall:.3f} open={list(s.open)} "
                      f"open|filtered={len(s.open_filtered)} {list(s.open_filtered)[:12]} "
                      f"silent {SILENT}: {s.silent_as}", file=log, flush=True)
                for note in s.notes:
                    print(f"      note: {note}", file=log, flush=True)
    rows = summarize(samples)
    if args.json:
        print(json.dumps({"summary": rows, "samples": [asdict(s) for s in samples]}, indent=2))
    else:
        print()
        print(markdown(rows, args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
