"""The embedded runner: checkpoint/resume and shard retry, on real loopback sockets
and a real chdb store."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from probers.discovery.base import DiscoveryError, Progress
from probers.discovery.connect import ConnectEngine
from producers.shards import Checkpoint, ScanPlan
from schemas.records import (
    Finding,
    OpenPort,
    PortRange,
    RiskColor,
    ServiceInfo,
    Shard,
    Target,
)
from stream_processors.stages import make_context
from stream_processors.transports.embedded import EmbeddedRunner
from tests import loopback

TARGET = Target(ip="127.0.0.1", target="127.0.0.1")


def _runner(store, engine=None) -> EmbeddedRunner:  # type: ignore[no-untyped-def]
    ctx = make_context(banner_wait=0.5, identify_budget=2, use_nmap_probes=False,
                       tls_enumeration=False)
    return EmbeddedRunner(store, lambda _shard: engine or ConnectEngine(), ctx,
                          identify_workers=4, shard_ports=1000, batch_seconds=0.2)


def _plan(ports: tuple[PortRange, ...], *, seed: int = 0, scan_id: str = "scan-1") -> ScanPlan:
    return ScanPlan.build(scan_id, seed, [TARGET], ports, (), ports_per_shard=1000)


def _open_ports(store) -> set[int]:  # type: ignore[no-untyped-def]
    return {r["port"] for r in store.report("list", {"history": 1}).dicts()}


def _listener_per_shard(stack: contextlib.ExitStack, listeners: dict[int, Any] | None = None
                        ) -> tuple[int, list[int]]:
    """A banner listener in each 1,000-port shard of [lo, lo + 2999]: (lo, their ports);
    each listener by its port into ``listeners`` when given (to close one)."""
    lo = min(loopback.free_port(), 60000)
    ports = []
    for offset in (10, 1010, 2010):
        for shift in range(200):
            try:
                lst = stack.enter_context(loopback.listen(loopback.banner(b"hello\r\n"),
                                                          port=lo + offset + shift))
            except OSError:
                continue
            ports.append(lst.port)
            if listeners is not None:
                listeners[lst.port] = lst
            break
    assert len(ports) == 3
    return lo, ports


class StopsAfterFirstShard(EmbeddedRunner):
    """Ctrl-C, delivered exactly when the first shard has finished."""

    async def _discover_shard(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        done = await super()._discover_shard(*args, **kwargs)
        self.interrupt()
        return done


def test_checkpoint_resumes_an_interrupted_scan_without_gaps(store, tmp_path: Path) -> None:
    # Given listeners spread over a 3,000-port range cut into 3 shards of 1,000 ports
    with contextlib.ExitStack() as stack:
        lo, ports = _listener_per_shard(stack)
        span = (PortRange(lo, lo + 2999),)
        checkpoint = tmp_path / "scan.checkpoint"
        # When a first run is stopped after its first shard
        runner = _runner(store)
        runner.__class__ = StopsAfterFirstShard
        plan = _plan(span, seed=7, scan_id="resume-me")
        first = asyncio.run(runner.run(plan, checkpoint_path=str(checkpoint)))
        saved = Checkpoint.load(checkpoint)
        # Then the checkpoint names the scan, its seed, its work and the next shard
        assert first.interrupted
        assert saved is not None and saved.scan_id == first.scan_id and saved.seed == 7
        assert saved.fingerprint == plan.fingerprint
        assert saved.next_index == {"tcp": 1}
        # When the same work runs again from that checkpoint
        second = asyncio.run(_runner(store).run(plan, start=plan.start(saved),
                                                checkpoint_path=str(checkpoint)))
        # Then it continues the same scan from the next shard and completes it
        assert second.scan_id == first.scan_id
        assert second.resumed_shards == 1
        assert not second.interrupted
        assert not checkpoint.exists()
        found = _open_ports(store)
        assert set(ports) <= found
        assert all(lo <= p <= lo + 2999 for p in found)


def _first_shard_only(store, plan: ScanPlan, checkpoint: Path,  # type: ignore[no-untyped-def]
                      first_run: type[EmbeddedRunner]) -> Checkpoint:
    """A first run of ``plan`` into ``store`` ended after its first shard by
    ``first_run``: its checkpoint, past that shard."""
    runner = _runner(store)
    runner.__class__ = first_run
    asyncio.run(runner.run(plan, checkpoint_path=str(checkpoint)))
    saved = Checkpoint.load(checkpoint)
    assert saved is not None and saved.next_index == {"tcp": 1}
    return saved


def test_a_checkpoint_resumed_into_another_store_is_refused_before_scanning(
        store, shared_chdb_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from producers.shards import CheckpointError
    from tests.conftest import scratch_store

    with contextlib.ExitStack() as stack:
        lo, ports = _listener_per_shard(stack)
        plan = _plan((PortRange(lo, lo + 2999),), seed=11, scan_id="moved-store")
        checkpoint = tmp_path / "scan.checkpoint"
        # Given a first run, stopped after its first shard, into one store
        saved = _first_shard_only(store, plan, checkpoint, StopsAfterFirstShard)
        # When the same command resumes it into another store (a store made anew after a
        # damaged one)
        other = stack.enter_context(scratch_store(shared_chdb_path, "moved"))
        with pytest.raises(CheckpointError) as refused:
            asyncio.run(_runner(other).run(plan, start=plan.start(saved),
                                           checkpoint_path=str(checkpoint)))
        # Then it is refused in words before anything is scanned or recorded (the shard
        # the first run passed read "completed, nothing open" there, its listener never
        # seen: a review), and the checkpoint is kept
        assert str(refused.value).startswith(
            f"checkpoint {checkpoint} resumes scan moved-store, of which this store holds "
            "nothing (another --store, one made anew, or a `portwatch prune` since, "
            "which removes unfinished old scans)")
        assert other.query("SELECT count() FROM host_scans") == [(0,)]
        assert Checkpoint.load(checkpoint) == saved


class FaultInjectingEngine:
    """Named fake for a fault we cannot cause on demand with the connect engine:
    the engine crashes mid-shard on its first attempt (like a killed masscan). With
    ``skip_first_on_retry``, the retry misses what the dead attempt found (a lost
    answer): the shard's ports are the union of the attempts'."""

    name = "fault-injecting-connect"

    def __init__(self, *, skip_first_on_retry: bool = False) -> None:
        self.inner = ConnectEngine()
        self.attempts = 0
        self.skip = skip_first_on_retry
        self.first: set[int] = set()

    async def scan(self, shard: Shard, progress: Progress) -> AsyncGenerator[OpenPort, None]:
        self.attempts += 1
        async for port in self.inner.scan(shard, progress):
            if self.attempts > 1 and self.skip and port.port in self.first:
                continue
            self.first.add(port.port)
            yield port
            if self.attempts == 1:
                raise DiscoveryError("engine died mid-shard (injected)")


def test_a_shard_whose_engine_crashes_is_retried_not_lost(store) -> None:
    # Given two listeners and an engine that crashes after its first open port
    with loopback.listen(loopback.banner(b"a\r\n")) as a, \
            loopback.listen(loopback.banner(b"b\r\n")) as b:
        engine = FaultInjectingEngine()
        span = tuple(PortRange(p, p) for p in sorted((a.port, b.port)))
        # When the runner scans them
        stats = asyncio.run(_runner(store, engine).run(_plan(span)))
    # Then the shard was retried and both ports were found; the scan completed
    assert engine.attempts == 2
    assert stats.errors == []
    # (and counted once: the retry found the first attempt's port again; before: 3 open)
    assert stats.open_found == 2
    # and the progress ends at 100 %: the retry's probes are added to the total, not
    # counted past it (before: 3/2 probes, "150 %")
    assert stats.probes_done == stats.probes_total > 2


class DiesInItsSecondPass:
    """Named fake for a fault we cannot cause on demand: a masscan-like engine (the
    progress masscan.py keeps: a second pass adds its probes to the total as it starts)
    whose first attempt dies halfway through its second pass (``in_second_pass``) or
    halfway through its first; the retry completes in one pass. Sends nothing."""

    name = "dies-in-its-second-pass"

    def __init__(self, *, in_second_pass: bool) -> None:
        self.attempts = 0
        self.in_second_pass = in_second_pass

    async def scan(self, shard: Shard, progress: Progress) -> AsyncGenerator[OpenPort, None]:
        self.attempts += 1
        planned = shard.probe_count
        progress.add_total(planned)
        if self.attempts == 1:
            if self.in_second_pass:
                progress.probes_done = planned
                progress.add_total(planned // 2)  # the second pass, announced
                progress.probes_done += planned // 4
            else:
                progress.probes_done = planned // 2
            raise DiscoveryError("masscan died (injected)")
        progress.probes_done = planned
        for _ in ():
            yield _


@pytest.mark.parametrize("in_second_pass", [False, True], ids=["first-pass", "second-pass"])
def test_a_retried_shards_progress_ends_at_100_percent(store, in_second_pass: bool) -> None:  # type: ignore[no-untyped-def]
    # Given an engine whose first attempt dies partway and whose retry completes
    engine = DiesInItsSecondPass(in_second_pass=in_second_pass)
    stats = asyncio.run(_runner(store, engine).run(_plan((PortRange(20100, 20199),))))
    # Then the bar ends at 100 %: what the dead attempt sent is added to the total once
    # (it read 150 %, then 82 % after a death in the second pass: reviews)
    assert (engine.attempts, stats.errors) == (2, [])
    assert stats.probes_done == stats.probes_total == 100 + (125 if in_second_pass else 50)


def test_a_retry_that_misses_what_the_dead_attempt_found_counts_the_union(store) -> None:  # type: ignore[no-untyped-def]
    # Given two listeners, a first attempt that finds one then dies, and a retry that
    # finds only the other
    with loopback.listen(loopback.banner(b"a\r\n")) as a, \
            loopback.listen(loopback.banner(b"b\r\n")) as b:
        engine = FaultInjectingEngine(skip_first_on_retry=True)
        span = tuple(PortRange(p, p) for p in sorted((a.port, b.port)))
        stats = asyncio.run(_runner(store, engine).run(_plan(span)))
    # Then both are kept and both counted (a review: the count took the most one attempt
    # saw, 1, beside 2 stored findings)
    assert _open_ports(store) == {a.port, b.port}
    assert (stats.open_found, stats.stored) == (2, 2)
    assert _open_ports(store) == {a.port, b.port}
    summary = store.report("summary").dicts()
    assert summary[0]["scan_status"] == "completed"


class FirstShardAlwaysFails:
    """Named fake for a fault we cannot cause on demand with the connect engine: the
    engine fails every attempt at the first shard it is given (a masscan that cannot
    start for that part of the work); the other shards are the real connect engine's."""

    name = "first-shard-fails"

    def __init__(self, failing: str) -> None:
        self.inner = ConnectEngine()
        self.failing = failing

    async def scan(self, shard: Shard, progress: Progress) -> AsyncGenerator[OpenPort, None]:
        if shard.shard_id == self.failing:
            raise DiscoveryError("engine could not start (injected)")
        async for port in self.inner.scan(shard, progress):
            yield port


def test_a_failed_shard_is_never_passed_by_the_checkpoint(store, tmp_path: Path) -> None:
    # Given a scan of three shards whose first one fails every attempt
    plan = _plan((PortRange(20000, 22999),), seed=3, scan_id="gap")
    shards = list(plan.plans[0].shards())
    assert len(shards) == 3
    engine = FirstShardAlwaysFails(shards[0].shard_id)
    checkpoint = tmp_path / "scan.checkpoint"
    # When it runs with a checkpoint
    stats = asyncio.run(_runner(store, engine).run(plan, checkpoint_path=str(checkpoint)))
    # Then the scan says one shard failed, the others ran, and the checkpoint still
    # points at the failed shard (the next run scans it; before, it pointed past it)
    assert (stats.failed_shards, stats.interrupted) == (1, False)
    assert stats.errors == ["first-shard-fails: engine could not start (injected)"]
    # (no shard below the failed one completed: nothing to resume from)
    saved = Checkpoint.load(checkpoint) if checkpoint.exists() else None
    assert saved is None or saved.next_index == {"tcp": 0}
    # And a rerun from it scans every shard again, then forgets the checkpoint
    again = asyncio.run(_runner(store).run(plan, start=plan.start(saved),
                                           checkpoint_path=str(checkpoint)))
    assert (again.failed_shards, again.resumed_shards) == (0, 0)
    assert not checkpoint.exists()


def test_a_scan_with_a_failed_shard_exits_1_and_says_incomplete(store) -> None:
    import pytest

    from portwatch.console import EXIT_RUNTIME, PortwatchError
    from portwatch.scan_cli import raise_for_outcome

    plan = _plan((PortRange(20000, 21999),), seed=3, scan_id="gap-exit")
    first = next(plan.plans[0].shards())
    stats = asyncio.run(_runner(store, FirstShardAlwaysFails(first.shard_id)).run(plan))
    with pytest.raises(PortwatchError) as failed:
        raise_for_outcome(stats, "nightly.json")
    assert failed.value.code == EXIT_RUNTIME
    assert str(failed.value).startswith(
        "scan incomplete: discovery failed on 1 shard(s) (first-shard-fails: engine could "
        "not start (injected));")
    assert str(failed.value).endswith("with the same --checkpoint to scan only what is left")


def test_the_checkpoint_passes_a_shard_only_once_its_findings_are_stored(
        store, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # (a review of 2026-12-05: saved when a shard's discovery ended, so a kill -9 before
    # the sink's next insert lost its findings, and the resume skipped the shard)
    with contextlib.ExitStack() as stack:
        lo, ports = _listener_per_shard(stack)
        plan = _plan((PortRange(lo, lo + 2999),), seed=7, scan_id="stored-first")
        shard_of_port = {p: s.index for s in plan.plans[0].shards() for p in ports
                         if s.ports[0].first <= p <= s.ports[0].last}
        seen_at_save: list[tuple[int, set[int]]] = []
        real_save = Checkpoint.save

        def save_and_look(self: Checkpoint, path: str) -> None:
            # a spy: what the store holds when the checkpoint moves
            stored = {int(r[0]) for r in store.query(
                "SELECT port FROM port_observations WHERE scan_id = 'stored-first'")}
            seen_at_save.append((self.index(plan.plans[0].proto), stored))
            real_save(self, path)

        monkeypatch.setattr(Checkpoint, "save", save_and_look)
        runner = _runner(store)
        runner.batch_seconds = 2.0  # the sink holds findings a while: the race is wide open
        asyncio.run(runner.run(plan, checkpoint_path=str(tmp_path / "scan.checkpoint")))
    # Then at every move, every listener of the shards it passed was already stored
    assert seen_at_save, "the checkpoint never moved"
    for next_index, stored in seen_at_save:
        passed = {p for p, index in shard_of_port.items() if index < next_index}
        assert passed <= stored, (next_index, passed, stored)
    assert seen_at_save[-1][0] == 3


class KilledBeforeItsEnd(StopsAfterFirstShard):
    """Named fake for a fault a test process cannot suffer itself: a run killed outright
    (SIGKILL) after its checkpoint passed the first shard. It stops after that shard
    and, as a killed process, never writes its end: no shard record but the "running"
    ones written as shards start, no change computed."""

    async def _record_hosts(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


@pytest.mark.parametrize("first_run", [StopsAfterFirstShard, KilledBeforeItsEnd],
                         ids=["ctrl-c", "killed"])
def test_a_resumed_scan_compares_every_shard_and_reads_completed(
        store, tmp_path: Path, first_run: type[EmbeddedRunner]) -> None:  # type: ignore[no-untyped-def]
    # Given a listener in each of three 1,000-port shards, and a first run of the scan
    # stopped (Ctrl-C) or killed after its first shard, its checkpoint past that shard
    with contextlib.ExitStack() as stack:
        lo, ports = _listener_per_shard(stack)
        plan = _plan((PortRange(lo, lo + 2999),), seed=3, scan_id="resumed-whole")
        checkpoint = tmp_path / "scan.checkpoint"
        saved = _first_shard_only(store, plan, checkpoint, first_run)
        # When the same command runs again and resumes it
        second = asyncio.run(_runner(store).run(plan, start=plan.start(saved),
                                                checkpoint_path=str(checkpoint)))
    # Then every listener opened, the first shard's too (its port was stored by the
    # first run, and the resumed run compared only its own shards: no event, no alert)
    assert second.resumed_shards == 1 and not second.interrupted
    # (a superset: another program's listener may sit in the range on a busy machine)
    assert set(ports) <= {e.port for e in second.change_events if e.kind.value == "opened"}
    # And the scan reads completed: no shard record is left "running" or "interrupted"
    assert store.query("SELECT DISTINCT status FROM host_scans FINAL "
                       "WHERE scan_id = 'resumed-whole'") == [("completed",)]
    (summary,) = store.report("summary", {}).dicts()
    assert summary["scan_status"] == "completed"


def _killed_after_first_shard(store, plan: ScanPlan, checkpoint: Path) -> Checkpoint:  # type: ignore[no-untyped-def]
    return _first_shard_only(store, plan, checkpoint, KilledBeforeItsEnd)


def _killed_scan(stack: contextlib.ExitStack, store: Any, tmp_path: Path, scan_id: str,
                 listeners: dict[int, Any] | None = None
                 ) -> tuple[int, list[int], ScanPlan, Path, Checkpoint]:
    """A listener in each shard of [lo, lo + 2999] (``_listener_per_shard``) and a run of
    ``scan_id`` over them killed after its first shard: (lo, ports, plan, checkpoint,
    the checkpoint it saved)."""
    lo, ports = _listener_per_shard(stack, listeners)
    plan = _plan((PortRange(lo, lo + 2999),), seed=5, scan_id=scan_id)
    checkpoint = tmp_path / "scan.checkpoint"
    return lo, ports, plan, checkpoint, _killed_after_first_shard(store, plan, checkpoint)


def _nothing_listens(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _current_ports(store) -> set[int]:  # type: ignore[no-untyped-def]
    return {r["port"] for r in store.report("list", {}).dicts()}


def test_a_resumed_scan_takes_from_the_store_only_the_shards_it_did_not_scan_again(
        store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with contextlib.ExitStack() as stack:
        lo, ports = _listener_per_shard(stack)
        plan = _plan((PortRange(lo, lo + 2999),), seed=5, scan_id="resumed-own")
        checkpoint = tmp_path / "scan.checkpoint"
        # Given a run killed after its first shard, which had also stored a port of a
        # shard the checkpoint had not passed (in flight when it died; stored here by
        # hand: the kill's timing cannot be had on demand), closed since
        saved = _killed_after_first_shard(store, plan, checkpoint)
        second_shard = next(s for s in plan.plans[0].shards() if s.index == 1)
        gone = next(p for p in range(second_shard.ports[0].first, second_shard.ports[0].last)
                    if p not in ports and _nothing_listens(p))
        store.insert_findings([Finding(
            port=OpenPort(scan_id="resumed-own", target=TARGET, port=gone),
            service=ServiceInfo(service="ssh", product="OpenSSH", version="9.2p1"),
            risk_color=RiskColor.GREEN)])
        # When the scan resumes (and scans that shard again)
        second = asyncio.run(_runner(store).run(plan, start=plan.start(saved),
                                                checkpoint_path=str(checkpoint)))
    # Then each listener opened once, and the port the shard's new scan did not find is
    # not opened (a review: every port the scan ever stored was compared, so it was, and
    # alerted). (The reports still list it: its observation is the scan's, as when a
    # scan is interrupted after storing a port that then closes.)
    opened = [e.port for e in second.change_events if e.kind.value == "opened"]
    assert set(ports) <= set(opened) and len(opened) == len(set(opened))
    assert gone not in opened
    assert not [e for e in second.change_events if e.kind.value == "closed"]
    assert set(ports) <= _current_ports(store)


def test_a_host_scanned_again_before_the_resume_keeps_that_scans_ports(
        store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listeners: dict[int, Any] = {}
    with contextlib.ExitStack() as stack:
        lo, ports = _listener_per_shard(stack, listeners)
        span = (PortRange(lo, lo + 2999),)
        plan = _plan(span, seed=5, scan_id="overtaken")
        checkpoint = tmp_path / "scan.checkpoint"
        # Given a run killed after its first shard, which stored that shard's port
        saved = _killed_after_first_shard(store, plan, checkpoint)
        first = next(s for s in plan.plans[0].shards() if s.index == 0)
        [gone] = [p for p in ports if first.ports[0].first <= p <= first.ports[0].last]
        assert gone in _current_ports(store)
        # and a port of it that closes, then a whole scan of the same host (it found
        # every listener but that one)
        with socket.socket() as holder:  # bound, not listening: closed, and kept so
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listeners[gone].close()
            holder.bind(("127.0.0.1", gone))
            asyncio.run(_runner(store).run(_plan(span, seed=6, scan_id="in-between")))
            # (the span is in the ephemeral range: another process's listener may show
            # up too, so the listeners are checked, not the whole set)
            now_open = _current_ports(store)
            assert set(ports) - {gone} <= now_open and gone not in now_open
            # When the killed scan resumes
            resumed = asyncio.run(_runner(store).run(plan, start=plan.start(saved),
                                                     checkpoint_path=str(checkpoint)))
    # Then it leaves the host out: the scan in between is newer than anything the
    # killed run saw of it. Its ports stay that scan's (a review: the resumed scan,
    # completed after the other, became the host's ports scan with its older ports, and
    # the ports of its first shard vanished from the Summary and the List; then, its
    # shards scanned again, the closed port the killed run had stored read open), and
    # its latest scan reads completed (it read "interrupted" for good: the passed
    # shard's row stayed "running"; a review)
    assert (resumed.resumed_shards, resumed.overtaken_hosts) == (1, 1)
    assert resumed.probes_done == 0 and resumed.change_events == []
    assert not resumed.interrupted and not resumed.errors
    assert set(ports) - {gone} <= _current_ports(store) == now_open
    (summary,) = store.report("summary", {}).dicts()
    assert (summary["open_ports"], summary["scan_status"]) == (len(now_open), "completed")
    assert store.query("SELECT scan_id FROM latest_host_scans") == [("in-between",)]
    assert not checkpoint.exists()  # the scan is complete


def test_a_narrower_scan_before_the_resume_refuses_the_resume(
        store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from producers.shards import CheckpointError

    with contextlib.ExitStack() as stack:
        # Given a run killed after its first shard, then a completed scan of that
        # shard's ports only (narrower than the killed scan)
        lo, ports, plan, checkpoint, saved = _killed_scan(stack, store, tmp_path, "narrowed")
        first = next(s for s in plan.plans[0].shards() if s.index == 0)
        asyncio.run(_runner(store).run(_plan(first.ports, seed=6, scan_id="narrow")))
        shown = _current_ports(store)
        rows = store.query("SELECT count() FROM host_scans")
        # When the killed scan resumes
        with pytest.raises(CheckpointError) as refused:
            asyncio.run(_runner(store).run(plan, start=plan.start(saved),
                                           checkpoint_path=str(checkpoint)))
    # Then it is refused before anything is sent or stored, saying why and what to do:
    # left out, the rest of the host's range was never scanned; resumed, the narrow
    # scan's newer port vanished from the List (reviews)
    assert str(refused.value) == (
        f"{checkpoint} resumes scan narrowed, but another scan looked at 1 of its hosts "
        "since (e.g. 127.0.0.1) without covering all its ports (a narrower scan, or one "
        "stopped part-way), so what it stored of them is out of date: remove the "
        "checkpoint and scan from the start")
    assert store.query("SELECT count() FROM host_scans") == rows
    assert _current_ports(store) == shown and Checkpoint.load(checkpoint) == saved


def test_a_scan_of_other_ports_before_the_resume_lets_it_resume(
        store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with contextlib.ExitStack() as stack:
        # Given a run killed after its first shard, then a completed scan of the host's
        # ports outside the killed scan's range only, which found one open
        lo, ports, plan, checkpoint, saved = _killed_scan(stack, store, tmp_path,
                                                          "resumed-apart")
        other = next(p for p in range(max(lo - 300, 1024), lo)
                     if _nothing_listens(p) and _binds(p))
        stack.enter_context(loopback.listen(loopback.banner(b"hello\r\n"), port=other))
        asyncio.run(_runner(store).run(_plan((PortRange(other, other),), seed=6,
                                             scan_id="apart")))
        assert other in _current_ports(store)
        # When the killed scan resumes
        resumed = asyncio.run(_runner(store).run(plan, start=plan.start(saved),
                                                 checkpoint_path=str(checkpoint)))
    # Then it is not refused (that scan looked at none of its ports: it refused before),
    # scans the rest of its range, and leaves that scan's port shown beside its own
    assert (resumed.resumed_shards, resumed.overtaken_hosts) == (1, 0)
    assert not resumed.interrupted and not resumed.errors
    assert set(ports) | {other} <= _current_ports(store)
    assert store.query("SELECT scan_id FROM latest_host_scans") == [("resumed-apart",)]
    assert not checkpoint.exists()  # the scan is complete


def test_a_scan_whose_stored_coverage_was_cut_short_refuses_the_resume(
        store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from producers.shards import CheckpointError

    with contextlib.ExitStack() as stack:
        listeners: dict[int, Any] = {}
        # Given a run killed after its first shard, which stored its port as open
        lo, ports, plan, checkpoint, saved = _killed_scan(stack, store, tmp_path,
                                                          "resumed-cut", listeners)
        first = next(s for s in plan.plans[0].shards() if s.index == 0)
        mine = next(p for p in ports if first.ports[0].first <= p <= first.ports[0].last)
        assert mine in _current_ports(store)
        # then that port closed, and a completed scan of 1,000 other ports and that one
        # (1,001 ranges in one shard: the store keeps the first 1,000 of its coverage,
        # so the stored record reads as "other ports only") found it closed
        listeners[mine].close()
        others = tuple(PortRange(p, p) for p in range(lo - 2000, lo, 2))
        asyncio.run(_runner(store).run(ScanPlan.build(
            "cut", 6, [TARGET], (*others, PortRange(mine, mine)), (),
            ports_per_shard=2000)))
        assert store.query("SELECT length(cover_first), ports_scanned FROM host_scans "
                           "FINAL WHERE scan_id = 'cut'") == [(1000, 1001)]
        assert mine not in _current_ports(store)
        # When the killed scan resumes
        with pytest.raises(CheckpointError) as refused:
            asyncio.run(_runner(store).run(plan, start=plan.start(saved),
                                           checkpoint_path=str(checkpoint)))
    # Then it is refused: what that scan covered beyond its first 1,000 ranges is
    # unknown (let through, the resume showed the closed port open again, "opened")
    assert "another scan looked at 1 of its hosts since" in str(refused.value)
    assert mine not in _current_ports(store)


def test_a_cut_coverage_of_another_protocol_lets_the_resume_through(
        store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from schemas.records import HostScan, Proto, utcnow

    with contextlib.ExitStack() as stack:
        # Given a TCP-only run killed after its first shard, then a completed scan of
        # 1,001 UDP ports (its stored UDP coverage cut to 1,000 ranges: `--udp top2000`
        # is one) and no TCP port of the killed scan's
        lo, ports, plan, checkpoint, saved = _killed_scan(stack, store, tmp_path,
                                                          "resumed-tcp")
        udp = tuple(PortRange(p, p) for p in range(40000, 42002, 2))
        now = utcnow()  # (stored by hand: the connect engine scans no UDP)
        store.insert_host_scans([HostScan("udp-cut", TARGET, now, now, len(udp), 0,
                                          proto=Proto.UDP, ports=udp)])
        assert store.query("SELECT length(cover_first), ports_scanned FROM host_scans "
                           "FINAL WHERE scan_id = 'udp-cut' AND proto = 'udp'") == [
            (1000, 1001)]
        # When the killed scan resumes
        resumed = asyncio.run(_runner(store).run(plan, start=plan.start(saved),
                                                 checkpoint_path=str(checkpoint)))
    # Then it goes through: a cut UDP record stands for unknown UDP ports only (it
    # refused a TCP-only resume: a review)
    assert (resumed.resumed_shards, resumed.overtaken_hosts) == (1, 0)
    assert not resumed.interrupted and not resumed.errors
    assert set(ports) <= _current_ports(store)


def _binds(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_scan_stopped_during_discovery_that_saw_a_port_refuses_the_resume(
        store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from producers.shards import CheckpointError
    from schemas.records import HostScan, utcnow

    with contextlib.ExitStack() as stack:
        # Given a run killed after its first shard, then another scan of the host stopped
        # during its discovery (no shard completed: stored by hand, as such a scan leaves
        # it), which saw a port: the Summary shows it now
        lo, ports, plan, checkpoint, saved = _killed_scan(stack, store, tmp_path,
                                                          "seen-since")
        now = utcnow()
        store.insert_findings([Finding(
            port=OpenPort(scan_id="stopped", target=TARGET, port=ports[1], observed_at=now),
            service=ServiceInfo(service="http"), risk_color=RiskColor.GREEN)])
        store.insert_host_scans([HostScan("stopped", TARGET, now, now, 0, 0,
                                          status="running")])
        # When the killed scan resumes
        with pytest.raises(CheckpointError) as refused:
            asyncio.run(_runner(store).run(plan, start=plan.start(saved),
                                           checkpoint_path=str(checkpoint)))
    # Then it is refused (resumed, its older "nothing there" hid that port from the List
    # and the Summary, with no event: a review)
    assert "another scan looked at 1 of its hosts since" in str(refused.value)
    assert ports[1] in _current_ports(store)


def test_an_interrupted_scan_with_no_shard_passed_says_its_checkpoint_resumes_nothing(
        tmp_path: Path) -> None:
    import types

    import pytest

    from portwatch.console import EXIT_INTERRUPTED, PortwatchError
    from portwatch.scan_cli import raise_for_outcome

    # Given a scan of one shard (a host or a few) stopped before its shard completed: no
    # checkpoint file was written
    stats = types.SimpleNamespace(interrupted=True, stored=3, failed_shards=0, errors=[])
    missing = tmp_path / "cp.json"
    with pytest.raises(PortwatchError) as stopped:
        raise_for_outcome(stats, str(missing))
    # Then the exit says the rerun starts over (it did, without a word: a review)
    assert stopped.value.code == EXIT_INTERRUPTED
    assert str(stopped.value) == (
        f"scan interrupted: 3 findings kept; no shard had completed, so {missing} holds "
        "nothing to resume: the same command scans from the start")
    # And with a checkpoint written, or none asked for, the plain message
    missing.write_text("{}")
    for checkpoint in (str(missing), None):
        with pytest.raises(PortwatchError) as plain:
            raise_for_outcome(stats, checkpoint)
        assert str(plain.value) == "scan interrupted: 3 findings kept"


def test_a_checkpoint_reused_after_its_scan_completed_leaves_the_hosts_as_they_were(
        store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a scan stopped after its first shard, a copy of its checkpoint, and the
    # resume that completed it
    with contextlib.ExitStack() as stack:
        listeners: dict[int, Any] = {}
        lo, ports = _listener_per_shard(stack, listeners)
        plan = _plan((PortRange(lo, lo + 2999),), seed=11, scan_id="reused")
        checkpoint = tmp_path / "scan.checkpoint"
        saved = _first_shard_only(store, plan, checkpoint, StopsAfterFirstShard)
        copy = checkpoint.read_bytes()
        done = asyncio.run(_runner(store).run(plan, start=plan.start(saved),
                                              checkpoint_path=str(checkpoint)))
        assert not done.interrupted and not checkpoint.exists()
        # When a listener closes, and the old copy of the checkpoint is run again
        listeners[ports[2]].close()
        checkpoint.write_bytes(copy)
        again = asyncio.run(_runner(store).run(plan, start=plan.start(saved),
                                               checkpoint_path=str(checkpoint)))
    # Then the host the scan had completed is left out and said so, and nothing is
    # compared again (the scan was compared with itself: "reopened" or "closed" under
    # one scan id, its own previous scan; a review)
    assert again.change_events == []
    assert store.query("SELECT count() FROM changes FINAL WHERE scan_id = previous_scan_id") \
        == [(0,)]
    assert (again.finished_hosts, again.overtaken_hosts) == (1, 0)
    assert set(ports) <= _open_ports(store)
