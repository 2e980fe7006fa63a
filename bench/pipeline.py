"""Benchmark: the distributed pipeline (Kafka -> Faust -> sink -> chdb) against the
embedded runner, on the same synthetic open ports, in one run.

Owns: the ``python -m bench.pipeline`` command. The events are synthetic UDP open ports
that already carry their reply, so the real stage chain (``stages.process``: UDP
identification from the reply, CDN, risk) runs on them. Their addresses are loopback
(127.18.0.0/15): the one packet the stages send per host, the SNMP engine-discovery
request to port 161 (the stage asks SNMP where the reply says snmp), goes to loopback,
where nothing listens and the kernel answers port-unreachable at once. No packet leaves
the machine.

Runs, in order:

1. embedded: ``EmbeddedRunner`` with a synthetic discovery engine that yields the
   events, into its own chdb store;
2. Kafka with one worker: ``portwatch process --role all`` (stages + sink);
3. Kafka with two workers: one ``--role all`` and one ``--role stages``.

For each Kafka run it publishes the events onto the open-ports topic (framed per
host, as the discovery workers do), follows the consumer groups' committed offsets
every 100 ms and prints: publish rate, the time each stage's group had committed
everything (stages, sink), end-to-end findings/s, the largest consumer lag seen,
the workers' own busy-time rates, and checks that the store holds exactly the
expected findings (none lost, none duplicated).

Needs the broker (``make kafka-up``; ``PORTWATCH_KAFKA`` for another address).
Must not touch: any address (no scan), topics other than its own prefixed ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from probers.discovery.base import Progress
from schemas.records import OpenPort, PortRange, Proto, Shard, Target

REPO = Path(__file__).resolve().parent.parent
# Synthetic hosts on loopback (127.18.0.0/15): the stages' SNMP request to port 161 is
# the one packet they send, and it must not leave the machine. (Until 2026-12-02 these
# were 198.18.0.0/15 addresses, which no namespace of this bench holds: those requests
# went to the default route.)
BENCH_NET = (127, 18)
UDP_PORTS = (53, 69, 123, 137, 161, 500, 1900, 5353, 11211)
WORKER_START_TIMEOUT = 60.0
DRAIN_TIMEOUT = 300.0


def synthetic_targets(hosts: int) -> list[Target]:
    if hosts > 2 * 65536 - 2:
        raise ValueError("at most 131,070 synthetic hosts")
    out = []
    for i in range(1, hosts + 1):
        a, b = divmod(i, 256)
        out.append(Target(ip=f"{BENCH_NET[0]}.{BENCH_NET[1] + a // 256}.{a % 256}.{b}",
                          target=f"bench-{i}", organization="Bench Org", asset=f"asset-{i}"))
    return out


def synthetic_ports(target: Target, per_host: int, scan_id: str) -> list[OpenPort]:
    now = datetime.now(UTC)
    ports = []
    for j in range(per_host):
        port = UDP_PORTS[j] if j < len(UDP_PORTS) else 20000 + j
        ports.append(OpenPort(scan_id=scan_id, target=target, port=port, proto=Proto.UDP,
                              engine="synthetic", reason="udp-response", observed_at=now,
                              response=f"synthetic reply {j}"))
    return ports


class SyntheticEngine:
    """A discovery engine that 'finds' ``per_host`` UDP ports on every shard host."""

    name = "synthetic"

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host

    async def scan(self, shard: Shard, progress: Progress) -> AsyncIterator[OpenPort]:
        for t in shard.targets:
            for p in synthetic_ports(t, self.per_host, shard.scan_id):
                progress.open_found += 1
                yield p
            await asyncio.sleep(0)


# -- embedded ---------------------------------------------------------------------------


def run_embedded(targets: list[Target], per_host: int, store_dir: Path) -> dict[str, Any]:
    from producers.shards import ScanPlan
    from stream_processors.stages import StageContext
    from stream_processors.store import Store
    from stream_processors.transports.embedded import EmbeddedRunner

    store = Store.from_url(f"chdb://{store_dir}")
    engine = SyntheticEngine(per_host)
    runner = EmbeddedRunner(store, lambda _shard: engine, StageContext(),
                            tarpit_threshold=max(1000, per_host + 1))
    plan = ScanPlan.build(f"embedded-{uuid.uuid4().hex[:8]}", 0, targets, (),
                          (PortRange(1, 65535),))
    started = time.perf_counter()
    stats = asyncio.run(runner.run(plan))
    seconds = time.perf_counter() - started
    stored = store.query("SELECT count() FROM (SELECT DISTINCT ip, proto, port "
                         "FROM port_observations)")[0][0]
    store.close()
    return {"seconds": seconds, "findings": stats.stored, "distinct_in_store": stored,
            "rate": stats.stored / seconds if seconds else 0.0}


# -- Kafka ------------------------------------------------------------------------------


@dataclass
class Worker:
    role: str
    proc: subprocess.Popen[str]
    stderr_path: Path
    stats: dict[str, Any] = field(default_factory=dict)


def _start_worker(role: str, bootstrap: str, prefix: str, store_url: str,
                  log_dir: Path) -> Worker:
    env = {**os.environ, "PORTWATCH_KAFKA": bootstrap, "PORTWATCH_TOPIC_PREFIX": prefix,
           "PORTWATCH_STORE": store_url}
    err = log_dir / f"{prefix}{role}-{uuid.uuid4().hex[:4]}.err"
    proc = subprocess.Popen(
        [sys.executable, "-m", "portwatch", "process", "--role", role,
         "--commit-interval", "0.2", "--batch-seconds", "0.5"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err.open("w"), text=True,
        start_new_session=True)
    return Worker(role, proc, err)


def _stop_workers(workers: list[Worker]) -> None:
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            out, _ = w.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            out, _ = w.proc.communicate(timeout=10)
        for line in reversed((out or "").splitlines()):
            if line.startswith("{"):
                w.stats = json.loads(line)
                break


def _wait_running(workers: list[Worker]) -> None:
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    for w in workers:
        while "stream processors running" not in w.stderr_path.read_text():
            if w.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {w.role} did not start:\n"
                                   + w.stderr_path.read_text()[-2000:])
            time.sleep(0.1)


def _drain(bootstrap: str, groups: dict[str, list[str]], since: float,
           timeout: float) -> tuple[dict[str, float], dict[str, int]]:
    """Poll committed offsets until every group is drained; time each group drained
    (seconds after ``since``) and the largest lag seen (messages). ``groups`` is in
    pipeline order: a group counts as drained only once every group before it has
    drained (the sink's lag is also 0 whenever it has caught up with stages that are
    still producing)."""
    from producers.publish import group_lag

    drained: dict[str, float] = {}
    max_lag: dict[str, int] = dict.fromkeys(groups, 0)
    deadline = time.monotonic() + timeout
    while len(drained) < len(groups):
        upstream_drained = True
        for group, topics in groups.items():
            if group in drained:
                continue
            lag = group_lag(bootstrap, group, topics)
            max_lag[group] = max(max_lag[group], lag.lag)
            if lag.is_drained and upstream_drained:
                drained[group] = time.perf_counter() - since
            upstream_drained = group in drained
        if time.monotonic() > deadline:
            raise RuntimeError(f"pipeline not drained after {timeout}s: {max_lag}")
        time.sleep(0.1)
    return drained, max_lag


def _count_in_store(store_url: str) -> tuple[int, int]:
    """(observation rows after FINAL, distinct keys in the findings view), read in a
    subprocess: chdb opens one path per process."""
    code = (
        "import sys\nfrom stream_processors.store import Store\n"
        "s = Store.from_url(sys.argv[1])\n"
        "a = s.query('SELECT count() FROM port_observations FINAL')[0][0]\n"
        "b = s.query('SELECT count() FROM (SELECT DISTINCT target, ip, proto, port "
        "FROM findings)')[0][0]\nprint(a, b)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, store_url], cwd=REPO, text=True,
                         capture_output=True, timeout=120, check=True).stdout.split()
    return int(out[0]), int(out[1])


def run_kafka(bootstrap: str, workers: int, targets: list[Target], per_host: int,
              work: Path) -> dict[str, Any]:
    from producers.kafka_io import ensure_topics, make_producer
    from producers.publish import publish_framed
    from schemas.topics import topic_names

    prefix = f"bench{uuid.uuid4().hex[:8]}."
    topics = topic_names(prefix)
    ensure_topics(bootstrap, topics.all)
    store_url = f"chdb://{work / (prefix + 'store')}"
    roles = ["all"] + ["stages"] * (workers - 1)
    procs = [_start_worker(r, bootstrap, prefix, store_url, work) for r in roles]
    try:
        _wait_running(procs)
        producer = make_producer(bootstrap, client_id="bench-pipeline", linger_ms=20)
        groups = {f"{prefix}portwatch-stages": [topics.open_ports.name],
                  f"{prefix}portwatch-sink": [topics.findings.name]}
        # Warm-up: one host through the whole pipeline, so group joins and rebalances
        # (both workers) are behind us before the clock starts.
        warm = synthetic_ports(Target(ip="127.19.255.254", target="warm-up"), 1, "warm-up")
        publish_framed(producer, topics.open_ports.name, warm)
        _drain(bootstrap, groups, time.perf_counter(), WORKER_START_TIMEOUT)
        scan_id = f"kafka-{workers}w-{uuid.uuid4().hex[:8]}"
        events = [p for t in targets for p in synthetic_ports(t, per_host, scan_id)]
        started = time.perf_counter()
        published = publish_framed(producer, topics.open_ports.name, events, timeout=300)
        publish_seconds = time.perf_counter() - started
        producer.close(timeout=10)
        drained, max_lag = _drain(bootstrap, groups, started, DRAIN_TIMEOUT)
    finally:
        _stop_workers(procs)
    rows, keys = _count_in_store(store_url)
    expected = len(events) + len(warm)
    stages_s = drained[f"{prefix}portwatch-stages"]
    sink_s = drained[f"{prefix}portwatch-sink"]
    stage_stats = [w.stats.get("stages", {}) for w in procs]
    sink_stats = procs[0].stats.get("sink", {})
    return {
        "workers": workers, "findings": published, "publish_seconds": publish_seconds,
        "publish_rate": published / publish_seconds,
        "stages_drained_s": stages_s, "stages_rate": published / stages_s,
        "end_to_end_s": sink_s, "end_to_end_rate": published / sink_s,
        "max_lag_messages": max_lag,
        "stage_busy_rate": [round(s.get("ports", 0) / s["busy_seconds"])
                            if s.get("busy_seconds") else None for s in stage_stats],
        "stage_ports_per_worker": [s.get("ports", 0) for s in stage_stats],
        "sink_insert_rate": (sink_stats.get("findings", 0) / sink_stats["insert_seconds"]
                             if sink_stats.get("insert_seconds") else None),
        "sink_batches": sink_stats.get("batches"),
        "store_rows": rows, "store_keys": keys, "expected": expected,
        "is_exact": rows == expected and keys == expected,
        "prefix": prefix,
    }


def _cleanup_topics(bootstrap: str, prefixes: list[str]) -> None:
    from producers.kafka_io import admin_client
    from schemas.topics import topic_names

    names = [t.name for p in prefixes for t in topic_names(p).all]
    try:
        with admin_client(bootstrap) as admin:
            admin.delete_topics(names, timeout_ms=10_000)
    except Exception as exc:  # noqa: BLE001 - leftover topics only cost disk
        print(f"note: could not delete bench topics: {exc}", file=sys.stderr)


@dataclass
class Args:
    hosts: int
    per_host: int
    bootstrap: str


def _parse(argv: list[str] | None) -> Args:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=400, help="synthetic hosts (400)")
    parser.add_argument("--per-host", type=int, default=250,
                        help="open UDP ports per host (250; below the tarpit threshold)")
    parser.add_argument("--kafka", default=os.environ.get("PORTWATCH_KAFKA", "127.0.0.1:9092"))
    ns = parser.parse_args(argv)
    return Args(ns.hosts, ns.per_host, ns.kafka)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from producers.kafka_io import KafkaUnavailable, wait_for_broker

    try:
        wait_for_broker(args.bootstrap, timeout=5)
    except KafkaUnavailable as exc:
        print(f"bench.pipeline: {exc}", file=sys.stderr)
        return 1
    targets = synthetic_targets(args.hosts)
    total = args.hosts * args.per_host
    print(f"# {total:,} synthetic findings ({args.hosts} hosts x {args.per_host} UDP ports), "
          f"{os.cpu_count()} CPUs, broker {args.bootstrap} on this machine", flush=True)
    work = Path(tempfile.mkdtemp(prefix="portwatch-bench-"))
    prefixes: list[str] = []
    results: dict[str, Any] = {}
    try:
        results["embedded"] = run_embedded(targets, args.per_host, work / "embedded")
        e = results["embedded"]
        print(f"embedded runner      : {e['findings']:>8,} findings in {e['seconds']:6.2f}s = "
              f"{e['rate']:>8,.0f} findings/s (distinct in store {e['distinct_in_store']:,})",
              flush=True)
        for workers in (1, 2):
            r = run_kafka(args.bootstrap, workers, targets, args.per_host, work)
            prefixes.append(r["prefix"])
            results[f"kafka_{workers}w"] = r
            print(f"kafka, {workers} worker(s)   : {r['findings']:>8,} findings in "
                  f"{r['end_to_end_s']:6.2f}s = {r['end_to_end_rate']:>8,.0f} findings/s "
                  f"end to end", flush=True)
            print(f"    publish (kafka-python)   {r['publish_rate']:>8,.0f} findings/s "
                  f"({r['publish_seconds']:.2f}s)")
            print(f"    stages drained after     {r['stages_drained_s']:6.2f}s = "
                  f"{r['stages_rate']:>8,.0f} findings/s; busy-time rate per worker "
                  f"{r['stage_busy_rate']} (ports per worker {r['stage_ports_per_worker']})")
            print(f"    sink drained after       {r['end_to_end_s']:6.2f}s; insert rate "
                  f"{r['sink_insert_rate'] or 0:,.0f} rows/s in {r['sink_batches']} batches")
            print(f"    max consumer lag         {r['max_lag_messages']} messages "
                  f"(<= 500 findings each)")
            print(f"    store check              {r['store_rows']:,} rows, {r['store_keys']:,} "
                  f"keys, expected {r['expected']:,}: "
                  f"{'exact' if r['is_exact'] else 'MISMATCH'}", flush=True)
    finally:
        _cleanup_topics(args.bootstrap, prefixes)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, default=str))
    ok = all(r.get("is_exact", True) for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
