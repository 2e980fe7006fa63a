"""The store's clock: the one time every worker of an alert outbox reads and writes.

Owns: ``StoreClock``, seconds since the epoch by the store server's clock: this host's
clock plus an offset measured against the server's ``now64(3)`` (half the round trip
taken off), measured again every ``RESYNC_SECONDS``. The outbox records times (an event
queued, a retry's next attempt, a claim) and compares them (a digest window, a retry
due, a claim's lease) with other workers' times; on each host's own clock, a worker whose
clock runs behind by more than a claim's lease took another worker's live claim for an
expired one and sent the same event again, and a worker ahead held every row it queued
back by its lead. On the server's clock they agree, as the watcher's slot claims already
do (``schedule.claim_slot``: ``now64`` in the insert).

Must not touch: anything but one ``SELECT`` on the store. A store that does not answer
leaves the last offset (none yet: this host's clock), never an error: the pass that reads
the time fails on the store itself and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

RESYNC_SECONDS = 60.0
# An offset past this is said once (a host whose clock is off is worth fixing: its
# scans' timestamps are its own clock's), then kept quiet.
WARN_OFFSET_SECONDS = 5.0
_SERVER_NOW = "SELECT toUnixTimestamp64Milli(now64(3))"

log = logging.getLogger(__name__)


class StoreClock:
    """A ``clock()`` for the outbox: the store server's time, read from this host's clock
    plus the last measured offset (cheap: one query a ``resync_seconds``)."""

    def __init__(self, store: Any, *, local: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 resync_seconds: float = RESYNC_SECONDS) -> None:
        self.store = store
        self.local = local
        self.monotonic = monotonic
        self.resync_seconds = resync_seconds
        self.offset = 0.0  # server minus this host, seconds
        self._synced_at: float | None = None
        self._warned = False

    def __call__(self) -> float:
        if self._synced_at is None or self.monotonic() - self._synced_at >= self.resync_seconds:
            self.sync()
        return self.local() + self.offset

    def sync(self) -> None:
        """Measure the offset now (kept as it was when the store does not answer)."""
        self._synced_at = self.monotonic()
        before = self.local()
        try:
            rows = self.store.query(_SERVER_NOW)
            server = int(rows[0][0]) / 1000.0
        except Exception as exc:  # noqa: BLE001 - the drivers raise many types
            log.debug("alerts: the store's clock could not be read: %s", exc)
            return
        after = self.local()
        self.offset = server - (before + after) / 2
        if abs(self.offset) > WARN_OFFSET_SECONDS and not self._warned:
            self._warned = True
            log.warning("alerts: this host's clock is %.0f s %s the store's; the alert "
                        "outbox keeps the store's time", abs(self.offset),
                        "behind" if self.offset > 0 else "ahead of")
