"""The store sink: batched, idempotent, never-lossy writes of findings and host scans.

Owns: turning a batch of decoded records into store inserts (findings through
``Store.insert_findings``, host scans per shard through ``Store.insert_host_scans``),
dropping exact duplicates inside a batch, and retrying a failed insert with
bounded backoff until it succeeds or the sink is told to stop. The caller (the
Faust sink agent) acknowledges a batch's Kafka messages only after ``write``
returned, so a crash between insert and commit replays the batch; replays are
harmless because the store's tables are ReplacingMergeTrees keyed by
(scan, ip, proto, port) and its views keep only min/max/argMax states.

Must not touch: Kafka, Faust, the stages. The store is opened by the caller; in
the embedded case (chdb) the sink's process is its only owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from schemas.records import Finding, HostScan

log = logging.getLogger(__name__)


class FindingStore(Protocol):
    def insert_findings(self, findings: Sequence[Finding]) -> int: ...

    def insert_host_scans(self, scans: Sequence[HostScan]) -> int: ...


class SinkStopped(RuntimeError):
    """The sink was stopped while a batch could not be written: nothing was acked."""


@dataclass
class SinkStats:
    findings: int = 0
    host_scans: int = 0
    batches: int = 0
    duplicates_dropped: int = 0
    insert_errors: int = 0
    insert_seconds: float = 0.0
    last_error: str = ""


def _finding_key(f: Finding) -> tuple[str, str, str, int, str]:
    p = f.port
    return (p.scan_id, p.target.ip, p.proto.value, p.port, p.observed_at.isoformat())


@dataclass
class StoreSink:
    """Writes batches to a store; ``write`` returns only once the batch is stored."""

    store: FindingStore
    retry_initial: float = 0.5  # seconds before the first retry of a failed insert
    retry_max: float = 10.0  # backoff cap: a ClickHouse restart is waited out
    stats: SinkStats = field(default_factory=SinkStats)
    # Called with each batch once it is stored (change history: change_hold.ChangeStage).
    on_stored: Callable[[Sequence[Finding], Sequence[HostScan]], Awaitable[None]] | None = None
    _stop: asyncio.Event | None = None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def write(self, findings: Sequence[Finding], host_scans: Sequence[HostScan]) -> None:
        """Store one batch (retrying failed inserts); raises SinkStopped when stopped
        before it could, so the caller does not acknowledge what was not stored."""
        unique: dict[tuple[str, str, str, int, str], Finding] = {}
        for f in findings:
            unique.setdefault(_finding_key(f), f)
        dropped = len(findings) - len(unique)
        scans = list({(h.scan_id, h.shard_id, h.target.ip): h for h in host_scans}.values())
        rows = list(unique.values())
        if rows:
            await self._retrying("findings", lambda: self.store.insert_findings(rows))
        if scans:
            await self._retrying("host scans", lambda: self.store.insert_host_scans(scans))
        if self.on_stored is not None:
            await self.on_stored(rows, scans)
        self.stats.findings += len(rows)
        self.stats.host_scans += len(scans)
        self.stats.duplicates_dropped += dropped
        self.stats.batches += 1

    async def _retrying(self, what: str, insert: object) -> None:
        assert callable(insert)
        if self._stop is None:
            self._stop = asyncio.Event()
        delay = self.retry_initial
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(insert)
                self.stats.insert_seconds += time.perf_counter() - started
                return
            except Exception as exc:  # noqa: BLE001 - any driver error: keep the batch, retry
                self.stats.insert_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.warning("insert of %s failed (%s); retrying in %.1fs", what,
                            self.stats.last_error, delay)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, self.retry_max)
                continue
            raise SinkStopped(f"stopped while {what} could not be stored: "
                              f"{self.stats.last_error}")


__all__ = ["FindingStore", "SinkStats", "SinkStopped", "StoreSink"]
