"""Ctrl-C (a real SIGINT, routed by ``install_interrupt``) while identification runs,
on a real embedded scan of loopback listeners into a real chdb store.

What is recorded: a host whose shard's discovery had completed before the Ctrl-C keeps
"completed" (the checkpoint is past that shard, so a resumed run never records it
again). One Ctrl-C lets identification finish (a scan whose every shard was discovered
then completed, and says so); a second one stores the ports left as
unidentified, "interrupted during identification", whose attributes the change rule
does not compare (``changes.INCOMPLETE``): no invented service change, no closure.
Only shards whose discovery the Ctrl-C cut short or never reached read "interrupted"
(tests/integration/test_runner_resume.py, tests/integration/test_change_history.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from probers.discovery.connect import ConnectEngine
from producers.shards import ScanPlan, new_scan_id
from schemas.records import ChangeKind, Finding, OpenPort, PortRange, Target
from stream_processors.changes import INCOMPLETE
from stream_processors.stages import make_context
from stream_processors.transports.embedded import EmbeddedRunner, ScanStats, install_interrupt
from tests import loopback

HOST = "127.0.0.141"  # no other test uses it
TARGET = Target(ip=HOST, target=HOST)
SSH = b"SSH-2.0-OpenSSH_9.2p1\r\n"


def slow_banner(delay: float, data: bytes) -> loopback.Handler:
    """A service that speaks first, but only after ``delay`` seconds."""
    def handle(conn: socket.socket) -> None:
        time.sleep(delay)
        conn.sendall(data)
        conn.settimeout(1)
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass
    return handle


class CtrlCDuringIdentification(EmbeddedRunner):
    """Sends this process ``presses`` SIGINTs, 0.2 s apart, once identification of the
    first open port has begun (discovery of the only shard has ended by then)."""

    presses = 0

    async def _identify(self, port: OpenPort, stats: ScanStats) -> Finding | None:
        if self.presses:
            loop = asyncio.get_running_loop()
            for n in range(self.presses):
                loop.call_later(0.2 * (n + 1), os.kill, os.getpid(), signal.SIGINT)
            self.presses = 0
        return await super()._identify(port, stats)


def _scan(store, ports: list[int], presses: int = 0,  # type: ignore[no-untyped-def]
          checkpoint: str | None = None) -> ScanStats:
    ctx = make_context(banner_wait=1.5, identify_budget=4, use_nmap_probes=False,
                       tls_enumeration=False)
    runner = CtrlCDuringIdentification(store, lambda _shard: ConnectEngine(), ctx,
                                       identify_workers=4, batch_seconds=0.2)
    runner.presses = presses
    plan = ScanPlan.build(new_scan_id(), 0, [TARGET], tuple(PortRange(p, p) for p in ports), ())
    return run_routing_signals(runner, plan, checkpoint)


def run_routing_signals(runner: EmbeddedRunner, plan: ScanPlan,
                        checkpoint: str | None = None) -> ScanStats:
    """``runner.run(plan)`` with SIGINT/SIGTERM routed to it, as ``portwatch scan`` does."""
    async def main() -> ScanStats:
        undo = install_interrupt(runner)
        try:
            return await runner.run(plan, checkpoint_path=checkpoint)
        finally:
            undo()

    return asyncio.run(main())


def _status(store, scan_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    rows = store.query("SELECT status FROM host_scans FINAL WHERE scan_id = {s:String}",
                       {"s": scan_id})
    return [r[0] for r in rows]


def _stored(store, scan_id: str) -> dict[int, tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    rows = store.query("SELECT port, service, method, extra_info FROM port_observations "
                       "WHERE scan_id = {s:String}", {"s": scan_id})
    return {port: (service, method, extra) for port, service, method, extra in rows}


@contextlib.contextmanager
def _services() -> Iterator[tuple[int, int]]:
    """An SSH server that greets after 0.6 s, and a port that accepts and never speaks."""
    with loopback.listen(slow_banner(0.6, SSH), addresses=(HOST,)) as ssh, \
            loopback.listen(loopback.silent(10), addresses=(HOST,)) as mute:
        yield ssh.port, mute.port


def test_one_ctrl_c_during_identification_finishes_it_and_records_completed(store) -> None:  # type: ignore[no-untyped-def]
    with _services() as (ssh, mute):
        # When a scan gets one Ctrl-C while its open ports are being identified
        stats = _scan(store, sorted((ssh, mute)), presses=1)
    # Then identification finished what was found, and the scan, which the Ctrl-C cut
    # nothing of, says it completed (it said interrupted, exit 130, beside hosts stored
    # "completed"; a Ctrl-C a moment later, while the scan was recorded, gave 0: a
    # review); the signal is kept, so a watch stops after this scan
    assert (stats.interrupted, stats.stop_signal) == (False, signal.SIGINT)
    stored = _stored(store, stats.scan_id)
    assert stored[ssh][0] == "ssh"
    assert not stored[mute][2].startswith(INCOMPLETE)
    # and the host, whose discovery had completed, is recorded (and compared) complete
    assert _status(store, stats.scan_id) == ["completed"]
    assert {(e.kind, e.port) for e in stats.change_events} == {
        (ChangeKind.OPENED, ssh), (ChangeKind.OPENED, mute)}


def test_two_ctrl_c_during_identification_keep_ports_incomplete_and_change_nothing(  # type: ignore[no-untyped-def]
        store, tmp_path) -> None:
    checkpoint = tmp_path / "cp.json"
    with _services() as (ssh, mute):
        # Given a completed scan that identified the SSH server
        first = _scan(store, sorted((ssh, mute)))
        assert not first.interrupted
        assert _stored(store, first.scan_id)[ssh][0] == "ssh"
        # When a rescan with a checkpoint gets two Ctrl-C before the SSH server has greeted
        second = _scan(store, sorted((ssh, mute)), presses=2, checkpoint=str(checkpoint))
    # Then both ports are kept, unidentified, saying identification was cut short
    assert second.interrupted
    stored = _stored(store, second.scan_id)
    assert set(stored) == {ssh, mute}
    for _service, method, extra in stored.values():
        assert method == "unidentified" and extra.startswith(INCOMPLETE), extra
    # and the host is recorded completed (its discovery was), but the cut ports'
    # attributes are not compared: no invented service change, nothing closed
    assert _status(store, second.scan_id) == ["completed"]
    assert second.change_events == []
    # And the exit says so: scanned whole and compared, two ports left unnamed (it read
    # "scan interrupted" beside a host stored completed: a review)
    from portwatch.console import EXIT_INTERRUPTED, PortwatchError
    from portwatch.scan_cli import raise_for_outcome

    assert (second.scanned_whole, second.cut_short) == (True, 2)
    with pytest.raises(PortwatchError) as stopped:
        raise_for_outcome(second, None)
    assert stopped.value.code == EXIT_INTERRUPTED
    assert str(stopped.value) == (
        "scan interrupted during identification: every port was scanned and compared; 2 "
        "open port(s) left unnamed (not judged until a scan names them: the same command "
        f"scans again); {second.stored} findings kept")
    # and it does: every shard was discovered, so no checkpoint is left to resume (one
    # kept made the rerun scan nothing and say "done": a review)
    assert not checkpoint.exists()


class TwoInterruptsOnceIdentifying(EmbeddedRunner):
    """Interrupts itself twice, 0.3 s apart, once the first port is being identified:
    by then discovery is waiting for room in the identify queue."""

    armed = True

    async def _identify(self, port: OpenPort, stats: ScanStats) -> Finding | None:
        if self.armed:
            self.armed = False
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, self.interrupt)
            loop.call_later(0.6, self.interrupt)
        return await super()._identify(port, stats)


def test_a_second_interrupt_while_discovery_waits_for_the_queue_stores_every_port(
        store) -> None:  # type: ignore[no-untyped-def]
    # Given 120 ports that accept and never speak, found far faster than two workers
    # identify them through a queue of 8
    with contextlib.ExitStack() as stack:
        ports = sorted(stack.enter_context(loopback.listen(loopback.silent(10),
                                                           addresses=(HOST,))).port
                       for _ in range(120))
        ctx = make_context(banner_wait=1.5, identify_budget=4, use_nmap_probes=False,
                           tls_enumeration=False)
        runner = TwoInterruptsOnceIdentifying(store, lambda _shard: ConnectEngine(), ctx,
                                              identify_workers=2, queue_size=8,
                                              batch_seconds=0.2)
        plan = ScanPlan.build(new_scan_id(), 0, [TARGET],
                              tuple(PortRange(p, p) for p in ports), ())
        # When the scan is interrupted twice while discovery waits for room (before: it
        # waited forever, deaf to any further signal, and a kill -9 lost every port);
        # the bound is a hang guard, not a timing
        stats = asyncio.run(asyncio.wait_for(runner.run(plan), 120))
    # Then it ends, and every port found is stored, those not identified saying so
    assert stats.interrupted
    stored = _stored(store, stats.scan_id)
    assert sorted(stored) == ports
    cut = [extra for _service, method, extra in stored.values() if method == "unidentified"]
    assert len(cut) >= len(ports) - 4 and all(e.startswith(INCOMPLETE) for e in cut)


class SignalWhileRecorded(EmbeddedRunner):
    """Sends this process a SIGTERM when the scan's hosts are being recorded (its last
    shard done: the moment a watcher's stop was lost), and lets the loop take it."""

    async def _record_hosts(self, *args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.1)
        await super()._record_hosts(*args, **kwargs)


def test_a_signal_while_the_scan_is_recorded_is_kept_and_the_scan_completes(store) -> None:  # type: ignore[no-untyped-def]
    with loopback.listen(loopback.banner(SSH), addresses=(HOST,)) as ssh:
        ctx = make_context(banner_wait=1.5, identify_budget=4, use_nmap_probes=False,
                           tls_enumeration=False)
        runner = SignalWhileRecorded(store, lambda _shard: ConnectEngine(), ctx,
                                     identify_workers=4, batch_seconds=0.2)
        plan = ScanPlan.build(new_scan_id(), 0, [TARGET], (PortRange(ssh.port, ssh.port),), ())
        # When a SIGTERM (a service manager's stop) arrives after the last shard, while
        # the scan is recorded
        stats = run_routing_signals(runner, plan)
    # Then the scan completed (nothing was cut short) and says the signal came, so the
    # watcher running it stops (before: the runner took it and nobody read it)
    assert (stats.interrupted, stats.stop_signal) == (False, signal.SIGTERM)
    assert store.query("SELECT status FROM host_scans FINAL WHERE scan_id = {s:String}",
                       {"s": plan.scan_id}) == [("completed",)]
