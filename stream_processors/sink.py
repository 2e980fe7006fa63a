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
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from schemas.records import Finding, HostScan, Record
from stream_processors.history import FUTURE_SKEW
from stream_processors.rejects import DataRejected, insert_isolating, is_data_error, reason_of

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
    rejected: int = 0  # records the store refused for their data (dead-lettered)


def _finding_key(f: Finding) -> tuple[str, str, str, int, str]:
    p = f.port
    return (p.scan_id, p.target.ip, p.proto.value, p.port, p.observed_at.isoformat())


class StoredBatches(Protocol):
    """What the sink tells change history of each batch (change_hold.ChangeStage): one
    object, so claiming a batch's hosts and handing them over are never wired apart."""

    def storing(self, findings: Sequence[Finding], scans: Sequence[HostScan]
                ) -> AbstractContextManager[None]:
        """Held from before the batch's insert until ``on_stored`` has returned."""

    async def on_stored(self, findings: Sequence[Finding], scans: Sequence[HostScan]
                        ) -> None:
        """The rows of the batch that were stored (the rejected ones left out)."""


@dataclass
class StoreSink:
    """Writes batches to a store; ``write`` returns only once the batch is stored."""

    store: FindingStore
    retry_initial: float = 0.5  # seconds before the first retry of a failed insert
    retry_max: float = 10.0  # backoff cap: a ClickHouse restart is waited out
    stats: SinkStats = field(default_factory=SinkStats)
    # Change history (change_hold.ChangeStage): told of each batch around its store.
    changes: StoredBatches | None = None
    _stop: asyncio.Event | None = None
    # Records the store refused for their data, with the reason; the caller takes them
    # (``take_rejected``) and dead-letters them. A bad record never blocks its batch.
    _rejected: list[tuple[Record, str]] = field(default_factory=list)

    def take_rejected(self) -> list[tuple[Record, str]]:
        taken, self._rejected = self._rejected, []
        return taken

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
        rows, scans = self._not_from_the_future(rows, scans)
        changes = self.changes
        with changes.storing(rows, scans) if changes is not None else nullcontext():
            # A data error is bisected down to its records (rejected, for dead letters);
            # any other error retries the same rows with backoff (issue 11, defect 1).
            bad_findings = await insert_isolating(rows, lambda part: self._retrying(
                "findings", lambda: self.store.insert_findings(part)))
            bad_scans = await insert_isolating(scans, lambda part: self._retrying(
                "host scans", lambda: self.store.insert_host_scans(part)))
            self._rejected += [*bad_findings, *bad_scans]
            self.stats.rejected += len(bad_findings) + len(bad_scans)
            self.stats.findings += len(rows) - len(bad_findings)
            self.stats.host_scans += len(scans) - len(bad_scans)
            if changes is not None:
                stored_ids = {id(r) for r, _why in self._rejected}
                await changes.on_stored([f for f in rows if id(f) not in stored_ids],
                                     [h for h in scans if id(h) not in stored_ids])
        self.stats.duplicates_dropped += dropped
        self.stats.batches += 1

    def _not_from_the_future(self, rows: list[Finding], scans: list[HostScan]
                             ) -> tuple[list[Finding], list[HostScan]]:
        """Records dated more than ``FUTURE_SKEW`` ahead of this sink's clock are
        dead-lettered, never stored: one host scan from a worker whose clock ran an hour
        ahead (or forged on the topic) stayed the host's latest scan until the clock
        caught up, and the List and change detection ignored every real scan meanwhile
        (a review, 2026-12-06; 2099 froze the host for good)."""
        limit = datetime.now(UTC) + FUTURE_SKEW
        late_rows = [f for f in rows if f.port.observed_at > limit]
        late_scans = [h for h in scans if max(h.started_at, h.finished_at) > limit]
        if not late_rows and not late_scans:
            return rows, scans
        why = f"dated more than {FUTURE_SKEW} ahead of this sink's clock"
        self._rejected += [(r, why) for r in (*late_rows, *late_scans)]
        self.stats.rejected += len(late_rows) + len(late_scans)
        log.warning("sink: %d record(s) %s dead-lettered", len(late_rows) + len(late_scans),
                    why)
        late = {id(r) for r in (*late_rows, *late_scans)}
        return ([f for f in rows if id(f) not in late],
                [h for h in scans if id(h) not in late])

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
                if is_data_error(exc):
                    raise DataRejected(reason_of(exc)) from exc
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
