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
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from probers.discovery.base import DiscoveryEngine, DiscoveryError, Progress
from producers.shards import ShardPlan
from schemas.records import (
    Finding,
    HostScan,
    OpenPort,
    PortRange,
    Proto,
    ServiceInfo,
    Shard,
    Target,
    utcnow,
)
from stream_processors import cdn, risk
from stream_processors.stages import StageContext, process
from stream_processors.store import Store

log = logging.getLogger(__name__)

# Ports worth identifying on a host that answers on every port (a SYN proxy or
# tarpit): well-known service ports, where a real service is likely behind the noise.
TARPIT_CANDIDATES: frozenset[int] = frozenset({
    21, 22, 23, 25, 53, 80, 81, 110, 111, 135, 139, 143, 389, 443, 445, 465, 587, 636, 993,
    995, 1080, 1433, 1521, 2049, 2375, 2376, 3000, 3306, 3389, 5000, 5432, 5601, 5900, 5985,
    6379, 6443, 8000, 8008, 8080, 8081, 8443, 8888, 9000, 9090, 9200, 9443, 10250, 11211, 27017,
})


def new_scan_id() -> str:
    return f"{datetime.now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


@dataclass
class ScanStats:
    """Live figures of one scan; the CLI renders them as the progress bar."""

    scan_id: str
    hosts: int
    probes_total: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float = 0.0
    identified: int = 0
    stored: int = 0
    interrupted: bool = False
    tarpits: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    _done_shards: Progress = field(default_factory=Progress)
    _active: list[Progress] = field(default_factory=list)

    @property
    def probes_done(self) -> int:
        return self._done_shards.probes_done + sum(p.probes_done for p in self._active)

    @property
    def open_found(self) -> int:
        return self._done_shards.open_found + sum(p.open_found for p in self._active)

    @property
    def notes(self) -> list[str]:
        return [*self._done_shards.notes, *(n for p in self._active for n in p.notes)]

    def shard_started(self) -> Progress:
        progress = Progress()
        self._active.append(progress)
        return progress

    def shard_finished(self, progress: Progress) -> None:
        self._active.remove(progress)
        done = self._done_shards
        done.probes_done += progress.probes_done
        done.open_found += progress.open_found
        done.retries += progress.retries
        done.errors += progress.errors
        done.notes.extend(progress.notes)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started


@dataclass
class _HostState:
    target: Target
    started_at: datetime
    ports_scanned: int = 0
    open_ports: int = 0
    is_tarpit: bool = False
    error: str = ""


_DONE = object()


class EmbeddedRunner:
    def __init__(self, store: Store, engine: DiscoveryEngine, ctx: StageContext, *,
                 udp_engine: DiscoveryEngine | None = None, identify_workers: int = 64,
                 tarpit_threshold: int = 1000, batch_size: int = 500,
                 batch_seconds: float = 1.0, queue_size: int = 1000) -> None:
        self.store = store
        self.engine = engine
        self.udp_engine = udp_engine
        self.ctx = ctx
        self.identify_workers = identify_workers
        self.tarpit_threshold = tarpit_threshold
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.queue_size = queue_size
        self._stop_discovery = asyncio.Event()
        self._stop_identify = asyncio.Event()
        self._interrupts = 0

    # -- control ------------------------------------------------------------------------

    def interrupt(self) -> None:
        """First call: stop discovery. Second: stop identification too."""
        self._interrupts += 1
        self._stop_discovery.set()
        if self._interrupts >= 2:
            self._stop_identify.set()

    # -- the pipeline -------------------------------------------------------------------

    async def run(self, targets: Sequence[Target], tcp_ports: Sequence[PortRange],
                  udp_ports: Sequence[PortRange] = (), *, scan_id: str | None = None,
                  seed: int = 0, on_stats: Callable[[ScanStats], None] | None = None,
                  ) -> ScanStats:
        scan_id = scan_id or new_scan_id()
        stats = ScanStats(scan_id, len(targets))
        hosts = {t.ip: _HostState(t, utcnow()) for t in targets}
        plans = []
        if tcp_ports:
            plans.append((self.engine, ShardPlan(scan_id, tuple(targets), tuple(tcp_ports),
                                                 Proto.TCP, seed)))
        if udp_ports and self.udp_engine is not None:
            plans.append((self.udp_engine, ShardPlan(scan_id, tuple(targets), tuple(udp_ports),
                                                     Proto.UDP, seed)))
        stats.probes_total = sum(sum(len(r) for r in plan.ports) * len(targets)
                                 for _engine, plan in plans)

        open_q: asyncio.Queue[OpenPort | object] = asyncio.Queue(self.queue_size)
        sink_q: asyncio.Queue[Finding | object] = asyncio.Queue(self.queue_size)

        async def discovery() -> None:
            try:
                for engine, plan in plans:
                    for shard in plan.shards():
                        if self._stop_discovery.is_set():
                            return
                        await self._discover_shard(engine, shard, hosts, open_q, stats)
            finally:
                for _ in range(self.identify_workers):
                    await open_q.put(_DONE)

        async def identify_worker() -> None:
            while True:
                item = await open_q.get()
                if item is _DONE:
                    return
                assert isinstance(item, OpenPort)
                finding = await self._identify(item, stats)
                if finding is not None:
                    await sink_q.put(finding)

        async def reporter() -> None:
            while on_stats is not None:
                on_stats(stats)
                await asyncio.sleep(0.2)

        sink_task = asyncio.create_task(self._sink(sink_q, stats))
        report_task = asyncio.create_task(reporter())
        workers = [asyncio.create_task(identify_worker()) for _ in range(self.identify_workers)]
        discovery_task = asyncio.create_task(discovery())
        stop_waiter = asyncio.create_task(self._stop_discovery.wait())
        try:
            await asyncio.wait({discovery_task, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not discovery_task.done():
                discovery_task.cancel()
                stats.interrupted = True
                with contextlib.suppress(asyncio.CancelledError):
                    await discovery_task
                for _ in range(self.identify_workers):
                    await open_q.put(_DONE)
            elif discovery_task.exception() is not None:
                raise discovery_task.exception()  # type: ignore[misc]
            await asyncio.gather(*workers)
        finally:
            stop_waiter.cancel()
            for w in workers:
                w.cancel()
            # What identification did not reach is kept, unidentified, rather than lost.
            while not open_q.empty():
                item = open_q.get_nowait()
                if isinstance(item, OpenPort):
                    await sink_q.put(self._unidentified(item, "interrupted before identification"))
            await sink_q.put(_DONE)
            await sink_task
            report_task.cancel()
            stats.interrupted = stats.interrupted or self._stop_discovery.is_set()
            stats.finished = time.monotonic()
            await self._record_hosts(hosts, stats)
            if on_stats is not None:
                on_stats(stats)
        return stats

    async def _discover_shard(self, engine: DiscoveryEngine, shard: Shard,
                              hosts: dict[str, _HostState],
                              open_q: asyncio.Queue[OpenPort | object], stats: ScanStats) -> None:
        held: dict[str, list[OpenPort]] = {t.ip: [] for t in shard.targets}
        counts = dict.fromkeys(held, 0)
        progress = stats.shard_started()
        try:
            async for found in _guarded(engine.scan(shard, progress)):
                ip = found.target.ip
                counts[ip] = counts.get(ip, 0) + 1
                if counts[ip] <= self.tarpit_threshold or found.port in TARPIT_CANDIDATES:
                    held.setdefault(ip, []).append(found)
        except DiscoveryError as exc:
            note = f"{engine.name}: {exc}"
            stats.errors.append(note)
            for t in shard.targets:
                hosts[t.ip].error = note
            log.warning("shard %s failed: %s", shard.shard_id, exc)
        finally:
            stats.shard_finished(progress)
            for t in shard.targets:
                hosts[t.ip].ports_scanned += shard.port_count
        for ip, ports in held.items():
            state = hosts[ip]
            if counts.get(ip, 0) > self.tarpit_threshold:
                state.is_tarpit = True
                stats.tarpits.append(ip)
                ports = [p for p in ports if p.port in TARPIT_CANDIDATES]
                ports = [replace(p, reason="tarpit-candidate") for p in ports]
            state.open_ports += len(ports)
            for p in ports:
                await open_q.put(p)

    async def _identify(self, port: OpenPort, stats: ScanStats) -> Finding | None:
        if self._stop_identify.is_set():
            return self._unidentified(port, "interrupted before identification")
        ident = asyncio.create_task(process(port, self.ctx))
        stop = asyncio.create_task(self._stop_identify.wait())
        try:
            await asyncio.wait({ident, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not ident.done():
            ident.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ident
            return self._unidentified(port, "interrupted during identification")
        try:
            finding = ident.result()
        except Exception as exc:  # noqa: BLE001 - one bad port must not stop the scan
            log.warning("identification of %s:%s failed: %r", port.target.ip, port.port, exc)
            return self._unidentified(port, f"identification error: {type(exc).__name__}")
        if port.reason == "tarpit-candidate" and not finding.service.is_identified:
            return None  # a tarpit's noise: only identified services are kept
        if finding.service.is_identified:
            stats.identified += 1
        return finding

    @staticmethod
    def _unidentified(port: OpenPort, why: str) -> Finding:
        finding = Finding(port=port, service=ServiceInfo(method="unidentified", extra_info=why))
        return risk.assess(cdn.classify(finding))

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
                batch = []
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self.batch_seconds

    async def _record_hosts(self, hosts: dict[str, _HostState], stats: ScanStats) -> None:
        finished = utcnow()
        rows = []
        for state in hosts.values():
            status = "completed"
            if state.error:
                status = "error"
            elif stats.interrupted:
                status = "interrupted"
            rows.append(HostScan(
                scan_id=stats.scan_id, target=state.target, started_at=state.started_at,
                finished_at=finished, ports_scanned=state.ports_scanned,
                open_ports=state.open_ports, status=status, is_tarpit=state.is_tarpit,
                note=state.error or ("answers on every port" if state.is_tarpit else ""),
            ))
        await asyncio.to_thread(self.store.insert_host_scans, rows)


async def _guarded(gen: AsyncIterator[OpenPort]) -> AsyncIterator[OpenPort]:
    """Iterate an engine and always close it (sockets, processes) on the way out."""
    try:
        async for item in gen:
            yield item
    finally:
        aclose = getattr(gen, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


def install_interrupt(runner: EmbeddedRunner) -> Callable[[], None]:
    """Route SIGINT/SIGTERM to ``runner.interrupt``; returns the undo function."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runner.interrupt)

    def undo() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return undo
