"""Change history in the distributed shape: hold a host scan until its findings are in.

Owns: ``HostHold`` (which host scans are ready for change detection) and ``ChangeStage``
(what the sink calls after each stored batch, and on a timer: release the ready hosts,
compute their changes with the same ``ChangeRecorder`` / ``detect_changes`` as the
embedded runner, return the events for the ``changes`` topic).

Why a hold: a shard's HostScan record is published when discovery of the shard ends, but
its findings come through identification, TLS and risk, which are slower; the sink sees
the host scan first. A host is released when the findings received for it reach the open
ports its shard records announced (``HostScan.open_ports``) and no record for it arrived
for ``settle`` seconds (another shard of the same host may follow), or when it has been
held ``max_hold`` seconds (a finding lost to the dead-letter topic must not hold a host
forever; what is missing then reads as not seen, and closures still need a failed
re-probe, so a lost finding cannot close a port).

Must not touch: Kafka (the caller gives the recorder its ``publish``, awaited before
the hosts' states move past their scans), the rule itself.

A crash: the hold is in memory, but the store is the journal. A sink that dies after
storing a batch and before releasing its hosts leaves completed host scans newer than their
hosts' states; its successor's first flush (and every ``max_hold`` seconds after) finds
them, rebuilds their snapshots from the stored rows and computes their events
(``ChangeRecorder.recover``), which are published like any. The sweep skips the hosts the
sink itself holds, or is storing (``HostHold.storing``: a batch's rows are in the store
an instant before its hosts are in the hold): a backlog of old scans is stored and not yet
compared while its findings are still arriving, and is the hold's to release. A shard of
a host arriving after the host was released is compared on its own if it finished later
than what was compared (``history._is_replay``), else read back as a replay (no new events).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from schemas.records import ChangeEvent, Finding, HostScan
from stream_processors.history import (
    RECOVER_AFTER,
    RECOVER_BATCH,
    ChangeRecorder,
    ReprobeOptions,
)
from stream_processors.stages import note_dropped
from stream_processors.store import Store

log = logging.getLogger(__name__)

HoldKey = tuple[str, str, str]  # (scan_id, target, ip)
RETRY_SECONDS = 5.0  # a flush the store or the broker failed is tried again after this
ORPHAN_HOLDS = 6  # findings whose host scan never came are let go after this many max_hold


@dataclass
class _Held:
    scans: dict[str, HostScan] = field(default_factory=dict)  # by shard_id
    found: set[tuple[str, int]] = field(default_factory=set)  # (proto, port) stored
    first_seen: float = 0.0
    last_seen: float = 0.0

    @property
    def expected(self) -> int:
        return sum(h.open_ports for h in self.scans.values())

    @property
    def is_tarpit(self) -> bool:
        return any(h.is_tarpit for h in self.scans.values())


@dataclass
class HostHold:
    """Bookkeeping of held host scans; times are ``time.monotonic()`` seconds."""

    settle: float = 5.0
    max_hold: float = 600.0
    max_hosts: int = 200_000  # bound memory: past this, the oldest are released at once
    _held: dict[HoldKey, _Held] = field(default_factory=dict)
    renoted: list[HostScan] = field(default_factory=list)  # host scans to store again
    # Hosts whose findings came and whose host scan never did, let go by ``ready``: the
    # recorder forgets their ports too (``ChangeStage.flush``)
    let_go: list[HoldKey] = field(default_factory=list)
    _released: dict[HoldKey, _Held] = field(default_factory=dict)  # by the last ``ready``
    _storing: Counter[HoldKey] = field(default_factory=Counter)  # claimed by ``storing``

    def add(self, findings: Sequence[Finding], scans: Sequence[HostScan], now: float) -> None:
        for h in scans:
            if h.status == "running":
                continue  # a shard's start (for the Summary): its end record follows
            held = self._held.setdefault((h.scan_id, h.target.target, h.target.ip),
                                         _Held(first_seen=now))
            held.scans[h.shard_id] = h
            held.last_seen = now
        for f in findings:
            key = (f.port.scan_id, f.port.target.target, f.port.target.ip)
            held = self._held.setdefault(key, _Held(first_seen=now))
            held.found.add((f.port.proto.value, f.port.port))
            held.last_seen = now

    def ready(self, now: float) -> list[HostScan]:
        """Pop the host scans ready for change detection (every shard record of each).

        A tarpit host's candidate ports that named no service are dropped by the stage
        agents, so its findings never reach what its shards announced: it is ready once
        settled, and the count dropped is written into its scan note (``renoted``: the
        rows to store again), as the embedded transport does."""
        out: list[HostScan] = []
        self._released = {}
        overflow = len(self._held) - self.max_hosts
        for key in list(self._held):
            held = self._held[key]
            if not held.scans:
                # (longer than a host scan's hold: a host-scans partition that lags its
                # findings, a rebalance, still finds them; only orphans are let go)
                if now - held.first_seen >= self.max_hold * ORPHAN_HOLDS or overflow > 0:
                    del self._held[key]  # findings whose host scan never came: let go
                    self.let_go.append(key)
                    overflow -= 1
                continue
            has_all = len(held.found) >= held.expected or held.is_tarpit
            is_complete = has_all and now - held.last_seen >= self.settle
            if is_complete or now - held.first_seen >= self.max_hold or overflow > 0:
                dropped = held.expected - len(held.found)
                released = list(held.scans.values())
                if held.is_tarpit and dropped > 0:
                    ip = key[2]
                    noted = note_dropped(released, Counter({ip: dropped}))
                    # a later version of the same rows: the note replaces the first one,
                    # and it is what is compared (the host's state then names the rows
                    # the store holds: recovery never takes it for uncompared)
                    released = [replace(h, finished_at=h.finished_at
                                        + timedelta(milliseconds=1)) for h in noted]
                    self.renoted += released
                if not is_complete:
                    log.warning("change detection of %s in scan %s: released after %.0fs "
                                "with %d of %d findings", key[2], key[0],
                                now - held.first_seen, len(held.found), held.expected)
                out.extend(released)
                self._released[key] = self._held.pop(key)
                overflow -= 1
        return out

    def restore(self) -> None:
        """Hold again what the last ``ready`` released (their changes could not be
        computed or published): released again by the next ``ready``."""
        for key, held in self._released.items():
            self._held.setdefault(key, held)
        self._released = {}

    @contextmanager
    def storing(self, findings: Sequence[Finding], scans: Sequence[HostScan]
                ) -> Iterator[None]:
        """Claim the hosts of a batch while the sink stores it and hands it to ``add``:
        their rows are in the store before they are in the hold, and change recovery
        must not take them for a dead sink's in between."""
        keys = [*((h.scan_id, h.target.target, h.target.ip) for h in scans),
                *((f.port.scan_id, f.port.target.target, f.port.target.ip) for f in findings)]
        self._storing.update(keys)
        try:
            yield
        finally:
            self._storing.subtract(keys)
            self._storing += Counter()  # drop the zero counts

    def __contains__(self, key: object) -> bool:
        """Held with its host scan, or being stored (``storing``): change recovery leaves
        it to the hold. Findings held without their host scan are not: a successor sink
        that replays a dead one's uncommitted findings, whose host scan the dead one had
        committed, held them as an orphan for an hour, and recovery left the host to a
        hold that could never release it (a review, 2026-12-06). Recovered, the host's
        state names the scan: should its record still come, it reads its events back."""
        held = self._held.get(key)  # type: ignore[call-overload]
        return (held is not None and bool(held.scans)) or key in self._storing

    def __len__(self) -> int:
        return len(self._held)


class ChangeStage:
    """The sink's change step: ``on_stored`` after every stored batch, ``flush`` on a
    timer; the events it returns go to the ``changes`` topic."""

    def __init__(self, store: Store, *, settle: float = 5.0, max_hold: float = 600.0,
                 reprobe: ReprobeOptions | None = None, compact_every: float = 300.0) -> None:
        self.store = store
        self.recorder = ChangeRecorder(store, reprobe or ReprobeOptions())
        self.hold = HostHold(settle=settle, max_hold=max_hold)
        self._next_recovery = float("-inf")  # monotonic time of the next sweep: at start
        # The pages' indexes are merged when the hold empties (a scan's hosts are all
        # in), at most every ``compact_every`` seconds: a trickle of hosts would
        # otherwise rewrite them every few seconds (Store.compact_page_indexes).
        self.compact_every = compact_every
        self._next_compaction = float("-inf")
        self._released_since_compaction = False
        self._retry_at = float("-inf")  # after a failed flush: the next try
        # Until then, released hosts' earlier scans are looked for (_earlier_scans_of):
        # a predecessor's uncompared scans are younger than RECOVER_AFTER only in this
        # sink's first RECOVER_AFTER; after, the sweep has them, and the look costs a
        # query over the estate's state per flush (a review: 0.1-0.15 s each)
        self._look_back_until = time.monotonic() + RECOVER_AFTER.total_seconds()

    def _failed(self, now: float, what: str, exc: Exception) -> None:
        self._retry_at = now + RETRY_SECONDS
        log.warning("%s failed, tried again in %.0f s: %s: %s", what, RETRY_SECONDS,
                    type(exc).__name__, str(exc).strip().splitlines()[0][:300]
                    if str(exc).strip() else "")

    def storing(self, findings: Sequence[Finding], scans: Sequence[HostScan]
                ) -> AbstractContextManager[None]:
        """What the sink holds around storing a batch and calling ``on_stored``."""
        return self.hold.storing(findings, scans)

    async def on_stored(self, findings: Sequence[Finding], scans: Sequence[HostScan]) -> None:
        self.recorder.add_findings(findings)
        self.hold.add(findings, scans, time.monotonic())

    async def flush(self, now: float | None = None) -> list[ChangeEvent]:
        """Release the ready hosts and compute their changes (published through the
        recorder's ``publish`` before their states move). A store or broker that fails
        the step is said in one line and the hosts are held again, tried after
        ``RETRY_SECONDS``: the sink goes on storing meanwhile."""
        now = time.monotonic() if now is None else now
        if now < self._retry_at:
            return []
        try:
            events = await self._recover(now)
        except Exception as exc:  # noqa: BLE001 - the store's or the broker's; said
            self._failed(now, "change recovery", exc)
            return []
        ready = self.hold.ready(now)
        for key in self.hold.let_go:
            self.recorder.forget_key(key)
        self.hold.let_go.clear()
        try:
            if self.hold.renoted:
                await asyncio.to_thread(self.store.insert_host_scans, self.hold.renoted)
                self.hold.renoted = []
            if ready:
                events += await self._earlier_scans_of(ready)
                events += await self.recorder.finish(ready)
                self._released_since_compaction = True
        except Exception as exc:  # noqa: BLE001 - the store's or the broker's; said
            self.hold.restore()
            self._failed(now, f"change detection of {len(ready)} host scan(s)", exc)
            return events
        if (self._released_since_compaction and not len(self.hold)
                and now >= self._next_compaction):
            self._released_since_compaction = False
            self._next_compaction = now + self.compact_every
            try:
                await asyncio.to_thread(self.store.compact_page_indexes)
            except Exception as exc:  # noqa: BLE001 - pages stay correct unmerged; said
                log.warning("the page indexes were not merged: %s: %s", type(exc).__name__,
                            str(exc).strip()[:300])
        return events

    async def _earlier_scans_of(self, ready: Sequence[HostScan]) -> list[ChangeEvent]:
        """The released hosts' scans stored before these and never compared, compared
        first: a sink that died holding a host left its completed scan stored; its
        successor, given the host's next scan within RECOVER_AFTER, compared that one
        first, and the scan before it was then "older than the state", never compared:
        its events were lost (a review: a port open only in that scan was never alerted).
        The sweep waits RECOVER_AFTER; this asks only for these hosts, now, in the
        sink's first RECOVER_AFTER (a predecessor's scans are older after that)."""
        if time.monotonic() >= self._look_back_until:
            return []
        released = {(h.scan_id, h.target.target, h.target.ip) for h in ready}
        hold = self.hold

        class HeldOrReleased:
            def __contains__(self, key: object) -> bool:
                return key in released or key in hold

        # (the released scans are pending themselves, and come back in the page: it is
        # made large enough for them and the earlier ones, or those past the first page
        # were never seen: a review, 2,100 hosts in one flush)
        return await self.recorder.recover(
            finished_before=max(h.finished_at for h in ready) + timedelta(milliseconds=1),
            held=HeldOrReleased(), hosts={(h.target.target, h.target.ip) for h in ready},
            batch=len(released) + RECOVER_BATCH)

    async def _recover(self, now: float) -> list[ChangeEvent]:
        """At start and every ``max_hold`` seconds: the host scans a dead sink stored and
        held but never compared (history.recover_changes; its events, published as any)."""
        if now < self._next_recovery:
            return []
        self._next_recovery = now + self.hold.max_hold
        margin = max(RECOVER_AFTER, timedelta(seconds=self.hold.max_hold))
        return await self.recorder.recover(finished_before=datetime.now(UTC) - margin,
                                           held=self.hold)


__all__ = ["ChangeStage", "HostHold"]
