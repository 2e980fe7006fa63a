"""The change recorder pauses Python's cyclic garbage collector while it snapshots findings
and compares a batch (``collector.collector_paused``: its allocations are acyclic and live
until the batch ends, so the collections they trigger only walk them again), and always
turns it back on. Real chdb store; re-probes go to loopback ports where nothing listens."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.records import (
    ChangeKind,
    Finding,
    HostScan,
    OpenPort,
    PortRange,
    RiskColor,
    ServiceInfo,
    Target,
)
from stream_processors.history import ChangeRecorder

WHEN = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
HOSTS = [Target(ip=f"127.3.{i // 250}.{i % 250 + 1}", target=f"127.3.{i // 250}.{i % 250 + 1}")
         for i in range(300)]


def _day(scan_id: str) -> tuple[list[Finding], list[HostScan]]:
    found = [Finding(port=OpenPort(scan_id=scan_id, target=t, port=port, observed_at=WHEN),
                     service=ServiceInfo(service="http", product="nginx", version="1.24.0",
                                         method="banner:http"),
                     risk_color=RiskColor.GREEN)
             for t in HOSTS for port in (80, 8080)]
    scans = [HostScan(scan_id, t, WHEN - timedelta(minutes=1), WHEN, 2, 2,
                      shard_id=f"{scan_id}:0", ports=(PortRange(80, 80), PortRange(8080, 8080)))
             for t in HOSTS]
    return found, scans


_RECORDER_BODIES = {ChangeRecorder._add_findings.__code__, ChangeRecorder._finish.__code__}


@contextmanager
def _collections() -> Iterator[list[tuple[int, bool]]]:
    """Every collection that starts (its generation; whether the recorder's own code was
    running: ``_add_findings`` / ``_finish`` run only inside the pause), with thresholds so
    low that any stretch of allocation with the collector on triggers several."""
    seen: list[tuple[int, bool]] = []

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase != "start":
            return
        frame = sys._getframe(1)
        inside = False
        while frame is not None and not inside:
            inside = frame.f_code in _RECORDER_BODIES
            frame = frame.f_back
        seen.append((info["generation"], inside))

    thresholds = gc.get_threshold()
    gc.set_threshold(10, 1, 1)
    gc.callbacks.append(note)
    try:
        yield seen
    finally:
        gc.callbacks.remove(note)
        gc.set_threshold(*thresholds)


def test_no_collection_runs_inside_a_batch_and_the_collector_is_back_on_after(store) -> None:  # type: ignore[no-untyped-def]
    found, scans = _day("s1")
    store.insert_findings(found)
    store.insert_host_scans(scans)
    recorder = ChangeRecorder(store)
    with _collections() as seen:
        # When the recorder snapshots 600 findings and compares 300 hosts
        recorder.add_findings(found)
        events = asyncio.run(recorder.finish(scans))
        assert gc.isenabled()
        # and then the test allocates
        for _ in range(3):
            junk = [[i] for i in range(1_000)]
            del junk
    # Then no collection ran inside the recorder's work (the thresholds would have run
    # dozens), collections ran outside it (the collector is on again), and the events
    # are the batch's
    assert [generation for generation, inside in seen if inside] == []
    assert len([generation for generation, inside in seen if not inside]) >= 3
    assert sorted((e.target.ip, e.port, e.kind) for e in events) == sorted(
        (t.ip, port, ChangeKind.OPENED) for t in HOSTS for port in (80, 8080))


def test_a_batch_that_fails_turns_the_collector_back_on(store) -> None:  # type: ignore[no-untyped-def]
    found, scans = _day("s1")
    recorder = ChangeRecorder(store)
    recorder.add_findings(found)
    store.command("DROP TABLE host_state")  # a real fault: the state read fails
    from stream_processors.store import StoreReadError

    # the engine's own error, as the store's one line (the CLI's exit 1, no traceback)
    with pytest.raises(StoreReadError, match="host_state"):
        asyncio.run(recorder.finish(scans))
    assert gc.isenabled()


def test_a_process_that_turned_the_collector_off_keeps_it_off(store) -> None:  # type: ignore[no-untyped-def]
    found, scans = _day("s1")
    store.insert_findings(found)
    store.insert_host_scans(scans)
    recorder = ChangeRecorder(store)
    gc.disable()
    try:
        recorder.add_findings(found)
        events = asyncio.run(recorder.finish(scans))
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert len(events) == 2 * len(HOSTS)
