"""The watcher hands alerts to the real dispatcher, real store (chdb) and a real signed
webhook receiver on loopback: a change a completed scan found is queued even when the
store refuses the run's ledger row, and is sent once; alerts go out while another
entry's long scan still runs. Scan functions are injected (they return the events a scan
would); nothing scans.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from portwatch.alerts import AlertDispatcher
from portwatch.alerts.scanning import ScanOutcome
from portwatch.alerts.schedule import ScheduleEntry
from portwatch.alerts.watch import Watcher
from tests.alert_receivers import webhook_receiver
from tests.integration.test_alert_delivery import SECRET, Clock, event, hook_config, outbox_states
from tests.integration.test_watch_claims import gone_owner

HOURLY = ScheduleEntry("hourly", "0 * * * *", targets=("127.0.0.1",))


@dataclass
class Stats:
    scan_id: str
    interrupted: bool = False
    stop_signal: int = 0


def test_a_run_the_ledger_refuses_still_queues_its_alerts_and_sends_them_once(
        store: Any, tmp_path: Path) -> None:
    # Given a store that refuses the ledger row of entry "hourly" (a real CHECK
    # constraint: ClickHouse refuses the insert) and a scan that found a change
    store.command("ALTER TABLE watch_runs ADD CONSTRAINT refuse_hourly CHECK entry != 'hourly'")
    opened = event()
    now = [datetime(2026, 12, 1, 11, 0, tzinfo=UTC)]

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        return ScanOutcome(Stats("scan-2"), [opened])

    with webhook_receiver(SECRET) as receiver:
        dispatcher = AlertDispatcher(store, hook_config(tmp_path, receiver.url), clock=Clock())
        lines: list[str] = []
        # (its claim on the slot as a process since restarted left it: schedule.claim_slot)
        watcher = Watcher(store, [HOURLY], scan, dispatcher, clock=lambda: now[0],
                          say=lines.append, owner=gone_owner())
        # When the watcher runs it
        records = asyncio.run(watcher.run_once())
        # Then the run counts as failed, said in one line, and its alert is queued
        assert [(r.entry, r.status) for r in records] == [("hourly", "failed")]
        refused = [line for line in lines if "could not be recorded" in line]
        assert len(refused) == 1 and refused[0].startswith(
            "watch: hourly: the run could not be recorded: DatabaseError: ")
        assert outbox_states(store) == {("risky-opened", "soc-hook", opened.event_id):
                                        ("pending", 0)}
        # And this watcher does not run the slot again at once
        assert asyncio.run(watcher.run_once()) == []
        # And the alert goes out once, even when a restarted watcher (the slot is not in
        # the ledger) runs it again and its scan reports the same change
        assert dispatcher.deliver_due().sent == 1
        restarted = Watcher(store, [HOURLY], scan, dispatcher, clock=lambda: now[0],
                            say=lines.append)
        assert [r.entry for r in asyncio.run(restarted.run_once())] == ["hourly"]
        assert dispatcher.deliver_due().sent == 0
    assert [e["port"] for e in receiver.events()] == [6379]
    assert receiver.rejected == []


def test_alerts_go_out_while_another_entry_still_scans(store: Any, tmp_path: Path) -> None:
    # Given a quick entry that finds a change (digest 0: alert at once) and a long one
    # after it, whose scan goes on until the alert arrived (or 30 s)
    seen_while_scanning: list[list[int]] = []
    stop = asyncio.Event()
    quick = ScheduleEntry("a-quick", "*/5 * * * *", targets=("127.0.0.1",))
    full = ScheduleEntry("b-full", "0 * * * *", targets=("127.0.0.2",))

    with webhook_receiver(SECRET) as receiver:

        async def scan(entry: ScheduleEntry) -> ScanOutcome:
            if entry.name == "a-quick":
                return ScanOutcome(Stats("scan-2"), [event()])
            for _ in range(300):
                if receiver.accepted:
                    break
                await asyncio.sleep(0.1)
            seen_while_scanning.append([e["port"] for e in receiver.events()])
            stop.set()
            return ScanOutcome(Stats("scan-3"), [])

        dispatcher = AlertDispatcher(store, hook_config(tmp_path, receiver.url))
        watcher = Watcher(store, [quick, full], scan, dispatcher, say=lambda _line: None,
                          delivery_tick=0.1)
        # When the watcher runs both
        asyncio.run(watcher.run_forever(stop))
    # Then the alert arrived while b-full was still scanning, and only once
    assert seen_while_scanning == [[6379]]
    assert len(receiver.accepted) == 1 and receiver.rejected == []


def test_a_stopping_watcher_does_not_wait_for_a_backlogs_whole_delivery_pass(
        store: Any, tmp_path: Path) -> None:
    # Given a slow receiver (each answer takes 0.5 s) and a first entry whose scan found
    # eight risky ports, one message each: a delivery pass of ~4 s
    stop = asyncio.Event()
    first = ScheduleEntry("a-found", "*/5 * * * *", targets=("127.0.0.1",))
    second = ScheduleEntry("b-next", "0 * * * *", targets=("127.0.0.2",))
    ports = list(range(6379, 6387))

    with webhook_receiver(SECRET) as receiver:
        receiver.delay = 0.5

        async def scan(entry: ScheduleEntry) -> ScanOutcome:
            if entry.name == "a-found":
                return ScanOutcome(Stats("scan-2"), [event(p) for p in ports])
            for _ in range(300):  # the next entry's scan: until the first message came
                if receiver.accepted:
                    break
                await asyncio.sleep(0.05)
            stop.set()  # as Ctrl-C does, while the pass is sending
            return ScanOutcome(Stats("scan-3"), [])

        dispatcher = AlertDispatcher(store, hook_config(
            tmp_path, receiver.url, delivery="{max_events_per_message: 1}"))
        watcher = Watcher(store, [first, second], scan, dispatcher, say=lambda _line: None,
                          delivery_tick=0.1)
        # When the watcher is stopped while its delivery pass is in its first message
        asyncio.run(watcher.run_forever(stop))
        # Then the pass ended with the send in flight (before: it sent all eight first);
        # (two if the machine was slow enough for a second send to start before the stop)
        sent_before_exit = len(receiver.accepted)
        assert sent_before_exit in (1, 2)
        states = outbox_states(store)
        assert sorted(states.values()).count(("pending", 0)) == len(ports) - sent_before_exit
        # And what it did not send is queued, and goes out once, later
        receiver.delay = 0.0
        assert dispatcher.drain(5).sent == len(ports) - sent_before_exit
    assert sorted(e["port"] for e in receiver.events()) == ports
    assert receiver.rejected == []


@pytest.mark.parametrize("once", [False, True], ids=["watch", "watch-once"])
def test_a_signal_during_a_scan_bounds_the_last_drain(
        store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, once: bool) -> None:
    """A FAKE for one step: the embedded runner's answer to Ctrl-C/SIGTERM during a scan
    (it stops discovery and returns an interrupted outcome; real signals:
    tests/integration/test_interrupt_during_identification.py) is returned directly.
    The rest is real: the CLI's watch loop, the dispatcher, the store."""
    from portwatch.alerts import cli, scanning

    async def interrupted_by_a_signal(db: Any, prepared: Any, *, quiet: bool = True
                                      ) -> ScanOutcome:
        return ScanOutcome(Stats("scan-2", interrupted=True), [event()])

    monkeypatch.setattr(scanning, "run_embedded_scan", interrupted_by_a_signal)
    drains: list[bool] = []
    real = AlertDispatcher.drain

    def drain(self: Any, wait_seconds: float | None = None, *,
              bound_first: bool = False, halt: Any = None) -> Any:
        drains.append(bound_first)
        return real(self, wait_seconds, bound_first=bound_first, halt=halt)

    monkeypatch.setattr(AlertDispatcher, "drain", drain)
    said: list[str] = []
    monkeypatch.setattr(cli, "_say", said.append)
    config = hook_config(tmp_path, "http://127.0.0.1:9/x")
    # When a signal interrupts the scan (the watcher stops: exit 130) that found a change
    code = asyncio.run(cli._watch(store, [HOURLY], lambda entry: None, config, once=once,
                                  quiet=True))
    # Then the last drain starts no message past `delivery: wait` (before: the runner's
    # own handler never set the CLI's stop event, so it sent the whole backlog first)
    assert (code, drains) == (130, [True])
    # And the watcher says what it waits for before it does (before: silent for up to
    # the wait, as if hung)
    assert ("watch: stopping: sending 1 queued alert(s), starting none after 30s (interrupt "
            "again to leave them queued for the next run)") in said


def signals_during_the_first_send(receiver: Any, *signals: signal.Signals,
                                  settle: float = 0.0) -> Any:
    """A thread (started) that waits until ``receiver`` holds its first message, then
    sends this process ``signals`` (after ``settle`` seconds, 0.3 s apart), then lets the
    receiver answer: a user's Ctrl-C (or a pod's SIGTERM) while an alert is in flight."""
    import os
    import threading

    receiver.hold = threading.Event()

    def user() -> None:
        deadline = time.monotonic() + 30
        while not receiver.accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle)
        for sig in signals:
            os.kill(os.getpid(), sig)
            time.sleep(0.3)
        receiver.hold.set()  # the send in flight ends

    thread = threading.Thread(target=user, daemon=True)
    thread.start()
    return thread


def watched_with_signals_in_flight(store: Any, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, *signals: signal.Signals,
                                   once: bool) -> tuple[int, Any, list[str]]:
    """``watch`` (``--once``) whose scan finds two red ports, its first alert held by a
    signed webhook receiver while ``signals`` come: (exit code, receiver, lines said).
    A FAKE for one step: the scan (it returns the two events a scan would find). Real:
    the CLI's watch loop and its signal handlers, real signals, the dispatcher, the
    receiver, the store."""
    from portwatch.alerts import cli, scanning

    async def found_two(db: Any, prepared: Any, *, quiet: bool = True) -> ScanOutcome:
        return ScanOutcome(Stats("scan-2"), [event(6379), event(5432, service="postgresql")])

    monkeypatch.setattr(scanning, "run_embedded_scan", found_two)
    said: list[str] = []
    monkeypatch.setattr(cli, "_say", said.append)
    with webhook_receiver(SECRET) as receiver:
        config = hook_config(tmp_path, receiver.url, delivery="{max_events_per_message: 1}")
        user = signals_during_the_first_send(receiver, *signals)
        code = asyncio.run(asyncio.wait_for(
            cli._watch(store, [HOURLY], lambda entry: None, config, once=once, quiet=True),
            60))
        user.join(5)
    return code, receiver, said


def test_a_second_ctrl_c_while_an_alert_is_in_flight_leaves_the_rest_queued(
        store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # When the watcher sends the first alert and is interrupted twice meanwhile (Ctrl-C,
    # then Ctrl-C again, while that send is held)
    code, receiver, said = watched_with_signals_in_flight(
        store, tmp_path, monkeypatch, signal.SIGINT, signal.SIGINT, once=False)
    # Then it stops at once after the send in flight: the second Ctrl-C leaves the other
    # alert queued for the next run (before: it was taken as the first again, and the
    # watcher went on sending for the delivery wait), and both were said as they came
    assert code == 130
    assert len(receiver.accepted) == 1
    assert sorted(outbox_states(store).values()) == [("pending", 0), ("sent", 1)]
    assert said.index("watch: stopping after the alert send in flight, if any (interrupt "
                      "again to leave queued alerts for the next run)") < said.index(
        "watch: stopping: 1 queued alert(s) left for the next run (or `portwatch alerts "
        "deliver`)")


def test_a_ctrl_c_after_one_that_cut_a_scan_short_is_the_second(
        store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FAKE for one step: the embedded runner's answer to a Ctrl-C during a scan (an
    interrupted outcome with the signal it took; real: test_interrupt_during_
    identification.py). Real: the CLI's watch loop and its handlers, a real SIGINT, the
    dispatcher, a webhook receiver holding its answer, the store."""
    from portwatch.alerts import cli, scanning

    with webhook_receiver(SECRET) as receiver:
        async def cut_by_ctrl_c(db: Any, prepared: Any, *, quiet: bool = True) -> ScanOutcome:
            # (cut short while the watcher's delivery pass sends the first alert)
            while not receiver.accepted:
                await asyncio.sleep(0.05)
            return ScanOutcome(Stats("scan-2", interrupted=True,
                                     stop_signal=int(signal.SIGINT)), [])

        monkeypatch.setattr(scanning, "run_embedded_scan", cut_by_ctrl_c)
        said: list[str] = []
        monkeypatch.setattr(cli, "_say", said.append)
        config = hook_config(tmp_path, receiver.url, delivery="{max_events_per_message: 1}")
        # Given two alerts queued before the watcher starts (its first pass sends one)
        AlertDispatcher(store, config).submit([event(6379), event(5432, service="postgresql")])
        # When a Ctrl-C comes while it is in flight, after the scan was cut short by one
        user = signals_during_the_first_send(receiver, signal.SIGINT, settle=0.5)
        code = asyncio.run(asyncio.wait_for(
            cli._watch(store, [HOURLY], lambda entry: None, config, once=False, quiet=True),
            60))
        user.join(5)
    # Then that Ctrl-C is the second: the other alert stays queued (before: taken as the
    # first, and the last drain sent it: a second review), and the first was said at
    # once though the scan was quiet
    assert code == 130
    assert len(receiver.accepted) == 1
    assert sorted(outbox_states(store).values()) == [("pending", 0), ("sent", 1)]
    assert said.count("watch: stopping after the alert send in flight, if any (interrupt "
                      "again to leave queued alerts for the next run)") == 1
    assert ("watch: stopping: 1 queued alert(s) left for the next run (or `portwatch alerts "
            "deliver`)") in said


def test_sigterm_during_the_last_delivery_of_watch_once_is_a_clean_stop(
        store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, receiver, said = watched_with_signals_in_flight(
        store, tmp_path, monkeypatch, signal.SIGTERM, once=True)
    # Then the send in flight ends, the rest stays queued, the stop is said at once, and
    # it is a clean stop: no scan was cut short (before: 130, a CronJob's failed pod)
    assert code == 0
    assert len(receiver.accepted) == 1
    assert sorted(outbox_states(store).values()) == [("pending", 0), ("sent", 1)]
    assert ("watch: stopping after the alert send in flight; what is left stays queued for "
            "the next run") in said


def test_a_sigterm_after_a_ctrl_c_during_the_last_delivery_stays_130(
        store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _receiver, _said = watched_with_signals_in_flight(
        store, tmp_path, monkeypatch, signal.SIGINT, signal.SIGTERM, once=True)
    # Then the user's Ctrl-C decides: 130 (before: the SIGTERM made it a clean 0: a third
    # review), and what was not sent stays queued
    assert code == 130
    assert sorted(outbox_states(store).values()) == [("pending", 0), ("sent", 1)]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
@pytest.mark.parametrize("once", [False, True], ids=["watch", "watch-once"])
def test_a_signal_a_completed_scan_outlived_stops_the_watcher(
        store: Any, monkeypatch: pytest.MonkeyPatch, once: bool, sig: signal.Signals,
        code: int) -> None:
    """A FAKE for one step: the runner's outcome when a signal came after the scan's last
    shard, while it was recorded (real: tests/integration/
    test_interrupt_during_identification.py, "recorded"): completed, with the signal.
    The rest is real: the CLI's watch loop and the store."""
    from portwatch.alerts import cli, scanning

    async def signalled_at_its_end(db: Any, prepared: Any, *, quiet: bool = True
                                   ) -> ScanOutcome:
        return ScanOutcome(Stats("scan-2", stop_signal=int(sig)), [])

    monkeypatch.setattr(scanning, "run_embedded_scan", signalled_at_its_end)
    said: list[str] = []
    monkeypatch.setattr(cli, "_say", said.append)
    # When the scan returns (the watch loop waits for the next entry unless stopped)
    code_now = asyncio.run(asyncio.wait_for(
        cli._watch(store, [HOURLY], lambda entry: None, None, once=once, quiet=True), 60))
    # Then the watcher stops as for a signal between scans: SIGTERM a clean 0, Ctrl-C 130
    # (before: the signal was lost, and the long-running watcher ran on), saying when
    assert code_now == code
    if sig is signal.SIGTERM:
        assert any("watch: stopped (SIGTERM) as hourly's scan ended (it completed)" in line
                   for line in said), said


@pytest.mark.parametrize("once", [False, True], ids=["watch", "watch-once"])
def test_a_signal_while_the_targets_are_read_starts_no_scan(
        store: Any, monkeypatch: pytest.MonkeyPatch, once: bool) -> None:
    """Real: the CLI's watch loop, its signal handlers, a real SIGTERM, the store. The
    scan function is the guard: it must not be called."""
    import os

    from portwatch.alerts import cli, scanning

    async def must_not_run(db: Any, prepared: Any, *, quiet: bool = True) -> ScanOutcome:
        raise AssertionError("the scan started after the signal")

    def slow_prepare(entry: Any) -> None:
        # (reading a large inventory or block, in a thread, as watch does) a SIGTERM comes
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)

    monkeypatch.setattr(scanning, "run_embedded_scan", must_not_run)
    said: list[str] = []
    monkeypatch.setattr(cli, "_say", said.append)
    # When a SIGTERM comes while the due entry's targets are read
    code = asyncio.run(asyncio.wait_for(
        cli._watch(store, [HOURLY], slow_prepare, None, once=once, quiet=True), 60))
    # Then no scan starts (before: it ran in full, and the watcher said "no scan was
    # running"), the stop is clean, and it says when it came
    assert code == 0
    assert any("watch: stopped (SIGTERM) before hourly's scan began" in line
               for line in said), said
    # And the run is recorded interrupted: the next watcher runs it
    assert store.query("SELECT status FROM watch_runs FINAL WHERE entry = 'hourly'") == [
        ("interrupted",)]


def test_only_deliveries_the_file_still_routes_count_as_sendable(store: Any,
                                                                tmp_path: Path) -> None:
    from portwatch.alerts import load_alerts
    from tests.integration.test_alert_delivery import write_alerts

    # Given an alert queued for channel old-hook, then the file's channel renamed soc-hook
    old = tmp_path / "old"
    old.mkdir()
    before = load_alerts(write_alerts(old, '  old-hook: {webhook: "http://127.0.0.1:9/x", '
                                           'secret_env: HOOK_SECRET}'),
                         env={"HOOK_SECRET": SECRET.decode()})
    assert AlertDispatcher(store, before).submit([event()]) == 1
    now = AlertDispatcher(store, hook_config(tmp_path, "http://127.0.0.1:9/x"))
    # Then the row is queued but not sendable: a stopping watcher does not announce it
    # (before: "sending 1 queued alert(s)", then "kept, never sent": a review)
    assert (now.queued_count(), now.sendable_count()) == (1, 0)
    assert AlertDispatcher(store, before).sendable_count() == 1


def _refuse_the_outbox(store: Any) -> None:
    """A real store error on the outbox insert (a CHECK constraint ClickHouse enforces)."""
    store.command("ALTER TABLE alert_outbox ADD CONSTRAINT refuse_all CHECK rule = ''")


def _accept_the_outbox(store: Any) -> None:
    store.command("ALTER TABLE alert_outbox DROP CONSTRAINT refuse_all")


def test_changes_the_outbox_refused_are_queued_before_the_next_run(
        store: Any, tmp_path: Path) -> None:
    # Given a scan that found a change while the store refuses the outbox's insert
    opened = event()
    now = [datetime(2026, 12, 1, 11, 0, tzinfo=UTC)]
    naps: list[float] = []

    async def scan(entry: ScheduleEntry) -> ScanOutcome:
        return ScanOutcome(Stats(f"scan-{now[0]:%H}"), [opened] if now[0].hour == 11 else [])

    dispatcher = AlertDispatcher(store, hook_config(tmp_path, "http://127.0.0.1:9/x"),
                                 clock=Clock(), sleep=naps.append)
    lines: list[str] = []
    watcher = Watcher(store, [HOURLY], scan, dispatcher, clock=lambda: now[0],
                      say=lines.append)
    _refuse_the_outbox(store)
    # When the watcher runs it
    records = asyncio.run(watcher.run_once())
    # Then the insert was tried three times (two waits), the run is recorded (its scan
    # completed), and the change is kept, said in one line (before: logged, dropped,
    # and never alerted: the change is compared, no later scan raises it again)
    assert naps == [0.5, 1.0]
    assert [(r.entry, r.status) for r in records] == [("hourly", "completed")]
    kept = [line for line in lines if "could not be queued" in line]
    assert len(kept) == 1 and kept[0].startswith(
        "watch: alerts: 1 change event(s) could not be queued: DatabaseError: ")
    assert kept[0].endswith("; kept, queued again before the next run")
    assert watcher.unqueued == 1 and outbox_states(store) == {}
    # And once the store takes it again, the next run queues it first (its own scan
    # found nothing new)
    _accept_the_outbox(store)
    now[0] = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert [r.status for r in asyncio.run(watcher.run_once())] == ["completed"]
    assert watcher.unqueued == 0
    assert outbox_states(store) == {("risky-opened", "soc-hook", opened.event_id):
                                    ("pending", 0)}


def test_a_one_shot_scan_whose_changes_cannot_be_queued_fails_in_one_line(
        store: Any, tmp_path: Path) -> None:
    from portwatch.alerts.dispatcher import AlertQueueError, alert_after_scan
    from portwatch.console import exit_code_for

    config = hook_config(tmp_path, "http://127.0.0.1:9/x")
    _refuse_the_outbox(store)
    with pytest.raises(AlertQueueError) as caught:
        alert_after_scan(store, config, [event()], wait_seconds=0)
    assert exit_code_for(caught.value) == 1 and "\n" not in str(caught.value)


def test_the_alerts_agent_holds_a_batch_the_store_refused_until_it_is_queued(
        store: Any, tmp_path: Path) -> None:
    from stream_processors.transports.faust_alerts import _queue

    # Given the Kafka alerts agent's queueing step, and a store refusing the outbox
    opened = event()
    dispatcher = AlertDispatcher(store, hook_config(tmp_path, "http://127.0.0.1:9/x"),
                                 clock=Clock(), sleep=lambda _s: None)
    _refuse_the_outbox(store)

    async def run() -> tuple[int, list[Any]]:
        # (the store is refused for 0.5 s: not long enough to be taken for poison)
        task = asyncio.create_task(_queue(dispatcher, [opened], 0.05, poison_tries=100))
        await asyncio.sleep(0.5)
        # Then it has not returned (the batch is not acknowledged) while refused
        assert not task.done()
        _accept_the_outbox(store)
        return await asyncio.wait_for(task, timeout=30)

    # And it queues the events once the store takes them
    assert asyncio.run(run()) == (1, [])
    assert list(outbox_states(store)) == [("risky-opened", "soc-hook", opened.event_id)]


def test_the_alerts_agent_dead_letters_an_event_the_store_never_takes(
        store: Any, tmp_path: Path) -> None:
    from stream_processors.transports.faust_alerts import _queue

    # Given three events, one of which the store refuses for ever while it answers every
    # query (a real CHECK constraint on that event's id: no outage)
    good, poison, other = event(6379), event(6380), event(6381)
    store.command(f"ALTER TABLE alert_outbox ADD CONSTRAINT refuse_one "
                  f"CHECK event_id != '{poison.event_id}'")
    dispatcher = AlertDispatcher(store, hook_config(tmp_path, "http://127.0.0.1:9/x"),
                                 clock=Clock(), sleep=lambda _s: None)
    # When the agent's queueing step has seen the batch refused three times
    queued, refused = asyncio.run(_queue(dispatcher, [good, poison, other], 0.01,
                                         poison_tries=3))
    # Then the batch is split: the other two are queued, the one refused is handed back
    # with the store's reason (the agent dead-letters it and acknowledges the batch)
    assert queued == 2
    assert [(e.event_id, "refuse_one" in why) for e, why in refused] == [
        (poison.event_id, True)]
    assert sorted(k[2] for k in outbox_states(store)) == sorted(
        [good.event_id, other.event_id])


@pytest.mark.parametrize(("sig", "once", "code"), [
    (signal.SIGTERM, False, 0), (signal.SIGINT, False, 130),
    # --once: the failed scan fails the one-shot run (a CronJob shows it)
    (signal.SIGTERM, True, 1), (signal.SIGINT, True, 130)],
    ids=["sigterm", "ctrl-c", "once-sigterm", "once-ctrl-c"])
def test_a_scan_that_raises_after_taking_a_signal_still_stops_the_watcher(
        store: Any, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals, once: bool,
        code: int) -> None:
    """A FAKE for one step: the embedded run (``scan_cli.run_plan``) takes the signal and
    then raises (a disk full as it stores: not a fault to cause here). Real: the scan's
    preparation, ``run_embedded_scan``, the CLI's watch loop, the store."""
    from portwatch import scan_cli
    from portwatch.alerts import cli, scanning

    async def signalled_then_failed(*args: Any, signals: list[int] | None = None,
                                    **kwargs: Any) -> Any:
        assert signals is not None
        signals.append(int(sig))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scan_cli, "run_plan", signalled_then_failed)
    said: list[str] = []
    monkeypatch.setattr(cli, "_say", said.append)

    def prepare(entry: Any) -> Any:
        return scanning.prepare_scan({"ports": "1"}, targets=["127.0.0.1"])

    # When the watcher's scan takes a signal and then fails
    got = asyncio.run(asyncio.wait_for(
        cli._watch(store, [HOURLY], prepare, None, once=once, quiet=True), 60))
    # Then the failure is said and recorded, and the watcher stops (before: it took
    # the failure as one entry's, and ran on waiting for the next slot)
    assert got == code
    assert any("watch: hourly: scan failed: " in line and "No space left" in line
               for line in said), said
    assert [row[0] for row in store.query(
        "SELECT status FROM watch_runs WHERE entry = 'hourly'")] == ["failed"]
    if sig is signal.SIGTERM:
        assert any("watch: stopped (SIGTERM) as hourly's scan failed" in line
                   for line in said), said
