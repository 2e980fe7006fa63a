"""The alert outbox keeps the store server's time, whatever each worker's host clock says.

A host whose clock is wrong is a fault this machine cannot cause for real (one clock;
setting it would disturb everything else running): each worker's clock here is this
host's clock shifted by an injected skew (``skewed``), and the store is the real chdb
engine, whose ``now64`` is the server time every worker must agree on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from portwatch.alerts import AlertDispatcher
from portwatch.alerts.clock import StoreClock
from tests.alert_receivers import webhook_receiver
from tests.integration.test_alert_delivery import SECRET, event, hook_config, outbox_states

TEN_MINUTES = 600.0


def skewed(seconds: float) -> Callable[[], float]:
    """This host's clock, off by ``seconds`` (the injected fault)."""
    return lambda: time.time() + seconds


def test_store_clock_reads_the_servers_time_whatever_the_host_says(store: Any) -> None:
    # Given three workers' clocks: on time, ten minutes behind, ten minutes ahead
    clocks = [StoreClock(store, local=skewed(s)) for s in (0.0, -TEN_MINUTES, TEN_MINUTES)]
    # When each reads the time
    readings = [clock() for clock in clocks]
    # Then all of them read the store's clock (this process's, for chdb): within a
    # second of each other and of the wall clock, and each measured its own skew
    assert max(readings) - min(readings) < 1.0
    assert abs(readings[0] - time.time()) < 1.0
    assert [round(c.offset / 60) for c in clocks] == [0, 10, -10]


def test_store_clock_measures_again_after_its_period_and_keeps_the_offset_on_an_outage(
        store: Any) -> None:
    ticks = [0.0]
    local_skew = [-TEN_MINUTES]
    clock = StoreClock(store, local=lambda: time.time() + local_skew[0],
                       monotonic=lambda: ticks[0], resync_seconds=60)
    clock()
    assert round(clock.offset / 60) == 10
    # When the host's clock is set right (NTP caught up) within the period: not measured
    local_skew[0] = 0.0
    ticks[0] = 59.0
    assert round((clock() - time.time()) / 60) == 10
    # After the period it is measured again
    ticks[0] = 60.0
    assert abs(clock() - time.time()) < 1.0

    class Down:  # a store that does not answer (the fault)
        def query(self, sql: str) -> list[tuple[Any, ...]]:
            raise ConnectionError("connection refused")

    clock.store = Down()
    ticks[0] = 500.0
    # Then a store outage keeps the last offset: no error, no jump
    assert abs(clock() - time.time()) < 1.0


def test_a_worker_whose_clock_runs_behind_never_takes_a_live_claim_for_an_expired_one(
        store: Any, tmp_path: Path) -> None:
    with webhook_receiver(SECRET) as receiver:
        receiver.take_duplicates = True
        receiver.hold = threading.Event()
        config = hook_config(tmp_path, receiver.url)  # claim lease: 300 s
        # Given a worker whose host clock is ten minutes behind (longer than the lease),
        # sending an event: the receiver holds its answer, so its claim is live
        behind = AlertDispatcher(store, config, clock=StoreClock(store, local=skewed(-TEN_MINUTES)))
        behind.submit([event(6379)])
        sending = threading.Thread(target=behind.deliver_due)
        sending.start()
        deadline = time.monotonic() + 30
        while not receiver.accepted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(receiver.accepted) == 1
        # When a worker on time runs a pass meanwhile
        on_time = AlertDispatcher(store, config,
                                  clock=StoreClock(store, local=skewed(0.0))).deliver_due()
        receiver.hold.set()
        sending.join(30)
    # Then it left the claimed event alone: one message, no duplicate, sent once
    assert (on_time.messages, on_time.sent) == (0, 0)
    assert receiver.duplicates == [] and len(receiver.accepted) == 1
    assert set(outbox_states(store).values()) == {("sent", 1)}


def test_rows_queued_by_a_worker_ahead_are_due_for_a_worker_on_time(
        store: Any, tmp_path: Path) -> None:
    with webhook_receiver(SECRET) as receiver:
        config = hook_config(tmp_path, receiver.url)
        # Given an event queued by a worker whose clock is ten minutes ahead
        AlertDispatcher(store, config,
                        clock=StoreClock(store, local=skewed(TEN_MINUTES))).submit([event(3389)])
        # When a worker on time runs a pass
        report = AlertDispatcher(store, config,
                                 clock=StoreClock(store, local=skewed(0.0))).deliver_due()
    # Then the event is due now, not ten minutes from now
    assert (report.messages, report.sent) == (1, 1)
    assert [e["port"] for e in receiver.events()] == [3389]


def test_the_dispatcher_keeps_the_stores_time_by_default(store: Any, tmp_path: Path) -> None:
    with webhook_receiver(SECRET) as receiver:
        dispatcher = AlertDispatcher(store, hook_config(tmp_path, receiver.url))
    assert isinstance(dispatcher.clock, StoreClock)
    assert abs(dispatcher.clock() - time.time()) < 1.0
