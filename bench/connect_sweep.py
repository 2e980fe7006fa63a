"""Benchmark: full 65,535-port TCP connect sweep of 127.0.0.1, portwatch vs nmap -sT.

Owns: the ``python -m bench.connect_sweep`` command. It starts a few known
listeners on 127.0.0.1, then alternates (to cancel warm-cache bias) a
``ConnectEngine`` sweep and ``nmap -sT -p- -n -Pn 127.0.0.1 -oX -`` ``--runs``
times, and prints median wall times, their ratio, recall of the known listeners
for both, ports either found that are not ours (other software on this machine;
reported, not scored) and portwatch's peak RSS.

Must not touch: any address but 127.0.0.1 (a benchmark is a scan too), or the
repository's files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from probers.discovery.base import Progress
from probers.discovery.connect import ConnectEngine
from schemas.records import PortRange, Shard, Target

HOST = "127.0.0.1"  # the only address this benchmark ever scans
NMAP_TIMEOUT = 300.0  # seconds: a wedged nmap fails the run instead of hanging it


@dataclass(slots=True)
class ToolRuns:
    tool: str
    seconds: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    extra_ports: set[int] = field(default_factory=set)
    error: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


@contextmanager
def listeners(count: int) -> Iterator[list[int]]:
    """``count`` listening sockets on 127.0.0.1 ephemeral ports, closed afterwards."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((HOST, 0))
            sock.listen(128)
        yield sorted(s.getsockname()[1] for s in socks)
    finally:
        for sock in socks:
            sock.close()


def rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _portwatch_sweep(concurrency: int, timeout: float) -> set[int]:
    shard = Shard(
        scan_id="bench",
        shard_id="bench-full",
        targets=(Target(ip=HOST, target=HOST),),
        ports=(PortRange(1, 65535),),
    )
    engine = ConnectEngine(concurrency=concurrency, timeout=timeout)
    progress = Progress()
    found = {event.port async for event in engine.scan(shard, progress)}
    if progress.probes_done != 65535:
        raise RuntimeError(f"portwatch sweep incomplete: {progress.probes_done}/65535")
    return found


def run_portwatch(concurrency: int, timeout: float) -> tuple[float, set[int]]:
    started = time.perf_counter()
    found = asyncio.run(_portwatch_sweep(concurrency, timeout))
    return time.perf_counter() - started, found


def parse_nmap_xml(xml_text: str) -> set[int]:
    """Open TCP ports in nmap's -oX output (our own subprocess's output)."""
    root = ET.fromstring(xml_text)
    found: set[int] = set()
    for port in root.iter("port"):
        state = port.find("state")
        if port.get("protocol") == "tcp" and state is not None and state.get("state") == "open":
            found.add(int(port.get("portid", "0")))
    return found


def run_nmap(nmap: str) -> tuple[float, set[int]]:
    cmd = [nmap, "-sT", "-p-", "-n", "-Pn", HOST, "-oX", "-"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=NMAP_TIMEOUT, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"nmap exited {done.returncode}: {done.stderr.strip()[:200]}")
    return elapsed, parse_nmap_xml(done.stdout)


def nmap_version(nmap: str) -> str:
    done = subprocess.run([nmap, "--version"], capture_output=True, text=True, timeout=30,
                          check=False)
    first = done.stdout.splitlines()[0] if done.stdout else ""
    return first.removeprefix("Nmap version ").split(" ")[0] or "unknown"


def benchmark(runs: int, listener_count: int, concurrency: int, timeout: float) -> dict[str, Any]:
    nmap = shutil.which("nmap")
    portwatch = ToolRuns("portwatch connect")
    reference = ToolRuns("nmap -sT")
    rss_before = rss_mib()
    with listeners(listener_count) as known:
        wanted = set(known)
        for i in range(runs):
            order = ("portwatch", "nmap") if i % 2 == 0 else ("nmap", "portwatch")
            for tool in order:
                if tool == "portwatch":
                    seconds, found = run_portwatch(concurrency, timeout)
                    runs_of = portwatch
                elif nmap is None:
                    reference.error = "nmap not installed"
                    continue
                else:
                    try:
                        seconds, found = run_nmap(nmap)
                    except (RuntimeError, subprocess.TimeoutExpired, ET.ParseError) as exc:
                        reference.error = str(exc)
                        continue
                    runs_of = reference
                runs_of.seconds.append(seconds)
                runs_of.recall.append(len(found & wanted) / len(wanted))
                runs_of.extra_ports |= found - wanted
    pw, nm = portwatch.median, reference.median
    return {
        "host": HOST,
        "ports": 65535,
        "runs": runs,
        "known_listeners": known,
        "concurrency": concurrency,
        "timeout_s": timeout,
        "machine": {
            "python": platform.python_version(),
            "kernel": platform.release(),
            "cpus": len(__import__("os").sched_getaffinity(0)),
            "nmap": nmap_version(nmap) if nmap else None,
        },
        "tools": {
            "portwatch": {**asdict(portwatch), "median_s": pw,
                          "extra_ports": sorted(portwatch.extra_ports)},
            "nmap": {**asdict(reference), "median_s": nm,
                     "extra_ports": sorted(reference.extra_ports)},
        },
        "ratio_portwatch_over_nmap": (pw / nm) if pw and nm else None,
        "portwatch_peak_rss_mib": round(rss_mib(), 1),
        "portwatch_rss_before_mib": round(rss_before, 1),
    }


def _fmt_s(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "n/a"


def _fmt_recall(values: list[float]) -> str:
    return f"{min(values):.0%}" if values else "n/a"  # worst run: recall must hold every time


def markdown(result: dict[str, Any]) -> str:
    tools = result["tools"]
    pw, nm = tools["portwatch"], tools["nmap"]
    ratio = result["ratio_portwatch_over_nmap"]
    machine = result["machine"]
    lines = [
        f"Full TCP connect sweep of {result['host']} (65,535 ports), median of "
        f"{result['runs']} runs; {len(result['known_listeners'])} known listeners; "
        f"{machine['cpus']} CPUs, Linux {machine['kernel']}, Python {machine['python']}, "
        f"nmap {machine['nmap'] or 'n/a'}.",
        "",
        "| tool | median wall time | all runs | recall (worst run) | other open ports seen "
        "| peak RSS |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| portwatch ConnectEngine (concurrency {result['concurrency']}) | "
        f"{_fmt_s(pw['median_s'])} | {', '.join(f'{s:.2f}' for s in pw['seconds'])} | "
        f"{_fmt_recall(pw['recall'])} | {', '.join(map(str, pw['extra_ports'])) or '-'} | "
        f"{result['portwatch_peak_rss_mib']} MiB (process) |",
        f"| nmap -sT -p- -n -Pn | {_fmt_s(nm['median_s'])} | "
        f"{', '.join(f'{s:.2f}' for s in nm['seconds']) or nm['error'] or '-'} | "
        f"{_fmt_recall(nm['recall'])} | {', '.join(map(str, nm['extra_ports'])) or '-'} | - |",
        "",
        f"Ratio portwatch / nmap (median wall time): "
        f"{f'{ratio:.2f}' if ratio is not None else 'n/a'} (target: <= 2.00).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.connect_sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions per tool (default 3)")
    parser.add_argument("--listeners", type=int, default=5, help="known listeners (default 5)")
    parser.add_argument("--concurrency", type=int, default=2000,
                        help="ConnectEngine concurrency (default 2000)")
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="ConnectEngine per-attempt timeout in seconds (default 1.0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 50:
        parser.error("--runs must be between 1 and 50")
    if not 1 <= args.listeners <= 100:
        parser.error("--listeners must be between 1 and 100")
    result = benchmark(args.runs, args.listeners, args.concurrency, args.timeout)
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    recalls = result["tools"]["portwatch"]["recall"]
    return 0 if recalls and min(recalls) == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
