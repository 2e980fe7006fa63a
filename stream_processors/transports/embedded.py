"""The embedded transport: one process, in-process queues, no servers.

Owns: binding the stage rules (stream_processors/stages.py) to bounded asyncio
queues: shard plan -> ``discover_with_retries`` -> identify workers
(``identify_port``) -> sink (batched inserts into the store). The distributed
transport (discover_worker.py, faust_agents.py) calls the very same rules; only the
transport differs. Built by the composition root (``portwatch.assembly``).

Back-pressure: every queue is bounded, so a fast discovery engine waits for
identification instead of filling memory. Ctrl-C: the first one stops discovery
and lets identification finish what was found; a second one stops identifying
and stores what is left unidentified. Either way, what was found is kept. The hosts
of a shard whose discovery the Ctrl-C cut short or never reached are recorded as
"interrupted" (they close nothing); a shard whose discovery had completed stays
"completed" (the checkpoint is past it: a resumed run never records it again), and
a port of it whose identification a second Ctrl-C cut short is stored unidentified
("interrupted during/before identification"), open, its attributes not compared
(``changes.INCOMPLETE``).

Tarpits: open ports are held per host until the host's shard is done; a host
that answered on more than ``tarpit_threshold`` ports is flagged "answers on
every port" and only its common ports are identified, keeping only those that
name a service. Nothing is flooded downstream.

Why one file: the runner's queues, its checkpoint watermark, its Ctrl-C handling and
the resume of an earlier run's shards are one state machine over one scan (what a
signal stops, what the watermark may pass, what a resume records); split, each part
would reach into the others' state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from probers.discovery.base import Progress
from producers.shards import Checkpoint, CheckpointError, ScanPlan
from producers.targets import Scope
from schemas.records import ChangeEvent, Finding, HostScan, OpenPort, Proto, Shard, utcnow
from stream_processors.history import (
    RECOVER_AFTER,
    ChangeRecorder,
    HostKey,
    ReprobeOptions,
    covered_since,
    load_host_rows,
    stored_host_scans,
    stored_snapshots,
)
from stream_processors.rejects import insert_isolating_sync
from stream_processors.stages import (
    EngineFactory,
    ShardOutcome,
    StageContext,
    discover_with_retries,
    identify_port,
    note_dropped,
    unidentified,
)
from stream_processors.store import Store

log = logging.getLogger(__name__)


@dataclass
class ScanStats:
    """Live figures of one scan; the CLI renders them as the progress bar."""

    scan_id: str
    hosts: int
    planned_probes: int = 0  # ports x hosts of the whole scan, one pass each
    started: float = field(default_factory=time.monotonic)
    finished: float = 0.0
    identified: int = 0
    examined: int = 0  # open ports whose identification ended (named or not)
    stored: int = 0
    interrupted: bool = False
    # Of an interrupted scan: every shard's discovery had completed (only identification
    # was cut: its hosts are recorded completed and compared), and how many open ports
    # were left unnamed by the stop (kept; not judged until a scan names them)
    scanned_whole: bool = False
    cut_short: int = 0
    # A stop was asked (Ctrl-C, SIGTERM): discovery no longer runs, so the progress
    # shows no rate or ETA from then on (a growing ETA for a scan that had stopped)
    stopping: bool = False
    tarpits: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed_shards: int = 0  # shards whose every attempt failed: not (all) scanned
    resumed_shards: int = 0  # shards a checkpoint said were already done
    # hosts a resumed scan left out: another scan completed them after the earlier run
    # began (``EmbeddedRunner._overtaken``)
    overtaken_hosts: int = 0
    # hosts a resumed scan left out that an earlier run of it completed and compared
    # (their change state names this scan: ``EmbeddedRunner._finished_before``)
    finished_hosts: int = 0
    # What changed since each host's previous completed scan (alerting reads these).
    change_events: list[ChangeEvent] = field(default_factory=list)
    # The signal (SIGINT, SIGTERM) that asked the run to stop, 0 = none; set also when it
    # came after the last shard, while the scan was being recorded: the scan completed
    # then, and the process running it (watch) must still stop (a review: such a signal
    # was lost, and the watcher ran on)
    stop_signal: int = 0

    _done_shards: Progress = field(default_factory=Progress)
    _active: list[Progress] = field(default_factory=list)
    _extra_probes: int = 0  # engines that make several passes (masscan) probe more
    _expected: dict[int, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        """Counts, not the lists: they grow with the scan, and asyncio.run (CPython 3.11)
        builds the repr of its main task's result twice as it exits (signal.getsignal
        formats the SIGINT handler that holds the task). A first scan's 100,000 "opened"
        events made that two 39 MB strings and 1.4 s (BENCHMARKS.md, "eleventh session")."""
        return (f"ScanStats(scan_id={self.scan_id!r}, hosts={self.hosts}, "
                f"stored={self.stored}, identified={self.identified}, "
                f"interrupted={self.interrupted}, errors={len(self.errors)}, "
                f"tarpits={len(self.tarpits)}, change_events={len(self.change_events)})")

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

    def count_again(self, failed: Progress, expected: int) -> None:
        """A ``failed`` attempt's probes are sent again by its retry: the total grows by
        what it sent, so the bar ends at 100 % (it read 150 % after a masscan retried at
        50 %). Less what ``shard_finished`` already added: the passes past the first it
        had counted into its own total (``expected``: the shard's planned probes; a
        retry after half a second pass ended at 82 %: a review)."""
        self._extra_probes += max(0, failed.probes_done
                                  - max(0, failed.probes_total - expected))

    def forget_open(self, count: int) -> None:
        """Take back ``count`` open ports counted twice (a shard's retried attempts)."""
        if count > 0:
            self._done_shards.open_found = max(0, self._done_shards.open_found - count)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started


_DONE = object()


PortKey = tuple[str, str, int]  # (ip, proto, port): in exactly one shard of a plan


@dataclass
class _Watermark:
    """Where the checkpoint may stand: past a shard only once it completed *and* every
    finding of it is stored (or was dropped: a tarpit's unnamed candidate). Saved at
    the end of discovery alone, a kill -9 before the sink's next insert lost the
    shard's findings and the resume skipped it. Shards are passed in walk order; a
    failed or interrupted one holds the mark below it for good (its hosts are scanned
    again by the next run)."""

    checkpoint: Checkpoint
    path: str | None
    walk: collections.deque[tuple[Proto, int, bool]] = field(  # (proto, index, done)
        default_factory=collections.deque)
    pending: dict[tuple[Proto, int], int] = field(default_factory=dict)  # ports not stored
    shard_of: dict[PortKey, tuple[Proto, int]] = field(default_factory=dict)

    def discovered(self, proto: Proto, index: int, ports: Sequence[OpenPort],
                   done: bool) -> None:
        """A shard's discovery ended with ``ports`` to identify (registered before they
        are queued: a finding is never stored before its shard knows it)."""
        count = self.pending.get((proto, index), 0)
        for port in ports:
            key = (port.target.ip, port.proto.value, port.port)
            if key not in self.shard_of:  # (each port once, however often it came)
                self.shard_of[key] = (proto, index)
                count += 1
        self.pending[(proto, index)] = count
        self.walk.append((proto, index, done))

    def settled(self, ports: Iterable[OpenPort]) -> None:
        """These ports' findings are stored (or dropped): move the mark as far as it goes."""
        for port in ports:
            shard = self.shard_of.pop((port.target.ip, port.proto.value, port.port), None)
            if shard is not None:
                self.pending[shard] -= 1
        self.advance()

    def advance(self) -> None:
        moved = False
        while self.walk:
            proto, index, done = self.walk[0]
            if not done or self.pending.get((proto, index), 0) > 0:
                break
            self.walk.popleft()
            self.pending.pop((proto, index), None)
            self.checkpoint = self.checkpoint.advanced(proto, index + 1)
            moved = True
        if moved and self.path is not None:
            self.checkpoint.save(self.path)


class EmbeddedRunner:
    """``engine_for(shard)`` builds the discovery engine of a shard (TCP or UDP: the
    composition root's ``--engine`` rule); ``shard_attempts`` engine runs per shard."""

    def __init__(self, store: Store, engine_for: EngineFactory, ctx: StageContext, *,
                 identify_workers: int = 64,
                 tarpit_threshold: int = 1000, batch_size: int = 5_000,
                 batch_seconds: float = 1.0, queue_size: int = 1000,
                 shard_attempts: int = 2, shard_ports: int = 65_535,
                 shard_hosts: int = 16, scope: Scope | None = None) -> None:
        self.store = store
        self.engine_for = engine_for
        self.ctx = ctx
        self.identify_workers = identify_workers
        self.tarpit_threshold = tarpit_threshold
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.queue_size = queue_size
        self.shard_attempts = shard_attempts
        self.shard_ports = shard_ports
        self.shard_hosts = shard_hosts
        self._stop_discovery = asyncio.Event()
        self._stop_identification = asyncio.Event()
        # Found after a second interrupt stopped the identify workers (no room was left
        # for them in the queue): stored unidentified at the end, never waited for.
        self._unqueued: list[OpenPort] = []
        self._workers: list[asyncio.Task[None]] = []
        self._interrupts = 0
        self.stop_signal = 0  # the first signal that interrupted (install_interrupt)
        self._stats: ScanStats | None = None  # the run's, told when a stop is asked
        self._outcomes: list[ShardOutcome] = []
        # Per address: tarpit ports dropped for naming no service (issue 11, defect 5).
        self._dropped: collections.Counter[str] = collections.Counter()
        # Change history: fed what the sink stores, run when the hosts' scans are recorded.
        # Its closure re-probes (of this scan's hosts, and of the hosts an earlier run
        # left uncompared: recover) keep to the run's scope.
        self.changes = ChangeRecorder(store, ReprobeOptions(scope=scope))

    # -- control ------------------------------------------------------------------------

    def interrupt(self) -> None:
        """First call: stop discovery. Second: stop identification too (what is left
        is stored unidentified)."""
        self._interrupts += 1
        self._stop_discovery.set()
        if self._stats is not None:
            self._stats.stopping = True
        if self._interrupts >= 2:
            self._stop_identification.set()
            for worker in self._workers:
                worker.cancel()

    async def _queue(self, open_q: asyncio.Queue[OpenPort | object], item: object) -> None:
        """Hand ``item`` to the identify workers. Once a second interrupt has stopped
        them, nothing takes from the queue: a port is kept aside (stored unidentified)
        instead of waiting for room forever (a second Ctrl-C on a scan whose discovery
        was ahead of identification hung it for good, and a kill -9 lost every port)."""
        while not self._stop_identification.is_set():
            try:
                open_q.put_nowait(item)
                return
            except asyncio.QueueFull:
                pass
            put = asyncio.ensure_future(open_q.put(item))
            stop = asyncio.ensure_future(self._stop_identification.wait())
            await asyncio.wait({put, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            put.cancel()  # a no-op once it is done
            await asyncio.gather(put, stop, return_exceptions=True)
            if not put.cancelled():
                return
        if isinstance(item, OpenPort):
            self._unqueued.append(item)

    # -- the pipeline -------------------------------------------------------------------

    async def run(self, plan: ScanPlan, *, start: Checkpoint | None = None,
                  checkpoint_path: str | None = None,
                  on_stats: Callable[[ScanStats], None] | None = None) -> ScanStats:
        """Scan ``plan`` from ``start`` (a checkpoint of this plan, or the beginning).

        With ``checkpoint_path`` the checkpoint moves past each completed shard once
        its findings are stored (atomically; ``_Watermark``), and is removed when the
        whole scan completed: rerunning the
        same command resumes at the first shard not done, nothing scanned twice and
        nothing skipped. Each shard's hosts are recorded as "running" when the shard
        starts, so a scan killed outright (SIGKILL) still shows in the Summary, as
        not finished, beside the findings it stored.
        """
        scan_id = plan.scan_id
        progress_at = start or plan.start(None)
        await asyncio.to_thread(self._check_resumable, plan, progress_at, checkpoint_path)
        overtaken = await asyncio.to_thread(self._overtaken, plan, progress_at,
                                            checkpoint_path)
        # (a scan from its start is a new scan: no state names it, nothing to read)
        finished = (await asyncio.to_thread(self._finished_before, plan) - overtaken
                    if _resumes(plan, progress_at) else set())
        mark = _Watermark(progress_at, checkpoint_path)
        targets = plan.plans[0].targets if plan.plans else ()
        stats = self._stats = ScanStats(scan_id, len(targets))
        stats.stopping = self._stop_discovery.is_set()
        stats.planned_probes = plan.probe_count
        stats.overtaken_hosts = len(overtaken)
        stats.finished_hosts = len(finished)
        overtaken |= finished  # left out alike
        self._outcomes = []
        self._dropped.clear()
        # What an earlier run stored and died before comparing (kill -9 at its end): its
        # events come first, delivered with this scan's, and this scan compares with it.
        # Before this scan's "running" rows are stored (recovery compares every completed
        # scan newer than a host's state, finished over RECOVER_AFTER ago).
        # An embedded store is this process's alone: nothing else holds a scan of it, so
        # what was stored is recovered now (the RECOVER_AFTER margin is for the sinks of a
        # server store; with it, a run killed at its end and run again at once compared
        # its next scan first, and the killed one's events were lost: a review).
        # The scan this run resumes is left to it (_resumed_rows compares it with what the
        # run scans; recovered here first, its events came back twice: a review).
        margin = timedelta(0) if self.store.location.scheme == "chdb" else RECOVER_AFTER
        stats.change_events = await self.changes.recover(
            finished_before=utcnow() - margin, held=_OfScan(scan_id))

        open_q: asyncio.Queue[OpenPort | object] = asyncio.Queue(self.queue_size)
        sink_q: asyncio.Queue[Finding | object] = asyncio.Queue(self.queue_size)

        planned: dict[str, Shard] = {}
        resumed: dict[str, Shard] = {}  # shards an earlier run of this scan did

        async def discovery() -> None:
            try:
                for shard_plan in plan.plans:
                    resume_from = progress_at.index(shard_plan.proto)
                    for shard in shard_plan.shards():
                        if shard.index < resume_from:
                            stats.resumed_shards += 1
                            stats.planned_probes -= shard.probe_count
                            resumed[shard.shard_id] = shard
                            continue
                        if overtaken:
                            left = tuple(t for t in shard.targets
                                         if (t.target, t.ip) not in overtaken)
                            stats.planned_probes -= shard.port_count * (
                                len(shard.targets) - len(left))
                            if not left:  # nothing of it to scan: passed as done
                                mark.discovered(shard.proto, shard.index, (), True)
                                mark.advance()
                                continue
                            shard = replace(shard, targets=left)
                        planned[shard.shard_id] = shard
                        if self._stop_discovery.is_set():
                            continue  # recorded as interrupted, never as a silent gap
                        # The checkpoint says "every shard below this one is done and
                        # stored": it never passes a failed shard, nor one whose findings
                        # are still on their way to the store (_Watermark)
                        await self._discover_shard(shard, open_q, stats, mark)
            finally:
                for _ in range(self.identify_workers):
                    await self._queue(open_q, _DONE)

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
                if finding is None:
                    mark.settled([item])  # a tarpit's unnamed candidate: nothing to store
                else:
                    try:
                        await sink_q.put(finding)
                    except asyncio.CancelledError:
                        kept.append(finding)
                        raise

        async def reporter() -> None:
            while on_stats is not None:
                on_stats(stats)
                await asyncio.sleep(0.2)

        sink_task = asyncio.create_task(self._sink(sink_q, stats, mark))
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
            cut = list(in_flight.values())
            for port in cut:
                await sink_q.put(unidentified(port, "interrupted during identification"))
            while not open_q.empty():
                item = open_q.get_nowait()
                if isinstance(item, OpenPort):
                    cut.append(item)
                    await sink_q.put(unidentified(item, "interrupted before identification"))
            for port in self._unqueued:
                cut.append(port)
                await sink_q.put(unidentified(port, "interrupted before identification"))
            self._unqueued.clear()
            await sink_q.put(_DONE)
            await sink_task
            report_task.cancel()
            # Interrupted: a shard's discovery was cut short or never reached, or a port's
            # identification was. A stop that came once every shard was discovered, and
            # let identification finish, stopped nothing: the scan is complete, and says
            # so (it exited 130 and read "interrupted" beside hosts stored "completed", or
            # 0, depending on when in that window the Ctrl-C came: a review). The signal
            # is still kept (stop_signal): watch stops after this scan.
            reached = {o.shard.shard_id for o in self._outcomes if not o.is_interrupted}
            stats.interrupted = bool(cut) or any(s not in reached for s in planned)
            stats.scanned_whole = all(s in reached for s in planned)
            stats.cut_short = len(cut)
            stats.finished = time.monotonic()
            await self._record_hosts(planned, stats, resumed, overtaken)
            # The scan's rows are all in: merge the pages' indexes once, here, rather
            # than at every page read (Store.compact_page_indexes). Not after Ctrl-C:
            # the user asked to stop, and the next scan's end merges what this left.
            if not stats.interrupted:
                await asyncio.to_thread(self.store.compact_page_indexes)
            # complete, or every shard discovered (only names were cut): nothing is left
            # to resume (a kept checkpoint made the rerun scan nothing and say "done",
            # the cut ports still unnamed: a review)
            if (checkpoint_path is not None and not stats.errors
                    and (not stats.interrupted or stats.scanned_whole)):
                Path(checkpoint_path).unlink(missing_ok=True)
            if on_stats is not None:
                on_stats(stats)
        # (nothing awaits after this: a signal before the caller's undo() is taken here)
        stats.stop_signal = self.stop_signal
        return stats

    async def _discover_shard(self, shard: Shard, open_q: asyncio.Queue[OpenPort | object],
                              stats: ScanStats, mark: _Watermark) -> bool:
        """Discover one shard (``discover_with_retries``: the rule both transports
        share); True when the shard completed."""
        await asyncio.to_thread(self.store.insert_host_scans,
                                ShardOutcome(shard, utcnow()).host_scans("running"))

        attempts: list[Progress] = []

        @contextlib.contextmanager
        def attempt_progress() -> Iterator[Progress]:
            if attempts:  # a retry sends the shard again: what the failed attempt sent
                stats.count_again(attempts[-1], shard.probe_count)  # is counted on top
            progress = stats.shard_started(shard.probe_count)
            attempts.append(progress)
            try:
                yield progress
            finally:
                stats.shard_finished(progress)

        outcome = await discover_with_retries(
            shard, self.engine_for, attempts=self.shard_attempts,
            tarpit_threshold=self.tarpit_threshold, stop=self._stop_discovery,
            progress=attempt_progress)
        # A retry finds again what the failed attempt found: the shard's open count is
        # the union (the most any attempt saw per host), not their sum (986 'open' for
        # 493 ports found twice)
        stats.forget_open(sum(p.open_found for p in attempts)
                          - sum(outcome.open_seen.values()))
        if outcome.error:
            stats.errors.append(outcome.error)
            if not outcome.is_interrupted:
                stats.failed_shards += 1
        stats.tarpits.extend(outcome.tarpit_notes)
        self._outcomes.append(outcome)
        done = not outcome.error and not outcome.is_interrupted
        mark.discovered(shard.proto, shard.index, outcome.ports, done)
        mark.advance()  # a shard that found nothing is settled at once
        for port in outcome.ports:
            await self._queue(open_q, port)
        return done

    async def _identify(self, port: OpenPort, stats: ScanStats) -> Finding | None:
        finding = await identify_port(port, self.ctx)
        stats.examined += 1
        if finding is None:
            self._dropped[port.target.ip] += 1  # a tarpit's noise: counted in the Summary note
            return None
        if finding.service.is_identified:
            stats.identified += 1
        return finding

    async def _sink(self, sink_q: asyncio.Queue[Finding | object], stats: ScanStats,
                    mark: _Watermark) -> None:
        batch: list[Finding] = []
        deadline = time.monotonic() + self.batch_seconds
        done = False
        while not done:
            # at least a millisecond: asyncio.wait_for with 0 cancels the get before it
            # reads, and a tiny PORTWATCH_BATCH_SECONDS made this loop spin forever
            timeout = max(0.001, deadline - time.monotonic())
            try:
                items = [await asyncio.wait_for(sink_q.get(), timeout)]
            except TimeoutError:
                items = []
            # What is already queued is taken as it is: wait_for makes a task per call,
            # 6-8 % of the embedded runner's main thread when paid for every finding.
            while items and len(batch) + len(items) < self.batch_size and not sink_q.empty():
                items.append(sink_q.get_nowait())
            for item in items:
                if item is _DONE:
                    done = True
                else:
                    assert isinstance(item, Finding)
                    batch.append(item)
            if batch and (done or len(batch) >= self.batch_size or time.monotonic() >= deadline):
                # A finding the store refuses for its data is reported, not fatal: the
                # rest of its batch is stored (issue 11, defect 1).
                refused = await asyncio.to_thread(insert_isolating_sync, batch,
                                                  self.store.insert_findings)
                stats.stored += len(batch) - len(refused)
                stats.errors += [f"{f.port.target.ip}:{f.port.port}: {why}" for f, why in refused]
                refused_ids = {id(f) for f, _why in refused}
                self.changes.add_findings([f for f in batch if id(f) not in refused_ids])
                mark.settled([f.port for f in batch])  # (a refused one is reported: settled)
                batch = []
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self.batch_seconds

    async def _record_hosts(self, shards_planned: dict[str, Shard], stats: ScanStats,
                            resumed: dict[str, Shard], overtaken: set[HostKey]) -> None:
        """One HostScan per (host, shard): finished shards as they ended, shards an
        interrupt never reached as "interrupted", so a partial scan never reads complete.
        ``resumed``: the shards an earlier run of this scan did, ``overtaken`` the hosts
        this run leaves out (see ``_resumed_rows``)."""
        rows = []
        done = set()
        for outcome in self._outcomes:
            done.add(outcome.shard.shard_id)
            rows.extend(outcome.host_scans())
        now = utcnow()
        for shard_id, shard in shards_planned.items():
            if shard_id not in done:  # never reached: no port of it probed
                rows.extend(ShardOutcome(shard, now, now, probed_per_host=0
                                         ).host_scans("interrupted"))
        rows = note_dropped(rows, self._dropped)
        earlier, completed_now = (
            await asyncio.to_thread(self._resumed_rows, resumed, overtaken, now)
            if resumed else ([], []))
        await asyncio.to_thread(self.store.insert_host_scans, rows + completed_now)
        # after the findings are stored; after what an earlier run left (run() start)
        stats.change_events += await self.changes.finish(rows + earlier)

    def _check_resumable(self, plan: ScanPlan, progress_at: Checkpoint,
                         checkpoint_path: str | None) -> None:
        """A checkpoint that passed shards resumes only into the store those shards were
        stored in: every shard records its hosts as it starts, so the first one passed
        has rows here. None: another --store, or one made anew after a damaged one, and
        the shards passed would be recorded scanned and clean, their open ports never
        seen (a review). Refused (CheckpointError, one line) before anything is sent."""
        for shard_plan in plan.plans:
            if progress_at.index(shard_plan.proto) <= 0:
                continue
            first = next(iter(shard_plan.shards()), None)
            if first is None:
                continue
            keys = {(first.scan_id, t.target, t.ip) for t in first.targets}
            if not stored_host_scans(self.store, keys):
                raise CheckpointError(
                    f"checkpoint {checkpoint_path or '(given)'} resumes scan {plan.scan_id}, "
                    "of which this store holds nothing (another --store, one made anew, or "
                    "a `portwatch prune` since, which removes unfinished old scans): "
                    "the shards it passed were stored elsewhere; remove the checkpoint to "
                    "scan from the start, or resume into the store it began in")

    def _overtaken(self, plan: ScanPlan, progress_at: Checkpoint,
                   checkpoint_path: str | None) -> set[HostKey]:
        """The hosts of a resumed scan that another scan completed after the earlier run
        began, over every port this one scans there (``covered_since``: not a narrower
        scan): the resumed run leaves them out, and leaves what the earlier run recorded
        of them as it was. Their latest scan stays that other one, whose ports are newer
        than anything this scan saw or would see of them. Scanned on, the resumed scan
        ended later than that scan and read as the host's latest: "interrupted" for good
        (its passed shards' rows stayed "running"), with the ports of the earlier run
        beside the new ones (a review); its shards scanned again, a port the earlier
        run had stored read open after it had closed (a review of that fix)."""
        if not _resumes(plan, progress_at):
            return set()  # a scan from the start: nothing of it stored yet
        keys = {(plan.scan_id, t.target, t.ip) for shard_plan in plan.plans
                for t in shard_plan.targets}
        began: dict[HostKey, datetime] = {}
        for h in stored_host_scans(self.store, keys):
            host = (h.target.target, h.target.ip)
            began[host] = min(began.get(host, h.started_at), h.started_at)
        # every port this scan covers on a host (each plan's hosts get all its ports)
        wanted = {p.proto: p.ports for p in plan.plans}
        covered, touched = covered_since(self.store, began, plan.scan_id, wanted)
        if touched:
            # What the earlier run stored of them is older than that scan's ports, and
            # no later scan looked at the rest: neither left out (the rest of the range
            # never scanned), nor resumed (that scan's newer ports vanished from the
            # List under the resumed scan's older ones), nor scanned again (a port the
            # earlier run stored, closed since, read open): refused, before anything
            # is sent (reviews)
            host = min(touched)
            raise CheckpointError(
                f"{checkpoint_path or 'the checkpoint'} resumes scan {plan.scan_id}, but "
                f"another scan looked at {len(touched):,} of its hosts since (e.g. "
                f"{host[1]}) without covering all its ports (a narrower scan, or one "
                "stopped part-way), so what it stored of them is out of date: remove the "
                "checkpoint and scan from the start")
        return covered

    def _finished_before(self, plan: ScanPlan) -> set[HostKey]:
        """The hosts of a resumed scan that an earlier run of it completed and compared:
        their change state names this scan. Left out as overtaken hosts are (what that
        run recorded of them stands): scanned again, the host was compared with itself,
        "closed" by one run of the scan and "reopened" by the next under one scan id (a
        checkpoint copied before a run that completed, then reused; a review), and a
        resume after a failed shard scanned again the hosts of every completed shard
        after it."""
        keys = sorted({(t.target, t.ip) for p in plan.plans for t in p.targets})
        return {k for k, row in load_host_rows(self.store, keys).items()
                if row.scan_id == plan.scan_id}

    def _resumed_rows(self, resumed: dict[str, Shard], overtaken: set[HostKey],
                      now: datetime) -> tuple[list[HostScan], list[HostScan]]:
        """The shard records of the shards an earlier run of this scan did, for change
        detection (every shard of a host's scan is compared together; the ports that run
        stored in those shards are this scan's too, taken from the store, and only
        those: a shard this run scanned again says what is open there now), and those of
        them to store as completed: the checkpoint passed them, so their findings are
        stored, but a run killed outright (SIGKILL) left them "running" (its records are
        written at its end), and the scan read as interrupted for good, its ports never
        opened (a review). A host another scan completed since the earlier run began
        (``overtaken``) is left as it was: this scan's older ports would replace that
        scan's as the host's ports now (a review). (earlier records, records to store)"""
        keys = {(s.scan_id, t.target, t.ip) for s in resumed.values() for t in s.targets
                if (t.target, t.ip) not in overtaken}
        stored = {(h.shard_id, h.target.ip): h for h in stored_host_scans(self.store, keys)}
        snapshots = stored_snapshots(self.store, keys)
        earlier: list[HostScan] = []
        fixed: list[HostScan] = []
        for shard in resumed.values():
            for row in ShardOutcome(shard, now, now).host_scans("completed"):
                key = (shard.scan_id, row.target.target, row.target.ip)
                if key not in keys:
                    continue
                found = [p for p in snapshots.get(key, ()) if row.covers(p.proto, p.port)]
                self.changes.add_snapshots(key, found)
                kept = stored.get((shard.shard_id, row.target.ip))
                if kept is not None and kept.status == "completed":
                    earlier.append(kept)
                    continue
                # as the earlier run would have recorded it: its start, its labels, the
                # ports it stored in this shard
                row = replace(row, open_ports=len(found))
                if kept is not None:
                    row = replace(row, started_at=kept.started_at, target=kept.target)
                earlier.append(row)
                fixed.append(row)
        return earlier, fixed


def _resumes(plan: ScanPlan, progress_at: Checkpoint) -> bool:
    """Does ``progress_at`` resume ``plan`` past some shard (an earlier run stored them)?
    A checkpoint is written only once a shard is passed: none passed is a new scan."""
    return any(progress_at.index(p.proto) > 0 for p in plan.plans)


@dataclass(frozen=True)
class _OfScan:
    """Every (scan, target, ip) of one scan: what a resumed run holds from recovery."""

    scan_id: str

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and bool(key) and key[0] == self.scan_id


def install_interrupt(runner: EmbeddedRunner, say: Callable[[str], None] | None = None
                      ) -> Callable[[], None]:
    """Route SIGINT/SIGTERM to ``runner.interrupt``, saying what each does through
    ``say``; returns the undo function."""
    loop = asyncio.get_running_loop()

    def interrupt(sig: signal.Signals) -> None:
        runner.stop_signal = runner.stop_signal or int(sig)
        runner.interrupt()
        if say is None:
            return
        if runner._interrupts == 1:
            say("stopping: no new ports are scanned; the open ports found are being "
                "identified (interrupt again to store them unidentified now)")
        elif runner._interrupts == 2:
            say("stopping: storing what is left unidentified")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt, sig)

    def undo() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return undo
