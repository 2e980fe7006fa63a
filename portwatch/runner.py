"""The embedded runner: one process, in-process queues, no servers.

Owns: binding the stage functions (stream_processors/stages.py) to bounded
asyncio queues: producer -> discovery -> (tarpit gate) -> identify/TLS/CDN/risk
-> sink (batched inserts into the store). The Faust agents bind the very same
stage functions to Kafka topics; only the transport differs.

Back-pressure: every queue is bounded, so a fast discovery engine waits for
identification instead of filling memory. Ctrl-C: the first one stops discovery
and lets identification finish what was found; a second one stops identifying
and stores what is left unidentified. Either way, what was found is kept and the
host scans are recorded as "interrupted".

Tarpits: open ports are held per host until the host's shard is done; a host
that answered on more than ``tarpit_threshold`` ports is flagged "answers on
every port" and only its common ports are identified, keeping only those that
name a service. Nothing is flooded downstream.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from probers.discovery.base import DiscoveryEngine, Progress
from producers.shards import Checkpoint, ShardPlan
from schemas.records import (
    ChangeEvent,
    Finding,
    OpenPort,
    PortRange,
    Proto,
    Shard,
    Target,
    utcnow,
)
from stream_processors.history import ChangeRecorder
from stream_processors.stages import (
    ShardOutcome,
    StageContext,
    discover_shard,
    keeps,
    process,
    unidentified,
)
from stream_processors.store import Store

log = logging.getLogger(__name__)

def new_scan_id() -> str:
    return f"{datetime.now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


@dataclass
class ScanStats:
    """Live figures of one scan; the CLI renders them as the progress bar."""

    scan_id: str
    hosts: int
    planned_probes: int = 0  # ports x hosts of the whole scan, one pass each
    started: float = field(default_factory=time.monotonic)
    finished: float = 0.0
    identified: int = 0
    stored: int = 0
    interrupted: bool = False
    tarpits: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    resumed_shards: int = 0  # shards a checkpoint said were already done
    changes: list[ChangeEvent] = field(default_factory=list)  # of the hosts that completed

    _done_shards: Progress = field(default_factory=Progress)
    _active: list[Progress] = field(default_factory=list)
    _extra_probes: int = 0  # engines that make several passes (masscan) probe more
    _expected: dict[int, int] = field(default_factory=dict)

    @property
    def probes_total(self) -> int:
        live = sum(max(0, p.probes_total - self._expected.get(id(p), 0)) for p in self._active)
        return self.planned_probes + self._extra_probes + live

    @property
    def probes_done(self) -> int:
        return self._done_shards.probes_done + sum(p.probes_done for p in self._active)

    @property
    def open_found(self) -> int:
        return self._done_shards.open_found + sum(p.open_found for p in self._active)

    @property
    def notes(self) -> list[str]:
        return [*self._done_shards.notes, *(n for p in self._active for n in p.notes)]

    def shard_started(self, expected_probes: int) -> Progress:
        progress = Progress()
        self._active.append(progress)
        self._expected[id(progress)] = expected_probes
        return progress

    def shard_finished(self, progress: Progress) -> None:
        self._active.remove(progress)
        expected = self._expected.pop(id(progress), 0)
        self._extra_probes += max(0, progress.probes_total - expected)
        done = self._done_shards
        done.probes_done += progress.probes_done
        done.open_found += progress.open_found
        done.retries += progress.retries
        done.errors += progress.errors
        done.notes.extend(progress.notes)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started


_DONE = object()


class EmbeddedRunner:
    def __init__(self, store: Store, engine: DiscoveryEngine, ctx: StageContext, *,
                 udp_engine: DiscoveryEngine | None = None, identify_workers: int = 64,
                 tarpit_threshold: int = 1000, batch_size: int = 500,
                 batch_seconds: float = 1.0, queue_size: int = 1000,
                 shard_retries: int = 1, shard_ports: int = 65_535,
                 shard_hosts: int = 16) -> None:
        self.store = store
        self.engine = engine
        self.udp_engine = udp_engine
        self.ctx = ctx
        self.identify_workers = identify_workers
        self.tarpit_threshold = tarpit_threshold
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.queue_size = queue_size
        self.shard_retries = shard_retries
        self.shard_ports = shard_ports
        self.shard_hosts = shard_hosts
        self._stop_discovery = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._interrupts = 0
        self._outcomes: list[ShardOutcome] = []
        # Change history: fed what the sink stores, run when the hosts' scans are recorded.
        self.changes = ChangeRecorder(store)

    # -- control ------------------------------------------------------------------------

    def interrupt(self) -> None:
        """First call: stop discovery. Second: stop identification too (what is left
        is stored unidentified)."""
        self._interrupts += 1
        self._stop_discovery.set()
        if self._interrupts >= 2:
            for worker in self._workers:
                worker.cancel()

    # -- the pipeline -------------------------------------------------------------------

    async def run(self, targets: Sequence[Target], tcp_ports: Sequence[PortRange],
                  udp_ports: Sequence[PortRange] = (), *, scan_id: str | None = None,
                  seed: int = 0, on_stats: Callable[[ScanStats], None] | None = None,
                  checkpoint: str | None = None) -> ScanStats:
        """Scan the targets; with ``checkpoint`` (a file), resume where it stopped.

        The checkpoint records (scan_id, seed, next shard index) after every finished
        shard; a run given an existing checkpoint continues that scan (same scan_id,
        same seeded walk) from the first shard not done, so nothing is scanned twice
        and nothing is skipped.
        """
        resume_from = 0
        if checkpoint is not None:
            saved = Checkpoint.load(checkpoint)
            if saved is not None:
                scan_id, seed, resume_from = saved.scan_id, saved.seed, saved.next_index
        scan_id = scan_id or new_scan_id()
        stats = ScanStats(scan_id, len(targets))
        self._outcomes = []
        plans = []
        if tcp_ports:
            plans.append((self.engine, ShardPlan(scan_id, tuple(targets), tuple(tcp_ports),
                                                 Proto.TCP, seed, self.shard_hosts,
                                                 self.shard_ports)))
        if udp_ports and self.udp_engine is not None:
            plans.append((self.udp_engine, ShardPlan(scan_id, tuple(targets), tuple(udp_ports),
                                                     Proto.UDP, seed, self.shard_hosts,
                                                     self.shard_ports)))
        stats.planned_probes = sum(sum(len(r) for r in plan.ports) * len(targets)
                                   for _engine, plan in plans)

        open_q: asyncio.Queue[OpenPort | object] = asyncio.Queue(self.queue_size)
        sink_q: asyncio.Queue[Finding | object] = asyncio.Queue(self.queue_size)

        planned: dict[str, Shard] = {}

        async def discovery() -> None:
            try:
                offset = 0  # shard indexes run on across the TCP and the UDP plan
                for engine, plan in plans:
                    for shard in plan.shards():
                        position = offset + shard.index
                        if position < resume_from:
                            stats.resumed_shards += 1
                            stats.planned_probes -= shard.probe_count
                            continue
                        planned[shard.shard_id] = shard
                        if self._stop_discovery.is_set():
                            continue  # recorded as interrupted, never as a silent gap
                        done = await self._discover_shard(engine, shard, open_q, stats)
                        if done and checkpoint is not None:
                            Checkpoint(scan_id, seed, position + 1).save(checkpoint)
                    offset += len(plan)
            finally:
                for _ in range(self.identify_workers):
                    await open_q.put(_DONE)

        in_flight: dict[asyncio.Task[None] | None, OpenPort] = {}
        kept: list[Finding] = []  # identified, but cancelled while queueing for the sink

        async def identify_worker() -> None:
            me = asyncio.current_task()
            while True:
                item = await open_q.get()
                if item is _DONE:
                    return
                assert isinstance(item, OpenPort)
                in_flight[me] = item
                finding = await self._identify(item, stats)
                del in_flight[me]
                if finding is not None:
                    try:
                        await sink_q.put(finding)
                    except asyncio.CancelledError:
                        kept.append(finding)
                        raise

        async def reporter() -> None:
            while on_stats is not None:
                on_stats(stats)
                await asyncio.sleep(0.2)

        sink_task = asyncio.create_task(self._sink(sink_q, stats))
        report_task = asyncio.create_task(reporter())
        workers = [asyncio.create_task(identify_worker()) for _ in range(self.identify_workers)]
        self._workers = workers
        discovery_task = asyncio.create_task(discovery())
        try:
            # On Ctrl-C discover_shard stops its engine and returns what it found, so
            # the discovery task always ends by itself, quickly. A second Ctrl-C
            # cancels the identify workers (interrupt()).
            await discovery_task
            await asyncio.gather(*workers, return_exceptions=True)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            # What identification did not finish or reach is kept, unidentified.
            for finding in kept:
                await sink_q.put(finding)
            for port in in_flight.values():
                await sink_q.put(unidentified(port, "interrupted during identification"))
            while not open_q.empty():
                item = open_q.get_nowait()
                if isinstance(item, OpenPort):
                    await sink_q.put(unidentified(item, "interrupted before identification"))
            await sink_q.put(_DONE)
            await sink_task
            report_task.cancel()
            stats.interrupted = stats.interrupted or self._stop_discovery.is_set()
            stats.finished = time.monotonic()
            await self._record_hosts(planned, stats)
            if checkpoint is not None and not stats.interrupted and not stats.errors:
                Path(checkpoint).unlink(missing_ok=True)  # the scan is complete
            if on_stats is not None:
                on_stats(stats)
        return stats

    async def _discover_shard(self, engine: DiscoveryEngine, shard: Shard,
                              open_q: asyncio.Queue[OpenPort | object], stats: ScanStats) -> bool:
        """Discover one shard, retrying it when the engine failed (a crashed masscan
        is retried, never a silent gap); True when the shard completed."""
        found: dict[tuple[str, str, int], OpenPort] = {}
        for attempt in range(1 + self.shard_retries):
            progress = stats.shard_started(shard.probe_count)
            try:
                outcome = await discover_shard(engine, shard, progress,
                                               tarpit_threshold=self.tarpit_threshold,
                                               stop=self._stop_discovery)
            finally:
                stats.shard_finished(progress)
            for port in outcome.ports:  # what a failed attempt found is kept
                found.setdefault((port.target.ip, port.proto.value, port.port), port)
            if not outcome.error or outcome.is_interrupted:
                break
            log.warning("shard %s failed (attempt %d of %d): %s", shard.shard_id, attempt + 1,
                        1 + self.shard_retries, outcome.error)
        outcome.ports = list(found.values())
        if outcome.error:
            stats.errors.append(outcome.error)
        stats.tarpits.extend(outcome.tarpit_notes)
        self._outcomes.append(outcome)
        for port in outcome.ports:
            await open_q.put(port)
        return not outcome.error and not outcome.is_interrupted

    async def _identify(self, port: OpenPort, stats: ScanStats) -> Finding | None:
        try:
            finding = await process(port, self.ctx)
        except Exception as exc:  # noqa: BLE001 - one bad port must not stop the scan
            log.warning("identification of %s:%s failed: %r", port.target.ip, port.port, exc)
            return unidentified(port, f"identification error: {type(exc).__name__}")
        if not keeps(finding):
            return None  # a tarpit's noise: only identified services are kept
        if finding.service.is_identified:
            stats.identified += 1
        return finding

    async def _sink(self, sink_q: asyncio.Queue[Finding | object], stats: ScanStats) -> None:
        batch: list[Finding] = []
        deadline = time.monotonic() + self.batch_seconds
        done = False
        while not done:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = await asyncio.wait_for(sink_q.get(), timeout)
                if item is _DONE:
                    done = True
                else:
                    assert isinstance(item, Finding)
                    batch.append(item)
            except TimeoutError:
                pass
            if batch and (done or len(batch) >= self.batch_size or time.monotonic() >= deadline):
                stats.stored += await asyncio.to_thread(self.store.insert_findings, batch)
                self.changes.add_findings(batch)
                batch = []
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self.batch_seconds

    async def _record_hosts(self, shards_planned: dict[str, Shard], stats: ScanStats) -> None:
        """One HostScan per (host, shard): finished shards as they ended, shards an
        interrupt never reached as "interrupted", so a partial scan never reads complete."""
        rows = []
        done = set()
        for outcome in self._outcomes:
            done.add(outcome.shard.shard_id)
            rows.extend(outcome.host_scans())
        now = utcnow()
        for shard_id, shard in shards_planned.items():
            if shard_id not in done:
                rows.extend(ShardOutcome(shard, now, now).host_scans("interrupted"))
        await asyncio.to_thread(self.store.insert_host_scans, rows)
        stats.changes = await self.changes.finish(rows)  # after the findings are stored

def install_interrupt(runner: EmbeddedRunner) -> Callable[[], None]:
    """Route SIGINT/SIGTERM to ``runner.interrupt``; returns the undo function."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runner.interrupt)

    def undo() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return undo
