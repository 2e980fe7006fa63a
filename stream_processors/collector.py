"""Python's cyclic garbage collector, where portwatch's record traffic makes it costly.

Owns: pausing the collector around one batch (``collector_paused``, the change recorder)
and the policy of a long-running stream-processor worker (``settle_worker``).

Must not touch: anything but the ``gc`` module's process-wide settings.

Why this matters: portwatch's records (findings, snapshots, host scans) are acyclic and
freed by reference counting, but the ones in flight are many. A stream-processor worker
holds tens of thousands of decoded findings at once (the sink's batch, the stages' Kafka
buffers, the change hold's snapshots of hosts still scanning: 500,000 tracked objects
mid-run in ``bench.pipeline``), and every full collection walks them all, to free
nothing. Measured there, a "--role all" worker spent 3.1-4.2 s of a 15 s run in the
collector, 80 % of it in 14-16 full collections of ~200 ms each (BENCHMARKS.md,
"eleventh session").
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Full collections this many times rarer than Python's default (a full one after every 10
# collections of the middle generation): young collections, which free the cycles that
# tasks, futures and exceptions make, run exactly as before.
WORKER_FULL_EVERY = 100


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the recorder snapshots findings or
    compares a batch of hosts, back on after (if it was on).

    Why: a batch allocates a few container objects per finding and per host (snapshots,
    their tuples, views, rows); nearly all are acyclic, freed by reference counting, and
    live until the batch ends, so every full collection their allocation triggers walks
    all of them again, to free nothing. That was 30-45 % of a day's change computation
    at 100,000 hosts (BENCHMARKS.md, "eighth session"). While it is off, the tasks the
    event loop runs during the store's awaits make their cycles as usual; the first
    collection after it finds them. Process-wide: of overlapping calls, the one that
    turned it off turns it back on when it ends (the others only lose the saving from
    then), so it is never left off."""
    if not gc.isenabled():
        yield  # off already (by an outer call, or by the process): not ours to turn on
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def settle_worker() -> tuple[int, int, int]:
    """The collector's policy for a stream-processor worker, applied once its apps are
    built and before it consumes: what start-up made (modules, Faust's apps, the stage
    context) is collected once and then frozen, out of every later collection's
    walk (``gc.freeze``: it lives as long as the process anyway), and full collections
    run ``WORKER_FULL_EVERY`` times rarer. Returns the thresholds it set."""
    gc.collect()
    gc.freeze()
    young, middle, _full = gc.get_threshold()
    gc.set_threshold(young, middle, WORKER_FULL_EVERY)
    return gc.get_threshold()


__all__ = ["WORKER_FULL_EVERY", "collector_paused", "settle_worker"]
